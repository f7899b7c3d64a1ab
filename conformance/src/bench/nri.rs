//! `podmap-bench nri`: podmap-nri against a private containerd 1.7, in one run:
//! - create-to-mapping-ready (START_CONTAINER reaching the plugin to the record in the map), from
//!   the plugin's log2 latency histogram in the shared counters (so figures are bucket bounds);
//! - CRI CreateContainer + StartContainer latency with the plugin registered vs with no plugin,
//!   on the same containerd, phases interleaved round by round so drift weighs on both alike.
//!
//! The containers of a phase share one pod; each is stopped and removed before the next is
//! created, so every create meets the same state. Everything is torn down on every exit path,
//! Ctrl-C included.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use podmap_bpf::layout::Counter;
use podmap_bpf::testing::PinDir;
use podmap_bpf::SharedMaps;

use crate::containerd::{
    interrupt, ContainerSpec, Containerd, NriPlugin, Options, PluginSetup, PodSpec,
};

#[derive(Debug, Clone, clap::Args)]
pub struct NriArgs {
    /// Containers created and started per phase and round.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub containers: u64,
    /// Rounds; each runs the phase without the plugin, then the one with it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Run containerd and the plugin in a pure cgroup2 mount namespace.
    #[arg(long)]
    pub pure_cgroup2: bool,
}

pub fn run(opts: &NriArgs) -> anyhow::Result<()> {
    interrupt::install();
    let pins = PinDir::new("podmap-bench-nri");
    let setup = PluginSetup::new(&pins.path)?;
    let ctrd = Containerd::start(Options {
        pure_cgroup2: opts.pure_cgroup2,
        ..Default::default()
    })?;
    let maps = SharedMaps::open(&pins.path).context("the bench's pinned maps")?;
    let version = ctrd.cri().version()?;
    eprintln!(
        "podmap-bench nri: {} {} (private instance), {} containers x {} rounds per phase, {}; \
         load average {}",
        version.runtime_name,
        version.runtime_version,
        opts.containers,
        opts.rounds,
        if opts.pure_cgroup2 {
            "pure cgroup2"
        } else {
            "this host's cgroup layout"
        },
        load_average()
    );

    let hist_before = maps.counters.latency_histogram();
    let mapped_before = maps.counters.get(Counter::NriMapped);
    let failures_before = maps.counters.get(Counter::NriFailures);
    let (mut without, mut with) = (vec![], vec![]);
    for round in 0..opts.rounds {
        without.extend(phase(&ctrd, opts.containers, &format!("bare-{round}"))?);
        let plugin = NriPlugin::start_registered(&ctrd, &setup)?;
        with.extend(phase(&ctrd, opts.containers, &format!("nri-{round}"))?);
        drop(plugin);
        eprintln!("  round {} of {} done", round + 1, opts.rounds);
    }

    let hist: Vec<u64> = maps
        .counters
        .latency_histogram()
        .iter()
        .zip(&hist_before)
        .map(|(a, b)| a - b)
        .collect();
    let mapped = maps.counters.get(Counter::NriMapped) - mapped_before;
    let failures = maps.counters.get(Counter::NriFailures) - failures_before;
    let samples: u64 = hist.iter().sum();
    ensure!(
        samples > 0,
        "the plugin recorded no create-to-mapping-ready latency (mapped {mapped}); its log:\n{}",
        setup.log_text()
    );

    println!(
        "NRI plugin (podmap-nri, external) on containerd {}:",
        version.runtime_version
    );
    println!(
        "  create-to-mapping-ready  p50 <= {}  p99 <= {}  ({samples} samples, log2 buckets; \
         target p99 <= 5 ms; NRI allows 2 s per call)",
        fmt_us(podmap_bpf::maps::histogram_percentile(&hist, 0.50)),
        fmt_us(podmap_bpf::maps::histogram_percentile(&hist, 0.99)),
    );
    println!(
        "  containers mapped {mapped} (of {} created with the plugin, plus their sandboxes), \
         plugin failures {failures}",
        opts.containers * opts.rounds
    );
    let (w50, w99) = (percentile(&without, 0.50), percentile(&without, 0.99));
    let (p50, p99) = (percentile(&with, 0.50), percentile(&with, 0.99));
    println!(
        "  CRI create+start without plugin  p50 {:.1} ms  p99 {:.1} ms  ({} containers)",
        ms(w50),
        ms(w99),
        without.len()
    );
    println!(
        "  CRI create+start with plugin     p50 {:.1} ms  p99 {:.1} ms  ({} containers)",
        ms(p50),
        ms(p99),
        with.len()
    );
    println!(
        "  with / without: p50 {:.3}  p99 {:.3}  (target <= 1.02; load average at the end {})",
        ms(p50) / ms(w50),
        ms(p99) / ms(w99),
        load_average()
    );
    Ok(())
}

/// The 1, 5 and 15 minute load averages: other work on a 2-core machine moves these figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One phase: a pod, then `n` containers each created, started (timed), stopped and removed.
fn phase(ctrd: &Containerd, n: u64, name: &str) -> anyhow::Result<Vec<Duration>> {
    let pod = ctrd.run_pod(PodSpec::new(&format!("bench-{name}")).label("app", "bench"))?;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        interrupt::check()?;
        let spec = ContainerSpec::shell_then_wait(&format!("c{i}"), "/bin/true");
        let t = Instant::now();
        let id = pod.run(&spec)?;
        out.push(t.elapsed());
        // Not measured: SIGKILL at once, so a TERM racing the shell's trap never waits.
        pod.stop_and_remove(&id, 0)?;
    }
    Ok(out)
}

/// Nearest-rank percentile of measured durations.
fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let rank = ((s.len() as f64) * p).ceil().max(1.0) as usize;
    s.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_us(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(u) if u >= 1000 => format!("{:.1} ms", u as f64 / 1e3),
        Some(u) => format!("{u} us"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
    }
}
