//! Policy membership at creation (docs/decisions.md #10, #11): the container joins every policy of
//! the node's policy directory that selects it, before its record is written, so not even its
//! first exec escapes a policy. Selection is proto/'s, shared with podmap-nri and podmapd;
//! podmapd keeps memberships right afterwards (relabels, removals, policy changes).

use std::path::Path;

use podmap_bpf::ContainerMeta;
use podmap_policy::{Origin, PluginPolicies};
use podmap_writer::policy_target;

/// The ids of the policies selecting `meta` (from podmapd's published set, or the directory
/// when there is none: proto's `PluginPolicies`), and what was refused or could not be read
/// (podmapd reports refusals; the hook only logs them at debug). `own_namespace` is podmap's
/// (`--own-namespace`): never selected.
pub fn selecting(
    dir: &Path,
    meta: &ContainerMeta,
    own_namespace: Option<&str>,
) -> (Vec<u32>, Vec<String>) {
    let mut policies = PluginPolicies::new(dir);
    policies.refresh();
    let set = policies.set();
    let target = policy_target(meta, own_namespace);
    let mut refused: Vec<String> = set.errors.iter().map(|e| e.to_string()).collect();
    if let Origin::Directory { why: Some(why) } = policies.origin() {
        refused.push(format!(
            "podmapd's published policies cannot be read ({why}): the directory's own"
        ));
    }
    (set.selecting(&target), refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_bpf::ContainerId;

    #[test]
    fn selects_by_namespace_labels_and_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata:\n  name: no-shell-in-web\n\
             spec:\n  namespaces: [prod]\n  podSelector:\n    matchLabels: {app: web}\n\
             \x20 rules:\n  - exec: {paths: [/bin/sh]}\n    action: audit\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
        let mut meta = ContainerMeta {
            container_id: ContainerId("c".into()),
            namespace: "prod".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            name: "nginx".into(),
            ..Default::default()
        };
        let (ids, refused) = selecting(dir.path(), &meta, None);
        assert_eq!(ids, vec![podmap_policy::policy_id("no-shell-in-web")]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        meta.namespace = "dev".into();
        assert!(selecting(dir.path(), &meta, None).0.is_empty());
        assert!(selecting(&dir.path().join("none"), &meta, None)
            .0
            .is_empty());
    }
}
