//! A runtime plugin's durable store of the containers it saw (sled), from which its map entries
//! are rebuilt after a restart. Each writer owns its own store: sled holds an exclusive lock on
//! its database for as long as it is open, so podmap-nri keeps `state-dir/nri` open for its
//! lifetime, while each hook run drops its change into a spool beside `state-dir/hook` and
//! whichever run holds `<store>.lock` applies everything queued (podmap-oci-hook's `spool`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use podmap_bpf::{ContainerId, ContainerMeta};
use podmap_cgroup::CgroupIds;

/// Everything a writer knows of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub meta: ContainerMeta,
    pub ids: CgroupIds,
    /// /proc/sys/kernel/random/boot_id when written: cgroup ids restart at every boot.
    pub boot_id: String,
    /// Wall-clock ns.
    pub created_ns: u64,
    /// When the runtime removed the container (wall-clock ns): the grace period runs from here.
    #[serde(default)]
    pub removed_ns: Option<u64>,
}

/// A moved-aside copy's unix seconds and sequence within that second, from its name.
type AsideStamp = (u64, u32);

/// How many moved-aside copies of a damaged store are kept for inspection.
pub const KEPT_ASIDE: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path} is locked by another writer; waited {waited:?}")]
    Locked { path: PathBuf, waited: Duration },
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("store {path}: {source}")]
    Db { path: PathBuf, source: sled::Error },
    #[error("store {path}: record {key:?} does not parse: {reason}")]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// sled's page cache. Its default is 1 GiB, against podmap-nri's 128 MiB memory limit; a store
/// holds one small record per container on the node, so a few MiB keep all of it cached.
const CACHE_CAPACITY: u64 = 8 * 1024 * 1024;

/// How the store is opened.
fn config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY)
}

/// How [`Store::open_or_recover`] came by its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// The writer's own store, as it was.
    Opened,
    /// The store would not open; it was moved to `aside` and a fresh one started.
    MovedAside { aside: PathBuf, reason: String },
    /// Another process holds the store: a temporary one stands in until this process ends.
    Temporary { reason: String },
}

pub struct Store {
    path: PathBuf,
    db: sled::Db,
    // Released after the database is dropped (field order).
    _lock: Option<File>,
}

impl Store {
    /// Opens the store for the caller's lifetime (podmap-nri).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, config(path))
    }

    /// Opens sled as `config` says; `path` names the store in errors.
    fn open_with(path: &Path, config: sled::Config) -> Result<Store, StoreError> {
        let db = config.open().map_err(|source| StoreError::Db {
            path: path.to_owned(),
            source,
        })?;
        Ok(Store {
            path: path.to_owned(),
            db,
            _lock: None,
        })
    }

    /// Opens a writer's store for its lifetime, never leaving the writer without one: a store
    /// another process holds (a second podmap-nri) gives way to a temporary one for this process
    /// (the maps are written all the same; only a restart's restore is lost); a store that will
    /// not open (an error, or one of sled's panics on a damaged database) is moved aside as
    /// `<name>.corrupt-<unix seconds>`, where it can be inspected, and a fresh one is started.
    /// The caller counts and logs what [`Opening`] says.
    pub fn open_or_recover(path: &Path) -> Result<(Store, Opening), StoreError> {
        let failure = match std::panic::catch_unwind(|| Store::open(path)) {
            Ok(Ok(store)) => return Ok((store, Opening::Opened)),
            Ok(Err(e)) if e.is_held_elsewhere() => {
                let store = Store::temporary(path)?;
                return Ok((
                    store,
                    Opening::Temporary {
                        reason: e.to_string(),
                    },
                ));
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("sled panicked opening it: {}", panic_text(panic.as_ref())),
        };
        let aside = Store::move_aside(path)?;
        let store = Store::open(path)?;
        Ok((
            store,
            Opening::MovedAside {
                aside,
                reason: failure,
            },
        ))
    }

    /// Moves a damaged store (closed: no handle of this process on it) out of the way, to
    /// `<name>.corrupt-<unix seconds>` beside it (`-2`, `-3`... after one of the same second),
    /// where it can be inspected; returns where. Only the
    /// [`KEPT_ASIDE`] most recent copies are kept, so a store that keeps breaking cannot fill
    /// the disk. The caller holds the store's lock: no other writer moves it meanwhile.
    pub fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let prefix = format!("{name}.corrupt-");
        let dir = path.parent().unwrap_or(Path::new("."));
        // The copies there are, oldest first, by the time and sequence in their names.
        let copies = |dir: &Path| -> Result<Vec<(AsideStamp, PathBuf)>, StoreError> {
            let mut found: Vec<_> = std::fs::read_dir(dir)
                .map_err(io_err(dir))?
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stamp = name.strip_prefix(&prefix)?;
                    let (secs, n) = stamp.split_once('-').unwrap_or((stamp, "1"));
                    Some(((secs.parse().ok()?, n.parse().ok()?), e.path()))
                })
                .collect();
            found.sort();
            Ok(found)
        };
        // After the newest of this second, never a freed lower number: rename(2) would also
        // replace an empty directory of a reused name.
        let n = copies(dir)?
            .iter()
            .filter(|((s, _), _)| *s == secs)
            .map(|((_, n), _)| n + 1)
            .max()
            .unwrap_or(1);
        let aside = match n {
            1 => path.with_file_name(format!("{prefix}{secs}")),
            n => path.with_file_name(format!("{prefix}{secs}-{n}")),
        };
        std::fs::rename(path, &aside).map_err(io_err(path))?;

        let copies = copies(dir)?;
        let excess = copies.len().saturating_sub(KEPT_ASIDE);
        // (A clock set back can make the new copy look oldest: it is kept all the same.)
        for (_, old) in copies.into_iter().filter(|(_, p)| *p != aside).take(excess) {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(aside)
    }

    /// A store that lives as long as this process, for a writer whose own store is held by
    /// another process. `path` is the store it stands in for, for messages.
    fn temporary(path: &Path) -> Result<Store, StoreError> {
        let config = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_CAPACITY);
        Store::open_with(path, config)
    }

    /// Opens the store after taking `<path>.lock`, waiting at most `timeout` behind another
    /// holder (instead of spinning on sled's own try-lock).
    pub fn open_locked(path: &Path, timeout: Duration) -> Result<Store, StoreError> {
        let lock_path = path.with_extension("lock");
        if let Some(parent) = lock_path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        let lock = lock_with_timeout(&lock_path, timeout)?;
        let mut s = Store::open(path)?;
        s._lock = Some(lock);
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    pub fn put(&self, rec: &ContainerRecord) -> Result<(), StoreError> {
        let v = serde_json::to_vec(rec).expect("ContainerRecord serializes");
        self.db
            .insert(rec.meta.container_id.0.as_bytes(), v)
            .map_err(self.db_err())?;
        Ok(())
    }

    pub fn get(&self, id: &ContainerId) -> Result<Option<ContainerRecord>, StoreError> {
        let Some(v) = self.db.get(id.0.as_bytes()).map_err(self.db_err())? else {
            return Ok(None);
        };
        self.parse(id.0.as_bytes(), &v).map(Some)
    }

    pub fn remove(&self, id: &ContainerId) -> Result<(), StoreError> {
        self.db.remove(id.0.as_bytes()).map_err(self.db_err())?;
        Ok(())
    }

    fn parse(&self, key: &[u8], v: &[u8]) -> Result<ContainerRecord, StoreError> {
        serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }

    /// Every record; a record that does not parse comes out as an error naming its key.
    pub fn records(&self) -> Vec<Result<ContainerRecord, StoreError>> {
        self.db
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(self.db_err())?;
                self.parse(&k, &v)
            })
            .collect()
    }

    /// Removes a record by raw key (for records that do not parse).
    pub fn remove_key(&self, key: &str) -> Result<(), StoreError> {
        self.db.remove(key.as_bytes()).map_err(self.db_err())?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(self.db_err())?;
        Ok(())
    }
}

impl StoreError {
    /// sled's own lock on its database is taken by another process.
    fn is_held_elsewhere(&self) -> bool {
        // sled 0.34 reports its failed try-lock as an I/O error of kind Other with this text.
        matches!(self, StoreError::Db { source: sled::Error::Io(e), .. }
            if e.to_string().contains("could not acquire lock"))
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Takes an exclusive flock on `path`, waiting at most `timeout`. The wait runs on a helper
/// thread; a waiter that gets the lock after its caller gave up lets it go at once.
fn lock_with_timeout(path: &Path, timeout: Duration) -> Result<File, StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(f);
    }
    let waiter = f.try_clone().map_err(io_err)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: flock on a descriptor this thread owns (a dup of the caller's).
        let rc = unsafe { libc::flock(waiter.as_raw_fd(), libc::LOCK_EX) };
        let res = if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        if tx.send(res).is_err() && rc == 0 {
            // The caller timed out and left: release at once so the queue moves on.
            // SAFETY: unlocking the descriptor this thread locked.
            unsafe { libc::flock(waiter.as_raw_fd(), libc::LOCK_UN) };
        }
        // Dropping the dup keeps the lock while the caller's descriptor lives (one description).
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(f),
        Ok(Err(e)) => Err(io_err(e)),
        Err(_) => Err(StoreError::Locked {
            path: path.to_owned(),
            waited: timeout,
        }),
    }
}

/// This boot's id.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before, a second copy in the same second failed ("Directory not empty"), and the hook's
    /// queue then stayed unapplied.
    #[test]
    fn damaged_stores_moved_aside_in_one_second_each_keep_a_copy_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook");
        let mut asides = Vec::new();
        for i in 0..KEPT_ASIDE + 2 {
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("db"), format!("copy {i}")).unwrap();
            asides.push(Store::move_aside(&path).unwrap());
            assert!(!path.exists());
        }
        let names: std::collections::BTreeSet<_> = asides.iter().collect();
        assert_eq!(
            names.len(),
            asides.len(),
            "every copy has a name of its own"
        );
        let kept: Vec<_> = asides.iter().filter(|p| p.exists()).collect();
        assert_eq!(kept.len(), KEPT_ASIDE, "{kept:?}");
        let newest = asides.last().unwrap();
        assert_eq!(
            std::fs::read_to_string(newest.join("db")).unwrap(),
            format!("copy {}", KEPT_ASIDE + 1)
        );
    }

    #[test]
    fn the_page_cache_fits_the_plugins_memory_limit() {
        // podmap-nri runs under a 128 MiB limit (deploy/kubernetes/daemonset.yaml) and a hook
        // in whatever the runtime gives it; sled's default cache is 1 GiB.
        let c = config(Path::new("/nonexistent/store"));
        assert!(
            c.cache_capacity <= 16 * 1024 * 1024,
            "cache_capacity {}",
            c.cache_capacity
        );
    }
}
