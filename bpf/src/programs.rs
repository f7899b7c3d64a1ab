//! Loads and attaches the kernel programs (podmapd's job): exec, exit, fork, cgroup mkdir/rmdir.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::{RawTracePoint, TracePoint};
use aya::Ebpf;

use crate::cgroup::CgroupLayout;
use crate::layout::podmap_proc;
use crate::maps::{load_pinned, MapsError, SharedMaps};
use crate::{mounts, objects};

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
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
}

/// Settings the programs are loaded with.
#[derive(Debug, Clone)]
pub struct ProgramConfig {
    pub bpffs_dir: PathBuf,
    /// Which v1 controller the programs read ids from (None: v1 not tracked).
    pub v1_controller: Option<String>,
    pub v1_hierarchy_id: i32,
    /// Queued bytes past which a record wakes the reader; below it the reader polls.
    pub wakeup_bytes: u64,
}

impl ProgramConfig {
    pub fn new(bpffs_dir: &Path, layout: &CgroupLayout) -> Self {
        ProgramConfig {
            bpffs_dir: bpffs_dir.to_owned(),
            v1_controller: layout.v1.as_ref().map(|v| v.name.clone()),
            v1_hierarchy_id: layout.v1.as_ref().map_or(-1, |v| v.hierarchy_id),
            wakeup_bytes: 256 * 1024,
        }
    }
}

/// `enum podmap_v1_controller` of podmap.bpf.c.
fn v1_code(name: Option<&str>) -> u32 {
    match name {
        Some("memory") => 1,
        Some("pids") => 2,
        Some("cpu") => 3,
        Some("cpuset") => 4,
        Some("cpuacct") => 5,
        Some("blkio") => 6,
        Some("devices") => 7,
        Some("freezer") => 8,
        _ => 0,
    }
}

/// Whether BPF-LSM enforces deny rules here, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsmStatus {
    pub active: bool,
    /// The probe's answer: "attached" or the error that stopped it.
    pub detail: String,
}

/// The attached programs and the maps the daemon reads.
pub struct LoadedPrograms {
    pub lsm: LsmStatus,
    pub maps: SharedMaps,
    pub events: RingBuf<MapData>,
    /// The reader's sleep flag (see [`ReaderFlag`]).
    pub reader: ReaderFlag,
    /// tgid -> latest exec; podmapd seeds it from /proc at start-up.
    pub procs: HashMap<MapData, u32, podmap_proc>,
    /// The programs stay attached as long as this lives.
    pub attached: Attached,
}

/// Tells the programs whether the event reader sleeps without a timer: set, the next record
/// wakes it (and clears the flag); clear, records wake it only when much is queued, and the
/// reader polls.
pub struct ReaderFlag(Array<MapData, u32>);

impl ReaderFlag {
    pub fn set(&mut self, asleep: bool) -> Result<(), ProgramsError> {
        self.0
            .set(0, u32::from(asleep), 0)
            .map_err(|source| ProgramsError::Map {
                name: "podmap_reader",
                source: Box::new(source),
            })
    }
}

/// Owns the loaded object: dropping it detaches every program.
pub struct Attached(#[allow(dead_code)] Ebpf);

const TRACEPOINTS: [(&str, &str, &str); 4] = [
    ("podmap_exec", "sched", "sched_process_exec"),
    ("podmap_exit", "sched", "sched_process_exit"),
    ("podmap_cgroup_mkdir", "cgroup", "cgroup_mkdir"),
    ("podmap_cgroup_rmdir", "cgroup", "cgroup_rmdir"),
];

pub fn load(cfg: &ProgramConfig) -> Result<LoadedPrograms, ProgramsError> {
    mounts::ensure_tracefs()?;
    let v1 = v1_code(cfg.v1_controller.as_deref());
    let hier = cfg.v1_hierarchy_id;
    let wakeup = cfg.wakeup_bytes;
    let mut ebpf = load_pinned(objects::PROGRAMS, &cfg.bpffs_dir, |l| {
        l.override_global("v1_controller", &v1, true);
        l.override_global("v1_hierarchy_id", &hier, true);
        l.override_global("wakeup_bytes", &wakeup, true);
    })?;

    for (name, category, point) in TRACEPOINTS {
        attach_tracepoint(&mut ebpf, name, category, point)?;
    }
    let name = "podmap_fork";
    let prog: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProgramsError::Missing { name })?
        .try_into()
        .map_err(|source| load_error("raw_tracepoint", name, source))?;
    prog.load()
        .map_err(|source| load_error("raw_tracepoint", name, source))?;
    prog.attach("sched_process_fork")
        .map_err(|source| ProgramsError::Attach {
            name,
            point: "sched_process_fork",
            source: Box::new(source),
        })?;

    // Open rules: openat everywhere; open and openat2 where the kernel has them.
    for (name, point, required) in [
        ("podmap_openat", "sys_enter_openat", true),
        ("podmap_openat2", "sys_enter_openat2", false),
        ("podmap_open", "sys_enter_open", false),
    ] {
        match attach_tracepoint(&mut ebpf, name, "syscalls", point) {
            Ok(()) => {}
            Err(e) if !required => {
                tracing::debug!(error = %e, "optional open tracepoint not attached")
            }
            Err(e) => return Err(e),
        }
    }
    let lsm = load_lsm(&mut ebpf);

    let events = ebpf
        .take_map("podmap_events")
        .ok_or(ProgramsError::MissingMap("podmap_events"))?;
    let events = RingBuf::try_from(events).map_err(|source| ProgramsError::Map {
        name: "podmap_events",
        source: Box::new(source),
    })?;
    let reader = ebpf
        .take_map("podmap_reader")
        .ok_or(ProgramsError::MissingMap("podmap_reader"))?;
    let reader = ReaderFlag(
        Array::try_from(reader).map_err(|source| ProgramsError::Map {
            name: "podmap_reader",
            source: Box::new(source),
        })?,
    );
    let procs = ebpf
        .take_map("podmap_procs")
        .ok_or(ProgramsError::MissingMap("podmap_procs"))?;
    let procs = HashMap::try_from(procs).map_err(|source| ProgramsError::Map {
        name: "podmap_procs",
        source: Box::new(source),
    })?;
    let maps = SharedMaps::from_ebpf(&mut ebpf, &cfg.bpffs_dir)?;
    Ok(LoadedPrograms {
        maps,
        events,
        reader,
        procs,
        attached: Attached(ebpf),
        lsm,
    })
}

fn load_error(
    kind: &'static str,
    name: &'static str,
    source: aya::programs::ProgramError,
) -> ProgramsError {
    ProgramsError::Load {
        kind,
        name,
        source: Box::new(source),
        hint: " (podmap needs tracepoint and raw tracepoint programs with BTF and bpf_loop: Linux 5.17 or newer)",
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &'static str,
    point: &'static str,
) -> Result<(), ProgramsError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or(ProgramsError::Missing { name })?
        .try_into()
        .map_err(|source| load_error("tracepoint", name, source))?;
    prog.load()
        .map_err(|source| load_error("tracepoint", name, source))?;
    prog.attach(category, point)
        .map(|_| ())
        .map_err(|source| ProgramsError::Attach {
            name,
            point,
            source: Box::new(source),
        })
}

/// Probes BPF-LSM by loading and attaching the deny programs. Any failure leaves deny rules to
/// their fallback, and the reason is reported.
fn load_lsm(ebpf: &mut Ebpf) -> LsmStatus {
    let btf = match aya::Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => {
            return LsmStatus {
                active: false,
                detail: format!("no kernel BTF: {e}"),
            }
        }
    };
    for (name, hook) in [
        ("podmap_lsm_exec", "bprm_check_security"),
        ("podmap_lsm_open", "file_open"),
    ] {
        let Some(prog) = ebpf.program_mut(name) else {
            return LsmStatus {
                active: false,
                detail: format!("program {name} missing"),
            };
        };
        let prog: &mut aya::programs::Lsm = match prog.try_into() {
            Ok(p) => p,
            Err(e) => {
                return LsmStatus {
                    active: false,
                    detail: format!("{name}: {e}"),
                }
            }
        };
        if let Err(e) = prog.load(hook, &btf) {
            return LsmStatus {
                active: false,
                detail: format!("loading {name} ({hook}): {e}"),
            };
        }
        if let Err(e) = prog.attach() {
            return LsmStatus {
                active: false,
                detail: format!("attaching {name} ({hook}): {e}"),
            };
        }
    }
    LsmStatus {
        active: true,
        detail: "attached".into(),
    }
}
