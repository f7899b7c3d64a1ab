//! `podmap-bench policies`: exec throughput inside a container selected by 0, 1, 10 and 100
//! policies, against no podmap at all, in one run (rounds alternate so drift hits every setting
//! alike); then how long policy changes take to apply (`policy_changes`). The policies' rules name paths the storm does not run, as most execs in a policed pod
//! are: each exec pays the rule lookup, membership checks only on a hit.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use podmap_bpf::testing::{TestCgroup, TestPod};
use podmap_bpf::SharedMaps;

use crate::daemon::{cgroup2_mount, Daemon, DaemonOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Execs per storm.
    #[arg(long, default_value_t = 5000)]
    pub execs: u64,
    /// Rounds over all settings; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Rounds of timed policy changes (file, resource, relabel) after the throughput figures;
    /// 0 skips them.
    #[arg(long, default_value_t = 10)]
    pub change_rounds: u32,
}

/// The pod of the storm's container: what the policies select.
const BENCH_POD: TestPod<'static> = TestPod {
    namespace: "bench",
    name: "bench",
    uid: "00000000-0000-0000-0000-00000000bec4",
    labels: &[("app", "bench")],
};

const SETTINGS: [Option<usize>; 5] = [None, Some(0), Some(1), Some(10), Some(100)];

fn policy_yaml(i: usize) -> String {
    format!(
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata:\n  name: bench-{i}\nspec:\n  namespaces: [bench]\n  podSelector:\n    matchLabels: {{app: bench}}\n  rules:\n  - exec: {{paths: [/opt/bench/forbidden-{i}], prefixes: [/opt/bench/dir-{i}/]}}\n    action: kill\n"
    )
}

fn set_policies(dir: &Path, n: usize) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        std::fs::remove_file(e.path())?;
    }
    for i in 0..n {
        std::fs::write(dir.join(format!("bench-{i}.yaml")), policy_yaml(i))?;
    }
    Ok(())
}

/// Policies loaded, then the storm container's memberships written (the storm must run policed).
fn wait_loaded(daemon: &Daemon, n: usize) -> anyhow::Result<()> {
    daemon.wait_policies(n);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = daemon.status();
        if st["policies"]["memberships"].as_u64() == Some(n as u64) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the storm container is not in all {n} policies: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One storm inside the cgroup: execs per second.
fn storm(cg: &TestCgroup, execs: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("locating podmap-bench")?;
    let script = format!(
        "echo $$ > {}/cgroup.procs || exit 97; exec \"$@\"",
        cg.path().display()
    );
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script, "sh"])
        .arg(exe)
        .args(["storm-child", "--execs", &execs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the storm")?;
    // The storm driver waits for a start line.
    child
        .stdin
        .take()
        .context("storm stdin")?
        .write_all(b"go\n")?;
    let out = child.wait_with_output().context("waiting for the storm")?;
    if !out.status.success() {
        bail!("storm failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("storm output")?;
    let secs = v["seconds"].as_f64().context("storm seconds")?;
    Ok(execs as f64 / secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: &PolicyArgs) -> anyhow::Result<()> {
    let cg = TestCgroup::new(&cgroup2_mount(), "podmap-bench-policies")
        .context("creating the storm cgroup")?;
    let policy_dir = tempfile::tempdir()?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); SETTINGS.len()];
    for round in 0..args.rounds {
        let mut daemon: Option<(Daemon, SharedMaps)> = None;
        for (i, setting) in SETTINGS.iter().enumerate() {
            let rate = match setting {
                None => {
                    daemon = None;
                    storm(&cg, args.execs)?
                }
                Some(n) => {
                    if daemon.is_none() {
                        let d = Daemon::start_with(DaemonOptions {
                            env: vec![(
                                "PODMAP_POLICY_DIR".into(),
                                policy_dir.path().display().to_string(),
                            )],
                            ..Default::default()
                        });
                        let mut maps = SharedMaps::open(&d.pins.path)?;
                        cg.map_container(&mut maps, &BENCH_POD, "bench")?;
                        daemon = Some((d, maps));
                    }
                    set_policies(policy_dir.path(), *n)?;
                    wait_loaded(&daemon.as_ref().expect("started").0, *n)?;
                    storm(&cg, args.execs)?
                }
            };
            eprintln!(
                "round {} {:>12}: {rate:.0} execs/s",
                round + 1,
                label(*setting)
            );
            samples[i].push(rate);
        }
    }
    let meds: Vec<f64> = samples.into_iter().map(median).collect();
    let (none, zero) = (meds[0], meds[1]);
    println!(
        "exec throughput inside a policed container ({} execs x {} rounds, medians)",
        args.execs, args.rounds
    );
    println!(
        "{:<14} {:>10} {:>12} {:>14}",
        "setting", "execs/s", "vs no podmap", "vs 0 policies"
    );
    for (s, m) in SETTINGS.iter().zip(&meds) {
        println!(
            "{:<14} {:>10.0} {:>12.3} {:>14.3}",
            label(*s),
            m,
            m / none,
            m / zero
        );
    }
    let ratio = meds[4] / zero;
    println!(
        "target: 100 policies vs 0 >= 0.98: {:.3} {}",
        ratio,
        if ratio >= 0.98 { "PASS" } else { "MISS" }
    );
    if args.change_rounds > 0 {
        super::policy_changes::run(args.change_rounds)?;
    }
    Ok(())
}

fn label(s: Option<usize>) -> String {
    match s {
        None => "no podmap".into(),
        Some(n) => format!("{n} policies"),
    }
}
