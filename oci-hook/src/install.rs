//! `podmap-oci-hook install` and `uninstall`: the hook puts itself on a host (its binary, then
//! the hooks.d entry that makes runtimes call it) and takes itself off again, so the image needs
//! no shell and a node whose agent is gone keeps no hook. Both files are written beside their
//! target and renamed into place, so a runtime starting a container meanwhile runs the old hook
//! or the new one, never half of one. Uninstall removes the entry first: from then on no runtime
//! calls the binary, which goes next.
//!
//! With `--stay` the installer remains (as a small container of the DaemonSet's pod) and
//! uninstalls when told to stop (SIGTERM or SIGINT), so deleting podmap from a node also takes
//! its hook away.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

/// The hooks.d entry, as deploy/crio/ documents it: one source for the file a user installs by
/// hand and the one the installer writes.
pub const HOOKS_D_JSON: &str = include_str!("../../deploy/crio/hooks.d/podmap.json");
/// The entry's file name in the hooks directory.
pub const ENTRY_NAME: &str = "podmap.json";
/// The binary's file name in the binary directory.
pub const BINARY_NAME: &str = "podmap-oci-hook";

/// When to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum When {
    /// Only on a host with a CRI-O socket (on containerd hosts podmap-nri maps containers).
    Auto,
    Always,
    /// Nothing is installed (with `--stay`, anything installed before is still removed at stop).
    Never,
}

/// Where the hook goes on the host, and where this process reaches the host's root.
#[derive(Debug, Clone, clap::Args)]
pub struct HostPaths {
    /// The host's root as this process sees it (`/host` in the DaemonSet).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the binary goes, on the host.
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// The hooks directory CRI-O and podman read, on the host.
    #[arg(long, default_value = "/etc/containers/oci/hooks.d")]
    pub hooks_dir: PathBuf,
}

impl HostPaths {
    /// The binary's path on the host (what the entry names).
    fn host_binary(&self) -> PathBuf {
        self.bin_dir.join(BINARY_NAME)
    }

    /// The binary as this process reaches it.
    fn binary(&self) -> PathBuf {
        under(&self.root, &self.host_binary())
    }

    /// The entry as this process reaches it.
    fn entry(&self) -> PathBuf {
        under(&self.root, &self.hooks_dir.join(ENTRY_NAME))
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "podmap-oci-hook install",
    about = "Installs the hook binary and its hooks.d entry on the host"
)]
pub struct InstallArgs {
    #[command(flatten)]
    pub paths: HostPaths,
    /// The CRI-O socket whose presence `--when auto` looks for, on the host.
    #[arg(long, default_value = "/run/crio/crio.sock")]
    pub crio_socket: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub when: When,
    /// Sets a variable of the hook's environment in the entry (`KEY=VALUE`, repeatable): the
    /// runtime gives a hook no other environment.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,
    /// Stay until SIGTERM or SIGINT, then uninstall.
    #[arg(long)]
    pub stay: bool,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "podmap-oci-hook uninstall",
    about = "Removes the hooks.d entry, then the hook binary, from the host"
)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub paths: HostPaths,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{k:?} is not a variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the embedded hooks.d entry does not parse: {0}")]
    Entry(serde_json::Error),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// `host` (an absolute path on the host) as this process reaches it below `root`.
fn under(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// Binary and entry in place (written, or already identical).
    Done { binary: PathBuf, entry: PathBuf },
    /// `--when auto` on a host without CRI-O, or `--when never`.
    Skipped(String),
}

/// The hooks.d entry for a binary at `host_binary`, with `settings` in its environment.
pub fn entry(host_binary: &Path, settings: &[(String, String)]) -> Result<String, InstallError> {
    let mut entry: serde_json::Value =
        serde_json::from_str(HOOKS_D_JSON).map_err(InstallError::Entry)?;
    entry["hook"]["path"] = host_binary.display().to_string().into();
    let env = entry["hook"]["env"]
        .as_array_mut()
        .expect("the entry has hook.env");
    for (k, v) in settings {
        let line = serde_json::Value::from(format!("{k}={v}"));
        match env
            .iter_mut()
            .find(|e| e.as_str().is_some_and(|e| e.starts_with(&format!("{k}="))))
        {
            Some(existing) => *existing = line,
            None => env.push(line),
        }
    }
    let mut text = serde_json::to_string_pretty(&entry).map_err(InstallError::Entry)?;
    text.push('\n');
    Ok(text)
}

/// Whether the files at `a` and `b` hold the same bytes, read in chunks: the hook binary is tens
/// of megabytes with its debug info, and the installer's container has a small memory limit.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = match fa.read(&mut ba) {
            Ok(0) => return fb.read(&mut bb[..1]).is_ok_and(|m| m == 0),
            Ok(n) => n,
            Err(_) => return false,
        };
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Writes `target` through a new dot file beside it (runtimes read only `*.json` in hooks.d, and
/// a binary is only run once renamed), flushed, then renamed into place. The dot file is created
/// exclusively and never through a symlink, so nothing planted under its name is written to.
fn replace(
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), InstallError> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}.new", std::process::id()));
    replace_through(&tmp, target, mode, fill)
}

/// [`replace`] through the temporary file `tmp` (a name in the target's directory).
fn replace_through(
    tmp: &Path,
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), InstallError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .map_err(io("creating", tmp))?;
    let written = fill(&mut f)
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        return Err(io("writing", tmp)(e));
    }
    std::fs::rename(tmp, target).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        io("renaming into place", target)(e)
    })
}

/// Installs the binary at `source` (this executable) and the entry, the binary first: the entry
/// is what makes runtimes call it. Files already identical are left as they are.
pub fn install(args: &InstallArgs, source: &Path) -> Result<Installed, InstallError> {
    match args.when {
        When::Never => return Ok(Installed::Skipped("--when never".into())),
        When::Auto if !under(&args.paths.root, &args.crio_socket).exists() => {
            return Ok(Installed::Skipped(format!(
                "no CRI-O socket at {} (containerd hosts are mapped by podmap-nri)",
                args.crio_socket.display()
            )))
        }
        _ => {}
    }
    let binary_at = args.paths.binary();
    if !same_bytes(source, &binary_at) {
        let mut from = std::fs::File::open(source).map_err(io("opening", source))?;
        replace(&binary_at, 0o755, |f| std::io::copy(&mut from, f).map(drop))?;
    }
    let entry_at = args.paths.entry();
    let text = entry(&args.paths.host_binary(), &args.settings)?;
    if std::fs::read(&entry_at).ok().as_deref() != Some(text.as_bytes()) {
        replace(&entry_at, 0o644, |f| f.write_all(text.as_bytes()))?;
    }
    Ok(Installed::Done {
        binary: binary_at,
        entry: entry_at,
    })
}

/// Removes the entry, then the binary; what is already gone is fine. Returns what it removed.
pub fn uninstall(paths: &HostPaths) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    for path in [paths.entry(), paths.binary()] {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path)(e)),
        }
    }
    Ok(removed)
}

/// The uninstall of a staying installer: only a hook that is the one it installs (the binary at
/// `source`, the entry its arguments make). Should another installer have put a different binary
/// or entry there since (a newer podmap's pod, other settings, started before this one stopped),
/// both files are theirs and stay.
pub fn uninstall_if_ours(args: &InstallArgs, source: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let binary_at = args.paths.binary();
    let entry_at = args.paths.entry();
    let text = entry(&args.paths.host_binary(), &args.settings)?;
    let other_binary = binary_at.exists() && !same_bytes(source, &binary_at);
    let other_entry = std::fs::read(&entry_at).is_ok_and(|e| e != text.as_bytes());
    if other_binary || other_entry {
        return Ok(Vec::new());
    }
    uninstall(&args.paths)
}

/// SIGTERM and SIGINT, blocked so that they wait for [`StopSignals::wait`] instead of ending the
/// process before it uninstalls. Taken before installing: a stop that comes meanwhile is kept.
pub struct StopSignals(libc::sigset_t);

impl StopSignals {
    pub fn block() -> std::io::Result<StopSignals> {
        // SAFETY: sigset_t is plain data that sigemptyset initialises before any other use;
        // pthread_sigmask is given a valid pointer to it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            Ok(StopSignals(set))
        }
    }

    /// Blocks until one of them comes; returns its number.
    pub fn wait(&self) -> std::io::Result<i32> {
        let mut sig = 0;
        // SAFETY: sigwait reads the initialised set and writes one int.
        let rc = unsafe { libc::sigwait(&self.0, &mut sig) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_at_the_host_binary_and_takes_settings() {
        let text = entry(
            Path::new("/opt/podmap/podmap-oci-hook"),
            &[
                ("PODMAP_GRACE".into(), "1m".into()),
                ("PODMAP_FAIL_CLOSED_NAMESPACES".into(), "prod".into()),
            ],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["hook"]["path"], "/opt/podmap/podmap-oci-hook");
        assert_eq!(
            v["stages"],
            serde_json::json!(["createRuntime", "poststop"])
        );
        let env: Vec<&str> = v["hook"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"PODMAP_GRACE=1m"), "{env:?}");
        assert!(
            !env.contains(&"PODMAP_GRACE=30s"),
            "replaced, not added: {env:?}"
        );
        assert!(
            env.contains(&"PODMAP_FAIL_CLOSED_NAMESPACES=prod"),
            "{env:?}"
        );
        assert!(
            env.contains(&"PODMAP_BPFFS_DIR=/sys/fs/bpf/podmap"),
            "{env:?}"
        );
    }

    #[test]
    fn settings_must_be_key_value() {
        assert_eq!(parse_setting("A_1=x=y"), Ok(("A_1".into(), "x=y".into())));
        assert!(parse_setting("novalue").is_err());
        assert!(parse_setting("BAD KEY=1").is_err());
        assert!(parse_setting("=1").is_err());
    }

    /// A file holding `bytes`, standing in for this executable.
    fn source(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn install_is_atomic_idempotent_and_undone_entry_first() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let v1 = source(src.path(), "v1", b"#!/bin/true\n");
        let v2 = source(src.path(), "v2", b"#!/bin/false\n");
        let root_arg = root.path().display().to_string();
        let args = InstallArgs::parse_from(["install", "--root", &root_arg, "--when", "always"]);
        let got = install(&args, &v1).unwrap();
        let Installed::Done { binary, entry } = got else {
            panic!("{got:?}")
        };
        assert_eq!(binary, root.path().join("usr/local/bin/podmap-oci-hook"));
        assert_eq!(
            entry,
            root.path().join("etc/containers/oci/hooks.d/podmap.json")
        );
        assert_eq!(std::fs::read(&binary).unwrap(), b"#!/bin/true\n");
        let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        // The path the host's runtime runs, not the one below --root.
        assert_eq!(v["hook"]["path"], "/usr/local/bin/podmap-oci-hook");
        // Again: nothing rewritten (same inode), no temporary left.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let (b, e) = (inode(&binary), inode(&entry));
        install(&args, &v1).unwrap();
        assert_eq!((inode(&binary), inode(&entry)), (b, e));
        for dir in [binary.parent().unwrap(), entry.parent().unwrap()] {
            let names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        }
        // A new binary replaces the old one.
        install(&args, &v2).unwrap();
        assert_eq!(std::fs::read(&binary).unwrap(), b"#!/bin/false\n");

        // A staying installer of the old bytes leaves a newer installer's files alone, and so
        // does one whose settings are not those of the entry in place.
        assert!(uninstall_if_ours(&args, &v1).unwrap().is_empty());
        let mut other = args.clone();
        other.settings.push(("PODMAP_GRACE".into(), "1m".into()));
        assert!(uninstall_if_ours(&other, &v2).unwrap().is_empty());
        assert!(entry.exists() && binary.exists());
        let removed = uninstall_if_ours(&args, &v2).unwrap();
        assert_eq!(removed, [entry.clone(), binary.clone()], "the entry first");
        assert!(uninstall(&args.paths).unwrap().is_empty());
    }

    /// A symlink planted where the temporary file goes is never written through: the temporary
    /// is created new, without following links.
    #[test]
    fn a_link_planted_beside_the_target_is_never_written_through() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = root.path().join("elsewhere");
        std::fs::write(&elsewhere, b"keep").unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        // A link at the very name the temporary gets: the write fails instead of following it,
        // and neither the link's target nor the target file is touched.
        let planted = dir.join(".x.json.1.1.new");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        let target = dir.join("x.json");
        assert!(replace_through(&planted, &target, 0o644, |f| f.write_all(b"new")).is_err());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
        assert!(!target.exists());
        // Through a name of its own it writes.
        replace(&target, 0o644, |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"keep");
    }

    #[test]
    fn same_bytes_compares_whole_files_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let a = source(dir.path(), "a", &big);
        let b = source(dir.path(), "b", &big);
        assert!(same_bytes(&a, &b));
        let mut changed = big.clone();
        changed[150_000] ^= 1;
        let c = source(dir.path(), "c", &changed);
        assert!(!same_bytes(&a, &c));
        assert!(!same_bytes(&a, &dir.path().join("missing")));
        let short = source(dir.path(), "d", &big[..100]);
        assert!(!same_bytes(&a, &short));
    }

    #[test]
    fn auto_installs_only_where_crio_runs() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let x = source(src.path(), "x", b"x");
        let root_arg = root.path().display().to_string();
        let args = InstallArgs::parse_from(["install", "--root", &root_arg]);
        assert!(matches!(install(&args, &x).unwrap(), Installed::Skipped(_)));
        assert!(!root.path().join("etc").exists() && !root.path().join("usr").exists());
        std::fs::create_dir_all(root.path().join("run/crio")).unwrap();
        let _crio =
            std::os::unix::net::UnixListener::bind(root.path().join("run/crio/crio.sock")).unwrap();
        assert!(matches!(
            install(&args, &x).unwrap(),
            Installed::Done { .. }
        ));
        let never = InstallArgs {
            when: When::Never,
            ..args
        };
        assert!(matches!(
            install(&never, &x).unwrap(),
            Installed::Skipped(_)
        ));
    }
}
