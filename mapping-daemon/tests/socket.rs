//! The event socket end to end: a real server on a socket in a tempdir, a fake status source,
//! events published through the hub, and clients speaking the wire protocol (and the podmap
//! client's own functions).

use podmap_daemon::client::{self, EventFormat, EventsArgs, FilterArgs, ServerError, TableOrJson};
use podmap_daemon::hub::{Hub, Published};
use podmap_daemon::server::{bind, serve_with_config, ServerConfig};
use podmap_daemon::status::StatusSource;
use podmap_proto::containers::ContainerRow;
use podmap_proto::status::{LatencySummary, StatusReport};
use podmap_proto::{
    Attribution, ContainerInfo, Event, EventType, ExitInfo, PodInfo, PolicyInfo, Process,
    ProcessFlag, Shared,
};
use serde_json::{json, Value};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};

/// Generous bound for anything that should happen "at once" (docs/decisions.md #19).
const WAIT: Duration = Duration::from_secs(10);

struct FakeSource;

fn report() -> StatusReport {
    StatusReport {
        node: "node-a".into(),
        version: "0.1.0".into(),
        mode: "standalone".into(),
        cgroup_hierarchy: "cgroup2".into(),
        events_seen: [("exec".to_string(), 3)].into(),
        containers_mapped: 1,
        mapping_latency_us: LatencySummary {
            count: 1,
            p50: Some(900),
            p99: Some(900),
            max: Some(900),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn container_rows() -> Vec<ContainerRow> {
    serde_json::from_value(containers()).unwrap()
}

/// The mapping table as podmapd's JSON has it.
fn containers() -> Value {
    json!([{"cgroup_id": 7311, "hierarchy": "v2", "removing": false, "sandbox": false,
            "mapped_at": "2026-11-25T12:00:00Z", "policies": [],
            "container": {"id": "c1", "name": "nginx", "image": "", "runtime": "containerd"},
            "pod": {"uid": "u1", "name": "web-7d9c", "namespace": "prod", "labels": {}}}])
}

impl StatusSource for FakeSource {
    fn status(&self) -> StatusReport {
        report()
    }
    fn containers(&self) -> Vec<ContainerRow> {
        container_rows()
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    hub: Arc<Hub>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn start(request_timeout: Duration, queue_len: usize) -> Harness {
        let config = ServerConfig {
            request_timeout,
            ..Default::default()
        };
        Harness::start_with(config, queue_len).await
    }

    async fn start_with(config: ServerConfig, queue_len: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/podmap.sock");
        let listener = bind(&path, None).unwrap();
        let hub = Hub::with_queue_len(queue_len);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_config(
            listener,
            Arc::clone(&hub),
            Arc::new(FakeSource),
            config,
            stopped,
        ));
        Harness {
            _dir: dir,
            path,
            hub,
            stop: Some(stop),
            server: Some(server),
        }
    }

    async fn connect(&self, request: &str) -> Conn {
        let stream = UnixStream::connect(&self.path).await.unwrap();
        let mut conn = Conn {
            reader: BufReader::new(stream),
        };
        conn.reader
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        conn
    }

    /// Subscribes and waits until the hub has the subscription, so nothing published after
    /// this returns can be missed.
    async fn subscribe(&self, filter: &str) -> Conn {
        let before = self.hub.clients();
        let conn = self.connect(&format!("{{\"events\": {filter}}}\n")).await;
        wait_until(|| self.hub.clients() > before).await;
        conn
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        timeout(WAIT, self.server.take().unwrap())
            .await
            .expect("server stops on shutdown")
            .unwrap();
    }
}

struct Conn {
    reader: BufReader<UnixStream>,
}

impl Conn {
    /// The next line; None at EOF.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("a line within the wait")
            .expect("reading a line");
        (n > 0).then_some(line)
    }

    async fn json(&mut self) -> Value {
        let line = self.line().await.expect("a line, not EOF");
        assert!(line.ends_with('\n'), "{line:?}");
        serde_json::from_str(&line).unwrap()
    }

    async fn event(&mut self) -> Event {
        let v = self.json().await;
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
    }

    async fn expect_error(&mut self, needle: &str) {
        let v = self.json().await;
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error line: {v}"));
        assert!(msg.contains(needle), "{msg:?} does not name {needle:?}");
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        self.expect_eof().await;
    }

    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        timeout(WAIT, self.reader.read_to_end(&mut rest))
            .await
            .expect("the server closes")
            .expect("a clean EOF, not a reset");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        sleep(Duration::from_millis(10)).await;
    }
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)]) -> Option<Shared<PodInfo>> {
    Some(Shared::new(PodInfo {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        workload: None,
        workload_kind: None,
    }))
}

fn container(name: &str) -> Option<Shared<ContainerInfo>> {
    Some(Shared::new(ContainerInfo {
        id: "a".repeat(64),
        name: name.into(),
        runtime: "containerd".into(),
        image: "docker.io/library/nginx:1.27".into(),
        ..Default::default()
    }))
}

/// `template` once per pid, ready to publish.
fn with_pids(template: &Event, pids: impl IntoIterator<Item = u32>) -> Vec<Arc<Published>> {
    pids.into_iter()
        .map(|pid| {
            let mut e = template.clone();
            e.process.pid = pid;
            Published::new(e)
        })
        .collect()
}

fn event(kind: EventType, pid: u32, ns: Option<&str>, labels: &[(&str, &str)]) -> Event {
    let mut ev = Event {
        schema_version: podmap_proto::SCHEMA_VERSION,
        kind,
        time: "2026-11-25T12:00:00.123456789Z".into(),
        node: "node-a".into(),
        process: Process {
            pid,
            tid: pid,
            ppid: 1,
            uid: 0,
            binary: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hi".into()].into(),
            cwd: "/".into(),
            exec_id: format!("exec-{pid}").into(),
            parent_exec_id: None,
            start_time: "2026-11-25T12:00:00Z".into(),
            cgroup_id: 7311,
            flags: vec![],
            entered_via_exec: None,
            euid: None,
            gid: None,
            egid: None,
            cap_effective: None,
        },
        container: None,
        pod: None,
        attribution: Attribution::Host,
        path_derived: false,
        exit: None,
        policy: None,
    };
    if let Some(ns) = ns {
        ev.pod = pod(ns, "web-7d9c", labels);
        ev.container = container("nginx");
        ev.attribution = Attribution::Container;
    }
    if kind == EventType::Exit {
        ev.exit = Some(ExitInfo {
            code: Some(0),
            signal: None,
        });
    }
    ev
}

#[tokio::test]
async fn events_stream_only_what_each_filter_selects() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;
    let mut all = h.subscribe("{}").await;
    let mut prod_exec = h
        .subscribe(r#"{"namespace": "prod", "types": ["exec"]}"#)
        .await;
    let mut web = h
        .subscribe(r#"{"labels": {"app": "web"}, "container": "nginx"}"#)
        .await;
    assert_eq!(h.hub.clients(), 3);

    let evs = [
        event(EventType::Exec, 1, Some("prod"), &[("app", "web")]),
        event(EventType::Exit, 2, Some("prod"), &[("app", "web")]),
        event(EventType::Exec, 3, Some("dev"), &[("app", "db")]),
        event(EventType::Exec, 4, None, &[]),
        event(EventType::Exec, 5, Some("dev"), &[("app", "web")]),
    ];
    let published: Vec<_> = evs.iter().cloned().map(Published::new).collect();
    h.hub.publish_batch(&published[..3]);
    for p in &published[3..] {
        h.hub.publish(p);
    }
    // A final event every filter selects: whatever a client reads before it is everything it
    // was sent, so "only the matching ones" is checked, not merely "the matching ones".
    let sentinel = event(EventType::Exec, 99, Some("prod"), &[("app", "web")]);
    h.hub.publish(&Published::new(sentinel.clone()));

    let pids = |evs: &[Event]| evs.iter().map(|e| e.process.pid).collect::<Vec<_>>();
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(all.event().await);
    }
    assert_eq!(pids(&got), [1, 2, 3, 4, 5, 99]);
    assert_eq!(got[0], evs[0], "the event arrives intact");

    let mut got = Vec::new();
    loop {
        let ev = prod_exec.event().await;
        got.push(ev.clone());
        if ev == sentinel {
            break;
        }
    }
    assert_eq!(pids(&got), [1, 99]);

    let mut got = Vec::new();
    loop {
        let ev = web.event().await;
        got.push(ev.clone());
        if ev == sentinel {
            break;
        }
    }
    assert_eq!(pids(&got), [1, 2, 5, 99]);

    assert_eq!(h.hub.delivered(), 6 + 2 + 4);
    assert_eq!(h.hub.lost_slow_clients(), 0);
    h.stop().await;
}

#[tokio::test]
async fn status_and_containers_reply_once_and_close() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;

    let mut c = h.connect("{\"status\": {}}\n").await;
    let got: StatusReport = serde_json::from_value(c.json().await).unwrap();
    assert_eq!(got, report());
    c.expect_eof().await;

    // A request ended by EOF instead of a newline (printf ... | nc -U) is answered too.
    let mut c = h.connect(r#"{"containers": {}}"#).await;
    c.reader.get_mut().shutdown().await.unwrap();
    assert_eq!(c.json().await, containers());
    c.expect_eof().await;

    assert_eq!(h.hub.client_errors(), 0);
    assert_eq!(h.hub.clients(), 0);
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_get_one_error_line_while_others_keep_streaming() {
    let h = Harness::start(Duration::from_millis(300), 4096).await;
    let mut witness = h.subscribe("{}").await;
    let mut pid = 0;
    let mut witness_receives = |h: &Harness| {
        pid += 1;
        h.hub
            .publish(&Published::new(event(EventType::Exec, pid, None, &[])));
        pid
    };

    let cases: &[(&str, Vec<u8>)] = &[
        ("malformed request", b"{\"events\": \n".to_vec()),
        (
            "unknown field",
            b"{\"events\": {\"nmespace\": \"prod\"}}\n".to_vec(),
        ),
        ("unknown variant", b"{\"evnts\": {}}\n".to_vec()),
        ("request is empty", b"\n".to_vec()),
        ("longer than 65536 bytes", {
            let mut long = b"{\"events\": {\"pod\": \"".to_vec();
            long.resize(70 * 1024, b'x');
            long.extend_from_slice(b"\"}}\n");
            long
        }),
        (
            "second line",
            b"{\"status\": {}}\n{\"containers\": {}}\n".to_vec(),
        ),
    ];
    for (i, (needle, request)) in cases.iter().enumerate() {
        let stream = UnixStream::connect(&h.path).await.unwrap();
        let mut c = Conn {
            reader: BufReader::new(stream),
        };
        c.reader.get_mut().write_all(request).await.unwrap();
        c.expect_error(needle).await;
        assert_eq!(h.hub.client_errors(), i as u64 + 1);

        let sent = witness_receives(&h);
        assert_eq!(witness.event().await.process.pid, sent, "after {needle}");
    }

    // Silence: nothing within the request timeout.
    let started = Instant::now();
    let mut silent = h.connect("").await;
    silent.expect_error("no request line within 0.3s").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let sent = witness_receives(&h);
    assert_eq!(witness.event().await.process.pid, sent);

    // A partial line does not reset the clock: the whole line must arrive in time.
    let started = Instant::now();
    let mut dribble = h.connect("{\"stat").await;
    dribble.expect_error("no request line within").await;
    assert!(started.elapsed() < Duration::from_secs(3));

    // A second line sent while streaming.
    let mut chatty = h.subscribe("{}").await;
    chatty
        .reader
        .get_mut()
        .write_all(b"{\"status\": {}}\n")
        .await
        .unwrap();
    chatty.expect_error("second line").await;
    let sent = witness_receives(&h);
    assert_eq!(witness.event().await.process.pid, sent);

    assert_eq!(h.hub.client_errors(), cases.len() as u64 + 3);
    wait_until(|| h.hub.clients() == 1).await;
    h.stop().await;
}

#[tokio::test]
async fn the_default_request_timeout_is_five_seconds() {
    assert_eq!(
        ServerConfig::default().request_timeout,
        Duration::from_secs(5)
    );
    let h = Harness::start(ServerConfig::default().request_timeout, 4096).await;
    let started = Instant::now();
    let mut silent = h.connect("").await;
    silent.expect_error("no request line within 5s").await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
    h.stop().await;
}

/// A client that stopped reading with part of a line delivered, then sends a second line, still
/// reads every line whole: the rest of the cut line, then its error line, never the error line
/// spliced into an event.
#[tokio::test]
async fn a_second_line_mid_stream_never_cuts_an_event_line() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;
    let mut c = h.subscribe("{}").await;
    let mut template = event(EventType::Exec, 0, Some("prod"), &[]);
    template.process.args = vec!["x".repeat(3000)].into();
    // More than a socket buffer holds, in one batch: the hub's write stops inside a line.
    let evs = with_pids(&template, 1..=400);
    h.hub.publish_batch(&evs);
    c.reader
        .get_mut()
        .write_all(b"{\"status\": {}}\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    timeout(WAIT, c.reader.read_to_end(&mut rest))
        .await
        .expect("the server closes")
        .expect("a clean EOF");
    let text = String::from_utf8(rest).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let (error, events) = lines.split_last().expect("lines");
    let error: Value = serde_json::from_str(error).expect("the last line is JSON");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|m| m.contains("second line")),
        "{error}"
    );
    assert!(!events.is_empty());
    for (i, line) in events.iter().enumerate() {
        let ev: Event = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {i} is not a whole event ({e}): {:.80}", line));
        assert_eq!(
            ev.process.pid,
            i as u32 + 1,
            "in order, none skipped before the cut"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_slow_client_loses_events_and_a_fast_one_gets_all() {
    const QUEUE: usize = 64;
    const N: u32 = 4000;
    // The write timeout would drop the slow client on a loaded machine before the end, and
    // its queue with it; this test is about losing events, not about dropping clients.
    let config = ServerConfig {
        write_timeout: Duration::from_secs(3600),
        ..Default::default()
    };
    let h = Harness::start_with(config, QUEUE).await;
    // Never reads: its socket buffer fills, then its queue, then it loses events.
    let slow = h.subscribe("{}").await;
    let mut fast = h.subscribe("{}").await;

    // Big events, so the slow client's socket buffer fills after a few hundred.
    let mut template = event(EventType::Exec, 0, Some("prod"), &[]);
    template.process.args = vec!["x".repeat(2048)].into();
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0u32);
    let reader = tokio::spawn(async move {
        for want in 1..=N {
            let ev = fast.event().await;
            assert_eq!(
                ev.process.pid, want,
                "the fast client gets every event, in order"
            );
            count_tx.send_replace(want);
        }
        fast
    });

    let mut sent = 0;
    while sent < N {
        // Publish in bursts no larger than a queue, letting the fast reader catch up between
        // them, as a reader that keeps up with the event rate would.
        let burst = with_pids(&template, sent + 1..=(sent + QUEUE as u32 / 2).min(N));
        h.hub.publish_batch(&burst);
        sent += burst.len() as u32;
        timeout(WAIT, count_rx.wait_for(|&got| got == sent))
            .await
            .expect("the fast client keeps up")
            .unwrap();
    }
    let _fast = timeout(WAIT, reader).await.unwrap().unwrap();

    let lost = h.hub.lost_slow_clients();
    // The slow client can have taken at most its socket buffers' worth plus one queue.
    assert!(lost > u64::from(N) / 2, "lost {lost} of {N}");
    // Every event was delivered, lost, or still sits in the slow client's queue.
    let accounted = h.hub.delivered() + lost;
    let all = 2 * u64::from(N);
    assert!(
        (all - QUEUE as u64..=all).contains(&accounted),
        "{accounted} of {all} accounted for"
    );

    // The daemon still answers everyone else.
    let mut c = h.connect("{\"status\": {}}\n").await;
    assert_eq!(c.json().await["node"], "node-a");
    drop(slow);
    h.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_is_unsubscribed_and_a_half_closed_one_is_not() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;
    let gone = h.subscribe("{}").await;
    let mut half = h.subscribe("{}").await;
    assert_eq!(h.hub.clients(), 2);

    // Half-closed: done sending (nc -N, socat), still reading.
    half.reader.get_mut().shutdown().await.unwrap();
    drop(gone);
    // No event is published: the server must notice the hang-up by itself.
    wait_until(|| h.hub.clients() == 1).await;
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        h.hub.clients(),
        1,
        "the half-closed client stays subscribed"
    );
    h.hub
        .publish(&Published::new(event(EventType::Exec, 7, None, &[])));
    assert_eq!(half.event().await.process.pid, 7);
    assert_eq!(h.hub.client_errors(), 0);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_closes_streaming_clients() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;
    let mut c = h.subscribe("{}").await;
    let hub = Arc::clone(&h.hub);
    h.stop().await;
    c.expect_eof().await;
    wait_until(|| hub.clients() == 0).await;
}

#[tokio::test]
async fn a_request_split_at_any_byte_is_one_request() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;
    // Every split point of a request, each half its own write with a pause between: the server
    // reads a line, not a write.
    let request = b"{\"status\": {}}\n";
    for at in 1..request.len() {
        let stream = UnixStream::connect(&h.path).await.unwrap();
        let mut c = Conn {
            reader: BufReader::new(stream),
        };
        c.reader.get_mut().write_all(&request[..at]).await.unwrap();
        c.reader.get_mut().flush().await.unwrap();
        sleep(Duration::from_millis(20)).await;
        c.reader.get_mut().write_all(&request[at..]).await.unwrap();
        assert_eq!(c.json().await["node"], "node-a", "split at {at}");
        c.expect_eof().await;
    }
    // Split, then half-closed without a newline: the EOF ends the line.
    let mut c = h.connect("{\"contain").await;
    sleep(Duration::from_millis(20)).await;
    c.reader.get_mut().write_all(b"ers\": {}}").await.unwrap();
    c.reader.get_mut().shutdown().await.unwrap();
    assert_eq!(c.json().await, containers());
    c.expect_eof().await;
    assert_eq!(h.hub.client_errors(), 0);
    h.stop().await;
}

#[tokio::test]
async fn invalid_utf8_and_half_closed_garbage_are_refused_and_counted() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;
    let mut witness = h.subscribe("{}").await;
    let cases: &[(&str, &[u8], bool)] = &[
        // Invalid UTF-8 inside a string, and as the whole line.
        (
            "malformed request",
            b"{\"events\": {\"pod\": \"\xff\xfe\"}}\n",
            false,
        ),
        ("malformed request", b"\xc3\x28\xa0\xa1\n", false),
        // Half-closed after a partial request: answered at the EOF, not after the timeout.
        ("malformed request", b"{\"status\": {", true),
        // Exactly 64 KiB + 1 of one line, no newline, then the half-close.
        ("longer than 65536 bytes", &[b' '; 65537], true),
    ];
    for (i, (needle, request, half_close)) in cases.iter().enumerate() {
        let started = Instant::now();
        let stream = UnixStream::connect(&h.path).await.unwrap();
        let mut c = Conn {
            reader: BufReader::new(stream),
        };
        c.reader.get_mut().write_all(request).await.unwrap();
        if *half_close {
            c.reader.get_mut().shutdown().await.unwrap();
        }
        c.expect_error(needle).await;
        assert!(started.elapsed() < Duration::from_secs(4), "case {i}");
        assert_eq!(h.hub.client_errors(), i as u64 + 1, "case {i}");
        h.hub
            .publish(&Published::new(event(EventType::Exec, i as u32, None, &[])));
        assert_eq!(witness.event().await.process.pid, i as u32);
    }
    h.stop().await;
}

/// Streams and requests have places of their own: a full house of event streams (which may
/// stop reading) never locks out a status request, and connections that send nothing are capped
/// too. Whoever is over a cap is told why, closed and counted as refused, not as an error.
#[tokio::test]
async fn clients_over_the_caps_get_an_error_line_and_streams_never_lock_out_status() {
    let config = ServerConfig {
        max_clients: 2,
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let h = Harness::start_with(config, 4096).await;
    let mut a = h.subscribe("{}").await;
    let b = h.subscribe("{}").await;

    // A third stream is told why and closed.
    let mut over = h.connect("{\"events\": {}}\n").await;
    over.expect_error("too many event streams").await;
    // (Closing our end ends the server's drain of it, and gives its request place back.)
    drop(over);
    assert_eq!(h.hub.clients_refused(), 1);
    assert_eq!(h.hub.clients(), 2);
    assert_eq!(h.hub.client_errors(), 0, "not the client's request's fault");

    // Status and containers are still answered while every stream place is taken.
    for _ in 0..3 {
        let mut c = h.connect("{\"status\": {}}\n").await;
        assert_eq!(c.json().await["node"], "node-a");
    }

    // The streams within the cap keep receiving.
    h.hub
        .publish(&Published::new(event(EventType::Exec, 1, None, &[])));
    assert_eq!(a.event().await.process.pid, 1);

    // Connections that send nothing hold the request places until their timeout: one more
    // connection, whatever it would ask, is told so.
    sleep(Duration::from_millis(200)).await;
    let quiet = [h.connect("").await, h.connect("").await];
    sleep(Duration::from_millis(200)).await;
    let mut over = h.connect("{\"status\": {}}\n").await;
    over.expect_error("too many clients").await;
    assert_eq!(h.hub.clients_refused(), 2);
    drop(quiet);

    // A stream place freed is a place taken.
    drop(b);
    wait_until(|| h.hub.clients() == 1).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = h.connect("{\"events\": {}}\n").await;
        sleep(Duration::from_millis(100)).await;
        if h.hub.clients() == 2 {
            h.hub
                .publish(&Published::new(event(EventType::Exec, 2, None, &[])));
            assert_eq!(c.event().await.process.pid, 2);
            break;
        }
        // Refused: the freed place was not back yet (it is, just after the hub forgets b).
        c.expect_error("too many event streams").await;
        assert!(Instant::now() < deadline, "the freed place never came back");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_when_a_write_times_out() {
    let config = ServerConfig {
        write_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let h = Harness::start_with(config, 64).await;
    // Never reads: its socket buffer fills, its next write blocks, and must not block forever.
    let slow = h.subscribe("{}").await;
    let mut fast = h.subscribe("{}").await;

    let mut template = event(EventType::Exec, 0, Some("prod"), &[]);
    template.process.args = vec!["x".repeat(4096)].into();
    let deadline = Instant::now() + WAIT;
    let mut pid = 0;
    while h.hub.clients() == 2 {
        assert!(
            Instant::now() < deadline,
            "the non-reading client was never disconnected"
        );
        let burst = with_pids(&template, pid + 1..=pid + 16);
        pid += 16;
        h.hub.publish_batch(&burst);
        for want in burst.iter().map(|p| p.event.process.pid) {
            assert_eq!(fast.event().await.process.pid, want);
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.hub.clients_write_timeouts(), 1);
    // The other client keeps receiving after the disconnect.
    h.hub
        .publish(&Published::new(event(EventType::Exec, 999_999, None, &[])));
    assert_eq!(fast.event().await.process.pid, 999_999);
    drop(slow);
    h.stop().await;
}

#[tokio::test]
async fn the_socket_gets_the_numeric_group_given() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    // A gid no name needs to exist for: the host's group, not the image's /etc/group.
    let path = dir.path().join("podmap.sock");
    let _listener = bind(&path, Some(54321)).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.gid(), 54321);
    assert_eq!(meta.mode() & 0o777, 0o660);

    // Without one, the socket keeps the creator's group.
    let path = dir.path().join("plain.sock");
    let _listener = bind(&path, None).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.gid(), unsafe { libc::getegid() });
}

fn events_args(count: u64, output: EventFormat) -> EventsArgs {
    EventsArgs {
        output,
        filters: FilterArgs {
            namespace: vec!["prod".into()],
            types: vec![EventType::Exec, EventType::Exit],
            ..Default::default()
        },
        count: Some(count),
    }
}

/// Runs a blocking client function on the blocking pool.
fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> impl Future<Output = T> {
    let task = tokio::task::spawn_blocking(f);
    async move { timeout(WAIT, task).await.unwrap().unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_podmap_client_streams_filters_and_stops_after_count() {
    let h = Harness::start(Duration::from_secs(5), 4096).await;
    let path = h.path.clone();
    let run = blocking(move || {
        let mut out = Vec::new();
        let n = client::events(
            &path,
            &events_args(2, EventFormat::Compact),
            &mut out,
            false,
        )
        .unwrap();
        (n, String::from_utf8(out).unwrap())
    });
    wait_until(|| h.hub.clients() == 1).await;
    h.hub.publish_batch(&[
        Published::new(event(EventType::Exec, 1, Some("dev"), &[])),
        Published::new(event(EventType::Exec, 2, Some("prod"), &[])),
        Published::new(event(EventType::Exit, 3, Some("prod"), &[])),
        Published::new(event(EventType::Exec, 4, Some("prod"), &[])),
    ]);
    let (n, out) = run.await;
    assert_eq!(n, 2);
    assert_eq!(
        out,
        "12:00:00.123 exec   prod/web-7d9c/nginx  /bin/sh -c \"echo hi\"\n\
         12:00:00.123 exit   prod/web-7d9c/nginx  /bin/sh -c \"echo hi\" exit=0\n"
    );
    // The client hung up after its count: the server unsubscribes it.
    wait_until(|| h.hub.clients() == 0).await;

    // JSON output passes the server's lines through.
    let path = h.path.clone();
    let run = blocking(move || {
        let mut out = Vec::new();
        client::events(&path, &events_args(1, EventFormat::Json), &mut out, true).unwrap();
        String::from_utf8(out).unwrap()
    });
    wait_until(|| h.hub.clients() == 1).await;
    let ev = event(EventType::Exec, 5, Some("prod"), &[]);
    let published = Published::new(ev);
    h.hub.publish(&published);
    assert_eq!(run.await.as_bytes(), published.line());

    // Status and containers through the client.
    let path = h.path.clone();
    let (table, json_out, rows) = blocking(move || {
        let mut table = Vec::new();
        client::status(&path, TableOrJson::Table, &mut table).unwrap();
        let mut json_out = Vec::new();
        client::status(&path, TableOrJson::Json, &mut json_out).unwrap();
        let mut rows = Vec::new();
        client::containers(&path, TableOrJson::Table, &mut rows).unwrap();
        (
            String::from_utf8(table).unwrap(),
            json_out,
            String::from_utf8(rows).unwrap(),
        )
    })
    .await;
    assert!(table.contains("node-a"), "{table}");
    assert!(table.contains("events seen"), "{table}");
    assert!(table.contains("exec=3"), "{table}");
    let parsed: StatusReport = serde_json::from_slice(&json_out).unwrap();
    assert_eq!(parsed, report());
    assert_eq!(
        rows,
        "NAMESPACE  POD       CONTAINER  CONTAINER ID  CGROUP ID  RUNTIME     SANDBOX  REMOVING  POLICIES  MAPPED AT\n\
         prod       web-7d9c  nginx      c1            7311       containerd  false    false     -         2026-11-25T12:00:00Z\n"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_podmap_client_reports_server_errors_and_a_missing_daemon() {
    // A stand-in server that refuses whatever it is asked.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refuser.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        reader
            .get_mut()
            .write_all(b"{\"error\":\"nope: you asked wrong\"}\n")
            .await
            .unwrap();
    });
    let p = path.clone();
    let err = blocking(move || {
        client::events(
            &p,
            &events_args(1, EventFormat::Compact),
            &mut Vec::new(),
            false,
        )
        .unwrap_err()
    })
    .await;
    let server = err.downcast_ref::<ServerError>().expect("a ServerError");
    assert_eq!(server.0, "nope: you asked wrong");

    let missing = dir.path().join("absent.sock");
    let m = missing.clone();
    let err =
        blocking(move || client::status(&m, TableOrJson::Table, &mut Vec::new()).unwrap_err())
            .await
            .to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("podmapd may not be running"), "{err}");
}

#[test]
fn compact_lines_read_like_the_design() {
    let exec = event(EventType::Exec, 1, Some("prod"), &[]);
    assert_eq!(
        client::compact_line(&exec),
        r#"12:00:00.123 exec   prod/web-7d9c/nginx  /bin/sh -c "echo hi""#
    );

    let mut host_exit = event(EventType::Exit, 2, None, &[]);
    host_exit.process.args = Vec::new().into();
    assert_eq!(
        client::compact_line(&host_exit),
        "12:00:00.123 exit   host  /bin/sh exit=0"
    );

    let mut killed = event(EventType::Exit, 3, Some("prod"), &[]);
    killed.exit = Some(ExitInfo::from_wait_status(9));
    assert!(
        client::compact_line(&killed).ends_with(r#"/bin/sh -c "echo hi" signal=SIGKILL"#),
        "{}",
        client::compact_line(&killed)
    );

    let mut unknown = event(EventType::Exec, 4, None, &[]);
    unknown.attribution = Attribution::Unknown;
    unknown.process.flags = vec![ProcessFlag::ArgsTruncated];
    assert_eq!(
        client::compact_line(&unknown),
        r#"12:00:00.123 exec   unknown(7311)  /bin/sh -c "echo hi" [args truncated]"#
    );

    let mut policy = event(EventType::Policy, 5, Some("prod"), &[]);
    policy.policy = Some(PolicyInfo {
        name: "no-shell-in-web".into(),
        rule: "exec".into(),
        path: "/bin/sh".into(),
        action: "kill".into(),
        mode: "kill".into(),
    });
    assert_eq!(
        client::compact_line(&policy),
        r#"12:00:00.123 policy prod/web-7d9c/nginx  /bin/sh -c "echo hi" policy=no-shell-in-web rule=exec action=kill mode=kill"#
    );

    let mut open = event(EventType::Policy, 6, Some("prod"), &[]);
    open.process.binary = "/usr/bin/cat".into();
    open.process.args = vec!["/etc/shadow".into()].into();
    open.policy = Some(PolicyInfo {
        name: "shadow".into(),
        rule: "open".into(),
        path: "/etc/shadow".into(),
        action: "audit".into(),
        mode: "audit".into(),
    });
    assert!(client::compact_line(&open)
        .ends_with("policy=shadow rule=open action=audit mode=audit path=/etc/shadow"));

    // A hostile argument cannot start a new line.
    let mut hostile = event(EventType::Exec, 7, None, &[]);
    hostile.process.args = vec!["a\n12:00:00.000 exec   host  /bin/true".into()].into();
    assert!(!client::compact_line(&hostile).contains('\n'));
}
