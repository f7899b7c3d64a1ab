//! Policies against the real kernel, without a container runtime: container records written
//! through the bpf/ API stand in for the runtime plugins. (The suites with containerd and the
//! OCI hook show the same from the container's first instruction.)

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use podmap_bpf::layout::Counter;
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
    if podmap_bpf::testing::requires_root() {
        return;
    }
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
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut f = start();
    let selected = container(&mut f, "prod", "app");
    let other_ns = container(&mut f, "dev", "app");
    let (_secrets, path) = no_secret_policy(&f);
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
    if podmap_bpf::testing::requires_root() {
        return;
    }
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
    if podmap_bpf::testing::requires_root() {
        return;
    }
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

fn policy_errors(st: &Value) -> Vec<String> {
    st["policies"]["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A cgroup mapped as container `name` of a pod in `namespace`, pod uid of its own.
fn container_in(f: &mut Fixture, namespace: &str, uid: &str) -> TestCgroup {
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-pol").unwrap();
    let pod = TestPod {
        namespace,
        name: "web-1",
        uid,
        labels: &[("app", "web")],
    };
    cg.map_container(&mut f.maps, &pod, "app").unwrap();
    cg
}

/// Issue 12, item 1: one path with more rule references than a kernel entry holds used to make
/// podmapd give up on the whole rule table, so no policy change reached the kernel again. Now the
/// policy that overflows is refused (and named), the others act, and later changes still apply.
#[test]
fn seventeen_policies_on_one_path_refuse_one_and_the_others_act() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut f = start();
    let first = container_in(&mut f, "ns-01", "00000000-0000-0000-0000-000000000001");
    let last = container_in(&mut f, "ns-17", "00000000-0000-0000-0000-000000000017");
    for i in 1..=17 {
        let name = format!("ns-{i:02}");
        write_policy(
            f.policy_dir.path(),
            &format!("{name}.yaml"),
            &policy(
                &name,
                &name,
                "  - exec: {paths: [/bin/true]}\n    action: kill\n",
            ),
        );
    }
    eventually(&first, &["/bin/true"], killed);
    let st = f
        .daemon
        .wait_status("16 policies loaded, ns-17 refused", |st| {
            st["policies"]["loaded"].as_array().map_or(0, Vec::len) == 16
                && !policy_errors(st).is_empty()
        });
    let errors = policy_errors(&st);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("ns-17.yaml")
            && errors[0].contains("\"/bin/true\"")
            && errors[0].contains("17 rules")
            && errors[0].contains("holds 16"),
        "{errors:?}"
    );
    // The refused policy does not act (and status said so); the others do.
    assert!(run_in_cgroup(&last.path(), &["/bin/true"]).1.success());
    // A later change still reaches the kernel.
    write_policy(
        f.policy_dir.path(),
        "later.yaml",
        &policy(
            "later",
            "ns-17",
            "  - exec: {paths: [/bin/echo]}\n    action: kill\n",
        ),
    );
    eventually(&last, &["/bin/echo", "x"], killed);
}

/// Sets podmapd's soft limit on open files to 0: every open fails (EMFILE: the lowest free fd
/// is never below the limit) until [`restore_fds`] puts back what this returns. The hard limit
/// stays.
fn starve_fds(pid: u32) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall on another process; `old` is a valid out-pointer.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above; `none` is a valid in-pointer.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &none, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    old
}

fn restore_fds(pid: u32, old: libc::rlimit) {
    // SAFETY: plain syscall on another process; `old` is a valid in-pointer.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Issue 12, item 2: a policy directory that cannot be read (replaced by a file, too many open
/// files) used to read as an empty one: podmapd cleared the rule tables and every membership.
/// Now the last good set stays in force, and the failure is shown and counted.
#[test]
fn a_policy_dir_that_cannot_be_read_keeps_the_policies_in_force() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut f = start();
    let cg = container(&mut f, "prod", "app");
    let dir = f.policy_dir.path().to_path_buf();
    write_policy(
        &dir,
        "p.yaml",
        &policy(
            "no-true",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    eventually(&cg, &["/bin/true"], killed);
    f.daemon.wait_policies(1);

    // The directory replaced by a file.
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    // Several reload ticks later, the policy still acts.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        killed(run_in_cgroup(&cg.path(), &["/bin/true"]).1),
        "the policy stopped acting when its directory became a file"
    );
    let st = f
        .daemon
        .wait_status("the unreadable directory reported", |st| {
            policy_errors(st)
                .iter()
                .any(|e| e.contains("Not a directory") && e.contains("stay active"))
        });
    assert!(
        st["policies"]["read_failures"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert_eq!(
        st["policies"]["loaded"].as_array().unwrap().len(),
        1,
        "{st}"
    );
    assert!(st["policies"]["memberships"].as_u64().unwrap() >= 1, "{st}");
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    f.daemon.wait_status("the directory read again", |st| {
        policy_errors(st).is_empty()
    });

    // Too many open files: podmapd cannot even open the directory.
    let pid = f.daemon.child.id();
    let before = f.daemon.status()["policies"]["read_failures"]
        .as_u64()
        .unwrap();
    let old = starve_fds(pid);
    std::thread::sleep(Duration::from_millis(1500));
    let still_killed = killed(run_in_cgroup(&cg.path(), &["/bin/true"]).1);
    restore_fds(pid, old);
    assert!(
        still_killed,
        "the policy stopped acting while podmapd could not read its directory"
    );
    let st = f.daemon.wait_status("the failed reads counted", |st| {
        st["policies"]["read_failures"].as_u64().unwrap_or(0) > before
    });
    assert_eq!(
        st["policies"]["loaded"].as_array().unwrap().len(),
        1,
        "{st}"
    );
    assert!(killed(run_in_cgroup(&cg.path(), &["/bin/true"]).1));
}

/// A prefix for reads and an exact path under it for writes, in two policies: the kernel finds
/// the exact entry for that path, so it must carry the read prefix's rule too (it did not when
/// open entries were closed over prefixes per access kind).
#[test]
fn a_read_prefix_still_acts_on_a_path_another_policy_names_for_writes() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut f = start();
    let cg = container(&mut f, "prod", "app");
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let (dir, path) = (
        secrets.path().display().to_string(),
        secret.display().to_string(),
    );
    write_policy(
        f.policy_dir.path(),
        "read.yaml",
        &policy(
            "no-reads",
            "prod",
            &format!("  - open: {{prefixes: [{dir}], access: read}}\n    action: kill\n"),
        ),
    );
    write_policy(
        f.policy_dir.path(),
        "write.yaml",
        &policy(
            "audit-writes",
            "prod",
            &format!("  - open: {{paths: [{path}], access: write}}\n    action: audit\n"),
        ),
    );
    f.daemon.wait_policies(2);
    eventually(&cg, &["/bin/cat", &path], killed);
}

/// Memberships of containers removed while podmapd was down (their records swept by a plugin
/// meanwhile) are removed once podmapd sees them without a record, and only those: before, they
/// stayed for good, until the membership map filled and new containers could not join their
/// policies.
#[test]
fn memberships_without_a_record_are_removed_and_the_others_kept() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    use podmap_bpf::testing::PinDir;
    use podmap_cgroup::{CgroupId, CgroupIds, CgroupKey};
    use podmap_policy::policy_id;

    // The node as podmapd finds it at start: one container with its record and membership, and
    // one membership whose container went while podmapd was away.
    let pins = PinDir::new("podmap-test-orphans");
    let mut maps = SharedMaps::open(&pins.path).unwrap();
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-test-orphan").unwrap();
    let pod = TestPod {
        namespace: "prod",
        name: "web-1",
        uid: "11111111-2222-3333-4444-555555555555",
        labels: &[("app", "web")],
    };
    cg.map_container(&mut maps, &pod, "nginx").unwrap();
    let id = policy_id("no-sh");
    let live = CgroupKey::v2(cg.id());
    maps.policy
        .add_memberships(
            &CgroupIds {
                v2: Some(CgroupId(cg.id())),
                v1: None,
            },
            &[id],
        )
        .unwrap();
    let gone = CgroupKey::v2(u64::MAX - 7);
    maps.policy
        .add_memberships(
            &CgroupIds {
                v2: Some(gone.id),
                v1: None,
            },
            &[id],
        )
        .unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    write_policy(
        policy_dir.path(),
        "no-sh.yaml",
        &policy(
            "no-sh",
            "prod",
            "  - exec: {paths: [/bin/sh]}\n    action: kill\n",
        ),
    );

    let daemon = Daemon::start_with(DaemonOptions {
        pins: Some(pins.path.clone()),
        env: vec![(
            "PODMAP_POLICY_DIR".into(),
            policy_dir.path().display().to_string(),
        )],
        ..Default::default()
    });
    let st = daemon.wait_status("the orphaned membership removed", |st| {
        st["policies"]["orphan_memberships_removed"] == 1
    });
    let members = maps.policy.memberships();
    assert!(members.contains(&(id, live)), "{members:?}\n{st:#}");
    assert!(!members.contains(&(id, gone)), "{members:?}");
    assert_eq!(st["policies"]["memberships"], 1, "{st:#}");

    // Once the sweeps have nothing to find they skip their walks; a membership written while
    // podmapd runs (a plugin that died before writing its record) is counted, so it is found
    // and goes too.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let stray = CgroupKey::v2(u64::MAX - 8);
    maps.policy
        .add_memberships(
            &CgroupIds {
                v2: Some(stray.id),
                v1: None,
            },
            &[id],
        )
        .unwrap();
    let st = daemon.wait_status("the membership written later without a record", |st| {
        st["policies"]["orphan_memberships_removed"] == 2
    });
    let members = maps.policy.memberships();
    assert!(!members.contains(&(id, stray)), "{members:?}\n{st:#}");
    assert!(members.contains(&(id, live)), "{members:?}");
}

/// `depth` cgroups nested one below the other under `top`: `<top>/d1/d2/.../d<depth>`. The
/// deepest is last; dropping `top` removes them all.
fn nest(top: &TestCgroup, depth: usize) -> Vec<TestCgroup> {
    let mut chain: Vec<TestCgroup> = vec![];
    for i in 1..=depth {
        let next = chain.last().unwrap_or(top).child(&format!("d{i}")).unwrap();
        chain.push(next);
    }
    chain
}

/// Runs argv in `cg`, asserts the kernel killed it, and returns the policy event, which must
/// name `policy` and the container mapped at `container` while carrying the process's own
/// cgroup id.
fn killed_and_attributed(
    f: &Fixture,
    cg: &TestCgroup,
    container: &TestCgroup,
    argv: &[&str],
    policy: &str,
    what: &str,
) -> Value {
    let mut stream = f.daemon.events(r#"{"types": ["policy"]}"#);
    let (pid, st) = run_in_cgroup(&cg.path(), argv);
    assert!(
        killed(st),
        "{what}: {argv:?} ran ({st:?}) in {}",
        cg.path().display()
    );
    let ev = stream
        .until(WAIT, |v| pid_of(v) == pid as u64)
        .pop()
        .unwrap();
    assert_eq!(ev["policy"]["name"], policy, "{what}: {ev}");
    assert_eq!(ev["policy"]["mode"], "kill", "{what}: {ev}");
    assert_eq!(ev["attribution"], "container", "{what}: {ev}");
    assert_eq!(
        ev["container"]["id"],
        format!("{:064x}", container.id()),
        "{what}: {ev}"
    );
    assert_eq!(ev["process"]["cgroup_id"], cg.id(), "{what}: {ev}");
    ev
}

/// Issue 12, item 3: the kernel used to look for a process's container by walking up at most 16
/// levels from the process's own cgroup, so a container allowed to write its cgroupfs could nest
/// itself 16 or more levels down and no exec or open rule applied. The container is now found
/// from the root side: any depth below it is covered. Depths around the old bound and well past
/// it, below a container that itself sits a few levels down (as kubepods containers do).
#[test]
fn rules_act_at_any_depth_below_a_selected_container() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut f = start();
    let top = TestCgroup::new(&cgroup2_mount(), "podmap-test-deep").unwrap();
    // Each fixture removes its subtree on drop: keep the intermediate levels alive.
    let kubepods = top.child("kubepods").unwrap();
    let pod_cg = kubepods.child("pod").unwrap();
    let container = pod_cg.child("ctr").unwrap();
    let pod = TestPod {
        namespace: "prod",
        name: "web-1",
        uid: "11111111-2222-3333-4444-555555555555",
        labels: &[("app", "web")],
    };
    container.map_container(&mut f.maps, &pod, "app").unwrap();
    let chain = nest(&container, 24);
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let (dir, path) = (
        secrets.path().display().to_string(),
        secret.display().to_string(),
    );
    write_policy(
        f.policy_dir.path(),
        "deep.yaml",
        &(policy(
            "no-true",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ) + "---\n"
            + &policy(
                "no-echo",
                "prod",
                "  - exec: {paths: [/bin/echo]}\n    action: deny\n    fallback: kill\n",
            )
            + "---\n"
            + &policy(
                "no-secret",
                "prod",
                &format!("  - open: {{prefixes: [{dir}], access: read}}\n    action: kill\n"),
            )),
    );
    // In force for the container itself first.
    eventually(&container, &["/bin/true"], killed);
    eventually(&container, &["/bin/cat", &path], killed);
    for depth in [1, 14, 15, 16, 17, 20, 24] {
        let cg = &chain[depth - 1];
        let what = format!("{depth} levels below the container");
        killed_and_attributed(&f, cg, &container, &["/bin/true"], "no-true", &what);
        killed_and_attributed(&f, cg, &container, &["/bin/cat", &path], "no-secret", &what);
        if f.daemon.status()["enforcement_mode"] != "lsm" {
            // deny acts as its fallback here; where BPF-LSM loads it refuses the exec instead.
            killed_and_attributed(&f, cg, &container, &["/bin/echo", "x"], "no-echo", &what);
        }
        // Other binaries and paths still run there.
        assert!(run_in_cgroup(&cg.path(), &["/bin/cat", "/etc/hostname"])
            .1
            .success());
    }

    // The guarantee's edge: a container at level 16 (PODMAP_MAX_CONTAINER_LEVEL, podmap.h; `top`
    // is level 1) is found 20 levels below it too.
    let levels = nest(&top, 15);
    let edge = levels.last().unwrap();
    edge.map_container(&mut f.maps, &pod, "edge").unwrap();
    eventually(edge, &["/bin/true"], killed);
    let below = nest(edge, 20);
    let what = "20 levels below a container at level 16";
    killed_and_attributed(
        &f,
        below.last().unwrap(),
        edge,
        &["/bin/true"],
        "no-true",
        what,
    );
}

/// The same on the v1 path (hosts where containers are keyed by the tracked v1 controller's id):
/// a v1-only container in the memory hierarchy, execs 16 and 20 levels below it.
#[test]
fn rules_act_at_any_depth_below_a_v1_only_container() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let memory = Path::new("/sys/fs/cgroup/memory");
    if !memory.join("cgroup.procs").exists() {
        eprintln!("no cgroup v1 memory hierarchy on this host: nothing to check");
        return;
    }
    let mut f = start();
    let top = TestCgroup::new(memory, "podmap-test-deep-v1").unwrap();
    // Each fixture removes its subtree on drop: keep the intermediate levels alive.
    let kubepods = top.child("kubepods").unwrap();
    let pod_cg = kubepods.child("pod").unwrap();
    let container = pod_cg.child("ctr").unwrap();
    let meta = podmap_bpf::ContainerMeta {
        container_id: podmap_bpf::ContainerId(format!("{:064x}", container.id())),
        name: "app".into(),
        pod_uid: Some(podmap_bpf::PodUid(
            "11111111-2222-3333-4444-555555555555".into(),
        )),
        pod_name: "web-1".into(),
        namespace: "prod".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        runtime: "test".into(),
        ..Default::default()
    };
    let ids = podmap_cgroup::CgroupIds {
        v2: None,
        v1: Some(podmap_cgroup::CgroupId(container.id())),
    };
    f.maps
        .records
        .insert(
            &ids,
            &meta,
            podmap_bpf::RecordFlags::default(),
            podmap_bpf::Writer::Test,
        )
        .unwrap();
    let chain = nest(&container, 20);
    write_policy(
        f.policy_dir.path(),
        "deep.yaml",
        &policy(
            "no-true",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    eventually(&container, &["/bin/true"], killed);
    for depth in [1, 15, 16, 20] {
        let cg = &chain[depth - 1];
        let what = format!("v1, {depth} levels below the container");
        killed_and_attributed(&f, cg, &container, &["/bin/true"], "no-true", &what);
        assert!(run_in_cgroup(&cg.path(), &["/bin/echo", "x"]).1.success());
    }
}

/// Issue 12 item 8: the programs' links are pinned with the maps, so a kill policy keeps acting
/// while podmapd is down (SIGKILL: no chance to clean up) and after it restarts on the same pins,
/// which adopts the running programs; what the ring buffer could not hold meanwhile is counted
/// and shown by the restarted podmapd.
#[test]
fn a_kill_policy_keeps_acting_while_podmapd_is_killed_and_after_it_restarts() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut f = start();
    let selected = container(&mut f, "prod", "nginx");
    write_policy(
        f.policy_dir.path(),
        "p.yaml",
        &policy(
            "no-true",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    eventually(&selected, &["/bin/true"], killed);

    sigkill(&mut f.daemon);
    let (_, st) = run_in_cgroup(&selected.path(), &["/bin/true"]);
    assert!(
        killed(st),
        "the selected exec ran while podmapd was down: {st:?}"
    );
    assert!(run_in_cgroup(&selected.path(), &["/bin/echo", "ok"])
        .1
        .success());

    // Nobody reads the ring buffer now: fill it with cgroup events until the kernel drops one.
    let dropped_before = f.maps.counters.get(Counter::RingbufDropped);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut made = 0u64;
    while f.maps.counters.get(Counter::RingbufDropped) == dropped_before {
        assert!(
            Instant::now() < deadline,
            "no ring-buffer drop after {made} cgroups while podmapd was down"
        );
        for _ in 0..100 {
            let d = selected.path().join(format!("fill-{made}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::remove_dir(&d).unwrap();
            made += 1;
        }
    }
    let dropped = f.maps.counters.get(Counter::RingbufDropped);
    eprintln!("filled the ring with {made} cgroups: {dropped} dropped");

    let again = Daemon::start_with(DaemonOptions {
        pins: Some(f.daemon.pins.path.clone()),
        env: vec![(
            "PODMAP_POLICY_DIR".into(),
            f.policy_dir.path().display().to_string(),
        )],
        ..Default::default()
    });
    let st = again.status();
    eprintln!("restarted: {}", st["programs"]);
    assert_eq!(st["programs"]["links"], "adopted", "{st:#}");
    // What the ring held meanwhile was read at start, before any client could connect: counted.
    assert!(
        st["programs"]["backlog_read_at_start"].as_u64().unwrap() >= made,
        "{st:#}"
    );
    assert!(
        st["events_lost_kernel"].as_u64().unwrap() >= dropped,
        "drops while podmapd was down not shown: {dropped} dropped; {st:#}"
    );
    let mut stream = again.events(r#"{"types": ["policy"]}"#);
    let (pid, st) = run_in_cgroup(&selected.path(), &["/bin/true"]);
    assert!(killed(st), "not killed after the restart: {st:?}");
    stream.until(WAIT, |v| {
        pid_of(v) == pid as u64 && v["policy"]["name"] == "no-true"
    });
}

/// The links running the open rules' program `program` (pinned by podmapd's loader in `progs/`).
fn links_running(pins: &Path, program: &str) -> Vec<u32> {
    let prog = aya::programs::ProgramInfo::from_pin(pins.join("progs").join(program))
        .unwrap()
        .id();
    aya::programs::loaded_links()
        .flatten()
        .filter(|l| l.program_id() == prog)
        .map(|l| l.id())
        .collect()
}

/// A file in a directory of its own, and policy `no-secret` (in `open.yaml`) killing reads of
/// that directory in namespace prod: the directory (removed when dropped) and the file's path.
/// A directory of its own because a prefix as broad as /tmp would also catch the dynamic loader
/// probing library paths there (cargo's LD_LIBRARY_PATH), a real hit but not the one tested.
fn no_secret_policy(f: &Fixture) -> (tempfile::TempDir, String) {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    write_policy(
        f.policy_dir.path(),
        "open.yaml",
        &policy(
            "no-secret",
            "prod",
            &format!(
                "  - open: {{prefixes: [{}], access: read}}\n    action: kill\n",
                secrets.path().display()
            ),
        ),
    );
    (secrets, secret.display().to_string())
}

/// What the kernel says of the link pinned at `pin`, if one is.
fn pinned_link_info(pin: &Path) -> Option<aya::programs::links::LinkInfo> {
    let link = aya::programs::links::PinnedLink::from_pin(pin).ok()?;
    aya::programs::links::FdLink::from(link).info().ok()
}

/// The id of the link pinned at `pin`.
fn pinned_link(pin: &Path) -> Option<u32> {
    pinned_link_info(pin).map(|l| l.id())
}

fn link_exists(id: u32) -> bool {
    aya::programs::loaded_links()
        .flatten()
        .any(|l| l.id() == id)
}

fn open_tracepoints(st: &Value) -> Vec<String> {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    };
    let open = names(&st["policies"]["open_tracepoints"]);
    let attached = names(&st["programs"]["attached"]);
    assert!(attached.iter().any(|p| p == "podmap_exec"), "{st:#}");
    assert!(open.iter().all(|p| attached.contains(p)), "{st:#}");
    open
}

/// Anything attached to a syscall tracepoint sends every syscall on the node through the
/// kernel's slow path, so the open rules' programs are attached only while open rules are in
/// force: before the first open rule acts, through a podmapd restart (the same link, adopted),
/// and detached once the last open rule goes, while the exec rules keep acting.
#[test]
fn open_tracepoints_are_attached_only_while_open_rules_are_in_force() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let mut f = start();
    let selected = container(&mut f, "prod", "app");
    let pins = f.daemon.pins.path.clone();
    let link_pin = pins.join("links/podmap_openat");
    let st = f.daemon.status();
    assert!(open_tracepoints(&st).is_empty(), "{st:#}");
    assert!(links_running(&pins, "podmap_openat").is_empty());
    assert!(!link_pin.exists());

    // An exec rule needs none of them.
    write_policy(
        f.policy_dir.path(),
        "exec.yaml",
        &policy(
            "no-true",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    eventually(&selected, &["/bin/true"], killed);
    assert!(links_running(&pins, "podmap_openat").is_empty());

    let (_secrets, path) = no_secret_policy(&f);
    eventually(&selected, &["/bin/cat", &path], killed);
    let st = f.daemon.status();
    // Each of the three whose tracepoint this kernel has: a rule passed by openat2 is no rule.
    let mut links = vec![];
    for (program, point) in [
        ("podmap_openat", "sys_enter_openat"),
        ("podmap_openat2", "sys_enter_openat2"),
        ("podmap_open", "sys_enter_open"),
    ] {
        let has = Path::new("/sys/kernel/tracing/events/syscalls")
            .join(point)
            .is_dir();
        assert!(has || program != "podmap_openat");
        assert_eq!(
            open_tracepoints(&st).contains(&program.to_string()),
            has,
            "{program}: {st:#}"
        );
        let pinned = pinned_link(&pins.join("links").join(program));
        assert_eq!(pinned.is_some(), has, "{program}");
        if let Some(link) = pinned {
            assert_eq!(links_running(&pins, program), [link], "{program}: {st:#}");
            links.push(link);
        }
    }
    let link = pinned_link(&link_pin).expect("the open rules' link pinned");

    // podmapd killed: the rule keeps acting; started again, it adopts the very link.
    sigkill(&mut f.daemon);
    let (_, st) = run_in_cgroup(&selected.path(), &["/bin/cat", &path]);
    assert!(killed(st), "read while podmapd was down: {st:?}");
    let again = Daemon::start_with(DaemonOptions {
        pins: Some(pins.clone()),
        env: vec![(
            "PODMAP_POLICY_DIR".into(),
            f.policy_dir.path().display().to_string(),
        )],
        ..Default::default()
    });
    let st = again.status();
    assert_eq!(st["programs"]["links"], "adopted", "{st:#}");
    assert!(
        open_tracepoints(&st).contains(&"podmap_openat".to_string()),
        "{st:#}"
    );
    assert_eq!(pinned_link(&link_pin), Some(link), "{st:#}");

    // The last open rule gone: detached, its pin removed; the exec rule still acts.
    std::fs::remove_file(f.policy_dir.path().join("open.yaml")).unwrap();
    let st = again.wait_status("the open tracepoints detached", |st| {
        open_tracepoints(st).is_empty()
    });
    for link in &links {
        assert!(!link_exists(*link), "link {link} still exists: {st:#}");
    }
    assert!(!link_pin.exists());
    assert!(links_running(&pins, "podmap_openat").is_empty(), "{st:#}");
    assert!(run_in_cgroup(&selected.path(), &["/bin/cat", &path])
        .1
        .success());
    assert!(killed(run_in_cgroup(&selected.path(), &["/bin/true"]).1));
    assert_eq!(st["policies"]["open_tracepoint_failures"], 0, "{st:#}");
}

/// SIGKILLs podmapd and waits until it is dead (a zombie: its fds are closed), leaving it unreaped
/// so the fixture's teardown cannot signal another process that took its pid.
fn sigkill(d: &mut Daemon) {
    d.child.kill().unwrap();
    let stat = format!("/proc/{}/stat", d.child.id());
    let deadline = Instant::now() + WAIT;
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        if s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        {
            return;
        }
        assert!(Instant::now() < deadline, "podmapd did not die: {s}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The id of the program the pinned link `name` runs.
fn pinned_program(pins: &Path, name: &str) -> u32 {
    pinned_link_info(&pins.join("links").join(name))
        .expect("pinned link")
        .program_id()
}

/// An upgrade, or other settings: the restarted podmapd loads other programs (here other
/// `.rodata`: another v1 controller) and replaces the pinned ones, attaching its own before it
/// detaches the old, so execs in a selected pod, run all along, are killed every one.
#[test]
fn a_podmapd_with_other_programs_replaces_the_pinned_ones_without_a_gap() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut f = start();
    let selected = container(&mut f, "prod", "nginx");
    write_policy(
        f.policy_dir.path(),
        "p.yaml",
        &policy(
            "no-true",
            "prod",
            "  - exec: {paths: [/bin/true]}\n    action: kill\n",
        ),
    );
    eventually(&selected, &["/bin/true"], killed);
    let old = pinned_program(&f.daemon.pins.path, "podmap_exec");
    // An open rule in force too: the replacement attaches its programs in the new set.
    let (_secrets, secret) = no_secret_policy(&f);
    eventually(&selected, &["/bin/cat", &secret], killed);
    let open_link = f.daemon.pins.path.join("links/podmap_openat");
    let old_open = pinned_link(&open_link).expect("the open rules' link pinned");

    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let (stop, path, secret) = (stop.clone(), selected.path(), secret.clone());
        std::thread::spawn(move || {
            let (mut runs, mut escaped) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                // The exec rule and the open rule, each without a gap.
                for argv in [&["/bin/true"][..], &["/bin/cat", &secret][..]] {
                    let (_, st) = run_in_cgroup(&path, argv);
                    runs += 1;
                    if !killed(st) {
                        escaped += 1;
                    }
                }
            }
            (runs, escaped)
        })
    };
    sigkill(&mut f.daemon);
    let again = Daemon::start_with(DaemonOptions {
        pins: Some(f.daemon.pins.path.clone()),
        env: vec![
            (
                "PODMAP_POLICY_DIR".into(),
                f.policy_dir.path().display().to_string(),
            ),
            ("PODMAP_V1_CONTROLLER".into(), "pids".into()),
        ],
        ..Default::default()
    });
    let st = again.status();
    // Execs after the swap too.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (runs, escaped) = looper.join().unwrap();
    eprintln!(
        "{runs} selected execs and opens through the replacement, {escaped} ran; overlap {} us",
        st["programs"]["overlap_us"]
    );
    assert_eq!(st["programs"]["links"], "replaced", "{st:#}");
    assert!(
        st["programs"]["replaced_because"]
            .as_str()
            .is_some_and(|r| r.contains("rodata")),
        "{st:#}"
    );
    assert!(st["programs"]["overlap_us"].is_u64(), "{st:#}");
    assert_eq!(
        escaped, 0,
        "{escaped} of {runs} selected execs and opens ran"
    );
    assert!(runs > 0);
    assert_ne!(pinned_program(&f.daemon.pins.path, "podmap_exec"), old);
    assert!(!f.daemon.pins.path.join("links_new").exists());
    let new_open = pinned_link(&open_link).expect("the open rules' link in the new set");
    assert_ne!(new_open, old_open);
    assert!(
        open_tracepoints(&st).contains(&"podmap_openat".to_string()),
        "{st:#}"
    );
    assert!(killed(
        run_in_cgroup(&selected.path(), &["/bin/cat", &secret]).1
    ));
    // The old generation is detached (no pin, no process holds it): freed.
    let deadline = Instant::now() + WAIT;
    while aya::programs::loaded_programs()
        .flatten()
        .any(|p| p.id() == old)
    {
        assert!(
            Instant::now() < deadline,
            "the replaced podmap_exec still loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
