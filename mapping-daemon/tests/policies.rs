//! Policies against the real kernel, without a container runtime: container records written
//! through the bpf/ API stand in for the runtime plugins. (The suites with containerd and the
//! OCI hook show the same from the container's first instruction.)

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use podmap_bpf::testing::{TestCgroup, TestPod};
use podmap_bpf::SharedMaps;
use podmap_conformance::daemon::{cgroup2_mount, run_in_cgroup, Daemon, DaemonOptions};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    daemon: Daemon,
    policy_dir: tempfile::TempDir,
    maps: SharedMaps,
}

fn start() -> Fixture {
    let policy_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(DaemonOptions {
        env: vec![(
            "PODMAP_POLICY_DIR".into(),
            policy_dir.path().display().to_string(),
        )],
        ..Default::default()
    });
    let maps = SharedMaps::open(&daemon.pins.path).unwrap();
    Fixture {
        daemon,
        policy_dir,
        maps,
    }
}

/// A cgroup mapped as container `name` of a pod in `namespace` labelled app=web.
fn container(f: &mut Fixture, namespace: &str, name: &str) -> TestCgroup {
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-pol").unwrap();
    let pod = TestPod {
        namespace,
        name: "web-1",
        uid: "11111111-2222-3333-4444-555555555555",
        labels: &[("app", "web")],
    };
    cg.map_container(&mut f.maps, &pod, name).unwrap();
    cg
}

fn write_policy(dir: &Path, file: &str, body: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(tmp, dir.join(file)).unwrap();
}

fn policy(name: &str, namespaces: &str, rules: &str) -> String {
    format!(
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata:\n  name: {name}\nspec:\n  namespaces: [{namespaces}]\n  podSelector:\n    matchLabels: {{app: web}}\n  rules:\n{rules}"
    )
}

/// Runs argv in the cgroup until `pred(status)` holds (policies apply within a moment).
fn eventually(
    cg: &TestCgroup,
    argv: &[&str],
    pred: impl Fn(std::process::ExitStatus) -> bool,
) -> (u32, std::process::ExitStatus) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (pid, st) = run_in_cgroup(&cg.path(), argv);
        if pred(st) {
            return (pid, st);
        }
        assert!(
            Instant::now() < deadline,
            "{argv:?} never reached the expected outcome, last {st:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn killed(st: std::process::ExitStatus) -> bool {
    st.signal() == Some(9)
}

fn pid_of(v: &Value) -> u64 {
    v["process"]["pid"].as_u64().unwrap_or(0)
}

#[test]
fn exec_kill_applies_to_selected_pods_only_and_follows_policy_changes() {
    let mut f = start();
    let selected = container(&mut f, "prod", "nginx");
    let other_ns = container(&mut f, "dev", "nginx");
    let mut stream = f.daemon.events(r#"{"types": ["policy", "exec"]}"#);
    // Runs freely before any policy.
    assert!(run_in_cgroup(&selected.path(), &["/bin/true"]).1.success());

    write_policy(
        f.policy_dir.path(),
        "p.yaml",
        &policy(
            "no-true",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    let (pid, _) = eventually(&selected, &["/bin/true"], killed);
    let events = stream.until(WAIT, |v| v["type"] == "policy" && pid_of(v) == pid as u64);
    let ev = events.last().unwrap();
    assert_eq!(ev["policy"]["name"], "no-true");
    assert_eq!(ev["policy"]["action"], "kill");
    assert_eq!(ev["policy"]["mode"], "kill");
    assert_eq!(ev["policy"]["rule"], "exec");
    assert_eq!(ev["policy"]["path"], "/bin/true");
    assert_eq!(ev["attribution"], "container");
    assert_eq!(ev["pod"]["namespace"], "prod");
    assert!(
        !events.iter().any(|v| v["type"] == "exec"
            && pid_of(v) == pid as u64
            && v["process"]["binary"] == "/bin/true"),
        "a killed exec has no exec event"
    );
    // `podmap containers` names each container's policies.
    let policies_of = |cg: &TestCgroup| {
        f.daemon
            .containers()
            .into_iter()
            .find(|r| r["cgroup_id"] == cg.id())
            .map(|r| r["policies"].clone())
    };
    assert_eq!(policies_of(&selected), Some(serde_json::json!(["no-true"])));
    assert_eq!(policies_of(&other_ns), Some(serde_json::json!([])));
    // The same binary in a namespace the policy does not select runs freely.
    assert!(run_in_cgroup(&other_ns.path(), &["/bin/true"]).1.success());
    // Other binaries in the selected pod run.
    assert!(run_in_cgroup(&selected.path(), &["/bin/echo", "ok"])
        .1
        .success());

    // Widening the policy reaches the running container; removing it frees both.
    write_policy(
        f.policy_dir.path(),
        "p.yaml",
        &policy(
            "no-true",
            "prod, dev",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    eventually(&other_ns, &["/bin/true"], killed);
    std::fs::remove_file(f.policy_dir.path().join("p.yaml")).unwrap();
    eventually(&selected, &["/bin/true"], |s| s.success());
    eventually(&other_ns, &["/bin/true"], |s| s.success());
    assert_eq!(policies_of(&selected), Some(serde_json::json!([])));
}

#[test]
fn open_rules_stop_reads_of_named_paths_in_selected_pods() {
    let mut f = start();
    let selected = container(&mut f, "prod", "app");
    let other_ns = container(&mut f, "dev", "app");
    // A directory of its own: a prefix as broad as /tmp would also catch the dynamic loader
    // probing library paths there (cargo's LD_LIBRARY_PATH), which is a real hit but not this one.
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let path = secret.display().to_string();
    let dir = secrets.path().display().to_string();
    write_policy(
        f.policy_dir.path(),
        "open.yaml",
        &policy(
            "no-secret",
            "prod",
            &format!("  - open: {{prefixes: [{dir}], access: read}}\n    action: kill\n"),
        ),
    );
    let mut stream = f.daemon.events(r#"{"types": ["policy"]}"#);
    let (pid, _) = eventually(&selected, &["/bin/cat", &path], killed);
    let events = stream.until(WAIT, |v| pid_of(v) == pid as u64);
    let ev = events.last().unwrap();
    assert_eq!(ev["policy"]["rule"], "open");
    assert_eq!(ev["policy"]["path"], path.as_str());
    assert_eq!(ev["policy"]["name"], "no-secret");
    assert!(
        run_in_cgroup(&other_ns.path(), &["/bin/cat", &path])
            .1
            .success(),
        "other namespaces read freely"
    );
    // Writing is not reading: the rule is for reads.
    let (_, st) = run_in_cgroup(
        &selected.path(),
        &["/bin/sh", "-c", &format!("echo x > {path}")],
    );
    assert!(st.success(), "{st:?}");
    // Outside the prefix (component-wise): not matched.
    assert!(
        run_in_cgroup(&selected.path(), &["/bin/cat", "/etc/hostname"])
            .1
            .success()
    );
}

#[test]
fn deny_without_lsm_falls_back_as_the_policy_says_and_status_tells() {
    let mut f = start();
    let cg = container(&mut f, "prod", "app");
    write_policy(
        f.policy_dir.path(),
        "deny.yaml",
        &(policy(
            "deny-kill",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: deny\n    fallback: kill\n",
        ) + "---\n"
            + &policy(
                "deny-audit",
                "prod",
                "  - exec: {paths: [/bin/echo]}\n    action: deny\n",
            )),
    );
    let status = f.daemon.status();
    let mode = status["enforcement_mode"].as_str().unwrap().to_string();
    let mut stream = f.daemon.events(r#"{"types": ["policy"]}"#);
    if mode == "lsm" {
        // Where BPF-LSM loads, deny returns EPERM: the exec fails, the process is not killed.
        let (_, st) = eventually(&cg, &["/bin/true"], |s| !s.success());
        assert!(!killed(st));
        return;
    }
    assert!(mode.starts_with("fallback (BPF-LSM unavailable"), "{mode}");
    let (pid, _) = eventually(&cg, &["/bin/true"], killed);
    let ev = stream
        .until(WAIT, |v| pid_of(v) == pid as u64)
        .pop()
        .unwrap();
    assert_eq!(ev["policy"]["action"], "deny");
    assert_eq!(ev["policy"]["mode"], "kill");
    // Without a fallback, deny is audited: the exec runs, the event says audit.
    let (pid, st) = run_in_cgroup(&cg.path(), &["/bin/echo", "still runs"]);
    assert!(st.success());
    let ev = stream
        .until(WAIT, |v| pid_of(v) == pid as u64)
        .pop()
        .unwrap();
    assert_eq!(ev["policy"]["name"], "deny-audit");
    assert_eq!(ev["policy"]["mode"], "audit");
    let status = f.daemon.status();
    assert!(
        status["shared_counters"]["kernel_policy_deny_audited"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );
}

#[test]
fn a_malformed_policy_is_refused_by_name_and_active_ones_stay() {
    let mut f = start();
    let cg = container(&mut f, "prod", "app");
    write_policy(
        f.policy_dir.path(),
        "good.yaml",
        &policy(
            "good",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    eventually(&cg, &["/bin/true"], killed);
    // Break the file: refused with file, field and reason; its policy stays active.
    write_policy(
        f.policy_dir.path(),
        "good.yaml",
        &policy(
            "good",
            "prod",
            "  - exec: {paths: [bin/true]}\n    action: kill\n",
        ),
    );
    write_policy(f.policy_dir.path(), "bad.yaml", "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: x}\nspec: {rules: [{exec: {paths: [/x]}, action: explode}]}\n");
    let deadline = Instant::now() + WAIT;
    loop {
        let st = f.daemon.status();
        let errors: Vec<String> = st["policies"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_string())
            .collect();
        if errors.len() == 2 {
            assert!(
                errors.iter().any(|e| e.contains("good.yaml")
                    && e.contains("spec.rules[0].exec.paths[0]")
                    && e.contains("absolute")),
                "{errors:?}"
            );
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("bad.yaml") && e.contains("explode")),
                "{errors:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "errors not reported: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        killed(run_in_cgroup(&cg.path(), &["/bin/true"]).1),
        "the valid version stays active"
    );
}
