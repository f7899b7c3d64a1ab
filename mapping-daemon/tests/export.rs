//! `podmap export` end to end against a real OpenTelemetry collector: Rotel (fetched, pinned and
//! cached by scripts/fetch-rotel.sh) on loopback ports of the test's own, with its OTLP gRPC and
//! HTTP receivers and its detailed debug log, which prints every record it receives. The events
//! are real: a real podmapd on private pins and socket, and execs and exits in a private cgroup
//! mapped as a pod's container. Runs as root.
//!
//! Checked: the events of an exec and an exit arrive with the conventions' attributes over gRPC
//! and over HTTP (and land in the rotated file); a collector restart loses nothing beyond what
//! the exporter counted as dropped; a podmapd restart is bridged (the exporter reconnects and
//! counts it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podmap_bpf::testing::unique_name;
use podmap_bpf::{ContainerId, ContainerMeta, PodUid, SharedMaps};
use podmap_conformance::daemon::{cgroup2_mount, run_in_cgroup, Daemon, DaemonOptions};

const WAIT: Duration = Duration::from_secs(30);
const IMAGE: &str = "registry.local/demo/app:1.0";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rotel_binary() -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace().join("scripts/fetch-rotel.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/fetch-rotel.sh");
    assert!(out.status.success(), "scripts/fetch-rotel.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A port nobody listens on now (the kernel's choice; released at once for the collector).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

/// Waits for `child` to exit within `timeout`, killing it past that; true if it exited itself.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Rotel on two private loopback ports, its files in a private directory; killed on drop.
struct Collector {
    bin: PathBuf,
    dir: tempfile::TempDir,
    grpc: u16,
    http: u16,
    child: Option<Child>,
    runs: u32,
}

impl Collector {
    fn start() -> Collector {
        let mut c = Collector {
            bin: rotel_binary(),
            dir: tempfile::tempdir().unwrap(),
            grpc: free_port(),
            http: free_port(),
            child: None,
            runs: 0,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let out =
            std::fs::File::create(self.dir.path().join(format!("out-{}.log", self.runs))).unwrap();
        let child = Command::new(&self.bin)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{}", self.http)])
            .args(["--exporter", "blackhole"])
            .args(["--debug-log", "logs", "--debug-log-verbosity", "detailed"])
            .arg("--pid-file")
            .arg(self.dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(self.dir.path().join("rotel.log"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting rotel-agent");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        for port in [self.grpc, self.http] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "rotel did not listen on {port}:\n{}",
                    self.text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A graceful stop (SIGTERM), as a collector's rollout does.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            wait_exit(&mut child, Duration::from_secs(15));
        }
    }

    /// Everything every run printed.
    fn text(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("out-{i}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The received log records whose body contains `needle`, each as its block of the debug log
    /// (timestamps, body, attributes).
    fn records_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .split("LogRecord #")
            .skip(1)
            .filter(|r| r.contains(needle))
            .map(str::to_string)
            .collect()
    }

    fn wait_record(&self, needle: &str, extra: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self
                .records_with(needle)
                .into_iter()
                .find(|r| r.contains(extra))
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no record with {needle:?} and {extra:?} reached the collector; it printed:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `podmap export` process; killed on drop.
struct Exporter {
    child: Child,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Exporter {
    fn start(socket: &Path, args: &[&str]) -> Exporter {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("export.log");
        let child = Command::new(env!("CARGO_BIN_EXE_podmap"))
            .arg("--socket")
            .arg(socket)
            .arg("export")
            .args([
                "--otlp-batch-timeout-ms",
                "100",
                "--stats-interval-secs",
                "0",
            ])
            .args(args)
            .env("PODMAP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting podmap export");
        Exporter {
            child,
            stderr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, as kubelet stops a sidecar; returns the counters of its last log line, and the
    /// log (for the failure messages).
    fn terminate(mut self) -> (BTreeMap<String, u64>, String) {
        signal(&self.child, "TERM");
        assert!(
            wait_exit(&mut self.child, Duration::from_secs(30)),
            "podmap export did not stop on SIGTERM:\n{}",
            self.log()
        );
        let log = self.log();
        let line = log
            .lines()
            .find_map(|l| l.split_once("export ended; counters: ").map(|(_, c)| c))
            .unwrap_or_else(|| panic!("no counters line at exit:\n{log}"));
        let counters = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect();
        (counters, log)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private cgroup mapped as container `app` of a pod, with an image (the fixture's own
/// mapping has none). Removed on drop.
struct Workload {
    cg: podmap_bpf::testing::TestCgroup,
    pod: String,
    uid: String,
}

impl Workload {
    fn new() -> Workload {
        Workload {
            cg: podmap_bpf::testing::TestCgroup::new(&cgroup2_mount(), "podmap-test-export")
                .unwrap(),
            pod: unique_name("web"),
            uid: unique_name("uid"),
        }
    }

    fn container_id(&self) -> String {
        format!("{:064x}", self.cg.id())
    }

    /// Writes the container record into `daemon`'s maps, as a runtime plugin would.
    fn map_into(&self, daemon: &Daemon) {
        let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
        let meta = ContainerMeta {
            container_id: ContainerId(self.container_id()),
            name: "app".into(),
            pod_uid: Some(PodUid(self.uid.clone())),
            pod_name: self.pod.clone(),
            namespace: "demo".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            image: IMAGE.into(),
            runtime: "test".into(),
            ..Default::default()
        };
        self.cg.map_record(&mut maps, &meta).unwrap();
    }

    fn run(&self, argv: &[&str]) -> u32 {
        run_in_cgroup(&self.cg.path(), argv).0
    }
}

/// Runs `echo <prefix>-<n>` until the collector has one: the exporter is then connected and
/// subscribed (its subscription races the first execs).
fn until_flowing(w: &Workload, c: &Collector, prefix: &str) {
    let deadline = Instant::now() + WAIT;
    for n in 0.. {
        let marker = format!("{prefix}-{n}");
        w.run(&["/bin/echo", &marker]);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if !c.records_with(&marker).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            Instant::now() < deadline,
            "no event reached the collector; it printed:\n{}",
            c.text()
        );
    }
}

fn assert_attributes(record: &str, want: &[(&str, String)]) {
    for (k, v) in want {
        let line = format!("-> {k}: {v}");
        assert!(
            record.contains(&line),
            "{line:?} missing in record:\n{record}"
        );
    }
}

/// The exec and the exit of one process, over one transport: every attribute of the mapping.
fn exec_and_exit_arrive(protocol: &str, port_of: fn(&Collector) -> u16) {
    let collector = Collector::start();
    let daemon = Daemon::start();
    let w = Workload::new();
    w.map_into(&daemon);
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("export/events.log");
    let exporter = Exporter::start(
        &daemon.socket,
        &[
            "--pod",
            &w.pod,
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{}", port_of(&collector)),
            "--otlp-protocol",
            protocol,
            "--file",
            file.to_str().unwrap(),
            "--file-mode",
            "0640",
        ],
    );
    until_flowing(&w, &collector, &format!("warmup-{protocol}"));

    let marker = unique_name("exit-marker");
    let pid = w.run(&["/bin/sh", "-c", &format!("exit 3 # {marker}")]);
    let exec = collector.wait_record(&marker, "-> podmap.event.type: Str(exec)");
    let exit = collector.wait_record(&marker, "-> podmap.event.type: Str(exit)");
    let common = [
        ("k8s.pod.name", format!("Str({})", w.pod)),
        ("k8s.pod.uid", format!("Str({})", w.uid)),
        ("k8s.namespace.name", "Str(demo)".to_string()),
        ("k8s.pod.label.app", "Str(web)".to_string()),
        ("k8s.container.name", "Str(app)".to_string()),
        ("container.id", format!("Str({})", w.container_id())),
        (
            "container.image.name",
            "Str(registry.local/demo/app)".to_string(),
        ),
        ("container.image.tags", "Slice(Str(1.0))".to_string()),
        ("process.pid", format!("Int({pid})")),
        ("process.executable.path", "Str(/bin/sh)".to_string()),
        (
            "process.command_args",
            format!("Slice(Str(/bin/sh), Str(-c), Str(exit 3 # {marker}))"),
        ),
        ("podmap.attribution", "Str(container)".to_string()),
    ];
    assert_attributes(&exec, &common);
    assert_attributes(&exit, &common);
    assert_attributes(&exit, &[("process.exit.code", "Int(3)".to_string())]);
    assert!(exec.contains("-> process.parent_pid: Int("), "{exec}");
    assert!(!exec.contains("process.exit.code"), "{exec}");
    assert!(exec.contains("EventName: podmap.exec"), "{exec}");
    // The event's own time, not the collector's: the body's "time" is the record's Timestamp.
    let body_time = exec
        .split("\"time\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let ns = podmap_proto::time::parse_rfc3339(body_time).unwrap();
    assert!(exec.contains(&format!("Timestamp: {ns}\n")), "{exec}");
    let text = collector.text();
    for resource in [
        format!("-> k8s.node.name: Str({})", daemon.node),
        "-> service.name: Str(podmap)".to_string(),
    ] {
        assert!(text.contains(&resource), "resource {resource:?} missing");
    }

    let (counters, log) = exporter.terminate();
    assert_eq!(counters["otlp.dropped"], 0, "{counters:?}\n{log}");
    assert!(counters["otlp.exported"] >= 3, "{counters:?}\n{log}");
    assert_eq!(
        counters["file.exported"], counters["received"],
        "{counters:?}\n{log}"
    );
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        lines.lines().filter(|l| l.contains(&marker)).count(),
        2,
        "the exec and the exit in the file:\n{lines}"
    );
    for l in lines.lines() {
        serde_json::from_str::<serde_json::Value>(l).expect("a JSON line");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn exec_and_exit_reach_the_collector_over_grpc() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    exec_and_exit_arrive("grpc", |c| c.grpc);
}

#[test]
fn exec_and_exit_reach_the_collector_over_http() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    exec_and_exit_arrive("http", |c| c.http);
}

/// The distinct markers `prefix-<i>` the collector received.
fn markers_seen(c: &Collector, prefix: &str, n: usize) -> BTreeSet<usize> {
    let text = c.text();
    (0..n)
        .filter(|i| text.contains(&format!("Str(/bin/echo), Str({prefix}-{i}))")))
        .collect()
}

#[test]
fn a_collector_restart_loses_nothing_beyond_what_is_counted() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut collector = Collector::start();
    let daemon = Daemon::start();
    let w = Workload::new();
    w.map_into(&daemon);
    let exporter = Exporter::start(
        &daemon.socket,
        &[
            "--pod",
            &w.pod,
            "--type",
            "exec",
            "--otlp-endpoint",
            &format!("127.0.0.1:{}", collector.grpc),
        ],
    );
    until_flowing(&w, &collector, "warmup");
    let prefix = unique_name("restart");
    const N: usize = 30;
    for i in 0..N {
        if i == 10 {
            collector.stop();
        }
        if i == 20 {
            collector.spawn();
        }
        w.run(&["/bin/echo", &format!("{prefix}-{i}")]);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everything sent or given up on: the last marker arrives (or the exporter gives up).
    let deadline = Instant::now() + Duration::from_secs(60);
    while markers_seen(&collector, &prefix, N).len() < N && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (counters, log) = exporter.terminate();
    let seen = markers_seen(&collector, &prefix, N);
    let missing = (N - seen.len()) as u64;
    assert!(
        missing <= counters["otlp.dropped"],
        "{missing} events lost but {counters:?} counted; seen {seen:?}\n{log}"
    );
    // The restart was felt: the exporter retried while the collector was away.
    assert!(counters["otlp.retried"] > 0, "{counters:?}\n{log}");
    // With the default retries (up to ~40 s), a 2 s restart loses nothing.
    assert_eq!(counters["otlp.dropped"], 0, "{counters:?}\n{log}");
    assert_eq!(seen.len(), N);
}

#[test]
fn a_podmapd_restart_is_bridged() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let collector = Collector::start();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("podmap.sock");
    let node = unique_name("node");
    let opts = DaemonOptions {
        socket: Some(socket.clone()),
        env: vec![("NODE_NAME".into(), node)],
        ..Default::default()
    };
    let w = Workload::new();
    let daemon = Daemon::start_with(opts.clone());
    w.map_into(&daemon);
    let exporter = Exporter::start(
        &socket,
        &[
            "--pod",
            &w.pod,
            "--type",
            "exec",
            "--otlp-endpoint",
            &format!("127.0.0.1:{}", collector.grpc),
        ],
    );
    until_flowing(&w, &collector, "before");
    drop(daemon);
    let daemon = Daemon::start_with(opts);
    w.map_into(&daemon);
    until_flowing(&w, &collector, "after");
    let (counters, log) = exporter.terminate();
    assert!(counters["reconnects"] >= 1, "{counters:?}\n{log}");
    assert_eq!(counters["otlp.dropped"], 0, "{counters:?}\n{log}");
}
