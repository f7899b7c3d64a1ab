//! What a private containerd leaves behind when it goes, and how to remove it: shims (they
//! outlive containerd by design), mounts under its work dir, and cgroups (RemovePodSandbox
//! leaves the pod-level cgroup in every hierarchy: kubelet removes it normally). All of it is
//! found from the host's view, so the same code cleans up after a pure-cgroup2 instance.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Work dirs of instances are named `<temp dir>/<WORK_PREFIX>XXXXXX`.
pub const WORK_PREFIX: &str = "podmap-ctrd-";

/// The file in a work dir naming the process that owns the instance and its cgroup base, so a
/// later run can clean up after a run that was killed before its drops ran.
pub const OWNER_FILE: &str = "owner";

pub fn write_owner(work: &Path, cgroup_base: &str) -> std::io::Result<()> {
    std::fs::write(
        work.join(OWNER_FILE),
        format!("{} {cgroup_base}\n", std::process::id()),
    )
}

/// Tears down instances whose owning process is gone (a test binary killed by a timeout, a
/// bench killed outright): their containerd, shims, plugins, cgroups, mounts and work dir.
pub fn sweep_stale_instances() {
    sweep_stale_instances_in(&std::env::temp_dir());
}

/// [`sweep_stale_instances`] for instances made under `dir` (a process started with its own
/// TMPDIR).
pub fn sweep_stale_instances_in(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let work = e.path();
        if !e.file_name().to_string_lossy().starts_with(WORK_PREFIX) {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(work.join(OWNER_FILE)) else {
            continue;
        };
        let mut f = owner.split_whitespace();
        let (Some(pid), Some(base)) = (f.next(), f.next()) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let sockets = shim_sockets(&work.join("state"));
        let config = work.join("config.toml").to_string_lossy().into_owned();
        let socket = work.join("containerd.sock").to_string_lossy().into_owned();
        let nri = work.join("nri/nri.sock").to_string_lossy().into_owned();
        // containerd, its shims, external plugins on its NRI socket, pre-launched plugins.
        for p in pids_with_arg(&config)
            .into_iter()
            .chain(pids_with_arg(&socket))
            .chain(pids_with_arg(&nri))
            .chain(pids_with_exe_under(&work))
        {
            signal(p, libc::SIGKILL);
        }
        remove_cgroup_tree(base);
        unmount_under(&work);
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        let _ = std::fs::remove_dir_all(&work);
    }
}

/// The shims' sockets (under /run/containerd/s, outside the work dir), read from each task's
/// `address` file in containerd's state dir.
pub fn shim_sockets(state: &Path) -> Vec<PathBuf> {
    let tasks = state.join("io.containerd.runtime.v2.task/k8s.io");
    let Ok(rd) = std::fs::read_dir(tasks) else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
        .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
        .collect()
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Stops a child: SIGTERM, up to `grace` to exit, then SIGKILL; always reaped.
pub fn terminate(child: &mut std::process::Child, grace: std::time::Duration) {
    signal(child.id(), libc::SIGTERM);
    let deadline = crate::deadline::after(grace);
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Pids of the processes whose /proc directory satisfies `keep`.
fn pids_where(keep: impl Fn(&Path) -> bool) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            keep(&e.path()).then_some(pid)
        })
        .collect()
}

/// Pids of processes whose command line contains `needle` as one argument.
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    pids_where(|proc| {
        std::fs::read(proc.join("cmdline"))
            .is_ok_and(|cmd| cmd.split(|&b| b == 0).any(|a| a == needle.as_bytes()))
    })
}

/// Pids of processes whose executable lives under `dir`.
pub fn pids_with_exe_under(dir: &Path) -> Vec<u32> {
    pids_where(|proc| std::fs::read_link(proc.join("exe")).is_ok_and(|x| x.starts_with(dir)))
}

/// One mount of the host's mount table.
#[derive(Debug, Clone)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// The mount table of this process's mount namespace.
pub fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                point: PathBuf::from(unescape(f.get(4)?)),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as three octal digits.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\')
            .then(|| s.get(i + 1..i + 4))
            .flatten()
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2(2) with a valid NUL-terminated path; MNT_DETACH never blocks.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The mount points of every cgroup hierarchy (v1 controllers and cgroup2), deduplicated.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.point)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Kills every process in the cgroup tree `rel` (relative to each hierarchy's root) and removes
/// the tree, deepest first, in every hierarchy that has it. Returns the directories that could
/// not be removed.
pub fn remove_cgroup_tree(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return vec![];
    }
    let mut left = vec![];
    for mount in cgroup_mounts() {
        let top = mount.join(rel);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = vec![];
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        // Parents come before children in `dirs`: walk it backwards.
        for d in dirs.iter().rev() {
            if !remove_cgroup(d) {
                left.push(d.clone());
            }
        }
    }
    left
}

/// Empties one cgroup (cgroup.kill where v2 has it, else SIGKILL to each member) and removes it.
fn remove_cgroup(dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
            {
                signal(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\"), "/end\\");
    }
}
