//! What a runtime plugin does with a container it learnt of: write it into the pinned maps (first:
//! that is what the kernel reads) and into its own store, start its grace period when the runtime
//! removes it, sweep what expired, and rebuild map entries from the store after a restart.
//!
//! [`sweep`] and [`restore`] are the one implementation of both plugins: podmap-nri calls them
//! through its [`Registry`], the hook on the store it opens under its lock. A record of another
//! boot is dropped from the store wherever either meets it, and its ids are never used on the
//! maps: cgroup ids are inode numbers, handed out afresh at every boot, so they may name a live
//! cgroup of this boot (docs/decisions.md #3).

use std::path::Path;

use podmap_bpf::layout::Counter;
use podmap_bpf::maps::{boot_ns, grace_over, MapsError, RecordFlags, SharedMaps, Writer};
use podmap_bpf::{ContainerId, ContainerMeta};
use podmap_cgroup::{CgroupIds, CgroupLayout};

use crate::store::{ContainerRecord, Store, StoreError};

/// Default grace period after removal (docs/decisions.md #5: 30 s, flag `--grace`).
pub const DEFAULT_GRACE_NS: u64 = 30_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("container {0} resolved to no cgroup id")]
    NoCgroup(ContainerId),
}

/// What a restart found in the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub kept: usize,
    pub rewritten: usize,
    pub dropped_other_boot: usize,
    pub dropped_gone: usize,
    pub dropped_expired: usize,
    pub corrupt: usize,
    /// One line per record that could not be read or written back, for the writer's log.
    pub problems: Vec<String>,
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Map entries (anyone's) whose grace period ended.
    pub map_expired: usize,
    /// Store records whose grace period ended.
    pub store_expired: usize,
    /// Store records of another boot.
    pub other_boot: usize,
    pub corrupt: usize,
    /// One line per record that could not be read, for the writer's log.
    pub problems: Vec<String>,
}

/// How long a writer keeps what it recorded: its grace period after removal, and this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub grace_ns: u64,
    pub boot_id: String,
}

impl Retention {
    fn expired(&self, removed_ns: Option<u64>, now: u64) -> bool {
        removed_ns.is_some_and(|r| grace_over(r, self.grace_ns, now))
    }
}

/// A record that does not parse leaves the store; other read errors are reported.
fn unreadable(store: &Store, maps: Option<&SharedMaps>, e: StoreError) -> (bool, String) {
    match e {
        StoreError::Corrupt { key, reason, .. } => {
            tracing::warn!(%key, %reason, "dropping a store record that does not parse");
            let _ = store.remove_key(&key);
            (
                true,
                format!("dropping store record {key}, which does not parse: {reason}"),
            )
        }
        e => {
            tracing::warn!(error = %e, "reading the store");
            if let Some(m) = maps {
                m.counters.add(Counter::StoreErrors, 1);
            }
            (false, format!("reading the store: {e}"))
        }
    }
}

/// Drops what expired: from the maps (anyone's records, from the map's own removal times) and
/// from `store` (expired, of another boot, or unparseable). Without maps, the store alone.
pub fn sweep(
    maps: Option<&mut SharedMaps>,
    store: &Store,
    keep: &Retention,
    now: u64,
) -> SweepReport {
    let mut report = SweepReport::default();
    let maps = maps.map(|m| {
        report.map_expired = m.records.sweep_expired(keep.grace_ns, now).len();
        &*m
    });
    for rec in store.records() {
        match rec {
            Ok(rec) if rec.boot_id != keep.boot_id => {
                let _ = store.remove(&rec.meta.container_id);
                report.other_boot += 1;
            }
            Ok(rec) if keep.expired(rec.removed_ns, now) => {
                let _ = store.remove(&rec.meta.container_id);
                report.store_expired += 1;
            }
            Ok(_) => {}
            Err(e) => {
                let (corrupt, line) = unreadable(store, maps, e);
                report.corrupt += usize::from(corrupt);
                report.problems.push(line);
            }
        }
    }
    report
}

/// After a restart, or into pins just created: records of this boot whose cgroups still
/// resolve to the same ids are written back where the map lost them (with their grace period);
/// expired records and records whose cgroup is gone leave map and store; records of another
/// boot leave the store only.
pub fn restore(
    maps: &mut SharedMaps,
    store: &Store,
    layout: &CgroupLayout,
    writer: Writer,
    keep: &Retention,
) -> RestoreReport {
    let mut report = RestoreReport::default();
    let now = boot_ns();
    for rec in store.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let (corrupt, line) = unreadable(store, Some(maps), e);
                report.corrupt += usize::from(corrupt);
                report.problems.push(line);
                continue;
            }
        };
        let id = rec.meta.container_id.clone();
        if rec.boot_id != keep.boot_id {
            let _ = store.remove(&id);
            report.dropped_other_boot += 1;
            continue;
        }
        if keep.expired(rec.removed_ns, now) {
            let _ = maps.records.remove(&rec.ids);
            let _ = store.remove(&id);
            report.dropped_expired += 1;
            continue;
        }
        if layout.resolve(Path::new(rec.meta.cgroup_path.trim_start_matches('/'))) != rec.ids {
            // Gone, or recreated: this boot's old ids name no cgroup any more.
            let _ = maps.records.remove(&rec.ids);
            let _ = store.remove(&id);
            report.dropped_gone += 1;
            continue;
        }
        let missing = rec
            .ids
            .keys()
            .any(|k| matches!(maps.records.get(k), Ok(None)));
        if !missing {
            report.kept += 1;
            continue;
        }
        let flags = RecordFlags {
            sandbox: rec.meta.sandbox,
            removing: rec.removed_ns.is_some(),
        };
        match maps.records.insert(&rec.ids, &rec.meta, flags, writer) {
            Ok(()) => {
                if let Some(r) = rec.removed_ns {
                    let _ = maps.records.mark_removed(&rec.ids, r);
                }
                report.rewritten += 1;
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "rewriting a map entry");
                report
                    .problems
                    .push(format!("container {id}: rewriting its map entry: {e}"));
            }
        }
    }
    report
}

pub struct Registry {
    maps: SharedMaps,
    store: Store,
    writer: Writer,
    keep: Retention,
}

impl Registry {
    pub fn new(
        maps: SharedMaps,
        store: Store,
        writer: Writer,
        grace_ns: u64,
        boot_id: String,
    ) -> Self {
        Registry {
            maps,
            store,
            writer,
            keep: Retention { grace_ns, boot_id },
        }
    }

    pub fn maps(&self) -> &SharedMaps {
        &self.maps
    }

    /// For writes that go with a record, such as policy memberships (written before it).
    pub fn maps_mut(&mut self) -> &mut SharedMaps {
        &mut self.maps
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Puts `store` in place of this writer's store (one found damaged); returns the old one.
    pub fn replace_store(&mut self, store: Store) -> Store {
        std::mem::replace(&mut self.store, store)
    }

    /// Maps a container: the pinned maps first, then the store. A store failure leaves the
    /// mapping in place (the kernel attributes) and is counted and returned.
    pub fn map(
        &mut self,
        meta: ContainerMeta,
        ids: CgroupIds,
        flags: RecordFlags,
    ) -> Result<(), RegistryError> {
        if ids.is_empty() {
            self.maps.counters.add(Counter::CgroupUnresolved, 1);
            return Err(RegistryError::NoCgroup(meta.container_id));
        }
        self.maps.records.insert(&ids, &meta, flags, self.writer)?;
        let rec = ContainerRecord {
            meta,
            ids,
            boot_id: self.keep.boot_id.clone(),
            created_ns: boot_ns(),
            removed_ns: None,
        };
        self.store.put(&rec).inspect_err(|_| {
            self.maps.counters.add(Counter::StoreErrors, 1);
        })?;
        Ok(())
    }

    /// The runtime removed the container: keep it for the grace period. Unknown ids are fine.
    pub fn removed(&mut self, id: &ContainerId) -> Result<bool, RegistryError> {
        let Some(mut rec) = self.store.get(id)? else {
            return Ok(false);
        };
        let now = boot_ns();
        self.maps.records.mark_removed(&rec.ids, now)?;
        rec.removed_ns = Some(now);
        self.store.put(&rec).inspect_err(|_| {
            self.maps.counters.add(Counter::StoreErrors, 1);
        })?;
        Ok(true)
    }

    /// Drops what expired, from the maps (anyone's records) and from this writer's store
    /// ([`sweep`]); returns how many map entries went.
    pub fn sweep(&mut self) -> usize {
        sweep(Some(&mut self.maps), &self.store, &self.keep, boot_ns()).map_expired
    }

    /// After a restart ([`restore`]).
    pub fn restore(&mut self, layout: &CgroupLayout) -> RestoreReport {
        restore(&mut self.maps, &self.store, layout, self.writer, &self.keep)
    }

    /// Forgets a container entirely (for records a runtime no longer knows, e.g. after
    /// Synchronize).
    pub fn forget(&mut self, id: &ContainerId) -> Result<(), RegistryError> {
        if let Some(rec) = self.store.get(id)? {
            self.maps.records.remove(&rec.ids)?;
            self.store.remove(id)?;
        }
        Ok(())
    }

    /// Every container this writer has recorded.
    pub fn records(&self) -> Vec<ContainerRecord> {
        self.store.records().into_iter().flatten().collect()
    }
}
