//! The programs podmapd attaches and where each one goes, how one program is attached (its link
//! handed over ready to pin), and the errors of loading and attaching. Shared by the loader
//! (`programs.rs`) and the pinned links (`links.rs`).

use std::path::PathBuf;

use aya::programs::links::FdLink;
use aya::programs::{RawTracePoint, TracePoint};
use aya::Ebpf;

use crate::maps::MapsError;
use crate::mounts;

#[derive(Debug, thiserror::Error)]
pub enum ProgramsError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("tracefs: {0}")]
    Tracefs(#[from] mounts::MountError),
    #[error("program {name} missing from the object")]
    Missing { name: &'static str },
    #[error("loading {kind} program {name}: {source}{hint}")]
    Load {
        kind: &'static str,
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("attaching {name} to {point}: {source}")]
    Attach {
        name: &'static str,
        point: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{0}")]
    Program(String),
    #[error("pinned links under {dir}: {detail}")]
    Links { dir: PathBuf, detail: String },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
}

/// Where a program attaches.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hook {
    Tracepoint(&'static str, &'static str),
    Raw(&'static str),
    Lsm(&'static str),
}

/// Whether podmapd can run without a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    /// The kernel may lack its attach point (openat2, open).
    Optional,
    /// BPF-LSM: only where it loads; both or neither.
    Lsm,
}

/// When a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// From podmapd's start on.
    Always,
    /// Only while open rules are in force (`open_tracepoints`): a syscall tracepoint puts every
    /// syscall of every task on the node on the kernel's slow path, so it is attached only
    /// when it has work (docs/decisions.md #46).
    OpenRules,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Prog {
    pub name: &'static str,
    pub hook: Hook,
    pub need: Need,
    pub when: When,
}

const fn tp(name: &'static str, category: &'static str, point: &'static str, need: Need) -> Prog {
    Prog {
        name,
        hook: Hook::Tracepoint(category, point),
        need,
        when: When::Always,
    }
}

/// A program of the open rules: on a syscall tracepoint, attached only while open rules are in
/// force.
const fn open_tp(name: &'static str, point: &'static str, need: Need) -> Prog {
    Prog {
        when: When::OpenRules,
        ..tp(name, "syscalls", point, need)
    }
}

/// Every program podmapd attaches.
pub(crate) const PROGRAMS: [Prog; 10] = [
    tp("podmap_exec", "sched", "sched_process_exec", Need::Required),
    tp("podmap_exit", "sched", "sched_process_exit", Need::Required),
    tp(
        "podmap_cgroup_mkdir",
        "cgroup",
        "cgroup_mkdir",
        Need::Required,
    ),
    tp(
        "podmap_cgroup_rmdir",
        "cgroup",
        "cgroup_rmdir",
        Need::Required,
    ),
    Prog {
        name: "podmap_fork",
        hook: Hook::Raw("sched_process_fork"),
        need: Need::Required,
        when: When::Always,
    },
    // Open rules: openat everywhere; open and openat2 where the kernel has them.
    open_tp("podmap_openat", "sys_enter_openat", Need::Required),
    open_tp("podmap_openat2", "sys_enter_openat2", Need::Optional),
    open_tp("podmap_open", "sys_enter_open", Need::Optional),
    Prog {
        name: "podmap_lsm_exec",
        hook: Hook::Lsm("bprm_check_security"),
        need: Need::Lsm,
        when: When::Always,
    },
    Prog {
        name: "podmap_lsm_open",
        hook: Hook::Lsm("file_open"),
        need: Need::Lsm,
        when: When::Always,
    },
];

/// Attaches one loaded program and hands its link over as an fd link, ready to pin.
pub(crate) fn attach_one(ebpf: &mut Ebpf, p: Prog) -> Result<FdLink, String> {
    let name = p.name;
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?;
    match p.hook {
        Hook::Tracepoint(category, point) => {
            let prog: &mut TracePoint = prog.try_into().map_err(|e| format!("{name}: {e}"))?;
            attach_tracepoint(prog, name, category, point)
        }
        Hook::Raw(point) => {
            let prog: &mut RawTracePoint = prog.try_into().map_err(|e| format!("{name}: {e}"))?;
            let id = prog
                .attach(point)
                .map_err(|e| format!("attaching {name} to {point}: {e}"))?;
            Ok(prog
                .take_link(id)
                .map_err(|e| format!("{name}: {e}"))?
                .into())
        }
        Hook::Lsm(hook) => {
            let prog: &mut aya::programs::Lsm =
                prog.try_into().map_err(|e| format!("{name}: {e}"))?;
            let id = prog
                .attach()
                .map_err(|e| format!("attaching {name} ({hook}): {e}"))?;
            Ok(prog
                .take_link(id)
                .map_err(|e| format!("{name}: {e}"))?
                .into())
        }
    }
}

/// Attaches a loaded (or pinned) tracepoint program and hands its link over as an fd link.
pub(crate) fn attach_tracepoint(
    prog: &mut TracePoint,
    name: &str,
    category: &str,
    point: &str,
) -> Result<FdLink, String> {
    let id = prog
        .attach(category, point)
        .map_err(|e| format!("attaching {name} to {point}: {e}"))?;
    let link = prog.take_link(id).map_err(|e| format!("{name}: {e}"))?;
    // A perf-event link is an fd link (BPF_LINK_CREATE) from Linux 5.15 on; older kernels
    // attach through an ioctl, which cannot be pinned.
    FdLink::try_from(link).map_err(|e| format!("{name}: link cannot be pinned: {e}"))
}
