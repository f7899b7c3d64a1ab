//! Which cgroup hierarchies a host has, seen from a (possibly relocated) cgroupfs root, and the
//! ids of a container's cgroup in them.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::filesystem::filesystem_magic as fs_magic;
use crate::ids::{CgroupId, CgroupIds};

const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
const CGROUP_SUPER_MAGIC: i64 = 0x27e0eb;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// cgroup2 mounted at the root.
    Unified,
    /// v1 controllers at the root, cgroup2 at `<root>/unified`.
    Hybrid,
    /// v1 controllers only.
    Legacy,
}

impl LayoutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutKind::Unified => "unified",
            LayoutKind::Hybrid => "hybrid",
            LayoutKind::Legacy => "legacy",
        }
    }
}

/// The tracked v1 controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Controller {
    pub name: String,
    pub path: PathBuf,
    /// The kernel's hierarchy id of this controller (from /proc/cgroups).
    pub hierarchy_id: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    pub root: PathBuf,
    pub kind: LayoutKind,
    pub unified: Option<PathBuf>,
    pub v1: Option<V1Controller>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("{path} holds neither cgroup2 nor cgroup v1 controllers (is --cgroup-root the host's cgroupfs?)")]
    NoHierarchy { path: PathBuf },
    #[error("reading /proc/cgroups: {0}")]
    ProcCgroups(io::Error),
}

/// The v1 controllers the kernel programs can track (their names in /proc/cgroups).
pub const TRACKABLE_V1: [&str; 8] = [
    "memory", "pids", "cpu", "cpuset", "cpuacct", "blkio", "devices", "freezer",
];

impl CgroupLayout {
    /// Detects the layout under `root`, tracking v1 controller `v1_controller` where v1 exists.
    pub fn detect(root: &Path, v1_controller: &str) -> Result<Self, CgroupError> {
        let magic = fs_magic(root).map_err(|source| CgroupError::Root {
            path: root.to_owned(),
            source,
        })?;
        if magic == CGROUP2_SUPER_MAGIC {
            return Ok(CgroupLayout {
                root: root.to_owned(),
                kind: LayoutKind::Unified,
                unified: Some(root.to_owned()),
                v1: None,
            });
        }
        let unified = root.join("unified");
        let unified = matches!(fs_magic(&unified), Ok(CGROUP2_SUPER_MAGIC)).then_some(unified);
        let ctrl_path = root.join(v1_controller);
        let v1 = if TRACKABLE_V1.contains(&v1_controller)
            && matches!(fs_magic(&ctrl_path), Ok(CGROUP_SUPER_MAGIC))
        {
            let hierarchy_id =
                proc_cgroups_hierarchy(v1_controller).map_err(CgroupError::ProcCgroups)?;
            hierarchy_id.map(|hierarchy_id| V1Controller {
                name: v1_controller.to_string(),
                path: ctrl_path,
                hierarchy_id,
            })
        } else {
            None
        };
        let kind = match (&unified, &v1) {
            (Some(_), _) => LayoutKind::Hybrid,
            (None, Some(_)) => LayoutKind::Legacy,
            (None, None) => {
                return Err(CgroupError::NoHierarchy {
                    path: root.to_owned(),
                })
            }
        };
        Ok(CgroupLayout {
            root: root.to_owned(),
            kind,
            unified,
            v1,
        })
    }

    /// "cgroup2", or "cgroup1:<controller>" where containers can only live in v1.
    pub fn hierarchy_name(&self) -> String {
        match (&self.unified, &self.v1) {
            (Some(_), _) => "cgroup2".to_string(),
            (None, Some(v1)) => format!("cgroup1:{}", v1.name),
            (None, None) => "none".to_string(),
        }
    }

    /// The ids of a cgroup (path relative to the hierarchy roots) in each hierarchy where it
    /// exists. Empty when it exists in none.
    pub fn resolve(&self, rel: &Path) -> CgroupIds {
        let id = |base: &Path| {
            std::fs::metadata(base.join(rel))
                .ok()
                .filter(|m| m.is_dir())
                .map(|m| CgroupId(m.ino()))
        };
        CgroupIds {
            v2: self.unified.as_deref().and_then(id),
            v1: self.v1.as_ref().and_then(|v| id(&v.path)),
        }
    }
}

/// The kernel hierarchy id of a v1 controller, from /proc/cgroups (None if not mounted).
fn proc_cgroups_hierarchy(controller: &str) -> io::Result<Option<i32>> {
    let text = std::fs::read_to_string("/proc/cgroups")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&controller))
        .and_then(|f| f.get(1)?.parse().ok())
        .filter(|h: &i32| *h > 0))
}
