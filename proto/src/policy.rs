//! Kubernetes-scoped policies (`PodPolicy`, podmap.dev/v1alpha1): the format, its validation, the
//! selectors (Kubernetes LabelSelector semantics), and the compiled rule tables the kernel
//! programs match against. Shared by podmapd and the runtime plugins, so all three decide
//! membership the same way.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const API_VERSION: &str = "podmap.dev/v1alpha1";
pub const KIND: &str = "PodPolicy";

/// Files podmapd writes for the cluster's PodPolicy resources (docs/decisions.md #10) are named
/// `podpolicy.<resource name>.yaml`...
pub const MIRRORED_PREFIX: &str = "podpolicy.";
/// ...and start with this line: podmapd only ever rewrites or removes files that carry it, so a
/// hand-written file that happens to share the prefix is left alone.
pub const MIRRORED_HEADER: &str =
    "# Mirrored by podmapd from a PodPolicy resource: edit the resource, not this file.";

/// Where a loaded policy came from, as errors name it: a mirrored file is named as the resource
/// it stands for. Only called on the error path, so reading the file's first line is cheap.
pub fn describe_source(src: &str) -> String {
    if is_mirrored(Path::new(src)) {
        format!("{src} (mirrored from a PodPolicy resource)")
    } else {
        src.to_string()
    }
}

/// Whether a file of the policy directory is one podmapd mirrored: its name and first line say so.
pub fn is_mirrored(path: &Path) -> bool {
    use std::io::BufRead;
    let named = path
        .file_name()
        .is_some_and(|f| f.to_string_lossy().starts_with(MIRRORED_PREFIX));
    named
        && std::fs::File::open(path)
            .ok()
            .and_then(|f| std::io::BufReader::new(f).lines().next()?.ok())
            .is_some_and(|first| first == MIRRORED_HEADER)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    /// Accepted for symmetry with Kubernetes objects; the resource is cluster-scoped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_selector: Option<ContainerSelector>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenMatch>,
    pub action: Action,
    /// What a `deny` rule does where BPF-LSM does not load: `kill`, or (absent) audit only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Action>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub access: Access,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    #[default]
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Audit,
    Kill,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Audit => "audit",
            Action::Kill => "kill",
            Action::Deny => "deny",
        }
    }
}

/// A policy's stable id: FNV-1a of its name, so every process computes the same id without
/// talking to the others (docs/decisions.md #11).
pub fn policy_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// What a selector is evaluated against: what the runtime knows at container creation.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub pod_labels: &'a BTreeMap<String, String>,
    pub container_name: &'a str,
    /// The pod's sandbox (pause) container: never selected. It is the pod's plumbing, not a
    /// container of its spec; killing it would take the whole pod down.
    pub sandbox: bool,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let v = labels.get(&e.key);
                match e.operator {
                    Operator::In => v.is_some_and(|v| e.values.contains(v)),
                    Operator::NotIn => v.is_none_or(|v| !e.values.contains(v)),
                    Operator::Exists => v.is_some(),
                    Operator::DoesNotExist => v.is_none(),
                }
            })
    }
}

impl PodPolicy {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn id(&self) -> u32 {
        policy_id(&self.metadata.name)
    }

    /// Whether the policy applies to a container. Every given selector must match; an empty
    /// selector matches every container (never host processes: they are no target at all).
    pub fn selects(&self, t: &Target<'_>) -> bool {
        let s = &self.spec;
        !t.sandbox
            && (s.namespaces.is_empty() || s.namespaces.iter().any(|n| n == t.namespace))
            && s.pod_selector
                .as_ref()
                .is_none_or(|sel| sel.matches(t.pod_labels))
            && s.container_selector
                .as_ref()
                .is_none_or(|c| c.names.is_empty() || c.names.iter().any(|n| n == t.container_name))
    }
}

/// A policy file or object that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {field}: {reason}")]
pub struct PolicyError {
    /// The file (and document index) or resource the policy came from.
    pub source_name: String,
    /// The field path, e.g. `spec.rules[1].exec.paths[0]`.
    pub field: String,
    pub reason: String,
}

fn err(source_name: &str, field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        source_name: source_name.to_string(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `s` is a valid policy name: a DNS subdomain, as Kubernetes object names are (so it is
/// also a safe file name: no `/`, no `..`).
pub fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn check_path(src: &str, field: &str, p: &str) -> Result<(), PolicyError> {
    if !p.starts_with('/') {
        return Err(err(src, field, format!("{p:?} is not an absolute path")));
    }
    if p.len() >= 256 {
        return Err(err(src, field, "paths are matched up to 255 bytes"));
    }
    if p.split('/').any(|c| c == "." || c == "..") || p.contains("//") || p.contains('\0') {
        return Err(err(
            src,
            field,
            format!("{p:?} is not a normalized path (no ., .., // or NUL)"),
        ));
    }
    Ok(())
}

impl PodPolicy {
    /// Checks everything the type does not: names, paths, operators, and contradictions.
    pub fn validate(&self, src: &str) -> Result<(), PolicyError> {
        if self.api_version != API_VERSION {
            return Err(err(
                src,
                "apiVersion",
                format!("{:?} is not {API_VERSION}", self.api_version),
            ));
        }
        if self.kind != KIND {
            return Err(err(src, "kind", format!("{:?} is not {KIND}", self.kind)));
        }
        if !valid_dns_subdomain(&self.metadata.name) {
            return Err(err(
                src,
                "metadata.name",
                format!("{:?} is not a DNS subdomain name", self.metadata.name),
            ));
        }
        if let Some(sel) = &self.spec.pod_selector {
            for (i, e) in sel.match_expressions.iter().enumerate() {
                let f = format!("spec.podSelector.matchExpressions[{i}]");
                match e.operator {
                    Operator::In | Operator::NotIn if e.values.is_empty() => {
                        return Err(err(
                            src,
                            f + ".values",
                            "In and NotIn need at least one value",
                        ));
                    }
                    Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => {
                        return Err(err(
                            src,
                            f + ".values",
                            "Exists and DoesNotExist take no values",
                        ));
                    }
                    _ => {}
                }
                if e.key.is_empty() {
                    return Err(err(src, f + ".key", "empty key"));
                }
            }
        }
        if self.spec.rules.is_empty() {
            return Err(err(src, "spec.rules", "a policy needs at least one rule"));
        }
        // (kind, path, exact?) -> action, to refuse one path given two different actions.
        let mut seen: HashMap<(&str, &str, bool), (Action, String)> = HashMap::new();
        for (i, r) in self.spec.rules.iter().enumerate() {
            let f = format!("spec.rules[{i}]");
            let (kind, m) = match (&r.exec, &r.open) {
                (Some(m), None) => ("exec", (&m.paths, &m.prefixes)),
                (None, Some(o)) => ("open", (&o.paths, &o.prefixes)),
                (Some(_), Some(_)) => {
                    return Err(err(src, f, "a rule matches either exec or open, not both"))
                }
                (None, None) => return Err(err(src, f, "a rule needs exec or open")),
            };
            if m.0.is_empty() && m.1.is_empty() {
                return Err(err(src, format!("{f}.{kind}"), "no paths and no prefixes"));
            }
            match (r.action, r.fallback) {
                (_, None) | (Action::Deny, Some(Action::Kill)) => {}
                (Action::Deny, Some(other)) => {
                    return Err(err(
                        src,
                        format!("{f}.fallback"),
                        format!(
                            "{} is not a fallback; use kill, or omit it to audit",
                            other.as_str()
                        ),
                    ));
                }
                (a, Some(_)) => {
                    return Err(err(
                        src,
                        format!("{f}.fallback"),
                        format!(
                            "only deny rules take a fallback, this one is {}",
                            a.as_str()
                        ),
                    ));
                }
            }
            for (list, exact, name) in [(m.0, true, "paths"), (m.1, false, "prefixes")] {
                for (j, p) in list.iter().enumerate() {
                    let pf = format!("{f}.{kind}.{name}[{j}]");
                    check_path(src, &pf, p)?;
                    if let Some((other, at)) =
                        seen.insert((kind, p.as_str(), exact), (r.action, pf.clone()))
                    {
                        if other != r.action {
                            return Err(err(
                                src,
                                pf,
                                format!(
                                    "{p:?} is also at {at} with action {}: contradictory",
                                    other.as_str()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parses one YAML text holding one or more PodPolicy documents.
pub fn parse_documents(text: &str, src: &str) -> Result<Vec<PodPolicy>, PolicyError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc_src = format!("{src} (document {})", i + 1);
        let value =
            serde_yaml_ng::Value::deserialize(doc).map_err(|e| err(&doc_src, "", e.to_string()))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let p: PodPolicy =
            serde_yaml_ng::from_value(value).map_err(|e| err(&doc_src, "", e.to_string()))?;
        p.validate(&doc_src)?;
        out.push(p);
    }
    Ok(out)
}

/// A policy and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub policy: PodPolicy,
    pub source: String,
}

/// The outcome of reading a policy directory: what loaded, and what was refused (and why).
/// Refused files do not take the others down.
#[derive(Debug, Default, Clone)]
pub struct PolicySet {
    pub policies: Vec<Loaded>,
    pub errors: Vec<PolicyError>,
}

impl PolicySet {
    /// Reads every `*.yaml` (and `*.yml`) file of `dir`, in name order. A missing directory is
    /// an empty set.
    pub fn load_dir(dir: &Path) -> PolicySet {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return PolicySet {
                    policies: Vec::new(),
                    errors: vec![err(&dir.display().to_string(), "", e.to_string())],
                };
            }
        };
        files.sort();
        let mut set = PolicySet::default();
        for f in files {
            let src = f.display().to_string();
            match std::fs::read_to_string(&f) {
                Ok(text) => set.add(&text, &src),
                Err(e) => set.errors.push(err(&src, "", e.to_string())),
            }
        }
        set
    }

    /// Adds the policies of one text; a file with any bad document is refused whole.
    pub fn add(&mut self, text: &str, src: &str) {
        match parse_documents(text, src) {
            Ok(ps) => {
                let mut staged = Vec::new();
                for p in ps {
                    if let Some(prev) = self
                        .policies
                        .iter()
                        .chain(staged.iter())
                        .find(|l: &&Loaded| l.policy.name() == p.name())
                    {
                        self.errors.push(err(src, "metadata.name", format!("policy {:?} is also defined in {}; both are refused until one is renamed", p.name(), describe_source(&prev.source))));
                        let name = p.name().to_string();
                        self.policies.retain(|l| l.policy.name() != name);
                        staged.retain(|l: &Loaded| l.policy.name() != name);
                        continue;
                    }
                    if let Some(prev) = self
                        .policies
                        .iter()
                        .chain(staged.iter())
                        .find(|l: &&Loaded| l.policy.id() == p.id())
                    {
                        self.errors.push(err(
                            src,
                            "metadata.name",
                            format!(
                                "policy {:?} hashes to the same id as {:?} from {}; rename one",
                                p.name(),
                                prev.policy.name(),
                                prev.source
                            ),
                        ));
                        continue;
                    }
                    staged.push(Loaded {
                        policy: p,
                        source: src.to_string(),
                    });
                }
                self.policies.extend(staged);
            }
            Err(e) => self.errors.push(e),
        }
    }

    /// Ids of the policies that select a container.
    pub fn selecting(&self, t: &Target<'_>) -> Vec<u32> {
        self.policies
            .iter()
            .filter(|l| l.policy.selects(t))
            .map(|l| l.policy.id())
            .collect()
    }

    pub fn by_id(&self, id: u32) -> Option<&Loaded> {
        self.policies.iter().find(|l| l.policy.id() == id)
    }

    /// The kernel's rule tables: one entry per distinct (rule kind, path, exact/prefix), listing
    /// every policy rule that applies to that path. A prefix entry also lists the rules of every
    /// shorter prefix it lies under, because the kernel's longest-prefix lookup finds one entry.
    pub fn compile(&self) -> Vec<KernelRule> {
        let mut table: BTreeMap<(RuleKind, String, bool), BTreeSet<RuleRef>> = BTreeMap::new();
        for l in &self.policies {
            let id = l.policy.id();
            for (idx, r) in l.policy.spec.rules.iter().enumerate() {
                let rr = RuleRef {
                    policy_id: id,
                    rule_index: idx as u16,
                    action: r.action,
                    fallback_kill: r.fallback == Some(Action::Kill),
                };
                let (kind, paths, prefixes) = match (&r.exec, &r.open) {
                    (Some(m), _) => (RuleKind::Exec, &m.paths, &m.prefixes),
                    (None, Some(o)) => (RuleKind::Open(o.access), &o.paths, &o.prefixes),
                    (None, None) => continue,
                };
                for p in paths {
                    table.entry((kind, p.clone(), true)).or_default().insert(rr);
                }
                for p in prefixes {
                    // Component prefixes: "/etc/ssl" covers "/etc/ssl" itself and "/etc/ssl/...".
                    let trimmed = p.trim_end_matches('/');
                    if !trimmed.is_empty() && !p.ends_with('/') {
                        table
                            .entry((kind, trimmed.to_string(), true))
                            .or_default()
                            .insert(rr);
                    }
                    table
                        .entry((kind, format!("{trimmed}/"), false))
                        .or_default()
                        .insert(rr);
                }
            }
        }
        // Close prefix entries (and exact entries) over the shorter prefixes they lie under.
        let prefixes: Vec<((RuleKind, String), BTreeSet<RuleRef>)> = table
            .iter()
            .filter(|((_, _, exact), _)| !exact)
            .map(|((k, p, _), v)| ((*k, p.clone()), v.clone()))
            .collect();
        for ((kind, path, _), refs) in table.iter_mut() {
            for ((pk, pp), prefs) in &prefixes {
                if pk == kind && path.starts_with(pp.as_str()) && path != pp {
                    refs.extend(prefs.iter().copied());
                }
            }
        }
        table
            .into_iter()
            .map(|((kind, path, exact), refs)| KernelRule {
                kind,
                path,
                exact,
                refs: refs.into_iter().collect(),
            })
            .collect()
    }
}

/// A policy directory kept current: reloaded when its listing (names, sizes, times) changes.
/// A file that stops loading keeps its last valid policies active; only a file that is gone
/// takes its policies with it (the refusal is still reported).
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    fingerprint: Option<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>>,
    set: PolicySet,
    reloads: u64,
}

impl PolicyDir {
    pub fn new(dir: &Path) -> Self {
        PolicyDir {
            dir: dir.to_owned(),
            fingerprint: None,
            set: PolicySet::default(),
            reloads: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set(&self) -> &PolicySet {
        &self.set
    }

    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    fn listing(&self) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let md = e.metadata().ok()?;
                        Some((e.path(), md.modified().ok(), md.len()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Reloads if the directory changed since the last look (or was never read); returns
    /// whether it did.
    pub fn refresh(&mut self) -> bool {
        let fp = self.listing();
        if self.fingerprint.as_ref() == Some(&fp) {
            return false;
        }
        self.fingerprint = Some(fp);
        let mut next = PolicySet::load_dir(&self.dir);
        let refused: std::collections::HashSet<&str> = next
            .errors
            .iter()
            .map(|e| e.source_name.split(" (document").next().unwrap_or(""))
            .collect();
        let carried: Vec<Loaded> = self
            .set
            .policies
            .iter()
            .filter(|l| refused.contains(l.source.as_str()) && Path::new(&l.source).exists())
            .filter(|l| {
                next.policies
                    .iter()
                    .all(|n| n.policy.name() != l.policy.name())
            })
            .cloned()
            .collect();
        next.policies.extend(carried);
        self.set = next;
        self.reloads += 1;
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKind {
    Exec,
    Open(Access),
}

/// One policy rule, as the kernel tables reference it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy_id: u32,
    pub rule_index: u16,
    pub action: Action,
    pub fallback_kill: bool,
}

/// One entry of the kernel's rule tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub kind: RuleKind,
    /// An exact path, or a prefix ending in '/'.
    pub path: String,
    pub exact: bool,
    pub refs: Vec<RuleRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: podmap.dev/v1alpha1
kind: PodPolicy
metadata:
  name: no-shell-in-web
spec:
  namespaces: [prod, staging]
  podSelector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [front]}]
  containerSelector:
    names: [nginx]
  rules:
  - exec: {paths: [/bin/sh, /bin/bash], prefixes: [/tmp/]}
    action: kill
  - exec: {paths: [/usr/bin/nc]}
    action: deny
    fallback: kill
  - open: {prefixes: [/etc/shadow], access: read}
    action: audit
---
"#;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_design_example_parses_and_selects() {
        let ps = parse_documents(EXAMPLE, "example.yaml").unwrap();
        assert_eq!(ps.len(), 1);
        let p = &ps[0];
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let t = |ns, l, c| Target {
            namespace: ns,
            pod_labels: l,
            container_name: c,
            sandbox: false,
        };
        assert!(p.selects(&t("prod", &web, "nginx")));
        let pause = Target {
            sandbox: true,
            ..t("prod", &web, "nginx")
        };
        assert!(!p.selects(&pause), "sandboxes are never selected");
        assert!(!p.selects(&t("dev", &web, "nginx")), "namespace");
        assert!(!p.selects(&t("prod", &web, "sidecar")), "container name");
        let no_tier = labels(&[("app", "web")]);
        assert!(
            !p.selects(&t("prod", &no_tier, "nginx")),
            "In needs the key"
        );
        let back = labels(&[("app", "web"), ("tier", "back")]);
        assert!(!p.selects(&t("prod", &back, "nginx")));
        assert_eq!(p.id(), policy_id("no-shell-in-web"));
    }

    #[test]
    fn selector_operators_follow_kubernetes() {
        let sel = |op, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: op,
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        };
        let with = labels(&[("k", "a")]);
        let without = labels(&[]);
        assert!(sel(Operator::In, &["a", "b"]).matches(&with));
        assert!(!sel(Operator::In, &["b"]).matches(&with));
        assert!(!sel(Operator::In, &["a"]).matches(&without));
        assert!(sel(Operator::NotIn, &["b"]).matches(&with));
        assert!(
            sel(Operator::NotIn, &["b"]).matches(&without),
            "NotIn matches a missing key"
        );
        assert!(!sel(Operator::NotIn, &["a"]).matches(&with));
        assert!(sel(Operator::Exists, &[]).matches(&with));
        assert!(!sel(Operator::Exists, &[]).matches(&without));
        assert!(sel(Operator::DoesNotExist, &[]).matches(&without));
        assert!(
            LabelSelector::default().matches(&without),
            "empty selector matches everything"
        );
    }

    fn refused(yaml: &str) -> PolicyError {
        parse_documents(yaml, "bad.yaml").expect_err("must be refused")
    }

    #[test]
    fn bad_policies_are_refused_naming_field_and_reason() {
        let base = |spec: &str| {
            format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: p}}\nspec:\n{spec}")
        };
        let e = refused(&base(
            "  rules:\n  - exec: {paths: [bin/sh]}\n    action: kill\n",
        ));
        assert_eq!(e.field, "spec.rules[0].exec.paths[0]");
        assert!(e.reason.contains("absolute"), "{e}");
        let e = refused(&base("  rules:\n  - exec: {paths: [/bin/sh]}\n    action: kill\n  - exec: {paths: [/bin/sh]}\n    action: audit\n"));
        assert!(e.reason.contains("contradictory"), "{e}");
        let e = refused(&base(
            "  rules:\n  - exec: {paths: [/bin/sh]}\n    action: kill\n    fallback: kill\n",
        ));
        assert_eq!(e.field, "spec.rules[0].fallback");
        let e = refused(&base(
            "  rules:\n  - exec: {paths: [/bin/sh]}\n    open: {paths: [/x]}\n    action: kill\n",
        ));
        assert!(e.reason.contains("not both"), "{e}");
        let e = refused(&base("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n  rules:\n  - exec: {paths: [/x]}\n    action: audit\n"));
        assert!(e.field.ends_with(".values"), "{e}");
        let e = refused(&base("  rules: []\n"));
        assert_eq!(e.field, "spec.rules");
        let e = refused(&base(
            "  rules:\n  - exec: {paths: [/x]}\n    action: explode\n",
        ));
        assert!(e.to_string().contains("explode"), "{e}");
        let e = refused(&base(
            "  nmespaces: [a]\n  rules:\n  - exec: {paths: [/x]}\n    action: audit\n",
        ));
        assert!(
            e.to_string().contains("nmespaces"),
            "unknown fields are named: {e}"
        );
        let e = refused("apiVersion: v1\nkind: PodPolicy\nmetadata: {name: p}\nspec: {rules: [{exec: {paths: [/x]}, action: audit}]}\n");
        assert_eq!(e.field, "apiVersion");
        let e = refused("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: Bad_Name}\nspec: {rules: [{exec: {paths: [/x]}, action: audit}]}\n");
        assert_eq!(e.field, "metadata.name");
        assert!(refused("{{{").source_name.starts_with("bad.yaml"));
    }

    #[test]
    fn a_name_given_twice_is_refused_naming_both_places() {
        let p = "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: dup}\nspec: {rules: [{exec: {paths: [/x]}, action: audit}]}\n";
        let other = p.replace("dup", "other");
        let mut set = PolicySet::default();
        set.add(p, "a.yaml");
        set.add(&other, "b.yaml");
        set.add(p, "c.yaml");
        assert_eq!(
            set.policies.len(),
            1,
            "the duplicate is refused, the others stay"
        );
        assert_eq!(set.policies[0].policy.name(), "other");
        assert_eq!(set.errors.len(), 1);
        let msg = set.errors[0].to_string();
        assert!(msg.contains("c.yaml") && msg.contains("a.yaml"), "{msg}");
    }

    #[test]
    fn compiled_tables_cover_prefixes_by_component() {
        let mut set = PolicySet::default();
        set.add(EXAMPLE, "example.yaml");
        set.add("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: tmp-audit}\nspec: {rules: [{exec: {prefixes: [/tmp/x]}, action: audit}]}\n", "t.yaml");
        let rules = set.compile();
        let find = |path: &str, exact: bool| {
            rules
                .iter()
                .find(|r| r.kind == RuleKind::Exec && r.path == path && r.exact == exact)
        };
        assert_eq!(find("/bin/sh", true).unwrap().refs[0].action, Action::Kill);
        let nc = find("/usr/bin/nc", true).unwrap();
        assert_eq!(nc.refs[0].action, Action::Deny);
        assert!(nc.refs[0].fallback_kill);
        // "/tmp/x" is a component prefix: the exact "/tmp/x" and everything under "/tmp/x/".
        assert!(find("/tmp/x", true).is_some());
        // "/tmp/x/" lies under "/tmp/": it carries both policies' rules.
        let deep = find("/tmp/x/", false).unwrap();
        let ids: BTreeSet<u32> = deep.refs.iter().map(|r| r.policy_id).collect();
        assert_eq!(
            ids,
            [policy_id("tmp-audit"), policy_id("no-shell-in-web")].into()
        );
        let shadow = rules
            .iter()
            .find(|r| r.kind == RuleKind::Open(Access::Read) && r.path == "/etc/shadow/")
            .unwrap();
        assert_eq!(shadow.refs[0].action, Action::Audit);
        assert!(rules
            .iter()
            .any(|r| r.kind == RuleKind::Open(Access::Read) && r.path == "/etc/shadow" && r.exact));
    }

    #[test]
    fn the_shipped_example_policy_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies");
        let set = PolicySet::load_dir(&dir);
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        assert_eq!(set.policies.len(), 1);
        assert_eq!(
            set.policies[0].policy,
            parse_documents(EXAMPLE, "x").unwrap()[0]
        );
    }

    #[test]
    fn a_policy_dir_loads_good_files_and_reports_bad_ones() {
        let dir = std::env::temp_dir().join(format!("podmap-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), EXAMPLE).unwrap();
        std::fs::write(dir.join("b.yaml"), "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: b}\nspec: {rules: []}\n").unwrap();
        std::fs::write(dir.join("ignored.txt"), "not yaml").unwrap();
        let set = PolicySet::load_dir(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.errors.len(), 1);
        assert!(set.errors[0].source_name.contains("b.yaml"));
        assert!(PolicySet::load_dir(Path::new("/nonexistent/podmap"))
            .errors
            .is_empty());
    }
}
