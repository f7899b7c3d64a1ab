//! Fan-out of enriched events to the socket's streaming clients.
//!
//! The pipeline serializes each event once ([`Published::new`]) and hands it to [`Hub::publish`];
//! the hub gives every subscribed client whose filter matches a clone of the `Arc`. Each client has
//! its own bounded queue, filled with `try_send`: a client that does not keep up loses events (counted
//! per client and in total) and never stalls the pipeline or the other clients.
//!
//! The hub owns the counters about clients that status reports: lines delivered, lines lost to slow
//! clients, clients connected, and client errors (recorded by the socket server).
//!
//! It does not own the socket: `server.rs` turns a [`Subscription`] into writes.

use podmap_proto::{Event, EventFilter, EventType};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc;

/// Default per-client queue length: a few ring-buffer batches, so a client that is merely slow
/// to be scheduled loses nothing, while a stuck one costs at most this many `Arc`s.
pub const DEFAULT_QUEUE_LEN: usize = 4096;

/// An event ready for the wire: serialized at most once, when the first client takes it, and
/// shared by every client that receives it. Events no client asked for are never encoded.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    line: std::sync::OnceLock<Vec<u8>>,
}

impl Published {
    pub fn new(event: Event) -> Arc<Published> {
        Arc::new(Published {
            event,
            line: std::sync::OnceLock::new(),
        })
    }

    /// The event's JSON followed by `'\n'`.
    pub fn line(&self) -> &[u8] {
        self.line.get_or_init(|| {
            // Sized for a typical event, so encoding does not reallocate on the way.
            let mut line = Vec::with_capacity(1024);
            // Serializing an `Event` cannot fail: it has only string-keyed maps and no custom
            // serializers, the only sources of serde_json errors when writing to a Vec.
            serde_json::to_writer(&mut line, &self.event)
                .expect("an Event always serializes to JSON");
            line.push(b'\n');
            line
        })
    }
}

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
    tx: mpsc::Sender<Arc<Published>>,
    lost: Arc<AtomicU64>,
}

impl Client {
    /// Offers one event; returns false when the receiver is gone and the entry can be pruned.
    fn offer(&self, ev: &Arc<Published>, lost: &mut u64) -> bool {
        if !self.match_all && !self.filter.matches(&ev.event) {
            return true;
        }
        match self.tx.try_send(Arc::clone(ev)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                *lost += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
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
        self.wanted.store(wanted, Ordering::Relaxed);
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
        let mut lost = 0u64;
        let mut any_closed = false;
        {
            let mut clients = self.shared.clients();
            for client in clients.iter() {
                for ev in evs {
                    if !client.offer(ev, &mut lost) {
                        any_closed = true;
                        break;
                    }
                }
            }
            // Subscriptions remove themselves on drop; this only catches a receiver closed
            // without dropping the Subscription, so the common path does no retain at all.
            if any_closed {
                clients.retain(|c| !c.tx.is_closed());
                self.shared.changed(&clients);
            }
        }
        if lost > 0 {
            self.shared
                .lost_slow_clients
                .fetch_add(lost, Ordering::Relaxed);
        }
    }

    /// Registers a client; events matching `filter` are queued for it until the returned
    /// subscription is dropped.
    pub fn subscribe(&self, filter: EventFilter) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue_len);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(AtomicU64::new(0));
        let mut clients = self.shared.clients();
        clients.push(Client {
            id,
            match_all: filter.is_empty(),
            filter,
            tx,
            lost: Arc::clone(&lost),
        });
        self.shared.changed(&clients);
        drop(clients);
        Subscription {
            id,
            rx,
            lost,
            shared: Arc::clone(&self.shared),
        }
    }

    /// The event types the clients subscribed now ask for. A client that subscribes later
    /// receives what is built after it did.
    pub fn wanted(&self) -> Wanted {
        Wanted(self.shared.wanted.load(Ordering::Relaxed))
    }

    /// Event lines taken off client queues for writing (one per client per event).
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Event lines dropped because a client's queue was full.
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

/// One client's queue of matching events. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Arc<Published>>,
    lost: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// Waits until at least one event is queued, then moves up to `limit` queued events into
    /// `buf`; returns how many were added (0 once the hub is gone). Lets the writer send
    /// everything queued in one write.
    pub async fn recv_many(&mut self, buf: &mut Vec<Arc<Published>>, limit: usize) -> usize {
        let n = self.rx.recv_many(buf, limit.max(1)).await;
        self.shared.delivered.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Events this client lost because its queue was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let id = self.id;
        let mut clients = self.shared.clients();
        clients.retain(|c| c.id != id);
        self.shared.changed(&clients);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_proto::{Attribution, ContainerInfo, EventType, PodInfo, Process, Shared};

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

    #[test]
    fn published_line_is_the_json_and_a_newline() {
        let p = Published::new(event(EventType::Exec, Some("prod")));
        assert_eq!(p.line().last(), Some(&b'\n'));
        let back: Event = serde_json::from_slice(&p.line()[..p.line().len() - 1]).unwrap();
        assert_eq!(back, p.event);
    }

    #[tokio::test]
    async fn filters_are_applied_at_publish() {
        let hub = Hub::new();
        let mut all = hub.subscribe(EventFilter::default());
        let mut prod = hub.subscribe(EventFilter {
            namespace: Some("prod".into()),
            ..Default::default()
        });
        let evs = [
            Published::new(event(EventType::Exec, Some("prod"))),
            Published::new(event(EventType::Exec, Some("dev"))),
            Published::new(event(EventType::Exit, None)),
        ];
        hub.publish_batch(&evs);
        let mut got = Vec::new();
        assert_eq!(all.recv_many(&mut got, 100).await, 3);
        got.clear();
        assert_eq!(prod.recv_many(&mut got, 100).await, 1);
        assert!(Arc::ptr_eq(&got[0], &evs[0]), "the same Arc, not a copy");
        assert_eq!(hub.delivered(), 4);
        assert_eq!(hub.lost_slow_clients(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_loses_events_for_that_client_only() {
        let hub = Hub::with_queue_len(2);
        let slow = hub.subscribe(EventFilter::default());
        let mut fast = hub.subscribe(EventFilter::default());
        let ev = Published::new(event(EventType::Exec, None));
        let mut got = Vec::new();
        for _ in 0..5 {
            hub.publish(&ev);
            assert_eq!(fast.recv_many(&mut got, 10).await, 1);
        }
        assert_eq!(slow.lost(), 3);
        assert_eq!(fast.lost(), 0);
        assert_eq!(hub.lost_slow_clients(), 3);
        assert_eq!(hub.delivered(), 5);
    }

    #[test]
    fn wanted_is_what_the_subscribed_clients_ask_for() {
        let hub = Hub::new();
        assert_eq!(hub.wanted(), Wanted::NONE);
        let execs = hub.subscribe(EventFilter {
            types: Some(vec![EventType::Exec]),
            ..EventFilter::default()
        });
        let w = hub.wanted();
        assert!(w.has(EventType::Exec) && !w.has(EventType::Exit) && !w.has(EventType::Policy));
        // A filter without types may want any type.
        let prod = hub.subscribe(EventFilter {
            namespace: Some("prod".into()),
            ..EventFilter::default()
        });
        assert_eq!(hub.wanted(), Wanted::ALL);
        drop(prod);
        assert!(!hub.wanted().has(EventType::Exit));
        drop(execs);
        assert_eq!(hub.wanted(), Wanted::NONE);
    }

    #[test]
    fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new();
        let a = hub.subscribe(EventFilter::default());
        let b = hub.subscribe(EventFilter::default());
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
