//! Prometheus metrics (docs/interfaces.md, "Metrics"; the reference is docs/metrics.md, generated
//! from this file): the same counters as status, rendered from one [`StatusReport`] snapshot per
//! scrape so the two never disagree. Served by `http.rs`.
//!
//! Conventions: one family per thing counted (a label only where the values add up to a whole:
//! events by type, attribution by kind, policy events by policy, action and mode); counters end
//! in `_total`; latencies are histograms in seconds; identity is in `_info` families whose
//! labels are short words, never sentences. Every shared counter of `enum podmap_counter`
//! (bpf/c/podmap.h, through `podmap_bpf::layout::Counter`) is a family of its own, named
//! `podmap_<its status name>_total`.

use podmap_bpf::layout::Counter;
use podmap_proto::status::{LatencySummary, StatusReport};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// The OpenMetrics text format, which prometheus-client writes (it ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What each shared counter counts (its metric's HELP). None for a cell that is not a family of
/// its own. The match is exhaustive: a counter added to `enum podmap_counter` does not build
/// until it says what it counts here.
fn shared_counter_help(c: Counter) -> Option<&'static str> {
    Some(match c {
        Counter::Exec => "Execs the kernel programs saw",
        Counter::Exit => "Process exits the kernel programs saw",
        Counter::RingbufDropped => {
            "Records the kernel programs could not queue because the ring buffer was full"
        }
        Counter::ArgsTruncated => "Execs whose arguments were longer than the kernel reads",
        Counter::CwdTruncated => "Execs whose working directory was deeper than the kernel reads",
        Counter::PathUnreadable => "Execs whose binary path the kernel could not read",
        Counter::CgroupEvents => "Cgroup creations and removals the kernel programs saw",
        Counter::ProcTableFull => "Execs the kernel's process table had no room for",
        Counter::PolicyHits => "Policy rules the kernel programs found matching",
        Counter::PolicyKills => "Processes a policy had the kernel kill",
        Counter::PolicyDenyAudited => {
            "Deny rules only audited: BPF-LSM unavailable and no fallback kill asked"
        }
        Counter::OpenPathUnreadable => "Opens whose path the kernel could not read for policies",
        Counter::PolicyRefsTruncated => "Policy rule matches beyond what one path entry holds",
        Counter::V1Records => "Container records written keyed by a cgroup v1 id",
        Counter::RecordsWritten => "Container records written by the runtime plugins",
        Counter::RecordsRemoved => "Container records a runtime plugin removed",
        Counter::RecordsExpired => "Container records swept once the grace period after their container's removal was over",
        Counter::MapWriteErrors => "Failed writes of container records to the kernel maps",
        Counter::StoreErrors => "Failed operations on a runtime plugin's record store",
        Counter::CgroupUnresolved => "Containers whose cgroup a runtime plugin could not resolve",
        Counter::NriEvents => "NRI events podmap-nri received",
        Counter::NriMapped => "Containers podmap-nri mapped",
        Counter::NriFailures => "NRI calls whose handling failed in podmap-nri (answered success: the container still runs)",
        Counter::NriSlowReplies => "NRI calls podmap-nri answered before their work finished, which took longer than its reply bound",
        Counter::HookRuns => "Runs of podmap-oci-hook",
        Counter::HookMapped => "Containers podmap-oci-hook mapped",
        Counter::HookFailures => "Runs of podmap-oci-hook that failed to map their container",
        Counter::HookTimeouts => "Runs of podmap-oci-hook its watchdog stopped",
        Counter::HookBadInput => {
            "Runs of podmap-oci-hook given a state or config it could not read"
        }
        Counter::MembershipWrites => "Policy memberships written to the kernel map",
        Counter::MembershipErrors => "Failed writes of policy memberships to the kernel map",
        Counter::StoreRecovered => {
            "Runtime plugin stores that would not open, moved aside and started afresh"
        }
        Counter::StoreTemporary => {
            "Runtime plugin runs that used a temporary store because the store was held elsewhere"
        }
        Counter::DeepContainers => {
            "Container records for a cgroup too deep for its sub-cgroups to be attributed to it"
        }
        Counter::PinsRestored => "Pinned maps found missing and pinned again",
        Counter::PinsForeign => "Pins found naming other maps than a writer holds",
        Counter::CapabilitiesUnread => {
            "Containers whose capabilities a runtime plugin could not learn (recorded as unknown)"
        }
        Counter::RecordsMarked => {
            "Container records marked removed by a runtime plugin, their grace period started"
        }
        // The mapping latency histogram's _sum.
        Counter::MappingLatencySumUs => return None,
    })
}

/// Families only present in some reports, and when.
pub const CONDITIONAL: [(&str, &str); 5] = [
    (
        "podmap_policy_actions_total",
        "once a policy acted (a series per policy, action and mode seen)",
    ),
    (
        "podmap_policy_resources",
        "Kubernetes mode, PodPolicy mirror on",
    ),
    (
        "podmap_policy_resources_refused",
        "Kubernetes mode, PodPolicy mirror on",
    ),
    (
        "podmap_policy_resource_errors_total",
        "Kubernetes mode, PodPolicy mirror on",
    ),
    ("podmap_pod_cache_synced", "Kubernetes mode"),
];

/// Renders `report` as OpenMetrics text: every family named `podmap_*`, and the conventional
/// `process_start_time_seconds`.
pub fn render(report: &StatusReport) -> String {
    let mut reg = Registry::default();

    reg.register(
        "podmap_build",
        "podmapd's version",
        Info::new(vec![("version".to_string(), report.version.clone())]),
    );
    reg.register(
        "podmap_daemon",
        "podmapd's node and the modes it runs in: mode standalone or kubernetes, enforcement_mode lsm or fallback",
        Info::new(vec![
            ("node".to_string(), report.node.clone()),
            ("mode".to_string(), report.mode.clone()),
            ("cgroup_hierarchy".to_string(), report.cgroup_hierarchy.clone()),
            ("cgroup_layout".to_string(), report.cgroup_layout.clone()),
            (
                "enforcement_mode".to_string(),
                report.enforcement.as_str().to_string(),
            ),
        ]),
    );

    let start = Gauge::<f64, AtomicU64>::default();
    start.set(report.start_time_seconds);
    reg.register(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        start,
    );

    reg.register(
        "podmap_events_seen",
        "Records read from the ring buffer, by type (exec, exit, cgroup, policy_open, undecodable)",
        labelled(
            ["type"],
            report.events_seen.iter().map(|(k, v)| ([k.clone()], *v)),
        ),
    );
    reg.register(
        "podmap_attribution",
        "Events attributed, by kind: container, host, unknown",
        labelled(
            ["kind"],
            report.attribution.iter().map(|(k, v)| ([k.clone()], *v)),
        ),
    );
    reg.register(
        "podmap_policy_actions",
        "Policy events handed on, by policy, the rule's action (audit, kill, deny) and the mode the kernel acted in (lsm, kill, audit)",
        labelled(
            ["policy", "action", "mode"],
            report
                .policies
                .actions
                .iter()
                .map(|a| ([a.policy.clone(), a.action.clone(), a.mode.clone()], a.count)),
        ),
    );

    for c in Counter::ALL {
        let Some(help) = shared_counter_help(c) else {
            continue;
        };
        let value = report.shared_counters.get(c.name()).copied().unwrap_or(0);
        reg.register(format!("podmap_{}", c.name()), help, counter(value));
    }

    let pod_cache = report.pod_cache.as_ref();
    for (name, help, value) in [
        (
            "events_delivered",
            "Event lines handed to socket clients (one per client per event)",
            report.events_delivered,
        ),
        (
            "events_lost_kernel",
            "Events the kernel could not queue (ring buffer full)",
            report.events_lost_kernel,
        ),
        (
            "events_lost_slow_clients",
            "Event lines dropped because a socket client did not keep up",
            report.events_lost_slow_clients,
        ),
        (
            "events_held",
            "Events held waiting for their container mapping",
            report.events_held,
        ),
        (
            "events_held_timed_out",
            "Held events that went out as unknown when the wait ran out",
            report.events_held_timed_out,
        ),
        (
            "events_held_released_early",
            "Held events sent on as unknown before their time because a hold bound was reached",
            report.events_held_released_early,
        ),
        (
            "events_shaped_outside_pod_parents",
            "Events of cgroups named like a container's outside the pod parents (attributed to the host)",
            report.shaped_outside_pod_parents,
        ),
        (
            "events_unknown_pod_mismatch",
            "Unknown events whose container the pod cache has under another pod than the path names (no pod data joined)",
            report.unknown_pod_mismatch,
        ),
        (
            "records_unreadable",
            "Container records whose metadata did not parse",
            report.records_unreadable,
        ),
        (
            "processes_untracked",
            "Execs the full process table could not keep",
            report.processes_untracked,
        ),
        (
            "reader_sleeps",
            "Times the idle event reader stopped polling (the next record wakes it)",
            report.reader_sleeps,
        ),
        (
            "reader_woken",
            "Times a record woke the sleeping event reader",
            report.reader_woken,
        ),
        (
            "reader_late",
            "Records the sleeping reader's slow look found (submitted as it fell asleep)",
            report.reader_late,
        ),
        (
            "client_errors",
            "Socket requests refused (malformed, too long, silent, a second line)",
            report.client_errors,
        ),
        (
            "clients_refused",
            "Socket connections refused because the maximum of clients was connected",
            report.clients_refused,
        ),
        (
            "clients_write_timeouts",
            "Socket clients disconnected because a write to them timed out (they stopped reading)",
            report.clients_write_timeouts,
        ),
        (
            "metrics_connections_refused",
            "Metrics connections refused because the endpoint's maximum was connected",
            report.metrics_connections_refused,
        ),
        (
            "policy_reloads",
            "Times the policies were loaded again from the policy directory",
            report.policies.reloads,
        ),
        (
            "policy_dir_read_failures",
            "Failed reads of the policy directory or its files (the policies last loaded stayed in force)",
            report.policies.read_failures,
        ),
        (
            "policy_rule_write_failures",
            "Kernel rule table entries that could not be written as asked (see podmap status)",
            report.policies.rule_write_failures,
        ),
        (
            "policy_orphan_memberships_removed",
            "Policy memberships removed because their container had no record any more",
            report.policies.orphan_memberships_removed,
        ),
    ] {
        reg.register(format!("podmap_{name}"), help, counter(value));
    }

    for (name, help, value) in [
        (
            "clients",
            "Streaming socket clients connected",
            report.clients_connected,
        ),
        (
            "containers_mapped",
            "Containers in the mapping table",
            report.containers_mapped,
        ),
        (
            "events_held_now",
            "Events waiting for their container mapping now",
            report.events_held_now,
        ),
        (
            "events_held_peak",
            "The most events ever waiting for their mapping at once",
            report.events_held_peak,
        ),
        (
            "reader_asleep",
            "1 while the idle event reader sleeps until a record wakes it, else 0",
            u64::from(report.reader_asleep),
        ),
        (
            "pods_cached",
            "Pods in the Kubernetes informer cache",
            report.pods_cached,
        ),
        (
            "policies_loaded",
            "Policies active (kernel rule tables written)",
            report.policies.loaded.len() as u64,
        ),
        (
            "policies_refused",
            "Policy files or documents refused now (see podmap status for why)",
            report.policies.errors.len() as u64,
        ),
        (
            "policy_memberships",
            "(policy, container) pairs in the kernel's membership map",
            report.policies.memberships,
        ),
    ] {
        reg.register(format!("podmap_{name}"), help, gauge(value));
    }

    if let Some(p) = pod_cache {
        reg.register(
            "podmap_pod_cache_synced",
            "1 once the pod informer has listed the node's pods, else 0",
            gauge(u64::from(p.synced)),
        );
    }

    if let Some(m) = &report.policies.resources {
        reg.register(
            "podmap_policy_resources",
            "PodPolicy resources on the API server, mirrored into the policy directory",
            gauge(m.resources),
        );
        reg.register(
            "podmap_policy_resources_refused",
            "PodPolicy resources refused now (see podmap status for why)",
            gauge(m.refused.len() as u64),
        );
        reg.register(
            "podmap_policy_resource_errors",
            "Failed watches of PodPolicy resources and failed writes of their files",
            counter(m.errors),
        );
    }

    reg.register(
        "podmap_mapping_latency_seconds",
        "Create-to-mapping-ready latency reported by the runtime plugins",
        Log2Histogram::of(&report.mapping_latency_us),
    );
    reg.register(
        "podmap_event_latency_seconds",
        "Latency from the kernel's timestamp to the hand-off to the clients' queues",
        Log2Histogram::of(&report.event_latency_us),
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    encode(&mut out, &reg).expect("encoding metrics into a String");
    out
}

fn counter(value: u64) -> PromCounter<u64> {
    let c = PromCounter::<u64>::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge<u64, AtomicU64> {
    let g = Gauge::<u64, AtomicU64>::default();
    g.set(value);
    g
}

type Labelled<const N: usize> = Family<[(&'static str, String); N], PromCounter<u64>>;

/// A counter family with `N` labels: one series per set of values.
fn labelled<const N: usize>(
    names: [&'static str; N],
    values: impl Iterator<Item = ([String; N], u64)>,
) -> Labelled<N> {
    let family = Labelled::<N>::default();
    for (vals, n) in values {
        let labels: [(&'static str, String); N] =
            std::array::from_fn(|i| (names[i], vals[i].clone()));
        family.get_or_create(&labels).inc_by(n);
    }
    family
}

/// A latency histogram from podmap's log2 buckets (bucket i counts latencies below 2^i
/// microseconds and at least 2^(i-1); the last one also counts every larger latency), in
/// seconds. Latencies are measured in whole microseconds rounded down, so one in bucket i is
/// below 2^i us: `le` = 2^i us holds.
#[derive(Debug)]
struct Log2Histogram {
    sum_seconds: f64,
    count: u64,
    /// (upper bound in seconds, samples in this bucket alone), the last bound +Inf.
    buckets: Vec<(f64, u64)>,
}

impl Log2Histogram {
    fn of(l: &LatencySummary) -> Self {
        let n = l.buckets.len();
        let mut buckets: Vec<(f64, u64)> = l
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let le = if i + 1 == n {
                    f64::INFINITY
                } else {
                    (1u64 << i) as f64 / 1e6
                };
                (le, count)
            })
            .collect();
        if buckets.is_empty() {
            // A report without buckets (an older podmapd's): everything in +Inf.
            buckets.push((f64::INFINITY, l.count));
        }
        Log2Histogram {
            sum_seconds: l.sum_us as f64 / 1e6,
            count: buckets.iter().map(|(_, c)| c).sum(),
            buckets,
        }
    }
}

impl EncodeMetric for Log2Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A report with every family present, as the reference shows them.
fn reference_report() -> StatusReport {
    use podmap_proto::status::{MirrorStatus, PodCacheStatus, PolicyActionCount, PolicyStatus};
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        events_seen: [("exec".to_string(), 0)].into(),
        attribution: [("container".to_string(), 0)].into(),
        mapping_latency_us: LatencySummary {
            buckets: vec![0; 32],
            ..Default::default()
        },
        event_latency_us: LatencySummary {
            buckets: vec![0; 32],
            ..Default::default()
        },
        pod_cache: Some(PodCacheStatus::default()),
        policies: PolicyStatus {
            actions: vec![PolicyActionCount {
                policy: "p".into(),
                action: "deny".into(),
                mode: "lsm".into(),
                count: 0,
            }],
            resources: Some(MirrorStatus::default()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// One family of an exposition: (name as queried, type, label names, help).
pub type FamilyRow = (String, String, Vec<String>, String);

/// The families of an OpenMetrics exposition, by the name queries use (`_total` for counters,
/// `_info` for info families), each with its type, label names (first series') and help.
pub fn families(text: &str) -> BTreeMap<String, FamilyRow> {
    let mut help: BTreeMap<&str, &str> = BTreeMap::new();
    let mut types: Vec<(&str, &str)> = Vec::new();
    let mut labels: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name, h);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap_or((rest, ""));
            types.push((name, t));
        } else if !line.starts_with('#') {
            let series = line.split(' ').next().unwrap_or("");
            let (name, ls) = series.split_once('{').unwrap_or((series, ""));
            let names: Vec<String> = ls
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                .filter(|k| k != "le")
                .collect();
            labels.entry(name).or_insert(names);
        }
    }
    types
        .into_iter()
        .map(|(family, kind)| {
            let queried = match kind {
                "counter" => format!("{family}_total"),
                "info" => format!("{family}_info"),
                _ => family.to_string(),
            };
            let sample = if kind == "histogram" {
                format!("{family}_bucket")
            } else {
                queried.clone()
            };
            let row = (
                queried.clone(),
                kind.to_string(),
                labels.get(sample.as_str()).cloned().unwrap_or_default(),
                help.get(family).copied().unwrap_or("").to_string(),
            );
            (queried, row)
        })
        .collect()
}

/// docs/metrics.md: the reference of every family, generated from [`render`] (tests/ checks the
/// committed file against it; `PODMAP_BLESS=1` rewrites it).
pub fn reference() -> String {
    let mut out = String::from(
        "# Metrics reference\n\
         \n\
         <!-- Generated from mapping-daemon/src/metrics.rs: do not edit. Regenerate with\n\
         `PODMAP_BLESS=1 cargo test -p podmap-daemon --lib metrics::`. -->\n\
         \n\
         `GET /metrics` on podmapd's `--metrics-addr` answers OpenMetrics text, rendered from one\n\
         status snapshot per scrape ([interfaces.md](interfaces.md#metrics)). Counters are\n\
         queried with their `_total` suffix; the latencies are histograms in seconds whose\n\
         buckets are podmap's log2 buckets (`le` from 1 us doubling to 2^30 us, then `+Inf`).\n\
         Every shared counter of `enum podmap_counter` (bpf/c/podmap.h) is a family of its own,\n\
         named after its name in `podmap status`.\n\
         \n\
         | Family | Type | Labels | Present | Help |\n\
         |---|---|---|---|---|\n",
    );
    for (name, kind, labels, help) in families(&render(&reference_report())).into_values() {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let present = CONDITIONAL
            .iter()
            .find(|(f, _)| *f == name)
            .map_or("always", |(_, when)| when);
        out.push_str(&format!(
            "| `{name}` | {kind} | {labels} | {present} | {} |\n",
            help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_proto::status::{Enforcement, PolicyActionCount};
    use std::collections::BTreeSet;

    fn sample_report() -> StatusReport {
        let mut mapping_buckets = vec![0; 32];
        mapping_buckets[10] = 4; // 512..1024 us
        mapping_buckets[12] = 2; // 2048..4096 us
        let mut event_buckets = vec![0; 32];
        event_buckets[0] = 3;
        event_buckets[6] = 96;
        event_buckets[31] = 1; // beyond every finite bound
        StatusReport {
            node: "node-a".into(),
            version: "0.1.0".into(),
            uptime_seconds: 12.5,
            start_time_seconds: 1_795_608_000.25,
            mode: "standalone".into(),
            cgroup_hierarchy: "cgroup2".into(),
            cgroup_layout: "systemd".into(),
            events_seen: [("exec".to_string(), 10), ("exit".to_string(), 9)].into(),
            events_delivered: 30,
            events_lost_kernel: 1,
            events_lost_slow_clients: 2,
            attribution: [("container".to_string(), 7), ("host".to_string(), 3)].into(),
            events_held: 4,
            events_held_timed_out: 1,
            events_held_now: 2,
            events_held_peak: 256,
            events_held_released_early: 11,
            events_held_limits: podmap_proto::status::HoldLimitsStatus {
                per_cgroup: 256,
                total: 4096,
            },
            pod_parents: vec!["/kubepods".into()],
            shaped_outside_pod_parents: 12,
            unknown_pod_mismatch: 13,
            clients_connected: 2,
            records_unreadable: 0,
            processes_untracked: 0,
            reader_asleep: true,
            reader_sleeps: 7,
            reader_woken: 6,
            reader_late: 1,
            client_errors: 5,
            clients_refused: 8,
            clients_write_timeouts: 9,
            metrics_connections_refused: 10,
            containers_mapped: 6,
            pods_cached: 3,
            enforcement_mode: "fallback (BPF-LSM unavailable: no lsm=bpf): deny rules act as kill where they say fallback: kill, else audit".into(),
            enforcement: Enforcement::Fallback,
            shared_counters: [
                ("nri_mapped".to_string(), 6),
                ("hook_failures".to_string(), 2),
                ("mapping_latency_sum_us".to_string(), 9000),
            ]
            .into(),
            mapping_latency_us: LatencySummary {
                count: 6,
                p50: Some(1024),
                p99: Some(4096),
                max: Some(4096),
                buckets: mapping_buckets,
                sum_us: 9000,
            },
            event_latency_us: LatencySummary {
                count: 100,
                p50: Some(64),
                p99: Some(64),
                max: Some(1 << 31),
                buckets: event_buckets,
                sum_us: 2_000_000,
            },
            policies: podmap_proto::status::PolicyStatus {
                loaded: vec!["a (/p/a.yaml)".into(), "b (/p/b.yaml)".into()],
                errors: vec!["/p/c.yaml: spec: bad".into()],
                memberships: 4,
                reloads: 3,
                read_failures: 5,
                rule_write_failures: 1,
                orphan_memberships_removed: 2,
                actions: vec![
                    PolicyActionCount {
                        policy: "no-shells".into(),
                        action: "deny".into(),
                        mode: "kill".into(),
                        count: 4,
                    },
                    PolicyActionCount {
                        policy: "no-shells".into(),
                        action: "audit".into(),
                        mode: "audit".into(),
                        count: 1,
                    },
                ],
                resources: Some(podmap_proto::status::MirrorStatus {
                    synced: true,
                    resources: 1,
                    refused: vec!["PodPolicy resource \"d\": spec: bad".into()],
                    errors: 3,
                    ..Default::default()
                }),
                ..Default::default()
            },
            pod_cache: Some(podmap_proto::status::PodCacheStatus {
                synced: true,
                ..Default::default()
            }),
            programs: Default::default(),
        }
    }

    #[test]
    fn render_carries_every_counter() {
        let text = render(&sample_report());
        for line in [
            r#"podmap_build_info{version="0.1.0"} 1"#,
            "process_start_time_seconds 1795608000.25",
            r#"podmap_events_seen_total{type="exec"} 10"#,
            r#"podmap_events_seen_total{type="exit"} 9"#,
            r#"podmap_attribution_total{kind="container"} 7"#,
            r#"podmap_attribution_total{kind="host"} 3"#,
            r#"podmap_policy_actions_total{policy="no-shells",action="deny",mode="kill"} 4"#,
            r#"podmap_policy_actions_total{policy="no-shells",action="audit",mode="audit"} 1"#,
            "podmap_nri_mapped_total 6",
            "podmap_hook_failures_total 2",
            "podmap_nri_events_total 0",
            "podmap_kernel_ringbuf_dropped_total 0",
            "podmap_events_delivered_total 30",
            "podmap_events_lost_kernel_total 1",
            "podmap_events_lost_slow_clients_total 2",
            "podmap_events_held_total 4",
            "podmap_events_held_timed_out_total 1",
            "podmap_events_held_released_early_total 11",
            "podmap_events_shaped_outside_pod_parents_total 12",
            "podmap_events_unknown_pod_mismatch_total 13",
            "podmap_events_held_now 2",
            "podmap_events_held_peak 256",
            "podmap_client_errors_total 5",
            "podmap_clients_refused_total 8",
            "podmap_clients_write_timeouts_total 9",
            "podmap_metrics_connections_refused_total 10",
            "podmap_reader_sleeps_total 7",
            "podmap_reader_woken_total 6",
            "podmap_reader_late_total 1",
            "podmap_reader_asleep 1",
            "podmap_clients 2",
            "podmap_containers_mapped 6",
            "podmap_pods_cached 3",
            "podmap_pod_cache_synced 1",
            r#"podmap_mapping_latency_seconds_bucket{le="0.000512"} 0"#,
            r#"podmap_mapping_latency_seconds_bucket{le="0.001024"} 4"#,
            r#"podmap_mapping_latency_seconds_bucket{le="0.004096"} 6"#,
            r#"podmap_mapping_latency_seconds_bucket{le="+Inf"} 6"#,
            "podmap_mapping_latency_seconds_sum 0.009",
            "podmap_mapping_latency_seconds_count 6",
            r#"podmap_event_latency_seconds_bucket{le="0.000001"} 3"#,
            r#"podmap_event_latency_seconds_bucket{le="1073.741824"} 99"#,
            r#"podmap_event_latency_seconds_bucket{le="+Inf"} 100"#,
            "podmap_event_latency_seconds_sum 2.0",
            "podmap_event_latency_seconds_count 100",
            "podmap_policies_loaded 2",
            "podmap_policies_refused 1",
            "podmap_policy_memberships 4",
            "podmap_policy_reloads_total 3",
            "podmap_policy_dir_read_failures_total 5",
            "podmap_policy_rule_write_failures_total 1",
            "podmap_policy_orphan_memberships_removed_total 2",
            "podmap_policy_resources 1",
            "podmap_policy_resources_refused 1",
            "podmap_policy_resource_errors_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            text.lines().any(|l| l.starts_with("podmap_daemon_info{")
                && l.contains(r#"enforcement_mode="fallback""#)
                && l.ends_with("} 1")),
            "the enforcement mode is one word:\n{text}"
        );
        for gone in [
            "podmap_shared_counters",
            "quantile",
            "podmap_uptime_seconds",
            // The enforcement mode's sentence.
            "no lsm=bpf",
            // The histogram's sum is no counter of its own.
            "podmap_mapping_latency_sum_us",
        ] {
            assert!(!text.contains(gone), "{gone} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    /// A strict check of the exposition's form (the OpenMetrics text format): one HELP and one
    /// TYPE per family before its samples, every sample of a declared family with the suffixes
    /// its type allows, names and labels well formed, counters ending in _total, histogram
    /// buckets ascending and cumulative, ending with +Inf, and _count equal to the +Inf bucket.
    fn check_exposition(text: &str) -> Result<(), String> {
        let body = text
            .strip_suffix("# EOF\n")
            .ok_or("the exposition does not end with # EOF")?;
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut helps = BTreeSet::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        let mut done = BTreeSet::new();
        // Histogram state: the family's buckets so far, and its _count.
        let mut buckets: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').ok_or(format!("bad HELP: {line}"))?;
                if !helps.insert(name.to_string()) {
                    return Err(format!("second HELP for {name}"));
                }
                if help.trim().is_empty() {
                    return Err(format!("empty HELP for {name}"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
                if !name_ok(name) {
                    return Err(format!("bad family name {name}"));
                }
                if !["counter", "gauge", "histogram", "info"].contains(&kind) {
                    return Err(format!("unexpected type {kind} of {name}"));
                }
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(format!("second TYPE for {name}"));
                }
                if !helps.contains(name) {
                    return Err(format!("TYPE of {name} before its HELP"));
                }
                if let Some((prev, _)) = current.replace((name.to_string(), kind.to_string())) {
                    done.insert(prev);
                }
                continue;
            }
            if line.starts_with('#') {
                return Err(format!("unexpected comment: {line}"));
            }
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (
                    n,
                    l.strip_suffix('}')
                        .ok_or(format!("unclosed labels: {line}"))?,
                ),
                None => (series, ""),
            };
            let mut le = None;
            let mut seen_labels = BTreeSet::new();
            if !labels.is_empty() {
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').ok_or(format!("bad label: {line}"))?;
                    if !name_ok(k) || k.contains(':') || !seen_labels.insert(k) {
                        return Err(format!("bad or repeated label name {k}: {line}"));
                    }
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or(format!("unquoted label value: {line}"))?;
                    if v.contains('"') || v.contains('\n') {
                        return Err(format!("unescaped label value: {line}"));
                    }
                    if k == "le" {
                        le = Some(if v == "+Inf" {
                            f64::INFINITY
                        } else {
                            v.parse::<f64>().map_err(|e| format!("{line}: {e}"))?
                        });
                    }
                }
            }
            let (family, kind) = current
                .as_ref()
                .ok_or(format!("sample before TYPE: {line}"))?;
            if done.contains(family) {
                return Err(format!("{family} interleaved"));
            }
            let suffix = name
                .strip_prefix(family.as_str())
                .ok_or(format!("sample {name} outside its family {family}"))?;
            let allowed: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "gauge" => &[""],
                "info" => &["_info"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            if !allowed.contains(&suffix) {
                return Err(format!(
                    "{name}: suffix {suffix:?} not allowed for a {kind}"
                ));
            }
            let v: f64 = value
                .parse()
                .map_err(|e| format!("bad value {value}: {e}"))?;
            if !v.is_finite() || (kind != "gauge" && v < 0.0) {
                return Err(format!("bad value for a {kind}: {line}"));
            }
            if kind == "info" && v != 1.0 {
                return Err(format!("an info sample is 1: {line}"));
            }
            match suffix {
                "_bucket" => {
                    let le = le.ok_or(format!("bucket without le: {line}"))?;
                    buckets
                        .entry(family.clone())
                        .or_default()
                        .push((le, v as u64));
                }
                "_count" => {
                    counts.insert(family.clone(), v as u64);
                }
                _ if le.is_some() => return Err(format!("le outside a bucket: {line}")),
                _ => {}
            }
        }
        for (family, kind) in &types {
            if kind != "histogram" {
                continue;
            }
            let b = buckets
                .get(family)
                .ok_or(format!("{family} has no buckets"))?;
            for w in b.windows(2) {
                if w[0].0 >= w[1].0 {
                    return Err(format!("{family}: bounds not ascending"));
                }
                if w[0].1 > w[1].1 {
                    return Err(format!("{family}: buckets not cumulative"));
                }
            }
            let last = b.last().expect("checked");
            if last.0 != f64::INFINITY {
                return Err(format!("{family}: the last bucket is not +Inf"));
            }
            if counts.get(family) != Some(&last.1) {
                return Err(format!("{family}: _count is not the +Inf bucket"));
            }
        }
        if types.len() != helps.len() {
            return Err("a HELP without its TYPE".into());
        }
        Ok(())
    }

    #[test]
    fn the_exposition_is_valid_openmetrics() {
        for report in [sample_report(), StatusReport::default(), reference_report()] {
            let text = render(&report);
            check_exposition(&text).unwrap_or_else(|e| panic!("{e} in:\n{text}"));
        }
    }

    /// The checker itself refuses what it must (so a passing check means something).
    #[test]
    fn the_exposition_check_catches_broken_text() {
        let good = render(&sample_report());
        check_exposition(&good).unwrap();
        for (from, to) in [
            // A bucket count that decreases.
            (
                "podmap_mapping_latency_seconds_bucket{le=\"0.004096\"} 6",
                "podmap_mapping_latency_seconds_bucket{le=\"0.004096\"} 1",
            ),
            // _count off the +Inf bucket.
            (
                "podmap_event_latency_seconds_count 100",
                "podmap_event_latency_seconds_count 99",
            ),
            // A counter sample without _total.
            ("podmap_nri_mapped_total 6", "podmap_nri_mapped 6"),
            // A second HELP.
            (
                "# HELP podmap_clients ",
                "# HELP podmap_clients x\n# HELP podmap_clients ",
            ),
        ] {
            assert!(good.contains(from), "{from}");
            let bad = good.replacen(from, to, 1);
            assert!(
                check_exposition(&bad).is_err(),
                "accepted after {from:?} -> {to:?}"
            );
        }
    }

    /// Every shared counter but the histogram's sum is a family of its own, named after it.
    #[test]
    fn every_shared_counter_is_a_family() {
        let fams = families(&render(&StatusReport::default()));
        for c in Counter::ALL {
            let name = format!("podmap_{}_total", c.name());
            assert_eq!(
                fams.contains_key(&name),
                shared_counter_help(c).is_some(),
                "{name}"
            );
        }
    }

    /// The families missing from a report with nothing optional are exactly the conditional
    /// ones the reference names.
    #[test]
    fn conditional_families_are_the_ones_the_reference_names() {
        let all = families(&render(&reference_report()));
        // What every podmapd's report has, and nothing optional.
        let minimal = families(&render(&StatusReport {
            events_seen: [("exec".to_string(), 0)].into(),
            attribution: [("host".to_string(), 0)].into(),
            ..Default::default()
        }));
        let absent: BTreeSet<&str> = all
            .keys()
            .filter(|k| !minimal.contains_key(*k))
            .map(String::as_str)
            .collect();
        let named: BTreeSet<&str> = CONDITIONAL.iter().map(|(f, _)| *f).collect();
        assert_eq!(absent, named);
    }

    fn reference_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md")
    }

    /// docs/metrics.md is what the code generates. `PODMAP_BLESS=1` rewrites it.
    #[test]
    fn the_reference_is_generated_from_the_code() {
        let generated = reference();
        if std::env::var_os("PODMAP_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(reference_path(), &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(reference_path()).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/metrics.md is stale: regenerate with \
             PODMAP_BLESS=1 cargo test -p podmap-daemon --lib metrics::"
        );
    }

    /// Every family the committed reference lists is exported by a full report, and every
    /// exported family is in the reference.
    #[test]
    fn the_reference_and_the_exposition_name_the_same_families() {
        let committed = std::fs::read_to_string(reference_path()).unwrap();
        let documented: BTreeSet<String> = committed
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_string()))
            .collect();
        let exported: BTreeSet<String> = families(&render(&sample_report())).into_keys().collect();
        assert!(!documented.is_empty());
        let undocumented: Vec<_> = exported.difference(&documented).collect();
        let unexported: Vec<_> = documented.difference(&exported).collect();
        assert!(
            undocumented.is_empty() && unexported.is_empty(),
            "exported but not in docs/metrics.md: {undocumented:?}; \
             in docs/metrics.md but not exported: {unexported:?}"
        );
    }
}
