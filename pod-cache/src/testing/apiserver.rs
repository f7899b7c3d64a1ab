//! An in-process Kubernetes API server serving Pods and podmap's PodPolicy custom resource over
//! HTTP, faithful to the parts of the protocol an informer uses:
//!
//! - Routes (`GET` only). Pods, namespaced: `/api/v1/pods` and `/api/v1/namespaces/<ns>/pods`
//!   (list, watch), `/api/v1/namespaces/<ns>/pods/<name>` (get). PodPolicies
//!   (`podmap.dev/v1alpha1`), cluster-scoped: `/apis/podmap.dev/v1alpha1/podpolicies` (list,
//!   watch) and `/apis/podmap.dev/v1alpha1/podpolicies/<name>` (get); like any cluster-scoped
//!   resource they have no namespaced paths (404). A missing object: 404 (`pods "x" not found`,
//!   `podpolicies.podmap.dev "x" not found`).
//! - One resource version counter for all resources (etcd's revision), as on a real server; each
//!   resource has its own objects, change history, continue snapshots and watches.
//! - Lists: a `PodList` or `PodPolicyList` with `metadata.resourceVersion`; `limit` and
//!   `continue` page through one consistent snapshot; `resourceVersion` (`0` or empty: any/most
//!   recent; too new: 504; with `Exact` and too old: 410); an expired or unknown `continue`
//!   token: 410. A list at `resourceVersion=0` (with no match or `NotOlderThan`) is served from
//!   the watch cache, which ignores `limit`: the whole list in one body, without a continue
//!   token, however large (kube-apiserver's `shouldDelegateList`). The body is written as it is
//!   produced, a few objects per chunk, never built whole (as the API server's streaming list
//!   encoder writes it), so a test's memory is the client's.
//! - `?watch=true`: chunked JSON lines `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR",
//!   "object":...}` from `resourceVersion` on (replayed from a bounded history; older than the
//!   history: one ERROR event with a 410 `Expired` Status, as the API server's watch cache sends);
//!   without a version (or `0`): synthetic ADDED events for the current objects first. Objects that
//!   start or stop matching the field selector arrive as ADDED or DELETED, as on a real server.
//!   `timeoutSeconds` ends the watch (after a last bookmark); `allowWatchBookmarks` adds
//!   bookmarks (of the watched kind) every `bookmark_interval` and on request.
//! - `fieldSelector` (`=`, `==`, `!=`, comma-separated) on the fields the API server supports:
//!   for pods `metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`; for
//!   podpolicies, as for every custom resource, `metadata.name` and `metadata.namespace` (empty
//!   for a cluster-scoped object). Any other field is refused with 400, as the API server refuses
//!   unsupported field labels. Label selectors are refused (400): not implemented.
//! - Errors are `Status` objects with the real reasons and codes.
//!
//! And what tests need: mutations that emit events, forced 410s, a restart that drops every
//! connection (state kept or reset), and faults (garbage bodies, hanging requests, 500s), all of
//! them for every resource.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tracing::debug;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Settings of a test API server.
#[derive(Clone, Debug)]
pub struct TestApiServerConfig {
    /// Changes kept (per resource) for watches to resume from; older versions get 410 Gone.
    pub history: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Continue tokens (list snapshots) kept; an older token gets 410 Gone.
    pub snapshots: usize,
}

impl Default for TestApiServerConfig {
    fn default() -> Self {
        TestApiServerConfig {
            history: 10_000,
            bookmark_interval: Duration::from_secs(60),
            snapshots: 64,
        }
    }
}

/// A fault the server injects into every request until cleared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// 200 with a body that is not JSON (lists and watches alike).
    Garbage,
    /// Accept the request and never answer (until the fault is cleared: then 503).
    Hang,
    /// 500 with an `InternalError` Status.
    ServerError,
}

/// A resource the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Core `v1` Pods, namespaced.
    Pods,
    /// podmap's `podmap.dev/v1alpha1` PodPolicy custom resource, cluster-scoped.
    PodPolicies,
}

impl Resource {
    const ALL: [Resource; 2] = [Resource::Pods, Resource::PodPolicies];

    fn api_version(self) -> &'static str {
        match self {
            Resource::Pods => "v1",
            Resource::PodPolicies => "podmap.dev/v1alpha1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::PodPolicies => "PodPolicy",
        }
    }

    fn namespaced(self) -> bool {
        self == Resource::Pods
    }

    /// How the API server's messages name the resource: `<plural>.<group>`, the core group
    /// being empty.
    fn qualified_name(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::PodPolicies => "podpolicies.podmap.dev",
        }
    }

    /// The field labels selectors may use: a few per built-in type; only the metadata ones for
    /// custom resources.
    fn field_labels(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "status.phase",
            ],
            Resource::PodPolicies => &["metadata.name", "metadata.namespace"],
        }
    }
}

/// Request counters, for assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// List and get requests, and watch requests, received (faulty answers included).
    pub lists: u64,
    pub watches: u64,
    pub open_watches: usize,
    pub connections: u64,
}

/// The running server. Dropping it stops it.
pub struct TestApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    hang: Arc<Notify>,
    running: Mutex<Vec<AbortHandle>>,
}

/// One stored object, serialized once (lists and events copy the bytes).
struct Stored {
    json: Bytes,
    namespace: String,
    name: String,
    /// A pod's `spec.nodeName` and `status.phase`, for field selectors.
    node: String,
    phase: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    kind: ChangeKind,
    old: Option<Arc<Stored>>,
    /// The new object; for a deletion, the object's final state.
    new: Arc<Stored>,
}

struct Watcher {
    selector: FieldSelector,
    namespace: Option<String>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct Snapshot {
    rv: u64,
    items: Arc<Vec<Arc<Stored>>>,
}

/// One resource's objects and watch cache (the API server has one per resource).
#[derive(Default)]
struct Store {
    /// By namespace (empty for cluster-scoped objects) and name.
    objects: BTreeMap<(String, String), Arc<Stored>>,
    history: VecDeque<Change>,
    /// Watches may resume from this version on; older ones get 410.
    oldest_rv: u64,
    watchers: Vec<Watcher>,
    snapshots: HashMap<u64, Snapshot>,
}

struct State {
    config: TestApiServerConfig,
    /// The last resource version, of any resource.
    rv: u64,
    /// Every resource's, from the start: a compaction must reach those still unused too.
    stores: BTreeMap<Resource, Store>,
    next_snapshot: u64,
    fault: Fault,
    stats: ServerStats,
    requests: VecDeque<String>,
    /// Bumped by every stop: a connection from before it is dead even if its task has not been
    /// cancelled yet (task aborts take effect at the task's next poll), so it must not answer.
    generation: u64,
}

impl TestApiServer {
    /// Starts a server on 127.0.0.1 (a free port) on the current tokio runtime.
    pub async fn start() -> TestApiServer {
        TestApiServer::start_with(TestApiServerConfig::default()).await
    }

    pub async fn start_with(config: TestApiServerConfig) -> TestApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the test API server");
        let addr = listener.local_addr().expect("test API server address");
        let state = State {
            config,
            rv: 1,
            stores: Resource::ALL
                .map(|resource| {
                    let store = Store {
                        oldest_rv: 1,
                        ..Store::default()
                    };
                    (resource, store)
                })
                .into(),
            next_snapshot: 1,
            fault: Fault::None,
            stats: ServerStats::default(),
            requests: VecDeque::new(),
            generation: 0,
        };
        let server = TestApiServer {
            addr,
            state: Arc::new(Mutex::new(state)),
            hang: Arc::new(Notify::new()),
            running: Mutex::new(Vec::new()),
        };
        server.serve(listener);
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        client_for(&self.url())
    }

    /// Creates or replaces a pod (by namespace and name); watchers get ADDED or MODIFIED.
    /// A pod without a uid gets one, as on create. Returns the new resource version.
    pub fn apply(&self, pod: &Pod) -> u64 {
        let value = serde_json::to_value(pod).expect("serializing a Pod");
        self.apply_object(Resource::Pods, value)
    }

    /// Stores any JSON object as a pod, as it is (for malformed objects); keyed by
    /// `metadata.namespace`/`metadata.name` where those are strings.
    pub fn apply_raw(&self, value: Value) -> u64 {
        self.state().put(Resource::Pods, value)
    }

    /// Creates or replaces an object (a JSON object) of a resource, by namespace and name;
    /// watchers get ADDED or MODIFIED. An object without a uid gets one, as on create; a
    /// cluster-scoped one loses its namespace, as the API server clears it. Returns the new
    /// resource version.
    pub fn apply_object(&self, resource: Resource, mut value: Value) -> u64 {
        let mut state = self.state();
        if !resource.namespaced() {
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("namespace");
            }
        }
        if value.pointer("/metadata/uid").is_none() {
            let uid = format!("00000000-0000-4000-8000-{:012x}", state.rv + 1);
            value["metadata"]["uid"] = json!(uid);
        }
        state.put(resource, value)
    }

    /// Deletes a pod; watchers get DELETED with its final state. Returns whether it existed.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        self.delete_object(Resource::Pods, namespace, name)
    }

    /// Deletes an object (`namespace` is empty for a cluster-scoped one); watchers get DELETED
    /// with its final state. Returns whether it existed.
    pub fn delete_object(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut state = self.state();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = state.store(resource).objects.remove(&key) else {
            return false;
        };
        let rv = state.rv + 1;
        let mut last: Value = serde_json::from_slice(&old.json).unwrap_or(Value::Null);
        if let Some(meta) = last.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let new = Arc::new(Stored::new(&last, &key));
        state.record(
            resource,
            Change {
                rv,
                kind: ChangeKind::Deleted,
                old: Some(old),
                new,
            },
        );
        true
    }

    /// The stored JSON of a pod.
    pub fn object(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object_of(Resource::Pods, namespace, name)
    }

    /// The stored JSON of an object (`namespace` is empty for a cluster-scoped one).
    pub fn object_of(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let mut state = self.state();
        let stored = state
            .store(resource)
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))?;
        serde_json::from_slice(&stored.json).ok()
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    /// Forgets the change history: watches from an older version get 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state();
        let rv = state.rv;
        for store in state.stores.values_mut() {
            store.history.clear();
            store.oldest_rv = rv;
            store.snapshots.clear();
        }
    }

    /// Compacts, and ends every open watch with an ERROR event carrying a 410 Status (what a
    /// watch sees when the API server's watch cache drops its window).
    pub fn expire_watches(&self) {
        self.compact();
        let mut state = self.state();
        let rv = state.rv;
        let line = event_line(
            "ERROR",
            &gone(&format!("too old resource version: {rv} ({})", rv + 1)),
        );
        for watcher in state.watchers().flat_map(|watchers| watchers.drain(..)) {
            let _ = watcher.tx.send(line.clone());
        }
    }

    /// Sends a bookmark to every watch that allows them.
    pub fn send_bookmarks(&self) {
        self.state().bookmarks();
    }

    /// Sends a raw line (e.g. garbage) to every open watch.
    pub fn inject_watch_line(&self, line: &str) {
        let line = Bytes::from(format!("{line}\n"));
        for watchers in self.state().watchers() {
            watchers.retain(|w| w.tx.send(line.clone()).is_ok());
        }
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state().fault = fault;
        if fault != Fault::Hang {
            self.hang.notify_waiters();
        }
    }

    pub fn stats(&self) -> ServerStats {
        let mut state = self.state();
        let open_watches = state
            .watchers()
            .flat_map(|watchers| watchers.iter())
            .filter(|w| !w.tx.is_closed())
            .count();
        ServerStats {
            open_watches,
            ..state.stats.clone()
        }
    }

    /// The last request URIs (path and query), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.iter().cloned().collect()
    }

    /// Stops serving: closes the listener and every connection (the clients see resets).
    pub fn stop(&self) {
        for task in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let mut state = self.state();
        state.generation += 1;
        state.watchers().for_each(Vec::clear);
    }

    /// Serves again on the same port, as a restarted API server: its watch cache starts at the
    /// current version (older watches get 410). With `reset`, all objects are gone too (no
    /// events are sent for them: nobody was connected); resource versions keep increasing.
    pub async fn resume(&self, reset: bool) {
        {
            let mut state = self.state();
            if reset {
                for store in state.stores.values_mut() {
                    store.objects.clear();
                }
                state.rv += 1;
            }
        }
        self.compact();
        // The old listener's port may linger for a moment after the abort.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if tries < 50 => {
                    tries += 1;
                    debug!("rebinding {}: {err}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("rebinding the test API server on {}: {err}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// [`stop`](Self::stop) then [`resume`](Self::resume).
    pub async fn restart(&self, reset: bool) {
        self.stop();
        self.resume(reset).await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve(&self, listener: TcpListener) {
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let state = self.state.clone();
        let hang = self.hang.clone();
        let conns = connections.clone();
        let generation = self.state().generation;
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    if state.generation != generation {
                        return; // stopped: drop the connection unanswered
                    }
                    state.stats.connections += 1;
                }
                let handler = Handler {
                    state: state.clone(),
                    hang: hang.clone(),
                    generation,
                };
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        });
        let state = self.state.clone();
        let interval = self.state().config.bookmark_interval;
        let bookmarks = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                state.lock().unwrap_or_else(|p| p.into_inner()).bookmarks();
            }
        });
        // Aborting the accept task drops the listener; the connections are aborted one by one.
        let closer = tokio::spawn(async move {
            let _guard = AbortAll(connections);
            std::future::pending::<()>().await;
        });
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.extend([
            accept.abort_handle(),
            bookmarks.abort_handle(),
            closer.abort_handle(),
        ]);
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Aborts every connection task when dropped (with the task holding it).
struct AbortAll(Arc<Mutex<Vec<AbortHandle>>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for conn in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            conn.abort();
        }
    }
}

impl Stored {
    fn new(value: &Value, key: &(String, String)) -> Stored {
        let text = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Stored {
            json: Bytes::from(serde_json::to_vec(value).expect("serializing JSON")),
            namespace: key.0.clone(),
            name: key.1.clone(),
            node: text("/spec/nodeName"),
            phase: text("/status/phase"),
        }
    }
}

impl State {
    fn store(&mut self, resource: Resource) -> &mut Store {
        self.stores.entry(resource).or_default()
    }

    /// The watches of every resource.
    fn watchers(&mut self) -> impl Iterator<Item = &mut Vec<Watcher>> {
        self.stores.values_mut().map(|store| &mut store.watchers)
    }

    /// Stores an object as it is, at the next version, keyed by its namespace and name.
    fn put(&mut self, resource: Resource, mut value: Value) -> u64 {
        let rv = self.rv + 1;
        let key = object_key(&value, rv);
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let new = Arc::new(Stored::new(&value, &key));
        let old = self.store(resource).objects.insert(key, new.clone());
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(resource, Change { rv, kind, old, new });
        rv
    }

    /// Appends a change to the resource's history and sends it to the watchers it concerns.
    fn record(&mut self, resource: Resource, change: Change) {
        self.rv = change.rv;
        let limit = self.config.history;
        let store = self.store(resource);
        store.watchers.retain(|w| match w.event_for(&change) {
            Some(line) => w.tx.send(line).is_ok(),
            None => !w.tx.is_closed(),
        });
        store.history.push_back(change);
        while store.history.len() > limit {
            let dropped = store.history.pop_front().expect("non-empty history");
            store.oldest_rv = dropped.rv;
        }
    }

    fn bookmarks(&mut self) {
        for (resource, store) in &mut self.stores {
            let line = bookmark_line(*resource, self.rv);
            store
                .watchers
                .retain(|w| !w.bookmarks || w.tx.send(line.clone()).is_ok());
        }
    }

    fn log_request(&mut self, uri: &str) {
        self.requests.push_back(uri.to_owned());
        while self.requests.len() > 256 {
            self.requests.pop_front();
        }
    }
}

impl Watcher {
    fn matches(&self, object: &Stored) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == object.namespace)
            && self.selector.matches(object)
    }

    /// The event line this watcher gets for a change, if any.
    fn event_for(&self, change: &Change) -> Option<Bytes> {
        let was = change.old.as_ref().is_some_and(|old| self.matches(old));
        let kind = match change.kind {
            ChangeKind::Deleted => was.then_some("DELETED"),
            _ => match (was, self.matches(&change.new)) {
                (false, true) => Some("ADDED"),
                (true, true) => Some("MODIFIED"),
                // Modified out of the selection: to this watcher, the object is gone.
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }?;
        Some(event_bytes(kind, &change.new.json))
    }
}

#[derive(Clone)]
struct Handler {
    state: Arc<Mutex<State>>,
    hang: Arc<Notify>,
    /// The server generation this connection was accepted in.
    generation: u64,
}

/// The parsed query of a list or watch request.
#[derive(Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    version_match: Option<String>,
    limit: Option<usize>,
    continue_token: Option<String>,
    field_selector: Option<String>,
    label_selector: Option<String>,
    timeout: Option<u64>,
    bookmarks: bool,
}

impl Handler {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let uri = req.uri().clone();
        let watch = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let fault = {
            let mut state = self.state();
            let current = state.generation == self.generation;
            if current {
                state.log_request(&uri.to_string());
                // Counted before any fault: the counts are the attempts clients made.
                if watch {
                    state.stats.watches += 1;
                } else {
                    state.stats.lists += 1;
                }
            }
            current.then_some(state.fault)
        };
        // A connection of a stopped server never answers: its task is being aborted.
        let Some(fault) = fault else {
            return std::future::pending().await;
        };
        match fault {
            Fault::None => {}
            Fault::Garbage => {
                return respond(StatusCode::OK, Bytes::from_static(b"<html>not json{{{\n"))
            }
            Fault::ServerError => {
                return status_response(500, "InternalError", "injected server error");
            }
            Fault::Hang => {
                let released = self.hang.notified();
                // Cleared between the check and here: answer now.
                if self.state().fault == Fault::Hang {
                    released.await;
                }
                return status_response(503, "ServiceUnavailable", "the hang was released");
            }
        }
        if req.method() != hyper::Method::GET {
            return status_response(405, "MethodNotAllowed", "only GET is served");
        }
        let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let (resource, namespace) = match segments.as_slice() {
            ["api", "v1", "pods"] => (Resource::Pods, None),
            ["api", "v1", "namespaces", ns, "pods"] => (Resource::Pods, Some((*ns).to_owned())),
            ["api", "v1", "namespaces", ns, "pods", name] => {
                return self.get(Resource::Pods, ns, name)
            }
            ["apis", "podmap.dev", "v1alpha1", "podpolicies"] => (Resource::PodPolicies, None),
            ["apis", "podmap.dev", "v1alpha1", "podpolicies", name] => {
                return self.get(Resource::PodPolicies, "", name)
            }
            _ => {
                return status_response(
                    404,
                    "NotFound",
                    &format!(
                        "the server could not find the requested resource ({})",
                        uri.path()
                    ),
                )
            }
        };
        let query = match parse_query(uri.query().unwrap_or_default()) {
            Ok(query) => query,
            Err(message) => return status_response(400, "BadRequest", &message),
        };
        if query
            .label_selector
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            return status_response(
                400,
                "BadRequest",
                "label selectors are not implemented by the test API server",
            );
        }
        let selector = match FieldSelector::parse(
            query.field_selector.as_deref().unwrap_or_default(),
            resource.field_labels(),
        ) {
            Ok(selector) => selector,
            Err(message) => return status_response(400, "BadRequest", &message),
        };
        if query.watch {
            self.watch(resource, namespace, selector, &query)
        } else {
            self.list(resource, namespace, selector, &query)
        }
    }

    fn get(&self, resource: Resource, namespace: &str, name: &str) -> Response<Body> {
        let mut state = self.state();
        let key = (namespace.to_owned(), name.to_owned());
        match state.store(resource).objects.get(&key) {
            Some(stored) => respond(StatusCode::OK, stored.json.clone()),
            None => {
                let message = format!("{} \"{name}\" not found", resource.qualified_name());
                status_response(404, "NotFound", &message)
            }
        }
    }

    fn list(
        &self,
        resource: Resource,
        namespace: Option<String>,
        selector: FieldSelector,
        query: &Query,
    ) -> Response<Body> {
        let mut guard = self.state();
        // Borrowed field by field: the store and the shared counters at once.
        let state = &mut *guard;
        let store = state.stores.entry(resource).or_default();
        let (snapshot_id, rv, items, offset) = match &query.continue_token {
            Some(token) => {
                let parsed = token
                    .split_once(':')
                    .and_then(|(id, off)| Some((id.parse().ok()?, off.parse().ok()?)));
                let Some((id, offset)) = parsed else {
                    return status_response(400, "BadRequest", "invalid continue token");
                };
                match store.snapshots.get(&id) {
                    Some(snapshot) if snapshot.rv >= store.oldest_rv => (id, snapshot.rv, snapshot.items.clone(), offset),
                    _ => {
                        return status_response(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. \
                             You can start a new list without the continue parameter.",
                        )
                    }
                }
            }
            None => {
                let requested: Option<u64> = match query.resource_version.as_deref() {
                    None | Some("") | Some("0") => None,
                    Some(rv) => match rv.parse() {
                        Ok(rv) => Some(rv),
                        Err(_) => {
                            return status_response(
                                400,
                                "BadRequest",
                                &format!("invalid resource version: {rv}"),
                            )
                        }
                    },
                };
                if let Some(requested) = requested {
                    if requested > state.rv {
                        return status_response(
                            504,
                            "Timeout",
                            &format!(
                                "Too large resource version: {requested}, current: {}",
                                state.rv
                            ),
                        );
                    }
                    if query.version_match.as_deref() == Some("Exact") && requested != state.rv {
                        let message =
                            format!("too old resource version: {requested} ({})", state.rv);
                        return status_response(410, "Expired", &message);
                    }
                }
                let items: Vec<Arc<Stored>> = store
                    .objects
                    .values()
                    .filter(|o| {
                        namespace.as_ref().is_none_or(|ns| *ns == o.namespace)
                            && selector.matches(o)
                    })
                    .cloned()
                    .collect();
                let id = state.next_snapshot;
                (id, state.rv, Arc::new(items), 0)
            }
        };
        // Served from the watch cache: the whole list, `limit` ignored. Paging needs the storage
        // (no resourceVersion, an exact one, or a continue token).
        let from_watch_cache = query.continue_token.is_none()
            && query.resource_version.as_deref() == Some("0")
            && query
                .version_match
                .as_deref()
                .is_none_or(|m| m == "NotOlderThan");
        let end = query
            .limit
            .filter(|l| *l > 0 && !from_watch_cache)
            .map_or(items.len(), |limit| (offset + limit).min(items.len()));
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if end < items.len() {
            metadata["continue"] = json!(format!("{snapshot_id}:{end}"));
            metadata["remainingItemCount"] = json!(items.len() - end);
            if query.continue_token.is_none() {
                state.next_snapshot += 1;
                store.snapshots.insert(
                    snapshot_id,
                    Snapshot {
                        rv,
                        items: items.clone(),
                    },
                );
                let keep = state.config.snapshots as u64;
                store.snapshots.retain(|id, _| *id + keep > snapshot_id);
            }
        }
        let head = format!(
            r#"{{"kind":"{}List","apiVersion":"{}","metadata":{metadata},"items":["#,
            resource.kind(),
            resource.api_version()
        );
        let chunks = ListChunks {
            head: Some(Bytes::from(head)),
            items,
            first: offset.min(end),
            next: offset.min(end),
            end,
            done: false,
        };
        let body = StreamBody::new(
            futures::stream::iter(chunks).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))),
        );
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(body))
            .expect("list response")
    }

    fn watch(
        &self,
        resource: Resource,
        namespace: Option<String>,
        selector: FieldSelector,
        query: &Query,
    ) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = Watcher {
            selector,
            namespace,
            bookmarks: query.bookmarks,
            tx,
        };
        let mut state = self.state();
        let store = state.store(resource);
        match query.resource_version.as_deref() {
            None | Some("") | Some("0") => {
                // Start at the current state: every matching object as ADDED first.
                for object in store.objects.values().filter(|o| watcher.matches(o)) {
                    let _ = watcher.tx.send(event_bytes("ADDED", &object.json));
                }
            }
            Some(rv) => {
                let Ok(from) = rv.parse::<u64>() else {
                    return status_response(
                        400,
                        "BadRequest",
                        &format!("invalid resource version: {rv}"),
                    );
                };
                if from < store.oldest_rv {
                    // Too old: the watch cache answers 200 with one ERROR event, then ends.
                    let message = format!("too old resource version: {from} ({})", store.oldest_rv);
                    drop(state);
                    return respond(StatusCode::OK, event_line("ERROR", &gone(&message)));
                }
                for change in store.history.iter().filter(|c| c.rv > from) {
                    if let Some(line) = watcher.event_for(change) {
                        let _ = watcher.tx.send(line);
                    }
                }
            }
        }
        let bookmarks = watcher.bookmarks;
        store.watchers.push(watcher);
        let state_for_timeout = self.state.clone();
        drop(state);

        // Server-side timeout: a last bookmark (as the API server sends), then the end.
        let deadline = query
            .timeout
            // A timeout past the end of time is no timeout (and no overflow panic).
            .and_then(|secs| tokio::time::Instant::now().checked_add(Duration::from_secs(secs)));
        let lines = futures::stream::unfold((rx, false), move |(mut rx, done)| {
            let state = state_for_timeout.clone();
            async move {
                if done {
                    return None;
                }
                let received = match deadline {
                    Some(deadline) => tokio::select! {
                        line = rx.recv() => line,
                        _ = tokio::time::sleep_until(deadline) => {
                            let rv = state.lock().unwrap_or_else(|p| p.into_inner()).rv;
                            return bookmarks.then(|| (bookmark_line(resource, rv), (rx, true)));
                        }
                    },
                    None => rx.recv().await,
                };
                received.map(|line| (line, (rx, false)))
            }
        });
        let body = StreamBody::new(lines.map(|line| Ok::<_, Infallible>(Frame::data(line))));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(body))
            .expect("watch response")
    }
}

/// A kube client for a test API server at `url` (from [`TestApiServer::url`]), e.g. in another
/// process.
///
/// # Panics
/// If `url` is not a URL.
pub fn client_for(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().expect("test API server url"));
    kube::Client::try_from(config).expect("kube client for the test API server")
}

/// A list body as it is written: the head, then the objects of `next..end` a few at a time
/// (each chunk is produced when the connection asks for it), then the closing brackets.
struct ListChunks {
    head: Option<Bytes>,
    items: Arc<Vec<Arc<Stored>>>,
    /// The page's first object: every later one is preceded by a comma.
    first: usize,
    next: usize,
    end: usize,
    done: bool,
}

/// About this much of the list per chunk.
const LIST_CHUNK: usize = 64 * 1024;

impl Iterator for ListChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if self.done {
            return None;
        }
        let mut chunk = Vec::with_capacity(LIST_CHUNK + 4096);
        while self.next < self.end && chunk.len() < LIST_CHUNK {
            if self.next > self.first {
                chunk.push(b',');
            }
            chunk.extend_from_slice(&self.items[self.next].json);
            self.next += 1;
        }
        if self.next >= self.end {
            chunk.extend_from_slice(b"]}");
            self.done = true;
        }
        Some(Bytes::from(chunk))
    }
}

/// `metadata.namespace` (empty without one: cluster-scoped objects have none) and
/// `metadata.name` (made up without one).
fn object_key(value: &Value, rv: u64) -> (String, String) {
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    (
        text("/metadata/namespace").unwrap_or_default(),
        text("/metadata/name").unwrap_or_else(|| format!("unnamed-{rv}")),
    )
}

fn parse_query(query: &str) -> Result<Query, String> {
    let mut parsed = Query::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match key {
            "watch" => parsed.watch = value == "true" || value == "1",
            "resourceVersion" => parsed.resource_version = Some(value),
            "resourceVersionMatch" => parsed.version_match = Some(value),
            "limit" => {
                parsed.limit = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid limit: {value}"))?,
                )
            }
            "continue" => parsed.continue_token = Some(value),
            "fieldSelector" => parsed.field_selector = Some(value),
            "labelSelector" => parsed.label_selector = Some(value),
            "timeoutSeconds" => {
                parsed.timeout = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid timeoutSeconds: {value}"))?,
                )
            }
            "allowWatchBookmarks" => parsed.bookmarks = value == "true",
            _ => {}
        }
    }
    if parsed.continue_token.is_some()
        && parsed
            .resource_version
            .as_deref()
            .is_some_and(|rv| !rv.is_empty())
    {
        return Err("specifying resource version is not allowed when using continue".into());
    }
    Ok(parsed)
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .ok_or_else(|| format!("bad escape in {value}"))?;
                out.push(
                    u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape in {value}"))?,
                );
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("not UTF-8: {value}"))
}

/// A field selector on the fields the API server supports for a resource.
#[derive(Default)]
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(selector: &str, supported: &[&str]) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{selector}'; can't understand '{term}'"
                ));
            };
            if !supported.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, object: &Stored) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => &object.name,
                "metadata.namespace" => &object.namespace,
                "spec.nodeName" => &object.node,
                _ => &object.phase,
            };
            (actual == value) == *equal
        })
    }
}

fn event_bytes(kind: &str, object: &[u8]) -> Bytes {
    // `type` first, as the API server writes it (clients may rely on it to decode the object
    // without buffering it).
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(br#"{"type":""#);
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(br#"","object":"#);
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    event_bytes(kind, object.to_string().as_bytes())
}

fn bookmark_line(resource: Resource, rv: u64) -> Bytes {
    event_line(
        "BOOKMARK",
        &json!({"kind": resource.kind(), "apiVersion": resource.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}}),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn gone(message: &str) -> Value {
    status(410, "Expired", message)
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let code_status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(
        code_status,
        Bytes::from(status(code, reason, message).to_string()),
    )
}

fn respond(code: StatusCode, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(Full::new(body)))
        .expect("response")
}
