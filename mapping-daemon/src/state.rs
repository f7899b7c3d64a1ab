//! The daemon's answer to `status` and `containers`: a snapshot assembled from podmapd's own
//! counters, the hub's, and the shared counters every writer and the kernel add to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use podmap_bpf::layout::Counter;
use podmap_bpf::SharedMaps;
use podmap_cgroup::CgroupLayout;

use podmap_proto::containers::{ContainerRow, RowPod};

use crate::hub::Hub;
use crate::stats::{histogram_percentile, Stats};
use crate::status::StatusSource;
use podmap_proto::status::{Enforcement, LatencySummary, StatusReport};

pub struct DaemonState {
    pub node: String,
    pub layout: CgroupLayout,
    pub maps: Arc<SharedMaps>,
    pub stats: Arc<Stats>,
    pub hub: Arc<Hub>,
    pub started: Instant,
    pub enforcement: String,
    pub policies: std::sync::Mutex<podmap_proto::status::PolicyStatus>,
    /// Set once the pod cache started (Kubernetes mode).
    pub pods: std::sync::Mutex<Option<podmap_pod_cache::PodCache>>,
    /// The PodPolicy mirror's status, in Kubernetes mode.
    pub policy_resources: Option<crate::policy_mirror::MirrorHandle>,
    /// Policy names by id, to name each container's policies.
    pub policy_names: crate::policies::PolicyNames,
    /// Where container-shaped cgroup names are believed (docs/decisions.md #29).
    pub pod_parents: Vec<String>,
    /// How the pinned links were taken over at start.
    pub programs: podmap_proto::status::ProgramsStatus,
}

fn summary(h: &[u64], sum_us: u64) -> LatencySummary {
    LatencySummary {
        count: h.iter().sum(),
        p50: histogram_percentile(h, 0.50),
        p99: histogram_percentile(h, 0.99),
        max: h.iter().rposition(|&n| n > 0).map(|i| 1u64 << i),
        buckets: h.to_vec(),
        sum_us,
    }
}

/// When this process started, in seconds since the Unix epoch, as the kernel recorded it (what
/// Prometheus' `process_start_time_seconds` means): the boot time of /proc/stat plus the start
/// field of /proc/self/stat. Read once; 0 when unreadable.
fn process_start_time() -> f64 {
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        let read = || -> Option<f64> {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let btime: f64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            let own = std::fs::read_to_string("/proc/self/stat").ok()?;
            // Fields after the command (which may hold spaces), from field 3 on: start time is 22.
            let after_comm = &own[own.rfind(')')? + 2..];
            let ticks: f64 = after_comm.split(' ').nth(22 - 3)?.parse().ok()?;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            (hz > 0).then(|| btime + ticks / hz as f64)
        };
        read().unwrap_or(0.0)
    })
}

impl StatusSource for DaemonState {
    fn status(&self) -> StatusReport {
        let s = &self.stats;
        let c = &self.maps.counters;
        let pods = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.stats());
        let policies = self
            .policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let shared: BTreeMap<String, u64> = Counter::ALL
            .iter()
            .map(|k| (k.name().to_string(), c.get(*k)))
            .collect();
        StatusReport {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            start_time_seconds: process_start_time(),
            mode: if pods.is_some() {
                "kubernetes"
            } else {
                "standalone"
            }
            .to_string(),
            cgroup_hierarchy: self.layout.hierarchy_name(),
            cgroup_layout: self.layout.kind.as_str().to_string(),
            events_seen: [
                ("exec", Stats::get(&s.exec)),
                ("exit", Stats::get(&s.exit)),
                ("cgroup", Stats::get(&s.cgroup)),
                ("policy_open", Stats::get(&s.policy)),
                ("undecodable", Stats::get(&s.decode_errors)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            events_delivered: self.hub.delivered(),
            events_lost_kernel: c.get(Counter::RingbufDropped),
            events_lost_slow_clients: self.hub.lost_slow_clients(),
            attribution: [
                ("container", Stats::get(&s.attributed_container)),
                ("host", Stats::get(&s.attributed_host)),
                ("unknown", Stats::get(&s.attributed_unknown)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            events_held: Stats::get(&s.held),
            events_held_timed_out: Stats::get(&s.held_timed_out),
            events_held_now: Stats::get(&s.held_now),
            events_held_peak: Stats::get(&s.held_peak),
            events_held_released_early: Stats::get(&s.held_released_early),
            events_held_limits: podmap_proto::status::HoldLimitsStatus {
                per_cgroup: crate::pipeline::hold::DEFAULT_LIMITS.per_cgroup as u64,
                total: crate::pipeline::hold::DEFAULT_LIMITS.total as u64,
            },
            pod_parents: self.pod_parents.clone(),
            shaped_outside_pod_parents: Stats::get(&s.shaped_outside_pod_parents),
            unknown_pod_mismatch: Stats::get(&s.unknown_pod_mismatch),
            records_unreadable: Stats::get(&s.meta_corrupt),
            processes_untracked: Stats::get(&s.procs_untracked),
            reader_asleep: s.reader_asleep.load(std::sync::atomic::Ordering::Relaxed),
            reader_sleeps: Stats::get(&s.reader_sleeps),
            reader_woken: Stats::get(&s.reader_woken),
            reader_late: Stats::get(&s.reader_late),
            clients_connected: self.hub.clients(),
            client_errors: self.hub.client_errors(),
            clients_refused: self.hub.clients_refused(),
            clients_write_timeouts: self.hub.clients_write_timeouts(),
            metrics_connections_refused: Stats::get(&s.metrics_refused),
            containers_mapped: self.maps.records.keys().len() as u64,
            pods_cached: pods.as_ref().map_or(0, |p| p.pods as u64),
            pod_cache: pods.map(|p| podmap_proto::status::PodCacheStatus {
                synced: p.synced,
                staleness_seconds: p.last_event_age.map(|d| d.as_secs_f64()),
                deleted_kept: p.deleted_kept as u64,
                lists: p.lists,
                relists: p.relists,
                watch_restarts: p.watch_restarts,
                objects_skipped: p.objects_skipped,
                errors: p.errors,
            }),
            enforcement_mode: self.enforcement.clone(),
            // daemon.rs writes exactly "lsm" when BPF-LSM is active, a sentence otherwise.
            enforcement: if self.enforcement == "lsm" {
                Enforcement::Lsm
            } else {
                Enforcement::Fallback
            },
            policies: podmap_proto::status::PolicyStatus {
                resources: self.policy_resources.as_ref().map(|m| m.snapshot()),
                actions: s.policy_actions(),
                ..policies.clone()
            },
            shared_counters: shared,
            mapping_latency_us: summary(
                &c.latency_histogram(),
                c.get(Counter::MappingLatencySumUs),
            ),
            event_latency_us: summary(&s.latency_histogram(), Stats::get(&s.latency_sum_us)),
            programs: {
                let mut p = podmap_proto::status::ProgramsStatus {
                    backlog_read_at_start: Stats::get(&s.backlog_at_start),
                    ..self.programs.clone()
                };
                p.attached.extend(policies.open_tracepoints);
                p.attached.sort();
                p
            },
        }
    }

    fn containers(&self) -> Vec<ContainerRow> {
        // Each container's policy names, from one walk of the membership map.
        let mut policies: BTreeMap<podmap_cgroup::CgroupKey, Vec<String>> = BTreeMap::new();
        {
            let names = self.policy_names.read().unwrap_or_else(|p| p.into_inner());
            for (id, key) in self.maps.policy.memberships() {
                let name = names
                    .get(&id)
                    .map_or_else(|| format!("policy-{id:08x}"), |n| n.to_string());
                policies.entry(key).or_default().push(name);
            }
        }
        let policies_of = |key| {
            let mut of = policies.get(&key).cloned().unwrap_or_default();
            of.sort();
            of
        };
        // Records are stamped in boot time; shown as wall-clock time.
        let clock = crate::clock::WallClock::now();
        let mut rows: Vec<ContainerRow> = self
            .maps
            .records
            .keys()
            .into_iter()
            .map(|key| {
                let rec = self.maps.records.get(key).ok().flatten();
                let mut row = ContainerRow {
                    cgroup_id: key.id.0,
                    hierarchy: match key.hierarchy {
                        podmap_cgroup::Hierarchy::V2 => "v2",
                        podmap_cgroup::Hierarchy::V1 => "v1",
                    }
                    .to_string(),
                    removing: rec.map(|r| r.flags.removing),
                    sandbox: rec.map(|r| r.flags.sandbox),
                    mapped_at: rec.map(|r| clock.format(r.created_ns)),
                    policies: policies_of(key),
                    ..Default::default()
                };
                match self.maps.records.meta(key) {
                    Ok(Some(m)) => {
                        row.container = Some(crate::containers::container_info(&m));
                        row.pod = Some(RowPod {
                            uid: m.pod_uid.map(|u| u.0),
                            name: m.pod_name,
                            namespace: m.namespace,
                            labels: m.labels,
                        });
                        row.cgroup_path = Some(m.cgroup_path);
                    }
                    Ok(None) => row.error = Some("no metadata".to_string()),
                    Err(e) => row.error = Some(e.to_string()),
                }
                row
            })
            .collect();
        rows.sort_by_key(|r| (r.cgroup_id, r.hierarchy.clone()));
        rows
    }
}
