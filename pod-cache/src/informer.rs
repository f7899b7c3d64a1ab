//! The informer: list the node's pods, then watch from the list's resource version, feeding the
//! store; on any failure resume or relist with backoff, as client-go's reflector does.
//!
//! Built on kube-client's requests (the same list and watch calls kube-runtime's `watcher`
//! sends) rather than on `watcher` itself, because the cache must report what `watcher` keeps
//! inside: bookmarks and clean watch restarts (both prove the cache is current on a quiet node,
//! so staleness counts from them), and a list or watch start that hangs (the API server accepts
//! the connection and never answers) needs a timeout `watcher` does not have. The protocol
//! steps are `watcher`'s: a 410 Gone (as a status or as an ERROR event) means relist; a watch
//! that ends resumes from the last resource version seen; a bookmark moves that version.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{AsyncBufRead, AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{WatchEvent, WatchParams};
use kube::core::Resource;
use kube::Client;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::compact::{compact, CachedPod, Interner};
use crate::list_body::{BodyError, ListDecoder, Part};
use crate::store::{Retention, Store};
use crate::wire::{Rejected, WirePod};
use backon::ExponentialBuilder;
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::ExponentialBackoff;

/// A watch silent for its timeout plus this long is taken as dead (kube-runtime's margin).
const WATCH_IDLE_MARGIN: Duration = Duration::from_secs(5);
/// A watch that ends within this time of its start without delivering anything counts as a
/// failure and backs off: otherwise a server that closes every watch at once would be hammered.
const WATCH_MIN_HEALTHY: Duration = Duration::from_secs(1);

/// How the informer talks to the API server and how long the store keeps what.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Pods per list page (client-go's default). The API server ignores it when it serves the
    /// first list (`resourceVersion=0`) from its watch cache: that list comes whole, in one
    /// body, which the informer decodes as it arrives, one pod at a time.
    pub page_size: u32,
    /// Longest wait for a list page's or a watch's response to start, and between two reads of
    /// a list page's body.
    pub request_timeout: Duration,
    /// The watch's server-side timeout (`timeoutSeconds`). A watch silent for this plus 5 s is
    /// taken as dead and restarted.
    pub watch_timeout: Duration,
    /// Backoff between failed attempts: from `backoff_min`, doubling, up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long deleted pods are kept, and the change log's length.
    pub retention: Retention,
    /// How often deleted pods past their time are dropped.
    pub sweep_interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            page_size: 500,
            request_timeout: Duration::from_secs(60),
            watch_timeout: Duration::from_secs(290),
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            retention: Retention::default(),
            sweep_interval: Duration::from_secs(5),
        }
    }
}

/// State shared by the informer task, the sweeper task and every `PodCache` handle.
pub(crate) struct Shared {
    pub store: Store,
    pub counters: Counters,
    /// Used by the informer (compacting) and the sweeper (purging) only; never by readers.
    pub interner: Mutex<Interner>,
    pub synced: Notify,
}

impl Shared {
    pub(crate) fn new(retention: Retention) -> Shared {
        Shared {
            store: Store::new(retention),
            counters: Counters::default(),
            interner: Mutex::new(Interner::default()),
            synced: Notify::new(),
        }
    }

    pub(crate) fn interner(&self) -> MutexGuard<'_, Interner> {
        self.interner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub lists: AtomicU64,
    pub watch_restarts: AtomicU64,
    pub objects_skipped: AtomicU64,
    pub errors: AtomicU64,
    pub events: AtomicU64,
    pub bookmarks: AtomicU64,
    pub synced: AtomicBool,
    /// When the last list completed, or the last watch event or bookmark arrived.
    pub last_success: Mutex<Option<Instant>>,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn touch(&self) {
        *self.last_success.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub(crate) fn last_success(&self) -> Option<Instant> {
        *self.last_success.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why the informer could not list or watch this time (logged and counted, then retried).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("list page without a resourceVersion")]
    NoResourceVersion,
    #[error("reading the list body: {0}")]
    Body(#[source] std::io::Error),
    #[error(transparent)]
    BadBody(#[from] BodyError),
    #[error("list body field {field}: {source}")]
    BadField {
        field: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("list body item {index}: {source}")]
    BadItem {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("watch error event: {0}")]
    Status(String),
    #[error("watch closed at once without an event")]
    ClosedAtOnce,
}

/// How a watch ended.
enum WatchEnd {
    /// The server closed it (timeout, API server going away): resume from `resume`.
    Closed,
    /// The resource version is too old (410 Gone): relist.
    Expired,
    Failed(AttemptError),
}

/// A list page's `metadata`.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

pub(crate) struct Informer {
    client: Client,
    node: String,
    config: CacheConfig,
    shared: Arc<Shared>,
    backoff: ExponentialBackoff,
}

impl Informer {
    pub(crate) fn new(
        client: Client,
        node: &str,
        config: CacheConfig,
        shared: Arc<Shared>,
    ) -> Informer {
        // client-go's reflector shape (kube-runtime's default: 800 ms doubling to 30 s, with
        // jitter so that a cluster's nodes do not all relist at once after an API server
        // restart), with bounds the tests can shrink.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(config.backoff_min)
            .with_max_delay(config.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .into();
        Informer {
            client,
            node: node.to_owned(),
            config,
            shared,
            backoff,
        }
    }

    /// The wait before the next attempt (the backoff never runs out: no maximum of attempts).
    fn next_delay(&mut self) -> Duration {
        self.backoff.next().unwrap_or(self.config.backoff_max)
    }

    fn field_selector(&self) -> String {
        format!("spec.nodeName={}", self.node)
    }

    /// Runs until the task is aborted.
    pub(crate) async fn run(mut self) {
        // The first list may be served from the API server's watch cache (resourceVersion=0:
        // cheap for the server, which indexes pods by node). After a 410 the cache's data is
        // known to be behind: list the most recent state.
        let mut from_cache = true;
        let mut resume: Option<String> = None;
        let mut quick_expiry = false;
        loop {
            let rv = match resume.take() {
                Some(rv) => {
                    Counters::bump(&self.shared.counters.watch_restarts);
                    rv
                }
                None => match self.list(from_cache).await {
                    Ok(rv) => rv,
                    Err(err) => {
                        self.failed("list", &err).await;
                        continue;
                    }
                },
            };
            let mut rv_now = rv;
            let watch_started = Instant::now();
            match self.watch(&mut rv_now).await {
                WatchEnd::Closed => {
                    self.backoff.reset();
                    resume = Some(rv_now);
                }
                WatchEnd::Expired => {
                    info!(node = %self.node, "pod watch expired (410 Gone): relisting");
                    from_cache = false;
                    // A server answering 410 to every fresh watch would otherwise get a list and
                    // a watch in a tight loop: the second quick expiry in a row backs off.
                    let quick = watch_started.elapsed() < WATCH_MIN_HEALTHY;
                    if !quick {
                        self.backoff.reset();
                    } else if quick_expiry {
                        tokio::time::sleep(self.next_delay()).await;
                    }
                    quick_expiry = quick;
                    continue;
                }
                WatchEnd::Failed(err) => {
                    self.failed("watch", &err).await;
                    resume = Some(rv_now);
                }
            }
            quick_expiry = false;
        }
    }

    async fn failed(&mut self, what: &str, err: &AttemptError) {
        Counters::bump(&self.shared.counters.errors);
        let delay = self.next_delay();
        warn!(node = %self.node, error = %err, retry_in = ?delay, "pod {what} failed");
        tokio::time::sleep(delay).await;
    }

    /// Lists every page, then replaces the store's content in one step. Returns the list's
    /// resource version, to watch from.
    ///
    /// Each page's body is decoded as it arrives, one pod at a time: the pod is compacted and
    /// dropped before the next is read, and a pod the store already holds unchanged is kept as
    /// the store's copy. So a list costs the compact pods it brings (only the changed ones, on
    /// a relist) and one pod's text, never the body or every decoded pod at once; the memory
    /// the list's buffers took is given back to the system when it completes.
    async fn list(&mut self, from_cache: bool) -> Result<String, AttemptError> {
        let started = Instant::now();
        let mut pods = Vec::new();
        let mut continue_token: Option<String> = None;
        let resource_version = loop {
            let request = self.list_request(from_cache, continue_token.as_deref())?;
            let metadata = self.list_page(request, &mut pods).await?;
            continue_token = metadata.continue_token.filter(|t| !t.is_empty());
            if continue_token.is_none() {
                break metadata.resource_version.filter(|rv| !rv.is_empty());
            }
        };
        let resource_version = resource_version.ok_or(AttemptError::NoResourceVersion)?;
        let count = pods.len();
        self.shared.store.replace(pods, Instant::now());
        self.shared.interner().purge();
        release_free_memory();
        let counters = &self.shared.counters;
        Counters::bump(&counters.lists);
        counters.touch();
        if !counters.synced.swap(true, Ordering::AcqRel) {
            self.shared.synced.notify_waiters();
        }
        // The backoff is reset by a watch that proves healthy, not by the list: a server that
        // lists fine but fails every watch still gets growing pauses.
        info!(node = %self.node, pods = count, resource_version, elapsed = ?started.elapsed(), "listed pods");
        Ok(resource_version)
    }

    /// Sends one list request and reads its body as it arrives, appending its pods to `pods`.
    /// Returns the page's `metadata`.
    async fn list_page(
        &self,
        request: http::Request<Vec<u8>>,
        pods: &mut Vec<Arc<CachedPod>>,
    ) -> Result<ListMeta, AttemptError> {
        // kube's own request path: its auth, TLS, and API errors (a 410 for an expired continue
        // token) as `kube::Error::Api`.
        let body = self
            .within_timeout(self.client.request_stream(request))
            .await??;
        let mut body = std::pin::pin!(body);
        let mut decoder = ListDecoder::default();
        let mut metadata = ListMeta::default();
        let mut index = 0;
        loop {
            let chunk = self
                .within_timeout(body.fill_buf())
                .await?
                .map_err(AttemptError::Body)?;
            if chunk.is_empty() {
                break;
            }
            let read = chunk.len();
            decoder.feed(chunk, |part| -> Result<(), AttemptError> {
                match part {
                    Part::Item(text) => {
                        let pod = WirePod::decode_unchecked(text)
                            .map_err(|source| AttemptError::BadItem { index, source })?;
                        index += 1;
                        self.listed(pod, pods);
                        Ok(())
                    }
                    Part::Field { name, value } => {
                        let bad = |source| AttemptError::BadField {
                            field: name.to_owned(),
                            source,
                        };
                        if name == "metadata" {
                            metadata = serde_json::from_slice(value).map_err(bad)?;
                        } else {
                            // Not used, but it must be JSON like the rest.
                            serde_json::from_slice::<serde::de::IgnoredAny>(value).map_err(bad)?;
                        }
                        Ok(())
                    }
                }
            })?;
            body.as_mut().consume(read);
        }
        decoder.finish()?;
        Ok(metadata)
    }

    /// One pod of a list: compacted at once (the decoded pod is dropped here), and kept as the
    /// store's own copy when that is the same.
    fn listed(&self, pod: WirePod, pods: &mut Vec<Arc<CachedPod>>) {
        match pod {
            WirePod::Pod(pod) => {
                let cached = compact(&pod, &mut self.shared.interner());
                drop(pod);
                pods.push(self.shared.store.unchanged(cached));
            }
            WirePod::Rejected(rejected) => self.skipped(&rejected, "list"),
        }
    }

    /// `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>&limit=..`, built by hand because
    /// kube's `ListParams` drops `resourceVersion=0` whenever a limit is set, and the first list
    /// should be served from the API server's cache (client-go's reflector does the same).
    fn list_request(
        &self,
        from_cache: bool,
        continue_token: Option<&str>,
    ) -> Result<http::Request<Vec<u8>>, AttemptError> {
        let mut uri = format!(
            "{}?fieldSelector={}&limit={}",
            Pod::url_path(&(), None),
            encode(&self.field_selector()),
            self.config.page_size
        );
        match continue_token {
            // The API server refuses a resourceVersion together with a continue token.
            Some(token) => uri.push_str(&format!("&continue={}", encode(token))),
            None if from_cache => {
                uri.push_str("&resourceVersion=0&resourceVersionMatch=NotOlderThan")
            }
            None => {}
        }
        Ok(http::Request::get(uri).body(Vec::new())?)
    }

    /// Watches from `rv`, applying events to the store and moving `rv` along.
    async fn watch(&mut self, rv: &mut String) -> WatchEnd {
        let params = WatchParams::default()
            .fields(&self.field_selector())
            .timeout(
                self.config
                    .watch_timeout
                    .as_secs()
                    .clamp(1, u64::from(u32::MAX)) as u32,
            );
        let request = match kube::core::Request::new(Pod::url_path(&(), None)).watch(&params, rv) {
            Ok(request) => request,
            Err(err) => {
                return WatchEnd::Failed(AttemptError::Kube(kube::Error::BuildRequest(err)))
            }
        };
        let stream = match self
            .within_timeout(self.client.request_events::<WirePod>(request))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(kube::Error::Api(status))) if status.code == 410 => return WatchEnd::Expired,
            Ok(Err(err)) => return WatchEnd::Failed(err.into()),
            Err(err) => return WatchEnd::Failed(err),
        };
        let mut stream = std::pin::pin!(stream);
        let started = Instant::now();
        let mut delivered = false;
        let idle = self.config.watch_timeout + WATCH_IDLE_MARGIN;
        loop {
            let next = match tokio::time::timeout(idle, stream.next()).await {
                Ok(next) => next,
                Err(_) => return WatchEnd::Failed(AttemptError::Timeout(idle)),
            };
            let event = match next {
                None if !delivered && started.elapsed() < WATCH_MIN_HEALTHY => {
                    return WatchEnd::Failed(AttemptError::ClosedAtOnce)
                }
                None => {
                    debug!(node = %self.node, resource_version = %rv, "pod watch closed: resuming");
                    return WatchEnd::Closed;
                }
                Some(Err(kube::Error::Api(status))) if status.code == 410 => {
                    return WatchEnd::Expired
                }
                // An undecodable line: end this watch and resume from the last good version, so
                // the server sends the lost event again.
                Some(Err(err)) => return WatchEnd::Failed(err.into()),
                Some(Ok(event)) => event,
            };
            delivered = true;
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => self.applied(pod, rv),
                WatchEvent::Deleted(pod) => self.deleted(pod, rv),
                WatchEvent::Bookmark(bookmark) => {
                    Counters::bump(&self.shared.counters.bookmarks);
                    *rv = bookmark.metadata.resource_version;
                }
                WatchEvent::Error(status) if status.code == 410 => return WatchEnd::Expired,
                WatchEvent::Error(status) => {
                    return WatchEnd::Failed(AttemptError::Status(format!(
                        "{} ({})",
                        status.message, status.code
                    )))
                }
            }
            self.shared.counters.touch();
            self.backoff.reset();
        }
    }

    fn applied(&self, pod: WirePod, rv: &mut String) {
        advance(rv, &pod);
        Counters::bump(&self.shared.counters.events);
        match pod {
            WirePod::Pod(pod) => {
                let cached = compact(&pod, &mut self.shared.interner());
                self.shared.store.apply(cached);
            }
            WirePod::Rejected(rejected) => self.skipped(&rejected, "watch"),
        }
    }

    fn deleted(&self, pod: WirePod, rv: &mut String) {
        advance(rv, &pod);
        Counters::bump(&self.shared.counters.events);
        let store = &self.shared.store;
        match pod {
            WirePod::Pod(pod) => {
                let cached = compact(&pod, &mut self.shared.interner());
                store.delete(cached, Instant::now());
            }
            // The final state is unreadable; the deletion itself is not lost if the uid is.
            WirePod::Rejected(rejected) => {
                match rejected.uid.as_deref().and_then(|uid| store.get(uid)) {
                    Some(known) => store.delete((*known).clone(), Instant::now()),
                    None => self.skipped(&rejected, "watch"),
                }
            }
        }
    }

    fn skipped(&self, rejected: &Rejected, source: &str) {
        Counters::bump(&self.shared.counters.objects_skipped);
        warn!(
            node = %self.node,
            source,
            namespace = rejected.namespace.as_deref().unwrap_or("?"),
            name = rejected.name.as_deref().unwrap_or("?"),
            uid = rejected.uid.as_deref().unwrap_or("?"),
            reason = %rejected.reason,
            "skipped a pod object the cache cannot use"
        );
    }

    async fn within_timeout<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, AttemptError> {
        let limit = self.config.request_timeout;
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| AttemptError::Timeout(limit))
    }
}

/// Gives the heap's free memory back to the system, after a list: its buffers and the pods it
/// replaced were freed, but glibc's malloc keeps freed memory below the heap's top (and in
/// other threads' arenas) for reuse, and a process that listed once would keep its peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it trims it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Moves the watch's resource version to the event's object's, when it has one.
fn advance(rv: &mut String, pod: &WirePod) {
    if let Some(next) = pod.resource_version().filter(|v| !v.is_empty()) {
        next.clone_into(rv);
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Drops deleted pods past their time, every `interval`, and the strings only they used.
pub(crate) async fn sweep(shared: Arc<Shared>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if shared.store.expire(Instant::now()) > 0 {
            shared.interner().purge();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("spec.nodeName=node-a"), "spec.nodeName%3Dnode-a");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
