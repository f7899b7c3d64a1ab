//! The podmap image (scripts/image.sh), run as the DaemonSet runs it. The image is built once per
//! run of this file: the script rebuilds the four release binaries first (cargo's no-op when they
//! are current; a few minutes after a source changed) and skips podman's build when the tag
//! already holds the same files, so these tests never run stale binaries. Runs as root.
//!
//! What the image holds (the four binaries, the hooks.d entry, the libraries; no shell) and that
//! every binary runs in it; then podmapd and podmap-nri started from it with podman exactly as
//! the DaemonSet in deploy/kubernetes/ describes them (its env, args, capabilities, security
//! options and host-path mounts, read from the manifest at test time, the host paths remapped to
//! this test's private pins, state, socket and policy directories and a private containerd's NRI
//! socket directory), a pod run through CRI, and its entrypoint's exec seen attributed through
//! `podmap events` run from the image too.
//!
//! `PODMAP_IMAGE=<image>` tests an image built elsewhere instead of building one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use podmap_bpf::testing::{unique_name, PinDir};
use podmap_conformance::containerd::{
    images, plugin, teardown, ContainerSpec, Containerd, Options, PodSpec, Series,
};
use podmap_conformance::image::{self, Container, Translation};
use serde_json::{json, Value};

const BINARIES: [&str; 4] = ["podmapd", "podmap", "podmap-nri", "podmap-oci-hook"];
const HOOKS_JSON: &str = "/usr/local/share/podmap/hooks.d/podmap.json";

fn workspace(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The DaemonSet, found by kind among every YAML document of deploy/kubernetes/ (the manifests
/// may be one file or several, rendered from a chart or written by hand).
fn daemonset() -> Result<Value> {
    let dir = workspace("deploy/kubernetes");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut found = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path)?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("parsing {}", path.display()))?;
            if v["kind"] == "DaemonSet" {
                found.push((path.clone(), v));
            }
        }
    }
    // The one that runs podmapd (a chart could add others).
    let mut podmap = found.into_iter().filter(|(_, v)| {
        v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "podmapd"))
    });
    let (path, ds) = podmap
        .next()
        .with_context(|| format!("no DaemonSet with a podmapd container in {}", dir.display()))?;
    ensure!(
        podmap.next().is_none(),
        "more than one DaemonSet runs podmapd in {}",
        dir.display()
    );
    eprintln!("the DaemonSet of {}", path.display());
    Ok(ds)
}

/// What the image holds: the four binaries in /usr/local/bin and nothing else executable but
/// the libraries they load, the hooks.d entry as deploy/ has it, the libraries' licences; no
/// shell, no busybox, no other directory of binaries.
#[test]
fn the_image_holds_the_four_binaries_the_hooks_entry_and_no_shell() -> Result<()> {
    if podmap_bpf::testing::requires_root() {
        return Ok(());
    }
    let tag = image::build()?;
    let files = image::files(&tag)?;
    let listing = || {
        files
            .iter()
            .map(|(p, k)| format!("{p} {k}"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let bins: Vec<&str> = files
        .keys()
        .filter_map(|p| p.strip_prefix("/usr/local/bin/"))
        .collect();
    let mut expected = BINARIES.to_vec();
    expected.sort();
    assert_eq!(bins, expected, "/usr/local/bin:\n{}", listing());
    for b in BINARIES {
        assert_eq!(
            files[&format!("/usr/local/bin/{b}")],
            "f 755",
            "{b}:\n{}",
            listing()
        );
    }
    for shell in ["/bin", "/sbin", "/usr/bin", "/bin/sh", "/usr/bin/env"] {
        assert!(!files.contains_key(shell), "{shell} in:\n{}", listing());
    }
    // Every file is one of: the binaries, the hooks entry, a shared object in a library
    // directory, a licence.
    for (path, kind) in &files {
        if kind == "d" {
            continue;
        }
        let lib_dir = path.starts_with("/lib/") || path.starts_with("/lib64/");
        let allowed = path.starts_with("/usr/local/bin/")
            || path == HOOKS_JSON
            || (lib_dir && path.contains(".so"))
            || (path.starts_with("/usr/share/doc/")
                && (path.ends_with("/copyright") || kind.starts_with("l ")));
        assert!(allowed, "unexpected {path} ({kind}) in:\n{}", listing());
    }
    assert!(
        files.contains_key("/lib64/ld-linux-x86-64.so.2"),
        "{}",
        listing()
    );

    // The hooks entry is deploy's, byte for byte.
    assert_eq!(files[HOOKS_JSON], "f 644", "{}", listing());
    let image_json = read_from_image(&tag, HOOKS_JSON)?;
    assert_eq!(
        image_json,
        std::fs::read(workspace("deploy/crio/hooks.d/podmap.json"))?,
        "{HOOKS_JSON} differs from deploy/crio/hooks.d/podmap.json"
    );

    // Each binary runs in the image (the libraries are complete) and is the workspace's
    // version; none carries debug info.
    for b in BINARIES {
        let version = run_in_image(&tag, &[&format!("/usr/local/bin/{b}"), "--version"])?;
        assert_eq!(
            version.trim(),
            format!("{b} {}", env!("CARGO_PKG_VERSION")),
            "{b} --version"
        );
        let help = run_in_image(&tag, &[&format!("/usr/local/bin/{b}"), "--help"])?;
        assert!(help.contains("Usage:"), "{b} --help: {help}");
        let sections = sections_of(&tag, b)?;
        assert!(
            !sections.contains(".debug_info"),
            "{b} keeps its debug info:\n{sections}"
        );
    }
    // And no shell to fall back on.
    let out = image::podman()
        .args(["run", "--rm", "--pull", "never", "--network", "none"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=32768:32768",
        ])
        .args(["--pids-limit", "0", &tag, "/bin/sh", "-c", "true"])
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success(), "/bin/sh ran in the image");
    Ok(())
}

/// `argv` run in the image; its stdout, or the failure with both outputs.
fn run_in_image(tag: &str, argv: &[&str]) -> Result<String> {
    let out = image::podman()
        .args(["run", "--rm", "--pull", "never", "--network", "none"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=32768:32768",
        ])
        .args(["--pids-limit", "0", "--entrypoint", argv[0], tag])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "{argv:?} in {tag} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A file of the image, read through podman's mount of it.
fn read_from_image(tag: &str, path: &str) -> Result<Vec<u8>> {
    let out = image::podman_ok(&["image", "mount", tag])?;
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let bytes = std::fs::read(root.join(path.trim_start_matches('/')));
    let _ = image::podman_ok(&["image", "unmount", tag]);
    Ok(bytes?)
}

/// The section headers of a binary of the image (readelf on the mounted image).
fn sections_of(tag: &str, bin: &str) -> Result<String> {
    let out = image::podman_ok(&["image", "mount", tag])?;
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let r = std::process::Command::new("readelf")
        .args(["--section-headers", "--wide"])
        .arg(root.join("usr/local/bin").join(bin))
        .output();
    let _ = image::podman_ok(&["image", "unmount", tag]);
    let r = r.context("running readelf")?;
    ensure!(r.status.success(), "readelf failed on {bin}");
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

/// Runs every exec probe (startup, liveness, readiness) the DaemonSet gives container `name`
/// inside `container`; each must succeed now that it is up.
fn run_probes(template: &Value, name: &str, container: &Container) -> Result<()> {
    let c = template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no container {name}"))?;
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let Some(argv) = c[kind]["exec"]["command"].as_array() else {
            continue;
        };
        let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
        let out = container.exec(&argv)?;
        ensure!(
            out.status.success(),
            "{name}'s {kind} {argv:?} failed ({}): {}{}\nits output:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            container.logs()
        );
        eprintln!("{name}'s {kind} {argv:?} passed");
    }
    Ok(())
}

/// One request line to podmapd's socket; its one-line reply.
fn request(socket: &Path, line: &str) -> Option<Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(line.as_bytes()).ok()?;
    s.write_all(b"\n").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

/// A key anywhere in a JSON document.
fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|v| find_key(v, key))),
        Value::Array(a) => a.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// The directories that stand for the host's, removed with the test's cgroup parent on drop.
struct Private {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Private {
    fn new() -> Result<Private> {
        let dir = tempfile::Builder::new()
            .prefix("podmap-image-")
            .tempdir()
            .context("private dir")?;
        for d in ["state", "run", "policies"] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        Ok(Private {
            dir,
            cgroup_parent: format!("/{}", unique_name("podmap-test-image")),
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let left = teardown::remove_cgroup_tree(&self.cgroup_parent);
        if !left.is_empty() {
            eprintln!("image test: cgroups left behind: {left:?}");
        }
    }
}

/// podmapd and podmap-nri from the image, as the DaemonSet runs them, beside a private
/// containerd 2.1: a pod's entrypoint exec comes out of `podman run <image> podmap events`
/// attributed to its pod and container.
#[test]
fn the_daemonset_runs_from_the_image() -> Result<()> {
    if podmap_bpf::testing::requires_root() {
        return Ok(());
    }
    image::sweep_stale_containers();
    let tag = image::build()?;
    let ds = daemonset()?;
    let template = &ds["spec"]["template"];
    // Every container of the DaemonSet names the image this workspace builds (a registry may
    // prefix it), never a moving tag; the test runs the local build of it.
    for c in template["spec"]["containers"]
        .as_array()
        .into_iter()
        .chain(template["spec"]["initContainers"].as_array())
        .flatten()
    {
        let named = c["image"].as_str().unwrap_or_default();
        let built = image::tag();
        ensure!(
            named == built || named.ends_with(&format!("/{built}")),
            "the DaemonSet's container {} names the image {named:?}, not {built} (scripts/image.sh)",
            c["name"]
        );
    }

    // Declared in the order their drops must not run: the last declared goes first (the
    // subscriber, then the pod, the plugin, containerd, podmapd, the pins, the directories).
    let private = Private::new()?;
    let pins = PinDir::new("podmap-test-image");
    let cgroup_base = format!("/{}", unique_name("podmap-test"));
    let node = unique_name("node");
    let mut t = Translation {
        host_paths: BTreeMap::from([
            // The host's bpffs and cgroupfs themselves: the pins are private through
            // PODMAP_BPFFS_DIR below, the cgroups are read only.
            ("/sys/fs/bpf".to_string(), PathBuf::from("/sys/fs/bpf")),
            (
                "/sys/fs/cgroup".to_string(),
                PathBuf::from("/sys/fs/cgroup"),
            ),
            ("/var/lib/podmap".to_string(), private.path("state")),
            ("/run/podmap".to_string(), private.path("run")),
            ("/etc/podmap/policies".to_string(), private.path("policies")),
        ]),
        fields: BTreeMap::from([
            ("spec.nodeName".to_string(), node.clone()),
            ("metadata.namespace".to_string(), "podmap".to_string()),
            ("status.podIP".to_string(), "127.0.0.1".to_string()),
        ]),
        env: BTreeMap::from([
            // The host's bpffs is mounted where the manifest mounts it, at the same path, so
            // the private pin directory has the same name inside and out.
            (
                "PODMAP_BPFFS_DIR".to_string(),
                pins.path.display().to_string(),
            ),
            // This test's pods live below a cgroup of its own, where a cluster's live below
            // /kubepods (podmapd's default pod parents).
            ("PODMAP_POD_PARENTS".to_string(), cgroup_base.clone()),
            ("PODMAP_LOG".to_string(), "debug".to_string()),
        ]),
    };
    let started = Instant::now();

    let daemon_args = {
        let mut a = image::base_run_args(&unique_name("podmapd"), &private.cgroup_parent);
        a.extend(image::run_args(template, "podmapd", &tag, &t)?);
        a
    };
    eprintln!("podman {}", daemon_args.join(" "));
    let daemon = Container::start(&daemon_args)?;
    let socket = private.path("run/podmap.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(&socket, r#"{"status": {}}"#).is_none() {
        if !daemon.is_running() || Instant::now() > deadline {
            bail!(
                "podmapd from the image did not answer on {}; its output:\n{}",
                socket.display(),
                daemon.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("podmapd answers after {:.1?}", started.elapsed());

    // Its probes, run as kubelet runs them: in the container, through the image's binaries.
    run_probes(template, "podmapd", &daemon)?;

    let ctrd = Containerd::start(Options {
        series: Series::V2_1,
        cgroup_base: Some(cgroup_base.clone()),
        ..Default::default()
    })?;
    t.host_paths.insert(
        "/var/run/nri".to_string(),
        ctrd.layout
            .nri_socket
            .parent()
            .context("NRI socket dir")?
            .to_path_buf(),
    );
    ensure!(
        ctrd.layout.nri_socket.file_name() == Some("nri.sock".as_ref()),
        "the private containerd's NRI socket is not named as the manifest expects"
    );
    let from = ctrd.log_len();
    let plugin_args = {
        let mut a = image::base_run_args(&unique_name("podmap-nri"), &private.cgroup_parent);
        a.extend(image::run_args(template, "podmap-nri", &tag, &t)?);
        a
    };
    eprintln!("podman {}", plugin_args.join(" "));
    let nri = Container::start(&plugin_args)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while plugin::registration_line(&ctrd, from).is_none() {
        if !nri.is_running() || Instant::now() > deadline {
            bail!(
                "podmap-nri from the image did not register; its output:\n{}\ncontainerd's log:\n{}",
                nri.logs(),
                ctrd.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run_probes(template, "podmap-nri", &nri)?;
    // It runs with CAP_BPF alone, as the manifest gives it, and registered all the same.
    let pid = image::podman_ok(&["inspect", "--format", "{{.State.Pid}}", &nri.name])?;
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff")?;
    assert_eq!(
        u64::from_str_radix(eff.trim(), 16)?,
        1 << 39,
        "podmap-nri's effective capabilities: CAP_BPF (39) alone"
    );

    // The client from the image, on the socket directory as a node's user would mount it,
    // subscribed before the pod exists.
    let spec = PodSpec::new("web-image")
        .namespace(&unique_name("podmap-test"))
        .label("app", "web");
    let marker = unique_name("entry");
    let client_name = unique_name("podmap-events");
    let mut client_args = image::base_run_args(&client_name, &private.cgroup_parent);
    client_args.insert(1, "--rm".to_string());
    client_args.extend(
        [
            "--volume",
            &format!("{}:/run/podmap", private.path("run").display()),
            "--entrypoint",
            "/usr/local/bin/podmap",
            &tag,
            "events",
            "--namespace",
            &spec.namespace,
            "--container",
            "app",
            "--type",
            "exec",
            "-o",
            "json",
        ]
        .map(String::from),
    );
    let before = request(&socket, r#"{"status": {}}"#).context("status")?;
    let clients_before = find_key(&before, "clients_connected")
        .and_then(Value::as_u64)
        .with_context(|| format!("no clients_connected in the status: {before}"))?;
    let client = image::podman()
        .args(&client_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("podman run podmap events")?;
    // Removed on drop whatever happens (`--rm` only runs when it exits).
    let _client_container = Container {
        name: client_name.clone(),
    };
    let mut client = ChildGuard(client);
    let stdout = client.0.stdout.take().context("the client's stdout")?;
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = request(&socket, r#"{"status": {}}"#).context("status")?;
        if find_key(&st, "clients_connected").and_then(Value::as_u64) > Some(clients_before) {
            break;
        }
        if Instant::now() > deadline || client.0.try_wait()?.is_some() {
            let _ = client.0.kill();
            let out = client.take_output();
            bail!("podmap events from the image did not subscribe: {out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let pod = ctrd.run_pod(spec)?;
    let cspec = ContainerSpec::new("app", &["/bin/sh", "-c", images::WAIT_FOR_TERM, &marker]);
    let cid = pod.run(&cspec)?;
    let pid = ctrd.cri().container_status(&cid)?.pid as u64;
    let cgroup_id = pod.cgroup_id(&cid)?;

    // The events of the pod's container until its entrypoint's exec. A runtime's own re-exec
    // in the container's cgroup before it (runc's `init`, flagged runtime_init) may come first;
    // the entrypoint must be the first exec that is not the runtime's.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<Value> = Vec::new();
    let (e, line) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with('{') => {
                let v: Value =
                    serde_json::from_str(&line).with_context(|| format!("event {line}"))?;
                let runtimes = v["process"]["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == "runtime_init"));
                if !runtimes {
                    break (v, line);
                }
                seen.push(v);
            }
            Ok(other) => bail!("podmap events printed {other:?}"),
            Err(_) => {
                let _ = client.0.kill();
                bail!(
                    "no exec of the container's own within 60 s; events before: {seen:#?}\n\
                     client: {}\npodmapd:\n{}\npodmap-nri:\n{}",
                    client.take_output(),
                    daemon.logs(),
                    nri.logs()
                );
            }
        }
    };
    eprintln!("the first exec, from the image's podmap events: {e}");
    for r in &seen {
        assert_eq!(
            r["container"]["id"],
            cid.as_str(),
            "the runtime's exec: {r:#}"
        );
    }

    // The container's entrypoint (its PID 1, the marker in its argv), attributed to the pod.
    let ctx = || format!("event: {e:#}");
    assert_eq!(e["type"], "exec", "{}", ctx());
    assert_eq!(e["attribution"], "container", "{}", ctx());
    assert_eq!(e["process"]["pid"], pid, "the container's PID 1: {}", ctx());
    assert_eq!(e["process"]["binary"], "/bin/sh", "{}", ctx());
    assert_eq!(e["process"]["cgroup_id"], cgroup_id, "{}", ctx());
    assert!(line.contains(&marker), "the entrypoint's argv: {}", ctx());
    podmap_conformance::containerd::events::assert_attributed(&e, &pod, &cid, "app");
    assert_eq!(e["container"]["image"], images::TEST_IMAGE, "{}", ctx());
    assert_eq!(e["pod"]["labels"], json!({"app": "web"}), "{}", ctx());
    assert_eq!(e["node"], node.as_str(), "{}", ctx());

    // Both still running: nothing crashed under the pod.
    ensure!(daemon.is_running(), "podmapd exited:\n{}", daemon.logs());
    ensure!(nri.is_running(), "podmap-nri exited:\n{}", nri.logs());
    eprintln!("done after {:.1?}", started.elapsed());
    Ok(())
}

/// A spawned `podman run` killed on drop; its outputs read once it ended.
struct ChildGuard(std::process::Child);

impl ChildGuard {
    fn take_output(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(o) = self.0.stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        if let Some(e) = self.0.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
