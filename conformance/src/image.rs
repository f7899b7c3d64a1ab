//! The podmap image (scripts/image.sh) run with podman as the DaemonSet runs it: the image built
//! once per test process (the script rebuilds the release binaries first, so the image never
//! holds stale ones), a DaemonSet container translated into `podman run` flags (host PID,
//! privileges and capabilities, security options, environment, host-path mounts with their
//! propagation, the memory limit), host paths remapped to a test's private directories, and
//! containers removed on drop, also when the test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};
use podmap_bpf::testing::unique_name;
use serde_json::Value;

/// The label on every container a test starts, holding the test process's pid: a later run
/// removes the containers of a run that was killed before its drops ran.
pub const OWNER_LABEL: &str = "io.podmap.conformance.owner";

/// The tag scripts/image.sh builds: the crate version is the workspace's.
pub fn tag() -> String {
    format!("podmap:{}", env!("CARGO_PKG_VERSION"))
}

/// The script, found from this crate's source tree.
pub fn script() -> PathBuf {
    crate::bins::workspace_root().join("scripts/image.sh")
}

/// Builds the image once per process with scripts/image.sh and returns its tag. The script runs
/// cargo's release build of the four binaries first (into the target directory these tests were
/// built in), then skips podman's build when the tag already holds the same files.
///
/// `$PODMAP_IMAGE` names an image built elsewhere instead (a release candidate, or a broken one
/// to see the tests fail): taken as given, like `$PODMAP_BIN_DIR`'s binaries.
pub fn build() -> Result<String> {
    if let Ok(given) = std::env::var("PODMAP_IMAGE") {
        return Ok(given);
    }
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| run_script().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// What a failed build printed that explains it: cargo's progress lines dropped, and at most the
/// last 60 lines kept, because the error is at the end and a CI log shows only part of a long
/// message.
fn failure_excerpt(text: &str) -> String {
    const KEEP: usize = 60;
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            ![
                "Compiling ",
                "Downloaded ",
                "Downloading ",
                "Updating ",
                "Locking ",
            ]
            .iter()
            .any(|progress| line.starts_with(progress))
        })
        .collect();
    let skipped = lines.len().saturating_sub(KEEP);
    let mut excerpt = String::new();
    if skipped > 0 {
        excerpt.push_str(&format!("[{skipped} earlier lines left out]\n"));
    }
    excerpt.push_str(&lines[skipped..].join("\n"));
    excerpt
}

fn run_script() -> Result<String> {
    let script = script();
    let mut cmd = Command::new("bash");
    cmd.arg(&script).stdin(Stdio::null());
    // The release build goes beside the debug one these tests were built into, with the cargo
    // that built them.
    if std::env::var_os("PODMAP_BIN_DIR").is_none() {
        if let Some(target) = crate::bins::dir().parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
    }
    if let Some(cargo) = option_env!("CARGO") {
        cmd.env("CARGO", cargo);
    }
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{} failed ({}); its output without cargo's progress lines:\n{}",
            script.display(),
            out.status,
            failure_excerpt(&text)
        );
    }
    eprintln!(
        "{} ({:.0?}):\n{}",
        script.display(),
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(tag())
}

/// `podman` with the options every call here shares: runc, which runs containers in this
/// machine's hybrid cgroup layout (crun refuses it).
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// Runs podman to completion; fails with its output unless it succeeded.
pub fn podman_ok(args: &[&str]) -> Result<Output> {
    let out = podman()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running podman")?;
    ensure!(
        out.status.success(),
        "podman {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// `podman run` flags every test container gets, apart from what the manifest says: no network
/// (the pod network is not the test's concern; each container gets its own loopback, so the
/// metrics address never meets the host's), the file and process limits this machine allows
/// (podman's defaults exceed its hard limits, which root cannot raise here), and a cgroup parent
/// of the test's own.
pub fn base_run_args(name: &str, cgroup_parent: &str) -> Vec<String> {
    // SAFETY: getrlimit writes into the struct it is given.
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let nofile_max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) } == 0 {
        nofile.rlim_max.min(1 << 20)
    } else {
        1024
    };
    [
        "run",
        "--name",
        name,
        "--label",
        &format!("{OWNER_LABEL}={}", std::process::id()),
        "--pull",
        "never",
        "--network",
        "none",
        "--ulimit",
        &format!("nofile={nofile_max}:{nofile_max}"),
        "--ulimit",
        "nproc=32768:32768",
        "--pids-limit",
        "0",
        "--cgroup-parent",
        cgroup_parent,
    ]
    .map(String::from)
    .to_vec()
}

/// How a DaemonSet container becomes a `podman run` here.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// The manifest's hostPath paths, each to the directory that stands for it (every hostPath
    /// the container mounts must be listed: nothing of the host is mounted by accident).
    pub host_paths: BTreeMap<String, PathBuf>,
    /// Values of `valueFrom.fieldRef` by field path (`spec.nodeName`, `metadata.namespace`).
    pub fields: BTreeMap<String, String>,
    /// Environment set over the manifest's (private pin directory, log level, ...).
    pub env: BTreeMap<String, String>,
}

/// The `podman run` arguments after [`base_run_args`] for container `name` of the DaemonSet's
/// pod template (`spec.template`): flags, the image, then the container's args. The entrypoint
/// is the manifest's `command`; `$(VAR)` in command and args expands from the environment, as
/// kubelet expands it.
pub fn run_args(template: &Value, name: &str, image: &str, t: &Translation) -> Result<Vec<String>> {
    let pod = &template["spec"];
    let c = pod["containers"]
        .as_array()
        .into_iter()
        .chain(pod["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .with_context(|| format!("the DaemonSet has no container {name}"))?;
    let mut a: Vec<String> = Vec::new();
    fn flag(a: &mut Vec<String>, f: &str, v: &str) {
        a.push(f.to_string());
        a.push(v.to_string());
    }

    if pod["hostPID"] == true {
        flag(&mut a, "--pid", "host");
    }
    if pod["hostNetwork"] == true {
        bail!("{name}: hostNetwork is not translated (the test gives each container no network)");
    }

    // Security: privileged, or the capability lists; AppArmor, SELinux and seccomp as kubelet
    // applies them (no seccompProfile: Unconfined, kubelet's default).
    let sc = &c["securityContext"];
    if sc["privileged"] == true {
        a.push("--privileged".into());
    } else {
        for (key, f) in [("drop", "--cap-drop"), ("add", "--cap-add")] {
            for cap in sc["capabilities"][key].as_array().into_iter().flatten() {
                let cap = cap.as_str().context("a capability is not a string")?;
                let cap = if cap == "ALL" {
                    "all".to_string()
                } else {
                    format!("CAP_{cap}")
                };
                flag(&mut a, f, &cap);
            }
        }
    }
    let pod_sc = &pod["securityContext"];
    let apparmor = [
        &sc["appArmorProfile"]["type"],
        &pod_sc["appArmorProfile"]["type"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    .map(str::to_string)
    .or_else(|| {
        // The annotation form, for API servers before Kubernetes 1.30.
        let key = format!("container.apparmor.security.beta.kubernetes.io/{name}");
        template["metadata"]["annotations"][key.as_str()]
            .as_str()
            .map(|v| match v {
                "unconfined" => "Unconfined".to_string(),
                "runtime/default" => "RuntimeDefault".to_string(),
                v => v.to_string(),
            })
    });
    match apparmor.as_deref() {
        Some("Unconfined") => flag(&mut a, "--security-opt", "apparmor=unconfined"),
        None | Some("RuntimeDefault") => {}
        Some(other) => bail!("{name}: AppArmor profile {other} is not translated"),
    }
    if let Some(t) = [
        &sc["seLinuxOptions"]["type"],
        &pod_sc["seLinuxOptions"]["type"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    {
        flag(&mut a, "--security-opt", &format!("label=type:{t}"));
    }
    match [
        &sc["seccompProfile"]["type"],
        &pod_sc["seccompProfile"]["type"],
    ]
    .into_iter()
    .find_map(Value::as_str)
    {
        None | Some("Unconfined") => flag(&mut a, "--security-opt", "seccomp=unconfined"),
        Some("RuntimeDefault") => {}
        Some(other) => bail!("{name}: seccomp profile {other} is not translated"),
    }
    if let Some(m) = c["resources"]["limits"]["memory"].as_str() {
        flag(&mut a, "--memory", &memory(m)?);
    }

    // Environment: the manifest's values, fieldRefs from `t.fields`, then `t.env` over them.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let key = e["name"].as_str().context("an env entry without a name")?;
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            t.fields
                .get(f)
                .with_context(|| format!("{name}: no value for the field {f} of {key}"))?
                .clone()
        } else {
            bail!("{name}: env {key} has a source that is not translated: {e}");
        };
        env.insert(key.to_string(), value);
    }
    env.extend(t.env.clone());
    for (k, v) in &env {
        flag(&mut a, "--env", &format!("{k}={v}"));
    }

    // Mounts: each volume's hostPath, remapped; read-only and propagation as the manifest says.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().context("a volumeMount without a name")?;
        let target = m["mountPath"]
            .as_str()
            .context("a volumeMount without a path")?;
        let volume = volumes
            .get(vname)
            .with_context(|| format!("{name}: no volume {vname}"))?;
        let host = volume["hostPath"]["path"]
            .as_str()
            .with_context(|| format!("{name}: volume {vname} is not a hostPath"))?;
        let source = t
            .host_paths
            .get(host)
            .with_context(|| format!("{name}: no test directory stands for the host's {host}"))?;
        let mut opts = Vec::new();
        if m["readOnly"] == true {
            opts.push("ro");
        }
        opts.push(match m["mountPropagation"].as_str() {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") => "rshared",
            Some(other) => bail!("{name}: mountPropagation {other}"),
        });
        flag(
            &mut a,
            "--volume",
            &format!("{}:{target}:{}", source.display(), opts.join(",")),
        );
    }

    let expand = |s: &str| -> String {
        let mut out = s.to_string();
        for (k, v) in &env {
            out = out.replace(&format!("$({k})"), v);
        }
        out
    };
    let command: Vec<String> = c["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(expand)
        .collect();
    if !command.is_empty() {
        flag(
            &mut a,
            "--entrypoint",
            &serde_json::to_string(&command).expect("strings serialize"),
        );
    }
    a.push(image.to_string());
    a.extend(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(expand),
    );
    Ok(a)
}

/// A Kubernetes memory quantity in podman's units.
fn memory(q: &str) -> Result<String> {
    let (num, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = num.parse().with_context(|| format!("memory {q}"))?;
    let bytes = match unit {
        "" => n,
        "Ki" => n << 10,
        "Mi" => n << 20,
        "Gi" => n << 30,
        "k" => n * 1000,
        "M" => n * 1000 * 1000,
        "G" => n * 1000 * 1000 * 1000,
        _ => bail!("memory {q}: unit {unit} is not translated"),
    };
    Ok(format!("{bytes}b"))
}

/// A container podman runs detached; removed (killed) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run -d` of `args` (from [`base_run_args`] on).
    pub fn start(args: &[String]) -> Result<Container> {
        let name_at = args
            .iter()
            .position(|a| a == "--name")
            .context("the run arguments name no container")?;
        let c = Container {
            name: args[name_at + 1].clone(),
        };
        let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
        argv.insert(1, "--detach");
        podman_ok(&argv)?;
        Ok(c)
    }

    pub fn is_running(&self) -> bool {
        podman()
            .args(["inspect", "--format", "{{.State.Running}}", &self.name])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    }

    /// Its output so far, for failure messages.
    pub fn logs(&self) -> String {
        podman()
            .args(["logs", &self.name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// `podman exec` of `argv` in it.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        podman()
            .arg("exec")
            .arg(&self.name)
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .context("podman exec")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

fn remove(name: &str) {
    let _ = podman()
        .args(["rm", "--force", "--time", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes the containers of earlier test processes that are gone (killed before their drops).
pub fn sweep_stale_containers() {
    let Ok(out) = podman()
        .args([
            "ps",
            "--all",
            "--filter",
            &format!("label={OWNER_LABEL}"),
            "--format",
            &format!("{{{{.Names}}}} {{{{index .Labels \"{OWNER_LABEL}\"}}}}"),
        ])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        if let (Some(name), Some(pid)) = (f.next(), f.next()) {
            if !Path::new("/proc").join(pid).exists() {
                remove(name);
            }
        }
    }
}

/// A unique container name of the test's (podman names: letters, digits, `_.-`).
pub fn container_name(prefix: &str) -> String {
    unique_name(prefix)
}

/// The image's files, from podman's mount of it: path (from `/`) and what it is (`f` file with
/// its mode, `l -> target`, `d`).
pub fn files(image: &str) -> Result<BTreeMap<String, String>> {
    let out = podman_ok(&["image", "mount", image])?;
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let walked = walk(&root);
    let _ = podman_ok(&["image", "unmount", image]);
    walked
}

fn walk(root: &Path) -> Result<BTreeMap<String, String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let rel = format!("/{}", path.strip_prefix(root)?.display());
            let meta = std::fs::symlink_metadata(&path)?;
            let kind = if meta.file_type().is_symlink() {
                format!("l -> {}", std::fs::read_link(&path)?.display())
            } else if meta.is_dir() {
                stack.push(path);
                "d".to_string()
            } else {
                format!("f {:o}", meta.permissions().mode() & 0o7777)
            };
            out.insert(rel, kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::failure_excerpt;

    #[test]
    fn a_failed_builds_excerpt_keeps_the_error_at_the_end_and_drops_progress() {
        let mut text = String::new();
        for n in 0..300 {
            text.push_str(&format!("   Compiling crate{n} v1.0.0\n"));
        }
        for n in 0..100 {
            text.push_str(&format!("warning line {n}\n"));
        }
        text.push_str(
            "error: could not compile `podmap-daemon`: No space left on device (os error 28)\n",
        );
        let excerpt = failure_excerpt(&text);
        assert!(!excerpt.contains("Compiling"), "{excerpt}");
        assert!(
            excerpt.starts_with("[41 earlier lines left out]\n"),
            "{excerpt}"
        );
        assert!(
            excerpt.ends_with("No space left on device (os error 28)"),
            "{excerpt}"
        );
        assert_eq!(excerpt.lines().count(), 61);
    }
}
