//! Where a node's shared state lives: the pins, the stores, the policies, the cgroup root; one
//! set of flags. podmapd, podmap-nri and podmap-oci-hook all `#[command(flatten)]` [`NodeArgs`],
//! so each flag and each `PODMAP_*` variable has one name, one default and one meaning on every
//! binary (docs/interfaces.md, "Flags every binary shares").
//!
//! Also the one file of shared state that is not a pin or a store: podmap-nri's registration
//! (`nri_health`).
//!
//! Lean on purpose: the OCI hook depends on it, and the hook starts for every container. clap,
//! humantime, serde and libc (which the hook has anyway) only; `PODMAP_LOG` is checked by a small parser of tracing's EnvFilter syntax rather
//! than tracing-subscriber's (which would bring regex into the hook).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub mod nri_health;

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/podmap";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podmap";
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const DEFAULT_V1_CONTROLLER: &str = "memory";
pub const DEFAULT_POLICY_DIR: &str = "/etc/podmap/policies";
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_LOG: &str = "info";

/// Environment variables no binary reads any more, with what replaced them. A binary that finds
/// one set logs a warning, so a renamed setting never goes silently unapplied.
pub const RETIRED_ENV: &[(&str, &str)] = &[(
    "PODMAP_GRACE_SECONDS",
    "PODMAP_GRACE (a duration: 30s, 500ms, 2m, or whole seconds)",
)];

/// One warning per retired variable found in the environment.
pub fn retired_env_warnings() -> Vec<String> {
    RETIRED_ENV
        .iter()
        .filter(|(name, _)| std::env::var_os(name).is_some())
        .map(|(name, now)| format!("{name} is no longer read: use {now}"))
        .collect()
}

/// The flags every podmap binary on a node shares. Every flag also comes from its environment
/// variable.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct NodeArgs {
    /// Directory of the pinned maps shared by podmapd and the runtime plugins (on bpffs).
    #[arg(long, env = "PODMAP_BPFFS_DIR", value_name = "DIR", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    /// podmap's state directory: podmap-nri's store is <dir>/nri, the hook's <dir>/hook
    /// (podmapd keeps no store and ignores it).
    #[arg(long, env = "PODMAP_STATE_DIR", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The host's cgroupfs, as mounted where the binary runs.
    #[arg(long, env = "PODMAP_CGROUP_ROOT", value_name = "DIR", default_value = DEFAULT_CGROUP_ROOT)]
    pub cgroup_root: PathBuf,
    /// The cgroup v1 controller whose ids attribute processes on hosts where containers live
    /// only in v1 (the same on every binary of a node).
    #[arg(long, env = "PODMAP_V1_CONTROLLER", value_name = "NAME", default_value = DEFAULT_V1_CONTROLLER)]
    pub v1_controller: String,
    /// The node-local policy directory (YAML PodPolicy files).
    #[arg(long, env = "PODMAP_POLICY_DIR", value_name = "DIR", default_value = DEFAULT_POLICY_DIR)]
    pub policy_dir: PathBuf,
    /// How long a removed container's record stays mapped, so late exit events still attribute:
    /// a duration (30s, 500ms, 2m) or whole seconds (30).
    #[arg(long, env = "PODMAP_GRACE", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub grace: Duration,
    /// What is logged: a tracing EnvFilter directive list (info, warn,podmap_nri=debug). The
    /// hook, which has no targets, logs at the highest level the list names.
    #[arg(long, visible_alias = "log-level", env = "PODMAP_LOG", value_name = "FILTER",
          default_value = DEFAULT_LOG, value_parser = LogFilter::from_str)]
    pub log: LogFilter,
    /// How log lines are written: `text` (for people) or `json` (one JSON object per line, for
    /// a log collector). Colour only when the output is a terminal, never in a file.
    #[arg(long, env = "PODMAP_LOG_FORMAT", value_name = "FORMAT", value_enum,
          default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The namespace podmap runs in (the DaemonSet sets POD_NAMESPACE): no policy ever selects
    /// its pods, so a policy cannot stop podmap itself.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub own_namespace: Option<String>,
}

impl Default for NodeArgs {
    /// The defaults, without reading the command line or the environment (a pre-launched
    /// podmap-nri falls back to them when either is unusable).
    fn default() -> NodeArgs {
        NodeArgs {
            bpffs_dir: DEFAULT_BPFFS_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            cgroup_root: DEFAULT_CGROUP_ROOT.into(),
            v1_controller: DEFAULT_V1_CONTROLLER.into(),
            policy_dir: DEFAULT_POLICY_DIR.into(),
            grace: DEFAULT_GRACE,
            log: LogFilter::default(),
            log_format: LogFormat::Text,
            own_namespace: None,
        }
    }
}

impl NodeArgs {
    /// podmap's own namespace, if one was given (POD_NAMESPACE set to nothing is none).
    pub fn own_namespace(&self) -> Option<&str> {
        self.own_namespace.as_deref().filter(|ns| !ns.is_empty())
    }
}

/// `--log-format`, `PODMAP_LOG_FORMAT`: parsed here, mapped by each binary onto its own logger
/// (tracing-subscriber's fmt or json formatter; the hook's own line writer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `<time> <LEVEL> <target>: <message>`, for people.
    #[default]
    Text,
    /// One JSON object per line, with `timestamp`, `level` and `fields.message` (the hook:
    /// `timestamp`, `level`, `message`, and its own fields).
    Json,
}

/// Every duration podmap takes (flags, environment, podmap-nri's YAML): humantime's syntax
/// (`30s`, `500ms`, `1m 30s`, `2h`) or a whole number of seconds (`30`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too many seconds"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration (30s, 500ms, 2m, or whole seconds): {e}"))
}

/// A log level, as tracing orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    /// tracing's LevelFilter syntax: a word in any case, or 0 (off) to 5 (trace).
    fn parse(s: &str) -> Option<Level> {
        const WORDS: [(&str, Level); 6] = [
            ("off", Level::Off),
            ("error", Level::Error),
            ("warn", Level::Warn),
            ("info", Level::Info),
            ("debug", Level::Debug),
            ("trace", Level::Trace),
        ];
        if let Ok(n) = s.parse::<usize>() {
            return WORDS.get(n).map(|(_, l)| *l);
        }
        if s.is_empty() {
            return Some(Level::Error);
        }
        WORDS
            .iter()
            .find(|(w, _)| s.eq_ignore_ascii_case(w))
            .map(|(_, l)| *l)
    }
}

/// `PODMAP_LOG`: a tracing EnvFilter directive list, checked with EnvFilter's grammar
/// (`level`, `target`, `target=level`, `target[span{field=value}]=level`, comma-separated), and
/// the highest level it enables anywhere. podmapd and podmap-nri build their EnvFilter from
/// [`LogFilter::as_str`]; the hook logs at [`LogFilter::max_level`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    text: String,
    max: Level,
}

impl Default for LogFilter {
    fn default() -> LogFilter {
        LogFilter {
            text: DEFAULT_LOG.into(),
            max: Level::Info,
        }
    }
}

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn max_level(&self) -> Level {
        self.max
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for LogFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFilter, String> {
        if s.trim().is_empty() {
            return Ok(LogFilter::default());
        }
        let mut max = None;
        for d in s.split(',').filter(|d| !d.is_empty()) {
            let level = directive_level(d).ok_or_else(|| {
                format!(
                    "{d:?} is not a log directive (a level: error, warn, info, debug, trace, off; \
                     or target=level, e.g. podmap_nri=debug)"
                )
            })?;
            max = max.max(Some(level));
        }
        Ok(LogFilter {
            text: s.to_string(),
            max: max.unwrap_or(Level::Info),
        })
    }
}

/// The level one directive enables, if EnvFilter would accept it: a port of its state machine
/// (tracing-subscriber 0.3, `Directive::parse`), without compiling field-value regexes. A
/// target without a level enables every level.
fn directive_level(d: &str) -> Option<Level> {
    enum S {
        Start,
        LevelOrTarget(usize),
        Span,
        Field(usize),
        Fields,
        Target,
        Level(usize),
    }
    let d = d.trim();
    let mut state = S::Start;
    for (i, c) in d.char_indices() {
        state = match (state, c) {
            (S::Start, '[') => S::Span,
            (S::Start, c) if !(c.is_alphanumeric() || "-:_".contains(c)) => return None,
            (S::Start, _) => S::LevelOrTarget(i),
            (S::LevelOrTarget(_), '=') => S::Level(i + 1),
            (S::LevelOrTarget(_), '[') => S::Span,
            (s @ S::LevelOrTarget(_), _) => s,
            (S::Target, '=') => S::Level(i + 1),
            (S::Span, ']') => S::Target,
            (S::Span, '{') => S::Field(i + 1),
            (S::Span, _) => S::Span,
            (S::Field(start), '}') if start < i => S::Fields,
            (S::Field(start), ',') if start < i => S::Field(i + 1),
            (S::Field(start), '}' | ',') if start == i => return None,
            (s @ S::Field(_), _) => s,
            (S::Fields, ']') => S::Target,
            (s @ S::Level(_), _) => s,
            _ => return None,
        };
    }
    match state {
        S::Start => Some(Level::Trace),
        S::LevelOrTarget(start) => Some(Level::parse(&d[start..]).unwrap_or(Level::Trace)),
        S::Level(start) if start == d.len() => Some(Level::Trace),
        S::Level(start) => Level::parse(&d[start..]),
        S::Target => Some(Level::Trace),
        S::Span | S::Field(_) | S::Fields => None,
    }
}

/// Tests' helpers for `--log-format`: every binary's log lines read the same way.
#[doc(hidden)]
pub mod log_lines {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Runs `cmd` with stderr piped (not a terminal), reads stderr until `want` lines have come or
    /// five seconds passed, then stops the process (SIGTERM, then waits) and returns every line.
    pub fn stderr_lines(mut cmd: Command, want: usize) -> Vec<String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        while lines.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        if child.try_wait().unwrap().is_none() {
            // SAFETY: kill(2) on the pid of the child started above, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        lines
    }

    /// Every line is one JSON object with a level and a message (tracing's json formatter puts the
    /// message under `fields`).
    pub fn assert_json_lines(lines: &[String]) {
        assert!(!lines.is_empty(), "nothing was logged");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
            assert!(v["level"].is_string(), "no level: {line}");
            let msg = v["fields"]["message"].as_str().or(v["message"].as_str());
            assert!(msg.is_some_and(|m| !m.is_empty()), "no message: {line}");
        }
    }

    /// Text to a pipe: no ANSI escape at all.
    pub fn assert_plain_text(lines: &[String]) {
        assert!(!lines.is_empty(), "nothing was logged");
        for line in lines {
            assert!(!line.contains('\x1b'), "an escape sequence in: {line:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_err(),
                "JSON: {line}"
            );
        }
    }
}

/// Tests' helper: each binary checks that its own command line reads the shared environment.
#[doc(hidden)]
pub mod testing {
    use super::*;
    use std::process::Command;

    const CHILD: &str = "PODMAP_NODE_TEST_CHILD";
    const VARS: [&str; 8] = [
        "PODMAP_BPFFS_DIR",
        "PODMAP_STATE_DIR",
        "PODMAP_CGROUP_ROOT",
        "PODMAP_V1_CONTROLLER",
        "PODMAP_POLICY_DIR",
        "PODMAP_GRACE",
        "PODMAP_LOG",
        "POD_NAMESPACE",
    ];

    /// Called by the test named `test` (its full path, e.g. `config::tests::shared_env`): in
    /// the parent, runs that test again in child processes, each with one set of PODMAP_*
    /// variables (the environment is the process's, and other tests parse concurrently); in a
    /// child, parses `T` from an empty command line and checks what the environment says.
    pub fn env_is_read<T: clap::Parser>(test: &str, node: fn(&T) -> &NodeArgs) {
        if let Some(expect) = std::env::var_os(CHILD) {
            let expect = expect.into_string().unwrap();
            let (ms, level) = expect.split_once(',').unwrap();
            let t = T::try_parse_from(["bin"]).unwrap_or_else(|e| panic!("{e}"));
            let n = node(&t);
            assert_eq!(n.grace.as_millis().to_string(), ms, "PODMAP_GRACE");
            assert_eq!(format!("{:?}", n.log.max_level()), level, "PODMAP_LOG");
            assert_eq!(n.bpffs_dir, PathBuf::from("/sys/fs/bpf/podmap-env"));
            assert_eq!(n.state_dir, PathBuf::from("/tmp/podmap-env/state"));
            assert_eq!(n.cgroup_root, PathBuf::from("/tmp/podmap-env/cgroup"));
            assert_eq!(n.v1_controller, "pids");
            assert_eq!(n.policy_dir, PathBuf::from("/tmp/podmap-env/policies"));
            assert_eq!(n.own_namespace(), Some("podmap-env"));
            return;
        }
        let exe = std::env::current_exe().unwrap();
        for (grace, log, expect) in [
            ("30", "info", "30000,Info"),
            ("30s", "warn", "30000,Warn"),
            ("500ms", "podmap=debug", "500,Debug"),
            ("1m 30s", "warn,podmap_nri=trace", "90000,Trace"),
        ] {
            let mut cmd = Command::new(&exe);
            cmd.args([test, "--exact", "--nocapture", "--test-threads", "1"]);
            for v in VARS {
                cmd.env_remove(v);
            }
            let out = cmd
                .env(CHILD, expect)
                .env("PODMAP_BPFFS_DIR", "/sys/fs/bpf/podmap-env")
                .env("PODMAP_STATE_DIR", "/tmp/podmap-env/state")
                .env("PODMAP_CGROUP_ROOT", "/tmp/podmap-env/cgroup")
                .env("PODMAP_V1_CONTROLLER", "pids")
                .env("PODMAP_POLICY_DIR", "/tmp/podmap-env/policies")
                .env("PODMAP_GRACE", grace)
                .env("PODMAP_LOG", log)
                .env("POD_NAMESPACE", "podmap-env")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "PODMAP_GRACE={grace} PODMAP_LOG={log}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Bin {
        #[command(flatten)]
        node: NodeArgs,
    }

    #[test]
    fn the_environment_is_read() {
        testing::env_is_read::<Bin>("tests::the_environment_is_read", |b| &b.node);
    }

    fn parse(args: &[&str]) -> Result<NodeArgs, clap::Error> {
        Bin::try_parse_from(std::iter::once("bin").chain(args.iter().copied())).map(|b| b.node)
    }

    #[test]
    fn durations_one_way() {
        for (s, d) in [
            ("30", Duration::from_secs(30)),
            ("30s", Duration::from_secs(30)),
            (" 30s ", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("1m 30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("0", Duration::ZERO),
            ("18446744074", Duration::from_secs(18_446_744_074)),
        ] {
            assert_eq!(parse_duration(s), Ok(d), "{s:?}");
        }
        for bad in [
            "",
            "soon",
            "-1",
            "1.5",
            "30 parsecs",
            "99999999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(parse(&[]).unwrap(), NodeArgs::default());
        let d = NodeArgs::default();
        assert_eq!(d.grace, Duration::from_secs(30));
        assert_eq!(d.log.max_level(), Level::Info);
        assert_eq!(d.own_namespace(), None);
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--bpffs-dir",
            "/sys/fs/bpf/x",
            "--state-dir",
            "/s",
            "--cgroup-root",
            "/c",
            "--v1-controller",
            "pids",
            "--policy-dir",
            "/p",
            "--grace",
            "2m",
            "--log",
            "warn,podmap_nri=debug",
            "--own-namespace",
            "",
        ])
        .unwrap();
        assert_eq!(a.bpffs_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(a.state_dir, PathBuf::from("/s"));
        assert_eq!(a.cgroup_root, PathBuf::from("/c"));
        assert_eq!(a.v1_controller, "pids");
        assert_eq!(a.policy_dir, PathBuf::from("/p"));
        assert_eq!(a.grace, Duration::from_secs(120));
        assert_eq!(a.log.as_str(), "warn,podmap_nri=debug");
        assert_eq!(a.log.max_level(), Level::Debug);
        assert_eq!(a.own_namespace(), None);
        // The hook's old flag name still works.
        assert_eq!(
            parse(&["--log-level", "debug"]).unwrap().log.max_level(),
            Level::Debug
        );
        assert_eq!(
            parse(&["--grace", "30"]).unwrap(),
            parse(&["--grace", "30s"]).unwrap()
        );
        assert!(parse(&["--grace", "soon"]).is_err());
        assert!(parse(&["--log", "=info=x"]).is_err());
    }

    #[test]
    fn log_directives_take_the_highest_level() {
        for (s, l) in [
            ("info", Level::Info),
            ("INFO", Level::Info),
            ("Warn", Level::Warn),
            ("error", Level::Error),
            ("off", Level::Off),
            ("0", Level::Off),
            ("4", Level::Debug),
            ("debug", Level::Debug),
            ("trace", Level::Trace),
            ("warn,podmap=debug", Level::Debug),
            ("podmap_daemon=info,warn", Level::Info),
            ("podmap", Level::Trace),
            ("podmap=", Level::Trace),
            ("a::b-c=error", Level::Error),
            ("[span]=debug", Level::Debug),
            ("target[span{field=1}]=warn", Level::Warn),
            ("[{f=x}]=info", Level::Info),
            ("error,", Level::Error),
            ("", Level::Info),
        ] {
            assert_eq!(
                LogFilter::from_str(s).map(|f| f.max_level()),
                Ok(l),
                "{s:?}"
            );
        }
        for bad in [
            "=info",
            "podmap=loud",
            "podmap=debug=x",
            "[unclosed",
            "[{}]",
            "*",
            "t[s]x=info",
            // EnvFilter splits on every comma, field lists included.
            "[{f=x,g}]=info",
        ] {
            assert!(LogFilter::from_str(bad).is_err(), "{bad:?}");
        }
    }
}
