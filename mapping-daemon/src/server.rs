//! The event socket (docs/interfaces.md, "The event socket"; docs/decisions.md #16).
//!
//! Newline-delimited JSON both ways: a client sends exactly one request line and then reads. A
//! `status` or `containers` request gets one JSON line and the close; an `events` request gets a
//! stream of matching event lines from the [`Hub`]. Anything else (malformed, empty, over
//! [`MAX_REQUEST_LINE`], nothing within the request timeout, a second line) gets one
//! `{"error": "..."}` line naming what is wrong, then the close, and counts as a client error.
//!
//! Every connection is its own task: a client that misbehaves, stalls or vanishes only ends its
//! own task. This module owns the listener and the connections; the events come from the hub and
//! the status from a [`StatusSource`].

use crate::hub::{Hub, Subscription};
use crate::status::StatusSource;
use anyhow::{bail, Context as _};
use podmap_proto::{Request, RequestError, MAX_REQUEST_LINE};
use serde::Serialize;
use std::ffi::CString;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Interest};
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tracing::{debug, error, info, warn};

/// Where podmapd listens and podmap connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/podmap/podmap.sock";

/// The group given access to the socket, where it exists.
const SOCKET_GROUP: &str = "podmap";

/// How long a refused client gets to take its error line before the close.
const ERROR_WRITE_GRACE: Duration = Duration::from_secs(1);

/// How long a status or containers reply may take to write: a client that never reads must not
/// hold its task forever.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Most events written to one client in one write.
    pub max_batch: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            request_timeout: Duration::from_secs(5),
            max_batch: 1024,
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
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    error: &'a str,
}

/// Creates the socket at `path`: its parent directory if missing, mode 0660, group `podmap` when
/// that group exists. A socket file left by a previous run is replaced, but only when nobody
/// answers on it; anything else at `path` is an error. Call from within a tokio runtime.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    remove_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    match group_id(SOCKET_GROUP) {
        Ok(Some(gid)) => std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {SOCKET_GROUP}", path.display()))?,
        Ok(None) => debug!("no group {SOCKET_GROUP}: the socket stays root's group"),
        Err(e) => {
            warn!(error = %e, "looking up group {SOCKET_GROUP} failed; not changing the socket's group")
        }
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

/// The gid of group `name`, None when there is no such group.
fn group_id(name: &str) -> io::Result<Option<libc::gid_t>> {
    let cname = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut grp = MaybeUninit::<libc::group>::uninit();
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call and buf.len() is the buffer's real length;
        // the reentrant getgrnam_r (unlike getgrnam) keeps no static state across threads.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                grp.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            // SAFETY: getgrnam_r returned 0 with a non-null result, so it filled `grp`.
            0 => return Ok(Some(unsafe { grp.assume_init() }.gr_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
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
                Ok((stream, _)) => {
                    tasks.spawn(handle_client(
                        stream,
                        Arc::clone(&hub),
                        Arc::clone(&source),
                        Arc::clone(&config),
                    ));
                }
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

async fn handle_client(
    mut stream: UnixStream,
    hub: Arc<Hub>,
    source: Arc<dyn StatusSource>,
    config: Arc<ServerConfig>,
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
        Ok(Request::Status(_)) => reply(&mut wr, &source.status()).await,
        Ok(Request::Containers(_)) => reply(&mut wr, &source.containers()).await,
        Ok(Request::Events(filter)) => {
            debug!(?filter, "client subscribed");
            let sub = hub.subscribe(filter);
            match stream_events(&mut reader, &mut wr, sub, config.max_batch).await {
                Ok(()) => Ok(()),
                Err(StreamError::SecondLine) => Err(Refusal::SecondLine),
                Err(StreamError::Io(e)) => {
                    debug!(error = %e, "streaming client gone");
                    Ok(())
                }
            }
        }
        Err(refusal) => Err(refusal),
    };
    if let Err(refusal) = outcome {
        hub.record_client_error();
        debug!(%refusal, "refusing a client");
        refuse(&mut reader, &mut wr, &refusal).await;
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
async fn reply(wr: &mut WriteHalf<'_>, value: &impl Serialize) -> Result<(), Refusal> {
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
    let written = timeout(REPLY_WRITE_TIMEOUT, async {
        wr.write_all(&line).await?;
        wr.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "client gone before its reply was written"),
        Err(_) => debug!("client did not read its reply in time"),
    }
    Ok(())
}

enum StreamError {
    SecondLine,
    Io(io::Error),
}

/// Streams the subscription's events until the client goes away or sends anything more.
async fn stream_events(
    reader: &mut BufReader<ReadHalf<'_>>,
    wr: &mut WriteHalf<'_>,
    mut sub: Subscription,
    max_batch: usize,
) -> Result<(), StreamError> {
    let mut batch = Vec::with_capacity(max_batch.min(1024));
    let mut out = Vec::with_capacity(64 * 1024);
    // Once the client has shut down its sending side, reads return EOF at once; from then on a
    // periodic probe of the socket's hang-up state notices a client that has gone altogether.
    let mut read_closed = false;
    let mut probe = tokio::time::interval_at(Instant::now() + HANGUP_PROBE, HANGUP_PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = sub.recv_many(&mut batch, max_batch) => {
                if n == 0 {
                    // The hub is gone: the daemon is shutting down.
                    return Ok(());
                }
                // Everything queued goes out in one write: one syscall per wake-up, not per event.
                out.clear();
                for ev in batch.drain(..) {
                    out.extend_from_slice(ev.line());
                }
                wr.write_all(&out).await.map_err(StreamError::Io)?;
            }
            // fill_buf is cancel-safe: whatever it reads stays in the buffer.
            got = reader.fill_buf(), if !read_closed => match got {
                Ok([]) => read_closed = true,
                Ok(_) => return Err(StreamError::SecondLine),
                Err(e) => return Err(StreamError::Io(e)),
            },
            ready = async {
                probe.tick().await;
                wr.as_ref().ready(Interest::WRITABLE).await
            }, if read_closed => match ready {
                Ok(r) if r.is_write_closed() => {
                    debug!(lost = sub.lost(), "streaming client hung up");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(StreamError::Io(e)),
            },
        }
    }
}

async fn write_error_line(wr: &mut WriteHalf<'_>, msg: &str) -> io::Result<()> {
    let mut line = serde_json::to_vec(&ErrorLine { error: msg })?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    wr.shutdown().await
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
        assert!(Refusal::from(RequestError::TooLong)
            .to_string()
            .contains("longer than 65536 bytes"));
        let line = serde_json::to_string(&ErrorLine { error: "x \"y\"" }).unwrap();
        assert_eq!(line, r#"{"error":"x \"y\""}"#);
    }

    #[test]
    fn group_lookup_finds_root_and_not_nonsense() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("podmap-no-such-group-x").unwrap(), None);
        assert!(group_id("a\0b").is_err());
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/podmap.sock");

        // A stale socket: bound, then its listener dropped without removing the file.
        let stale = bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let live = bind(&path).expect("a stale socket is replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        // A live one is left alone.
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live);

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"x").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert!(file.exists());
    }
}
