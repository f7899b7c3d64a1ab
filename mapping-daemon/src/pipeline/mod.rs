//! The event path, top to bottom: ring buffer -> decode -> attribute (container, host, or held
//! then unknown) -> enrich -> filter and fan-out (hub). One owner, no hidden global state.

pub mod decode;
mod enrich;
pub mod hold;
pub mod reader;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use podmap_bpf::SharedMaps;
use podmap_cgroup::CgroupKey;
use podmap_cgroup::{classify, CgroupLayout, ContainerShape, PodParents, ShapeVerdict};
use podmap_proto::Attribution;

use crate::cgroups::CgroupPaths;
use crate::clock::WallClock;
use crate::containers::{ContainerCache, Mapped};
use crate::hub::{Published, Wanted};
use crate::policies::PolicyNames;
use crate::procs::ProcTable;
use crate::stats::Stats;
use decode::{decode, KernelEvent, TaskIds};
use enrich::Enricher;
use hold::HoldQueue;
use podmap_pod_cache::PodCache;

/// How long an event from an unmapped, container-shaped cgroup waits for its mapping.
pub const HOLD_NS: u64 = 500_000_000;
/// How often a waiting cgroup's mapping is looked up from userspace (a few syscalls): a mapping
/// that lands releases its events within this, and many waiting cgroups do not cost every batch.
const HOLD_CHECK_NS: u64 = 20_000_000;

/// Where an event's process belongs.
#[derive(Debug, Clone)]
pub enum Owner {
    Container(Arc<Mapped>),
    Host,
    /// What the cgroup path says, and what the pod cache knows of that container, if anything
    /// (only when the path names the same pod). Either way it rests on the path alone: events
    /// carry `path_derived` (docs/decisions.md #29).
    Unknown(ContainerShape, Option<Arc<Mapped>>),
}

pub struct Pipeline {
    maps: Arc<SharedMaps>,
    layout: CgroupLayout,
    cgroups: CgroupPaths,
    containers: ContainerCache,
    enrich: Enricher,
    /// Below these, a container-shaped cgroup's name is believed (docs/decisions.md #29).
    parents: PodParents,
    held: HoldQueue<KernelEvent>,
    stats: Arc<Stats>,
    pods: Option<PodCache>,
    pod_seq: u64,
    batch_now: u64,
    /// What the clients asked for when the record was read: the only events built.
    wanted: Wanted,
    /// The last cgroup whose path was found not to be a container's: a storm's events come from
    /// a few cgroups in a row, and a path's verdict never changes (cgroup ids are not reused;
    /// the pod parents are fixed at start).
    last_plain: Option<CgroupKey>,
}

impl Pipeline {
    // Each argument is a distinct piece of daemon state handed over once, at start-up.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Arc<str>,
        maps: Arc<SharedMaps>,
        layout: CgroupLayout,
        procs: ProcTable,
        stats: Arc<Stats>,
        policy_names: PolicyNames,
        pods: Option<PodCache>,
        parents: PodParents,
    ) -> Self {
        let cgroups = CgroupPaths::scan(&layout);
        tracing::info!(
            cgroups = cgroups.len(),
            processes = procs.len(),
            "initial scan done"
        );
        Pipeline {
            enrich: Enricher {
                node,
                procs,
                layout: layout.kind,
                names: policy_names,
            },
            maps,
            layout,
            cgroups,
            containers: ContainerCache::new(stats.clone()),
            parents,
            held: HoldQueue::new(hold::DEFAULT_LIMITS),
            stats,
            pods,
            pod_seq: 0,
            batch_now: 0,
            wanted: Wanted::ALL,
            last_plain: None,
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Starts a batch: `now` is boot-time ns.
    pub fn begin(&mut self, now: u64) -> WallClock {
        self.batch_now = now;
        // Pods the API server changed since the last batch: their joined entries are rebuilt,
        // so a relabel shows in the next event.
        if let Some(pods) = &self.pods {
            let (seq, uids) = pods.changes_since(self.pod_seq);
            self.pod_seq = seq;
            self.containers.forget_pods(&uids);
        }
        WallClock::now()
    }

    /// The event types some client asks for now (the hub's [`crate::hub::Hub::wanted`]): events
    /// of other types are not built. Set before each record, so a client that subscribed during
    /// a batch gets the events of every record read after.
    pub fn want(&mut self, wanted: Wanted) {
        self.wanted = wanted;
    }

    /// Handles one raw ring-buffer record.
    pub fn record(&mut self, raw: &[u8], clock: &WallClock, out: &mut Vec<Arc<Published>>) {
        match decode(raw) {
            Ok(ev) => self.handle(ev, clock, out),
            Err(e) => {
                Stats::inc(&self.stats.decode_errors);
                tracing::warn!(error = %e, "undecodable ring buffer record");
            }
        }
    }

    /// Ends a batch: releases held events whose mapping arrived or whose time is up.
    pub fn finish(&mut self, clock: &WallClock, out: &mut Vec<Arc<Published>>) {
        self.release(self.batch_now, clock, out);
    }

    fn handle(&mut self, ev: KernelEvent, clock: &WallClock, out: &mut Vec<Arc<Published>>) {
        let ids = match &ev {
            KernelEvent::Exec(e) => {
                Stats::inc(&self.stats.exec);
                e.ids
            }
            KernelEvent::Exit(e) => {
                Stats::inc(&self.stats.exit);
                e.ids
            }
            KernelEvent::PolicyOpen(o) => {
                Stats::inc(&self.stats.policy);
                o.ids
            }
            KernelEvent::CgroupMkdir(c) => {
                Stats::inc(&self.stats.cgroup);
                self.cgroups.mkdir(c.hierarchy_id, c.id, &c.path);
                return;
            }
            KernelEvent::CgroupRmdir(c) => {
                Stats::inc(&self.stats.cgroup);
                if let Some(key) = self.cgroups.rmdir(c.hierarchy_id, c.id) {
                    self.containers.forget(key);
                    if self.last_plain == Some(key) {
                        self.last_plain = None;
                    }
                }
                return;
            }
        };
        let leaf = ids.leaf(self.layout.kind);
        // Events of a cgroup with held events queue behind them, so a process's exit never
        // overtakes its exec.
        let ev = if !self.held.contains(leaf) {
            ev
        } else if ids.container.is_some() {
            // The kernel found the mapping: what waited goes out attributed, then this.
            self.release_cgroup(leaf, false, clock, out);
            ev
        } else {
            Stats::inc(&self.stats.held);
            match self.held.join(leaf, ev) {
                Ok(forced) => {
                    if let Some(r) = forced {
                        self.released_early(r, clock, out);
                    }
                    self.note_held();
                    return;
                }
                Err(ev) => ev,
            }
        };
        match self.attribute(&ids, leaf) {
            Attributed::Now(owner) => self.emit(ev, owner, clock, out),
            Attributed::Hold(shape) => self.hold(leaf, shape, ev, clock, out),
        }
    }

    /// Holds `ev`; whatever a bound forces out goes out now (docs/decisions.md #29).
    fn hold(
        &mut self,
        leaf: CgroupKey,
        shape: ContainerShape,
        ev: KernelEvent,
        clock: &WallClock,
        out: &mut Vec<Arc<Published>>,
    ) {
        Stats::inc(&self.stats.held);
        let deadline = ev.ktime().saturating_add(HOLD_NS);
        if let Some(r) = self.held.push(leaf, shape, deadline, self.batch_now, ev) {
            self.released_early(r, clock, out);
        }
        self.note_held();
    }

    /// Sends on what a hold bound forced out, counted and logged (docs/decisions.md #29).
    fn released_early(
        &mut self,
        r: hold::Released<KernelEvent>,
        clock: &WallClock,
        out: &mut Vec<Arc<Published>>,
    ) {
        let len = r.events.len() as u64;
        let before = self
            .stats
            .held_released_early
            .fetch_add(len, Ordering::Relaxed);
        let n = before + len;
        // Logged when the count first passes each power of two: visible, never a flood.
        if before == 0 || before.ilog2() != n.ilog2() {
            tracing::warn!(
                cgroup = ?r.key,
                released = len,
                total = n,
                "held events over their bound: released before their mapping arrived"
            );
        }
        self.emit_released(r, false, clock, out);
    }

    fn note_held(&self) {
        self.stats
            .held_now
            .store(self.held.len() as u64, Ordering::Relaxed);
        self.stats
            .held_peak
            .fetch_max(self.held.peak() as u64, Ordering::Relaxed);
    }

    fn attribute(&mut self, ids: &TaskIds, leaf: CgroupKey) -> Attributed {
        if let Some(key) = ids.container {
            if let Some(m) = self.containers.get(&self.maps, self.pods.as_ref(), key) {
                return Attributed::Now(Owner::Container(m));
            }
        }
        if self.last_plain == Some(leaf) {
            return Attributed::Now(Owner::Host);
        }
        let Some(path) = self.cgroups.path(leaf) else {
            return Attributed::Now(Owner::Host);
        };
        let shape = match classify(path, &self.parents) {
            ShapeVerdict::Container(shape) => shape,
            ShapeVerdict::None => {
                self.last_plain = Some(leaf);
                return Attributed::Now(Owner::Host);
            }
            ShapeVerdict::Outside(shape) => {
                // Anyone with a writable cgroup (a user's systemd manager) could have chosen the
                // name: it says nothing about a container (docs/decisions.md #29).
                let n = self
                    .stats
                    .shaped_outside_pod_parents
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        path = %path,
                        container_id = %shape.container_id,
                        events = n,
                        "container-shaped cgroup outside the pod parents: attributed to the host (see --pod-parents)"
                    );
                }
                return Attributed::Now(Owner::Host);
            }
        };
        // The kernel found no record; one may have landed since.
        match self.lookup_userspace(leaf) {
            Some(m) => Attributed::Now(Owner::Container(m)),
            None => Attributed::Hold(shape),
        }
    }

    /// Looks the cgroup and its ancestors up in the map (for held events only: syscalls).
    fn lookup_userspace(&mut self, leaf: CgroupKey) -> Option<Arc<Mapped>> {
        self.cgroups
            .self_and_ancestors(leaf)
            .into_iter()
            .find_map(|k| self.containers.get(&self.maps, self.pods.as_ref(), k))
    }

    fn release(&mut self, now: u64, clock: &WallClock, out: &mut Vec<Arc<Published>>) {
        if self.held.is_empty() {
            return;
        }
        for key in self.held.due(now) {
            self.release_cgroup(key, true, clock, out);
        }
        for key in self.held.to_check(now, HOLD_CHECK_NS) {
            if let Some(m) = self.lookup_userspace(key) {
                if let Some(r) = self.held.take(key) {
                    for ev in r.events {
                        self.emit(ev, Owner::Container(m.clone()), clock, out);
                    }
                }
            }
        }
        self.note_held();
    }

    /// Sends a cgroup's held events on: attributed if its mapping has landed, else `unknown`
    /// (`timed_out`: their time is up, counted as such).
    fn release_cgroup(
        &mut self,
        key: CgroupKey,
        timed_out: bool,
        clock: &WallClock,
        out: &mut Vec<Arc<Published>>,
    ) {
        if let Some(r) = self.held.take(key) {
            self.emit_released(r, timed_out, clock, out);
        }
        self.note_held();
    }

    fn emit_released(
        &mut self,
        r: hold::Released<KernelEvent>,
        timed_out: bool,
        clock: &WallClock,
        out: &mut Vec<Arc<Published>>,
    ) {
        let owner = match self.lookup_userspace(r.key) {
            Some(m) => Owner::Container(m),
            None => {
                if timed_out {
                    self.stats
                        .held_timed_out
                        .fetch_add(r.events.len() as u64, Ordering::Relaxed);
                }
                let known = self.known_to_api_server(&r.shape);
                Owner::Unknown(r.shape, known)
            }
        };
        for ev in r.events {
            self.emit(ev, owner.clone(), clock, out);
        }
    }

    fn emit(
        &mut self,
        ev: KernelEvent,
        owner: Owner,
        clock: &WallClock,
        out: &mut Vec<Arc<Published>>,
    ) {
        let counter = match owner {
            Owner::Container(_) => &self.stats.attributed_container,
            Owner::Host => &self.stats.attributed_host,
            Owner::Unknown(..) => &self.stats.attributed_unknown,
        };
        Stats::inc(counter);
        self.stats
            .record_latency(self.batch_now.saturating_sub(ev.ktime()) / 1000);
        let stats = &self.stats;
        self.enrich.events(ev, owner, clock, self.wanted, |e| {
            if let Some(p) = &e.policy {
                stats.policy_action(&p.name, &p.action, &p.mode);
            }
            out.push(Published::new(e))
        });
    }

    /// A container no plugin mapped may still be in the pod cache (it started before podmap).
    /// The path's name is believed only below the pod parents, and the pod's data is joined
    /// only when the path names that same pod: a container id alone could be anyone's
    /// (docs/decisions.md #29).
    fn known_to_api_server(&self, shape: &ContainerShape) -> Option<Arc<Mapped>> {
        let pod = self.pods.as_ref()?.by_container(&shape.container_id)?;
        if shape.pod_uid.as_deref() != Some(&*pod.uid) {
            let n = self
                .stats
                .unknown_pod_mismatch
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    container_id = %shape.container_id,
                    path_pod_uid = shape.pod_uid.as_deref().unwrap_or("none"),
                    cached_pod_uid = %pod.uid,
                    events = n,
                    "a cgroup path names a container the pod cache has under another pod: its pod data is not joined"
                );
            }
            return None;
        }
        let c = pod.container(&shape.container_id);
        let meta = podmap_bpf::ContainerMeta {
            container_id: podmap_bpf::ContainerId(shape.container_id.clone()),
            name: c.map(|c| c.name.to_string()).unwrap_or_default(),
            pod_uid: Some(podmap_bpf::PodUid(pod.uid.to_string())),
            pod_name: pod.name.to_string(),
            namespace: pod.namespace.to_string(),
            labels: pod.labels.to_map(),
            image: c
                .and_then(|c| c.image.as_deref())
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        };
        Some(Arc::new(Mapped::from_meta(meta, self.pods.as_ref())))
    }
}

enum Attributed {
    Now(Owner),
    Hold(ContainerShape),
}

impl Owner {
    pub fn attribution(&self) -> Attribution {
        match self {
            Owner::Container(_) => Attribution::Container,
            Owner::Host => Attribution::Host,
            Owner::Unknown(..) => Attribution::Unknown,
        }
    }

    /// Whether the event's container and pod rest on the cgroup's name alone.
    pub fn path_derived(&self) -> bool {
        matches!(self, Owner::Unknown(..))
    }
}
