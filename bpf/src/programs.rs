//! Loads and attaches the kernel programs (podmapd's job): exec, exit and fork, cgroup mkdir and
//! rmdir, the open tracepoints of the policy rules (openat required; openat2 and open where the
//! kernel has them; pinned as programs and attached only while open rules are in force:
//! `open_tracepoints`), and the BPF-LSM deny programs (bprm_check_security, file_open) where
//! BPF-LSM loads, probed at start.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, RingBuf};
use aya::programs::{RawTracePoint, TracePoint};
use aya::Ebpf;

pub use crate::attach::ProgramsError;
use crate::attach::{Hook, Need, Prog, PROGRAMS};
use crate::layout::podmap_proc;
use crate::maps::{load_pinned, Counters, MapsError, SharedMaps};
use crate::open_tracepoints::{self, OpenTracepoints};
use crate::pin_watch::{PinRepair, PinWatch};
use crate::{mounts, objects};
use podmap_cgroup::CgroupLayout;

/// Settings the programs are loaded with (podmapd hands them to its loader process as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProgramConfig {
    pub bpffs_dir: PathBuf,
    /// Which v1 controller the programs read ids from (None: v1 not tracked).
    pub v1_controller: Option<String>,
    pub v1_hierarchy_id: i32,
    /// Queued bytes past which a record wakes the reader; below it the reader polls.
    pub wakeup_bytes: u64,
    /// How long to wait for another podmapd to let go of the pin directory.
    pub lock_wait: std::time::Duration,
}

impl ProgramConfig {
    pub fn new(bpffs_dir: &Path, layout: &CgroupLayout) -> Self {
        ProgramConfig {
            bpffs_dir: bpffs_dir.to_owned(),
            v1_controller: layout.v1.as_ref().map(|v| v.name.clone()),
            v1_hierarchy_id: layout.v1.as_ref().map_or(-1, |v| v.hierarchy_id),
            wakeup_bytes: crate::layout::WAKEUP_BYTES_DEFAULT,
            lock_wait: std::time::Duration::from_secs(30),
        }
    }
}

/// `enum podmap_v1_controller` of podmap.h.
fn v1_code(name: Option<&str>) -> u32 {
    use crate::layout::*;
    match name {
        Some("memory") => V1_MEMORY,
        Some("pids") => V1_PIDS,
        Some("cpu") => V1_CPU,
        Some("cpuset") => V1_CPUSET,
        Some("cpuacct") => V1_CPUACCT,
        Some("blkio") => V1_BLKIO,
        Some("devices") => V1_DEVICES,
        Some("freezer") => V1_FREEZER,
        _ => V1_NONE,
    }
}

/// Whether BPF-LSM enforces deny rules here, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LsmStatus {
    pub active: bool,
    /// The probe's answer: "attached" or the error that stopped it.
    pub detail: String,
}

/// What [`install`] did: how the links were taken over and whether BPF-LSM enforces. Everything
/// else it leaves in the pin directory, for [`open`]. podmapd's loader process reports it as
/// one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    pub lsm: LsmStatus,
    pub links: crate::links::LinkStatus,
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
    /// How the pinned links were taken over at start (adopted, replaced, attached afresh).
    pub links: crate::links::LinkStatus,
    /// This process's hold on the pinned links and its own maps.
    pub attached: Attached,
    /// The open rules' programs, attached while open rules are in force (their links are not
    /// among `attached`'s).
    pub open: OpenTracepoints,
    /// This process's hold on the pin directory: keep it while reading the ring buffer.
    pub lock: std::fs::File,
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

/// Owns the loaded object and holds the links and podmapd's own maps. Dropping it detaches
/// nothing: the programs run through links pinned under `<bpffs dir>/links` (docs/decisions.md
/// #30), so kill and deny keep acting while podmapd is down. While podmapd runs, removing the
/// pin directory detaches nothing either: it holds the links, and [`Attached::keep_pins`] pins
/// them and its maps again.
pub struct Attached {
    pins: PinWatch,
}

impl Attached {
    /// Pins the links and podmapd's own maps again where their pins went missing, so a
    /// restarted podmapd adopts these links instead of attaching a second generation, and
    /// reads the same ring buffer. Counted in `counters` and logged ([`PinWatch::keep`]).
    pub fn keep_pins(&mut self, counters: &Counters) -> PinRepair {
        self.pins.keep(counters)
    }
}

/// podmapd's own maps (the plugins never open them), pinned beside the shared ones: the programs
/// keep running while podmapd is down, so a restarted podmapd must read the same ring buffer (what
/// was queued meanwhile is still there; what did not fit is counted in `kernel_ringbuf_dropped`),
/// set the same sleep flag and see the same process table as the running programs.
pub(crate) const PRIVATE_PINNED: [&str; 3] = ["podmap_events", "podmap_reader", "podmap_procs"];

/// Refuses private pins another podmap version made with other sizes (the programs would be
/// refused by the verifier with a less helpful message, or misread them).
fn check_private_pins(dir: &Path) -> Result<(), ProgramsError> {
    let expected: [(&'static str, u32, u32); 3] = [
        ("podmap_events", 0, 0),
        ("podmap_reader", 4, 4),
        ("podmap_procs", 4, size_of::<podmap_proc>() as u32),
    ];
    for (name, key, value) in expected {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|source| ProgramsError::Map {
                name,
                source: Box::new(source),
            })?;
        for (what, found, expected) in [
            ("key size", info.key_size(), key),
            ("value size", info.value_size(), value),
        ] {
            if found != expected {
                return Err(ProgramsError::Maps(MapsError::Incompatible {
                    path,
                    dir: dir.to_owned(),
                    what,
                    found,
                    expected,
                }));
            }
        }
    }
    Ok(())
}

/// One podmapd per pin directory: two would share one pinned ring buffer and each take records
/// from the other. A podmapd still stopping (a rolling update) is waited for, up to `wait`. The
/// lock (flock on the directory) goes with the process, however it ends.
fn lock_dir(dir: &Path, wait: std::time::Duration) -> Result<std::fs::File, ProgramsError> {
    let err = |detail: String| ProgramsError::Links {
        dir: dir.to_owned(),
        detail,
    };
    let f = std::fs::File::open(dir).map_err(|e| err(format!("opening: {e}")))?;
    let deadline = std::time::Instant::now() + wait;
    let mut logged = false;
    loop {
        match try_flock(&f) {
            Ok(true) => return Ok(f),
            Ok(false) if std::time::Instant::now() < deadline => {}
            Ok(false) => {
                return Err(err(
                    "another podmapd uses this pin directory (it holds the lock)".to_string(),
                ))
            }
            Err(e) => {
                return Err(err(format!(
                    "another podmapd uses this pin directory (locking it: {e})"
                )))
            }
        }
        if !logged {
            tracing::warn!(dir = %dir.display(), ?wait, "another podmapd holds the pin directory: waiting for it to stop");
            logged = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Makes the pin directory and takes its lock (one podmapd per pin directory; see
/// [`lock_dir`]). Keep the file for as long as the pins are read or written.
pub fn lock(cfg: &ProgramConfig) -> Result<std::fs::File, ProgramsError> {
    let dir = &cfg.bpffs_dir;
    // First: on a host where nothing mounted bpffs yet, /sys/fs/bpf is a read-only sysfs
    // directory and making the pin directory there fails.
    mounts::ensure_bpffs(dir).map_err(MapsError::from)?;
    std::fs::create_dir_all(dir).map_err(|source| MapsError::PinDir {
        path: dir.to_owned(),
        source,
    })?;
    lock_dir(dir, cfg.lock_wait)
}

/// Whether another process holds the lock of the pin directory `dir` (a look: a lock this call
/// takes goes when it returns). podmapd's loader process runs only under the lock of its parent.
pub fn lock_is_held(dir: &Path) -> std::io::Result<bool> {
    // Closing the file drops a lock taken here.
    Ok(!try_flock(&std::fs::File::open(dir)?)?)
}

/// Takes an exclusive flock on `f` without waiting: true if taken, false if another holds it.
fn try_flock(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor the caller keeps open for the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Loads the programs in this process, then opens what they left pinned: [`lock`], [`install`]
/// and [`open`] in one. podmapd runs [`install`] in a process of its own instead, so that the
/// kernel BTF aya parses never counts in the daemon's memory (docs/decisions.md #39).
pub fn load(cfg: &ProgramConfig) -> Result<LoadedPrograms, ProgramsError> {
    let lock = lock(cfg)?;
    let installed = install(cfg)?;
    open(&cfg.bpffs_dir, installed, lock)
}

/// Loads the programs, pins the private maps, and adopts or replaces the pinned links
/// (`links::install`); the caller holds the pin directory's lock ([`lock`], possibly in a
/// parent process). Nothing stays held by this process: the links and maps live on through
/// their pins.
pub fn install(cfg: &ProgramConfig) -> Result<Installed, ProgramsError> {
    mounts::ensure_tracefs()?;
    let dir = &cfg.bpffs_dir;
    check_private_pins(dir)?;
    let v1 = v1_code(cfg.v1_controller.as_deref());
    let hier = cfg.v1_hierarchy_id;
    let wakeup = cfg.wakeup_bytes;
    let mut ebpf = load_pinned(objects::PROGRAMS, dir, |l| {
        l.override_global("v1_controller", &v1, true);
        l.override_global("v1_hierarchy_id", &hier, true);
        l.override_global("wakeup_bytes", &wakeup, true);
        // Pinned from here rather than in the C (LIBBPF_PIN_BY_NAME): they are podmapd's alone,
        // and maps.bpf.h stays the list of maps shared with the plugins.
        for name in PRIVATE_PINNED {
            l.map_pin_path(name, dir.join(name));
        }
    })?;

    // Load everything first; attaching is the links' business: adopt the pinned ones when they
    // run these very programs, otherwise attach these and swap them in.
    let mut lsm_error = None;
    let mut candidates = vec![];
    for p in PROGRAMS {
        match load_one(&mut ebpf, p) {
            Ok(()) => candidates.push(p),
            Err(e) if p.need == Need::Lsm => {
                lsm_error.get_or_insert(e);
            }
            Err(e) => return Err(ProgramsError::Program(e)),
        }
    }
    pin_on_demand(&mut ebpf, dir)?;
    let open_rules = open_rules_in_force(&ebpf)?;
    let links = crate::links::install(&mut ebpf, dir, &candidates, open_rules)?;
    for name in PRIVATE_PINNED {
        if !dir.join(name).exists() {
            return Err(ProgramsError::MissingMap(name));
        }
    }
    let lsm = match (lsm_error, links.lsm_error.clone()) {
        (Some(e), _) => LsmStatus {
            active: false,
            detail: e,
        },
        (None, Some(e)) => LsmStatus {
            active: false,
            detail: e,
        },
        (None, None) => LsmStatus {
            active: true,
            detail: "attached".into(),
        },
    };
    Ok(Installed { lsm, links })
}

/// Pins the programs podmapd attaches later, as it needs them, under `<dir>/progs/`
/// ([`crate::open_tracepoints`]), each replacing in one rename the one a previous start pinned.
fn pin_on_demand(ebpf: &mut Ebpf, dir: &Path) -> Result<(), ProgramsError> {
    let progs = dir.join(crate::open_tracepoints::PROGS_DIR);
    let err = |detail: String| ProgramsError::Links {
        dir: dir.to_owned(),
        detail,
    };
    std::fs::create_dir_all(&progs)
        .map_err(|e| err(format!("creating {}: {e}", progs.display())))?;
    for p in crate::open_tracepoints::on_demand() {
        let prog: &mut TracePoint = ebpf
            .program_mut(p.name)
            .ok_or(ProgramsError::Missing { name: p.name })?
            .try_into()
            .map_err(|e| err(format!("{}: {e}", p.name)))?;
        // bpffs refuses dots in names.
        let (tmp, path) = (progs.join(format!("{}_new", p.name)), progs.join(p.name));
        let _ = std::fs::remove_file(&tmp);
        prog.pin(&tmp)
            .map_err(|e| err(format!("pinning {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                path.display()
            ))
        })?;
    }
    Ok(())
}

/// Whether the rule tables the programs read hold open rules now (written by the podmapd that
/// ran before, and in force through its links).
fn open_rules_in_force(ebpf: &Ebpf) -> Result<bool, ProgramsError> {
    use crate::maps::POLICY_STATE_MAP;
    let map = ebpf
        .map(POLICY_STATE_MAP)
        .ok_or(ProgramsError::MissingMap(POLICY_STATE_MAP))?;
    let state: Array<&MapData, crate::layout::podmap_policy_state> =
        Array::try_from(map).map_err(|source| ProgramsError::Map {
            name: POLICY_STATE_MAP,
            source: Box::new(source),
        })?;
    let st = state.get(&0, 0).map_err(|source| ProgramsError::Map {
        name: POLICY_STATE_MAP,
        source: Box::new(source),
    })?;
    Ok(st.open_rules > 0)
}

/// Opens what [`install`] left pinned under `dir`: the pinned links (held, and their pins kept),
/// the ring buffer, the reader flag, the process table and the shared maps. Parses no object
/// and no BTF.
pub fn open(
    dir: &Path,
    installed: Installed,
    lock: std::fs::File,
) -> Result<LoadedPrograms, ProgramsError> {
    let Installed { lsm, links } = installed;
    let open = OpenTracepoints::open(dir, &links.programs)?;
    let mut pins = PinWatch::new(dir);
    let always = links
        .programs
        .iter()
        .filter(|n| !open_tracepoints::on_demand().any(|p| p.name == n.as_str()));
    for name in always {
        let pin = format!("{}/{name}", crate::links::LINKS_DIR);
        pins.watch_pinned_link(pin.clone())
            .map_err(|e| ProgramsError::Links {
                dir: dir.to_owned(),
                detail: format!("holding {pin}: {e}"),
            })?;
    }
    let map_err = |name: &'static str| {
        move |source| ProgramsError::Map {
            name,
            source: Box::new(source),
        }
    };
    let mut private = |name: &'static str, wrap: fn(MapData) -> Map| {
        let map = wrap(MapData::from_pin(dir.join(name)).map_err(map_err(name))?);
        pins.watch_map(name, &map)?;
        Ok::<_, ProgramsError>(map)
    };
    let events = RingBuf::try_from(private("podmap_events", Map::RingBuf)?)
        .map_err(map_err("podmap_events"))?;
    let reader = ReaderFlag(
        Array::try_from(private("podmap_reader", Map::Array)?).map_err(map_err("podmap_reader"))?,
    );
    let procs = HashMap::try_from(private("podmap_procs", Map::HashMap)?)
        .map_err(map_err("podmap_procs"))?;
    let maps = SharedMaps::open(dir)?;
    Ok(LoadedPrograms {
        maps,
        events,
        reader,
        procs,
        links,
        attached: Attached { pins },
        open,
        lsm,
        lock,
    })
}

/// Loads (does not attach) one program. For LSM programs the error is the probe's answer.
fn load_one(ebpf: &mut Ebpf, p: Prog) -> Result<(), String> {
    let name = p.name;
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?;
    match p.hook {
        Hook::Tracepoint(..) => {
            let prog: &mut TracePoint = prog.try_into().map_err(|e| format!("{name}: {e}"))?;
            prog.load()
                .map_err(|source| load_error("tracepoint", name, source).to_string())
        }
        Hook::Raw(_) => {
            let prog: &mut RawTracePoint = prog.try_into().map_err(|e| format!("{name}: {e}"))?;
            prog.load()
                .map_err(|source| load_error("raw_tracepoint", name, source).to_string())
        }
        Hook::Lsm(hook) => {
            let btf = aya::Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
            let prog: &mut aya::programs::Lsm =
                prog.try_into().map_err(|e| format!("{name}: {e}"))?;
            prog.load(hook, &btf)
                .map_err(|e| format!("loading {name} ({hook}): {e}"))
        }
    }
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
