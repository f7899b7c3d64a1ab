//! podmapd with the pod cache, against the in-process API server: events carry what only the
//! API server knows (workload, labels changed after creation), a relabel shows in the next
//! events and moves the pod in or out of a policy, and a deleted pod's late events keep their
//! pod data.

use std::time::{Duration, Instant};

use podmap_bpf::testing::{TestCgroup, TestPod};
use podmap_bpf::SharedMaps;
use podmap_conformance::daemon::{cgroup2_mount, kubeconfig, run_in_cgroup, Daemon, DaemonOptions};
use podmap_pod_cache::testing::fixtures;
use podmap_pod_cache::testing::TestApiServer;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_join_the_pod_cache_and_follow_relabels_and_deletion() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let server = TestApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    let node = podmap_bpf::testing::unique_name("node");
    let mut pod = fixtures::deployment_pod("prod", "checkout", "5d8f7c9b4", 0, &node);
    server.apply(&pod);
    let uid = pod.metadata.uid.clone().unwrap();
    let name = pod.metadata.name.clone().unwrap();
    let kc = kubeconfig(tmp.path(), &server.url());

    tokio::task::block_in_place(|| {
        let daemon = Daemon::start_with(DaemonOptions {
            env: vec![
                ("PODMAP_KUBECONFIG".into(), kc.display().to_string()),
                ("NODE_NAME".into(), node.clone()),
                (
                    "PODMAP_POLICY_DIR".into(),
                    policy_dir.path().display().to_string(),
                ),
            ],
            ..Default::default()
        });
        daemon.wait_status("the pod cache synced with the pod", |st| {
            st["mode"] == "kubernetes"
                && st["pods_cached"] == 1
                && st["pod_cache"]["synced"] == true
        });

        // The runtime plugin's record: creation-time labels only.
        let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
        let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-join").unwrap();
        let runtime_pod = TestPod {
            namespace: "prod",
            name: &name,
            uid: &uid,
            labels: &[("app.kubernetes.io/name", "checkout")],
        };
        cg.map_container(&mut maps, &runtime_pod, "app").unwrap();

        let mut stream = daemon.events("{}");
        let ev = stream.echo_in(&cg.path(), "first", WAIT);
        assert_eq!(ev["attribution"], "container");
        assert_eq!(ev["pod"]["workload"], "checkout", "{ev}");
        assert_eq!(ev["pod"]["workload_kind"], "Deployment");
        assert_eq!(
            ev["pod"]["labels"]["team"], "payments",
            "labels from the API server: {ev}"
        );

        // A policy on a label the pod does not have yet.
        std::fs::write(
            policy_dir.path().join("p.yaml"),
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: quarantine}\nspec:\n  podSelector: {matchLabels: {quarantine: \"yes\"}}\n  rules: [{exec: {paths: [/bin/true]}, action: kill}]\n",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            run_in_cgroup(&cg.path(), &["/bin/true"]).1.success(),
            "not selected yet"
        );

        // Relabel through the API server: the next events carry the new labels, and the pod
        // moves into the policy.
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert("quarantine".into(), "yes".into());
        server.apply(&pod);
        let deadline = Instant::now() + WAIT;
        loop {
            let ev = stream.echo_in(&cg.path(), "relabelled", WAIT);
            if ev["pod"]["labels"]["quarantine"] == "yes" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "relabel never reached events: {ev}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let deadline = Instant::now() + WAIT;
        while run_in_cgroup(&cg.path(), &["/bin/true"]).1.success() {
            assert!(
                Instant::now() < deadline,
                "relabelled pod never entered the policy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // Deleted from the API server: late events keep the pod's data.
        assert!(server.delete("prod", &name));
        daemon.wait_status("the deletion reached the cache", |st| {
            st["pods_cached"] == 0
        });
        let ev = stream.echo_in(&cg.path(), "after-deletion", WAIT);
        assert_eq!(ev["pod"]["workload"], "checkout", "{ev}");
        assert_eq!(ev["pod"]["name"], name.as_str());
    });
}
