//! A whole node in miniature: podmapd on private pins, a private containerd, and podmap-nri
//! writing into podmapd's pins (external, pre-launched, or not yet started). Dropping it stops
//! the plugin first (a hung plugin would slow containerd's teardown), then containerd with its
//! pods, then podmapd.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use podmap_bpf::SharedMaps;
use podmap_cgroup::CgroupKey;

use super::plugin::{NriPlugin, PluginSetup};
use super::{Containerd, Options, Series};
use crate::daemon::{Daemon, DaemonOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginMode {
    /// No plugin yet: start one with [`Node::start_plugin`].
    Later,
    /// An external plugin on containerd's NRI socket, registered before `start` returns.
    External,
    /// A copy in containerd's plugin_path, launched by containerd itself.
    Prelaunched,
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub series: Series,
    pub pure_cgroup2: bool,
    pub plugin: PluginMode,
    pub nri_request_timeout: Duration,
    /// Extra environment of podmapd, e.g. a PODMAP_KUBECONFIG.
    pub daemon_env: Vec<(String, String)>,
    /// podmapd's socket (default: one in its private temporary directory).
    pub daemon_socket: Option<PathBuf>,
    /// The only capabilities podmap-nri keeps ([`PluginSetup::capabilities`]).
    pub plugin_capabilities: Option<Vec<String>>,
}

impl NodeOptions {
    pub fn new(pure_cgroup2: bool, plugin: PluginMode) -> Self {
        NodeOptions {
            series: Series::default(),
            pure_cgroup2,
            plugin,
            nri_request_timeout: Options::default().nri_request_timeout,
            daemon_env: Vec::new(),
            daemon_socket: None,
            plugin_capabilities: None,
        }
    }

    pub fn series(mut self, series: Series) -> Self {
        self.series = series;
        self
    }

    pub fn daemon_env(mut self, key: &str, value: &str) -> Self {
        self.daemon_env.push((key.to_string(), value.to_string()));
        self
    }
}

/// Tests that start, stop or hang the plugin while pods (which borrow `ctrd`) are alive set
/// `plugin` directly: `node.plugin = Some(NriPlugin::start_registered(&node.ctrd, &node.setup)?)`.
pub struct Node {
    pub plugin: Option<NriPlugin>,
    pub ctrd: Containerd,
    pub daemon: Daemon,
    pub setup: PluginSetup,
}

impl Node {
    pub fn start(opts: NodeOptions) -> Result<Node> {
        // The plugin's dirs first: podmapd and the plugin share one policy directory. The pins
        // are podmapd's, set once it made them.
        let mut setup = PluginSetup::new(Path::new(""))?;
        setup.capabilities = opts.plugin_capabilities.clone();
        std::fs::create_dir_all(&setup.policies).context("policy dir")?;
        // The instance's pods live below this cgroup, as a cluster's below /kubepods: podmapd
        // takes it as a pod parent, so events that beat their mapping are held, not the host's
        // (docs/decisions.md #29).
        let cgroup_base = format!("/{}", podmap_bpf::testing::unique_name("podmap-test"));
        let daemon = Daemon::start_with(DaemonOptions {
            pure_cgroup2: opts.pure_cgroup2,
            env: [
                (
                    "PODMAP_POLICY_DIR".to_string(),
                    setup.policies.display().to_string(),
                ),
                ("PODMAP_POD_PARENTS".to_string(), cgroup_base.clone()),
            ]
            .into_iter()
            .chain(opts.daemon_env.iter().cloned())
            .collect(),
            socket: opts.daemon_socket.clone(),
            ..Default::default()
        });
        setup.pins = daemon.pins.path.clone();
        let from_start = 0;
        let ctrd = Containerd::start(Options {
            series: opts.series,
            pure_cgroup2: opts.pure_cgroup2,
            nri_request_timeout: opts.nri_request_timeout,
            prelaunched: (opts.plugin == PluginMode::Prelaunched)
                .then(|| setup.prelaunched("/sys/fs/cgroup")),
            cgroup_base: Some(cgroup_base),
            ..Default::default()
        })?;
        let mut node = Node {
            plugin: None,
            ctrd,
            daemon,
            setup,
        };
        match opts.plugin {
            PluginMode::Later => {}
            PluginMode::External => {
                node.plugin = Some(NriPlugin::start_registered(&node.ctrd, &node.setup)?);
            }
            PluginMode::Prelaunched => {
                // containerd waits for pre-launched plugins to register before it serves.
                if super::plugin::registration_line(&node.ctrd, from_start).is_none() {
                    bail!(
                        "the pre-launched plugin did not register; plugin log:\n{}\ncontainerd log:\n{}",
                        node.setup.log_text(),
                        node.ctrd.log_text()
                    );
                }
            }
        }
        Ok(node)
    }

    pub fn maps(&self) -> Result<SharedMaps> {
        Ok(SharedMaps::open(&self.daemon.pins.path)?)
    }

    /// Waits until the cgroup v2 id is mapped in the shared maps.
    pub fn wait_mapped(&self, cgroup_id: u64, timeout: Duration) -> Result<()> {
        let maps = self.maps()?;
        let deadline = crate::deadline::after(timeout);
        loop {
            if maps.records.get(CgroupKey::v2(cgroup_id))?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "cgroup {cgroup_id} not mapped within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The plugin's and containerd's logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let ctrd = self.ctrd.log_text();
        // Plugin loading at start-up is noise here.
        let tail: Vec<&str> = ctrd
            .lines()
            .filter(|l| !l.contains("loading plugin"))
            .rev()
            .take(60)
            .collect();
        format!(
            "--- podmap-nri log:\n{}\n--- containerd log (last 60 lines):\n{}",
            self.setup.log_text(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}
