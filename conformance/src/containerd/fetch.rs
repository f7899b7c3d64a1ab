//! containerd 1.7 in a private prefix: scripts/fetch-containerd.sh downloads it from Debian
//! trixie with a private apt configuration and unpacks it under a cache directory outside the
//! repository (so `git clean` keeps it); later runs reuse it without the network. The script
//! serialises concurrent callers with a lock, and this module asks it once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// The fetch script, found from this crate's source tree.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-containerd.sh")
}

/// The prefix holding `usr/bin/containerd`, `ctr` and the runc v2 shim; fetched on first use.
pub fn prefix() -> Result<PathBuf> {
    static PREFIX: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PREFIX
        .get_or_init(|| run_script().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn run_script() -> Result<PathBuf> {
    let script = script();
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): containerd 1.7 could not be fetched from Debian trixie",
            script.display(),
            out.status
        );
    }
    let prefix = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let bin = prefix.join("usr/bin/containerd");
    if !bin.exists() {
        bail!(
            "{} printed {}, which has no usr/bin/containerd",
            script.display(),
            prefix.display()
        );
    }
    Ok(prefix)
}

/// The directory with containerd, ctr and the shims (it goes first on containerd's PATH, so it
/// finds its own shim).
pub fn bin_dir(prefix: &Path) -> PathBuf {
    prefix.join("usr/bin")
}
