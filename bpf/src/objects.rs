//! The eBPF objects built by build.rs, embedded in the binary.

/// The programs (exec, exit, fork, cgroup mkdir/rmdir) and every map.
pub static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podmap.bpf.o"));

/// Only the pinned maps: what the runtime plugins load to create or reuse them.
pub static MAPS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/maps.bpf.o"));
