//! podmap-nri: podmap's NRI plugin. It learns of every pod sandbox and container from the
//! runtime (containerd 1.7 and 2.x, CRI-O with NRI) and writes each one's cgroup-id -> container record into the
//! pinned maps before the container's first instruction, keeping a durable copy in its own store.
//!
//! - config.rs: flags, environment, the runtime's YAML configuration.
//! - connection.rs: the socket, registration, reconnection.
//! - plugin.rs: the `Plugin` service, every call answered within a bound.
//! - mapper.rs: what each event does to the maps and the store.
//! - records.rs: container records and cgroup ids from NRI messages.
//! - logging.rs: stderr or a log file.
//!
//! The wire protocol (messages, multiplexer) is podmap-nri-protocol's; maps are podmap-bpf's,
//! records and store podmap-writer's, cgroup resolution podmap-cgroup's, the health file
//! (whether it is registered now, for `--probe` and `podmap check`) podmap-node's.

pub mod config;
pub mod connection;
pub mod logging;
pub mod mapper;
pub mod plugin;
pub mod records;
