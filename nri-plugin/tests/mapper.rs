//! The mapper on real cgroups and private pins, without a connection: POST_CREATE for runtimes
//! that have the cgroup then, systemd-notation paths, the /proc fallback, and what Synchronize
//! keeps and forgets.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Env, TestPod};
use podmap_bpf::layout::Counter;
use podmap_bpf::testing::TestCgroup;
use podmap_cgroup::CgroupKey;
use podmap_nri::mapper::{Backend, Mapper};
use podmap_nri_protocol::api::{ContainerState, LinuxPodSandbox, PodSandbox};
use podmap_nri_protocol::protobuf::MessageField;

fn mapper(env: &Env, grace: Duration) -> Mapper {
    let (backend, _counters, _report) = Backend::open(&env.settings(grace)).unwrap();
    Mapper::with_backend(backend)
}

fn latencies(m: &Mapper) -> u64 {
    let c = &m.backend().unwrap().registry.maps().counters;
    c.latency_histogram().iter().sum()
}

fn count(m: &Mapper, c: Counter) -> u64 {
    m.backend().unwrap().registry.maps().counters.get(c)
}

#[test]
fn post_create_maps_where_the_cgroup_exists_and_a_miss_is_no_failure() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let mut m = mapper(&env, Duration::from_secs(30));
    m.set_runtime("cri-o");
    let pod = TestPod::new("crio-pod");
    let c = pod.container("app");
    m.created(&pod.pod, &c);

    // containerd's order: no cgroup at POST_CREATE. Not a failure, nothing counted.
    m.post_created(&pod.pod, &c, Instant::now());
    assert_eq!(count(&m, Counter::NriFailures), 0);
    assert_eq!(count(&m, Counter::CgroupUnresolved), 0);
    assert_eq!(count(&m, Counter::NriMapped), 0);
    assert_eq!(m.pending(), 1);

    // CRI-O's order: the cgroup exists at POST_CREATE: mapped there, latency recorded once.
    let id = pod.run(&c);
    m.post_created(&pod.pod, &c, Instant::now());
    let maps = m.backend().unwrap().registry.maps();
    let meta = maps
        .records
        .meta(CgroupKey::v2(id))
        .unwrap()
        .expect("mapped at POST_CREATE");
    assert_eq!(meta.runtime, "cri-o");
    assert_eq!(latencies(&m), 1);
    // START rewrites the same record (idempotent) without a second latency sample.
    m.started(&pod.pod, &c, Instant::now()).unwrap();
    assert_eq!(count(&m, Counter::NriMapped), 2);
    assert_eq!(latencies(&m), 1);
    assert_eq!(m.pending(), 0);
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A systemd-style pod slice under the cgroup2 mount, removed on drop.
fn systemd_pod(mount: &Path) -> (TestCgroup, String) {
    // Slice names nest by their dashes: `a-b.slice` lives in `a.slice`.
    let top = format!(
        "pmt{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let slice = format!("{top}-pod.slice");
    std::fs::create_dir_all(mount.join(format!("{top}.slice/{slice}"))).unwrap();
    (
        TestCgroup {
            mount: mount.to_owned(),
            rel: format!("{top}.slice").into(),
        },
        slice,
    )
}

#[test]
fn systemd_notation_resolves_to_the_scope() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let mut m = mapper(&env, Duration::from_secs(30));
    let pod = TestPod::new("sd");
    let mount = pod.layout.unified.clone().unwrap();
    let (top, slice) = systemd_pod(&mount);
    let scope_dir = |id: &str| {
        let rel = format!("{}/{slice}/cri-containerd-{id}.scope", top.rel.display());
        std::fs::create_dir(mount.join(&rel)).unwrap();
        // Removed with `top`.
        let ino =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(mount.join(&rel)).unwrap());
        (rel, ino)
    };

    // The sandbox: only the parent slice is given; the scope is built from the sandbox id.
    let mut sd_pod: PodSandbox = pod.pod.clone();
    let mut linux = LinuxPodSandbox::new();
    linux.cgroup_parent = slice.clone();
    sd_pod.linux = MessageField::some(linux);
    let (sandbox_rel, sandbox_id) = scope_dir(&sd_pod.id);
    m.sandbox_started(&sd_pod).unwrap();

    let mut c = pod.container("svc");
    c.linux.mut_or_insert_default().cgroups_path = format!("{slice}:cri-containerd:{}", c.id);
    let (c_rel, c_id) = scope_dir(&c.id);
    m.created(&sd_pod, &c);
    m.started(&sd_pod, &c, Instant::now()).unwrap();

    let maps = m.backend().unwrap().registry.maps();
    let s = maps
        .records
        .meta(CgroupKey::v2(sandbox_id))
        .unwrap()
        .expect("sandbox mapped");
    assert!(s.sandbox);
    assert_eq!(s.cgroup_path, format!("/{sandbox_rel}"));
    let cm = maps
        .records
        .meta(CgroupKey::v2(c_id))
        .unwrap()
        .expect("container mapped");
    assert_eq!(cm.cgroup_path, format!("/{c_rel}"));
    assert_eq!(cm.name, "svc");
}

#[test]
fn the_process_cgroup_is_the_fallback_when_the_path_does_not_resolve() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let mut m = mapper(&env, Duration::from_secs(30));
    let pod = TestPod::new("fallback");
    let mut c = pod.container("odd");
    let id = pod.run(&c);
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let cg =
        pod.layout
            .unified
            .as_ref()
            .unwrap()
            .join(format!("{}/{}", pod.cgroup.rel.display(), c.id));
    std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).unwrap();
    c.linux.mut_or_insert_default().cgroups_path = "/not/where/it/is".into();
    c.pid = child.id();
    let res = m.started(&pod.pod, &c, Instant::now());
    let _ = child.kill();
    let _ = child.wait();
    res.unwrap();
    let meta = m
        .backend()
        .unwrap()
        .registry
        .maps()
        .records
        .meta(CgroupKey::v2(id))
        .unwrap()
        .expect("mapped through /proc/<pid>/cgroup");
    assert_eq!(meta.cgroup_path, pod.cgroup_path(&c));
}

/// A cgroups path that names another container's cgroup (a runtime's mistake, or forged) does
/// not take over that container's record: the process's own cgroup, where the kernel put it, is
/// the container's (podmap-cgroup's `resolve_container`, the hook's rule too).
#[test]
fn a_cgroups_path_the_process_is_not_in_loses_to_the_process() {
    let env = Env::new();
    let mut m = mapper(&env, Duration::from_secs(30));
    let pod = TestPod::new("forged");
    let victim = pod.container("victim");
    let victim_id = pod.run(&victim);
    m.started(&pod.pod, &victim, Instant::now()).unwrap();
    let mut c = pod.container("liar");
    let id = pod.run(&c);
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let cg = pod
        .layout
        .unified
        .as_ref()
        .unwrap()
        .join(pod.cgroup_path(&c).trim_start_matches('/'));
    std::fs::write(cg.join("cgroup.procs"), child.id().to_string()).unwrap();
    c.linux.mut_or_insert_default().cgroups_path = pod.cgroup_path(&victim);
    c.pid = child.id();
    let res = m.started(&pod.pod, &c, Instant::now());
    let _ = child.kill();
    let _ = child.wait();
    res.unwrap();
    let maps = m.backend().unwrap().registry.maps();
    let meta = maps
        .records
        .meta(CgroupKey::v2(id))
        .unwrap()
        .expect("mapped at the process's cgroup");
    assert_eq!(meta.name, "liar");
    assert_eq!(meta.cgroup_path, pod.cgroup_path(&c));
    let victim_meta = maps
        .records
        .meta(CgroupKey::v2(victim_id))
        .unwrap()
        .unwrap();
    assert_eq!(
        victim_meta.name, "victim",
        "the other container's record stays its own"
    );
}

#[test]
fn synchronize_keeps_records_in_their_grace_and_forgets_the_rest() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let mut m = mapper(&env, Duration::from_secs(60));
    let pod = TestPod::new("sync");
    let sandbox = pod.start_sandbox();
    m.sandbox_started(&pod.pod).unwrap();
    let kept = pod.container("kept");
    let kept_id = pod.run(&kept);
    m.started(&pod.pod, &kept, Instant::now()).unwrap();
    let removed = pod.container("removed");
    let removed_id = pod.run(&removed);
    m.started(&pod.pod, &removed, Instant::now()).unwrap();
    let dropped = pod.container("dropped");
    let dropped_id = pod.run(&dropped);
    m.started(&pod.pod, &dropped, Instant::now()).unwrap();
    m.removed(&removed.id).unwrap();

    // The runtime still has the pod and `kept`; `removed` is in its grace period.
    let mut running = kept.clone();
    running.state = ContainerState::CONTAINER_RUNNING.into();
    let report = m.synchronize(std::slice::from_ref(&pod.pod), &[running]);
    assert_eq!(report.mapped, 2, "{report:?}");
    assert_eq!(report.forgotten, 1, "{report:?}");
    let maps = m.backend().unwrap().registry.maps();
    assert!(maps.records.get(CgroupKey::v2(sandbox)).unwrap().is_some());
    assert!(maps.records.get(CgroupKey::v2(kept_id)).unwrap().is_some());
    assert!(
        maps.records
            .get(CgroupKey::v2(removed_id))
            .unwrap()
            .unwrap()
            .flags
            .removing
    );
    assert!(maps
        .records
        .get(CgroupKey::v2(dropped_id))
        .unwrap()
        .is_none());
    let ids: Vec<String> = m
        .backend()
        .unwrap()
        .registry
        .records()
        .into_iter()
        .map(|r| r.meta.container_id.0)
        .collect();
    assert!(!ids.contains(&dropped.id) && ids.contains(&removed.id));

    // A running container whose cgroup is gone is a failure; a stopped one is not.
    let mut lost = pod.container("lost");
    lost.state = ContainerState::CONTAINER_RUNNING.into();
    let mut stopped = pod.container("stopped");
    stopped.state = ContainerState::CONTAINER_STOPPED.into();
    let before = count(&m, Counter::NriFailures);
    let report = m.synchronize(std::slice::from_ref(&pod.pod), &[lost, stopped]);
    assert_eq!(report.unresolved, 2, "{report:?}");
    assert_eq!(count(&m, Counter::NriFailures), before + 1);
}

#[test]
fn memberships_of_selecting_policies_are_written_with_the_record() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let dir = env.state.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let policy = |name: &str, selector: &str| {
        format!("apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\nspec:\n  namespaces: [prod]\n  podSelector: {{matchLabels: {{{selector}}}}}\n  rules: [{{exec: {{paths: [/bin/sh]}}, action: kill}}]\n")
    };
    std::fs::write(dir.join("a.yaml"), policy("selects-web", "app: web")).unwrap();
    std::fs::write(dir.join("b.yaml"), policy("selects-db", "app: db")).unwrap();
    let mut m = mapper(&env, Duration::from_secs(30));
    m.set_runtime("containerd");
    let pod = TestPod::new("web");
    let c = pod.container("nginx");
    m.created(&pod.pod, &c);
    let id = pod.run(&c);
    m.started(&pod.pod, &c, Instant::now()).unwrap();
    let members = m.backend().unwrap().registry.maps().policy.memberships();
    let key = CgroupKey::v2(id);
    assert!(
        members.contains(&(podmap_policy::policy_id("selects-web"), key)),
        "{members:?}"
    );
    assert!(!members.contains(&(podmap_policy::policy_id("selects-db"), key)));
}

/// Issue 12, item 2: a policy directory that cannot be read is not an empty one: containers
/// created meanwhile still join the policies last read.
#[test]
fn an_unreadable_policy_dir_keeps_the_last_policies_for_new_containers() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let dir = env.state.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: selects-web}\nspec:\n  namespaces: [prod]\n  podSelector: {matchLabels: {app: web}}\n  rules: [{exec: {paths: [/bin/sh]}, action: kill}]\n").unwrap();
    let mut m = mapper(&env, Duration::from_secs(30));
    m.set_runtime("containerd");
    let pod = TestPod::new("web");
    let member = |m: &mut Mapper, name: &str| {
        let c = pod.container(name);
        m.created(&pod.pod, &c);
        let id = pod.run(&c);
        m.started(&pod.pod, &c, Instant::now()).unwrap();
        let members = m.backend().unwrap().registry.maps().policy.memberships();
        members.contains(&(podmap_policy::policy_id("selects-web"), CgroupKey::v2(id)))
    };
    assert!(member(&mut m, "first"));
    // The directory replaced by a file; the plugin looks again after its recheck interval.
    std::fs::rename(&dir, dir.with_extension("aside")).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        member(&mut m, "second"),
        "a container created while the directory was unreadable joined no policy"
    );
    assert_eq!(m.backend().unwrap().policies.read_failures(), 1);
}

/// Maps one container of a fresh pod through CreateContainer and StartContainer; returns its
/// cgroup v2 id.
fn map_one(m: &mut Mapper, name: &str) -> (TestPod, u64, String) {
    let pod = TestPod::new(name);
    let c = pod.container("app");
    m.created(&pod.pod, &c);
    let id = pod.run(&c);
    m.started(&pod.pod, &c, Instant::now()).unwrap();
    let cid = c.id.clone();
    (pod, id, cid)
}

#[test]
fn a_damaged_store_is_moved_aside_and_containers_are_still_mapped() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let settings = env.settings(Duration::from_secs(30));
    std::fs::create_dir_all(&settings.state_dir).unwrap();
    podmap_writer::testing::damage_store(&settings.store_path());

    // Before: the plugin could not open its maps and store, and mapped nothing (or panicked).
    let mut m = mapper(&env, Duration::from_secs(30));
    assert_eq!(count(&m, Counter::StoreRecovered), 1);
    let (_pod, id, cid) = map_one(&mut m, "after-damage");
    let maps = m.backend().unwrap().registry.maps();
    assert!(
        maps.records.get(CgroupKey::v2(id)).unwrap().is_some(),
        "mapped"
    );
    // The fresh store keeps what it is given; the damaged one waits beside it for inspection.
    let stored: Vec<String> = m
        .backend()
        .unwrap()
        .registry
        .records()
        .into_iter()
        .map(|r| r.meta.container_id.0)
        .collect();
    assert_eq!(stored, [cid]);
    let aside: Vec<String> = std::fs::read_dir(&settings.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nri.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
}

#[test]
fn a_store_held_by_another_process_gives_way_to_a_temporary_one() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let settings = env.settings(Duration::from_secs(30));
    std::fs::create_dir_all(&settings.state_dir).unwrap();
    // sled's lock is a flock on its database file: a second open, even in this process, is
    // refused as another podmap-nri's would be.
    let held = podmap_writer::store::Store::open(&settings.store_path()).unwrap();

    let mut m = mapper(&env, Duration::from_secs(30));
    assert_eq!(count(&m, Counter::StoreTemporary), 1);
    let (_pod, id, cid) = map_one(&mut m, "beside-a-holder");
    let maps = m.backend().unwrap().registry.maps();
    assert!(
        maps.records.get(CgroupKey::v2(id)).unwrap().is_some(),
        "mapped"
    );
    // The temporary store serves removal: the grace period starts in the map.
    m.removed(&cid).unwrap();
    let rec = m
        .backend()
        .unwrap()
        .registry
        .maps()
        .records
        .get(CgroupKey::v2(id))
        .unwrap()
        .unwrap();
    assert!(rec.flags.removing, "{rec:?}");
    // The holder's store was left as it was.
    assert!(held.records().is_empty());
    assert_eq!(count(&m, Counter::StoreErrors), 0);
}

/// Chaos (issue 12): the pin directory removed while podmap-nri runs. Before, the plugin went on
/// writing into maps nobody could open again: the next process to open the pins (podmapd
/// restarting, a hook run) created new, empty ones, and every container mapped from then on was
/// invisible to them. Now the next mapping pins the plugin's maps again, and a fresh opener
/// finds the containers mapped before and after.
#[test]
fn a_pin_directory_removed_mid_run_is_pinned_again_by_the_next_mapping() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let settings = env.settings(Duration::from_secs(30));
    let mut m = mapper(&env, Duration::from_secs(30));
    let (_a, before, _) = map_one(&mut m, "before-removal");
    std::fs::remove_dir_all(&settings.bpffs_dir).unwrap();

    let t = Instant::now();
    let (_b, after, _) = map_one(&mut m, "after-removal");
    eprintln!("create and start with the pins gone: {:?}", t.elapsed());
    assert_eq!(count(&m, Counter::PinsRestored), 7, "every pinned map");
    let fresh = podmap_bpf::SharedMaps::open(&settings.bpffs_dir).unwrap();
    for (what, id) in [("before", before), ("after", after)] {
        assert!(
            fresh.records.get(CgroupKey::v2(id)).unwrap().is_some(),
            "the container mapped {what} the removal is in the maps the pins name"
        );
    }
    // Once repaired, nothing more to do.
    let (_c, _, _) = map_one(&mut m, "steady");
    assert_eq!(count(&m, Counter::PinsRestored), 7);
    assert_eq!(count(&m, Counter::PinsForeign), 0);
}

/// The pins removed and recreated by another process (a hook run that found the directory
/// empty) before the plugin's next mapping: the writers no longer share the maps, and that is
/// counted once per pin, never silent.
#[test]
fn pins_recreated_by_another_process_are_counted_as_foreign() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let settings = env.settings(Duration::from_secs(30));
    let mut m = mapper(&env, Duration::from_secs(30));
    map_one(&mut m, "before-split");
    std::fs::remove_dir_all(&settings.bpffs_dir).unwrap();
    let other = podmap_bpf::SharedMaps::open(&settings.bpffs_dir).unwrap();

    map_one(&mut m, "after-split");
    map_one(&mut m, "still-split");
    // The plugin counts in its own counters map; the other process's is another one now.
    assert_eq!(count(&m, Counter::PinsForeign), 7, "once per pin");
    assert_eq!(count(&m, Counter::PinsRestored), 0);
    drop(other);
}
