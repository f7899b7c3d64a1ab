//! `podmap`, the command-line client of podmapd's socket (docs/interfaces.md, "podmap").
//!
//! Blocking std I/O on purpose: the client does one thing at a time, and a runtime would only add
//! start-up cost. This module owns the command line, the request it sends and the output formats
//! (compact event lines, the status and containers tables); the protocol types are proto's.

use crate::server::DEFAULT_SOCKET;
use crate::status::{LatencySummary, StatusReport};
use anyhow::{anyhow, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use podmap_proto::{Attribution, Event, EventFilter, EventType, ProcessFlag, Request};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead as _, BufReader, BufWriter, IsTerminal as _, Read as _, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `status` and `containers` wait for podmapd's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "podmap",
    version,
    about = "Ask podmapd for events, status and the container mapping"
)]
pub struct Cli {
    /// podmapd's socket.
    #[arg(long, global = true, env = "PODMAP_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream events (exec, exit, policy), filtered by podmapd.
    Events(EventsArgs),
    /// Counters, attribution, modes and latencies of the daemon.
    Status {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TableOrJson::Table)]
        output: TableOrJson,
    },
    /// The container mapping table as this node sees it.
    Containers {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = TableOrJson::Table)]
        output: TableOrJson,
    },
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// compact: one readable line per event; json: the events as podmapd sends them.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = EventFormat::Compact)]
    pub output: EventFormat,
    /// Only events of pods in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only events of this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only events of containers with this name.
    #[arg(long)]
    pub container: Option<String>,
    /// Only events of pods with this label (repeat: all must match).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only these event types, comma-separated: exec,exit,policy.
    #[arg(long = "type", value_name = "TYPES", value_delimiter = ',', value_parser = parse_type)]
    pub types: Vec<EventType>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    Compact,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableOrJson {
    Table,
    Json,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn parse_type(s: &str) -> Result<EventType, String> {
    EventType::parse(s)
        .ok_or_else(|| format!("unknown event type {s:?}: expected exec, exit or policy"))
}

impl EventsArgs {
    /// The server-side filter these flags ask for.
    pub fn filter(&self) -> EventFilter {
        EventFilter {
            types: (!self.types.is_empty()).then(|| self.types.clone()),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: self.container.clone(),
            labels: self.labels.iter().cloned().collect(),
        }
    }
}

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
fn server_error(line: &[u8]) -> Option<ServerError> {
    if !line.starts_with(b"{\"error\"") {
        return None;
    }
    serde_json::from_slice::<ErrorLine>(line)
        .ok()
        .map(|e| ServerError(e.error))
}

/// Runs the command; a closed stdout (`podmap events | head`) ends it cleanly.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let to_terminal = stdout.is_terminal();
    let mut out = BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::Events(args) => events(&cli.socket, args, &mut out, to_terminal).map(|_| ()),
        Command::Status { output } => status(&cli.socket, *output, &mut out),
        Command::Containers { output } => containers(&cli.socket, *output, &mut out),
    };
    let result = result.and_then(|()| out.flush().context("writing to stdout"));
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn connect(socket: &Path, request: &Request) -> anyhow::Result<UnixStream> {
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
        match args.output {
            EventFormat::Json => {
                out.write_all(&line).context("writing to stdout")?;
                if line.last() != Some(&b'\n') {
                    out.write_all(b"\n").context("writing to stdout")?;
                }
            }
            EventFormat::Compact => {
                let ev: Event = serde_json::from_slice(&line).with_context(|| {
                    format!(
                        "podmapd sent a line that is not an event: {}",
                        String::from_utf8_lossy(&line).trim_end()
                    )
                })?;
                let mut text = compact_line(&ev);
                text.push('\n');
                out.write_all(text.as_bytes())
                    .context("writing to stdout")?;
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
fn one_reply(socket: &Path, request: &Request) -> anyhow::Result<Vec<u8>> {
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

pub fn status(socket: &Path, output: TableOrJson, out: &mut impl Write) -> anyhow::Result<()> {
    let reply = one_reply(socket, &Request::Status(Default::default()))?;
    let text = match output {
        TableOrJson::Json => pretty_json(&reply)?,
        TableOrJson::Table => {
            let report: StatusReport =
                serde_json::from_slice(&reply).context("podmapd's status reply")?;
            status_table(&report)
        }
    };
    out.write_all(text.as_bytes()).context("writing to stdout")
}

pub fn containers(socket: &Path, output: TableOrJson, out: &mut impl Write) -> anyhow::Result<()> {
    let reply = one_reply(socket, &Request::Containers(Default::default()))?;
    let text = match output {
        TableOrJson::Json => pretty_json(&reply)?,
        TableOrJson::Table => {
            let table: serde_json::Value =
                serde_json::from_slice(&reply).context("podmapd's containers reply")?;
            containers_table(&table)
        }
    };
    out.write_all(text.as_bytes()).context("writing to stdout")
}

fn pretty_json(reply: &[u8]) -> anyhow::Result<String> {
    let value: serde_json::Value = serde_json::from_slice(reply).context("podmapd's reply")?;
    let mut text = serde_json::to_string_pretty(&value).context("formatting the reply")?;
    text.push('\n');
    Ok(text)
}

// ---- compact event lines ----

/// One readable line per event (no newline), e.g.
/// `12:00:00.123 exec   prod/web-7d9c/nginx  /bin/sh -c "echo hi"`. Times are UTC, as in the JSON.
pub fn compact_line(ev: &Event) -> String {
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "{} {:<6} {}  {}",
        clock(&ev.time),
        ev.kind.as_str(),
        whereabouts(ev),
        command(&ev.process.binary, &ev.process.args)
    );
    for flag in &ev.process.flags {
        line.push_str(match flag {
            ProcessFlag::ArgsTruncated => " [args truncated]",
            ProcessFlag::ProcfsScan => " [procfs scan]",
            ProcessFlag::PathUnreadable => " [path unreadable]",
            ProcessFlag::RuntimeInit => " [runtime init]",
        });
    }
    if let Some(exit) = &ev.exit {
        match (&exit.code, &exit.signal) {
            (_, Some(sig)) => {
                let _ = write!(line, " signal={}", escape(sig));
            }
            (Some(code), None) => {
                let _ = write!(line, " exit={code}");
            }
            (None, None) => line.push_str(" exit=?"),
        }
    }
    if let Some(p) = &ev.policy {
        let _ = write!(
            line,
            " policy={} rule={} action={} mode={}",
            escape(&p.name),
            escape(&p.rule),
            escape(&p.action),
            escape(&p.mode)
        );
        // An exec rule matches the binary shown already; an open rule's path is news.
        if *p.path != *ev.process.binary {
            let _ = write!(line, " path={}", shell_word(&p.path));
        }
    }
    line
}

/// `HH:MM:SS.mmm` of an RFC 3339 time; the raw text when it has another shape.
fn clock(time: &str) -> Cow<'_, str> {
    let Some((_, rest)) = time.split_once('T') else {
        return Cow::Borrowed(time);
    };
    let hms = rest.get(..8).filter(|s| {
        s.bytes().enumerate().all(|(i, b)| {
            if i == 2 || i == 5 {
                b == b':'
            } else {
                b.is_ascii_digit()
            }
        })
    });
    let Some(hms) = hms else {
        return Cow::Borrowed(time);
    };
    let frac: String = rest[8..]
        .strip_prefix('.')
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .take(3)
        .collect();
    Cow::Owned(format!("{hms}.{frac:0<3}"))
}

fn whereabouts(ev: &Event) -> String {
    match ev.attribution {
        Attribution::Host => "host".to_string(),
        Attribution::Unknown => format!("unknown({})", ev.process.cgroup_id),
        Attribution::Container => match (ev.pod.as_deref(), ev.container.as_deref()) {
            (Some(pod), Some(c)) => format!(
                "{}/{}/{}",
                escape(&pod.namespace),
                escape(&pod.name),
                escape(&c.name)
            ),
            // A container outside Kubernetes (e.g. podman): its name is all there is.
            (None, Some(c)) => escape(&c.name).into_owned(),
            (Some(pod), None) => format!("{}/{}", escape(&pod.namespace), escape(&pod.name)),
            (None, None) => format!("container({})", ev.process.cgroup_id),
        },
    }
}

fn command(binary: &str, args: &[String]) -> String {
    let mut cmd = shell_word(binary).into_owned();
    for arg in args {
        cmd.push(' ');
        cmd.push_str(&shell_word(arg));
    }
    cmd
}

/// A word as a shell would need it: bare when plainly safe, else double-quoted with `"`, `\`,
/// `$` and backquote escaped. Control characters are always escaped, so a hostile argument cannot
/// forge a line or drive the terminal.
fn shell_word(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%^".contains(c));
    if plain {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// `s` with control characters escaped (names from runtimes and policies are not trusted).
fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

// ---- tables ----

fn kv_rows(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<width$}{v}");
    }
    out
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".to_string();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn duration_us(us: Option<u64>) -> String {
    match us {
        None => "-".to_string(),
        Some(us) if us < 1_000 => format!("{us}us"),
        Some(us) if us < 1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        Some(us) => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// How the programs' pinned links were taken over at start (docs/decisions.md #30).
fn programs(p: &crate::status::ProgramsStatus) -> String {
    let mut s = match p.links.as_str() {
        "" => return "-".to_string(),
        "adopted" => "adopted the running programs (they never stopped)".to_string(),
        "replaced" => format!(
            "replaced the running programs ({}), both ran for {} us",
            p.replaced_because.as_deref().unwrap_or("they differed"),
            p.overlap_us.unwrap_or(0)
        ),
        other => other.to_string(),
    };
    s += &format!(
        "; {} links pinned under {}/links; {} events lost in kernel before this start; {} queued before this start, read before the socket opened (no client had them)",
        p.attached.len(),
        p.pinned_at,
        p.lost_kernel_before_start,
        p.backlog_read_at_start
    );
    s
}

fn latency(l: &LatencySummary) -> String {
    format!(
        "{} samples, p50 {}, p99 {}, max {}",
        l.count,
        duration_us(l.p50),
        duration_us(l.p99),
        duration_us(l.max)
    )
}

fn uptime(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// `podmap status`: the report as a two-column table, shared counters last.
pub fn status_table(r: &StatusReport) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("node", r.node.clone()),
        ("version", r.version.clone()),
        ("uptime", uptime(r.uptime_seconds)),
        ("mode", r.mode.clone()),
        (
            "cgroup hierarchy",
            if r.cgroup_layout.is_empty() {
                r.cgroup_hierarchy.clone()
            } else {
                format!("{} ({} layout)", r.cgroup_hierarchy, r.cgroup_layout)
            },
        ),
        ("enforcement", r.enforcement_mode.clone()),
        ("programs", programs(&r.programs)),
        ("containers mapped", r.containers_mapped.to_string()),
        ("pods cached", r.pods_cached.to_string()),
        ("events seen", counts(&r.events_seen)),
        ("events delivered", r.events_delivered.to_string()),
        ("events lost in kernel", r.events_lost_kernel.to_string()),
        (
            "events lost to slow clients",
            r.events_lost_slow_clients.to_string(),
        ),
        (
            "events held for mapping",
            format!(
                "{} ({} timed out, {} released early at a bound); {} now, peak {} (bounds {} per cgroup, {} in all)",
                r.events_held,
                r.events_held_timed_out,
                r.events_held_released_early,
                r.events_held_now,
                r.events_held_peak,
                r.events_held_limits.per_cgroup,
                r.events_held_limits.total
            ),
        ),
        (
            "container-shaped cgroups",
            format!(
                "believed below {}; {} events outside (attributed to the host), {} unknown events not joined (the pod cache has their container under another pod)",
                r.pod_parents.join(", "),
                r.shaped_outside_pod_parents,
                r.unknown_pod_mismatch
            ),
        ),
        ("attribution", counts(&r.attribution)),
        (
            "event reader",
            format!(
                "{}; slept {} times when idle, woken {} times by a record, {} late records",
                if r.reader_asleep { "asleep" } else { "polling" },
                r.reader_sleeps,
                r.reader_woken,
                r.reader_late
            ),
        ),
        ("clients connected", r.clients_connected.to_string()),
        ("client errors", r.client_errors.to_string()),
        (
            "clients dropped",
            format!(
                "{} refused over the cap, {} stopped reading (write timed out)",
                r.clients_refused, r.clients_write_timeouts
            ),
        ),
        (
            "metrics refused",
            format!("{} connections over the cap", r.metrics_connections_refused),
        ),
        ("records unreadable", r.records_unreadable.to_string()),
        ("processes untracked", r.processes_untracked.to_string()),
        ("mapping latency", latency(&r.mapping_latency_us)),
        ("event latency", latency(&r.event_latency_us)),
        (
            "pod cache",
            match &r.pod_cache {
                None => "off (standalone)".to_string(),
                Some(c) => format!(
                    "{}, {} since last event, {} relists, {} watch restarts, {} objects skipped, {} errors",
                    if c.synced { "synced" } else { "NOT synced" },
                    c.staleness_seconds.map_or("-".to_string(), |s| format!("{s:.1}s")),
                    c.relists,
                    c.watch_restarts,
                    c.objects_skipped,
                    c.errors
                ),
            },
        ),
        (
            "policies",
            format!(
                "{} loaded from {}, {} memberships ({} orphans removed), {} refused, {} failed reads, {} rule entries not written",
                r.policies.loaded.len(),
                if r.policies.dir.is_empty() { "-" } else { &r.policies.dir },
                r.policies.memberships,
                r.policies.orphan_memberships_removed,
                r.policies.errors.len(),
                r.policies.read_failures,
                r.policies.rule_write_failures
            ),
        ),
        (
            "policy resources",
            match &r.policies.resources {
                None if r.mode == "kubernetes" => "off (--no-policy-resources)".to_string(),
                None => "off (standalone)".to_string(),
                Some(m) => format!(
                    "{}, {} resources, {} written, {} removed, {} refused, {} errors{}",
                    if m.synced { "synced" } else { "NOT synced" },
                    m.resources,
                    m.writes,
                    m.removals,
                    m.refused.len(),
                    m.errors,
                    m.last_error
                        .as_deref()
                        .map_or(String::new(), |e| format!(" (last: {})", escape(e)))
                ),
            },
        ),
    ];
    if r.shared_counters.is_empty() {
        rows.push(("shared counters", "-".to_string()));
    }
    let mut out = kv_rows(&rows);
    let refused_resources = r.policies.resources.iter().flat_map(|m| &m.refused);
    for e in r.policies.errors.iter().chain(refused_resources) {
        let _ = writeln!(out, "  refused: {}", escape(e));
    }
    if !r.shared_counters.is_empty() {
        out.push_str("shared counters\n");
        let shared: Vec<(&str, String)> = r
            .shared_counters
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        for line in kv_rows(&shared).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The table's columns: a header and the fields it shows, as JSON pointers (the first present
/// wins, so flat and nested row shapes both work). A column no row has is left out; the full rows
/// are in `-o json`.
const COLUMNS: &[(&str, &[&str])] = &[
    ("NAMESPACE", &["/pod/namespace", "/namespace"]),
    ("POD", &["/pod/name", "/pod"]),
    ("CONTAINER", &["/container/name", "/container"]),
    ("CONTAINER ID", &["/container/id", "/container_id"]),
    ("CGROUP ID", &["/cgroup_id"]),
    ("RUNTIME", &["/container/runtime", "/runtime"]),
    ("SANDBOX", &["/sandbox"]),
    ("REMOVING", &["/removing"]),
    ("POLICIES", &["/policies"]),
    ("MAPPED AT", &["/mapped_at"]),
    ("ERROR", &["/error"]),
];

/// `podmap containers`: the rows (JSON objects) as a table. Rows with none of the known fields
/// are shown with all their top-level fields, so the table never hides what the daemon sends.
pub fn containers_table(table: &serde_json::Value) -> String {
    use serde_json::Value;
    let rows: &[Value] = match table {
        Value::Array(rows) => rows,
        // An object wrapping the rows (e.g. {"containers": [...]}).
        Value::Object(map) => match map.values().find_map(Value::as_array) {
            Some(rows) => rows,
            None => return format!("{table:#}\n"),
        },
        other => return format!("{other:#}\n"),
    };
    if rows.is_empty() {
        return "no containers mapped\n".to_string();
    }
    let present = |ptr: &str| rows.iter().any(|r| r.pointer(ptr).is_some());
    let mut columns: Vec<(String, Vec<String>)> = COLUMNS
        .iter()
        .filter(|(_, ptrs)| ptrs.iter().any(|p| present(p)))
        .map(|(h, ptrs)| (h.to_string(), ptrs.iter().map(|p| p.to_string()).collect()))
        .collect();
    if columns.is_empty() {
        let mut keys: Vec<&String> = rows
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|o| o.keys())
            .collect();
        keys.sort();
        keys.dedup();
        columns = keys
            .into_iter()
            .map(|k| (k.to_uppercase(), vec![format!("/{k}")]))
            .collect();
    }
    if columns.is_empty() {
        return format!("{table:#}\n");
    }

    let header: Vec<String> = columns.iter().map(|(h, _)| h.clone()).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, ptrs)| {
                    let v = ptrs.iter().find_map(|p| row.pointer(p));
                    cell(v.unwrap_or(&Value::Null))
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(cells.iter())
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(cells.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            let _ = write!(line, "{cell}{:pad$}  ", "");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cell(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "-".to_string(),
        // A 64-hex container id is shown as its 12-character prefix, as runtimes' CLIs do.
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            s[..12].to_string()
        }
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => escape(s).into_owned(),
        Value::Object(map) if map.values().all(Value::is_string) => {
            if map.is_empty() {
                return "-".to_string();
            }
            map.iter()
                .map(|(k, v)| format!("{}={}", escape(k), escape(v.as_str().unwrap_or_default())))
                .collect::<Vec<_>>()
                .join(",")
        }
        Value::Array(items) if items.is_empty() => "-".to_string(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => escape(&other.to_string()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "podmap",
            "events",
            "-o",
            "json",
            "--namespace",
            "prod",
            "--pod",
            "web-1",
            "--container",
            "nginx",
            "--label",
            "app=web",
            "--label",
            "tier=front",
            "--type",
            "exec,exit",
            "--count",
            "3",
            "--socket",
            "/tmp/s.sock",
        ])
        .unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/s.sock"));
        let Command::Events(args) = cli.command else {
            panic!("not events")
        };
        assert_eq!(args.output, EventFormat::Json);
        assert_eq!(args.count, Some(3));
        let f = args.filter();
        assert_eq!(f.types, Some(vec![EventType::Exec, EventType::Exit]));
        assert_eq!(f.namespace.as_deref(), Some("prod"));
        assert_eq!(f.pod.as_deref(), Some("web-1"));
        assert_eq!(f.container.as_deref(), Some("nginx"));
        assert_eq!(f.labels.len(), 2);
        assert_eq!(f.labels["tier"], "front");

        let cli = Cli::try_parse_from(["podmap", "events"]).unwrap();
        let Command::Events(args) = cli.command else {
            panic!("not events")
        };
        assert_eq!(args.output, EventFormat::Compact);
        assert!(args.filter().is_empty());

        let cli = Cli::try_parse_from(["podmap", "status", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status {
                output: TableOrJson::Json
            }
        ));
        let cli = Cli::try_parse_from(["podmap", "containers"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Containers {
                output: TableOrJson::Table
            }
        ));

        for bad in [
            &["podmap", "events", "--type", "fork"][..],
            &["podmap", "events", "--label", "novalue"],
            &["podmap", "events", "-o", "yaml"],
            &["podmap", "status", "-o", "compact"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn clock_takes_hms_and_milliseconds() {
        assert_eq!(clock("2026-11-25T12:00:00.123456789Z"), "12:00:00.123");
        assert_eq!(clock("2026-11-25T12:00:00.1Z"), "12:00:00.100");
        assert_eq!(clock("2026-11-25T12:00:00Z"), "12:00:00.000");
        assert_eq!(clock("yesterday"), "yesterday");
        assert_eq!(clock("2026-11-25Tnoon"), "2026-11-25Tnoon");
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/bin/sh"), "/bin/sh");
        assert_eq!(shell_word("-c"), "-c");
        assert_eq!(shell_word("echo hi"), "\"echo hi\"");
        assert_eq!(shell_word(""), "\"\"");
        assert_eq!(shell_word("a\"b$c"), r#""a\"b\$c""#);
        assert_eq!(shell_word("x\ny"), r#""x\ny""#);
        assert_eq!(shell_word("\x1b[31m"), r#""\u{1b}[31m""#);
        assert_eq!(escape("web\n1"), "web\\n1");
    }

    #[test]
    fn status_table_shows_the_counters() {
        let report = StatusReport {
            node: "node-a".into(),
            uptime_seconds: 3725.0,
            events_seen: [("exec".to_string(), 10)].into(),
            events_lost_slow_clients: 4,
            shared_counters: [("hook_mapped".to_string(), 2)].into(),
            mapping_latency_us: LatencySummary {
                count: 2,
                p50: Some(800),
                p99: Some(2500),
                max: Some(1_500_000),
            },
            ..Default::default()
        };
        let t = status_table(&report);
        assert!(t.contains("uptime                       1h 2m 5s\n"), "{t}");
        assert!(t.contains("events seen                  exec=10\n"), "{t}");
        assert!(t.contains("events lost to slow clients  4\n"), "{t}");
        assert!(
            t.contains("2 samples, p50 800us, p99 2.5ms, max 1.50s"),
            "{t}"
        );
        assert!(t.contains("shared counters\n  hook_mapped  2\n"), "{t}");
    }

    #[test]
    fn status_table_says_how_the_pinned_programs_were_taken_over() {
        let mut report = StatusReport {
            programs: crate::status::ProgramsStatus {
                links: "adopted".into(),
                pinned_at: "/sys/fs/bpf/podmap".into(),
                attached: vec!["podmap_exec".into(), "podmap_exit".into()],
                lost_kernel_before_start: 7,
                ..Default::default()
            },
            ..Default::default()
        };
        let t = status_table(&report);
        assert!(
            t.contains("adopted the running programs (they never stopped); 2 links pinned under /sys/fs/bpf/podmap/links; 7 events lost in kernel before this start; 0 queued before this start, read before the socket opened (no client had them)\n"),
            "{t}"
        );
        report.programs.links = "replaced".into();
        report.programs.replaced_because = Some("podmap_exec: tag 1, this podmapd's 2".into());
        report.programs.overlap_us = Some(583);
        let t = status_table(&report);
        assert!(
            t.contains("replaced the running programs (podmap_exec: tag 1, this podmapd's 2), both ran for 583 us;"),
            "{t}"
        );
    }

    #[test]
    fn status_table_names_refused_policies_and_counts_failed_reads() {
        let report = StatusReport {
            policies: crate::policies::PolicyStatus {
                dir: "/p".into(),
                loaded: vec!["a (/p/a.yaml)".into()],
                errors: vec![
                    "/p/b.yaml: metadata.name: policy \"p179bb\" has the same id (0xf52b9f2e) as policy \"p54848\" in /p/c.yaml; all are refused until they are renamed".into(),
                    "/p: : reading the directory: Not a directory (os error 20); the 1 policies last loaded stay active".into(),
                ],
                memberships: 3,
                read_failures: 7,
                rule_write_failures: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let t = status_table(&report);
        assert!(
            t.contains("1 loaded from /p, 3 memberships (0 orphans removed), 2 refused, 7 failed reads, 2 rule entries not written\n"),
            "{t}"
        );
        assert!(
            t.contains("  refused: /p/b.yaml: metadata.name: policy \"p179bb\" has the same id"),
            "{t}"
        );
        assert!(
            t.contains("  refused: /p: : reading the directory: Not a directory"),
            "{t}"
        );
    }

    #[test]
    fn containers_table_shows_podmapd_rows() {
        let rows = serde_json::json!([
            {"cgroup_id": 7311, "hierarchy": "cgroup2", "sandbox": false, "removing": false,
             "mapped_at": "2026-11-25T12:00:00Z", "cgroup_path": "/kubepods/x",
             "container": {"id": "a".repeat(64), "name": "nginx", "image": "nginx:1.27",
                           "runtime": "containerd"},
             "pod": {"uid": "u1", "name": "web-7d9c", "namespace": "prod",
                     "labels": {"app": "web"}},
             "policies": ["no-shell", "no-nc"]},
            {"cgroup_id": 12, "hierarchy": "cgroup2", "sandbox": null, "removing": null,
             "mapped_at": null, "policies": [], "error": "no metadata"},
        ]);
        let t = containers_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "NAMESPACE  POD       CONTAINER  CONTAINER ID  CGROUP ID  RUNTIME     SANDBOX  REMOVING  POLICIES        MAPPED AT             ERROR",
                "prod       web-7d9c  nginx      aaaaaaaaaaaa  7311       containerd  false    false     no-shell,no-nc  2026-11-25T12:00:00Z  -",
                "-          -         -          -             12         -           -        -         -               -                     no metadata",
            ]
        );
        assert_eq!(
            containers_table(&serde_json::json!([])),
            "no containers mapped\n"
        );
    }

    #[test]
    fn containers_table_shows_unknown_rows_whole() {
        let rows = serde_json::json!([{"b": 1, "a": {"k": "v"}}, {"a": {}, "c": [1, 2]}]);
        assert_eq!(
            containers_table(&rows),
            "A    B  C\nk=v  1  -\n-    -  1,2\n"
        );
    }

    #[test]
    fn error_lines_are_recognized() {
        let e = server_error(b"{\"error\":\"no request line within 5s\"}\n").unwrap();
        assert_eq!(e.0, "no request line within 5s");
        assert!(server_error(b"{\"type\":\"exec\"}\n").is_none());
    }
}
