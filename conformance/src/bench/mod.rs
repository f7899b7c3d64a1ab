//! Benchmarks: each prints its figures next to a reference measured in the same run.
pub mod exec;
pub mod hook;
pub mod nri;
pub mod pod_cache;
pub mod policies;
pub mod policy_changes;
