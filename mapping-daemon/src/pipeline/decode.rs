//! Raw ring-buffer records to typed kernel events: the one place the kernel's C structs and raw
//! numbers are read. What leaves this module is domain types (cgroup keys, pids, typed actions
//! and modes, process flags), so the pipeline and enrichment never see a C struct. Bounds are
//! checked against the record's length: a short or corrupt record is reported, never read past.

use std::sync::Arc;

use podmap_bpf::layout::{
    self, podmap_cgroup_event, podmap_creds, podmap_event_header, podmap_exec_event,
    podmap_exit_event, podmap_open_event, podmap_policy_hit, podmap_task_ids,
};
use podmap_cgroup::{CgroupId, CgroupKey, LayoutKind};
use podmap_proto::ProcessFlag;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Exec(ExecRecord),
    Exit(ExitRecord),
    CgroupMkdir(CgroupRecord),
    CgroupRmdir(CgroupRecord),
    /// An open a policy rule acted on.
    PolicyOpen(OpenRecord),
}

/// Who did it, as the kernel saw it when the record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskIds {
    /// The process (thread group) id.
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The task's own cgroup in the cgroup2 hierarchy.
    pub cgroup_v2: CgroupId,
    /// The task's own cgroup in the tracked v1 controller's hierarchy; 0 when none is tracked.
    pub cgroup_v1: CgroupId,
    /// The mapped cgroup the kernel found the task in or below, if any.
    pub container: Option<CgroupKey>,
}

impl TaskIds {
    fn from_raw(ids: &podmap_task_ids) -> Self {
        let container = (ids.container_cgid != 0).then(|| {
            if ids.container_hier == layout::HIER_V1 {
                CgroupKey::v1(ids.container_cgid)
            } else {
                CgroupKey::v2(ids.container_cgid)
            }
        });
        TaskIds {
            pid: ids.pid,
            tid: ids.tid,
            ppid: ids.ppid,
            uid: ids.uid,
            cgroup_v2: CgroupId(ids.cgroup_v2),
            cgroup_v1: CgroupId(ids.cgroup_v1),
            container,
        }
    }

    /// The task's own cgroup in the hierarchy events are keyed by on this host.
    pub fn leaf(&self, kind: LayoutKind) -> CgroupKey {
        if kind == LayoutKind::Legacy {
            CgroupKey::v1(self.cgroup_v1.0)
        } else {
            CgroupKey::v2(self.cgroup_v2.0)
        }
    }

    /// The task's own cgroup id as events report it (docs/decisions.md #24): in the hierarchy its
    /// container was found in, else cgroup2 wherever the host has it, else the tracked v1
    /// controller's.
    pub fn own_cgroup(&self, kind: LayoutKind) -> CgroupId {
        match self.container.map(|k| k.hierarchy) {
            Some(podmap_cgroup::Hierarchy::V1) => self.cgroup_v1,
            Some(podmap_cgroup::Hierarchy::V2) => self.cgroup_v2,
            None => self.leaf(kind).id,
        }
    }
}

/// What the rule that acted asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitAction {
    Audit,
    Kill,
    Deny,
}

/// How the kernel carried the action out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Recorded only.
    Audit,
    /// The process was sent SIGKILL.
    Kill,
    /// BPF-LSM refused the operation (EPERM).
    Lsm,
}

impl HitAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HitAction::Audit => "audit",
            HitAction::Kill => "kill",
            HitAction::Deny => "deny",
        }
    }
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Audit => "audit",
            Enforcement::Kill => "kill",
            Enforcement::Lsm => "lsm",
        }
    }
}

/// The policy rule that acted on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyHit {
    pub policy_id: u32,
    pub rule_index: u16,
    pub action: HitAction,
    pub mode: Enforcement,
}

impl PolicyHit {
    /// None when no rule acted. Values this build does not know read as an audit: the event
    /// still reaches clients, and claims no more than that the rule matched.
    fn from_raw(h: podmap_policy_hit) -> Option<Self> {
        if h.mode == layout::MODE_NONE {
            return None;
        }
        Some(PolicyHit {
            policy_id: h.policy_id,
            rule_index: h.rule_index,
            action: match h.action {
                layout::ACT_KILL => HitAction::Kill,
                layout::ACT_DENY => HitAction::Deny,
                _ => HitAction::Audit,
            },
            mode: match h.mode {
                layout::MODE_KILL => Enforcement::Kill,
                layout::MODE_LSM => Enforcement::Lsm,
                _ => Enforcement::Audit,
            },
        })
    }
}

/// The kernel's record flags as process flags. Every `PODMAP_PF_*` bit has its flag; bits this
/// build does not know are dropped (a newer kernel object than the daemon cannot happen: both
/// ship in one binary).
fn process_flags(bits: u32) -> Vec<ProcessFlag> {
    [
        (layout::PF_ARGS_TRUNCATED, ProcessFlag::ArgsTruncated),
        (layout::PF_PROCFS_SCAN, ProcessFlag::ProcfsScan),
        (layout::PF_PATH_UNREADABLE, ProcessFlag::PathUnreadable),
        (layout::PF_CWD_TRUNCATED, ProcessFlag::CwdTruncated),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, flag)| flag)
    .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecord {
    pub ktime: u64,
    pub ids: TaskIds,
    pub policy: PolicyHit,
    pub open_flags: i32,
    pub path: Arc<str>,
}

impl KernelEvent {
    pub fn ktime(&self) -> u64 {
        match self {
            KernelEvent::Exec(e) => e.ktime,
            KernelEvent::Exit(e) => e.ktime,
            KernelEvent::CgroupMkdir(c) | KernelEvent::CgroupRmdir(c) => c.ktime,
            KernelEvent::PolicyOpen(o) => o.ktime,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub ktime: u64,
    pub flags: Vec<ProcessFlag>,
    pub ids: TaskIds,
    pub start_time: u64,
    pub parent_exec_ktime: u64,
    /// The process whose entry into the container this one's line goes back to (the kernel's
    /// `entry_pid`); None when unknown or not in a container.
    pub entry_pid: Option<u32>,
    /// The credentials the exec installed; None in the records of programs older than them
    /// (never read as zeros: uid 0 is root).
    pub creds: Option<Creds>,
    /// Set when a policy rule acted on this exec.
    pub policy: Option<PolicyHit>,
    pub filename: Arc<str>,
    pub cwd: Arc<str>,
    /// argv without argv[0].
    pub args: Arc<[String]>,
}

/// A process's credentials as the kernel read them at its exec (`struct podmap_creds`): ids of
/// the initial user namespace, the effective capability set as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Creds {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub cap_effective: u64,
}

impl Creds {
    fn from_raw(c: &podmap_creds) -> Self {
        Creds {
            uid: c.uid,
            euid: c.euid,
            gid: c.gid,
            egid: c.egid,
            cap_effective: c.cap_effective,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub ktime: u64,
    pub flags: Vec<ProcessFlag>,
    pub ids: TaskIds,
    pub exec_ktime: u64,
    pub exit_code: i32,
    /// As [`ExecRecord::entry_pid`].
    pub entry_pid: Option<u32>,
    /// The task's command name at exit.
    pub comm: Comm,
}

/// A task's command name as the kernel keeps it (`TASK_COMM_LEN` bytes, NUL-padded): kept as
/// bytes, since most exits never need it as text (their process table entry names them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm([u8; 16]);

impl Comm {
    /// The name up to its first NUL, invalid UTF-8 replaced.
    pub fn to_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_str(), f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRecord {
    pub ktime: u64,
    pub id: u64,
    pub hierarchy_id: i32,
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte header")]
    Short { len: usize, need: usize },
    #[error("unknown record type {0}")]
    UnknownType(u32),
    #[error("policy record without a policy")]
    NoPolicy,
}

/// `T` read from the first `len` bytes of `buf`, the rest of it zero: a record whose struct is
/// a prefix of `T` (an older program's).
fn read_prefix<T: Copy + Default>(buf: &[u8], len: usize) -> Result<T, DecodeError> {
    if buf.len() < len {
        return Err(DecodeError::Short {
            len: buf.len(),
            need: len,
        });
    }
    let mut v = T::default();
    let n = len.min(size_of::<T>());
    // SAFETY: T is a repr(C) POD mirror of the C layout, valid for any bytes; `n` is within
    // both `v` and `buf` (checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(buf.as_ptr(), &mut v as *mut T as *mut u8, n);
    }
    Ok(v)
}

fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::Short {
            len: buf.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a repr(C) POD mirror of the C layout (layout test), and
    // read_unaligned copes with the ring buffer's 8-byte (not T's) alignment.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const T) })
}

fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn c_arc(b: &[u8]) -> Arc<str> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Arc::from(&*String::from_utf8_lossy(&b[..end]))
}

thread_local! {
    /// The cwd under construction: a buffer kept between records, so building a cwd costs one
    /// allocation, the `Arc<str>` itself.
    static CWD: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// Every exec without arguments shares one empty list (an `Arc` always allocates).
    static NO_ARGS: Arc<[String]> = Arc::from(Vec::new());
}

/// The cwd region holds components leaf first, each NUL-terminated.
fn cwd_from_components(b: &[u8]) -> Arc<str> {
    CWD.with_borrow_mut(|s| {
        s.clear();
        for c in b.split(|&c| c == 0).rev().filter(|c| !c.is_empty()) {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(c));
        }
        if s.is_empty() {
            s.push('/');
        }
        Arc::from(s.as_str())
    })
}

fn split_args(b: &[u8]) -> Arc<[String]> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    // argv[0] alone (or nothing): no arguments.
    if !b.contains(&0) {
        return NO_ARGS.with(Arc::clone);
    }
    b.split(|&c| c == 0)
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn decode(buf: &[u8]) -> Result<KernelEvent, DecodeError> {
    let hdr: podmap_event_header = read(buf)?;
    match hdr.r#type {
        t @ (layout::EV_EXEC | layout::EV_EXEC_CREDS) => {
            // The two differ only in `creds`, which older programs' records (EV_EXEC) end before.
            let with_creds = t == layout::EV_EXEC_CREDS;
            let fixed = if with_creds {
                size_of::<podmap_exec_event>()
            } else {
                layout::EXEC_EVENT_NO_CREDS_SIZE
            };
            let ev: podmap_exec_event = read_prefix(buf, fixed)?;
            let data = &buf[fixed..];
            let region = |off: usize, len: usize| -> &[u8] {
                let start = off.min(data.len());
                &data[start..(off + len).min(data.len())]
            };
            let filename_len = (ev.filename_len as usize).min(layout::FILENAME_MAX);
            let cwd_len = (ev.cwd_len as usize).min(layout::CWD_MAX);
            let args_len = (ev.args_len as usize).min(layout::ARGS_MAX);
            // The newer record packs its tail (podmap.h); the older one has fixed regions.
            let (cwd_off, args_off) = if with_creds {
                (filename_len, filename_len + cwd_len)
            } else {
                (layout::FILENAME_MAX, layout::FILENAME_MAX + layout::CWD_MAX)
            };
            let filename = c_arc(region(0, filename_len));
            let cwd = cwd_from_components(region(cwd_off, cwd_len));
            let args = split_args(region(args_off, args_len));
            Ok(KernelEvent::Exec(ExecRecord {
                ktime: hdr.ktime,
                flags: process_flags(hdr.flags),
                ids: TaskIds::from_raw(&ev.ids),
                start_time: ev.start_time,
                parent_exec_ktime: ev.parent_exec_ktime,
                entry_pid: (ev.entry_pid != 0).then_some(ev.entry_pid),
                creds: with_creds.then(|| Creds::from_raw(&ev.creds)),
                policy: PolicyHit::from_raw(ev.policy),
                filename,
                cwd,
                args,
            }))
        }
        layout::EV_EXIT => {
            let ev: podmap_exit_event = read(buf)?;
            Ok(KernelEvent::Exit(ExitRecord {
                ktime: hdr.ktime,
                flags: process_flags(hdr.flags),
                ids: TaskIds::from_raw(&ev.ids),
                exec_ktime: ev.exec_ktime,
                exit_code: ev.exit_code,
                entry_pid: (ev.entry_pid != 0).then_some(ev.entry_pid),
                comm: Comm(ev.comm),
            }))
        }
        t @ (layout::EV_CGROUP_MKDIR | layout::EV_CGROUP_RMDIR) => {
            let ev: podmap_cgroup_event = read(buf)?;
            let data = &buf[size_of::<podmap_cgroup_event>()..];
            let path = c_str(&data[..(ev.path_len as usize).min(data.len())]);
            let rec = CgroupRecord {
                ktime: hdr.ktime,
                id: ev.id,
                hierarchy_id: ev.hierarchy_id,
                path,
            };
            Ok(if t == layout::EV_CGROUP_MKDIR {
                KernelEvent::CgroupMkdir(rec)
            } else {
                KernelEvent::CgroupRmdir(rec)
            })
        }
        layout::EV_POLICY_OPEN => {
            let ev: podmap_open_event = read(buf)?;
            let data = &buf[size_of::<podmap_open_event>()..];
            let path = c_arc(&data[..(ev.path_len as usize).min(data.len())]);
            let policy = PolicyHit::from_raw(ev.policy).ok_or(DecodeError::NoPolicy)?;
            Ok(KernelEvent::PolicyOpen(OpenRecord {
                ktime: hdr.ktime,
                ids: TaskIds::from_raw(&ev.ids),
                policy,
                open_flags: ev.open_flags,
                path,
            }))
        }
        other => Err(DecodeError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a repr(C) POD; viewing it as bytes is sound.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
    }

    /// The exec tail of an older programs' record (EV_EXEC): filename, cwd and args in their
    /// fixed regions.
    fn fixed_exec_tail() -> Vec<u8> {
        let mut data = vec![0u8; layout::FILENAME_MAX + layout::CWD_MAX];
        data[..8].copy_from_slice(b"/bin/sh\0");
        data[layout::FILENAME_MAX..layout::FILENAME_MAX + 9].copy_from_slice(b"tmp\0work\0");
        data.extend_from_slice(b"sh\0-c\0echo hi\0");
        data
    }

    /// The same tail packed, as EV_EXEC_CREDS records carry it.
    fn packed_exec_tail() -> Vec<u8> {
        b"/bin/sh\0tmp\0work\0sh\0-c\0echo hi\0".to_vec()
    }

    #[allow(clippy::field_reassign_with_default)]
    fn exec_header(kind: u32) -> podmap_exec_event {
        let mut ev = podmap_exec_event::default();
        ev.hdr.r#type = kind;
        ev.hdr.ktime = 42;
        ev.ids.pid = 7;
        ev.ids.uid = 1000;
        ev.filename_len = 8;
        ev.cwd_len = 9;
        ev.args_len = 14;
        ev.creds = podmap_creds {
            uid: 1000,
            euid: 0,
            gid: 1001,
            egid: 1002,
            cap_effective: 1 << 21,
        };
        ev
    }

    #[test]
    fn decodes_an_exec_record_with_its_credentials() {
        let mut buf = bytes(&exec_header(layout::EV_EXEC_CREDS));
        buf.extend_from_slice(&packed_exec_tail());
        let KernelEvent::Exec(e) = decode(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(&*e.filename, "/bin/sh");
        assert_eq!(&*e.cwd, "/work/tmp");
        assert_eq!(&*e.args, ["-c", "echo hi"]);
        assert_eq!(e.ids.pid, 7);
        assert_eq!(e.ktime, 42);
        assert_eq!(
            e.creds,
            Some(Creds {
                uid: 1000,
                euid: 0,
                gid: 1001,
                egid: 1002,
                cap_effective: 1 << 21,
            })
        );
    }

    /// A record of the programs an older podmapd pinned: the struct ends before `creds`, the
    /// tail follows at once. It decodes whole, its credentials unknown (not root).
    #[test]
    fn an_older_programs_exec_record_decodes_without_credentials() {
        let ev = exec_header(layout::EV_EXEC);
        let mut buf = bytes(&ev)[..layout::EXEC_EVENT_NO_CREDS_SIZE].to_vec();
        buf.extend_from_slice(&fixed_exec_tail());
        let KernelEvent::Exec(e) = decode(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(&*e.filename, "/bin/sh");
        assert_eq!(&*e.cwd, "/work/tmp");
        assert_eq!(&*e.args, ["-c", "echo hi"]);
        assert_eq!((e.ids.pid, e.ids.uid), (7, 1000));
        assert_eq!(e.creds, None);
        // Shorter than even the older struct: refused, naming what it needed.
        assert_eq!(
            decode(&buf[..layout::EXEC_EVENT_NO_CREDS_SIZE - 1]),
            Err(DecodeError::Short {
                len: layout::EXEC_EVENT_NO_CREDS_SIZE - 1,
                need: layout::EXEC_EVENT_NO_CREDS_SIZE,
            })
        );
        // A new record cut inside its credentials is short too, never half-read.
        let new = bytes(&exec_header(layout::EV_EXEC_CREDS));
        assert!(matches!(
            decode(&new[..layout::EXEC_EVENT_NO_CREDS_SIZE + 8]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn the_cwd_is_its_components_root_first() {
        assert_eq!(&*cwd_from_components(b"tmp\0work\0"), "/work/tmp");
        assert_eq!(&*cwd_from_components(b"tmp\0\0work\0\0"), "/work/tmp");
        assert_eq!(&*cwd_from_components(b"tmp\0work"), "/work/tmp");
        assert_eq!(&*cwd_from_components(b"\xff\0a\0"), "/a/\u{fffd}");
        assert_eq!(&*cwd_from_components(b""), "/");
        assert_eq!(&*cwd_from_components(b"\0\0"), "/");
    }

    #[test]
    fn arguments_are_what_follows_argv0_empty_ones_included() {
        let none: &[String] = &[];
        assert_eq!(&*split_args(b""), none);
        assert_eq!(&*split_args(b"true"), none);
        assert_eq!(&*split_args(b"true\0"), none);
        assert_eq!(&*split_args(b"sh\0-c\0exit 0\0"), ["-c", "exit 0"]);
        assert_eq!(&*split_args(b"echo\0\0"), [""], "an empty argument is one");
        assert_eq!(&*split_args(b"echo\0\xff\0"), ["\u{fffd}"]);
    }

    #[test]
    fn a_comm_is_its_bytes_up_to_the_first_nul() {
        let mut raw = [0u8; 16];
        assert!(Comm(raw).is_empty());
        raw[..14].copy_from_slice(b"runc:[1:CHILD]");
        assert_eq!(Comm(raw).to_str(), "runc:[1:CHILD]");
        assert_eq!(
            Comm([b'x'; 16]).to_str(),
            "x".repeat(16),
            "a full name has no NUL"
        );
        raw[0] = 0xff;
        assert_eq!(Comm(raw).to_str(), "\u{fffd}unc:[1:CHILD]");
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let h = podmap_event_header {
            r#type: 99,
            ..Default::default()
        };
        assert_eq!(decode(&bytes(&h)), Err(DecodeError::UnknownType(99)));
        // An exec header claiming more data than the record holds is cut, not overrun.
        let mut ev = podmap_exec_event::default();
        ev.hdr.r#type = layout::EV_EXEC;
        ev.filename_len = 200;
        ev.args_len = 1000;
        let KernelEvent::Exec(e) = decode(&bytes(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(&*e.filename, "");
        assert!(e.args.is_empty());
        assert_eq!(&*e.cwd, "/");
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)]
    fn every_kernel_flag_and_the_policy_hit_arrive_typed() {
        let mut ev = podmap_exec_event::default();
        ev.hdr.r#type = layout::EV_EXEC_CREDS;
        ev.hdr.flags = layout::PF_ARGS_TRUNCATED | layout::PF_CWD_TRUNCATED;
        ev.ids.cgroup_v2 = 11;
        ev.ids.cgroup_v1 = 22;
        ev.ids.container_cgid = 33;
        ev.ids.container_hier = layout::HIER_V1;
        ev.policy.policy_id = 5;
        ev.policy.action = layout::ACT_DENY;
        ev.policy.mode = layout::MODE_KILL;
        let KernelEvent::Exec(e) = decode(&bytes(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(
            e.flags,
            [ProcessFlag::ArgsTruncated, ProcessFlag::CwdTruncated]
        );
        assert_eq!(e.ids.container, Some(CgroupKey::v1(33)));
        assert_eq!(e.ids.own_cgroup(LayoutKind::Hybrid), CgroupId(22));
        assert_eq!(e.ids.leaf(LayoutKind::Hybrid), CgroupKey::v2(11));
        let hit = e.policy.unwrap();
        assert_eq!(
            (hit.policy_id, hit.action, hit.mode),
            (5, HitAction::Deny, Enforcement::Kill)
        );

        // No mapped cgroup: the own cgroup is the leaf's; no rule: no hit.
        ev.ids.container_cgid = 0;
        ev.policy.mode = layout::MODE_NONE;
        let KernelEvent::Exec(e) = decode(&bytes(&ev)).unwrap() else {
            panic!()
        };
        assert_eq!(e.ids.container, None);
        assert_eq!(e.ids.own_cgroup(LayoutKind::Legacy), CgroupId(22));
        assert_eq!(e.ids.own_cgroup(LayoutKind::Unified), CgroupId(11));
        assert_eq!(e.policy, None);
    }
}
