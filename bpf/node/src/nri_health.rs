//! Whether podmap-nri is registered with the runtime right now: a small JSON file in the state
//! directory that podmap-nri replaces (writes beside it, then renames) at each change (connected
//! and registered, configured by the runtime, session ended), and that `podmap-nri --probe` (a
//! readiness probe) and `podmap check` read. The file names the process, so a file left by a
//! process that died says nothing about the one running now.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const HEALTH_FILE: &str = "nri-plugin.json";

/// What the file says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The plugin process that wrote it.
    pub pid: u32,
    /// Registered with the runtime, and the session still open.
    pub registered: bool,
    /// From the runtime's Configure (empty before it).
    pub runtime: String,
    pub runtime_version: String,
    /// The NRI version the runtime reports (NRI v0.10 and up; empty before).
    pub nri_version: String,
    /// When `registered` last changed, in milliseconds since the epoch.
    pub since_unix_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not podmap-nri's health file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(HEALTH_FILE)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Replaces the file: readers see the old one or the new one, never half of either.
pub fn write(path: &Path, health: &Health) -> Result<(), HealthError> {
    let err = |source| HealthError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let body = serde_json::to_vec(health).expect("Health always serializes");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

pub fn read(path: &Path) -> Result<Health, HealthError> {
    let err = |source| HealthError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Opened without blocking and checked on the open file: whatever sits at the path (a FIFO,
    // a device, a giant) is refused or read only up to the bound.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        )));
    }
    let mut text = Vec::new();
    file.take(MAX_BYTES).read_to_end(&mut text).map_err(err)?;
    serde_json::from_slice(&text).map_err(|source| HealthError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The file is a few hundred bytes.
const MAX_BYTES: u64 = 64 * 1024;

/// The probe's verdict on the file at `path`: `Ok(summary)` when a living podmap-nri says it is
/// registered, `Err(reason)` otherwise.
pub fn probe(path: &Path) -> Result<String, String> {
    let h = read(path).map_err(|e| format!("not ready: {e}"))?;
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", h.pid)).unwrap_or_default();
    if comm.trim() != "podmap-nri" {
        return Err(format!(
            "not ready: process {} that wrote {} is gone",
            h.pid,
            path.display()
        ));
    }
    if !h.registered {
        return Err(format!(
            "not ready: podmap-nri (pid {}) is not registered with the runtime",
            h.pid
        ));
    }
    let age_s = now_ms().saturating_sub(h.since_unix_ms) / 1000;
    let runtime = if h.runtime.is_empty() {
        "the runtime (not configured yet)".to_string()
    } else {
        format!("{} {}", h.runtime, h.runtime_version)
    };
    Ok(format!(
        "ready: podmap-nri (pid {}) registered with {runtime} for {age_s} s",
        h.pid
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_believes_only_a_living_registered_podmap_nri() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert!(probe(&path).unwrap_err().contains("reading"));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(probe(&path)
            .unwrap_err()
            .contains("not podmap-nri's health file"));

        // This test process is not podmap-nri: a file naming it is not believed.
        let mut h = Health {
            pid: std::process::id(),
            registered: true,
            runtime: "containerd".into(),
            runtime_version: "2.1.9".into(),
            since_unix_ms: now_ms(),
            ..Default::default()
        };
        write(&path, &h).unwrap();
        assert_eq!(read(&path).unwrap(), h);
        assert!(probe(&path).unwrap_err().contains("is gone"));
        h.pid = u32::MAX;
        write(&path, &h).unwrap();
        assert!(probe(&path).unwrap_err().contains("is gone"));
        // No temporary left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
