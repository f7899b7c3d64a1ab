//! The socket exchange: one request line, then a stream of event lines or one reply, with the
//! server's `{"error": ...}` line recognised wherever it comes; and the event stream that
//! reconnects with backoff, shared by `podmap events --reconnect` and `podmap export`.

use std::io::{self, BufRead as _, BufReader, Read as _, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use backon::BackoffBuilder as _;
use podmap_proto::Request;
use serde::Deserialize;

/// How long `status` and `containers` wait for podmapd's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// podmapd refused the request: its `{"error": ...}` line.
#[derive(Debug, thiserror::Error)]
#[error("podmapd refused the request: {0}")]
pub struct ServerError(pub String);

#[derive(Deserialize)]
struct ErrorLine {
    error: String,
}

/// The server's error message, when `line` is an error line. Events start with `{"type"`, so
/// only a line starting like an error object is parsed.
pub(super) fn server_error(line: &[u8]) -> Option<ServerError> {
    if !line.starts_with(b"{\"error\"") {
        return None;
    }
    serde_json::from_slice::<ErrorLine>(line)
        .ok()
        .map(|e| ServerError(e.error))
}

pub(super) fn connect(socket: &Path, request: &Request) -> anyhow::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            "the socket is for root and group podmap"
        } else {
            "podmapd may not be running (another socket: --socket PATH or PODMAP_SOCKET)"
        };
        anyhow!("cannot connect to {}: {e}; {hint}", socket.display())
    })?;
    let mut line = serde_json::to_vec(request).context("serializing the request")?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("sending the request to {}", socket.display()))?;
    Ok(stream)
}

/// Whether a stream follows podmapd across its restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Follow {
    /// The first failure (no podmapd, the stream closed) ends the stream with its error.
    Once,
    /// Failures are retried with backoff, forever (or until stopped).
    Reconnect,
}

/// A change of the link to podmapd, for the stream's owner to report.
#[derive(Debug)]
pub(super) enum Link<'a> {
    /// Connected and subscribed; `again` when an earlier connection of this stream existed.
    Up { again: bool },
    /// Could not connect, or the stream ended: the next attempt comes after `delay`.
    Down { why: &'a str, delay: Duration },
}

/// What a stream hands its lines to: `podmap events`' printer and `podmap export`'s sinks.
pub(super) trait StreamHandler {
    /// One event line, ending in a newline. `Ok(false)` ends the stream (`--count` reached);
    /// an error ends it too (an output that cannot be written).
    fn line(&mut self, line: &[u8]) -> anyhow::Result<bool>;
    /// Nothing more is buffered now (or the read timed out): the moment to flush, so output
    /// goes out once per burst.
    fn idle(&mut self) -> anyhow::Result<()>;
    /// Called only under [`Follow::Reconnect`], and for every connection.
    fn link(&mut self, change: Link<'_>);
}

/// How often a blocked read looks at the stop flag.
const READ_POLL: Duration = Duration::from_millis(250);

/// Backoff between attempts: 100 ms doubling to 5 s, with jitter so that the clients of a
/// restarted podmapd do not all come back at the same instant.
fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Reads podmapd's event stream for `request` and hands each line to `handler`, until the
/// handler ends it, `stopped()` turns true, or a failure [`Follow::Once`] does not retry.
/// podmapd refusing the request is an error either way: retrying cannot fix it. The one
/// implementation of reconnecting, for `podmap events --reconnect` and `podmap export`.
pub(super) fn stream_events(
    socket: &Path,
    request: &Request,
    follow: Follow,
    stopped: &dyn Fn() -> bool,
    handler: &mut impl StreamHandler,
) -> anyhow::Result<()> {
    let mut delays = backoff();
    let mut connected_before = false;
    let mut line = Vec::with_capacity(4096);
    while !stopped() {
        let stream = match connect(socket, request) {
            Ok(s) => s,
            Err(e) if follow == Follow::Reconnect => {
                wait_to_retry(handler, &mut delays, &e, stopped);
                continue;
            }
            Err(e) => return Err(e),
        };
        if follow == Follow::Reconnect {
            handler.link(Link::Up {
                again: connected_before,
            });
        }
        connected_before = true;
        stream
            .set_read_timeout(Some(READ_POLL))
            .context("setting the socket's read timeout")?;
        let mut reader = BufReader::with_capacity(64 * 1024, stream);
        line.clear();
        let mut delivered = false;
        let ended = loop {
            if stopped() {
                break None;
            }
            // A timed-out read keeps what it read so far in `line`; the next call appends.
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break Some(anyhow!("podmapd closed the event stream")),
                Ok(_) if line.last() != Some(&b'\n') => {
                    break Some(anyhow!("podmapd closed the event stream mid-line"))
                }
                Ok(_) => {
                    if let Some(err) = server_error(&line) {
                        handler.idle()?;
                        return Err(refusal(err));
                    }
                    if !handler.line(&line)? {
                        return handler.idle();
                    }
                    line.clear();
                    delivered = true;
                    if reader.buffer().is_empty() {
                        handler.idle()?;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    handler.idle()?;
                }
                Err(e) => break Some(anyhow!(e).context("reading events from podmapd")),
            }
        };
        handler.idle()?;
        match ended {
            None => {}
            Some(e) if follow == Follow::Once => return Err(e),
            Some(e) => {
                // A stream that delivered was a healthy one: this outage starts its backoff
                // from the shortest delay again (reset once per connection, not per line).
                if delivered {
                    delays = backoff();
                }
                wait_to_retry(handler, &mut delays, &e, stopped);
            }
        }
    }
    Ok(())
}

/// How a reconnecting stream waits for podmapd: says why, then sleeps the next backoff delay.
fn wait_to_retry(
    handler: &mut impl StreamHandler,
    delays: &mut impl Iterator<Item = Duration>,
    why: &anyhow::Error,
    stopped: &dyn Fn() -> bool,
) {
    let delay = delays.next().expect("the backoff never ends");
    handler.link(Link::Down {
        why: &format!("{why:#}"),
        delay,
    });
    sleep_unless_stopped(delay, stopped);
}

/// podmapd's refusal of an events request. podmapd refuses request fields it does not know, so
/// a filter newer than the podmapd (`--privileged`) ends here rather than being ignored, which
/// would stream everything: say what the refusal means and what to do.
fn refusal(err: ServerError) -> anyhow::Error {
    if err.0.contains("unknown field") {
        anyhow::Error::new(err).context(
            "this podmapd is older than this podmap and does not know a filter it was asked \
             for (such as --privileged): upgrade podmapd, or leave that flag out",
        )
    } else {
        err.into()
    }
}

fn sleep_unless_stopped(delay: Duration, stopped: &dyn Fn() -> bool) {
    let until = Instant::now() + delay;
    while !stopped() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Sends a one-reply request and returns the reply line.
pub(super) fn one_reply(socket: &Path, request: &Request) -> anyhow::Result<Vec<u8>> {
    let stream = connect(socket, request)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .context("setting the socket's read timeout")?;
    let mut reply = Vec::new();
    // The server closes after its one line; a bound guards against a misbehaving peer.
    stream
        .take(256 << 20)
        .read_to_end(&mut reply)
        .context("reading podmapd's reply")?;
    if let Some(err) = server_error(&reply) {
        return Err(err.into());
    }
    if reply.iter().all(u8::is_ascii_whitespace) {
        return Err(anyhow!("podmapd closed the connection without a reply"));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_recognized() {
        let e = server_error(b"{\"error\":\"no request line within 5s\"}\n").unwrap();
        assert_eq!(e.0, "no request line within 5s");
        assert!(server_error(b"{\"type\":\"exec\"}\n").is_none());
    }

    #[derive(Default)]
    struct Collect {
        lines: Vec<String>,
        links: Vec<String>,
        want: usize,
    }

    impl StreamHandler for Collect {
        fn line(&mut self, line: &[u8]) -> anyhow::Result<bool> {
            self.lines.push(String::from_utf8_lossy(line).into_owned());
            Ok(self.lines.len() < self.want)
        }
        fn idle(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
        fn link(&mut self, change: Link<'_>) {
            let name = match change {
                Link::Up { again } => format!("up again={again}"),
                Link::Down { .. } => "down".to_string(),
            };
            // Attempts while away repeat "down": one entry per change is what is checked.
            if self.links.last() != Some(&name) {
                self.links.push(name);
            }
        }
    }

    /// A stand-in podmapd at `path` that appears after `delay` (at once, listening before this
    /// returns, when zero), then serves `lines` one per connection, each connection closed
    /// after its line (a restart, as the client sees it).
    fn server(
        path: &Path,
        delay: Duration,
        lines: &'static [&'static str],
    ) -> std::thread::JoinHandle<()> {
        use std::os::unix::net::UnixListener;
        let path = path.to_path_buf();
        let early = delay.is_zero().then(|| UnixListener::bind(&path).unwrap());
        std::thread::spawn(move || {
            let listener = early.unwrap_or_else(|| {
                std::thread::sleep(delay);
                UnixListener::bind(&path).unwrap()
            });
            for line in lines {
                let (stream, _) = listener.accept().unwrap();
                let mut request = String::new();
                BufReader::new(&stream).read_line(&mut request).unwrap();
                assert!(request.starts_with("{\"events\""), "{request}");
                (&stream).write_all(line.as_bytes()).unwrap();
            }
        })
    }

    #[test]
    fn a_reconnecting_stream_waits_for_podmapd_and_goes_on_after_a_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podmap.sock");
        let served = server(&path, Duration::from_millis(300), &["one\n", "two\n"]);
        let mut h = Collect {
            want: 2,
            ..Default::default()
        };
        let request = Request::Events(Default::default());
        stream_events(&path, &request, Follow::Reconnect, &|| false, &mut h).unwrap();
        served.join().unwrap();
        assert_eq!(h.lines, ["one\n", "two\n"]);
        assert_eq!(h.links, ["down", "up again=false", "down", "up again=true"]);
    }

    /// The request filter of a podmapd from before `privileged`: its fields, and its refusal
    /// of any other.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct OlderFilter {
        types: Option<Vec<String>>,
        namespace: Option<String>,
        pod: Option<String>,
        container: Option<String>,
        labels: Option<std::collections::BTreeMap<String, String>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase", deny_unknown_fields)]
    #[allow(dead_code)]
    enum OlderRequest {
        Events(OlderFilter),
    }

    /// A filter an older podmapd does not know is refused with a hint, under --reconnect too
    /// (retrying cannot help); without the filter the same podmapd streams.
    #[test]
    fn a_filter_an_older_podmapd_does_not_know_is_refused_with_a_hint() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podmap.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let served = std::thread::spawn(move || {
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                let mut request = String::new();
                BufReader::new(&stream).read_line(&mut request).unwrap();
                // What the older podmapd's server writes for a line it cannot parse.
                let reply = match serde_json::from_str::<OlderRequest>(&request) {
                    Ok(_) => "{\"type\":\"exec\"}\n".to_string(),
                    Err(e) => format!(
                        "{}\n",
                        serde_json::json!({"error": format!("malformed request: {e}")})
                    ),
                };
                (&stream).write_all(reply.as_bytes()).unwrap();
            }
        });
        let privileged = Request::Events(podmap_proto::EventFilter {
            privileged: true,
            ..Default::default()
        });
        let mut h = Collect {
            want: 1,
            ..Default::default()
        };
        let e =
            stream_events(&path, &privileged, Follow::Reconnect, &|| false, &mut h).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("older than this podmap"), "{text}");
        assert!(text.contains("unknown field `privileged`"), "{text}");
        assert!(e.downcast_ref::<ServerError>().is_some(), "{e:?}");
        assert!(h.lines.is_empty());

        let everything = Request::Events(Default::default());
        stream_events(&path, &everything, Follow::Once, &|| false, &mut h).unwrap();
        served.join().unwrap();
        assert_eq!(h.lines, ["{\"type\":\"exec\"}\n"]);
    }

    #[test]
    fn without_reconnect_the_first_failure_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podmap.sock");
        let request = Request::Events(Default::default());
        let mut h = Collect {
            want: 2,
            ..Default::default()
        };
        let e = stream_events(&path, &request, Follow::Once, &|| false, &mut h).unwrap_err();
        assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
        let served = server(&path, Duration::ZERO, &["one\n"]);
        let e = stream_events(&path, &request, Follow::Once, &|| false, &mut h).unwrap_err();
        served.join().unwrap();
        assert_eq!(e.to_string(), "podmapd closed the event stream");
        assert_eq!(h.lines, ["one\n"]);
        assert!(h.links.is_empty(), "{:?}", h.links);
    }
}
