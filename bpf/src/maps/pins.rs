//! The pin directory: the names and kinds of the pinned maps, opening pins directly or creating
//! them from the maps-only object, and the shape each pin must have before it is used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError};
use aya::{Ebpf, EbpfLoader};

use crate::mounts;

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
    #[error("map {name}: duplicating its descriptor: {source}")]
    Dup {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("pinning {path} again: {source}")]
    Pin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
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

/// Opens every pin under `dir` directly (cheap: no object to parse, no kernel BTF to read, which
/// matters on a container's critical path); `None` when any is missing.
pub(crate) fn open_pins(dir: &Path) -> Result<Option<HashMap<&'static str, Map>>, MapsError> {
    let mut opened = HashMap::new();
    for (name, _) in ALL_PINNED {
        match open_pin(dir, name)? {
            Some(map) => opened.insert(name, map),
            None => return Ok(None),
        };
    }
    Ok(Some(opened))
}

/// Makes sure every pin exists under `dir` (mounting bpffs when needed): the pins already there
/// are kept; otherwise loading the maps-only object creates what is missing (the plugins load
/// no program).
pub(crate) fn ensure_pins(dir: &Path) -> Result<(), MapsError> {
    mounts::ensure_bpffs(dir)?;
    if ALL_PINNED.iter().all(|(name, _)| dir.join(name).exists()) {
        return Ok(());
    }
    load_pinned(crate::objects::MAPS, dir, |_| {}).map(drop)
}

/// Opens one pin directly; `None` when it is missing.
pub(crate) fn open_pin(dir: &Path, name: &'static str) -> Result<Option<Map>, MapsError> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let kind = ALL_PINNED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| *k)
        .ok_or(MapsError::Missing { name })?;
    let data = MapData::from_pin(path).map_err(|source| MapsError::Map { name, source })?;
    Ok(Some(match kind {
        PinKind::Hash => Map::HashMap(data),
        PinKind::Array => Map::Array(data),
        PinKind::LpmTrie => Map::LpmTrie(data),
    }))
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
