//! The runtime plugins' one writer path: what podmap-nri and podmap-oci-hook both do with a
//! container they learnt of. Each record goes into the pinned maps first (that is what the kernel
//! reads) and then into the writer's own sled store, from which the map entries are rebuilt after
//! a restart; removal starts a grace period, and expired records are swept from both. A record's
//! metadata is also what a new container's policies are selected by (`policy_target`).

pub mod policy;
pub mod privilege;
pub mod registry;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use policy::policy_target;
pub use registry::{
    restore, sweep, Registry, RegistryError, RestoreReport, Retention, SweepReport,
    DEFAULT_GRACE_NS,
};
pub use store::{boot_id, ContainerRecord, Opening, Store, StoreError};
