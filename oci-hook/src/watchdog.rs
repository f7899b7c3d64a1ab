//! The hard bound on the hook's run time: a thread that wakes at the deadline and ends the
//! process with the code its callback decides, whatever step the main thread is stuck in
//! (a runtime that never closes stdin, a hung filesystem, a slow store). It is armed before
//! anything that touches the filesystem, the log included.

use std::time::{Duration, Instant};

/// Arms the watchdog. `fire` runs on the watchdog thread at `deadline` and returns the exit
/// code; it decides the code first, then reports through [`within`], so that a hung log cannot
/// hold the process. Returns false when no thread could be started: the hook then runs
/// unbounded, which the caller logs.
pub fn arm(deadline: Instant, fire: impl FnOnce() -> i32 + Send + 'static) -> bool {
    std::thread::Builder::new()
        .name("watchdog".into())
        // The callback formats one log line; a small stack keeps the thread cheap to start.
        .stack_size(256 << 10)
        .spawn(move || {
            let now = Instant::now();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            // `fire` decides the code before it logs, and catches its own panics; should it
            // panic all the same, the process still ends now, and as a successful hook: nothing
            // is known of the container then, so nothing says to fail it.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(fire)).unwrap_or(0);
            // Ends every thread, including a main thread stuck in a system call.
            std::process::exit(code);
        })
        .is_ok()
}

/// Runs `report` (a log line, a counter) on its own thread and waits for it at most `budget`:
/// a write stuck on a hung filesystem is left behind, to end with the process. Returns whether
/// it finished in time.
pub fn within(budget: Duration, report: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("watchdog-report".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(report));
            let _ = tx.send(());
        });
    spawned.is_ok() && rx.recv_timeout(budget).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_waited_for_only_within_its_budget() {
        let started = Instant::now();
        assert!(!within(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(30))
        }));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(within(Duration::from_secs(5), move || tx.send(7).unwrap()));
        assert_eq!(rx.try_recv(), Ok(7));
        assert!(within(Duration::from_secs(5), || panic!(
            "a report that panics"
        )));
    }
}
