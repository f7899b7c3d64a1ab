//! A real containerd with NRI (1.7 or 2.1, [`Series`]), private to one test: fetched from Debian
//! into a cached prefix ([`fetch`]), configured with its own root, state, sockets, NRI socket and plugin dirs
//! and runc root ([`config`]), fed locally built images ([`images`]), driven through CRI as
//! kubelet drives it ([`cri`]), with podmap-nri beside it ([`plugin`]), and torn down with
//! everything it left ([`teardown`]) even when the test fails.
//!
//! Pods live under a cgroup parent unique to the instance, `/podmap-test-<pid>-<n>/pod<uid>`, so
//! instances run in parallel and their leftovers are found and removed.
//!
//! Pure cgroup v2: containerd runs inside `unshare -m --propagation private` after mounting
//! cgroup2 at /sys/fs/cgroup, with runc wrapped by `podmap-test-runc` (v2 here has no cpu,
//! memory or pids controller, so resource limits are dropped; paths and membership stay real).

pub mod config;
pub mod cri;
pub mod events;
pub mod fetch;
pub mod images;
pub mod interrupt;
pub mod node;
pub mod plugin;
pub mod teardown;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use podmap_bpf::testing::unique_name;

pub use cri::{ContainerSpec, Cri, PodSpec};
pub use fetch::Series;
pub use node::{Node, NodeOptions, PluginMode};
pub use plugin::{NriPlugin, PluginSetup};

/// How long containerd may take to answer CRI after start (2 s here once cached).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A pre-launched NRI plugin: containerd starts `plugin_path/<idx>-<name>` itself at start-up
/// and hands it the socket as fd 3; its settings arrive in Configure from `<name>.conf`.
#[derive(Debug, Clone)]
pub struct Prelaunched {
    pub binary: PathBuf,
    pub name: String,
    pub idx: String,
    /// The content of `plugin_config_path/<name>.conf`.
    pub config: String,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Which containerd.
    pub series: Series,
    /// Run in a private mount namespace with cgroup2 mounted at /sys/fs/cgroup.
    pub pure_cgroup2: bool,
    /// NRI's per-call deadline (containerd's default: 2 s).
    pub nri_request_timeout: Duration,
    /// NRI's registration deadline (containerd's default: 5 s).
    pub nri_registration_timeout: Duration,
    pub prelaunched: Option<Prelaunched>,
    /// The cgroup every pod lives under (`/name`, default a unique `/podmap-test-...`): known
    /// before the start when podmapd must name it as a pod parent (docs/decisions.md #29).
    pub cgroup_base: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            series: Series::default(),
            pure_cgroup2: false,
            nri_request_timeout: Duration::from_secs(2),
            nri_registration_timeout: Duration::from_secs(5),
            prelaunched: None,
            cgroup_base: None,
        }
    }
}

/// One running containerd. Dropping it removes its pods, stops it, kills its shims, unmounts
/// and removes its directories and cgroups.
pub struct Containerd {
    pub layout: config::Layout,
    pub options: Options,
    /// The cgroup every pod of this instance lives under (relative to each hierarchy root,
    /// leading slash).
    pub cgroup_base: String,
    pub prefix: PathBuf,
    cri: Cri,
    child: Child,
    _work: tempfile::TempDir,
}

impl Containerd {
    pub fn start(options: Options) -> Result<Containerd> {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(teardown::sweep_stale_instances);
        let prefix = fetch::prefix(options.series)?;
        let work = tempfile::Builder::new()
            .prefix(teardown::WORK_PREFIX)
            .tempdir()
            .context("work dir")?;
        let layout = config::Layout::new(work.path());
        for d in layout.dirs() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let runc = if options.pure_cgroup2 {
            crate::bins::path("podmap-test-runc")
        } else {
            PathBuf::from("/usr/sbin/runc")
        };
        let settings = config::Settings {
            series: options.series,
            runc,
            nri_registration_timeout: options.nri_registration_timeout,
            nri_request_timeout: options.nri_request_timeout,
        };
        std::fs::write(&layout.config, config::render(&layout, &settings))?;
        if let Some(p) = &options.prelaunched {
            install_prelaunched(&layout, p)?;
        }

        let bin = fetch::bin_dir(&prefix);
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let containerd = bin.join("containerd");
        let mut cmd = crate::oci::Cgroups::pure_or_host(options.pure_cgroup2).command(&containerd);
        let log = std::fs::File::create(&layout.log)?;
        cmd.arg("--config")
            .arg(&layout.config)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a test's Ctrl-C or terminal signal does not reach it.
            .process_group(0);
        // Everything that can fail comes before the spawn or after `c` owns the child (whose
        // drop tears the instance down).
        let cri = Cri::connect(&layout.socket)?;
        let cgroup_base = options
            .cgroup_base
            .clone()
            .unwrap_or_else(|| format!("/{}", unique_name("podmap-test")));
        teardown::write_owner(&layout.work, &cgroup_base)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", containerd.display()))?;
        let mut c = Containerd {
            cgroup_base,
            layout,
            options,
            prefix,
            cri,
            child,
            _work: work,
        };
        c.wait_ready()?;
        let tar = c.layout.work.join("images.tar");
        images::write_layout(&tar)?;
        images::import(&bin.join("ctr"), &c.layout.socket, &tar, "overlayfs")?;
        c.wait_images()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("containerd exited ({status}); log:\n{}", self.log_text());
            }
            match self.cri.version() {
                // A test named for a series runs that series, or fails saying which it got.
                Ok(v)
                    if !v
                        .runtime_version
                        .starts_with(&format!("{}.", self.options.series)) =>
                {
                    bail!(
                        "asked for containerd {}, {} answers as {} {}",
                        self.options.series,
                        self.prefix.display(),
                        v.runtime_name,
                        v.runtime_version
                    )
                }
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "containerd did not answer CRI: {e:#}; log:\n{}",
                        self.log_text()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// CRI learns of imported images through containerd's events: wait until it knows both.
    fn wait_images(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let missing: Vec<&str> = [images::PAUSE_IMAGE, images::TEST_IMAGE]
                .into_iter()
                .filter(|i| !self.cri.image_present(i).unwrap_or(false))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRI does not list the imported images {missing:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// containerd's pid (also the pid of its mount namespace in pure cgroup2 mode).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.layout.log).unwrap_or_default()
    }

    /// The log's current length: pass it to [`Containerd::wait_log`] to look only at what
    /// comes after.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.layout.log).map_or(0, |m| m.len())
    }

    /// The first log line written after `from` that contains every one of `needles`.
    pub fn log_line_after(&self, from: u64, needles: &[&str]) -> Option<String> {
        let mut f = std::fs::File::open(&self.layout.log).ok()?;
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut s = String::new();
        f.read_to_string(&mut s).ok()?;
        s.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
    }

    /// Waits until a line written after `from` contains every one of `needles`.
    pub fn wait_log(&self, from: u64, needles: &[&str], timeout: Duration) -> Result<String> {
        let deadline = crate::deadline::after(timeout);
        loop {
            if let Some(l) = self.log_line_after(from, needles) {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!(
                    "no containerd log line with {needles:?} within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A command that runs in containerd's mount namespace (where a pure-cgroup2 instance
    /// sees cgroup2 at /sys/fs/cgroup), as a plugin beside it should.
    pub fn command_beside(&self, program: &Path) -> Command {
        if self.options.pure_cgroup2 {
            let mut c = Command::new("nsenter");
            c.arg(format!("--mount=/proc/{}/ns/mnt", self.pid()))
                .arg("--")
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Starts a pod sandbox for `spec` under this instance's cgroup parent.
    pub fn run_pod(&self, spec: PodSpec) -> Result<Pod<'_>> {
        let cgroup_parent = format!("{}/pod{}", self.cgroup_base, spec.uid);
        let log_dir = self.layout.pod_logs.join(&spec.uid);
        std::fs::create_dir_all(&log_dir)?;
        let config = spec.sandbox_config(&cgroup_parent, &log_dir);
        let id = self
            .cri
            .run_pod_sandbox(&config)
            .with_context(|| format!("pod {}", spec.name))?;
        Ok(Pod {
            ctrd: self,
            id,
            spec,
            config,
            cgroup_parent,
            log_dir,
        })
    }

    fn teardown(&mut self) {
        // Pods first, while containerd can still stop them cleanly (bounded: a wedged
        // instance falls through to the kills below).
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Ok(pods) = self.cri.list_pod_sandboxes() {
                for p in pods {
                    let _ = self.cri.stop_pod_sandbox(&p);
                    let _ = self.cri.remove_pod_sandbox(&p);
                }
            }
        }
        let shim_sockets = teardown::shim_sockets(&self.layout.state);
        teardown::terminate(&mut self.child, Duration::from_secs(10));
        // Shims are started with `-address <our socket>`; pre-launched plugins run from our
        // plugin dir. Both outlive containerd.
        let socket = self.layout.socket.to_string_lossy().into_owned();
        for pid in teardown::pids_with_arg(&socket)
            .into_iter()
            .chain(teardown::pids_with_exe_under(&self.layout.nri_plugins))
        {
            teardown::signal(pid, libc::SIGKILL);
        }
        let left = teardown::remove_cgroup_tree(&self.cgroup_base);
        if !left.is_empty() {
            eprintln!("containerd teardown: cgroups left behind: {left:?}");
        }
        teardown::unmount_under(&self.layout.work);
        for s in shim_sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn install_prelaunched(layout: &config::Layout, p: &Prelaunched) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dest = layout.nri_plugins.join(format!("{}-{}", p.idx, p.name));
    std::fs::copy(&p.binary, &dest)
        .with_context(|| format!("copying {} to {}", p.binary.display(), dest.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(layout.nri_conf.join(format!("{}.conf", p.name)), &p.config)?;
    Ok(())
}

/// A running pod sandbox; stopped and removed on drop, with its pod-level cgroups.
pub struct Pod<'a> {
    ctrd: &'a Containerd,
    pub id: String,
    pub spec: PodSpec,
    pub config: k8s_cri::v1::PodSandboxConfig,
    /// `<instance base>/pod<uid>`.
    pub cgroup_parent: String,
    pub log_dir: PathBuf,
}

impl Pod<'_> {
    pub fn create(&self, spec: &ContainerSpec) -> Result<String> {
        self.ctrd
            .cri
            .create_container(&self.id, &spec.config(), &self.config)
            .with_context(|| format!("container {} of pod {}", spec.name, self.spec.name))
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.ctrd.cri.start_container(id)
    }

    /// CreateContainer then StartContainer, as kubelet does.
    pub fn run(&self, spec: &ContainerSpec) -> Result<String> {
        let id = self.create(spec)?;
        self.start(&id)
            .with_context(|| format!("starting {} ({id})", spec.name))?;
        Ok(id)
    }

    /// Waits until the container exited; returns its exit code.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<i32> {
        let deadline = crate::deadline::after(timeout);
        loop {
            let s = self.ctrd.cri.container_status(id)?;
            if s.state == k8s_cri::v1::ContainerState::ContainerExited {
                return Ok(s.exit_code);
            }
            if Instant::now() > deadline {
                bail!("container {id} still {:?} after {timeout:?}", s.state);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// StopContainer with `timeout_s` for TERM (0: SIGKILL at once), then RemoveContainer.
    pub fn stop_and_remove(&self, id: &str, timeout_s: i64) -> Result<()> {
        self.ctrd.cri.stop_container(id, timeout_s)?;
        self.ctrd.cri.remove_container(id)
    }

    /// Waits until a [`ContainerSpec::shell_then_wait`] container reached its final wait: its
    /// cgroup holds the shell and its `sleep`, so the TERM trap is set.
    pub fn wait_settled(&self, id: &str, timeout: Duration) -> Result<()> {
        let procs = crate::daemon::cgroup2_mount()
            .join(self.cgroup_of(id).trim_start_matches('/'))
            .join("cgroup.procs");
        let deadline = crate::deadline::after(timeout);
        loop {
            let n = std::fs::read_to_string(&procs)
                .map(|s| s.lines().count())
                .unwrap_or(0);
            if n >= 2 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("container {id} did not reach its wait within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A container's cgroup path relative to the hierarchy roots (cgroupfs notation).
    pub fn cgroup_of(&self, container_id: &str) -> String {
        format!("{}/{container_id}", self.cgroup_parent)
    }

    /// The cgroup v2 id of a container (or of the sandbox, by its id), from the host's view.
    pub fn cgroup_id(&self, container_id: &str) -> Result<u64> {
        cgroup2_id(&self.cgroup_of(container_id))
    }

    /// The container's log as CRI wrote it (for failure messages).
    pub fn container_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let _ = self.ctrd.cri.stop_pod_sandbox(&self.id);
        let _ = self.ctrd.cri.remove_pod_sandbox(&self.id);
        teardown::remove_cgroup_tree(&self.cgroup_parent);
    }
}

/// The id of a cgroup in the cgroup2 hierarchy (the inode of its directory).
pub fn cgroup2_id(rel: &str) -> Result<u64> {
    let p = crate::daemon::cgroup2_mount().join(rel.trim_start_matches('/'));
    std::fs::metadata(&p)
        .map(|m| m.ino())
        .map_err(|e| anyhow!("cgroup {}: {e}", p.display()))
}
