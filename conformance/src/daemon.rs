//! Fixtures for tests that run the real podmapd against the kernel: a daemon on private pins,
//! socket and cgroups, killed and cleaned up on drop (even when the test fails), an event stream
//! reader, and processes started inside a given cgroup.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podmap_bpf::testing::{unique_name, PinDir};
use serde_json::Value;

pub const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// The host's cgroup2 mount (hybrid: /sys/fs/cgroup/unified; pure v2: /sys/fs/cgroup).
pub fn cgroup2_mount() -> PathBuf {
    if Path::new(UNIFIED).join("cgroup.procs").exists() {
        PathBuf::from(UNIFIED)
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub pins: PinDir,
    pub node: String,
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Run inside a private mount namespace with cgroup2 mounted at /sys/fs/cgroup.
    pub pure_cgroup2: bool,
    /// Share pins with runtime plugins started elsewhere (default: a private pin dir).
    pub pins: Option<PathBuf>,
    /// Run inside a private mount namespace whose /sys/fs/bpf is a read-only tmpfs, as on a host where
    /// nothing mounted bpffs yet (podmapd must mount it; its pins vanish with the namespace).
    /// Not with `pure_cgroup2`.
    pub bpffs_unmounted: bool,
    /// Extra environment, e.g. PODMAP_GRACE.
    pub env: Vec<(String, String)>,
    /// The socket's path (default: `podmap.sock` in the daemon's private temporary directory).
    pub socket: Option<PathBuf>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(DaemonOptions::default())
    }

    pub fn start_with(opts: DaemonOptions) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let socket = opts
            .socket
            .clone()
            .unwrap_or_else(|| tmp.path().join("podmap.sock"));
        let log = tmp.path().join("podmapd.log");
        let pins = match &opts.pins {
            Some(p) => PinDir {
                path: p.clone(),
                keep: true,
            },
            None => PinDir::new("podmap-test-daemon"),
        };
        // A name of the test's own unless the caller gives one (the demo gives the host's).
        let node = opts
            .env
            .iter()
            .find(|(k, _)| k == "NODE_NAME")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| unique_name("node"));
        let exe = crate::bins::path("podmapd");
        let mut cmd = if opts.bpffs_unmounted {
            assert!(!opts.pure_cgroup2, "one private mount namespace at a time");
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"])
                .arg("mount -t tmpfs -o ro podmap-not-bpffs /sys/fs/bpf && exec \"$@\"")
                .arg("sh")
                .arg(&exe);
            c
        } else {
            crate::oci::Cgroups::pure_or_host(opts.pure_cgroup2).command(&exe)
        };
        let logf = std::fs::File::create(&log).unwrap();
        cmd.env("PODMAP_SOCKET", &socket)
            .env("PODMAP_BPFFS_DIR", &pins.path)
            // Never the host's /etc/podmap/policies: a test sets its own (opts.env wins).
            .env("PODMAP_POLICY_DIR", tmp.path().join("policies"))
            // Nor a real cluster when the suite itself runs in a pod: a test passes a kubeconfig.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("PODMAP_METRICS_ADDR", "off")
            .env("NODE_NAME", &node)
            .env("PODMAP_LOG", "debug")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let child = cmd.spawn().expect("start podmapd");
        let d = Daemon {
            child,
            socket,
            pins,
            node,
            log,
            _tmp: tmp,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            // A real request: a bare connect-and-close counts as a client error in podmapd's
            // status, which the demo shows to users.
            if self.try_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("podmapd did not start; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one request line and returns the connection's reader. A connection podmapd closed
    /// at once (over its caps, past the bound on telling why) is returned too: its reader sees
    /// the end.
    pub fn request(&self, line: &str) -> BufReader<UnixStream> {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        let _ = s
            .write_all(line.as_bytes())
            .and_then(|()| s.write_all(b"\n"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        BufReader::new(s)
    }

    fn try_status(&self) -> Option<Value> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.write_all(b"{\"status\": {}}\n").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    pub fn status(&self) -> Value {
        let mut r = self.request(r#"{"status": {}}"#);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// The mapping table (`{"containers": {}}`), one JSON row per mapped cgroup.
    pub fn containers(&self) -> Vec<Value> {
        let mut r = self.request(r#"{"containers": {}}"#);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        match serde_json::from_str(&line) {
            Ok(Value::Array(rows)) => rows,
            other => panic!("containers reply {line:?}: {other:?}"),
        }
    }

    /// Waits until podmapd has loaded `n` policies, or panics with its status after 30 s.
    pub fn wait_policies(&self, n: usize) {
        self.wait_status(&format!("{n} policies loaded"), |st| {
            st["policies"]["loaded"].as_array().map_or(0, Vec::len) == n
        });
    }

    /// Waits until podmapd's status satisfies `pred` and returns it, or panics after 30 s naming
    /// `what` and showing the last status.
    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status();
            if pred(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "podmapd never reached: {what}; status: {st:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens an event stream and waits until it is subscribed (a status round-trip after the
    /// subscription proves the server has processed it).
    pub fn events(&self, filter: &str) -> EventStream {
        let r = self.request(&format!(r#"{{"events": {filter}}}"#));
        // The subscription is made before the server reads anything else; give it a moment and
        // then prove the daemon is serving.
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.status();
        EventStream { r }
    }
}

impl Daemon {
    /// `podmap events -o json` itself, on this daemon's socket, with `args` (its filters),
    /// returned once podmapd counts it as a connected client: what a user of the client sees.
    /// Killed on drop.
    pub fn client_events(&self, args: &[&str]) -> ClientEvents {
        let connected = |st: &Value| st["clients_connected"].as_u64().unwrap_or(0);
        // This test's own clients only: other streams of the test are counted too.
        let before = connected(&self.status());
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let mut child = Command::new(crate::bins::path("podmap"))
            .args(["events", "-o", "json", "--socket"])
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopen"))
            .spawn()
            .expect("start `podmap events`");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut client = ClientEvents {
            child,
            lines,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while connected(&self.status()) <= before {
            if let Ok(Some(status)) = client.child.try_wait() {
                panic!(
                    "podmap events {args:?} exited {status}: {}",
                    client.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "podmap events {args:?} never subscribed: {}",
                client.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        client
    }
}

/// A running `podmap events -o json` ([`Daemon::client_events`]): its lines, as events.
pub struct ClientEvents {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: tempfile::NamedTempFile,
}

impl ClientEvents {
    /// Reads events until `pred` matches one, within `timeout`; returns every event read.
    /// Panics on timeout, or when the client ends, with what it said.
    pub fn until(&mut self, timeout: Duration, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let deadline = crate::deadline::after(timeout);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                    "podmap events: no matching event within {timeout:?}; saw {} events, \
                     last: {:?}",
                    seen.len(),
                    seen.last()
                ),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "podmap events ended ({:?}): {}; saw {seen:?}",
                    self.child.try_wait(),
                    self.stderr_text()
                ),
            };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("podmap events printed {line:?}: {e}"));
            let hit = pred(&v);
            seen.push(v);
            if hit {
                return seen;
            }
        }
    }

    /// What the client wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for ClientEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        crate::containerd::teardown::terminate(&mut self.child, Duration::from_secs(10));
    }
}

pub struct EventStream {
    r: BufReader<UnixStream>,
}

impl EventStream {
    /// Reads events until `pred` matches one, within `timeout`; returns every event read.
    pub fn until(&mut self, timeout: Duration, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let deadline = crate::deadline::after(timeout);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no matching event within {timeout:?}; saw {} events, last: {:?}",
                seen.len(),
                seen.last()
            );
            self.r.get_ref().set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => panic!("stream closed; saw {seen:?}"),
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) => panic!("read: {e}"),
            }
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
            assert!(v.get("error").is_none(), "server error: {v}");
            let hit = pred(&v);
            seen.push(v);
            if hit {
                return seen;
            }
        }
    }

    /// Runs `/bin/echo marker` in the cgroup at `cgroup_dir` and returns its exec event.
    pub fn echo_in(&mut self, cgroup_dir: &Path, marker: &str, timeout: Duration) -> Value {
        let (pid, _) = run_in_cgroup(cgroup_dir, &["/bin/echo", marker]);
        self.until(timeout, |v| {
            v["type"] == "exec"
                && v["process"]["pid"] == pid
                && v["process"]["binary"] == "/bin/echo"
        })
        .pop()
        .expect("until returns the matching event last")
    }

    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.r.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line),
            Err(_) => None,
        }
    }
}

/// Runs `argv` as a process that first moves itself into the cgroup at `cgroup_dir`, then execs:
/// the exec happens inside the cgroup. Returns the exec'd process's pid and its exit status.
pub fn run_in_cgroup(cgroup_dir: &Path, argv: &[&str]) -> (u32, std::process::ExitStatus) {
    let script = format!(
        "echo $$ > {}/cgroup.procs || exit 97; exec \"$@\"",
        cgroup_dir.display()
    );
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(argv)
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let status = child.wait().unwrap();
    assert_ne!(
        status.code(),
        Some(97),
        "could not move into {}",
        cgroup_dir.display()
    );
    (pid, status)
}

/// A kubeconfig at `dir/kubeconfig` for an API server at `url` (no credentials: the test API
/// server asks for none).
pub fn kubeconfig(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n"
        ),
    )
    .expect("writing a kubeconfig");
    path
}

pub fn find(events: &[Value], pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    events.iter().find(|v| pred(v))
}
