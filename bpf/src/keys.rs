//! The one place a domain `CgroupKey` becomes the kernel's `podmap_cgroup_key` and back.

use podmap_cgroup::{CgroupId, CgroupKey, Hierarchy};

use crate::layout;

/// Conversion of a domain key to the map key the programs look up.
pub(crate) trait RawKey {
    fn to_raw(self) -> layout::podmap_cgroup_key;
}

impl RawKey for CgroupKey {
    fn to_raw(self) -> layout::podmap_cgroup_key {
        layout::podmap_cgroup_key {
            id: self.id.0,
            hierarchy: match self.hierarchy {
                Hierarchy::V2 => layout::HIER_V2,
                Hierarchy::V1 => layout::HIER_V1,
            },
            _pad: 0,
        }
    }
}

/// The domain key of a map key read back from the kernel.
pub(crate) fn from_raw(k: layout::podmap_cgroup_key) -> CgroupKey {
    CgroupKey {
        id: CgroupId(k.id),
        hierarchy: if k.hierarchy == layout::HIER_V1 {
            Hierarchy::V1
        } else {
            Hierarchy::V2
        },
    }
}
