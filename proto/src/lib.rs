//! podmap's API: everything a client of podmapd's socket sees, and nothing else. The events it
//! streams, the one request line it accepts, the status report and the mapping table's rows.
//!
//! This crate owns the JSON shape users and programs see (docs/interfaces.md), so a third-party
//! client can depend on it alone. It knows nothing of eBPF, runtimes or Kubernetes clients.

pub mod containers;
pub mod event;
pub mod request;
pub mod status;
pub mod time;

pub use event::{
    Attribution, ContainerInfo, Event, EventType, ExitInfo, PodInfo, PolicyInfo, Process,
    ProcessFlag,
};
pub use request::{EventFilter, Request, RequestError, MAX_REQUEST_LINE};
