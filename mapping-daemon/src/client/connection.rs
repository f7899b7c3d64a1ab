//! The socket exchange: one request line, then a stream of event lines or one reply, with the
//! server's `{"error": ...}` line recognised wherever it comes.

use std::io::{self, BufRead as _, BufReader, Read as _, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use podmap_proto::{Event, Request};
use serde::Deserialize;

use super::event_line::compact_line;
use super::{EventFormat, EventsArgs};

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

/// Streams events to `out` until `--count` is reached (returns how many were written), the
/// server refuses (a [`ServerError`]) or closes, or `out` fails. Flushes after every line when
/// `flush_each_line`, else whenever no more input is already buffered (once per batch).
pub fn events(
    socket: &Path,
    args: &EventsArgs,
    out: &mut impl Write,
    flush_each_line: bool,
) -> anyhow::Result<u64> {
    if args.count == Some(0) {
        return Ok(0);
    }
    let stream = connect(socket, &Request::Events(args.filter()))?;
    let client = args.filters.client_filter();
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::with_capacity(4096);
    let mut written = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .context("reading events from podmapd")?;
        if n == 0 {
            out.flush().context("writing to stdout")?;
            return Err(anyhow!("podmapd closed the event stream"));
        }
        if let Some(err) = server_error(&line) {
            out.flush().context("writing to stdout")?;
            return Err(err.into());
        }
        // Decoded once, and only when a client-side filter or the compact form needs it.
        let needs_event = !client.is_empty() || matches!(args.output, EventFormat::Compact);
        let ev: Option<Event> = if needs_event {
            Some(serde_json::from_slice(&line).with_context(|| {
                format!(
                    "podmapd sent a line that is not an event: {}",
                    String::from_utf8_lossy(&line).trim_end()
                )
            })?)
        } else {
            None
        };
        if let Some(ev) = &ev {
            if !client.matches(ev) {
                continue;
            }
        }
        match (&args.output, &ev) {
            (EventFormat::Compact, Some(ev)) => {
                let mut text = compact_line(ev);
                text.push('\n');
                out.write_all(text.as_bytes())
                    .context("writing to stdout")?;
            }
            _ => {
                out.write_all(&line).context("writing to stdout")?;
                if line.last() != Some(&b'\n') {
                    out.write_all(b"\n").context("writing to stdout")?;
                }
            }
        }
        written += 1;
        if args.count.is_some_and(|c| written >= c) {
            out.flush().context("writing to stdout")?;
            return Ok(written);
        }
        if flush_each_line || reader.buffer().is_empty() {
            out.flush().context("writing to stdout")?;
        }
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
}
