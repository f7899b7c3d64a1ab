//! What podmap-nri does with the runtime's events: remember a container's metadata when it is
//! created, map its cgroup when it starts (docs/decisions.md #1), map pod sandboxes, start the
//! grace period when the runtime removes them, rebuild and clean up at Synchronize.
//!
//! Synchronous and single-threaded (plugin.rs runs it on blocking threads, one call at a time,
//! under one lock). Every outcome is counted in the shared counters, so `podmap status` shows
//! what the plugin did and what it could not do.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podmap_bpf::layout::Counter;
use podmap_bpf::{ContainerId, ContainerMeta, Counters, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::{resolve_container, CgroupLayout, Process, Request, ResolveError};
use podmap_nri_protocol::api::{Container, ContainerState, PodSandbox};
use podmap_policy::{Origin, PluginPolicies};
use podmap_writer::policy_target;
use podmap_writer::registry::{Registry, RegistryError, RestoreReport};
use podmap_writer::store::{boot_id, Opening, Store};
use std::sync::Arc;

use crate::config::Settings;
use crate::records;

/// Created containers not started yet are forgotten after this long (a create whose start never
/// came, e.g. a failed CRI StartContainer followed by a missed remove).
const PENDING_TTL: Duration = Duration::from_secs(3600);
/// Bound on remembered created-not-started containers.
const PENDING_MAX: usize = 16 * 1024;
/// How often opening the maps and store is retried after a failure.
const INIT_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("creating the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the store: {0}")]
    Store(#[from] podmap_writer::store::StoreError),
    #[error("opening the pinned maps: {0}")]
    Maps(#[from] podmap_bpf::MapsError),
    #[error("detecting the cgroup layout: {0}")]
    Cgroups(#[from] podmap_cgroup::CgroupError),
    #[error("reading the boot id: {0}")]
    BootId(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("maps and store are not open (yet)")]
    NotReady,
    #[error("container {id}: {source}")]
    Resolve {
        id: ContainerId,
        source: ResolveError,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The maps, the store and the host's cgroup layout, opened once for the plugin's lifetime.
pub struct Backend {
    pub registry: Registry,
    pub layout: CgroupLayout,
    /// Policies, so a container's memberships are written before it runs.
    /// podmapd's published set, or the directory when there is none.
    pub policies: PluginPolicies,
    policies_checked: Option<Instant>,
    /// podmap's own namespace: never selected.
    own_namespace: Option<String>,
}

/// How often the policy directory is looked at, at most: a listing per container start is cheap,
/// but the handlers have a 30 ms budget and the directory rarely changes.
const POLICY_RECHECK: Duration = Duration::from_millis(500);

impl Backend {
    /// Opens the pinned maps, the store (`<state-dir>/nri`, held for the process's lifetime)
    /// and detects the cgroup layout; then writes back the map entries the store has and the
    /// maps lost.
    pub fn open(s: &Settings) -> Result<(Backend, Arc<Counters>, RestoreReport), InitError> {
        std::fs::create_dir_all(&s.state_dir).map_err(|source| InitError::StateDir {
            path: s.state_dir.clone(),
            source,
        })?;
        let layout = CgroupLayout::detect(&s.cgroup_root, &s.v1_controller)?;
        // The maps first: they are what the kernel reads. The store only serves restarts, so no
        // state of it keeps containers unmapped: a damaged one is moved aside and started
        // afresh, one another process holds gives way to a temporary one.
        let maps = SharedMaps::open(&s.bpffs_dir)?;
        // The counters are counted through outside the mapper's lock too (plugin.rs).
        let counters = maps.counters.clone();
        let (store, opening) = Store::open_or_recover(&s.store_path())?;
        match &opening {
            Opening::Opened => {}
            Opening::MovedAside { aside, reason } => {
                counters.add(Counter::StoreRecovered, 1);
                tracing::error!(
                    store = %s.store_path().display(),
                    aside = %aside.display(),
                    %reason,
                    "the store would not open: moved aside, started afresh (records of running containers before this start are not restored)"
                );
            }
            Opening::Temporary { reason } => {
                counters.add(Counter::StoreTemporary, 1);
                tracing::error!(
                    store = %s.store_path().display(),
                    %reason,
                    "the store is held by another process (a second podmap-nri?): mapping with a temporary store; a restart of this plugin will not restore its records"
                );
            }
        }
        let boot = boot_id().map_err(InitError::BootId)?;
        let grace_ns = u64::try_from(s.grace.as_nanos()).unwrap_or(u64::MAX);
        let mut registry = Registry::new(maps, store, Writer::Nri, grace_ns, boot);
        // sled may open a damaged store and panic only when it reads the damaged part, here
        // while restoring: that store goes aside as one that would not open.
        let report = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            registry.restore(&layout)
        })) {
            Ok(report) => report,
            Err(_) => {
                let aside = Store::move_aside(&s.store_path())?;
                let damaged = registry.replace_store(Store::open(&s.store_path())?);
                drop(damaged);
                counters.add(Counter::StoreRecovered, 1);
                tracing::error!(
                    store = %s.store_path().display(),
                    aside = %aside.display(),
                    "the store failed while its records were restored: moved aside, started afresh"
                );
                RestoreReport::default()
            }
        };
        let policies = PluginPolicies::new(&s.policy_dir);
        Ok((
            Backend {
                registry,
                layout,
                policies,
                policies_checked: None,
                own_namespace: s.own_namespace.clone(),
            },
            counters,
            report,
        ))
    }
}

impl Backend {
    /// The container's bounding set and privilege, read from its init (docs/decisions.md #36):
    /// NRI's messages carry no capabilities, but by START_CONTAINER (and POST_CREATE) the
    /// runtime's create has returned, and runc and crun apply the spec's capabilities to the
    /// init before that. One read of /proc/<pid>/status, under the call's reply bound like the
    /// cgroup check beside it; what cannot be read is unknown in the record, logged and
    /// counted, and never stops the mapping.
    fn record_capabilities(&self, meta: &mut ContainerMeta, pid: u32) {
        use podmap_writer::privilege::{node_capabilities, proc_caps};
        let read = if pid == 0 {
            Err("the runtime gave no pid".to_string())
        } else {
            node_capabilities()
                .and_then(|node| Ok((node, proc_caps(std::path::Path::new("/proc"), pid)?)))
                .map_err(|e| e.to_string())
        };
        match read {
            Ok((node, caps)) => meta.set_capabilities(caps.bounding, node),
            Err(e) => {
                tracing::warn!(container = %meta.container_id, error = %e, "capabilities unknown");
                self.registry
                    .maps()
                    .counters
                    .add(Counter::CapabilitiesUnread, 1);
            }
        }
    }

    /// Adds the container to every policy that selects it, before its record exists, so not
    /// even its first exec escapes. A failure is counted (MembershipErrors) and podmapd's
    /// reconciliation repairs it; it never stops the mapping.
    fn write_memberships(&mut self, meta: &ContainerMeta, ids: &podmap_cgroup::CgroupIds) {
        if self
            .policies_checked
            .is_none_or(|t| t.elapsed() >= POLICY_RECHECK)
        {
            // Refusals and an unreadable directory are podmapd's to show in status (it reads the
            // same directory); the plugin keeps the last good set and says so in its log.
            if self.policies.refresh() {
                for e in &self.policies.set().errors {
                    tracing::warn!(error = %e, "policy refused");
                }
                match self.policies.origin() {
                    Origin::Published => tracing::debug!("policies: podmapd's published set"),
                    Origin::Directory { why: Some(why) } => tracing::warn!(
                        %why,
                        "podmapd's published policies cannot be read: the directory's own"
                    ),
                    Origin::Directory { why: None } => {
                        tracing::debug!("policies: the directory's own (nothing published)")
                    }
                }
            }
            self.policies_checked = Some(Instant::now());
        }
        let target = policy_target(meta, self.own_namespace.as_deref());
        let selected = self.policies.set().selecting(&target);
        if selected.is_empty() {
            return;
        }
        if let Err(e) = self
            .registry
            .maps_mut()
            .policy
            .add_memberships(ids, &selected)
        {
            tracing::warn!(container = %meta.container_id, error = %e, "writing policy memberships");
        }
    }
}

/// A created container waiting for its start.
struct Pending {
    meta: ContainerMeta,
    cgroups_path: Option<String>,
    seen: Instant,
    /// Mapped already (at POST_CREATE where the runtime has the cgroup then).
    mapped: bool,
}

/// What a Synchronize did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub mapped: usize,
    pub waiting: usize,
    pub unresolved: usize,
    pub forgotten: usize,
}

pub struct Mapper {
    backend: Option<Backend>,
    runtime: String,
    pending: HashMap<ContainerId, Pending>,
    last_init: Option<Instant>,
}

impl Default for Mapper {
    fn default() -> Self {
        Mapper::new()
    }
}

/// Whether an unresolvable cgroup is a failure (START, a running container) or expected (a
/// runtime that creates the cgroup later, a stopped container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    Optional,
}

impl Mapper {
    pub fn new() -> Self {
        Mapper {
            backend: None,
            runtime: "containerd".into(),
            pending: HashMap::new(),
            last_init: None,
        }
    }

    /// With a backend already open (tests).
    pub fn with_backend(backend: Backend) -> Self {
        Mapper {
            backend: Some(backend),
            ..Mapper::new()
        }
    }

    pub fn is_ready(&self) -> bool {
        self.backend.is_some()
    }

    pub fn backend(&self) -> Option<&Backend> {
        self.backend.as_ref()
    }

    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// The runtime's name (Configure's runtime_name) goes into every record.
    pub fn set_runtime(&mut self, name: &str) {
        if !name.is_empty() {
            self.runtime = name.to_string();
        }
    }

    /// Opens the backend unless open; a failure is retried at most every [`INIT_RETRY`].
    /// Returns the counters handle when this call opened it.
    pub fn ensure_ready(&mut self, s: &Settings) -> Option<Arc<Counters>> {
        if self.backend.is_some() {
            return None;
        }
        if self.last_init.is_some_and(|t| t.elapsed() < INIT_RETRY) {
            return None;
        }
        self.last_init = Some(Instant::now());
        match Backend::open(s) {
            Ok((backend, counters, report)) => {
                tracing::info!(
                    bpffs = %s.bpffs_dir.display(),
                    store = %s.store_path().display(),
                    cgroups = backend.layout.kind.as_str(),
                    hierarchy = %backend.layout.hierarchy_name(),
                    kept = report.kept,
                    rewritten = report.rewritten,
                    dropped = report.dropped_gone + report.dropped_expired + report.dropped_other_boot,
                    "maps and store open"
                );
                self.backend = Some(backend);
                Some(counters)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open maps and store yet; containers are not mapped until this works (retrying)");
                None
            }
        }
    }

    fn count(&self, c: Counter) {
        if let Some(b) = &self.backend {
            b.registry.maps().counters.add(c, 1);
        }
    }

    /// CreateContainer: remember the container until it starts.
    pub fn created(&mut self, pod: &PodSandbox, c: &Container) {
        if c.id.is_empty() {
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.prune_pending(Duration::ZERO);
        }
        let meta = records::container_meta(pod, c, &self.runtime);
        self.pending.insert(
            meta.container_id.clone(),
            Pending {
                meta,
                cgroups_path: records::container_cgroups_path(c).map(str::to_owned),
                seen: Instant::now(),
                mapped: false,
            },
        );
    }

    /// POST_CREATE_CONTAINER, for runtimes whose cgroup exists then: map if it resolves; a miss
    /// is not a failure (START_CONTAINER is the second chance).
    pub fn post_created(&mut self, pod: &PodSandbox, c: &Container, received: Instant) {
        // Failures other than a missing cgroup are counted and logged inside.
        let _ = self.start_or_post_create(pod, c, received, Need::Optional);
    }

    /// START_CONTAINER: the cgroup exists, the process has not run. Map now.
    pub fn started(
        &mut self,
        pod: &PodSandbox,
        c: &Container,
        received: Instant,
    ) -> Result<(), MapError> {
        self.start_or_post_create(pod, c, received, Need::Required)
    }

    fn start_or_post_create(
        &mut self,
        pod: &PodSandbox,
        c: &Container,
        received: Instant,
        need: Need,
    ) -> Result<(), MapError> {
        let id = ContainerId(c.id.clone());
        // The metadata recorded at create; the start's own copy when the create was missed
        // (the plugin connected in between).
        let (meta, path, already) = match self.pending.get(&id) {
            Some(p) => (
                p.meta.clone(),
                p.cgroups_path
                    .clone()
                    .or_else(|| records::container_cgroups_path(c).map(str::to_owned)),
                p.mapped,
            ),
            None => (
                records::container_meta(pod, c, &self.runtime),
                records::container_cgroups_path(c).map(str::to_owned),
                false,
            ),
        };
        let res = self.map(
            meta.clone(),
            path.as_deref(),
            c.pid,
            RecordFlags::default(),
            need,
        );
        match &res {
            Ok(true) => {
                if !already {
                    self.record_latency(received);
                }
                if need == Need::Required {
                    self.pending.remove(&id);
                } else {
                    self.pending
                        .entry(id)
                        .or_insert(Pending {
                            meta,
                            cgroups_path: path,
                            seen: Instant::now(),
                            mapped: true,
                        })
                        .mapped = true;
                }
            }
            Ok(false) => {
                self.pending.entry(id).or_insert(Pending {
                    meta,
                    cgroups_path: path,
                    seen: Instant::now(),
                    mapped: false,
                });
            }
            Err(_) => {}
        }
        res.map(|_| ())
    }

    fn record_latency(&self, received: Instant) {
        if let Some(b) = &self.backend {
            let micros = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX);
            b.registry.maps().counters.record_latency(micros);
        }
    }

    /// RUN_POD_SANDBOX: map the sandbox's own cgroup, so the pause process is attributed.
    pub fn sandbox_started(&mut self, pod: &PodSandbox) -> Result<(), MapError> {
        self.map_sandbox(pod, Need::Required).map(|_| ())
    }

    fn map_sandbox(&mut self, pod: &PodSandbox, need: Need) -> Result<bool, MapError> {
        if pod.id.is_empty() {
            return Ok(false);
        }
        let meta = records::sandbox_meta(pod, &self.runtime);
        let path = records::sandbox_cgroups_path(pod, &self.runtime);
        let flags = RecordFlags {
            sandbox: true,
            removing: false,
        };
        self.map(meta, path.as_deref(), pod.pid, flags, need)
    }

    /// Resolves and writes one record. `Ok(false)`: an optional mapping whose cgroup is not
    /// there (not counted). Counts NriMapped and NriFailures.
    fn map(
        &mut self,
        mut meta: ContainerMeta,
        cgroups_path: Option<&str>,
        pid: u32,
        flags: RecordFlags,
        need: Need,
    ) -> Result<bool, MapError> {
        let Some(backend) = self.backend.as_mut() else {
            // Nowhere to count it either; the log says why (ensure_ready).
            return Err(MapError::NotReady);
        };
        // Someone may have removed the pins: put them back before writing (podmap-bpf).
        backend.registry.maps_mut().keep_pins();
        // The runtime's cgroups path checked against the process's own cgroup (podmap-cgroup).
        // The plugin does not run in the runtime's cgroup: nothing to exclude.
        let process = Process::read(Some(pid));
        let request = Request {
            cgroups_path,
            process: &process,
            runtime: None,
        };
        let res = match resolve_container(&backend.layout, &request) {
            Ok(r) => {
                for d in r.disagreements() {
                    tracing::warn!(container = %meta.container_id, "cgroup disagreement, {d}");
                }
                meta.cgroup_path = r.record_path();
                // The runtime's pid of the container (or the sandbox's pause) is its init.
                meta.init_pid = (pid > 0).then_some(pid);
                backend.record_capabilities(&mut meta, pid);
                backend.write_memberships(&meta, &r.ids);
                backend
                    .registry
                    .map(meta.clone(), r.ids, flags)
                    .map(|()| true)
                    .map_err(MapError::from)
            }
            Err(e) if need == Need::Optional => {
                tracing::debug!(container = %meta.container_id, reason = %e, "cgroup not there yet");
                Ok(false)
            }
            Err(e) => {
                backend
                    .registry
                    .maps()
                    .counters
                    .add(Counter::CgroupUnresolved, 1);
                Err(MapError::Resolve {
                    id: meta.container_id.clone(),
                    source: e,
                })
            }
        };
        match &res {
            Ok(true) => {
                self.count(Counter::NriMapped);
                tracing::debug!(
                    container = %meta.container_id,
                    name = %meta.name,
                    pod = %meta.pod_name,
                    namespace = %meta.namespace,
                    sandbox = flags.sandbox,
                    cgroup = %meta.cgroup_path,
                    "mapped"
                );
            }
            Ok(false) => {}
            Err(e) => {
                self.count(Counter::NriFailures);
                tracing::warn!(container = %meta.container_id, error = %e, "not mapped");
            }
        }
        res
    }

    /// REMOVE_CONTAINER / REMOVE_POD_SANDBOX: the record stays through the grace period.
    pub fn removed(&mut self, id: &str) -> Result<(), MapError> {
        let id = ContainerId(id.to_string());
        self.pending.remove(&id);
        let Some(b) = self.backend.as_mut() else {
            return Err(MapError::NotReady);
        };
        match b.registry.removed(&id) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.count(Counter::NriFailures);
                Err(e.into())
            }
        }
    }

    /// Synchronize: map every pod sandbox and container the runtime has, then forget the
    /// records of containers it no longer has (those already in their grace period are left to
    /// the sweep).
    pub fn synchronize(&mut self, pods: &[PodSandbox], containers: &[Container]) -> SyncReport {
        let mut report = SyncReport::default();
        if self.backend.is_none() {
            return report;
        }
        let by_id: HashMap<&str, &PodSandbox> = pods.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut known: HashSet<String> = HashSet::new();
        for pod in pods {
            known.insert(pod.id.clone());
            match self.map_sandbox(pod, Need::Optional) {
                Ok(true) => report.mapped += 1,
                Ok(false) => report.unresolved += 1,
                Err(_) => {}
            }
        }
        let empty = PodSandbox::new();
        for c in containers {
            known.insert(c.id.clone());
            let pod = by_id
                .get(c.pod_sandbox_id.as_str())
                .copied()
                .unwrap_or(&empty);
            let state = c.state.enum_value_or_default();
            // A container that runs must have its cgroup; one created but not started has none
            // yet on containerd: it waits for its START like a fresh one.
            let need = match state {
                ContainerState::CONTAINER_RUNNING | ContainerState::CONTAINER_PAUSED => {
                    Need::Required
                }
                _ => Need::Optional,
            };
            if state == ContainerState::CONTAINER_CREATED {
                self.created(pod, c);
            }
            let meta = records::container_meta(pod, c, &self.runtime);
            let path = records::container_cgroups_path(c).map(str::to_owned);
            match self.map(meta, path.as_deref(), c.pid, RecordFlags::default(), need) {
                Ok(true) => {
                    report.mapped += 1;
                    if let Some(p) = self.pending.get_mut(&ContainerId(c.id.clone())) {
                        p.mapped = true;
                    }
                }
                Ok(false) if state == ContainerState::CONTAINER_CREATED => report.waiting += 1,
                Ok(false) | Err(_) => report.unresolved += 1,
            }
        }
        let Some(b) = self.backend.as_mut() else {
            return report;
        };
        for rec in b.registry.records() {
            if rec.removed_ns.is_some() || known.contains(&rec.meta.container_id.0) {
                continue;
            }
            match b.registry.forget(&rec.meta.container_id) {
                Ok(()) => report.forgotten += 1,
                Err(e) => {
                    tracing::warn!(container = %rec.meta.container_id, error = %e, "forgetting a stale record")
                }
            }
        }
        self.pending.retain(|id, _| known.contains(&id.0));
        report
    }

    /// Drops what expired: records past their grace (map and store), stale pending creates.
    pub fn sweep(&mut self) -> usize {
        self.prune_pending(PENDING_TTL);
        self.backend.as_mut().map_or(0, |b| b.registry.sweep())
    }

    fn prune_pending(&mut self, older_than: Duration) {
        if older_than.is_zero() {
            // Full: drop the oldest half.
            let mut ages: Vec<(Instant, ContainerId)> = self
                .pending
                .iter()
                .map(|(k, p)| (p.seen, k.clone()))
                .collect();
            ages.sort();
            for (_, id) in ages.into_iter().take(self.pending.len() / 2) {
                self.pending.remove(&id);
            }
        } else {
            self.pending.retain(|_, p| p.seen.elapsed() < older_than);
        }
    }

    /// Containers created and not started yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Flushes the store (at exit).
    pub fn flush(&self) {
        if let Some(b) = &self.backend {
            if let Err(e) = b.registry.store().flush() {
                tracing::warn!(error = %e, "flushing the store");
            }
        }
    }

    /// The store's path, for logs.
    pub fn store_path(&self) -> Option<&Path> {
        self.backend.as_ref().map(|b| b.registry.store().path())
    }
}
