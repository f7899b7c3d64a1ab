//! Mirrors the cluster's PodPolicy resources (podpolicies.podmap.dev, cluster-scoped) into the
//! node's policy directory (docs/decisions.md #10). The runtime plugins never talk to the API
//! server: a resource becomes a file there, and from then on it is a policy like any hand-written
//! one, applied by podmap-nri and the OCI hook at container creation and by podmapd to running
//! containers.
//!
//! Mirrored files are `podpolicy.<name>.yaml` starting with [`MIRRORED_HEADER`]; only those are
//! ever rewritten or removed. Each is written to a temporary file and renamed, so a reader sees
//! the old policy or the new one, never half of one. A resource that does not validate is refused
//! (named in status, with field and reason) and its last valid file, if any, stays in place: the
//! policy already active stays active, as with a broken file edited by hand.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use podmap_policy::{
    is_mirrored, policy_id, read_bounded, text_is_mirrored, valid_dns_subdomain, PodPolicy,
    PolicyError, ReadError, API_VERSION, KIND, MAX_POLICY_FILE_BYTES, MIRRORED_HEADER,
    MIRRORED_PREFIX,
};
use podmap_proto::status::MirrorStatus;

/// File names are limited to 255 bytes; resource names may be 253. Longer names are cut and
/// made unique again with the policy id.
const MAX_NAME_IN_FILE: usize = 200;

/// The mirror's status, shared with the status and metrics endpoints.
#[derive(Clone, Default)]
pub struct MirrorHandle(Arc<Mutex<MirrorStatus>>);

impl MirrorHandle {
    pub fn snapshot(&self) -> MirrorStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MirrorStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a file operation of the mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is a hand-written file (it lacks the mirror's first line): not overwritten; rename the file or the resource")]
    HandWritten(PathBuf),
    #[error("{0:?} is not a valid object name (a DNS subdomain): not written")]
    BadName(String),
    #[error("serializing policy {name:?}: {source}")]
    Serialize {
        name: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MirrorError + 'a {
    move |source| MirrorError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The PodPolicy resource definition (deploy/kubernetes/crd-podpolicy.yaml).
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: "podmap.dev".into(),
        version: "v1alpha1".into(),
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        plural: "podpolicies".into(),
    }
}

/// Turns a resource into the policy it stands for, validated as a file would be. Only the name
/// and labels of its metadata are kept: the rest (uid, resourceVersion, managedFields,
/// annotations such as kubectl's last-applied copy) is the API server's business.
pub fn to_policy(object: &DynamicObject) -> Result<PodPolicy, PolicyError> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let src = format!("PodPolicy resource {name:?}");
    let refuse = |field: &str, reason: String| PolicyError {
        source_name: src.clone(),
        field: field.to_string(),
        reason,
    };
    let spec = object
        .data
        .get("spec")
        .cloned()
        .ok_or_else(|| refuse("spec", "missing".into()))?;
    let value = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "labels": object.metadata.labels.clone().unwrap_or_default()},
        "spec": spec,
    });
    let policy: PodPolicy =
        serde_json::from_value(value).map_err(|e| refuse("spec", e.to_string()))?;
    policy.validate(&src)?;
    Ok(policy)
}

/// The mirrored files of one policy directory.
pub struct MirrorDir {
    dir: PathBuf,
}

impl MirrorDir {
    pub fn new(dir: &Path) -> MirrorDir {
        MirrorDir {
            dir: dir.to_owned(),
        }
    }

    /// The file standing for the resource `name`; none for a name that is not a valid object
    /// name (the API server refuses those; checked again here because it becomes a path).
    pub fn file_of(&self, name: &str) -> Option<PathBuf> {
        if !valid_dns_subdomain(name) {
            return None;
        }
        let stem = if name.len() <= MAX_NAME_IN_FILE {
            name.to_string()
        } else {
            // Names are DNS subdomains (ASCII): any byte index is a character boundary.
            format!("{}.{:08x}", &name[..MAX_NAME_IN_FILE], policy_id(name))
        };
        Some(self.dir.join(format!("{MIRRORED_PREFIX}{stem}.yaml")))
    }

    /// Writes the policy's file unless it already holds exactly this; returns whether it wrote.
    /// A hand-written file in the way is left alone and reported.
    pub fn write(&self, policy: &PodPolicy) -> Result<bool, MirrorError> {
        let path = self
            .file_of(policy.name())
            .ok_or_else(|| MirrorError::BadName(policy.name().to_string()))?;
        let yaml = serde_yaml_ng::to_string(policy).map_err(|source| MirrorError::Serialize {
            name: policy.name().to_string(),
            source,
        })?;
        let text = format!("{MIRRORED_HEADER}\n{yaml}");
        // Read within bounds: whatever sits at that name (a FIFO, a huge file) must not block or
        // fill podmapd; anything that is not our own earlier file is left alone.
        match read_bounded(&path, MAX_POLICY_FILE_BYTES) {
            Ok(current) if current == text.as_bytes() => return Ok(false),
            Err(ReadError::Gone) => {}
            // Ours to rewrite only if it carries the mirror's marks; anything unreadable is not.
            Ok(current)
                if std::str::from_utf8(&current)
                    .is_ok_and(|current| text_is_mirrored(&path, current)) => {}
            _ => return Err(MirrorError::HandWritten(path)),
        }
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        // A dot file: the policy loaders read only *.yaml and *.yml, so a half-written temporary
        // is never loaded.
        let tmp = self
            .dir
            .join(format!(".{MIRRORED_PREFIX}{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        Ok(true)
    }

    /// Removes the file of the resource `name`, if it is a mirrored one; returns whether it did.
    pub fn remove(&self, name: &str) -> Result<bool, MirrorError> {
        let Some(path) = self.file_of(name) else {
            return Ok(false);
        };
        if !is_mirrored(&path) {
            return Ok(false);
        }
        std::fs::remove_file(&path).map_err(io("removing", &path))?;
        Ok(true)
    }

    /// Removes every mirrored file but those of `keep`; returns how many it removed.
    pub fn retain(&self, keep: &HashSet<PathBuf>) -> Result<u64, MirrorError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("listing", &self.dir)(e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if !keep.contains(&path) && is_mirrored(&path) {
                std::fs::remove_file(&path).map_err(io("removing", &path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The mirror: a watcher over the PodPolicy resources keeping the directory equal to them.
pub struct Mirror {
    files: MirrorDir,
    status: MirrorHandle,
    /// Resources refused now, by name.
    refused: BTreeMap<String, String>,
    /// Resource names on the API server now.
    known: HashSet<String>,
}

impl Mirror {
    pub fn new(dir: &Path, status: MirrorHandle) -> Mirror {
        Mirror {
            files: MirrorDir::new(dir),
            status,
            refused: BTreeMap::new(),
            known: HashSet::new(),
        }
    }

    /// Watches the resources until the task is aborted. The watcher lists, watches, relists
    /// after a 410 and backs off on errors (kube-runtime's); every error is logged and counted.
    /// The files are written on a thread of the mirror's own: a write and its fsync can wait on
    /// a slow or frozen disk, and the runtime's only thread carries the event path.
    pub async fn run(self, client: kube::Client) {
        let api: Api<DynamicObject> = Api::all_with(client, &api_resource());
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        // Bounded: while the disk is stuck the watch waits too (and relists if it expires).
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let status = self.status.clone();
        let worker = std::thread::Builder::new()
            .name("podmap-mirror".into())
            .spawn(move || self.apply_all(rx));
        if let Err(e) = worker {
            tracing::error!(error = %e, "cannot start the PodPolicy mirror's thread: resources are not mirrored");
            return;
        }
        while let Some(event) = stream.next().await {
            let event = event.map_err(|e| watch_error(&e));
            if tx.send(event).await.is_err() {
                // Only a panic ends the thread while the watch runs: say so in status.
                let error = "the mirror's thread stopped (see the panic in the log): PodPolicy resources are no longer mirrored";
                tracing::error!("{error}");
                let mut status = status.lock();
                status.errors += 1;
                status.last_error = Some(error.to_string());
                return;
            }
        }
    }

    /// Applies the watch's events in order until the watch ends.
    fn apply_all(
        mut self,
        mut events: tokio::sync::mpsc::Receiver<Result<Event<DynamicObject>, String>>,
    ) {
        let mut listing: Option<Vec<DynamicObject>> = None;
        while let Some(event) = events.blocking_recv() {
            match event {
                Ok(Event::Init) => listing = Some(Vec::new()),
                Ok(Event::InitApply(object)) => listing.get_or_insert_with(Vec::new).push(object),
                Ok(Event::InitDone) => self.resync(listing.take().unwrap_or_default()),
                Ok(Event::Apply(object)) => self.applied(&object),
                Ok(Event::Delete(object)) => self.deleted(&object),
                Err(e) => self.failed(&e),
            }
        }
    }

    /// A complete list: mirror every resource, and remove the files of resources that are gone
    /// (deleted while podmapd was away, or while the watch was down).
    pub fn resync(&mut self, objects: Vec<DynamicObject>) {
        self.refused.clear();
        self.known.clear();
        let mut keep = HashSet::new();
        for object in &objects {
            if let Some(file) = object
                .metadata
                .name
                .as_deref()
                .and_then(|n| self.files.file_of(n))
            {
                keep.insert(file);
            }
            self.applied(object);
        }
        match self.files.retain(&keep) {
            Ok(removed) => self.status.lock().removals += removed,
            Err(e) => self.failed(&e.to_string()),
        }
        self.status.lock().synced = true;
        self.publish();
        tracing::info!(
            resources = self.known.len(),
            refused = self.refused.len(),
            "PodPolicy resources mirrored"
        );
    }

    pub fn applied(&mut self, object: &DynamicObject) {
        let Some(name) = object.metadata.name.clone() else {
            self.failed("a PodPolicy resource without metadata.name");
            return;
        };
        self.known.insert(name.clone());
        match to_policy(object) {
            Ok(policy) => {
                self.refused.remove(&name);
                match self.files.write(&policy) {
                    Ok(true) => {
                        self.status.lock().writes += 1;
                        tracing::info!(policy = %name, "PodPolicy resource mirrored");
                    }
                    Ok(false) => {}
                    Err(e) => self.failed(&e.to_string()),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "PodPolicy resource refused; its last valid version, if any, stays active");
                self.refused.insert(name, e.to_string());
            }
        }
        self.publish();
    }

    pub fn deleted(&mut self, object: &DynamicObject) {
        let Some(name) = object.metadata.name.as_deref() else {
            return;
        };
        self.known.remove(name);
        self.refused.remove(name);
        match self.files.remove(name) {
            Ok(true) => {
                self.status.lock().removals += 1;
                tracing::info!(policy = %name, "PodPolicy resource deleted: its file is removed");
            }
            Ok(false) => {}
            Err(e) => self.failed(&e.to_string()),
        }
        self.publish();
    }

    fn failed(&self, error: &str) {
        tracing::warn!(error, "mirroring PodPolicy resources");
        let mut status = self.status.lock();
        status.errors += 1;
        status.last_error = Some(error.to_string());
    }

    fn publish(&self) {
        let mut status = self.status.lock();
        status.resources = self.known.len() as u64;
        status.refused = self.refused.values().cloned().collect();
    }
}

/// A watch error, with what to do about the usual ones.
fn watch_error(e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    match status {
        Some(404) => format!("{e} (is the PodPolicy CRD installed? deploy/kubernetes/crd-podpolicy.yaml)"),
        Some(403) => format!("{e} (the service account may not list and watch podpolicies.podmap.dev: deploy/kubernetes/rbac.yaml)"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt as _;

    fn object(name: &str, spec: serde_json::Value) -> DynamicObject {
        let mut o = DynamicObject::new(name, &api_resource());
        o.data = serde_json::json!({ "spec": spec });
        o
    }

    fn kill_sleep() -> serde_json::Value {
        serde_json::json!({"rules": [{"exec": {"paths": ["/bin/sleep"]}, "action": "kill"}]})
    }

    /// A FIFO dropped where a resource's file goes would block the mirror's thread forever on a
    /// plain read: it is left alone and reported instead, and resync does not touch it either.
    #[test]
    fn a_fifo_in_a_resources_place_is_reported_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = MirrorDir::new(dir.path());
        let fifo = files.file_of("no-sleep").unwrap();
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut mirror = Mirror::new(&path, MirrorHandle::default());
            mirror.resync(vec![object("no-sleep", kill_sleep())]);
            let _ = tx.send(mirror.status.snapshot());
        });
        let status = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the mirror blocked on a FIFO");
        assert_eq!(status.errors, 1, "{status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("hand-written")),
            "{status:?}"
        );
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn a_resource_becomes_a_file_that_loads_as_the_same_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mut mirror = Mirror::new(dir.path(), MirrorHandle::default());
        mirror.resync(vec![object("no-sleep", kill_sleep())]);
        let set = podmap_policy::PolicySet::load_dir(dir.path());
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.policies[0].policy.name(), "no-sleep");
        let path = dir.path().join("podpolicy.no-sleep.yaml");
        assert_eq!(set.policies[0].source, path.display().to_string());
        assert!(is_mirrored(&path));
        let status = mirror.status.snapshot();
        assert!(status.synced);
        assert_eq!((status.resources, status.writes), (1, 1));
        // The same content again: no write (no needless reload in three processes).
        mirror.applied(&object("no-sleep", kill_sleep()));
        assert_eq!(mirror.status.snapshot().writes, 1);
    }

    #[test]
    fn an_invalid_resource_is_refused_and_its_last_valid_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut mirror = Mirror::new(dir.path(), MirrorHandle::default());
        mirror.resync(vec![object("no-sleep", kill_sleep())]);
        let before = std::fs::read_to_string(mirror.files.file_of("no-sleep").unwrap()).unwrap();
        mirror.applied(&object(
            "no-sleep",
            serde_json::json!({"rules": [{"exec": {"paths": ["bin/sleep"]}, "action": "kill"}]}),
        ));
        let status = mirror.status.snapshot();
        assert_eq!(status.refused.len(), 1, "{status:?}");
        assert!(
            status.refused[0].contains("PodPolicy resource \"no-sleep\"")
                && status.refused[0].contains("spec.rules[0].exec.paths[0]")
                && status.refused[0].contains("not an absolute path"),
            "{status:?}"
        );
        let after = std::fs::read_to_string(mirror.files.file_of("no-sleep").unwrap()).unwrap();
        assert_eq!(before, after);
        // Fixed: no longer refused.
        mirror.applied(&object("no-sleep", kill_sleep()));
        assert!(mirror.status.snapshot().refused.is_empty());
    }

    #[test]
    fn deletion_and_resync_remove_only_mirrored_files() {
        let dir = tempfile::tempdir().unwrap();
        // Hand-written, one of them sharing the prefix: never touched.
        std::fs::write(dir.path().join("mine.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("podpolicy.mine.yaml"), "x").unwrap();
        let mut mirror = Mirror::new(dir.path(), MirrorHandle::default());
        mirror.resync(vec![object("a", kill_sleep()), object("b", kill_sleep())]);
        mirror.deleted(&object("a", kill_sleep()));
        assert!(!mirror.files.file_of("a").unwrap().exists());
        // "b" was deleted while the watch was down: the next complete list removes it.
        mirror.resync(vec![]);
        assert!(!mirror.files.file_of("b").unwrap().exists());
        assert!(dir.path().join("mine.yaml").exists());
        assert!(dir.path().join("podpolicy.mine.yaml").exists());
        let status = mirror.status.snapshot();
        assert_eq!((status.resources, status.removals), (0, 2), "{status:?}");
        // A resource whose file name a hand-written file holds: reported, not overwritten.
        mirror.applied(&object("mine", kill_sleep()));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("podpolicy.mine.yaml")).unwrap(),
            "x"
        );
        let status = mirror.status.snapshot();
        assert_eq!(status.errors, 1);
        assert!(status.last_error.unwrap().contains("hand-written"));
    }

    /// The CRD's schema, as the API server applies it.
    fn crd_spec_schema() -> serde_json::Value {
        let crd: serde_json::Value =
            serde_yaml_ng::from_str(include_str!("../../deploy/kubernetes/crd-podpolicy.yaml"))
                .unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    /// A value with every property the schema declares.
    fn sample(schema: &serde_json::Value) -> serde_json::Value {
        use serde_json::json;
        match schema["type"].as_str() {
            Some("object") => match schema["properties"].as_object() {
                Some(props) => props
                    .iter()
                    .map(|(k, v)| (k.clone(), sample(v)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
                None => json!({"key": sample(&schema["additionalProperties"])}),
            },
            Some("array") => json!([sample(&schema["items"])]),
            Some("boolean") => json!(true),
            _ => match schema["enum"].get(0) {
                Some(first) => first.clone(),
                None => json!("/value"),
            },
        }
    }

    /// Every key of `value` is declared in `schema` (what is not, the API server prunes).
    fn undeclared(value: &serde_json::Value, schema: &serde_json::Value, at: &str) -> Vec<String> {
        match value {
            serde_json::Value::Object(map) => map
                .iter()
                .flat_map(|(k, v)| {
                    let field = format!("{at}.{k}");
                    match (schema["properties"].get(k), &schema["additionalProperties"]) {
                        (Some(s), _) => undeclared(v, s, &field),
                        (None, s) if !s.is_null() => undeclared(v, s, &field),
                        _ => vec![field],
                    }
                })
                .collect(),
            serde_json::Value::Array(items) => items
                .iter()
                .flat_map(|v| undeclared(v, &schema["items"], &format!("{at}[]")))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The API server prunes fields its schema does not declare, silently: the CRD and the
    /// policy format must have the same fields, both ways.
    #[test]
    fn the_crd_schema_and_the_policy_format_have_the_same_fields() {
        let schema = crd_spec_schema();
        let every_declared = sample(&schema);
        let spec: podmap_policy::PolicySpec = serde_json::from_value(every_declared.clone())
            .unwrap_or_else(|e| {
                panic!("the format refuses a field the CRD declares: {e}\n{every_declared:#}")
            });
        let written = serde_json::to_value(&spec).unwrap();
        assert_eq!(undeclared(&written, &schema, "spec"), Vec::<String>::new());
        // And every field the format writes for the shipped example reaches the kernel intact.
        let example: PodPolicy =
            serde_yaml_ng::from_str(include_str!("../../deploy/policies/no-shell-in-web.yaml"))
                .unwrap();
        let written = serde_json::to_value(&example.spec).unwrap();
        assert_eq!(undeclared(&written, &schema, "spec"), Vec::<String>::new());
        // The check itself finds an undeclared field.
        let mut extra = written.clone();
        extra["rules"][0]["exec"]["globs"] = serde_json::json!(["/x*"]);
        assert_eq!(
            undeclared(&extra, &schema, "spec"),
            ["spec.rules[].exec.globs"]
        );
    }

    #[test]
    fn a_missing_crd_or_rbac_rule_is_named_in_the_error() {
        let status = |code: u16| -> Box<kube::core::Status> {
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "message": "denied or missing", "reason": "x", "code": code
            }))
            .unwrap()
        };
        let list = |code| watcher::Error::InitialListFailed(kube::Error::Api(status(code)));
        assert!(watch_error(&list(404)).contains("crd-podpolicy.yaml"));
        assert!(watch_error(&list(403)).contains("rbac.yaml"));
        let other = watch_error(&watcher::Error::WatchError(status(500)));
        assert!(
            !other.contains("crd-podpolicy") && !other.contains("rbac"),
            "{other}"
        );
    }

    #[test]
    fn long_names_fit_in_a_file_name() {
        let mirror = MirrorDir::new(Path::new("/p"));
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        let file = mirror.file_of(&long).unwrap();
        assert!(file.file_name().unwrap().len() <= 255, "{}", file.display());
        assert_ne!(
            Some(file),
            mirror.file_of(&format!("{}.{}", "a".repeat(200), "c".repeat(52)))
        );
        // A name that is no object name never becomes a path.
        for bad in ["../etc/x", "a/b", "..", "", "UPPER"] {
            assert_eq!(mirror.file_of(bad), None, "{bad}");
        }
    }
}
