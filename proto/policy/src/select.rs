//! Selection: what a policy is evaluated against at container creation (`Target`) and
//! Kubernetes LabelSelector semantics. The same code decides membership in podmapd and in both
//! runtime plugins.

use std::collections::BTreeMap;

use crate::format::{policy_id, LabelSelector, Operator, PodPolicy};

/// What a selector is evaluated against: what the runtime knows at container creation.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
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

impl<'a> Target<'a> {
    /// A container: its pod's namespace and own labels, its name, whether it is the pod's
    /// sandbox, and the namespace podmap runs in (never selected) when known. The only way to
    /// build a target (podmap-writer's `policy_target` does it for a record's metadata), so the
    /// plugins and podmapd evaluate the same thing.
    pub fn container(
        namespace: &'a str,
        pod_labels: &'a BTreeMap<String, String>,
        container_name: &'a str,
        sandbox: bool,
        own_namespace: Option<&'a str>,
    ) -> Self {
        Target {
            namespace,
            pod_labels,
            container_name,
            sandbox,
            own_namespace,
        }
    }
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
