//! Private cgroups and the processes the bench starts in them, each torn down on drop.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread::{self};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use super::{check_interrupted, POLL, STOP_GRACE};
use podmap_bpf::testing::TestCgroup;

/// A private cgroup v2 whose processes are killed before it is removed (TestCgroup alone would
/// move them to the root, where a leftover tracer would keep running).
pub(super) struct Cgroup(TestCgroup);

impl Cgroup {
    pub(super) fn new(mount: &Path, prefix: &str) -> anyhow::Result<Self> {
        TestCgroup::new(mount, prefix)
            .map(Cgroup)
            .with_context(|| format!("creating a cgroup {prefix}-* under {}", mount.display()))
    }

    pub(super) fn id(&self) -> u64 {
        self.0.id()
    }

    pub(super) fn path(&self) -> PathBuf {
        self.0.path()
    }

    /// CPU time of every task that ever ran in the cgroup, in microseconds.
    pub(super) fn cpu_usec(&self) -> anyhow::Result<u64> {
        let path = self.path().join("cpu.stat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no usage_usec in {}", path.display()))
    }

    pub(super) fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path().join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub(super) fn kill_all(&self) {
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
pub(super) struct Proc {
    pub(super) name: &'static str,
    pub(super) child: Child,
    pub(super) exited: Option<ExitStatus>,
    pub(super) cgroup: Cgroup,
}

impl Proc {
    pub(super) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        cgroup: Cgroup,
    ) -> anyhow::Result<Self> {
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

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.poll_exit()? {
            bail!("{} exited early ({status})", self.name);
        }
        Ok(())
    }

    pub(super) fn poll_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Waits for the process to exit by itself (interruptible).
    pub(super) fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        loop {
            check_interrupted()?;
            if let Some(status) = self.poll_exit()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A `/proc/<pid>/status` memory figure in KiB: VmHWM (peak resident set) or VmRSS.
    pub(super) fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGINT (every tracer's clean stop), SIGKILL after a grace, then whatever is left in the
    /// cgroup. Idempotent.
    pub(super) fn stop(&mut self) {
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
