//! `--scaling`: whether podmapd's cost stays flat as its work grows (docs/performance.md, the
//! last three exec targets). podmapd runs under several settings, each once per round beside
//! the tracers, and each figure compares settings measured in the same rounds:
//! - 10 clients with the same filter vs 1, podmapd's CPU per delivered event (per round, then
//!   the median);
//! - CPU per event at 200 and 1,000 execs/s (paced storms) and at the machine's highest rate
//!   (one storm worker per core): the largest over the smallest of the three medians;
//! - 10,000 containers mapped and 10,000 pods cached vs 1 of each (both against the in-process
//!   API server, the storm's cgroup mapped as a container of a cached pod): CPU per event (per
//!   round, then the median) and p99 latency (pooled over rounds).

use serde::Serialize;

use super::machine::BenchEnv;
use super::measure::Sample;
use super::report::{check, Target};
use super::stats::{median, percentiles_ms};
use super::{ExecArgs, Outcome, TracerKind};

/// What the storm does.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Storm {
    pub(super) execs: u64,
    pub(super) workers: u32,
    /// Execs per second, all workers together; None: as fast as they go.
    pub(super) rate: Option<u32>,
}

/// How podmapd is run for one measurement, and the storm it sees.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct PodmapSetting {
    pub(super) clients: u32,
    /// Pods cached and containers mapped (0: standalone, the storm unmapped).
    pub(super) prefill: u32,
    pub(super) storm: Storm,
}

impl PodmapSetting {
    /// The setting of the tracer rows: the command line's.
    pub(super) fn of_args(args: &ExecArgs) -> Self {
        PodmapSetting {
            clients: args.clients,
            prefill: args.prefill,
            storm: Storm {
                execs: args.execs,
                workers: args.workers,
                rate: args.rate,
            },
        }
    }
}

/// The settings --scaling measures podmapd in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Scale {
    OneClient,
    TenClients,
    Rate200,
    Rate1000,
    MaxRate,
    OneContainer,
    TenThousand,
}

/// Containers mapped and pods cached in the large setting.
pub(super) const LARGE_PREFILL: u32 = 10_000;

impl Scale {
    pub(super) const ALL: [Scale; 7] = [
        Scale::OneClient,
        Scale::TenClients,
        Scale::Rate200,
        Scale::Rate1000,
        Scale::MaxRate,
        Scale::OneContainer,
        Scale::TenThousand,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Scale::OneClient => "podmapd, 1 client",
            Scale::TenClients => "podmapd, 10 clients",
            Scale::Rate200 => "podmapd, 200 execs/s",
            Scale::Rate1000 => "podmapd, 1,000 execs/s",
            Scale::MaxRate => "podmapd, highest rate",
            Scale::OneContainer => "podmapd, 1 container",
            Scale::TenThousand => "podmapd, 10,000 containers",
        }
    }

    /// The highest rate needs one storm worker per core; when the command line already asks
    /// for that, the 1-client setting is the highest rate and this one is not run twice.
    pub(super) fn runs(self, args: &ExecArgs, env: &BenchEnv) -> bool {
        self != Scale::MaxRate || args.workers < env.cpus
    }

    pub(super) fn setting(self, args: &ExecArgs, env: &BenchEnv) -> PodmapSetting {
        let flat_out = Storm {
            execs: args.execs,
            workers: args.workers,
            rate: None,
        };
        let paced = |rate: u32| Storm {
            execs: u64::from(rate) * u64::from(args.rate_seconds),
            workers: 1,
            rate: Some(rate),
        };
        let (clients, prefill, storm) = match self {
            Scale::OneClient => (1, 0, flat_out),
            Scale::TenClients => (10, 0, flat_out),
            Scale::Rate200 => (1, 0, paced(200)),
            Scale::Rate1000 => (1, 0, paced(1000)),
            Scale::MaxRate => (
                1,
                0,
                Storm {
                    workers: env.cpus,
                    ..flat_out
                },
            ),
            Scale::OneContainer => (1, 1, flat_out),
            Scale::TenThousand => (1, LARGE_PREFILL, flat_out),
        };
        PodmapSetting {
            clients,
            prefill,
            storm,
        }
    }
}

/// A row of the run: a tracer as the command line sets it up, or podmapd in a scaling setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RowKey {
    Tracer(TracerKind),
    Scale(Scale),
}

impl RowKey {
    pub(super) fn label(self) -> &'static str {
        match self {
            RowKey::Tracer(t) => t.label(),
            RowKey::Scale(s) => s.label(),
        }
    }
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
    by_round: Vec<(u32, f64)>,
}

#[derive(Debug, Serialize)]
pub(super) struct ScaleReport {
    pub(super) rows: Vec<ScaleRow>,
    pub(super) targets: Vec<Target>,
}

pub(super) fn build(
    outcomes: &std::collections::BTreeMap<super::scaling::RowKey, Outcome>,
) -> Option<ScaleReport> {
    let rows: Vec<ScaleRow> = outcomes
        .iter()
        .filter_map(|(key, outcome)| match (key, outcome) {
            (RowKey::Scale(s), Outcome::Measured { samples }) if !samples.is_empty() => {
                Some(row(*s, samples))
            }
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let targets = targets(&rows);
    Some(ScaleReport { rows, targets })
}

fn row(setting: Scale, samples: &[Sample]) -> ScaleRow {
    let tracers: Vec<_> = samples.iter().filter_map(|s| s.tracer.as_ref()).collect();
    let mut pooled: Vec<i64> = tracers
        .iter()
        .flat_map(|t| t.latencies_ns.iter().copied())
        .collect();
    pooled.sort_unstable();
    let latency = percentiles_ms(&pooled);
    ScaleRow {
        setting,
        label: setting.label(),
        podmap: samples[0].setting,
        execs_per_sec: median(samples.iter().map(|s| s.execs_per_sec)).unwrap_or(0.0),
        cpu_us_per_event: median(tracers.iter().filter_map(|t| t.cpu_us_per_event)),
        client_cpu_us_per_event: median(tracers.iter().filter_map(|t| t.client_cpu_us_per_event)),
        delivered: tracers
            .iter()
            .min_by_key(|t| t.delivered)
            .map(|t| (t.delivered, t.expected)),
        lost: tracers.iter().map(|t| t.lost).sum(),
        latency_p50_ms: latency.map(|l| l.p50),
        latency_p99_ms: latency.map(|l| l.p99),
        idle_cpu_ms_per_s: median(tracers.iter().map(|t| t.idle_cpu_ms_per_s)),
        by_round: samples
            .iter()
            .filter_map(|s| Some((s.round, s.tracer.as_ref()?.cpu_us_per_event?)))
            .collect(),
    }
}

/// The median over rounds of `a`'s CPU per event over `b`'s, each pair from the same round.
fn round_ratio(a: &ScaleRow, b: &ScaleRow) -> Option<f64> {
    median(a.by_round.iter().filter_map(|(round, x)| {
        let (_, y) = b.by_round.iter().find(|(r, _)| r == round)?;
        (*y > 0.0).then(|| x / y)
    }))
}

fn targets(rows: &[ScaleRow]) -> Vec<Target> {
    let get = |s: Scale| rows.iter().find(|r| r.setting == s);
    let ratio_text = |r: f64, a: &ScaleRow, b: &ScaleRow| {
        format!(
            "{r:.2}x ({} vs {} us/event)",
            super::report::opt(a.cpu_us_per_event, 2),
            super::report::opt(b.cpu_us_per_event, 2)
        )
    };
    let clients = get(Scale::TenClients)
        .zip(get(Scale::OneClient))
        .and_then(|(ten, one)| round_ratio(ten, one).map(|r| (r, ratio_text(r, ten, one))));
    // The highest rate is the 1-client setting when the command line runs one worker per core.
    let highest = get(Scale::MaxRate).or_else(|| get(Scale::OneClient));
    let flat: Vec<&ScaleRow> = [get(Scale::Rate200), get(Scale::Rate1000), highest]
        .into_iter()
        .flatten()
        .collect();
    let flatness = (flat.len() == 3)
        .then(|| {
            let v: Vec<f64> = flat.iter().filter_map(|r| r.cpu_us_per_event).collect();
            let (lo, hi) = (
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max),
            );
            (v.len() == 3 && lo > 0.0).then(|| {
                let text = flat
                    .iter()
                    .map(|r| {
                        format!(
                            "{:.0}/s {}",
                            r.execs_per_sec,
                            super::report::opt(r.cpu_us_per_event, 2)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    hi / lo,
                    format!("largest/smallest {:.2} ({text} us/event)", hi / lo),
                )
            })
        })
        .flatten();
    let large = get(Scale::TenThousand).zip(get(Scale::OneContainer));
    let prefill_cpu =
        large.and_then(|(ten, one)| round_ratio(ten, one).map(|r| (r, ratio_text(r, ten, one))));
    let prefill_p99 = large.and_then(|(ten, one)| {
        let (a, b) = (ten.latency_p99_ms?, one.latency_p99_ms?);
        (b > 0.0).then(|| (a / b, format!("{:.2}x ({a:.1} vs {b:.1} ms)", a / b)))
    });
    vec![
        check(
            "10 clients with the same filter vs 1: podmapd CPU per event",
            "<= 1.5x",
            clients,
            |r| r <= 1.5,
        ),
        check(
            "CPU per event at 200, 1,000 and the highest execs/s",
            "within 20 %: largest/smallest <= 1.20",
            flatness,
            |r| r <= 1.2,
        ),
        check(
            "10,000 containers and pods vs 1: CPU per event",
            "<= 1.10x",
            prefill_cpu,
            |r| r <= 1.1,
        ),
        check(
            "10,000 containers and pods vs 1: p99 latency",
            "<= 1.10x",
            prefill_p99,
            |r| r <= 1.1,
        ),
    ]
}

pub(super) fn render(report: &ScaleReport) -> String {
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
            super::report::opt(r.cpu_us_per_event, 2),
            super::report::opt(r.client_cpu_us_per_event, 2),
            match (r.latency_p50_ms, r.latency_p99_ms) {
                (Some(a), Some(b)) => format!("{a:.1}/{b:.1}"),
                _ => "-".into(),
            },
            super::report::opt(r.idle_cpu_ms_per_s, 2),
        ]);
    }
    let mut out = String::from(
        "\nscaling: podmapd's cost as work grows (each setting once per round, medians of rounds):\n",
    );
    out += &super::report::format_table(&cells);
    out += "\ntargets (docs/performance.md, exec events, cost that stays flat):\n";
    out += &super::report::render_targets(&report.targets);
    out
}
