//! Test fixtures of the writer path (feature `testing`).

use std::path::Path;

use podmap_bpf::{ContainerId, ContainerMeta};

use crate::store::{ContainerRecord, Store};

/// Damages a writer's sled store at `path` as a bad disk would: fills it with small and large
/// records in turn (the large ones go to sled's blob files, and with enough of them some of the
/// tree's own pages do too), then deletes the blob files. sled then panics opening the store,
/// or, it varies, once it reads a record ("tried to serialize Uninitialized", "cannot find
/// pid").
pub fn damage_store(path: &Path) {
    let store = Store::open(path).expect("opening the store to damage");
    for i in 0..60 {
        let mut meta = ContainerMeta {
            container_id: ContainerId(format!("big{i:061}")),
            ..Default::default()
        };
        let size = if i % 2 == 0 { 300 } else { 200_000 };
        meta.labels.insert("big".into(), "x".repeat(size));
        store
            .put(&ContainerRecord {
                meta,
                ids: Default::default(),
                boot_id: "b".into(),
                created_ns: 1,
                removed_ns: None,
            })
            .expect("filling the store");
    }
    store.flush().expect("flushing the store");
    drop(store);
    let blobs = path.join("blobs");
    let removed = std::fs::read_dir(&blobs)
        .expect("the store's blob dir")
        .map(|f| std::fs::remove_file(f.expect("a blob").path()).expect("removing a blob"))
        .count();
    assert!(removed > 0, "sled wrote no blob under {}", blobs.display());
}
