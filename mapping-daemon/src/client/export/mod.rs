//! `podmap export`: reads podmapd's event stream (the filters of `podmap events`) and sends every
//! event on to any of three sinks: an OpenTelemetry collector as OTLP log records (`otlp`,
//! mapped by `record`, queued in a bounded `buffer`), a JSON-lines file rotated by size
//! (`file`), and stdout. It runs beside podmapd (a sidecar) rather than in it, so the daemon
//! stays small and a slow collector never holds up the event path.
//!
//! Threads: the socket is read with blocking I/O on a thread of its own, as the rest of the
//! client reads it (`connection`); the file and stdout are written there too, in order. The
//! OTLP sender, signals and the periodic counters line run on a small tokio runtime, which
//! tonic and hyper need.

mod buffer;
mod file;
mod otlp;
mod record;

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use clap::{Args, ValueEnum};
use podmap_proto::{Event, Request};

use super::connection::{stream_events, Follow, Link, StreamHandler};
use super::{ClientFilter, FilterArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (a collector's port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies, POST /v1/logs (a collector's port 4318).
    Http,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Send events as OTLP log records to this collector: http://HOST:PORT (plain text).
    #[arg(long, env = "PODMAP_EXPORT_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP transport.
    #[arg(long, env = "PODMAP_EXPORT_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,
    /// Records per OTLP request at most.
    #[arg(long, env = "PODMAP_EXPORT_OTLP_BATCH_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub otlp_batch_size: u64,
    /// How long a batch waits to fill before it is sent anyway, in milliseconds.
    #[arg(
        long,
        env = "PODMAP_EXPORT_OTLP_BATCH_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub otlp_batch_timeout_ms: u64,
    /// Records held in memory while the collector is slow or away; beyond it, new records are
    /// dropped and counted.
    #[arg(long, env = "PODMAP_EXPORT_OTLP_BUFFER", default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..))]
    pub otlp_buffer: u64,
    /// Attempts after a failed request (backoff 200ms doubling to 5s) before its batch is
    /// dropped and counted.
    #[arg(long, env = "PODMAP_EXPORT_OTLP_MAX_RETRIES", default_value_t = 10)]
    pub otlp_max_retries: usize,
    /// Append events as JSON lines to this file (rotated: PATH.1 .. PATH.N).
    #[arg(long, env = "PODMAP_EXPORT_FILE", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Rotate the file before it grows past this size.
    #[arg(long, env = "PODMAP_EXPORT_FILE_MAX_SIZE_MB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub file_max_size_mb: u64,
    /// Rotated files kept (PATH.1 the newest); 0 starts the file over at the limit.
    #[arg(long, env = "PODMAP_EXPORT_FILE_BACKUPS", default_value_t = 5)]
    pub file_backups: u32,
    /// The files' permission bits, in octal.
    #[arg(long, env = "PODMAP_EXPORT_FILE_MODE", value_name = "OCTAL", default_value = "0600", value_parser = parse_mode)]
    pub file_mode: u32,
    /// Write events as JSON lines to stdout (`kubectl logs -c export`).
    #[arg(long, env = "PODMAP_EXPORT_STDOUT")]
    pub stdout: bool,
    /// Log the counters every this many seconds (0: only at exit).
    #[arg(long, env = "PODMAP_EXPORT_STATS_INTERVAL_SECS", default_value_t = 60)]
    pub stats_interval_secs: u64,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "expected permission bits in octal (0640), got {s:?}"
        )),
    }
}

/// One sink's counts. `retried` counts records sent again after a failed attempt.
#[derive(Debug, Default)]
pub struct Counters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub retried: AtomicU64,
}

#[derive(Debug, Default)]
struct AllCounters {
    received: AtomicU64,
    reconnects: AtomicU64,
    /// Lines that are not an event this client decodes (a newer podmapd's): still exported,
    /// unless a client-side filter is in force (it cannot tell whether they match).
    undecoded: AtomicU64,
    /// Events the client-side filters (several -n, -l beyond key=value, --host, --binary)
    /// left out: podmapd sent them, no sink was meant to have them. Without it, `received`
    /// would exceed every sink's `exported` + `dropped` with no reason given.
    filtered: AtomicU64,
    /// Shared with the OTLP sender task.
    otlp: Arc<Counters>,
    file: Counters,
    stdout: Counters,
}

/// Which sinks run, for the counters line.
#[derive(Debug, Clone, Copy)]
struct Active {
    otlp: bool,
    file: bool,
    stdout: bool,
}

impl AllCounters {
    /// One line, `key=value` pairs: what the exit log line and the periodic one print.
    fn summary(&self, active: Active) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = format!(
            "received={} reconnects={} undecoded={} filtered={}",
            get(&self.received),
            get(&self.reconnects),
            get(&self.undecoded),
            get(&self.filtered)
        );
        for (name, on, c) in [
            ("otlp", active.otlp, &*self.otlp),
            ("file", active.file, &self.file),
            ("stdout", active.stdout, &self.stdout),
        ] {
            if on {
                s.push_str(&format!(
                    " {name}.exported={} {name}.dropped={} {name}.retried={}",
                    get(&c.exported),
                    get(&c.dropped),
                    get(&c.retried)
                ));
            }
        }
        s
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs until SIGTERM or SIGINT (then drains the OTLP buffer for up to 10 s), or until podmapd
/// refuses the filter or a sink cannot be opened.
pub fn run(socket: &Path, args: &ExportArgs) -> anyhow::Result<()> {
    if args.otlp_endpoint.is_none() && args.file.is_none() && !args.stdout {
        return Err(anyhow!(
            "podmap export needs at least one sink: --otlp-endpoint URL, --file PATH and/or \
             --stdout (or PODMAP_EXPORT_OTLP_ENDPOINT, PODMAP_EXPORT_FILE, PODMAP_EXPORT_STDOUT)"
        ));
    }
    init_logging();
    let active = Active {
        otlp: args.otlp_endpoint.is_some(),
        file: args.file.is_some(),
        stdout: args.stdout,
    };
    // Opened before anything runs: a file that cannot be written is a configuration error to
    // report at once, not a stream of drops.
    let file = args
        .file
        .as_deref()
        .map(|path| {
            file::RotatingFile::open(
                path,
                args.file_max_size_mb.saturating_mul(1 << 20),
                args.file_backups,
                args.file_mode,
            )
        })
        .transpose()
        .context("opening the export file")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("podmap-export")
        .enable_all()
        .build()
        .context("starting the export runtime")?;
    let counters = Arc::new(AllCounters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop_tx);

    let queue = match &args.otlp_endpoint {
        Some(endpoint) => {
            let _guard = rt.enter();
            let transport = otlp::Transport::new(endpoint, args.otlp_protocol)?;
            let queue = Arc::new(otlp::Queue::new(args.otlp_buffer as usize));
            let settings = otlp::Settings {
                batch_size: args.otlp_batch_size as usize,
                batch_timeout: Duration::from_millis(args.otlp_batch_timeout_ms),
                max_retries: args.otlp_max_retries,
            };
            let sender = rt.spawn(otlp::run(
                transport,
                queue.clone(),
                settings,
                counters.otlp.clone(),
                stop.clone(),
                Duration::from_secs(10),
            ));
            Some((queue, sender))
        }
        None => None,
    };
    tracing::info!(
        socket = %socket.display(),
        otlp = args.otlp_endpoint.as_deref().unwrap_or("-"),
        file = %args.file.as_deref().map_or("-".into(), |p| p.display().to_string()),
        stdout = args.stdout,
        "exporting podmapd's events"
    );

    rt.spawn(wait_for_signal(stop.clone()));
    if args.stats_interval_secs > 0 {
        let (counters, mut stopped) = (counters.clone(), stop_rx.clone());
        let every = Duration::from_secs(args.stats_interval_secs);
        rt.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => tracing::info!("export counters: {}", counters.summary(active)),
                    _ = stopped.changed() => return,
                }
            }
        });
    }

    let reader = {
        let sinks = LineSinks {
            otlp: queue.as_ref().map(|(q, _)| q.clone()),
            file,
            stdout: args.stdout.then(|| io::BufWriter::new(io::stdout())),
            filter: args.filters.client_filter(),
            counters: counters.clone(),
            last_warning: None,
        };
        let (socket, filter, stop, stopped) = (
            socket.to_path_buf(),
            args.filters.filter(),
            stop.clone(),
            stop_rx.clone(),
        );
        std::thread::Builder::new()
            .name("podmap-export-reader".into())
            .spawn(move || {
                let res = read_loop(&socket, &Request::Events(filter), sinks, &stopped);
                // The reader ending for any reason ends the export (and drains the buffer).
                let _ = stop.send(true);
                res
            })
            .context("starting the reader thread")?
    };
    let result = reader
        .join()
        .unwrap_or_else(|_| Err(anyhow!("the reader thread panicked")));
    if let Some((_, sender)) = queue {
        let _ = rt.block_on(sender);
    }
    let summary = counters.summary(active);
    match &result {
        Ok(()) => tracing::info!("export ended; counters: {summary}"),
        Err(e) => tracing::error!("export failed: {e:#}; counters: {summary}"),
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // Colour only for a person at a terminal: a collector reading the container's log wants
    // plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PODMAP_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_writer(io::stderr)
        .try_init();
}

async fn wait_for_signal(stop: Arc<tokio::sync::watch::Sender<bool>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot watch SIGTERM/SIGINT: counters are printed only on other exits");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: draining and stopping");
    let _ = stop.send(true);
}

/// The sinks the reader thread feeds, in the order events come.
struct LineSinks {
    otlp: Option<Arc<otlp::Queue>>,
    file: Option<file::RotatingFile>,
    stdout: Option<io::BufWriter<io::Stdout>>,
    /// What podmapd's request could not say; applied here, before any sink sees the event.
    filter: ClientFilter,
    counters: Arc<AllCounters>,
    last_warning: Option<Instant>,
}

impl LineSinks {
    fn send(&mut self, line: &str) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        // Decoded once, and only when the filter or the OTLP mapping needs the event.
        let ev = if self.otlp.is_some() || !self.filter.is_empty() {
            let ev = serde_json::from_str::<Event>(line).ok();
            if ev.is_none() {
                self.counters.undecoded.fetch_add(1, Ordering::Relaxed);
            }
            Some(ev)
        } else {
            None
        };
        if !self.filter.is_empty() {
            // A line that does not decode cannot be shown to match: the user asked for less
            // than everything, so it stays out (counted in both `undecoded` and `filtered`).
            if !matches!(&ev, Some(Some(ev)) if self.filter.matches(ev)) {
                self.counters.filtered.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(queue) = &self.otlp {
            let observed = now_ns();
            let (node, record) = match ev.flatten() {
                Some(ev) => (ev.node.to_string(), record::log_record(&ev, line, observed)),
                None => (String::new(), record::opaque_record(line, observed)),
            };
            if !queue.push(record::Pending { node, record }) {
                self.counters.otlp.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut failures = Vec::new();
        if let Some(f) = &mut self.file {
            match f.write_line(line.as_bytes()) {
                Ok(()) => self.counters.file.exported.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    failures.push(e.to_string());
                    self.counters.file.dropped.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        if let Some(out) = &mut self.stdout {
            match out.write_all(line.as_bytes()) {
                Ok(()) => self
                    .counters
                    .stdout
                    .exported
                    .fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    failures.push(format!("writing to stdout: {e}"));
                    self.counters.stdout.dropped.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        // A full disk would otherwise log once per event: once per 10 s is enough to be seen,
        // and the counters hold the total.
        if !failures.is_empty()
            && self
                .last_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!("events dropped: {}", failures.join("; "));
        }
    }

    /// Called when no more input is already buffered: stdout is written once per burst.
    fn flush(&mut self) {
        if let Some(out) = &mut self.stdout {
            if let Err(e) = out.flush() {
                tracing::warn!("writing to stdout: {e}");
            }
        }
    }
}

/// Reads events until stopped, reconnecting with backoff when podmapd is away or goes away.
/// Returns an error only for what retrying cannot fix: podmapd refusing the request.
fn read_loop(
    socket: &Path,
    request: &Request,
    mut sinks: LineSinks,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let result = stream_events(
        socket,
        request,
        Follow::Reconnect,
        &|| *stopped.borrow(),
        &mut sinks,
    );
    sinks.flush();
    result
}

impl StreamHandler for LineSinks {
    fn line(&mut self, line: &[u8]) -> anyhow::Result<bool> {
        // Borrowed, not copied, when the line is valid UTF-8 (podmapd writes JSON).
        self.send(&String::from_utf8_lossy(line));
        Ok(true)
    }

    fn idle(&mut self) -> anyhow::Result<()> {
        self.flush();
        Ok(())
    }

    fn link(&mut self, change: Link<'_>) {
        match change {
            Link::Up { again: false } => {}
            Link::Up { again: true } => {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!("reconnected to podmapd");
            }
            Link::Down { why, delay } => tracing::warn!(?delay, "{why}; reconnecting"),
        }
    }
}

#[cfg(test)]
mod tests;
