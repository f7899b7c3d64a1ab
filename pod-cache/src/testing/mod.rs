//! Test support (feature `testing`): an in-process Kubernetes API server for Pods and
//! PodPolicies, and pod fixtures. Used by this crate's tests, podmapd's tests and the bench.
//!
//! The server speaks the protocol kube-rs and client-go speak to a real one (see
//! [`apiserver`]), so the informer under test is the same code that runs against a cluster.

pub mod apiserver;
pub mod fixtures;

pub use apiserver::{client_for, Fault, Resource, TestApiServer, TestApiServerConfig};
