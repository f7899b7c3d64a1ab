//! The pinned-map API against the real kernel: create or reuse pins, write, read, remove.

use podmap_bpf::layout::Counter;
use podmap_bpf::testing::{PinDir, TestCgroup};
use podmap_bpf::{ContainerId, ContainerMeta, PodUid, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::{CgroupId, CgroupIds, CgroupKey};
use podmap_cgroup::{CgroupLayout, LayoutKind};
use std::path::Path;

fn meta(id: &str) -> ContainerMeta {
    ContainerMeta {
        container_id: ContainerId(id.into()),
        name: "web".into(),
        pod_uid: Some(PodUid("12345678-1234-1234-1234-123456789abc".into())),
        pod_name: "web-1".into(),
        namespace: "prod".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        image: "busybox".into(),
        runtime: "test".into(),
        sandbox: false,
        cgroup_path: "/x".into(),
        init_pid: None,
        privileged: None,
        cap_bounding: None,
    }
}

#[test]
fn writers_share_one_set_of_pins() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-pins");
    let mut a = SharedMaps::open(&dir.path).expect("create pins");
    let b = SharedMaps::open(&dir.path).expect("reuse pins");
    for name in ["podmap_containers", "podmap_meta", "podmap_counters"] {
        assert!(dir.path.join(name).exists(), "{name} pinned");
    }
    let ids = CgroupIds {
        v2: Some(CgroupId(4242)),
        v1: Some(CgroupId(4343)),
    };
    a.records
        .insert(&ids, &meta("c1"), RecordFlags::default(), Writer::Test)
        .unwrap();
    // The second handle sees both keys, the compact record and the metadata.
    for key in [CgroupKey::v2(4242), CgroupKey::v1(4343)] {
        let rec = b
            .records
            .get(key)
            .unwrap()
            .expect("record visible through the other handle");
        assert_eq!(rec.writer, Writer::Test as u32);
        assert_eq!(b.records.meta(key).unwrap(), Some(meta("c1")));
    }
    assert_eq!(
        b.records.get(CgroupKey::v1(4242)).unwrap(),
        None,
        "hierarchies never mix"
    );
    // Idempotent rewrite, then flags.
    a.records
        .insert(&ids, &meta("c1"), RecordFlags::default(), Writer::Test)
        .unwrap();
    let t0 = podmap_bpf::maps::boot_ns();
    assert!(a.records.mark_removed(&ids, t0).unwrap());
    let rec = b.records.get(CgroupKey::v2(4242)).unwrap().unwrap();
    assert!(rec.flags.removing);
    assert_eq!(rec.removed_ns, t0);
    // Within the grace period nothing is swept; past it, both keys go.
    assert!(a.records.sweep_expired(30_000_000_000, t0 + 1).is_empty());
    assert!(b.records.get(CgroupKey::v1(4343)).unwrap().is_some());
    let mut swept = a.records.sweep_expired(30_000_000_000, t0 + 30_000_000_000);
    swept.sort();
    assert_eq!(swept, vec![CgroupKey::v2(4242), CgroupKey::v1(4343)]);
    assert_eq!(b.records.get(CgroupKey::v2(4242)).unwrap(), None);
    a.records
        .insert(&ids, &meta("c1"), RecordFlags::default(), Writer::Test)
        .unwrap();
    // Counters are shared between handles.
    let before = b.counters.get(Counter::RecordsWritten);
    a.counters.add(Counter::HookRuns, 3);
    assert_eq!(b.counters.get(Counter::HookRuns), 3);
    assert_eq!(before, 3, "three inserts so far");
    a.records.remove(&ids).unwrap();
    assert_eq!(b.records.get(CgroupKey::v2(4242)).unwrap(), None);
    assert_eq!(b.records.meta(CgroupKey::v1(4343)).unwrap(), None);
    a.records.remove(&ids).expect("removing twice is fine");
}

/// Seconds since boot as the kernel reports them, independent of the code under test.
fn uptime_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = text.split_whitespace().next().unwrap().parse().unwrap();
    (secs * 1e9) as u64
}

#[test]
fn records_are_stamped_in_boot_time_and_a_wall_clock_removal_is_swept() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-boot-clock");
    let mut maps = SharedMaps::open(&dir.path).expect("create pins");
    let ids = CgroupIds {
        v2: Some(CgroupId(5151)),
        v1: None,
    };
    let before = uptime_ns();
    maps.records
        .insert(&ids, &meta("c1"), RecordFlags::default(), Writer::Test)
        .unwrap();
    let after = uptime_ns();
    let rec = maps.records.get(CgroupKey::v2(5151)).unwrap().unwrap();
    // The wall clock would put this decades past the uptime; boot time can step with neither
    // NTP nor `date`, so a grace period is neither cut short nor stretched.
    assert!(
        rec.created_ns + 1_000_000_000 >= before && rec.created_ns <= after + 1_000_000_000,
        "created_ns {} outside the uptime window {before}..{after}",
        rec.created_ns
    );
    // A removal stamped by the wall clock (an older podmap's record in a pinned map) lies in
    // boot time's future: it is swept, not kept until the map fills.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(maps.records.mark_removed(&ids, wall).unwrap());
    let now = podmap_bpf::maps::boot_ns();
    assert_eq!(
        maps.records.sweep_expired(30_000_000_000, now),
        vec![CgroupKey::v2(5151)]
    );
}

#[test]
fn concurrent_creators_end_with_one_set_of_pins() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-race");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let p = dir.path.clone();
            std::thread::spawn(move || {
                let mut m = SharedMaps::open(&p).expect("open under a race");
                let ids = CgroupIds {
                    v2: Some(CgroupId(1000 + i)),
                    v1: None,
                };
                m.records
                    .insert(
                        &ids,
                        &meta(&format!("c{i}")),
                        RecordFlags::default(),
                        Writer::Test,
                    )
                    .unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let m = SharedMaps::open(&dir.path).unwrap();
    let mut keys = m.records.keys();
    keys.sort();
    assert_eq!(
        keys.len(),
        8,
        "every writer's record is in the one shared map: {keys:?}"
    );
    assert_eq!(m.counters.get(Counter::RecordsWritten), 8);
}

#[test]
fn latency_histogram_buckets_by_power_of_two() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-lat");
    let m = SharedMaps::open(&dir.path).unwrap();
    m.counters.record_latency(0);
    m.counters.record_latency(700); // 512..1024 -> bucket 10
    m.counters.record_latency(1_000_000_000_000);
    let h = m.counters.latency_histogram();
    assert_eq!(h[0], 1);
    assert_eq!(h[10], 1);
    assert_eq!(h[31], 1);
    assert_eq!(h.iter().sum::<u64>(), 3);
    assert_eq!(
        m.counters.get(Counter::MappingLatencySumUs),
        700 + 1_000_000_000_000
    );
}

#[test]
fn a_dir_outside_bpffs_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let err = SharedMaps::open(&tmp.path().join("pins"))
        .err()
        .expect("not bpffs");
    assert!(err.to_string().contains("not on a bpf filesystem"), "{err}");
}

#[test]
fn layout_of_this_host_resolves_cgroup_ids() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let layout = CgroupLayout::detect(Path::new("/sys/fs/cgroup"), "memory").unwrap();
    let mount = layout.unified.clone().expect("this host has cgroup2");
    assert!(matches!(
        layout.kind,
        LayoutKind::Hybrid | LayoutKind::Unified
    ));
    assert_eq!(layout.hierarchy_name(), "cgroup2");
    let cg = TestCgroup::new(&mount, "podmap-test-resolve").unwrap();
    let ids = layout.resolve(&cg.rel);
    assert_eq!(ids.v2, Some(CgroupId(cg.id())));
    if layout.kind == LayoutKind::Hybrid {
        let v1 = layout.v1.as_ref().expect("memory controller is mounted");
        assert!(v1.hierarchy_id > 0);
        assert_eq!(ids.v1, None, "not created in v1");
        let v1cg = TestCgroup {
            mount: v1.path.clone(),
            rel: cg.rel.clone(),
        };
        std::fs::create_dir(v1cg.path()).unwrap();
        assert_eq!(layout.resolve(&cg.rel).v1, Some(CgroupId(v1cg.id())));
    }
    assert!(layout
        .resolve(Path::new("podmap-no-such-cgroup"))
        .is_empty());
}

/// Issue 12, item 3: the kernel finds a container for processes in its sub-cgroups only when the
/// container's own cgroup is at level `MAX_CONTAINER_LEVEL` or above; a record written deeper is
/// counted (`deep_containers`, in status and metrics) so that limit never acts unseen.
#[test]
fn containers_mapped_below_the_container_level_bound_are_counted() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-deep");
    let mut m = SharedMaps::open(&dir.path).unwrap();
    let path = |levels: usize| (1..=levels).map(|i| format!("/l{i}")).collect::<String>();
    let bound = podmap_bpf::layout::MAX_CONTAINER_LEVEL;
    for (i, (cgroup_path, deep)) in [
        (path(bound), 0),
        (path(bound).trim_start_matches('/').to_string(), 0),
        ("kubepods/besteffort/pod1/c1".to_string(), 0),
        (path(bound + 1), 1),
        (path(bound + 1).trim_start_matches('/').to_string() + "/", 2),
    ]
    .into_iter()
    .enumerate()
    {
        let ids = CgroupIds {
            v2: Some(CgroupId(5000 + i as u64)),
            v1: None,
        };
        let meta = ContainerMeta {
            cgroup_path: cgroup_path.clone(),
            ..meta("deep")
        };
        m.records
            .insert(&ids, &meta, RecordFlags::default(), Writer::Test)
            .unwrap();
        assert_eq!(
            m.counters.get(Counter::DeepContainers),
            deep,
            "{cgroup_path}"
        );
    }
}

/// podmapd's expiry sweep walks the records only when something can have expired since its
/// last walk: a mark or a change counted by a writer, or the earliest grace period it saw
/// running coming to its end; and at least every FULL_WALK_NS all the same.
#[test]
fn the_watched_sweep_walks_only_when_something_can_have_expired() {
    use podmap_bpf::maps::ExpiryWatch;
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let dir = PinDir::new("podmap-test-expiry-watch");
    let mut sweeper = SharedMaps::open(&dir.path).expect("create pins");
    let mut writer = SharedMaps::open(&dir.path).expect("reuse pins");
    let grace = 30_000_000_000;
    let ids = |n: u64| CgroupIds {
        v2: Some(CgroupId(n)),
        v1: None,
    };
    let mut watch = ExpiryWatch::default();
    let t0 = podmap_bpf::maps::boot_ns();
    writer
        .records
        .insert(
            &ids(5001),
            &meta("c1"),
            RecordFlags::default(),
            Writer::Test,
        )
        .unwrap();
    assert!(sweeper
        .records
        .sweep_expired_watched(&mut watch, grace, t0)
        .is_empty());

    // A writer that does not count its marks (one from before they were counted): the sweep
    // does not see the mark until its periodic walk, which proves it skipped the others.
    assert!(writer.records.mark_removed(&ids(5001), t0).unwrap());
    writer.counters.add(Counter::RecordsMarked, u64::MAX); // the mark's count taken back
    assert!(sweeper
        .records
        .sweep_expired_watched(&mut watch, grace, t0 + grace + 1)
        .is_empty());
    assert!(sweeper.records.get(CgroupKey::v2(5001)).unwrap().is_some());
    assert_eq!(
        sweeper
            .records
            .sweep_expired_watched(&mut watch, grace, t0 + ExpiryWatch::FULL_WALK_NS),
        vec![CgroupKey::v2(5001)],
        "the periodic walk"
    );

    // A counted mark is walked for at once (the walk also finds a mark nobody counted since
    // the last walk), then not again until its grace ends.
    let t1 = t0 + ExpiryWatch::FULL_WALK_NS + 1;
    for (n, c) in [(5002, "c2"), (5003, "c3")] {
        writer
            .records
            .insert(&ids(n), &meta(c), RecordFlags::default(), Writer::Test)
            .unwrap();
    }
    assert!(sweeper
        .records
        .sweep_expired_watched(&mut watch, grace, t1)
        .is_empty());
    assert!(writer.records.mark_removed(&ids(5003), t1 - grace).unwrap());
    writer.counters.add(Counter::RecordsMarked, u64::MAX);
    assert!(
        sweeper
            .records
            .sweep_expired_watched(&mut watch, grace, t1 + 1)
            .is_empty(),
        "nothing counted: no walk"
    );
    assert!(writer.records.mark_removed(&ids(5002), t1 + 1).unwrap());
    assert_eq!(
        sweeper
            .records
            .sweep_expired_watched(&mut watch, grace, t1 + 2),
        vec![CgroupKey::v2(5003)],
        "the counted mark made it walk"
    );
    assert!(sweeper
        .records
        .sweep_expired_watched(&mut watch, grace, t1 + grace)
        .is_empty());
    assert_eq!(
        sweeper
            .records
            .sweep_expired_watched(&mut watch, grace, t1 + 1 + grace),
        vec![CgroupKey::v2(5002)],
        "due"
    );
    assert_eq!(sweeper.records.get(CgroupKey::v2(5002)).unwrap(), None);
    assert!(
        sweeper.counters.get(Counter::RecordsMarked) >= 1,
        "marks are counted"
    );
}
