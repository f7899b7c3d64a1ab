//! The event path, top to bottom: ring buffer -> decode -> attribute (container, host, or held
//! then unknown) -> enrich -> filter and fan-out (hub). One owner, no hidden global state.

pub mod decode;
mod enrich;
pub mod hold;
pub mod reader;

use std::collections::VecDeque;
use std::sync::Arc;

use podmap_bpf::cgroup::{container_shape, CgroupLayout, ContainerShape, LayoutKind};
use podmap_bpf::layout::{podmap_task_ids, HIER_V1};
use podmap_bpf::{CgroupKey, SharedMaps};
use podmap_proto::Attribution;

use crate::cgroups::CgroupPaths;
use crate::clock::WallClock;
use crate::containers::{ContainerCache, Mapped};
use crate::hub::Published;
use crate::policies::PolicyNames;
use crate::procs::ProcTable;
use crate::stats::Stats;
use decode::{decode, KernelEvent};
use podmap_pod_cache::PodCache;

/// How long an event from an unmapped, container-shaped cgroup waits for its mapping.
pub const HOLD_NS: u64 = 500_000_000;

/// Where an event's process belongs.
#[derive(Debug, Clone)]
pub enum Owner {
    Container(Arc<Mapped>),
    Host,
    /// What the cgroup path says, and what the pod cache knows of that container, if anything.
    Unknown(ContainerShape, Option<Arc<Mapped>>),
}

struct Held {
    event: KernelEvent,
    key: CgroupKey,
    shape: ContainerShape,
    deadline: u64,
}

pub struct Pipeline {
    node: Arc<str>,
    maps: Arc<SharedMaps>,
    layout: CgroupLayout,
    cgroups: CgroupPaths,
    containers: ContainerCache,
    procs: ProcTable,
    held: VecDeque<Held>,
    stats: Arc<Stats>,
    policy_names: PolicyNames,
    pods: Option<PodCache>,
    pod_seq: u64,
    batch_now: u64,
}

impl Pipeline {
    pub fn new(
        node: Arc<str>,
        maps: Arc<SharedMaps>,
        layout: CgroupLayout,
        procs: ProcTable,
        stats: Arc<Stats>,
        policy_names: PolicyNames,
        pods: Option<PodCache>,
    ) -> Self {
        let cgroups = CgroupPaths::scan(&layout);
        tracing::info!(
            cgroups = cgroups.len(),
            processes = procs.len(),
            "initial scan done"
        );
        Pipeline {
            node,
            maps,
            layout,
            cgroups,
            containers: ContainerCache::new(stats.clone()),
            procs,
            held: VecDeque::new(),
            stats,
            policy_names,
            pods,
            pod_seq: 0,
            batch_now: 0,
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
                }
                return;
            }
        };
        let leaf = self.leaf_key(&ids);
        // Events of a cgroup with held events queue behind them, so a process's exit never
        // overtakes its exec.
        if let Some(h) = self.held.iter().find(|h| h.key == leaf) {
            let (shape, deadline) = (h.shape.clone(), h.deadline);
            self.held.push_back(Held {
                event: ev,
                key: leaf,
                shape,
                deadline,
            });
            Stats::inc(&self.stats.held);
            return;
        }
        match self.attribute(&ids, leaf) {
            Attributed::Now(owner) => self.emit(ev, owner, clock, out),
            Attributed::Hold(shape) => {
                Stats::inc(&self.stats.held);
                let deadline = ev.ktime().saturating_add(HOLD_NS);
                self.held.push_back(Held {
                    event: ev,
                    key: leaf,
                    shape,
                    deadline,
                });
            }
        }
    }

    /// The key of the process's own cgroup in the hierarchy events are keyed by.
    fn leaf_key(&self, ids: &podmap_task_ids) -> CgroupKey {
        if self.layout.kind == LayoutKind::Legacy {
            CgroupKey::v1(ids.cgroup_v1)
        } else {
            CgroupKey::v2(ids.cgroup_v2)
        }
    }

    fn attribute(&mut self, ids: &podmap_task_ids, leaf: CgroupKey) -> Attributed {
        if ids.container_cgid != 0 {
            let key = if ids.container_hier == HIER_V1 {
                CgroupKey::v1(ids.container_cgid)
            } else {
                CgroupKey::v2(ids.container_cgid)
            };
            if let Some(m) = self.containers.get(&self.maps, self.pods.as_ref(), key) {
                return Attributed::Now(Owner::Container(m));
            }
        }
        let Some(shape) = self.cgroups.path(leaf).and_then(|p| container_shape(p)) else {
            return Attributed::Now(Owner::Host);
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
        let mut resolved: Option<(CgroupKey, Option<Arc<Mapped>>)> = None;
        while let Some((key, deadline)) = self.held.front().map(|h| (h.key, h.deadline)) {
            let mapped = match &resolved {
                Some((k, m)) if *k == key => m.clone(),
                _ => {
                    let m = self.lookup_userspace(key);
                    resolved = Some((key, m.clone()));
                    m
                }
            };
            let h = match (&mapped, deadline <= now) {
                (Some(_), _) | (None, true) => self.held.pop_front().expect("front exists"),
                (None, false) => break,
            };
            let owner = match mapped {
                Some(m) => Owner::Container(m),
                None => {
                    Stats::inc(&self.stats.held_timed_out);
                    let known = self.known_to_api_server(&h.shape);
                    Owner::Unknown(h.shape, known)
                }
            };
            self.emit(h.event, owner, clock, out);
        }
    }

    fn emit(
        &mut self,
        ev: KernelEvent,
        owner: Owner,
        clock: &WallClock,
        out: &mut Vec<Arc<Published>>,
    ) {
        let counter = match owner.attribution() {
            Attribution::Container => &self.stats.attributed_container,
            Attribution::Host => &self.stats.attributed_host,
            Attribution::Unknown => &self.stats.attributed_unknown,
        };
        Stats::inc(counter);
        self.stats
            .record_latency(self.batch_now.saturating_sub(ev.ktime()) / 1000);
        enrich::events(
            &self.node,
            &mut self.procs,
            &self.layout,
            &self.policy_names,
            ev,
            owner,
            clock,
            |e| out.push(Published::new(e)),
        );
    }

    /// A container no plugin mapped may still be in the pod cache (it started before podmap).
    fn known_to_api_server(&self, shape: &ContainerShape) -> Option<Arc<Mapped>> {
        let pod = self.pods.as_ref()?.by_container(&shape.container_id)?;
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
}
