//! bpffs and tracefs: mounted when missing, or a clear error naming the mount.

use std::ffi::CString;

use podmap_cgroup::filesystem_magic as fs_magic;
use std::io;
use std::path::{Path, PathBuf};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const TRACEFS_MAGIC: i64 = 0x74726163;
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
pub const TRACEFS_ROOT: &str = "/sys/kernel/tracing";
/// Where tracefs may be found: its own mount point, or below debugfs on older setups.
const TRACEFS_ROOTS: [&str; 2] = [TRACEFS_ROOT, "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{path} is not on a bpf filesystem (pinned maps need bpffs; mount one with `mount -t bpf bpf {BPFFS_ROOT}` or pass a --bpffs-dir under it)")]
    NotBpffs { path: PathBuf },
    #[error("mounting {fstype} at {path} failed: {source} (mount it yourself, or run as root with CAP_SYS_ADMIN)")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("statfs {path}: {source}")]
    Statfs { path: PathBuf, source: io::Error },
}

fn mount(fstype: &'static str, target: &Path) -> Result<(), MountError> {
    let err = |source| MountError::Mount {
        fstype,
        path: target.to_owned(),
        source,
    };
    std::fs::create_dir_all(target).map_err(err)?;
    let src = CString::new(fstype).expect("no NUL");
    let tgt = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes sure `dir` lives on bpffs: mounts bpffs at /sys/fs/bpf when `dir` is under it and it is
/// not mounted yet.
pub fn ensure_bpffs(dir: &Path) -> Result<(), MountError> {
    let root = Path::new(BPFFS_ROOT);
    if dir.starts_with(root) {
        match fs_magic(root) {
            Ok(BPF_FS_MAGIC) => return Ok(()),
            Ok(_) | Err(_) => mount("bpf", root)?,
        }
        return Ok(());
    }
    // Elsewhere: the nearest existing ancestor must be on bpffs.
    let mut p = dir.to_path_buf();
    loop {
        match fs_magic(&p) {
            Ok(BPF_FS_MAGIC) => return Ok(()),
            Ok(_) => {
                return Err(MountError::NotBpffs {
                    path: dir.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !p.pop() {
                    return Err(MountError::NotBpffs {
                        path: dir.to_owned(),
                    });
                }
            }
            Err(source) => return Err(MountError::Statfs { path: p, source }),
        }
    }
}

/// Whether `path` is on a bpffs (a look only: nothing is mounted).
pub fn on_bpffs(path: &Path) -> io::Result<bool> {
    Ok(fs_magic(path)? == BPF_FS_MAGIC)
}

/// Whether tracefs is mounted where [`ensure_tracefs`] looks (a look only).
pub fn tracefs_mounted() -> bool {
    TRACEFS_ROOTS
        .iter()
        .any(|p| matches!(fs_magic(Path::new(p)), Ok(TRACEFS_MAGIC)))
}

/// Whether the kernel has the tracepoint `category/name` (its directory under tracefs's
/// `events/`, wherever tracefs is mounted).
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    TRACEFS_ROOTS.iter().any(|root| {
        Path::new(root)
            .join("events")
            .join(category)
            .join(name)
            .is_dir()
    })
}

/// Makes sure tracefs is mounted where tracepoint programs find their ids.
pub fn ensure_tracefs() -> Result<(), MountError> {
    if tracefs_mounted() {
        return Ok(());
    }
    mount("tracefs", Path::new(TRACEFS_ROOT))
}
