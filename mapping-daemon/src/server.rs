//! The event socket (docs/interfaces.md, "The event socket"; docs/decisions.md #16).
//!
//! Newline-delimited JSON both ways: a client sends exactly one request line and then reads. A
//! `status` or `containers` request gets one JSON line and the close; an `events` request gets a
//! stream of matching event lines from the [`Hub`]. Anything else (malformed, empty, over
//! [`MAX_REQUEST_LINE`], nothing within the request timeout, a second line) gets one
//! `{"error": "..."}` line naming what is wrong, then the close, and counts as a client error.
//!
//! Every connection is its own task: a client that misbehaves, stalls or vanishes only ends its
//! own task. At most [`ServerConfig::max_clients`] event streams are served at once, and, apart
//! from them, at most as many connections that are still sending their request or getting a
//! one-line reply: clients that stream (and may stop reading) can never lock out a `status`
//! request. One more of either gets an error line and the close, counted as refused. A write that
//! cannot complete within [`ServerConfig::write_timeout`] disconnects its client (counted): a
//! client that stops reading holds neither a task nor a slot for long. This module owns the
//! listener and the connections; the events come from the hub and the status from a
//! [`StatusSource`].

use crate::hub::{Hub, Subscription};
use crate::status::StatusSource;
use anyhow::{bail, Context as _};
use podmap_proto::{EventFilter, Request, RequestError, MAX_REQUEST_LINE};
use serde::Serialize;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Interest};
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tracing::{debug, error, info, warn};

/// Where podmapd listens and podmap connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/podmap/podmap.sock";

/// Connections served at once unless told otherwise (`--max-clients`): each streaming client
/// holds a queue of up to 4,096 events, so this bounds what clients can make podmapd hold.
pub const DEFAULT_MAX_CLIENTS: usize = 64;

/// How long one write to a client may block before the client is dropped. A client that reads
/// at all frees its socket buffer long before; one that stopped would otherwise hold its task
/// and its connection slot forever.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused client gets to take its error line before the close.
const ERROR_WRITE_GRACE: Duration = Duration::from_secs(1);

/// After an error line, what we read and discard (at most) before closing. Closing a unix socket
/// with unread input makes the peer's next read fail with ECONNRESET instead of a clean EOF after
/// our error line; draining briefly spares well-behaved clients that, bounded so it costs little.
const DRAIN_TIME: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 1 << 20;

/// How often a streaming client that has shut down its sending side is checked for having gone
/// altogether (with no matching events there would otherwise be no write to notice it).
const HANGUP_PROBE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a new connection has to send its request line (docs/decisions.md #16: 5 s).
    pub request_timeout: Duration,
    /// Most event streams served at once, and, apart from them, most connections still sending
    /// their request or getting a one-line reply; one more gets an error line and the close.
    pub max_clients: usize,
    /// How long one write to a client may block (its socket buffer full because it stopped
    /// reading) before the client is disconnected.
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            request_timeout: Duration::from_secs(5),
            max_clients: DEFAULT_MAX_CLIENTS,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// What a refused client is told, in its `{"error": ...}` line.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(
        "no request line within {}s: send one JSON object such as {{\"events\": {{}}}} and a newline",
        .0.as_secs_f64()
    )]
    Timeout(Duration),
    #[error("a second line: a connection carries exactly one request line")]
    SecondLine,
    #[error("too many clients: podmapd serves {0} connections at once; try again later")]
    TooManyClients(usize),
    #[error("too many event streams: podmapd serves {0} at once; try again later")]
    TooManyStreams(usize),
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    error: &'a str,
}

/// Creates the socket at `path`: its parent directory if missing, mode 0660, group `group` when
/// given (a host gid). A socket file left by a previous run is replaced, but only when nobody
/// answers on it; anything else at `path` is an error. Call from within a tokio runtime.
pub fn bind(path: &Path, group: Option<libc::gid_t>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    remove_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    // A number, never a name: in a pod, names resolve against the image's /etc/group, whose ids
    // mean nothing (or something else) on the host where the socket is used.
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    info!(socket = %path.display(), "listening");
    Ok(listener)
}

fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to remove it",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "{} is in use: another podmapd answers on it",
            path.display()
        ),
        Err(e) => {
            debug!(error = %e, socket = %path.display(), "removing a stale socket");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing the stale socket {}", path.display()))
                }
                _ => Ok(()),
            }
        }
    }
}

/// Serves clients on `listener` until `shutdown` completes, with the default configuration.
pub async fn serve(
    listener: UnixListener,
    hub: Arc<Hub>,
    source: Arc<dyn StatusSource>,
    shutdown: impl Future,
) {
    serve_with_config(listener, hub, source, ServerConfig::default(), shutdown).await
}

/// Serves clients on `listener` until `shutdown` completes; then drops every connection.
pub async fn serve_with_config(
    listener: UnixListener,
    hub: Arc<Hub>,
    source: Arc<dyn StatusSource>,
    config: ServerConfig,
    shutdown: impl Future,
) {
    // One permit per connection until it is answered or admitted as an event stream; a
    // connection over the cap is told so and closed. Streams hold permits of their own, so a
    // full house of streams leaves every connection permit to status and containers requests.
    let slots = Arc::new(Semaphore::new(config.max_clients.max(1)));
    let streams = Arc::new(Semaphore::new(config.max_clients.max(1)));
    // Telling takes up to a second or two per refused connection: bound those too, so a flood
    // of connections cannot pile up tasks and descriptors. Beyond it they are closed unanswered
    // (still counted).
    let refusing = Arc::new(Semaphore::new(config.max_clients.clamp(1, 64)));
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every client ever seen.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        error!(error = %e, "a client connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(handle_client(
                            stream,
                            Arc::clone(&hub),
                            Arc::clone(&source),
                            Arc::clone(&config),
                            Admission {
                                connection: permit,
                                streams: Arc::clone(&streams),
                                refusing: Arc::clone(&refusing),
                            },
                        ));
                    }
                    Err(_) => {
                        hub.record_client_refused();
                        debug!(max = config.max_clients, "refusing a client over the cap");
                        if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
                            let max = config.max_clients;
                            tasks.spawn(async move {
                                refuse_stream(stream, &Refusal::TooManyClients(max)).await;
                                drop(permit);
                            });
                        }
                    }
                },
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    warn!(error = %e, "accepting a client failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    debug!(clients = tasks.len(), "socket server stopping");
    tasks.shutdown().await;
}

/// A connection's place: the permit it holds while it sends its request or gets its reply, and
/// where an event stream takes a place of its own.
struct Admission {
    connection: OwnedSemaphorePermit,
    streams: Arc<Semaphore>,
    /// Places for telling refused clients why (bounded like the accept loop's).
    refusing: Arc<Semaphore>,
}

async fn handle_client(
    mut stream: UnixStream,
    hub: Arc<Hub>,
    source: Arc<dyn StatusSource>,
    config: Arc<ServerConfig>,
    admission: Admission,
) {
    let (rd, mut wr) = stream.split();
    let mut reader = BufReader::new(rd);

    let request = match timeout(config.request_timeout, read_request_line(&mut reader)).await {
        Err(_) => Err(Refusal::Timeout(config.request_timeout)),
        Ok(Err(e)) => {
            debug!(error = %e, "client connection failed before its request");
            return;
        }
        Ok(Ok(line)) => match Request::parse(&line) {
            Err(e) => Err(Refusal::from(e)),
            // Data beyond the first line already arrived: that is a second line.
            Ok(_) if !reader.buffer().is_empty() => Err(Refusal::SecondLine),
            Ok(request) => Ok(request),
        },
    };

    let outcome = match request {
        Ok(Request::Status(_)) => reply(&mut wr, &source.status(), &hub, &config).await,
        Ok(Request::Containers(_)) => reply(&mut wr, &source.containers(), &hub, &config).await,
        Ok(Request::Events(filter)) => match Arc::clone(&admission.streams).try_acquire_owned() {
            Err(_) => {
                hub.record_client_refused();
                // Telling it takes a while (the client may not read): that must not hold a
                // request place, or refused subscribers could lock out status. Beyond the
                // refusing bound the connection is closed unanswered (still counted).
                drop(admission.connection);
                let Ok(_telling) = Arc::clone(&admission.refusing).try_acquire_owned() else {
                    return;
                };
                debug!(max = config.max_clients, "refusing a stream over the cap");
                refuse(
                    &mut reader,
                    &mut wr,
                    &Refusal::TooManyStreams(config.max_clients),
                )
                .await;
                return;
            }
            Ok(place) => {
                // A stream lives on its own place: the connection's goes back to the requests.
                drop(admission.connection);
                drop((reader, wr));
                serve_stream(stream, filter, &hub, &config).await;
                drop(place);
                return;
            }
        },
        Err(refusal) => Err(refusal),
    };
    if let Err(refusal) = outcome {
        hub.record_client_error();
        debug!(%refusal, "refusing a client");
        refuse(&mut reader, &mut wr, &refusal).await;
    }
}

/// Serves an event stream until it ends, and says why it did.
async fn serve_stream(stream: UnixStream, filter: EventFilter, hub: &Hub, config: &ServerConfig) {
    match stream_events(stream, filter, hub, config).await {
        Ok(()) => {}
        Err(StreamError::SecondLine(stream)) => {
            hub.record_client_error();
            debug!(refusal = %Refusal::SecondLine, "refusing a client");
            refuse_stream(stream, &Refusal::SecondLine).await;
        }
        Err(StreamError::WriteTimeout) => {
            // It stopped reading: no error line could reach it either.
            hub.record_client_write_timeout();
            debug!(timeout = ?config.write_timeout, "disconnecting a client that stopped reading");
        }
        Err(StreamError::Io(e)) => debug!(error = %e, "streaming client gone"),
    }
}

/// Reads the request line, without its line end. A line longer than MAX_REQUEST_LINE comes back
/// as MAX_REQUEST_LINE + 1 bytes (so `Request::parse` refuses it as too long) without reading the
/// rest. A line ended by EOF instead of a newline counts as well (`printf ... | nc -U`).
async fn read_request_line(reader: &mut BufReader<ReadHalf<'_>>) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    (&mut *reader)
        .take(MAX_REQUEST_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// Writes one JSON line and closes our sending side.
async fn reply(
    wr: &mut WriteHalf<'_>,
    value: &impl Serialize,
    hub: &Hub,
    config: &ServerConfig,
) -> Result<(), Refusal> {
    let mut line = match serde_json::to_vec(value) {
        Ok(line) => line,
        Err(e) => {
            // Cannot happen with the report types (string keys only); still, tell the client.
            error!(error = %e, "serializing a reply failed");
            let _ = write_error_line(wr, "internal error: the reply could not be serialized").await;
            return Ok(());
        }
    };
    line.push(b'\n');
    let written = timeout(config.write_timeout, async {
        wr.write_all(&line).await?;
        wr.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "client gone before its reply was written"),
        Err(_) => {
            hub.record_client_write_timeout();
            debug!("client did not read its reply in time");
        }
    }
    Ok(())
}

enum StreamError {
    /// The client sent more: it gets its error line on the connection given back.
    SecondLine(UnixStream),
    WriteTimeout,
    Io(io::Error),
}

/// Streams the events matching `filter` until the client goes away or sends anything more.
///
/// The hub writes them to the socket itself while it takes them (docs/decisions.md #42); this
/// task writes out only what waited, and watches the connection for a second line or a hang-up.
/// The connection leaves tokio's registration for one of its own that asks for reads only: a
/// registration for writes would wake the runtime every time the client's reads free space in
/// the socket, that is after every batch.
async fn stream_events(
    stream: UnixStream,
    filter: EventFilter,
    hub: &Hub,
    config: &ServerConfig,
) -> Result<(), StreamError> {
    let socket = stream.into_std().map_err(StreamError::Io)?;
    let hub_socket = socket.try_clone().map_err(StreamError::Io)?;
    let conn = register(socket, Interest::READABLE).map_err(StreamError::Io)?;
    debug!(?filter, "client subscribed");
    let sub = hub.subscribe(filter, OwnedFd::from(hub_socket));
    // Once the client has shut down its sending side, reads return EOF at once; from then on a
    // periodic probe of the socket's hang-up state notices a client that has gone altogether.
    let mut read_closed = false;
    let mut probe = tokio::time::interval_at(Instant::now() + HANGUP_PROBE, HANGUP_PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = sub.needs_writing() => write_backlog(conn.get_ref(), &sub, config).await?,
            ready = conn.readable(), if !read_closed => {
                let mut ready = ready.map_err(StreamError::Io)?;
                let mut byte = [0u8; 1];
                match ready.try_io(|c| peek(c.get_ref(), &mut byte)) {
                    Ok(Ok(0)) => read_closed = true,
                    Ok(Ok(_)) => {
                        // Nothing more for it; a line it has part of goes out whole before the
                        // error line (bounded like any write).
                        sub.unsubscribe();
                        if sub.mid_line() {
                            write_backlog(conn.get_ref(), &sub, config).await?;
                        }
                        drop(sub);
                        let socket = conn.into_inner();
                        return Err(match UnixStream::from_std(socket) {
                            Ok(stream) => StreamError::SecondLine(stream),
                            Err(e) => StreamError::Io(e),
                        });
                    }
                    Ok(Err(e)) => return Err(StreamError::Io(e)),
                    // Not readable after all: readiness cleared, wait again.
                    Err(_would_block) => {}
                }
            },
            _ = probe.tick(), if read_closed => {
                if hung_up(conn.get_ref()).map_err(StreamError::Io)? {
                    debug!(lost = sub.lost(), "streaming client hung up");
                    return Ok(());
                }
            },
        }
    }
}

/// Registers a descriptor owner with tokio for `interest` only.
fn register<T: std::os::fd::AsRawFd>(inner: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` (a std socket or an OwnedFd) owns its descriptor, which stays open and the
    // same for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(inner, interest) }.map_err(io::Error::from)
}

/// Looks at what the client sent without taking it: 0 at the end of its input.
fn peek(socket: &std::os::unix::net::UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a buffer we own, of its length, on a descriptor we own.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether the peer of `socket` has gone altogether (`POLLHUP`), looked at without waiting.
fn hung_up(socket: &std::os::unix::net::UnixStream) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll of one pollfd we own, with a zero timeout.
    if unsafe { libc::poll(&mut pfd, 1, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0)
}

/// Writes out the events the client's socket did not take when the hub wrote them, waiting while
/// it is full. Bounded: a client that stopped reading would hold its connection slot forever;
/// its backlog already sheds events, and the timeout sheds the client. The wait registers the
/// socket for writes only while it lasts.
async fn write_backlog(
    socket: &std::os::unix::net::UnixStream,
    sub: &Subscription,
    config: &ServerConfig,
) -> Result<(), StreamError> {
    let mut writable: Option<AsyncFd<OwnedFd>> = None;
    loop {
        match sub.write_backlog() {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if writable.is_none() {
                    let fd = socket
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(StreamError::Io)?;
                    writable = Some(register(fd, Interest::WRITABLE).map_err(StreamError::Io)?);
                }
                let fd = writable.as_ref().expect("registered above");
                let mut guard = timeout(config.write_timeout, fd.writable())
                    .await
                    .map_err(|_| StreamError::WriteTimeout)?
                    .map_err(StreamError::Io)?;
                // Cleared before the next write: if that one finds the socket full too, the wait
                // after it is for space freed later.
                guard.clear_ready();
            }
            Err(e) => return Err(StreamError::Io(e)),
        }
    }
}

async fn write_error_line(wr: &mut WriteHalf<'_>, msg: &str) -> io::Result<()> {
    let mut line = serde_json::to_vec(&ErrorLine { error: msg })?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    wr.shutdown().await
}

/// Refuses a connection that was never served (over the cap).
async fn refuse_stream(mut stream: UnixStream, refusal: &Refusal) {
    let (rd, mut wr) = stream.split();
    let mut reader = BufReader::new(rd);
    refuse(&mut reader, &mut wr, refusal).await;
}

/// Sends the error line, then drains the client's input briefly so it reads a clean EOF.
async fn refuse(reader: &mut BufReader<ReadHalf<'_>>, wr: &mut WriteHalf<'_>, refusal: &Refusal) {
    let msg = refusal.to_string();
    match timeout(ERROR_WRITE_GRACE, write_error_line(wr, &msg)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "client gone before its error line");
            return;
        }
        Err(_) => {
            debug!("client did not take its error line in time");
            return;
        }
    }
    let _ = timeout(DRAIN_TIME, async {
        let mut drained = 0usize;
        while drained < DRAIN_BYTES {
            let n = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(buf) => buf.len(),
            };
            reader.consume(n);
            drained += n;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_problem() {
        let t = Refusal::Timeout(Duration::from_secs(5)).to_string();
        assert!(t.starts_with("no request line within 5s"), "{t}");
        assert!(Refusal::SecondLine.to_string().contains("second line"));
        assert!(Refusal::TooManyClients(64)
            .to_string()
            .starts_with("too many clients: podmapd serves 64 connections at once"));
        assert!(Refusal::from(RequestError::TooLong)
            .to_string()
            .contains("longer than 65536 bytes"));
        let line = serde_json::to_string(&ErrorLine { error: "x \"y\"" }).unwrap();
        assert_eq!(line, r#"{"error":"x \"y\""}"#);
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/podmap.sock");

        // A stale socket: bound, then its listener dropped without removing the file.
        let stale = bind(&path, None).unwrap();
        drop(stale);
        assert!(path.exists());
        let live = bind(&path, None).expect("a stale socket is replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        // A live one is left alone.
        let err = bind(&path, None).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live);

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"x").unwrap();
        let err = bind(&file, None).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert!(file.exists());
    }
}
