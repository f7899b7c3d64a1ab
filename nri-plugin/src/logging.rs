//! Where the plugin's logs go: stderr, or a file (a pre-launched plugin's stderr is not
//! captured by the runtime). The target can change once the runtime's configuration names
//! another file. The file is never a symbolic link (whoever can write the log's directory must
//! not be able to point the plugin's writes at another host file), and it is rotated to
//! `<log>.1` past [`MAX_LOG_BYTES`], so a busy node's disk is bounded as for the hook's log.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// A log past this size moves to `<log>.1` (replacing the previous one): at most twice this
/// much on disk.
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

enum Target {
    Stderr,
    File(LogFile),
}

/// The log file, with what was written to it, for rotation.
struct LogFile {
    file: File,
    path: PathBuf,
    size: u64,
    max: u64,
}

impl LogFile {
    fn open(path: &Path, max: u64) -> io::Result<LogFile> {
        // O_NONBLOCK: a FIFO in the log's place fails to open instead of blocking the plugin.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(LogFile {
            file,
            path: path.to_owned(),
            size: meta.len(),
            max,
        })
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max {
            self.rotate();
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    /// Moves the log to `<log>.1` and starts a new one; on failure, keeps writing where it was
    /// (a log line is never worth a lost plugin) and tries again at the next write.
    fn rotate(&mut self) {
        let mut old = self.path.as_os_str().to_owned();
        old.push(".1");
        if std::fs::rename(&self.path, &old).is_ok() {
            if let Ok(fresh) = LogFile::open(&self.path, self.max) {
                *self = fresh;
            }
        }
    }
}

/// A retargetable log destination.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<Target>>);

impl Default for LogSink {
    fn default() -> Self {
        LogSink(Arc::new(Mutex::new(Target::Stderr)))
    }
}

impl LogSink {
    /// Appends to `path` from now on, creating its directory.
    pub fn set_file(&self, path: &Path) -> io::Result<()> {
        self.set_file_rotating_at(path, MAX_LOG_BYTES)
    }

    fn set_file_rotating_at(&self, path: &Path, max: u64) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = LogFile::open(path, max)?;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Target::File(f);
        Ok(())
    }

    /// Installs the global subscriber writing here, filtered by `filter` (PODMAP_LOG, `--log`:
    /// already checked against EnvFilter's grammar by podmap-node).
    /// `format` is `--log-format`: text, or one JSON object per line. Never coloured: the sink
    /// may be a file, and a runtime's log is not a terminal.
    pub fn install(&self, filter: &podmap_node::LogFilter, format: podmap_node::LogFormat) {
        let filter = EnvFilter::try_new(filter.as_str()).unwrap_or_else(|_| EnvFilter::new("info"));
        let fmt = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(self.clone());
        let _ = match format {
            podmap_node::LogFormat::Text => fmt.try_init(),
            podmap_node::LogFormat::Json => fmt.json().try_init(),
        };
    }
}

pub struct LogWriter(Arc<Mutex<Target>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Target::Stderr => io::stderr().write(buf),
            Target::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Target::Stderr => io::stderr().flush(),
            Target::File(f) => f.file.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(sink: &LogSink, line: &[u8]) {
        sink.make_writer().write_all(line).unwrap();
    }

    #[test]
    fn a_symlink_in_the_logs_place_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("passwd");
        std::fs::write(&target, b"root:x:0:0\n").unwrap();
        let log = dir.path().join("nri.log");
        std::os::unix::fs::symlink(&target, &log).unwrap();
        let sink = LogSink::default();
        assert!(sink.set_file(&log).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"root:x:0:0\n");
    }

    #[test]
    fn a_fifo_in_the_logs_place_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("nri.log");
        let c = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(LogSink::default().set_file(&log).is_err());
    }

    #[test]
    fn a_log_past_its_size_is_rotated_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("nri.log");
        let sink = LogSink::default();
        sink.set_file_rotating_at(&log, 100).unwrap();
        let line = [b'a'; 60];
        write(&sink, &line);
        write(&sink, &line); // 120 > 100: the first line moves to nri.log.1
        write(&sink, &[b'b'; 10]);
        let rotated = std::fs::read(dir.path().join("nri.log.1")).unwrap();
        assert_eq!(rotated, line);
        let current = std::fs::read(&log).unwrap();
        assert_eq!(current.len(), 70, "the second line and the third");
        // A second rotation replaces the first backup: at most two files.
        write(&sink, &line);
        assert_eq!(std::fs::read(&log).unwrap(), line);
        assert_eq!(
            std::fs::read(dir.path().join("nri.log.1")).unwrap(),
            current
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
