//! The ring-buffer reader task: woken by the kernel when much is queued, and by a short timer
//! otherwise (the programs submit without wake-ups below a threshold, which is most of the cost
//! of a tracer). Each wake-up drains everything queued, as one batch.

use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::Pipeline;
use crate::clock::boot_ns;
use crate::hub::{Hub, Published};

fn drain(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline, out: &mut Vec<Arc<Published>>) {
    let clock = pipeline.begin(boot_ns());
    while let Some(item) = ring.next() {
        pipeline.record(&item, &clock, out);
    }
    pipeline.finish(&clock, out);
}

pub async fn run(
    ring: RingBuf<MapData>,
    mut pipeline: Pipeline,
    hub: Arc<Hub>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, and the AsyncFd owns the ring buffer: the fd
    // stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = Vec::with_capacity(4096);
    loop {
        tokio::select! {
            r = fd.readable_mut() => {
                let mut guard = r?;
                drain(guard.get_inner_mut(), &mut pipeline, &mut out);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(fd.get_mut(), &mut pipeline, &mut out),
            _ = shutdown.changed() => break,
        }
        if !out.is_empty() {
            hub.publish_batch(&out);
            out.clear();
        }
    }
    Ok(())
}
