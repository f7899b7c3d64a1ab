//! The userspace process table: what exit events need of the exec that started the process
//! (binary, args, exec id), and the /proc scan that gives processes older than podmapd their
//! entries, in userspace and in the kernel's exec table.

use std::collections::HashMap;
use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, MapData};
use podmap_bpf::layout::{self, podmap_proc};
use podmap_proto::{ProcessFlag, Shared};

use crate::stats::Stats;

/// bpf(2)'s BPF_NOEXIST update flag.
const BPF_NOEXIST: u64 = 1;

/// Upper bound on tracked processes, like the kernel table's.
const MAX_PROCS: usize = layout::MAX_PROCS as usize;

#[derive(Debug, Clone, PartialEq)]
pub struct ProcEntry {
    pub exec_id: Arc<str>,
    pub exec_ktime: u64,
    pub binary: Arc<str>,
    pub args: Arc<[String]>,
    pub cwd: Arc<str>,
    pub uid: u32,
    /// Credentials of the latest exec (from /proc for a scanned process); None when unknown.
    pub creds: Option<Credentials>,
    pub start_time: u64,
    pub procfs_scan: bool,
    /// See [`is_runtime_init`].
    pub runtime_init: bool,
}

/// What an exec's credentials add to its process, its exit event included: the effective ids
/// and the effective capabilities by name (the real uid is in every record).
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub cap_effective: Shared<Vec<String>>,
}

impl Credentials {
    /// Fills the process's credential fields.
    pub fn apply(&self, p: &mut podmap_proto::Process) {
        p.euid = Some(self.euid);
        p.gid = Some(self.gid);
        p.egid = Some(self.egid);
        p.cap_effective = Some(self.cap_effective.clone());
    }
}

/// Capability masks by name, shared: a node's processes hold a handful of distinct sets (root's
/// full set, none, a container runtime's default), so each is named once, not per exec.
#[derive(Debug, Default)]
pub struct CapNames {
    by_mask: HashMap<u64, Shared<Vec<String>>>,
}

/// Distinct sets kept named; past it a set is named per use (a node that invents sets).
const CAP_NAMES_KEPT: usize = 256;

impl CapNames {
    pub fn get(&mut self, mask: u64) -> Shared<Vec<String>> {
        if let Some(n) = self.by_mask.get(&mask) {
            return n.clone();
        }
        let names = Shared::new(podmap_proto::caps::capability_names(mask));
        if self.by_mask.len() < CAP_NAMES_KEPT {
            self.by_mask.insert(mask, names.clone());
        }
        names
    }
}

/// Whether an exec is a container runtime's own init: runc re-executes itself as `<self> init`
/// (through /proc/self/exe, a cloned memfd, or a /dev/fd/N of one) and joins the container's
/// cgroup before it execs the container's program; its helper stages run there too. Those are
/// the runtime at work, not the workload (the peers' "runc matched as the container").
pub fn is_runtime_init(binary: &str, args: &[String]) -> bool {
    let is_init = matches!(args, [only] if only == "init");
    let fd = binary
        .strip_prefix("/dev/fd/")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let itself = binary == "/proc/self/exe"
        || fd
        || binary.starts_with("/memfd:")
        || binary.starts_with("memfd:")
        || binary.rsplit('/').next() == Some("runc");
    is_init && itself
}

/// Whether a process never seen exec'ing is one of runc's init stages, by the name runc gives
/// them (`runc:[0:PARENT]`, `runc:[1:CHILD]`, `runc:[2:INIT]`).
pub fn is_runtime_init_comm(comm: &str) -> bool {
    comm.starts_with("runc:[")
}

pub struct ProcTable {
    by_pid: HashMap<u32, Arc<ProcEntry>>,
    /// Names of the capability sets the table's processes hold.
    pub cap_names: CapNames,
    /// Where a full table is counted (never silent).
    stats: Arc<Stats>,
}

/// `base64("node:boot-ns:pid")`: unique per exec across nodes and pid reuse.
pub fn exec_id(node: &str, ktime: u64, pid: u32) -> String {
    use base64::Engine;
    // On every exec: the raw id on the stack when it fits (node names are at most 253 bytes,
    // the numbers at most 32 with their colons), one exactly sized string for the encoding;
    // the numbers without the formatting machinery. (base64's streaming `EncoderStringWriter`
    // would need no buffer, but took 168 ns per id here against 72.)
    let (mut ktime_s, mut pid_s) = (itoa::Buffer::new(), itoa::Buffer::new());
    let parts = [
        node.as_bytes(),
        b":",
        ktime_s.format(ktime).as_bytes(),
        b":",
        pid_s.format(pid).as_bytes(),
    ];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut stack = [0u8; 288];
    let mut heap = Vec::new();
    let raw: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for p in parts {
        raw[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    let mut out = String::with_capacity(len.div_ceil(3) * 4);
    base64::engine::general_purpose::STANDARD.encode_string(&*raw, &mut out);
    out
}

impl ProcTable {
    pub fn new(stats: Arc<Stats>) -> Self {
        ProcTable {
            by_pid: HashMap::new(),
            cap_names: CapNames::default(),
            stats,
        }
    }

    pub fn insert(&mut self, pid: u32, e: Arc<ProcEntry>) {
        if self.by_pid.len() >= MAX_PROCS && !self.by_pid.contains_key(&pid) {
            Stats::inc(&self.stats.procs_untracked);
            return;
        }
        self.by_pid.insert(pid, e);
    }

    pub fn get(&self, pid: u32) -> Option<&Arc<ProcEntry>> {
        self.by_pid.get(&pid)
    }

    pub fn remove(&mut self, pid: u32) -> Option<Arc<ProcEntry>> {
        self.by_pid.remove(&pid)
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Scans /proc: every live process gets an entry here and, unless the kernel already has a
    /// newer one, in the kernel's exec table, flagged as found by the scan.
    pub fn scan(
        &mut self,
        node: &str,
        kernel: &mut BpfHashMap<MapData, u32, podmap_proc>,
    ) -> usize {
        let tick_ns = 1_000_000_000 / clock_ticks();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some(entry) = scan_one(node, pid, tick_ns, &mut self.cap_names) else {
                continue;
            };
            let rec = podmap_proc {
                exec_ktime: entry.exec_ktime,
                flags: layout::PF_PROCFS_SCAN,
                // Its line into a container is not known from /proc: unknown for it and for
                // what it starts.
                entry_pid: 0,
            };
            // BPF_NOEXIST: a process that exec'd during the scan keeps its real entry.
            let _ = kernel.insert(pid, rec, BPF_NOEXIST);
            self.by_pid.entry(pid).or_insert_with(|| Arc::new(entry));
            n += 1;
        }
        n
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn scan_one(node: &str, pid: u32, tick_ns: u64, caps: &mut CapNames) -> Option<ProcEntry> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm; starttime is field 22 overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let start_ticks: u64 = fields.get(19)?.parse().ok()?;
    let start_time = start_ticks * tick_ns;
    // Kernel threads have no executable: name them like ps does, "[comm]".
    let binary = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .or_else(|_| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| format!("[{}]", c.trim_end()))
        })
        .unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .strip_suffix(&[0])
        .unwrap_or(&cmdline)
        .split(|&c| c == 0)
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let (ids, creds) = status_creds(&status, caps);
    Some(ProcEntry {
        exec_id: exec_id(node, start_time, pid).into(),
        exec_ktime: start_time,
        binary: binary.as_str().into(),
        args: args.as_slice().into(),
        cwd: cwd.into(),
        uid: ids.map_or(0, |(uid, _)| uid),
        creds,
        start_time,
        procfs_scan: true,
        runtime_init: is_runtime_init(&binary, &args),
    })
}

/// The real uid (and gid) and the credentials of a /proc/<pid>/status text: the `Uid:` and
/// `Gid:` lines (real, effective, saved, filesystem) and `CapEff:` (hexadecimal). Credentials are
/// None unless all of them read.
fn status_creds(status: &str, caps: &mut CapNames) -> (Option<(u32, u32)>, Option<Credentials>) {
    let line = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let pair = |name: &str| -> Option<(u32, u32)> {
        let mut it = line(name)?.split_whitespace().map(|v| v.parse::<u32>());
        Some((it.next()?.ok()?, it.next()?.ok()?))
    };
    let uids = pair("Uid:");
    let gids = pair("Gid:");
    let cap = line("CapEff:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    let creds = match (uids, gids, cap) {
        (Some((_, euid)), Some((gid, egid)), Some(cap)) => Some(Credentials {
            euid,
            gid,
            egid,
            cap_effective: caps.get(cap),
        }),
        _ => None,
    };
    (uids, creds)
}

impl ProcEntry {
    pub fn flags(&self) -> Vec<ProcessFlag> {
        let mut flags = Vec::new();
        if self.procfs_scan {
            flags.push(ProcessFlag::ProcfsScan);
        }
        if self.runtime_init {
            flags.push(ProcessFlag::RuntimeInit);
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_are_base64_of_node_time_pid() {
        use base64::Engine;
        let id = exec_id("node-a", 123, 42);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(id)
            .unwrap();
        assert_eq!(raw, b"node-a:123:42");
        // A name longer than the stack buffer takes the heap, with the same result.
        for len in [253, 300, 1000] {
            let node = "n".repeat(len);
            let raw = base64::engine::general_purpose::STANDARD
                .decode(exec_id(&node, u64::MAX, u32::MAX))
                .unwrap();
            assert_eq!(raw, format!("{node}:{}:{}", u64::MAX, u32::MAX).as_bytes());
        }
    }

    #[test]
    fn runc_init_is_told_from_the_workload() {
        let init = ["init".to_string()];
        for binary in [
            "/proc/self/exe",
            "/dev/fd/6",
            "/memfd:runc_cloned:/proc/self/exe (deleted)",
            "/usr/sbin/runc",
        ] {
            assert!(is_runtime_init(binary, &init), "{binary}");
        }
        // A workload's own `init`, or runc doing something else, is not.
        assert!(!is_runtime_init("/sbin/init", &init));
        assert!(!is_runtime_init("/dev/fd/", &init));
        assert!(!is_runtime_init("/dev/fd/6x", &init));
        assert!(!is_runtime_init("/usr/sbin/runc", &["run".to_string()]));
        assert!(!is_runtime_init("/usr/sbin/runc", &[]));
        assert!(is_runtime_init_comm("runc:[1:CHILD]"));
        assert!(!is_runtime_init_comm("runc"));
    }

    #[test]
    fn scanning_self_reads_this_process() {
        let mut caps = CapNames::default();
        let e = scan_one(
            "n",
            std::process::id(),
            1_000_000_000 / clock_ticks(),
            &mut caps,
        )
        .unwrap();
        assert!(e.binary.contains("podmap"), "{}", e.binary);
        assert!(e.start_time > 0);
        assert!(e.procfs_scan);
        // SAFETY: the id getters cannot fail.
        let (uid, euid, egid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getegid()) };
        assert_eq!(e.uid, uid);
        let c = e.creds.expect("credentials read from /proc");
        assert_eq!((c.euid, c.egid), (euid, egid));
    }

    #[test]
    fn status_credentials_are_read_or_unknown() {
        let mut caps = CapNames::default();
        let status = "Name:\tping\nUid:\t1000\t0\t0\t0\nGid:\t1001\t1002\t1002\t1002\n\
                      CapInh:\t0\nCapEff:\t0000000000202000\nCapBnd:\t000001ffffffffff\n";
        let (ids, c) = status_creds(status, &mut caps);
        assert_eq!(ids, Some((1000, 0)));
        let c = c.unwrap();
        assert_eq!((c.euid, c.gid, c.egid), (0, 1001, 1002));
        assert_eq!(*c.cap_effective, ["CAP_NET_RAW", "CAP_SYS_ADMIN"]);
        // The same set is named once and shared.
        let (_, again) = status_creds(status, &mut caps);
        assert!(Shared::ptr_eq(
            &c.cap_effective,
            &again.unwrap().cap_effective
        ));
        // Without a CapEff line nothing is claimed: unknown, not "no capabilities".
        let (ids, c) = status_creds("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", &mut caps);
        assert_eq!((ids, c), (Some((0, 0)), None));
    }
}
