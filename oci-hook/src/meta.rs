//! The container's record, from what the runtime told the hook: the state, the annotations and
//! the resolved cgroup, and which runtime ran the hook.

use std::collections::BTreeMap;

use podmap_bpf::ContainerMeta;

use crate::annotations::{self, ContainerKind, KubeMeta};
use crate::state::State;

pub fn container_meta(
    state: &State,
    ann: &BTreeMap<String, String>,
    kube: Option<&KubeMeta>,
    cgroup_path: &str,
) -> ContainerMeta {
    let runtime = annotations::manager(ann)
        .map(str::to_owned)
        .unwrap_or_else(|| oci_runtime(state, &parent_comm()).to_string());
    let mut meta = ContainerMeta {
        container_id: state.id.clone(),
        runtime,
        cgroup_path: cgroup_path.to_string(),
        // At createRuntime the state's pid is the container's init, not yet running its program.
        init_pid: state.pid.map(|p| p.0),
        ..ContainerMeta::default()
    };
    if let Some(k) = kube {
        meta.name = k.container_name.clone();
        meta.pod_uid = k.pod_uid.clone();
        meta.pod_name = k.pod_name.clone();
        meta.namespace = k.namespace.clone();
        meta.labels = k.labels.clone();
        meta.image = k.image.clone();
        meta.sandbox = k.kind == ContainerKind::Sandbox;
    }
    meta
}

/// The bit mask of the capabilities `names` lists (an OCI spec's spelling), and the names it could
/// not place (a capability newer than podmap's table, or a typo the runtime will refuse anyway).
pub fn capability_mask(names: &[String]) -> (u64, Vec<String>) {
    let mut mask = 0u64;
    let mut unknown = Vec::new();
    for n in names {
        match podmap_proto::caps::capability_bit(n) {
            Some(bit) => mask |= 1u64 << bit,
            None => unknown.push(n.clone()),
        }
    }
    (mask, unknown)
}

/// The name of the process that ran the hook: runc and crun run createRuntime hooks themselves.
fn parent_comm() -> String {
    let parent = std::os::unix::process::parent_id();
    std::fs::read_to_string(format!("/proc/{parent}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// The OCI runtime of a container no manager claims: the parent process, else crun's mark in
/// the state (its "root" field).
fn oci_runtime(state: &State, parent_comm: &str) -> &'static str {
    if parent_comm.starts_with("crun") {
        "crun"
    } else if parent_comm.starts_with("runc") {
        "runc"
    } else if state.has_root {
        "crun"
    } else {
        "oci"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_become_a_mask_and_strangers_are_told() {
        let names = ["CAP_CHOWN", "cap_net_raw", "CAP_SYS_ADMIN", "CAP_WHATEVER"];
        let (mask, unknown) = capability_mask(&names.map(String::from));
        assert_eq!(mask, 1 | (1 << 13) | (1 << 21));
        assert_eq!(unknown, ["CAP_WHATEVER"]);
        let all: Vec<String> = podmap_proto::caps::CAP_NAMES.map(String::from).to_vec();
        let mut m = ContainerMeta::default();
        m.set_capabilities(capability_mask(&all).0, 0x1ff_ffff_ffff);
        assert_eq!(
            m.privileged,
            Some(true),
            "CRI's privileged: every capability"
        );
    }

    #[test]
    fn runtime_names() {
        let runc = State::parse(br#"{"id":"a","status":"creating"}"#).unwrap();
        let crun = State::parse(br#"{"id":"a","status":"created","root":"rootfs"}"#).unwrap();
        assert_eq!(oci_runtime(&runc, "runc"), "runc");
        assert_eq!(oci_runtime(&runc, "runc:[2:INIT]"), "runc");
        assert_eq!(oci_runtime(&runc, "crun"), "crun");
        assert_eq!(oci_runtime(&crun, "conmon"), "crun");
        assert_eq!(oci_runtime(&runc, "conmon"), "oci");
    }

    #[test]
    fn plain_and_kube_records() {
        let s = State::parse(br#"{"id":"c1","status":"creating"}"#).unwrap();
        let podman: BTreeMap<String, String> =
            [("io.container.manager".to_string(), "libpod".to_string())].into();
        let m = container_meta(&s, &podman, None, "libpod_parent/libpod-c1");
        assert_eq!(m.runtime, "podman");
        assert_eq!(m.cgroup_path, "libpod_parent/libpod-c1");
        assert!(m.pod_uid.is_none() && m.name.is_empty() && !m.sandbox);

        let ann: BTreeMap<String, String> = [
            ("io.kubernetes.cri-o.ContainerType", "sandbox"),
            ("io.kubernetes.pod.name", "web"),
            ("io.kubernetes.pod.namespace", "prod"),
            ("io.kubernetes.pod.uid", "u"),
            ("io.kubernetes.cri-o.Labels", r#"{"app":"web"}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kube = annotations::kube_meta(&ann).0.unwrap();
        let m = container_meta(&s, &ann, Some(&kube), "p/c1");
        assert_eq!(m.runtime, "cri-o");
        assert!(m.sandbox);
        assert_eq!((m.pod_name.as_str(), m.name.as_str()), ("web", "POD"));
        assert_eq!(m.labels.get("app").map(String::as_str), Some("web"));
    }
}
