//! `podmap-oci-hook install` and `uninstall` as the DaemonSet runs them (the built binary, a
//! temporary directory standing in for the host's root): it installs its own bytes and the
//! hooks.d entry, stays, and takes both away when the pod is stopped (SIGTERM).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_podmap-oci-hook");

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_staying_installer_puts_the_hook_on_the_host_and_takes_it_away_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().display().to_string();
    let entry = root.path().join("etc/containers/oci/hooks.d/podmap.json");
    let binary = root.path().join("usr/local/bin/podmap-oci-hook");
    let child = Command::new(BIN)
        .args(["install", "--root", &root_arg, "--when", "always", "--stay"])
        .args(["--set", "PODMAP_FAIL_CLOSED_NAMESPACES=prod"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the entry is installed", || entry.exists());
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(BIN).unwrap(),
        "its own bytes"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
    assert_eq!(v["hook"]["path"], "/usr/local/bin/podmap-oci-hook");
    assert!(v["hook"]["env"]
        .as_array()
        .unwrap()
        .contains(&"PODMAP_FAIL_CLOSED_NAMESPACES=prod".into()));
    // The installed binary is a working hook: a run with nothing on stdin exits 0.
    let run = Command::new(&binary)
        .args([
            "--log-file",
            &root.path().join("hook.log").display().to_string(),
        ])
        .args([
            "--bpffs-dir",
            &root.path().join("pins").display().to_string(),
        ])
        .args([
            "--state-dir",
            &root.path().join("state").display().to_string(),
        ])
        .arg("auto")
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(run.success(), "{run:?}");

    // SAFETY: kill(2) on the child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("installed") && said.contains("removed"),
        "{said}"
    );
    assert!(!entry.exists() && !binary.exists(), "{said}");
}

/// A staying installer that skipped (no CRI-O here) leaves a hook installed by hand alone at stop,
/// even one with its own bytes.
#[test]
fn a_staying_installer_that_installed_nothing_removes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().display().to_string();
    let out = Command::new(BIN)
        .args(["install", "--root", &root_arg, "--when", "always"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let entry = root.path().join("etc/containers/oci/hooks.d/podmap.json");
    let mut child = Command::new(BIN)
        .args(["install", "--root", &root_arg, "--when", "never", "--stay"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line comes after it blocked the stop signals.
    let mut said = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut said, &mut line).unwrap();
    assert!(line.contains("not installed"), "{line}");
    // SAFETY: kill(2) on the child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    std::io::BufRead::read_line(&mut said, &mut line).unwrap();
    assert!(status.success(), "{status:?}: {line}");
    assert!(line.contains("nothing of mine"), "{line}");
    assert!(entry.exists(), "{line}");
}

#[test]
fn uninstall_and_bad_arguments_say_what_happened() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().display().to_string();
    let out = Command::new(BIN)
        .args(["uninstall", "--root", &root_arg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not installed"));
    let out = Command::new(BIN)
        .args(["install", "--root", &root_arg, "--set", "no-equals"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"),
        "{out:?}"
    );
    assert!(!Path::new(&root.path().join("usr")).exists());
}

/// The DaemonSet's `oci-hook` container as the manifest runs it: its own arguments (the host's
/// root moved to a temporary directory), as root with exactly the capabilities it is given (none),
/// on a host with a CRI-O socket; it installs, and uninstalls when the pod is stopped.
#[test]
fn the_daemonsets_installer_works_with_its_own_arguments_and_no_capability() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    if !status.lines().any(|l| l.starts_with("Uid:\t0\t")) {
        eprintln!("skipped: needs root (setpriv changes the bounding set)");
        return;
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/daemonset.yaml"
    );
    let ds: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "oci-hook")
        .expect("an oci-hook container")
        .clone();
    assert_eq!(
        c["command"],
        serde_json::json!(["/usr/local/bin/podmap-oci-hook"])
    );
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    let keep: String = caps["add"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!(",+{}", c.as_str().unwrap().to_ascii_lowercase()))
        .collect();

    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("run/crio")).unwrap();
    let _crio =
        std::os::unix::net::UnixListener::bind(root.path().join("run/crio/crio.sock")).unwrap();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.strip_prefix("--root=") {
                Some(_) => format!("--root={}", root.path().display()),
                None => a.to_string(),
            }
        })
        .collect();
    let child = Command::new("setpriv")
        .arg(format!("--bounding-set=-all{keep}"))
        .args(["--inh-caps=-all", "--"])
        .arg(BIN)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let entry = root.path().join("etc/containers/oci/hooks.d/podmap.json");
    let binary = root.path().join("usr/local/bin/podmap-oci-hook");
    wait_for("the manifest's installer installed", || {
        entry.exists() && binary.exists()
    });
    // SAFETY: kill(2) on the child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!entry.exists() && !binary.exists(), "{out:?}");
}
