//! podmap's kernel side: the C eBPF programs (built by build.rs), the layouts they share with
//! userspace, typed handles on the pinned maps with the container record they hold, and the
//! loader podmapd attaches the programs with. Cgroup knowledge is podmap-cgroup's; what the
//! runtime plugins do with records (store, grace, restore) is podmap-writer's.

mod attach;
mod keys;
pub mod layout;
pub mod links;
pub mod maps;
pub mod mounts;
pub mod objects;
pub mod open_tracepoints;
pub mod pin_watch;
pub mod programs;
pub mod record;
#[cfg(feature = "testing")]
pub mod testing;

pub use maps::{Counters, MapsError, Record, RecordFlags, SharedMaps, Writer};
pub use record::{truncate_str, ContainerId, ContainerMeta, PodUid};

/// Where the pinned maps live unless told otherwise (docs/decisions.md #23).
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/podmap";
