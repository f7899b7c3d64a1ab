//! Test fixtures shared by the workspace's kernel tests (feature `testing`): a private pin
//! directory and private cgroups, each removed on drop even when the test fails, so tests can run
//! in parallel and twice in a row on one kernel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::maps::MapsError;
use crate::{ContainerId, ContainerMeta, PodUid, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::{CgroupId, CgroupIds};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The gate of every test that needs root (loads eBPF, creates cgroups, mounts, runs runc,
/// containerd or podman): true, after saying so on stderr past the harness's capture, when the
/// test runs unprivileged and must return at once. `cargo test` as a user runs the unit layer
/// and skips these; scripts/test.sh, as root, runs everything.
pub fn requires_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    // Written to the handle, not with eprintln!: the harness shows captured output only of
    // failing tests.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: needs root (run scripts/test.sh as root)"
    );
    true
}

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
        self.map_record(maps, &meta)?;
        Ok(meta)
    }

    /// Writes `meta` as the record of this cgroup, by its cgroup2 id, as a runtime plugin does:
    /// for a test that needs fields [`TestCgroup::map_container`] leaves out.
    pub fn map_record(&self, maps: &mut SharedMaps, meta: &ContainerMeta) -> Result<(), MapsError> {
        let ids = CgroupIds {
            v2: Some(CgroupId(self.id())),
            v1: None,
        };
        maps.records
            .insert(&ids, meta, RecordFlags::default(), Writer::Test)
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
