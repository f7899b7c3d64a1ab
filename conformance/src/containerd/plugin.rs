//! podmap-nri beside a private containerd: started as an external plugin on the instance's NRI
//! socket (inside containerd's mount namespace when that one is pure cgroup2), pointed at a
//! test's pins and its own state dir, and stopped, hung (SIGSTOP), resumed or killed on demand.
//! Also the configuration a pre-launched copy receives through Configure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{teardown, Containerd, Prelaunched};

pub const PLUGIN_NAME: &str = "podmap";
pub const PLUGIN_IDX: &str = "10";

/// Where one plugin keeps its state: survives restarts of the plugin within a test, as a
/// node's /var/lib/podmap survives restarts of podmap-nri.
pub struct PluginSetup {
    pub pins: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// Seconds a removed container's record stays (`--grace`); None keeps the plugin's default.
    pub grace: Option<u64>,
    /// The policy directory shared with podmapd (`--policy-dir`).
    pub policies: PathBuf,
    /// The only capabilities the plugin runs with (names as in a container's securityContext:
    /// `BPF`); None keeps root's. How the DaemonSet's list is checked against the binary.
    pub capabilities: Option<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl PluginSetup {
    pub fn new(pins: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("podmap-nri-")
            .tempdir()
            .context("plugin dir")?;
        Ok(PluginSetup {
            pins: pins.to_owned(),
            state: dir.path().join("state"),
            log: dir.path().join("nri.log"),
            grace: None,
            policies: dir.path().join("policies"),
            capabilities: None,
            _dir: dir,
        })
    }

    /// The binary under test.
    pub fn binary() -> PathBuf {
        crate::bins::path("podmap-nri")
    }

    /// The plugin's log (its `--log-file` and its stdout and stderr), for failure messages.
    pub fn log_text(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default());
        s
    }

    /// The pre-launched layout: a copy of the binary as `plugin_path/10-podmap` and a
    /// `podmap.conf` holding the same settings as YAML (containerd replaces a pre-launched
    /// plugin's environment, so the config is its only source).
    pub fn prelaunched(&self, cgroup_root: &str) -> Prelaunched {
        let mut config = format!(
            "bpffs-dir: {}\nstate-dir: {}\ncgroup-root: {cgroup_root}\nlog-file: {}\n",
            yaml_str(&self.pins),
            yaml_str(&self.state),
            yaml_str(&self.log),
        );
        if let Some(g) = self.grace {
            config.push_str(&format!("grace: {g}\n"));
        }
        config.push_str(&format!("policy-dir: {}\n", yaml_str(&self.policies)));
        Prelaunched {
            binary: Self::binary(),
            name: PLUGIN_NAME.to_string(),
            idx: PLUGIN_IDX.to_string(),
            config,
        }
    }
}

fn yaml_str(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "''"))
}

/// A running external podmap-nri. Dropping it kills it (resuming it first if hung).
pub struct NriPlugin {
    child: Child,
}

impl NriPlugin {
    /// Starts podmap-nri on `ctrd`'s NRI socket. Returns once the process runs; use
    /// [`NriPlugin::start_registered`] to also wait for containerd to accept it.
    pub fn start(ctrd: &Containerd, setup: &PluginSetup) -> Result<NriPlugin> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(setup.log.with_extension("out"))?;
        let mut cmd = match &setup.capabilities {
            None => ctrd.command_beside(&PluginSetup::binary()),
            Some(caps) => {
                // Root keeps exactly the bounding set across exec: what a container with
                // `drop: [ALL]` and `add: caps` gets.
                let mut c = ctrd.command_beside(Path::new("setpriv"));
                let keep: String = caps
                    .iter()
                    .map(|c| format!(",+{}", c.to_ascii_lowercase()))
                    .collect();
                c.arg(format!("--bounding-set=-all{keep}"))
                    .arg("--inh-caps=-all")
                    .arg("--")
                    .arg(PluginSetup::binary());
                c
            }
        };
        cmd.arg("--nri-socket")
            .arg(&ctrd.layout.nri_socket)
            .args(["--plugin-name", PLUGIN_NAME, "--plugin-idx", PLUGIN_IDX])
            .arg("--bpffs-dir")
            .arg(&setup.pins)
            .arg("--state-dir")
            .arg(&setup.state)
            .args(["--cgroup-root", "/sys/fs/cgroup"])
            .arg("--log-file")
            .arg(&setup.log)
            .arg("--policy-dir")
            .arg(&setup.policies);
        if let Some(g) = setup.grace {
            cmd.arg("--grace").arg(g.to_string());
        }
        cmd.env("PODMAP_LOG", "debug")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd.spawn().context("starting podmap-nri")?;
        Ok(NriPlugin { child })
    }

    /// Starts the plugin and waits until containerd has registered (and, for an external
    /// plugin, synchronized) it.
    pub fn start_registered(ctrd: &Containerd, setup: &PluginSetup) -> Result<NriPlugin> {
        let from = ctrd.log_len();
        let mut p = Self::start(ctrd, setup)?;
        p.wait_registered(ctrd, from, setup)?;
        Ok(p)
    }

    /// Waits for containerd's log line that says the plugin is in (written after `from`).
    pub fn wait_registered(
        &mut self,
        ctrd: &Containerd,
        from: u64,
        setup: &PluginSetup,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "podmap-nri exited ({status}) before registering; its log:\n{}",
                    setup.log_text()
                );
            }
            if let Some(line) = registration_line(ctrd, from) {
                eprintln!("podmap-nri registered: {line}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not register podmap-nri within 30 s; plugin log:\n{}\n\
                     containerd log:\n{}",
                    setup.log_text(),
                    ctrd.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Hangs the plugin: it keeps its connection but answers nothing.
    pub fn hang(&self) {
        teardown::signal(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        teardown::signal(self.pid(), libc::SIGCONT);
    }

    /// A crash: the process dies at once, mid-call or not.
    pub fn crash(&mut self) {
        teardown::signal(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// A clean stop (SIGTERM), killed if it does not exit within 10 s.
    pub fn stop(&mut self) {
        // A hung (stopped) plugin must run to see the SIGTERM.
        teardown::signal(self.pid(), libc::SIGCONT);
        teardown::terminate(&mut self.child, Duration::from_secs(10));
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NriPlugin {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `podmap-nri --probe` says about the plugin of `setup` (the DaemonSet's readiness probe):
/// whether it exited 0, and its line.
pub fn probe(setup: &PluginSetup) -> Result<(bool, String)> {
    let out = Command::new(PluginSetup::binary())
        .arg("--probe")
        .arg("--bpffs-dir")
        .arg(&setup.pins)
        .arg("--state-dir")
        .arg(&setup.state)
        .args(["--cgroup-root", "/sys/fs/cgroup"])
        .output()
        .context("running podmap-nri --probe")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// containerd's log line, written after `from`, that says the podmap plugin registered.
pub fn registration_line(ctrd: &Containerd, from: u64) -> Option<String> {
    ctrd.log_line_after(from, &[REGISTERED, PLUGIN_NAME])
}

/// containerd's log message when a plugin has registered (NRI's adaptation, v0.6 to v0.8).
pub const REGISTERED: &str = "registered as";
