//! `podmap-bench`: podmap's benchmark command (never a timed test). Each subcommand prints its
//! figures next to a reference measured in the same run and the targets of
//! docs/performance.md; the work is in `podmap_conformance::bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use podmap_conformance::bench::{exec, hook, nri, pod_cache, policies};

#[derive(Debug, Parser)]
#[command(
    name = "podmap-bench",
    version,
    about = "podmap's benchmarks, each side by side with its reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exec storm from a fresh cgroup: no tracer vs podmapd + `podmap events` vs bpftrace vs
    /// libbpf-tools execsnoop (needs root).
    Exec(exec::ExecArgs),
    /// The OCI hook with real runc: wall time p50/p99 one container at a time, 20 at once, and
    /// container start with the hook vs without (needs root).
    Hook(hook::HookArgs),
    /// NRI plugin with a real containerd: create-to-mapping-ready p50/p99, and CRI
    /// create+start latency with the plugin vs without, in one run (needs root).
    Nri(nri::NriArgs),
    /// Exec throughput inside a container selected by 0, 1, 10 and 100 policies, against no
    /// podmap at all (needs root).
    Policies(policies::PolicyArgs),
    /// The pod cache: memory per cached pod and relist time, 1,000 and 10,000 pods, against
    /// whole Pod objects.
    PodCache(pod_cache::PodCacheArgs),
    /// Internal: the storm driver `exec` starts inside the storm's cgroup.
    #[command(hide = true)]
    StormChild(exec::StormArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Exec(args) => exec::run(args),
        Command::Policies(args) => policies::run(args),
        Command::Nri(args) => nri::run(args),
        Command::Hook(args) => hook::run(args),
        Command::PodCache(args) => pod_cache::run(args),
        Command::StormChild(args) => exec::storm_child(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podmap-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
