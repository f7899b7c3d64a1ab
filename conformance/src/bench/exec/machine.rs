//! The machine the bench runs on: the binaries it needs, the cgroup v2 mount, and the kernel's BPF
//! run-time statistics (switched on for the run, read per program).

use std::io::{self};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;

use super::prefill::{Prefill, LARGE_PREFILL};
use super::{ExecArgs, TracerKind, EXECSNOOP, STORM_COMM, STORM_TARGET};
use podmap_cgroup::CgroupLayout;

pub(super) struct BenchEnv {
    /// Where private cgroups are made: the cgroup2 mount (/sys/fs/cgroup/unified on hybrid hosts).
    pub(super) cgroup2: PathBuf,
    pub(super) self_exe: PathBuf,
    pub(super) podmapd: PathBuf,
    pub(super) podmap: PathBuf,
    pub(super) bpftrace: Option<PathBuf>,
    pub(super) execsnoop: Option<PathBuf>,
    pub(super) stdbuf: Option<PathBuf>,
    pub(super) bpftool: Option<PathBuf>,
    /// Keeps the kernel's BPF run-time statistics on while the bench runs; or why it cannot.
    pub(super) bpf_stats: Result<BpfStatsSwitch, String>,
    pub(super) podmap_types: Option<String>,
    /// The storm's private link to /bin/true, in a directory removed with the env.
    pub(super) storm_binary: PathBuf,
    pub(super) _storm_dir: tempfile::TempDir,
    pub(super) cpus: u32,
    /// An in-process API server per prefill size the run measures, each filled once.
    pub(super) prefills: Vec<Prefill>,
    /// Serves the API servers for the whole run (dropped after them: fields drop in order).
    pub(super) _runtime: Option<tokio::runtime::Runtime>,
    pub(super) _prefill_dir: Option<tempfile::TempDir>,
}

impl BenchEnv {
    pub(super) fn prepare(args: &ExecArgs) -> anyhow::Result<Self> {
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
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let mut sizes: Vec<u32> = vec![];
        if args.prefill > 0 && args.tracers.contains(&TracerKind::Podmap) {
            sizes.push(args.prefill);
        }
        if args.scaling {
            sizes.extend([1, LARGE_PREFILL]);
        }
        sizes.sort_unstable();
        sizes.dedup();
        let (runtime, prefill_dir, prefills) = if sizes.is_empty() {
            (None, None, vec![])
        } else {
            let runtime = tokio::runtime::Runtime::new().context("starting a tokio runtime")?;
            let dir = tempfile::Builder::new()
                .prefix("podmap-bench-prefill-")
                .tempdir()
                .context("creating the prefill's directory")?;
            let mut prefills = vec![];
            for n in sizes {
                eprintln!("prefill: {n} pods on the in-process API server");
                prefills.push(Prefill::start(&runtime, dir.path(), n)?);
            }
            (Some(runtime), Some(dir), prefills)
        };
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
            cpus,
            prefills,
            _runtime: runtime,
            _prefill_dir: prefill_dir,
        })
    }
}

pub(super) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The kernel's BPF run-time statistics (the switch behind kernel.bpf_stats_enabled), held on
/// through a BPF_ENABLE_STATS fd rather than the sysctl: the kernel turns them off again when
/// the fd closes, so no exit path of the bench, not even SIGKILL, can leave them on.
pub(super) struct BpfStatsSwitch(#[allow(dead_code)] OwnedFd);

impl BpfStatsSwitch {
    pub(super) fn enable() -> io::Result<Self> {
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
pub(super) struct ProgInfo {
    pub(super) id: u32,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) run_time_ns: u64,
    #[serde(default)]
    pub(super) run_cnt: u64,
}

pub(super) fn bpf_programs(bpftool: &Path) -> anyhow::Result<Vec<ProgInfo>> {
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
