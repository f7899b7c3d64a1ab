//! `podmap`, the command-line client of podmapd's socket (docs/interfaces.md, "podmap").
//!
//! Blocking std I/O on purpose: the client does one thing at a time, and a runtime would only add
//! start-up cost. This module owns the command line and runs the commands; the socket exchange
//! is `connection`, and each output format has its module: compact event lines (`event_line`),
//! the status table (`status_table`), the containers table (`containers_table`), with the
//! escaping they share (`text`); the node preflight is `check`. The protocol types are the API crate's (podmap-proto).

mod check;
mod connection;
mod containers_table;
mod event_line;
mod export;
mod status_table;
mod text;

pub use connection::{events, ServerError};
pub use containers_table::containers_table;
pub use event_line::compact_line;
pub use status_table::status_table;

use std::io::{self, BufWriter, IsTerminal as _, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use podmap_proto::containers::ContainerRow;
use podmap_proto::status::StatusReport;
use podmap_proto::{EventFilter, EventType, Request};

use crate::server::DEFAULT_SOCKET;
use connection::one_reply;

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
    /// How `podmap export` logs (the other commands print, they do not log): `text`, or `json`
    /// (one JSON object per line, for a log collector). Colour only on a terminal.
    #[arg(long, global = true, env = "PODMAP_LOG_FORMAT", value_name = "FORMAT", value_enum,
          default_value_t = podmap_node::LogFormat::Text)]
    pub log_format: podmap_node::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The log subscriber of the long-running command (export), installed before it starts so that
/// `--log-format` applies (export's own set-up then finds one installed and keeps it). The
/// filter is PODMAP_LOG, as for every binary.
fn init_logging(format: podmap_node::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PODMAP_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    let _ = match format {
        podmap_node::LogFormat::Text => fmt.try_init(),
        podmap_node::LogFormat::Json => fmt.json().try_init(),
    };
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
    /// Checks this node for what podmap needs, line by line, with the fix for each failure;
    /// exits 1 if any failed. Changes nothing.
    Check(check::CheckArgs),
    /// Sends podmapd's events on: to an OpenTelemetry collector (OTLP logs), to a JSON-lines
    /// file rotated by size, and/or to stdout; reconnects when podmapd restarts.
    Export(export::ExportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// compact: one readable line per event; json: the events as podmapd sends them.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = EventFormat::Compact)]
    pub output: EventFormat,
    #[command(flatten)]
    pub filters: FilterArgs,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// The event filters podmapd applies, shared by `podmap events` and `podmap export`: one
/// definition, so the two commands take the same flags.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
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
        self.filters.filter()
    }
}

impl FilterArgs {
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

/// Runs the command; a closed stdout (`podmap events | head`) ends it cleanly.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let to_terminal = stdout.is_terminal();
    let mut out = BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::Events(args) => events(&cli.socket, args, &mut out, to_terminal).map(|_| ()),
        Command::Status { output } => status(&cli.socket, *output, &mut out),
        Command::Containers { output } => containers(&cli.socket, *output, &mut out),
        // Long-running, with its own outputs: stdout is the export's when --stdout asks for it.
        Command::Export(args) => {
            drop(out);
            init_logging(cli.log_format);
            return export::run(&cli.socket, args);
        }
        Command::Check(args) => {
            let status = one_reply(&cli.socket, &Request::Status(Default::default()))
                .and_then(|reply| {
                    serde_json::from_slice::<StatusReport>(&reply).context("podmapd's status reply")
                })
                .map_err(|e| format!("{} ({e:#})", cli.socket.display()));
            let found = check::findings(args, status);
            match check::write(&found, &mut out).context("writing to stdout")? {
                true => Ok(()),
                false => {
                    let failed = found
                        .iter()
                        .filter(|f| f.verdict == check::Verdict::Fail)
                        .count();
                    out.flush().context("writing to stdout")?;
                    Err(anyhow::anyhow!(
                        "{failed} check(s) failed: see the fixes above"
                    ))
                }
            }
        }
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
            let rows: Vec<ContainerRow> =
                serde_json::from_slice(&reply).context("podmapd's containers reply")?;
            containers_table(&rows)
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
}
