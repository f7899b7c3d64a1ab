//! Ctrl-C and SIGTERM for the long-running commands that own a private containerd (the demo,
//! the bench): the signal only sets a flag, the command's loop sees it and returns, and the
//! normal drops tear containerd, its shims, cgroups and podmapd down. containerd runs in its
//! own process group, so the terminal's signal never reaches it directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// How often a wait looks at the flag: short enough that Ctrl-C feels immediate.
const POLL: Duration = Duration::from_millis(50);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the flag.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only performs an atomic store.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Waits until an interrupt comes (true) or `limit` has passed (false). `None`, or a limit too
/// far away to be a point in time, waits for the interrupt alone: "until Ctrl-C".
pub fn wait(limit: Option<Duration>) -> bool {
    let end = limit.and_then(|d| Instant::now().checked_add(d));
    loop {
        if requested() {
            return true;
        }
        let step = match end {
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return requested();
                }
                left.min(POLL)
            }
            None => POLL,
        };
        std::thread::sleep(step);
    }
}

/// Sleeps up to `d`, returning early (true) when an interrupt came.
pub fn sleep(d: Duration) -> bool {
    wait(Some(d))
}

/// The error of a command cut short by the user: callers that treat Ctrl-C as the normal way
/// to stop find it with `downcast_ref`.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// `Err(Interrupted)` once an interrupt came.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        return Err(Interrupted.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the flag is process-wide, so its two halves must not run concurrently.
    #[test]
    fn waits_end_at_their_limit_or_the_interrupt_and_never_overflow() {
        let t = Instant::now();
        assert!(!wait(Some(Duration::from_millis(120))), "no interrupt came");
        assert!(t.elapsed() >= Duration::from_millis(120));

        // Duration::MAX added to an Instant overflows: the first run's "until Ctrl-C" panicked
        // there. With the flag set, each wait returns at its first look.
        REQUESTED.store(true, Ordering::SeqCst);
        assert!(wait(Some(Duration::MAX)));
        assert!(wait(None));
        assert!(sleep(Duration::MAX));
        assert!(check().unwrap_err().downcast_ref::<Interrupted>().is_some());
        REQUESTED.store(false, Ordering::SeqCst);
    }
}
