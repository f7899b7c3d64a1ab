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
mod events;
mod export;
pub mod selector;
mod status_table;
mod text;

pub use connection::ServerError;
pub use containers_table::containers_table;
pub use event_line::{compact_line, compact_line_colored, Colors};
pub use events::events;
pub use status_table::status_table;

use std::ffi::OsStr;
use std::io::{self, BufReader, BufWriter, IsTerminal as _, Write};
use std::os::fd::AsFd as _;
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
    /// podmapd's socket [default: /run/podmap/podmap.sock]. Given (or PODMAP_SOCKET set),
    /// `podmap events` reads the socket even when stdin is redirected from a file.
    #[arg(long, global = true, env = "PODMAP_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// How `podmap export` logs (the other commands print, they do not log): `text`, or `json`
    /// (one JSON object per line, for a log collector). Colour only on a terminal.
    #[arg(long, global = true, env = "PODMAP_LOG_FORMAT", value_name = "FORMAT", value_enum,
          default_value_t = podmap_node::LogFormat::Text)]
    pub log_format: podmap_node::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The socket to use: the one given, else the default.
    pub fn socket(&self) -> &Path {
        self.socket
            .as_deref()
            .unwrap_or_else(|| Path::new(DEFAULT_SOCKET))
    }
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
    /// Stream events (exec, exit, policy) from podmapd, or read saved ones (`--input`, stdin).
    Events(EventsCommand),
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

/// `podmap events`: what to print ([`EventsArgs`]), where from, and in which colours.
#[derive(Debug, Clone, Args)]
pub struct EventsCommand {
    #[command(flatten)]
    pub args: EventsArgs,
    /// Colour the compact output: auto (on a terminal, unless NO_COLOR is set), always, never.
    /// JSON is never coloured.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
    /// Keep going when podmapd is away or restarts: retry with backoff and stream on, with a
    /// line on stderr each time podmapd is lost and found again.
    #[arg(long, conflicts_with = "input")]
    pub reconnect: bool,
    /// Read events saved as JSON lines (`podmap events -o json`, `podmap export --file`) from
    /// this file, `-` for stdin, instead of podmapd; every filter applies. Without it, a stdin
    /// redirected from a file is read when neither --socket (PODMAP_SOCKET) nor --reconnect is
    /// given; a pipe needs `--input -`.
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

impl ColorWhen {
    /// Whether to colour: `auto` only for a terminal, and not when `NO_COLOR` is set to
    /// anything but the empty string (the NO_COLOR convention: a user's standing wish, which
    /// only an explicit flag overrides); `always` and `never` decide alone.
    pub fn enabled(self, to_terminal: bool, no_color: Option<&OsStr>) -> bool {
        match self {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => to_terminal && no_color.is_none_or(OsStr::is_empty),
        }
    }
}

/// What to stream and how to print it: the arguments `podmap events` shares with the library
/// entry point [`events`].
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

/// The event filters, shared by `podmap events` and `podmap export`: one definition, so the two
/// commands take the same flags. podmapd applies what its request can say (the types, one
/// namespace, the pod, the container, `--label` and the selector's `key=value` parts); the
/// client applies the rest ([`ClientFilter`]).
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only events of pods in this namespace (repeat: any of them; one is filtered by podmapd,
    /// several by the client).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Vec<String>,
    /// Only events of this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only events of containers with this name.
    #[arg(long)]
    pub container: Option<String>,
    /// Only events of pods with this label (repeat: all must match).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only events of pods whose labels match this Kubernetes label selector:
    /// `app=web,tier!=db`, `key`, `!key`, `key in (a,b)`, `key notin (a)` (all must hold; `!=`
    /// and `notin` also hold without the label). Its `key=value` parts are filtered by podmapd,
    /// the rest by the client.
    #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = parse_selector)]
    pub selector: Option<selector::Selector>,
    /// Only host events (attribution `host`: outside every container). Filtered by the client.
    #[arg(long)]
    pub host: bool,
    /// Only events whose process binary (its path) matches this regular expression (the regex
    /// crate's syntax, unanchored: `^/usr/bin/` or `(curl|wget)$`). Filtered by the client.
    #[arg(long, value_name = "REGEX")]
    pub binary: Option<regex::Regex>,
    /// Only these event types, comma-separated: exec,exit,policy.
    #[arg(long = "type", value_name = "TYPES", value_delimiter = ',', value_parser = parse_type)]
    pub types: Vec<EventType>,
    /// Only events of privileged processes: real or effective uid 0, or CAP_SYS_ADMIN in the
    /// effective set the exec gave them. Exits and policy events count by the same process's
    /// credentials. Filtered by podmapd (one that predates it refuses the request).
    #[arg(long)]
    pub privileged: bool,
}

/// The filters podmapd's request cannot say, applied by the client to each event.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    /// Any of these namespaces (set when more than one was given).
    pub namespaces: Vec<String>,
    pub selector: Option<selector::Selector>,
    pub host: bool,
    pub binary: Option<regex::Regex>,
}

impl ClientFilter {
    /// Whether every event passes (no decoding needed).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.selector.is_none() && !self.host && self.binary.is_none()
    }

    pub fn matches(&self, ev: &podmap_proto::Event) -> bool {
        let pod = ev.pod.as_deref();
        if !self.namespaces.is_empty()
            && !pod.is_some_and(|p| self.namespaces.contains(&p.namespace))
        {
            return false;
        }
        if let Some(sel) = &self.selector {
            // A pod-less event has no labels: only requirements that hold without them pass.
            let empty = Default::default();
            if !sel.matches(pod.map_or(&empty, |p| &p.labels)) {
                return false;
            }
        }
        if self.host && ev.attribution != podmap_proto::Attribution::Host {
            return false;
        }
        if let Some(re) = &self.binary {
            if !re.is_match(&ev.process.binary) {
                return false;
            }
        }
        true
    }
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

fn parse_selector(s: &str) -> Result<selector::Selector, String> {
    selector::parse(s).map_err(|e| e.to_string())
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
        let mut labels: std::collections::BTreeMap<String, String> =
            self.labels.iter().cloned().collect();
        // The selector's equalities must hold anyway: podmapd can drop the rest early. A key
        // both --label and the selector set to different values selects nothing, as it should:
        // the client's check of the whole selector still runs.
        if let Some(sel) = &self.selector {
            for (k, v) in sel.equalities() {
                labels.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        EventFilter {
            types: (!self.types.is_empty()).then(|| self.types.clone()),
            namespace: match self.namespace.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            pod: self.pod.clone(),
            container: self.container.clone(),
            labels,
            privileged: self.privileged,
        }
    }

    /// Whether some filter is left to the client: podmapd's filter alone does not say it all.
    pub fn needs_client(&self) -> bool {
        let server = self.filter();
        self.namespace.len() > 1
            || self.host
            || self.binary.is_some()
            || self.selector.as_ref().is_some_and(|sel| {
                sel.0
                    .iter()
                    .any(|r| !matches!(r, selector::Requirement::Equals(..)))
                    || sel
                        .equalities()
                        .any(|(k, v)| server.labels.get(k).map(String::as_str) != Some(v))
            })
    }

    /// What the client applies itself (see [`FilterArgs`]).
    pub fn client_filter(&self) -> ClientFilter {
        ClientFilter {
            namespaces: if self.namespace.len() > 1 {
                self.namespace.clone()
            } else {
                Vec::new()
            },
            selector: self.selector.clone(),
            host: self.host,
            binary: self.binary.clone(),
        }
    }
}

/// Runs the command; a closed stdout (`podmap events | head`) ends it cleanly.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let to_terminal = stdout.is_terminal();
    let mut out = BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::Events(cmd) => run_events(&cli, cmd, &mut out, to_terminal),
        Command::Status { output } => status(cli.socket(), *output, &mut out),
        Command::Containers { output } => containers(cli.socket(), *output, &mut out),
        // Long-running, with its own outputs: stdout is the export's when --stdout asks for it.
        Command::Export(args) => {
            drop(out);
            init_logging(cli.log_format);
            return export::run(cli.socket(), args);
        }
        Command::Check(args) => {
            let status = one_reply(cli.socket(), &Request::Status(Default::default()))
                .and_then(|reply| {
                    serde_json::from_slice::<StatusReport>(&reply).context("podmapd's status reply")
                })
                .map_err(|e| format!("{} ({e:#})", cli.socket().display()));
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

/// `podmap events`: from `--input`, from stdin when it is redirected from a regular file and no
/// socket was named (`podmap events -n prod < saved.json` reads what it is given), else from
/// podmapd's socket.
fn run_events(
    cli: &Cli,
    cmd: &EventsCommand,
    out: &mut impl Write,
    to_terminal: bool,
) -> anyhow::Result<()> {
    let colors = Colors(
        cmd.color
            .enabled(to_terminal, std::env::var_os("NO_COLOR").as_deref()),
    );
    let input = match &cmd.input {
        Some(path) => Some(path.clone()),
        None if cli.socket.is_none() && !cmd.reconnect && stdin_is_regular_file() => {
            Some(PathBuf::from("-"))
        }
        None => None,
    };
    let Some(path) = input else {
        let follow = if cmd.reconnect {
            connection::Follow::Reconnect
        } else {
            connection::Follow::Once
        };
        let mut printer = events::Printer::for_socket(&cmd.args, colors, out, to_terminal);
        return events::from_socket(cli.socket(), &cmd.args, follow, &mut printer, io::stderr())
            .map(|_| ());
    };
    let (name, file) = if path == Path::new("-") {
        // fd 0 itself rather than io::stdin(): one buffer, whose emptiness says when to flush.
        let fd = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("reading stdin")?;
        ("stdin".to_string(), std::fs::File::from(fd))
    } else {
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        (path.display().to_string(), file)
    };
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut printer = events::Printer::for_input(&cmd.args, colors, out, to_terminal);
    let summary = events::from_input(&mut reader, &name, &mut printer, io::stderr())?;
    if let Some(note) = events::bad_lines_note(&name, summary.bad) {
        eprintln!("podmap: {note}");
    }
    Ok(())
}

/// Whether stdin is redirected from a regular file (`< saved.json`). A pipe is not taken as
/// saved events: podmap run where stdin merely happens to be a pipe (a remote shell without a
/// terminal, a job runner) would wait on it and never show podmapd's events, so a pipeline says
/// `--input -`. A terminal, /dev/null or a socket say nothing about events to read either.
fn stdin_is_regular_file() -> bool {
    let Ok(fd) = io::stdin().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.file_type().is_file())
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

    fn event(
        ns: Option<&str>,
        labels: &str,
        attribution: &str,
        binary: &str,
    ) -> podmap_proto::Event {
        let pod = ns.map_or("null".to_string(), |ns| {
            format!(r#"{{"uid":"u","name":"p","namespace":"{ns}","labels":{labels},"workload":null,"workload_kind":null}}"#)
        });
        let json = format!(
            r#"{{"type":"exec","time":"t","node":"n","process":{{"pid":1,"tid":1,"ppid":0,"uid":0,
            "binary":"{binary}","args":[],"cwd":"/","exec_id":"e","parent_exec_id":null,
            "start_time":"s","cgroup_id":1}},"container":null,"pod":{pod},"attribution":"{attribution}"}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn events_filters(args: &[&str]) -> FilterArgs {
        let mut argv = vec!["podmap", "events"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Events(a) => a.args.filters,
            _ => panic!("not events"),
        }
    }

    #[test]
    fn filters_split_between_podmapd_and_the_client() {
        // One namespace and the selector's equalities go to podmapd; nothing left.
        let f = events_filters(&["-n", "prod", "-l", "app=web", "--label", "tier=front"]);
        let server = f.filter();
        assert_eq!(server.namespace.as_deref(), Some("prod"));
        assert_eq!(server.labels["app"], "web");
        assert_eq!(server.labels["tier"], "front");
        assert!(!f.needs_client());

        // Several namespaces: any of them, in the client.
        let f = events_filters(&["-n", "prod", "--namespace", "dev", "-l", "app=web,tier!=db"]);
        assert_eq!(f.filter().namespace, None);
        assert_eq!(f.filter().labels["app"], "web");
        assert!(f.needs_client());
        let c = f.client_filter();
        assert!(c.matches(&event(
            Some("dev"),
            r#"{"app":"web"}"#,
            "container",
            "/bin/sh"
        )));
        assert!(!c.matches(&event(
            Some("dev"),
            r#"{"app":"web","tier":"db"}"#,
            "container",
            "/bin/sh"
        )));
        assert!(!c.matches(&event(
            Some("kube-system"),
            r#"{"app":"web"}"#,
            "container",
            "/bin/sh"
        )));
        assert!(!c.matches(&event(None, "{}", "host", "/bin/sh")));

        // --host and --binary.
        let c = events_filters(&["--host", "--binary", "(curl|wget)$"]).client_filter();
        assert!(c.matches(&event(None, "{}", "host", "/usr/bin/curl")));
        assert!(!c.matches(&event(None, "{}", "host", "/usr/bin/curl.sh")));
        assert!(!c.matches(&event(Some("prod"), "{}", "container", "/usr/bin/wget")));
        assert!(!c.matches(&event(None, "{}", "unknown", "/usr/bin/wget")));

        // --privileged is podmapd's to apply (and, on saved events, the client's: see events).
        let f = events_filters(&["--privileged", "--type", "exec"]);
        assert!(f.filter().privileged && !f.needs_client());
        assert!(f.client_filter().is_empty());
        assert!(!events_filters(&[]).filter().privileged);

        // A selector on a pod-less event: only what holds without labels.
        let c = events_filters(&["-l", "!canary"]).client_filter();
        assert!(c.matches(&event(None, "{}", "host", "/bin/sh")));
        assert!(events_filters(&[]).client_filter().is_empty());
    }

    #[test]
    fn bad_selectors_and_regexes_are_command_line_errors() {
        for bad in [
            &["-l", "env in prod"][..],
            &["-l", ""],
            &["--binary", "(unclosed"],
        ] {
            let mut argv = vec!["podmap", "events"];
            argv.extend_from_slice(bad);
            let e = Cli::try_parse_from(argv).expect_err("refused").to_string();
            assert!(e.contains("invalid value"), "{e}");
        }
        let e = Cli::try_parse_from(["podmap", "events", "-l", "env in prod"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("list in parentheses"), "{e}");
    }

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
        assert_eq!(cli.socket(), Path::new("/tmp/s.sock"));
        let Command::Events(EventsCommand { args, .. }) = cli.command else {
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
        let Command::Events(EventsCommand { args, .. }) = cli.command else {
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
