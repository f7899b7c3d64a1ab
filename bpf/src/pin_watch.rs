//! Keeping the pins pointing at the maps and links a long-lived process holds. A pin is only a
//! name: when someone removes the pin directory while podmap runs (an uninstall started too
//! early, a hand-cleaned bpffs), the maps and links live on in every process that holds them,
//! but the next process to open the pins would create new, empty maps that no program reads, and
//! a restarted podmapd would find no links and attach a second generation. So podmapd and
//! podmap-nri hold their own handles and pin them again where a pin went missing: whoever opens
//! the pins next finds the very maps and links in use. One `stat` per pin when nothing changed.
//!
//! A pin that names another object (made by a process that found the directory empty before the
//! repair) cannot be fixed here without losing what was written to it: it is reported once, so
//! the caller counts and logs it. To really remove podmap from a node, stop podmapd and
//! podmap-nri first (docs/decisions.md #30).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData};
use aya::programs::links::{FdLink, PinnedLink};

use crate::layout::Counter;
use crate::maps::counters::Counters;
use crate::maps::pins::{MapsError, COUNTERS_MAP};
use crate::mounts;

/// A handle this process holds on a pinned object.
enum Held {
    Map(MapData),
    /// A descriptor of the link of its own (aya's `FdLink::pin` consumes the link and closes it
    /// when the pin fails, which would detach a link whose pin is gone).
    Link(OwnedFd),
}

struct Watched {
    /// The pin's path below the pin directory.
    name: String,
    held: Held,
    /// The kernel's id of the object.
    id: u32,
    /// The pin it was last seen at (device, inode).
    pin: Option<(u64, u64)>,
}

/// What [`PinWatch::repair`] found, by pin name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PinRepair {
    /// Pins that were missing and now name this process's objects again.
    pub restored: Vec<String>,
    /// Pins that name another object: the processes no longer share it.
    pub foreign: Vec<String>,
}

impl PinRepair {
    pub fn is_clean(&self) -> bool {
        self.restored.is_empty() && self.foreign.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PinWatchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Object { path: PathBuf, detail: String },
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
}

/// The pins of a set of objects this process holds, watched and restored.
pub struct PinWatch {
    dir: PathBuf,
    watched: Vec<Watched>,
}

fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))
}

impl PinWatch {
    pub fn new(dir: &Path) -> PinWatch {
        PinWatch {
            dir: dir.to_owned(),
            watched: Vec::new(),
        }
    }

    /// Watches the pin `name` of `map`, which the caller is about to hand to a typed handle
    /// (this keeps a duplicate descriptor).
    pub fn watch_map(&mut self, name: &'static str, map: &Map) -> Result<(), MapsError> {
        let data: &MapData = match map {
            Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d) | Map::RingBuf(d) => d,
            _ => return Err(MapsError::Missing { name }),
        };
        let fd = std::os::fd::AsFd::as_fd(data.fd())
            .try_clone_to_owned()
            .map_err(|source| MapsError::Dup { name, source })?;
        let held = MapData::from_fd(fd).map_err(|source| MapsError::Map { name, source })?;
        let id = held
            .info()
            .map_err(|source| MapsError::Map { name, source })?
            .id();
        self.push(name.to_string(), Held::Map(held), id);
        Ok(())
    }

    /// Watches the pin `name` (a path below the pin directory) of `link`, and holds the link
    /// through a descriptor of its own: while this process lives, removing its pin does not
    /// detach it.
    pub fn watch_link(&mut self, name: String, link: &FdLink) -> Result<(), PinWatchError> {
        let path = self.dir.join(&name);
        let id = link
            .info()
            .map_err(|e| PinWatchError::Object {
                path: path.clone(),
                detail: e.to_string(),
            })?
            .id();
        let fd = link_fd_by_id(id).map_err(|source| PinWatchError::Io { path, source })?;
        self.push(name, Held::Link(fd), id);
        Ok(())
    }

    /// Holds and watches the link pinned at `name` (a path below the pin directory), as
    /// [`PinWatch::watch_link`] does for a link in hand.
    pub fn watch_pinned_link(&mut self, name: String) -> Result<(), PinWatchError> {
        let path = self.dir.join(&name);
        let link = PinnedLink::from_pin(&path).map_err(|e| PinWatchError::Object {
            path,
            detail: e.to_string(),
        })?;
        self.watch_link(name, &FdLink::from(link))
    }

    /// Stops watching the pin `name` and lets go of this process's handle on its object: a link
    /// whose pin is gone too detaches.
    pub fn forget(&mut self, name: &str) {
        self.watched.retain(|w| w.name != name);
    }

    fn push(&mut self, name: String, held: Held, id: u32) {
        let pin = identity(&self.dir.join(&name)).ok();
        self.watched.push(Watched {
            name,
            held,
            id,
            pin,
        });
    }

    /// Pins this process's objects again where their pins went missing, and says which pins
    /// now name other objects (each such pin once: until it changes again, it is what there is).
    pub fn repair(&mut self) -> Result<PinRepair, PinWatchError> {
        let mut report = PinRepair::default();
        for w in &mut self.watched {
            let path = self.dir.join(&w.name);
            let io = |source| PinWatchError::Io {
                path: path.clone(),
                source,
            };
            let seen = match identity(&path) {
                Ok(seen) if Some(seen) == w.pin => continue,
                Ok(seen) => seen,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    mounts::ensure_bpffs(&self.dir)?;
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    match pin(&mut w.held, &path) {
                        Ok(()) => {
                            w.pin = identity(&path).ok();
                            report.restored.push(w.name.clone());
                            continue;
                        }
                        // Someone pinned an object there in between: look at it below.
                        Err(_) if path.exists() => identity(&path).map_err(io)?,
                        Err(detail) => return Err(PinWatchError::Object { path, detail }),
                    }
                }
                Err(source) => return Err(io(source)),
            };
            // Another pin: the same object pinned again by another process, or another object.
            let other = pinned_id(&w.held, &path)
                .map_err(|detail| PinWatchError::Object { path, detail })?;
            if other != w.id {
                report.foreign.push(w.name.clone());
            }
            w.pin = Some(seen);
        }
        Ok(report)
    }

    /// [`PinWatch::repair`], then counted in `counters` (`pins_restored`, `pins_foreign`; a
    /// foreign counters pin is counted in too, so `podmap status` shows the split) and logged.
    /// An error is logged and left for the next call.
    pub fn keep(&mut self, counters: &Counters) -> PinRepair {
        let report = match self.repair() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "checking the pins");
                return PinRepair::default();
            }
        };
        if !report.restored.is_empty() {
            counters.add(Counter::PinsRestored, report.restored.len() as u64);
            tracing::warn!(
                dir = %self.dir.display(),
                pins = ?report.restored,
                "pins were removed while podmap runs: pinned this process's objects again (stop podmap's processes before removing the pin directory)"
            );
        }
        if !report.foreign.is_empty() {
            let n = report.foreign.len() as u64;
            counters.add(Counter::PinsForeign, n);
            if report.foreign.iter().any(|p| p == COUNTERS_MAP) {
                if let Ok(theirs) = Counters::open(&self.dir) {
                    theirs.add(Counter::PinsForeign, n);
                }
            }
            tracing::error!(
                dir = %self.dir.display(),
                pins = ?report.foreign,
                "pins name other objects than the ones this process holds (they were removed and recreated): restart podmap's processes to share one set again"
            );
        }
        report
    }
}

fn pin(held: &mut Held, path: &Path) -> Result<(), String> {
    match held {
        Held::Map(m) => m.pin(path).map_err(|e| e.to_string()),
        Held::Link(fd) => obj_pin(fd, path).map_err(|e| e.to_string()),
    }
}

/// `union bpf_attr` for BPF_OBJ_PIN (uapi/linux/bpf.h); the kernel zero-fills the rest.
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for BPF_LINK_GET_FD_BY_ID.
#[repr(C)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

fn obj_pin(fd: &OwnedFd, path: &Path) -> std::io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: bpf(2) reads `attr` (and the NUL-terminated path it points to), both live for
    // the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const ObjPinAttr,
            size_of::<ObjPinAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn link_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    let attr = GetFdByIdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: bpf(2) reads `attr`, live for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            &attr as *const GetFdByIdAttr,
            size_of::<GetFdByIdAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn pinned_id(held: &Held, path: &Path) -> Result<u32, String> {
    match held {
        Held::Map(_) => MapData::from_pin(path)
            .and_then(|m| m.info())
            .map(|i| i.id())
            .map_err(|e| e.to_string()),
        Held::Link(_) => PinnedLink::from_pin(path)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                FdLink::from(p)
                    .info()
                    .map(|i| i.id())
                    .map_err(|e| e.to_string())
            }),
    }
}
