//! podmapd against the real kernel: exec and exit events of processes in fresh cgroups, container
//! records written through the bpf/ API, nested cgroups, unknown attribution, the /proc scan.
//! Runs as root; each test uses its own pins, socket and cgroups.

use std::time::Duration;

use podmap_bpf::testing::TestCgroup;
use podmap_bpf::{ContainerId, ContainerMeta, PodUid, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::{CgroupId, CgroupIds};
use podmap_conformance::daemon::{cgroup2_mount, find, run_in_cgroup, Daemon, DaemonOptions};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn pid_of(v: &Value) -> u64 {
    v["process"]["pid"].as_u64().unwrap_or(0)
}

fn exec_and_exit_in_a_fresh_cgroup(daemon: &Daemon) {
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-fresh").unwrap();
    let mut stream = daemon.events("{}");
    let (pid, status) = run_in_cgroup(&cg.path(), &["/bin/sh", "-c", "exit 7", "podmap-arg"]);
    assert_eq!(status.code(), Some(7));
    let pid = pid as u64;
    let events = stream.until(WAIT, |v| v["type"] == "exit" && pid_of(v) == pid);
    let exec = find(&events, |v| {
        v["type"] == "exec"
            && pid_of(v) == pid
            && v["process"]["binary"] == "/bin/sh"
            && v["process"]["cgroup_id"] == cg.id()
    })
    .unwrap_or_else(|| panic!("no exec of pid {pid} in cgroup {}: {events:#?}", cg.id()));
    let exit = events.last().unwrap();
    assert_eq!(
        exec["process"]["cgroup_id"],
        cg.id(),
        "exec carries the cgroup's id (its inode)"
    );
    assert_eq!(exec["process"]["ppid"], std::process::id());
    assert_eq!(
        exec["process"]["args"],
        serde_json::json!(["-c", "exit 7", "podmap-arg"])
    );
    assert_eq!(exec["attribution"], "host");
    assert!(exec["container"].is_null() && exec["pod"].is_null());
    assert_eq!(exec["node"], daemon.node.as_str());
    assert!(exec["process"]["exec_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(exit["process"]["cgroup_id"], cg.id());
    assert_eq!(exit["exit"]["code"], 7);
    assert!(exit["exit"]["signal"].is_null());
    assert_eq!(
        exit["process"]["exec_id"], exec["process"]["exec_id"],
        "exit names the exec it ends"
    );
    assert_eq!(exit["process"]["binary"], "/bin/sh");

    // A child's parent_exec_id is its parent's latest exec_id (the wrapper sh execs the
    // script's sh in place, same pid).
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/sh", "-c", "/bin/true child; exit 0"]);
    let events = stream.until(WAIT, |v| v["type"] == "exit" && pid_of(v) == pid as u64);
    let parent = events
        .iter()
        .rfind(|v| v["type"] == "exec" && pid_of(v) == pid as u64)
        .expect("the script's exec");
    assert_eq!(parent["process"]["args"][1], "/bin/true child; exit 0");
    let child = find(&events, |v| {
        v["type"] == "exec" && v["process"]["ppid"] == pid && v["process"]["binary"] == "/bin/true"
    })
    .expect("the child's exec");
    assert_eq!(
        child["process"]["parent_exec_id"], parent["process"]["exec_id"],
        "{child}"
    );

    // A signal death: code null, the signal's name.
    let (pid, status) = run_in_cgroup(&cg.path(), &["/bin/sh", "-c", "kill -9 $$"]);
    assert!(status.code().is_none());
    let pid = pid as u64;
    let events = stream.until(WAIT, |v| v["type"] == "exit" && pid_of(v) == pid);
    let exit = events.last().unwrap();
    assert!(exit["exit"]["code"].is_null());
    assert_eq!(exit["exit"]["signal"], "SIGKILL");
}

#[test]
fn exec_and_exit_carry_the_cgroup_id_on_this_host() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    exec_and_exit_in_a_fresh_cgroup(&daemon);
}

#[test]
fn exec_and_exit_carry_the_cgroup_id_in_a_pure_cgroup2_namespace() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions {
        pure_cgroup2: true,
        ..Default::default()
    });
    let status = daemon.status();
    assert_eq!(status["cgroup_layout"], "unified", "{status}");
    assert_eq!(status["cgroup_hierarchy"], "cgroup2");
    exec_and_exit_in_a_fresh_cgroup(&daemon);
}

fn meta(id: &str) -> ContainerMeta {
    ContainerMeta {
        container_id: ContainerId(id.to_string()),
        name: "nginx".into(),
        pod_uid: Some(PodUid("0b7e7d2a-3c1d-4a54-9f7e-1a2b3c4d5e6f".into())),
        pod_name: "web-7d9c".into(),
        namespace: "prod".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        image: "docker.io/library/nginx:1.27".into(),
        runtime: "containerd".into(),
        sandbox: false,
        cgroup_path: "/test".into(),
        init_pid: None,
        privileged: None,
        cap_bounding: None,
    }
}

#[test]
fn a_record_written_through_the_bpf_api_attributes_the_cgroup_and_its_children() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let mut maps = SharedMaps::open(&daemon.pins.path).expect("the daemon's pins");
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-rec").unwrap();
    let sub = cg.child("sub").unwrap();
    let nested = sub.child("deeper").unwrap();
    let cid = "c0ffee".repeat(10) + "abcd";
    let ids = CgroupIds {
        v2: Some(CgroupId(cg.id())),
        v1: None,
    };
    maps.records
        .insert(&ids, &meta(&cid), RecordFlags::default(), Writer::Test)
        .unwrap();

    let mut stream = daemon.events("{}");
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/true", "in-container"]);
    let events = stream.until(WAIT, |v| {
        v["type"] == "exec" && pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "container", "{ev}");
    assert_eq!(ev["container"]["id"], cid.as_str());
    assert_eq!(ev["container"]["name"], "nginx");
    assert_eq!(ev["container"]["image"], "docker.io/library/nginx:1.27");
    assert_eq!(ev["pod"]["name"], "web-7d9c");
    assert_eq!(ev["pod"]["namespace"], "prod");
    assert_eq!(ev["pod"]["uid"], "0b7e7d2a-3c1d-4a54-9f7e-1a2b3c4d5e6f");
    assert_eq!(ev["pod"]["labels"]["app"], "web");
    assert_eq!(ev["process"]["cgroup_id"], cg.id());
    let events = stream.until(WAIT, |v| v["type"] == "exit" && pid_of(v) == pid as u64);
    assert_eq!(events.last().unwrap()["attribution"], "container");

    // Nested below the mapped cgroup: same container, the process's own cgroup id.
    let (pid, _) = run_in_cgroup(&nested.path(), &["/bin/true", "nested"]);
    let events = stream.until(WAIT, |v| {
        v["type"] == "exec" && pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "container", "{ev}");
    assert_eq!(ev["container"]["id"], cid.as_str());
    assert_eq!(ev["process"]["cgroup_id"], nested.id());

    // Server-side filters select by pod fields.
    let mut by_ns =
        daemon.events(r#"{"namespace": "prod", "labels": {"app": "web"}, "types": ["exec"]}"#);
    let mut other_ns = daemon.events(r#"{"namespace": "staging"}"#);
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/true", "filtered"]);
    let got = by_ns.until(WAIT, |v| pid_of(v) == pid as u64);
    assert!(
        got.iter()
            .all(|v| v["pod"]["namespace"] == "prod" && v["type"] == "exec"),
        "{got:#?}"
    );
    assert_eq!(
        other_ns.next_line(Duration::from_millis(500)),
        None,
        "other namespaces see nothing"
    );

    // Removed: back to host.
    maps.records.remove(&ids).unwrap();
    let (pid, _) = run_in_cgroup(&nested.path(), &["/bin/true", "after-removal"]);
    let events = stream.until(WAIT, |v| {
        v["type"] == "exec" && pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "host", "{ev}");
    assert!(ev["container"].is_null());

    let status = daemon.status();
    assert!(
        status["attribution"]["container"].as_u64().unwrap() >= 3,
        "{status}"
    );
}

#[test]
fn container_shaped_cgroups_wait_for_their_mapping_then_go_out_as_unknown() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    // The test's cgroup stands for kubelet's pod parent (docs/decisions.md #29).
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-shape").unwrap();
    let daemon = Daemon::start_with(DaemonOptions {
        env: vec![(
            "PODMAP_POD_PARENTS".into(),
            format!("/{}", cg.rel.display()),
        )],
        ..Default::default()
    });
    let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
    let uid = "4f1c2d3e-aaaa-bbbb-cccc-0123456789ab";
    let cid = "ab".repeat(32);
    let pod = cg.child(&format!("pod{uid}")).unwrap();
    let unmapped = pod.child(&cid).unwrap();
    let mut stream = daemon.events("{}");

    // Never mapped: held, then unknown with what the path says.
    let (pid, _) = run_in_cgroup(&unmapped.path(), &["/bin/true", "unknown"]);
    let events = stream.until(WAIT, |v| {
        v["type"] == "exec" && pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "unknown", "{ev}");
    assert_eq!(ev["path_derived"], true, "{ev}");
    assert_eq!(ev["container"]["id"], cid.as_str());
    assert_eq!(ev["pod"]["uid"], uid);

    // Mapped while held (the pause process's race): comes out attributed.
    let cid2 = "cd".repeat(32);
    let late = pod.child(&cid2).unwrap();
    let ids = CgroupIds {
        v2: Some(CgroupId(late.id())),
        v1: None,
    };
    let (pid, _) = run_in_cgroup(&late.path(), &["/bin/true", "late"]);
    maps.records
        .insert(&ids, &meta(&cid2), RecordFlags::default(), Writer::Test)
        .unwrap();
    let events = stream.until(WAIT, |v| {
        v["type"] == "exec" && pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "container", "{ev}");
    assert!(ev.get("path_derived").is_none(), "{ev}");
    assert_eq!(ev["container"]["id"], cid2.as_str());

    let status = daemon.status();
    assert!(status["events_held"].as_u64().unwrap() >= 2, "{status}");
    assert!(
        status["attribution"]["unknown"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[test]
fn processes_older_than_the_daemon_are_found_by_the_proc_scan() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-scan").unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec /bin/sleep 60",
        cg.path().display()
    );
    let mut old = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let daemon = Daemon::start();
    let mut stream = daemon.events(r#"{"types": ["exit"]}"#);
    let pid = old.id() as u64;
    old.kill().unwrap();
    old.wait().unwrap();
    let events = stream.until(WAIT, |v| pid_of(v) == pid);
    let ev = events.last().unwrap();
    assert_eq!(ev["process"]["binary"], "/usr/bin/sleep", "{ev}");
    assert_eq!(ev["process"]["args"], serde_json::json!(["60"]));
    assert_eq!(ev["process"]["flags"], serde_json::json!(["procfs_scan"]));
    assert_eq!(ev["exit"]["signal"], "SIGKILL");
    assert_eq!(ev["process"]["cgroup_id"], cg.id());
}

#[test]
fn the_daemon_sweeps_records_whose_grace_ended() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions {
        env: vec![("PODMAP_GRACE".into(), "1".into())],
        ..Default::default()
    });
    let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
    let removed = CgroupIds {
        v2: Some(CgroupId(0x7fff_0001)),
        v1: None,
    };
    let live = CgroupIds {
        v2: Some(CgroupId(0x7fff_0002)),
        v1: None,
    };
    maps.records
        .insert(
            &removed,
            &meta("removed"),
            RecordFlags::default(),
            Writer::Test,
        )
        .unwrap();
    maps.records
        .insert(&live, &meta("live"), RecordFlags::default(), Writer::Test)
        .unwrap();
    assert!(maps
        .records
        .mark_removed(&removed, podmap_bpf::maps::boot_ns())
        .unwrap());
    let deadline = std::time::Instant::now() + WAIT;
    while maps
        .records
        .get(podmap_cgroup::CgroupKey::v2(0x7fff_0001))
        .unwrap()
        .is_some()
    {
        assert!(std::time::Instant::now() < deadline, "not swept");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        maps.records
            .get(podmap_cgroup::CgroupKey::v2(0x7fff_0002))
            .unwrap()
            .is_some(),
        "live records stay"
    );
    assert!(
        daemon.status()["shared_counters"]["records_expired"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

/// On hosts where containers live only in cgroup v1, the tracked controller's id attributes.
/// Here (hybrid) a cgroup made only in the v1 memory hierarchy shows that path.
#[test]
fn a_v1_only_cgroup_is_attributed_through_the_tracked_controller() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let memory = std::path::Path::new("/sys/fs/cgroup/memory");
    if !memory.join("cgroup.procs").exists() {
        eprintln!("no cgroup v1 memory hierarchy on this host: nothing to check");
        return;
    }
    let daemon = Daemon::start();
    let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
    let cg = TestCgroup::new(memory, "podmap-test-v1").unwrap();
    let ids = CgroupIds {
        v2: None,
        v1: Some(CgroupId(cg.id())),
    };
    let cid = "ee".repeat(32);
    maps.records
        .insert(&ids, &meta(&cid), RecordFlags::default(), Writer::Test)
        .unwrap();
    let mut stream = daemon.events("{}");
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/true", "v1"]);
    let events = stream.until(WAIT, |v| {
        v["type"] == "exec" && pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "container", "{ev}");
    assert_eq!(ev["container"]["id"], cid.as_str());
    assert_eq!(
        ev["process"]["cgroup_id"],
        cg.id(),
        "the v1 id, where the container was found"
    );
}

/// A process that never exec'd is named after the program it was forked from while its parent
/// is the one it was forked by; once reparented, after its command name, never after its new
/// parent's program.
#[test]
fn exits_of_processes_that_never_exec_name_the_right_program() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-fork").unwrap();
    let mut stream = daemon.events(r#"{"types": ["exit"]}"#);
    // A subshell that exits while sh waits for it.
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/sh", "-c", "(exit 4); exit 0"]);
    let events = stream.until(WAIT, |v| {
        v["process"]["ppid"] == pid && v["exit"]["code"] == 4
    });
    let sub = events.last().unwrap();
    assert_eq!(
        sub["process"]["binary"], "/bin/sh",
        "a subshell runs its parent's program: {sub}"
    );
    // A subshell that outlives sh: reparented before it exits.
    let busy = "(i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exit 6) & exit 0";
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/sh", "-c", busy]);
    let events = stream.until(WAIT, |v| {
        v["exit"]["code"] == 6 && v["process"]["cgroup_id"] == cg.id()
    });
    let orphan = events.last().unwrap();
    assert_ne!(orphan["process"]["ppid"], pid, "reparented: {orphan}");
    assert_eq!(
        orphan["process"]["binary"], "[sh]",
        "named by its command, not its new parent's program: {orphan}"
    );
}

/// Events no client asks for are never built (docs/decisions.md #41), but their bookkeeping is
/// done: a process that exec'd while no client was connected, then one that asked for exits
/// only, still exits as the program it exec'd.
#[test]
fn an_exec_no_client_wanted_still_names_its_exit() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-unwanted").unwrap();
    let mut child = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "echo $$ > cgroup.procs && read line && exec /bin/sleep 0.$1",
        ])
        .args(["sh", "9"])
        .current_dir(cg.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    // Let the shell exec sleep with no client subscribed, then ask for exits only.
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut stream = daemon.events(r#"{"types": ["exit"]}"#);
    let pid = child.id() as u64;
    let events = stream.until(WAIT, |v| v["type"] == "exit" && pid_of(v) == pid);
    let exit = events.last().unwrap();
    assert_eq!(exit["process"]["binary"], "/bin/sleep", "{exit}");
    assert_eq!(
        exit["process"]["args"],
        serde_json::json!(["0.9"]),
        "{exit}"
    );
    assert!(events.iter().all(|v| v["type"] == "exit"), "{events:#?}");
    assert!(child.wait().unwrap().success());
}

/// Idle, the event reader stops polling and the next record wakes it: events after a sleep are
/// delivered, and status counts the sleeps and wake-ups. (Other processes on the host wake it
/// too; what matters is that nothing waits for a timer that no longer runs.)
#[test]
fn an_idle_reader_sleeps_and_the_next_event_wakes_it() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-idle").unwrap();
    let mut stream = daemon.events(r#"{"types": ["exec"]}"#);
    for round in 0..3 {
        let st = daemon.wait_status("the reader asleep", |st| st["reader_asleep"] == true);
        let woken = st["reader_woken"].as_u64().unwrap();
        let marker = format!("after-sleep-{round}");
        let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/echo", &marker]);
        stream.until(WAIT, |v| {
            pid_of(v) == u64::from(pid) && v["process"]["cgroup_id"] == cg.id()
        });
        let st = daemon.status();
        assert!(st["reader_woken"].as_u64() > Some(woken), "{st:#}");
        assert!(st["reader_sleeps"].as_u64() >= Some(round + 1), "{st:#}");
    }
}

/// A working directory deeper than the kernel reads comes out with its deepest components and
/// the `cwd_truncated` flag; a shallow one carries no flag.
#[test]
fn a_cwd_deeper_than_the_kernel_reads_is_flagged_truncated() {
    let daemon = Daemon::start();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-cwd").unwrap();
    let top = tempfile::tempdir().unwrap();
    let mut deep = top.path().to_path_buf();
    for i in 0..40 {
        deep.push(format!("podmap-deep-{i:02}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let mut stream = daemon.events(r#"{"types": ["exec"]}"#);
    for (dir, marker) in [
        (&deep, "deep-cwd"),
        (&top.path().to_path_buf(), "shallow-cwd"),
    ] {
        let script = format!("cd '{}' && exec /bin/echo {marker}", dir.display());
        let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/sh", "-c", &script]);
        let events = stream.until(WAIT, |v| {
            pid_of(v) == u64::from(pid) && v["process"]["binary"] == "/bin/echo"
        });
        let exec = events.last().unwrap();
        let flagged = exec["process"]["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "cwd_truncated"));
        let cwd = exec["process"]["cwd"].as_str().unwrap();
        if marker == "deep-cwd" {
            assert!(flagged, "a {}-byte cwd: {exec}", deep.as_os_str().len());
            assert!(
                cwd.ends_with("/podmap-deep-39"),
                "the deepest part is kept: {exec}"
            );
        } else {
            assert!(!flagged, "{exec}");
            assert_eq!(cwd, top.path().to_str().unwrap(), "{exec}");
        }
    }
}

/// A tmpfs mounted for one test, detached lazily when dropped (also when the test fails).
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    fn new(at: &std::path::Path) -> TmpfsMount {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "podmap-test-cwd"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs {}", at.display());
        TmpfsMount(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The cwd walk crosses mount points: a working directory two mounts below the root filesystem
/// comes out whole, each mount's part in place, and not flagged.
#[test]
fn a_cwd_across_mount_points_comes_out_whole() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-cwd-mounts").unwrap();
    let top = tempfile::tempdir().unwrap();
    let outer = TmpfsMount::new(&top.path().join("outer"));
    let inner = TmpfsMount::new(&outer.0.join("a/inner"));
    let cwd = inner.0.join("b/c");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut stream = daemon.events(r#"{"types": ["exec"]}"#);
    let script = format!("cd '{}' && exec /bin/echo across-mounts", cwd.display());
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/sh", "-c", &script]);
    let events = stream.until(WAIT, |v| {
        pid_of(v) == u64::from(pid) && v["process"]["binary"] == "/bin/echo"
    });
    let exec = events.last().unwrap();
    assert_eq!(exec["process"]["cwd"], cwd.to_str().unwrap(), "{exec}");
    let truncated = exec["process"]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "cwd_truncated"));
    assert!(!truncated, "{exec}");
}

/// Chaos (issue 12): the pin directory removed under a running podmapd. Before, the programs
/// were detached at once (nothing but the pins held their links) and a writer opening the pins
/// afterwards created new, empty maps. Now podmapd holds its links, and its next look pins them,
/// its own maps and the shared maps again (counted): the programs never stop, a later writer (a
/// hook run) writes into the maps they read, and a restarted podmapd adopts the links.
#[test]
fn a_removed_pin_directory_is_pinned_again_and_later_writers_reach_the_programs() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let mut stream = daemon.events("{}");
    std::fs::remove_dir_all(&daemon.pins.path).unwrap();
    let st = daemon.wait_status("the shared maps pinned again", |st| {
        st["shared_counters"]["pins_restored"].as_u64().unwrap_or(0) >= 7
    });
    assert_eq!(st["shared_counters"]["pins_foreign"], 0, "{st}");

    let mut maps = SharedMaps::open(&daemon.pins.path).expect("the pins, as a writer opens them");
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-repin").unwrap();
    let cid = "feed".repeat(16);
    let ids = CgroupIds {
        v2: Some(CgroupId(cg.id())),
        v1: None,
    };
    maps.records
        .insert(&ids, &meta(&cid), RecordFlags::default(), Writer::Test)
        .unwrap();
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/true", "after-repin"]);
    let events = stream.until(WAIT, |v| {
        v["type"] == "exec" && pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "container", "{ev}");
    assert_eq!(ev["container"]["id"], cid.as_str());

    // The links were held and pinned again too: a podmapd restarted after a crash adopts them
    // (before, it found none and attached a second generation beside the first).
    let links = std::fs::read_dir(daemon.pins.path.join("links"))
        .unwrap()
        .count();
    assert!(links >= 5, "{links} links pinned again");
    let mut daemon = daemon;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let again = Daemon::start_with(DaemonOptions {
        pins: Some(daemon.pins.path.clone()),
        ..Default::default()
    });
    let st = again.status();
    assert_eq!(st["programs"]["links"], "adopted", "{st:#}");
}

/// The container's init and what it starts are not `entered_via_exec`; a process the runtime's
/// exec put in (its parent outside the container) and what that one starts are
/// (docs/decisions.md #35). A container with no init pid on record says nothing.
#[test]
fn processes_entered_from_outside_are_told_from_the_inits_line() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let daemon = Daemon::start();
    let mut maps = SharedMaps::open(&daemon.pins.path).expect("the daemon's pins");
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-entry").unwrap();
    let ids = CgroupIds {
        v2: Some(CgroupId(cg.id())),
        v1: None,
    };
    let mut stream = daemon.events(r#"{"types": ["exec"]}"#);

    // The "init": moves itself into the cgroup, then waits to be told its pid is on record
    // before it execs (as a runtime's init waits for start), and starts a child inside.
    let mut init = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs || exit 97; read go; exec /bin/sh -c '/bin/true init-child; (/bin/sleep 0.3; exec /bin/true init-orphan) & exit 0' init-sh",
            cg.path().display()
        ))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let init_pid = init.id();
    let mut m = meta(&("e0".repeat(32)));
    m.init_pid = Some(init_pid);
    maps.records
        .insert(&ids, &m, RecordFlags::default(), Writer::Test)
        .unwrap();
    writeln!(init.stdin.take().unwrap(), "go").unwrap();
    assert!(init.wait().unwrap().success());
    let events = stream.until(WAIT, |v| v["process"]["args"][0] == "init-child");
    let init_exec = find(&events, |v| {
        pid_of(v) == init_pid as u64 && v["process"]["args"][2] == "init-sh"
    })
    .unwrap_or_else(|| panic!("no exec of the init: {events:#?}"));
    assert_eq!(init_exec["attribution"], "container", "{init_exec}");
    assert_eq!(
        init_exec["process"]["entered_via_exec"], false,
        "{init_exec}"
    );
    let child = events.last().unwrap();
    assert_eq!(child["process"]["ppid"], init_pid, "{child}");
    assert_eq!(child["process"]["entered_via_exec"], false, "{child}");
    // Orphaned when the init exits and reparented outside the container: still the init's line
    // (a reparenting must neither hide an exec's line nor make the init's look like one).
    let events = stream.until(WAIT, |v| v["process"]["args"][0] == "init-orphan");
    let orphan = events.last().unwrap();
    assert_ne!(orphan["process"]["ppid"], init_pid, "reparented: {orphan}");
    assert_eq!(orphan["attribution"], "container", "{orphan}");
    assert_eq!(orphan["process"]["entered_via_exec"], false, "{orphan}");

    // An "exec": a process from outside (this test's child) joins and execs, and starts a
    // child inside; both entered through the exec.
    let (pid, status) = run_in_cgroup(
        &cg.path(),
        &["/bin/sh", "-c", "/bin/true exec-child; exit 0", "exec-sh"],
    );
    assert!(status.success());
    let events = stream.until(WAIT, |v| v["process"]["args"][0] == "exec-child");
    let entered = find(&events, |v| {
        pid_of(v) == pid as u64 && v["process"]["args"][2] == "exec-sh"
    })
    .unwrap_or_else(|| panic!("no exec of {pid}: {events:#?}"));
    assert_eq!(entered["process"]["entered_via_exec"], true, "{entered}");
    let child = events.last().unwrap();
    assert_eq!(child["process"]["ppid"], pid, "{child}");
    assert_eq!(child["process"]["entered_via_exec"], true, "{child}");

    // Exits say the same as their execs.
    let mut exits = daemon.events(r#"{"types": ["exit"]}"#);
    let (pid, _) = run_in_cgroup(&cg.path(), &["/bin/true", "exec-exit"]);
    let events = exits.until(WAIT, |v| pid_of(v) == pid as u64);
    assert_eq!(events.last().unwrap()["process"]["entered_via_exec"], true);

    // No init pid on record: unknown, not a guess.
    m.init_pid = None;
    maps.records.remove(&ids).unwrap();
    let other = TestCgroup::new(&cgroup2_mount(), "podmap-test-entry-unknown").unwrap();
    let other_ids = CgroupIds {
        v2: Some(CgroupId(other.id())),
        v1: None,
    };
    m.container_id = ContainerId("e1".repeat(32));
    maps.records
        .insert(&other_ids, &m, RecordFlags::default(), Writer::Test)
        .unwrap();
    let (pid, _) = run_in_cgroup(&other.path(), &["/bin/true", "no-init-on-record"]);
    let events = stream.until(WAIT, |v| {
        pid_of(v) == pid as u64 && v["process"]["binary"] == "/bin/true"
    });
    let ev = events.last().unwrap();
    assert_eq!(ev["attribution"], "container", "{ev}");
    assert!(ev["process"].get("entered_via_exec").is_none(), "{ev}");
}

/// The capability names of a /proc/<pid>/status mask line (`CapBnd:`, `CapEff:`) of this
/// process, as events name them.
fn own_caps(field: &str) -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim();
    podmap_proto::caps::capability_names(u64::from_str_radix(hex, 16).unwrap())
}

/// Every exec carries the credentials the kernel installed with it (docs/decisions.md #36): a
/// root exec holds the whole bounding set it inherited; one after `setpriv` dropped to nobody
/// with an empty bounding set holds none; a real uid that is not root under an effective uid
/// that is shows both apart, and so do the gids. Exits carry their exec's.
#[test]
fn execs_carry_the_credentials_the_kernel_gave_them() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-creds").unwrap();
    let mut stream = daemon.events("{}");
    let exec_of = |stream: &mut podmap_conformance::daemon::EventStream, arg: &str| {
        let events = stream.until(WAIT, |v| {
            v["type"] == "exit" && v["process"]["args"][0] == arg
        });
        let exec = find(&events, |v| {
            v["type"] == "exec" && v["process"]["args"][0] == arg
        })
        .unwrap_or_else(|| panic!("no exec of {arg}: {events:#?}"))
        .clone();
        (exec, events.last().unwrap().clone())
    };

    // Root, as this test runs: a root exec's effective set is its bounding set (the test's
    // own, which a sandbox running the suite may have narrowed).
    let (_, status) = run_in_cgroup(&cg.path(), &["/bin/true", "creds-root"]);
    assert!(status.success());
    let (exec, exit) = exec_of(&mut stream, "creds-root");
    let p = &exec["process"];
    assert_eq!(
        (&p["uid"], &p["euid"], &p["gid"], &p["egid"]),
        (&0.into(), &0.into(), &0.into(), &0.into()),
        "{exec}"
    );
    let bounding = own_caps("CapBnd:");
    assert!(
        bounding.iter().any(|c| c == "CAP_SYS_ADMIN"),
        "{bounding:?}"
    );
    assert_eq!(p["cap_effective"], serde_json::json!(bounding), "{exec}");
    assert_eq!(
        exit["process"]["cap_effective"], p["cap_effective"],
        "{exit}"
    );
    assert_eq!(exit["process"]["euid"], 0, "{exit}");

    // Dropped to nobody with no capabilities left to gain.
    let (_, status) = run_in_cgroup(
        &cg.path(),
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "/bin/true",
            "creds-nobody",
        ],
    );
    assert!(status.success());
    let (exec, exit) = exec_of(&mut stream, "creds-nobody");
    let p = &exec["process"];
    assert_eq!(
        (&p["uid"], &p["euid"], &p["gid"], &p["egid"]),
        (&65534.into(), &65534.into(), &65534.into(), &65534.into()),
        "{exec}"
    );
    assert_eq!(
        p["cap_effective"],
        serde_json::json!([]),
        "none, not unknown: {exec}"
    );
    assert_eq!(exit["process"]["cap_effective"], serde_json::json!([]));

    // Real and effective ids apart: a set-user-ID root program's shape.
    let (_, status) = run_in_cgroup(
        &cg.path(),
        &[
            "setpriv",
            "--ruid=1000",
            "--euid=0",
            "--rgid=1001",
            "--egid=1002",
            "--clear-groups",
            "/bin/true",
            "creds-setuid",
        ],
    );
    assert!(status.success());
    let (exec, _) = exec_of(&mut stream, "creds-setuid");
    let p = &exec["process"];
    assert_eq!(
        (&p["uid"], &p["euid"], &p["gid"], &p["egid"]),
        (&1000.into(), &0.into(), &1001.into(), &1002.into()),
        "{exec}"
    );
    let ev: podmap_proto::Event = serde_json::from_value(exec.clone()).unwrap();
    assert!(ev.process.is_privileged(), "euid 0: {exec}");
}
