//! Panics end at the hook's edge. Left alone, a panic prints to stderr and exits 101, which
//! runc and crun take as a failed createRuntime: every container on the node would fail on a
//! bug of ours, or on a dependency's (sled panics on some corrupt databases). The edge
//! (`Hook::guard`, and `main` for what runs before the hook exists) turns it into one log line
//! and a counted failure, with the exit code any other failure gets.

use std::any::Any;
use std::sync::Mutex;

/// Where the last panic happened, kept by the quiet hook for the log line (the payload, which
/// `catch_unwind` returns, has only the message).
static LOCATION: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the default panic hook, which writes the panic to stderr: runtimes pass a failing
/// hook's stderr on as the container's error, and the edge logs the panic instead.
pub fn install_quiet_hook() {
    std::panic::set_hook(Box::new(|info| {
        // try_lock: a panic inside this hook (it does not panic) must not deadlock on itself.
        if let Ok(mut loc) = LOCATION.try_lock() {
            *loc = info.location().map(|l| l.to_string());
        }
    }));
}

/// The panic's message, with its location when the quiet hook saw it.
pub fn describe(payload: &(dyn Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    let at = LOCATION.try_lock().ok().and_then(|mut l| l.take());
    match at {
        Some(at) => format!("{msg:?} at {at}"),
        None => format!("{msg:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_both_payload_kinds() {
        let s = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert!(describe(&*s).starts_with("\"static\""), "{}", describe(&*s));
        let n = 3;
        let f = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert!(describe(&*f).starts_with("\"formatted 3\""));
        let o = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert!(describe(&*o).starts_with("\"a panic without a message\""));
    }
}
