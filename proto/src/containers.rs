//! The mapping table `{"containers": {}}` returns and `podmap containers` shows: one row per key
//! of the pinned container map (a container has one key per hierarchy it is in).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::ContainerInfo;

/// One mapped cgroup and what its writer recorded of the container in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerRow {
    /// The cgroup's id (its directory's inode number) in `hierarchy`.
    pub cgroup_id: u64,
    /// "v2" (the cgroup2 hierarchy) or "v1" (the tracked v1 controller's).
    pub hierarchy: String,
    /// The runtime removed the container; its record stays for the grace period. Null when the
    /// record vanished between listing and reading.
    pub removing: Option<bool>,
    /// The pod's sandbox (pause) container.
    pub sandbox: Option<bool>,
    /// When the writer mapped it (RFC 3339, UTC).
    pub mapped_at: Option<String>,
    /// Names of the policies whose membership includes this cgroup, sorted.
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<RowPod>,
    /// The cgroup path the writer resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    /// Why the row has no container: its metadata is missing or did not parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The pod as the writer recorded it at creation (labels from the runtime's annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RowPod {
    /// None for a container outside Kubernetes.
    pub uid: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
