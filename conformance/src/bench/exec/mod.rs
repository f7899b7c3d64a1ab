//! `podmap-bench exec`: an exec storm from a fresh cgroup, measured with no tracer, with podmapd
//! and one `podmap events` client, with a bpftrace one-liner printing each exec, and with
//! libbpf-tools execsnoop (BCC's CO-RE port; BCC's Python tools cannot run here), side by side in
//! one run (docs/performance.md, "Exec events").
//!
//! One round runs every tracer once, in the order given (none, podmap, bpftrace, execsnoop by
//! default), and the figures are medians over rounds, so drift over the run (other builds on the
//! machine, thermal, caches) weighs on every tracer alike.
//!
//! What is measured, and how:
//! - execs/s: the storm driver (this binary re-executed as `storm-child`, inside its own cgroup)
//!   times N fork+exec of /bin/true; the ratio vs none is taken per round, then the median.
//! - delivered: storm execs that reached the tracer's output. The storm execs /bin/true through
//!   a link private to the run, so an exec of /bin/true by anyone else on the host never counts:
//!   podmapd's events match by the storm cgroup's id and that path, bpftrace's lines by the path,
//!   execsnoop's by the name and the storm driver as parent. The podmap client asks for exec
//!   events only (`--podmap-types`), so every tracer delivers one line per exec.
//! - CPU per event: each tracer process runs in its own cgroup, and its cgroup v2 `cpu.stat`
//!   usage (microseconds, every thread, even exited ones) from the storm's start to the last
//!   delivered event is divided by the event lines it delivered in that window. podmapd and its
//!   client are in separate cgroups and reported separately.
//! - BPF time per exec: run_time_ns of the tracer's own programs (`bpftool prog show -j`) over the
//!   storm, divided by the storm's execs, with the kernel's BPF run-time statistics switched on
//!   for the run.
//! - latency (podmapd): the bench's receive time of each storm exec line minus the event's
//!   "time" (the kernel timestamp as wall clock), pooled over rounds.
//! - peak RSS: VmHWM of the tracer process.
//!
//! Everything the bench starts (tracers, the storm, cgroups, podmapd's pin directory and socket)
//! is torn down on every exit path, including errors and SIGINT/SIGTERM; the processes also get
//! PR_SET_PDEATHSIG so they die with the bench even when it is killed outright.

mod machine;
mod measure;
mod output;
mod prefill;
mod processes;
mod report;
mod scaling;
mod setting;
mod stats;
mod tracer;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use machine::BenchEnv;
use measure::{measure, Measurement, Sample};
use report::{opt, Report};
use setting::{PodmapSetting, RowKey, Scale};

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// fork+exec of /bin/true per storm.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub execs: u64,
    /// Rounds; each runs every tracer once, and the figures are medians over rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Print the whole report as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Tracers to compare, in the order each round runs them.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,podmap,bpftrace,execsnoop"
    )]
    pub tracers: Vec<TracerKind>,
    /// Storm processes spawning in parallel (1 matches the reference figures; the machine's
    /// highest exec rate needs one per core).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Event types the podmap client asks for (`podmap events --type`), or "all". exec keeps
    /// every tracer delivering the same events, one line per exec.
    #[arg(long, default_value = "exec")]
    pub podmap_types: String,
    /// `podmap events` clients podmapd serves, all with the same filter: the bench reads the
    /// first, the others write to /dev/null.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
    /// Paces the storm to this many execs/s, all workers together (default: as fast as it goes).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Pods on the in-process API server for podmapd's pod cache, and as many container records
    /// written through podmap-writer, the storm's cgroup mapped as the first pod's container
    /// (0: standalone podmapd, the storm's cgroup unmapped).
    #[arg(long, default_value_t = 0)]
    pub prefill: u32,
    /// Also measures how podmapd's cost grows with work, each setting once per round beside the
    /// tracers: 1 vs 10 clients, 200 and 1,000 execs/s vs the machine's highest rate, 1 vs
    /// 10,000 containers mapped and pods cached (docs/performance.md).
    #[arg(long)]
    pub scaling: bool,
    /// Seconds each rate-limited storm of --scaling lasts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_seconds: u32,
    /// podmapd binary (default: next to this binary).
    #[arg(long)]
    pub podmapd: Option<PathBuf>,
    /// podmap client binary (default: next to this binary).
    #[arg(long)]
    pub podmap: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TracerKind {
    None,
    Podmap,
    Bpftrace,
    Execsnoop,
}

impl TracerKind {
    fn label(self) -> &'static str {
        match self {
            TracerKind::None => "none",
            TracerKind::Podmap => "podmapd",
            TracerKind::Bpftrace => "bpftrace",
            TracerKind::Execsnoop => "execsnoop",
        }
    }
}

/// The hidden `storm-child` subcommand: the storm driver, run inside the storm's cgroup.
#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    #[arg(long)]
    pub execs: u64,
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Execs per second, all workers together (default: as fast as they go).
    #[arg(long)]
    pub rate: Option<u32>,
    /// What to exec (the bench passes its private link to /bin/true).
    #[arg(long, default_value = STORM_TARGET)]
    pub binary: PathBuf,
}

/// What the storm execs. It runs through a link with a name private to the run, so the peers,
/// which see every exec on the host, can tell the storm's execs from anyone else's /bin/true.
const STORM_TARGET: &str = "/bin/true";
/// The name the storm's processes get (comm), whatever the link's directory.
const STORM_COMM: &str = "true";
const EXECSNOOP: &str = "/usr/sbin/execsnoop";
/// The bpftrace one-liner of the issue: one printed line per exec.
const BPFTRACE_PROGRAM: &str =
    r#"tracepoint:sched:sched_process_exec { printf("%d %s\n", pid, str(args->filename)); }"#;

const POLL: Duration = Duration::from_millis(20);
/// How long a tracer may take to start and show it sees execs.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// After the last new event, how long the output must stay still before a tracer that has not
/// delivered everything is considered done.
const QUIET: Duration = Duration::from_secs(2);
/// Lets a freshly attached tracer finish its start-up work before the CPU window opens.
const SETTLE: Duration = Duration::from_millis(300);
/// How long the tracer's CPU is watched with no storm: the cost of a timer-driven reader that
/// the storm's events share (the peers are woken per event and cost nothing then). Long enough
/// to hold several of podmapd's once-a-second looks, so one more or less weighs little.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// How long a tracer gets to exit on SIGINT before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the benchmark and prints the table (or JSON).
pub fn run(args: &ExecArgs) -> anyhow::Result<()> {
    install_interrupt_handler();
    let env = BenchEnv::prepare(args)?;
    let rows = run_rounds(args, &env)?;
    let scaling = scaling::build(&rows);
    let report = Report::build(args, &env, rows, scaling);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding the report")?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// The storm: `execs` fork+exec of `binary` split over `workers` threads, as fast as they go.
/// Starts when a line arrives on stdin (the bench first notes this process's pid, the parent of
/// every exec of the storm); prints one JSON line with the wall time.
pub fn storm_child(args: &StormArgs) -> anyhow::Result<()> {
    let workers = u64::from(args.workers.max(1));
    let shares: Vec<u64> = (0..workers)
        .map(|i| args.execs / workers + u64::from(i < args.execs % workers))
        .collect();
    let mut go = String::new();
    io::stdin()
        .read_line(&mut go)
        .context("waiting for the start line")?;
    let start = Instant::now();
    // Each worker keeps its share of the rate on a fixed schedule from the common start, so a
    // late exec is caught up at once instead of stretching the storm.
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(workers as f64 / f64::from(r.max(1))));
    thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|&n| s.spawn(move || spawn_storm(&args.binary, n, start, interval)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow!("a storm worker panicked"))?)
    })?;
    let result = StormResult {
        execs: args.execs,
        seconds: start.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// `n` sequential spawns of `binary`, the i-th not before `start + i * interval` when paced.
/// std's Command uses posix_spawn (vfork-like) here, the cheapest fork+exec a process can do;
/// stdio is inherited so no spawn opens /dev/null.
fn spawn_storm(
    binary: &Path,
    n: u64,
    start: Instant,
    interval: Option<Duration>,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(binary);
    for i in 0..n {
        if let Some(interval) = interval {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        let status = cmd
            .status()
            .with_context(|| format!("spawning {}", binary.display()))?;
        if !status.success() {
            bail!("{} failed: {status}", binary.display());
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StormResult {
    execs: u64,
    seconds: f64,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Polls `ready` until it says yes, the timeout passes, or the bench is interrupted.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = crate::deadline::after(timeout);
    loop {
        check_interrupted()?;
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Outcome {
    Measured { samples: Vec<Sample> },
    NotInstalled { reason: String },
    Failed { error: String },
}

/// Every row a round measures: the tracers in the order given, then (with --scaling) podmapd
/// in each scaling setting. Each round starts one row further down the list, so no setting
/// always runs first or last after the same neighbour.
fn row_order(args: &ExecArgs, env: &BenchEnv) -> Vec<RowKey> {
    let mut order: Vec<RowKey> = vec![];
    for t in &args.tracers {
        if !order.contains(&RowKey::Tracer(*t)) {
            order.push(RowKey::Tracer(*t));
        }
    }
    if args.scaling {
        order.extend(
            Scale::ALL
                .iter()
                .filter(|s| s.runs(args, env.cpus))
                .map(|&s| RowKey::Scale(s)),
        );
    }
    order
}

fn run_rounds(args: &ExecArgs, env: &BenchEnv) -> anyhow::Result<BTreeMap<RowKey, Outcome>> {
    let order = row_order(args, env);
    let mut rows: BTreeMap<RowKey, Outcome> = order
        .iter()
        .map(|&t| (t, Outcome::Measured { samples: vec![] }))
        .collect();
    for round in 1..=args.rounds {
        let mut this_round = order.clone();
        this_round.rotate_left((round as usize - 1) % order.len().max(1));
        for &key in &this_round {
            let Some(Outcome::Measured { samples }) = rows.get_mut(&key) else {
                continue; // not installed, or failed in an earlier round
            };
            let (kind, setting) = match key {
                RowKey::Tracer(t) => (t, PodmapSetting::of_args(args)),
                RowKey::Scale(s) => (TracerKind::Podmap, s.setting(args, env.cpus)),
            };
            eprint!("round {round}/{}: {:<22} ", args.rounds, key.label());
            match measure(kind, &setting, round, env) {
                Ok(Measurement::Sample(sample)) => {
                    eprintln!("{}", progress_line(&sample));
                    samples.push(*sample);
                }
                Ok(Measurement::NotInstalled(reason)) => {
                    eprintln!("not installed ({reason})");
                    rows.insert(key, Outcome::NotInstalled { reason });
                }
                // podmapd is what is measured: without it the run means nothing.
                Err(e) if kind == TracerKind::Podmap || INTERRUPTED.load(Ordering::SeqCst) => {
                    eprintln!("failed");
                    return Err(e.context(format!("round {round}, {}", key.label())));
                }
                Err(e) => {
                    eprintln!("failed: {e:#}");
                    rows.insert(
                        key,
                        Outcome::Failed {
                            error: format!("{e:#}"),
                        },
                    );
                }
            }
        }
    }
    Ok(rows)
}

fn progress_line(s: &Sample) -> String {
    let mut line = format!("{:.0} execs/s", s.execs_per_sec);
    if let Some(t) = &s.tracer {
        line += &format!(
            ", {}/{} delivered, {} lost, {} us/event",
            t.delivered,
            t.expected,
            t.lost,
            opt(t.cpu_us_per_event, 2)
        );
    }
    line
}
