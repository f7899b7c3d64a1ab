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

use super::measure::Sample;
use super::report::{check, opt, ScaleReport, ScaleRow, Target};
use super::setting::{RowKey, Scale};
use super::stats::{median, percentiles_ms};
use super::Outcome;

pub(super) fn build(outcomes: &std::collections::BTreeMap<RowKey, Outcome>) -> Option<ScaleReport> {
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
    // The ratio pairs settings of the same round, so it need not equal the medians' ratio.
    let ratio_text = |r: f64, a: &ScaleRow, b: &ScaleRow| {
        format!(
            "{r:.2}x, the median of the rounds' ratios (medians {} vs {} us/event)",
            opt(a.cpu_us_per_event, 2),
            opt(b.cpu_us_per_event, 2)
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
                    .map(|r| format!("{:.0}/s {}", r.execs_per_sec, opt(r.cpu_us_per_event, 2)))
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
