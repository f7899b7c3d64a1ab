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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use podmap_bpf::cgroup::CgroupLayout;
use podmap_bpf::testing::{PinDir, TestCgroup};

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

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
    /// What to exec (the bench passes its private link to /bin/true).
    #[arg(long, default_value = STORM_TARGET)]
    pub binary: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Fixed settings
// ---------------------------------------------------------------------------------------------

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
/// the storm's events share (the peers are woken per event and cost nothing then).
const IDLE_WINDOW: Duration = Duration::from_secs(1);
/// How long a tracer gets to exit on SIGINT before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Runs the benchmark and prints the table (or JSON).
pub fn run(args: &ExecArgs) -> anyhow::Result<()> {
    install_interrupt_handler();
    let env = BenchEnv::prepare(args)?;
    let rows = run_rounds(args, &env)?;
    let report = Report::build(args, &env, rows);
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
    thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|&n| s.spawn(move || spawn_storm(&args.binary, n)))
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

/// `n` sequential spawns of `binary`. std's Command uses posix_spawn (vfork-like) here, the
/// cheapest fork+exec a process can do; stdio is inherited so no spawn opens /dev/null.
fn spawn_storm(binary: &Path, n: u64) -> anyhow::Result<()> {
    let mut cmd = Command::new(binary);
    for _ in 0..n {
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

// ---------------------------------------------------------------------------------------------
// Interruption: SIGINT/SIGTERM set a flag that every wait checks, so the stack unwinds through
// the guards' Drop (which stop the tracers and remove the cgroups and pins).
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// The machine: binaries, the cgroup v2 mount, BPF statistics
// ---------------------------------------------------------------------------------------------

struct BenchEnv {
    /// Where private cgroups are made: the cgroup2 mount (/sys/fs/cgroup/unified on hybrid hosts).
    cgroup2: PathBuf,
    self_exe: PathBuf,
    podmapd: PathBuf,
    podmap: PathBuf,
    bpftrace: Option<PathBuf>,
    execsnoop: Option<PathBuf>,
    stdbuf: Option<PathBuf>,
    bpftool: Option<PathBuf>,
    /// Keeps the kernel's BPF run-time statistics on while the bench runs; or why it cannot.
    bpf_stats: Result<BpfStatsSwitch, String>,
    podmap_types: Option<String>,
    /// The storm's private link to /bin/true, in a directory removed with the env.
    storm_binary: PathBuf,
    _storm_dir: tempfile::TempDir,
    execs: u64,
    workers: u32,
}

impl BenchEnv {
    fn prepare(args: &ExecArgs) -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "run as root: the tracers load eBPF programs and the storm runs in its own cgroup"
            );
        }
        let self_exe = std::env::current_exe().context("locating the podmap-bench binary")?;
        let sibling = |name: &str| self_exe.with_file_name(name);
        let podmapd = args.podmapd.clone().unwrap_or_else(|| sibling("podmapd"));
        let podmap = args.podmap.clone().unwrap_or_else(|| sibling("podmap"));
        if args.tracers.contains(&TracerKind::Podmap) {
            for bin in [&podmapd, &podmap] {
                if !bin.is_file() {
                    bail!(
                        "{} not found (build it: cargo build --release -p podmap-daemon, or pass --podmapd/--podmap)",
                        bin.display()
                    );
                }
            }
        }
        let layout = CgroupLayout::detect(Path::new("/sys/fs/cgroup"), "memory")
            .context("detecting the cgroup layout under /sys/fs/cgroup")?;
        let cgroup2 = layout.unified.clone().ok_or_else(|| {
            anyhow!("no cgroup2 hierarchy under /sys/fs/cgroup: the bench needs cgroup2's cpu.stat")
        })?;
        let podmap_types = match args.podmap_types.as_str() {
            "all" | "" => None,
            t => Some(t.to_string()),
        };
        let storm_dir = tempfile::Builder::new()
            .prefix("podmap-bench-storm-")
            .tempdir()
            .context("creating the storm's directory")?;
        let storm_binary = storm_dir.path().join(STORM_COMM);
        std::os::unix::fs::symlink(STORM_TARGET, &storm_binary)
            .with_context(|| format!("linking {} to {STORM_TARGET}", storm_binary.display()))?;
        Ok(BenchEnv {
            cgroup2,
            self_exe,
            podmapd,
            podmap,
            bpftrace: find_in_path("bpftrace"),
            execsnoop: Some(PathBuf::from(EXECSNOOP)).filter(|p| p.is_file()),
            stdbuf: find_in_path("stdbuf"),
            bpftool: find_in_path("bpftool"),
            bpf_stats: BpfStatsSwitch::enable().map_err(|e| format!("BPF_ENABLE_STATS: {e}")),
            podmap_types,
            storm_binary,
            _storm_dir: storm_dir,
            execs: args.execs,
            workers: args.workers,
        })
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The kernel's BPF run-time statistics (the switch behind kernel.bpf_stats_enabled), held on
/// through a BPF_ENABLE_STATS fd rather than the sysctl: the kernel turns them off again when
/// the fd closes, so no exit path of the bench, not even SIGKILL, can leave them on.
struct BpfStatsSwitch(#[allow(dead_code)] OwnedFd);

impl BpfStatsSwitch {
    fn enable() -> io::Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // union bpf_attr's enable_stats member is one u32; the rest of the attr must be zero.
        let attr = [BPF_STATS_RUN_TIME, 0, 0, 0];
        // SAFETY: the attr buffer is valid for its size for the duration of the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        Ok(BpfStatsSwitch(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

#[derive(Debug, Clone, Deserialize)]
struct ProgInfo {
    id: u32,
    #[serde(default)]
    name: String,
    #[serde(default)]
    run_time_ns: u64,
    #[serde(default)]
    run_cnt: u64,
}

fn bpf_programs(bpftool: &Path) -> anyhow::Result<Vec<ProgInfo>> {
    let out = Command::new(bpftool)
        .args(["prog", "show", "-j"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} prog show -j", bpftool.display()))?;
    if !out.status.success() {
        bail!("bpftool prog show -j failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("parsing bpftool prog show -j")
}

// ---------------------------------------------------------------------------------------------
// Private cgroups and the processes in them
// ---------------------------------------------------------------------------------------------

/// A private cgroup v2 whose processes are killed before it is removed (TestCgroup alone would
/// move them to the root, where a leftover tracer would keep running).
struct Cgroup(TestCgroup);

impl Cgroup {
    fn new(mount: &Path, prefix: &str) -> anyhow::Result<Self> {
        TestCgroup::new(mount, prefix)
            .map(Cgroup)
            .with_context(|| format!("creating a cgroup {prefix}-* under {}", mount.display()))
    }

    fn id(&self) -> u64 {
        self.0.id()
    }

    fn path(&self) -> PathBuf {
        self.0.path()
    }

    /// CPU time of every task that ever ran in the cgroup, in microseconds.
    fn cpu_usec(&self) -> anyhow::Result<u64> {
        let path = self.path().join("cpu.stat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no usage_usec in {}", path.display()))
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path().join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn kill_all(&self) {
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) on a pid read from this cgroup; a stale pid at worst gets ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A child process alone in its own cgroup; stopped (SIGINT, then SIGKILL) on drop.
struct Proc {
    name: &'static str,
    child: Child,
    exited: Option<ExitStatus>,
    cgroup: Cgroup,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, cgroup: Cgroup) -> anyhow::Result<Self> {
        let procs_path = cgroup.path().join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("opening {}", procs_path.display()))?;
        let fd = procs.as_raw_fd();
        // SAFETY: between fork and exec the closure makes only two async-signal-safe system calls,
        // on an fd that stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the bench even when it is killed without a chance to clean up.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" moves the writing process: the child is in its cgroup before it runs a
                // single instruction of its own, so its CPU and execs are all accounted there.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        drop(procs);
        Ok(Proc {
            name,
            child,
            exited: None,
            cgroup,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.poll_exit()? {
            bail!("{} exited early ({status})", self.name);
        }
        Ok(())
    }

    fn poll_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Waits for the process to exit by itself (interruptible).
    fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        loop {
            check_interrupted()?;
            if let Some(status) = self.poll_exit()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A `/proc/<pid>/status` memory figure in KiB: VmHWM (peak resident set) or VmRSS.
    fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGINT (every tracer's clean stop), SIGKILL after a grace, then whatever is left in the
    /// cgroup. Idempotent.
    fn stop(&mut self) {
        if matches!(self.poll_exit(), Ok(None)) {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still ours.
            unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(self.poll_exit(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(POLL);
            }
            if matches!(self.poll_exit(), Ok(None)) {
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
            }
        }
        self.cgroup.kill_all();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Tracer output: one reader thread per stream, counting events as they arrive
// ---------------------------------------------------------------------------------------------

/// How a tracer's lines read, and how each tells a storm exec from the host's other execs.
#[derive(Debug, Clone, Copy)]
enum LineFormat {
    /// `podmap events -o json`: an exec of the storm's binary in the storm's cgroup.
    Podmap,
    /// `<pid> <filename>`: the storm's private path.
    Bpftrace,
    /// `PCOMM PID PPID RET ARGS` (after a header line): the storm's name, and the storm driver
    /// as parent (ARGS is read from user memory at execve entry, which can come back empty).
    Execsnoop,
    /// stderr: loss reports and diagnostics only.
    Diagnostics,
}

/// What identifies the storm's execs in a tracer's output.
#[derive(Debug, Default)]
struct StormId {
    cgroup_id: u64,
    binary: String,
    /// The storm driver's pid, set before it starts (0 until then).
    parent_pid: AtomicU32,
}

/// One event line, as far as the bench cares.
struct EventLine {
    pid: u32,
    storm_exec: bool,
    /// Kernel timestamp, unix ns (podmapd only).
    time_ns: Option<i64>,
}

#[derive(Deserialize)]
struct PodmapEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    process: PodmapProcess<'a>,
}

#[derive(Deserialize)]
struct PodmapProcess<'a> {
    pid: u32,
    #[serde(borrow)]
    binary: Cow<'a, str>,
    cgroup_id: u64,
}

impl LineFormat {
    fn parse(self, line: &[u8], storm: &StormId) -> Option<EventLine> {
        match self {
            LineFormat::Podmap => {
                let ev: PodmapEvent = serde_json::from_slice(line).ok()?;
                Some(EventLine {
                    pid: ev.process.pid,
                    storm_exec: ev.kind == "exec"
                        && ev.process.cgroup_id == storm.cgroup_id
                        && ev.process.binary == storm.binary,
                    time_ns: parse_rfc3339_ns(&ev.time),
                })
            }
            LineFormat::Bpftrace => {
                let text = String::from_utf8_lossy(line);
                let (pid, file) = text.trim_end().split_once(' ')?;
                Some(EventLine {
                    pid: pid.parse().ok()?,
                    storm_exec: file == storm.binary,
                    time_ns: None,
                })
            }
            LineFormat::Execsnoop => {
                let text = String::from_utf8_lossy(line);
                let mut cols = text.split_whitespace();
                let comm = cols.next()?;
                let pid = cols.next()?.parse().ok()?;
                let ppid: u32 = cols.next()?.parse().ok()?;
                let parent = storm.parent_pid.load(Ordering::Relaxed);
                Some(EventLine {
                    pid,
                    storm_exec: comm == STORM_COMM && parent != 0 && ppid == parent,
                    time_ns: None,
                })
            }
            LineFormat::Diagnostics => None,
        }
    }
}

/// What the reader threads of one tracer have seen so far.
#[derive(Default)]
struct OutputStats {
    storm: StormId,
    /// Event lines of any process.
    events: AtomicU64,
    /// Exec events of the storm.
    storm_execs: AtomicU64,
    /// Events the tracer itself reported lost ("Lost N events").
    lost: AtomicU64,
    /// Kernel-to-bench latency of each storm exec, ns (podmapd only).
    latencies_ns: Mutex<Vec<i64>>,
    /// pids of recent events, kept only while the bench waits for its canary exec.
    watch_pids: AtomicBool,
    seen_pids: Mutex<HashSet<u32>>,
    /// Last diagnostic lines, for error messages.
    tail: Mutex<VecDeque<String>>,
}

impl OutputStats {
    fn new(storm: StormId) -> Arc<Self> {
        Arc::new(OutputStats {
            storm,
            ..OutputStats::default()
        })
    }

    fn take_line(&self, format: LineFormat, line: &[u8], received_ns: i64) {
        match format.parse(line, &self.storm) {
            Some(ev) => self.take_event(ev, received_ns),
            None => self.take_diagnostic(line),
        }
    }

    fn take_event(&self, ev: EventLine, received_ns: i64) {
        self.events.fetch_add(1, Ordering::Relaxed);
        if ev.storm_exec {
            self.storm_execs.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = ev.time_ns {
                lock(&self.latencies_ns).push(received_ns - t);
            }
        }
        if self.watch_pids.load(Ordering::Relaxed) {
            lock(&self.seen_pids).insert(ev.pid);
        }
    }

    fn take_diagnostic(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        if let Some(n) = lost_count(&text) {
            self.lost.fetch_add(n, Ordering::Relaxed);
        }
        if text.is_empty() {
            return;
        }
        let mut tail = lock(&self.tail);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(text);
    }

    fn tail_text(&self) -> String {
        lock(&self.tail)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// "Lost 12 events" (bpftrace) or "Lost 12 events on CPU #0!" (libbpf-tools).
fn lost_count(line: &str) -> Option<u64> {
    let rest = &line[line.find("Lost ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    format: LineFormat,
    stats: Arc<OutputStats>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 * 1024, stream);
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => stats.take_line(format, &line, unix_now_ns()),
            }
        }
    })
}

fn unix_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

// ---------------------------------------------------------------------------------------------
// Tracers
// ---------------------------------------------------------------------------------------------

/// A running tracer: its process (and podmapd's client), the threads reading their output,
/// and for podmapd its private socket directory and pin directory.
struct Tracer {
    kind: TracerKind,
    client: Option<Proc>,
    main: Proc,
    out: Arc<OutputStats>,
    readers: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
    log: Option<PathBuf>,
    // Removed after the processes have stopped (Drop stops them first).
    _pins: Option<PinDir>,
    _dir: Option<tempfile::TempDir>,
}

/// CPU used by a tracer so far (microseconds), and the event lines it delivered so far.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    main: u64,
    client: Option<u64>,
    events: u64,
}

enum Started {
    Running(Box<Tracer>),
    NotInstalled(String),
}

impl Tracer {
    fn start(kind: TracerKind, env: &BenchEnv, storm_cgroup: u64) -> anyhow::Result<Started> {
        let out = OutputStats::new(StormId {
            cgroup_id: storm_cgroup,
            binary: env.storm_binary.to_string_lossy().into_owned(),
            parent_pid: AtomicU32::new(0),
        });
        let tracer = match kind {
            TracerKind::None => bail!("no tracer to start"),
            TracerKind::Podmap => Self::start_podmap(env, out)?,
            TracerKind::Bpftrace => {
                let Some(bin) = &env.bpftrace else {
                    return Ok(Started::NotInstalled("bpftrace not in PATH".into()));
                };
                let mut cmd = Command::new(bin);
                cmd.args(["-e", BPFTRACE_PROGRAM]);
                Self::start_peer(kind, env, cmd, LineFormat::Bpftrace, out)?
            }
            TracerKind::Execsnoop => {
                let Some(bin) = &env.execsnoop else {
                    return Ok(Started::NotInstalled(format!("{EXECSNOOP} not found")));
                };
                let Some(stdbuf) = &env.stdbuf else {
                    bail!("stdbuf (coreutils) not in PATH");
                };
                // execsnoop's stdio is fully buffered into a pipe; line buffering makes it print
                // each exec as it would to a terminal (and as bpftrace does by default).
                let mut cmd = Command::new(stdbuf);
                cmd.arg("-oL").arg(bin);
                Self::start_peer(kind, env, cmd, LineFormat::Execsnoop, out)?
            }
        };
        let mut tracer = Box::new(tracer);
        tracer.wait_sees_execs()?;
        thread::sleep(SETTLE);
        Ok(Started::Running(tracer))
    }

    fn start_peer(
        kind: TracerKind,
        env: &BenchEnv,
        mut cmd: Command,
        format: LineFormat,
        out: Arc<OutputStats>,
    ) -> anyhow::Result<Tracer> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cgroup = Cgroup::new(&env.cgroup2, &format!("podmap-bench-{}", kind.label()))?;
        let mut main = Proc::spawn(kind.label(), &mut cmd, cgroup)?;
        let readers = take_output(&mut main, format, &out);
        Ok(Tracer {
            kind,
            client: None,
            main,
            out,
            readers,
            socket: None,
            log: None,
            _pins: None,
            _dir: None,
        })
    }

    fn start_podmap(env: &BenchEnv, out: Arc<OutputStats>) -> anyhow::Result<Tracer> {
        let dir = tempfile::Builder::new()
            .prefix("podmap-bench-")
            .tempdir()
            .context("creating a directory for podmapd's socket and log")?;
        let socket = dir.path().join("podmapd.sock");
        let log_path = dir.path().join("podmapd.log");
        let log = File::create(&log_path).context("creating podmapd's log")?;
        let pins = PinDir::new("podmap-bench");

        let mut cmd = Command::new(&env.podmapd);
        cmd.env("PODMAP_SOCKET", &socket)
            .env("PODMAP_BPFFS_DIR", &pins.path)
            .env("PODMAP_METRICS_ADDR", "off")
            .env("NODE_NAME", "podmap-bench")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("podmapd's log")?)
            .stderr(log);
        let cgroup = Cgroup::new(&env.cgroup2, "podmap-bench-podmapd")?;
        let daemon = Proc::spawn("podmapd", &mut cmd, cgroup)?;
        let mut tracer = Tracer {
            kind: TracerKind::Podmap,
            client: None,
            main: daemon,
            out,
            readers: vec![],
            socket: Some(socket.clone()),
            log: Some(log_path),
            _pins: Some(pins),
            _dir: Some(dir),
        };
        tracer.wait_podmapd_ready()?;

        let mut cmd = Command::new(&env.podmap);
        cmd.args(["events", "-o", "json", "--socket"]).arg(&socket);
        if let Some(types) = &env.podmap_types {
            cmd.args(["--type", types]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cgroup = Cgroup::new(&env.cgroup2, "podmap-bench-client")?;
        let mut client = Proc::spawn("podmap events", &mut cmd, cgroup)?;
        tracer.readers = take_output(&mut client, LineFormat::Podmap, &tracer.out);
        tracer.client = Some(client);
        Ok(tracer)
    }

    fn wait_podmapd_ready(&mut self) -> anyhow::Result<()> {
        let socket = self.socket.clone().expect("podmapd has a socket");
        let waited = wait_for("podmapd's status reply", ATTACH_TIMEOUT, || {
            self.main.check_running()?;
            Ok(podmapd_status(&socket).is_ok())
        });
        waited.with_context(|| self.diagnostics())
    }

    /// The tracer is ready when an exec the bench makes shows up in its output: attached,
    /// reading, and (for podmapd) the client subscribed. Canaries repeat until one is seen,
    /// since the ones before the attach are never reported.
    fn wait_sees_execs(&mut self) -> anyhow::Result<()> {
        self.out.watch_pids.store(true, Ordering::Relaxed);
        let mut canaries = vec![];
        let mut last_canary = Instant::now() - Duration::from_secs(1);
        let waited = wait_for(
            &format!("{} to report an exec", self.kind.label()),
            ATTACH_TIMEOUT,
            || {
                self.check_running()?;
                let seen = lock(&self.out.seen_pids);
                if canaries.iter().any(|pid| seen.contains(pid)) {
                    return Ok(true);
                }
                drop(seen);
                if last_canary.elapsed() >= Duration::from_millis(200) {
                    canaries.push(canary_exec()?);
                    last_canary = Instant::now();
                }
                Ok(false)
            },
        );
        self.out.watch_pids.store(false, Ordering::Relaxed);
        lock(&self.out.seen_pids).clear();
        waited.with_context(|| self.diagnostics())
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        self.main.check_running()?;
        if let Some(c) = &mut self.client {
            c.check_running()?;
        }
        Ok(())
    }

    /// The tracer's own last words, for an error message: podmapd's log, and the stderr of the
    /// process the bench reads (the podmap client, or the peer tracer itself).
    fn diagnostics(&self) -> String {
        let mut text = format!("{} did not get ready", self.kind.label());
        let log = self.log.as_deref().map(|l| tail_of_file(l, 2048));
        if let Some(log) = log.filter(|l| !l.trim().is_empty()) {
            text += &format!("; podmapd's log ends:\n{}", log.trim_end());
        }
        let stderr = self.out.tail_text();
        if !stderr.is_empty() {
            let who = if self.client.is_some() {
                "podmap events"
            } else {
                self.kind.label()
            };
            text += &format!("\n{who} printed:\n{stderr}");
        }
        text
    }

    /// The tracer's own CPU over `window` with no storm, ms per second.
    fn idle_cpu(&self, window: Duration) -> anyhow::Result<f64> {
        let before = self.main.cgroup.cpu_usec()?;
        thread::sleep(window);
        check_interrupted()?;
        let used = self.main.cgroup.cpu_usec()?.saturating_sub(before);
        Ok(used as f64 / 1000.0 / window.as_secs_f64())
    }

    fn cpu(&self) -> anyhow::Result<CpuSample> {
        Ok(CpuSample {
            main: self.main.cgroup.cpu_usec()?,
            client: match &self.client {
                Some(c) => Some(c.cgroup.cpu_usec()?),
                None => None,
            },
            events: self.out.events.load(Ordering::Relaxed),
        })
    }

    /// Waits until every storm exec arrived, or until the output stopped growing; returns the
    /// CPU sample taken when the last storm exec was seen, so idle time after it is not billed.
    fn wait_drained(&mut self, expected: u64) -> anyhow::Result<CpuSample> {
        let mut seen = self.out.storm_execs.load(Ordering::Relaxed);
        let mut at_last = self.cpu()?;
        let mut last_change = Instant::now();
        loop {
            check_interrupted()?;
            let now = self.out.storm_execs.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                at_last = self.cpu()?;
                last_change = Instant::now();
            }
            if seen >= expected || last_change.elapsed() >= QUIET {
                return Ok(at_last);
            }
            thread::sleep(POLL);
        }
    }

    /// Events the tracer reports lost: podmapd's ring-buffer drops and slow-client drops, the
    /// peers' "Lost N events".
    fn lost(&self) -> anyhow::Result<u64> {
        match &self.socket {
            Some(socket) => {
                let status = podmapd_status(socket).context("podmapd's status after the storm")?;
                let get = |k: &str| status.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                Ok(get("events_lost_kernel") + get("events_lost_slow_clients"))
            }
            None => Ok(self.out.lost.load(Ordering::Relaxed)),
        }
    }

    /// Stops the client before the daemon, then joins the readers (their pipes are closed now).
    fn stop(&mut self) {
        if let Some(c) = &mut self.client {
            c.stop();
        }
        self.main.stop();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn take_output(proc: &mut Proc, format: LineFormat, out: &Arc<OutputStats>) -> Vec<JoinHandle<()>> {
    let mut readers = vec![];
    if let Some(stdout) = proc.child.stdout.take() {
        readers.push(spawn_reader(stdout, format, out.clone()));
    }
    if let Some(stderr) = proc.child.stderr.take() {
        readers.push(spawn_reader(stderr, LineFormat::Diagnostics, out.clone()));
    }
    readers
}

/// One exec no tracer mistakes for the storm's (`/bin/sh -c :`, outside the storm cgroup).
fn canary_exec() -> anyhow::Result<u32> {
    let mut child = Command::new("/bin/sh")
        .args(["-c", ":"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("running the canary /bin/sh -c :")?;
    let pid = child.id();
    child.wait().context("waiting for the canary")?;
    Ok(pid)
}

fn podmapd_status(socket: &Path) -> anyhow::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = serde_json::to_vec(&podmap_proto::Request::Status(Default::default()))?;
    request.push(b'\n');
    stream.write_all(&request)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    serde_json::from_slice(&reply).context("podmapd's status reply")
}

fn tail_of_file(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// One measurement
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct Sample {
    round: u32,
    execs_per_sec: f64,
    storm_seconds: f64,
    /// CPU of the storm's own cgroup per exec: fork+exec+exit plus the BPF programs and
    /// wake-ups the tracer adds to the exec path.
    storm_cpu_us_per_exec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracer: Option<TracerSample>,
}

#[derive(Debug, Clone, Serialize)]
struct TracerSample {
    /// Storm execs the tracer delivered, of `expected`.
    delivered: u64,
    expected: u64,
    /// Event lines of any process delivered while the CPU was measured.
    events_in_window: u64,
    lost: u64,
    cpu_us: u64,
    cpu_us_per_event: Option<f64>,
    /// The tracer's CPU with no storm running, ms per second.
    idle_cpu_ms_per_s: f64,
    client_cpu_us_per_event: Option<f64>,
    peak_rss_kib: Option<u64>,
    /// Resident set once the storm is delivered: tells a start-up peak from a steady need.
    rss_end_kib: Option<u64>,
    latency_ms: Option<Percentiles>,
    #[serde(skip)]
    latencies_ns: Vec<i64>,
    bpf: Option<BpfSample>,
    /// Why `bpf` is missing.
    bpf_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Clone, Serialize)]
struct BpfSample {
    /// All of the tracer's programs, ns per storm exec.
    ns_per_exec: f64,
    programs: Vec<ProgDelta>,
}

#[derive(Debug, Clone, Serialize)]
struct ProgDelta {
    name: String,
    runs: u64,
    run_time_ns: u64,
}

enum Measurement {
    Sample(Box<Sample>),
    NotInstalled(String),
}

fn measure(kind: TracerKind, round: u32, env: &BenchEnv) -> anyhow::Result<Measurement> {
    let storm_cgroup = Cgroup::new(&env.cgroup2, "podmap-bench-storm")?;
    if kind == TracerKind::None {
        let (storm, storm_cpu) = run_storm(env, storm_cgroup, |_| {})?;
        return Ok(Measurement::Sample(Box::new(storm_sample(
            round, storm, storm_cpu, None,
        ))));
    }
    let progs_before = program_ids(env);
    let mut tracer = match Tracer::start(kind, env, storm_cgroup.id())? {
        Started::Running(t) => t,
        Started::NotInstalled(reason) => return Ok(Measurement::NotInstalled(reason)),
    };
    let bpf_before =
        tracer_programs(kind, env, progs_before.as_ref()).and_then(|ids| bpf_snapshot(env, &ids));
    let idle_ms_per_s = tracer.idle_cpu(IDLE_WINDOW)?;
    let cpu_before = tracer.cpu()?;

    let storm_parent = &tracer.out.storm.parent_pid;
    let (storm, storm_cpu) = run_storm(env, storm_cgroup, |pid| {
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
        storm,
        storm_cpu,
        Some(sample),
    ))))
}

fn storm_sample(
    round: u32,
    storm: StormResult,
    storm_cpu_usec: u64,
    tracer: Option<TracerSample>,
) -> Sample {
    Sample {
        round,
        execs_per_sec: storm.execs as f64 / storm.seconds,
        storm_seconds: storm.seconds,
        storm_cpu_us_per_exec: storm_cpu_usec as f64 / storm.execs as f64,
        tracer,
    }
}

fn tracer_sample(
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
fn run_storm(
    env: &BenchEnv,
    cgroup: Cgroup,
    started: impl FnOnce(u32),
) -> anyhow::Result<(StormResult, u64)> {
    let mut cmd = Command::new(&env.self_exe);
    cmd.arg("storm-child")
        .arg("--execs")
        .arg(env.execs.to_string())
        .arg("--workers")
        .arg(env.workers.to_string())
        .arg("--binary")
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

fn program_ids(env: &BenchEnv) -> Option<Result<HashSet<u32>, String>> {
    let bpftool = env.bpftool.as_ref()?;
    Some(
        bpf_programs(bpftool)
            .map(|ps| ps.into_iter().map(|p| p.id).collect())
            .map_err(|e| format!("{e:#}")),
    )
}

/// The programs the tracer loaded: the ones that appeared since it started (podmapd's also by
/// their name, in case something else loaded programs meanwhile).
fn tracer_programs(
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

fn bpf_snapshot(env: &BenchEnv, ids: &[u32]) -> Result<BTreeMap<u32, ProgInfo>, String> {
    let bpftool = env.bpftool.as_ref().ok_or("bpftool not installed")?;
    let all = bpf_programs(bpftool).map_err(|e| format!("{e:#}"))?;
    Ok(all
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| (p.id, p))
        .collect())
}

fn bpf_delta(
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

// ---------------------------------------------------------------------------------------------
// Rounds
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Outcome {
    Measured { samples: Vec<Sample> },
    NotInstalled { reason: String },
    Failed { error: String },
}

fn run_rounds(args: &ExecArgs, env: &BenchEnv) -> anyhow::Result<BTreeMap<TracerKind, Outcome>> {
    let mut order: Vec<TracerKind> = vec![];
    for t in &args.tracers {
        if !order.contains(t) {
            order.push(*t);
        }
    }
    let mut rows: BTreeMap<TracerKind, Outcome> = order
        .iter()
        .map(|&t| (t, Outcome::Measured { samples: vec![] }))
        .collect();
    for round in 1..=args.rounds {
        for &kind in &order {
            let Some(Outcome::Measured { samples }) = rows.get_mut(&kind) else {
                continue; // not installed, or failed in an earlier round
            };
            eprint!("round {round}/{}: {:<10} ", args.rounds, kind.label());
            match measure(kind, round, env) {
                Ok(Measurement::Sample(sample)) => {
                    eprintln!("{}", progress_line(&sample));
                    samples.push(*sample);
                }
                Ok(Measurement::NotInstalled(reason)) => {
                    eprintln!("not installed ({reason})");
                    rows.insert(kind, Outcome::NotInstalled { reason });
                }
                // podmapd is what is measured: without it the run means nothing.
                Err(e) if kind == TracerKind::Podmap || INTERRUPTED.load(Ordering::SeqCst) => {
                    eprintln!("failed");
                    return Err(e.context(format!("round {round}, {}", kind.label())));
                }
                Err(e) => {
                    eprintln!("failed: {e:#}");
                    rows.insert(
                        kind,
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

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    execs: u64,
    rounds: u32,
    workers: u32,
    podmap_event_types: String,
    rows: Vec<Row>,
    targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
}

#[derive(Debug, Serialize)]
struct Row {
    tracer: TracerKind,
    label: &'static str,
    #[serde(flatten)]
    outcome: Outcome,
    summary: Option<Summary>,
}

/// Medians over rounds, except where a worst case or a pooled figure is the honest one.
#[derive(Debug, Clone, Default, Serialize)]
struct Summary {
    execs_per_sec: f64,
    /// Median of the per-round ratios to the same round's no-tracer storm.
    ratio_vs_none: Option<f64>,
    storm_cpu_us_per_exec: f64,
    /// The worst round.
    delivered: Option<u64>,
    expected: Option<u64>,
    /// Over all rounds.
    lost: Option<u64>,
    cpu_us_per_event: Option<f64>,
    client_cpu_us_per_event: Option<f64>,
    idle_cpu_ms_per_s: Option<f64>,
    /// The largest over rounds.
    peak_rss_mib: Option<f64>,
    rss_end_mib: Option<f64>,
    /// Pooled over rounds.
    latency_ms: Option<Percentiles>,
    bpf_ns_per_exec: Option<f64>,
    /// Median ns per run, by program name.
    bpf_ns_per_run: BTreeMap<String, f64>,
    bpf_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Target {
    figure: &'static str,
    target: &'static str,
    value: Option<String>,
    pass: Option<bool>,
}

impl Report {
    fn build(args: &ExecArgs, env: &BenchEnv, outcomes: BTreeMap<TracerKind, Outcome>) -> Self {
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
        let podmap = rows
            .iter()
            .find(|r| r.tracer == TracerKind::Podmap)
            .and_then(|r| r.summary.clone());
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
            rows,
            targets: targets(podmap.as_ref()),
        }
    }

    fn render(&self) -> String {
        let mut out = format!(
            "exec storm: {} fork+exec of {STORM_TARGET} (via a private link) from a fresh cgroup, {} worker(s), {} round(s), medians of rounds\n\
             machine: {} CPUs, Linux {}; podmap client: podmap events -o json (types: {})\n\n",
            self.execs,
            self.workers,
            self.rounds,
            self.machine.cpus,
            self.machine.kernel,
            self.podmap_event_types,
        );
        out += &render_table(&self.rows);
        out += "\n";
        out += &render_bpf(&self.rows);
        out += &render_notes(&self.rows);
        out += "\ntargets (docs/performance.md, exec events):\n";
        for t in &self.targets {
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
}

fn summarize(samples: &[Sample], none: &BTreeMap<u32, f64>) -> Summary {
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

fn render_table(rows: &[Row]) -> String {
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

fn summary_cells(kind: TracerKind, s: &Summary) -> Vec<String> {
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

fn format_table(cells: &[Vec<String>]) -> String {
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

fn render_bpf(rows: &[Row]) -> String {
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

fn render_notes(rows: &[Row]) -> String {
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
fn check(
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

fn targets(p: Option<&Summary>) -> Vec<Target> {
    let delivered = p.and_then(|s| Some((s.delivered?, s.expected?)));
    vec![
        check(
            "execs/s with podmapd and one client vs no tracer",
            ">= 0.97",
            p.and_then(|s| s.ratio_vs_none)
                .map(|r| (r, format!("{r:.3}"))),
            |r| r >= 0.97,
        ),
        check(
            "podmapd CPU per delivered event",
            "<= 3 us",
            p.and_then(|s| s.cpu_us_per_event)
                .map(|v| (v, format!("{v:.2} us"))),
            |v| v <= 3.0,
        ),
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
    ]
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

// ---------------------------------------------------------------------------------------------
// Small numeric helpers
// ---------------------------------------------------------------------------------------------

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn percentiles_ms(sorted_ns: &[i64]) -> Option<Percentiles> {
    let ms = |p| percentile(sorted_ns, p).map(|ns| ns as f64 / 1e6);
    Some(Percentiles {
        p50: ms(0.50)?,
        p99: ms(0.99)?,
        max: ms(1.0)?,
    })
}

/// The event time in Unix ns (podmapd writes UTC with nanoseconds).
fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    podmap_proto::time::parse_rfc3339(s).and_then(|ns| i64::try_from(ns).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_and_medians() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    fn storm() -> StormId {
        StormId {
            cgroup_id: 42,
            binary: "/tmp/podmap-bench-storm-x/true".into(),
            parent_pid: AtomicU32::new(21924),
        }
    }

    #[test]
    fn podmap_lines_match_by_cgroup_and_binary() {
        let storm = storm();
        let line = r#"{"type":"exec","time":"1970-01-01T00:00:01Z","node":"n","process":{"pid":7,"binary":"/tmp/podmap-bench-storm-x/true","cgroup_id":42,"args":[]},"attribution":"host"}"#;
        let ev = LineFormat::Podmap.parse(line.as_bytes(), &storm).unwrap();
        assert!(ev.storm_exec);
        assert_eq!((ev.pid, ev.time_ns), (7, Some(1_000_000_000)));
        for other in [
            line.replace("42", "43"),
            line.replace("/tmp/podmap-bench-storm-x/true", "/bin/true"),
            line.replace("\"exec\"", "\"exit\""),
        ] {
            let ev = LineFormat::Podmap.parse(other.as_bytes(), &storm).unwrap();
            assert!(!ev.storm_exec, "{other}");
        }
        assert!(LineFormat::Podmap
            .parse(b"{\"error\":\"x\"}", &storm)
            .is_none());
    }

    #[test]
    fn peer_lines_match_by_path_or_parent() {
        let storm = storm();
        let ev = LineFormat::Bpftrace
            .parse(b"22202 /tmp/podmap-bench-storm-x/true\n", &storm)
            .unwrap();
        assert!(ev.storm_exec && ev.pid == 22202);
        let ev = LineFormat::Bpftrace
            .parse(b"22203 /bin/true\n", &storm)
            .unwrap();
        assert!(!ev.storm_exec);
        assert!(LineFormat::Bpftrace
            .parse(b"Attaching 1 probe...\n", &storm)
            .is_none());

        let ev = LineFormat::Execsnoop
            .parse(b"true             21931  21924    0 \n", &storm)
            .unwrap();
        assert!(ev.storm_exec && ev.pid == 21931);
        let ev = LineFormat::Execsnoop
            .parse(b"true             21932  1    0 /bin/true\n", &storm)
            .unwrap();
        assert!(!ev.storm_exec);
        assert!(LineFormat::Execsnoop
            .parse(b"PCOMM            PID    PPID   RET ARGS\n", &storm)
            .is_none());
    }

    #[test]
    fn loss_reports() {
        assert_eq!(lost_count("Lost 12 events"), Some(12));
        assert_eq!(lost_count("Lost 3 events on CPU #1!"), Some(3));
        assert_eq!(lost_count("Attaching 1 probe..."), None);
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
