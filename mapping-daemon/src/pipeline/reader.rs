//! The ring-buffer reader: a thread of its own, blocked in `epoll_wait` on the ring buffer's fd.
//! Busy, it drains every `poll` (the epoll timeout: the programs submit execs and exits without
//! wake-ups below a threshold, which is most of the cost of a tracer) and whenever the kernel
//! wakes it: much queued, or a rare cgroup or policy record. Idle, it stops polling: it tells the programs it sleeps, and the next record
//! wakes it. Each wake-up drains what is queued in batches of at most `MAX_BATCH` records, each
//! handed to the hub as it is read, so the batch buffer stays bounded (docs/decisions.md #27).
//!
//! Why a thread and not a tokio task: decode, attribute and enrich run beside the runtime, so a
//! busy socket or metrics scrape never delays a drain and a drain never delays them. The hub
//! writes each batch to the clients' sockets from this thread without blocking, and wakes a
//! client's task only for what a full socket did not take (docs/decisions.md #42). The thread
//! did not make a poll cheaper: measured against the tokio task, CPU per event was the same
//! within the noise, at 200 execs/s as flat out (docs/decisions.md #27); a poll's cost is the
//! wake-up itself, which is why the interval is as long as the latency bound allows
//! (docs/decisions.md #47).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use podmap_bpf::programs::ReaderFlag;

use super::Pipeline;
use crate::clock::boot_ns;
use crate::hub::{Hub, Published};
use crate::stats::Stats;
use crate::wake::{timeout_ms, Wake};

/// Empty polls in a row before the reader sleeps.
const IDLE_POLLS: u32 = 10;
/// A sleeping reader still looks this often. A record submitted while the reader was falling
/// asleep (it saw the flag clear, the reader then saw the ring empty) wakes nobody: this bounds
/// its delay, and such records are counted.
const SLEEPING_POLL: Duration = Duration::from_secs(1);
/// Records read before the batch is published: about 4 ms of work on the development machines,
/// and a batch buffer of at most a few thousand events.
pub const MAX_BATCH: usize = 2048;

/// What a drain read, and whether it stopped at `MAX_BATCH` with records left.
struct Drained {
    read: usize,
    more: bool,
}

/// Drains up to `MAX_BATCH` records from the ring.
fn drain(
    ring: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    hub: &Hub,
    out: &mut Vec<Arc<Published>>,
) -> Drained {
    let clock = pipeline.begin(boot_ns());
    let mut read = 0;
    while read < MAX_BATCH {
        let Some(item) = ring.next() else { break };
        pipeline.want(hub.wanted());
        pipeline.record(&item, &clock, out);
        read += 1;
    }
    pipeline.want(hub.wanted());
    pipeline.finish(&clock, out);
    Drained {
        read,
        more: read == MAX_BATCH,
    }
}

/// Hands the batch to the clients.
fn publish(hub: &Hub, out: &mut Vec<Arc<Published>>) {
    if !out.is_empty() {
        hub.publish_batch(out);
        out.clear();
    }
}

/// The running reader thread. Dropping it does not stop it: call [`Reader::stop`].
pub struct Reader {
    thread: std::thread::JoinHandle<io::Result<()>>,
    stop: Wake,
}

impl Reader {
    /// Starts the reader thread. Its epoll set and stop eventfd are made here, so a failure to
    /// make them is an error of the start, not of the thread. `end` is dropped when the thread
    /// ends.
    pub fn spawn(
        ring: RingBuf<MapData>,
        flag: ReaderFlag,
        pipeline: Pipeline,
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        poll: Duration,
        end: impl Send + 'static,
    ) -> io::Result<Reader> {
        let stop = Wake::new()?;
        let epoll = Epoll::new(ring.as_raw_fd(), stop.as_raw_fd())?;
        let state = ReaderState {
            ring,
            flag,
            pipeline,
            hub,
            stats,
            poll,
            epoll,
        };
        let thread = std::thread::Builder::new()
            .name("podmap-reader".into())
            .spawn(move || {
                // Held for the thread's life, however it ends (the caller's end signal).
                let _end = end;
                state.run()
            })?;
        Ok(Reader { thread, stop })
    }

    /// Tells the thread to stop; it does within one batch.
    pub fn stop(&self) {
        self.stop.wake();
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread; its error, or a panic as an error.
    pub fn join(self) -> io::Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the event reader thread panicked")))
    }
}

/// What the reader thread owns.
struct ReaderState {
    ring: RingBuf<MapData>,
    flag: ReaderFlag,
    pipeline: Pipeline,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    poll: Duration,
    epoll: Epoll,
}

/// What one `epoll_wait` saw.
#[derive(Default)]
struct Ready {
    ring: bool,
    stop: bool,
}

impl ReaderState {
    fn run(mut self) -> io::Result<()> {
        let mut out = Vec::with_capacity(4096);
        let mut empty_polls = 0u32;
        let mut asleep = false;
        // Cleared for good if the flag cannot be written: the reader then polls, as it always
        // could.
        let mut can_sleep = true;
        // Records left in the ring by a drain that stopped at MAX_BATCH: read on at once.
        let mut more = false;
        loop {
            let timeout = if more {
                Duration::ZERO
            } else if asleep {
                SLEEPING_POLL
            } else {
                self.poll
            };
            let ready = self.epoll.wait(timeout)?;
            if ready.stop {
                return Ok(());
            }
            // A look at once because the last drain stopped at MAX_BATCH, not a poll.
            let continued = more;
            let drained = drain(&mut self.ring, &mut self.pipeline, &self.hub, &mut out);
            more = drained.more;
            if ready.ring {
                // The kernel woke it: a record while it slept, or much queued while busy.
                if asleep {
                    asleep = false;
                    Stats::inc(&self.stats.reader_woken);
                    self.wake();
                }
                empty_polls = 0;
            } else if asleep {
                if drained.read > 0 {
                    // Its once-a-second look found records that woke nobody; or records kept
                    // coming as it fell asleep (the drain then stopped at MAX_BATCH): busy
                    // after all.
                    if !continued {
                        Stats::inc(&self.stats.reader_late);
                    }
                    asleep = false;
                    self.wake();
                }
            } else if drained.read > 0 || more || self.pipeline.held() > 0 || !can_sleep {
                // Held events are released by polls: no sleeping while any wait.
                empty_polls = 0;
            } else {
                empty_polls += 1;
                if empty_polls >= IDLE_POLLS {
                    empty_polls = 0;
                    asleep = fall_asleep(&mut self.flag);
                    can_sleep = asleep;
                    // What came in before the programs saw the flag.
                    more = drain(&mut self.ring, &mut self.pipeline, &self.hub, &mut out).more;
                    if asleep {
                        Stats::inc(&self.stats.reader_sleeps);
                        self.stats.reader_asleep.store(true, Ordering::Relaxed);
                    }
                }
            }
            publish(&self.hub, &mut out);
        }
    }

    /// Back to polling: the flag is cleared so records stop waking the reader one by one (the
    /// record that woke it cleared it already, unless something else woke it).
    fn wake(&mut self) {
        self.stats.reader_asleep.store(false, Ordering::Relaxed);
        if let Err(e) = self.flag.set(false) {
            tracing::warn!(error = %e, "clearing the event reader's sleep flag");
        }
    }
}

/// Tells the programs the reader sleeps; false (and the reader keeps polling) if it cannot.
fn fall_asleep(flag: &mut ReaderFlag) -> bool {
    match flag.set(true) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the event reader cannot sleep: it polls from now on");
            false
        }
    }
}

const RING: u64 = 0;
const STOP: u64 = 1;

/// An epoll set of the ring buffer and the stop eventfd, edge-triggered: the ring is reported
/// when the kernel wakes the reader, never merely because records it was not woken for are
/// queued (those wait for the poll, which is the point of submitting them without a wake-up).
struct Epoll(OwnedFd);

impl Epoll {
    fn new(ring: RawFd, stop: RawFd) -> io::Result<Epoll> {
        // SAFETY: epoll_create1(2) with no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let epoll = Epoll(unsafe { OwnedFd::from_raw_fd(fd) });
        for (target, token) in [(ring, RING), (stop, STOP)] {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: token,
            };
            // SAFETY: both fds are open for the Epoll's life (the ring buffer and the stop
            // eventfd live as long as the thread that owns this set); ev is a live local.
            let r = unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, target, &mut ev) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(epoll)
    }

    /// Waits up to `timeout` (rounded up to a millisecond; zero looks without waiting).
    fn wait(&self, timeout: Duration) -> io::Result<Ready> {
        let ms = timeout_ms(timeout);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        loop {
            // SAFETY: the buffer holds 2 events and lives across the call.
            let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), 2, ms) };
            if n >= 0 {
                let mut ready = Ready::default();
                for ev in &events[..n as usize] {
                    match ev.u64 {
                        RING => ready.ring = true,
                        _ => ready.stop = true,
                    }
                }
                return Ok(ready);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
