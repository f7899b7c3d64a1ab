//! Kubernetes metadata from a container's OCI annotations, as CRI-O writes them (and, where a
//! containerd-created bundle reaches a hook, as containerd's CRI plugin writes them), and the
//! runtime that created the container. A container without them is a plain container.

use std::collections::BTreeMap;

use podmap_bpf::{ContainerId, PodUid};

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
pub const CRIO_LABELS: &str = "io.kubernetes.cri-o.Labels";
pub const CRIO_METADATA: &str = "io.kubernetes.cri-o.Metadata";
pub const CRIO_IMAGE_NAME: &str = "io.kubernetes.cri-o.ImageName";
pub const CRIO_IMAGE: &str = "io.kubernetes.cri-o.Image";
/// Set by CRI-O on a sandbox: the pod's name (metadata.name) and namespace.
pub const CRIO_KUBE_NAME: &str = "io.kubernetes.cri-o.KubeName";
pub const CRIO_NAMESPACE: &str = "io.kubernetes.cri-o.Namespace";

pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const CRI_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// "cri-o", "libpod" (podman), ... on containers those managers create.
pub const CONTAINER_MANAGER: &str = "io.container.manager";

/// Kubernetes allows 256 KiB of annotations per object: a labels annotation over this did not
/// come from a kubelet, and is not parsed.
pub const MAX_LABELS_ANNOTATION: usize = 256 << 10;

/// Which kind of container a pod runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// The pod's sandbox (pause) container: its labels are the pod's.
    Sandbox,
    /// A workload container: its labels are the container's, not the pod's.
    Container,
}

/// What the annotations say of a Kubernetes container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeMeta {
    pub pod_name: String,
    pub namespace: String,
    pub pod_uid: Option<PodUid>,
    pub container_name: String,
    pub kind: ContainerKind,
    /// The pod's sandbox, for a workload container.
    pub sandbox_id: Option<ContainerId>,
    /// The labels annotation with runtime-added keys stripped: the pod's labels on a sandbox,
    /// the container's on a workload container.
    pub labels: BTreeMap<String, String>,
    pub image: String,
}

/// Something in the annotations that is not as a kubelet writes it; the hook still maps the
/// container and logs this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationProblem {
    #[error("annotation {key} is {len} bytes, over the {MAX_LABELS_ANNOTATION} bytes Kubernetes allows: its labels were dropped")]
    LabelsTooLarge { key: &'static str, len: usize },
    #[error(
        "annotation {key} is not a JSON object of strings ({reason}): its labels were dropped"
    )]
    LabelsNotJson { key: &'static str, reason: String },
    #[error("annotation {key} holds {dropped} labels whose values are not strings: dropped")]
    LabelsNotStrings { key: &'static str, dropped: usize },
    #[error("Kubernetes annotations without {missing}: recorded as far as known")]
    Incomplete { missing: String },
}

/// Which manager created the container, from its annotations ("cri-o", "podman", "containerd").
pub fn manager(ann: &BTreeMap<String, String>) -> Option<&'static str> {
    match ann.get(CONTAINER_MANAGER).map(String::as_str) {
        Some("libpod") => return Some("podman"),
        Some("cri-o") => return Some("cri-o"),
        _ => {}
    }
    // podman also sets some io.kubernetes.cri-o.* keys (Created, TTY), never these two.
    if ann.contains_key(CRIO_CONTAINER_TYPE) || ann.contains_key(CRIO_SANDBOX_ID) {
        return Some("cri-o");
    }
    if ann.contains_key(CRI_CONTAINER_TYPE) || ann.contains_key(CRI_SANDBOX_ID) {
        return Some("containerd");
    }
    None
}

/// The Kubernetes metadata, or None for a container outside Kubernetes.
pub fn kube_meta(ann: &BTreeMap<String, String>) -> (Option<KubeMeta>, Vec<AnnotationProblem>) {
    let mut problems = Vec::new();
    let get = |keys: &[&str]| {
        keys.iter()
            .filter_map(|k| ann.get(*k))
            .map(|v| v.trim())
            .find(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let is_kube = [
        POD_NAME,
        POD_NAMESPACE,
        POD_UID,
        CRIO_CONTAINER_TYPE,
        CRIO_SANDBOX_ID,
        CRI_CONTAINER_TYPE,
        CRI_SANDBOX_ID,
    ]
    .iter()
    .any(|k| ann.contains_key(*k));
    if !is_kube {
        return (None, problems);
    }

    let (raw_labels, labels_problem) = labels_annotation(ann);
    problems.extend(labels_problem);
    // CRI-O's Metadata annotation: {"name","uid","namespace","attempt"} on a sandbox,
    // {"name","attempt"} on a container.
    let metadata: BTreeMap<String, serde_json::Value> = ann
        .get(CRIO_METADATA)
        .filter(|m| m.len() <= MAX_LABELS_ANNOTATION)
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    let md = |k: &str| {
        metadata
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let from_labels = |k: &str| raw_labels.get(k).filter(|v| !v.is_empty()).cloned();

    let kind = match get(&[CRIO_CONTAINER_TYPE, CRI_CONTAINER_TYPE]).as_deref() {
        Some("sandbox") | Some("podsandbox") => ContainerKind::Sandbox,
        Some(_) => ContainerKind::Container,
        // The sandbox's labels name the pause container "POD".
        None if from_labels(CONTAINER_NAME).as_deref() == Some("POD") => ContainerKind::Sandbox,
        None => ContainerKind::Container,
    };
    let sandbox_md = |k: &str| (kind == ContainerKind::Sandbox).then(|| md(k)).flatten();

    let pod_name = get(&[POD_NAME, CRI_SANDBOX_NAME])
        .or_else(|| from_labels(POD_NAME))
        .or_else(|| sandbox_md("name"))
        .or_else(|| {
            (kind == ContainerKind::Sandbox)
                .then(|| get(&[CRIO_KUBE_NAME]))
                .flatten()
        });
    let namespace = get(&[POD_NAMESPACE, CRI_SANDBOX_NAMESPACE])
        .or_else(|| from_labels(POD_NAMESPACE))
        .or_else(|| sandbox_md("namespace"))
        .or_else(|| get(&[CRIO_NAMESPACE]));
    let pod_uid = get(&[POD_UID, CRI_SANDBOX_UID])
        .or_else(|| from_labels(POD_UID))
        .or_else(|| sandbox_md("uid"));
    let container_name = get(&[CONTAINER_NAME, CRI_CONTAINER_NAME])
        .or_else(|| from_labels(CONTAINER_NAME))
        .or_else(|| {
            (kind == ContainerKind::Container)
                .then(|| md("name"))
                .flatten()
        })
        .unwrap_or_else(|| {
            if kind == ContainerKind::Sandbox {
                "POD".to_string()
            } else {
                String::new()
            }
        });

    let missing: Vec<&str> = [
        ("the pod name", pod_name.is_none()),
        ("the namespace", namespace.is_none()),
        ("the pod uid", pod_uid.is_none()),
    ]
    .into_iter()
    .filter_map(|(what, gone)| gone.then_some(what))
    .collect();
    if !missing.is_empty() {
        problems.push(AnnotationProblem::Incomplete {
            missing: missing.join(", "),
        });
    }

    let meta = KubeMeta {
        pod_name: pod_name.unwrap_or_default(),
        namespace: namespace.unwrap_or_default(),
        pod_uid: pod_uid.map(PodUid),
        container_name,
        kind,
        sandbox_id: get(&[CRIO_SANDBOX_ID, CRI_SANDBOX_ID])
            .map(ContainerId)
            .filter(|_| kind == ContainerKind::Container),
        labels: strip_runtime_labels(raw_labels),
        image: get(&[CRIO_IMAGE_NAME, CRI_IMAGE_NAME, CRIO_IMAGE]).unwrap_or_default(),
    };
    (Some(meta), problems)
}

/// The labels annotation, parsed and bounded (runtime keys still in).
fn labels_annotation(
    ann: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Option<AnnotationProblem>) {
    let key = CRIO_LABELS;
    let Some(raw) = ann.get(key) else {
        return (BTreeMap::new(), None);
    };
    if raw.len() > MAX_LABELS_ANNOTATION {
        return (
            BTreeMap::new(),
            Some(AnnotationProblem::LabelsTooLarge {
                key,
                len: raw.len(),
            }),
        );
    }
    let parsed: BTreeMap<String, serde_json::Value> = match serde_json::from_str(raw) {
        Ok(m) => m,
        Err(e) => {
            return (
                BTreeMap::new(),
                Some(AnnotationProblem::LabelsNotJson {
                    key,
                    reason: e.to_string(),
                }),
            )
        }
    };
    let mut dropped = 0;
    let labels = parsed
        .into_iter()
        .filter_map(|(k, v)| {
            if let serde_json::Value::String(v) = v {
                Some((k, v))
            } else {
                dropped += 1;
                None
            }
        })
        .collect();
    let problem = (dropped > 0).then_some(AnnotationProblem::LabelsNotStrings { key, dropped });
    (labels, problem)
}

/// The pod's own labels: keys the kubelet and runtimes add (`io.kubernetes.*`,
/// `io.cri-containerd.*`) are not the user's (docs/decisions.md #8).
pub fn strip_runtime_labels(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.retain(|k, _| !k.starts_with("io.kubernetes.") && !k.starts_with("io.cri-containerd."));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn crio_sandbox() {
        let a = ann(&[
            (CONTAINER_MANAGER, "cri-o"),
            (CRIO_CONTAINER_TYPE, "sandbox"),
            (POD_NAME, "web-1"),
            (POD_NAMESPACE, "prod"),
            (POD_UID, "uid-1"),
            (
                CRIO_LABELS,
                r#"{"app":"web","io.kubernetes.pod.name":"web-1","io.kubernetes.container.name":"POD","io.cri-containerd.kind":"sandbox"}"#,
            ),
        ]);
        let (m, problems) = kube_meta(&a);
        let m = m.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.kind, ContainerKind::Sandbox);
        assert_eq!(m.container_name, "POD");
        assert_eq!(m.pod_uid, Some(PodUid("uid-1".into())));
        assert_eq!(m.sandbox_id, None);
        assert_eq!(m.labels, ann(&[("app", "web")]));
        assert_eq!(manager(&a), Some("cri-o"));
    }

    #[test]
    fn crio_container_names_its_sandbox() {
        let a = ann(&[
            (CRIO_CONTAINER_TYPE, "container"),
            (CRIO_SANDBOX_ID, "sb1"),
            (CRIO_IMAGE_NAME, "docker.io/library/nginx:1"),
            (CRIO_METADATA, r#"{"name":"nginx","attempt":0}"#),
            (
                CRIO_LABELS,
                r#"{"io.kubernetes.pod.name":"web-1","io.kubernetes.pod.namespace":"prod","io.kubernetes.pod.uid":"uid-1","io.kubernetes.container.name":"nginx"}"#,
            ),
        ]);
        let (m, problems) = kube_meta(&a);
        let m = m.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.kind, ContainerKind::Container);
        assert_eq!(m.sandbox_id, Some(ContainerId("sb1".into())));
        assert_eq!(
            (m.pod_name.as_str(), m.namespace.as_str()),
            ("web-1", "prod"),
            "filled from the labels annotation"
        );
        assert_eq!(m.container_name, "nginx");
        assert_eq!(m.image, "docker.io/library/nginx:1");
        assert!(m.labels.is_empty(), "container labels are all runtime keys");
    }

    #[test]
    fn sandbox_metadata_fills_gaps() {
        let a = ann(&[
            (CRIO_CONTAINER_TYPE, "sandbox"),
            (
                CRIO_METADATA,
                r#"{"name":"web-1","uid":"u","namespace":"prod","attempt":1}"#,
            ),
        ]);
        let m = kube_meta(&a).0.unwrap();
        assert_eq!(
            (m.pod_name.as_str(), m.namespace.as_str()),
            ("web-1", "prod")
        );
        assert_eq!(m.pod_uid, Some(PodUid("u".into())));
    }

    #[test]
    fn containerd_annotations() {
        let a = ann(&[
            (CRI_CONTAINER_TYPE, "container"),
            (CRI_SANDBOX_ID, "sb"),
            (CRI_SANDBOX_NAME, "web-1"),
            (CRI_SANDBOX_NAMESPACE, "prod"),
            (CRI_SANDBOX_UID, "u"),
            (CRI_CONTAINER_NAME, "app"),
            (CRI_IMAGE_NAME, "img"),
        ]);
        let m = kube_meta(&a).0.unwrap();
        assert_eq!(m.container_name, "app");
        assert_eq!(m.image, "img");
        assert_eq!(manager(&a), Some("containerd"));
    }

    #[test]
    fn plain_and_podman_containers() {
        let podman = ann(&[
            (CONTAINER_MANAGER, "libpod"),
            ("io.kubernetes.cri-o.Created", "2026-01-01T00:00:00Z"),
            ("io.kubernetes.cri-o.TTY", "false"),
        ]);
        assert_eq!(kube_meta(&podman).0, None);
        assert_eq!(manager(&podman), Some("podman"));
        assert_eq!(kube_meta(&BTreeMap::new()).0, None);
        assert_eq!(manager(&BTreeMap::new()), None);
    }

    #[test]
    fn bad_labels_are_reported_not_fatal() {
        let base = [(POD_NAME, "p"), (POD_NAMESPACE, "n"), (POD_UID, "u")];
        let mut a = ann(&base);
        a.insert(CRIO_LABELS.into(), "{not json".into());
        let (m, p) = kube_meta(&a);
        assert!(m.unwrap().labels.is_empty());
        assert!(matches!(p[..], [AnnotationProblem::LabelsNotJson { .. }]));

        a.insert(
            CRIO_LABELS.into(),
            format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_LABELS_ANNOTATION)),
        );
        let (_, p) = kube_meta(&a);
        assert!(matches!(p[..], [AnnotationProblem::LabelsTooLarge { .. }]));
        assert!(p[0].to_string().contains("over the"));

        a.insert(
            CRIO_LABELS.into(),
            r#"{"a":["x"],"b":"ok","c":7}"#.to_string(),
        );
        let (m, p) = kube_meta(&a);
        assert_eq!(m.unwrap().labels, ann(&[("b", "ok")]));
        assert!(matches!(
            p[..],
            [AnnotationProblem::LabelsNotStrings { dropped: 2, .. }]
        ));

        let (m, p) = kube_meta(&ann(&[(POD_NAME, "p")]));
        assert_eq!(m.unwrap().pod_name, "p");
        assert_eq!(
            p,
            vec![AnnotationProblem::Incomplete {
                missing: "the namespace, the pod uid".into()
            }]
        );
    }

    #[test]
    fn strips_runtime_keys_only() {
        let l = ann(&[
            ("app", "web"),
            ("io.kubernetes.pod.name", "x"),
            ("io.cri-containerd.kind", "sandbox"),
            ("kubernetes.io/arch", "amd64"),
            ("io.kubernetesfoo", "kept"),
        ]);
        assert_eq!(
            strip_runtime_labels(l),
            ann(&[
                ("app", "web"),
                ("kubernetes.io/arch", "amd64"),
                ("io.kubernetesfoo", "kept")
            ])
        );
    }
}
