//! Every manifest in deploy/kubernetes/ parses into the k8s-openapi types with no unknown
//! field, and the DaemonSet and RBAC say what the deployment needs (and no more).
//!
//! k8s-openapi's decoders ignore unknown fields (as Kubernetes clients must), so a misspelt
//! key (`mountPropogation`) would vanish silently. Each document is decoded, encoded again,
//! and every key of the original must still be there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every YAML document of every manifest, with its file name.
fn documents() -> Result<Vec<(String, Value)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .context("reading deploy/kubernetes")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    if files.is_empty() {
        bail!("no manifests in deploy/kubernetes");
    }
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(doc)
                .with_context(|| format!("parsing {name}"))?;
            if value.is_null() {
                continue;
            }
            docs.push((
                name.clone(),
                serde_json::to_value(value).with_context(|| format!("{name} as JSON"))?,
            ));
        }
    }
    Ok(docs)
}

use serde::Deserialize as _;

/// Decodes `value` as `T`, refusing any key the type does not know.
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T> {
    let typed: T = serde_json::from_value(value.clone())?;
    let again = serde_json::to_value(&typed)?;
    let mut unknown = Vec::new();
    missing_keys(value, &again, String::new(), &mut unknown);
    if !unknown.is_empty() {
        bail!("unknown fields: {}", unknown.join(", "));
    }
    Ok(typed)
}

/// Paths of keys in `original` that `decoded` lacks.
fn missing_keys(original: &Value, decoded: &Value, path: String, out: &mut Vec<String>) {
    match (original, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(decoded) => missing_keys(value, decoded, here, out),
                    // An explicit null or empty value can be dropped by the encoder: not unknown.
                    None if value.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                missing_keys(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

struct Manifests {
    crds: Vec<CustomResourceDefinition>,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
}

fn load() -> Result<Manifests> {
    let mut m = Manifests {
        crds: vec![],
        namespaces: vec![],
        service_accounts: vec![],
        cluster_roles: vec![],
        bindings: vec![],
        daemonsets: vec![],
    };
    for (file, doc) in documents()? {
        let kind = (
            doc["apiVersion"].as_str().unwrap_or(""),
            doc["kind"].as_str().unwrap_or(""),
        );
        let context = || format!("{file}: {}/{}", kind.0, kind.1);
        match kind {
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                m.crds.push(strict(&doc).with_context(context)?)
            }
            ("v1", "Namespace") => m.namespaces.push(strict(&doc).with_context(context)?),
            ("v1", "ServiceAccount") => {
                m.service_accounts.push(strict(&doc).with_context(context)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                m.cluster_roles.push(strict(&doc).with_context(context)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                m.bindings.push(strict(&doc).with_context(context)?)
            }
            ("apps/v1", "DaemonSet") => m.daemonsets.push(strict(&doc).with_context(context)?),
            _ => bail!("{file}: unexpected kind {kind:?}"),
        }
    }
    Ok(m)
}

#[test]
fn strict_parsing_rejects_unknown_fields() {
    let doc = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "x", "lables": {"a": "b"}}});
    let err = strict::<ServiceAccount>(&doc).unwrap_err().to_string();
    assert!(err.contains(".metadata.lables"), "{err}");
    let doc = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/x", "mountPropogation": "None"}]}]}}}});
    let err = strict::<DaemonSet>(&doc).unwrap_err().to_string();
    assert!(err.contains("mountPropogation"), "{err}");
}

#[test]
fn every_manifest_parses_strictly() {
    let m = load().unwrap();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.daemonsets.len(), 1);
}

fn container<'a>(containers: &'a [Container], name: &str) -> &'a Container {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_field_ref(container: &Container, name: &str) -> Option<String> {
    let var = container.env.as_ref()?.iter().find(|e| e.name == name)?;
    Some(
        var.value_from
            .as_ref()?
            .field_ref
            .as_ref()?
            .field_path
            .clone(),
    )
}

#[test]
fn daemonset_runs_podmapd_and_podmap_nri_with_the_host_access_they_need() {
    let m = load().unwrap();
    let ds = &m.daemonsets[0];
    let spec = &ds.spec;
    let pod = spec.template.spec.as_ref().unwrap();
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "selector matches the template"
        );
    }
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("podmap"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("podmap"));

    let volumes: BTreeMap<&str, &str> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v.name.as_str(),
                v.host_path
                    .as_ref()
                    .expect("host path volumes only")
                    .path
                    .as_str(),
            )
        })
        .collect();
    for path in [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/var/run/nri",
        "/var/lib/podmap",
        "/run/podmap",
    ] {
        assert!(
            volumes.values().any(|p| *p == path),
            "no host path volume {path}"
        );
    }

    // Only podmapd, which loads the programs, is privileged; the others drop every capability
    // and add back what they use (the containerd suite runs podmap-nri with exactly this list).
    let caps = |c: &Container| {
        let sc = c.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        assert_ne!(sc.privileged, Some(true), "{} privileged", c.name);
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{}",
            c.name
        );
        caps.add.clone().unwrap_or_default()
    };
    let podmapd = container(&pod.containers, "podmapd");
    assert_eq!(
        podmapd.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    assert_eq!(caps(container(&pod.containers, "podmap-nri")), ["BPF"]);
    assert!(caps(container(&pod.containers, "oci-hook")).is_empty());
    assert!(
        pod.init_containers.is_none(),
        "the hook installer stays, to uninstall"
    );
    // The API server refuses Bidirectional propagation in a container that is not privileged.
    for c in &pod.containers {
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                privileged || m.mount_propagation.as_deref() != Some("Bidirectional"),
                "{}: {} is Bidirectional but the container is not privileged",
                c.name,
                m.mount_path
            );
        }
    }
    // AppArmor: the field, and the annotation older API servers read, agree.
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    for c in &pod.containers {
        let field = c
            .security_context
            .as_ref()
            .and_then(|s| s.app_armor_profile.as_ref())
            .map(|p| p.type_.to_lowercase());
        let key = format!("container.apparmor.security.beta.kubernetes.io/{}", c.name);
        assert_eq!(
            field.as_deref(),
            annotations.get(&key).map(String::as_str),
            "{}",
            c.name
        );
    }
    for name in ["podmapd", "podmap-nri"] {
        let c = container(&pod.containers, name);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/podmap/podmap:latest"));
        assert_eq!(
            env_field_ref(c, "NODE_NAME").as_deref(),
            Some("spec.nodeName"),
            "{name}"
        );
        assert_eq!(
            env_field_ref(c, "POD_NAMESPACE").as_deref(),
            Some("metadata.namespace"),
            "{name}"
        );
        assert!(c
            .args
            .as_ref()
            .unwrap()
            .contains(&"--cgroup-root=/host/sys/fs/cgroup".to_string()));
        let mounts: BTreeMap<&str, &str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.mount_path.as_str(), volumes[m.name.as_str()]))
            .collect();
        assert_eq!(mounts.get("/sys/fs/bpf"), Some(&"/sys/fs/bpf"), "{name}");
        assert_eq!(
            mounts.get("/host/sys/fs/cgroup"),
            Some(&"/sys/fs/cgroup"),
            "{name}"
        );
        assert_eq!(
            mounts.get("/var/lib/podmap"),
            Some(&"/var/lib/podmap"),
            "{name}"
        );
    }
    let podmapd = container(&pod.containers, "podmapd");
    assert!(podmapd
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.mount_path == "/run/podmap"));
    let nri = container(&pod.containers, "podmap-nri");
    assert!(nri
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.mount_path == "/var/run/nri"));

    // One node-local policy directory: podmapd mirrors the PodPolicy resources into it (so it
    // writes), podmap-nri only reads it; both are told where it is.
    for (c, writable) in [(podmapd, true), (nri, false)] {
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| volumes[m.name.as_str()] == "/etc/podmap/policies")
            .unwrap_or_else(|| panic!("{} lacks the policy directory", c.name));
        assert_eq!(mount.read_only.unwrap_or(false), !writable, "{}", c.name);
        let dir = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "PODMAP_POLICY_DIR")
            .and_then(|e| e.value.as_deref());
        assert_eq!(dir, Some(mount.mount_path.as_str()), "{}", c.name);
    }

    // Metrics are not served to every pod in the cluster unless the user says so: bound to
    // the pod's loopback, through an environment variable users change (to "$(POD_IP):9477",
    // whose POD_IP comes from the downward API), and no port is declared for them.
    let env_value = |name: &str| {
        podmapd
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env_value("PODMAP_METRICS_ADDR").as_deref(),
        Some("127.0.0.1:9477")
    );
    assert!(
        !podmapd
            .args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--metrics-addr")),
        "the flag would override the variable users are told to change"
    );
    assert_eq!(
        env_field_ref(podmapd, "POD_IP").as_deref(),
        Some("status.podIP")
    );
    for c in &pod.containers {
        assert!(
            c.ports.as_ref().is_none_or(|p| p.is_empty()),
            "{} declares ports for a loopback-only endpoint",
            c.name
        );
    }
    assert!(
        pod.host_network != Some(true),
        "loopback must be the pod's, not the node's"
    );

    // The installer puts the hook where CRI-O finds it: it runs `install --root=/host` and
    // stays (to uninstall at stop), and each host directory it writes is mounted at /host plus
    // its host path, so the paths it writes below --root are the host's.
    let hook = container(&pod.containers, "oci-hook");
    let args = hook.args.as_ref().unwrap();
    assert_eq!(args[0], "install");
    assert!(args.contains(&"--root=/host".to_string()) && args.contains(&"--stay".to_string()));
    let mounts: BTreeMap<&str, &str> = hook
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (volumes[m.name.as_str()], m.mount_path.as_str()))
        .collect();
    for host in ["/usr/local/bin", "/etc/containers/oci/hooks.d", "/run"] {
        assert_eq!(
            mounts.get(host).copied(),
            Some(&*format!("/host{host}")),
            "{host}"
        );
    }
}

#[test]
fn rbac_allows_reading_pods_and_pod_policies_only() {
    let m = load().unwrap();
    let rules = m.cluster_roles[0].rules.as_ref().unwrap();
    let mut granted: Vec<(String, String, Vec<String>)> = rules
        .iter()
        .flat_map(|rule| {
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
            groups.into_iter().flat_map(move |g| {
                let verbs = rule.verbs.clone();
                resources
                    .clone()
                    .into_iter()
                    .map(move |r| (g.clone(), r, verbs.clone()))
            })
        })
        .collect();
    granted.sort();
    let read = vec!["get".to_string(), "list".to_string(), "watch".to_string()];
    assert_eq!(
        granted,
        vec![
            ("".into(), "pods".into(), read.clone()),
            ("podmap.dev".into(), "podpolicies".into(), read)
        ]
    );
    let binding = &m.bindings[0];
    assert_eq!(
        binding.role_ref.name,
        m.cluster_roles[0].metadata.name.clone().unwrap()
    );
    let subject = &binding.subjects.as_ref().unwrap()[0];
    let account = &m.service_accounts[0].metadata;
    assert_eq!(
        (Some(subject.name.clone()), subject.namespace.clone()),
        (account.name.clone(), account.namespace.clone())
    );
}

/// The PodPolicy resource matches the RBAC's podpolicies.podmap.dev and the policy format.
#[test]
fn the_podpolicy_crd_is_cluster_scoped_podmap_dev_v1alpha1() {
    let m = load().unwrap();
    let [crd] = &m.crds[..] else {
        panic!("one CRD expected, found {}", m.crds.len())
    };
    assert_eq!(crd.metadata.name.as_deref(), Some("podpolicies.podmap.dev"));
    assert_eq!(crd.spec.group, "podmap.dev");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "PodPolicy");
    assert_eq!(crd.spec.names.plural, "podpolicies");
    let v = &crd.spec.versions[0];
    assert_eq!(
        (v.name.as_str(), v.served, v.storage),
        ("v1alpha1", true, true)
    );
    let schema = serde_json::to_value(&v.schema).unwrap();
    let rule = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]["items"]
        ["properties"];
    assert_eq!(
        rule["action"]["enum"],
        serde_json::json!(["audit", "kill", "deny"])
    );
    assert_eq!(
        rule["open"]["properties"]["access"]["enum"],
        serde_json::json!(["read", "write", "any"])
    );
}
