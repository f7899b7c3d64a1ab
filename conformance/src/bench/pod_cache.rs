//! Pod cache bench: memory per cached pod and relist time, at 1,000 and 10,000 pods, beside the
//! reference of informers that hold whole Pod objects (docs/performance.md: <= 2 KiB per pod
//! against ~35 KiB; a relist of 10,000 pods in <= 1 s).
//!
//! The pods are realistic Deployment pods (labels, annotations, owner reference, an init
//! container and two containers, managed fields, conditions: ~7 KiB of JSON each) served by the
//! in-process test API server, on a current-thread runtime as in podmapd.
//!
//! Memory is measured two ways, both printed:
//! - the store's heap, computed by walking it (`PodCache::footprint`: every table, slice and
//!   string, shared strings once, rounded as glibc's malloc rounds): the figure compared with the
//!   target. A library cannot install a counting global allocator, so this is computed, not
//!   counted.
//! - the process's RSS growth while the cache fills: an upper bound, since it also holds list
//!   buffers that were freed but that malloc keeps.
//!
//! The reference is measured in the same run: the RSS growth of holding the same pods as
//! k8s-openapi `Pod` objects (what a reflector's store holds), and their JSON size.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use podmap_pod_cache::testing::fixtures;
use podmap_pod_cache::testing::TestApiServer;
use podmap_pod_cache::{CacheConfig, PodCache};

const NODE: &str = "bench-node";
const TARGET_BYTES_PER_POD: f64 = 2048.0;
const REFERENCE_KIB_PER_POD: f64 = 35.0;
const TARGET_RELIST_10K: Duration = Duration::from_secs(1);
/// Replicas per Deployment, Deployments per namespace.
const REPLICAS: usize = 5;
const DEPLOYMENTS_PER_NAMESPACE: usize = 10;

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct PodCacheArgs {
    /// Pod counts to load, each into a fresh cache and API server.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    pub sizes: Vec<usize>,
}

impl Default for PodCacheArgs {
    fn default() -> Self {
        PodCacheArgs {
            sizes: vec![1_000, 10_000],
        }
    }
}

/// One size's figures.
#[derive(Clone, Debug)]
pub struct Figures {
    pub pods: usize,
    pub heap_bytes_per_pod: f64,
    pub rss_bytes_per_pod: f64,
    pub initial_list: Duration,
    pub relist: Duration,
    pub json_bytes_per_pod: f64,
    pub full_object_rss_per_pod: f64,
}

/// Runs the bench and prints its figures.
pub fn run(opts: &PodCacheArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the bench's tokio runtime")?;
    println!("pod cache: memory per cached pod and relist time (typical Deployment pods, in-process API server)");
    for &pods in &opts.sizes {
        let figures = runtime.block_on(measure(pods))?;
        print(&figures);
    }
    Ok(())
}

async fn measure(count: usize) -> Result<Figures> {
    let server = TestApiServer::start().await;
    let mut json_bytes = 0usize;
    for i in 0..count {
        let deployment = i / REPLICAS;
        let namespace = format!("team-{}", deployment / DEPLOYMENTS_PER_NAMESPACE);
        let name = format!("svc-{deployment}");
        let hash = format!("{:x}", 0x5d9c7b00 + deployment);
        let pod = fixtures::deployment_pod(&namespace, &name, &hash, i, NODE);
        server.apply(&pod);
        json_bytes += serde_json::to_vec(&pod)?.len();
    }
    settle().await;

    let rss_before = rss_bytes()?;
    let started = Instant::now();
    let cache = PodCache::start_with(server.client(), NODE, CacheConfig::default());
    if !cache.wait_synced(Duration::from_secs(120)).await {
        bail!("the cache did not sync {count} pods: {:?}", cache.stats());
    }
    let initial_list = started.elapsed();
    let stats = cache.stats();
    if stats.pods != count {
        bail!("cached {} pods of {count}: {stats:?}", stats.pods);
    }
    settle().await;
    let rss_after = rss_bytes()?;
    let footprint = cache.footprint();

    // A relist: the watch ends with 410 Gone; time until the store holds the new list.
    wait_for_watch(&server).await?;
    let relisted = Instant::now();
    server.expire_watches();
    let deadline = relisted + Duration::from_secs(120);
    while cache.stats().relists < 1 {
        if Instant::now() > deadline {
            bail!("no relist: {:?}", cache.stats());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let relist = relisted.elapsed();
    drop(cache);

    let full_object_rss = full_objects_rss(&server, count).await?;
    Ok(Figures {
        pods: count,
        heap_bytes_per_pod: footprint.bytes as f64 / count as f64,
        rss_bytes_per_pod: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        initial_list,
        relist,
        json_bytes_per_pod: json_bytes as f64 / count as f64,
        full_object_rss_per_pod: full_object_rss as f64 / count as f64,
    })
}

/// RSS growth of holding the server's pods as k8s-openapi `Pod` objects, decoded from the same
/// list the cache read.
async fn full_objects_rss(server: &TestApiServer, count: usize) -> Result<usize> {
    let client = server.client();
    let request = http::Request::get(format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"))
        .body(Vec::new())
        .context("building the list request")?;
    let text = client.request_text(request).await.context("listing pods")?;
    settle().await;
    let before = rss_bytes()?;
    let list: k8s_openapi::List<Pod> =
        serde_json::from_str(&text).context("decoding the pod list")?;
    drop(text);
    settle().await;
    let after = rss_bytes()?;
    if list.items.len() != count {
        bail!("listed {} whole pods of {count}", list.items.len());
    }
    drop(list);
    Ok(after.saturating_sub(before))
}

async fn wait_for_watch(server: &TestApiServer) -> Result<()> {
    for _ in 0..10_000 {
        if server.stats().open_watches > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("the cache never opened its watch")
}

/// Lets spawned tasks finish what they are doing before a measurement.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// This process's resident set, from /proc/self/status.
fn rss_bytes() -> Result<usize> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}

fn print(f: &Figures) {
    let verdict = |ok: bool| if ok { "ok" } else { "OVER TARGET" };
    println!(
        "\n  {} pods ({:.1} KiB of JSON per pod)",
        f.pods,
        kib(f.json_bytes_per_pod)
    );
    println!(
        "    memory per pod  podmap cache: {:.2} KiB (store heap, computed)   {:.2} KiB (RSS growth, upper bound)   target <= 2 KiB: {}",
        kib(f.heap_bytes_per_pod),
        kib(f.rss_bytes_per_pod),
        verdict(f.heap_bytes_per_pod <= TARGET_BYTES_PER_POD),
    );
    println!(
        "                    whole Pod objects (reference, same run): {:.1} KiB (RSS growth)   reported: ~{REFERENCE_KIB_PER_POD:.0} KiB   ratio {:.1}x",
        kib(f.full_object_rss_per_pod),
        f.full_object_rss_per_pod / f.heap_bytes_per_pod.max(1.0),
    );
    let relist_note = if f.pods >= 10_000 {
        format!(
            "   target <= {:?} at 10,000: {}",
            TARGET_RELIST_10K,
            verdict(f.relist <= TARGET_RELIST_10K)
        )
    } else {
        String::new()
    };
    println!(
        "    list time       initial list {:.0} ms   relist after 410 Gone {:.0} ms{relist_note}",
        f.initial_list.as_secs_f64() * 1e3,
        f.relist.as_secs_f64() * 1e3,
    );
}
