//! The hook's command line (docs/interfaces.md): every flag also comes from an environment
//! variable (PODMAP_*, and POD_NAMESPACE for `--own-namespace`), because a runtime gives a hook
//! no environment but the `env` list of its hooks.d entry, and tests and installers point all
//! of podmap's binaries at one set of directories.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use podmap_node::NodeArgs;

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

#[derive(Debug, Clone, Parser)]
#[command(
    name = "podmap-oci-hook",
    version,
    about = "podmap's OCI hook: records which pod and container a new cgroup belongs to (createRuntime) \
             and starts the record's grace period (poststop). Reads the OCI state on stdin. Never \
             fails a container unless told to for listed namespaces."
)]
pub struct Options {
    /// The flags every podmap binary on a node shares (pins, state, cgroup root, policy
    /// directory, grace, log filter, own namespace). The hook's store is `<state-dir>/hook`;
    /// it logs at the highest level `--log` names (`debug` also logs every mapping with its
    /// timing).
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where problems are logged (appended; the directory is created).
    #[arg(long, env = "PODMAP_LOG_FILE", default_value = DEFAULT_LOG_FILE)]
    pub log_file: PathBuf,
    /// Hard bound on the hook's run time, enforced by a watchdog ("1s", "250ms", or whole
    /// seconds).
    #[arg(long, env = "PODMAP_TIMEOUT", default_value = "1s", value_parser = podmap_node::parse_duration)]
    pub timeout: Duration,
    /// Namespaces whose containers fail to start when they cannot be mapped (comma-separated).
    #[arg(long, env = "PODMAP_FAIL_CLOSED_NAMESPACES", value_delimiter = ',')]
    pub fail_closed_namespaces: Vec<String>,
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
        if self.node.own_namespace() == Some(ns) {
            return false;
        }
        self.fail_closed_namespaces.iter().any(|n| n.trim() == ns)
    }
}

impl std::ops::Deref for Options {
    type Target = NodeArgs;

    /// The shared flags read as the hook's own (`opts.bpffs_dir`, `opts.grace`).
    fn deref(&self) -> &NodeArgs {
        &self.node
    }
}

impl Options {
    /// The hook's level: the highest `--log` (PODMAP_LOG) names; problems are always logged,
    /// so `off` is `error`, and `trace` is `debug`.
    pub fn log_level(&self) -> Level {
        match self.node.log.max_level() {
            podmap_node::Level::Off | podmap_node::Level::Error => Level::Error,
            podmap_node::Level::Warn => Level::Warn,
            podmap_node::Level::Info => Level::Info,
            podmap_node::Level::Debug | podmap_node::Level::Trace => Level::Debug,
        }
    }
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
        for (flag, a, b) in [
            ("--timeout", "1", "1s"),
            ("--timeout", "250ms", "0.25s"),
            ("--grace", "30", "30s"),
        ] {
            let (x, y) = (opts(&[flag, a]), opts(&[flag, b]));
            assert_eq!(
                (x.timeout, x.grace),
                (y.timeout, y.grace),
                "{flag} {a} / {b}"
            );
        }
        assert_eq!(
            opts(&["--grace", "500ms"]).grace,
            Duration::from_millis(500)
        );
        assert!(Options::try_parse_from(["podmap-oci-hook", "--timeout", "soon"]).is_err());
        assert!(Options::try_parse_from(["podmap-oci-hook", "--grace", "-1"]).is_err());
    }

    #[test]
    fn the_log_level_is_podmapds_filter() {
        for (filter, level) in [
            ("info", Level::Info),
            ("DEBUG", Level::Debug),
            ("warn,podmap_oci_hook=debug", Level::Debug),
            ("podmap=trace", Level::Debug),
            ("error", Level::Error),
            ("off", Level::Error),
            ("warn", Level::Warn),
        ] {
            assert_eq!(opts(&["--log", filter]).log_level(), level, "{filter}");
        }
        // The flag's old name.
        assert_eq!(opts(&["--log-level", "debug"]).log_level(), Level::Debug);
        assert_eq!(opts(&[]).log_level(), Level::Info);
        assert!(Options::try_parse_from(["podmap-oci-hook", "--log", "podmap=loud"]).is_err());
    }

    #[test]
    fn the_environment_is_read() {
        podmap_node::testing::env_is_read::<Options>(
            "options::tests::the_environment_is_read",
            |o| &o.node,
        );
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
