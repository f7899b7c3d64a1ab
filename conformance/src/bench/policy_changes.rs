//! Part of `podmap-bench policies`: how long a policy change takes to reach a running container
//! (the "within a second"). podmapd runs against the in-process API server with a
//! container record standing in for the runtime's; each step is timed from the change to the
//! kernel's membership map showing its effect (polled every millisecond): a policy file written
//! and removed, a PodPolicy resource added and deleted, and the pod relabelled out of the
//! selector and back in on the API server.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use podmap_bpf::testing::{TestCgroup, TestPod};
use podmap_bpf::SharedMaps;
use podmap_cgroup::CgroupKey;
use podmap_pod_cache::testing::{Resource, TestApiServer};
use podmap_policy::policy_id;
use serde_json::{json, Value};

use crate::daemon::{cgroup2_mount, kubeconfig, Daemon, DaemonOptions};

const STEPS: [&str; 6] = [
    "file written",
    "file removed",
    "resource added",
    "relabelled out",
    "relabelled in",
    "resource deleted",
];
const TARGET: Duration = Duration::from_secs(1);
const UID: &str = "00000000-0000-4000-8000-0000000c4a9e";

fn policy(name: &str) -> Value {
    json!({
        "apiVersion": "podmap.dev/v1alpha1", "kind": "PodPolicy", "metadata": {"name": name},
        "spec": {"namespaces": ["bench"], "podSelector": {"matchLabels": {"app": "bench"}},
                 "rules": [{"exec": {"paths": ["/opt/bench/forbidden"]}, "action": "kill"}]}
    })
}

fn pod(node: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench", "namespace": "bench", "uid": UID, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "bench", "image": "bench"}]},
        "status": {"phase": "Running"}
    })
}

/// Waits until the container's membership in `name` is `member`; returns the time since `since`.
fn until_member(
    maps: &SharedMaps,
    key: CgroupKey,
    name: &str,
    member: bool,
    since: Instant,
) -> anyhow::Result<Duration> {
    let id = policy_id(name);
    loop {
        if maps.policy.memberships().contains(&(id, key)) == member {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(30) {
            bail!("policy {name}: membership never became {member}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A change made right after the previous one was seen would always find podmapd at the same
/// point of its cycle (settling, looking, asleep until the next wake or its once-a-second
/// look). Each change waits a different part of a quarter second first, so the figures spread
/// over that phase as real changes do.
fn dephase(round: u32, step: usize) {
    let ms = (u64::from(round) * 97 + step as u64 * 41) % 250;
    std::thread::sleep(Duration::from_millis(ms));
}

/// Times `rounds` rounds of every step and prints their medians and maxima.
pub fn run(rounds: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting a tokio runtime")?;
    let server = runtime.block_on(TestApiServer::start());
    let tmp = tempfile::tempdir()?;
    let policy_dir = tempfile::tempdir()?;
    let kc = kubeconfig(tmp.path(), &server.url());
    let daemon = Daemon::start_with(DaemonOptions {
        env: vec![
            ("PODMAP_KUBECONFIG".into(), kc.display().to_string()),
            (
                "PODMAP_POLICY_DIR".into(),
                policy_dir.path().display().to_string(),
            ),
        ],
        ..Default::default()
    });
    server.apply_object(Resource::Pods, pod(&daemon.node, "bench"));
    daemon.wait_status("the pod cached", |st| st["pods_cached"] == 1);

    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-bench-policy-changes")
        .context("creating the container's cgroup")?;
    let mut maps = SharedMaps::open(&daemon.pins.path)?;
    let runtime_pod = TestPod {
        namespace: "bench",
        name: "bench",
        uid: UID,
        labels: &[("app", "bench")],
    };
    cg.map_container(&mut maps, &runtime_pod, "bench")?;
    let key = CgroupKey::v2(cg.id());

    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    for round in 0..rounds {
        let file_policy = format!("bench-file-{round}");
        let file = policy_dir.path().join(format!("{file_policy}.yaml"));
        dephase(round, 0);
        let t = Instant::now();
        let text = serde_json::to_string(&policy(&file_policy))?; // JSON is YAML
        std::fs::write(&file, text)?;
        samples[0].push(until_member(&maps, key, &file_policy, true, t)?);
        dephase(round, 1);
        let t = Instant::now();
        std::fs::remove_file(&file)?;
        samples[1].push(until_member(&maps, key, &file_policy, false, t)?);

        let name = format!("bench-resource-{round}");
        dephase(round, 2);
        let t = Instant::now();
        server.apply_object(Resource::PodPolicies, policy(&name));
        samples[2].push(until_member(&maps, key, &name, true, t)?);
        dephase(round, 3);
        let t = Instant::now();
        server.apply_object(Resource::Pods, pod(&daemon.node, "other"));
        samples[3].push(until_member(&maps, key, &name, false, t)?);
        dephase(round, 4);
        let t = Instant::now();
        server.apply_object(Resource::Pods, pod(&daemon.node, "bench"));
        samples[4].push(until_member(&maps, key, &name, true, t)?);
        dephase(round, 5);
        let t = Instant::now();
        server.delete_object(Resource::PodPolicies, "", &name);
        samples[5].push(until_member(&maps, key, &name, false, t)?);
    }

    println!("\npolicy changes reaching a running container's kernel membership ({rounds} rounds)");
    println!(
        "{:<18} {:>10} {:>10} {:>8}",
        "change", "median", "max", "target"
    );
    let mut worst = Duration::ZERO;
    for (step, mut times) in STEPS.iter().zip(samples) {
        times.sort();
        let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
        worst = worst.max(max);
        println!(
            "{step:<18} {:>8.0}ms {:>8.0}ms {:>7}s",
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            TARGET.as_secs()
        );
    }
    println!(
        "target: every change within {}s: max {:.0}ms {}",
        TARGET.as_secs(),
        worst.as_secs_f64() * 1e3,
        if worst <= TARGET { "PASS" } else { "MISS" }
    );
    Ok(())
}
