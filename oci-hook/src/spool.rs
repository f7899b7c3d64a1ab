//! The hook store's queue. sled lets one process at a time open `state-dir/hook`, and opening it
//! costs milliseconds, so 20 hooks at once cannot each take their turn within their bound.
//! Instead every run drops its change here (one small file, renamed into place, so it is
//! durable and never half-read), and whichever run holds the store's lock applies everything
//! queued. A run whose change someone else applied is done; one that neither got the lock nor
//! saw its change applied within its bound leaves it queued for the next run: nothing is lost.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use podmap_bpf::ContainerId;
use podmap_writer::store::ContainerRecord;
use serde::{Deserialize, Serialize};

/// A change to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Entry {
    /// createRuntime: the container's record.
    Create { record: Box<ContainerRecord> },
    /// poststop: the grace period starts at `removed_ns`.
    Remove { id: ContainerId, removed_ns: u64 },
}

/// A queued entry and its file; an entry that does not parse comes with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub path: PathBuf,
    pub entry: Result<Entry, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A temp file older than this was left by a run that died mid-write.
const STALE_TMP: Duration = Duration::from_secs(60);

pub struct Spool {
    dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Spool {
    /// The queue of the store at `store_path` (`<store_path>.spool`).
    pub fn new(store_path: &Path) -> Spool {
        Spool {
            dir: store_path.with_extension("spool"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io_err(&self, path: &Path) -> impl Fn(io::Error) -> SpoolError + '_ {
        let path = path.to_owned();
        move |source| SpoolError::Io {
            path: path.clone(),
            source,
        }
    }

    /// Queues an entry; returns its file (gone once the entry is applied). Names sort in time
    /// order, so a container's create is applied before its remove.
    pub fn push(&self, entry: &Entry, now_ns: u64) -> Result<PathBuf, SpoolError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io_err(&self.dir))?;
        let name = format!(
            "{now_ns:020}-{:010}-{:04}.json",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec(entry).expect("spool entries serialize");
        std::fs::write(&tmp, bytes).map_err(self.io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(self.io_err(&path))?;
        Ok(path)
    }

    /// Whether at least `n` entries are queued (stops counting there).
    pub fn holds_at_least(&self, n: usize) -> bool {
        std::fs::read_dir(&self.dir).is_ok_and(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .take(n)
                .count()
                >= n
        })
    }

    /// Every queued entry in order (one that does not parse is dropped by `done` like the
    /// others). Stale temp files are removed.
    pub fn pending(&self) -> Result<Vec<Pending>, SpoolError> {
        self.pending_batch(usize::MAX, &[])
    }

    /// The first `limit` queued entries in order, leaving out `taken` (applied, not yet done):
    /// only those are read, so a queue grown long while the store was unusable costs a run a
    /// bounded amount of work. Stale temp files are removed.
    pub fn pending_batch(
        &self,
        limit: usize,
        taken: &[PathBuf],
    ) -> Result<Vec<Pending>, SpoolError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_err(&self.dir)(e)),
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_TMP);
                if old {
                    let _ = std::fs::remove_file(&path);
                }
            } else if name.ends_with(".json") {
                files.push(path);
            }
        }
        // Names sort in time order, except across an upgrade: entries an older hook named by
        // the wall clock (decades of nanoseconds) came before every boot-clock one.
        let now = podmap_bpf::maps::boot_ns();
        files.sort_by_cached_key(|f| {
            let stamp = f
                .file_name()
                .and_then(|n| n.to_str()?.split('-').next()?.parse::<u64>().ok());
            let later = stamp.is_some_and(|s| podmap_bpf::maps::of_boot_clock(s, now));
            (later, f.clone())
        });
        Ok(files
            .into_iter()
            .filter(|f| !taken.contains(f))
            .take(limit)
            .filter_map(|path| {
                let entry = match std::fs::read(&path) {
                    Ok(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
                    // Applied and removed by another run meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
                    Err(e) => Err(e.to_string()),
                };
                Some(Pending { path, entry })
            })
            .collect())
    }

    /// Drops applied entries (after the store was flushed).
    pub fn done(&self, files: &[PathBuf]) {
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The store's lock (`<store>.lock`, the file bpf/'s `Store::open_locked` queues on), held
/// while this lives.
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Takes the lock if it is free right now.
    pub fn try_take(store_path: &Path) -> io::Result<Option<StoreLock>> {
        let path = store_path.with_extension("lock");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(StoreLock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_bpf::ContainerMeta;
    use podmap_cgroup::CgroupIds;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            meta: ContainerMeta {
                container_id: ContainerId(id.into()),
                ..Default::default()
            },
            ids: CgroupIds::default(),
            boot_id: "b".into(),
            created_ns: 1,
            removed_ns: None,
        }
    }

    /// After an upgrade, a queue may hold an older hook's entries, named by the wall clock: they
    /// were queued before any of the boot-clock ones and are applied first, so an old create
    /// never lands after its new remove.
    #[test]
    fn entries_an_older_hook_named_by_the_wall_clock_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(&dir.path().join("hook"));
        let create = Entry::Create {
            record: Box::new(record("a")),
        };
        let rm = Entry::Remove {
            id: ContainerId("a".into()),
            removed_ns: podmap_bpf::maps::boot_ns(),
        };
        // Queued in the other order, so neither write order nor times can pass for the rule.
        let new = spool.push(&rm, podmap_bpf::maps::boot_ns()).unwrap();
        let old = spool.push(&create, 1_780_000_000_000_000_000).unwrap();
        let order: Vec<PathBuf> = spool
            .pending()
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(order, [old, new]);
    }

    #[test]
    fn entries_come_back_in_order_and_go_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(&dir.path().join("hook"));
        assert!(spool.pending().unwrap().is_empty(), "no spool dir yet");
        let create = Entry::Create {
            record: Box::new(record("a")),
        };
        let a = spool.push(&create, 10).unwrap();
        let rm = Entry::Remove {
            id: ContainerId("a".into()),
            removed_ns: 20,
        };
        let b = spool.push(&rm, 20).unwrap();
        std::fs::write(spool.dir().join("00000000000000000015-x.json"), b"{broken").unwrap();
        std::fs::write(spool.dir().join(".00000000000000000016-y.json.tmp"), b"{").unwrap();
        assert!(spool.holds_at_least(3) && !spool.holds_at_least(4));
        let p = spool.pending().unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].path, a);
        assert_eq!(p[0].entry, Ok(create));
        assert!(p[1].entry.is_err(), "the broken one, in time order");
        assert_eq!(
            p[2],
            Pending {
                path: b,
                entry: Ok(rm)
            }
        );
        let files: Vec<PathBuf> = p.into_iter().map(|p| p.path).collect();
        spool.done(&files);
        assert!(spool.pending().unwrap().is_empty());
        assert!(
            spool
                .dir()
                .join(".00000000000000000016-y.json.tmp")
                .exists(),
            "a fresh temp file may be a write in progress"
        );
    }

    #[test]
    fn a_batch_reads_only_its_first_entries_after_those_taken() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(&dir.path().join("hook"));
        let paths: Vec<PathBuf> = (0..5)
            .map(|i| {
                let e = Entry::Create {
                    record: Box::new(record(&format!("c{i}"))),
                };
                spool.push(&e, 10 + i).unwrap()
            })
            .collect();
        let first = spool.pending_batch(2, &[]).unwrap();
        let got: Vec<&PathBuf> = first.iter().map(|p| &p.path).collect();
        assert_eq!(got, [&paths[0], &paths[1]]);
        let next = spool.pending_batch(2, &paths[..2]).unwrap();
        let got: Vec<&PathBuf> = next.iter().map(|p| &p.path).collect();
        assert_eq!(got, [&paths[2], &paths[3]]);
        assert_eq!(spool.pending_batch(10, &paths[..4]).unwrap().len(), 1);
    }

    #[test]
    fn the_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("hook");
        let held = StoreLock::try_take(&store).unwrap().expect("free");
        assert!(StoreLock::try_take(&store).unwrap().is_none());
        drop(held);
        assert!(StoreLock::try_take(&store).unwrap().is_some());
    }
}
