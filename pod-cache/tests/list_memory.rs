//! A list is never held whole: the informer decodes a list body as it arrives and compacts each
//! pod before it reads the next, so what a list costs at its peak, beyond the compact store it
//! leaves, is a few buffers, not the body (tens of MB when the API server's watch cache serves a
//! node's pods in one body, ignoring `limit`).
//!
//! Counted, not timed: this binary's global allocator counts the bytes allocated now and at the
//! peak, across threads, and the test asserts on the peak's growth during a list. Its one test
//! runs alone in the binary so that nothing else allocates meanwhile. The API server runs in the
//! same process: its copies of the pods are made before the baseline, and it streams each body a
//! few objects at a time, as kube-apiserver does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use podmap_pod_cache::testing::{fixtures, TestApiServer};
use podmap_pod_cache::{CacheConfig, PodCache};

/// The system allocator, counting.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = NOW.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    NOW.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; the counting only adds up
// sizes of calls that succeeded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // The old and new blocks may both exist for a moment: count the new one first.
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NODE: &str = "node-a";
const PODS: usize = 2_000;
const WAIT: Duration = Duration::from_secs(60);

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Starts counting the peak from now; returns the bytes allocated now.
fn baseline() -> usize {
    let now = NOW.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

#[tokio::test]
async fn a_list_costs_its_compact_pods_not_its_body() {
    let server = TestApiServer::start().await;
    let mut body_bytes = 0;
    for i in 0..PODS {
        let deployment = i / 5;
        let pod = fixtures::deployment_pod(
            &format!("team-{}", deployment / 10),
            &format!("svc-{deployment}"),
            &format!("{:x}", 0x5d9c7b00 + deployment),
            i,
            NODE,
        );
        body_bytes += serde_json::to_vec(&pod).unwrap().len();
        server.apply(&pod);
    }
    let bound = body_bytes / 10;

    // The first list: resourceVersion=0, served whole from the "watch cache" (the limit of 500
    // ignored), about 20 MB in one body.
    let before = baseline();
    let cache = PodCache::start_with(server.client(), NODE, CacheConfig::default());
    assert!(cache.wait_synced(WAIT).await, "{:?}", cache.stats());
    assert_eq!(cache.stats().pods, PODS);
    assert_eq!(server.stats().lists, 1, "the first list came in one body");
    let store = cache.footprint().bytes;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let transient = peak.saturating_sub(store);
    eprintln!(
        "first list: body {:.1} MiB, peak growth {:.1} MiB, store {:.1} MiB, beyond the store {:.2} MiB",
        mib(body_bytes),
        mib(peak),
        mib(store),
        mib(transient)
    );
    assert!(
        transient < bound,
        "the first list's peak went {:.1} MiB beyond the store it left (bound: a tenth of its \
         {:.1} MiB body): the list was held whole",
        mib(transient),
        mib(body_bytes)
    );

    // A relist after 410 Gone reads the storage, page by page. Every pod is unchanged: it keeps
    // the store's copies, so beyond what the store held, it costs pointers and buffers.
    let deadline = Instant::now() + WAIT;
    while server.stats().open_watches == 0 {
        assert!(Instant::now() < deadline, "no watch: {:?}", server.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = baseline();
    server.expire_watches();
    while cache.stats().relists == 0 {
        assert!(Instant::now() < deadline, "no relist: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cache.stats().pods, PODS);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    eprintln!(
        "relist: peak growth {:.2} MiB over the synced state ({} list requests in all)",
        mib(peak),
        server.stats().lists
    );
    assert!(server.stats().lists > 2, "the relist was paged");
    assert!(
        peak < bound,
        "the relist's peak went {:.1} MiB beyond the synced state (bound {:.1} MiB)",
        mib(peak),
        mib(bound)
    );
}
