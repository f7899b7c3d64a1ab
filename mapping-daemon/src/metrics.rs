//! Prometheus metrics (docs/interfaces.md, "Metrics"): the same counters as status, rendered from
//! one [`StatusReport`] snapshot per scrape so the two never disagree. Served by `http.rs`.

use podmap_proto::status::{LatencySummary, StatusReport};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// The OpenMetrics text format, which prometheus-client writes (it ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labelled = Family<[(&'static str, String); 1], Counter>;

/// Renders `report` as OpenMetrics text, every name prefixed `podmap_`.
pub fn render(report: &StatusReport) -> String {
    let mut reg = Registry::with_prefix("podmap");

    reg.register(
        "daemon",
        "podmapd's identity and the modes it runs in",
        Info::new(vec![
            ("node", report.node.clone()),
            ("version", report.version.clone()),
            ("mode", report.mode.clone()),
            ("cgroup_hierarchy", report.cgroup_hierarchy.clone()),
            ("cgroup_layout", report.cgroup_layout.clone()),
            ("enforcement_mode", report.enforcement_mode.clone()),
        ]),
    );

    let uptime = Gauge::<f64, AtomicU64>::default();
    uptime.set(report.uptime_seconds);
    reg.register("uptime_seconds", "Seconds since podmapd started", uptime);

    reg.register(
        "events_seen",
        "Events read from the ring buffer, by type",
        labelled("type", &report.events_seen),
    );
    reg.register(
        "attribution",
        "Attributed events by kind: container, host, unknown",
        labelled("kind", &report.attribution),
    );
    reg.register(
        "shared_counters",
        "Shared counters of the kernel programs and runtime plugins, by name",
        labelled("name", &report.shared_counters),
    );

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
            "mapping_latency_samples",
            "Create-to-mapping-ready measurements reported by the runtime plugins",
            report.mapping_latency_us.count,
        ),
        (
            "event_latency_samples",
            "Event latency measurements (kernel timestamp to client queues)",
            report.event_latency_us.count,
        ),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        reg.register(name, help, c);
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
        let g = Gauge::<u64, AtomicU64>::default();
        g.set(value);
        reg.register(name, help, g);
    }
    for (name, help, value) in [
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
        let c = Counter::<u64>::default();
        c.inc_by(value);
        reg.register(name, help, c);
    }

    if let Some(m) = &report.policies.resources {
        let g = Gauge::<u64, AtomicU64>::default();
        g.set(m.resources);
        reg.register(
            "policy_resources",
            "PodPolicy resources on the API server, mirrored into the policy directory",
            g,
        );
        let g = Gauge::<u64, AtomicU64>::default();
        g.set(m.refused.len() as u64);
        reg.register(
            "policy_resources_refused",
            "PodPolicy resources refused now (see podmap status for why)",
            g,
        );
        let c = Counter::<u64>::default();
        c.inc_by(m.errors);
        reg.register(
            "policy_resource_errors",
            "Failed watches of PodPolicy resources and failed writes of their files",
            c,
        );
    }

    reg.register(
        "mapping_latency_seconds",
        "Create-to-mapping-ready latency reported by the runtime plugins",
        quantiles(&report.mapping_latency_us),
    );
    reg.register(
        "event_latency_seconds",
        "Latency from the kernel's timestamp to the hand-off to the clients' queues",
        quantiles(&report.event_latency_us),
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    encode(&mut out, &reg).expect("encoding metrics into a String");
    out
}

/// Summary-style quantiles as a gauge family: what is reported is quantiles, not the
/// observations a histogram would need. "1" is the maximum, as in Prometheus summaries; an
/// absent quantile (no samples yet) is left out rather than shown as 0.
fn quantiles(
    summary: &LatencySummary,
) -> Family<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>> {
    let family = Family::<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>>::default();
    for (quantile, value) in [
        ("0.5", summary.p50),
        ("0.99", summary.p99),
        ("1", summary.max),
    ] {
        if let Some(us) = value {
            family
                .get_or_create(&[("quantile", quantile)])
                .set(us as f64 / 1e6);
        }
    }
    family
}

fn labelled(label: &'static str, values: &BTreeMap<String, u64>) -> Labelled {
    let family = Labelled::default();
    for (key, value) in values {
        family.get_or_create(&[(label, key.clone())]).inc_by(*value);
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> StatusReport {
        StatusReport {
            node: "node-a".into(),
            version: "0.1.0".into(),
            uptime_seconds: 12.5,
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
            reader_asleep: false,
            reader_sleeps: 7,
            reader_woken: 6,
            reader_late: 1,
            client_errors: 5,
            clients_refused: 8,
            clients_write_timeouts: 9,
            metrics_connections_refused: 10,
            containers_mapped: 6,
            pods_cached: 3,
            enforcement_mode: "lsm".into(),
            shared_counters: [("nri_mapped".to_string(), 6)].into(),
            mapping_latency_us: LatencySummary {
                count: 6,
                p50: Some(800),
                p99: Some(2500),
                max: None,
            },
            event_latency_us: LatencySummary {
                count: 100,
                p50: Some(40),
                p99: Some(300),
                max: Some(1200),
            },
            policies: podmap_proto::status::PolicyStatus {
                loaded: vec!["a (/p/a.yaml)".into(), "b (/p/b.yaml)".into()],
                errors: vec!["/p/c.yaml: spec: bad".into()],
                memberships: 4,
                read_failures: 5,
                rule_write_failures: 1,
                orphan_memberships_removed: 2,
                resources: Some(podmap_proto::status::MirrorStatus {
                    synced: true,
                    resources: 1,
                    refused: vec!["PodPolicy resource \"d\": spec: bad".into()],
                    errors: 3,
                    ..Default::default()
                }),
                ..Default::default()
            },
            pod_cache: None,
            programs: Default::default(),
        }
    }

    #[test]
    fn render_carries_every_counter() {
        let text = render(&sample_report());
        for line in [
            r#"podmap_events_seen_total{type="exec"} 10"#,
            r#"podmap_events_seen_total{type="exit"} 9"#,
            r#"podmap_attribution_total{kind="container"} 7"#,
            r#"podmap_attribution_total{kind="host"} 3"#,
            r#"podmap_shared_counters_total{name="nri_mapped"} 6"#,
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
            "podmap_clients 2",
            "podmap_containers_mapped 6",
            "podmap_pods_cached 3",
            "podmap_uptime_seconds 12.5",
            "podmap_mapping_latency_samples_total 6",
            r#"podmap_mapping_latency_seconds{quantile="0.5"} 0.0008"#,
            r#"podmap_mapping_latency_seconds{quantile="0.99"} 0.0025"#,
            "podmap_event_latency_samples_total 100",
            r#"podmap_event_latency_seconds{quantile="1"} 0.0012"#,
            "podmap_policies_loaded 2",
            "podmap_policies_refused 1",
            "podmap_policy_memberships 4",
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
        assert!(text.contains(r#"enforcement_mode="lsm""#), "{text}");
        assert!(text.contains("podmap_daemon_info{"), "{text}");
        assert!(
            !text.contains(r#"podmap_mapping_latency_seconds{quantile="1"}"#),
            "an absent max is not rendered as 0"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
