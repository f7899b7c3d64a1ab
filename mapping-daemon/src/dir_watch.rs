//! Directories watched with inotify, so the housekeeping thread looks at the policy directory
//! and the pin directory when something there changed instead of four times a second (each look
//! is a listing and a `stat` per entry; together they were most of an idle podmapd's CPU).
//!
//! A directory is watched itself and through its nearest existing ancestor: an event there that
//! names the next component of the path (the directory created, removed, renamed over, or a
//! symbolic link to it changed) re-arms the watch on whatever is at the path now. What inotify
//! cannot say is covered by the caller's slow look: a full event queue (`IN_Q_OVERFLOW`) marks
//! every directory changed, a directory that cannot be watched at all (no inotify instance, no
//! watch left under `max_user_watches`) is reported so, and changes behind a symbolic link that
//! leaves the directory, or on a network filesystem, are never seen.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Events in a watched directory that can change what a look at it finds.
const DIR_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;
/// Events in an ancestor that can put another directory (or none) at the watched path.
const ANCESTOR_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;
/// The watch is gone, or now watches something that is no longer at the path.
const GONE: u32 = libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_UNMOUNT;

/// A directory's watches.
#[derive(Debug)]
struct Target {
    path: PathBuf,
    /// The watch on the directory itself; None while there is none at the path (or it cannot be
    /// watched).
    dir: Option<i32>,
    /// The watch on the nearest existing ancestor, and the name below it that leads to `path`.
    ancestor: Option<(i32, Vec<u8>)>,
    changed: bool,
    /// The last attempt to watch failed for another reason than a missing path.
    unwatchable: bool,
}

/// Readable while events are queued: a thread can sleep on it beside other descriptors.
impl AsRawFd for DirWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Identifies a directory added with [`DirWatch::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched(usize);

/// One inotify instance watching a few directories.
#[derive(Debug)]
pub struct DirWatch {
    fd: OwnedFd,
    targets: Vec<Target>,
    overflows: u64,
}

impl DirWatch {
    pub fn new() -> io::Result<DirWatch> {
        // SAFETY: inotify_init1(2) takes no pointers; a new fd is owned below or an error returned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DirWatch {
            // SAFETY: fd is a new descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            targets: Vec::new(),
            overflows: 0,
        })
    }

    /// Watches `path` (it need not exist yet). It starts out changed: nothing was seen of it.
    pub fn add(&mut self, path: &Path) -> Watched {
        self.targets.push(Target {
            path: path.to_owned(),
            dir: None,
            ancestor: None,
            changed: true,
            unwatchable: false,
        });
        let w = Watched(self.targets.len() - 1);
        self.arm(w.0);
        w
    }

    /// Whether something changed in the directory since the last call (and clears it). A
    /// directory that cannot be watched is always changed: the caller looks every time.
    pub fn take_changed(&mut self, w: Watched) -> bool {
        let t = &mut self.targets[w.0];
        let changed = t.changed || t.unwatchable;
        t.changed = false;
        changed
    }

    /// Whether every directory is watched: one that cannot be is reported changed every time,
    /// so its caller must look often for itself.
    pub fn all_watched(&self) -> bool {
        !self.targets.iter().any(|t| t.unwatchable)
    }

    /// Times the event queue overflowed.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Reads the events queued so far, without waiting.
    pub fn read_events(&mut self) -> io::Result<()> {
        // Room for many events at once; an event is 16 bytes plus its name.
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: read(2) into a live buffer of its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if n == 0 {
                return Ok(());
            }
            let mut rearm = Vec::new();
            let mut at = 0usize;
            let n = n as usize;
            while at + 16 <= n {
                let wd = i32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
                let name_end = (at + 16 + len as usize).min(n);
                let name = &buf[at + 16..name_end];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                at = name_end;
                self.event(wd, mask, name, &mut rearm);
            }
            // Once per target however many events named it (a removed tree sends a burst).
            rearm.sort_unstable();
            rearm.dedup();
            for i in rearm {
                self.arm(i);
            }
        }
    }

    /// One event: marks what it changed, and which targets to watch again.
    fn event(&mut self, wd: i32, mask: u32, name: &[u8], rearm: &mut Vec<usize>) {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            // Events were lost: anything may have changed, a watched directory may have been
            // replaced.
            self.overflows += 1;
            for (i, t) in self.targets.iter_mut().enumerate() {
                t.changed = true;
                rearm.push(i);
            }
            return;
        }
        for (i, t) in self.targets.iter_mut().enumerate() {
            if t.dir == Some(wd) {
                t.changed = true;
                if mask & GONE != 0 {
                    rearm.push(i);
                }
            }
            if let Some((awd, next)) = &t.ancestor {
                if *awd == wd && (mask & GONE != 0 || name == next.as_slice()) {
                    t.changed = true;
                    rearm.push(i);
                }
            }
        }
    }

    /// Watches the directory at the target's path, if there is one, and its nearest existing
    /// ancestor. Watches it no longer needs are removed (a watch another target shares stays).
    fn arm(&mut self, i: usize) {
        let path = self.targets[i].path.clone();
        let old_dir = self.targets[i].dir.take();
        let old_ancestor = self.targets[i].ancestor.take().map(|(wd, _)| wd);
        let mut unwatchable = false;
        let dir = match add_watch(&self.fd, &path, DIR_MASK) {
            Ok(wd) => Some(wd),
            // Not there, or not a directory: the ancestor says when that changes.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => None,
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot watch the directory: looking at it every tick instead");
                unwatchable = true;
                None
            }
        };
        let ancestor = nearest_ancestor(&path).and_then(|(dir, next)| {
            match add_watch(&self.fd, &dir, ANCESTOR_MASK) {
                Ok(wd) => Some((wd, next)),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the directory: looking at its child every tick instead");
                    unwatchable = true;
                    None
                }
            }
        });
        let t = &mut self.targets[i];
        t.dir = dir;
        t.ancestor = ancestor;
        t.unwatchable = unwatchable;
        for old in [old_dir, old_ancestor].into_iter().flatten() {
            if !self.in_use(old) {
                // SAFETY: inotify_rm_watch(2) takes no pointers. A watch the kernel already
                // dropped (its directory went) is refused with EINVAL, which is fine.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), old) };
            }
        }
    }

    fn in_use(&self, wd: i32) -> bool {
        self.targets
            .iter()
            .any(|t| t.dir == Some(wd) || t.ancestor.as_ref().is_some_and(|(a, _)| *a == wd))
    }
}

/// Adds a watch on the directory `path`, or adds `mask` to the one there is (the kernel keeps
/// one watch per inode and instance, and a directory may be one target's and another's
/// ancestor).
fn add_watch(fd: &OwnedFd, path: &Path, mask: u32) -> io::Result<i32> {
    let mask = mask | libc::IN_ONLYDIR | libc::IN_MASK_ADD;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a NUL-terminated path that outlives the call.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// The nearest ancestor of `path` that is a directory, and the name below it on the way to
/// `path`. None for the root, or a relative path with nothing above it.
fn nearest_ancestor(path: &Path) -> Option<(PathBuf, Vec<u8>)> {
    let mut next: &OsStr = match path.components().next_back()? {
        Component::Normal(name) => name,
        _ => return None,
    };
    let mut dir = path.parent()?;
    loop {
        let probe = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if probe.is_dir() {
            return Some((probe.to_owned(), next.as_bytes().to_vec()));
        }
        next = match dir.components().next_back()? {
            Component::Normal(name) => name,
            _ => return None,
        };
        dir = dir.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads what is queued and whether `w` changed.
    fn changed(watch: &mut DirWatch, w: Watched) -> bool {
        watch.read_events().unwrap();
        watch.take_changed(w)
    }

    #[test]
    fn a_file_written_removed_or_renamed_in_the_directory_is_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        let mut watch = DirWatch::new().unwrap();
        let w = watch.add(&dir);
        assert!(changed(&mut watch, w), "a new watch has seen nothing yet");
        assert!(!changed(&mut watch, w), "nothing happened since");

        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        assert!(changed(&mut watch, w), "a file written");
        assert!(!changed(&mut watch, w));
        std::fs::write(dir.join(".b.tmp"), "y").unwrap();
        std::fs::rename(dir.join(".b.tmp"), dir.join("b.yaml")).unwrap();
        assert!(changed(&mut watch, w), "a file renamed into place");
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(changed(&mut watch, w), "a file removed");
        // Something beside the directory is not a change of it.
        std::fs::write(tmp.path().join("elsewhere"), "z").unwrap();
        assert!(!changed(&mut watch, w), "a file beside the directory");
    }

    #[test]
    fn a_replaced_directory_is_a_change_and_is_watched_in_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        let mut watch = DirWatch::new().unwrap();
        let w = watch.add(&dir);
        changed(&mut watch, w);

        // Renamed away and another put in its place (as a configuration tool swaps them).
        let new = tmp.path().join("policies.new");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("a.yaml"), "x").unwrap();
        std::fs::rename(&dir, tmp.path().join("policies.old")).unwrap();
        std::fs::rename(&new, &dir).unwrap();
        assert!(changed(&mut watch, w), "the directory replaced");
        // The old one is no longer what is watched, the new one is.
        std::fs::write(tmp.path().join("policies.old").join("b.yaml"), "y").unwrap();
        assert!(
            !changed(&mut watch, w),
            "a change in the directory moved away"
        );
        std::fs::write(dir.join("c.yaml"), "z").unwrap();
        assert!(changed(&mut watch, w), "a change in the new directory");

        // Removed, then made again: each is a change, and the new one is watched.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(changed(&mut watch, w), "the directory removed");
        assert!(!changed(&mut watch, w));
        std::fs::create_dir(&dir).unwrap();
        assert!(changed(&mut watch, w), "the directory made again");
        std::fs::write(dir.join("d.yaml"), "w").unwrap();
        assert!(
            changed(&mut watch, w),
            "a change in the directory made again"
        );
    }

    #[test]
    fn a_directory_made_later_below_missing_parents_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc/podmap/policies");
        let mut watch = DirWatch::new().unwrap();
        let w = watch.add(&dir);
        changed(&mut watch, w);
        std::fs::create_dir(tmp.path().join("etc")).unwrap();
        assert!(changed(&mut watch, w), "a parent made");
        std::fs::create_dir_all(&dir).unwrap();
        // Each level made re-arms one level down; levels made before the watch reached them
        // are found by the re-arm itself.
        assert!(changed(&mut watch, w), "the directory made");
        assert!(watch.targets[w.0].dir.is_some(), "the directory is watched");
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        assert!(changed(&mut watch, w), "a file in the directory made later");
    }

    #[test]
    fn an_overflowed_queue_marks_everything_changed_and_watching_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let busy = tmp.path().join("busy");
        let quiet = tmp.path().join("quiet");
        std::fs::create_dir(&busy).unwrap();
        std::fs::create_dir(&quiet).unwrap();
        let mut watch = DirWatch::new().unwrap();
        let b = watch.add(&busy);
        let q = watch.add(&quiet);
        changed(&mut watch, b);
        changed(&mut watch, q);
        // More events than the queue holds (fs.inotify.max_queued_events, 16,384 by default).
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16_384);
        let file = busy.join("f");
        std::fs::write(&file, "").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        for _ in 0..=max {
            // Two events each (modify, attrib would coalesce): a modify per write, never merged
            // with the one before it once another kind came in between.
            std::io::Write::write_all(&mut f, b"x").unwrap();
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
        assert!(changed(&mut watch, b));
        assert_eq!(watch.overflows(), 1, "the queue overflowed");
        assert!(
            watch.take_changed(q),
            "an overflow may have hidden a change of any directory"
        );
        std::fs::write(quiet.join("a.yaml"), "x").unwrap();
        assert!(changed(&mut watch, q), "still watched after the overflow");
    }

    #[test]
    fn the_nearest_existing_ancestor_and_the_name_below_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a/b/c");
        assert_eq!(
            nearest_ancestor(&p),
            Some((tmp.path().to_owned(), b"a".to_vec()))
        );
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        assert_eq!(
            nearest_ancestor(&p),
            Some((tmp.path().join("a/b"), b"c".to_vec()))
        );
        assert_eq!(nearest_ancestor(Path::new("/")), None);
    }
}
