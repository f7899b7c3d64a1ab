//! One measurement: a storm under one tracer (or none), with CPU, BPF run time, delivery and
//! latency sampled around it.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::machine::{bpf_programs, BenchEnv, ProgInfo};
use super::output::lock;
use super::processes::{Cgroup, Proc};
use super::setting::{PodmapSetting, Storm};
use super::stats::{median, percentiles_ms, Percentiles};
use super::tracer::{CpuSample, Started, Tracer};
use super::{StormResult, TracerKind, IDLE_WINDOW};

#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    pub(super) round: u32,
    /// How podmapd ran (its clients and prefill mean nothing for the other tracers) and the
    /// storm.
    pub(super) setting: PodmapSetting,
    pub(super) execs_per_sec: f64,
    pub(super) storm_seconds: f64,
    /// CPU of the storm's own cgroup per exec: fork+exec+exit plus the BPF programs and
    /// wake-ups the tracer adds to the exec path.
    pub(super) storm_cpu_us_per_exec: f64,
    /// ns per `getppid`, a syscall no tracer traces, with the tracer attached and idle: what it
    /// costs every process on the node (a program on any syscall tracepoint sends every syscall
    /// through the kernel's slow path).
    pub(super) syscall_ns: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tracer: Option<TracerSample>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct TracerSample {
    /// Storm execs the tracer delivered, of `expected`.
    pub(super) delivered: u64,
    pub(super) expected: u64,
    /// Event lines of any process delivered while the CPU was measured.
    pub(super) events_in_window: u64,
    pub(super) lost: u64,
    pub(super) cpu_us: u64,
    pub(super) cpu_us_per_event: Option<f64>,
    /// The tracer's CPU with no storm running, ms per second.
    pub(super) idle_cpu_ms_per_s: f64,
    pub(super) client_cpu_us_per_event: Option<f64>,
    pub(super) peak_rss_kib: Option<u64>,
    /// Resident set once the storm is delivered: tells a start-up peak from a steady need.
    pub(super) rss_end_kib: Option<u64>,
    pub(super) latency_ms: Option<Percentiles>,
    #[serde(skip)]
    pub(super) latencies_ns: Vec<i64>,
    pub(super) bpf: Option<BpfSample>,
    /// Why `bpf` is missing.
    pub(super) bpf_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct BpfSample {
    /// All of the tracer's programs, ns per storm exec.
    pub(super) ns_per_exec: f64,
    pub(super) programs: Vec<ProgDelta>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct ProgDelta {
    pub(super) name: String,
    pub(super) runs: u64,
    pub(super) run_time_ns: u64,
}

pub(super) enum Measurement {
    Sample(Box<Sample>),
    NotInstalled(String),
}

pub(super) fn measure(
    kind: TracerKind,
    setting: &PodmapSetting,
    round: u32,
    env: &BenchEnv,
) -> anyhow::Result<Measurement> {
    let storm_cgroup = Cgroup::new(&env.cgroup2, "podmap-bench-storm")?;
    if kind == TracerKind::None {
        let syscall_ns = syscall_ns();
        let (storm, storm_cpu) = run_storm(env, &setting.storm, storm_cgroup, |_| {})?;
        return Ok(Measurement::Sample(Box::new(storm_sample(
            round, setting, storm, storm_cpu, syscall_ns, None,
        ))));
    }
    let progs_before = program_ids(env);
    let mut tracer = match Tracer::start(kind, setting, env, storm_cgroup.id())? {
        Started::Running(t) => t,
        Started::NotInstalled(reason) => return Ok(Measurement::NotInstalled(reason)),
    };
    let bpf_before =
        tracer_programs(kind, env, progs_before.as_ref()).and_then(|ids| bpf_snapshot(env, &ids));
    let idle_ms_per_s = tracer.idle_cpu(IDLE_WINDOW)?;
    // After the idle window: the tracer's start-up work (a /proc scan) is over by then.
    let syscall_ns = syscall_ns();
    let cpu_before = tracer.cpu()?;

    let storm_parent = &tracer.out.storm.parent_pid;
    let (storm, storm_cpu) = run_storm(env, &setting.storm, storm_cgroup, |pid| {
        storm_parent.store(pid, Ordering::Relaxed)
    })?;

    let cpu_after = tracer.wait_drained(storm.execs)?;
    let bpf = bpf_before.and_then(|before| {
        let ids: Vec<u32> = before.keys().copied().collect();
        bpf_snapshot(env, &ids).map(|after| bpf_delta(&before, &after, storm.execs))
    });
    let mut sample = tracer_sample(&tracer, cpu_before, cpu_after, storm.execs, bpf)?;
    sample.idle_cpu_ms_per_s = idle_ms_per_s;
    tracer.stop();
    Ok(Measurement::Sample(Box::new(storm_sample(
        round,
        setting,
        storm,
        storm_cpu,
        syscall_ns,
        Some(sample),
    ))))
}

/// ns per `getppid` (glibc does not cache it), the median of five runs of 200,000 calls.
fn syscall_ns() -> f64 {
    const CALLS: u32 = 200_000;
    let runs = (0..5).map(|_| {
        let t = std::time::Instant::now();
        for _ in 0..CALLS {
            std::hint::black_box(std::os::unix::process::parent_id());
        }
        t.elapsed().as_nanos() as f64 / f64::from(CALLS)
    });
    median(runs).unwrap_or(0.0)
}

pub(super) fn storm_sample(
    round: u32,
    setting: &PodmapSetting,
    storm: StormResult,
    storm_cpu_usec: u64,
    syscall_ns: f64,
    tracer: Option<TracerSample>,
) -> Sample {
    Sample {
        round,
        setting: *setting,
        execs_per_sec: storm.execs as f64 / storm.seconds,
        storm_seconds: storm.seconds,
        storm_cpu_us_per_exec: storm_cpu_usec as f64 / storm.execs as f64,
        syscall_ns,
        tracer,
    }
}

pub(super) fn tracer_sample(
    tracer: &Tracer,
    before: CpuSample,
    after: CpuSample,
    expected: u64,
    bpf: Result<BpfSample, String>,
) -> anyhow::Result<TracerSample> {
    let events = after.events.saturating_sub(before.events);
    let per_event = |usec: u64| (events > 0).then(|| usec as f64 / events as f64);
    let cpu_us = after.main.saturating_sub(before.main);
    let client_us = after
        .client
        .zip(before.client)
        .map(|(a, b)| a.saturating_sub(b));
    let mut latencies_ns = std::mem::take(&mut *lock(&tracer.out.latencies_ns));
    latencies_ns.sort_unstable();
    Ok(TracerSample {
        delivered: tracer.out.storm_execs.load(Ordering::Relaxed),
        expected,
        events_in_window: events,
        lost: tracer.lost()?,
        cpu_us,
        cpu_us_per_event: per_event(cpu_us),
        idle_cpu_ms_per_s: 0.0,
        client_cpu_us_per_event: client_us.and_then(per_event),
        peak_rss_kib: tracer.main.memory_kib("VmHWM"),
        rss_end_kib: tracer.main.memory_kib("VmRSS"),
        latency_ms: percentiles_ms(&latencies_ns),
        latencies_ns,
        bpf_error: bpf.as_ref().err().cloned(),
        bpf: bpf.ok(),
    })
}

/// Starts the storm driver inside the storm cgroup, tells `started` its pid before letting it
/// go, and waits for it. Returns its timing and the cgroup's CPU time.
pub(super) fn run_storm(
    env: &BenchEnv,
    storm: &Storm,
    cgroup: Cgroup,
    started: impl FnOnce(u32),
) -> anyhow::Result<(StormResult, u64)> {
    let mut cmd = Command::new(&env.self_exe);
    cmd.arg("storm-child")
        .arg("--execs")
        .arg(storm.execs.to_string())
        .arg("--workers")
        .arg(storm.workers.to_string());
    if let Some(rate) = storm.rate {
        cmd.arg("--rate").arg(rate.to_string());
    }
    cmd.arg("--binary")
        .arg(&env.storm_binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut storm = Proc::spawn("the storm", &mut cmd, cgroup)?;
    started(storm.pid());
    let mut gate = storm.child.stdin.take().context("the storm's stdin")?;
    gate.write_all(b"go\n")
        .and_then(|()| gate.flush())
        .context("starting the storm")?;
    drop(gate);
    let status = storm.wait()?;
    let mut out = String::new();
    if let Some(mut stdout) = storm.child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .context("reading the storm's result")?;
    }
    if !status.success() {
        bail!("the storm failed ({status})");
    }
    let result: StormResult = serde_json::from_str(out.trim())
        .with_context(|| format!("the storm's result line {out:?}"))?;
    let cpu = storm.cgroup.cpu_usec()?;
    Ok((result, cpu))
}

// ---- BPF run time ----

pub(super) fn program_ids(env: &BenchEnv) -> Option<Result<HashSet<u32>, String>> {
    let bpftool = env.bpftool.as_ref()?;
    Some(
        bpf_programs(bpftool)
            .map(|ps| ps.into_iter().map(|p| p.id).collect())
            .map_err(|e| format!("{e:#}")),
    )
}

/// The programs the tracer loaded: the ones that appeared since it started (podmapd's also by
/// their name, in case something else loaded programs meanwhile).
pub(super) fn tracer_programs(
    kind: TracerKind,
    env: &BenchEnv,
    before: Option<&Result<HashSet<u32>, String>>,
) -> Result<Vec<u32>, String> {
    if let Err(e) = &env.bpf_stats {
        return Err(e.clone());
    }
    let bpftool = env.bpftool.as_ref().ok_or("bpftool not installed")?;
    let before = before.ok_or("bpftool not installed")?.as_ref()?;
    let now = bpf_programs(bpftool).map_err(|e| format!("{e:#}"))?;
    let ids: Vec<u32> = now
        .into_iter()
        .filter(|p| !before.contains(&p.id))
        .filter(|p| kind != TracerKind::Podmap || p.name.starts_with("podmap_"))
        .map(|p| p.id)
        .collect();
    if ids.is_empty() {
        return Err("none of the tracer's programs found".into());
    }
    Ok(ids)
}

pub(super) fn bpf_snapshot(env: &BenchEnv, ids: &[u32]) -> Result<BTreeMap<u32, ProgInfo>, String> {
    let bpftool = env.bpftool.as_ref().ok_or("bpftool not installed")?;
    let all = bpf_programs(bpftool).map_err(|e| format!("{e:#}"))?;
    Ok(all
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| (p.id, p))
        .collect())
}

pub(super) fn bpf_delta(
    before: &BTreeMap<u32, ProgInfo>,
    after: &BTreeMap<u32, ProgInfo>,
    execs: u64,
) -> BpfSample {
    let programs: Vec<ProgDelta> = after
        .values()
        .map(|a| {
            let b = before.get(&a.id);
            ProgDelta {
                name: a.name.clone(),
                runs: a.run_cnt.saturating_sub(b.map_or(0, |b| b.run_cnt)),
                run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
            }
        })
        .collect();
    let total: u64 = programs.iter().map(|p| p.run_time_ns).sum();
    BpfSample {
        ns_per_exec: total as f64 / execs as f64,
        programs,
    }
}
