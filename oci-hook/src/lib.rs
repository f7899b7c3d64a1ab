//! podmap's OCI hook (`podmap-oci-hook`), for CRI-O and any runtime that runs OCI hooks: at
//! createRuntime it records which pod and container a new cgroup belongs to in the pinned maps
//! podmapd reads (and in its own store), at poststop it starts the record's grace period.
//!
//! It is on every container's critical path, so it is small (no async runtime), bounded by a
//! watchdog, and never fails a container for its own problems: those go to a log file and the
//! shared counters. The modules follow the run: `options` (command line), `state` (stdin),
//! `bundle` (config.json), `annotations` (Kubernetes metadata), `meta` (the record), `sandbox`
//! (a workload's pod labels), `policies` (memberships), `hook` (the stages), `records` (the
//! store's queue) and `spool` (its files), `log`, `watchdog` (the time bound) and `panics` (a
//! panic ends at the edge, not as exit status 101). `install` puts the binary and its hooks.d
//! entry on a host and takes them off again (`podmap-oci-hook install|uninstall`). Which cgroup the container is in is
//! podmap-cgroup's (`resolve_container`), shared with podmap-nri.

pub mod annotations;
pub mod bundle;
pub mod hook;
pub mod install;
pub mod log;
pub mod meta;
pub mod options;
pub mod panics;
pub mod policies;
pub mod records;
pub mod sandbox;
pub mod spool;
pub mod state;
pub mod watchdog;
