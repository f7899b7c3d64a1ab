//! A record's metadata as a policy selector sees it: both plugins select a new container's
//! policies from the record they are about to write.

use podmap_bpf::ContainerMeta;
use podmap_policy::Target;

/// The policy target of a container record: its pod's namespace and own labels, its name,
/// whether it is a sandbox; `own_namespace` is podmap's (never selected).
pub fn policy_target<'a>(meta: &'a ContainerMeta, own_namespace: Option<&'a str>) -> Target<'a> {
    Target::container(
        &meta.namespace,
        &meta.labels,
        &meta.name,
        meta.sandbox,
        own_namespace,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_its_target() {
        let meta = ContainerMeta {
            namespace: "prod".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            name: "nginx".into(),
            sandbox: true,
            ..Default::default()
        };
        let t = policy_target(&meta, Some("podmap"));
        assert_eq!(t.namespace, "prod");
        assert_eq!(t.pod_labels, &meta.labels);
        assert_eq!(t.container_name, "nginx");
        assert!(t.sandbox);
        assert_eq!(t.own_namespace, Some("podmap"));
    }
}
