//! `podmap events`: prints events from podmapd's socket (following it across restarts with
//! `--reconnect`) or from NDJSON saved earlier (`--input`, or stdin), filtered and formatted the
//! same way whatever the source.

use std::io::{self, BufRead as _, BufReader, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use podmap_proto::{Event, EventFilter, Request};

use super::connection::{stream_events, Follow, Link, StreamHandler};
use super::event_line::{compact_line_colored, Colors};
use super::{ClientFilter, EventFormat, EventsArgs};

/// Filters, formats and writes events; counts them for `--count`.
pub(super) struct Printer<'o, W: Write> {
    out: &'o mut W,
    format: EventFormat,
    /// podmapd's filter, applied here when there is no podmapd (input from a file).
    server: Option<EventFilter>,
    client: ClientFilter,
    colors: Colors,
    count: Option<u64>,
    written: u64,
    flush_each_line: bool,
}

impl<'o, W: Write> Printer<'o, W> {
    /// For podmapd's stream: podmapd applied its part of the filters.
    pub(super) fn for_socket(
        args: &EventsArgs,
        colors: Colors,
        out: &'o mut W,
        flush_each_line: bool,
    ) -> Self {
        Self::new(args, None, colors, out, flush_each_line)
    }

    /// For saved events: every filter applies here, podmapd's part included.
    pub(super) fn for_input(
        args: &EventsArgs,
        colors: Colors,
        out: &'o mut W,
        flush_each_line: bool,
    ) -> Self {
        Self::new(args, Some(args.filter()), colors, out, flush_each_line)
    }

    fn new(
        args: &EventsArgs,
        server: Option<EventFilter>,
        colors: Colors,
        out: &'o mut W,
        flush_each_line: bool,
    ) -> Self {
        Printer {
            out,
            format: args.output,
            server,
            client: args.filters.client_filter(),
            colors,
            count: args.count,
            written: 0,
            flush_each_line,
        }
    }

    fn done(&self) -> bool {
        self.count.is_some_and(|c| self.written >= c)
    }

    /// Whether `line` must be decoded: a filter to apply here or the compact form needs it.
    fn needs_event(&self) -> bool {
        self.server.is_some()
            || !self.client.is_empty()
            || matches!(self.format, EventFormat::Compact)
    }

    /// Prints `line` (a JSON event; `ev` its decoding when [`Self::needs_event`]) if the
    /// filters pass it. Returns false once `--count` events are written.
    fn print(&mut self, line: &[u8], ev: Option<&Event>) -> anyhow::Result<bool> {
        if let Some(ev) = ev {
            if self.server.as_ref().is_some_and(|f| !f.matches(ev)) || !self.client.matches(ev) {
                return Ok(true);
            }
        }
        match (self.format, ev) {
            (EventFormat::Compact, Some(ev)) => {
                let mut text = compact_line_colored(ev, self.colors);
                text.push('\n');
                self.out.write_all(text.as_bytes())
            }
            // JSON is the line as it came, never coloured: what the next tool reads.
            _ => self.out.write_all(line).and_then(|()| {
                if line.last() != Some(&b'\n') {
                    self.out.write_all(b"\n")
                } else {
                    Ok(())
                }
            }),
        }
        .context("writing to stdout")?;
        self.written += 1;
        if self.done() {
            self.flush()?;
            return Ok(false);
        }
        if self.flush_each_line {
            self.flush()?;
        }
        Ok(true)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("writing to stdout")
    }
}

/// podmapd's stream into a [`Printer`]; under `--reconnect`, one notice per loss and per
/// return on `notices` (stderr).
struct SocketPrinter<'p, 'o, W: Write, N: Write> {
    printer: &'p mut Printer<'o, W>,
    socket: &'p Path,
    notices: N,
    ever_up: bool,
    down: bool,
}

impl<W: Write, N: Write> StreamHandler for SocketPrinter<'_, '_, W, N> {
    fn line(&mut self, line: &[u8]) -> anyhow::Result<bool> {
        let ev: Option<Event> = if self.printer.needs_event() {
            Some(serde_json::from_slice(line).with_context(|| {
                format!(
                    "podmapd sent a line that is not an event: {}",
                    String::from_utf8_lossy(line).trim_end()
                )
            })?)
        } else {
            None
        };
        self.printer.print(line, ev.as_ref())
    }

    fn idle(&mut self) -> anyhow::Result<()> {
        self.printer.flush()
    }

    fn link(&mut self, change: Link<'_>) {
        // Notices, not a log: one line when the daemon goes and one when it is back, however
        // many attempts lie between. A notice that cannot be written is no reason to stop.
        let _ = match change {
            Link::Down { why, .. } if !self.down => {
                self.down = true;
                if self.ever_up {
                    writeln!(self.notices, "podmap: lost podmapd ({why}); reconnecting")
                } else {
                    writeln!(self.notices, "podmap: waiting for podmapd ({why})")
                }
            }
            Link::Down { .. } => Ok(()),
            Link::Up { again } => {
                let was_down = std::mem::replace(&mut self.down, false);
                self.ever_up = true;
                match (was_down, again) {
                    (true, true) => writeln!(
                        self.notices,
                        "podmap: reconnected to podmapd at {}",
                        self.socket.display()
                    ),
                    (true, false) => writeln!(
                        self.notices,
                        "podmap: connected to podmapd at {}",
                        self.socket.display()
                    ),
                    (false, _) => Ok(()),
                }
            }
        };
        let _ = self.notices.flush();
    }
}

/// Streams podmapd's events into `printer` until `--count`, podmapd refusing the request, or
/// (without `follow`) podmapd's absence or close. Returns how many events were written.
pub(super) fn from_socket<W: Write>(
    socket: &Path,
    args: &EventsArgs,
    follow: Follow,
    printer: &mut Printer<'_, W>,
    notices: impl Write,
) -> anyhow::Result<u64> {
    if printer.done() {
        return Ok(printer.written);
    }
    let mut handler = SocketPrinter {
        printer,
        socket,
        notices,
        ever_up: false,
        down: false,
    };
    stream_events(
        socket,
        &Request::Events(args.filter()),
        follow,
        &|| false,
        &mut handler,
    )?;
    Ok(handler.printer.written)
}

/// Streams events to `out` until `--count` is reached (returns how many were written), the
/// server refuses (a [`super::ServerError`]) or closes, or `out` fails. Flushes after every
/// line when `flush_each_line`, else whenever no more input is already buffered (once per
/// batch). No colour, no reconnecting: `podmap events` with its defaults, for a program.
pub fn events(
    socket: &Path,
    args: &EventsArgs,
    out: &mut impl Write,
    flush_each_line: bool,
) -> anyhow::Result<u64> {
    let mut printer = Printer::for_socket(args, Colors(false), out, flush_each_line);
    from_socket(socket, args, Follow::Once, &mut printer, io::sink())
}

/// What reading saved events found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct InputSummary {
    /// Events written (after the filters).
    pub written: u64,
    /// Lines that were not events, skipped.
    pub bad: u64,
}

/// Line-number warnings for bad lines stop after this many (the count goes on): a wrong file
/// would otherwise bury the terminal.
const BAD_LINE_WARNINGS: u64 = 20;

/// Reads NDJSON events (what `podmap events -o json` and `podmap export --file` write) from
/// `input`, applying every filter here, until the end or `--count`. A line that is not an event
/// is skipped, counted and named on `warnings` with its line number; blank lines are ignored.
pub(super) fn from_input<W: Write>(
    input: &mut BufReader<impl Read>,
    name: &str,
    printer: &mut Printer<'_, W>,
    mut warnings: impl Write,
) -> anyhow::Result<InputSummary> {
    let mut summary = InputSummary::default();
    let mut line = Vec::with_capacity(4096);
    let mut number = 0u64;
    while !printer.done() {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {name}"))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Event>(&line) {
            Ok(ev) => {
                printer.print(&line, Some(&ev))?;
            }
            Err(e) => {
                summary.bad += 1;
                if summary.bad <= BAD_LINE_WARNINGS {
                    let _ = writeln!(
                        warnings,
                        "podmap: {name}:{number}: not an event ({e}); skipped"
                    );
                }
                if summary.bad == BAD_LINE_WARNINGS {
                    let _ = writeln!(
                        warnings,
                        "podmap: {name}: further bad lines are counted, not shown"
                    );
                }
            }
        }
        // `tail -f saved.json | podmap events`: what was read goes out before the next read
        // waits.
        if input.buffer().is_empty() {
            printer.flush()?;
        }
    }
    printer.flush()?;
    summary.written = printer.written;
    Ok(summary)
}

/// The closing note on stderr when lines were skipped (the exit status stays 0: the events
/// that were there were printed, and a file cut mid-line by a crash is no reason to fail).
pub(super) fn bad_lines_note(name: &str, bad: u64) -> Option<String> {
    (bad > 0).then(|| {
        format!(
            "{bad} line{} of {name} {} not events and {} skipped",
            if bad == 1 { "" } else { "s" },
            if bad == 1 { "was" } else { "were" },
            if bad == 1 { "was" } else { "were" },
        )
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::client::{Cli, ColorWhen, Command, EventsCommand};

    fn command(argv: &[&str]) -> EventsCommand {
        let mut full = vec!["podmap", "events"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Events(c) => c,
            other => panic!("not events: {other:?}"),
        }
    }

    /// An event line as podmapd writes it: `pod` is `ns/name/container` or `host`.
    fn line(kind: &str, pod: &str, labels: &str, binary: &str, pid: u32) -> String {
        let (container, pod, attribution) = match pod.split('/').collect::<Vec<_>>()[..] {
            [ns, name, c] => (
                format!(r#"{{"id":"c1","name":"{c}","runtime":"containerd","image":"i"}}"#),
                format!(
                    r#"{{"uid":"u","name":"{name}","namespace":"{ns}","labels":{labels},"workload":null,"workload_kind":null}}"#
                ),
                "container",
            ),
            _ => ("null".into(), "null".into(), "host"),
        };
        let exit = if kind == "exit" {
            r#","exit":{"code":3,"signal":null}"#
        } else {
            ""
        };
        format!(
            r#"{{"schema_version":1,"type":"{kind}","time":"2026-11-25T12:00:00.123Z","node":"n","process":{{"pid":{pid},"tid":{pid},"ppid":1,"uid":0,"binary":"{binary}","args":["x"],"cwd":"/","exec_id":"e","parent_exec_id":null,"start_time":"s","cgroup_id":7}},"container":{container},"pod":{pod},"attribution":"{attribution}"{exit}}}"#
        )
    }

    fn saved() -> String {
        [
            line("exec", "prod/web-1/nginx", r#"{"app":"web"}"#, "/bin/sh", 1),
            line("exit", "prod/web-1/nginx", r#"{"app":"web"}"#, "/bin/sh", 1),
            String::new(),
            "not json at all".to_string(),
            line(
                "exec",
                "dev/db-0/pg",
                r#"{"app":"db","tier":"back"}"#,
                "/usr/bin/psql",
                2,
            ),
            line("exec", "host", "{}", "/usr/bin/curl", 3),
            r#"{"error":"too many event streams: 64"}"#.to_string(),
            line(
                "exec",
                "prod/api-2/app",
                r#"{"app":"api","canary":"1"}"#,
                "/bin/sh",
                4,
            ),
        ]
        .join("\n")
            + "\n"
    }

    /// Runs `podmap events ARGS` over `input`; returns stdout, stderr and the summary.
    fn read(input: &str, argv: &[&str]) -> (String, String, InputSummary) {
        let cmd = command(argv);
        let colors = Colors(cmd.color.enabled(false, None));
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        let mut printer = Printer::for_input(&cmd.args, colors, &mut out, false);
        let mut reader = BufReader::new(input.as_bytes());
        let summary = from_input(&mut reader, "saved.json", &mut printer, &mut warnings).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(warnings).unwrap(),
            summary,
        )
    }

    fn pids(json: &str) -> Vec<u64> {
        json.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["process"]["pid"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn saved_events_print_and_bad_lines_are_counted_with_their_numbers() {
        let (out, warnings, summary) = read(&saved(), &["-o", "compact"]);
        assert_eq!(
            out,
            "12:00:00.123 exec   prod/web-1/nginx  /bin/sh x\n\
             12:00:00.123 exit   prod/web-1/nginx  /bin/sh x exit=3\n\
             12:00:00.123 exec   dev/db-0/pg  /usr/bin/psql x\n\
             12:00:00.123 exec   host  /usr/bin/curl x\n\
             12:00:00.123 exec   prod/api-2/app  /bin/sh x\n"
        );
        assert_eq!(summary, InputSummary { written: 5, bad: 2 });
        let lines: Vec<&str> = warnings.lines().collect();
        assert_eq!(lines.len(), 2, "{warnings}");
        assert!(
            lines[0].starts_with("podmap: saved.json:4: not an event ("),
            "{warnings}"
        );
        assert!(
            lines[1].starts_with("podmap: saved.json:7: not an event ("),
            "{warnings}"
        );
        assert_eq!(
            bad_lines_note("saved.json", 2).unwrap(),
            "2 lines of saved.json were not events and were skipped"
        );
        assert_eq!(bad_lines_note("x", 0), None);

        // JSON passes the saved lines through unchanged.
        let (out, _, _) = read(&saved(), &["-o", "json"]);
        let want: Vec<String> = saved()
            .lines()
            .filter(|l| l.starts_with("{\"schema_version\""))
            .map(str::to_string)
            .collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), want);
    }

    /// With no podmapd in the way, podmapd's share of the filters applies here too.
    #[test]
    fn every_filter_applies_to_saved_events() {
        let cases: [(&[&str], &[u64]); 13] = [
            (&["-n", "prod"], &[1, 1, 4]),
            (&["-n", "prod", "-n", "dev"], &[1, 1, 2, 4]),
            (&["--pod", "db-0"], &[2]),
            (&["--container", "nginx"], &[1, 1]),
            (&["--label", "app=web"], &[1, 1]),
            (&["-l", "app in (db,api)"], &[2, 4]),
            (&["-l", "app,!canary"], &[1, 1, 2]),
            (&["--host"], &[3]),
            (&["--binary", "^/usr/bin/"], &[2, 3]),
            (&["--type", "exit"], &[1]),
            (&["--type", "exec", "-n", "prod"], &[1, 4]),
            (&["--count", "2"], &[1, 1]),
            (&["-l", "app=web", "--pod", "api-2"], &[]),
        ];
        for (argv, want) in cases {
            let mut full = vec!["-o", "json"];
            full.extend_from_slice(argv);
            let (out, _, summary) = read(&saved(), &full);
            assert_eq!(pids(&out), want, "{argv:?}");
            assert_eq!(summary.written, want.len() as u64, "{argv:?}");
        }
    }

    /// `line` with the credentials an exec carries.
    fn with_creds(line: String, uid: u32, euid: u32, caps: &[&str]) -> String {
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["process"]["uid"] = uid.into();
        v["process"]["euid"] = euid.into();
        v["process"]["cap_effective"] = caps.into();
        v.to_string()
    }

    #[test]
    fn privileged_selects_saved_events_by_their_credentials_and_marks_them() {
        let input = [
            with_creds(
                line("exec", "prod/web-1/nginx", "{}", "/bin/sh", 1),
                0,
                0,
                &[],
            ),
            with_creds(
                line("exit", "prod/web-1/nginx", "{}", "/bin/sh", 1),
                0,
                0,
                &[],
            ),
            with_creds(
                line("exec", "prod/web-1/nginx", "{}", "/bin/id", 2),
                101,
                101,
                &[],
            ),
            with_creds(
                line("exec", "dev/db-0/pg", "{}", "/usr/bin/mount", 3),
                999,
                999,
                &["CAP_SYS_ADMIN"],
            ),
            with_creds(line("exec", "host", "{}", "/usr/bin/su", 4), 1000, 0, &[]),
            // Older saved events without credentials: a real uid of 0 still counts.
            line("exec", "host", "{}", "/bin/true", 5),
        ]
        .join("\n")
            + "\n";
        let (out, _, _) = read(&input, &["-o", "json", "--privileged"]);
        assert_eq!(pids(&out), [1, 1, 3, 4, 5]);
        let (out, _, _) = read(&input, &["-o", "json", "--privileged", "-n", "prod"]);
        assert_eq!(pids(&out), [1, 1]);
        let (out, _, _) = read(&input, &["-o", "json", "--privileged", "--type", "exit"]);
        assert_eq!(pids(&out), [1]);
        let (out, _, _) = read(&input, &["-o", "json"]);
        assert_eq!(pids(&out), [1, 1, 2, 3, 4, 5]);
        let (out, _, _) = read(&input, &["--privileged"]);
        let marked: Vec<bool> = out.lines().map(|l| l.contains(" [priv]")).collect();
        assert_eq!(marked, [true, true, true, true, false], "{out}");
    }

    #[test]
    fn bad_line_warnings_stop_but_the_count_goes_on() {
        let input = "garbage\n".repeat(50) + &line("exec", "host", "{}", "/bin/true", 9) + "\n";
        let (out, warnings, summary) = read(&input, &["-o", "json"]);
        assert_eq!(pids(&out), [9]);
        assert_eq!(summary.bad, 50);
        assert_eq!(
            warnings.lines().count(),
            BAD_LINE_WARNINGS as usize + 1,
            "{warnings}"
        );
        assert!(warnings.contains("saved.json:20:"), "{warnings}");
        assert!(!warnings.contains("saved.json:21:"), "{warnings}");
    }

    fn colored(argv: &[&str], terminal: bool, no_color: Option<&str>) -> String {
        let cmd = command(argv);
        let colors = Colors(
            cmd.color
                .enabled(terminal, no_color.map(std::ffi::OsStr::new)),
        );
        let mut out = Vec::new();
        let mut printer = Printer::for_input(&cmd.args, colors, &mut out, false);
        from_input(
            &mut BufReader::new(saved().as_bytes()),
            "s",
            &mut printer,
            io::sink(),
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn colour_follows_the_mode_the_terminal_and_no_color() {
        let esc = |s: &str| s.contains('\x1b');
        // auto: a terminal, unless NO_COLOR says otherwise (an empty NO_COLOR does not).
        assert!(esc(&colored(&[], true, None)));
        assert!(esc(&colored(&["--color", "auto"], true, Some(""))));
        assert!(!esc(&colored(&["--color", "auto"], true, Some("1"))));
        assert!(!esc(&colored(&["--color", "auto"], false, None)));
        // always: even into a pipe and with NO_COLOR (an explicit flag wins).
        assert!(esc(&colored(&["--color", "always"], false, Some("1"))));
        // never: not even on a terminal.
        assert!(!esc(&colored(&["--color", "never"], true, None)));
        // JSON never.
        assert!(!esc(&colored(
            &["--color", "always", "-o", "json"],
            true,
            None
        )));
        assert!(ColorWhen::Auto.enabled(true, None));
        assert!(Cli::try_parse_from(["podmap", "events", "--color", "sometimes"]).is_err());
    }
}
