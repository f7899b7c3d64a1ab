//! Fan-out of enriched events to the socket's streaming clients.
//!
//! The pipeline hands each batch of events ([`Published`], each encoded at most once) to
//! [`Hub::publish_batch`], and the hub writes every subscribed client's matching events to its
//! socket there and then, without blocking (`sink.rs`): in the steady state the reader thread's
//! wake-up delivers them and no task is woken. What a client's socket does not take waits in its
//! own bounded backlog, which the client's task writes out; a client that does not keep up loses
//! events past it (counted per client and in total) and never stalls the pipeline or the other
//! clients.
//!
//! The hub owns the counters about clients that status reports: lines delivered, lines lost to slow
//! clients, clients connected, and client errors (recorded by the socket server).
//!
//! It does not own the connections: `server.rs` accepts them, reads the request, subscribes the
//! client with a descriptor of its socket, and writes out its [`Subscription`]'s backlog.

pub use crate::published::Published;
use crate::sink::Sink;
use podmap_proto::{EventFilter, EventType};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Default per-client backlog, in events, beyond what its socket holds: a few ring-buffer
/// batches, so a client that is merely slow to be scheduled loses nothing, while a stuck one
/// costs at most this many `Arc`s.
pub const DEFAULT_QUEUE_LEN: usize = 4096;

/// The event types at least one subscribed client asks for, as of one moment: the pipeline
/// builds only those events. An event no client wants is never built, let alone encoded; the
/// bookkeeping its record carries (the process table, counters) is done all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted(u8);

impl Wanted {
    pub const NONE: Wanted = Wanted(0);
    pub const ALL: Wanted = Wanted(0b111);

    fn bit(kind: EventType) -> u8 {
        match kind {
            EventType::Exec => 0b001,
            EventType::Exit => 0b010,
            EventType::Policy => 0b100,
            // podmapd never makes one; a client cannot ask for one (requests refuse it).
            EventType::Other => 0,
        }
    }

    /// What a client with `filter` may want: the types it names, or all of them.
    fn of(filter: &EventFilter) -> Wanted {
        match &filter.types {
            None => Wanted::ALL,
            Some(types) => Wanted(types.iter().fold(0, |m, t| m | Wanted::bit(*t))),
        }
    }

    pub fn has(self, kind: EventType) -> bool {
        self.0 & Wanted::bit(kind) != 0
    }
}

struct Client {
    id: u64,
    /// Precomputed `filter.is_empty()`, so the common "everything" stream skips the match.
    match_all: bool,
    filter: EventFilter,
    sink: Arc<Sink>,
    lost: Arc<AtomicU64>,
}

struct Shared {
    clients: Mutex<Vec<Client>>,
    /// [`Wanted`] of the clients now subscribed, kept by `Shared::changed`.
    wanted: AtomicU8,
    delivered: AtomicU64,
    lost_slow_clients: AtomicU64,
    client_errors: AtomicU64,
    clients_refused: AtomicU64,
    clients_write_timeouts: AtomicU64,
    next_id: AtomicU64,
}

impl Shared {
    fn clients(&self) -> MutexGuard<'_, Vec<Client>> {
        // A panic while holding the lock cannot leave the Vec half-updated in a way that matters
        // (every operation on it is a push, a retain or reads), so a poisoned lock is still usable.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Recomputes what the clients want; called with the lock held after every change to them.
    fn changed(&self, clients: &[Client]) {
        let wanted = clients.iter().fold(0, |m, c| m | Wanted::of(&c.filter).0);
        // Release: a client counted as connected is wanted for every record read after.
        self.wanted.store(wanted, Ordering::Release);
    }
}

/// The fan-out point between the event pipeline and the socket clients.
pub struct Hub {
    shared: Arc<Shared>,
    queue_len: usize,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Hub::with_queue_len(DEFAULT_QUEUE_LEN)
    }

    /// A hub whose clients each get a queue of `queue_len` events (at least 1).
    pub fn with_queue_len(queue_len: usize) -> Arc<Hub> {
        Arc::new(Hub {
            shared: Arc::new(Shared {
                clients: Mutex::new(Vec::new()),
                wanted: AtomicU8::new(Wanted::NONE.0),
                delivered: AtomicU64::new(0),
                lost_slow_clients: AtomicU64::new(0),
                client_errors: AtomicU64::new(0),
                clients_refused: AtomicU64::new(0),
                clients_write_timeouts: AtomicU64::new(0),
                next_id: AtomicU64::new(0),
            }),
            queue_len: queue_len.max(1),
        })
    }

    /// Offers `ev` to every matching client. Never blocks beyond the brief lock.
    pub fn publish(&self, ev: &Arc<Published>) {
        self.publish_batch(std::slice::from_ref(ev));
    }

    /// Offers each event of `evs`, in order, to every matching client, taking the lock once.
    pub fn publish_batch(&self, evs: &[Arc<Published>]) {
        if evs.is_empty() {
            return;
        }
        let (mut lost, mut delivered) = (0u64, 0u64);
        let mut matching = Vec::with_capacity(evs.len());
        {
            let clients = self.shared.clients();
            for client in clients.iter() {
                matching.clear();
                matching.extend(
                    evs.iter()
                        .filter(|ev| client.match_all || client.filter.matches(&ev.event)),
                );
                if matching.is_empty() {
                    continue;
                }
                let offered = client.sink.offer(&matching);
                delivered += offered.written;
                if offered.lost > 0 {
                    client.lost.fetch_add(offered.lost, Ordering::Relaxed);
                    lost += offered.lost;
                }
            }
        }
        self.shared
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
        if lost > 0 {
            self.shared
                .lost_slow_clients
                .fetch_add(lost, Ordering::Relaxed);
        }
    }

    /// Registers a client: events matching `filter` are written to `socket`, a descriptor of
    /// its connected, non-blocking socket, until the returned subscription is dropped.
    pub fn subscribe(&self, filter: EventFilter, socket: OwnedFd) -> Subscription {
        let sink = Arc::new(Sink::new(socket, self.queue_len));
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(AtomicU64::new(0));
        let mut clients = self.shared.clients();
        clients.push(Client {
            id,
            match_all: filter.is_empty(),
            filter,
            sink: Arc::clone(&sink),
            lost: Arc::clone(&lost),
        });
        self.shared.changed(&clients);
        drop(clients);
        Subscription {
            id,
            sink,
            lost,
            shared: Arc::clone(&self.shared),
        }
    }

    /// The event types the clients subscribed now ask for. The reader looks before each record,
    /// so a client receives every event of a record read after it subscribed.
    pub fn wanted(&self) -> Wanted {
        Wanted(self.shared.wanted.load(Ordering::Acquire))
    }

    /// Event lines written to clients (one per client per event).
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Event lines dropped because a client's backlog was full.
    pub fn lost_slow_clients(&self) -> u64 {
        self.shared.lost_slow_clients.load(Ordering::Relaxed)
    }

    /// Streaming clients currently subscribed.
    pub fn clients(&self) -> u64 {
        self.shared.clients().len() as u64
    }

    /// Requests refused (malformed, empty, too long, silent, a second line); recorded by the
    /// socket server, reported in status as `client_errors`.
    pub fn client_errors(&self) -> u64 {
        self.shared.client_errors.load(Ordering::Relaxed)
    }

    pub fn record_client_error(&self) {
        self.shared.client_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections turned away because the socket already served its maximum of clients.
    pub fn clients_refused(&self) -> u64 {
        self.shared.clients_refused.load(Ordering::Relaxed)
    }

    pub fn record_client_refused(&self) {
        self.shared.clients_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Clients disconnected because a write to them did not complete in time (they stopped
    /// reading).
    pub fn clients_write_timeouts(&self) -> u64 {
        self.shared.clients_write_timeouts.load(Ordering::Relaxed)
    }

    pub fn record_client_write_timeout(&self) {
        self.shared
            .clients_write_timeouts
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// One client's stream: what its task waits on and writes out. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    sink: Arc<Sink>,
    lost: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// Waits until the stream needs its task: events its socket did not take, or a write that
    /// failed. Cancel-safe: a wake-up missed while the task did something else is kept.
    pub async fn needs_writing(&self) {
        self.sink.needs_writing().await
    }

    /// Stops the hub writing to this client; what waits stays to be written out. Dropping the
    /// subscription does it too.
    pub fn unsubscribe(&self) {
        let id = self.id;
        let mut clients = self.shared.clients();
        clients.retain(|c| c.id != id);
        self.shared.changed(&clients);
    }

    /// Whether the client has read part of a line whose rest still waits: the stream must not
    /// end with anything else written before that rest.
    pub fn mid_line(&self) -> bool {
        self.sink.mid_line()
    }

    /// Writes the waiting events out, as far as the socket takes them: Ok once none wait,
    /// `WouldBlock` while the socket is full (the caller waits for it to drain), or the error
    /// that ended the stream.
    pub fn write_backlog(&self) -> io::Result<()> {
        let (written, result) = self.sink.write_backlog();
        self.shared.delivered.fetch_add(written, Ordering::Relaxed);
        result
    }

    /// Events this client lost because its queue was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_proto::{Attribution, ContainerInfo, Event, EventType, PodInfo, Process, Shared};

    fn event(kind: EventType, ns: Option<&str>) -> Event {
        Event {
            schema_version: podmap_proto::SCHEMA_VERSION,
            kind,
            time: "2026-11-25T12:00:00.123456789Z".into(),
            node: "node-a".into(),
            process: Process {
                pid: 1,
                tid: 1,
                ppid: 0,
                uid: 0,
                binary: "/bin/true".into(),
                args: Vec::new().into(),
                cwd: "/".into(),
                exec_id: "e".into(),
                parent_exec_id: None,
                start_time: "2026-11-25T12:00:00Z".into(),
                cgroup_id: 7,
                flags: vec![],
                entered_via_exec: None,
                euid: None,
                gid: None,
                egid: None,
                cap_effective: None,
            },
            container: ns.map(|_| {
                Shared::new(ContainerInfo {
                    id: "c".repeat(64),
                    name: "app".into(),
                    runtime: "containerd".into(),
                    image: "img".into(),
                    ..Default::default()
                })
            }),
            pod: ns.map(|ns| {
                Shared::new(PodInfo {
                    uid: "u".into(),
                    name: "p".into(),
                    namespace: ns.into(),
                    labels: Default::default(),
                    workload: None,
                    workload_kind: None,
                })
            }),
            attribution: if ns.is_some() {
                Attribution::Container
            } else {
                Attribution::Host
            },
            path_derived: false,
            exit: None,
            policy: None,
        }
    }

    /// A client's socket pair: the hub's end (non-blocking, as tokio leaves it) and the
    /// client's, which the test reads.
    fn socket() -> (OwnedFd, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (OwnedFd::from(ours), theirs)
    }

    /// Everything the client's end holds now.
    fn read_now(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read as _;
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Fills the socket's buffer from the hub's end with `x` bytes; how many it took.
    fn fill(fd: &OwnedFd) -> usize {
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        let chunk = [b'x'; 4096];
        let mut n = 0;
        loop {
            use std::io::Write as _;
            match f.write(&chunk) {
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return n,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// What the client reads as it keeps reading while its task writes the backlog out, until
    /// none waits.
    fn read_while_draining(
        sub: &Subscription,
        peer: &mut std::os::unix::net::UnixStream,
    ) -> Vec<u8> {
        let mut got = read_now(peer);
        for _ in 0..10_000 {
            match sub.write_backlog() {
                Ok(()) => {
                    got.extend(read_now(peer));
                    return got;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => got.extend(read_now(peer)),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the backlog never drained");
    }

    fn lines(evs: &[Arc<Published>]) -> Vec<u8> {
        evs.iter().flat_map(|e| e.line().to_vec()).collect()
    }

    #[test]
    fn published_line_is_the_json_and_a_newline() {
        let p = Published::new(event(EventType::Exec, Some("prod")));
        assert_eq!(p.line().last(), Some(&b'\n'));
        let back: Event = serde_json::from_slice(&p.line()[..p.line().len() - 1]).unwrap();
        assert_eq!(back, p.event);
    }

    #[test]
    fn filters_are_applied_at_publish_and_lines_written_at_once() {
        let hub = Hub::new();
        let (fd, mut all_peer) = socket();
        let all = hub.subscribe(EventFilter::default(), fd);
        let (fd, mut prod_peer) = socket();
        let prod = hub.subscribe(
            EventFilter {
                namespace: Some("prod".into()),
                ..Default::default()
            },
            fd,
        );
        let evs = [
            Published::new(event(EventType::Exec, Some("prod"))),
            Published::new(event(EventType::Exec, Some("dev"))),
            Published::new(event(EventType::Exit, None)),
        ];
        hub.publish_batch(&evs);
        // Written by the publish itself: no task ran.
        assert_eq!(read_now(&mut all_peer), lines(&evs));
        assert_eq!(read_now(&mut prod_peer), lines(&evs[..1]));
        assert_eq!(hub.delivered(), 4);
        assert_eq!(hub.lost_slow_clients(), 0);
        assert_eq!((all.lost(), prod.lost()), (0, 0));
    }

    #[test]
    fn a_full_backlog_loses_events_for_that_client_only() {
        let hub = Hub::with_queue_len(2);
        let (fd, mut slow_peer) = socket();
        let filled = fill(&fd);
        let slow = hub.subscribe(EventFilter::default(), fd);
        let (fd, mut fast_peer) = socket();
        let fast = hub.subscribe(EventFilter::default(), fd);
        let evs: Vec<_> = (0..5)
            .map(|i| Published::new(event(EventType::Exec, Some(&format!("ns{i}")))))
            .collect();
        for ev in &evs {
            hub.publish(ev);
        }
        assert_eq!(read_now(&mut fast_peer), lines(&evs));
        assert_eq!((slow.lost(), fast.lost()), (3, 0));
        assert_eq!(hub.lost_slow_clients(), 3);
        assert_eq!(hub.delivered(), 5);
        // The slow client reads: its task writes the two that waited, in order, after what
        // filled its socket.
        let mut got = read_now(&mut slow_peer);
        slow.write_backlog().expect("the backlog fits now");
        got.extend(read_now(&mut slow_peer));
        assert_eq!(got.len(), filled + lines(&evs[..2]).len());
        assert_eq!(&got[filled..], &lines(&evs[..2])[..]);
        assert_eq!(hub.delivered(), 7);
    }

    /// `n` exec events, each of its own namespace, so no two lines are alike.
    fn numbered_events(n: usize) -> Vec<Arc<Published>> {
        (0..n)
            .map(|i| Published::new(event(EventType::Exec, Some(&format!("namespace-{i}")))))
            .collect()
    }

    /// A socket that takes part of a batch takes part of a line: the rest of that line goes
    /// first when it drains, so the client reads every line whole and in order.
    #[test]
    fn a_line_cut_by_a_full_socket_is_finished_first() {
        let hub = Hub::new();
        let (fd, mut peer) = socket();
        let sub = hub.subscribe(EventFilter::default(), fd);
        let evs = numbered_events(600);
        for batch in evs.chunks(100) {
            hub.publish_batch(batch);
        }
        assert!(
            lines(&evs).len() > 300 * 1024,
            "more than a socket holds, so the hub's writes were cut"
        );
        let got = read_while_draining(&sub, &mut peer);
        assert_eq!(got, lines(&evs), "every line whole, in order");
        assert_eq!(sub.lost(), 0);
        assert_eq!(hub.delivered(), 600);
    }

    /// A stream that ends (a second request line) while the client has part of a line: the
    /// subscription says so, and its rest can still be written after the hub stopped writing.
    #[test]
    fn a_cut_line_is_known_and_finished_after_unsubscribing() {
        let hub = Hub::new();
        let (fd, mut peer) = socket();
        let sub = hub.subscribe(EventFilter::default(), fd);
        let evs = numbered_events(600);
        hub.publish_batch(&evs);
        assert!(sub.mid_line(), "a socket buffer's worth ends inside a line");
        sub.unsubscribe();
        assert_eq!(hub.clients(), 0);
        hub.publish_batch(&evs[..1]);
        let got = read_while_draining(&sub, &mut peer);
        assert!(!sub.mid_line());
        assert_eq!(got, lines(&evs), "whole lines, none after the unsubscribe");
    }

    #[tokio::test]
    async fn a_client_gone_ends_its_stream_with_the_write_error() {
        let hub = Hub::new();
        let (fd, peer) = socket();
        let sub = hub.subscribe(EventFilter::default(), fd);
        drop(peer);
        hub.publish(&Published::new(event(EventType::Exec, None)));
        tokio::time::timeout(std::time::Duration::from_secs(5), sub.needs_writing())
            .await
            .expect("the task is told");
        let e = sub.write_backlog().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        assert_eq!(hub.delivered(), 0);
        assert_eq!(
            hub.lost_slow_clients(),
            0,
            "a gone client is not a slow one"
        );
    }

    #[test]
    fn wanted_is_what_the_subscribed_clients_ask_for() {
        let hub = Hub::new();
        assert_eq!(hub.wanted(), Wanted::NONE);
        let execs = hub.subscribe(
            EventFilter {
                types: Some(vec![EventType::Exec]),
                ..EventFilter::default()
            },
            socket().0,
        );
        let w = hub.wanted();
        assert!(w.has(EventType::Exec) && !w.has(EventType::Exit) && !w.has(EventType::Policy));
        // A filter without types may want any type.
        let prod = hub.subscribe(
            EventFilter {
                namespace: Some("prod".into()),
                ..EventFilter::default()
            },
            socket().0,
        );
        assert_eq!(hub.wanted(), Wanted::ALL);
        drop(prod);
        assert!(!hub.wanted().has(EventType::Exit));
        drop(execs);
        assert_eq!(hub.wanted(), Wanted::NONE);
    }

    #[test]
    fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new();
        let a = hub.subscribe(EventFilter::default(), socket().0);
        let b = hub.subscribe(EventFilter::default(), socket().0);
        assert_eq!(hub.clients(), 2);
        drop(a);
        assert_eq!(hub.clients(), 1);
        drop(b);
        assert_eq!(hub.clients(), 0);
        // Publishing with nobody subscribed is a no-op, not an error.
        hub.publish(&Published::new(event(EventType::Exec, None)));
        assert_eq!(hub.delivered(), 0);
    }
}
