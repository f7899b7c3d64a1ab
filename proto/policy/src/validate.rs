//! Validation: every field of a policy checked before it can act, each refusal naming the source,
//! the field path and the reason.

use std::collections::HashMap;

use serde::Deserialize as _;

use crate::compile::KERNEL_PATH_MAX;
use crate::format::{Access, Action, Operator, PodPolicy, API_VERSION, KIND};

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

pub(crate) fn err(
    source_name: &str,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> PolicyError {
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
    if p.len() >= KERNEL_PATH_MAX {
        return Err(err(
            src,
            field,
            format!("paths are matched up to {} bytes", KERNEL_PATH_MAX - 1),
        ));
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
            let kills = r.action == Action::Kill || r.fallback == Some(Action::Kill);
            let writes = r.open.as_ref().is_some_and(|o| o.access != Access::Read);
            if kills && writes && !r.accept_kill_after_open {
                return Err(err(
                    src,
                    format!("{f}.action"),
                    "a kill on an open that may write acts after the open (the file is already \
                     truncated or created when the process dies): use deny (BPF-LSM refuses the \
                     open itself), or set acceptKillAfterOpen: true",
                ));
            }
            if r.accept_kill_after_open && !(kills && r.open.is_some()) {
                return Err(err(
                    src,
                    format!("{f}.acceptKillAfterOpen"),
                    "only open rules that kill take acceptKillAfterOpen",
                ));
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
