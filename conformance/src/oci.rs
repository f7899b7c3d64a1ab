//! Fixtures for the OCI hook suites: the hook's private world (pins, store, log), a busybox root
//! filesystem, OCI bundles made from `runc spec`, runc and crun run in the host's hybrid layout,
//! v1 only, or a private pure-cgroup2 mount namespace, podman with a hooks dir made from deploy/'s
//! hooks.d file, and CRI-O-style annotations. Everything is private to one test and removed on
//! drop, also when the test fails, so the suites can run in parallel and twice in a row.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use podmap_bpf::layout::Counter;
use podmap_bpf::testing::{unique_name, PinDir};
use podmap_bpf::{ContainerId, ContainerMeta, SharedMaps};
use podmap_cgroup::CgroupKey;
use podmap_writer::store::{ContainerRecord, Store};
use serde_json::{json, Value};

/// The hooks.d file deploy/ ships for CRI-O.
pub const HOOKS_D_JSON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/crio/hooks.d/podmap.json"
);

pub fn hook_binary() -> PathBuf {
    crate::bins::path("podmap-oci-hook")
}

/// The hook's private pins, state dir and log file, handed to it through PODMAP_* variables.
pub struct HookEnv {
    pub pins: PinDir,
    dir: tempfile::TempDir,
    /// PODMAP_GRACE (default: the hook's own 30 s).
    pub grace: Option<String>,
    /// PODMAP_TIMEOUT. Tests of outcomes give the debug build a generous bound on this shared
    /// machine (docs/decisions.md #19: the 1 s figure is the bench's); tests of the bound set "1s".
    pub timeout: Option<String>,
    /// More flags as environment, e.g. PODMAP_FAIL_CLOSED_NAMESPACES.
    pub extra: Vec<(String, String)>,
}

/// One direct run of the hook binary.
#[derive(Debug)]
pub struct HookRun {
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub stderr: String,
}

impl HookEnv {
    pub fn new(prefix: &str) -> HookEnv {
        HookEnv {
            pins: PinDir::new(prefix),
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("temp dir"),
            grace: None,
            timeout: Some("10s".into()),
            extra: Vec::new(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir().join("hook")
    }

    /// The hook's private policy directory (empty unless a test writes policies there).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("log/hook.log")
    }

    /// A scratch directory that lives as long as this environment.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// The hook's environment: everything private, every mapping logged with its timing.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("PODMAP_BPFFS_DIR".to_string(), path_str(&self.pins.path)),
            ("PODMAP_STATE_DIR".to_string(), path_str(&self.state_dir())),
            ("PODMAP_LOG_FILE".to_string(), path_str(&self.log_file())),
            (
                "PODMAP_POLICY_DIR".to_string(),
                path_str(&self.policy_dir()),
            ),
            ("PODMAP_LOG".to_string(), "debug".to_string()),
        ];
        if let Some(g) = &self.grace {
            v.push(("PODMAP_GRACE".to_string(), g.clone()));
        }
        if let Some(t) = &self.timeout {
            v.push(("PODMAP_TIMEOUT".to_string(), t.clone()));
        }
        v.extend(self.extra.iter().cloned());
        v
    }

    /// The same as `K=V` strings, for config.json and hooks.d.
    pub fn env_strings(&self) -> Vec<String> {
        self.env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// The hooks of a bundle's config.json: createRuntime and poststop, as CRI-O would list them.
    pub fn oci_hooks(&self) -> Value {
        let hook = |stage: &str| {
            json!([{
                "path": path_str(&hook_binary()),
                "args": ["podmap-oci-hook", stage],
                "env": self.env_strings(),
            }])
        };
        json!({"createRuntime": hook("create-runtime"), "poststop": hook("poststop")})
    }

    /// Runs the hook binary as a runtime would (no environment but the hook's), feeding `stdin`.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> HookRun {
        self.run_with(args, stdin, &[])
    }

    pub fn run_with(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> HookRun {
        let started = Instant::now();
        let child = self.spawn(args, stdin, env);
        let out = child.wait_with_output().expect("wait for podmap-oci-hook");
        HookRun {
            status: out.status,
            elapsed: started.elapsed(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the hook as [`HookEnv::run_with`] does and returns it running, its input written
    /// and closed: for tests that kill it part-way.
    pub fn spawn(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> std::process::Child {
        let mut child = Command::new(hook_binary())
            .args(args)
            .env_clear()
            .envs(self.env())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start podmap-oci-hook");
        let mut pipe = child.stdin.take().expect("stdin");
        // A hook may stop reading early (bad input, or killed); a broken pipe is not the test's
        // failure.
        let _ = pipe.write_all(stdin);
        drop(pipe);
        child
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The pinned maps (created if the hook has not run yet).
    pub fn maps(&self) -> SharedMaps {
        SharedMaps::open(&self.pins.path).expect("open the test's pinned maps")
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.maps().counters.get(c)
    }

    /// Has every queued store change applied: every poststop applies the hook's queue (this
    /// one is of a container nobody knows).
    pub fn settle(&self) {
        let state = json!({"id": unique_name("settle"), "status": "stopped"}).to_string();
        let run = self.run(&["poststop"], state.as_bytes());
        assert!(run.status.success(), "settling the store: {run:?}");
    }

    /// The hook store's record of a container, once queued changes are applied.
    pub fn record(&self, id: &str) -> Option<ContainerRecord> {
        self.settle();
        let store = Store::open_locked(&self.store_path(), Duration::from_secs(10))
            .expect("open the hook's store");
        store
            .get(&ContainerId(id.to_string()))
            .expect("read the hook's store")
    }

    pub fn records(&self) -> Vec<ContainerRecord> {
        self.settle();
        let store = Store::open_locked(&self.store_path(), Duration::from_secs(10))
            .expect("open the hook's store");
        store.records().into_iter().flatten().collect()
    }

    /// Every map entry of container `id`, with its metadata.
    pub fn mapped(&self, id: &str) -> Vec<(CgroupKey, ContainerMeta)> {
        let maps = self.maps();
        maps.records
            .keys()
            .into_iter()
            .filter_map(|k| Some((k, maps.records.meta(k).ok()??)))
            .filter(|(_, m)| m.container_id.0 == id)
            .collect()
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// A root filesystem of Debian's busybox-static: /bin/busybox and applet links.
pub struct Rootfs {
    dir: tempfile::TempDir,
}

impl Rootfs {
    pub fn busybox() -> Rootfs {
        let dir = tempfile::Builder::new()
            .prefix("podmap-rootfs")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "run"] {
            std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("copy /bin/busybox (install busybox-static: scripts/setup.sh)");
        for applet in [
            "sh", "sleep", "true", "false", "cat", "echo", "ls", "kill", "ps", "env",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet");
        }
        Rootfs { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
}

/// A private cgroup parent the runtimes create containers under; on drop it is removed from
/// every hierarchy it was made in (runtimes remove the containers' cgroups, not their parents).
pub struct CgroupParent {
    pub name: String,
}

impl CgroupParent {
    pub fn new(prefix: &str) -> CgroupParent {
        CgroupParent {
            name: unique_name(prefix),
        }
    }

    /// A container's cgroupsPath (cgroupfs notation) under this parent.
    pub fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.name)
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut roots: Vec<PathBuf> = mounts.flatten().map(|e| e.path()).collect();
        roots.push(PathBuf::from("/sys/fs/cgroup"));
        for root in roots {
            let top = root.join(&self.name);
            if top.is_dir() {
                remove_cgroup_tree(&root, &top);
            }
        }
    }
}

/// Removes a cgroup and its descendants, deepest first, moving stragglers to the root.
pub fn remove_cgroup_tree(root: &Path, top: &Path) {
    let mut dirs = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        dirs.push(d);
    }
    for d in dirs.iter().rev() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What goes into a bundle's config.json.
#[derive(Debug, Clone, Default)]
pub struct BundleSpec {
    pub args: Vec<String>,
    pub cgroups_path: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// The `hooks` object (HookEnv::oci_hooks), or none.
    pub hooks: Option<Value>,
    /// Keys set over `runc spec`'s `process` (its `user`, its `capabilities`), or none.
    pub process: Option<Value>,
}

impl BundleSpec {
    pub fn new(args: &[&str]) -> BundleSpec {
        BundleSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..BundleSpec::default()
        }
    }
}

/// An OCI bundle: config.json from `runc spec`, edited, with the rootfs by absolute path.
pub struct Bundle {
    dir: tempfile::TempDir,
}

/// `runc spec`'s config, made once per test binary.
fn base_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .expect("run `runc spec` (install runc: scripts/setup.sh)");
        assert!(out.status.success(), "runc spec: {out:?}");
        let text = std::fs::read_to_string(dir.path().join("config.json")).expect("config.json");
        serde_json::from_str(&text).expect("runc spec's config.json")
    })
}

impl Bundle {
    pub fn new(rootfs: &Rootfs, spec: &BundleSpec) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("podmap-bundle")
            .tempdir()
            .expect("temp dir");
        let mut c = base_spec().clone();
        c["root"] = json!({"path": path_str(&rootfs.path()), "readonly": false});
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(spec.args);
        if let Some(Value::Object(over)) = &spec.process {
            for (k, v) in over {
                c["process"][k] = v.clone();
            }
        }
        // Limits cannot be applied everywhere here (pure cgroup2 has no controllers; crun
        // would load a device program it may not raise RLIMIT_MEMLOCK for): drop them all.
        if let Some(linux) = c["linux"].as_object_mut() {
            linux.remove("resources");
            if let Some(p) = &spec.cgroups_path {
                linux.insert("cgroupsPath".into(), json!(p));
            }
        }
        c["annotations"] = json!(spec.annotations);
        if let Some(h) = &spec.hooks {
            c["hooks"] = h.clone();
        }
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&c).expect("config serializes"),
        )
        .expect("write config.json");
        Bundle { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Crun,
}

impl Runtime {
    pub fn binary(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        }
    }
}

/// Which cgroup layout the runtime sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    /// The host's: v1 controllers plus cgroup2 at /sys/fs/cgroup/unified (runc uses both).
    Hybrid,
    /// The host's with /sys/fs/cgroup/unified unmounted in a private mount namespace: v1 only
    /// (how crun, which refuses the hybrid layout, runs on this host).
    V1Only,
    /// cgroup2 mounted at /sys/fs/cgroup in a private mount namespace.
    PureV2,
}

impl Cgroups {
    /// Wraps a command in the mount namespace this layout needs (the arguments the caller adds
    /// go to `program`).
    pub fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let setup = match self {
            Cgroups::Hybrid => return Command::new(program),
            Cgroups::V1Only => "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"",
            Cgroups::PureV2 => "mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"",
        };
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", setup, "sh"])
            .arg(program);
        c
    }

    /// Pure cgroup2 or the host's own layout.
    pub fn pure_or_host(pure_cgroup2: bool) -> Cgroups {
        if pure_cgroup2 {
            Cgroups::PureV2
        } else {
            Cgroups::Hybrid
        }
    }

    /// Whether podmapd should run in a pure cgroup2 namespace to see these containers' ids.
    pub fn daemon_pure_cgroup2(self) -> bool {
        self == Cgroups::PureV2
    }
}

/// runc or crun with a private state root; containers it still knows are deleted on drop.
pub struct OciRuntime {
    pub runtime: Runtime,
    pub cgroups: Cgroups,
    root: tempfile::TempDir,
    ids: Mutex<Vec<String>>,
}

impl OciRuntime {
    pub fn new(runtime: Runtime, cgroups: Cgroups) -> OciRuntime {
        assert!(
            !(runtime == Runtime::Crun && cgroups == Cgroups::Hybrid),
            "crun refuses this host's hybrid layout: use Cgroups::V1Only or Cgroups::PureV2"
        );
        OciRuntime {
            runtime,
            cgroups,
            root: tempfile::Builder::new()
                .prefix("podmap-runtime-root")
                .tempdir()
                .expect("temp dir"),
            ids: Mutex::new(Vec::new()),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.cgroups.command(self.runtime.binary());
        c.arg("--root").arg(self.root.path()).args(args);
        c
    }

    fn remember(&self, id: &str) {
        self.ids.lock().unwrap().push(id.to_string());
    }

    /// `run` in the foreground: create, start, wait, delete (poststop runs before it returns).
    pub fn run(&self, bundle: &Bundle, id: &str) -> Output {
        self.remember(id);
        self.command(&["run", "--bundle", &path_str(bundle.path()), id])
            .stdin(Stdio::null())
            .output()
            .expect("run the OCI runtime")
    }

    /// `run -d`: returns once the container runs. Its stdio goes to a file (a pipe would be
    /// held open by the container).
    pub fn run_detached(&self, bundle: &Bundle, id: &str) -> (ExitStatus, String) {
        self.remember(id);
        let log = bundle.path().join("detached.log");
        let f = std::fs::File::create(&log).expect("log file");
        let status = self
            .command(&["run", "-d", "--bundle", &path_str(bundle.path()), id])
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .status()
            .expect("run the OCI runtime");
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Kills and deletes a container (poststop runs).
    pub fn delete(&self, id: &str) -> Output {
        let _ = self
            .command(&["kill", id, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The kill lands asynchronously; `delete --force` also kills what is left.
        self.command(&["delete", "--force", id])
            .stdin(Stdio::null())
            .output()
            .expect("delete the container")
    }
}

impl Drop for OciRuntime {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            let _ = self
                .command(&["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// podman with private storage and state, a hooks dir made from deploy/'s hooks.d file (path and
/// environment rewritten to the test's), cgroupfs under a private parent.
pub struct Podman {
    dir: tempfile::TempDir,
    pub runtime: Runtime,
    pub cgroups: Cgroups,
    cgroup_parent: String,
}

impl Podman {
    /// Runtimes that work with podman here: runc in the hybrid layout; crun in pure cgroup2
    /// only for `--privileged` containers (anything else makes crun load a device program
    /// needing an RLIMIT_MEMLOCK it cannot raise without CAP_SYS_RESOURCE).
    pub fn new(
        hooks: &HookEnv,
        runtime: Runtime,
        cgroups: Cgroups,
        parent: &CgroupParent,
    ) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("podmap-podman")
            .tempdir()
            .expect("temp dir");
        let hooks_dir = dir.path().join("hooks.d");
        std::fs::create_dir_all(&hooks_dir).expect("hooks dir");
        let mut hook: Value = serde_json::from_str(
            &std::fs::read_to_string(HOOKS_D_JSON).expect("deploy/crio/hooks.d/podmap.json"),
        )
        .expect("deploy's hooks.d file is JSON");
        hook["hook"]["path"] = json!(path_str(&hook_binary()));
        hook["hook"]["env"] = json!(hooks.env_strings());
        std::fs::write(
            hooks_dir.join("podmap.json"),
            serde_json::to_vec_pretty(&hook).expect("serializes"),
        )
        .expect("write the hooks.d file");
        Podman {
            dir,
            runtime,
            cgroups,
            cgroup_parent: format!("/{}", parent.name),
        }
    }

    /// The hooks directory this podman reads (`--hooks-dir`).
    pub fn hooks_dir(&self) -> PathBuf {
        self.dir.path().join("hooks.d")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = self.cgroups.command("podman");
        c.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--storage-driver", "vfs"])
            .args([
                "--events-backend",
                "none",
                "--runtime",
                self.runtime.binary(),
            ])
            .arg("--hooks-dir")
            .arg(d.join("hooks.d"))
            .args(args);
        c
    }

    /// `podman run` of `args` on `rootfs` with `annotations`; `detach` returns at once. The
    /// container's id comes back through --cidfile.
    pub fn run(
        &self,
        rootfs: &Rootfs,
        annotations: &BTreeMap<String, String>,
        detach: bool,
        extra: &[&str],
        args: &[&str],
    ) -> (Output, String) {
        let cidfile = self.dir.path().join(unique_name("cid"));
        let mut run: Vec<String> = vec!["run".into()];
        if detach {
            run.push("-d".into());
        }
        run.extend(
            [
                "--network",
                "none",
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=32768:32768",
                "--pids-limit",
                "0",
                "--cgroup-parent",
                &self.cgroup_parent,
            ]
            .map(String::from),
        );
        run.push("--cidfile".into());
        run.push(path_str(&cidfile));
        for (k, v) in annotations {
            run.push("--annotation".into());
            run.push(podman_csv(&format!("{k}={v}")));
        }
        run.extend(extra.iter().map(|s| s.to_string()));
        run.push("--rootfs".into());
        run.push(path_str(&rootfs.path()));
        run.extend(args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = run.iter().map(String::as_str).collect();
        let mut cmd = self.command(&argv);
        cmd.stdin(Stdio::null());
        let out = if detach {
            // conmon keeps the container's stdio: do not wait on pipes it holds.
            let log = self.dir.path().join(unique_name("run.log"));
            let f = std::fs::File::create(&log).expect("log");
            let status = cmd
                .stdout(f.try_clone().expect("dup"))
                .stderr(f)
                .status()
                .expect("run podman");
            Output {
                status,
                stdout: Vec::new(),
                stderr: std::fs::read(&log).unwrap_or_default(),
            }
        } else {
            cmd.output().expect("run podman")
        };
        let id = std::fs::read_to_string(&cidfile)
            .unwrap_or_default()
            .trim()
            .to_string();
        (out, id)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command(&["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Storage and state live in the temp dir; unmount anything podman left there first.
        let _ = Command::new("sh")
            .arg("-c")
            .arg("grep -o \" $0[^ ]*\" /proc/self/mounts | sort -r | xargs -r -n1 umount -l")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// podman parses `--annotation` values as CSV: quote what has commas or quotes.
fn podman_csv(s: &str) -> String {
    if s.contains(',') || s.contains('"') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A pod as CRI-O describes it to its containers' annotations.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

impl Pod {
    pub fn new(prefix: &str, namespace: &str) -> Pod {
        let name = unique_name(prefix);
        Pod {
            uid: fake_uid(&name),
            labels: [
                ("app".to_string(), name.clone()),
                ("tier".to_string(), "front".to_string()),
            ]
            .into(),
            name,
            namespace: namespace.to_string(),
        }
    }

    fn kube_labels(&self, container: &str) -> BTreeMap<String, String> {
        [
            ("io.kubernetes.pod.name", self.name.as_str()),
            ("io.kubernetes.pod.namespace", self.namespace.as_str()),
            ("io.kubernetes.pod.uid", self.uid.as_str()),
            ("io.kubernetes.container.name", container),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn common(&self, id: &str, container: &str) -> BTreeMap<String, String> {
        let mut a = self.kube_labels(container);
        a.insert("io.container.manager".into(), "cri-o".into());
        a.insert("io.kubernetes.cri-o.ContainerID".into(), id.into());
        a.insert(
            "io.kubernetes.cri-o.Created".into(),
            "2026-11-25T12:00:00.000000000Z".into(),
        );
        a.insert(
            "io.kubernetes.cri-o.LogPath".into(),
            format!(
                "/var/log/pods/{}_{}_{}/{container}/0.log",
                self.namespace, self.name, self.uid
            ),
        );
        a
    }

    /// The sandbox's annotations: its labels are the pod's (plus the kubelet's keys).
    pub fn sandbox_annotations(&self, sandbox_id: &str) -> BTreeMap<String, String> {
        let mut a = self.common(sandbox_id, "POD");
        let mut labels = self.labels.clone();
        labels.extend(self.kube_labels("POD"));
        a.insert("io.kubernetes.cri-o.ContainerType".into(), "sandbox".into());
        a.insert("io.kubernetes.cri-o.SandboxID".into(), sandbox_id.into());
        a.insert("io.kubernetes.cri-o.KubeName".into(), self.name.clone());
        a.insert(
            "io.kubernetes.cri-o.Namespace".into(),
            self.namespace.clone(),
        );
        a.insert(
            "io.kubernetes.cri-o.Name".into(),
            format!("k8s_POD_{}_{}_{}_0", self.name, self.namespace, self.uid),
        );
        a.insert(
            "io.kubernetes.cri-o.Labels".into(),
            serde_json::to_string(&labels).expect("labels"),
        );
        a.insert(
            "io.kubernetes.cri-o.Metadata".into(),
            json!({"name": self.name, "uid": self.uid, "namespace": self.namespace, "attempt": 0})
                .to_string(),
        );
        a
    }

    /// A workload container's annotations: its labels are the container's (docs/decisions.md #7).
    pub fn container_annotations(
        &self,
        id: &str,
        sandbox_id: &str,
        container: &str,
    ) -> BTreeMap<String, String> {
        let mut a = self.common(id, container);
        a.insert(
            "io.kubernetes.cri-o.ContainerType".into(),
            "container".into(),
        );
        a.insert("io.kubernetes.cri-o.SandboxID".into(), sandbox_id.into());
        a.insert(
            "io.kubernetes.cri-o.SandboxName".into(),
            format!("k8s_POD_{}_{}_{}_0", self.name, self.namespace, self.uid),
        );
        a.insert(
            "io.kubernetes.cri-o.ImageName".into(),
            "localhost/podmap-busybox:test".into(),
        );
        a.insert(
            "io.kubernetes.cri-o.Labels".into(),
            serde_json::to_string(&self.kube_labels(container)).expect("labels"),
        );
        a.insert(
            "io.kubernetes.cri-o.Metadata".into(),
            json!({"name": container, "attempt": 0}).to_string(),
        );
        a.insert("io.kubernetes.container.hash".into(), "1a2b3c4d".into());
        a.insert("io.kubernetes.container.restartCount".into(), "0".into());
        a
    }
}

/// A UUID-shaped uid derived from a unique name.
fn fake_uid(seed: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in seed.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let x = format!("{h:016x}{:016x}", t ^ h.rotate_left(17));
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// A 64-hex container id, as CRI-O and podman make them.
pub fn container_id(prefix: &str) -> String {
    let name = unique_name(prefix);
    let a = fake_uid(&name).replace('-', "");
    let b = fake_uid(&format!("{name}-b")).replace('-', "");
    format!("{a}{b}")
}

/// The `done in X ms` figures of the hook's debug lines for container `id` and a stage.
pub fn hook_times_ms(log: &str, stage: &str, id: &str) -> Vec<f64> {
    let tag = format!("{stage} id={id}:");
    log.lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| {
            l.rsplit("done in ")
                .next()?
                .strip_suffix(" ms")?
                .parse()
                .ok()
        })
        .collect()
}
