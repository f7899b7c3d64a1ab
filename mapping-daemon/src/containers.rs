//! Container records as podmapd sees them: read from the pinned metadata map once per new cgroup
//! id (never per event), turned into the event's `container` and `pod` objects once, and cached
//! until the cgroup goes away. A cached entry is re-validated against the compact record now and
//! then, so a record rewritten for the same cgroup is picked up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::Stats;
use podmap_bpf::{ContainerMeta, SharedMaps};
use podmap_cgroup::CgroupKey;
use podmap_pod_cache::PodCache;
use podmap_proto::{ContainerInfo, PodInfo, Shared};

const REVALIDATE: Duration = Duration::from_secs(10);

/// One mapped container, ready to be joined into events.
#[derive(Debug)]
pub struct Mapped {
    pub meta: ContainerMeta,
    pub container: Shared<ContainerInfo>,
    pub pod: Option<Shared<PodInfo>>,
}

impl Mapped {
    /// Joins the runtime's record with what only the API server knows (current labels,
    /// workload), when the pod cache has the pod.
    pub fn from_meta(meta: ContainerMeta, pods: Option<&PodCache>) -> Self {
        let cached = pods.and_then(|c| meta.pod_uid.as_ref().and_then(|u| c.get(&u.0)));
        let container = Shared::new(container_info(&meta));
        let pod = meta.pod_uid.as_ref().map(|uid| {
            Shared::new(match &cached {
                Some(p) => PodInfo {
                    uid: uid.0.clone(),
                    name: p.name.to_string(),
                    namespace: p.namespace.to_string(),
                    labels: p.labels.to_map(),
                    workload: p.workload.as_deref().map(str::to_owned),
                    workload_kind: p.workload_kind.as_deref().map(str::to_owned),
                },
                None => PodInfo {
                    uid: uid.0.clone(),
                    name: meta.pod_name.clone(),
                    namespace: meta.namespace.clone(),
                    labels: meta.labels.clone(),
                    workload: None,
                    workload_kind: None,
                },
            })
        });
        Mapped {
            meta,
            container,
            pod,
        }
    }
}

/// The event's `container` (and the mapping table's) from the runtime's record: its privilege
/// and bounding set by name as the writer recorded them, absent when it did not.
pub fn container_info(meta: &ContainerMeta) -> ContainerInfo {
    ContainerInfo {
        id: meta.container_id.0.clone(),
        name: meta.name.clone(),
        runtime: meta.runtime.clone(),
        image: meta.image.clone(),
        privileged: meta.privileged,
        capabilities: meta.cap_bounding.map(podmap_proto::caps::capability_names),
    }
}

struct Entry {
    mapped: Arc<Mapped>,
    created_ns: u64,
    checked: Instant,
}

pub struct ContainerCache {
    entries: HashMap<CgroupKey, Entry>,
    /// Where unreadable metadata is counted (never silent).
    stats: Arc<Stats>,
}

impl ContainerCache {
    pub fn new(stats: Arc<Stats>) -> Self {
        ContainerCache {
            entries: HashMap::new(),
            stats,
        }
    }

    /// The container mapped at `key`, reading the map only for a new or stale key.
    pub fn get(
        &mut self,
        maps: &SharedMaps,
        pods: Option<&PodCache>,
        key: CgroupKey,
    ) -> Option<Arc<Mapped>> {
        let now = Instant::now();
        if let Some(e) = self.entries.get_mut(&key) {
            if now.duration_since(e.checked) < REVALIDATE {
                return Some(e.mapped.clone());
            }
            match maps.records.get(key) {
                Ok(Some(rec)) if rec.created_ns == e.created_ns => {
                    e.checked = now;
                    return Some(e.mapped.clone());
                }
                _ => {
                    self.entries.remove(&key);
                }
            }
        }
        let rec = maps.records.get(key).ok().flatten()?;
        let meta = match maps.records.meta(key) {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(e) => {
                Stats::inc(&self.stats.meta_corrupt);
                tracing::warn!(error = %e, "skipping a container record");
                return None;
            }
        };
        let mapped = Arc::new(Mapped::from_meta(meta, pods));
        self.entries.insert(
            key,
            Entry {
                mapped: mapped.clone(),
                created_ns: rec.created_ns,
                checked: now,
            },
        );
        Some(mapped)
    }

    /// Drops the joined entries of pods the API server changed; they are rebuilt on next use.
    pub fn forget_pods(&mut self, uids: &[String]) {
        if uids.is_empty() {
            return;
        }
        let uids: std::collections::HashSet<&str> = uids.iter().map(String::as_str).collect();
        self.entries.retain(|_, e| {
            e.mapped
                .meta
                .pod_uid
                .as_ref()
                .is_none_or(|u| !uids.contains(u.0.as_str()))
        });
    }

    /// Forgets a cgroup that was removed.
    pub fn forget(&mut self, key: CgroupKey) {
        self.entries.remove(&key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
