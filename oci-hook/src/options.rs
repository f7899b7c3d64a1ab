//! The hook's command line (docs/interfaces.md): every flag also comes from an environment
//! variable (PODMAP_*, and POD_NAMESPACE for `--own-namespace`), because a runtime gives a hook
//! no environment but the `env` list of its hooks.d entry, and tests and installers point all
//! of podmap's binaries at one set of directories.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The OCI stage the runtime runs the hook at. One hooks.d entry lists both stages with the same
/// arguments, so by default (`auto`) the stage comes from the state's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// After the cgroup exists and the init process is in it, before the user process execs;
    /// runs in the host's namespaces.
    #[value(name = "create-runtime", alias = "createRuntime")]
    CreateRuntime,
    /// After the container is deleted.
    #[value(name = "poststop")]
    Poststop,
    /// From the state's status: "creating" (runc) or "created" (crun) is createRuntime,
    /// "stopped" is poststop.
    #[value(name = "auto")]
    Auto,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::CreateRuntime => "create-runtime",
            Stage::Poststop => "poststop",
            Stage::Auto => "auto",
        }
    }

    /// The stage a state's status means, for `auto`.
    pub fn from_status(status: &str) -> Option<Stage> {
        match status {
            "creating" | "created" => Some(Stage::CreateRuntime),
            "stopped" => Some(Stage::Poststop),
            _ => None,
        }
    }
}

/// How much the log file gets: problems always; every mapping too at `debug`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

pub const DEFAULT_LOG_FILE: &str = "/var/log/podmap/hook.log";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podmap";
pub const DEFAULT_POLICY_DIR: &str = "/etc/podmap/policies";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "podmap-oci-hook",
    version,
    about = "podmap's OCI hook: records which pod and container a new cgroup belongs to (createRuntime) \
             and starts the record's grace period (poststop). Reads the OCI state on stdin. Never \
             fails a container unless told to for listed namespaces."
)]
pub struct Options {
    /// Directory of the pinned maps shared with podmapd (on bpffs).
    #[arg(long, env = "PODMAP_BPFFS_DIR", default_value = podmap_bpf::DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    /// podmap's state directory; the hook's own store is `<dir>/hook`.
    #[arg(long, env = "PODMAP_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The host's cgroupfs, as mounted where the hook runs.
    #[arg(long, env = "PODMAP_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// The cgroup v1 controller whose ids podmapd tracks where containers live only in v1
    /// (must match podmapd's).
    #[arg(long, env = "PODMAP_V1_CONTROLLER", default_value = "memory")]
    pub v1_controller: String,
    /// The node's policy directory: a new container joins the policies that select it.
    #[arg(long, env = "PODMAP_POLICY_DIR", default_value = DEFAULT_POLICY_DIR)]
    pub policy_dir: PathBuf,
    /// Where problems are logged (appended; the directory is created).
    #[arg(long, env = "PODMAP_LOG_FILE", default_value = DEFAULT_LOG_FILE)]
    pub log_file: PathBuf,
    /// `error`, `warn`, `info` or `debug` (debug also logs every mapping with its timing).
    #[arg(
        long,
        env = "PODMAP_LOG",
        value_enum,
        default_value = "info",
        ignore_case = true
    )]
    pub log_level: Level,
    /// Hard bound on the hook's run time, enforced by a watchdog ("1s", "250ms", or seconds).
    #[arg(long, env = "PODMAP_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long a removed container's record stays mapped for late exit events ("30s",
    /// "500ms", or seconds).
    #[arg(long, env = "PODMAP_GRACE_SECONDS", default_value = "30", value_parser = parse_duration)]
    pub grace: Duration,
    /// Namespaces whose containers fail to start when they cannot be mapped (comma-separated).
    #[arg(long, env = "PODMAP_FAIL_CLOSED_NAMESPACES", value_delimiter = ',')]
    pub fail_closed_namespaces: Vec<String>,
    /// The namespace podmap itself runs in: never failed, whatever the list says (it would
    /// deadlock podmap's own rollout).
    #[arg(long, env = "POD_NAMESPACE")]
    pub own_namespace: Option<String>,
    /// The OCI stage: create-runtime (alias createRuntime), poststop, or auto (from the
    /// state's status).
    #[arg(value_enum, default_value = "auto")]
    pub stage: Stage,
}

impl Options {
    /// Whether a mapping failure of a container in `namespace` fails the container.
    pub fn fails_closed(&self, namespace: Option<&str>) -> bool {
        let Some(ns) = namespace.filter(|ns| !ns.is_empty()) else {
            return false;
        };
        if self.own_namespace.as_deref() == Some(ns) {
            return false;
        }
        self.fail_closed_namespaces.iter().any(|n| n.trim() == ns)
    }
}

/// "1s", "250ms", "1.5" (seconds), "30" (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 1s, 250ms, 30)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        let mut v = vec!["podmap-oci-hook"];
        v.extend_from_slice(args);
        Options::try_parse_from(v).unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn stages_and_flags() {
        let o = opts(&["--timeout", "200ms", "--grace", "2", "createRuntime"]);
        assert_eq!(o.stage, Stage::CreateRuntime);
        assert_eq!(o.timeout, Duration::from_millis(200));
        assert_eq!(o.grace, Duration::from_secs(2));
        assert_eq!(opts(&["poststop"]).stage, Stage::Poststop);
        assert_eq!(opts(&["create-runtime"]).stage, Stage::CreateRuntime);
        assert_eq!(opts(&[]).stage, Stage::Auto);
        assert_eq!(Stage::from_status("creating"), Some(Stage::CreateRuntime));
        assert_eq!(Stage::from_status("created"), Some(Stage::CreateRuntime));
        assert_eq!(Stage::from_status("stopped"), Some(Stage::Poststop));
        assert_eq!(Stage::from_status("running"), None);
        assert!(Options::try_parse_from(["podmap-oci-hook", "prestart"]).is_err());
    }

    #[test]
    fn the_own_namespace_never_fails_closed() {
        let o = opts(&[
            "--fail-closed-namespaces",
            "prod,podmap",
            "--own-namespace",
            "podmap",
            "poststop",
        ]);
        assert!(o.fails_closed(Some("prod")));
        assert!(!o.fails_closed(Some("podmap")));
        assert!(!o.fails_closed(Some("dev")));
        assert!(!o.fails_closed(None));
        assert!(!opts(&["poststop"]).fails_closed(Some("prod")));
    }
}
