//! The ring-buffer reader task. Busy, it drains on a short timer (the programs submit without
//! wake-ups below a threshold, which is most of the cost of a tracer) and whenever the kernel
//! wakes it because much is queued. Idle, it stops its timer: it tells the programs it sleeps,
//! and the next record wakes it. Each wake-up drains everything queued, as one batch.

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

/// Drains the ring; returns how many records it read.
fn drain(
    ring: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    out: &mut Vec<Arc<Published>>,
) -> usize {
    let clock = pipeline.begin(boot_ns());
    let mut n = 0;
    while let Some(item) = ring.next() {
        pipeline.record(&item, &clock, out);
        n += 1;
    }
    pipeline.finish(&clock, out);
    n
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
    loop {
        tokio::select! {
            r = fd.readable_mut() => {
                let mut guard = r?;
                drain(guard.get_inner_mut(), &mut pipeline, &mut out);
                guard.clear_ready();
                if asleep {
                    asleep = false;
                    Stats::inc(&stats.reader_woken);
                    wake(&mut flag, &mut tick, &stats);
                }
                empty_polls = 0;
            }
            _ = next_poll(asleep, &mut tick) => {
                let read = drain(fd.get_mut(), &mut pipeline, &mut out);
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
                        drain(fd.get_mut(), &mut pipeline, &mut out);
                        if asleep {
                            Stats::inc(&stats.reader_sleeps);
                            stats.reader_asleep.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
        if !out.is_empty() {
            hub.publish_batch(&out);
            out.clear();
        }
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
