//! The ring-buffer reader task. Busy, it drains on a short timer (the programs submit without
//! wake-ups below a threshold, which is most of the cost of a tracer) and whenever the kernel
//! wakes it because much is queued. Idle, it stops its timer: it tells the programs it sleeps,
//! and the next record wakes it. Each wake-up drains what is queued in batches of at most
//! `MAX_BATCH` records: each batch is published, then the reader yields, so a storm never
//! starves the socket and metrics sharing its thread, and the batch buffer stays
//! bounded (docs/decisions.md #27).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use podmap_bpf::programs::ReaderFlag;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::Pipeline;
use crate::clock::boot_ns;
use crate::hub::{Hub, Published};
use crate::stats::Stats;

/// Empty polls in a row before the reader sleeps.
const IDLE_POLLS: u32 = 10;
/// A sleeping reader still looks this often. A record submitted while the reader was falling
/// asleep (it saw the flag clear, the reader then saw the ring empty) wakes nobody: this bounds
/// its delay, and such records are counted.
const SLEEPING_POLL: Duration = Duration::from_secs(1);
/// Records read before the batch is published and the reader yields: about 4 ms of work on the
/// development machines, and a batch buffer of at most a few thousand events.
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
    out: &mut Vec<Arc<Published>>,
) -> Drained {
    let clock = pipeline.begin(boot_ns());
    let mut read = 0;
    while read < MAX_BATCH {
        let Some(item) = ring.next() else { break };
        pipeline.record(&item, &clock, out);
        read += 1;
    }
    pipeline.finish(&clock, out);
    Drained {
        read,
        more: read == MAX_BATCH,
    }
}

/// Hands the batch to the clients; with records left in the ring (`more`), lets every other
/// task on the thread run first. (Otherwise the next `select!` waits anyway.)
async fn publish(hub: &Hub, out: &mut Vec<Arc<Published>>, more: bool) {
    if !out.is_empty() {
        hub.publish_batch(out);
        out.clear();
    }
    if more {
        tokio::task::yield_now().await;
    }
}

pub async fn run(
    ring: RingBuf<MapData>,
    mut flag: ReaderFlag,
    mut pipeline: Pipeline,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, and the AsyncFd owns the ring buffer: the fd
    // stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = Vec::with_capacity(4096);
    let mut empty_polls = 0u32;
    let mut asleep = false;
    // Cleared for good if the flag cannot be written: the reader then polls, as it always could.
    let mut can_sleep = true;
    // Records left in the ring by a drain that stopped at MAX_BATCH.
    let mut more = false;
    loop {
        tokio::select! {
            r = fd.readable_mut(), if !more => {
                let mut guard = r?;
                more = drain(guard.get_inner_mut(), &mut pipeline, &mut out).more;
                if !more {
                    // Only a drained ring may forget it was readable: the programs submit
                    // without wake-ups, so nothing else would say records are left.
                    guard.clear_ready();
                }
                if asleep {
                    asleep = false;
                    Stats::inc(&stats.reader_woken);
                    wake(&mut flag, &mut tick, &stats);
                }
                empty_polls = 0;
            }
            _ = std::future::ready(()), if more => {
                more = drain(fd.get_mut(), &mut pipeline, &mut out).more;
                empty_polls = 0;
                if asleep {
                    // Records kept coming as it fell asleep: busy after all.
                    asleep = false;
                    wake(&mut flag, &mut tick, &stats);
                }
            }
            _ = next_poll(asleep, &mut tick), if !more => {
                let drained = drain(fd.get_mut(), &mut pipeline, &mut out);
                let read = drained.read;
                more = drained.more;
                if asleep {
                    if read > 0 {
                        Stats::inc(&stats.reader_late);
                        asleep = false;
                        wake(&mut flag, &mut tick, &stats);
                    }
                } else if read > 0 || pipeline.held() > 0 || !can_sleep {
                    // Held events are released by polls: no sleeping while any wait.
                    empty_polls = 0;
                } else {
                    empty_polls += 1;
                    if empty_polls >= IDLE_POLLS {
                        empty_polls = 0;
                        asleep = fall_asleep(&mut flag);
                        can_sleep = asleep;
                        // What came in before the programs saw the flag.
                        more = drain(fd.get_mut(), &mut pipeline, &mut out).more;
                        if asleep {
                            Stats::inc(&stats.reader_sleeps);
                            stats.reader_asleep.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
        publish(&hub, &mut out, more).await;
    }
    Ok(())
}

async fn next_poll(asleep: bool, tick: &mut tokio::time::Interval) {
    if asleep {
        tokio::time::sleep(SLEEPING_POLL).await;
    } else {
        tick.tick().await;
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

/// Back to polling: the flag is cleared so records stop waking the reader one by one (the
/// record that woke it cleared it already, unless something else woke it).
fn wake(flag: &mut ReaderFlag, tick: &mut tokio::time::Interval, stats: &Stats) {
    stats.reader_asleep.store(false, Ordering::Relaxed);
    if let Err(e) = flag.set(false) {
        tracing::warn!(error = %e, "clearing the event reader's sleep flag");
    }
    tick.reset();
}
