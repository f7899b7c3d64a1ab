//! podmapd loads its programs in a process of its own (docs/decisions.md #39): the kernel's BTF,
//! which aya parses to load them (more than 10 MiB), never counts in podmapd's memory, and what
//! the loader fails on still fails podmapd's start with the loader's error, word for word.

use std::process::{Command, Stdio};
use std::time::Duration;

use aya::maps::MapData;
use podmap_bpf::testing::PinDir;
use podmap_conformance::daemon::{Daemon, DaemonOptions};

/// A field of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in\n{text}"))
}

/// Memory, not time: what podmapd's start allocated at its peak. The binary's own pages (a debug
/// build maps some 20 MiB of them) are file-backed and are taken out; they are only ever added
/// to, so the peak minus what is mapped now is at most the peak of everything else.
#[test]
fn podmapd_never_holds_the_kernel_btf() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let pid = daemon.child.id();
    let hwm = status_kib(pid, "VmHWM");
    let file = status_kib(pid, "RssFile") + status_kib(pid, "RssShmem");
    let anon_peak = hwm.saturating_sub(file);
    // Parsing the kernel's BTF alone took over 10 MiB here; podmapd itself needs about 3.
    assert!(
        anon_peak < 8 * 1024,
        "podmapd's peak beside its binary's pages is {anon_peak} KiB (VmHWM {hwm} KiB, file-backed {file} KiB)"
    );
    let status = daemon.status();
    assert!(
        status.to_string().contains("podmap_exec"),
        "the programs are attached: {status}"
    );
}

/// A pin another podmap version left with other sizes is refused by the loader process; podmapd
/// says so once, in the words it always used, and does not start.
#[test]
fn a_loader_failure_fails_the_start_with_its_error() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let pins = PinDir::new("podmap-test-loader");
    let dir = &pins.path;
    podmap_bpf::SharedMaps::open(dir).expect("the shared pins");
    // An array of u64 where podmapd's reader flag (an array of u32) belongs.
    MapData::from_pin(dir.join("podmap_counters"))
        .expect("counters")
        .pin(dir.join("podmap_reader"))
        .expect("pinned");
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("podmapd.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_podmapd"))
        .env_remove("PODMAP_LOG_FORMAT")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("PODMAP_LOG", "info")
        .arg("--bpffs-dir")
        .arg(dir)
        .arg("--socket")
        .arg(&socket)
        .arg("--policy-dir")
        .arg(tmp.path().join("policies"))
        .arg("--metrics-addr")
        .arg("off")
        .arg("--no-kube")
        .stdin(Stdio::null())
        .output()
        .expect("podmapd ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "podmapd started:\n{stderr}");
    let d = dir.display();
    let expected = format!(
        "loading the eBPF programs (pins under {d}): pinned map {d}/podmap_reader has value size \
         8, this build expects 4: it was made by another podmap version; stop podmap's processes \
         and remove {d}"
    );
    assert_eq!(
        stderr.matches(&expected).count(),
        1,
        "not said once:\n{expected}\nin:\n{stderr}"
    );
    assert!(
        stderr.lines().last().is_some_and(|l| l.contains(&expected)),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!socket.exists(), "the socket was opened");
    assert!(
        !dir.join("links").exists(),
        "nothing was attached: {:?}",
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

/// On a host where nothing mounted bpffs yet (a fresh VM: /sys/fs/bpf is an empty, read-only
/// sysfs directory), podmapd mounts it and starts: here in a private mount namespace whose
/// /sys/fs/bpf is a read-only tmpfs, so the host's bpffs is untouched. Before the fix, the pin directory
/// was made before bpffs was mounted and podmapd exited at once.
#[test]
fn podmapd_mounts_bpffs_where_nothing_did() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions {
        bpffs_unmounted: true,
        ..DaemonOptions::default()
    });
    let mut stream = daemon.events("{}");
    let cgroup = podmap_bpf::testing::TestCgroup::new(
        &podmap_conformance::daemon::cgroup2_mount(),
        "podmap-test-bpffs",
    )
    .expect("a test cgroup");
    let ev = stream.echo_in(&cgroup.path(), "fresh-host", Duration::from_secs(20));
    assert_eq!(ev["process"]["args"][0], "fresh-host", "{ev}");
    assert!(
        !daemon.pins.path.exists(),
        "the pins went to the namespace's own bpffs, not the host's {}",
        daemon.pins.path.display()
    );
}

/// Stopped, podmapd leaves its programs attached through their pinned links (docs/decisions.md
/// #30), and says so with the directory to remove to detach them: a user who tried podmapd
/// with a pin directory of their own would otherwise not know the programs are still running.
#[test]
fn a_stopped_podmapd_says_where_its_programs_stay_attached() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut daemon = Daemon::start();
    let pid = daemon.child.id() as libc::pid_t;
    // SAFETY: kill(2) of the podmapd this test started and still holds unreaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = daemon.child.wait().expect("podmapd exits");
    assert!(status.success(), "{status}:\n{}", daemon.log_text());
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("stay attached"))
        .unwrap_or_else(|| panic!("no word of the programs left attached:\n{log}"));
    assert!(
        line.contains(&daemon.pins.path.display().to_string()) && line.contains("remove"),
        "{line}"
    );
    assert!(
        daemon.pins.path.join("links").read_dir().unwrap().count() > 0,
        "the links are still pinned"
    );
}
