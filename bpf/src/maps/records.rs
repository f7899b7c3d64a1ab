//! The container records: the compact record the programs look up by cgroup key, and the
//! metadata beside it that podmapd joins into events. Written by the runtime plugins at
//! creation (metadata first, so a reader that finds a record always finds its metadata), marked
//! when the runtime removes the container, swept after the grace period.

use aya::maps::{HashMap, Map, MapData, MapError};
use podmap_cgroup::{CgroupIds, CgroupKey};
use std::path::Path;
use std::sync::Arc;

use crate::keys::{self, RawKey};
use crate::layout::{self, podmap_cgroup_key, podmap_container, podmap_container_meta, Counter};
use crate::maps::batch;
use crate::maps::counters::Counters;
use crate::maps::pins::{check_map, MapsError, Shape, CONTAINERS_MAP, META_MAP};
use crate::record::ContainerMeta;

/// What the record flags mean to the programs and podmapd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordFlags {
    pub sandbox: bool,
    pub removing: bool,
}

impl RecordFlags {
    fn bits(self) -> u32 {
        (if self.sandbox { layout::CF_SANDBOX } else { 0 })
            | (if self.removing {
                layout::CF_REMOVING
            } else {
                0
            })
    }
    fn from_bits(b: u32) -> Self {
        RecordFlags {
            sandbox: b & layout::CF_SANDBOX != 0,
            removing: b & layout::CF_REMOVING != 0,
        }
    }
}

/// Who wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Writer {
    Test = layout::WRITER_TEST,
    Nri = layout::WRITER_NRI,
    OciHook = layout::WRITER_OCI_HOOK,
    Daemon = layout::WRITER_DAEMON,
}

/// The compact record the programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub created_ns: u64,
    /// When the runtime removed the container (wall-clock ns); 0 while it lives.
    pub removed_ns: u64,
    pub flags: RecordFlags,
    pub writer: u32,
}

/// Handles on the two record maps, and the shared counters their writes are counted in.
pub struct RecordMaps {
    containers: HashMap<MapData, podmap_cgroup_key, podmap_container>,
    meta: HashMap<MapData, podmap_cgroup_key, podmap_container_meta>,
    counters: Arc<Counters>,
}

impl RecordMaps {
    /// The shape both record maps must have (the metadata map's value is the blob).
    const CONTAINERS_SHAPE: Shape = Shape {
        key: size_of::<podmap_cgroup_key>(),
        value: size_of::<podmap_container>(),
        max_entries: layout::MAX_CONTAINERS,
        flags: 0,
    };
    const META_SHAPE: Shape = Shape {
        value: size_of::<podmap_container_meta>(),
        ..Self::CONTAINERS_SHAPE
    };

    pub(crate) fn take(
        containers: Map,
        meta: Map,
        counters: Arc<Counters>,
        dir: &Path,
    ) -> Result<Self, MapsError> {
        check_map(&containers, dir, CONTAINERS_MAP, Self::CONTAINERS_SHAPE)?;
        check_map(&meta, dir, META_MAP, Self::META_SHAPE)?;
        let map_err = |name| move |source| MapsError::Map { name, source };
        Ok(RecordMaps {
            containers: HashMap::try_from(containers).map_err(map_err(CONTAINERS_MAP))?,
            meta: HashMap::try_from(meta).map_err(map_err(META_MAP))?,
            counters,
        })
    }

    /// Writes a container's record under each of its cgroup ids: the metadata first, so that a
    /// reader that finds the compact record always finds its metadata. Idempotent.
    pub fn insert(
        &mut self,
        ids: &CgroupIds,
        meta: &ContainerMeta,
        flags: RecordFlags,
        writer: Writer,
    ) -> Result<(), MapsError> {
        let (blob, _truncated) = meta.to_blob();
        let mut value = podmap_container_meta {
            len: blob.len() as u32,
            data: [0; layout::META_MAX],
        };
        value.data[..blob.len()].copy_from_slice(&blob);
        let record = podmap_container {
            created_ns: boot_ns(),
            removed_ns: 0,
            flags: flags.bits(),
            writer: writer as u32,
        };
        for key in ids.keys() {
            let raw = key.to_raw();
            let res = self
                .meta
                .insert(raw, value, 0)
                .map_err(|source| MapsError::Map {
                    name: META_MAP,
                    source,
                })
                .and_then(|()| {
                    self.containers
                        .insert(raw, record, 0)
                        .map_err(|source| MapsError::Map {
                            name: CONTAINERS_MAP,
                            source,
                        })
                });
            if let Err(e) = res {
                self.counters.add(Counter::MapWriteErrors, 1);
                return Err(e);
            }
        }
        self.counters.add(Counter::RecordsWritten, 1);
        if ids.v1.is_some() {
            self.counters.add(Counter::V1Records, 1);
        }
        if cgroup_level(&meta.cgroup_path) > layout::MAX_CONTAINER_LEVEL {
            // The kernel finds this container for its own cgroup only, not for sub-cgroups
            // (docs/decisions.md #4): never unseen.
            self.counters.add(Counter::DeepContainers, 1);
        }
        Ok(())
    }

    /// Starts a record's grace period: it stays mapped (late exit events still attribute) and
    /// is flagged `removing` with the removal time, until a sweep past the grace drops it.
    /// Returns whether any of the keys was mapped.
    pub fn mark_removed(&mut self, ids: &CgroupIds, removed_ns: u64) -> Result<bool, MapsError> {
        let mut found = false;
        for key in ids.keys() {
            let raw = key.to_raw();
            match self.containers.get(&raw, 0) {
                Ok(mut rec) => {
                    rec.flags |= layout::CF_REMOVING;
                    rec.removed_ns = removed_ns;
                    self.containers
                        .insert(raw, rec, 0)
                        .map_err(|source| MapsError::Map {
                            name: CONTAINERS_MAP,
                            source,
                        })?;
                    found = true;
                }
                Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(MapsError::Map {
                        name: CONTAINERS_MAP,
                        source,
                    })
                }
            }
        }
        if found {
            // Once per container, after the writes: a sweeper that reads the count and then
            // walks finds the mark.
            self.counters.add(Counter::RecordsMarked, 1);
        }
        Ok(found)
    }

    /// Drops every record whose grace period ended by `now_ns`; returns their keys. Any writer
    /// or podmapd may sweep: removal is idempotent.
    pub fn sweep_expired(&mut self, grace_ns: u64, now_ns: u64) -> Vec<CgroupKey> {
        self.expire(grace_ns, now_ns).0
    }

    /// [`RecordMaps::sweep_expired`], without the walk when `watch` shows nothing can have
    /// expired since its last one: no record was marked, added, removed or expired by anyone
    /// since, and the earliest grace period that walk saw running has not ended. Walks at
    /// least every [`ExpiryWatch::FULL_WALK_NS`] all the same (a writer from before the marks
    /// were counted).
    pub fn sweep_expired_watched(
        &mut self,
        watch: &mut ExpiryWatch,
        grace_ns: u64,
        now_ns: u64,
    ) -> Vec<CgroupKey> {
        // Read before the walk: whatever is counted after it is looked at by the next walk.
        let stamp = self.expiry_stamp();
        let quiet = watch.stamp == Some(stamp)
            && watch.next_due.is_none_or(|due| now_ns < due)
            && now_ns.saturating_sub(watch.walked_ns) < ExpiryWatch::FULL_WALK_NS;
        if quiet {
            return Vec::new();
        }
        let (expired, next_due) = self.expire(grace_ns, now_ns);
        // Each record this walk expired moved the count by one; anything else moved it too.
        *watch = ExpiryWatch {
            stamp: Some(stamp.wrapping_add(expired.len() as u64)),
            next_due,
            walked_ns: now_ns,
        };
        expired
    }

    fn expiry_stamp(&self) -> u64 {
        self.records_generation()
            .wrapping_add(self.counters.get(Counter::RecordsMarked))
    }

    /// The sweep, and the earliest end of a grace period among the marked records it kept.
    fn expire(&mut self, grace_ns: u64, now_ns: u64) -> (Vec<CgroupKey>, Option<u64>) {
        let mut next_due: Option<u64> = None;
        let mut expired = Vec::new();
        for (k, r) in self.all_records() {
            if r.removed_ns == 0 {
                continue;
            }
            if grace_over(r.removed_ns, grace_ns, now_ns) {
                expired.push(k);
            } else {
                let due = r.removed_ns.saturating_add(grace_ns);
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            }
        }
        let mut out = Vec::with_capacity(expired.len());
        for raw in expired {
            let _ = self.containers.remove(&raw);
            let _ = self.meta.remove(&raw);
            self.counters.add(Counter::RecordsExpired, 1);
            out.push(keys::from_raw(raw));
        }
        (out, next_due)
    }

    /// Removes a container's record: the compact record first, so no reader finds a record
    /// without metadata. Missing entries are not an error.
    pub fn remove(&mut self, ids: &CgroupIds) -> Result<(), MapsError> {
        for key in ids.keys() {
            let raw = key.to_raw();
            for (name, res) in [
                (CONTAINERS_MAP, self.containers.remove(&raw)),
                (META_MAP, self.meta.remove(&raw)),
            ] {
                match res {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(source) => {
                        self.counters.add(Counter::MapWriteErrors, 1);
                        return Err(MapsError::Map { name, source });
                    }
                }
            }
        }
        self.counters.add(Counter::RecordsRemoved, 1);
        Ok(())
    }

    pub fn get(&self, key: CgroupKey) -> Result<Option<Record>, MapsError> {
        match self.containers.get(&key.to_raw(), 0) {
            Ok(r) => Ok(Some(Record {
                created_ns: r.created_ns,
                removed_ns: r.removed_ns,
                flags: RecordFlags::from_bits(r.flags),
                writer: r.writer,
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(MapsError::Map {
                name: CONTAINERS_MAP,
                source,
            }),
        }
    }

    /// The metadata of a mapped cgroup; `Ok(None)` when it is not mapped. A blob that does
    /// not parse is reported as an error naming the key.
    pub fn meta(&self, key: CgroupKey) -> Result<Option<ContainerMeta>, MetaError> {
        match self.meta.get(&key.to_raw(), 0) {
            Ok(v) => {
                let len = (v.len as usize).min(layout::META_MAX);
                ContainerMeta::from_blob(&v.data[..len])
                    .map(Some)
                    .map_err(|e| MetaError::Corrupt {
                        key,
                        reason: e.to_string(),
                    })
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(MetaError::Map(e.to_string())),
        }
    }

    /// Every mapped key.
    /// Moves whenever any writer adds, replaces, removes or expires a record (every writer goes
    /// through this type, and counts after writing): read it before walking the map, and an
    /// unchanged value later means the walk's result still holds. Walking a hash map costs a
    /// look at every bucket, however few records there are.
    pub fn records_generation(&self) -> u64 {
        let c = &self.counters;
        c.get(Counter::RecordsWritten)
            .wrapping_add(c.get(Counter::RecordsRemoved))
            .wrapping_add(c.get(Counter::RecordsExpired))
    }

    pub fn keys(&self) -> Vec<CgroupKey> {
        self.all_records()
            .into_iter()
            .map(|(k, _)| keys::from_raw(k))
            .collect()
    }

    /// Every compact record, read in batches (docs/decisions.md #43).
    fn all_records(&self) -> Vec<(podmap_cgroup_key, podmap_container)> {
        batch::entries(&self.containers)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata of cgroup {key:?} does not parse: {reason}")]
    Corrupt { key: CgroupKey, reason: String },
    #[error("reading the metadata map: {0}")]
    Map(String),
}

/// What podmapd's expiry sweep remembers of its last walk (see
/// [`RecordMaps::sweep_expired_watched`]).
#[derive(Debug, Default)]
pub struct ExpiryWatch {
    /// The records' changes and marks counted when the last walk began, plus its own expiries.
    stamp: Option<u64>,
    /// The earliest end of a grace period among the marked records it left.
    next_due: Option<u64>,
    /// When it walked (boot ns).
    walked_ns: u64,
}

impl ExpiryWatch {
    /// The longest the sweep goes without a walk, whatever the counters say.
    pub const FULL_WALK_NS: u64 = 60_000_000_000;
}

/// CLOCK_BOOTTIME ns: the time base of `created_ns`, `removed_ns` and the hook's spool order
/// (the clock of `bpf_ktime_get_boot_ns`). Unlike the wall clock it never steps (NTP at boot, an
/// operator's `date`), so a grace period is never cut short or stretched and a removal never
/// sorts before its creation. It restarts at every boot, like cgroup ids: records of another
/// boot are dropped by boot id before any time is compared.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec it is given; CLOCK_BOOTTIME exists on
    // every kernel podmap runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A removal stamp this far past a sweeper's `now` is not of the boot clock. (A writer may stamp a
/// removal a moment after a sweeper read its clock: such a stamp is only slightly later.)
const NOT_BOOT_TIME_NS: u64 = 3_600_000_000_000;

/// Whether a record removed at `removed_ns` has outlived its grace period at `now_ns` (both boot
/// time). A removal stamp more than an hour past now cannot be of this clock (a wall-clock stamp,
/// decades since 1970, left by an older podmap in the pinned map or the store): it counts as
/// expired rather than kept forever.
pub fn grace_over(removed_ns: u64, grace_ns: u64, now_ns: u64) -> bool {
    !of_boot_clock(removed_ns, now_ns) || removed_ns.saturating_add(grace_ns) <= now_ns
}

/// Whether `stamp` can be a boot-clock time read before (or just after) `now_ns`, rather than a
/// wall-clock one an older podmap wrote.
pub fn of_boot_clock(stamp: u64, now_ns: u64) -> bool {
    stamp <= now_ns.saturating_add(NOT_BOOT_TIME_NS)
}

/// The level of a cgroup from its path relative to the hierarchy root (the root is 0).
fn cgroup_level(rel: &str) -> usize {
    rel.split('/').filter(|c| !c.is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_stamped_after_the_sweeper_read_its_clock_keeps_its_grace() {
        let now = 1_000_000_000_000;
        let grace = 30_000_000_000;
        assert!(
            !grace_over(now + 5_000_000, grace, now),
            "a racing writer's stamp"
        );
        assert!(!grace_over(now - 1, grace, now));
        assert!(grace_over(now - grace, grace, now));
        // A wall-clock stamp of 2026: expired, not kept until the map fills.
        assert!(grace_over(1_780_000_000_000_000_000, grace, now));
    }
}
