//! podmap's end-to-end suites against real runtimes (containerd with NRI, runc, crun, podman),
//! and the benchmark command `podmap-bench`. Everything here starts its own private runtime
//! instances, pins, sockets and cgroups, and tears them down.

pub mod bench;
pub mod bins;
pub mod containerd;
pub mod daemon;
pub mod deadline;
pub mod image;
pub mod oci;
