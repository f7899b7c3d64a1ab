//! cgroup path resolution, shared by the runtime plugins and podmapd: which hierarchies a host
//! has (pure v2, hybrid, v1), how runtimes write cgroup paths (cgroupfs and systemd notations),
//! how a path becomes ids, and how a container's cgroup path looks (for `unknown` attribution).

mod layout;
mod notation;
mod shape;

pub use layout::{CgroupError, CgroupLayout, LayoutKind, V1Controller};
pub use notation::{parse_cgroups_path, NotationError};
pub use shape::{
    classify, container_shape, ContainerShape, PodParentError, PodParents, ShapeVerdict,
    DEFAULT_POD_PARENTS,
};
