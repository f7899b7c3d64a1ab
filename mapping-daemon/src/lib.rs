//! podmapd and the podmap client.
//!
//! The event path: `pipeline::reader` drains the ring buffer, `pipeline` decodes, attributes
//! (`containers`, `cgroups`) and enriches (`procs`, `clock`), `hub` fans out to the clients that
//! `server` accepts, writing to their sockets through `sink`. `state` answers status requests for `server` and `metrics`. `policies` keeps
//! the kernel's rule tables and memberships equal to the policy directory, which
//! `policy_mirror` fills from the cluster's PodPolicy resources; `dir_watch` tells the
//! housekeeping thread when that directory or the pins changed, and `wake` wakes it (and stops
//! the reader) from other threads.

pub mod cgroups;
pub mod client;
pub mod clock;
pub mod containers;
pub mod daemon;
pub mod dir_watch;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod pipeline;
pub mod policies;
pub mod policy_mirror;
pub mod procs;
pub mod published;
pub mod server;
mod sink;
pub mod state;
pub mod stats;
pub mod status;
pub mod wake;
