//! A workload container's pod labels come from its sandbox (docs/decisions.md #7: on CRI-O a
//! workload container's annotations carry container labels). The sandbox's own createRuntime hook
//! ran first and mapped it with the pod's labels, so its record is found, without any lock, in the
//! pinned map: at the cgroup next to the container's (same parent, the sandbox's id in place of the
//! container's), else by a scan of the map. The hook's store (behind its lock) is the last resort,
//! after the map write.
//!
//! The record must be complete at the first map write: podmapd reads a cgroup's metadata once
//! and re-validates it only every few seconds, so a rewrite would not be seen at once.

use podmap_bpf::{ContainerId, ContainerMeta, SharedMaps};
use podmap_cgroup::CgroupLayout;

/// How the sandbox's record was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// At the cgroup path derived from the container's.
    Sibling,
    /// By scanning the map's metadata.
    Scan,
}

/// The sandbox's cgroup path: the container's with the sandbox's id in place of the container's
/// (`/kubepods/pod<uid>/crio-<id>`, `...slice/crio-<id>.scope`, `<parent>/<id>`).
pub fn sibling_path(path: &str, container: &ContainerId, sandbox: &ContainerId) -> Option<String> {
    let at = path.rfind(container.0.as_str())?;
    Some(format!(
        "{}{}{}",
        &path[..at],
        sandbox.0,
        &path[at + container.0.len()..]
    ))
}

/// The sandbox's metadata from the pinned map.
pub fn find(
    maps: &SharedMaps,
    layout: &CgroupLayout,
    container_path: &str,
    container: &ContainerId,
    sandbox: &ContainerId,
) -> Option<(ContainerMeta, Found)> {
    let is_sandbox = |m: &ContainerMeta| m.container_id == *sandbox;
    if let Some(path) = sibling_path(container_path, container, sandbox) {
        let ids = layout.resolve(std::path::Path::new(&path));
        for key in ids.keys() {
            if let Ok(Some(m)) = maps.records.meta(key) {
                if is_sandbox(&m) {
                    return Some((m, Found::Sibling));
                }
            }
        }
    }
    maps.records
        .keys()
        .into_iter()
        .filter_map(|k| maps.records.meta(k).ok().flatten())
        .find(is_sandbox)
        .map(|m| (m, Found::Scan))
}

/// A workload container's pod fields from its sandbox's record: the labels always, names only
/// where the container's annotations lacked them. Returns whether anything changed.
pub fn fill_from_sandbox(meta: &mut ContainerMeta, sandbox: &ContainerMeta) -> bool {
    let before = meta.clone();
    meta.labels = sandbox.labels.clone();
    if meta.pod_name.is_empty() {
        meta.pod_name = sandbox.pod_name.clone();
    }
    if meta.namespace.is_empty() {
        meta.namespace = sandbox.namespace.clone();
    }
    if meta.pod_uid.is_none() {
        meta.pod_uid = sandbox.pod_uid.clone();
    }
    *meta != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_bpf::PodUid;

    #[test]
    fn sibling_paths() {
        let c = ContainerId("c1".into());
        let s = ContainerId("sb".into());
        let cases = [
            (
                "kubepods/besteffort/pod1/crio-c1",
                Some("kubepods/besteffort/pod1/crio-sb"),
            ),
            (
                "kubepods.slice/kubepods-pod1.slice/crio-c1.scope/container",
                Some("kubepods.slice/kubepods-pod1.slice/crio-sb.scope/container"),
            ),
            ("parent/c1", Some("parent/sb")),
            ("parent/other", None),
        ];
        for (path, want) in cases {
            assert_eq!(sibling_path(path, &c, &s).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn sandbox_labels_replace_container_labels() {
        let mut m = ContainerMeta {
            container_id: ContainerId("c".into()),
            pod_name: "web-1".into(),
            labels: [("x".to_string(), "container".to_string())].into(),
            ..Default::default()
        };
        let sb = ContainerMeta {
            container_id: ContainerId("sb".into()),
            pod_name: "ignored".into(),
            namespace: "prod".into(),
            pod_uid: Some(PodUid("u".into())),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        assert!(fill_from_sandbox(&mut m, &sb));
        assert_eq!(m.labels, sb.labels);
        assert_eq!(m.pod_name, "web-1", "the container's own annotations win");
        assert_eq!(m.namespace, "prod");
        assert!(!fill_from_sandbox(&mut m, &sb), "idempotent");
    }
}
