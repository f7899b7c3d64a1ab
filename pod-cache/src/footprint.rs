//! The store's heap footprint, computed by walking it (for the bench and for status).
//!
//! A library cannot install a counting global allocator, and a process's RSS moves with
//! everything else in it, so the cache adds up its own allocations: every map table, slice and
//! string, each shared one (interned strings, label sets) once. Each allocation is rounded as
//! glibc's malloc rounds it (8 bytes of header, 16-byte granules, 32 bytes at least), so the
//! figure is what the allocator hands out, not only the payload.

use std::collections::HashSet;
use std::mem::size_of;
use std::sync::Arc;

use crate::compact::{CachedContainer, CachedPod, Interner, Labels};
use crate::store::StoreData;

/// Heap bytes held by the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes as the allocator hands them out (payload rounded up, plus headers).
    pub bytes: usize,
    /// Payload bytes only.
    pub payload: usize,
    pub allocations: usize,
}

/// `Arc`'s two counters ahead of the value.
const ARC_HEADER: usize = 2 * size_of::<usize>();

#[derive(Default)]
struct Walker {
    seen: HashSet<usize>,
    total: Footprint,
}

impl Walker {
    fn alloc(&mut self, size: usize) {
        if size == 0 {
            return;
        }
        self.total.payload += size;
        self.total.bytes += (size + 8).div_ceil(16).max(2) * 16;
        self.total.allocations += 1;
    }

    /// Counts a shared allocation once, by its address. Returns whether it was new.
    fn shared(&mut self, address: usize, size: usize) -> bool {
        let new = self.seen.insert(address);
        if new {
            self.alloc(size);
        }
        new
    }

    fn string(&mut self, s: &Arc<str>) {
        self.shared(Arc::as_ptr(s) as *const u8 as usize, ARC_HEADER + s.len());
    }

    /// A hashbrown table: one allocation of buckets plus one control byte per bucket.
    fn table<K, V>(&mut self, capacity: usize) {
        if capacity > 0 {
            let buckets = (capacity * 8 / 7).next_power_of_two();
            self.alloc(buckets * (size_of::<K>() + size_of::<V>()) + buckets + 16);
        }
    }

    fn labels(&mut self, labels: &Labels) {
        let pairs = labels.pairs();
        if self.shared(pairs.as_ptr() as usize, ARC_HEADER + size_of_val(pairs)) {
            for (k, v) in pairs {
                self.string(k);
                self.string(v);
            }
        }
    }

    fn pod(&mut self, pod: &Arc<CachedPod>) {
        if !self.shared(
            Arc::as_ptr(pod) as usize,
            ARC_HEADER + size_of::<CachedPod>(),
        ) {
            return;
        }
        for s in [&pod.uid, &pod.name, &pod.namespace] {
            self.string(s);
        }
        for s in [&pod.workload, &pod.workload_kind].into_iter().flatten() {
            self.string(s);
        }
        self.labels(&pod.labels);
        self.labels(&pod.annotations);
        let containers = &pod.containers;
        let size = ARC_HEADER + containers.len() * size_of::<CachedContainer>();
        if self.shared(containers.as_ptr() as usize, size) {
            for container in containers.iter() {
                self.string(&container.id);
                self.string(&container.name);
                if let Some(image) = &container.image {
                    self.string(image);
                }
            }
        }
    }
}

/// Adds up the store's heap, and the interner's table (its strings are the pods').
pub(crate) fn measure(data: &StoreData, interner: &Interner) -> Footprint {
    let mut walker = Walker::default();
    let [pods, containers, tombstones, log] = data.capacities();
    walker.table::<Arc<str>, Arc<CachedPod>>(pods);
    walker.table::<Arc<str>, Arc<str>>(containers);
    walker.alloc(tombstones * (size_of::<Arc<CachedPod>>() + size_of::<std::time::Instant>()));
    walker.alloc(log * size_of::<(u64, Arc<str>)>());
    walker.table::<Arc<str>, ()>(interner.capacity());
    for pod in data.pods() {
        walker.pod(pod);
    }
    for (id, uid) in data.container_index() {
        walker.string(id);
        walker.string(uid);
    }
    // Strings the interner still holds that no pod uses (until its next purge), and uids of
    // pods dropped since that only the change log still names.
    for s in interner.iter().chain(data.logged_uids()) {
        walker.string(s);
    }
    walker.total
}
