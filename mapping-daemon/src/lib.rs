//! podmapd and the podmap client.
//!
//! The event path: `pipeline::reader` drains the ring buffer, `pipeline` decodes, attributes
//! (`containers`, `cgroups`) and enriches (`procs`, `clock`), `hub` fans out to the clients that
//! `server` accepts. `state` answers status requests for `server` and `metrics`.

pub mod cgroups;
pub mod client;
pub mod clock;
pub mod containers;
pub mod daemon;
pub mod hub;
pub mod metrics;
pub mod pipeline;
pub mod policies;
pub mod procs;
pub mod server;
pub mod state;
pub mod stats;
pub mod status;
