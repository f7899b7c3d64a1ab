//! `podmap status` as a table: every part of the report as aligned name-value rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use podmap_proto::status::{LatencySummary, ProgramsStatus, StatusReport};

use super::text::escape;

fn kv_rows(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}{v}");
    }
    out
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".to_string();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn duration_us(us: Option<u64>) -> String {
    match us {
        None => "-".to_string(),
        Some(us) if us < 1_000 => format!("{us}us"),
        Some(us) if us < 1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        Some(us) => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// How the programs' pinned links were taken over at start (docs/decisions.md #30).
fn programs(p: &ProgramsStatus) -> String {
    let mut s = match p.links.as_str() {
        "" => return "-".to_string(),
        "adopted" => "adopted the running programs (they never stopped)".to_string(),
        "replaced" => format!(
            "replaced the running programs ({}), both ran for {} us",
            p.replaced_because.as_deref().unwrap_or("they differed"),
            p.overlap_us.unwrap_or(0)
        ),
        other => other.to_string(),
    };
    s += &format!(
        "; {} links pinned under {}/links; {} events lost in kernel before this start; {} queued before this start, read before the socket opened (no client had them)",
        p.attached.len(),
        p.pinned_at,
        p.lost_kernel_before_start,
        p.backlog_read_at_start
    );
    s
}

fn latency(l: &LatencySummary) -> String {
    format!(
        "{} samples, p50 {}, p99 {}, max {}",
        l.count,
        duration_us(l.p50),
        duration_us(l.p99),
        duration_us(l.max)
    )
}

fn uptime(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// `podmap status`: the report as a two-column table, shared counters last.
pub fn status_table(r: &StatusReport) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("node", r.node.clone()),
        ("version", r.version.clone()),
        ("uptime", uptime(r.uptime_seconds)),
        ("mode", r.mode.clone()),
        (
            "cgroup hierarchy",
            if r.cgroup_layout.is_empty() {
                r.cgroup_hierarchy.clone()
            } else {
                format!("{} ({} layout)", r.cgroup_hierarchy, r.cgroup_layout)
            },
        ),
        ("enforcement", r.enforcement_mode.clone()),
        ("programs", programs(&r.programs)),
        ("containers mapped", r.containers_mapped.to_string()),
        ("pods cached", r.pods_cached.to_string()),
        ("events seen", counts(&r.events_seen)),
        ("events delivered", r.events_delivered.to_string()),
        ("events lost in kernel", r.events_lost_kernel.to_string()),
        (
            "events lost to slow clients",
            r.events_lost_slow_clients.to_string(),
        ),
        (
            "events held for mapping",
            format!(
                "{} ({} timed out, {} released early at a bound); {} now, peak {} (bounds {} per cgroup, {} in all)",
                r.events_held,
                r.events_held_timed_out,
                r.events_held_released_early,
                r.events_held_now,
                r.events_held_peak,
                r.events_held_limits.per_cgroup,
                r.events_held_limits.total
            ),
        ),
        (
            "container-shaped cgroups",
            format!(
                "believed below {}; {} events outside (attributed to the host), {} unknown events not joined (the pod cache has their container under another pod)",
                r.pod_parents.join(", "),
                r.shaped_outside_pod_parents,
                r.unknown_pod_mismatch
            ),
        ),
        ("attribution", counts(&r.attribution)),
        (
            "event reader",
            format!(
                "{}; slept {} times when idle, woken {} times by a record, {} late records",
                if r.reader_asleep { "asleep" } else { "polling" },
                r.reader_sleeps,
                r.reader_woken,
                r.reader_late
            ),
        ),
        ("clients connected", r.clients_connected.to_string()),
        ("client errors", r.client_errors.to_string()),
        (
            "clients dropped",
            format!(
                "{} refused over the cap, {} stopped reading (write timed out)",
                r.clients_refused, r.clients_write_timeouts
            ),
        ),
        (
            "metrics refused",
            format!("{} connections over the cap", r.metrics_connections_refused),
        ),
        ("records unreadable", r.records_unreadable.to_string()),
        ("processes untracked", r.processes_untracked.to_string()),
        ("mapping latency", latency(&r.mapping_latency_us)),
        ("event latency", latency(&r.event_latency_us)),
        (
            "pod cache",
            match &r.pod_cache {
                None => "off (standalone)".to_string(),
                Some(c) => format!(
                    "{}, {} since last event, {} relists, {} watch restarts, {} objects skipped, {} errors",
                    if c.synced { "synced" } else { "NOT synced" },
                    c.staleness_seconds.map_or("-".to_string(), |s| format!("{s:.1}s")),
                    c.relists,
                    c.watch_restarts,
                    c.objects_skipped,
                    c.errors
                ),
            },
        ),
        (
            "policies",
            format!(
                "{} loaded from {}, {} memberships ({} orphans removed), {} refused, {} failed reads, {} rule entries not written",
                r.policies.loaded.len(),
                if r.policies.dir.is_empty() { "-" } else { &r.policies.dir },
                r.policies.memberships,
                r.policies.orphan_memberships_removed,
                r.policies.errors.len(),
                r.policies.read_failures,
                r.policies.rule_write_failures
            ),
        ),
        (
            "policy resources",
            match &r.policies.resources {
                None if r.mode == "kubernetes" => "off (--no-policy-resources)".to_string(),
                None => "off (standalone)".to_string(),
                Some(m) => format!(
                    "{}, {} resources, {} written, {} removed, {} refused, {} errors{}",
                    if m.synced { "synced" } else { "NOT synced" },
                    m.resources,
                    m.writes,
                    m.removals,
                    m.refused.len(),
                    m.errors,
                    m.last_error
                        .as_deref()
                        .map_or(String::new(), |e| format!(" (last: {})", escape(e)))
                ),
            },
        ),
    ];
    if r.shared_counters.is_empty() {
        rows.push(("shared counters", "-".to_string()));
    }
    let mut out = kv_rows(&rows);
    let refused_resources = r.policies.resources.iter().flat_map(|m| &m.refused);
    for e in r.policies.errors.iter().chain(refused_resources) {
        let _ = writeln!(out, "  refused: {}", escape(e));
    }
    if !r.shared_counters.is_empty() {
        out.push_str("shared counters\n");
        let shared: Vec<(&str, String)> = r
            .shared_counters
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        for line in kv_rows(&shared).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_shows_the_counters() {
        let report = StatusReport {
            node: "node-a".into(),
            uptime_seconds: 3725.0,
            events_seen: [("exec".to_string(), 10)].into(),
            events_lost_slow_clients: 4,
            shared_counters: [("hook_mapped".to_string(), 2)].into(),
            mapping_latency_us: LatencySummary {
                count: 2,
                p50: Some(800),
                p99: Some(2500),
                max: Some(1_500_000),
                ..Default::default()
            },
            ..Default::default()
        };
        let t = status_table(&report);
        assert!(t.contains("uptime                       1h 2m 5s\n"), "{t}");
        assert!(t.contains("events seen                  exec=10\n"), "{t}");
        assert!(t.contains("events lost to slow clients  4\n"), "{t}");
        assert!(
            t.contains("2 samples, p50 800us, p99 2.5ms, max 1.50s"),
            "{t}"
        );
        assert!(t.contains("shared counters\n  hook_mapped  2\n"), "{t}");
    }

    #[test]
    fn status_table_says_how_the_pinned_programs_were_taken_over() {
        let mut report = StatusReport {
            programs: podmap_proto::status::ProgramsStatus {
                links: "adopted".into(),
                pinned_at: "/sys/fs/bpf/podmap".into(),
                attached: vec!["podmap_exec".into(), "podmap_exit".into()],
                lost_kernel_before_start: 7,
                ..Default::default()
            },
            ..Default::default()
        };
        let t = status_table(&report);
        assert!(
            t.contains("adopted the running programs (they never stopped); 2 links pinned under /sys/fs/bpf/podmap/links; 7 events lost in kernel before this start; 0 queued before this start, read before the socket opened (no client had them)\n"),
            "{t}"
        );
        report.programs.links = "replaced".into();
        report.programs.replaced_because = Some("podmap_exec: tag 1, this podmapd's 2".into());
        report.programs.overlap_us = Some(583);
        let t = status_table(&report);
        assert!(
            t.contains("replaced the running programs (podmap_exec: tag 1, this podmapd's 2), both ran for 583 us;"),
            "{t}"
        );
    }

    #[test]
    fn status_table_names_refused_policies_and_counts_failed_reads() {
        let report = StatusReport {
            policies: podmap_proto::status::PolicyStatus {
                dir: "/p".into(),
                loaded: vec!["a (/p/a.yaml)".into()],
                errors: vec![
                    "/p/b.yaml: metadata.name: policy \"p179bb\" has the same id (0xf52b9f2e) as policy \"p54848\" in /p/c.yaml; all are refused until they are renamed".into(),
                    "/p: : reading the directory: Not a directory (os error 20); the 1 policies last loaded stay active".into(),
                ],
                memberships: 3,
                read_failures: 7,
                rule_write_failures: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let t = status_table(&report);
        assert!(
            t.contains("1 loaded from /p, 3 memberships (0 orphans removed), 2 refused, 7 failed reads, 2 rule entries not written\n"),
            "{t}"
        );
        assert!(
            t.contains("  refused: /p/b.yaml: metadata.name: policy \"p179bb\" has the same id"),
            "{t}"
        );
        assert!(
            t.contains("  refused: /p: : reading the directory: Not a directory"),
            "{t}"
        );
    }
}
