//! `podmap-demo`: the real thing in one command (scripts/demo-containerd.sh runs it). Starts
//! podmapd, a private containerd 1.7 with NRI, and podmap-nri; streams the demo namespace's
//! enriched events with `podmap events -o compact`; then runs a demo pod through CRI, as kubelet
//! would, whose containers exec a few programs every few seconds. Ctrl-C (or --duration) tears
//! all of it down: pod, containerd, shims, cgroups, plugin, podmapd.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use podmap_conformance::bins;
use podmap_conformance::containerd::{
    interrupt, ContainerSpec, Node, NodeOptions, PluginMode, PodSpec,
};

#[derive(Debug, Parser)]
#[command(
    name = "podmap-demo",
    about = "A demo pod in a private containerd, with its enriched events"
)]
struct Cli {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Run containerd in a pure cgroup2 mount namespace.
    #[arg(long)]
    pure_cgroup2: bool,
}

const NAMESPACE: &str = "demo";

fn main() -> ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podmap-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    eprintln!("podmap-demo: starting podmapd, containerd 1.7 (private) and podmap-nri ...");
    let node = Node::start(NodeOptions::new(cli.pure_cgroup2, PluginMode::External))?;
    let version = node.ctrd.cri().version()?;
    eprintln!(
        "podmap-demo: {} {} with NRI, podmap-nri registered, podmapd on {}",
        version.runtime_name,
        version.runtime_version,
        node.daemon.socket.display()
    );

    let mut client = Command::new(bins::path("podmap"))
        .args([
            "events",
            "-o",
            "compact",
            "--namespace",
            NAMESPACE,
            "--socket",
        ])
        .arg(&node.daemon.socket)
        .stdin(Stdio::null())
        .spawn()
        .context("starting `podmap events`")?;
    let client_guard = KillOnDrop(&mut client);
    // The client subscribes before the pod's first exec: a status round-trip proves the daemon
    // serves, and the subscription was sent before it.
    std::thread::sleep(Duration::from_millis(300));
    let _ = node.daemon.status();

    let pod = node.ctrd.run_pod(
        PodSpec::new("web-7d9c")
            .namespace(NAMESPACE)
            .label("app", "web")
            .label("tier", "front"),
    )?;
    let web = "trap 'exit 0' TERM; while :; do /bin/cat /etc/passwd >/dev/null; \
               /bin/ls / >/dev/null; /bin/sleep 3; done";
    pod.run(&ContainerSpec::new("web", &["/bin/sh", "-c", web]))?;
    let sidecar = "trap 'exit 0' TERM; while :; do /bin/date >/dev/null; /bin/sleep 5; done";
    pod.run(&ContainerSpec::new(
        "log-shipper",
        &["/bin/sh", "-c", sidecar],
    ))?;
    eprintln!(
        "podmap-demo: pod {NAMESPACE}/{} (uid {}) runs containers web and log-shipper; \
         {}",
        pod.spec.name,
        pod.spec.uid,
        match cli.duration {
            Some(s) => format!("stopping in {s} s"),
            None => "Ctrl-C stops and removes everything".into(),
        }
    );

    let limit = cli
        .duration
        .map(Duration::from_secs)
        .unwrap_or(Duration::MAX);
    interrupt::sleep(limit);
    eprintln!("podmap-demo: tearing down");
    drop(client_guard);
    drop(pod);
    drop(node);
    Ok(())
}

/// Stops the events client however `run` ends.
struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
