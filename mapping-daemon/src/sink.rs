//! A streaming client's socket, as the hub writes it (docs/decisions.md #42).
//!
//! Whoever publishes (the reader thread) writes a client's events straight to its socket,
//! without blocking, while the socket takes them: in the steady state an event reaches every
//! client within the reader's own wake-up, and no task is woken for it. What the socket does not
//! take waits in a bounded backlog, in order, and the client's task (`server.rs`) writes it out as
//! the socket drains; while a backlog waits, new events join its end, and past the limit they are
//! lost (the caller counts them). A write that fails ends the stream: the task is told and
//! closes the connection.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::published::Published;

/// Most lines handed to one `sendmsg`: the kernel's IOV_MAX.
const MAX_IOV: usize = 1024;

pub(crate) struct Sink {
    /// The client's socket: a descriptor of its own (the connection's task holds another), so it
    /// stays valid for as long as the hub may write to it. Non-blocking: the flag is the open
    /// file's, which tokio set.
    fd: OwnedFd,
    state: Mutex<State>,
    /// Wakes the client's task: a backlog to write, or a write that failed.
    wake: Notify,
    /// Most events the backlog holds.
    limit: usize,
}

#[derive(Default)]
struct State {
    backlog: VecDeque<Arc<Published>>,
    /// Bytes of the backlog's first line already written.
    front_written: usize,
    /// The write that failed, for the task to end the stream with.
    failed: Option<io::Error>,
}

/// What became of the events offered to a sink.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Offered {
    /// Lines written whole to the socket now.
    pub written: u64,
    /// Events the full backlog had no room for.
    pub lost: u64,
}

/// How far a write got: lines written whole, and bytes of the next one written.
struct Progress {
    lines: usize,
    next_written: usize,
}

impl Sink {
    pub fn new(fd: OwnedFd, limit: usize) -> Sink {
        Sink {
            fd,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            limit: limit.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state whole before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the client `events`, in order: written now while the socket takes them (only when
    /// nothing is waiting, so lines never overtake), the rest queued up to the limit.
    pub fn offer(&self, events: &[&Arc<Published>]) -> Offered {
        let mut st = self.state();
        if st.failed.is_some() {
            // The stream is ending: its task has been told.
            return Offered::default();
        }
        let mut rest = events;
        let mut written = 0;
        if st.backlog.is_empty() {
            match write_events(&self.fd, events, 0) {
                Ok(p) => {
                    written = p.lines as u64;
                    rest = &events[p.lines..];
                    st.front_written = p.next_written;
                }
                Err(e) => {
                    st.failed = Some(e);
                    self.wake.notify_one();
                    return Offered::default();
                }
            }
            if rest.is_empty() {
                return Offered { written, lost: 0 };
            }
            self.wake.notify_one();
        }
        // An empty backlog has room for at least one event (the limit is at least 1): a line
        // begun above always goes on, or the client would read half of it.
        let room = self.limit.saturating_sub(st.backlog.len());
        let queued = rest.len().min(room);
        st.backlog
            .extend(rest[..queued].iter().map(|e| Arc::clone(e)));
        Offered {
            written,
            lost: (rest.len() - queued) as u64,
        }
    }

    /// Whether the client has read part of a line whose rest still waits: nothing else may be
    /// written to it before that rest.
    pub fn mid_line(&self) -> bool {
        self.state().front_written > 0
    }

    /// Waits until the sink needs its task: a backlog to write out, or a failed write.
    pub async fn needs_writing(&self) {
        self.wake.notified().await
    }

    /// Writes the backlog out, as far as the socket takes it: how many lines went out whole,
    /// and `WouldBlock` if the socket filled before the backlog emptied. A failed write (here or
    /// in [`Sink::offer`]) comes back as the error.
    pub fn write_backlog(&self) -> (u64, io::Result<()>) {
        let mut st = self.state();
        if let Some(e) = st.failed.take() {
            return (0, Err(e));
        }
        let st = &mut *st;
        let p = match write_events(&self.fd, st.backlog.make_contiguous(), st.front_written) {
            Ok(p) => p,
            Err(e) => return (0, Err(e)),
        };
        st.backlog.drain(..p.lines);
        st.front_written = p.next_written;
        let result = if st.backlog.is_empty() {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        };
        (p.lines as u64, result)
    }
}

/// Writes the events' lines in order (the first from byte `offset` on), `MAX_IOV` lines per
/// non-blocking `sendmsg`, for as long as the socket takes all it is given: how far it got. A
/// full socket is not an error (the progress says where it stopped); a failed call is.
fn write_events<E: AsRef<Published>>(
    fd: &OwnedFd,
    events: &[E],
    offset: usize,
) -> io::Result<Progress> {
    let mut p = Progress {
        lines: 0,
        next_written: offset,
    };
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(events.len().min(MAX_IOV));
    while p.lines < events.len() {
        iov.clear();
        for (i, e) in events[p.lines..].iter().take(MAX_IOV).enumerate() {
            let line = e.as_ref().line();
            let line = if i == 0 {
                &line[p.next_written..]
            } else {
                line
            };
            iov.push(libc::iovec {
                iov_base: line.as_ptr() as *mut libc::c_void,
                iov_len: line.len(),
            });
        }
        let sent = match send(fd, &iov) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(p),
            Err(e) => return Err(e),
        };
        let mut left = sent;
        for v in &iov {
            if left < v.iov_len {
                p.next_written += left;
                // Took less than it was given: the socket is full.
                return Ok(p);
            }
            left -= v.iov_len;
            p.lines += 1;
            p.next_written = 0;
        }
    }
    Ok(p)
}

/// One non-blocking `sendmsg` of `iov`, retried on EINTR.
fn send(fd: &OwnedFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: sendmsg on a descriptor we own, with iovecs pointing into lines the caller
        // keeps alive for the call; MSG_NOSIGNAL turns a gone client into EPIPE, not a signal.
        let n = unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
