//! Shared wire types of podmap: the events podmapd serves, the requests its socket accepts.
//!
//! This crate owns the JSON shape users and programs see (docs/interfaces.md, "Events" and "The
//! event socket"). It knows nothing of eBPF, runtimes or Kubernetes clients.

pub mod event;
pub mod policy;
pub mod request;
pub mod time;

pub use event::{
    Attribution, ContainerInfo, Event, EventType, ExitInfo, PodInfo, PolicyInfo, Process,
    ProcessFlag,
};
pub use request::{EventFilter, Request, RequestError, MAX_REQUEST_LINE};
#[cfg(feature = "nri")]
pub mod nri;
