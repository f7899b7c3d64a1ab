//! The hard bound on the hook's run time: a thread that wakes at the deadline and ends the
//! process with the code its callback decides, whatever step the main thread is stuck in
//! (a runtime that never closes stdin, a hung filesystem, a slow store).

use std::time::Instant;

/// Arms the watchdog. `fire` runs on the watchdog thread at `deadline` (it logs and counts the
/// timeout) and returns the exit code. Returns false when no thread could be started: the hook
/// then runs unbounded, which the caller logs.
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
