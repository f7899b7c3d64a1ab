//! The `Plugin` service podmap-nri serves to the runtime.
//!
//! Every call is answered with success within [`REPLY_BOUND`] whatever happens
//! (docs/decisions.md #20): the work (map and store writes, cgroup lookups) runs on a blocking
//! thread under the mapper's lock; a call whose work outlasts the bound is answered anyway and
//! counted as a slow reply, and the work finishes in the background. Failures are logged and
//! counted, never returned: an error status would fail the user's container.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use podmap_bpf::layout::Counter;
use podmap_bpf::Counters;
use podmap_nri_protocol::api::{
    ConfigureRequest, ConfigureResponse, Container, CreateContainerRequest,
    CreateContainerResponse, Empty, Event, PodSandbox, PostCreateContainerRequest,
    PostCreateContainerResponse, PostStartContainerRequest, PostStartContainerResponse,
    PostUpdateContainerRequest, PostUpdateContainerResponse, PostUpdatePodSandboxRequest,
    PostUpdatePodSandboxResponse, RemoveContainerRequest, RemoveContainerResponse,
    RemovePodSandboxRequest, RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse,
    StartContainerRequest, StartContainerResponse, StateChangeEvent, StopContainerRequest,
    StopContainerResponse, StopPodSandboxRequest, StopPodSandboxResponse, SynchronizeRequest,
    SynchronizeResponse, UpdateContainerRequest, UpdateContainerResponse, UpdatePodSandboxRequest,
    UpdatePodSandboxResponse, ValidateContainerAdjustmentRequest,
    ValidateContainerAdjustmentResponse,
};
use podmap_nri_protocol::api_ttrpc::Plugin;
use podmap_nri_protocol::ttrpc;
use podmap_nri_protocol::ttrpc::r#async::TtrpcContext;
use podmap_nri_protocol::EventMask;

use crate::config::Settings;
use crate::logging::LogSink;
use crate::mapper::Mapper;
use podmap_node::nri_health::{self as health, Health};

/// How long a call's work may take before the call is answered anyway. The runtime waits up to
/// 2 s; podmap promises 50 ms (docs/decisions.md #20). The rest of the 50 ms is for the transport
/// and the scheduler of a busy node (seen: 11 ms on two cores both saturated). The work itself
/// takes well under a millisecond when nothing is stuck.
pub const REPLY_BOUND: Duration = Duration::from_millis(30);

/// The events podmap-nri subscribes to. POST_CREATE_CONTAINER only where the runtime may already
/// have the cgroup then (not containerd, whose cgroup appears at START_CONTAINER).
pub fn subscription(runtime_name: &str) -> EventMask {
    let mut events = vec![
        Event::RUN_POD_SANDBOX,
        Event::REMOVE_POD_SANDBOX,
        Event::CREATE_CONTAINER,
        Event::START_CONTAINER,
        Event::REMOVE_CONTAINER,
    ];
    if !runtime_name.contains("containerd") {
        events.push(Event::POST_CREATE_CONTAINER);
    }
    EventMask::of(&events)
}

/// State shared by the service, the sweeper and the connection loop.
pub struct Shared {
    settings: Mutex<Settings>,
    mapper: Mutex<Mapper>,
    /// Counters, reachable without the mapper's lock (so a call stuck on it is still counted).
    counters: OnceLock<Arc<Counters>>,
    log: Option<LogSink>,
    /// Whether the settings are final, so maps and store may be opened: from the start in
    /// external mode, after the runtime's configuration when pre-launched (the defaults must
    /// never be opened in place of the configured directories).
    may_open: AtomicBool,
    /// The runtime's name from Configure, for the records (the mapper picks it up per call).
    runtime: Mutex<String>,
    /// Fault injection for tests: the next call's work holds the mapper's lock this long (ms).
    stall_ms: AtomicU64,
    /// The parts of a split Synchronize received so far: the state is
    /// reconciled once, when the last part has come, since a part alone would make the mapper
    /// forget every container of the parts still to come (docs/decisions.md #34).
    sync_parts: Mutex<SyncParts>,
    /// What the health file says (health.rs), kept to rewrite it whole at each change.
    health: Mutex<Health>,
}

/// The most pods and containers a split Synchronize may gather: far above any node's (kubelet's
/// default is 110 pods), low enough that a runtime gone wrong cannot fill the plugin's memory.
const MAX_SYNC_OBJECTS: usize = 65_536;

/// Pods and containers of a Synchronize split over several requests.
#[derive(Default)]
struct SyncParts {
    pods: Vec<PodSandbox>,
    containers: Vec<Container>,
}

impl Shared {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_mapper(&self) -> MutexGuard<'_, Mapper> {
        self.mapper.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, c: Counter) {
        if let Some(m) = self.counters.get() {
            m.add(c, 1);
        }
    }

    /// Changes what the health file says and rewrites it. A failed write is logged; the probe
    /// then reports the old state or none, which is the safe side.
    fn update_health(&self, change: impl FnOnce(&mut Health)) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut h);
        let path = health::path_in(&self.settings().state_dir);
        if let Err(e) = health::write(&path, &h) {
            tracing::warn!(error = %e, "cannot update the health file");
        }
    }

    /// Opens the backend if needed, then runs `work` on the mapper. Blocking.
    fn with_mapper<R>(&self, work: impl FnOnce(&mut Mapper) -> R) -> R {
        let mut m = self.lock_mapper();
        let stall = self.stall_ms.swap(0, Ordering::Relaxed);
        if stall > 0 {
            std::thread::sleep(Duration::from_millis(stall));
        }
        if !m.is_ready() && self.may_open.load(Ordering::Acquire) {
            let settings = self.settings().clone();
            if let Some(counters) = m.ensure_ready(&settings) {
                let _ = self.counters.set(counters);
            }
        }
        let runtime = self.runtime.lock().unwrap_or_else(PoisonError::into_inner);
        if m.runtime() != runtime.as_str() {
            m.set_runtime(&runtime);
        }
        drop(runtime);
        work(&mut m)
    }
}

/// podmap's NRI plugin service.
pub struct PodmapPlugin {
    shared: Arc<Shared>,
}

impl PodmapPlugin {
    pub fn new(settings: Settings, log: Option<LogSink>) -> Arc<Self> {
        let may_open = AtomicBool::new(!settings.is_prelaunched());
        Arc::new(PodmapPlugin {
            shared: Arc::new(Shared {
                may_open,
                runtime: Mutex::new(String::new()),
                settings: Mutex::new(settings),
                mapper: Mutex::new(Mapper::new()),
                counters: OnceLock::new(),
                log,
                stall_ms: AtomicU64::new(0),
                sync_parts: Mutex::new(SyncParts::default()),
                health: Mutex::new(Health {
                    pid: std::process::id(),
                    ..Default::default()
                }),
            }),
        })
    }

    pub fn settings(&self) -> Settings {
        self.shared.settings().clone()
    }

    /// A session with the runtime began (registered) or ended: for the health file.
    pub fn session_changed(&self, registered: bool) {
        self.shared.update_health(|h| {
            if h.registered != registered {
                h.since_unix_ms = health::now_ms();
            }
            h.registered = registered;
            if !registered {
                h.runtime.clear();
                h.runtime_version.clear();
                h.nri_version.clear();
            }
        });
    }

    /// Removes the health file (at exit): no file is the plainest "not ready".
    pub fn clear_health(&self) {
        let _ = std::fs::remove_file(health::path_in(&self.shared.settings().state_dir));
    }

    /// Runs `f` on the mapper (blocking; tests and shutdown).
    pub fn inspect<R>(&self, f: impl FnOnce(&Mapper) -> R) -> R {
        f(&self.shared.lock_mapper())
    }

    /// Makes the next call's work hold the mapper's lock for `d` first, as a stuck map or store
    /// write would (tests of the reply bound).
    pub fn inject_stall(&self, d: Duration) {
        self.shared
            .stall_ms
            .store(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Opens maps and store now if the settings allow (external mode does not wait for the
    /// runtime's configuration). Blocking.
    pub fn open_backend(&self) -> bool {
        self.shared.with_mapper(|m| m.is_ready())
    }

    /// Flushes the store (at exit). Blocking.
    pub fn flush(&self) {
        self.shared.lock_mapper().flush();
    }

    /// Sweeps expired records every `period` until the returned task is aborted.
    pub fn spawn_sweeper(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let shared = shared.clone();
                let swept = tokio::task::spawn_blocking(move || shared.with_mapper(|m| m.sweep()))
                    .await
                    .unwrap_or(0);
                if swept > 0 {
                    tracing::debug!(records = swept, "swept records past their grace period");
                }
            }
        })
    }

    /// Runs `work` within the reply bound; past it the call is answered and the work goes on.
    async fn bounded(&self, call: &'static str, work: impl FnOnce(&mut Mapper) + Send + 'static) {
        let shared = self.shared.clone();
        let started = Instant::now();
        let task = tokio::task::spawn_blocking(move || shared.with_mapper(work));
        match tokio::time::timeout(REPLY_BOUND, task).await {
            Ok(Ok(())) => {
                tracing::trace!(
                    call,
                    took_us = started.elapsed().as_micros() as u64,
                    "handled"
                );
            }
            Ok(Err(e)) => {
                self.shared.count(Counter::NriFailures);
                tracing::error!(call, error = %e, "handler failed; answered success");
            }
            Err(_) => {
                self.shared.count(Counter::NriSlowReplies);
                tracing::warn!(
                    call,
                    bound_ms = REPLY_BOUND.as_millis() as u64,
                    "work outlasted the reply bound; answered success, the work goes on"
                );
            }
        }
    }
}

impl PodmapPlugin {
    /// One lifecycle event, however it came: its own call (NRI v0.12 and up) or StateChange
    /// (earlier runtimes, and later ones talking to a plugin without the call). Events podmap
    /// does not use are answered and dropped.
    async fn on_event(&self, event: Event, pod: PodSandbox, c: Container) {
        let received = Instant::now();
        self.shared.count(Counter::NriEvents);
        match event {
            Event::RUN_POD_SANDBOX => {
                self.bounded("RunPodSandbox", move |m| {
                    let _ = m.sandbox_started(&pod);
                })
                .await
            }
            Event::CREATE_CONTAINER => {
                self.bounded("CreateContainer", move |m| m.created(&pod, &c))
                    .await
            }
            Event::POST_CREATE_CONTAINER => {
                self.bounded("PostCreateContainer", move |m| {
                    m.post_created(&pod, &c, received)
                })
                .await
            }
            Event::START_CONTAINER => {
                self.bounded("StartContainer", move |m| {
                    let _ = m.started(&pod, &c, received);
                })
                .await
            }
            Event::REMOVE_CONTAINER => {
                self.bounded("RemoveContainer", move |m| {
                    let _ = m.removed(&c.id);
                })
                .await
            }
            Event::REMOVE_POD_SANDBOX => {
                self.bounded("RemovePodSandbox", move |m| {
                    let _ = m.removed(&pod.id);
                })
                .await
            }
            other => tracing::debug!(event = ?other, "event not used"),
        }
    }
}

/// Every method of the service is answered here, none left to the generated default: that
/// default answers NOT_FOUND, which a runtime of NRI v0.12 and up takes as a failed event
/// (it falls back to StateChange only on UNIMPLEMENTED). Methods of a future API version,
/// unknown to this build, get UNIMPLEMENTED from the ttrpc server and the connection stays.
#[async_trait]
impl Plugin for PodmapPlugin {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureRequest,
    ) -> ttrpc::Result<ConfigureResponse> {
        self.shared.count(Counter::NriEvents);
        tracing::info!(
            runtime = %req.runtime_name,
            version = %req.runtime_version,
            nri_version = %req.NRI_version,
            request_timeout_ms = req.request_timeout,
            config_bytes = req.config.len(),
            "configured by the runtime"
        );
        {
            let mut s = self.shared.settings();
            let before = s.clone();
            match s.apply_yaml(&req.config) {
                Ok(unknown) => {
                    if !unknown.is_empty() {
                        tracing::warn!(keys = ?unknown, "ignoring unknown configuration keys");
                    }
                }
                Err(e) => {
                    self.shared.count(Counter::NriFailures);
                    tracing::error!(error = %e, "ignoring the runtime's configuration");
                }
            }
            if s.log_file != before.log_file {
                if let (Some(log), Some(path)) = (&self.shared.log, &s.log_file) {
                    match log.set_file(path) {
                        Ok(()) => {
                            tracing::info!(file = %path.display(), "logging here from now on")
                        }
                        Err(e) => {
                            tracing::warn!(file = %path.display(), error = %e, "cannot log there")
                        }
                    }
                }
            }
        }
        *self
            .shared
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = req.runtime_name.clone();
        // Settings are final now: open maps and store in the background. Opening (sled, pins,
        // restore) takes longer than the reply bound; no event comes before this answer, and
        // the first ones wait for the opening on the mapper's lock.
        self.shared.may_open.store(true, Ordering::Release);
        // A new connection starts a new Synchronize: parts left by a runtime that went away in
        // the middle of a split one belong to no state.
        *self
            .shared
            .sync_parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = SyncParts::default();
        self.shared.update_health(|h| {
            h.runtime = req.runtime_name.clone();
            h.runtime_version = req.runtime_version.clone();
            h.nri_version = req.NRI_version.clone();
        });
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.with_mapper(|_| ()));
        let mut resp = ConfigureResponse::new();
        resp.events = subscription(&req.runtime_name).bits();
        Ok(resp)
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: SynchronizeRequest,
    ) -> ttrpc::Result<SynchronizeResponse> {
        self.shared.count(Counter::NriEvents);
        let mut resp = SynchronizeResponse::new();
        // Answering `more` as asked tells the runtime this plugin takes a split state.
        resp.more = req.more;
        let (pods, containers) = {
            let mut parts = self
                .shared
                .sync_parts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            parts.pods.extend(req.pods);
            parts.containers.extend(req.containers);
            if parts.pods.len() + parts.containers.len() > MAX_SYNC_OBJECTS {
                // A runtime that never says it is done: keep the memory bounded, say so, and
                // let the next complete Synchronize (or the events) put the state right.
                self.shared.count(Counter::NriFailures);
                tracing::error!(
                    limit = MAX_SYNC_OBJECTS,
                    "a split Synchronize grew past the limit; its parts are dropped"
                );
                *parts = SyncParts::default();
                return Ok(resp);
            }
            if req.more {
                tracing::debug!(
                    pods = parts.pods.len(),
                    containers = parts.containers.len(),
                    "part of a split Synchronize; waiting for the rest"
                );
                return Ok(resp);
            }
            let SyncParts { pods, containers } = std::mem::take(&mut *parts);
            (pods, containers)
        };
        self.bounded("Synchronize", move |m| {
            let r = m.synchronize(&pods, &containers);
            tracing::info!(
                pods = pods.len(),
                containers = containers.len(),
                mapped = r.mapped,
                waiting_for_start = r.waiting,
                unresolved = r.unresolved,
                forgotten = r.forgotten,
                "synchronized with the runtime"
            );
        })
        .await;
        Ok(resp)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Empty> {
        tracing::info!("the runtime is shutting down");
        Ok(Empty::new())
    }

    async fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: RunPodSandboxRequest,
    ) -> ttrpc::Result<RunPodSandboxResponse> {
        let pod = req.pod.into_option().unwrap_or_default();
        self.on_event(Event::RUN_POD_SANDBOX, pod, Container::new())
            .await;
        Ok(RunPodSandboxResponse::new())
    }

    async fn update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: UpdatePodSandboxRequest,
    ) -> ttrpc::Result<UpdatePodSandboxResponse> {
        Ok(UpdatePodSandboxResponse::new())
    }

    async fn post_update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<PostUpdatePodSandboxResponse> {
        Ok(PostUpdatePodSandboxResponse::new())
    }

    async fn stop_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: StopPodSandboxRequest,
    ) -> ttrpc::Result<StopPodSandboxResponse> {
        Ok(StopPodSandboxResponse::new())
    }

    async fn remove_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: RemovePodSandboxRequest,
    ) -> ttrpc::Result<RemovePodSandboxResponse> {
        let pod = req.pod.into_option().unwrap_or_default();
        self.on_event(Event::REMOVE_POD_SANDBOX, pod, Container::new())
            .await;
        Ok(RemovePodSandboxResponse::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let pod = req.pod.into_option().unwrap_or_default();
        let c = req.container.into_option().unwrap_or_default();
        self.on_event(Event::CREATE_CONTAINER, pod, c).await;
        // No adjustment: podmap only observes.
        Ok(CreateContainerResponse::new())
    }

    async fn post_create_container(
        &self,
        _ctx: &TtrpcContext,
        req: PostCreateContainerRequest,
    ) -> ttrpc::Result<PostCreateContainerResponse> {
        let pod = req.pod.into_option().unwrap_or_default();
        let c = req.container.into_option().unwrap_or_default();
        self.on_event(Event::POST_CREATE_CONTAINER, pod, c).await;
        Ok(PostCreateContainerResponse::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let pod = req.pod.into_option().unwrap_or_default();
        let c = req.container.into_option().unwrap_or_default();
        self.on_event(Event::START_CONTAINER, pod, c).await;
        Ok(StartContainerResponse::new())
    }

    async fn post_start_container(
        &self,
        _ctx: &TtrpcContext,
        _req: PostStartContainerRequest,
    ) -> ttrpc::Result<PostStartContainerResponse> {
        Ok(PostStartContainerResponse::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        _req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        Ok(UpdateContainerResponse::new())
    }

    async fn post_update_container(
        &self,
        _ctx: &TtrpcContext,
        _req: PostUpdateContainerRequest,
    ) -> ttrpc::Result<PostUpdateContainerResponse> {
        Ok(PostUpdateContainerResponse::new())
    }

    async fn stop_container(
        &self,
        _ctx: &TtrpcContext,
        _req: StopContainerRequest,
    ) -> ttrpc::Result<StopContainerResponse> {
        Ok(StopContainerResponse::new())
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        let pod = req.pod.into_option().unwrap_or_default();
        let c = req.container.into_option().unwrap_or_default();
        self.on_event(Event::REMOVE_CONTAINER, pod, c).await;
        Ok(RemoveContainerResponse::new())
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        req: StateChangeEvent,
    ) -> ttrpc::Result<Empty> {
        // An event number this build does not know decodes as UNKNOWN and is dropped.
        let event = req.event.enum_value_or(Event::UNKNOWN);
        let pod = req.pod.into_option().unwrap_or_default();
        let c = req.container.into_option().unwrap_or_default();
        self.on_event(event, pod, c).await;
        Ok(Empty::new())
    }

    /// Never subscribed to (podmap adjusts nothing, so it has nothing to say about others'
    /// adjustments); answered so that a runtime asking anyway gets no error.
    async fn validate_container_adjustment(
        &self,
        _ctx: &TtrpcContext,
        _req: ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<ValidateContainerAdjustmentResponse> {
        Ok(ValidateContainerAdjustmentResponse::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribes_to_what_it_uses_and_nothing_newer() {
        let c = subscription("containerd");
        assert_eq!(c.bits(), 0x1 | 0x4 | 0x8 | 0x20 | 0x400);
        assert!(!c.contains(Event::POST_CREATE_CONTAINER));
        let o = subscription("cri-o");
        assert!(o.contains(Event::POST_CREATE_CONTAINER));
        for m in [c, o] {
            assert_eq!(m.bits() & !podmap_nri_protocol::VALID_EVENTS, 0);
            assert_ne!(m.bits(), 0, "0 would mean every event");
        }
    }
}
