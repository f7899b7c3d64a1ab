//! What a runtime plugin does with a container it learnt of: write it into the pinned maps (first:
//! that is what the kernel reads) and into its own store, start its grace period when the runtime
//! removes it, sweep what expired, and rebuild map entries from the store after a restart.

use std::path::Path;

use crate::cgroup::CgroupLayout;
use crate::layout::Counter;
use crate::maps::{now_ns, MapsError, RecordFlags, SharedMaps, Writer};
use crate::record::{CgroupIds, ContainerId, ContainerMeta};
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
}

pub struct Registry {
    maps: SharedMaps,
    store: Store,
    writer: Writer,
    grace_ns: u64,
    boot_id: String,
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
            grace_ns,
            boot_id,
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
            self.maps.counters().add(Counter::CgroupUnresolved, 1);
            return Err(RegistryError::NoCgroup(meta.container_id));
        }
        self.maps.insert(&ids, &meta, flags, self.writer)?;
        let rec = ContainerRecord {
            meta,
            ids,
            boot_id: self.boot_id.clone(),
            created_ns: now_ns(),
            removed_ns: None,
        };
        self.store.put(&rec).inspect_err(|_| {
            self.maps.counters().add(Counter::StoreErrors, 1);
        })?;
        Ok(())
    }

    /// The runtime removed the container: keep it for the grace period. Unknown ids are fine.
    pub fn removed(&mut self, id: &ContainerId) -> Result<bool, RegistryError> {
        let Some(mut rec) = self.store.get(id)? else {
            return Ok(false);
        };
        let now = now_ns();
        self.maps.mark_removed(&rec.ids, now)?;
        rec.removed_ns = Some(now);
        self.store.put(&rec).inspect_err(|_| {
            self.maps.counters().add(Counter::StoreErrors, 1);
        })?;
        Ok(true)
    }

    /// Drops what expired, from the maps (anyone's records) and from this writer's store.
    pub fn sweep(&mut self) -> usize {
        let now = now_ns();
        let n = self.maps.sweep_expired(self.grace_ns, now).len();
        for rec in self.store.records().into_iter().flatten() {
            if rec
                .removed_ns
                .is_some_and(|r| r.saturating_add(self.grace_ns) <= now)
            {
                let _ = self.store.remove(&rec.meta.container_id);
            }
        }
        n
    }

    /// After a restart: records of this boot whose cgroups still resolve to the same ids are
    /// written back where the map lost them; everything else leaves the store.
    pub fn restore(&mut self, layout: &CgroupLayout) -> RestoreReport {
        let mut report = RestoreReport::default();
        let now = now_ns();
        for rec in self.store.records() {
            let rec = match rec {
                Ok(r) => r,
                Err(StoreError::Corrupt { key, reason, .. }) => {
                    tracing::warn!(%key, %reason, "dropping a store record that does not parse");
                    let _ = self.store.remove_key(&key);
                    report.corrupt += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the store");
                    self.maps.counters().add(Counter::StoreErrors, 1);
                    continue;
                }
            };
            let id = rec.meta.container_id.clone();
            if rec.boot_id != self.boot_id {
                let _ = self.store.remove(&id);
                report.dropped_other_boot += 1;
                continue;
            }
            if rec
                .removed_ns
                .is_some_and(|r| r.saturating_add(self.grace_ns) <= now)
            {
                let _ = self.maps.remove(&rec.ids);
                let _ = self.store.remove(&id);
                report.dropped_expired += 1;
                continue;
            }
            if layout.resolve(Path::new(rec.meta.cgroup_path.trim_start_matches('/'))) != rec.ids {
                let _ = self.maps.remove(&rec.ids);
                let _ = self.store.remove(&id);
                report.dropped_gone += 1;
                continue;
            }
            let missing = rec.ids.keys().any(|k| matches!(self.maps.get(k), Ok(None)));
            if missing {
                let flags = RecordFlags {
                    sandbox: rec.meta.sandbox,
                    removing: rec.removed_ns.is_some(),
                };
                match self.maps.insert(&rec.ids, &rec.meta, flags, self.writer) {
                    Ok(()) => {
                        if let Some(r) = rec.removed_ns {
                            let _ = self.maps.mark_removed(&rec.ids, r);
                        }
                        report.rewritten += 1;
                    }
                    Err(e) => tracing::warn!(container = %id, error = %e, "rewriting a map entry"),
                }
            } else {
                report.kept += 1;
            }
        }
        report
    }

    /// Forgets a container entirely (for records a runtime no longer knows, e.g. after
    /// Synchronize).
    pub fn forget(&mut self, id: &ContainerId) -> Result<(), RegistryError> {
        if let Some(rec) = self.store.get(id)? {
            self.maps.remove(&rec.ids)?;
            self.store.remove(id)?;
        }
        Ok(())
    }

    /// Every container this writer has recorded.
    pub fn records(&self) -> Vec<ContainerRecord> {
        self.store.records().into_iter().flatten().collect()
    }
}
