//! The shared counters, mapped into this process: the kernel programs and every writer add to the
//! same u64 cells atomically, so no update is lost between processes. A process that only counts
//! opens this handle alone.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{Map, MapData};

use crate::layout::{self, Counter};
use crate::maps::pins::{
    check_map, ensure_pins, open_pin, MapsError, Shape, BPF_F_MMAPABLE, COUNTERS_MAP,
};

/// The shared counters, mapped into this process: kernel programs and every writer add to the
/// same u64 cells atomically, so no update is lost between processes.
pub struct Counters {
    ptr: *const AtomicU64,
    len: usize,
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics, and lives as long as the
// struct (unmapped in Drop).
unsafe impl Send for Counters {}
unsafe impl Sync for Counters {}

impl Counters {
    /// The shape the counters pin must have: it is mmapped and indexed up to `COUNTERS`.
    pub(crate) const SHAPE: Shape = Shape {
        key: 4,
        value: 8,
        max_entries: layout::COUNTERS,
        flags: BPF_F_MMAPABLE,
    };

    /// Maps the pinned counters under `dir` (creating the pins when missing), for a process that
    /// only counts.
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        ensure_pins(dir)?;
        let map = open_pin(dir, COUNTERS_MAP)?.ok_or(MapsError::Missing { name: COUNTERS_MAP })?;
        Counters::take(map, dir)
    }

    pub(crate) fn take(map: Map, dir: &Path) -> Result<Self, MapsError> {
        check_map(&map, dir, COUNTERS_MAP, Self::SHAPE)?;
        Self::new(map)
    }

    fn new(map: Map) -> Result<Self, MapsError> {
        let Map::Array(data) = map else {
            return Err(MapsError::Missing { name: COUNTERS_MAP });
        };
        let len = layout::COUNTERS as usize;
        let bytes = (len * 8).next_multiple_of(4096);
        use std::os::fd::AsRawFd;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mmap of a BPF_F_MMAPABLE array fd; size covers the array, checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapsError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Counters {
            ptr: ptr as *const AtomicU64,
            len,
            _map: data,
        })
    }

    fn cell(&self, idx: u32) -> Option<&AtomicU64> {
        // SAFETY: idx is bounds-checked; the mapping is valid and 8-byte aligned for our lifetime.
        ((idx as usize) < self.len).then(|| unsafe { &*self.ptr.add(idx as usize) })
    }

    pub fn add(&self, c: Counter, n: u64) {
        if let Some(cell) = self.cell(c as u32) {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.cell(c as u32)
            .map_or(0, |cell| cell.load(Ordering::Relaxed))
    }

    /// Records one create-to-mapping-ready latency in the shared log2 histogram, and adds it to
    /// the histogram's sum.
    pub fn record_latency(&self, micros: u64) {
        let bucket = (64 - micros.leading_zeros()).min(layout::LATENCY_BUCKETS - 1);
        if let Some(cell) = self.cell(layout::LATENCY_BUCKET0 + bucket) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
        self.add(Counter::MappingLatencySumUs, micros);
    }

    /// The latency histogram: element i counts latencies below 2^i microseconds (and at least
    /// 2^(i-1)).
    pub fn latency_histogram(&self) -> Vec<u64> {
        (0..layout::LATENCY_BUCKETS)
            .map(|i| {
                self.cell(layout::LATENCY_BUCKET0 + i)
                    .map_or(0, |c| c.load(Ordering::Relaxed))
            })
            .collect()
    }
}

/// Percentile of a log2 histogram such as [`Counters::latency_histogram`] (bucket i counts
/// values below 2^i): the matching bucket's upper bound, or None when it is empty.
pub fn histogram_percentile(h: &[u64], p: f64) -> Option<u64> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * p).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in h.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(1u64 << i);
        }
    }
    None
}

impl Drop for Counters {
    fn drop(&mut self) {
        let bytes = (self.len * 8).next_multiple_of(4096);
        // SAFETY: unmapping exactly the region mapped in new().
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, bytes) };
    }
}
