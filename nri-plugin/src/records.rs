//! From NRI messages to podmap's container records: the metadata a container or pod sandbox
//! carries, the cgroups path the runtime gave it, and the cgroup ids that path resolves to.
//!
//! Pure functions of the messages; which cgroup a path and a pid name is podmap-cgroup's
//! (`resolve_container`), what to do with the records is mapper.rs's.

use std::collections::{BTreeMap, HashMap};

use podmap_bpf::{ContainerId, ContainerMeta, PodUid};
use podmap_nri_protocol::api::{Container, PodSandbox};

/// Label keys the runtime adds to a pod's own labels (docs/decisions.md #8).
const RUNTIME_LABEL_PREFIXES: [&str; 2] = ["io.kubernetes.", "io.cri-containerd."];

/// Where containerd (and CRI-O) put a container's image name.
const IMAGE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
];

/// The name a pod sandbox's record carries (what CRI-O and kubelet call the infra container).
pub const SANDBOX_NAME: &str = "POD";

/// The pod's own labels: runtime-added keys stripped.
pub fn pod_labels(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !RUNTIME_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn pod_fields(pod: &PodSandbox, runtime: &str) -> ContainerMeta {
    ContainerMeta {
        pod_uid: (!pod.uid.is_empty()).then(|| PodUid(pod.uid.clone())),
        pod_name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        labels: pod_labels(&pod.labels),
        runtime: runtime.to_string(),
        ..Default::default()
    }
}

/// A workload container's record, without its cgroup path (known once resolved).
pub fn container_meta(pod: &PodSandbox, c: &Container, runtime: &str) -> ContainerMeta {
    let image = IMAGE_ANNOTATIONS
        .iter()
        .find_map(|k| c.annotations.get(*k))
        .cloned()
        .unwrap_or_default();
    ContainerMeta {
        container_id: ContainerId(c.id.clone()),
        name: c.name.clone(),
        image,
        sandbox: false,
        ..pod_fields(pod, runtime)
    }
}

/// The pod sandbox's own record: its pause process is attributed to the pod through it.
pub fn sandbox_meta(pod: &PodSandbox, runtime: &str) -> ContainerMeta {
    ContainerMeta {
        container_id: ContainerId(pod.id.clone()),
        name: SANDBOX_NAME.to_string(),
        sandbox: true,
        ..pod_fields(pod, runtime)
    }
}

/// The OCI cgroups path of a container, as the runtime reported it.
pub fn container_cgroups_path(c: &Container) -> Option<&str> {
    c.linux
        .as_ref()
        .map(|l| l.cgroups_path.as_str())
        .filter(|p| !p.trim().is_empty())
}

/// The cgroups path of a pod sandbox: the runtime's own when it reports one, else built from
/// the pod's cgroup parent and the sandbox id the way containerd and CRI-O build it
/// (`<parent>/<id>` for cgroupfs, `<parent slice>:<prefix>:<id>` for systemd).
pub fn sandbox_cgroups_path(pod: &PodSandbox, runtime: &str) -> Option<String> {
    let linux = pod.linux.as_ref()?;
    if !linux.cgroups_path.trim().is_empty() {
        return Some(linux.cgroups_path.clone());
    }
    let parent = linux.cgroup_parent.trim();
    if parent.is_empty() || pod.id.is_empty() {
        return None;
    }
    if parent.ends_with(".slice") && !parent.contains('/') {
        let prefix = if runtime.contains("cri-o") || runtime.contains("crio") {
            "crio"
        } else {
            "cri-containerd"
        };
        Some(format!("{parent}:{prefix}:{}", pod.id))
    } else {
        Some(format!("{}/{}", parent.trim_end_matches('/'), pod.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_cgroup::parse_cgroups_path;
    use podmap_nri_protocol::api::{LinuxContainer, LinuxPodSandbox};
    use podmap_nri_protocol::protobuf::MessageField;
    use std::path::PathBuf;

    const UID: &str = "12345678-1234-1234-1234-123456789abc";

    fn cid(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn pod(parent: &str, cgroups_path: &str) -> PodSandbox {
        let mut p = PodSandbox::new();
        p.id = cid('a');
        p.name = "web-1".into();
        p.uid = UID.into();
        p.namespace = "prod".into();
        for (k, v) in [
            ("app", "web"),
            ("tier", "front"),
            ("io.cri-containerd.kind", "sandbox"),
            ("io.kubernetes.pod.name", "web-1"),
        ] {
            p.labels.insert(k.into(), v.into());
        }
        let mut l = LinuxPodSandbox::new();
        l.cgroup_parent = parent.into();
        l.cgroups_path = cgroups_path.into();
        p.linux = MessageField::some(l);
        p
    }

    fn container(cgroups_path: &str) -> Container {
        let mut c = Container::new();
        c.id = cid('b');
        c.pod_sandbox_id = cid('a');
        c.name = "nginx".into();
        c.labels
            .insert("io.kubernetes.container.name".into(), "nginx".into());
        c.annotations
            .insert("io.kubernetes.cri.image-name".into(), "nginx:1.25".into());
        let mut l = LinuxContainer::new();
        l.cgroups_path = cgroups_path.into();
        c.linux = MessageField::some(l);
        c
    }

    #[test]
    fn container_record_carries_pod_and_stripped_labels() {
        let p = pod("/kubepods/besteffort/pod".to_owned().as_str(), "");
        let m = container_meta(&p, &container("/x"), "containerd");
        assert_eq!(m.container_id.0, cid('b'));
        assert_eq!(m.name, "nginx");
        assert_eq!(m.pod_uid, Some(PodUid(UID.into())));
        assert_eq!(m.pod_name, "web-1");
        assert_eq!(m.namespace, "prod");
        assert_eq!(
            m.labels,
            BTreeMap::from([
                ("app".into(), "web".into()),
                ("tier".into(), "front".into())
            ])
        );
        assert_eq!(m.image, "nginx:1.25");
        assert_eq!(m.runtime, "containerd");
        assert!(!m.sandbox);
        assert_eq!(m.cgroup_path, "", "filled once resolved");
    }

    #[test]
    fn sandbox_record_is_the_pods() {
        let p = pod("/kubepods/besteffort/podx", "");
        let m = sandbox_meta(&p, "containerd");
        assert_eq!(m.container_id.0, cid('a'));
        assert_eq!(m.name, SANDBOX_NAME);
        assert!(m.sandbox);
        assert_eq!(m.pod_uid, Some(PodUid(UID.into())));
        assert_eq!(m.labels.len(), 2);
    }

    #[test]
    fn sandbox_cgroups_paths() {
        let id = cid('a');
        let uid_us = UID.replace('-', "_");
        let cases = [
            // cgroupfs: parent plus sandbox id.
            (
                pod(&format!("/kubepods/besteffort/pod{UID}"), ""),
                "containerd",
                format!("/kubepods/besteffort/pod{UID}/{id}"),
                format!("kubepods/besteffort/pod{UID}/{id}"),
            ),
            (
                pod(&format!("/kubepods/pod{UID}/"), ""),
                "containerd",
                format!("/kubepods/pod{UID}/{id}"),
                format!("kubepods/pod{UID}/{id}"),
            ),
            // systemd: the parent slice, the runtime's scope prefix, the id.
            (
                pod(&format!("kubepods-besteffort-pod{uid_us}.slice"), ""),
                "containerd",
                format!("kubepods-besteffort-pod{uid_us}.slice:cri-containerd:{id}"),
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_us}.slice/cri-containerd-{id}.scope"
                ),
            ),
            (
                pod(&format!("kubepods-burstable-pod{uid_us}.slice"), ""),
                "cri-o",
                format!("kubepods-burstable-pod{uid_us}.slice:crio:{id}"),
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_us}.slice/crio-{id}.scope"
                ),
            ),
            // The runtime's own path wins.
            (
                pod("/ignored", "/custom/sandbox"),
                "containerd",
                "/custom/sandbox".to_string(),
                "custom/sandbox".to_string(),
            ),
        ];
        for (p, runtime, want, rel) in cases {
            let got = sandbox_cgroups_path(&p, runtime).unwrap();
            assert_eq!(got, want);
            assert_eq!(parse_cgroups_path(&got).unwrap(), PathBuf::from(rel));
        }
        assert_eq!(sandbox_cgroups_path(&pod("", ""), "containerd"), None);
        assert_eq!(sandbox_cgroups_path(&PodSandbox::new(), "containerd"), None);
    }

    #[test]
    fn container_cgroups_paths_in_both_notations() {
        let id = cid('b');
        let uid_us = UID.replace('-', "_");
        for (raw, rel) in [
            (
                format!("/kubepods/besteffort/pod{UID}/{id}"),
                format!("kubepods/besteffort/pod{UID}/{id}"),
            ),
            (
                format!("kubepods-besteffort-pod{uid_us}.slice:cri-containerd:{id}"),
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_us}.slice/cri-containerd-{id}.scope"
                ),
            ),
        ] {
            let c = container(&raw);
            let path = container_cgroups_path(&c).unwrap();
            assert_eq!(parse_cgroups_path(path).unwrap(), PathBuf::from(rel));
        }
        assert_eq!(container_cgroups_path(&container("  ")), None);
        assert_eq!(container_cgroups_path(&Container::new()), None);
    }
}
