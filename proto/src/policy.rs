//! Kubernetes-scoped policies (`PodPolicy`, podmap.dev/v1alpha1): the format, its validation, the
//! selectors (Kubernetes LabelSelector semantics), and the compiled rule tables the kernel
//! programs match against. Shared by podmapd and the runtime plugins, so all three decide
//! membership the same way.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

mod published;
pub use published::{Origin, PluginPolicies, ACTIVE_FILE};

pub const API_VERSION: &str = "podmap.dev/v1alpha1";
pub const KIND: &str = "PodPolicy";

/// Files podmapd writes for the cluster's PodPolicy resources (docs/decisions.md #10) are named
/// `podpolicy.<resource name>.yaml`...
pub const MIRRORED_PREFIX: &str = "podpolicy.";
/// ...and start with this line: podmapd only ever rewrites or removes files that carry it, so a
/// hand-written file that happens to share the prefix is left alone.
pub const MIRRORED_HEADER: &str =
    "# Mirrored by podmapd from a PodPolicy resource: edit the resource, not this file.";

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
    /// The namespace podmap itself runs in (`POD_NAMESPACE`), when known.
    pub own_namespace: Option<&'a str>,
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
    /// podmap's own namespace is never selected, even when listed: a policy must not be able to
    /// stop podmap itself.
    pub fn selects(&self, t: &Target<'_>) -> bool {
        let s = &self.spec;
        !t.sandbox
            && t.own_namespace
                .is_none_or(|own| own.is_empty() || own != t.namespace)
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

/// How many rule references one kernel entry holds, and how many entries each rule table holds:
/// bpf/c/podmap.h's PODMAP_RULE_REFS and PODMAP_MAX_RULES (podmapd's tests check they agree;
/// proto does not depend on the bpf crate so that the OCI hook's policy code stays small).
pub const KERNEL_RULE_REFS: usize = 16;
pub const KERNEL_MAX_ENTRIES: usize = 8192;

/// What one kernel rule table can hold. A policy that would not fit is refused whole, so a
/// loaded policy always acts on every path it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub refs_per_entry: usize,
    pub entries_per_table: usize,
}

impl Limits {
    pub const KERNEL: Limits = Limits {
        refs_per_entry: KERNEL_RULE_REFS,
        entries_per_table: KERNEL_MAX_ENTRIES,
    };
}

/// A policy and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub policy: PodPolicy,
    pub source: String,
    /// The file is one podmapd mirrored from a PodPolicy resource (its name and first line say
    /// so): a hand-written file wins any conflict with it.
    pub mirrored: bool,
}

impl Loaded {
    /// Where the policy came from, as errors name it.
    fn describe(&self) -> String {
        if self.mirrored {
            format!("{} (mirrored from a PodPolicy resource)", self.source)
        } else {
            self.source.clone()
        }
    }
}

/// The policies in force, and what was refused (and why). Refused files do not take the others
/// down.
#[derive(Debug, Default, Clone)]
pub struct PolicySet {
    pub policies: Vec<Loaded>,
    pub errors: Vec<PolicyError>,
}

/// Policies as read from files, before names, ids and the kernel's limits are checked
/// ([`Candidates::resolve`]).
#[derive(Debug, Default, Clone)]
pub struct Candidates {
    loaded: Vec<Loaded>,
    errors: Vec<PolicyError>,
    /// Files refused whole (unreadable, unparsable, invalid): a [`PolicyDir`] keeps their last
    /// valid policies active.
    failed_files: HashSet<String>,
    /// A file could not be read (I/O, not content): worth reading again even if the listing
    /// stays the same.
    unreadable: bool,
}

fn dir_error(dir: &Path, e: &std::io::Error) -> PolicyError {
    err(
        &dir.display().to_string(),
        "",
        format!("reading the directory: {e}"),
    )
}

impl Candidates {
    /// Reads every `*.yaml` (and `*.yml`) file of `dir`, in name order. A missing directory has
    /// no policies; a directory that cannot be listed is an error, so that a caller can keep
    /// what it had instead of taking it for an empty one.
    pub fn read_dir(dir: &Path) -> Result<Candidates, PolicyError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Candidates::default()),
            Err(e) => return Err(dir_error(dir, &e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            // An error mid-listing would silently leave files out: the listing fails whole.
            let path = entry.map_err(|e| dir_error(dir, &e))?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
        files.sort();
        let mut c = Candidates::default();
        for f in files {
            let src = f.display().to_string();
            match std::fs::read_to_string(&f) {
                Ok(text) => c.add(&text, &src),
                // Removed since the listing: it is simply gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    c.errors.push(err(&src, "", format!("reading: {e}")));
                    c.failed_files.insert(src);
                    c.unreadable = true;
                }
            }
        }
        Ok(c)
    }

    /// Adds the policies of one file's text; a file with any bad document is refused whole.
    pub fn add(&mut self, text: &str, src: &str) {
        let mirrored = Path::new(src)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with(MIRRORED_PREFIX))
            && text.lines().next() == Some(MIRRORED_HEADER);
        match parse_documents(text, src) {
            Ok(ps) => self.loaded.extend(ps.into_iter().map(|policy| Loaded {
                policy,
                source: src.to_string(),
                mirrored,
            })),
            Err(e) => {
                self.errors.push(e);
                self.failed_files.insert(src.to_string());
            }
        }
    }

    /// Decides what is in force. Policies sharing an id (the same name twice, or two names whose
    /// ids collide) are all refused, each naming the others, except that one hand-written file
    /// wins over mirrored resources: a cluster resource must not displace a node's own policy.
    /// Then each policy must fit the kernel's tables: one that would overflow an entry or a table
    /// is refused whole, naming the path. `first` (name and file of the policies active so far)
    /// are fitted first, so a newcomer never displaces an active policy; the rest go in name
    /// order.
    pub fn resolve(self, first: &HashSet<(String, String)>, limits: Limits) -> PolicySet {
        let Candidates {
            loaded, mut errors, ..
        } = self;
        let mut by_id: BTreeMap<u32, Vec<Loaded>> = BTreeMap::new();
        for l in loaded {
            by_id.entry(l.policy.id()).or_default().push(l);
        }
        let mut survivors = Vec::new();
        for (_, mut group) in by_id {
            if group.len() == 1 {
                survivors.extend(group);
                continue;
            }
            let hand: Vec<usize> = (0..group.len()).filter(|&i| !group[i].mirrored).collect();
            if let [winner] = hand[..] {
                let w = group.remove(winner);
                for l in &group {
                    errors.push(err(
                        &l.describe(),
                        "metadata.name",
                        format!(
                            "policy {:?} {} the hand-written file {}, which wins over a mirrored resource; rename the resource",
                            l.policy.name(),
                            clash(&l.policy, &w.policy),
                            w.source
                        ),
                    ));
                }
                survivors.push(w);
                continue;
            }
            for (i, l) in group.iter().enumerate() {
                let others: Vec<String> = group
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, o)| format!("{} {}", clash(&l.policy, &o.policy), o.describe()))
                    .collect();
                errors.push(err(
                    &l.describe(),
                    "metadata.name",
                    format!(
                        "policy {:?} {}; all are refused until they are renamed",
                        l.policy.name(),
                        others.join(", and ")
                    ),
                ));
            }
        }
        survivors.sort_by(|a, b| {
            let active =
                |l: &Loaded| first.contains(&(l.policy.name().to_string(), l.source.clone()));
            let (fa, fb) = (active(a), active(b));
            fb.cmp(&fa)
                .then_with(|| a.policy.name().cmp(b.policy.name()))
        });
        let mut fit = Fitter {
            limits,
            direct: BTreeMap::new(),
            names: HashMap::new(),
        };
        let mut policies = Vec::new();
        for l in survivors {
            match fit.try_add(&l.policy) {
                Ok(()) => policies.push(l),
                Err((field, reason)) => errors.push(err(&l.describe(), field, reason)),
            }
        }
        // Back to file order, as listed in status.
        policies.sort_by(|a, b| a.source.cmp(&b.source));
        PolicySet { policies, errors }
    }
}

/// How `p` clashes with `other`, which shares its id.
fn clash(p: &PodPolicy, other: &PodPolicy) -> String {
    if p.name() == other.name() {
        "is also defined in".to_string()
    } else {
        format!(
            "has the same id ({:#010x}) as policy {:?} in",
            p.id(),
            other.name()
        )
    }
}

type EntryKey = (Table, String, bool);

/// Every rule reference `p` puts straight on an entry (before prefixes are closed over).
fn direct_refs(p: &PodPolicy) -> Vec<(EntryKey, RuleRef)> {
    let mut out = Vec::new();
    for (idx, r) in p.spec.rules.iter().enumerate() {
        let (table, access, paths, prefixes) = match (&r.exec, &r.open) {
            (Some(m), _) => (Table::Exec, None, &m.paths, &m.prefixes),
            (None, Some(o)) => (Table::Open, Some(o.access), &o.paths, &o.prefixes),
            (None, None) => continue,
        };
        let rr = RuleRef {
            policy_id: p.id(),
            rule_index: idx as u16,
            action: r.action,
            fallback_kill: r.fallback == Some(Action::Kill),
            access,
        };
        for path in paths {
            out.push(((table, path.clone(), true), rr));
        }
        for prefix in prefixes {
            // Component prefixes: "/etc/ssl" covers "/etc/ssl" itself and "/etc/ssl/...".
            let trimmed = prefix.trim_end_matches('/');
            if !trimmed.is_empty() && !prefix.ends_with('/') {
                out.push(((table, trimmed.to_string(), true), rr));
            }
            out.push(((table, format!("{trimmed}/"), false), rr));
        }
    }
    out
}

type Direct = BTreeMap<EntryKey, BTreeSet<RuleRef>>;

/// The references the kernel must find at `key`: its own, and those of every prefix entry it
/// lies under (the longest-prefix lookup finds only the one entry). Prefix entries end in '/',
/// so they are the path up to each of its '/'.
fn closure(key: &EntryKey, layers: &[&Direct]) -> BTreeSet<RuleRef> {
    let (table, path, _) = key;
    let mut refs = BTreeSet::new();
    let mut add = |k: &EntryKey| {
        for d in layers {
            if let Some(r) = d.get(k) {
                refs.extend(r.iter().copied());
            }
        }
    };
    add(key);
    for (i, _) in path.match_indices('/') {
        add(&(*table, path[..=i].to_string(), false));
    }
    refs
}

/// The tables as policies are added, refusing what would not fit.
struct Fitter {
    limits: Limits,
    direct: Direct,
    names: HashMap<u32, String>,
}

impl Fitter {
    /// Adds `p` if the tables still fit afterwards; otherwise the field and reason of the refusal.
    fn try_add(&mut self, p: &PodPolicy) -> Result<(), (String, String)> {
        let mut mine: Direct = BTreeMap::new();
        for (k, r) in direct_refs(p) {
            mine.entry(k).or_default().insert(r);
        }
        for table in [Table::Exec, Table::Open] {
            let count = |d: &Direct| d.keys().filter(|k| k.0 == table).count();
            let new = mine
                .keys()
                .filter(|k| k.0 == table && !self.direct.contains_key(*k))
                .count();
            let total = count(&self.direct) + new;
            if new > 0 && total > self.limits.entries_per_table {
                return Err((
                    "spec.rules".into(),
                    format!(
                        "policy {:?}: the kernel's {} rule table would need {total} entries and holds {}: the policy is refused, the others stay",
                        p.name(),
                        table.as_str(),
                        self.limits.entries_per_table
                    ),
                ));
            }
        }
        // Entries whose references change: this policy's, and those under its prefixes.
        let mut affected: BTreeSet<&EntryKey> = mine.keys().collect();
        for k in mine.keys().filter(|k| !k.2) {
            affected.extend(
                self.direct
                    .range(k.clone()..)
                    .map(|(k2, _)| k2)
                    .take_while(|k2| k2.0 == k.0 && k2.1.starts_with(&k.1)),
            );
        }
        for key in affected {
            let refs = closure(key, &[&self.direct, &mine]);
            if refs.len() <= self.limits.refs_per_entry {
                continue;
            }
            let id = p.id();
            let rule = refs
                .iter()
                .filter(|r| r.policy_id == id)
                .map(|r| r.rule_index)
                .min()
                .unwrap_or(0);
            let others: BTreeSet<&str> = refs
                .iter()
                .filter(|r| r.policy_id != id)
                .filter_map(|r| self.names.get(&r.policy_id).map(String::as_str))
                .collect();
            let others: Vec<&str> = others.into_iter().collect();
            let (table, path, exact) = key;
            return Err((
                format!("spec.rules[{rule}]"),
                format!(
                    "policy {:?}: {} {}{path:?} would be matched by {} rules ({} of this policy, the others of {}); one kernel entry holds {}: the policy is refused, the others stay",
                    p.name(),
                    table.as_str(),
                    if *exact { "path " } else { "prefix " },
                    refs.len(),
                    refs.iter().filter(|r| r.policy_id == id).count(),
                    if others.is_empty() { "none".to_string() } else { others.join(", ") },
                    self.limits.refs_per_entry
                ),
            ));
        }
        for (k, r) in mine {
            self.direct.entry(k).or_default().extend(r);
        }
        self.names.insert(p.id(), p.name().to_string());
        Ok(())
    }
}

impl PolicySet {
    /// Reads `dir` and decides what is in force, with no history (the OCI hook looks once per
    /// container). A directory that cannot be read is an error of the set, not an empty one.
    pub fn load_dir(dir: &Path) -> PolicySet {
        match Candidates::read_dir(dir) {
            Ok(c) => c.resolve(&HashSet::new(), Limits::KERNEL),
            Err(e) => PolicySet {
                policies: Vec::new(),
                errors: vec![e],
            },
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

    /// The kernel's rule tables: one entry per distinct (table, path, exact/prefix), listing
    /// every policy rule that applies to that path (open rules of every access kind share an
    /// entry, each reference carrying its access). An entry also lists the rules of every
    /// prefix it lies under, because the kernel's longest-prefix lookup finds one entry.
    pub fn compile(&self) -> Vec<KernelRule> {
        let mut direct: Direct = BTreeMap::new();
        for l in &self.policies {
            for (k, r) in direct_refs(&l.policy) {
                direct.entry(k).or_default().insert(r);
            }
        }
        direct
            .keys()
            .map(|key| KernelRule {
                table: key.0,
                path: key.1.clone(),
                exact: key.2,
                refs: closure(key, &[&direct]).into_iter().collect(),
            })
            .collect()
    }
}

/// A policy directory kept current: reloaded when its listing (names, sizes, times) changes.
/// A file that stops loading keeps its last valid policies active; only a file that is gone
/// takes its policies with it (the refusal is still reported). A directory that cannot be read
/// (anything but "does not exist") keeps the whole last good set, and is reported and counted.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    fingerprint: Option<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>>,
    set: PolicySet,
    reloads: u64,
    read_failures: u64,
    /// The current failure to read the directory, also among `set.errors`.
    dir_error: Option<PolicyError>,
}

impl PolicyDir {
    pub fn new(dir: &Path) -> Self {
        PolicyDir {
            dir: dir.to_owned(),
            fingerprint: None,
            set: PolicySet::default(),
            reloads: 0,
            read_failures: 0,
            dir_error: None,
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

    /// Failed reads of the directory or of one of its files, since this started.
    pub fn read_failures(&self) -> u64 {
        self.read_failures
    }

    #[allow(clippy::type_complexity)]
    fn listing(&self) -> std::io::Result<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut v = Vec::new();
        for e in rd {
            let e = e?;
            // Only what `Candidates::read_dir` reads: the file podmapd publishes here must not
            // look like a change of the directory (it would reload, and publish, forever).
            let path = e.path();
            if !path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                continue;
            }
            // A file removed since the listing has no metadata: it is gone.
            if let Ok(md) = e.metadata() {
                v.push((path, md.modified().ok(), md.len()));
            }
        }
        v.sort();
        Ok(v)
    }

    /// Reloads if the directory changed since the last look (or was never read); returns
    /// whether the set or its errors changed.
    pub fn refresh(&mut self) -> bool {
        let fp = match self.listing() {
            Ok(fp) => fp,
            Err(e) => return self.unreadable(dir_error(&self.dir, &e)),
        };
        if self.fingerprint.as_ref() == Some(&fp) {
            return false;
        }
        let mut next = match Candidates::read_dir(&self.dir) {
            Ok(c) => c,
            Err(e) => return self.unreadable(e),
        };
        // A file that could not be read is read again at the next look, even if the listing
        // stays the same.
        if next.unreadable {
            self.read_failures += 1;
            self.fingerprint = None;
        } else {
            self.fingerprint = Some(fp);
        }
        let carried: Vec<Loaded> = self
            .set
            .policies
            .iter()
            .filter(|l| next.failed_files.contains(&l.source) && Path::new(&l.source).exists())
            .filter(|l| {
                next.loaded
                    .iter()
                    .all(|n| n.policy.name() != l.policy.name())
            })
            .cloned()
            .collect();
        next.loaded.extend(carried);
        let active: HashSet<(String, String)> = self
            .set
            .policies
            .iter()
            .map(|l| (l.policy.name().to_string(), l.source.clone()))
            .collect();
        self.set = next.resolve(&active, Limits::KERNEL);
        self.dir_error = None;
        self.reloads += 1;
        true
    }

    /// The directory could not be read: the last good set stays, with the error among its own.
    fn unreadable(&mut self, e: PolicyError) -> bool {
        self.read_failures += 1;
        // Read again as soon as it can be, whatever the listing then looks like.
        self.fingerprint = None;
        let e = PolicyError {
            reason: format!(
                "{}; the {} policies last loaded stay active",
                e.reason,
                self.set.policies.len()
            ),
            ..e
        };
        if self.dir_error.as_ref() == Some(&e) {
            return false;
        }
        if let Some(old) = self.dir_error.take() {
            self.set.errors.retain(|x| *x != old);
        }
        self.set.errors.push(e.clone());
        self.dir_error = Some(e);
        true
    }
}

/// Which kernel rule table an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Exec,
    Open,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Exec => "exec",
            Table::Open => "open",
        }
    }
}

/// One policy rule, as the kernel tables reference it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy_id: u32,
    pub rule_index: u16,
    pub action: Action,
    pub fallback_kill: bool,
    /// Open rules: which opens the rule is for; none for exec rules.
    pub access: Option<Access>,
}

/// One entry of the kernel's rule tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub table: Table,
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
            own_namespace: None,
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
    fn podmaps_own_namespace_is_never_selected() {
        let everything = parse_documents(
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: all}\n\
             spec: {rules: [{exec: {paths: [/bin/sh]}, action: kill}]}\n",
            "all.yaml",
        )
        .unwrap()
        .remove(0);
        let listed = parse_documents(
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: listed}\n\
             spec: {namespaces: [podmap, prod], rules: [{exec: {paths: [/bin/sh]}, action: kill}]}\n",
            "listed.yaml",
        )
        .unwrap()
        .remove(0);
        let none = labels(&[]);
        let t = |ns, own| Target {
            namespace: ns,
            pod_labels: &none,
            container_name: "c",
            sandbox: false,
            own_namespace: own,
        };
        for p in [&everything, &listed] {
            // A kill policy on podmap's own pods could stop podmap itself.
            assert!(!p.selects(&t("podmap", Some("podmap"))), "{}", p.name());
            assert!(p.selects(&t("prod", Some("podmap"))), "{}", p.name());
        }
        // Not knowing its namespace (standalone), podmap has none to spare.
        assert!(everything.selects(&t("podmap", None)));
        // An empty own namespace (POD_NAMESPACE set but empty) spares nothing, not "".
        assert!(everything.selects(&t("", Some(""))));
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

    fn named(name: &str, rules: &str) -> String {
        format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\nspec: {{rules: [{rules}]}}\n")
    }

    fn active(set: &PolicySet) -> Vec<(&str, &str)> {
        set.policies
            .iter()
            .map(|l| (l.policy.name(), l.source.as_str()))
            .collect()
    }

    #[test]
    fn three_copies_of_a_name_are_all_refused_each_naming_the_others() {
        let p = named("dup", "{exec: {paths: [/x]}, action: audit}");
        let mut set = Candidates::default();
        for src in ["a.yaml", "b.yaml", "c.yaml"] {
            set.add(&p, src);
        }
        set.add(
            &named("other", "{exec: {paths: [/x]}, action: audit}"),
            "d.yaml",
        );
        let set = set.resolve(&HashSet::new(), Limits::KERNEL);
        assert_eq!(active(&set), [("other", "d.yaml")], "{:?}", set.errors);
        assert_eq!(set.errors.len(), 3, "one error per party: {:?}", set.errors);
        for (src, others) in [
            ("a.yaml", ["b.yaml", "c.yaml"]),
            ("b.yaml", ["a.yaml", "c.yaml"]),
            ("c.yaml", ["a.yaml", "b.yaml"]),
        ] {
            let e = set
                .errors
                .iter()
                .find(|e| e.source_name == src)
                .unwrap_or_else(|| panic!("{src} not named: {:?}", set.errors));
            assert_eq!(e.field, "metadata.name");
            assert!(others.iter().all(|o| e.reason.contains(o)), "{e}");
        }
    }

    #[test]
    fn names_whose_ids_collide_are_all_refused_and_say_so() {
        assert_eq!(
            policy_id("p179bb"),
            policy_id("p54848"),
            "a known collision"
        );
        let mut set = Candidates::default();
        set.add(
            &named("p179bb", "{exec: {paths: [/x]}, action: kill}"),
            "a.yaml",
        );
        set.add(
            &named("p54848", "{exec: {paths: [/y]}, action: audit}"),
            "b.yaml",
        );
        let set = set.resolve(&HashSet::new(), Limits::KERNEL);
        assert_eq!(active(&set), [], "{:?}", set.errors);
        assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
        for (src, other) in [("a.yaml", "p54848"), ("b.yaml", "p179bb")] {
            let e = set.errors.iter().find(|e| e.source_name == src).unwrap();
            assert!(
                e.reason.contains("same id") && e.reason.contains(other),
                "{e}"
            );
        }
    }

    #[test]
    fn a_hand_written_file_wins_over_a_mirrored_resource() {
        let dir = tempfile::tempdir().unwrap();
        let mirrored =
            |name: &str, rules: &str| format!("{MIRRORED_HEADER}\n{}", named(name, rules));
        // Same name: the hand-written file sorts after the mirrored one and still wins.
        std::fs::write(
            dir.path().join("zz-web.yaml"),
            named("web", "{exec: {paths: [/x]}, action: kill}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("podpolicy.web.yaml"),
            mirrored("web", "{exec: {paths: [/x]}, action: audit}"),
        )
        .unwrap();
        // Colliding ids: a resource cannot displace a node policy by choosing a colliding name.
        std::fs::write(
            dir.path().join("zz-node.yaml"),
            named("p54848", "{exec: {paths: [/y]}, action: kill}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("podpolicy.p179bb.yaml"),
            mirrored("p179bb", "{exec: {paths: [/y]}, action: audit}"),
        )
        .unwrap();
        let set = PolicySet::load_dir(dir.path());
        let names: BTreeSet<&str> = set.policies.iter().map(|l| l.policy.name()).collect();
        assert_eq!(names, ["p54848", "web"].into(), "{:?}", set.errors);
        assert!(
            set.policies.iter().all(|l| l.source.contains("zz-")),
            "{:?}",
            active(&set)
        );
        assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
        for (file, winner) in [
            ("podpolicy.web.yaml", "zz-web.yaml"),
            ("podpolicy.p179bb.yaml", "zz-node.yaml"),
        ] {
            let e = set
                .errors
                .iter()
                .find(|e| e.source_name.contains(file))
                .unwrap_or_else(|| panic!("{file} not named: {:?}", set.errors));
            assert!(
                e.source_name.contains("mirrored from a PodPolicy resource"),
                "{e}"
            );
            assert!(
                e.reason.contains(winner) && e.reason.contains("hand-written"),
                "{e}"
            );
        }
    }

    fn seventeen_shell_killers(dir: &Path) {
        for i in 1..=17 {
            let name = format!("ns-{i:02}");
            let text = format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\nspec: {{namespaces: [{name}], rules: [{{exec: {{paths: [/bin/sh]}}, action: kill}}]}}\n");
            std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
        }
    }

    #[test]
    fn a_policy_that_overflows_a_kernel_entry_is_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        seventeen_shell_killers(dir.path());
        let mut pd = PolicyDir::new(dir.path());
        pd.refresh();
        let set = pd.set();
        assert_eq!(set.policies.len(), 16, "{:?}", set.errors);
        assert_eq!(set.errors.len(), 1, "{:?}", set.errors);
        let e = &set.errors[0];
        assert!(e.source_name.contains("ns-17.yaml"), "{e}");
        assert!(
            e.reason.contains("\"/bin/sh\"") && e.reason.contains("17") && e.reason.contains("16"),
            "{e}"
        );
        let tables = set.compile();
        assert!(tables.iter().all(|r| r.refs.len() <= 16), "{tables:?}");
        // A newcomer that sorts first does not displace an active policy: it is the one refused.
        std::fs::write(
            dir.path().join("aa.yaml"),
            named("aa", "{exec: {paths: [/bin/sh]}, action: audit}"),
        )
        .unwrap();
        pd.refresh();
        let set = pd.set();
        let names: BTreeSet<&str> = set.policies.iter().map(|l| l.policy.name()).collect();
        assert_eq!(names.len(), 16);
        assert!(
            !names.contains("aa") && !names.contains("ns-17"),
            "{names:?}"
        );
        assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
    }

    #[test]
    fn a_failed_read_of_the_directory_keeps_the_last_good_set() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), EXAMPLE).unwrap();
        let mut pd = PolicyDir::new(&dir);
        pd.refresh();
        assert_eq!(pd.set().policies.len(), 1);
        let aside = base.path().join("aside");
        std::fs::rename(&dir, &aside).unwrap();
        // The directory replaced by a file, then by a symlink loop: unreadable, not empty.
        std::fs::write(&dir, "not a directory").unwrap();
        for broken in ["Not a directory", "symbolic links"] {
            if broken == "symbolic links" {
                std::fs::remove_file(&dir).unwrap();
                std::os::unix::fs::symlink(&dir, &dir).unwrap();
            }
            pd.refresh();
            let set = pd.set();
            assert_eq!(set.policies.len(), 1, "{broken}: the last good set stays");
            assert!(
                set.errors
                    .iter()
                    .any(|e| e.source_name.contains(&*dir.to_string_lossy())
                        && e.reason.contains(broken)
                        && e.reason.contains("last loaded")),
                "{broken}: {:?}",
                set.errors
            );
        }
        assert_eq!(pd.read_failures(), 2);
        // Back: read again, the error is gone.
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&aside, &dir).unwrap();
        pd.refresh();
        assert_eq!(pd.set().policies.len(), 1);
        assert!(pd.set().errors.is_empty(), "{:?}", pd.set().errors);
        // Gone for good: no directory is no policy (not a failure).
        std::fs::remove_dir_all(&dir).unwrap();
        pd.refresh();
        assert!(pd.set().policies.is_empty() && pd.set().errors.is_empty());
        assert_eq!(pd.read_failures(), 2);
    }

    #[test]
    fn compiled_tables_cover_prefixes_by_component() {
        let mut set = Candidates::default();
        set.add(EXAMPLE, "example.yaml");
        set.add("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: tmp-audit}\nspec: {rules: [{exec: {prefixes: [/tmp/x]}, action: audit}]}\n", "t.yaml");
        let rules = set.resolve(&HashSet::new(), Limits::KERNEL).compile();
        let find = |path: &str, exact: bool| {
            rules
                .iter()
                .find(|r| r.table == Table::Exec && r.path == path && r.exact == exact)
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
            .find(|r| r.table == Table::Open && r.path == "/etc/shadow/")
            .unwrap();
        assert_eq!(shadow.refs[0].action, Action::Audit);
        assert_eq!(shadow.refs[0].access, Some(Access::Read));
        assert!(rules
            .iter()
            .any(|r| r.table == Table::Open && r.path == "/etc/shadow" && r.exact));
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
