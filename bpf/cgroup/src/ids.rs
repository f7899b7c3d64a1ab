//! Cgroup ids as the kernel hands them out, and the key that tells apart the ids of two
//! hierarchies (they collide: each hierarchy numbers its own directories).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A cgroup's id: the inode number of its directory, what the kernel helpers return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CgroupId(pub u64);

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which hierarchy a cgroup id belongs to: ids of different hierarchies collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hierarchy {
    /// The cgroup2 (unified) hierarchy.
    V2,
    /// The tracked cgroup v1 controller's hierarchy.
    V1,
}

/// A key of the container maps: a cgroup id in one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CgroupKey {
    pub id: CgroupId,
    pub hierarchy: Hierarchy,
}

impl CgroupKey {
    pub fn v2(id: u64) -> Self {
        CgroupKey {
            id: CgroupId(id),
            hierarchy: Hierarchy::V2,
        }
    }
    pub fn v1(id: u64) -> Self {
        CgroupKey {
            id: CgroupId(id),
            hierarchy: Hierarchy::V1,
        }
    }
}

/// The cgroup ids of one container: at least one is present for a mapped container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupIds {
    pub v2: Option<CgroupId>,
    pub v1: Option<CgroupId>,
}

impl CgroupIds {
    pub fn keys(&self) -> impl Iterator<Item = CgroupKey> {
        let v2 = self.v2.map(|id| CgroupKey {
            id,
            hierarchy: Hierarchy::V2,
        });
        let v1 = self.v1.map(|id| CgroupKey {
            id,
            hierarchy: Hierarchy::V1,
        });
        v2.into_iter().chain(v1)
    }
    pub fn is_empty(&self) -> bool {
        self.v2.is_none() && self.v1.is_none()
    }
}
