//! `podmap-demo`: the real thing in one command (`scripts/run.sh` runs it). Starts podmapd, a
//! private containerd with NRI (1.7 unless `--containerd 2.1`), and podmap-nri; streams the demo namespace's enriched events
//! with `podmap events -o compact`; then runs a demo pod through CRI, as kubelet would, whose
//! containers exec a few programs every few seconds. With `--host`, podmapd alone streams every
//! exec and exit on the host. Ctrl-C (or SIGTERM, or --duration) tears all of it down: pod,
//! containerd, shims, cgroups, plugin, podmapd, pins and socket; the exit status is then 0.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use podmap_conformance::bins;
use podmap_conformance::containerd::{
    interrupt, ContainerSpec, Node, NodeOptions, PluginMode, PodSpec, Series,
};
use podmap_conformance::daemon::{Daemon, DaemonOptions};

#[derive(Debug, Parser)]
#[command(
    name = "podmap-demo",
    about = "A demo pod in a private containerd, with its enriched events (--host: this host's)"
)]
struct Cli {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Run containerd (or, with --host, podmapd) in a pure cgroup2 mount namespace.
    #[arg(long)]
    pure_cgroup2: bool,
    /// No containerd: podmapd alone, streaming every exec and exit on this host.
    #[arg(long)]
    host: bool,
    /// The containerd series to run: 1.7 (Debian trixie) or 2.1 (Debian forky).
    #[arg(long, default_value = "1.7", conflicts_with = "host")]
    containerd: Series,
    /// podmapd's socket for the demo: `podmap status --socket PATH` reaches it from another shell.
    /// Its own directory, so the demo never touches an installed podmapd's socket.
    #[arg(
        long,
        env = "PODMAP_DEMO_SOCKET",
        default_value = "/run/podmap-demo/podmap.sock"
    )]
    socket: PathBuf,
}

const NAMESPACE: &str = "demo";

fn main() -> ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Ctrl-C during start-up is a normal way to stop too: everything started is gone by now.
        Err(e) if e.downcast_ref::<interrupt::Interrupted>().is_some() => {
            eprintln!("podmap-demo: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podmap-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    // A missing or stale binary is said before anything starts, not found half-way through.
    let mut needed = vec!["podmapd", "podmap"];
    if !cli.host {
        needed.push("podmap-nri");
        if cli.pure_cgroup2 {
            needed.push("podmap-test-runc");
        }
    }
    for name in needed {
        bins::checked_path(name).map_err(|e| {
            anyhow::anyhow!(
                "{e}. For the demo, scripts/run.sh rebuilds them (release) and starts it"
            )
        })?;
    }
    let _socket_dir = SocketDir::claim(&cli.socket)?;
    if cli.host {
        run_host(cli)
    } else {
        run_pod(cli)
    }
}

/// podmapd alone: every exec and exit of this host.
fn run_host(cli: &Cli) -> anyhow::Result<()> {
    eprintln!("podmap-demo: starting podmapd (private pins) ...");
    let daemon = Daemon::start_with(DaemonOptions {
        pure_cgroup2: cli.pure_cgroup2,
        socket: Some(cli.socket.clone()),
        env: vec![("NODE_NAME".into(), node_name())],
        ..Default::default()
    });
    interrupt::check()?;
    let client = EventsClient::start(&daemon.socket, None)?;
    eprintln!(
        "podmap-demo: podmapd streams every exec and exit on this host; {}",
        stop_hint(cli)
    );
    print_client_hints(&daemon.socket)?;
    interrupt::wait(cli.duration.map(Duration::from_secs));
    eprintln!("podmap-demo: tearing down");
    drop(client);
    drop(daemon);
    Ok(())
}

/// podmapd, a private containerd with podmap-nri, and a demo pod.
fn run_pod(cli: &Cli) -> anyhow::Result<()> {
    eprintln!(
        "podmap-demo: starting podmapd, containerd {} (private) and podmap-nri ...",
        cli.containerd
    );
    let mut options = NodeOptions::new(cli.pure_cgroup2, PluginMode::External)
        .series(cli.containerd)
        .daemon_env("NODE_NAME", &node_name());
    options.daemon_socket = Some(cli.socket.clone());
    let node = Node::start(options)?;
    interrupt::check()?;
    let version = node.ctrd.cri().version()?;
    eprintln!(
        "podmap-demo: {} {} with NRI, podmap-nri registered, podmapd on {}",
        version.runtime_name,
        version.runtime_version,
        node.daemon.socket.display()
    );

    let client = EventsClient::start(&node.daemon.socket, Some(NAMESPACE))?;
    // The client subscribes before the pod's first exec: a status round-trip proves the daemon
    // serves, and the subscription was sent before it.
    std::thread::sleep(Duration::from_millis(300));
    let _ = node.daemon.status();
    interrupt::check()?;

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
        "podmap-demo: pod {NAMESPACE}/{} (uid {}) runs containers web and log-shipper; {}",
        pod.spec.name,
        pod.spec.uid,
        stop_hint(cli)
    );
    print_client_hints(&node.daemon.socket)?;

    interrupt::wait(cli.duration.map(Duration::from_secs));
    eprintln!("podmap-demo: tearing down");
    drop(client);
    drop(pod);
    drop(node);
    Ok(())
}

/// Events and status name this host, as podmapd on a node names the node.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn stop_hint(cli: &Cli) -> String {
    match cli.duration {
        Some(s) => format!("stopping in {s} s"),
        None => "Ctrl-C stops and removes everything".into(),
    }
}

/// One line per client command that reaches this demo's podmapd, runnable as printed from the
/// directory the demo was started in (the README's `target/release/podmap status` would look
/// at the default socket, where the demo's podmapd is not).
fn print_client_hints(socket: &Path) -> anyhow::Result<()> {
    let podmap = bins::path("podmap");
    let cwd = std::env::current_dir().context("the current directory")?;
    let shown = podmap.strip_prefix(&cwd).unwrap_or(&podmap);
    for what in ["status", "containers"] {
        eprintln!(
            "podmap-demo: in another shell: {} {what} --socket {}",
            shown.display(),
            socket.display()
        );
    }
    Ok(())
}

/// `podmap events -o compact` on the demo's socket, its output on the demo's stdout; stopped
/// however the demo ends.
struct EventsClient(Child);

impl EventsClient {
    fn start(socket: &Path, namespace: Option<&str>) -> anyhow::Result<EventsClient> {
        let mut cmd = Command::new(bins::path("podmap"));
        cmd.args(["events", "-o", "compact", "--socket"])
            .arg(socket);
        if let Some(ns) = namespace {
            cmd.args(["--namespace", ns]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .context("starting `podmap events`")?;
        Ok(EventsClient(child))
    }
}

impl Drop for EventsClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The socket's directory, made by the demo when missing and removed again at the end, so a
/// demo leaves nothing in /run.
struct SocketDir {
    made: Option<PathBuf>,
    socket: PathBuf,
}

impl SocketDir {
    fn claim(socket: &Path) -> anyhow::Result<SocketDir> {
        if UnixStream::connect(socket).is_ok() {
            bail!(
                "a podmapd already serves {}: another demo is running (stop it first, or give \
                 this one --socket PATH)",
                socket.display()
            );
        }
        let dir = socket
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .context("the socket path has no directory")?;
        let made = if dir.exists() {
            None
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(dir.to_path_buf())
        };
        Ok(SocketDir {
            made,
            socket: socket.to_path_buf(),
        })
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        // podmapd removes its socket when it exits cleanly; this covers a podmapd that did not.
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = &self.made {
            // Only if empty: whatever someone else put there stays.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
