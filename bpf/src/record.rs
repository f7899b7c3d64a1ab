//! Ids and the container record: what a runtime plugin knows of a container, as stored in the
//! metadata map (and, by the plugins, in their sled stores).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use crate::layout;

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
    pub(crate) fn to_raw(self) -> layout::podmap_cgroup_key {
        layout::podmap_cgroup_key {
            id: self.id.0,
            hierarchy: match self.hierarchy {
                Hierarchy::V2 => layout::HIER_V2,
                Hierarchy::V1 => layout::HIER_V1,
            },
            _pad: 0,
        }
    }
    pub(crate) fn from_raw(k: layout::podmap_cgroup_key) -> Self {
        CgroupKey {
            id: CgroupId(k.id),
            hierarchy: if k.hierarchy == layout::HIER_V1 {
                Hierarchy::V1
            } else {
                Hierarchy::V2
            },
        }
    }
}

/// A container id as the runtime names it (64 hex characters for containerd and CRI-O).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerId(pub String);

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pod's UID (metadata.uid).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodUid(pub String);

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

/// What the programs and podmapd know of a mapped container: written once by a runtime plugin
/// at creation. Pod fields are empty for a container outside Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub container_id: ContainerId,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub pod_uid: Option<PodUid>,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub namespace: String,
    /// The pod's own labels (runtime-added keys stripped).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub image: String,
    /// "containerd", "cri-o", "runc", "podman", ...
    #[serde(default)]
    pub runtime: String,
    /// True for the pod sandbox (pause) container.
    #[serde(default)]
    pub sandbox: bool,
    /// The cgroup path relative to the hierarchy root, as resolved.
    #[serde(default)]
    pub cgroup_path: String,
}

impl ContainerMeta {
    /// The bounded blob stored in the metadata map. A record too large for the map (huge
    /// labels) keeps its ids and names and drops labels until it fits; `truncated` tells.
    pub fn to_blob(&self) -> (Vec<u8>, bool) {
        let full = serde_json::to_vec(self).expect("ContainerMeta serializes");
        if full.len() <= layout::META_MAX {
            return (full, false);
        }
        let mut slim = self.clone();
        while !slim.labels.is_empty() {
            let last = slim.labels.keys().next_back().cloned().expect("non-empty");
            slim.labels.remove(&last);
            let v = serde_json::to_vec(&slim).expect("ContainerMeta serializes");
            if v.len() <= layout::META_MAX {
                return (v, true);
            }
        }
        slim.image.truncate(256);
        slim.cgroup_path.truncate(1024);
        slim.name.truncate(253);
        slim.pod_name.truncate(253);
        slim.namespace.truncate(253);
        (
            serde_json::to_vec(&slim).expect("ContainerMeta serializes"),
            true,
        )
    }

    pub fn from_blob(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_labels_are_dropped_to_fit() {
        let mut m = ContainerMeta {
            container_id: ContainerId("a".repeat(64)),
            name: "c".into(),
            ..Default::default()
        };
        for i in 0..200 {
            m.labels.insert(format!("label-{i:03}"), "v".repeat(40));
        }
        let (blob, truncated) = m.to_blob();
        assert!(truncated);
        assert!(blob.len() <= layout::META_MAX);
        let back = ContainerMeta::from_blob(&blob).unwrap();
        assert_eq!(back.container_id, m.container_id);
        assert!(back.labels.len() < m.labels.len() && !back.labels.is_empty());

        let small = ContainerMeta {
            container_id: ContainerId("b".into()),
            ..Default::default()
        };
        let (blob, truncated) = small.to_blob();
        assert!(!truncated);
        assert_eq!(ContainerMeta::from_blob(&blob).unwrap(), small);
    }
}
