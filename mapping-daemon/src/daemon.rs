//! podmapd: loads and attaches the programs, scans /proc, then runs the reader, the socket server
//! and the metrics endpoint until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use podmap_bpf::programs::{self, Attached, ProgramConfig};
use podmap_bpf::{Counters, SharedMaps};
use podmap_cgroup::{CgroupLayout, PodParents};
use podmap_node::NodeArgs;

use crate::dir_watch::{DirWatch, Watched};
use crate::hub::Hub;
use crate::pipeline::{reader, Pipeline};
use crate::policies::{Look, PolicyManager, PolicyNames};
use crate::policy_mirror::{Mirror, MirrorHandle};
use crate::procs::ProcTable;
use crate::state::DaemonState;
use crate::stats::Stats;
use crate::wake::Wake;
use crate::{http, server};
use podmap_pod_cache::PodCache;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "podmapd",
    version,
    about = "podmap's node daemon: every process the kernel runs, attributed to its pod and container"
)]
pub struct Args {
    /// The flags every podmap binary on a node shares (pins, cgroup root, policy directory,
    /// grace, log filter, own namespace).
    #[command(flatten)]
    pub node: NodeArgs,
    /// The event socket.
    #[arg(long, env = "PODMAP_SOCKET", default_value = server::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The host group (a number) given access to the socket; without it the socket is root's.
    /// Not a name: in a pod, names resolve against the image's /etc/group, not the host's.
    #[arg(long, env = "PODMAP_SOCKET_GROUP", value_name = "GID")]
    pub socket_group: Option<u32>,
    /// Socket connections served at once; one more gets an error line and the close.
    #[arg(long, env = "PODMAP_MAX_CLIENTS", default_value_t = server::DEFAULT_MAX_CLIENTS,
          value_parser = parse_max_clients)]
    pub max_clients: usize,
    /// This node's name in events (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// A kubeconfig for the pod cache (default: the in-cluster config when running in a pod;
    /// outside a cluster podmapd runs standalone, from the runtime plugins' records alone).
    #[arg(long, env = "PODMAP_KUBECONFIG", conflicts_with = "no_kube")]
    pub kubeconfig: Option<PathBuf>,
    /// Run standalone even inside a cluster: no API server, no pod cache.
    #[arg(long, env = "PODMAP_NO_KUBE")]
    pub no_kube: bool,
    /// In Kubernetes mode, do not mirror the PodPolicy resources into --policy-dir (for
    /// clusters without the CRD, or where the directory is managed by other means).
    #[arg(long, env = "PODMAP_NO_POLICY_RESOURCES")]
    pub no_policy_resources: bool,
    /// Where Prometheus metrics are served; "off" disables them.
    #[arg(long, env = "PODMAP_METRICS_ADDR", default_value = "127.0.0.1:9477")]
    pub metrics_addr: String,
    /// How often the ring buffer is polled while events flow and the kernel has not woken the
    /// reader: how long a flowing event may wait for it (docs/decisions.md #47).
    #[arg(long, env = "PODMAP_POLL_MS", default_value_t = 15)]
    pub poll_ms: u64,
    /// cgroups, besides /kubepods, /kubepods.slice and /machine.slice, below which the runtime
    /// places pods (kubelet's --cgroup-root): a cgroup path (/custom/pods) or a systemd slice
    /// (custom.slice), comma-separated. Only below these does a cgroup named like a container's
    /// count as one when no plugin mapped it (docs/decisions.md #29).
    #[arg(long, env = "PODMAP_POD_PARENTS", value_delimiter = ',')]
    pub pod_parents: Vec<String>,
}

fn parse_max_clients(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=65536) => Ok(n),
        _ => Err(format!("{s:?} is not a number from 1 to 65536")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let node: Arc<str> = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(hostname)
        .into();
    let layout = CgroupLayout::detect(&args.node.cgroup_root, &args.node.v1_controller)
        .with_context(|| {
            format!(
                "detecting the cgroup layout under {}",
                args.node.cgroup_root.display()
            )
        })?;
    tracing::info!(layout = layout.kind.as_str(), hierarchy = %layout.hierarchy_name(), root = %layout.root.display(), "cgroups");
    let pod_parents = PodParents::with_extra(&args.pod_parents).context("--pod-parents")?;

    let loaded =
        load_programs(&ProgramConfig::new(&args.node.bpffs_dir, &layout)).with_context(|| {
            format!(
                "loading the eBPF programs (pins under {})",
                args.node.bpffs_dir.display()
            )
        })?;
    let programs::LoadedPrograms {
        maps,
        mut events,
        reader: reader_flag,
        mut procs,
        links,
        attached,
        open: open_tracepoints,
        lsm,
        lock: pins_lock,
    } = loaded;
    let programs_status = podmap_proto::status::ProgramsStatus {
        links: links.mode.to_string(),
        pinned_at: args.node.bpffs_dir.display().to_string(),
        // The open rules' programs come and go with the rules: status adds the policies'.
        attached: links
            .programs
            .iter()
            .filter(|p| !open_tracepoints.attached().contains(&p.as_str()))
            .cloned()
            .collect(),
        replaced_because: links.reason.clone(),
        overlap_us: links.overlap.map(|d| d.as_micros() as u64),
        lost_kernel_before_start: maps
            .counters
            .get(podmap_bpf::layout::Counter::RingbufDropped),
        // Read below, once the pipeline exists; status takes it from the stats.
        backlog_read_at_start: 0,
    };
    let maps = Arc::new(maps);
    tracing::info!(active = lsm.active, detail = %lsm.detail, "BPF-LSM probe");

    let stats = Arc::new(Stats::default());
    let mut table = ProcTable::new(stats.clone());
    let scanned = table.scan(&node, &mut procs);
    tracing::info!(processes = scanned, "scanned /proc");

    let hub = Hub::new();
    let kube = kube_client(&args).await?;
    let policy_names = PolicyNames::default();
    let mirror = match &kube {
        Some(client) if !args.no_policy_resources => {
            let handle = MirrorHandle::default();
            let mirror = Mirror::new(&args.node.policy_dir, handle.clone());
            tracing::info!(dir = %args.node.policy_dir.display(), "mirroring PodPolicy resources into the policy directory");
            Some((tokio::spawn(mirror.run(client.clone())), handle))
        }
        _ => None,
    };
    let state = Arc::new(DaemonState {
        node: node.to_string(),
        layout: layout.clone(),
        maps: maps.clone(),
        stats: stats.clone(),
        hub: hub.clone(),
        started,
        enforcement: if lsm.active {
            "lsm".to_string()
        } else {
            format!("fallback (BPF-LSM unavailable: {}): deny rules act as kill where they say fallback: kill, else audit", lsm.detail)
        },
        policies: Default::default(),
        pods: Default::default(),
        policy_resources: mirror.as_ref().map(|(_, handle)| handle.clone()),
        policy_names: policy_names.clone(),
        pod_parents: pod_parents.as_slice().to_vec(),
        programs: programs_status,
    });
    let pods = kube.map(|client| {
        tracing::info!(node = %node, "starting the pod cache");
        PodCache::start(client, &node)
    });
    let housekeeping_wake =
        Arc::new(Wake::new().context("making the housekeeping thread's eventfd")?);
    if let Some(pods) = pods.clone() {
        // A relabelled pod reaches membership at once, not at housekeeping's next quiet look.
        let wake = housekeeping_wake.clone();
        tokio::spawn(async move {
            loop {
                pods.changed().await;
                wake.wake();
            }
        });
    }
    *state.pods.lock().unwrap_or_else(|p| p.into_inner()) = pods.clone();
    let policy_maps =
        SharedMaps::open(&args.node.bpffs_dir).context("opening the pinned maps for policies")?;
    let mut policies = PolicyManager::new(
        &args.node.policy_dir,
        policy_maps,
        lsm.active,
        pods.clone(),
        policy_names.clone(),
    )
    .with_own_namespace(args.node.own_namespace().map(str::to_owned))
    .with_open_tracepoints(open_tracepoints);
    policies.tick();
    *state.policies.lock().unwrap_or_else(|p| p.into_inner()) = policies.status();
    let mut pipeline = Pipeline::new(
        node.clone(),
        maps.clone(),
        layout,
        table,
        stats.clone(),
        policy_names,
        pods,
        pod_parents,
    );
    // Records the programs queued while no podmapd read the pinned ring buffer (docs/decisions.md
    // #29) are read now, so the process table and the cgroup paths catch up; the socket is not
    // open yet, so no client can have them: they are counted, and status shows it.
    let backlog = {
        // No client yet: nothing is built, only the bookkeeping is done.
        let clock = pipeline.begin(crate::clock::boot_ns());
        pipeline.want(crate::hub::Wanted::NONE);
        let mut out = Vec::new();
        let mut n = 0u64;
        while let Some(item) = events.next() {
            pipeline.record(&item, &clock, &mut out);
            n += 1;
        }
        pipeline.finish(&clock, &mut out);
        n
    };
    stats
        .backlog_at_start
        .store(backlog, std::sync::atomic::Ordering::Relaxed);
    if backlog > 0 {
        tracing::warn!(
            records = backlog,
            "read the records queued while no podmapd ran: no client received them"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = server::bind(&args.socket, args.socket_group)?;
    tracing::info!(socket = %args.socket.display(), node = %node, "podmapd ready");

    let server_task = tokio::spawn(server::serve_with_config(
        listener,
        hub.clone(),
        state.clone(),
        server::ServerConfig {
            max_clients: args.max_clients,
            ..Default::default()
        },
        wait(stop_rx.clone()),
    ));
    let metrics_task = if args.metrics_addr != "off" {
        let addr: SocketAddr = args
            .metrics_addr
            .parse()
            .with_context(|| format!("--metrics-addr {:?} is not host:port", args.metrics_addr))?;
        Some(tokio::spawn(http::serve(
            addr,
            state.clone(),
            http::HttpConfig {
                refused: Arc::clone(&stats.metrics_refused),
                ..Default::default()
            },
            wait(stop_rx.clone()),
        )))
    } else {
        None
    };
    // A handle of its own: sweeping writes the maps, the pipeline only reads them.
    let sweeper =
        SharedMaps::open(&args.node.bpffs_dir).context("opening the pinned maps for sweeping")?;
    let pins_counters = maps.counters.clone();
    // Wakes the runtime when the housekeeping or the reader thread ends, however it ends.
    let thread_end = Arc::new(tokio::sync::Notify::new());
    let housekeeping = Housekeeping {
        _pins_lock: pins_lock,
        pins_dir: args.node.bpffs_dir.clone(),
        end: EndSignal(thread_end.clone()),
        policies,
        attached,
        counters: pins_counters,
        sweeper,
        grace: args.node.grace,
        state: state.clone(),
        wake: housekeeping_wake.clone(),
    }
    .start(stop_rx.clone())
    .context("starting the housekeeping thread")?;
    let reader = reader::Reader::spawn(
        events,
        reader_flag,
        pipeline,
        hub,
        stats.clone(),
        Duration::from_millis(args.poll_ms.max(1)),
        EndSignal(thread_end.clone()),
    )
    .context("starting the event reader thread")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        // Both run until told to stop; ending before (an error, a panic) would leave events
        // unread or policies unreconciled without a word: podmapd exits instead, to be
        // restarted.
        ended = thread_ended(&thread_end, &housekeeping, &reader) => {
            let _ = stop_tx.send(true);
            housekeeping_wake.wake();
            let _ = std::fs::remove_file(&args.socket);
            if ended == Ended::Reader {
                reader.join().context("reading the ring buffer")?;
                anyhow::bail!("the ring buffer reader stopped");
            }
            anyhow::bail!("the housekeeping thread stopped (see the panic above)");
        }
    }
    let _ = stop_tx.send(true);
    housekeeping_wake.wake();
    reader.stop();
    let _ = server_task.await;
    if let Err(e) = reader.join() {
        tracing::warn!(error = %e, "the event reader ended with an error");
    }
    // Its last look ends within SETTLE and the look's work, unless a disk holds it: then it is
    // left to the process's exit, with the pin directory's lock it holds (no other podmapd takes
    // the directory while this one may still write the maps). The programs stay attached through
    // their pinned links either way. Polled, not joined on a blocking task: the runtime would
    // wait for that task when it is dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !housekeeping.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !housekeeping.is_finished() {
        tracing::warn!("the housekeeping thread is still busy: not waiting for it");
    }
    if let Some((task, _)) = mirror {
        task.abort();
    }
    if let Some(t) = metrics_task {
        t.await
            .context("metrics task")?
            .context("metrics endpoint")?;
    }
    let _ = std::fs::remove_file(&args.socket);
    // The programs stay attached through their pinned links (docs/decisions.md #30): policies
    // keep acting until the next podmapd adopts or replaces them (the housekeeping thread has
    // dropped this process's hold on them). Said, with how to undo it: whoever tried podmapd
    // with a pin directory of their own would otherwise not know its programs still run.
    drop(procs);
    tracing::info!(
        pins = %args.node.bpffs_dir.display(),
        "stopped; the programs stay attached through the links pinned in {} (policies keep acting, events wait for the next podmapd): remove that directory to detach them",
        args.node.bpffs_dir.display()
    );
    Ok(())
}

/// Set in the environment of podmapd's loader process: the [`ProgramConfig`] as JSON. Not a
/// setting (it is no `PODMAP_*` variable, and no flag shown in --help): podmapd sets it for the
/// copy of itself it starts, which the pin directory's lock held by podmapd covers.
pub const LOADER_ENV: &str = "PODMAPD_LOADER";

/// How long the loader process may take (the verifier included) before podmapd's start fails.
const LOADER_TIMEOUT: Duration = Duration::from_secs(120);

/// What the loader process writes on its standard output, one JSON line.
#[derive(serde::Serialize, serde::Deserialize)]
enum LoaderReply {
    Installed(programs::Installed),
    /// The error, with its causes, exactly as podmapd would have logged it.
    Failed(String),
}

/// Takes the pin directory's lock, has a copy of this binary load the programs and install the
/// links (aya parses the kernel's BTF there, more than 20 MiB that never count in podmapd's
/// memory: docs/decisions.md #39), then opens what it pinned. The lock is held throughout, so the
/// loader does not take it.
fn load_programs(cfg: &ProgramConfig) -> anyhow::Result<programs::LoadedPrograms> {
    let lock = programs::lock(cfg)?;
    let installed = run_loader(cfg)?;
    Ok(programs::open(&cfg.bpffs_dir, installed, lock)?)
}

/// Runs `/proc/self/exe` with podmapd's own arguments (its log format and filter with them) and
/// [`LOADER_ENV`], and reads its [`LoaderReply`].
fn run_loader(cfg: &ProgramConfig) -> anyhow::Result<programs::Installed> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let request = serde_json::to_string(cfg).context("encoding the loader's settings")?;
    let mut argv = std::env::args_os();
    let arg0 = argv.next().unwrap_or_else(|| "podmapd".into());
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(arg0)
        .args(argv)
        .env(LOADER_ENV, request)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl and getppid are async-signal-safe syscalls. A podmapd that dies while its
    // loader runs takes the loader along: its lock is gone, and the next podmapd's loader must
    // not find this one still swapping links.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "podmapd ended before its loader started",
                ));
            }
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .context("starting the loader process (/proc/self/exe)")?;
    let mut out = child
        .stdout
        .take()
        .context("the loader's standard output")?;
    let reading = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + LOADER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the loader process")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "the loader process (pid {}) did not finish within {LOADER_TIMEOUT:?}: killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = reading
        .join()
        .map_err(|_| anyhow::anyhow!("reading the loader's report: the thread panicked"))?
        .context("reading the loader's report")?;
    let reply = output
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<LoaderReply>(l).ok());
    match (reply, status.success()) {
        (Some(LoaderReply::Failed(error)), _) => Err(anyhow::anyhow!(error)),
        (Some(LoaderReply::Installed(installed)), true) => Ok(installed),
        _ => anyhow::bail!(
            "the loader process (pid {}) ended without a report ({status})",
            child.id()
        ),
    }
}

/// podmapd as its own loader process ([`LOADER_ENV`] set): loads the programs, installs the
/// links, reports on standard output and exits. Its log lines go to podmapd's standard error.
pub fn run_loader_child(request: &std::ffi::OsStr) -> std::process::ExitCode {
    let reply = match loader_child(request) {
        Ok(installed) => LoaderReply::Installed(installed),
        Err(e) => LoaderReply::Failed(format!("{e:#}")),
    };
    let failed = matches!(reply, LoaderReply::Failed(_));
    let line = serde_json::to_string(&reply).expect("plain data serializes");
    println!("{line}");
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

fn loader_child(request: &std::ffi::OsStr) -> anyhow::Result<programs::Installed> {
    let request = request
        .to_str()
        .with_context(|| format!("{LOADER_ENV} is not UTF-8"))?;
    let cfg: ProgramConfig =
        serde_json::from_str(request).with_context(|| format!("{LOADER_ENV} {request:?}"))?;
    // The pins are only written under the lock; the loader's is its parent's.
    let held = programs::lock_is_held(&cfg.bpffs_dir)
        .with_context(|| format!("looking at the lock of {}", cfg.bpffs_dir.display()))?;
    anyhow::ensure!(
        held,
        "{LOADER_ENV} is set but no podmapd holds the lock of {}: the loader runs only as podmapd's child",
        cfg.bpffs_dir.display()
    );
    Ok(programs::install(&cfg)?)
}

/// A client for the API server, where there is one to ask: with --kubeconfig, or in a pod. A
/// kubeconfig that does not work is an error; no cluster at all is standalone mode.
async fn kube_client(args: &Args) -> anyhow::Result<Option<kube::Client>> {
    if args.no_kube {
        return Ok(None);
    }
    let client = match &args.kubeconfig {
        Some(path) => podmap_pod_cache::client(Some(path))
            .await
            .with_context(|| format!("using the kubeconfig {}", path.display()))?,
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            podmap_pod_cache::client(None)
                .await
                .context("using the in-cluster Kubernetes config")?
        }
        None => {
            tracing::info!("no kubeconfig and not in a cluster: standalone, attribution from the runtime plugins alone");
            return Ok(None);
        }
    };
    Ok(Some(client))
}

/// The node's periodic work, on a thread of its own: reading and parsing the policy directory,
/// writing rule tables and memberships, publishing the active set, walking the maps to sweep and
/// putting back removed pins all do blocking I/O, and the runtime's only thread carries the
/// socket and the metrics, which must never wait on a disk.
struct Housekeeping {
    /// The pin directory's lock, released only when this thread ends: it writes the maps.
    _pins_lock: std::fs::File,
    pins_dir: PathBuf,
    policies: PolicyManager,
    /// Held here so the links' and podmapd's own maps' pins can be put back.
    attached: Attached,
    counters: Arc<Counters>,
    sweeper: SharedMaps,
    grace: Duration,
    state: Arc<DaemonState>,
    /// Woken for a stop and for a pod change; the directory watches wake it too.
    wake: Arc<Wake>,
    end: EndSignal,
}

/// How long housekeeping sleeps when nothing wakes it (a stop, a pod change, a watched
/// directory's change): containers the plugins mapped are reconciled into membership within
/// this (the plugins write the memberships of their own containers at creation; this is the
/// backstop), and the policy directory's slow look is due as often.
const QUIET: Duration = Duration::from_secs(1);
/// Without inotify, or while a directory cannot be watched, the directories are looked at this
/// often, as they were before the watches.
const TICK_UNWATCHED: Duration = Duration::from_millis(250);
/// After a wake, what else comes within this is handled by the same look: a burst of events (a
/// `rm -rf` of the pin directory, a file written in pieces) is looked at once, and a removal in
/// progress is not raced by the repair.
const SETTLE: Duration = Duration::from_millis(50);
/// A look or sweep due within this is done now: deadlines that drifted apart do not cost a
/// wake-up each.
const SLACK: Duration = Duration::from_millis(100);
/// The policy directory is looked at this often even when inotify saw nothing: what it cannot
/// see (a file behind a symbolic link that leaves the directory, a network filesystem, a failed
/// event queue) still takes effect within about a second, as it did when every tick looked.
const POLICY_LOOK: Duration = Duration::from_secs(1);
/// The pins are checked this often even when inotify saw nothing.
const PINS_LOOK: Duration = Duration::from_secs(5);

/// The inotify watches of the policy directory and of the pin directories.
struct Watches {
    watch: DirWatch,
    policies: Watched,
    pins: [Watched; 2],
}

impl Watches {
    fn new(policy_dir: &Path, pins_dir: &Path) -> Option<Watches> {
        let mut watch = match DirWatch::new() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "no inotify: looking at the policy directory and the pins every tick");
                return None;
            }
        };
        let policies = watch.add(policy_dir);
        let pins = [
            watch.add(pins_dir),
            watch.add(&pins_dir.join(podmap_bpf::links::LINKS_DIR)),
        ];
        Some(Watches {
            watch,
            policies,
            pins,
        })
    }

    /// Reads what inotify queued; (policy directory changed, pins changed). Without a working
    /// inotify instance, everything changed every time.
    fn changes(watches: &mut Option<Watches>) -> (bool, bool) {
        let Some(w) = watches else {
            return (true, true);
        };
        let overflows = w.watch.overflows();
        if let Err(e) = w.watch.read_events() {
            tracing::warn!(error = %e, "reading inotify events: looking at the policy directory and the pins every tick from now on");
            *watches = None;
            return (true, true);
        }
        if w.watch.overflows() > overflows {
            tracing::info!(
                "the inotify event queue overflowed: looking at the policy directory and the pins"
            );
        }
        let dir = w.watch.take_changed(w.policies);
        let mut pins = false;
        for p in w.pins {
            pins |= w.watch.take_changed(p);
        }
        (dir, pins)
    }
}

impl Housekeeping {
    /// Sleeps until something asks for a look: a policy change (seen by inotify, or by a look
    /// every [`POLICY_LOOK`]), a relabelled pod (the pod cache's change, through `wake`), a
    /// removed pin (inotify, or a look every [`PINS_LOOK`]), a stop, or [`QUIET`] for the
    /// record map's generation; each is applied [`SETTLE`] after it woke the thread ("takes
    /// effect within a second" with room to spare). While podmapd runs, a removed pin directory
    /// turns nothing off. Records whose grace period ended are dropped every `min(grace, 5)` s
    /// (docs/decisions.md #5): hooks never sleep out the grace, so someone else must sweep.
    fn start(
        mut self,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("podmap-house".into())
            .spawn(move || {
                let sweep_every = Duration::from_secs(self.grace.as_secs().clamp(1, 5));
                let mut next_sweep = Instant::now() + sweep_every;
                let mut watches = Watches::new(self.policies.dir(), &self.pins_dir);
                let mut next_policy_look = Instant::now();
                let mut next_pins_look = Instant::now();
                let mut expiry = podmap_bpf::maps::ExpiryWatch::default();
                // Warned once: a poll that fails keeps failing.
                let mut sleep_failed = false;
                while !*stop.borrow() {
                    let now = Instant::now();
                    let due = |at: Instant| now + SLACK >= at;
                    let (dir_changed, pins_changed) = Watches::changes(&mut watches);
                    let look = Look {
                        dir: dir_changed || due(next_policy_look),
                        pins: pins_changed || due(next_pins_look),
                    };
                    if look.pins {
                        next_pins_look = now + PINS_LOOK;
                        self.attached.keep_pins(&self.counters);
                    }
                    if look.dir {
                        next_policy_look = now + POLICY_LOOK;
                    }
                    self.policies.tick_looking(look);
                    *self
                        .state
                        .policies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = self.policies.status();
                    if due(next_sweep) {
                        next_sweep = now + sweep_every;
                        let swept = self.sweeper.records.sweep_expired_watched(
                            &mut expiry,
                            grace_ns(self.grace),
                            podmap_bpf::maps::boot_ns(),
                        );
                        if !swept.is_empty() {
                            tracing::debug!(
                                records = swept.len(),
                                "swept expired container records"
                            );
                        }
                    }
                    let quiet = if watches.as_ref().is_some_and(|w| w.watch.all_watched()) {
                        QUIET
                    } else {
                        TICK_UNWATCHED
                    };
                    let now = Instant::now();
                    let until = next_policy_look
                        .min(next_pins_look)
                        .min(next_sweep)
                        .min(now + quiet);
                    let watch = watches.as_ref().map(|w| w.watch.as_raw_fd());
                    match self.wake.sleep(watch, until.saturating_duration_since(now)) {
                        Ok(true) if !*stop.borrow() => std::thread::sleep(SETTLE),
                        Ok(_) => {}
                        Err(e) => {
                            if !sleep_failed {
                                tracing::warn!(error = %e, "housekeeping cannot sleep on its wake-ups: looking every {TICK_UNWATCHED:?}");
                                sleep_failed = true;
                            }
                            std::thread::sleep(TICK_UNWATCHED);
                        }
                    }
                }
                drop(self.end);
            })
    }
}

/// Wakes whoever waits on the `Notify` when dropped: held by a thread for its whole life, so its
/// end (a return or a panic's unwinding) is known at once rather than by looking.
pub(crate) struct EndSignal(Arc<tokio::sync::Notify>);

impl Drop for EndSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// `--grace` in nanoseconds, the unit the records' timestamps use. Saturating: a plain multiply
/// wraps in release builds, and a huge grace would become a short one that sweeps at once.
fn grace_ns(grace: Duration) -> u64 {
    u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Housekeeping,
    Reader,
}

/// Resolves once the housekeeping or the reader thread has ended. Each holds an [`EndSignal`] on
/// `end`, which it drops just before its thread finishes.
async fn thread_ended(
    end: &tokio::sync::Notify,
    housekeeping: &std::thread::JoinHandle<()>,
    reader: &reader::Reader,
) -> Ended {
    end.notified().await;
    loop {
        if reader.is_finished() {
            return Ended::Reader;
        }
        if housekeeping.is_finished() {
            return Ended::Housekeeping;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_grace_saturates_instead_of_wrapping() {
        let s = Duration::from_secs;
        assert_eq!(grace_ns(s(30)), 30_000_000_000);
        assert_eq!(grace_ns(Duration::from_millis(500)), 500_000_000);
        assert_eq!(grace_ns(s(0)), 0);
        // 2^64 ns is 584 years: anything longer means "keep the records", never a short wrap.
        assert_eq!(grace_ns(s(u64::MAX)), u64::MAX);
        assert_eq!(
            grace_ns(s(18_446_744_074)),
            u64::MAX,
            "the first second that overflows"
        );
        assert_eq!(grace_ns(s(18_446_744_073)), 18_446_744_073_000_000_000);
    }

    #[test]
    fn the_environment_is_read() {
        podmap_node::testing::env_is_read::<Args>("daemon::tests::the_environment_is_read", |a| {
            &a.node
        });
    }

    #[test]
    fn grace_takes_a_duration_or_seconds() {
        let grace = |g: &str| {
            Args::try_parse_from(["podmapd", "--grace", g])
                .unwrap()
                .node
                .grace
        };
        assert_eq!(grace("30"), grace("30s"));
        assert_eq!(grace("500ms"), Duration::from_millis(500));
    }

    #[test]
    fn the_socket_group_is_a_number() {
        let args = Args::try_parse_from(["podmapd", "--socket-group", "998"]).unwrap();
        assert_eq!(args.socket_group, Some(998));
        let err = Args::try_parse_from(["podmapd", "--socket-group", "podmap"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--socket-group"), "{err}");
        let args = Args::try_parse_from(["podmapd"]).unwrap();
        assert_eq!(args.socket_group, None);
        assert_eq!(args.max_clients, server::DEFAULT_MAX_CLIENTS);
        assert!(Args::try_parse_from(["podmapd", "--max-clients", "0"]).is_err());
    }

    /// One meaning of PODMAP_LOG: the shared parser (which the hook, without tracing-subscriber,
    /// uses alone) accepts exactly what podmapd's EnvFilter accepts, and finds the same highest
    /// level.
    #[test]
    fn podmap_log_is_an_env_filter_everywhere() {
        use std::str::FromStr;
        use tracing_subscriber::filter::{EnvFilter, LevelFilter};
        let level = |l: podmap_node::Level| match l {
            podmap_node::Level::Off => LevelFilter::OFF,
            podmap_node::Level::Error => LevelFilter::ERROR,
            podmap_node::Level::Warn => LevelFilter::WARN,
            podmap_node::Level::Info => LevelFilter::INFO,
            podmap_node::Level::Debug => LevelFilter::DEBUG,
            podmap_node::Level::Trace => LevelFilter::TRACE,
        };
        for s in [
            "info",
            "INFO",
            "Warn",
            "error",
            "off",
            "0",
            "3",
            "5",
            "debug",
            "trace",
            "warn,podmap=debug",
            "podmap_daemon=info,warn",
            "podmap",
            "podmap=",
            "a::b-c=error",
            "[span]=debug",
            "target[span{field=1}]=warn",
            "[{f=x}]=info",
            "error,",
            "=info",
            "podmap=loud",
            "podmap=debug=x",
            "[unclosed",
            "[{}]",
            "*",
            "t[s]x=info",
            "[{f=x,g}]=info",
            "6",
            "podmap=7",
            "a b=info",
            "-x=debug",
            "[s]",
            "t[s]",
        ] {
            let ours = podmap_node::LogFilter::from_str(s);
            let theirs = EnvFilter::try_new(s);
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{s:?}: {ours:?} / {theirs:?}");
            if let (Ok(o), Ok(t)) = (ours, theirs) {
                if !s.contains('[') {
                    assert_eq!(Some(level(o.max_level())), t.max_level_hint(), "{s:?}");
                }
            }
        }
        // The default is the one podmapd always had.
        let args = Args::try_parse_from(["podmapd"]).unwrap();
        assert_eq!(args.node.log.as_str(), "info");
        assert_eq!(args.node.grace, Duration::from_secs(30));
        assert_eq!(
            podmap_node::DEFAULT_BPFFS_DIR,
            podmap_bpf::DEFAULT_BPFFS_DIR,
            "podmap-node's default pin directory is the loader's"
        );
    }

    /// What the housekeeping thread is told to look at: a policy file written is a change of
    /// the directory only, a pin removed (or the whole pin directory) of the pins only, and
    /// after the pin directory is made again (as the repair does) its changes are seen again.
    #[test]
    fn the_watches_say_which_directory_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let policies = tmp.path().join("policies");
        let pins = tmp.path().join("pins");
        std::fs::create_dir(&policies).unwrap();
        std::fs::create_dir_all(pins.join(podmap_bpf::links::LINKS_DIR)).unwrap();
        std::fs::write(pins.join("podmap_events"), "").unwrap();
        std::fs::write(pins.join("links/podmap_exec"), "").unwrap();
        let mut w = Watches::new(&policies, &pins);
        assert!(w.is_some(), "inotify works here");
        assert_eq!(Watches::changes(&mut w), (true, true), "nothing seen yet");
        assert_eq!(Watches::changes(&mut w), (false, false), "nothing changed");

        std::fs::write(policies.join("p.yaml"), "x").unwrap();
        assert_eq!(
            Watches::changes(&mut w),
            (true, false),
            "a policy file written"
        );
        std::fs::remove_file(pins.join("links/podmap_exec")).unwrap();
        assert_eq!(
            Watches::changes(&mut w),
            (false, true),
            "a link's pin removed"
        );
        std::fs::remove_dir_all(&pins).unwrap();
        assert_eq!(
            Watches::changes(&mut w),
            (false, true),
            "the pin directory removed"
        );
        assert_eq!(Watches::changes(&mut w), (false, false));

        // The repair makes the directories again: the ancestors' watches arm theirs again.
        std::fs::create_dir_all(pins.join(podmap_bpf::links::LINKS_DIR)).unwrap();
        assert_eq!(
            Watches::changes(&mut w),
            (false, true),
            "the pin directories made again"
        );
        std::fs::write(pins.join("links/podmap_exec"), "").unwrap();
        assert_eq!(Watches::changes(&mut w), (false, true), "a pin made again");
        std::fs::remove_file(pins.join("links/podmap_exec")).unwrap();
        assert_eq!(Watches::changes(&mut w), (false, true), "and removed again");
    }
}
