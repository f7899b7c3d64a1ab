//! Test fixtures shared by the workspace's kernel tests (feature `testing`): a private pin
//! directory and private cgroups, each removed on drop even when the test fails, so tests can run
//! in parallel and twice in a row on one kernel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::maps::MapsError;
use crate::{
    CgroupId, CgroupIds, ContainerId, ContainerMeta, PodUid, RecordFlags, SharedMaps, Writer,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<seq>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private directory of pinned maps under /sys/fs/bpf, removed with its pins on drop.
pub struct PinDir {
    pub path: PathBuf,
    /// Someone else's directory: left alone on drop.
    pub keep: bool,
}

impl PinDir {
    pub fn new(prefix: &str) -> Self {
        PinDir {
            path: Path::new(crate::mounts::BPFFS_ROOT).join(unique_name(prefix)),
            keep: false,
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The pod a test container belongs to, as the runtime knows it.
#[derive(Debug, Clone, Copy)]
pub struct TestPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    /// The pod's labels at creation.
    pub labels: &'a [(&'a str, &'a str)],
}

/// A private cgroup (with optional nested children) in one hierarchy mount, removed on drop after
/// moving any process left in it to the hierarchy's root.
pub struct TestCgroup {
    pub mount: PathBuf,
    pub rel: PathBuf,
}

impl TestCgroup {
    /// Creates `<mount>/<unique name>`.
    pub fn new(mount: &Path, prefix: &str) -> std::io::Result<Self> {
        let rel = PathBuf::from(unique_name(prefix));
        std::fs::create_dir(mount.join(&rel))?;
        Ok(TestCgroup {
            mount: mount.to_owned(),
            rel,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.mount.join(&self.rel)
    }

    /// The cgroup id: its directory's inode.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.path()).map(|m| m.ino()).unwrap_or(0)
    }

    /// Maps this cgroup, by its cgroup2 id, as container `name` of `pod`, as a runtime plugin
    /// does (the container id is the cgroup id in hex). Returns the record written.
    pub fn map_container(
        &self,
        maps: &mut SharedMaps,
        pod: &TestPod<'_>,
        name: &str,
    ) -> Result<ContainerMeta, MapsError> {
        let meta = ContainerMeta {
            container_id: ContainerId(format!("{:064x}", self.id())),
            name: name.into(),
            pod_uid: Some(PodUid(pod.uid.into())),
            pod_name: pod.name.into(),
            namespace: pod.namespace.into(),
            labels: pod
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runtime: "test".into(),
            ..Default::default()
        };
        let ids = CgroupIds {
            v2: Some(CgroupId(self.id())),
            v1: None,
        };
        maps.insert(&ids, &meta, RecordFlags::default(), Writer::Test)?;
        Ok(meta)
    }

    /// Creates a child cgroup below this one.
    pub fn child(&self, name: &str) -> std::io::Result<TestCgroup> {
        let rel = self.rel.join(name);
        std::fs::create_dir(self.mount.join(&rel))?;
        Ok(TestCgroup {
            mount: self.mount.clone(),
            rel,
        })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let path = self.path();
        // Children first, deepest first.
        let mut dirs = vec![];
        let mut stack = vec![path.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(self.mount.join("cgroup.procs"), pid);
                }
            }
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Damages a writer's sled store at `path` as a bad disk would: fills it with small and large
/// records in turn (the large ones go to sled's blob files, and with enough of them some of the
/// tree's own pages do too), then deletes the blob files. sled then panics opening the store,
/// or, it varies, once it reads a record ("tried to serialize Uninitialized", "cannot find
/// pid").
#[cfg(feature = "store")]
pub fn damage_store(path: &Path) {
    use crate::store::{ContainerRecord, Store};
    let store = Store::open(path).expect("opening the store to damage");
    for i in 0..60 {
        let mut meta = crate::ContainerMeta {
            container_id: crate::ContainerId(format!("big{i:061}")),
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
