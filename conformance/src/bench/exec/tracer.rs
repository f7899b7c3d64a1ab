//! The tracers measured beside each other (podmapd with its client, bpftrace, execsnoop): start,
//! wait until attached, sample CPU and memory, stop.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::machine::BenchEnv;
use super::output::{lock, spawn_reader, LineFormat, OutputStats, StormId};
use super::prefill::NODE;
use super::processes::{Cgroup, Proc};
use super::setting::PodmapSetting;
use super::{
    check_interrupted, wait_for, TracerKind, ATTACH_TIMEOUT, BPFTRACE_PROGRAM, EXECSNOOP, POLL,
    QUIET, SETTLE,
};
use podmap_bpf::testing::PinDir;

/// A running tracer: its process (and podmapd's client), the threads reading their output,
/// and for podmapd its private socket directory and pin directory.
pub(super) struct Tracer {
    pub(super) kind: TracerKind,
    pub(super) client: Option<Proc>,
    /// podmapd's other clients (--clients), writing to /dev/null.
    pub(super) extra_clients: Vec<Proc>,
    pub(super) main: Proc,
    pub(super) out: Arc<OutputStats>,
    pub(super) readers: Vec<JoinHandle<()>>,
    pub(super) socket: Option<PathBuf>,
    pub(super) log: Option<PathBuf>,
    // Removed after the processes have stopped (Drop stops them first).
    pub(super) _pins: Option<PinDir>,
    pub(super) _dir: Option<tempfile::TempDir>,
}

/// CPU used by a tracer so far (microseconds), and the event lines it delivered so far.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuSample {
    pub(super) main: u64,
    pub(super) client: Option<u64>,
    pub(super) events: u64,
}

pub(super) enum Started {
    Running(Box<Tracer>),
    NotInstalled(String),
}

impl Tracer {
    pub(super) fn start(
        kind: TracerKind,
        setting: &PodmapSetting,
        env: &BenchEnv,
        storm_cgroup: u64,
    ) -> anyhow::Result<Started> {
        let out = OutputStats::new(StormId {
            cgroup_id: storm_cgroup,
            binary: env.storm_binary.to_string_lossy().into_owned(),
            parent_pid: AtomicU32::new(0),
        });
        let tracer = match kind {
            TracerKind::None => bail!("no tracer to start"),
            TracerKind::Podmap => Self::start_podmap(env, setting, storm_cgroup, out)?,
            TracerKind::Bpftrace => {
                let Some(bin) = &env.bpftrace else {
                    return Ok(Started::NotInstalled("bpftrace not in PATH".into()));
                };
                let mut cmd = Command::new(bin);
                cmd.args(["-e", BPFTRACE_PROGRAM]);
                Self::start_peer(kind, env, cmd, LineFormat::Bpftrace, out)?
            }
            TracerKind::Execsnoop => {
                let Some(bin) = &env.execsnoop else {
                    return Ok(Started::NotInstalled(format!("{EXECSNOOP} not found")));
                };
                let Some(stdbuf) = &env.stdbuf else {
                    bail!("stdbuf (coreutils) not in PATH");
                };
                // execsnoop's stdio is fully buffered into a pipe; line buffering makes it print
                // each exec as it would to a terminal (and as bpftrace does by default).
                let mut cmd = Command::new(stdbuf);
                cmd.arg("-oL").arg(bin);
                Self::start_peer(kind, env, cmd, LineFormat::Execsnoop, out)?
            }
        };
        let mut tracer = Box::new(tracer);
        tracer.wait_sees_execs()?;
        thread::sleep(SETTLE);
        Ok(Started::Running(tracer))
    }

    pub(super) fn start_peer(
        kind: TracerKind,
        env: &BenchEnv,
        mut cmd: Command,
        format: LineFormat,
        out: Arc<OutputStats>,
    ) -> anyhow::Result<Tracer> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cgroup = Cgroup::new(&env.cgroup2, &format!("podmap-bench-{}", kind.label()))?;
        let mut main = Proc::spawn(kind.label(), &mut cmd, cgroup)?;
        let readers = take_output(&mut main, format, &out);
        Ok(Tracer {
            kind,
            client: None,
            extra_clients: vec![],
            main,
            out,
            readers,
            socket: None,
            log: None,
            _pins: None,
            _dir: None,
        })
    }

    pub(super) fn start_podmap(
        env: &BenchEnv,
        setting: &PodmapSetting,
        storm_cgroup: u64,
        out: Arc<OutputStats>,
    ) -> anyhow::Result<Tracer> {
        let prefill = match setting.prefill {
            0 => None,
            n => Some(
                env.prefills
                    .iter()
                    .find(|p| p.pods == n)
                    .context("no API server prepared for this prefill")?,
            ),
        };
        let dir = tempfile::Builder::new()
            .prefix("podmap-bench-")
            .tempdir()
            .context("creating a directory for podmapd's socket and log")?;
        let socket = dir.path().join("podmapd.sock");
        let log_path = dir.path().join("podmapd.log");
        let log = File::create(&log_path).context("creating podmapd's log")?;
        let pins = PinDir::new("podmap-bench");

        let mut cmd = Command::new(&env.podmapd);
        cmd.env("PODMAP_SOCKET", &socket)
            .env("PODMAP_BPFFS_DIR", &pins.path)
            .env("PODMAP_METRICS_ADDR", "off")
            .env("NODE_NAME", NODE)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("podmapd's log")?)
            .stderr(log);
        if let Some(p) = prefill {
            // The pods alone: no PodPolicy mirror writing into a policy directory.
            cmd.env("PODMAP_KUBECONFIG", &p.kubeconfig)
                .env("PODMAP_NO_POLICY_RESOURCES", "true")
                .env("PODMAP_POLICY_DIR", dir.path().join("policies"));
        }
        let cgroup = Cgroup::new(&env.cgroup2, "podmap-bench-podmapd")?;
        let daemon = Proc::spawn("podmapd", &mut cmd, cgroup)?;
        let mut tracer = Tracer {
            kind: TracerKind::Podmap,
            client: None,
            extra_clients: vec![],
            main: daemon,
            out,
            readers: vec![],
            socket: Some(socket.clone()),
            log: Some(log_path),
            _pins: Some(pins),
            _dir: Some(dir),
        };
        tracer.wait_podmapd_ready()?;
        if let Some(p) = prefill {
            let pins = tracer
                ._pins
                .as_ref()
                .expect("podmapd has pins")
                .path
                .clone();
            let store = tracer
                ._dir
                .as_ref()
                .expect("podmapd has a directory")
                .path()
                .join("store");
            p.write_records(&pins, &store, storm_cgroup)
                .with_context(|| format!("mapping {} containers", p.pods))?;
            let want = u64::from(p.pods);
            let waited = wait_for(
                &format!("podmapd to cache {want} pods from {}", p.url()),
                ATTACH_TIMEOUT,
                || {
                    tracer.main.check_running()?;
                    let status = podmapd_status(&socket)?;
                    Ok(status["pods_cached"].as_u64() >= Some(want))
                },
            );
            waited.with_context(|| tracer.diagnostics())?;
        }

        let client_cmd = |stdout: Stdio| {
            let mut cmd = Command::new(&env.podmap);
            cmd.args(["events", "-o", "json", "--socket"]).arg(&socket);
            if let Some(types) = &env.podmap_types {
                cmd.args(["--type", types]);
            }
            cmd.stdin(Stdio::null())
                .stdout(stdout)
                .stderr(Stdio::piped());
            cmd
        };
        let cgroup = Cgroup::new(&env.cgroup2, "podmap-bench-client")?;
        let mut client = Proc::spawn("podmap events", &mut client_cmd(Stdio::piped()), cgroup)?;
        tracer.readers = take_output(&mut client, LineFormat::Podmap, &tracer.out);
        tracer.client = Some(client);
        for _ in 1..setting.clients {
            let cgroup = Cgroup::new(&env.cgroup2, "podmap-bench-client")?;
            let mut extra = Proc::spawn("podmap events", &mut client_cmd(Stdio::null()), cgroup)?;
            tracer.readers.extend(take_output(
                &mut extra,
                LineFormat::Diagnostics,
                &tracer.out,
            ));
            tracer.extra_clients.push(extra);
        }
        // Every client subscribed before the storm: the first proves it with the canary, the
        // others by podmapd's count.
        let want = u64::from(setting.clients);
        let waited = wait_for(
            &format!("{want} clients subscribed"),
            ATTACH_TIMEOUT,
            || {
                tracer.check_running()?;
                let status = podmapd_status(&socket)?;
                Ok(status["clients_connected"].as_u64() >= Some(want))
            },
        );
        waited.with_context(|| tracer.diagnostics())?;
        Ok(tracer)
    }

    pub(super) fn wait_podmapd_ready(&mut self) -> anyhow::Result<()> {
        let socket = self.socket.clone().expect("podmapd has a socket");
        let waited = wait_for("podmapd's status reply", ATTACH_TIMEOUT, || {
            self.main.check_running()?;
            Ok(podmapd_status(&socket).is_ok())
        });
        waited.with_context(|| self.diagnostics())
    }

    /// The tracer is ready when an exec the bench makes shows up in its output: attached,
    /// reading, and (for podmapd) the client subscribed. Canaries repeat until one is seen,
    /// since the ones before the attach are never reported.
    pub(super) fn wait_sees_execs(&mut self) -> anyhow::Result<()> {
        self.out.watch_pids.store(true, Ordering::Relaxed);
        let mut canaries = vec![];
        let mut last_canary = Instant::now() - Duration::from_secs(1);
        let waited = wait_for(
            &format!("{} to report an exec", self.kind.label()),
            ATTACH_TIMEOUT,
            || {
                self.check_running()?;
                let seen = lock(&self.out.seen_pids);
                if canaries.iter().any(|pid| seen.contains(pid)) {
                    return Ok(true);
                }
                drop(seen);
                if last_canary.elapsed() >= Duration::from_millis(200) {
                    canaries.push(canary_exec()?);
                    last_canary = Instant::now();
                }
                Ok(false)
            },
        );
        self.out.watch_pids.store(false, Ordering::Relaxed);
        lock(&self.out.seen_pids).clear();
        waited.with_context(|| self.diagnostics())
    }

    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        self.main.check_running()?;
        if let Some(c) = &mut self.client {
            c.check_running()?;
        }
        for c in &mut self.extra_clients {
            c.check_running()?;
        }
        Ok(())
    }

    /// The tracer's own last words, for an error message: podmapd's log, and the stderr of the
    /// process the bench reads (the podmap client, or the peer tracer itself).
    pub(super) fn diagnostics(&self) -> String {
        let mut text = format!("{} did not get ready", self.kind.label());
        let log = self.log.as_deref().map(|l| tail_of_file(l, 2048));
        if let Some(log) = log.filter(|l| !l.trim().is_empty()) {
            text += &format!("; podmapd's log ends:\n{}", log.trim_end());
        }
        let stderr = self.out.tail_text();
        if !stderr.is_empty() {
            let who = if self.client.is_some() {
                "podmap events"
            } else {
                self.kind.label()
            };
            text += &format!("\n{who} printed:\n{stderr}");
        }
        text
    }

    /// The tracer's own CPU over `window` with no storm, ms per second.
    pub(super) fn idle_cpu(&self, window: Duration) -> anyhow::Result<f64> {
        let before = self.main.cgroup.cpu_usec()?;
        thread::sleep(window);
        check_interrupted()?;
        let used = self.main.cgroup.cpu_usec()?.saturating_sub(before);
        Ok(used as f64 / 1000.0 / window.as_secs_f64())
    }

    pub(super) fn cpu(&self) -> anyhow::Result<CpuSample> {
        Ok(CpuSample {
            main: self.main.cgroup.cpu_usec()?,
            client: match &self.client {
                Some(c) => Some(c.cgroup.cpu_usec()?),
                None => None,
            },
            events: self.out.events.load(Ordering::Relaxed),
        })
    }

    /// Waits until every storm exec arrived, or until the output stopped growing; returns the
    /// CPU sample taken when the last storm exec was seen, so idle time after it is not billed.
    pub(super) fn wait_drained(&mut self, expected: u64) -> anyhow::Result<CpuSample> {
        let mut seen = self.out.storm_execs.load(Ordering::Relaxed);
        let mut at_last = self.cpu()?;
        let mut last_change = Instant::now();
        loop {
            check_interrupted()?;
            let now = self.out.storm_execs.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                at_last = self.cpu()?;
                last_change = Instant::now();
            }
            if seen >= expected || last_change.elapsed() >= QUIET {
                return Ok(at_last);
            }
            thread::sleep(POLL);
        }
    }

    /// Events the tracer reports lost: podmapd's ring-buffer drops and slow-client drops, the
    /// peers' "Lost N events".
    pub(super) fn lost(&self) -> anyhow::Result<u64> {
        match &self.socket {
            Some(socket) => {
                let status = podmapd_status(socket).context("podmapd's status after the storm")?;
                let get = |k: &str| status.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                Ok(get("events_lost_kernel") + get("events_lost_slow_clients"))
            }
            None => Ok(self.out.lost.load(Ordering::Relaxed)),
        }
    }

    /// Stops the client before the daemon, then joins the readers (their pipes are closed now).
    pub(super) fn stop(&mut self) {
        if let Some(c) = &mut self.client {
            c.stop();
        }
        for c in &mut self.extra_clients {
            c.stop();
        }
        self.main.stop();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) fn take_output(
    proc: &mut Proc,
    format: LineFormat,
    out: &Arc<OutputStats>,
) -> Vec<JoinHandle<()>> {
    let mut readers = vec![];
    if let Some(stdout) = proc.child.stdout.take() {
        readers.push(spawn_reader(stdout, format, out.clone()));
    }
    if let Some(stderr) = proc.child.stderr.take() {
        readers.push(spawn_reader(stderr, LineFormat::Diagnostics, out.clone()));
    }
    readers
}

/// One exec no tracer mistakes for the storm's (`/bin/sh -c :`, outside the storm cgroup).
pub(super) fn canary_exec() -> anyhow::Result<u32> {
    let mut child = Command::new("/bin/sh")
        .args(["-c", ":"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("running the canary /bin/sh -c :")?;
    let pid = child.id();
    child.wait().context("waiting for the canary")?;
    Ok(pid)
}

pub(super) fn podmapd_status(socket: &Path) -> anyhow::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = serde_json::to_vec(&podmap_proto::Request::Status(Default::default()))?;
    request.push(b'\n');
    stream.write_all(&request)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    serde_json::from_slice(&reply).context("podmapd's status reply")
}

pub(super) fn tail_of_file(path: &Path, bytes: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).into_owned()
}
