//! `podmap check` on this node beside a running podmapd (private pins and socket), with an NRI
//! socket standing in for the runtime's: everything passes, and each line says what it found.

use std::process::Command;

use podmap_conformance::daemon::Daemon;

#[test]
fn a_node_with_podmapd_running_passes_every_check() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let tmp = tempfile::tempdir().unwrap();
    let nri = tmp.path().join("nri.sock");
    let _runtime = std::os::unix::net::UnixListener::bind(&nri).unwrap();
    // The node as podmap check sees it: this podmapd, the stand-in NRI socket, no CRI-O, and
    // the state directory where podmap-nri would keep its health file.
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_podmap"))
            .arg("check")
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--bpffs-dir")
            .arg(&daemon.pins.path)
            .arg("--nri-socket")
            .arg(&nri)
            .arg("--crio-socket")
            .arg(tmp.path().join("no-crio.sock"))
            .arg("--state-dir")
            .arg(tmp.path())
            .output()
            .unwrap()
    };
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No podmap-nri here: a note, not a failure (its file is absent).
    assert!(
        text.lines()
            .any(|l| l.starts_with("note  podmap-nri") && l.contains("not ready")),
        "{text}"
    );
    for line in [
        "ok    kernel",
        "ok    BTF",
        "ok    cgroups",
        "ok    NRI",
        "ok    pins",
        "ok    podmapd",
        "ok    programs",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");

    // A file left by a podmap-nri that died (a pid no process has) still claims registration:
    // not believed.
    let stale = podmap_node::nri_health::Health {
        pid: u32::MAX - 1,
        registered: true,
        runtime: "containerd".into(),
        ..Default::default()
    };
    podmap_node::nri_health::write(&podmap_node::nri_health::path_in(tmp.path()), &stale).unwrap();
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("note  podmap-nri") && l.contains("is gone")),
        "{text}"
    );

    // podmapd gone: that line fails with its fix, and the exit status says so.
    drop(daemon);
    let out = Command::new(env!("CARGO_BIN_EXE_podmap"))
        .args(["check", "--socket"])
        .arg(tmp.path().join("gone.sock"))
        .arg("--nri-socket")
        .arg(&nri)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL  podmapd") && text.contains("fix: start podmapd"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("check(s) failed"));
}
