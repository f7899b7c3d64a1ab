//! `podmap-bench hook`: podmap-oci-hook with real runc, in one run:
//! - the hook's wall time, one container at a time: containers made with `runc create` (cgroup
//!   and init process in place, as at createRuntime), then the hook run on each one's state as a
//!   runtime runs it (spawn to exit), createRuntime and poststop;
//! - 20 containers at once: the hooks of 20 created containers started together (every one
//!   mapped, every one within its bound), then 20 `runc run`s with the hook in config.json
//!   started together (every container started, so every hook exited 0);
//! - container start latency (`runc run -d`: create and start) with the hook vs without, on the
//!   same runc and rootfs, alternating container by container so drift weighs on both alike.
//!
//! Everything is private (pins, store, log, cgroup parent, runc root) and removed on every exit.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use podmap_bpf::layout::Counter;
use serde_json::json;

use crate::oci::{
    container_id, hook_binary, hook_times_ms, Bundle, BundleSpec, CgroupParent, Cgroups, HookEnv,
    OciRuntime, Pod, Rootfs, Runtime,
};

#[derive(Debug, Clone, clap::Args)]
pub struct HookArgs {
    /// Containers for the one-at-a-time hook timing.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub containers: u64,
    /// Containers started at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrent: u64,
    /// Containers started per arm (with and without the hook) for the start latency.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    pub starts: u64,
    /// Run runc and the hook in a pure cgroup2 mount namespace.
    #[arg(long)]
    pub pure_cgroup2: bool,
}

/// The hook's bound (its --timeout default).
const BOUND: Duration = Duration::from_secs(1);

pub fn run(opts: &HookArgs) -> anyhow::Result<()> {
    let cgroups = Cgroups::pure_or_host(opts.pure_cgroup2);
    let hooks = HookEnv::new("podmap-bench-hook");
    let parent = CgroupParent::new("podmap-bench-hook");
    let rootfs = Rootfs::busybox();
    let rt = OciRuntime::new(Runtime::Runc, cgroups);
    // Pins in place first, as on a node where podmapd runs.
    let maps = hooks.maps();
    eprintln!(
        "podmap-bench hook: runc, {}, hook {}",
        if opts.pure_cgroup2 {
            "pure cgroup2"
        } else {
            "this host's cgroup layout"
        },
        hook_binary().display()
    );

    // 1. One at a time.
    let (mut create, mut poststop) = (Vec::new(), Vec::new());
    for _ in 0..opts.containers {
        let c = Created::new(&rt, &rootfs, &parent, &hooks, cgroups)?;
        create.push(c.hook(&hooks, "create-runtime")?);
        ensure!(
            !hooks.mapped(&c.id).is_empty(),
            "container {} not mapped; log:\n{}",
            c.id,
            hooks.log()
        );
        c.delete(&rt);
        poststop.push(c.hook(&hooks, "poststop")?);
    }
    println!(
        "hook wall time, one container at a time ({} containers, spawn to exit):",
        opts.containers
    );
    println!("  createRuntime  {}", summary(&mut create));
    println!("  poststop       {}", summary(&mut poststop));
    println!("  target: createRuntime p99 <= 20 ms");

    // 2a. N hooks at once on N created containers.
    let n = opts.concurrent as usize;
    let created: Vec<Created> = (0..n)
        .map(|_| Created::new(&rt, &rootfs, &parent, &hooks, cgroups))
        .collect::<anyhow::Result<_>>()?;
    let timeouts = maps.counters.get(Counter::HookTimeouts);
    let barrier = std::sync::Barrier::new(n);
    let mut walls: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = created
            .iter()
            .map(|c| {
                let (hooks, barrier) = (&hooks, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    c.hook(hooks, "create-runtime")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hook thread"))
            .collect::<anyhow::Result<_>>()
    })?;
    let mapped = created
        .iter()
        .filter(|c| !hooks.mapped(&c.id).is_empty())
        .count();
    for c in &created {
        c.delete(&rt);
    }
    let within = walls.iter().filter(|w| **w < BOUND).count();
    println!("{n} hooks at once on {n} created containers:");
    println!(
        "  mapped {mapped}/{n}, within the {BOUND:?} bound {within}/{n}, watchdog timeouts {}",
        maps.counters.get(Counter::HookTimeouts) - timeouts
    );
    println!("  wall time      {}", summary(&mut walls));

    // 2b. N containers at once through runc, the hook in config.json.
    let runs: Vec<(String, Bundle)> = (0..n)
        .map(|_| {
            let id = container_id("bench-many");
            let b = bundle(&rootfs, &parent, &id, Some(&hooks), &["/bin/true"]);
            (id, b)
        })
        .collect();
    let barrier = std::sync::Barrier::new(n);
    let started = Instant::now();
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(id, b)| {
                let (rt, barrier) = (&rt, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    rt.run(b, id)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("runc thread"))
            .collect()
    });
    let all = started.elapsed();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    let log = hooks.log();
    let mut inner: Vec<Duration> = runs
        .iter()
        .flat_map(|(id, _)| hook_times_ms(&log, "create-runtime", id))
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    let recorded = runs
        .iter()
        .filter(|(id, _)| !hooks.mapped(id).is_empty())
        .count();
    println!("{n} containers at once through runc (`runc run`, hook in config.json):");
    println!(
        "  started {ok}/{n} (a failing hook fails its container), mapped {recorded}/{n}, all done in {:.0} ms",
        all.as_secs_f64() * 1e3
    );
    println!(
        "  hook run time  {} (from the hook's log)",
        summary(&mut inner)
    );

    // 3. Start latency with vs without the hook, alternating.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..opts.starts * 2 {
        let hooked = i % 2 == 1;
        let id = container_id("bench-start");
        let b = bundle(
            &rootfs,
            &parent,
            &id,
            hooked.then_some(&hooks),
            &["/bin/sleep", "60"],
        );
        let t = Instant::now();
        let (status, out) = rt.run_detached(&b, &id);
        let took = t.elapsed();
        ensure!(
            status.success(),
            "runc run -d: {out}\nhook log:\n{}",
            hooks.log()
        );
        if hooked { &mut with } else { &mut without }.push(took);
        let _ = rt.delete(&id);
    }
    let (w50, wo50) = (pct(&mut with, 50.0), pct(&mut without, 50.0));
    println!(
        "container start (`runc run -d`: create + start), {} each, alternating:",
        opts.starts
    );
    println!("  without hook   {}", summary(&mut without));
    println!("  with hook      {}", summary(&mut with));
    println!(
        "  ratio of medians {:.3} (target <= 1.05)",
        w50.as_secs_f64() / wo50.as_secs_f64()
    );
    let hist = maps.counters.latency_histogram();
    println!(
        "create-to-mapping-ready (shared histogram, all writers of these pins): {}",
        histogram(&hist)
    );
    let log = hooks.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .map(|l| l.split_once(": ").map_or(l, |(_, m)| m))
        .collect();
    ensure!(bad.is_empty(), "the hook logged problems: {bad:#?}");
    Ok(())
}

/// A container made with `runc create` (no hooks): its cgroup and init process exist, as at
/// createRuntime; the bench then runs the hook on its state by hand.
struct Created {
    id: String,
    pid: u32,
    bundle: Bundle,
}

impl Created {
    fn new(
        rt: &OciRuntime,
        rootfs: &Rootfs,
        parent: &CgroupParent,
        hooks: &HookEnv,
        _cgroups: Cgroups,
    ) -> anyhow::Result<Created> {
        let id = container_id("bench");
        let b = bundle(rootfs, parent, &id, None, &["/bin/sleep", "60"]);
        let out = rt
            .command(&["create", "--bundle", &crate::oci::path_str(b.path()), &id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("runc create")?;
        ensure!(
            out.success(),
            "runc create {id}: {out:?}; log:\n{}",
            hooks.log()
        );
        let state = rt.command(&["state", &id]).output().context("runc state")?;
        let state: serde_json::Value =
            serde_json::from_slice(&state.stdout).context("runc state's JSON")?;
        let pid = state["pid"].as_u64().context("runc state has a pid")? as u32;
        Ok(Created { id, pid, bundle: b })
    }

    /// Runs the hook on this container's state as a runtime does; returns its wall time.
    fn hook(&self, hooks: &HookEnv, stage: &str) -> anyhow::Result<Duration> {
        let state = if stage == "poststop" {
            json!({"ociVersion": "1.0.2-dev", "id": self.id, "status": "stopped",
                   "bundle": crate::oci::path_str(self.bundle.path())})
        } else {
            json!({"ociVersion": "1.0.2-dev", "id": self.id, "status": "creating",
                   "pid": self.pid, "bundle": crate::oci::path_str(self.bundle.path())})
        };
        let run = hooks.run(&[stage], state.to_string().as_bytes());
        ensure!(run.status.success(), "hook {stage} {}: {run:?}", self.id);
        Ok(run.elapsed)
    }

    fn delete(&self, rt: &OciRuntime) {
        let _ = rt.delete(&self.id);
    }
}

fn bundle(
    rootfs: &Rootfs,
    parent: &CgroupParent,
    id: &str,
    hooks: Option<&HookEnv>,
    args: &[&str],
) -> Bundle {
    let pod = Pod::new("bench", "bench");
    Bundle::new(
        rootfs,
        &BundleSpec {
            cgroups_path: Some(parent.cgroups_path(id)),
            annotations: pod.sandbox_annotations(id),
            hooks: hooks.map(HookEnv::oci_hooks),
            ..BundleSpec::new(args)
        },
    )
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn summary(v: &mut [Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
        ms(pct(v, 50.0)),
        ms(pct(v, 99.0)),
        ms(pct(v, 100.0)),
        v.len()
    )
}

/// The log2 histogram as "<2^i us: count" for non-empty buckets.
fn histogram(h: &[u64]) -> String {
    let parts: Vec<String> = h
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("<{}us:{n}", 1u64 << i))
        .collect();
    if parts.is_empty() {
        "empty".into()
    } else {
        parts.join(" ")
    }
}
