//! The report: per-tracer summaries over rounds, the tables beside the peers, the notes and the
//! targets checked.

use std::collections::BTreeMap;
use std::thread::{self};

use serde::Serialize;

use super::machine::BenchEnv;
use super::measure::{BpfSample, Sample, TracerSample};
use super::setting::{PodmapSetting, RowKey, Scale};
use super::stats::{median, percentiles_ms, Percentiles};
use super::{ExecArgs, Outcome, TracerKind, STORM_TARGET};

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) machine: Machine,
    pub(super) execs: u64,
    pub(super) rounds: u32,
    pub(super) workers: u32,
    pub(super) podmap_event_types: String,
    pub(super) clients: u32,
    pub(super) rate: Option<u32>,
    pub(super) prefill: u32,
    /// The load average when the report was made: the bench shares the machine.
    pub(super) load_average: String,
    pub(super) rows: Vec<Row>,
    pub(super) targets: Vec<Target>,
    /// With --scaling.
    pub(super) scaling: Option<ScaleReport>,
}

#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub(super) cpus: usize,
    pub(super) kernel: String,
}

#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub(super) tracer: TracerKind,
    pub(super) label: &'static str,
    #[serde(flatten)]
    pub(super) outcome: Outcome,
    pub(super) summary: Option<Summary>,
}

/// Medians over rounds, except where a worst case or a pooled figure is the honest one.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Summary {
    pub(super) execs_per_sec: f64,
    /// Median of the per-round ratios to the same round's no-tracer storm.
    pub(super) ratio_vs_none: Option<f64>,
    pub(super) storm_cpu_us_per_exec: f64,
    /// ns per `getppid` with the tracer attached and idle.
    pub(super) syscall_ns: f64,
    /// The worst round.
    pub(super) delivered: Option<u64>,
    pub(super) expected: Option<u64>,
    /// Over all rounds.
    pub(super) lost: Option<u64>,
    pub(super) cpu_us_per_event: Option<f64>,
    pub(super) client_cpu_us_per_event: Option<f64>,
    pub(super) idle_cpu_ms_per_s: Option<f64>,
    /// The largest over rounds.
    pub(super) peak_rss_mib: Option<f64>,
    pub(super) rss_end_mib: Option<f64>,
    /// Pooled over rounds.
    pub(super) latency_ms: Option<Percentiles>,
    pub(super) bpf_ns_per_exec: Option<f64>,
    /// Median ns per run, by program name.
    pub(super) bpf_ns_per_run: BTreeMap<String, f64>,
    pub(super) bpf_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Target {
    pub(super) figure: &'static str,
    pub(super) target: &'static str,
    pub(super) value: Option<String>,
    pub(super) pass: Option<bool>,
}

impl Report {
    pub(super) fn build(
        args: &ExecArgs,
        env: &BenchEnv,
        mut all: BTreeMap<RowKey, Outcome>,
        scaling: Option<ScaleReport>,
    ) -> Self {
        let mut outcomes: BTreeMap<TracerKind, Outcome> = BTreeMap::new();
        all.retain(|k, _| matches!(k, RowKey::Tracer(_)));
        for (key, outcome) in all {
            if let RowKey::Tracer(t) = key {
                outcomes.insert(t, outcome);
            }
        }
        let none: BTreeMap<u32, f64> = match outcomes.get(&TracerKind::None) {
            Some(Outcome::Measured { samples }) => {
                samples.iter().map(|s| (s.round, s.execs_per_sec)).collect()
            }
            _ => BTreeMap::new(),
        };
        let mut rows: Vec<Row> = outcomes
            .into_iter()
            .map(|(tracer, outcome)| Row {
                tracer,
                label: tracer.label(),
                summary: match &outcome {
                    Outcome::Measured { samples } if !samples.is_empty() => {
                        Some(summarize(samples, &none))
                    }
                    _ => None,
                },
                outcome,
            })
            .collect();
        let position = |t: &TracerKind| args.tracers.iter().position(|x| x == t);
        rows.sort_by_key(|r| position(&r.tracer));
        let summary_of = |t: TracerKind| {
            rows.iter()
                .find(|r| r.tracer == t)
                .and_then(|r| r.summary.clone())
        };
        let podmap = summary_of(TracerKind::Podmap);
        let execsnoop = summary_of(TracerKind::Execsnoop);
        Report {
            machine: Machine {
                cpus: thread::available_parallelism().map_or(0, |n| n.get()),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
            },
            execs: args.execs,
            rounds: args.rounds,
            workers: args.workers,
            podmap_event_types: env.podmap_types.clone().unwrap_or_else(|| "all".into()),
            clients: args.clients,
            rate: args.rate,
            prefill: args.prefill,
            load_average: load_average(),
            rows,
            targets: targets(podmap.as_ref(), execsnoop.as_ref()),
            scaling,
        }
    }

    pub(super) fn render(&self) -> String {
        let mut out = format!(
            "exec storm: {} fork+exec of {STORM_TARGET} (via a private link) from a fresh cgroup, {} worker(s), {} round(s), medians of rounds\n\
             machine: {} CPUs, Linux {}, load average {}; podmap client: podmap events -o json (types: {}){}\n\n",
            self.execs,
            self.workers,
            self.rounds,
            self.machine.cpus,
            self.machine.kernel,
            self.load_average,
            self.podmap_event_types,
            self.setting_note(),
        );
        out += &render_table(&self.rows);
        out += "\n";
        out += &render_bpf(&self.rows);
        out += &render_notes(&self.rows);
        out += "\ntargets (docs/performance.md, exec events):\n";
        out += &render_targets(&self.targets);
        if let Some(s) = &self.scaling {
            out += &render_scaling(s);
        }
        out
    }

    /// What the tracer rows' podmapd ran with, where it differs from the defaults.
    fn setting_note(&self) -> String {
        let mut parts = vec![];
        if self.clients > 1 {
            parts.push(format!("{} clients", self.clients));
        }
        if let Some(r) = self.rate {
            parts.push(format!("storm paced at {r} execs/s"));
        }
        if self.prefill > 0 {
            parts.push(format!(
                "{} containers mapped and pods cached",
                self.prefill
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("; {}", parts.join(", "))
        }
    }
}

pub(super) fn render_targets(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        let verdict = match t.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "N/A ",
        };
        out += &format!(
            "{verdict}  {}: {} (target {})\n",
            t.figure,
            t.value.as_deref().unwrap_or("not measured"),
            t.target
        );
    }
    out
}

/// /proc/loadavg's three averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(super) fn summarize(samples: &[Sample], none: &BTreeMap<u32, f64>) -> Summary {
    let ratios: Vec<f64> = samples
        .iter()
        .filter_map(|s| none.get(&s.round).map(|n| s.execs_per_sec / n))
        .collect();
    let tracers: Vec<&TracerSample> = samples.iter().filter_map(|s| s.tracer.as_ref()).collect();
    let mut summary = Summary {
        execs_per_sec: median(samples.iter().map(|s| s.execs_per_sec)).unwrap_or(0.0),
        ratio_vs_none: median(ratios.iter().copied()),
        storm_cpu_us_per_exec: median(samples.iter().map(|s| s.storm_cpu_us_per_exec))
            .unwrap_or(0.0),
        syscall_ns: median(samples.iter().map(|s| s.syscall_ns)).unwrap_or(0.0),
        ..Summary::default()
    };
    if tracers.is_empty() {
        return summary;
    }
    let worst = tracers
        .iter()
        .min_by_key(|t| t.delivered)
        .expect("non-empty");
    summary.delivered = Some(worst.delivered);
    summary.expected = Some(worst.expected);
    summary.lost = Some(tracers.iter().map(|t| t.lost).sum());
    summary.cpu_us_per_event = median(tracers.iter().filter_map(|t| t.cpu_us_per_event));
    summary.client_cpu_us_per_event =
        median(tracers.iter().filter_map(|t| t.client_cpu_us_per_event));
    summary.idle_cpu_ms_per_s = median(tracers.iter().map(|t| t.idle_cpu_ms_per_s));
    let max_mib = |kib: fn(&TracerSample) -> Option<u64>| {
        tracers
            .iter()
            .filter_map(|t| kib(t))
            .max()
            .map(|k| k as f64 / 1024.0)
    };
    summary.peak_rss_mib = max_mib(|t| t.peak_rss_kib);
    summary.rss_end_mib = max_mib(|t| t.rss_end_kib);
    let mut pooled: Vec<i64> = tracers
        .iter()
        .flat_map(|t| t.latencies_ns.iter().copied())
        .collect();
    pooled.sort_unstable();
    summary.latency_ms = percentiles_ms(&pooled);
    let bpf: Vec<&BpfSample> = tracers.iter().filter_map(|t| t.bpf.as_ref()).collect();
    summary.bpf_ns_per_exec = median(bpf.iter().map(|b| b.ns_per_exec));
    summary.bpf_error = tracers.iter().find_map(|t| t.bpf_error.clone());
    let mut per_run: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in bpf.iter().flat_map(|b| &b.programs) {
        if p.runs > 0 {
            let v = p.run_time_ns as f64 / p.runs as f64;
            per_run.entry(p.name.clone()).or_default().push(v);
        }
    }
    summary.bpf_ns_per_run = per_run
        .into_iter()
        .filter_map(|(k, v)| median(v.into_iter()).map(|m| (k, m)))
        .collect();
    summary
}

pub(super) fn render_table(rows: &[Row]) -> String {
    let header = [
        "tracer",
        "execs/s",
        "vs none",
        "delivered/expected (worst)",
        "lost (all rounds)",
        "tracer CPU us/event",
        "client CPU us/event",
        "peak RSS MiB",
        "latency p50/p99 ms",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for row in rows {
        let mut line = vec![row.label.to_string()];
        match (&row.outcome, &row.summary) {
            (Outcome::NotInstalled { .. }, _) => line.push("not installed".into()),
            (Outcome::Failed { error }, _) => line.push(format!("failed: {}", first_line(error))),
            (Outcome::Measured { .. }, None) => line.push("no rounds".into()),
            (Outcome::Measured { .. }, Some(s)) => line.extend(summary_cells(row.tracer, s)),
        }
        cells.push(line);
    }
    format_table(&cells)
}

pub(super) fn summary_cells(kind: TracerKind, s: &Summary) -> Vec<String> {
    let dash = || "-".to_string();
    let tracer = kind != TracerKind::None;
    vec![
        format!("{:.0}", s.execs_per_sec),
        s.ratio_vs_none.map_or_else(dash, |r| format!("{r:.3}")),
        match (s.delivered, s.expected) {
            (Some(d), Some(e)) => format!("{d}/{e}"),
            _ => dash(),
        },
        s.lost.map_or_else(dash, |l| l.to_string()),
        opt(s.cpu_us_per_event, 2),
        opt(s.client_cpu_us_per_event, 2),
        opt(s.peak_rss_mib, 1),
        match s.latency_ms {
            Some(l) => format!("{:.1}/{:.1}", l.p50, l.p99),
            None if tracer => "n/a".into(),
            None => dash(),
        },
    ]
}

pub(super) fn format_table(cells: &[Vec<String>]) -> String {
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    // Rows cut short (not installed, failed) share only the first column's width.
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            cells
                .iter()
                .filter(|r| c == 0 || r.len() == cols)
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in cells {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, s)| match (i, row.len() == cols) {
                (0, _) => format!("{s:<w$}", w = width[0]),
                (_, true) => format!("{s:>w$}", w = width[i]),
                (_, false) => s.clone(),
            })
            .collect();
        out += line.join(" | ").trim_end();
        out.push('\n');
    }
    out
}

pub(super) fn render_bpf(rows: &[Row]) -> String {
    let mut parts = vec![];
    for row in rows.iter().filter(|r| r.tracer != TracerKind::None) {
        let Some(s) = &row.summary else { continue };
        match s.bpf_ns_per_exec {
            Some(ns) => {
                let progs: Vec<String> = s
                    .bpf_ns_per_run
                    .iter()
                    .map(|(name, ns)| format!("{name} {:.2}", ns / 1000.0))
                    .collect();
                parts.push(format!(
                    "{} {:.2} us (us per run: {})",
                    row.label,
                    ns / 1000.0,
                    progs.join(", ")
                ));
            }
            None => parts.push(format!(
                "{} n/a ({})",
                row.label,
                s.bpf_error.as_deref().unwrap_or("not measured")
            )),
        }
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "BPF run time per exec (kernel BPF stats, all of the tracer's programs / storm execs, median):\n  {}\n",
        parts.join("\n  ")
    )
}

pub(super) fn render_notes(rows: &[Row]) -> String {
    let storm: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.summary
                .as_ref()
                .map(|s| format!("{} {:.0}", r.label, s.storm_cpu_us_per_exec))
        })
        .collect();
    let mut out = format!(
        "storm CPU per exec, us (fork+exec+exit and what the tracer adds to it): {}\n",
        storm.join(", ")
    );
    let syscall: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.summary
                .as_ref()
                .map(|s| format!("{} {:.0}", r.label, s.syscall_ns))
        })
        .collect();
    out += &format!(
        "a syscall no tracer traces (getppid), ns with the tracer attached and idle (a program on any syscall tracepoint slows every syscall on the node): {}\n",
        syscall.join(", ")
    );
    let idle: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let ms = r.summary.as_ref()?.idle_cpu_ms_per_s?;
            Some(format!("{} {ms:.2}", r.label))
        })
        .collect();
    if !idle.is_empty() {
        out += &format!(
            "tracer CPU with no storm, ms/s (a polling reader's fixed cost, shared by the storm's events): {}\n",
            idle.join(", ")
        );
    }
    let rss: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let s = r.summary.as_ref()?;
            Some(format!(
                "{} {:.1}/{:.1}",
                r.label, s.peak_rss_mib?, s.rss_end_mib?
            ))
        })
        .collect();
    if !rss.is_empty() {
        out += &format!(
            "RSS MiB, peak (VmHWM) / after the storm (VmRSS): {}\n",
            rss.join(", ")
        );
    }
    for row in rows {
        if let Outcome::Failed { error } = &row.outcome {
            out += &format!("{} failed:\n{error}\n", row.label);
        }
    }
    out
}

/// A target line: the figure's value (number to judge, text to print) and the test it must pass.
pub(super) fn check(
    figure: &'static str,
    target: &'static str,
    value: Option<(f64, String)>,
    ok: fn(f64) -> bool,
) -> Target {
    Target {
        figure,
        target,
        pass: value.as_ref().map(|(v, _)| ok(*v)),
        value: value.map(|(_, s)| s),
    }
}

/// podmapd's CPU per event against its target: the share of libbpf-tools execsnoop's when
/// execsnoop ran in the same rounds (ratios carry over from one machine to another; the targets
/// give 3 us as about 0.2x execsnoop's on the machine they were set on), else the absolute
/// figure.
fn cpu_per_event(p: Option<&Summary>, execsnoop: Option<&Summary>) -> Target {
    let ours = p.and_then(|s| s.cpu_us_per_event);
    let theirs = execsnoop.and_then(|s| s.cpu_us_per_event);
    match (ours, theirs) {
        (Some(v), Some(e)) if e > 0.0 => check(
            "podmapd CPU per delivered event, vs libbpf-tools execsnoop in the same run",
            "<= 0.2x",
            Some((
                v / e,
                format!("{v:.2} us, {:.2}x execsnoop's {e:.2} us", v / e),
            )),
            |r| r <= 0.2,
        ),
        _ => check(
            "podmapd CPU per delivered event (execsnoop not measured: the absolute figure)",
            "<= 3 us",
            ours.map(|v| (v, format!("{v:.2} us"))),
            |v| v <= 3.0,
        ),
    }
}

pub(super) fn targets(p: Option<&Summary>, execsnoop: Option<&Summary>) -> Vec<Target> {
    let delivered = p.and_then(|s| Some((s.delivered?, s.expected?)));
    vec![
        check(
            "execs/s with podmapd and one client vs no tracer",
            ">= 0.97",
            p.and_then(|s| s.ratio_vs_none)
                .map(|r| (r, format!("{r:.3}"))),
            |r| r >= 0.97,
        ),
        cpu_per_event(p, execsnoop),
        check(
            "time inside podmapd's BPF programs per exec",
            "<= 2 us",
            p.and_then(|s| s.bpf_ns_per_exec)
                .map(|ns| (ns / 1000.0, format!("{:.2} us", ns / 1000.0))),
            |v| v <= 2.0,
        ),
        check(
            "events lost (all rounds)",
            "0",
            p.and_then(|s| s.lost).map(|l| (l as f64, l.to_string())),
            |v| v == 0.0,
        ),
        check(
            "storm execs delivered by podmapd (worst round)",
            ">= 99.9 %",
            delivered.map(|(d, e)| {
                let pct = 100.0 * d as f64 / e as f64;
                (pct, format!("{pct:.2} % ({d}/{e})"))
            }),
            |pct| pct >= 99.9,
        ),
        check(
            "kernel timestamp to client, p99",
            "<= 20 ms",
            p.and_then(|s| s.latency_ms)
                .map(|l| (l.p99, format!("{:.1} ms", l.p99))),
            |v| v <= 20.0,
        ),
        check(
            "podmapd peak RSS",
            "<= 20 MiB",
            p.and_then(|s| s.peak_rss_mib)
                .map(|m| (m, format!("{m:.1} MiB"))),
            |v| v <= 20.0,
        ),
        check(
            "podmapd CPU with no storm (median of rounds)",
            "<= 0.5 ms/s",
            p.and_then(|s| s.idle_cpu_ms_per_s)
                .map(|v| (v, format!("{v:.2} ms/s"))),
            |v| v <= 0.5,
        ),
    ]
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

pub(super) fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// One scaling setting's figures, medians over rounds.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ScaleRow {
    pub(super) setting: Scale,
    pub(super) label: &'static str,
    pub(super) podmap: PodmapSetting,
    pub(super) execs_per_sec: f64,
    pub(super) cpu_us_per_event: Option<f64>,
    pub(super) client_cpu_us_per_event: Option<f64>,
    /// The worst round.
    pub(super) delivered: Option<(u64, u64)>,
    pub(super) lost: u64,
    pub(super) latency_p50_ms: Option<f64>,
    pub(super) latency_p99_ms: Option<f64>,
    pub(super) idle_cpu_ms_per_s: Option<f64>,
    /// CPU per event by round, for the per-round ratios.
    #[serde(skip)]
    pub(super) by_round: Vec<(u32, f64)>,
}

#[derive(Debug, Serialize)]
pub(super) struct ScaleReport {
    pub(super) rows: Vec<ScaleRow>,
    pub(super) targets: Vec<Target>,
}

/// The scaling settings' table and targets.
fn render_scaling(report: &ScaleReport) -> String {
    let mut cells: Vec<Vec<String>> = vec![[
        "setting",
        "execs/s",
        "clients",
        "containers/pods",
        "delivered (worst)",
        "lost",
        "podmapd CPU us/event",
        "client CPU us/event",
        "latency p50/p99 ms",
        "idle ms/s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()];
    for r in &report.rows {
        cells.push(vec![
            r.label.to_string(),
            format!("{:.0}", r.execs_per_sec),
            r.podmap.clients.to_string(),
            r.podmap.prefill.to_string(),
            r.delivered
                .map_or_else(|| "-".into(), |(d, e)| format!("{d}/{e}")),
            r.lost.to_string(),
            opt(r.cpu_us_per_event, 2),
            opt(r.client_cpu_us_per_event, 2),
            match (r.latency_p50_ms, r.latency_p99_ms) {
                (Some(a), Some(b)) => format!("{a:.1}/{b:.1}"),
                _ => "-".into(),
            },
            opt(r.idle_cpu_ms_per_s, 2),
        ]);
    }
    let mut out = String::from(
        "\nscaling: podmapd's cost as work grows (each setting once per round, medians of rounds):\n",
    );
    out += &format_table(&cells);
    out += "\ntargets (docs/performance.md, exec events, cost that stays flat):\n";
    out += &render_targets(&report.targets);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU per event is judged as a share of execsnoop's when execsnoop ran beside it, and
    /// as the absolute figure when it did not; idle CPU is judged too.
    #[test]
    fn cpu_targets_are_judged_against_the_same_run() {
        let summary = |cpu: f64, idle: f64| Summary {
            cpu_us_per_event: Some(cpu),
            idle_cpu_ms_per_s: Some(idle),
            ..Summary::default()
        };
        let find = |ts: &[Target], what: &str| {
            ts.iter()
                .find(|t| t.figure.starts_with(what))
                .map(|t| (t.pass, t.value.clone().unwrap_or_default()))
                .unwrap()
        };
        let podmap = summary(5.0, 0.4);
        let slow_peer = summary(30.0, 0.6);
        let ts = targets(Some(&podmap), Some(&slow_peer));
        let (pass, value) = find(&ts, "podmapd CPU per delivered event");
        assert_eq!(pass, Some(true), "{value}");
        assert!(value.contains("0.17x execsnoop's 30.00 us"), "{value}");
        let fast_peer = summary(20.0, 0.6);
        let ts = targets(Some(&podmap), Some(&fast_peer));
        assert_eq!(find(&ts, "podmapd CPU per delivered event").0, Some(false));
        let ts = targets(Some(&podmap), None);
        let (pass, value) = find(&ts, "podmapd CPU per delivered event");
        assert_eq!((pass, value.as_str()), (Some(false), "5.00 us"));
        assert_eq!(find(&ts, "podmapd CPU with no storm").0, Some(true));
        let busy = summary(2.0, 0.7);
        let ts = targets(Some(&busy), None);
        assert_eq!(find(&ts, "podmapd CPU per delivered event").0, Some(true));
        assert_eq!(find(&ts, "podmapd CPU with no storm").0, Some(false));
    }

    #[test]
    fn table_columns_align() {
        let cells = vec![
            vec!["a".to_string(), "1".into()],
            vec!["long".to_string(), "100".into()],
            vec!["x".to_string(), "not installed".into()],
            vec!["y".to_string(), "2".into(), "3".into()],
        ];
        let text = format_table(&cells);
        assert_eq!(
            text,
            "a    | 1\nlong | 100\nx    | not installed\ny    | 2 | 3\n"
        );
    }
}
