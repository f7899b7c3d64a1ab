//! The JSON-lines file sink: one event per line, rotated by size (PATH, PATH.1 .. PATH.N, the
//! highest the oldest), the layout Fluent Bit's and Vector's file inputs follow across renames.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    #[error("creating the directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("opening {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("setting the mode of {} to {mode:o}: {source}", path.display())]
    Mode {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("rotating {} to {}: {source}", from.display(), to.display())]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("writing to {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    mode: u32,
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens (appending to) `path`, creating it and its directory. A file is rotated before the
    /// line that would take it past `max_bytes`; `backups` rotated files are kept.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        backups: u32,
        mode: u32,
    ) -> Result<Self, FileSinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| FileSinkError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let (file, size) = open_append(path, mode)?;
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            backups,
            mode,
            file,
            size,
        })
    }

    /// Writes one line (ending in a newline) whole. A line longer than the limit still goes
    /// out whole, alone in a fresh file: a tailer must never see half an event.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), FileSinkError> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        // One write call per line: a tailer reading concurrently sees whole lines.
        self.file
            .write_all(line)
            .map_err(|source| FileSinkError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), FileSinkError> {
        if self.backups == 0 {
            // No backups: start the file over. A new inode (not a truncate), so a tailer
            // reading the old one notices the rotation instead of seeking into a hole.
            remove_if_present(&self.path)?;
        } else {
            // Each rename replaces its target: the oldest backup goes with the first one.
            for i in (1..self.backups).rev() {
                rename_if_present(&backup(&self.path, i), &backup(&self.path, i + 1))?;
            }
            rename_if_present(&self.path, &backup(&self.path, 1))?;
        }
        let (file, size) = open_append(&self.path, self.mode)?;
        self.file = file;
        self.size = size;
        Ok(())
    }
}

/// PATH.n
pub fn backup(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path, mode: u32) -> Result<(File, u64), FileSinkError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
        .map_err(|source| FileSinkError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    // The mode given at creation passes through the umask, and an existing file keeps its
    // own: set it outright so the file is readable by exactly whom the user asked.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|source| FileSinkError::Mode {
            path: path.to_path_buf(),
            mode,
            source,
        })?;
    let size = file
        .metadata()
        .map_err(|source| FileSinkError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok((file, size))
}

fn remove_if_present(path: &Path) -> Result<(), FileSinkError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FileSinkError::Rotate {
            from: path.to_path_buf(),
            to: PathBuf::from("(removed)"),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> Result<(), FileSinkError> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FileSinkError::Rotate {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u32) -> Vec<u8> {
        // 10 bytes each: "line-0000\n"
        format!("line-{i:04}\n").into_bytes()
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn rotates_at_the_size_limit_and_keeps_n_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/events.log");
        // 35 bytes: three 10-byte lines fit, the fourth rotates.
        let mut f = RotatingFile::open(&path, 35, 3, 0o640).unwrap();
        for i in 0..3 {
            f.write_line(&line(i)).unwrap();
        }
        assert_eq!(read(&path), "line-0000\nline-0001\nline-0002\n");
        assert!(!backup(&path, 1).exists());
        f.write_line(&line(3)).unwrap();
        assert_eq!(read(&path), "line-0003\n");
        assert_eq!(read(&backup(&path, 1)), "line-0000\nline-0001\nline-0002\n");
        // Four more files' worth: only PATH and PATH.1 .. PATH.3 remain, newest first.
        for i in 4..15 {
            f.write_line(&line(i)).unwrap();
        }
        assert_eq!(read(&path), "line-0012\nline-0013\nline-0014\n");
        assert_eq!(read(&backup(&path, 1)), "line-0009\nline-0010\nline-0011\n");
        assert_eq!(read(&backup(&path, 2)), "line-0006\nline-0007\nline-0008\n");
        assert_eq!(read(&backup(&path, 3)), "line-0003\nline-0004\nline-0005\n");
        assert!(!backup(&path, 4).exists());
        let mut names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["events.log", "events.log.1", "events.log.2", "events.log.3"]
        );
        for p in [path.clone(), backup(&path, 1), backup(&path, 3)] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "{}", p.display());
        }
    }

    #[test]
    fn reopening_appends_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let mut f = RotatingFile::open(&path, 25, 1, 0o600).unwrap();
        f.write_line(&line(0)).unwrap();
        drop(f);
        let mut f = RotatingFile::open(&path, 25, 1, 0o600).unwrap();
        f.write_line(&line(1)).unwrap();
        assert_eq!(read(&path), "line-0000\nline-0001\n");
        // The size carried over from the first open: this line passes 25 bytes and rotates.
        f.write_line(&line(2)).unwrap();
        assert_eq!(read(&path), "line-0002\n");
        assert_eq!(read(&backup(&path, 1)), "line-0000\nline-0001\n");
    }

    #[test]
    fn no_backups_starts_over_and_long_lines_go_out_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let mut f = RotatingFile::open(&path, 15, 0, 0o644).unwrap();
        f.write_line(&line(0)).unwrap();
        f.write_line(b"a line longer than the limit\n").unwrap();
        assert_eq!(read(&path), "a line longer than the limit\n");
        assert!(!backup(&path, 1).exists());
        f.write_line(&line(1)).unwrap();
        assert_eq!(read(&path), "line-0001\n");
    }
}
