//! The hook's durable side. The store (`state-dir/hook`, sled) exists to rebuild the pinned
//! maps when their pins are lost within a boot; cgroup ids restart at every boot, so records of
//! another boot are worthless. Every run drops its change into the spool (spool.rs), and a run
//! holding the store's lock applies the whole queue: every poststop (off the start path), and a
//! createRuntime only when the queue has grown long or the pins are new. Applying also starts
//! the grace period in the map for removals, sweeps what expired (map and store), and writes
//! records back into pins that were just created. Sweeping and writing back are podmap-writer's
//! (`sweep`, `restore`), the same as podmap-nri's.
//!
//! [`StoreQueue`] is given everything it uses (paths, deadline, grace, log, maps, a progress
//! callback): it knows nothing of the hook's stages.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use podmap_bpf::layout::Counter;
use podmap_bpf::maps::boot_ns;
use podmap_bpf::{SharedMaps, Writer};
use podmap_cgroup::{CgroupIds, CgroupLayout};
use podmap_writer::registry::{self, Retention};
use podmap_writer::store::{boot_id, Opening, Store, StoreError};

use crate::log::HookLog;
use crate::options::Level;
use crate::spool::{Entry, Pending, Spool, StoreLock};

/// A createRuntime applies the queue when it is this long: sled's open is the slowest step a
/// run can take, so container starts pay it once in this many, and the queue stays small.
pub const APPLY_AT: usize = 256;
/// At most this many queued changes are read and applied per round (four rounds a run).
const APPLY_BATCH: usize = 256;
/// Time kept back before the watchdog for applying the queue once the lock is had.
const APPLY_RESERVE: Duration = Duration::from_millis(150);
/// How often a queued run checks whether its change was applied or the lock is free.
const POLL: Duration = Duration::from_millis(2);

/// Whether a run applies the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Always (poststop).
    Always,
    /// When the queue is long or the pins are new (createRuntime).
    WhenDue,
}

/// How a run's change to the store ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Queued for a later run, as planned (the queue is durable: nothing is lost).
    Deferred,
    /// In the store: this run applied the queue (after waiting `waited`, holding `held`)...
    AppliedHere { waited: Duration, held: Duration },
    /// ... or another run applied it meanwhile.
    AppliedElsewhere { waited: Duration },
    /// Still queued past the bound (logged and counted): a later run applies it.
    Late,
    /// Could not even be queued (logged and counted).
    Failed,
}

impl Stored {
    pub fn applied(self) -> bool {
        matches!(
            self,
            Stored::AppliedHere { .. } | Stored::AppliedElsewhere { .. }
        )
    }

    pub fn describe(self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match self {
            Stored::AppliedHere { waited, held } => format!(
                "applied the queue here (lock after {:.1} ms, held {:.1} ms)",
                ms(waited),
                ms(held)
            ),
            Stored::AppliedElsewhere { waited } => {
                format!("applied by another run after {:.1} ms", ms(waited))
            }
            Stored::Deferred => "queued".into(),
            Stored::Late => "queued past the bound".into(),
            Stored::Failed => "failed".into(),
        }
    }
}

pub fn this_boot() -> String {
    boot_id().unwrap_or_else(|_| "unknown".to_string())
}

/// The store's queue, as one run sees it: the bounded lock queue in front of the sled store
/// (`<state-dir>/hook`) and its spool (`<state-dir>/hook.spool/`).
pub struct StoreQueue<'a> {
    /// `<state-dir>/hook`.
    pub store_path: PathBuf,
    /// When the run's watchdog fires: applying stops well before.
    pub deadline: Instant,
    /// The grace period after removal and this boot (`this_boot`).
    pub keep: Retention,
    /// Where to detect the cgroup layout when records are written back into new pins.
    pub cgroup_root: &'a Path,
    pub v1_controller: &'a str,
    /// Where the pins are (for the log).
    pub bpffs_dir: &'a Path,
    pub log: &'a HookLog,
    /// The run's maps, shared with its watchdog; `None` inside when they did not open.
    pub maps: &'a Mutex<Option<SharedMaps>>,
    /// Told what the run is doing, for a timeout's or a panic's report.
    pub step: Box<dyn Fn(&'static str) + 'a>,
}

/// Starts the grace period of `ids` in the map (when there is one); a failure is logged.
pub fn mark_removed(
    maps: &Mutex<Option<SharedMaps>>,
    log: &HookLog,
    id: &str,
    ids: &CgroupIds,
    removed_ns: u64,
) {
    let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(m) = maps.as_mut() {
        if let Err(e) = m.records.mark_removed(ids, removed_ns) {
            log.line(
                Level::Error,
                Some(id),
                format_args!("starting the grace period in the map: {e}"),
            );
        }
    }
}

impl StoreQueue<'_> {
    fn count(&self, c: Counter) {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = maps.as_ref() {
            m.counters.add(c, 1);
        }
    }

    fn has_maps(&self) -> bool {
        self.maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Queues `entry` and, when `apply` says so, sees it into the store within the bound:
    /// applied by this run if the lock comes free, or by whichever run holds it.
    pub fn store_change(
        &self,
        id: &str,
        entry: &Entry,
        apply: Apply,
        pins_existed: bool,
    ) -> Stored {
        let store_path = self.store_path.clone();
        let spool = Spool::new(&store_path);
        let own = match spool.push(entry, boot_ns()) {
            Ok(p) => p,
            Err(e) => {
                self.log.line(
                    Level::Error,
                    Some(id),
                    format_args!("{e}; the store misses this change"),
                );
                self.count(Counter::StoreErrors);
                return Stored::Failed;
            }
        };
        if apply == Apply::WhenDue && pins_existed && !spool.holds_at_least(APPLY_AT) {
            return Stored::Deferred;
        }
        let asked = Instant::now();
        let until = self
            .deadline
            .checked_sub(APPLY_RESERVE)
            .unwrap_or(self.deadline);
        loop {
            if !own.exists() {
                return Stored::AppliedElsewhere {
                    waited: asked.elapsed(),
                };
            }
            match StoreLock::try_take(&store_path) {
                Ok(Some(lock)) => {
                    let waited = asked.elapsed();
                    (self.step)("applying the store's queue");
                    let ok = self.apply_queue(&spool, &store_path, pins_existed);
                    drop(lock);
                    return if ok {
                        Stored::AppliedHere {
                            waited,
                            held: asked.elapsed() - waited,
                        }
                    } else {
                        Stored::Late
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    self.log.line(
                        Level::Error,
                        Some(id),
                        format_args!(
                            "store lock {}: {e}; the change stays queued in {}",
                            store_path.with_extension("lock").display(),
                            spool.dir().display()
                        ),
                    );
                    self.count(Counter::StoreErrors);
                    return Stored::Late;
                }
            }
            if Instant::now() >= until {
                self.log.line(
                    Level::Warn,
                    Some(id),
                    format_args!(
                        "store {} is locked by another writer and did not apply this change \
                         within {} ms: it stays queued in {} for a later run",
                        store_path.display(),
                        asked.elapsed().as_millis(),
                        spool.dir().display()
                    ),
                );
                self.count(Counter::StoreErrors);
                return Stored::Late;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Holding the lock: applies every queued change (removals also to the map), sweeps,
    /// writes records back into new pins, flushes, then drops what was applied. Returns false
    /// (logged and counted) when the store failed: the queue stays for the next run.
    fn apply_queue(&self, spool: &Spool, store_path: &Path, pins_existed: bool) -> bool {
        // sled may open a damaged store and panic only once it reads the damaged part: that
        // store goes aside like one that would not open, and the queue is applied once more
        // to a fresh one. (A second panic reaches the hook's edge: caught, logged, counted.)
        let res = match catch_unwind(AssertUnwindSafe(|| {
            self.apply_queue_once(spool, store_path, pins_existed)
        })) {
            Ok(res) => res,
            Err(payload) => {
                let reason = crate::panics::describe(&*payload);
                match Store::move_aside(store_path) {
                    Ok(aside) => {
                        self.count(Counter::StoreRecovered);
                        self.log.line(
                            Level::Error,
                            None,
                            format_args!(
                                "store {} failed while the queue was applied (sled panicked: \
                                 {reason}): moved aside to {}, started afresh",
                                store_path.display(),
                                aside.display()
                            ),
                        );
                        self.apply_queue_once(spool, store_path, pins_existed)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match res {
            Ok(applied) => {
                spool.done(&applied);
                true
            }
            Err(e) => {
                self.log.line(
                    Level::Error,
                    None,
                    format_args!(
                        "{e}; the queue in {} stays for the next run",
                        spool.dir().display()
                    ),
                );
                self.count(Counter::StoreErrors);
                false
            }
        }
    }

    /// One attempt of [`StoreQueue::apply_queue`]: the applied changes, or the store's error.
    fn apply_queue_once(
        &self,
        spool: &Spool,
        store_path: &Path,
        pins_existed: bool,
    ) -> Result<Vec<PathBuf>, StoreError> {
        (|| -> Result<Vec<PathBuf>, StoreError> {
            let store = self.open_store(store_path)?;
            let mut applied: Vec<PathBuf> = Vec::new();
            // Changes keep arriving while runs start at once: take them in a few rounds, in
            // bounded batches, and stop well before the watchdog (whose exit in the middle of a
            // sled write is what damages a store): what is left stays queued for the next run.
            'rounds: for _ in 0..4 {
                let fresh: Vec<Pending> = spool
                    .pending_batch(APPLY_BATCH, &applied)
                    .unwrap_or_else(|e| {
                        self.log.line(Level::Error, None, format_args!("{e}"));
                        Vec::new()
                    });
                if fresh.is_empty() {
                    break;
                }
                for p in fresh {
                    self.apply(&store, &p.path, p.entry)?;
                    applied.push(p.path);
                    if Instant::now() + APPLY_RESERVE / 2 >= self.deadline {
                        break 'rounds;
                    }
                }
            }
            self.sweep(&store);
            if !pins_existed && self.has_maps() {
                match CgroupLayout::detect(self.cgroup_root, self.v1_controller) {
                    Ok(layout) => self.restore(&store, &layout),
                    Err(e) => self.log.line(
                        Level::Warn,
                        None,
                        format_args!("not writing records back into the new pins: {e}"),
                    ),
                }
            }
            store.flush()?;
            Ok(applied)
        })()
    }

    /// Opens the store under its lock; a store that will not open (sled's error or panic on a
    /// damaged database) is moved aside and started afresh, counted and logged, so one bad
    /// store never leaves the queue growing run after run.
    fn open_store(&self, store_path: &Path) -> Result<Store, StoreError> {
        match Store::open_or_recover(store_path)? {
            (store, Opening::Opened) => Ok(store),
            (store, Opening::MovedAside { aside, reason }) => {
                self.count(Counter::StoreRecovered);
                self.log.line(
                    Level::Error,
                    None,
                    format_args!(
                        "store {} would not open ({reason}): moved aside to {}, started afresh",
                        store_path.display(),
                        aside.display()
                    ),
                );
                Ok(store)
            }
            // Someone holds sled's own lock without the hooks' lock file: leave the queue for
            // a run that finds the store free rather than apply it to a store that is gone at
            // exit.
            (_, Opening::Temporary { .. }) => Err(StoreError::Locked {
                path: store_path.to_owned(),
                waited: Duration::ZERO,
            }),
        }
    }

    fn apply(
        &self,
        store: &Store,
        path: &Path,
        entry: Result<Entry, String>,
    ) -> Result<(), StoreError> {
        match entry {
            Ok(Entry::Create { record }) => store.put(&record),
            Ok(Entry::Remove { id, removed_ns }) => {
                if let Some(mut rec) = store.get(&id)? {
                    // A second poststop does not restart the grace period.
                    let removed = *rec.removed_ns.get_or_insert(removed_ns);
                    mark_removed(self.maps, self.log, &id.0, &rec.ids, removed);
                    store.put(&rec)?;
                }
                Ok(())
            }
            Err(reason) => {
                self.log.line(
                    Level::Warn,
                    None,
                    format_args!(
                        "dropping a queued store change that does not parse ({}): {reason}",
                        path.display()
                    ),
                );
                Ok(())
            }
        }
    }

    /// Drops expired records: from the map (anyone's, past this hook's grace) and from the
    /// store (expired, of another boot, or unparseable): podmap-writer's `sweep`.
    fn sweep(&self, store: &Store) {
        let report = {
            let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
            registry::sweep(maps.as_mut(), store, &self.keep, boot_ns())
        };
        for p in &report.problems {
            self.log.line(Level::Warn, None, format_args!("{p}"));
        }
    }

    /// This run created the pins (bpffs was emptied, e.g. by a reinstall): write back the
    /// records of live containers from the store, which is what it is kept for
    /// (podmap-writer's `restore`).
    fn restore(&self, store: &Store, layout: &CgroupLayout) {
        let report = {
            let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(m) = maps.as_mut() else {
                return;
            };
            registry::restore(m, store, layout, Writer::OciHook, &self.keep)
        };
        for p in &report.problems {
            self.log.line(Level::Warn, None, format_args!("{p}"));
        }
        if report.rewritten > 0 {
            self.log.line(
                Level::Info,
                None,
                format_args!(
                    "the pinned maps under {} were new: wrote back {} records from {}",
                    self.bpffs_dir.display(),
                    report.rewritten,
                    store.path().display()
                ),
            );
        }
    }
}
