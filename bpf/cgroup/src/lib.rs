//! Everything podmap knows about cgroups, and nothing else: which hierarchies a host has (pure
//! v2, hybrid, v1), how runtimes write cgroup paths (cgroupfs and systemd notations), how a path
//! becomes ids, which cgroup a container is in (the one resolver of both runtime plugins), and how
//! a container's cgroup path looks (for `unknown` attribution). Shared by
//! the runtime plugins and podmapd; it knows no eBPF and no runtime protocol.

mod container;
mod filesystem;
mod ids;
mod layout;
mod notation;
mod shape;

pub use container::{
    resolve_container, ContainerCgroup, Found, How, ProcCgroups, Process, Request, ResolveError,
};
pub use filesystem::filesystem_magic;
pub use ids::{CgroupId, CgroupIds, CgroupKey, Hierarchy};
pub use layout::{CgroupError, CgroupLayout, LayoutKind, V1Controller};
pub use notation::{parse_cgroups_path, NotationError};
pub use shape::{
    classify, container_shape, ContainerShape, PodParentError, PodParents, ShapeVerdict,
    DEFAULT_POD_PARENTS,
};
