//! The README's first command, as a new user runs it: `scripts/run.sh` (and `scripts/run.sh
//! --host`) streams events until Ctrl-C, then leaves nothing behind and exits 0. The script
//! installs, builds in release and then execs `target/release/podmap-demo "$@"`; these tests run
//! the same binary of the current build with exactly those arguments, in its own process group,
//! and interrupt it as a terminal's Ctrl-C does (SIGINT to the whole group). Runs as root.
//!
//! Everything the demo makes lands under a private TMPDIR (containerd's work dir, podmapd's
//! directory, the socket), so what is left behind can be found exactly: processes still
//! carrying that TMPDIR, cgroups and pins named after the demo's pid, shim sockets that were
//! not there before, and files in the directory.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use podmap_conformance::containerd::teardown;

/// Starting containerd with its images and a pod takes seconds; a busy 2-core machine more.
const START: Duration = Duration::from_secs(240);
/// Teardown after Ctrl-C: the pod's containers, containerd, shims, podmapd.
const STOP: Duration = Duration::from_secs(120);
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// One demo at a time: new shim sockets in the host-wide /run/containerd/s are counted as the
/// running demo's leftovers.
static ONE_DEMO: Mutex<()> = Mutex::new(());

/// The workspace root: where a user runs `scripts/run.sh` from (the script cds there).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn run_sh_execs_the_demo_with_its_own_arguments() {
    // What the tests below stand for: the script's last step is this exec, with "$@" untouched.
    let script = std::fs::read_to_string(workspace().join("scripts/run.sh")).unwrap();
    let last = script
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap();
    assert_eq!(last, r#"exec target/release/podmap-demo "$@""#);
}

/// A binary the demo needs that is missing (or stale) is a one-line error before anything starts:
/// no panic, nothing left behind. No root needed: it stops before the first privileged step.
#[test]
fn a_missing_binary_is_said_before_the_demo_starts_anything() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("demo/podmap.sock");
    // (arguments, binaries present, the one the error names): each mode's own list.
    let cases: [(&[&str], &[&str], &str); 4] = [
        (&["--host"], &[], "podmapd"),
        (&[], &[], "podmapd"),
        (&[], &["podmapd", "podmap"], "podmap-nri"),
        (
            &["--pure-cgroup2"],
            &["podmapd", "podmap", "podmap-nri"],
            "podmap-test-runc",
        ),
    ];
    for (args, present, missing) in cases {
        let bins = tempfile::tempdir().unwrap();
        for name in present {
            std::fs::write(bins.path().join(name), "").unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_podmap-demo"))
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .env("PODMAP_BIN_DIR", bins.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let want = format!(
            "podmap-demo: {}/{missing} is missing",
            bins.path().display()
        );
        assert!(stderr.starts_with(&want), "{args:?}: {stderr}");
        assert!(
            !socket.parent().unwrap().exists(),
            "{args:?}: the socket's directory was made"
        );
    }
}

#[test]
fn demo_pod_streams_until_ctrl_c_then_leaves_nothing() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    demo_pod(&[], "containerd 1.7.");
}

#[test]
fn demo_pod_on_containerd_2_1_streams_until_ctrl_c_then_leaves_nothing() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    demo_pod(&["--containerd", "2.1"], "containerd 2.1.");
}

/// The demo pod's run, with `args`, on the containerd that stderr names as `runtime`.
fn demo_pod(args: &[&str], runtime: &str) {
    let mut demo = Demo::start(args);
    let lines = demo.stdout_until(START, 3, |l| {
        l.split_whitespace()
            .nth(2)
            .is_some_and(|who| who.starts_with("demo/web-7d9c/"))
    });
    // The hints on stderr (printed once both containers run) work as printed, from where the
    // user started the demo, and reach the demo's own podmapd: its table lists the pod's
    // containers.
    demo.wait_hints(START);
    let hints = demo.hints();
    assert_eq!(hints.len(), 2, "stderr: {}", demo.stderr_text());
    let containers = hints.iter().find(|h| h.contains(" containers ")).unwrap();
    let table = run_hint(containers);
    assert!(
        table.contains("web-7d9c") && table.contains("log-shipper"),
        "`{containers}` printed:\n{table}"
    );
    let status = run_hint(hints.iter().find(|h| h.contains(" status ")).unwrap());
    assert_status_of_this_host(&status);
    let stderr = demo.stderr_text();
    assert!(stderr.contains(runtime), "not on {runtime}: {stderr}");

    let outcome = demo.interrupt();
    outcome.assert_clean(&lines);
}

/// The demo's status names this host as its node and counts no client error (the demo's own
/// readiness probe once showed as one).
fn assert_status_of_this_host(status: &str) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no {name:?} in status:\n{status}"))
            .to_string()
    };
    assert_eq!(field("node "), host.trim(), "{status}");
    assert_eq!(field("client errors"), "0", "{status}");
}

#[test]
fn host_mode_streams_until_ctrl_c_then_leaves_nothing() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut demo = Demo::start(&["--host"]);
    demo.wait_hints(START);
    let marker = format!("podmap-first-run-{}", std::process::id());
    // The host's own execs, made until three of their lines have been printed.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let m = marker.clone();
    let maker = std::thread::spawn(move || {
        while stop_rx.try_recv().is_err() {
            let _ = Command::new("/bin/echo")
                .arg(&m)
                .stdout(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let lines = demo.stdout_until(START, 3, |l| {
        l.split_whitespace().nth(2) == Some("host") && l.contains(&marker)
    });
    let _ = stop_tx.send(());
    maker.join().unwrap();
    let status = run_hint(
        demo.hints()
            .iter()
            .find(|h| h.contains(" status "))
            .unwrap(),
    );
    assert_status_of_this_host(&status);

    let outcome = demo.interrupt();
    outcome.assert_clean(&lines);
}

/// Runs a printed hint command as a user would type it, from the workspace root.
fn run_hint(hint: &str) -> String {
    let argv: Vec<&str> = hint.split_whitespace().collect();
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| panic!("running the hint `{hint}`: {e}"));
    assert!(
        out.status.success(),
        "the hint `{hint}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The demo in its own process group and TMPDIR; torn down by force on drop if it is still
/// there (a failed assertion), so nothing leaks into the next test.
struct Demo {
    _one: MutexGuard<'static, ()>,
    child: Option<Child>,
    pid: u32,
    tmp: tempfile::TempDir,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
    shims_before: BTreeSet<PathBuf>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        // A failed test poisons the lock; the next one still runs.
        let one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::Builder::new()
            .prefix("podmap-first-run-")
            .tempdir()
            .unwrap();
        let shims_before = dir_entries(Path::new(SHIM_SOCKETS));
        let mut child = Command::new(env!("CARGO_BIN_EXE_podmap-demo"))
            .args(args)
            .current_dir(workspace())
            .env("TMPDIR", tmp.path())
            // Private, so a demo a developer runs beside the suite is never in the way.
            .env("PODMAP_DEMO_SOCKET", tmp.path().join("run/podmap.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, as a shell's job: the terminal's Ctrl-C goes to the whole group.
            .process_group(0)
            .spawn()
            .expect("starting podmap-demo");
        let pid = child.id();
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Demo {
            _one: one,
            child: Some(child),
            pid,
            tmp,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
            shims_before,
        }
    }

    fn drain_stderr(&mut self) {
        while let Ok(l) = self.stderr.try_recv() {
            self.stderr_seen.push(l);
        }
    }

    fn stderr_text(&mut self) -> String {
        self.drain_stderr();
        self.stderr_seen.join("\n")
    }

    /// Reads stdout until `n` lines satisfy `pred`; returns them.
    fn stdout_until(
        &mut self,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = podmap_conformance::deadline::after(timeout);
        let mut hits = Vec::new();
        let mut seen = Vec::new();
        while hits.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.exited() {
                panic!(
                    "{} of {n} event lines; stdout:\n{}\nstderr:\n{}",
                    hits.len(),
                    seen.join("\n"),
                    self.stderr_text()
                );
            }
            if let Ok(l) = self
                .stdout
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                if pred(&l) {
                    hits.push(l.clone());
                }
                seen.push(l);
            }
        }
        hits
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The commands the demo printed for another shell.
    fn hints(&mut self) -> Vec<String> {
        self.drain_stderr();
        self.stderr_seen
            .iter()
            .filter_map(|l| {
                l.split_once("in another shell: ")
                    .map(|(_, c)| c.to_string())
            })
            .collect()
    }

    fn wait_hints(&mut self, timeout: Duration) {
        let deadline = podmap_conformance::deadline::after(timeout);
        while self.hints().len() < 2 {
            assert!(
                Instant::now() < deadline && !self.exited(),
                "no hints printed; stderr:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ctrl-C as a terminal sends it, then waits for the demo to finish its teardown.
    fn interrupt(mut self) -> Outcome {
        signal_group(self.pid, libc::SIGINT);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + STOP;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                signal_group(self.pid, libc::SIGKILL);
                let _ = child.wait();
                panic!(
                    "podmap-demo did not stop within {STOP:?} of Ctrl-C; stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipes close once every process holding them is gone.
        let rest: Vec<String> = self.stdout.iter().collect();
        let stderr = {
            let more: Vec<String> = self.stderr.iter().collect();
            self.stderr_seen.extend(more);
            self.stderr_seen.join("\n")
        };
        Outcome {
            status,
            stdout_tail: rest,
            stderr,
            left: self.leftovers(),
            demo: self,
        }
    }

    /// What the demo left on this machine.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let tmp = self.tmp.path().to_string_lossy().into_owned();
        let marker = format!("TMPDIR={tmp}");
        for pid in processes_mentioning(&tmp, &marker) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            left.push(format!(
                "process {pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
        let cgroup = format!("podmap-test-{}-", self.pid);
        for mount in teardown::cgroup_mounts() {
            for e in dir_entries(&mount) {
                if e.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&cgroup))
                {
                    left.push(format!("cgroup {}", e.display()));
                }
            }
        }
        let pins = format!("-{}-", self.pid);
        for e in dir_entries(Path::new("/sys/fs/bpf")) {
            if e.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(&pins))
            {
                left.push(format!("pin directory {}", e.display()));
            }
        }
        for s in dir_entries(Path::new(SHIM_SOCKETS)).difference(&self.shims_before) {
            left.push(format!("shim socket {}", s.display()));
        }
        for e in walk(self.tmp.path()) {
            left.push(format!("file {}", e.display()));
        }
        left
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // After a clean run there is nothing to do; after a failure, kill whatever is left and
        // clean up as a later run would, so nothing leaks into the next test.
        if let Some(mut child) = self.child.take() {
            signal_group(self.pid, libc::SIGKILL);
            let _ = child.wait();
        }
        let tmp = self.tmp.path().to_string_lossy().into_owned();
        for pid in processes_mentioning(&tmp, &format!("TMPDIR={tmp}")) {
            teardown::signal(pid, libc::SIGKILL);
        }
        teardown::sweep_stale_instances_in(self.tmp.path());
        let cgroup = format!("podmap-test-{}-", self.pid);
        let pins = format!("-{}-", self.pid);
        for mount in teardown::cgroup_mounts() {
            for e in dir_entries(&mount) {
                let name = e
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if name.starts_with(&cgroup) {
                    teardown::remove_cgroup_tree(&name);
                }
            }
        }
        for e in dir_entries(Path::new("/sys/fs/bpf")) {
            if e.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(&pins))
            {
                let _ = std::fs::remove_dir_all(&e);
            }
        }
    }
}

struct Outcome {
    status: ExitStatus,
    stdout_tail: Vec<String>,
    stderr: String,
    left: Vec<String>,
    // Kept so its Drop cleans up after a failed assertion here.
    #[allow(dead_code)]
    demo: Demo,
}

impl Outcome {
    fn assert_clean(&self, events: &[String]) {
        let all = format!(
            "events:\n{}\nstdout after Ctrl-C:\n{}\nstderr:\n{}",
            events.join("\n"),
            self.stdout_tail.join("\n"),
            self.stderr
        );
        assert_eq!(
            self.status.code(),
            Some(0),
            "exit status {}; {all}",
            self.status
        );
        assert!(!self.stderr.contains("panicked"), "a panic; {all}");
        assert!(self.left.is_empty(), "left behind: {:#?}\n{all}", self.left);
    }
}

fn signal_group(pgid: u32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory effects.
    unsafe { libc::kill(-(pgid as i32), sig) };
}

/// Forwards a pipe's lines to a channel, from a thread that ends when the pipe closes.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(pipe).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn dir_entries(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Every file and directory below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in dir_entries(&d) {
            if e.is_dir() && !e.is_symlink() {
                stack.push(e.clone());
            }
            out.push(e);
        }
    }
    out
}

/// Processes whose command line mentions `path` or whose environment holds `env`.
fn processes_mentioning(path: &str, env: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(path)
                || environ.split(|&b| b == 0).any(|v| v == env.as_bytes())
        })
        .collect()
}
