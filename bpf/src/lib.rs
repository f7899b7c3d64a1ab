//! podmap's kernel side and everything about kernel ids: the C eBPF programs (built by build.rs),
//! the layouts they share with userspace, typed handles on the pinned maps, the container record,
//! cgroup path resolution, and the loader podmapd attaches the programs with.

pub mod cgroup;
pub mod layout;
pub mod links;
pub mod maps;
pub mod mounts;
pub mod objects;
pub mod policy_maps;
pub mod programs;
pub mod record;
#[cfg(feature = "store")]
pub mod registry;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use maps::{Counters, MapsError, Record, RecordFlags, SharedMaps, Writer};
pub use record::{
    truncate_str, CgroupId, CgroupIds, CgroupKey, ContainerId, ContainerMeta, Hierarchy, PodUid,
};

/// Where the pinned maps live unless told otherwise (docs/decisions.md #23).
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/podmap";
