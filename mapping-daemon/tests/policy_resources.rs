//! podmapd mirroring PodPolicy resources from the (in-process) API server into the policy
//! directory: what the runtime plugins read. A resource added, changed, made invalid, named
//! twice and deleted; files of resources deleted while podmapd was away; hand-written files
//! untouched; a relist after the watch expired.

use std::path::Path;

use podmap_conformance::daemon::{cgroup2_mount, kubeconfig, Daemon, DaemonOptions};
use podmap_pod_cache::testing::{Resource, TestApiServer};
use podmap_policy::MIRRORED_HEADER;
use serde_json::{json, Value};

fn policy(name: &str, binary: &str) -> Value {
    json!({
        "apiVersion": "podmap.dev/v1alpha1",
        "kind": "PodPolicy",
        "metadata": {"name": name, "labels": {"team": "sec"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"namespaces": ["prod"], "rules": [{"exec": {"paths": [binary]}, "action": "kill"}]}
    })
}

fn loaded(st: &Value) -> Vec<String> {
    let mut names: Vec<String> = st["policies"]["loaded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some(l.as_str()?.split(' ').next()?.to_string()))
        .collect();
    names.sort();
    names
}

fn mirrored(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("podpolicy.{name}.yaml"))).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_mirrored_into_the_policy_directory() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let server = TestApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    server.apply_object(Resource::PodPolicies, policy("before-start", "/bin/false"));
    // Left by an earlier run for a resource deleted since; and a hand-written policy.
    std::fs::write(
        dir.join("podpolicy.deleted-meanwhile.yaml"),
        format!(
            "{MIRRORED_HEADER}\n{}",
            serde_yaml_ng::to_string(&policy("deleted-meanwhile", "/bin/true")).unwrap()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("local.yaml"),
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: local}\nspec:\n  rules: [{exec: {paths: [/bin/ed]}, action: audit}]\n",
    )
    .unwrap();
    let kc = kubeconfig(tmp.path(), &server.url());

    tokio::task::block_in_place(|| {
        let daemon = Daemon::start_with(DaemonOptions {
            env: vec![
                ("PODMAP_KUBECONFIG".into(), kc.display().to_string()),
                ("PODMAP_POLICY_DIR".into(), dir.display().to_string()),
            ],
            ..Default::default()
        });

        // The first list: the resource is mirrored, the stale file removed, the local one kept.
        let st = daemon.wait_status("the first list mirrored", |st| {
            st["policies"]["resources"]["synced"] == true && loaded(st) == ["before-start", "local"]
        });
        assert_eq!(st["policies"]["resources"]["resources"], 1, "{st:#}");
        assert!(mirrored(dir, "deleted-meanwhile").is_none());
        let text = mirrored(dir, "before-start").expect("mirrored file");
        assert!(text.starts_with(MIRRORED_HEADER), "{text}");
        assert!(
            !text.contains("last-applied") && !text.contains("resourceVersion"),
            "only name and labels of the metadata are kept: {text}"
        );

        // Added, then changed: the file follows, and podmapd loads it.
        server.apply_object(Resource::PodPolicies, policy("added", "/bin/sleep"));
        daemon.wait_status("the added resource loaded", |st| {
            loaded(st) == ["added", "before-start", "local"]
        });
        server.apply_object(Resource::PodPolicies, policy("added", "/bin/cat"));
        daemon.wait_status("the changed resource mirrored", |_| {
            mirrored(dir, "added").is_some_and(|t| t.contains("/bin/cat"))
        });

        // Made invalid: refused, named with field and reason; the last valid version stays.
        server.apply_object(Resource::PodPolicies, policy("added", "bin/cat"));
        let st = daemon.wait_status("the invalid resource refused", |st| {
            st["policies"]["resources"]["refused"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        });
        let refusal = st["policies"]["resources"]["refused"][0].as_str().unwrap();
        assert!(
            refusal.contains("PodPolicy resource \"added\"")
                && refusal.contains("spec.rules[0].exec.paths[0]")
                && refusal.contains("not an absolute path"),
            "{refusal}"
        );
        assert!(mirrored(dir, "added").unwrap().contains("/bin/cat"));
        assert_eq!(loaded(&st), ["added", "before-start", "local"], "{st:#}");

        // A resource with a hand-written policy's name, and one whose name's id collides with a
        // hand-written policy's: the node's own files win (a cluster resource must not displace
        // them), the resources are refused, each named in status with the winner.
        std::fs::write(
            dir.join("node.yaml"),
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: p54848}\nspec:\n  rules: [{exec: {paths: [/bin/ed]}, action: audit}]\n",
        )
        .unwrap();
        server.apply_object(Resource::PodPolicies, policy("local", "/bin/ls"));
        server.apply_object(Resource::PodPolicies, policy("p179bb", "/bin/ls"));
        let st = daemon.wait_status("the resources that clash refused", |st| {
            let errors = st["policies"]["errors"].to_string();
            errors.contains("podpolicy.local.yaml") && errors.contains("podpolicy.p179bb.yaml")
        });
        assert_eq!(
            loaded(&st),
            ["added", "before-start", "local", "p54848"],
            "{st:#}"
        );
        assert!(
            st["policies"]["loaded"]
                .to_string()
                .contains(&format!("local ({})", dir.join("local.yaml").display())),
            "{st:#}"
        );
        let errors: Vec<&str> = st["policies"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str())
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        for (file, winner) in [
            ("podpolicy.local.yaml", "local.yaml"),
            ("podpolicy.p179bb.yaml", "node.yaml"),
        ] {
            let e = errors.iter().find(|e| e.contains(file)).unwrap();
            assert!(
                e.contains("mirrored from a PodPolicy resource")
                    && e.contains(&format!("hand-written file {}", dir.join(winner).display())),
                "{e}"
            );
        }
        assert!(server.delete_object(Resource::PodPolicies, "", "p179bb"));
        std::fs::remove_file(dir.join("node.yaml")).unwrap();

        // The watch expires (the API server compacted): relist, and changes still arrive.
        server.expire_watches();
        assert!(server.delete_object(Resource::PodPolicies, "", "local"));
        assert!(server.delete_object(Resource::PodPolicies, "", "added"));
        daemon.wait_status("deletions mirrored after the relist", |st| {
            loaded(st) == ["before-start", "local"]
        });
        assert!(mirrored(dir, "added").is_none());
        assert!(mirrored(dir, "local").is_none());
        assert!(dir.join("local.yaml").exists());
        let st = daemon.status();
        let m = &st["policies"]["resources"];
        assert_eq!(m["resources"], 1, "{st:#}");
        assert!(m["refused"].as_array().unwrap().is_empty(), "{st:#}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_reported_and_mirroring_can_be_turned_off() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    // An API server podmapd cannot reach (nothing listens on port 9): the mirror's failures are
    // counted and shown, never silent. Turned off, the mirror does not run at all.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), "http://127.0.0.1:9");
    let env = |off: bool| {
        let mut env = vec![
            ("PODMAP_KUBECONFIG".to_string(), kc.display().to_string()),
            (
                "PODMAP_POLICY_DIR".to_string(),
                dir.path().display().to_string(),
            ),
        ];
        if off {
            env.push(("PODMAP_NO_POLICY_RESOURCES".into(), "true".into()));
        }
        env
    };
    tokio::task::block_in_place(|| {
        let daemon = Daemon::start_with(DaemonOptions {
            env: env(false),
            ..Default::default()
        });
        let st = daemon.wait_status("the unreachable API server counted", |st| {
            st["policies"]["resources"]["errors"].as_u64() >= Some(1)
        });
        assert_eq!(st["policies"]["resources"]["synced"], false, "{st:#}");
        assert!(
            st["policies"]["resources"]["last_error"].is_string(),
            "{st:#}"
        );
        drop(daemon);

        let daemon = Daemon::start_with(DaemonOptions {
            env: env(true),
            ..Default::default()
        });
        let st = daemon.status();
        assert!(st["policies"].get("resources").is_none(), "{st:#}");
        assert_eq!(st["mode"], "kubernetes");
    });
}

/// A small ext4 filesystem on a loop device: a policy directory the test can freeze, so that
/// every write to it waits (as on a stuck disk). Thawed, unmounted and its loop device released
/// on drop, also when an assertion fails.
struct FreezableDisk {
    mnt: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

fn run(what: &str, cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what}: {out:?}");
}

impl FreezableDisk {
    fn new() -> FreezableDisk {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let mnt = tmp.path().join("policies");
        std::fs::create_dir(&mnt).unwrap();
        run(
            "mkfs.ext4",
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image),
        );
        run(
            "mount -o loop",
            std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mnt),
        );
        FreezableDisk { mnt, _tmp: tmp }
    }

    /// Freezes the filesystem until the guard is dropped. Declared after the daemon, the guard
    /// thaws first when an assertion fails: a process stuck on a frozen disk cannot even die.
    fn freeze(&self) -> Frozen<'_> {
        run(
            "fsfreeze -f",
            std::process::Command::new("fsfreeze")
                .arg("-f")
                .arg(&self.mnt),
        );
        // Should this test process be killed outright, nothing would thaw the disk and podmapd
        // would stay stuck on it: a watchdog thaws it after two minutes regardless.
        let watchdog = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 120; exec fsfreeze -u \"$0\"")
            .arg(&self.mnt)
            .spawn()
            .unwrap();
        Frozen(self, watchdog)
    }
}

struct Frozen<'a>(&'a FreezableDisk, std::process::Child);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.0.mnt)
            .status();
        let _ = self.1.kill();
        let _ = self.1.wait();
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        // Lazily: a mount still busy is detached all the same, so removing the temporary
        // directory never reaches into it. The loop device goes with the last user (autoclear).
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
    }
}

/// The threads of a process that wait in the kernel uninterruptibly (state D), by name.
fn threads_in_d(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // pid (comm) state ...: the comm may hold spaces, the state follows the last ')'.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            (rest.trim_start().starts_with('D')).then_some(comm)
        })
        .collect()
}

/// A disk that stops taking writes (frozen here; a stuck or full-speed-degraded disk on a node)
/// holds up only the work that writes to it: while podmapd's mirror waits to write a new
/// resource's file, events keep flowing and the socket answers. Once the disk thaws, the
/// resource is mirrored and loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_policy_disk_holds_up_neither_events_nor_the_socket() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let server = TestApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let disk = FreezableDisk::new();
    let kc = kubeconfig(tmp.path(), &server.url());
    tokio::task::block_in_place(|| {
        let daemon = Daemon::start_with(DaemonOptions {
            env: vec![
                ("PODMAP_KUBECONFIG".into(), kc.display().to_string()),
                ("PODMAP_POLICY_DIR".into(), disk.mnt.display().to_string()),
            ],
            ..Default::default()
        });
        daemon.wait_status("the first list mirrored", |st| {
            st["policies"]["resources"]["synced"] == true
        });
        let cg =
            podmap_bpf::testing::TestCgroup::new(&cgroup2_mount(), "podmap-test-frozen").unwrap();
        let mut stream = daemon.events("{}");

        let frozen = disk.freeze();
        server.apply_object(Resource::PodPolicies, policy("while-frozen", "/bin/false"));
        // Wait until the mirror's write is really stuck on the disk.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let stuck = loop {
            let stuck = threads_in_d(daemon.child.id());
            if stuck.iter().any(|t| t == "podmap-mirror") {
                break stuck;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the mirror's thread never waited on the frozen disk; log:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // The socket answers and an exec made now is delivered, while the write still waits.
        let st = daemon.status();
        assert_eq!(st["policies"]["resources"]["synced"], true, "{st:#}");
        let exec = stream.echo_in(
            &cg.path(),
            "podmap-frozen-disk",
            std::time::Duration::from_secs(20),
        );
        assert_eq!(exec["process"]["cgroup_id"], cg.id(), "{exec:#}");
        assert!(
            threads_in_d(daemon.child.id())
                .iter()
                .any(|t| t == "podmap-mirror"),
            "the write no longer waited: the check above proved nothing ({stuck:?})"
        );

        drop(frozen);
        daemon.wait_status("the resource mirrored once the disk thawed", |st| {
            loaded(st) == ["while-frozen"]
        });
    });
}
