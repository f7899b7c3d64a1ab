//! Attribution of cgroups no plugin mapped (docs/decisions.md #29), against the real kernel and a
//! real podmapd: a container-shaped cgroup outside the pod parents is the host's, whatever its
//! name says; one under a pod parent goes out as `unknown`, marked `path_derived`, and joined
//! with the pod cache only when the path names the pod the cache has; and a storm from such a
//! cgroup keeps podmapd's memory bounded while status and policies keep answering.
//! Runs as root; each test uses its own pins, socket, cgroups and API server.

use std::io::Write;
use std::time::{Duration, Instant};

use podmap_bpf::testing::TestCgroup;
use podmap_conformance::daemon::{cgroup2_mount, kubeconfig, run_in_cgroup, Daemon, DaemonOptions};
use podmap_pod_cache::testing::fixtures;
use podmap_pod_cache::testing::TestApiServer;

const WAIT: Duration = Duration::from_secs(30);

/// The tests of this file run one at a time: every podmapd sees every exec on the host, so a
/// storm of 8,000 events in one test buries the few events another test waits for (its stream
/// falls behind and the daemon drops for it, as it should for a slow reader).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one still runs.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn rel(cg: &TestCgroup) -> String {
    format!("/{}", cg.rel.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_container_scope_under_a_user_slice_gets_no_pod_data() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let server = TestApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = podmap_bpf::testing::unique_name("node");
    let victim = fixtures::pod("prod", "victim", &node, &[("app", "payments")]);
    server.apply(&victim);
    let victim_uid = victim.metadata.uid.clone().unwrap();
    let victim_cid = fixtures::container_id("victim");
    let kc = kubeconfig(tmp.path(), &server.url());

    tokio::task::block_in_place(|| {
        let _alone = one_at_a_time();
        let base = TestCgroup::new(&cgroup2_mount(), "podmap-test-forge").unwrap();
        // The runtime's pod parent in this test: kubelet's --cgroup-root would be /kubepods.
        let kubepods = base.child("kubepods").unwrap();
        let daemon = Daemon::start_with(DaemonOptions {
            env: vec![
                ("PODMAP_KUBECONFIG".into(), kc.display().to_string()),
                ("NODE_NAME".into(), node.clone()),
                ("PODMAP_POD_PARENTS".into(), rel(&kubepods)),
            ],
            ..Default::default()
        });
        daemon.wait_status("the pod cache synced with the victim pod", |st| {
            st["pods_cached"] == 1 && st["pod_cache"]["synced"] == true
        });
        let mut stream = daemon.events("{}");

        // What an unprivileged user with a delegated systemd user manager can create.
        let slice = base.child("user.slice").unwrap();
        let user = slice.child("user-4242.slice").unwrap();
        let manager = user.child("user@4242.service").unwrap();
        let forged = manager
            .child(&format!("cri-containerd-{victim_cid}.scope"))
            .unwrap();
        let ev = stream.echo_in(&forged.path(), "forged", WAIT);
        assert_eq!(ev["attribution"], "host", "{ev}");
        assert!(
            ev["pod"].is_null() && ev["container"].is_null(),
            "no victim data on a forged cgroup's event: {ev}"
        );
        let st = daemon.status();
        assert!(
            st["shaped_outside_pod_parents"].as_u64().unwrap() >= 1,
            "counted: {st}"
        );
        assert!(
            st["pod_parents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == rel(&kubepods).as_str()),
            "{st}"
        );
        assert!(
            daemon
                .log_text()
                .contains("container-shaped cgroup outside the pod parents"),
            "logged"
        );

        // Under the pod parent, naming the pod the cache has: unknown, joined, and marked as
        // resting on the path alone.
        let pod = kubepods.child(&format!("pod{victim_uid}")).unwrap();
        let real = pod.child(&victim_cid).unwrap();
        let ev = stream.echo_in(&real.path(), "pre-podmap", WAIT);
        assert_eq!(ev["attribution"], "unknown", "{ev}");
        assert_eq!(ev["path_derived"], true, "{ev}");
        assert_eq!(ev["container"]["id"], victim_cid.as_str());
        assert_eq!(ev["pod"]["uid"], victim_uid.as_str());
        assert_eq!(ev["pod"]["name"], "victim", "{ev}");
        drop(real);

        // Under the pod parent but naming another pod: the victim's data is not joined.
        let other_uid = fixtures::uid("someone-else");
        let other = kubepods.child(&format!("pod{other_uid}")).unwrap();
        let squat = other.child(&victim_cid).unwrap();
        let ev = stream.echo_in(&squat.path(), "squat", WAIT);
        assert_eq!(ev["attribution"], "unknown", "{ev}");
        assert_eq!(ev["path_derived"], true, "{ev}");
        assert_eq!(ev["pod"]["uid"], other_uid.as_str(), "{ev}");
        assert_eq!(ev["pod"]["name"], "", "{ev}");
        assert!(ev["pod"]["labels"].as_object().unwrap().is_empty(), "{ev}");
        let st = daemon.status();
        assert!(
            st["unknown_pod_mismatch"].as_u64().unwrap() >= 1,
            "counted: {st}"
        );
    });
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_exec_storm_from_an_unmapped_container_cgroup_stays_bounded() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    storm_with_idle_clients(20);
}

/// The full case: 1,000 subscribers that never read. At most `--max-clients` (64) of them are
/// served as streams, each pinning at most one write buffer; the others are refused and counted;
/// and status, which has places of its own, answers throughout.
#[test]
fn an_exec_storm_from_an_unmapped_container_cgroup_with_1000_idle_clients_stays_bounded() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    storm_with_idle_clients(1000);
}

/// 4,000 execs from an unmapped container cgroup below a pod parent while `clients` subscribers
/// never read: held events stay within their bound (the overflow is counted and goes out), status
/// answers and a new policy loads during the storm, and podmapd's peak memory stays far below
/// its 256 MiB limit.
fn storm_with_idle_clients(clients: usize) {
    let _alone = one_at_a_time();
    let base = TestCgroup::new(&cgroup2_mount(), "podmap-test-storm").unwrap();
    let kubepods = base.child("kubepods").unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(DaemonOptions {
        env: vec![
            ("PODMAP_POD_PARENTS".into(), rel(&kubepods)),
            (
                "PODMAP_POLICY_DIR".into(),
                policy_dir.path().display().to_string(),
            ),
        ],
        ..Default::default()
    });
    let pod = kubepods
        .child("pod4f1c2d3e-aaaa-bbbb-cccc-0123456789ab")
        .unwrap();
    let unmapped = pod.child(&"ef".repeat(32)).unwrap();

    let idle: Vec<_> = (0..clients)
        .map(|_| daemon.request(r#"{"events": {}}"#))
        .collect();
    let before = vm_hwm_kib(daemon.child.id());

    let storm = {
        let path = unmapped.path();
        std::thread::spawn(move || {
            run_in_cgroup(
                &path,
                &[
                    "/bin/sh",
                    "-c",
                    // Four loops at once: well over the per-cgroup bound within the 500 ms
                    // hold even on a loaded machine.
                    "for j in 1 2 3 4; do (i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done) & done; wait",
                ],
            )
        })
    };

    // While it rages: status answers, and a new policy is loaded (the policy tick runs).
    std::thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    let mut policy_written = false;
    while !storm.is_finished() {
        let t = Instant::now();
        let st = daemon.status();
        slowest = slowest.max(t.elapsed());
        assert!(st["events_held_now"].as_u64().is_some(), "{st}");
        if !policy_written {
            let mut f = std::fs::File::create(policy_dir.path().join("audit.yaml")).unwrap();
            f.write_all(
                b"apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: storm-audit}\n\
                  spec:\n  namespaces: [prod]\n  rules:\n  - exec: {paths: [/usr/bin/nc]}\n    action: audit\n",
            )
            .unwrap();
            policy_written = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    storm.join().unwrap();
    daemon.wait_policies(1);
    assert!(
        slowest < Duration::from_secs(2),
        "status took {slowest:?} during the storm"
    );

    let st = daemon.wait_status("every held event released", |st| {
        st["events_held_now"] == 0 && st["events_seen"]["exec"].as_u64().unwrap_or(0) >= 4000
    });
    let per_cgroup = st["events_held_limits"]["per_cgroup"].as_u64().unwrap();
    assert!(
        st["events_held_peak"].as_u64().unwrap() <= per_cgroup,
        "held events bounded per cgroup: {st}"
    );
    assert!(
        st["events_held_released_early"].as_u64().unwrap() > 0,
        "the storm overflowed the hold and it is counted: {st}"
    );
    assert!(
        st["attribution"]["unknown"].as_u64().unwrap() >= 4000,
        "{st}"
    );
    let after = vm_hwm_kib(daemon.child.id());
    eprintln!(
        "podmapd VmHWM: {before} KiB with {clients} idle clients, {after} KiB after the storm; \
         held peak {}, released early {}, slowest status {slowest:?}",
        st["events_held_peak"], st["events_held_released_early"]
    );
    assert!(
        after < 160 * 1024,
        "podmapd's peak memory {after} KiB (before the storm {before} KiB)"
    );
    drop(idle);
}
