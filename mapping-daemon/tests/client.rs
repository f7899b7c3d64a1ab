//! The `podmap` client end to end: the real podmap binary against a real podmapd on private pins
//! and socket, with execs in private cgroups mapped as pods' containers. Runs as root.
//!
//! Checked: `podmap events --reconnect` bridges a podmapd stop and restart with a notice on
//! stderr, and without it the client ends when podmapd goes; events saved as JSON lines and
//! read back (`--input`, stdin redirected from the file, a pipe with `--input -`) give, filter for filter,
//! exactly the lines the live stream gave, bad lines counted on stderr; `--privileged` shows a
//! root exec and not one after `setpriv` dropped to an ordinary user, and the compact form marks
//! it; `--color` gives escape sequences only when it should.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podmap_bpf::testing::{unique_name, TestCgroup};
use podmap_bpf::{ContainerId, ContainerMeta, PodUid, SharedMaps};
use podmap_conformance::daemon::{cgroup2_mount, run_in_cgroup, Daemon, DaemonOptions};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// The podmap binary of this build, with nothing from the caller's environment that would
/// change what it reads or how it prints.
fn podmap() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podmap"));
    cmd.env_remove("PODMAP_SOCKET").env_remove("NO_COLOR");
    cmd
}

/// A `podmap events` process on `socket`, its stdout collected line by line; killed on drop.
struct Client {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Client {
    fn start(socket: &Path, args: &[&str]) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        let mut child = podmap()
            .arg("--socket")
            .arg(socket)
            .arg("events")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting podmap events");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        Client {
            child,
            lines,
            stderr,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn has(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds, or panics after [`WAIT`] with `what` and `context()`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "never happened: {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private cgroup mapped as container `app` of pod `pod` in `namespace`, as a runtime plugin
/// maps one; removed on drop.
struct Workload {
    cg: TestCgroup,
    namespace: &'static str,
    pod: String,
    labels: Vec<(String, String)>,
    privileged: bool,
}

impl Workload {
    fn new(namespace: &'static str, labels: &[(&str, &str)], privileged: bool) -> Workload {
        Workload {
            cg: TestCgroup::new(&cgroup2_mount(), "podmap-test-client").unwrap(),
            namespace,
            pod: unique_name("pod"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            privileged,
        }
    }

    /// Writes the container record into `daemon`'s maps.
    fn map_into(&self, daemon: &Daemon) {
        let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
        let meta = ContainerMeta {
            container_id: ContainerId(format!("{:064x}", self.cg.id())),
            name: "app".into(),
            pod_uid: Some(PodUid(unique_name("uid"))),
            pod_name: self.pod.clone(),
            namespace: self.namespace.into(),
            labels: self.labels.iter().cloned().collect(),
            image: "registry.local/demo/app:1.0".into(),
            runtime: "test".into(),
            privileged: Some(self.privileged),
            ..Default::default()
        };
        self.cg.map_record(&mut maps, &meta).unwrap();
    }

    /// Runs `argv` in the container's cgroup as root (as this test runs).
    fn run(&self, argv: &[&str]) {
        run_in_cgroup(&self.cg.path(), argv);
    }

    /// Runs `argv` in the container's cgroup as uid and gid 1000, with no capabilities left:
    /// an ordinary user.
    fn run_unprivileged(&self, argv: &[&str]) {
        let mut full = vec![
            "setpriv",
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--inh-caps=-all",
        ];
        full.extend_from_slice(argv);
        let (_, status) = run_in_cgroup(&self.cg.path(), &full);
        assert!(status.success(), "{full:?}: {status}");
    }
}

/// Runs `/bin/echo <prefix>-<n>` in each workload until every client has printed a line with
/// such a marker: they are then subscribed (a subscription races the first execs).
fn until_flowing(workloads: &[&Workload], clients: &[&Client], prefix: &str) {
    let deadline = Instant::now() + WAIT;
    for n in 0.. {
        let marker = format!("{prefix}-{n}");
        for w in workloads {
            w.run(&["/bin/echo", &marker]);
        }
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if clients.iter().all(|c| c.has(&format!("{prefix}-"))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            Instant::now() < deadline,
            "not every client printed a {prefix} event; stderr: {:?}",
            clients.iter().map(|c| c.stderr()).collect::<Vec<_>>()
        );
    }
}

fn daemon_options(socket: &Path) -> DaemonOptions {
    DaemonOptions {
        socket: Some(socket.to_path_buf()),
        env: vec![("NODE_NAME".into(), unique_name("node"))],
        ..Default::default()
    }
}

#[test]
fn reconnect_bridges_a_podmapd_restart_with_a_notice() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("podmap.sock");
    let opts = daemon_options(&socket);
    let w = Workload::new("demo", &[("app", "web")], false);
    let daemon = Daemon::start_with(opts.clone());
    w.map_into(&daemon);
    let mut client = Client::start(
        &socket,
        &[
            "--reconnect",
            "-o",
            "json",
            "--pod",
            &w.pod,
            "--type",
            "exec",
        ],
    );
    until_flowing(&[&w], &[&client], "before");

    drop(daemon);
    eventually(
        "a notice that podmapd was lost",
        || client.stderr().contains("podmap: lost podmapd ("),
        || client.stderr(),
    );
    assert!(client.running(), "the client ended:\n{}", client.stderr());

    let daemon = Daemon::start_with(opts);
    w.map_into(&daemon);
    until_flowing(&[&w], &[&client], "after");
    eventually(
        "a notice that podmapd is back",
        || {
            client.stderr().contains(&format!(
                "podmap: reconnected to podmapd at {}",
                socket.display()
            ))
        },
        || client.stderr(),
    );
    assert!(client.running());

    // Events of both podmapds, each the JSON line podmapd sent, none doubled or broken.
    let lines = client.lines();
    let markers: std::collections::BTreeSet<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_eq!(v["type"], "exec", "{l}");
            assert_eq!(v["pod"]["name"], w.pod.as_str(), "{l}");
            v["process"]["args"][0].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        markers.iter().any(|a| a.starts_with("before-")),
        "{lines:#?}"
    );
    assert!(
        markers.iter().any(|a| a.starts_with("after-")),
        "{lines:#?}"
    );
    assert_eq!(
        markers.len(),
        lines.len(),
        "an event printed twice: {lines:#?}"
    );
    let notices = client.stderr();
    assert_eq!(
        notices.matches("lost podmapd").count(),
        1,
        "one notice per loss, not per attempt:\n{notices}"
    );
    drop(daemon);
}

#[test]
fn without_reconnect_the_client_ends_when_podmapd_goes() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("podmap.sock");
    let w = Workload::new("demo", &[("app", "web")], false);
    let daemon = Daemon::start_with(daemon_options(&socket));
    w.map_into(&daemon);
    let mut client = Client::start(&socket, &["-o", "json", "--pod", &w.pod]);
    until_flowing(&[&w], &[&client], "before");
    drop(daemon);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = client.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the client did not end:\n{}",
            client.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{}", client.stderr());
    let stderr = client.stderr();
    assert!(
        stderr.contains("podmap: podmapd closed the event stream")
            || stderr.contains("podmap: reading events from podmapd"),
        "{stderr}"
    );
    assert!(!stderr.contains("reconnect"), "{stderr}");
}

/// Runs `podmap events ARGS` over saved events: from `--input PATH`, from stdin redirected
/// from the file, and from a pipe (`--input -`). All three must agree; returns stdout and stderr
/// of the `--input` run, and checks that each names its source in its note on bad lines.
fn read_saved(saved: &Path, args: &[&str]) -> (String, String) {
    let text = |o: &Output| {
        assert!(o.status.success(), "{args:?}: {o:?}");
        (
            String::from_utf8(o.stdout.clone()).unwrap(),
            String::from_utf8(o.stderr.clone()).unwrap(),
        )
    };
    let (by_input, input_err) = text(
        &podmap()
            .arg("events")
            .args(args)
            .arg("--input")
            .arg(saved)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    let (redirected, redirect_err) = text(
        &podmap()
            .arg("events")
            .args(args)
            .stdin(std::fs::File::open(saved).unwrap())
            .output()
            .unwrap(),
    );
    let mut child = podmap()
        .arg("events")
        .args(args)
        .args(["--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let content = std::fs::read(saved).unwrap();
    let writer = std::thread::spawn(move || {
        // In pieces, so that lines arrive cut across reads as from a real pipeline.
        for piece in content.chunks(700) {
            if pipe.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let (piped, pipe_err) = text(&child.wait_with_output().unwrap());
    writer.join().unwrap();
    assert_eq!(redirected, by_input, "{args:?}: stdin from the file");
    assert_eq!(piped, by_input, "{args:?}: stdin from a pipe");
    for (err, name) in [
        (&input_err, saved.display().to_string()),
        (&redirect_err, "stdin".to_string()),
        (&pipe_err, "stdin".to_string()),
    ] {
        assert!(
            err.contains(&format!(
                "podmap: 2 lines of {name} were not events and were skipped"
            )),
            "{args:?}: {err}"
        );
    }
    (by_input, input_err)
}

/// The lines of `lines` about the scenario run (`marker` among the process's arguments).
fn of_scenario(lines: &[String], marker: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains(marker))
        .cloned()
        .collect()
}

#[test]
fn saved_events_read_back_give_the_live_streams_lines_and_privileged_keeps_root() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let run = unique_name("run");
    let label = format!("run={run}");
    let web = Workload::new("prod", &[("app", "web"), ("run", &run)], false);
    let db = Workload::new("dev", &[("app", "db"), ("run", &run)], true);
    let daemon = Daemon::start();
    web.map_into(&daemon);
    db.map_into(&daemon);

    // One live client per filter set, each also limited to this test's pods.
    let filters: [&[&str]; 8] = [
        &[],
        &["-n", "prod"],
        &["-l", "app=db"],
        &["-l", "app in (web,db),app!=db", "--type", "exit"],
        &["--binary", "/echo$"],
        &["--privileged"],
        &["-n", "dev", "--privileged"],
        &["-n", "prod", "-n", "dev", "--privileged", "--type", "exec"],
    ];
    let json_args = |f: &[&str]| {
        let mut a = vec!["-o", "json", "--label", &label];
        a.extend_from_slice(f);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let compact_args: Vec<String> = ["-o", "compact", "--color", "never", "--label", &label]
        .into_iter()
        .chain(["--privileged"])
        .map(String::from)
        .collect();
    let live: Vec<Client> = filters
        .iter()
        .map(|f| Client::start(&daemon.socket, &as_strs(&json_args(f))))
        .collect();
    let compact = Client::start(&daemon.socket, &as_strs(&compact_args));
    let all: Vec<&Client> = live.iter().chain([&compact]).collect();
    until_flowing(&[&web, &db], &all, "warm");

    // The scenario: root and ordinary-user execs in both pods, a failed exit among them.
    let marker = unique_name("scn");
    let m = |what: &str| format!("{marker}-{what}");
    web.run(&["/bin/echo", &m("web-root")]);
    web.run_unprivileged(&["/bin/echo", &m("web-user")]);
    web.run(&["/bin/sh", "-c", "exit 3", &m("web-fail")]);
    db.run(&["/bin/echo", &m("db-root")]);
    db.run_unprivileged(&["/bin/true", &m("db-user")]);
    // Delivered in order: once every client has an event of this last exec, it has all the
    // scenario's events it selects.
    let end = unique_name("end");
    for w in [&web, &db] {
        w.run(&["/bin/echo", &end]);
    }
    eventually(
        "every client printed the end marker",
        || all.iter().all(|c| c.has(&end)),
        || format!("{:?}", all.iter().map(|c| c.stderr()).collect::<Vec<_>>()),
    );

    // Saved: the unfiltered stream's lines of the scenario, with two lines that are not events.
    let saved_lines = of_scenario(&live[0].lines(), &marker);
    let events: Vec<Value> = saved_lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let arg_of = |v: &Value| v["process"]["args"].to_string();
    let find = |kind: &str, binary: &str, what: &str| {
        events.iter().find(|v| {
            v["type"] == kind && v["process"]["binary"] == binary && arg_of(v).contains(&m(what))
        })
    };
    for (binary, what) in [
        ("/bin/echo", "web-root"),
        ("/bin/echo", "web-user"),
        ("/bin/sh", "web-fail"),
        ("/bin/echo", "db-root"),
        ("/bin/true", "db-user"),
    ] {
        assert!(
            find("exec", binary, what).is_some() && find("exit", binary, what).is_some(),
            "no exec and exit of {binary} {what}: {saved_lines:#?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.json");
    let mut content = String::new();
    for (i, line) in saved_lines.iter().enumerate() {
        content.push_str(line);
        content.push('\n');
        if i == 1 {
            content.push_str("not an event\n\n");
        }
    }
    // A last line cut short, as a crash mid-write leaves it.
    let first = &saved_lines[0];
    let half = (0..=first.len() / 2)
        .rev()
        .find(|&i| first.is_char_boundary(i))
        .unwrap();
    content.push_str(&first[..half]);
    std::fs::write(&saved, &content).unwrap();

    // Filter for filter, the saved events read back are the live stream's lines, byte for byte.
    for (f, client) in filters.iter().zip(&live) {
        let want = of_scenario(&client.lines(), &marker);
        let (got, _) = read_saved(&saved, &as_strs(&json_args(f)));
        assert_eq!(got.lines().collect::<Vec<_>>(), want, "filter {f:?}");
    }
    let selected = |i: usize| of_scenario(&live[i].lines(), &marker);
    assert!(selected(1)
        .iter()
        .all(|l| l.contains("\"namespace\":\"prod\"")));
    assert!(!selected(1).is_empty() && !selected(2).is_empty() && !selected(4).is_empty());
    // Each filter selects something, and only what it names: an empty selection would pass
    // the comparisons above whatever the filter did.
    assert!((0..filters.len()).all(|i| !selected(i).is_empty()));
    assert!(selected(3).iter().all(|l| l.contains("\"type\":\"exit\"")));

    // --privileged: the root execs and their exits, not those after setpriv. setpriv itself
    // ran as root before it dropped to the user, so its own exec is there.
    let privileged: Vec<Value> = selected(5)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |kind: &str, binary: &str, what: &str| {
        privileged.iter().any(|v| {
            v["type"] == kind && v["process"]["binary"] == binary && arg_of(v).contains(&m(what))
        })
    };
    for (binary, what) in [
        ("/bin/echo", "web-root"),
        ("/bin/sh", "web-fail"),
        ("/bin/echo", "db-root"),
    ] {
        assert!(
            has("exec", binary, what),
            "{binary} {what}: {privileged:#?}"
        );
        assert!(
            has("exit", binary, what),
            "{binary} {what}: {privileged:#?}"
        );
    }
    assert!(
        has("exec", "/usr/bin/setpriv", "web-user"),
        "{privileged:#?}"
    );
    for (binary, what) in [("/bin/echo", "web-user"), ("/bin/true", "db-user")] {
        assert!(
            !has("exec", binary, what),
            "{binary} {what}: {privileged:#?}"
        );
        assert!(
            !has("exit", binary, what),
            "{binary} {what}: {privileged:#?}"
        );
    }
    for v in &privileged {
        let p = &v["process"];
        assert!(
            p["uid"] == 0 || p["euid"] == 0,
            "not root (this test gives no one CAP_SYS_ADMIN without root): {v}"
        );
    }
    assert!(
        selected(6)
            .iter()
            .all(|l| l.contains("\"namespace\":\"dev\"")),
        "{:#?}",
        selected(6)
    );
    // Both namespaces, privileged execs only: exactly filter 5's execs.
    let execs_of = |lines: Vec<String>| {
        lines
            .into_iter()
            .filter(|l| l.contains("\"type\":\"exec\""))
            .collect::<Vec<_>>()
    };
    assert_eq!(selected(7), execs_of(selected(5)));

    // The compact form of the privileged stream: every line marked, the privileged
    // container's too; the same lines read back from the file.
    let compact_live = of_scenario(&compact.lines(), &marker);
    assert_eq!(compact_live.len(), privileged.len(), "{compact_live:#?}");
    for line in &compact_live {
        assert!(line.contains(" [priv]"), "{line}");
        assert_eq!(
            line.contains(" [priv ctr]"),
            line.contains(&format!("dev/{}/app", db.pod)),
            "{line}"
        );
        assert!(!line.contains('\x1b'), "{line}");
    }
    let (got, _) = read_saved(&saved, &as_strs(&compact_args));
    assert_eq!(got.lines().collect::<Vec<_>>(), compact_live);

    // The bad lines are named with their numbers: the third, and the last (cut short).
    let (_, warnings) = read_saved(&saved, &["-o", "json"]);
    let name = saved.display();
    assert!(
        warnings.contains(&format!("podmap: {name}:3: not an event (")),
        "{warnings}"
    );
    let last = content.lines().count();
    assert!(
        warnings.contains(&format!("podmap: {name}:{last}: not an event (")),
        "{warnings}"
    );
    assert!(
        !warnings.contains(&format!("{name}:4:")),
        "a blank line is no bad line"
    );

    // Colour: escape sequences when asked for (NO_COLOR does not override the flag), none
    // when told not to or into a pipe; otherwise the same text. (auto on a terminal, and
    // NO_COLOR there, are the unit tests' in client::events.)
    let colored = |color: Option<&str>, no_color: bool| {
        let mut cmd = podmap();
        cmd.args(["events", "-o", "compact", "--privileged", "--input"])
            .arg(&saved)
            .stdin(Stdio::null());
        if let Some(c) = color {
            cmd.args(["--color", c]);
        }
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let always = colored(Some("always"), false);
    assert!(always.contains("\x1b[1;31m[priv]\x1b[0m"), "{always:?}");
    assert!(always.contains("\x1b[31m[priv ctr]\x1b[0m"), "{always:?}");
    assert_eq!(colored(Some("always"), true), always);
    let plain = colored(Some("never"), false);
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert_eq!(colored(None, false), plain, "auto into a pipe");
    assert_eq!(strip_escapes(&always), plain);
    drop(daemon);
}

fn as_strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// `text` without its ANSI SGR sequences (`ESC [ ... m`).
fn strip_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = &rest[rest.find('m').map_or(rest.len(), |m| m + 1)..];
    }
    out + rest
}

/// A pipe on stdin is not taken for saved events: podmap run where stdin merely is a pipe (a
/// remote shell without a terminal) reads podmapd, and says so when podmapd is not there,
/// instead of waiting on a pipe nobody writes.
#[test]
fn a_pipe_on_stdin_without_input_reads_the_socket() {
    // No --socket and no PODMAP_SOCKET (either alone would send it to the socket anyway): the
    // default socket, which no podmapd serves on a test machine.
    let default = Path::new("/run/podmap/podmap.sock");
    if default.exists() {
        eprintln!("skipped: a podmapd serves {}", default.display());
        return;
    }
    let mut child = podmap()
        .arg("events")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open and silent: read, it would never end.
    let _held_open = child.stdin.take().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
        panic!("podmap events waited on a silent pipe instead of reading the socket");
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains(&default.display().to_string()), "{stderr}");
}
