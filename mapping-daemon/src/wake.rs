//! Waking podmapd's own threads from others: an eventfd one thread sleeps on in `poll(2)` or
//! `epoll_wait(2)` and any other writes to. The reader is stopped through one; the housekeeping
//! thread sleeps on one beside the directory watches, so it wakes for a stop, a pod change or a
//! watched directory's change rather than on a fixed tick.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An eventfd, non-blocking: [`Wake::wake`] never waits, whoever calls it.
#[derive(Debug)]
pub struct Wake(OwnedFd);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd(2) with no pointers; a new fd is owned below or an error returned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable until [`Wake::clear`]. Wakes that come before the sleeper
    /// looks are not lost; several count as one.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write from a live u64 to the eventfd this Wake owns. It fails only
        // when the counter would overflow, and then the descriptor is readable already.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Takes the wakes so far: the descriptor is not readable again until the next.
    fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: an 8-byte read into a live u64 from the eventfd this Wake owns; EAGAIN (no
        // wake) leaves it untouched.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }

    /// Sleeps until [`Wake::wake`], until `other` is readable, or for `timeout`, and clears
    /// the wakes. Returns whether something woke it before the timeout.
    pub fn sleep(&self, other: Option<RawFd>, timeout: Duration) -> io::Result<bool> {
        let mut fds = [self.0.as_raw_fd(), other.unwrap_or(-1)].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let ms = timeout_ms(timeout);
        // SAFETY: poll of two pollfds in a live local array (a negative fd is ignored).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            };
        }
        if fds[0].revents != 0 {
            self.clear();
        }
        Ok(n > 0)
    }
}

/// A timeout as `poll(2)` and `epoll_wait(2)` take it: milliseconds, rounded up so a short wait
/// is not a busy look, zero for a look without waiting.
pub fn timeout_ms(timeout: Duration) -> i32 {
    timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
}

impl AsRawFd for Wake {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_wake_ends_the_sleep_and_is_taken_by_it() {
        let w = Wake::new().unwrap();
        let t = Instant::now();
        assert!(
            !w.sleep(None, Duration::from_millis(30)).unwrap(),
            "timed out"
        );
        assert!(t.elapsed() >= Duration::from_millis(30));

        // A wake before the sleep is kept, and several count as one.
        w.wake();
        w.wake();
        assert!(w.sleep(None, Duration::from_secs(60)).unwrap());
        assert!(
            !w.sleep(None, Duration::from_millis(10)).unwrap(),
            "the sleep took every wake"
        );

        // From another thread, while it sleeps.
        let w = Arc::new(w);
        let other = w.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.wake();
        });
        assert!(w.sleep(None, Duration::from_secs(60)).unwrap());
        waker.join().unwrap();
    }

    #[test]
    fn a_readable_descriptor_ends_the_sleep() {
        let w = Wake::new().unwrap();
        let other = Wake::new().unwrap();
        other.wake();
        assert!(w
            .sleep(Some(other.as_raw_fd()), Duration::from_secs(60))
            .unwrap());
        other.clear();
        assert!(!w
            .sleep(Some(other.as_raw_fd()), Duration::from_millis(10))
            .unwrap());
    }
}
