//! What the hook does at each stage, and how each outcome is logged and counted.
//!
//! createRuntime: state -> config.json -> annotations -> cgroup -> the pod's labels (from the
//! sandbox's record in the map) -> policy memberships -> the pinned map (before the store: that
//! is what the kernel reads, and it needs no lock) -> the store, through its queue (records.rs).
//! poststop: the record's grace period starts (store and map); a later run sweeps it.
//!
//! Nothing here fails the container: every problem is one log line and a shared counter, and
//! the outcome only decides the exit code for fail-closed namespaces.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use podmap_bpf::layout::Counter;
use podmap_bpf::maps::{boot_ns, CONTAINERS_MAP};
use podmap_bpf::{ContainerId, ContainerMeta, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::{resolve_container, CgroupLayout, ProcCgroups, Process, Request};
use podmap_cgroup::{CgroupIds, Hierarchy};
use podmap_writer::registry::Retention;
use podmap_writer::store::ContainerRecord;

use crate::annotations::{self, AnnotationProblem};
use crate::bundle::{self, BundleConfig, BundleError};
use crate::log::HookLog;
use crate::meta::container_meta;
use crate::options::{Level, Options, Stage};
use crate::panics;
use crate::policies;
use crate::records::{self, this_boot, Apply, StoreQueue};
use crate::sandbox::{self, fill_from_sandbox};
use crate::spool::Entry;
use crate::state::{State, StateError};
use crate::watchdog;

/// How a run ended, for the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The record is in the pinned map.
    Mapped,
    /// The container could not be mapped (logged and counted).
    NotMapped { namespace: Option<String> },
    /// poststop, or nothing to do.
    Done,
}

/// What the watchdog needs to know if it fires.
#[derive(Debug, Clone)]
struct Progress {
    stage: Stage,
    step: &'static str,
    container: Option<String>,
    namespace: Option<String>,
    mapped: bool,
}

pub struct Hook {
    opts: Options,
    log: HookLog,
    started: Instant,
    /// When the watchdog fires.
    deadline: Instant,
    /// Between the deadline and the bound: the watchdog's report gets half of it.
    margin: Duration,
    // Shared with the watchdog thread, which counts a timeout through the same maps.
    maps: Mutex<Option<SharedMaps>>,
    progress: Mutex<Progress>,
}

impl Hook {
    /// `started` is when the process started (the create-to-mapping-ready clock).
    pub fn new(opts: Options, log: HookLog, started: Instant) -> Hook {
        // The watchdog fires a little before the bound so the process is gone by then.
        let margin = (opts.timeout / 20).min(Duration::from_millis(50));
        let deadline = started + opts.timeout.saturating_sub(margin);
        let stage = opts.stage;
        Hook {
            opts,
            log,
            started,
            deadline,
            margin,
            maps: Mutex::new(None),
            progress: Mutex::new(Progress {
                stage,
                step: "starting",
                container: None,
                namespace: None,
                mapped: false,
            }),
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn log(&self) -> &HookLog {
        &self.log
    }

    /// Runs the stage on the state `read_state` returns (stdin). The maps are opened first, so
    /// that even a run stuck reading its state is counted when the watchdog ends it.
    pub fn run(&self, read_state: impl FnOnce() -> Result<Vec<u8>, StateError>) -> Outcome {
        let pins_existed = self.open_maps();
        self.count(Counter::HookRuns);
        self.step("reading the state");
        let Some(state) = self.parse_state(read_state()) else {
            return match self.opts.stage {
                Stage::Poststop => Outcome::Done,
                _ => Outcome::NotMapped { namespace: None },
            };
        };
        let stage = match self.opts.stage {
            Stage::Auto => match Stage::from_status(&state.status) {
                Some(s) => s,
                None => {
                    self.bad_input(
                        Some(&state.id.0),
                        &mut false,
                        format_args!(
                            "status {:?} names no stage this hook handles (does the hooks.d \
                             entry list other stages?); nothing done",
                            state.status
                        ),
                    );
                    return Outcome::Done;
                }
            },
            s => s,
        };
        self.log.set_stage(stage);
        self.with_progress(|p| p.stage = stage);
        match stage {
            Stage::Poststop => self.poststop(state, pins_existed),
            _ => self.create_runtime(state, pins_existed),
        }
    }

    /// Runs `run` (the stage, [`Hook::run`]) and returns the process's exit code. A panic in it
    /// ends here as a failure like any other: one log line, counted, and the exit code of
    /// a container in the state the run reached (non-zero only for an unmapped container of a
    /// fail-closed namespace at createRuntime).
    pub fn guard(&self, run: impl FnOnce() -> Outcome) -> i32 {
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(outcome) => self.exit_code(&outcome),
            Err(payload) => self.on_panic(&panics::describe(&*payload)),
        }
    }

    /// The process's exit code: non-zero only for an unmapped container in a fail-closed
    /// namespace (never podmap's own).
    pub fn exit_code(&self, outcome: &Outcome) -> i32 {
        match outcome {
            Outcome::NotMapped { namespace } if self.opts.fails_closed(namespace.as_deref()) => {
                self.fail_closed_notice(namespace.as_deref());
                1
            }
            _ => 0,
        }
    }

    /// The runtime shows a failed hook's stderr with the container's error. Written without
    /// `eprintln!`, which panics when stderr is a closed pipe.
    fn fail_closed_notice(&self, namespace: Option<&str>) {
        let _ = writeln!(
            std::io::stderr(),
            "podmap-oci-hook: the container could not be mapped and namespace {} fails closed \
             (see {})",
            namespace.unwrap_or_default(),
            self.opts.log_file.display()
        );
    }

    /// Where the run got to, also after a panic in the middle of an update.
    fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a run that stopped at `p` (a timeout, a panic) fails the container: only an
    /// unmapped one at createRuntime in a fail-closed namespace.
    fn fails_at(&self, p: &Progress) -> bool {
        p.stage != Stage::Poststop && !p.mapped && self.opts.fails_closed(p.namespace.as_deref())
    }

    /// A panic caught at the edge: logs, counts, and picks the exit code.
    fn on_panic(&self, what: &str) -> i32 {
        let p = self.progress();
        let fail = self.fails_at(&p);
        // The code is decided; nothing below may change it, not even a second panic.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            self.log.line(
                Level::Error,
                p.container.as_deref(),
                format_args!(
                    "panicked while {}: {what}; the container {} mapped; exiting {} (a bug in \
                     podmap-oci-hook or what it links: please report it with this line)",
                    p.step,
                    if p.mapped { "is" } else { "is not" },
                    i32::from(fail)
                ),
            );
            self.count(Counter::HookFailures);
            if fail {
                self.fail_closed_notice(p.namespace.as_deref());
            }
        }));
        i32::from(fail)
    }

    /// Called by the watchdog at the deadline: picks the exit code, then logs and counts, but
    /// waits for that at most half the margin left before the bound (a hung log).
    pub fn on_timeout(self: &Arc<Self>) -> i32 {
        // try_lock: the main thread may be stuck holding it.
        let p = try_lock(&self.progress).map(|p| p.clone());
        let p = p.unwrap_or(Progress {
            stage: self.opts.stage,
            step: "an unknown step",
            container: None,
            namespace: None,
            mapped: false,
        });
        let fail = self.fails_at(&p);
        let hook = Arc::clone(self);
        watchdog::within(self.margin / 2, move || hook.report_timeout(&p));
        i32::from(fail)
    }

    fn report_timeout(&self, p: &Progress) {
        self.log.line(
            Level::Error,
            p.container.as_deref(),
            format_args!(
                "timed out after {} ms (--timeout {:?}) while {}; the container {} mapped; exiting",
                self.started.elapsed().as_millis(),
                self.opts.timeout,
                p.step,
                if p.mapped { "is" } else { "is not" }
            ),
        );
        // The main thread may hold the maps (stuck in a map syscall): try briefly, then give up
        // on the counter rather than on the bound.
        for _ in 0..10 {
            if let Some(maps) = try_lock(&self.maps) {
                if let Some(m) = maps.as_ref() {
                    m.counters.add(Counter::HookTimeouts, 1);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // Locks below take over a poisoned lock: after a panic the edge still logs where the run
    // was and counts it.
    fn step(&self, step: &'static str) {
        self.with_progress(|p| p.step = step);
    }

    fn with_progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The container's bounding set and privilege from the spec (docs/decisions.md #36): the
    /// runtime applies `process.capabilities` to the init before its program starts. The init
    /// itself cannot tell yet: at createRuntime it still holds the runtime's full set. What
    /// cannot be learnt is unknown in the record, logged and counted; it never stops the mapping.
    fn record_capabilities(&self, meta: &mut ContainerMeta, bounding: Option<&[String]>, id: &str) {
        let Some(names) = bounding else {
            self.log.line(
                Level::Debug,
                Some(id),
                format_args!(
                    "config.json has no process.capabilities.bounding list: privilege unknown"
                ),
            );
            self.count(Counter::CapabilitiesUnread);
            return;
        };
        let (mask, unknown) = crate::meta::capability_mask(names);
        if !unknown.is_empty() {
            self.log.line(
                Level::Warn,
                Some(id),
                format_args!(
                    "capabilities podmap does not know in the bounding set, left out: {unknown:?}"
                ),
            );
        }
        match podmap_writer::privilege::node_capabilities() {
            // What the spec asks for beyond what the node can give (podman's --privileged
            // names every capability the kernel knows, also one the host's init lacks) never
            // reaches the container's bounding set: recorded as the kernel will apply it, the
            // same set podmap-nri reads from /proc.
            Ok(node) => meta.set_capabilities(mask & node, node),
            Err(e) => {
                self.log.line(
                    Level::Warn,
                    Some(id),
                    format_args!("{e}: privilege unknown"),
                );
                self.count(Counter::CapabilitiesUnread);
            }
        }
    }

    fn count(&self, c: Counter) {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = maps.as_ref() {
            m.counters.add(c, 1);
        }
    }

    /// Opens the pinned maps; returns whether they were there before (false: this run created
    /// them, so the store's records are written back).
    fn open_maps(&self) -> bool {
        self.step("opening the pinned maps");
        let existed = self.opts.bpffs_dir.join(CONTAINERS_MAP).exists();
        match SharedMaps::open(&self.opts.bpffs_dir) {
            Ok(m) => {
                if let Ok(mut maps) = self.maps.lock() {
                    *maps = Some(m);
                }
            }
            Err(e) => self.log.line(
                Level::Error,
                None,
                format_args!(
                    "pinned maps under {}: {e}; nothing is mapped and no counter can be kept \
                     (the store keeps the record for when the maps are back)",
                    self.opts.bpffs_dir.display()
                ),
            ),
        }
        existed
    }

    fn has_maps(&self) -> bool {
        self.maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn bad_input(&self, id: Option<&str>, counted: &mut bool, msg: std::fmt::Arguments<'_>) {
        self.log.line(Level::Error, id, msg);
        if !*counted {
            self.count(Counter::HookBadInput);
            *counted = true;
        }
    }

    /// The state, or the logged and counted reason there is none.
    fn parse_state(&self, input: Result<Vec<u8>, StateError>) -> Option<State> {
        match input.and_then(|bytes| State::parse(&bytes)) {
            Ok(state) => {
                let id = state.id.0.clone();
                self.with_progress(|p| p.container = Some(id));
                Some(state)
            }
            Err(e) => {
                self.bad_input(None, &mut false, format_args!("{e}; nothing done"));
                None
            }
        }
    }

    fn create_runtime(&self, state: State, pins_existed: bool) -> Outcome {
        let id = state.id.0.as_str();
        let mut counted_bad = false;

        // config.json: the cgroup path and the annotations. Without it the state's copy of the
        // annotations and the process's membership still map the container.
        self.step("reading config.json");
        let bundle_dir = state
            .bundle
            .clone()
            .or_else(|| std::env::current_dir().ok());
        let config = match bundle_dir
            .as_deref()
            .ok_or(BundleError::NoBundle)
            .and_then(bundle::read_config)
        {
            Ok(c) => c,
            Err(e) => {
                self.bad_input(
                    Some(id),
                    &mut counted_bad,
                    format_args!(
                        "{e}; mapping from the state's annotations and /proc/{}/cgroup",
                        state.pid.map_or("<no pid>".to_string(), |p| p.to_string())
                    ),
                );
                BundleConfig::default()
            }
        };
        let mut ann = state.annotations.clone();
        // The config is what the runtime was asked to run; the state's copy fills gaps.
        ann.extend(config.annotations.clone());
        let (kube, problems) = annotations::kube_meta(&ann);
        for p in &problems {
            let level = match p {
                AnnotationProblem::Incomplete { .. } => Level::Warn,
                _ => Level::Error,
            };
            self.log.line(level, Some(id), format_args!("{p}"));
            if !counted_bad {
                self.count(Counter::HookBadInput);
                counted_bad = true;
            }
        }
        let namespace = kube.as_ref().map(|k| k.namespace.clone());
        self.with_progress(|p| p.namespace = namespace.clone());
        let not_mapped = || Outcome::NotMapped {
            namespace: namespace.clone(),
        };

        self.step("resolving the cgroup");
        let layout = match CgroupLayout::detect(&self.opts.cgroup_root, &self.opts.v1_controller) {
            Ok(l) => l,
            Err(e) => {
                self.log
                    .line(Level::Error, Some(id), format_args!("{e}; not mapped"));
                self.count(Counter::HookFailures);
                return not_mapped();
            }
        };
        let process = Process::read(state.pid.map(|p| p.0));
        if let Process::Gone { pid, error } = &process {
            self.log.line(
                Level::Warn,
                Some(id),
                format_args!("/proc/{pid}/cgroup: {error}; using linux.cgroupsPath alone"),
            );
        }
        // The hook runs in the runtime's cgroup, which is never the container's.
        let own = ProcCgroups::own().ok();
        let request = Request {
            cgroups_path: config.cgroups_path.as_deref(),
            process: &process,
            runtime: own.as_ref(),
        };
        let found = match resolve_container(&layout, &request) {
            Ok(m) => m,
            Err(e) => {
                self.log
                    .line(Level::Error, Some(id), format_args!("{e}; not mapped"));
                self.count(Counter::CgroupUnresolved);
                self.count(Counter::HookFailures);
                return not_mapped();
            }
        };
        for d in found.disagreements() {
            self.log.line(
                Level::Warn,
                Some(id),
                format_args!("cgroup disagreement, {d}"),
            );
        }

        let path = found.rel_str();
        let mut meta = container_meta(&state, &ann, kube.as_ref(), &path);
        self.record_capabilities(&mut meta, config.cap_bounding.as_deref(), id);
        let flags = RecordFlags {
            sandbox: meta.sandbox,
            removing: false,
        };
        // A workload container's pod labels come from its sandbox's record, before the one map
        // write: podmapd reads a record once.
        if let Some(sb) = kube.as_ref().and_then(|k| k.sandbox_id.as_ref()) {
            self.step("looking up the sandbox");
            let found_sb = self
                .maps
                .lock()
                .ok()
                .and_then(|maps| sandbox::find(maps.as_ref()?, &layout, &path, &state.id, sb));
            match found_sb {
                Some((sb_meta, how)) => {
                    fill_from_sandbox(&mut meta, &sb_meta);
                    if how == sandbox::Found::Scan {
                        self.log.line(
                            Level::Debug,
                            Some(id),
                            format_args!(
                                "sandbox {sb} found by a scan of the map, not next to the \
                                 container's cgroup"
                            ),
                        );
                    }
                }
                None if self.has_maps() => self.log.line(
                    Level::Warn,
                    Some(id),
                    format_args!(
                        "sandbox {sb} is not in the pinned map (did its hook run?): pod labels \
                         from this container's own annotations"
                    ),
                ),
                None => {}
            }
        }

        // Policy memberships before the record: not even the first exec escapes a policy.
        self.step("selecting policies");
        let (policy_ids, refused) = policies::selecting(
            &self.opts.policy_dir,
            &meta,
            self.opts.own_namespace.as_deref(),
        );
        for r in &refused {
            self.log
                .line(Level::Debug, Some(id), format_args!("policy refused: {r}"));
        }
        if !policy_ids.is_empty() {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = maps.as_mut() {
                // Counted by bpf/ (membership_errors); podmapd's reconciliation repairs it in
                // time, but the container's first instructions would run outside its policies:
                // a fail-closed namespace does not start it (not mapped, exit 1), others start
                // it and say so. Memberships written before the failure are removed by
                // podmapd's orphan sweep, as no record follows them.
                if let Err(e) = m.policy.add_memberships(&found.ids, &policy_ids) {
                    let closed = self.opts.fails_closed(namespace.as_deref());
                    self.log.line(
                        Level::Error,
                        Some(id),
                        format_args!(
                            "writing policy memberships: {e}; {}",
                            if closed {
                                "its namespace fails closed: not mapped"
                            } else {
                                "it starts outside its policies until podmapd repairs them"
                            }
                        ),
                    );
                    if closed {
                        drop(maps);
                        self.count(Counter::HookFailures);
                        return not_mapped();
                    }
                }
            }
        }

        // The map: the kernel attributes from it, and it needs no lock.
        self.step("writing the pinned maps");
        let mut map_ms = None;
        if self.has_maps() {
            match self.insert(&found.ids, &meta, flags) {
                Ok(()) => {
                    let ready = self.started.elapsed();
                    if let Ok(maps) = self.maps.lock() {
                        if let Some(m) = maps.as_ref() {
                            m.counters.add(Counter::HookMapped, 1);
                            m.counters.record_latency(ready.as_micros() as u64);
                        }
                    }
                    self.with_progress(|p| p.mapped = true);
                    map_ms = Some(ready.as_secs_f64() * 1e3);
                }
                Err(e) => {
                    self.log
                        .line(Level::Error, Some(id), format_args!("{e}; not mapped"));
                    self.count(Counter::HookFailures);
                }
            }
        } else {
            self.count(Counter::HookFailures);
        }

        // Then the store's queue, from which the map can be rebuilt (also when the map write
        // failed); applying it is left to a later run unless it is due (records.rs).
        self.step("queuing the record for the store");
        let record = ContainerRecord {
            meta,
            ids: found.ids,
            boot_id: this_boot(),
            created_ns: boot_ns(),
            removed_ns: None,
        };
        let entry = Entry::Create {
            record: Box::new(record),
        };
        let stored = self
            .store_queue()
            .store_change(id, &entry, Apply::WhenDue, pins_existed);
        let Entry::Create { record } = entry else {
            unreachable!("built above")
        };

        if self.log.enabled(Level::Debug) {
            let m = &record.meta;
            self.log.line(
                Level::Debug,
                Some(id),
                format_args!(
                    "{} {}/{}/{} ({}, runtime {}) cgroup {} v2={} v1={}: map ready in {}, \
                     store {}, done in {:.2} ms",
                    if map_ms.is_some() {
                        "mapped"
                    } else {
                        "NOT mapped"
                    },
                    m.namespace,
                    m.pod_name,
                    m.name,
                    if flags.sandbox {
                        "sandbox"
                    } else {
                        "container"
                    },
                    m.runtime,
                    m.cgroup_path,
                    found.ids.v2.map_or(0, |i| i.0),
                    found.ids.v1.map_or(0, |i| i.0),
                    map_ms.map_or("-".to_string(), |ms| format!("{ms:.2} ms")),
                    stored.describe(),
                    self.started.elapsed().as_secs_f64() * 1e3
                ),
            );
        }
        if map_ms.is_some() {
            Outcome::Mapped
        } else {
            not_mapped()
        }
    }

    fn poststop(&self, state: State, pins_existed: bool) -> Outcome {
        let id = state.id.0.as_str();
        let entry = Entry::Remove {
            id: state.id.clone(),
            removed_ns: boot_ns(),
        };
        // The run that applies the removal to the store starts the grace period in the map too.
        self.step("queuing the removal for the store");
        let stored = self
            .store_queue()
            .store_change(id, &entry, Apply::Always, pins_existed);
        let how = if stored.applied() {
            stored.describe()
        } else {
            // Still queued: start the grace period in the map now, from the map's own data.
            self.step("scanning the pinned maps");
            let Entry::Remove { removed_ns, .. } = entry else {
                unreachable!("built above")
            };
            match self.find_in_map(&state.id) {
                Some(ids) => {
                    self.mark_removed(id, &ids, removed_ns);
                    format!("{}; map marked from a scan", stored.describe())
                }
                None => format!("{}; not in the map", stored.describe()),
            }
        };
        if self.log.enabled(Level::Debug) {
            self.log.line(
                Level::Debug,
                Some(id),
                format_args!(
                    "removal {how}; kept {:?} for late events; done in {:.2} ms",
                    self.opts.grace,
                    self.started.elapsed().as_secs_f64() * 1e3
                ),
            );
        }
        Outcome::Done
    }

    fn insert(
        &self,
        ids: &CgroupIds,
        meta: &ContainerMeta,
        flags: RecordFlags,
    ) -> Result<(), podmap_bpf::MapsError> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        match maps.as_mut() {
            Some(m) => m.records.insert(ids, meta, flags, Writer::OciHook),
            None => Ok(()),
        }
    }

    fn mark_removed(&self, id: &str, ids: &CgroupIds, removed_ns: u64) {
        records::mark_removed(&self.maps, &self.log, id, ids, removed_ns);
    }

    /// The store's queue with this run's paths, deadline, grace, log and maps.
    fn store_queue(&self) -> StoreQueue<'_> {
        StoreQueue {
            store_path: self.opts.state_dir.join("hook"),
            deadline: self.deadline,
            keep: Retention {
                grace_ns: self.opts.grace.as_nanos() as u64,
                boot_id: this_boot(),
            },
            cgroup_root: &self.opts.cgroup_root,
            v1_controller: &self.opts.v1_controller,
            bpffs_dir: &self.opts.bpffs_dir,
            log: &self.log,
            maps: &self.maps,
            step: Box::new(|step| self.step(step)),
        }
    }

    /// The ids whose metadata names container `id`.
    fn find_in_map(&self, id: &ContainerId) -> Option<CgroupIds> {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let m = maps.as_ref()?;
        let mut ids = CgroupIds::default();
        for key in m.records.keys() {
            if matches!(m.records.meta(key), Ok(Some(meta)) if meta.container_id == *id) {
                match key.hierarchy {
                    Hierarchy::V2 => ids.v2 = Some(key.id),
                    Hierarchy::V1 => ids.v1 = Some(key.id),
                }
            }
        }
        (!ids.is_empty()).then_some(ids)
    }
}

/// The lock unless another thread holds it; a poisoned one too (a panic mid-update leaves
/// the data as usable as the edge needs it).
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A hook whose maps cannot open (no bpffs under a temp dir) and whose log is a temp file.
    fn hook(dir: &std::path::Path, args: &[&str]) -> Hook {
        let mut argv = vec!["podmap-oci-hook".to_string()];
        for (flag, sub) in [
            ("--bpffs-dir", "pins"),
            ("--state-dir", "state"),
            ("--log-file", "hook.log"),
        ] {
            argv.push(flag.into());
            argv.push(dir.join(sub).display().to_string());
        }
        argv.extend(
            [
                "--fail-closed-namespaces",
                "prod,podmap",
                "--own-namespace",
                "podmap",
            ]
            .map(String::from),
        );
        argv.extend(args.iter().map(|a| a.to_string()));
        let opts = Options::try_parse_from(argv).unwrap();
        let log = HookLog::open(&opts.log_file, Level::Info, opts.stage);
        Hook::new(opts, log, Instant::now())
    }

    /// A panic ends at the edge with the exit code of a failure at the same point: non-zero
    /// only for an unmapped container of a fail-closed namespace at createRuntime (never
    /// podmap's own namespace), one log line naming the panic and where the run was.
    #[test]
    fn a_panic_exits_like_a_failure_at_the_same_point() {
        let cases = [
            ("create-runtime", Some("prod"), false, 1),
            ("create-runtime", Some("prod"), true, 0),
            ("create-runtime", Some("dev"), false, 0),
            ("create-runtime", Some("podmap"), false, 0),
            ("create-runtime", None, false, 0),
            ("poststop", Some("prod"), false, 0),
        ];
        for (i, (stage, ns, mapped, want)) in cases.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let h = hook(dir.path(), &[stage]);
            let code = h.guard(|| {
                h.with_progress(|p| {
                    p.container = Some(format!("c{i}"));
                    p.namespace = ns.map(str::to_owned);
                    p.mapped = mapped;
                });
                h.step("testing the edge");
                panic!("boom {i}")
            });
            let case = format!("{stage} {ns:?} mapped={mapped}");
            assert_eq!(code, want, "{case}");
            let log = std::fs::read_to_string(dir.path().join("hook.log")).unwrap();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
            assert_eq!(lines.len(), 1, "{case}: {log}");
            assert!(
                lines[0].contains(" ERROR ")
                    && lines[0].contains(&format!("id=c{i}: panicked while testing the edge"))
                    && lines[0].contains(&format!("\"boom {i}\""))
                    && lines[0].contains(if mapped { "is mapped" } else { "is not mapped" })
                    && lines[0].contains(&format!("exiting {want}")),
                "{case}: {}",
                lines[0]
            );
        }
    }

    /// A panic in the middle of an update of the run's progress (its lock poisoned) still ends
    /// as a logged failure with the right code.
    #[test]
    fn a_panic_holding_the_progress_lock_is_still_reported() {
        let dir = tempfile::tempdir().unwrap();
        let h = hook(dir.path(), &["create-runtime"]);
        let code = h.guard(|| {
            let mut p = h.progress.lock().unwrap();
            p.namespace = Some("prod".into());
            p.step = "half way";
            panic!("while holding the lock")
        });
        assert_eq!(code, 1);
        let log = std::fs::read_to_string(dir.path().join("hook.log")).unwrap();
        assert!(
            log.contains("panicked while half way: \"while holding the lock\""),
            "{log}"
        );
    }

    /// No panic: the outcome's own exit code.
    #[test]
    fn an_outcome_passes_through_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let h = hook(dir.path(), &["create-runtime"]);
        let not_mapped = |ns: &str| Outcome::NotMapped {
            namespace: Some(ns.into()),
        };
        assert_eq!(h.guard(|| not_mapped("prod")), 1);
        assert_eq!(h.guard(|| not_mapped("dev")), 0);
        assert_eq!(h.guard(|| Outcome::Mapped), 0);
    }
}
