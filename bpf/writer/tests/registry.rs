//! The writers' registry: map first then store, grace period, sweep, restore after a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use podmap_bpf::testing::{PinDir, TestCgroup};
use podmap_bpf::{ContainerId, ContainerMeta, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::CgroupKey;
use podmap_cgroup::CgroupLayout;
use podmap_writer::registry::Registry;
use podmap_writer::store::{boot_id, ContainerRecord, Store, StoreError};

fn layout() -> CgroupLayout {
    CgroupLayout::detect(Path::new("/sys/fs/cgroup"), "memory").unwrap()
}

fn meta(id: &str, cg: &TestCgroup) -> ContainerMeta {
    ContainerMeta {
        container_id: ContainerId(id.into()),
        name: "app".into(),
        namespace: "ns".into(),
        cgroup_path: format!("/{}", cg.rel.display()),
        ..Default::default()
    }
}

#[test]
fn map_remove_sweep_and_restore() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let pins = PinDir::new("podmap-test-registry");
    let state = tempfile::tempdir().unwrap();
    let layout = layout();
    let mount = layout.unified.clone().unwrap();
    let live = TestCgroup::new(&mount, "podmap-test-reg-live").unwrap();
    let gone = TestCgroup::new(&mount, "podmap-test-reg-gone").unwrap();
    let boot = boot_id().unwrap();

    let mut reg = Registry::new(
        SharedMaps::open(&pins.path).unwrap(),
        Store::open(&state.path().join("nri")).unwrap(),
        Writer::Test,
        60_000_000_000,
        boot.clone(),
    );
    let live_ids = layout.resolve(&live.rel);
    let gone_ids = layout.resolve(&gone.rel);
    reg.map(meta("live", &live), live_ids, RecordFlags::default())
        .unwrap();
    reg.map(meta("gone", &gone), gone_ids, RecordFlags::default())
        .unwrap();
    let key = CgroupKey::v2(live.id());
    assert!(reg.maps().records.get(key).unwrap().is_some());
    assert_eq!(reg.records().len(), 2);

    // Removal starts the grace period: still mapped, flagged.
    assert!(reg.removed(&ContainerId("live".into())).unwrap());
    assert!(reg.maps().records.get(key).unwrap().unwrap().flags.removing);
    assert_eq!(reg.sweep(), 0, "within the grace period");
    assert!(!reg.removed(&ContainerId("never-seen".into())).unwrap());

    // A restart after the map lost its entries (e.g. pins removed): rebuilt from the store,
    // except the container whose cgroup is gone, and a record of another boot.
    let store_path = state.path().join("nri");
    drop(reg);
    drop(gone);
    let stale = ContainerRecord {
        meta: meta("old-boot", &live),
        ids: live_ids,
        boot_id: "another-boot".into(),
        created_ns: 1,
        removed_ns: None,
    };
    Store::open(&store_path).unwrap().put(&stale).unwrap();
    let mut maps = SharedMaps::open(&pins.path).unwrap();
    maps.records.remove(&live_ids).unwrap();
    let mut reg = Registry::new(
        maps,
        Store::open(&store_path).unwrap(),
        Writer::Test,
        60_000_000_000,
        boot.clone(),
    );
    let report = reg.restore(&layout);
    assert_eq!(report.rewritten, 1, "{report:?}");
    assert_eq!(report.dropped_gone, 1, "{report:?}");
    assert_eq!(report.dropped_other_boot, 1, "{report:?}");
    let rec = reg.maps().records.get(key).unwrap().expect("rewritten");
    assert!(rec.flags.removing, "the grace period survives the restart");
    assert_eq!(reg.records().len(), 1);

    // Past the grace period everything goes, map and store.
    let mut reg = Registry::new(
        SharedMaps::open(&pins.path).unwrap(),
        {
            drop(reg);
            Store::open(&store_path).unwrap()
        },
        Writer::Test,
        0,
        boot,
    );
    assert_eq!(reg.sweep(), 1);
    assert!(reg.maps().records.get(key).unwrap().is_none());
    assert!(reg.records().is_empty());
}

#[test]
fn locked_stores_queue_within_a_bound() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("hook");
    let first = Store::open_locked(&path, Duration::from_secs(1)).unwrap();
    let t0 = Instant::now();
    let err = Store::open_locked(&path, Duration::from_millis(200))
        .err()
        .expect("locked");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(t0.elapsed() >= Duration::from_millis(200) && t0.elapsed() < Duration::from_secs(2));
    // A waiter gets the store as soon as the holder lets go.
    let p2 = path.clone();
    let waiter =
        std::thread::spawn(move || Store::open_locked(&p2, Duration::from_secs(5)).map(|_| ()));
    std::thread::sleep(Duration::from_millis(100));
    drop(first);
    waiter.join().unwrap().expect("queued writer proceeds");
}

/// A record of another boot describes a cgroup that is gone, and its ids, handed out afresh at
/// every boot, may be a live cgroup's of this boot: the sweep drops it from the store (as the
/// hook's did; the registry's kept it until the next restart) and leaves the map alone.
#[test]
fn a_sweep_drops_records_of_another_boot_and_leaves_the_map() {
    let pins = PinDir::new("podmap-test-registry-boot");
    let state = tempfile::tempdir().unwrap();
    let layout = layout();
    let mount = layout.unified.clone().unwrap();
    let live = TestCgroup::new(&mount, "podmap-test-reg-boot").unwrap();
    let boot = boot_id().unwrap();
    let store_path = state.path().join("nri");
    let mut reg = Registry::new(
        SharedMaps::open(&pins.path).unwrap(),
        Store::open(&store_path).unwrap(),
        Writer::Test,
        60_000_000_000,
        boot,
    );
    let ids = layout.resolve(&live.rel);
    reg.map(meta("live", &live), ids, RecordFlags::default())
        .unwrap();
    // The same ids, recorded by another boot for a container long gone.
    reg.store()
        .put(&ContainerRecord {
            meta: meta("old-boot", &live),
            ids,
            boot_id: "another-boot".into(),
            created_ns: 1,
            removed_ns: None,
        })
        .unwrap();
    assert_eq!(reg.records().len(), 2);

    assert_eq!(reg.sweep(), 0, "nothing expired in the map");
    let left: Vec<String> = reg
        .records()
        .into_iter()
        .map(|r| r.meta.container_id.0)
        .collect();
    assert_eq!(left, ["live"], "the other boot's record left the store");
    let key = CgroupKey::v2(live.id());
    let m = reg.maps().records.meta(key).unwrap().expect("still mapped");
    assert_eq!(m.container_id.0, "live");
}
