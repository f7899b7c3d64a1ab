//! The hook's log file: one line per problem (and per mapping at `debug`), appended with a single
//! write so lines of hooks running at once never interleave. A log that cannot be opened falls
//! back to stderr, which runtimes keep; logging never fails the hook, nor holds it past its
//! bound: the file is opened after the watchdog is armed, never through a symbolic link, and
//! never as something an open or a write could block on (a FIFO).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use podmap_node::LogFormat;

use crate::options::{Level, Stage};

pub struct HookLog {
    path: PathBuf,
    /// Set once opened ([`HookLog::open_file`]); lines before, or after a failed open, go to
    /// stderr. A cell, so that the watchdog can log while the main thread is stuck opening.
    file: OnceLock<File>,
    level: Level,
    /// The stage, known for `auto` only once the state is read.
    stage: AtomicU8,
    /// Why the file could not be opened (on stderr, with each line).
    open_error: OnceLock<String>,
    /// `--log-format`: the text line, or one JSON object per line.
    format: LogFormat,
}

/// A log past this size is moved to `<log>.1` (replacing the previous one) by the next run that
/// opens it: at most twice this much on disk, however many containers a node runs.
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// Opens the log file itself: not a symbolic link (whoever can write the log's directory must
/// not be able to point the hook's writes at another host file) and not a FIFO or device, which
/// could block the hook or be written to no purpose. O_NONBLOCK makes opening a FIFO fail
/// rather than wait for a reader; on a regular file it changes nothing.
fn open_append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Opens the log, rotating it first when it grew past [`MAX_LOG_BYTES`]. Two hooks crossing the
/// limit together may both rotate: the second then replaces `<log>.1` with the few lines in
/// between, never the lines of the current log.
fn open_rotating(path: &Path) -> std::io::Result<File> {
    let file = open_append(path)?;
    if file.metadata()?.len() <= MAX_LOG_BYTES {
        return Ok(file);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::rename(path, &old)?;
    open_append(path)
}

impl HookLog {
    /// A log to `path`, not opened yet: lines go to stderr until [`HookLog::open_file`].
    pub fn new(path: &Path, level: Level, stage: Stage) -> HookLog {
        HookLog {
            path: path.to_owned(),
            file: OnceLock::new(),
            level,
            stage: AtomicU8::new(stage as u8),
            open_error: OnceLock::new(),
            format: LogFormat::Text,
        }
    }

    /// The same log, its lines written as `format` says (never coloured: the hook's output is
    /// a file or a runtime's pipe).
    pub fn with_format(mut self, format: LogFormat) -> HookLog {
        self.format = format;
        self
    }

    /// Opens `path` for appending, creating its directory.
    pub fn open(path: &Path, level: Level, stage: Stage) -> HookLog {
        let log = HookLog::new(path, level, stage);
        log.open_file();
        log
    }

    /// Opens the file (creating its directory, rotating it). Can block on a hung filesystem:
    /// the hook calls it once its watchdog runs.
    pub fn open_file(&self) {
        let path = &self.path;
        let res = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| open_rotating(path));
        match res {
            Ok(f) => {
                let _ = self.file.set(f);
            }
            Err(e) => {
                let _ = self
                    .open_error
                    .set(format!("log file {}: {e}", path.display()));
            }
        }
    }

    pub fn set_stage(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Relaxed);
    }

    fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            x if x == Stage::CreateRuntime as u8 => Stage::CreateRuntime,
            x if x == Stage::Poststop as u8 => Stage::Poststop,
            _ => Stage::Auto,
        }
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.level
    }

    /// Writes one line: `<time> <LEVEL> podmap-oci-hook[<pid>] <stage> id=<id>: <message>`.
    pub fn line(&self, level: Level, container: Option<&str>, msg: fmt::Arguments<'_>) {
        if !self.enabled(level) {
            return;
        }
        let mut line = match self.format {
            LogFormat::Text => self.text_line(level, container, msg),
            LogFormat::Json => self.json_line(level, container, msg),
        };
        line.push('\n');
        let written = self
            .file
            .get()
            .is_some_and(|mut f| f.write_all(line.as_bytes()).is_ok());
        if !written {
            // Not eprint!: it panics when stderr is a closed pipe, and logging never fails the
            // hook.
            let mut err = std::io::stderr().lock();
            if let Some(e) = self.open_error.get() {
                let _ = match self.format {
                    LogFormat::Text => writeln!(err, "podmap-oci-hook: {e}"),
                    LogFormat::Json => writeln!(
                        err,
                        "{}",
                        self.json_line(level, container, format_args!("{e}"))
                    ),
                };
            }
            let _ = err.write_all(line.as_bytes());
        }
    }
}

impl HookLog {
    /// `<time> <LEVEL> podmap-oci-hook[<pid>] <stage> id=<id>: <message>`, without the newline.
    fn text_line(&self, level: Level, container: Option<&str>, msg: fmt::Arguments<'_>) -> String {
        let mut line = format!(
            "{} {} podmap-oci-hook[{}] {}",
            utc_timestamp(SystemTime::now()),
            level.as_str(),
            std::process::id(),
            self.stage().as_str()
        );
        if let Some(id) = container {
            line.push_str(" id=");
            line.push_str(id);
        }
        line.push_str(": ");
        // One line per entry, whatever the message holds.
        let msg = msg.to_string();
        line.extend(msg.chars().map(|c| if c == '\n' { ' ' } else { c }));
        line
    }

    /// The same entry as one JSON object (serde_json escapes newlines, so it stays one line):
    /// `timestamp`, `level`, `message`, `target`, `pid`, `stage` and, when known, `container_id`.
    fn json_line(&self, level: Level, container: Option<&str>, msg: fmt::Arguments<'_>) -> String {
        let mut obj = serde_json::json!({
            "timestamp": utc_timestamp(SystemTime::now()),
            "level": level.as_str(),
            "message": msg.to_string(),
            "target": "podmap-oci-hook",
            "pid": std::process::id(),
            "stage": self.stage().as_str(),
        });
        if let Some(id) = container {
            obj["container_id"] = id.into();
        }
        obj.to_string()
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn utc_timestamp(t: SystemTime) -> String {
    let ns = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    podmap_proto::time::format_rfc3339_millis(u64::try_from(ns).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_615_200_123);
        assert_eq!(utc_timestamp(t), "2026-11-25T14:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_log_past_its_size_is_rotated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.log");
        let big = vec![b'x'; MAX_LOG_BYTES as usize + 1];
        std::fs::write(&path, &big).unwrap();
        std::fs::write(dir.path().join("hook.log.1"), "older").unwrap();
        let log = HookLog::open(&path, Level::Info, Stage::Poststop);
        log.line(Level::Error, None, format_args!("fresh"));
        let rotated = std::fs::read(dir.path().join("hook.log.1")).unwrap();
        assert_eq!(rotated.len(), big.len(), "the full log moved aside");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("poststop: fresh\n") && text.lines().count() == 1,
            "{text}"
        );
        // Under the limit: appended, not rotated.
        let log = HookLog::open(&path, Level::Info, Stage::Poststop);
        log.line(Level::Error, None, format_args!("again"));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert_eq!(
            std::fs::read(dir.path().join("hook.log.1")).unwrap().len(),
            big.len()
        );
    }

    /// A writable log directory must not let anyone point the log at another file: a symlink
    /// in the log's place is not followed (the line goes to stderr), nor moved aside.
    #[test]
    fn a_symlinked_log_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let host_file = dir.path().join("host-file");
        std::fs::write(&host_file, "precious\n").unwrap();
        let path = dir.path().join("hook.log");
        std::os::unix::fs::symlink(&host_file, &path).unwrap();
        let log = HookLog::open(&path, Level::Info, Stage::Poststop);
        log.line(Level::Error, None, format_args!("not for the host file"));
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "precious\n");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert!(!dir.path().join("hook.log.1").exists());
        let err = log.open_error.get().cloned().unwrap_or_default();
        assert!(err.contains("symbolic links"), "{err}");
    }

    /// Something in the log's place that would block the open (a FIFO nobody reads) is
    /// refused at once: the hook's bound does not depend on the log.
    #[test]
    fn a_log_that_would_block_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.log");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let log = HookLog::open(&path, Level::Info, Stage::Poststop);
            log.line(Level::Error, None, format_args!("to stderr"));
            let _ = tx.send(log.open_error.get().cloned());
        });
        let err = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("opening a FIFO as the log blocked");
        assert!(err.is_some_and(|e| e.contains("hook.log")));
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.log");
        let log = HookLog::open(&path, Level::Info, Stage::Poststop).with_format(LogFormat::Json);
        log.line(Level::Error, Some("abc"), format_args!("bad\n\"thing\""));
        log.line(Level::Warn, None, format_args!("second"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["message"], "bad\n\"thing\"");
        assert_eq!(lines[0]["container_id"], "abc");
        assert_eq!(lines[0]["stage"], "poststop");
        assert_eq!(lines[1]["message"], "second");
        assert!(lines[1].get("container_id").is_none());
    }

    #[test]
    fn one_line_per_entry_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/hook.log");
        let log = HookLog::open(&path, Level::Info, Stage::Poststop);
        log.line(Level::Error, Some("abc"), format_args!("bad\nthing"));
        log.line(Level::Debug, None, format_args!("hidden"));
        let log = HookLog::open(&path, Level::Debug, Stage::CreateRuntime);
        log.line(Level::Debug, None, format_args!("shown"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(" ERROR podmap-oci-hook[")
                && lines[0].ends_with("poststop id=abc: bad thing")
        );
        assert!(lines[1].ends_with("create-runtime: shown"));
    }
}
