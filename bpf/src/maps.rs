//! Typed handles on the pinned maps shared by podmapd and the runtime plugins. No other crate
//! touches raw keys and values: this is the API runtime plugins write container records through.
//!
//! Whichever process comes first creates the pins (from the maps-only object, so the plugins
//! load no program); the others reuse them.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::{HashMap, Map, MapData, MapError};
use aya::{Ebpf, EbpfLoader};

use crate::layout::{self, podmap_cgroup_key, podmap_container, podmap_container_meta, Counter};
use crate::record::{CgroupIds, CgroupKey, ContainerMeta};
use crate::{mounts, objects};

pub const CONTAINERS_MAP: &str = "podmap_containers";
pub const META_MAP: &str = "podmap_meta";
pub const COUNTERS_MAP: &str = "podmap_counters";
pub const MEMBERS_MAP: &str = "podmap_policy_members";
pub const EXEC_RULES_MAP: &str = "podmap_exec_rules";
pub const OPEN_RULES_MAP: &str = "podmap_open_rules";
pub const POLICY_STATE_MAP: &str = "podmap_policy_state";

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("bpffs: {0}")]
    Mount(#[from] mounts::MountError),
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the pinned maps under {path}: {source}")]
    Load {
        path: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("map {name} missing from the object")]
    Missing { name: &'static str },
    #[error(
        "pinned map {path} has {what} {found}, this build expects {expected}: it was made by another \
         podmap version; stop podmap's processes and remove {dir}"
    )]
    Incompatible {
        path: PathBuf,
        dir: PathBuf,
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error(
        "pinned map {path} lacks {missing} (its flags are {found:#x}): it was made by another \
         podmap version or by hand; stop podmap's processes and remove {dir}"
    )]
    MissingFlags {
        path: PathBuf,
        dir: PathBuf,
        missing: String,
        found: u32,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("mapping the counters: {0}")]
    Mmap(std::io::Error),
}

#[derive(Clone, Copy)]
enum PinKind {
    Hash,
    Array,
    LpmTrie,
}

/// Every pinned map, with its type.
const ALL_PINNED: [(&str, PinKind); 7] = [
    (CONTAINERS_MAP, PinKind::Hash),
    (META_MAP, PinKind::Hash),
    (COUNTERS_MAP, PinKind::Array),
    (MEMBERS_MAP, PinKind::Hash),
    (EXEC_RULES_MAP, PinKind::LpmTrie),
    (OPEN_RULES_MAP, PinKind::LpmTrie),
    (POLICY_STATE_MAP, PinKind::Array),
];

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
    Test = 0,
    Nri = 1,
    OciHook = 2,
    Daemon = 3,
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

/// Handles on the three pinned maps.
pub struct SharedMaps {
    dir: PathBuf,
    containers: HashMap<MapData, podmap_cgroup_key, podmap_container>,
    meta: HashMap<MapData, podmap_cgroup_key, podmap_container_meta>,
    counters: Counters,
    pub(crate) policy: crate::policy_maps::PolicyMaps,
}

impl SharedMaps {
    /// Opens the pinned maps under `dir`, creating them (and mounting bpffs) when missing.
    /// The pins already there are opened directly (cheap: no object to parse, no kernel BTF
    /// to read, which matters on a container's critical path); otherwise the maps-only object
    /// creates what is missing.
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        mounts::ensure_bpffs(dir)?;
        if let Some(maps) = Self::open_pins(dir)? {
            return Ok(maps);
        }
        let mut ebpf = load_pinned(objects::MAPS, dir, |_| {})?;
        Self::from_ebpf(&mut ebpf, dir)
    }

    /// Opens every pin directly; `None` when any is missing.
    fn open_pins(dir: &Path) -> Result<Option<Self>, MapsError> {
        if ALL_PINNED.iter().any(|(name, _)| !dir.join(name).exists()) {
            return Ok(None);
        }
        let mut opened = std::collections::HashMap::new();
        for (name, kind) in ALL_PINNED {
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| MapsError::Map { name, source })?;
            let map = match kind {
                PinKind::Hash => Map::HashMap(data),
                PinKind::Array => Map::Array(data),
                PinKind::LpmTrie => Map::LpmTrie(data),
            };
            opened.insert(name, map);
        }
        Self::from_source(|name| opened.remove(name), dir).map(Some)
    }

    /// Takes the shared maps out of a loaded object (the daemon's programs object).
    pub fn from_ebpf(ebpf: &mut Ebpf, dir: &Path) -> Result<Self, MapsError> {
        Self::from_source(|name| ebpf.take_map(name), dir)
    }

    fn from_source(
        mut source: impl FnMut(&'static str) -> Option<Map>,
        dir: &Path,
    ) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| source(name).ok_or(MapsError::Missing { name });
        let containers = take(CONTAINERS_MAP)?;
        let meta = take(META_MAP)?;
        let counters = take(COUNTERS_MAP)?;
        let policy = crate::policy_maps::PolicyMaps::take(&mut take, dir)?;
        let key = size_of::<podmap_cgroup_key>();
        let containers_shape = Shape {
            key,
            value: size_of::<podmap_container>(),
            max_entries: layout::MAX_CONTAINERS,
            flags: 0,
        };
        check_map(&containers, dir, CONTAINERS_MAP, containers_shape)?;
        let meta_shape = Shape {
            value: size_of::<podmap_container_meta>(),
            ..containers_shape
        };
        check_map(&meta, dir, META_MAP, meta_shape)?;
        let counters_shape = Shape {
            key: 4,
            value: 8,
            max_entries: layout::COUNTERS,
            flags: BPF_F_MMAPABLE,
        };
        check_map(&counters, dir, COUNTERS_MAP, counters_shape)?;
        let map_err = |name| move |source| MapsError::Map { name, source };
        Ok(SharedMaps {
            dir: dir.to_owned(),
            containers: HashMap::try_from(containers).map_err(map_err(CONTAINERS_MAP))?,
            meta: HashMap::try_from(meta).map_err(map_err(META_MAP))?,
            counters: Counters::new(counters)?,
            policy,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
            created_ns: now_ns(),
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
        Ok(found)
    }

    /// Drops every record whose grace period ended by `now_ns`; returns their keys. Any writer
    /// or podmapd may sweep: removal is idempotent.
    pub fn sweep_expired(&mut self, grace_ns: u64, now_ns: u64) -> Vec<CgroupKey> {
        let expired: Vec<podmap_cgroup_key> = self
            .containers
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, r)| r.removed_ns != 0 && r.removed_ns.saturating_add(grace_ns) <= now_ns)
            .map(|(k, _)| k)
            .collect();
        let mut out = Vec::with_capacity(expired.len());
        for raw in expired {
            let _ = self.containers.remove(&raw);
            let _ = self.meta.remove(&raw);
            self.counters.add(Counter::RecordsExpired, 1);
            out.push(CgroupKey::from_raw(raw));
        }
        out
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
        self.containers
            .keys()
            .filter_map(Result::ok)
            .map(CgroupKey::from_raw)
            .collect()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata of cgroup {key:?} does not parse: {reason}")]
    Corrupt { key: CgroupKey, reason: String },
    #[error("reading the metadata map: {0}")]
    Map(String),
}

/// `BPF_F_MMAPABLE` (uapi/linux/bpf.h): the counters array must have it to be mmapped.
pub(crate) const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The shape this build expects of a pinned map. A pin someone else created (another podmap
/// version, or anyone with access to bpffs) is only used when it matches: the counters map is
/// mmapped and indexed up to `COUNTERS`, so a shorter or non-mmapable array must be refused by
/// name, not mapped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub key: usize,
    pub value: usize,
    pub max_entries: u32,
    /// Flags the map must have (others may be set).
    pub flags: u32,
}

pub(crate) fn check_map(
    map: &Map,
    dir: &Path,
    name: &'static str,
    shape: Shape,
) -> Result<(), MapsError> {
    let Shape {
        key,
        value,
        max_entries,
        flags,
    } = shape;
    let data: &MapData = match map {
        Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d) => d,
        _ => return Err(MapsError::Missing { name }),
    };
    let info = data
        .info()
        .map_err(|source| MapsError::Map { name, source })?;
    let path = dir.join(name);
    for (what, found, expected) in [
        ("key size", info.key_size(), key as u32),
        ("value size", info.value_size(), value as u32),
        ("max_entries", info.max_entries(), max_entries),
    ] {
        if found != expected {
            return Err(MapsError::Incompatible {
                path,
                dir: dir.to_owned(),
                what,
                found,
                expected,
            });
        }
    }
    if info.map_flags() & flags != flags {
        return Err(MapsError::MissingFlags {
            path,
            dir: dir.to_owned(),
            missing: flag_names(flags & !info.map_flags()),
            found: info.map_flags(),
        });
    }
    Ok(())
}

fn flag_names(flags: u32) -> String {
    if flags == BPF_F_MMAPABLE {
        "BPF_F_MMAPABLE".to_string()
    } else {
        format!("{flags:#x}")
    }
}

/// Loads an object whose `LIBBPF_PIN_BY_NAME` maps live under `dir`. Two processes creating the
/// same pin at once: the loser's pin fails with EEXIST and a second try reuses the winner's.
pub(crate) fn load_pinned<'a>(
    object: &[u8],
    dir: &Path,
    configure: impl Fn(&mut EbpfLoader<'a>),
) -> Result<Ebpf, MapsError> {
    mounts::ensure_bpffs(dir)?;
    std::fs::create_dir_all(dir).map_err(|source| MapsError::PinDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut last = None;
    for _ in 0..3 {
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(dir);
        configure(&mut loader);
        match loader.load(object) {
            Ok(e) => return Ok(e),
            Err(e) => last = Some(e),
        }
    }
    Err(MapsError::Load {
        path: dir.to_owned(),
        source: Box::new(last.expect("tried")),
    })
}

/// Wall-clock ns, the time base of `created_ns` and `removed_ns`.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

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

    /// Records one create-to-mapping-ready latency in the shared log2 histogram.
    pub fn record_latency(&self, micros: u64) {
        let bucket = (64 - micros.leading_zeros()).min(layout::LATENCY_BUCKETS - 1);
        if let Some(cell) = self.cell(layout::LATENCY_BUCKET0 + bucket) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
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

/// The level of a cgroup from its path relative to the hierarchy root (the root is 0).
fn cgroup_level(rel: &str) -> usize {
    rel.split('/').filter(|c| !c.is_empty()).count()
}
