//! podmap-nri against a real containerd with NRI, driven through CRI as kubelet drives it, with
//! the real podmapd reporting what the kernel saw. Every test runs four times: on containerd 1.7
//! (Debian trixie, NRI v0.6, config version 2) and 2.1 (Debian forky, its bundled NRI, config
//! version 3), each on this hybrid host and in a pure cgroup2 mount namespace; both series run
//! bookworm's runc. Each test runs its own podmapd (private pins and socket), its own containerd
//! (own root, state, sockets, runc root, cgroup parent) and its own plugin state; everything is
//! torn down on drop, also when an assertion fails. Runs as root.
//!
//! Timing words of the issue ("within a second") are bench targets: these tests wait with
//! generous timeouts and assert outcomes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use podmap_bpf::testing::unique_name;
use podmap_cgroup::CgroupKey;
use podmap_conformance::containerd::events::{self as ev, assert_attributed};
use podmap_conformance::containerd::plugin::probe;
use podmap_conformance::containerd::{
    images, teardown, ContainerSpec, Containerd, Node, NodeOptions, NriPlugin, Options, PluginMode,
    Pod, PodSpec, Series,
};
use podmap_conformance::daemon::{kubeconfig, EventStream};
use podmap_pod_cache::testing::{Resource, TestApiServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Slack on top of the runtime's own NRI timeout for a create+start on a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(10);

/// Runs a suite on containerd 1.7 and 2.1, each on this host's hybrid layout and in a pure
/// cgroup2 mount namespace.
macro_rules! on_both_layouts {
    ($suite:ident) => {
        mod $suite {
            use podmap_conformance::containerd::Series;

            #[test]
            fn containerd_1_7_hybrid() -> anyhow::Result<()> {
                if podmap_bpf::testing::requires_root() {
                    return Ok(());
                }
                super::$suite(Series::V1_7, false)
            }
            #[test]
            fn containerd_1_7_pure_cgroup2() -> anyhow::Result<()> {
                if podmap_bpf::testing::requires_root() {
                    return Ok(());
                }
                super::$suite(Series::V1_7, true)
            }
            #[test]
            fn containerd_2_1_hybrid() -> anyhow::Result<()> {
                if podmap_bpf::testing::requires_root() {
                    return Ok(());
                }
                super::$suite(Series::V2_1, false)
            }
            #[test]
            fn containerd_2_1_pure_cgroup2() -> anyhow::Result<()> {
                if podmap_bpf::testing::requires_root() {
                    return Ok(());
                }
                super::$suite(Series::V2_1, true)
            }
        }
    };
}

/// A pod in a namespace of its own (namespaces are DNS labels: unique names fit).
fn pod_spec(name: &str) -> PodSpec {
    PodSpec::new(name).namespace(&unique_name("podmap-test"))
}

/// podmapd's events of the pod's namespace, subscribed before the pod exists. The filter is
/// applied in podmapd, so other tests' containers and the host's processes never crowd this
/// client's queue; an event that is not attributed to the namespace is missing from it, and the
/// counts and lookups below fail.
fn stream_of(node: &Node, spec: &PodSpec) -> EventStream {
    node.daemon
        .events(&json!({ "namespace": spec.namespace }).to_string())
}

/// Starts a container whose PID 1 carries a unique marker and checks the exec of PID 1 itself
/// comes out attributed, from a cgroup mapped before that exec.
fn entrypoint_exec_checked(node: &Node, pod_name: &str) -> Result<()> {
    let spec = pod_spec(pod_name)
        .label("app", "web")
        .label("tier", "front");
    let mut stream = stream_of(node, &spec);
    let pod = node.ctrd.run_pod(spec)?;
    let marker = unique_name("entry");
    let spec = ContainerSpec::new("nginx", &["/bin/sh", "-c", images::WAIT_FOR_TERM, &marker]);
    let cid = pod.run(&spec)?;
    // The plugin maps at START_CONTAINER, before StartContainer returns: no waiting here.
    let cg = pod.cgroup_id(&cid)?;
    let Some(rec) = node.maps()?.records.get(CgroupKey::v2(cg))? else {
        anyhow::bail!(
            "container {cid} (cgroup {cg}) is not mapped when StartContainer returned\n{}",
            node.diagnostics()
        );
    };
    let events = stream.until(WAIT, |e| ev::is(e, "exec") && ev::args_contain(e, &marker));
    let exec = events.last().expect("until returns the match");
    assert_attributed(exec, &pod, &cid, "nginx");
    assert_eq!(ev::binary(exec), "/bin/sh");
    assert_eq!(
        exec["container"]["image"],
        images::TEST_IMAGE,
        "image: {exec:#}"
    );

    // PID 1 itself, not a later process.
    let status = node.ctrd.cri().container_status(&cid)?;
    assert_eq!(
        ev::pid(exec),
        status.pid as u64,
        "the exec of the container's PID 1"
    );
    assert_eq!(exec["process"]["cgroup_id"], cg);
    // The container's own init: not something an exec put there.
    assert_eq!(
        exec["process"]["entered_via_exec"], false,
        "the init's exec: {exec:#}"
    );

    // No retry or delay: the record was in the map before the entrypoint's first instruction.
    let exec_ns = ev::time_ns(exec).context("event time")?;
    ensure!(
        rec.created_ns <= exec_ns,
        "record written {} us after the entrypoint's exec",
        (rec.created_ns - exec_ns) / 1000
    );
    Ok(())
}

fn entrypoint_exec_is_attributed(series: Series, pure: bool) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    entrypoint_exec_checked(&node, "web-7d9c")
}
on_both_layouts!(entrypoint_exec_is_attributed);

/// The capabilities deploy/kubernetes/daemonset.yaml gives one of its containers: every other
/// one dropped, none privileged (checked here, so the list below is all the container has).
fn daemonset_capabilities(container: &str) -> Result<Vec<String>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let ds: Value = serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {path}"))?;
    let spec = &ds["spec"]["template"]["spec"];
    let c = spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == container)
        .with_context(|| format!("no container {container} in {path}"))?;
    let sc = &c["securityContext"];
    ensure!(sc["privileged"] != json!(true), "{container} is privileged");
    ensure!(
        sc["capabilities"]["drop"] == json!(["ALL"]),
        "{container} does not drop ALL: {sc}"
    );
    Ok(sc["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect())
}

/// The effective capability mask of a process.
fn effective_capabilities(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// podmap-nri holding only the capabilities the DaemonSet gives it (no `privileged`) maps a
/// container before its entrypoint runs and writes its policy memberships.
fn the_plugin_needs_only_the_daemonsets_capabilities(series: Series, pure: bool) -> Result<()> {
    let caps = daemonset_capabilities("podmap-nri")?;
    let mut opts = NodeOptions::new(pure, PluginMode::External).series(series);
    opts.plugin_capabilities = Some(caps.clone());
    let mut node = Node::start(opts)?;
    let pid = node.plugin.as_ref().context("plugin")?.pid();
    // CAP_BPF is 39, CAP_DAC_OVERRIDE 1, ...: compare with what the kernel says the process has.
    let mut want = 0u64;
    for c in &caps {
        let bit = match c.as_str() {
            "BPF" => 39,
            "DAC_OVERRIDE" => 1,
            "DAC_READ_SEARCH" => 2,
            "SYS_PTRACE" => 19,
            "SYS_RESOURCE" => 24,
            "PERFMON" => 38,
            other => anyhow::bail!("the test does not know capability {other}"),
        };
        want |= 1 << bit;
    }
    ensure!(
        effective_capabilities(pid)? == want,
        "podmap-nri runs with {:#x}, not {want:#x} ({caps:?})",
        effective_capabilities(pid)?
    );
    std::fs::write(
        node.setup.policies.join("capped.yaml"),
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: capped}\n\
         spec: {podSelector: {matchLabels: {tier: front}}, \
         rules: [{exec: {paths: [/bin/false]}, action: audit}]}\n",
    )?;
    entrypoint_exec_checked(&node, "capped")?;
    let maps = node.maps()?;
    ensure!(
        !maps.policy.memberships().is_empty(),
        "no membership written\n{}",
        node.diagnostics()
    );
    let log = node.setup.log_text();
    ensure!(
        !log.contains("Operation not permitted") && !log.contains("Permission denied"),
        "podmap-nri lacked a capability:\n{log}"
    );

    // On a node where podmap-nri starts before podmapd it creates the maps itself (bpf(2) map
    // creation is what needs CAP_BPF; opening pins someone made needs only the file).
    node.plugin = None;
    let fresh = podmap_bpf::testing::PinDir::new("podmap-test-capped");
    let mut setup = podmap_conformance::containerd::PluginSetup::new(&fresh.path)?;
    setup.capabilities = Some(caps);
    let _plugin = NriPlugin::start_registered(&node.ctrd, &setup)?;
    let pod = node.ctrd.run_pod(pod_spec("capped-first"))?;
    let cid = pod.run(&ContainerSpec::new(
        "app",
        &["/bin/sh", "-c", images::WAIT_FOR_TERM],
    ))?;
    let cg = pod.cgroup_id(&cid)?;
    let maps = podmap_bpf::SharedMaps::open(&fresh.path)?;
    ensure!(
        maps.records.get(CgroupKey::v2(cg))?.is_some(),
        "podmap-nri did not create the maps and map {cid}:\n{}",
        setup.log_text()
    );
    Ok(())
}
on_both_layouts!(the_plugin_needs_only_the_daemonsets_capabilities);

fn two_hundred_short_lived_processes_are_all_attributed(series: Series, pure: bool) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    let spec = pod_spec("burst").label("app", "burst");
    let mut stream = stream_of(&node, &spec);
    let pod = node.ctrd.run_pod(spec)?;
    let marker = unique_name("burst");
    // Absolute paths: busybox's NOFORK applets called by bare name do not exec.
    let script = "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done";
    let cid = pod.run(&ContainerSpec::new(
        "burst",
        &["/bin/sh", "-c", script, &marker],
    ))?;

    let mut events = stream.until(WAIT, |e| ev::is(e, "exec") && ev::args_contain(e, &marker));
    let pid1 = ev::pid(events.last().expect("match"));
    let cg = events.last().expect("match")["process"]["cgroup_id"].clone();
    events.extend(stream.until(WAIT, |e| ev::is(e, "exit") && ev::pid(e) == pid1));
    assert_eq!(
        pod.wait_exited(&cid, WAIT)?,
        0,
        "{}",
        pod.container_log("burst")
    );

    // Everything of the namespace is the sandbox's or this container's.
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| ev::container_id(e) != Some(&pod.id))
        .collect();
    for e in &ours {
        assert_attributed(e, &pod, &cid, "burst");
        assert_eq!(e["process"]["cgroup_id"], cg, "{e:#}");
    }
    let count = |kind: &str| {
        ours.iter()
            .filter(|e| ev::is(e, kind) && ev::binary(e) == "/bin/true")
            .count()
    };
    let lost = node.daemon.status()["events_lost_slow_clients"].clone();
    assert_eq!(lost, 0, "podmapd dropped events of a slow client");
    assert_eq!(count("exec"), 200, "execs of /bin/true");
    assert_eq!(count("exit"), 200, "exits of /bin/true");
    Ok(())
}
on_both_layouts!(two_hundred_short_lived_processes_are_all_attributed);

fn init_and_two_containers_and_the_pause_process_are_told_apart(
    series: Series,
    pure: bool,
) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    let spec = pod_spec("multi-5f6b").label("app", "multi");
    let mut stream = stream_of(&node, &spec);
    let pod = node.ctrd.run_pod(spec)?;
    let tag = unique_name("multi");
    // kubelet runs init containers to completion before the others.
    let init = pod.run(&ContainerSpec::new(
        "init",
        &["/bin/sh", "-c", &format!("/bin/true init-{tag}")],
    ))?;
    assert_eq!(
        pod.wait_exited(&init, WAIT)?,
        0,
        "{}",
        pod.container_log("init")
    );
    let app = pod.run(&ContainerSpec::shell_then_wait(
        "app",
        &format!("/bin/true app-{tag}"),
    ))?;
    let side = pod.run(&ContainerSpec::shell_then_wait(
        "sidecar",
        &format!("/bin/true sidecar-{tag}"),
    ))?;

    let mut wanted: BTreeSet<String> = ["init", "app", "sidecar"]
        .iter()
        .map(|n| format!("{n}-{tag}"))
        .collect();
    let events = stream.until(WAIT, |e| {
        if ev::is(e, "exec") && ev::binary(e) == "/bin/true" {
            wanted.retain(|m| !ev::args_contain(e, m));
        }
        wanted.is_empty()
    });
    for (name, id) in [("init", &init), ("app", &app), ("sidecar", &side)] {
        let marker = format!("{name}-{tag}");
        let e = events
            .iter()
            .find(|e| ev::is(e, "exec") && ev::args_contain(e, &marker))
            .expect("seen");
        assert_attributed(e, &pod, id, name);
        for e in events.iter().filter(|e| ev::container_id(e) == Some(id)) {
            assert_attributed(e, &pod, id, name);
        }
    }

    // runc's own init stages run in each container's cgroup before its program: attributed
    // there, and flagged as the runtime at work; the containers' own processes are not.
    let runtime_init = |e: &Value| {
        e["process"]["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("runtime_init")))
    };
    let looks_like_runc =
        |e: &Value| ev::binary(e).starts_with("[runc:[") || e["process"]["args"] == json!(["init"]);
    ensure!(
        events.iter().any(runtime_init),
        "no runtime init event: {events:#?}"
    );
    for e in &events {
        ensure!(
            runtime_init(e) == looks_like_runc(e),
            "flagged wrongly: {e:#}"
        );
    }

    // The pause process execs before any NRI event names the pod; it is still attributed to
    // its pod (the sandbox's record).
    let pause = events
        .iter()
        .find(|e| ev::is(e, "exec") && ev::container_id(e) == Some(&pod.id))
        .with_context(|| format!("no exec event of the sandbox {}", pod.id))?;
    assert_eq!(pause["attribution"], "container", "{pause:#}");
    assert_eq!(pause["pod"]["uid"], pod.spec.uid.as_str(), "{pause:#}");
    assert_eq!(pause["pod"]["name"], pod.spec.name.as_str(), "{pause:#}");
    assert_eq!(pause["pod"]["namespace"], pod.spec.namespace.as_str());
    assert_eq!(pause["pod"]["labels"], json!(pod.spec.labels));
    assert_eq!(pause["process"]["cgroup_id"], pod.cgroup_id(&pod.id)?);
    Ok(())
}
on_both_layouts!(init_and_two_containers_and_the_pause_process_are_told_apart);

fn containers_created_before_the_plugin_are_mapped_through_synchronize(
    series: Series,
    pure: bool,
) -> Result<()> {
    let mut node = Node::start(NodeOptions::new(pure, PluginMode::Later).series(series))?;
    let pod = node
        .ctrd
        .run_pod(pod_spec("early-1").label("app", "early"))?;
    let cid = pod.run(&ContainerSpec::shell_then_wait("early", "/bin/true"))?;
    let (cg, sandbox_cg) = (pod.cgroup_id(&cid)?, pod.cgroup_id(&pod.id)?);
    ensure!(
        node.maps()?.records.get(CgroupKey::v2(cg))?.is_none(),
        "mapped before any plugin ran"
    );

    node.plugin = Some(NriPlugin::start_registered(&node.ctrd, &node.setup)?);
    node.wait_mapped(cg, WAIT)?;
    node.wait_mapped(sandbox_cg, WAIT)?;

    // A new process in the old container is attributed.
    let mut stream = stream_of(&node, &pod.spec);
    let marker = unique_name("sync");
    let out = node
        .ctrd
        .cri()
        .exec_sync(&cid, &["/bin/true", &marker], 30)?;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let events = stream.until(WAIT, |e| ev::is(e, "exec") && ev::args_contain(e, &marker));
    assert_attributed(events.last().expect("match"), &pod, &cid, "early");
    Ok(())
}
on_both_layouts!(containers_created_before_the_plugin_are_mapped_through_synchronize);

/// RunPodSandbox, CreateContainer and StartContainer of a fresh pod; returns the pod and how
/// long the three calls took.
fn timed_pod<'a>(ctrd: &'a Containerd, name: &str) -> Result<(Pod<'a>, Duration)> {
    let t = Instant::now();
    let pod = ctrd.run_pod(pod_spec(name).label("app", name))?;
    pod.run(&ContainerSpec::shell_then_wait("c", "/bin/true"))?;
    Ok((pod, t.elapsed()))
}

fn creation_survives_a_stopped_hung_or_crashing_plugin(series: Series, pure: bool) -> Result<()> {
    let mut node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    let budget = node.ctrd.options.nri_request_timeout + SLACK;
    // The readiness probe follows the registration: ready now, naming the runtime.
    let (ready, said) = probe(&node.setup)?;
    ensure!(
        ready && said.contains("registered with containerd"),
        "{said}"
    );
    // `podmap check` on the node reads the same state.
    let out = std::process::Command::new(podmap_conformance::bins::path("podmap"))
        .arg("check")
        .arg("--socket")
        .arg(&node.daemon.socket)
        .arg("--bpffs-dir")
        .arg(&node.daemon.pins.path)
        .arg("--state-dir")
        .arg(&node.setup.state)
        .arg("--nri-socket")
        .arg(&node.ctrd.layout.nri_socket)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.lines()
            .any(|l| l.starts_with("ok    podmap-nri") && l.contains("registered with containerd")),
        "podmap check:\n{text}"
    );

    // Stopped.
    node.plugin.as_mut().expect("external").stop();
    let (ready, said) = probe(&node.setup)?;
    ensure!(!ready, "ready with the plugin stopped: {said}");
    let (_stopped, took) = timed_pod(&node.ctrd, "while-stopped")?;
    eprintln!("pod and container created in {took:?} with the plugin stopped");
    ensure!(
        took < budget,
        "creation took {took:?} with the plugin stopped"
    );
    node.plugin = Some(NriPlugin::start_registered(&node.ctrd, &node.setup)?);
    entrypoint_exec_checked(&node, "after-stop")?;

    // Hung: containerd waits out its own timeout once, drops the plugin and goes on.
    let from = node.ctrd.log_len();
    node.plugin.as_ref().expect("restarted").hang();
    let (_hung, took) = timed_pod(&node.ctrd, "while-hung")?;
    eprintln!("pod and container created in {took:?} with the plugin hung");
    ensure!(took < budget, "creation took {took:?} with the plugin hung");
    node.plugin.as_ref().expect("restarted").resume();
    // Back: it notices the dropped connection and registers again.
    node.plugin
        .as_mut()
        .expect("restarted")
        .wait_registered(&node.ctrd, from, &node.setup)?;
    entrypoint_exec_checked(&node, "after-hang")?;

    // Crashing in the middle of a call.
    node.plugin.as_ref().expect("registered").hang();
    let (pod, took) = std::thread::scope(|s| {
        let creating = s.spawn(|| timed_pod(&node.ctrd, "while-crashing"));
        std::thread::sleep(Duration::from_millis(500));
        node.plugin.as_mut().expect("registered").crash();
        creating.join().expect("creating thread")
    })?;
    // Killed, it left its file saying registered: the probe does not believe a dead writer.
    let (ready, said) = probe(&node.setup)?;
    ensure!(!ready && said.contains("gone"), "after a crash: {said}");
    eprintln!("pod and container created in {took:?} with the plugin crashing");
    ensure!(
        took < budget,
        "creation took {took:?} with the plugin crashing"
    );
    drop(pod);
    node.plugin = Some(NriPlugin::start_registered(&node.ctrd, &node.setup)?);
    entrypoint_exec_checked(&node, "after-crash")?;
    Ok(())
}
on_both_layouts!(creation_survives_a_stopped_hung_or_crashing_plugin);

/// What ExecSync runs (as `kubectl exec` and exec probes do: the runtime's exec) is marked
/// entered_via_exec, and so is what it starts; the entrypoint and its children are not.
fn exec_sessions_are_told_from_the_containers_own_processes(
    series: Series,
    pure: bool,
) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    let spec = pod_spec("exec-provenance").label("app", "exec");
    let mut stream = stream_of(&node, &spec);
    let pod = node.ctrd.run_pod(spec)?;
    let own = unique_name("own-child");
    let cid = pod.run(&ContainerSpec::shell_then_wait(
        "app",
        &format!("/bin/true {own}"),
    ))?;
    let events = stream.until(WAIT, |e| ev::is(e, "exec") && ev::args_contain(e, &own));
    let child = events.last().expect("match");
    assert_attributed(child, &pod, &cid, "app");
    ensure!(
        child["process"]["entered_via_exec"] == false,
        "the entrypoint's child: {child:#}"
    );

    let marker = unique_name("exec-child");
    let out = node.ctrd.cri().exec_sync(
        &cid,
        &["/bin/sh", "-c", &format!("/bin/true {marker}; exit 0")],
        30,
    )?;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let events = stream.until(WAIT, |e| {
        ev::is(e, "exec") && ev::binary(e) == "/bin/true" && ev::args_contain(e, &marker)
    });
    let session = events
        .iter()
        .find(|e| ev::is(e, "exec") && ev::binary(e) == "/bin/sh" && ev::args_contain(e, &marker))
        .with_context(|| format!("no exec of the session's shell: {events:#?}"))?;
    assert_attributed(session, &pod, &cid, "app");
    ensure!(
        session["process"]["entered_via_exec"] == true,
        "the session's shell: {session:#}"
    );
    let child = events.last().expect("match");
    ensure!(
        child["process"]["entered_via_exec"] == true
            && child["process"]["ppid"] == session["process"]["pid"],
        "the session's child: {child:#}"
    );
    Ok(())
}
on_both_layouts!(exec_sessions_are_told_from_the_containers_own_processes);

fn prelaunched_plugin_registers_and_maps(series: Series, pure: bool) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::Prelaunched).series(series))?;
    entrypoint_exec_checked(&node, "prelaunched")
}
on_both_layouts!(prelaunched_plugin_registers_and_maps);

/// The harness itself, without the plugin: pods run in the layout asked for, and nothing of a
/// containerd instance survives it.
fn the_harness_runs_pods_and_leaves_nothing_behind(series: Series, pure: bool) -> Result<()> {
    let ctrd = Containerd::start(Options {
        series,
        pure_cgroup2: pure,
        ..Default::default()
    })?;
    let (base, work, socket) = (
        ctrd.cgroup_base.clone(),
        ctrd.layout.work.clone(),
        ctrd.layout.socket.to_string_lossy().into_owned(),
    );
    {
        let pod = ctrd.run_pod(pod_spec("harness"))?;
        let cid = pod.run(&ContainerSpec::new("once", &["/bin/sh", "-c", "exit 3"]))?;
        assert_eq!(pod.wait_exited(&cid, WAIT)?, 3);
        let cid = pod.run(&ContainerSpec::shell_then_wait("up", "/bin/true"))?;
        let rel = pod.cgroup_of(&cid);
        ensure!(pod.cgroup_id(&cid)? > 1, "a cgroup v2 of its own");
        // Hybrid: runc puts the container in every v1 controller too; pure v2: only in v2.
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'));
        assert_eq!(v1.exists(), !pure, "{}", v1.display());
        pod.wait_settled(&cid, WAIT)?;
        let t = Instant::now();
        pod.stop_and_remove(&cid, 10)?;
        ensure!(t.elapsed() < Duration::from_secs(5), "PID 1 traps TERM");
        // Left running for the teardown to find.
        pod.run(&ContainerSpec::shell_then_wait("left", "/bin/true"))?;
        std::mem::forget(pod);
    }
    drop(ctrd);
    let left: Vec<_> = teardown::cgroup_mounts()
        .into_iter()
        .map(|m| m.join(base.trim_start_matches('/')))
        .filter(|p| p.exists())
        .collect();
    ensure!(left.is_empty(), "cgroups left: {left:?}");
    ensure!(teardown::pids_with_arg(&socket).is_empty(), "shims left");
    ensure!(!work.exists(), "work dir left: {}", work.display());
    Ok(())
}
on_both_layouts!(the_harness_runs_pods_and_leaves_nothing_behind);

/// A policy naming a pod's entrypoint binary stops it at its first exec (the exec never
/// completes and its policy event names the pod), while the same image in a namespace the policy
/// does not select runs freely. Membership is written by podmap-nri before the container starts.
fn a_policy_stops_the_entrypoint_only_in_selected_pods(series: Series, pure: bool) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    let selected = pod_spec("guarded").label("app", "guarded");
    let free = pod_spec("free").label("app", "guarded");
    std::fs::write(
        node.setup.policies.join("kill-sleep.yaml"),
        format!(
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: kill-sleep}}\nspec:\n  namespaces: [{}]\n  podSelector: {{matchLabels: {{app: guarded}}}}\n  rules:\n  - exec: {{paths: [/bin/sleep]}}\n    action: deny\n    fallback: kill\n",
            selected.namespace
        ),
    )?;
    // podmapd holds the rule tables; podmap-nri reads the policy at the next container.
    node.daemon.wait_policies(1);
    let mut stream = stream_of(&node, &selected);
    let pod = node.ctrd.run_pod(selected)?;
    let cid = pod.run(&ContainerSpec::new("app", &["/bin/sleep", "1000"]))?;
    let events = stream.until(WAIT, |e| ev::is(e, "policy"));
    let hit = events.last().expect("until returns the match");
    assert_attributed(hit, &pod, &cid, "app");
    assert_eq!(hit["policy"]["name"], "kill-sleep", "{hit:#}");
    assert_eq!(hit["policy"]["path"], "/bin/sleep");
    assert_eq!(hit["policy"]["action"], "deny");
    assert!(
        hit["policy"]["mode"] == "kill" || hit["policy"]["mode"] == "lsm",
        "{hit:#}"
    );
    assert!(
        !events.iter().any(|e| ev::is(e, "exec")
            && ev::binary(e) == "/bin/sleep"
            && e["container"]["id"] == cid.as_str()),
        "the killed exec has no exec event: {events:#?}"
    );
    // The pod's sandbox runs the same binary and is never selected: it lives on.
    assert!(
        events
            .iter()
            .any(|e| ev::is(e, "exec") && e["container"]["name"] == "POD"),
        "the pause process ran: {events:#?}"
    );
    // The same image where the policy does not select: runs (its exec of /bin/sleep appears).
    let mut free_stream = stream_of(&node, &free);
    let free_pod = node.ctrd.run_pod(free)?;
    let free_cid = free_pod.run(&ContainerSpec::new("app", &["/bin/sleep", "1000"]))?;
    let events = free_stream.until(WAIT, |e| {
        ev::is(e, "exec")
            && ev::binary(e) == "/bin/sleep"
            && e["container"]["id"] == free_cid.as_str()
    });
    assert_attributed(events.last().unwrap(), &free_pod, &free_cid, "app");
    Ok(())
}
on_both_layouts!(a_policy_stops_the_entrypoint_only_in_selected_pods);

/// An open rule stops a read of a named path inside selected pods only: the process is killed at
/// its open, and the policy event names the pod; the same command elsewhere gets to open (and,
/// the path being absent from the image, fails with an ordinary error).
fn an_open_rule_stops_reads_only_in_selected_pods(series: Series, pure: bool) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    let selected = pod_spec("reader").label("app", "reader");
    let free = pod_spec("reader").label("app", "reader");
    std::fs::write(
        node.setup.policies.join("no-token.yaml"),
        format!(
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: no-token}}\nspec:\n  namespaces: [{}]\n  rules:\n  - open: {{prefixes: [/secret], access: read}}\n    action: kill\n",
            selected.namespace
        ),
    )?;
    // podmapd holds the rule tables; podmap-nri reads the policy at the next container.
    node.daemon.wait_policies(1);
    let reader = ["/bin/cat", "/secret/token"];
    let mut stream = stream_of(&node, &selected);
    let pod = node.ctrd.run_pod(selected)?;
    let cid = pod.run(&ContainerSpec::new("reader", &reader))?;
    // The exit of cat itself (runc's own helpers exit in the container's cgroup first).
    let events = stream.until(WAIT, |e| {
        ev::is(e, "exit") && e["container"]["id"] == cid.as_str() && ev::binary(e) == "/bin/cat"
    });
    let hit = events
        .iter()
        .find(|e| ev::is(e, "policy"))
        .with_context(|| format!("no policy event: {events:#?}"))?;
    assert_attributed(hit, &pod, &cid, "reader");
    assert_eq!(hit["policy"]["rule"], "open", "{hit:#}");
    assert_eq!(hit["policy"]["path"], "/secret/token");
    assert_eq!(events.last().unwrap()["exit"]["signal"], "SIGKILL");

    let mut free_stream = stream_of(&node, &free);
    let free_pod = node.ctrd.run_pod(free)?;
    let free_cid = free_pod.run(&ContainerSpec::new("reader", &reader))?;
    let events = free_stream.until(WAIT, |e| {
        ev::is(e, "exit")
            && e["container"]["id"] == free_cid.as_str()
            && ev::binary(e) == "/bin/cat"
    });
    assert!(!events.iter().any(|e| ev::is(e, "policy")), "{events:#?}");
    let exit = events.last().unwrap();
    assert!(exit["exit"]["signal"].is_null(), "{exit:#}");
    assert_eq!(
        exit["exit"]["code"], 1,
        "cat's own error for a missing file: {exit:#}"
    );
    Ok(())
}
on_both_layouts!(an_open_rule_stops_reads_only_in_selected_pods);

/// The pod as the API server has it (what kubelet would have created the sandbox from): same
/// uid, name, namespace and labels, on podmapd's node.
fn api_pod(
    pod: &Pod,
    node: &str,
    labels: &[(&str, &str)],
    cid: &str,
) -> k8s_openapi::api::core::v1::Pod {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.spec.name, "namespace": pod.spec.namespace, "uid": pod.spec.uid,
                     "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": images::TEST_IMAGE}]},
        "status": {"phase": "Running",
                   "containerStatuses": [{"name": "app", "containerID": format!("containerd://{cid}"),
                                          "image": images::TEST_IMAGE, "imageID": "", "ready": true,
                                          "restartCount": 0}]}
    }))
    .expect("a valid Pod")
}

/// Runs `/bin/cat /dev/null` in the container (as `kubectl exec` does) until `killed` is the
/// outcome, and returns how long that took from `since`.
fn exec_until(ctrd: &Containerd, cid: &str, killed: bool, since: Instant) -> Result<Duration> {
    loop {
        let out = ctrd.cri().exec_sync(cid, &["/bin/cat", "/dev/null"], 10)?;
        if (out.exit_code != 0) == killed {
            return Ok(since.elapsed());
        }
        ensure!(
            since.elapsed() < WAIT,
            "exec still {} after {WAIT:?}: {out:?}",
            if killed { "runs" } else { "killed" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Policy changes reach containers already running, through the cluster as a user makes them:
/// a PodPolicy resource added on the API server (podmapd mirrors it into the policy directory),
/// the pod's labels changed there (out of the selector and back in), and the resource removed.
/// Each is seen by an exec into the running container.
fn policy_changes_reach_running_containers(series: Series, pure: bool) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let server = runtime.block_on(TestApiServer::start());
    let tmp = tempfile::tempdir()?;
    let kc = kubeconfig(tmp.path(), &server.url());
    let node = Node::start(
        NodeOptions::new(pure, PluginMode::External)
            .series(series)
            .daemon_env("PODMAP_KUBECONFIG", &kc.display().to_string()),
    )?;
    let spec = pod_spec("shop").label("app", "shop");
    let mut stream = stream_of(&node, &spec);
    let pod = node.ctrd.run_pod(spec)?;
    let cid = pod.run(&ContainerSpec::new(
        "app",
        &["/bin/sh", "-c", images::WAIT_FOR_TERM],
    ))?;
    let mut labels = vec![("app", "shop")];
    server.apply(&api_pod(&pod, &node.daemon.node, &labels, &cid));
    node.daemon
        .wait_status("the pod cache holds the pod", |st| {
            st["pods_cached"] == 1 && st["policies"]["resources"]["synced"] == true
        });
    exec_until(&node.ctrd, &cid, false, Instant::now())?;

    // Added on the API server.
    let policy = json!({
        "apiVersion": "podmap.dev/v1alpha1", "kind": "PodPolicy",
        "metadata": {"name": unique_name("no-cat")},
        "spec": {"namespaces": [pod.spec.namespace], "podSelector": {"matchLabels": {"app": "shop"}},
                 "rules": [{"exec": {"paths": ["/bin/cat"]}, "action": "kill"}]}
    });
    let name = policy["metadata"]["name"].as_str().unwrap().to_string();
    let t = Instant::now();
    server.apply_object(Resource::PodPolicies, policy);
    let added = exec_until(&node.ctrd, &cid, true, t)?;
    let events = stream.until(WAIT, |e| ev::is(e, "policy"));
    let hit = events.last().expect("until returns the match");
    assert_attributed(hit, &pod, &cid, "app");
    assert_eq!(hit["policy"]["name"], name.as_str(), "{hit:#}");
    assert_eq!(hit["policy"]["path"], "/bin/cat");
    assert_eq!(hit["policy"]["mode"], "kill");

    // Relabelled out of the selector, and back in.
    labels[0].1 = "shop-canary";
    let t = Instant::now();
    server.apply(&api_pod(&pod, &node.daemon.node, &labels, &cid));
    let relabelled_out = exec_until(&node.ctrd, &cid, false, t)?;
    labels[0].1 = "shop";
    let t = Instant::now();
    server.apply(&api_pod(&pod, &node.daemon.node, &labels, &cid));
    let relabelled_in = exec_until(&node.ctrd, &cid, true, t)?;

    // Removed.
    let t = Instant::now();
    ensure!(server.delete_object(Resource::PodPolicies, "", &name));
    let removed = exec_until(&node.ctrd, &cid, false, t)?;
    let st = node.daemon.status();
    assert_eq!(st["policies"]["memberships"], 0, "{st:#}");
    eprintln!(
        "policy changes took effect on the running container after: added {added:?}, \
         relabelled out {relabelled_out:?}, relabelled in {relabelled_in:?}, removed {removed:?} \
         (each including one exec round trip)"
    );
    Ok(())
}
on_both_layouts!(policy_changes_reach_running_containers);

/// Every capability this node can give a container (docs/decisions.md #36), read here as the
/// test's own truth: each the kernel knows (cap_last_cap) that the host's init holds in its
/// bounding set.
fn node_capabilities() -> Result<u64> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()?;
    let known = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    Ok(known & proc_capabilities(1, "CapBnd")?)
}

/// One capability set of a process (`CapEff`, `CapBnd`) as the kernel shows it.
fn proc_capabilities(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// The names podmap gives the bits of `mask`, as a JSON array.
fn names(mask: u64) -> Value {
    json!(podmap_proto::caps::capability_names(mask))
}

/// Credentials and privilege end to end (issue 14 item 9): a privileged container (in a
/// privileged sandbox, as kubelet makes a pod with one) and one that drops every capability and
/// runs as uid 1000. Through `podmap events -o json`, each entrypoint's exec carries the
/// credentials the kernel gave it (root with every capability the node gives, against uid 1000
/// with none) and its container's record what podmap-nri read at START_CONTAINER (privileged
/// with that full bounding set, against not privileged with an empty one); `podmap containers
/// -o json` says the same of both.
fn privileged_and_unprivileged_containers_are_told_apart(series: Series, pure: bool) -> Result<()> {
    let node = Node::start(NodeOptions::new(pure, PluginMode::External).series(series))?;
    let node_caps = node_capabilities()?;
    // Both pods in one namespace: one client sees both.
    let ns = unique_name("podmap-test");
    let root_spec = PodSpec::new("root-pod")
        .namespace(&ns)
        .label("app", "root")
        .privileged();
    let user_spec = PodSpec::new("user-pod").namespace(&ns).label("app", "user");
    let mut client = node.daemon.client_events(&["-n", &ns, "--type", "exec"]);
    let mut privileged_only =
        node.daemon
            .client_events(&["-n", &ns, "--type", "exec", "--privileged"]);

    // The unprivileged one first: were it ever shown as privileged, a privileged-only view
    // would show it before the privileged container's exec.
    let user_pod = node.ctrd.run_pod(user_spec)?;
    let user_marker = unique_name("user");
    let mut user = ContainerSpec::new(
        "user",
        &["/bin/sh", "-c", images::WAIT_FOR_TERM, &user_marker],
    );
    user.cap_drop = vec!["ALL".to_string()];
    user.run_as_user = Some(1000);
    let user_cid = user_pod.run(&user)?;

    let root_pod = node.ctrd.run_pod(root_spec)?;
    let root_marker = unique_name("root");
    let mut root = ContainerSpec::new(
        "root",
        &["/bin/sh", "-c", images::WAIT_FOR_TERM, &root_marker],
    );
    root.privileged = true;
    let root_cid = root_pod.run(&root)?;

    let mut events = Vec::new();
    for marker in [&user_marker, &root_marker] {
        if !events
            .iter()
            .any(|e| ev::is(e, "exec") && ev::args_contain(e, marker))
        {
            events.extend(client.until(WAIT, |e| ev::is(e, "exec") && ev::args_contain(e, marker)));
        }
    }
    let entry = |pod: &Pod, cid: &str, name: &str, marker: &str| -> Result<Value> {
        let pid = node.ctrd.cri().container_status(cid)?.pid;
        let e = events
            .iter()
            .find(|e| ev::is(e, "exec") && ev::args_contain(e, marker) && ev::pid(e) == pid as u64)
            .with_context(|| format!("no exec of {name}'s PID 1 ({pid}): {events:#?}"))?;
        assert_attributed(e, pod, cid, name);
        Ok(e.clone())
    };

    // Root with every capability the node gives: privileged, in a privileged container.
    let exec = entry(&root_pod, &root_cid, "root", &root_marker)?;
    let pid = ev::pid(&exec) as u32;
    // What the kernel says of the same process, read while it still runs.
    let (eff, bnd) = (
        proc_capabilities(pid, "CapEff")?,
        proc_capabilities(pid, "CapBnd")?,
    );
    ensure!(
        eff == node_caps && bnd == node_caps,
        "the privileged container's PID 1 holds {eff:#x} (bounding {bnd:#x}), not every \
         capability the node gives ({node_caps:#x})"
    );
    let p = &exec["process"];
    ensure!(
        p["uid"] == 0 && p["euid"] == 0 && p["gid"] == 0 && p["egid"] == 0,
        "root's credentials: {exec:#}"
    );
    ensure!(
        p["cap_effective"] == names(eff),
        "root's capabilities: {exec:#}"
    );
    let c = &exec["container"];
    ensure!(
        c["privileged"] == true && c["capabilities"] == names(node_caps),
        "the privileged container's record: {exec:#}"
    );
    let typed: podmap_proto::Event = serde_json::from_value(exec.clone())?;
    ensure!(
        typed.process.is_privileged(),
        "root is privileged: {exec:#}"
    );

    // uid 1000 without a capability: not privileged, in a container that cannot give any.
    let exec = entry(&user_pod, &user_cid, "user", &user_marker)?;
    let pid = ev::pid(&exec) as u32;
    let (eff, bnd) = (
        proc_capabilities(pid, "CapEff")?,
        proc_capabilities(pid, "CapBnd")?,
    );
    ensure!(
        eff == 0 && bnd == 0,
        "the unprivileged container's PID 1 holds {eff:#x} (bounding {bnd:#x})"
    );
    let p = &exec["process"];
    ensure!(
        p["uid"] == 1000 && p["euid"] == 1000 && p["gid"].is_u64() && p["egid"].is_u64(),
        "uid 1000's credentials: {exec:#}"
    );
    ensure!(
        p["cap_effective"] == json!([]),
        "uid 1000's capabilities: {exec:#}"
    );
    let c = &exec["container"];
    ensure!(
        c["privileged"] == false && c["capabilities"] == json!([]),
        "the unprivileged container's record: {exec:#}"
    );
    let typed: podmap_proto::Event = serde_json::from_value(exec.clone())?;
    ensure!(
        !typed.process.is_privileged(),
        "uid 1000 is not privileged: {exec:#}"
    );

    // `podmap events --privileged`: the privileged container's execs (its entrypoint, then
    // the sleep it starts), and nothing of the other's workload, which ran first. runc's own
    // init stage in the other's cgroup, flagged runtime_init, is root with every capability
    // until it execs the entrypoint: shown, rightly.
    let shown = privileged_only.until(WAIT, |e| {
        ev::container_id(e) == Some(&root_cid) && ev::binary(e) == "/bin/sleep"
    });
    ensure!(
        shown.iter().any(|e| ev::args_contain(e, &root_marker)),
        "--privileged left out the privileged entrypoint: {shown:#?}"
    );
    for e in &shown {
        let typed: podmap_proto::Event = serde_json::from_value(e.clone())?;
        let runtime_init = e["process"]["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("runtime_init")));
        ensure!(
            typed.process.is_privileged()
                && (runtime_init || ev::container_id(e) != Some(&user_cid)),
            "--privileged showed an unprivileged exec: {e:#}"
        );
    }

    // The mapping table, through the client as a user reads it.
    let out = std::process::Command::new(podmap_conformance::bins::path("podmap"))
        .args(["containers", "-o", "json", "--socket"])
        .arg(&node.daemon.socket)
        .output()?;
    ensure!(out.status.success(), "podmap containers: {out:?}");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "podmap containers -o json: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    for (cid, privileged, caps) in [
        (&root_cid, true, names(node_caps)),
        (&user_cid, false, json!([])),
    ] {
        let row = rows
            .iter()
            .find(|r| r["container"]["id"] == cid.as_str() && r["hierarchy"] == "v2")
            .with_context(|| format!("no row of {cid}: {rows:#?}"))?;
        ensure!(
            row["container"]["privileged"] == privileged
                && row["container"]["capabilities"] == caps,
            "the row of {cid}: {row:#}"
        );
    }
    Ok(())
}
on_both_layouts!(privileged_and_unprivileged_containers_are_told_apart);
