//! Reading one file of the policy directory (or the published set) without trusting what sits
//! there: podmapd's policy tick and every hook run read it, so a FIFO must not block the reader,
//! a device must not be read, and a huge file must not fill the memory of a process with a
//! 128 MiB limit.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest policy file read: well above a PodPolicy resource (the API server stores objects
/// of at most about 1.5 MiB) and far below the plugins' memory limits.
pub const MAX_POLICY_FILE_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Removed since it was listed: simply gone.
    #[error("gone")]
    Gone,
    #[error("not a regular file (a {0}); only regular files are read")]
    NotRegular(&'static str),
    #[error("{size} bytes, more than the {limit} bytes a policy file may hold")]
    TooLarge { size: u64, limit: u64 },
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// Whether reading again may succeed (an I/O error) rather than the file itself being
    /// refused until it changes.
    pub fn transient(&self) -> bool {
        matches!(self, ReadError::Io(_))
    }
}

/// The bytes of a regular file of at most `limit` bytes. Symlinks are followed (a ConfigMap
/// volume is made of them); the open never blocks, and the type is checked on the opened file,
/// so a file swapped after a check cannot slip through.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            _ if e.kind() == std::io::ErrorKind::NotFound => ReadError::Gone,
            // What a socket (or a device with no driver) answers to open: name it, so it is
            // refused like the other special files rather than retried as an I/O error.
            Some(libc::ENXIO) => ReadError::NotRegular(
                std::fs::metadata(path).map_or("special file", |m| kind(m.file_type())),
            ),
            _ => ReadError::Io(e),
        })?;
    let md = file.metadata()?;
    if !md.file_type().is_file() {
        return Err(ReadError::NotRegular(kind(md.file_type())));
    }
    if md.len() > limit {
        return Err(ReadError::TooLarge {
            size: md.len(),
            limit,
        });
    }
    // The file may grow after the check: read one byte past the limit to notice.
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// What a file that is not a regular one is, for the error.
fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "device"
    } else if ft.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Runs `read_bounded` on a thread: a reader that blocks fails the test instead of hanging it.
    fn read_within(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
        let (tx, rx) = mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(read_bounded(&path, limit));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("read_bounded blocked")
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stuck.yaml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_within(&fifo, 1024),
            Err(ReadError::NotRegular("FIFO"))
        ));
        let link = dir.path().join("null.yaml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(
            read_within(&link, 1024),
            Err(ReadError::NotRegular("device"))
        ));
        assert!(matches!(
            read_within(dir.path(), 1024),
            Err(ReadError::NotRegular("directory"))
        ));
        let socket = dir.path().join("socket.yaml");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let e = read_within(&socket, 1024).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular("socket")), "{e}");
        assert!(!e.transient(), "a socket is refused, not retried");
        assert!(matches!(
            read_within(&dir.path().join("none.yaml"), 1024),
            Err(ReadError::Gone)
        ));
    }

    #[test]
    fn files_over_the_limit_are_refused_and_symlinks_followed() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; 2049]).unwrap();
        let e = read_within(&big, 2048).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::TooLarge {
                    size: 2049,
                    limit: 2048
                }
            ),
            "{e}"
        );
        assert!(!e.transient());
        assert_eq!(read_within(&big, 2049).unwrap().len(), 2049);
        let link = dir.path().join("..data.yaml");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert_eq!(read_within(&link, 4096).unwrap().len(), 2049);
    }
}
