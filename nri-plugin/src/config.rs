//! podmap-nri's settings: flags and PODMAP_* environment variables (docs/interfaces.md,
//! "podmap-nri"), the NRI_PLUGIN_* environment of a pre-launched plugin, and the YAML
//! configuration the runtime hands a pre-launched plugin in Configure (the same keys as the
//! flags, docs/decisions.md #21).

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use podmap_node::NodeArgs;
use serde::Deserialize;

pub const DEFAULT_NRI_SOCKET: &str = "/var/run/nri/nri.sock";
pub const DEFAULT_PLUGIN_NAME: &str = "podmap";
pub const DEFAULT_PLUGIN_IDX: &str = "10";
pub const DEFAULT_LOG_FILE: &str = "/var/log/podmap/nri.log";
/// The store lives here under the state directory (docs/decisions.md #2).
pub const STORE_SUBDIR: &str = "nri";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "podmap-nri",
    version,
    about = "podmap's NRI plugin: maps every container's cgroup to its pod and container before \
             the container's first instruction"
)]
pub struct Args {
    /// The flags every podmap binary on a node shares (pins, state, cgroup root, policy
    /// directory, grace, log filter, own namespace).
    #[command(flatten)]
    pub node: NodeArgs,
    /// The runtime's NRI socket (external mode).
    #[arg(long, env = "PODMAP_NRI_SOCKET", value_name = "PATH", default_value = DEFAULT_NRI_SOCKET)]
    pub nri_socket: PathBuf,
    /// The name this plugin registers with.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_PLUGIN_NAME)]
    pub plugin_name: String,
    /// The plugin's index among the runtime's plugins: exactly two digits.
    #[arg(long, value_name = "NN", default_value = DEFAULT_PLUGIN_IDX)]
    pub plugin_idx: String,
    /// Log file (default: stderr in external mode, /var/log/podmap/nri.log when pre-launched).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Do not run: say whether the podmap-nri of this state directory is registered with the
    /// runtime now, and exit 0 if it is, 1 if not (a readiness probe).
    #[arg(long)]
    pub probe: bool,
}

/// How the plugin reaches the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Connects to the runtime's NRI socket, and again whenever the runtime goes away.
    External { socket: PathBuf },
    /// Started by the runtime with the connection on this descriptor (NRI_PLUGIN_SOCKET).
    PreLaunched { fd: RawFd },
}

/// Everything the plugin runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub plugin_name: String,
    pub plugin_idx: String,
    pub bpffs_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// The cgroup v1 controller tracked where containers live in v1 (the same as podmapd's).
    pub v1_controller: String,
    pub grace: Duration,
    /// None: stderr.
    pub log_file: Option<PathBuf>,
    pub policy_dir: PathBuf,
    /// podmap's own namespace, never selected by a policy.
    pub own_namespace: Option<String>,
}

impl Settings {
    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join(STORE_SUBDIR)
    }

    pub fn is_prelaunched(&self) -> bool {
        matches!(self.mode, Mode::PreLaunched { .. })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("plugin index {0:?} is not two digits (e.g. \"10\")")]
    BadIndex(String),
    #[error("plugin name is empty")]
    EmptyName,
    #[error("NRI_PLUGIN_SOCKET={0:?} is not a file descriptor number")]
    BadSocketFd(String),
    #[error("the runtime's plugin configuration is not valid YAML of podmap-nri's keys: {0}")]
    Yaml(String),
}

pub fn check_index(idx: &str) -> Result<(), ConfigError> {
    if idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ConfigError::BadIndex(idx.to_string()))
    }
}

/// The NRI_PLUGIN_* variables a runtime sets for a plugin it launched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreLaunchEnv {
    pub socket: Option<String>,
    pub name: Option<String>,
    pub idx: Option<String>,
}

impl PreLaunchEnv {
    pub fn from_env() -> Self {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        PreLaunchEnv {
            socket: var("NRI_PLUGIN_SOCKET"),
            name: var("NRI_PLUGIN_NAME"),
            idx: var("NRI_PLUGIN_IDX"),
        }
    }
}

impl Settings {
    /// Settings from the flags and, when the runtime launched the plugin, its NRI_PLUGIN_*
    /// variables (they name the plugin as the runtime expects it to register).
    pub fn new(args: Args, env: &PreLaunchEnv) -> Result<Settings, ConfigError> {
        let mode = match &env.socket {
            Some(fd) => Mode::PreLaunched {
                fd: fd
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::BadSocketFd(fd.clone()))?,
            },
            None => Mode::External {
                socket: args.nri_socket,
            },
        };
        let prelaunched = matches!(mode, Mode::PreLaunched { .. });
        let plugin_name = env
            .name
            .clone()
            .filter(|_| prelaunched)
            .unwrap_or(args.plugin_name);
        let plugin_idx = env
            .idx
            .clone()
            .filter(|_| prelaunched)
            .unwrap_or(args.plugin_idx);
        if plugin_name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        check_index(&plugin_idx)?;
        let log_file = args
            .log_file
            .or_else(|| prelaunched.then(|| PathBuf::from(DEFAULT_LOG_FILE)));
        Ok(Settings {
            mode,
            plugin_name,
            plugin_idx,
            own_namespace: args.node.own_namespace().map(str::to_owned),
            bpffs_dir: args.node.bpffs_dir,
            state_dir: args.node.state_dir,
            cgroup_root: args.node.cgroup_root,
            v1_controller: args.node.v1_controller,
            grace: args.node.grace,
            log_file,
            policy_dir: args.node.policy_dir,
        })
    }

    /// A pre-launched plugin's fallback when its command line or environment cannot be used:
    /// it must still register (docs/decisions.md #21), so it runs on defaults and says so in
    /// the log.
    pub fn prelaunched_defaults(env: &PreLaunchEnv) -> Settings {
        // Not parsed from an empty command line: that would still read the environment, which
        // may be what is unusable.
        let node = NodeArgs::default();
        let fd = env
            .socket
            .as_deref()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(3);
        let name = env
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_PLUGIN_NAME.into());
        let idx = env
            .idx
            .clone()
            .filter(|i| check_index(i).is_ok())
            .unwrap_or_else(|| DEFAULT_PLUGIN_IDX.into());
        Settings {
            mode: Mode::PreLaunched { fd },
            plugin_name: name,
            plugin_idx: idx,
            bpffs_dir: node.bpffs_dir,
            state_dir: node.state_dir,
            cgroup_root: node.cgroup_root,
            v1_controller: node.v1_controller,
            grace: node.grace,
            log_file: Some(PathBuf::from(DEFAULT_LOG_FILE)),
            policy_dir: node.policy_dir,
            own_namespace: None,
        }
    }

    /// Applies the runtime's configuration (Configure.config). Keys that only matter before
    /// registering (the socket, name and index) are accepted and ignored. Returns the keys it
    /// did not know, for a warning.
    pub fn apply_yaml(&mut self, text: &str) -> Result<Vec<String>, ConfigError> {
        if text.trim().is_empty() {
            return Ok(vec![]);
        }
        let f: FileConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        if let Some(v) = f.bpffs_dir {
            self.bpffs_dir = v;
        }
        if let Some(v) = f.state_dir {
            self.state_dir = v;
        }
        if let Some(v) = f.cgroup_root {
            self.cgroup_root = v;
        }
        if let Some(v) = f.grace {
            self.grace = v;
        }
        if let Some(v) = f.log_file {
            self.log_file = Some(v);
        }
        if let Some(v) = f.v1_controller {
            self.v1_controller = v;
        }
        if let Some(v) = f.policy_dir {
            self.policy_dir = v;
        }
        // A pre-launched plugin runs on the host, with no POD_NAMESPACE: this is how it learns
        // the namespace of podmap's own pods.
        if let Some(v) = f.own_namespace {
            self.own_namespace = Some(v).filter(|ns| !ns.is_empty());
        }
        Ok(f.unknown.into_keys().collect())
    }
}

/// The YAML configuration file: the flags' keys.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileConfig {
    #[allow(dead_code)]
    nri_socket: Option<PathBuf>,
    #[allow(dead_code)]
    plugin_name: Option<String>,
    #[allow(dead_code)]
    plugin_idx: Option<serde_yaml_ng::Value>,
    bpffs_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    /// The flags' syntax: a duration ("30s", "500ms") or whole seconds (30).
    #[serde(default, deserialize_with = "duration")]
    grace: Option<Duration>,
    log_file: Option<PathBuf>,
    v1_controller: Option<String>,
    policy_dir: Option<PathBuf>,
    own_namespace: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml_ng::Value>,
}

/// A YAML duration: a string in the flags' syntax, or a whole number of seconds.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Seconds(s)) => Ok(Some(Duration::from_secs(s))),
        Some(Raw::Text(t)) => podmap_node::parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["podmap-nri"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn the_environment_is_read() {
        podmap_node::testing::env_is_read::<Args>("config::tests::the_environment_is_read", |a| {
            &a.node
        });
    }

    #[test]
    fn grace_is_one_duration_in_flags_and_yaml() {
        let new = |a: &[&str]| Settings::new(args(a), &PreLaunchEnv::default()).unwrap();
        assert_eq!(
            new(&["--grace", "30"]).grace,
            new(&["--grace", "30s"]).grace
        );
        assert_eq!(new(&["--grace", "500ms"]).grace, Duration::from_millis(500));
        let mut s = Settings::prelaunched_defaults(&PreLaunchEnv::default());
        for (yaml, d) in [
            ("grace: 7", Duration::from_secs(7)),
            ("grace: \"7\"", Duration::from_secs(7)),
            ("grace: 7s", Duration::from_secs(7)),
            ("grace: 1m 30s", Duration::from_secs(90)),
            ("grace: 250ms", Duration::from_millis(250)),
        ] {
            s.apply_yaml(yaml).unwrap();
            assert_eq!(s.grace, d, "{yaml}");
        }
        assert!(s.apply_yaml("grace: -1").is_err());
        assert!(s.apply_yaml("grace: 1.5").is_err());
    }

    #[test]
    fn external_defaults() {
        let s = Settings::new(args(&[]), &PreLaunchEnv::default()).unwrap();
        assert_eq!(
            s.mode,
            Mode::External {
                socket: DEFAULT_NRI_SOCKET.into()
            }
        );
        assert_eq!(s.plugin_name, "podmap");
        assert_eq!(s.plugin_idx, "10");
        assert_eq!(s.store_path(), PathBuf::from("/var/lib/podmap/nri"));
        assert_eq!(s.grace, Duration::from_secs(30));
        assert_eq!(s.log_file, None);
    }

    #[test]
    fn the_own_namespace_is_known_when_given() {
        let s = Settings::new(
            args(&["--own-namespace", "podmap"]),
            &PreLaunchEnv::default(),
        )
        .unwrap();
        assert_eq!(s.own_namespace.as_deref(), Some("podmap"));
        // Empty (POD_NAMESPACE set to nothing) is not a namespace to spare.
        let s = Settings::new(args(&["--own-namespace", ""]), &PreLaunchEnv::default()).unwrap();
        assert_eq!(s.own_namespace, None);
    }

    #[test]
    fn flags() {
        let s = Settings::new(
            args(&[
                "--nri-socket",
                "/tmp/nri.sock",
                "--plugin-name",
                "pm",
                "--plugin-idx",
                "42",
                "--bpffs-dir",
                "/sys/fs/bpf/x",
                "--state-dir",
                "/tmp/st",
                "--cgroup-root",
                "/host/cgroup",
                "--grace",
                "5",
                "--log-file",
                "/tmp/nri.log",
            ]),
            &PreLaunchEnv::default(),
        )
        .unwrap();
        assert_eq!(
            s.mode,
            Mode::External {
                socket: "/tmp/nri.sock".into()
            }
        );
        assert_eq!(
            (s.plugin_name.as_str(), s.plugin_idx.as_str()),
            ("pm", "42")
        );
        assert_eq!(s.bpffs_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(s.store_path(), PathBuf::from("/tmp/st/nri"));
        assert_eq!(s.cgroup_root, PathBuf::from("/host/cgroup"));
        assert_eq!(s.grace, Duration::from_secs(5));
        assert_eq!(s.log_file, Some("/tmp/nri.log".into()));
        for bad in ["1", "100", "ab", ""] {
            assert_eq!(
                Settings::new(args(&["--plugin-idx", bad]), &PreLaunchEnv::default()),
                Err(ConfigError::BadIndex(bad.into()))
            );
        }
    }

    #[test]
    fn prelaunched_takes_the_runtimes_names() {
        let env = PreLaunchEnv {
            socket: Some("3".into()),
            name: Some("podmap".into()),
            idx: Some("05".into()),
        };
        let s = Settings::new(args(&["--plugin-name", "other"]), &env).unwrap();
        assert_eq!(s.mode, Mode::PreLaunched { fd: 3 });
        assert_eq!(
            (s.plugin_name.as_str(), s.plugin_idx.as_str()),
            ("podmap", "05")
        );
        assert_eq!(s.log_file, Some(DEFAULT_LOG_FILE.into()));
        let bad = PreLaunchEnv {
            socket: Some("x".into()),
            ..env.clone()
        };
        assert!(Settings::new(args(&[]), &bad).is_err());
        let d = Settings::prelaunched_defaults(&bad);
        assert_eq!(d.mode, Mode::PreLaunched { fd: 3 });
        assert_eq!(d.plugin_idx, "05");
    }

    #[test]
    fn yaml_uses_the_flags_keys() {
        let mut s = Settings::prelaunched_defaults(&PreLaunchEnv::default());
        let unknown = s
            .apply_yaml(
                "bpffs-dir: /sys/fs/bpf/podmap-t\nstate-dir: /tmp/s\ncgroup-root: /c\n\
                 grace: 3\nlog-file: /tmp/l.log\nplugin-idx: 10\nsurprise: 1\n\
                 own-namespace: podmap\n",
            )
            .unwrap();
        assert_eq!(unknown, vec!["surprise".to_string()]);
        assert_eq!(s.own_namespace.as_deref(), Some("podmap"));
        assert_eq!(s.bpffs_dir, PathBuf::from("/sys/fs/bpf/podmap-t"));
        assert_eq!(s.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(s.cgroup_root, PathBuf::from("/c"));
        assert_eq!(s.grace, Duration::from_secs(3));
        assert_eq!(s.log_file, Some("/tmp/l.log".into()));
        assert!(s.apply_yaml("").unwrap().is_empty());
        assert!(s.apply_yaml("  \n").unwrap().is_empty());
        assert!(matches!(
            s.apply_yaml("grace: soon"),
            Err(ConfigError::Yaml(_))
        ));
        assert!(matches!(
            s.apply_yaml("- a list"),
            Err(ConfigError::Yaml(_))
        ));
    }
}
