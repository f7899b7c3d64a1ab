//! `podmap check`: a node's preflight, one line per requirement with the fix for each that fails.
//! It reads what it can without changing anything (no mount, no pin, no program loaded), so it
//! can run before podmap is installed, beside a running podmapd, or after an uninstall.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use podmap_bpf::mounts;
use podmap_cgroup::{CgroupLayout, LayoutKind};
use podmap_node::NodeArgs;
use podmap_proto::status::StatusReport;

/// The NRI socket containerd (and CRI-O with NRI) listens on by default.
pub const DEFAULT_NRI_SOCKET: &str = "/var/run/nri/nri.sock";

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The runtime's NRI socket (podmap-nri's --nri-socket).
    #[arg(long, env = "PODMAP_NRI_SOCKET", default_value = DEFAULT_NRI_SOCKET)]
    pub nri_socket: PathBuf,
    /// CRI-O's socket: where it is, the OCI hook must be installed.
    #[arg(long, default_value = "/run/crio/crio.sock")]
    pub crio_socket: PathBuf,
    /// The hooks directory CRI-O reads.
    #[arg(long, default_value = "/etc/containers/oci/hooks.d")]
    pub hooks_dir: PathBuf,
}

/// How one requirement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, with a caveat (or nothing to check here).
    Note,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub what: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do, for a failure or a caveat.
    pub fix: Option<String>,
}

fn ok(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        what,
        verdict: Verdict::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn note(what: &'static str, detail: impl Into<String>, fix: Option<String>) -> Finding {
    Finding {
        what,
        verdict: Verdict::Note,
        detail: detail.into(),
        fix,
    }
}

fn fail(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        what,
        verdict: Verdict::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// The kernel's release as `(major, minor)`.
fn kernel_release() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = text.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Every finding, in the order a node is set up: kernel, filesystems, cgroups, runtimes, pins,
/// podmapd. `status` is podmapd's answer on its socket, or why there was none.
pub fn findings(args: &CheckArgs, status: Result<StatusReport, String>) -> Vec<Finding> {
    let mut v = Vec::new();
    match kernel_release() {
        Some((major, minor)) if (major, minor) >= (5, 17) => {
            v.push(ok("kernel", format!("{major}.{minor}")))
        }
        Some((major, minor)) => v.push(fail(
            "kernel",
            format!("{major}.{minor}"),
            "podmap needs Linux 5.17 or newer (ring buffers, bpf_loop)",
        )),
        None => v.push(fail(
            "kernel",
            "/proc/sys/kernel/osrelease unreadable",
            "run on Linux with /proc mounted",
        )),
    }
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        v.push(ok("BTF", "/sys/kernel/btf/vmlinux"));
    } else {
        v.push(fail(
            "BTF",
            "/sys/kernel/btf/vmlinux is missing",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every major distribution's is)",
        ));
    }
    match mounts::on_bpffs(Path::new(mounts::BPFFS_ROOT)) {
        Ok(true) => v.push(ok("bpffs", mounts::BPFFS_ROOT)),
        _ => v.push(note(
            "bpffs",
            format!("not mounted at {}", mounts::BPFFS_ROOT),
            Some(format!(
                "podmapd mounts it when it starts; or: mount -t bpf bpf {}",
                mounts::BPFFS_ROOT
            )),
        )),
    }
    if mounts::tracefs_mounted() {
        v.push(ok("tracefs", "mounted"));
    } else {
        v.push(note(
            "tracefs",
            format!("not mounted at {}", mounts::TRACEFS_ROOT),
            Some(format!(
                "podmapd mounts it when it starts; or: mount -t tracefs tracefs {}",
                mounts::TRACEFS_ROOT
            )),
        ));
    }
    match CgroupLayout::detect(&args.node.cgroup_root, &args.node.v1_controller) {
        Ok(layout) => v.push(ok(
            "cgroups",
            match layout.kind {
                LayoutKind::Unified => "cgroup v2".to_string(),
                LayoutKind::Hybrid => format!(
                    "hybrid: v2 at {}, v1 {} controller",
                    layout
                        .unified
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display(),
                    args.node.v1_controller
                ),
                LayoutKind::Legacy => format!("v1 only ({} controller)", args.node.v1_controller),
            },
        )),
        Err(e) => v.push(fail(
            "cgroups",
            e.to_string(),
            format!(
                "point --cgroup-root (PODMAP_CGROUP_ROOT) at the cgroup mount, {} by default",
                podmap_node::DEFAULT_CGROUP_ROOT
            ),
        )),
    }
    let crio = is_socket(&args.crio_socket);
    if is_socket(&args.nri_socket) {
        v.push(ok(
            "NRI",
            format!(
                "{} is a socket: the runtime has NRI enabled",
                args.nri_socket.display()
            ),
        ));
    } else if crio {
        v.push(note(
            "NRI",
            format!("no socket at {}", args.nri_socket.display()),
            Some("CRI-O without NRI: containers are mapped by the OCI hook (below)".into()),
        ));
    } else {
        v.push(fail(
            "NRI",
            format!("no socket at {}", args.nri_socket.display()),
            "enable NRI in containerd (1.7: [plugins.\"io.containerd.nri.v1.nri\"] disable = false; 2.x: on by default) and restart it, or point --nri-socket at it",
        ));
    }
    let entry = args.hooks_dir.join("podmap.json");
    if crio {
        v.push(hook_finding(&entry));
    } else if entry.exists() {
        v.push(note(
            "OCI hook",
            format!(
                "{} is installed, but no CRI-O socket at {}",
                entry.display(),
                args.crio_socket.display()
            ),
            None,
        ));
    } else {
        v.push(note("OCI hook", "not needed: no CRI-O on this node", None));
    }
    let pins = &args.node.bpffs_dir;
    if pins.join("podmap_containers").exists() {
        v.push(ok("pins", pins.display().to_string()));
    } else {
        v.push(fail(
            "pins",
            format!("no pinned maps under {}", pins.display()),
            "start podmapd or podmap-nri (whichever starts first creates them), or point --bpffs-dir at them",
        ));
    }
    match status {
        Ok(st) => {
            v.push(ok(
                "podmapd",
                format!("{} mode on node {}", st.mode, st.node),
            ));
            if st.programs.attached.is_empty() {
                v.push(fail(
                    "programs",
                    "podmapd has no program attached",
                    "see podmapd's log for the load error",
                ));
            } else {
                v.push(ok(
                    "programs",
                    format!(
                        "{} attached ({})",
                        st.programs.attached.len(),
                        st.programs.links
                    ),
                ));
            }
            // Whether podmap-nri is registered now: its health file, believed only from a
            // living podmap-nri. The shared counters only say it has run since the pins were
            // made, which is the fallback's hint.
            let nri_events = st.shared_counters.get("nri_events").copied().unwrap_or(0);
            match podmap_node::nri_health::probe(&podmap_node::nri_health::path_in(
                &args.node.state_dir,
            )) {
                Ok(ready) => v.push(ok("podmap-nri", ready)),
                Err(not_ready) if !crio => v.push(note(
                    "podmap-nri",
                    format!(
                        "{not_ready} ({nri_events} NRI events handled since the pins were made)"
                    ),
                    Some(
                        "start podmap-nri (or check its log: it says why it is not registered), \
                         or point --state-dir at its state directory"
                            .into(),
                    ),
                )),
                Err(_) => {}
            }
            match &st.pod_cache {
                Some(pc) if pc.synced => v.push(ok("pod cache", "synced")),
                Some(_) => v.push(fail(
                    "pod cache",
                    "not synced with the API server",
                    "see `podmap status` and podmapd's log (RBAC: list and watch pods)",
                )),
                None => v.push(note("pod cache", "standalone: no API server", None)),
            }
        }
        Err(why) => v.push(fail(
            "podmapd",
            why,
            "start podmapd, or point --socket (PODMAP_SOCKET) at its socket",
        )),
    }
    v
}

fn hook_finding(entry: &Path) -> Finding {
    let text = match std::fs::read_to_string(entry) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                "OCI hook",
                format!("CRI-O runs here, but {}: {e}", entry.display()),
                "podmap-oci-hook install (the DaemonSet's oci-hook container does it)",
            )
        }
    };
    let path = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["hook"]["path"].as_str().map(PathBuf::from));
    let Some(path) = path else {
        return fail(
            "OCI hook",
            format!("{} names no hook.path", entry.display()),
            "podmap-oci-hook install rewrites it",
        );
    };
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => ok(
            "OCI hook",
            format!(
                "{} runs {} (CRI-O must read this directory: hooks_dir in crio.conf)",
                entry.display(),
                path.display()
            ),
        ),
        _ => fail(
            "OCI hook",
            format!(
                "{} runs {}, which is not an executable file",
                entry.display(),
                path.display()
            ),
            "podmap-oci-hook install puts the binary back",
        ),
    }
}

/// Writes the findings, one line each (and the fix below a failure or a caveat); returns whether
/// none failed.
pub fn write(findings: &[Finding], out: &mut impl Write) -> std::io::Result<bool> {
    for f in findings {
        let mark = match f.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Note => "note",
            Verdict::Fail => "FAIL",
        };
        writeln!(out, "{mark}  {:<10}  {}", f.what, f.detail)?;
        if let Some(fix) = &f.fix {
            writeln!(out, "      {:<10}  fix: {fix}", "")?;
        }
    }
    Ok(findings.iter().all(|f| f.verdict != Verdict::Fail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        check: CheckArgs,
    }

    /// A node where nothing is set up: every failure names its fix, and nothing is changed.
    #[test]
    fn a_bare_node_fails_with_a_fix_for_each_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let cli = Cli::parse_from([
            "check",
            "--bpffs-dir",
            &p("pins"),
            "--cgroup-root",
            &p("cgroup"),
            "--nri-socket",
            &p("nri.sock"),
            "--crio-socket",
            &p("crio.sock"),
            "--hooks-dir",
            &p("hooks.d"),
        ]);
        let found = findings(
            &cli.check,
            Err("connecting: No such file or directory".into()),
        );
        let failed: Vec<&str> = found
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .map(|f| f.what)
            .collect();
        // The kernel's own lines depend on the machine running the test: only the others.
        for what in ["cgroups", "NRI", "pins", "podmapd"] {
            assert!(failed.contains(&what), "{what} passed: {found:#?}");
        }
        let known = ["cgroups", "NRI", "pins", "podmapd", "kernel", "BTF"];
        assert!(failed.iter().all(|f| known.contains(f)), "{found:#?}");
        assert!(found
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .all(|f| f.fix.as_deref().is_some_and(|x| !x.is_empty())));
        let mut out = Vec::new();
        assert!(!write(&found, &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAIL  pins") && text.contains("fix: start podmapd"),
            "{text}"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing created"
        );
    }

    /// CRI-O here: the hook must be installed, and point at an executable.
    #[test]
    fn on_a_crio_node_the_hook_entry_and_its_binary_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let _crio = std::os::unix::net::UnixListener::bind(dir.path().join("crio.sock")).unwrap();
        let hooks = dir.path().join("hooks.d");
        let cli = Cli::parse_from([
            "check",
            "--crio-socket",
            &dir.path().join("crio.sock").display().to_string(),
            "--hooks-dir",
            &hooks.display().to_string(),
        ]);
        let hook = |found: Vec<Finding>| found.into_iter().find(|f| f.what == "OCI hook").unwrap();
        let missing = hook(findings(&cli.check, Err("no".into())));
        assert_eq!(missing.verdict, Verdict::Fail, "{missing:?}");
        assert!(missing.fix.unwrap().contains("podmap-oci-hook install"));
        std::fs::create_dir_all(&hooks).unwrap();
        let binary = dir.path().join("podmap-oci-hook");
        std::fs::write(
            hooks.join("podmap.json"),
            serde_json::json!({"hook": {"path": binary}}).to_string(),
        )
        .unwrap();
        assert_eq!(
            hook(findings(&cli.check, Err("no".into()))).verdict,
            Verdict::Fail
        );
        std::fs::write(&binary, "#!/bin/true\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let installed = hook(findings(&cli.check, Err("no".into())));
        assert_eq!(installed.verdict, Verdict::Ok, "{installed:?}");
    }
}
