//! containerd's configuration for one private instance: its own root, state, sockets, NRI socket
//! and plugin dirs, CNI dirs and runc root, so instances run side by side and beside a system
//! containerd. Version 2 for containerd 1.7, version 3 (the CRI plugin split into `images` and
//! `runtime`) for 2.1, each read natively, with the same settings. Everything in them was checked
//! against containerd 1.7.24 and 2.1.9 on these hosts (Debian bookworm, no systemd, root without
//! CAP_SYS_RESOURCE); the comments say why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fetch::Series;
use super::images::PAUSE_IMAGE;

/// Where one instance keeps everything, all under its work dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub work: PathBuf,
    pub config: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub nri_socket: PathBuf,
    /// Pre-launched plugins (`NN-name` executables).
    pub nri_plugins: PathBuf,
    /// Their configuration (`NN-name.conf` or `name.conf`).
    pub nri_conf: PathBuf,
    pub cni_conf: PathBuf,
    pub cni_bin: PathBuf,
    pub runc_root: PathBuf,
    pub pod_logs: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    pub fn new(work: &Path) -> Self {
        let w = |p: &str| work.join(p);
        Layout {
            work: work.to_owned(),
            config: w("config.toml"),
            root: w("root"),
            state: w("state"),
            socket: w("containerd.sock"),
            nri_socket: w("nri/nri.sock"),
            nri_plugins: w("nri/plugins"),
            nri_conf: w("nri/conf.d"),
            cni_conf: w("cni/conf"),
            cni_bin: w("cni/bin"),
            runc_root: w("runc"),
            pod_logs: w("pods"),
            log: w("containerd.log"),
        }
    }

    pub fn dirs(&self) -> [&Path; 9] {
        [
            &self.root,
            &self.state,
            self.nri_socket.parent().expect("nri dir"),
            &self.nri_plugins,
            &self.nri_conf,
            &self.cni_conf,
            &self.cni_bin,
            &self.runc_root,
            &self.pod_logs,
        ]
    }
}

/// What varies between instances besides paths.
#[derive(Debug, Clone)]
pub struct Settings {
    pub series: Series,
    /// The runc binary containerd's shim runs (bookworm's, or the pure-cgroup2 wrapper).
    pub runc: PathBuf,
    pub nri_registration_timeout: Duration,
    pub nri_request_timeout: Duration,
}

/// A TOML basic string.
fn q(p: impl AsRef<std::ffi::OsStr>) -> String {
    let s = p.as_ref().to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

pub fn render(l: &Layout, s: &Settings) -> String {
    match s.series {
        Series::V1_7 => render_v2(l, s),
        Series::V2_1 => render_v3(l, s),
    }
}

/// The NRI section: the same keys in both versions.
fn nri(l: &Layout, s: &Settings) -> String {
    format!(
        r#"  disable = false
  disable_connections = false
  socket_path = {nri_socket}
  plugin_path = {nri_plugins}
  plugin_config_path = {nri_conf}
  plugin_registration_timeout = "{reg}"
  plugin_request_timeout = "{req}"
"#,
        nri_socket = q(&l.nri_socket),
        nri_plugins = q(&l.nri_plugins),
        nri_conf = q(&l.nri_conf),
        reg = go_duration(s.nri_registration_timeout),
        req = go_duration(s.nri_request_timeout),
    )
}

/// What both versions share, up to and including NRI (1.7 ships NRI disabled, 2.x enables it
/// by default: both set it the same); `extra_disabled` are plugins only a version has.
fn common(l: &Layout, s: &Settings, version: u32, extra_disabled: &[&str]) -> String {
    let extra: String = extra_disabled
        .iter()
        .map(|p| format!("  \"{p}\",\n"))
        .collect();
    format!(
        r#"version = {version}
root = {root}
state = {state}
# Plugins these tests never use, or that cannot work here (no btrfs, zfs, devmapper, erofs):
# skipping them keeps start-up short and avoids /opt/containerd.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.blockfile",
{extra}]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  level = "info"

[plugins."io.containerd.nri.v1.nri"]
{nri}"#,
        root = q(&l.root),
        state = q(&l.state),
        socket = q(&l.socket),
        ttrpc = q(l.socket.with_extension("sock.ttrpc")),
        nri = nri(l, s),
    )
}

/// containerd 2.1: version 3 (the CRI plugin split into `images` and `runtime`).
fn render_v3(l: &Layout, s: &Settings) -> String {
    common(
        l,
        s,
        3,
        &[
            "io.containerd.snapshotter.v1.erofs",
            "io.containerd.differ.v1.erofs",
        ],
    ) + &format!(
        r#"# The transfer service, which CRI's image and sandbox plugins need, needs a verifier plugin:
# pointed at an empty private dir, it verifies nothing and touches nothing outside the work dir.
[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = {verifiers}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # Required here: without it the sandbox fails with runc's "can't get final child's PID
  # from pipe: EOF" (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  enable_cdi = false

  # Host-network pods only: an empty CNI configuration is enough.
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{cni_bin}]
    conf_dir = {cni_conf}

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        # No systemd on these hosts: cgroupfs paths.
        SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        verifiers = q(l.work.join("image-verifiers")),
        cni_bin = q(&l.cni_bin),
        cni_conf = q(&l.cni_conf),
        runc = q(&s.runc),
        runc_root = q(&l.runc_root),
    )
}

/// containerd 1.7: version 2.
fn render_v2(l: &Layout, s: &Settings) -> String {
    common(l, s, 2, &[])
        + &format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Required here: without it the sandbox fails with runc's "can't get final child's PID
  # from pipe: EOF" (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  # Host-network pods only: an empty CNI configuration is enough.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        # No systemd on these hosts: cgroupfs paths.
        SystemdCgroup = false
"#,
            cni_bin = q(&l.cni_bin),
            cni_conf = q(&l.cni_conf),
            runc = q(&s.runc),
            runc_root = q(&l.runc_root),
        )
}
