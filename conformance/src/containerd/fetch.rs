//! containerd in a private prefix: scripts/fetch-containerd.sh downloads a series from Debian
//! (1.7 from trixie, 2.1 from forky) with a private apt configuration and unpacks it under a
//! cache directory outside the repository (so `git clean` keeps it); later runs reuse it without
//! the network. The script serialises concurrent callers with a lock, and this module asks it
//! once per series and process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// A containerd release series the suites run against. Both run bookworm's runc: the newer
/// Debian runc builds need a newer glibc than bookworm's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Series {
    /// containerd 1.7 (Debian trixie), NRI of containerd/nri v0.6, configuration version 2.
    #[default]
    V1_7,
    /// containerd 2.1 (Debian forky), its bundled NRI, configuration version 3.
    V2_1,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V1_7, Series::V2_1];

    /// The series as the fetch script and users name it.
    pub fn name(self) -> &'static str {
        match self {
            Series::V1_7 => "1.7",
            Series::V2_1 => "2.1",
        }
    }

    /// The Debian suite it comes from.
    pub fn suite(self) -> &'static str {
        match self {
            Series::V1_7 => "trixie",
            Series::V2_1 => "forky",
        }
    }
}

impl std::str::FromStr for Series {
    type Err = String;

    fn from_str(s: &str) -> Result<Series, String> {
        Series::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("containerd {s:?} is not one of 1.7 and 2.1"))
    }
}

impl std::fmt::Display for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The fetch script, found from this crate's source tree.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-containerd.sh")
}

/// The prefix holding `usr/bin/containerd`, `ctr` and the runc v2 shim; fetched on first use.
pub fn prefix(series: Series) -> Result<PathBuf> {
    static PREFIX: [OnceLock<Result<PathBuf, String>>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = &PREFIX[Series::ALL.iter().position(|&s| s == series).unwrap()];
    slot.get_or_init(|| run_script(series).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn run_script(series: Series) -> Result<PathBuf> {
    let script = script();
    let out = Command::new("bash")
        .arg(&script)
        .args(["--series", series.name()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): containerd {series} could not be fetched from Debian {}",
            script.display(),
            out.status,
            series.suite()
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
