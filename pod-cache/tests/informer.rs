//! The pod cache against the in-process API server: adds, relabels, deletes, retention, 410
//! Gone, API server restarts, bad objects, garbage and hanging answers, bookmarks and watch
//! timeouts. Every test runs on a current-thread runtime, as podmapd does.
//!
//! Timing: assertions wait with generous timeouts and check the outcome (docs/decisions.md #19).

use std::time::{Duration, Instant};

use podmap_pod_cache::testing::fixtures::{self, container_id};
use podmap_pod_cache::testing::{Fault, TestApiServer};
use podmap_pod_cache::{CacheConfig, PodCache, Retention};
use serde_json::json;

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(20);

fn config() -> CacheConfig {
    CacheConfig {
        request_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        sweep_interval: Duration::from_millis(50),
        ..CacheConfig::default()
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("podmap_pod_cache=debug")
        .try_init();
}

/// Polls `check` until it holds or `WAIT` passes; returns whether it held.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A cache that has listed and whose watch is open on the server.
async fn started(server: &TestApiServer, config: CacheConfig) -> PodCache {
    let cache = PodCache::start_with(server.client(), NODE, config);
    assert!(
        cache.wait_synced(WAIT).await,
        "cache never synced: {:?}",
        cache.stats()
    );
    assert!(
        eventually(|| server.stats().open_watches == 1).await,
        "no watch: {:?}",
        server.stats()
    );
    cache
}

fn uid(namespace: &str, name: &str) -> String {
    fixtures::uid(&format!("{namespace}/{name}"))
}

#[tokio::test]
async fn pod_added_relabelled_and_deleted_shows_in_the_cache() {
    init_logs();
    let server = TestApiServer::start().await;
    server.apply(&fixtures::pod("prod", "early", NODE, &[("app", "web")]));
    server.apply(&fixtures::pod(
        "prod",
        "elsewhere",
        "node-b",
        &[("app", "web")],
    ));
    let cache = started(&server, config()).await;

    // Listed at start: this node's pod only.
    let early = cache.get(&uid("prod", "early")).expect("listed pod");
    assert_eq!((&*early.name, &*early.namespace), ("early", "prod"));
    assert_eq!(early.workload.as_deref(), Some("early"));
    assert_eq!(early.workload_kind.as_deref(), Some("Pod"));
    assert!(cache.get(&uid("prod", "elsewhere")).is_none());
    let (seq, _) = cache.changes_since(0);

    // Added while watching: a Deployment's pod, found by uid and by container id.
    let web = fixtures::deployment_pod("prod", "web", "5d9c7b", 0, NODE);
    let web_uid = web.metadata.uid.clone().unwrap();
    server.apply(&web);
    assert!(eventually(|| cache.get(&web_uid).is_some()).await);
    let cached = cache.get(&web_uid).unwrap();
    assert_eq!(cached.workload.as_deref(), Some("web"));
    assert_eq!(cached.workload_kind.as_deref(), Some("Deployment"));
    assert_eq!(cached.labels.get("team"), Some("payments"));
    assert_eq!(cached.annotations.get("prometheus.io/port"), Some("8080"));
    let app_id = container_id(&format!("{web_uid}/app"));
    let by_container = cache
        .by_container(&app_id)
        .expect("indexed by container id");
    assert_eq!(by_container.uid, cached.uid);
    assert_eq!(&*by_container.container(&app_id).unwrap().name, "app");
    assert!(cache
        .by_container(&format!(
            "containerd://{}",
            container_id(&format!("{web_uid}/migrate"))
        ))
        .is_some());
    let (seq2, changed) = cache.changes_since(seq);
    assert_eq!(changed, vec![web_uid.clone()]);

    // Relabelled: the new labels show up.
    let mut relabelled = web.clone();
    relabelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("team".into(), "checkout".into());
    server.apply(&relabelled);
    assert!(
        eventually(|| cache.get(&web_uid).unwrap().labels.get("team") == Some("checkout")).await
    );
    let (seq3, changed) = cache.changes_since(seq2);
    assert_eq!(changed, vec![web_uid.clone()]);

    // A status-only change the cache does not keep is not a change.
    let mut status_only = relabelled.clone();
    status_only.status.as_mut().unwrap().pod_ip = Some("10.244.9.9".into());
    server.apply(&status_only);
    server.apply(&fixtures::pod("prod", "marker", NODE, &[]));
    assert!(eventually(|| cache.get(&uid("prod", "marker")).is_some()).await);
    assert_eq!(cache.changes_since(seq3).1, vec![uid("prod", "marker")]);

    // Deleted: still there for late events, marked deleted, by uid and by container id.
    assert!(server.delete("prod", &web.metadata.name.clone().unwrap()));
    assert!(eventually(|| cache.get(&web_uid).unwrap().deleted).await);
    let gone = cache
        .by_container(&app_id)
        .expect("deleted pod still indexed");
    assert!(gone.deleted);
    assert_eq!(gone.labels.get("team"), Some("checkout"));

    let stats = cache.stats();
    assert_eq!((stats.pods, stats.deleted_kept), (2, 1), "{stats:?}");
    assert!(
        stats.synced && stats.events >= 4 && stats.objects_skipped == 0,
        "{stats:?}"
    );
    assert!(stats.last_event_age.unwrap() < WAIT, "{stats:?}");

    // The informer asked for this node's pods only, the first list from the API server's cache.
    let requests = server.requests();
    assert!(
        requests[0].contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "{requests:?}"
    );
    assert!(requests[0].contains("resourceVersion=0"), "{requests:?}");
    assert!(requests
        .iter()
        .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")));
}

#[tokio::test]
async fn deleted_pods_are_kept_within_the_retention_bounds() {
    init_logs();
    let server = TestApiServer::start().await;
    for name in ["a", "b", "c"] {
        server.apply(&fixtures::pod("ns", name, NODE, &[]));
    }
    let retention = Retention {
        deleted_ttl: Duration::from_millis(1500),
        deleted_max: 2,
        change_log: 64,
    };
    let cache = started(
        &server,
        CacheConfig {
            retention,
            ..config()
        },
    )
    .await;

    for name in ["a", "b", "c"] {
        server.delete("ns", name);
    }
    // At most two deleted pods are kept: the oldest deletion went first.
    assert!(eventually(|| cache.get(&uid("ns", "c")).is_some_and(|p| p.deleted)).await);
    assert!(cache.get(&uid("ns", "a")).is_none());
    assert!(cache.get(&uid("ns", "b")).unwrap().deleted);
    assert!(cache.by_container(&container_id("b")).is_some());
    // And for a bounded time.
    assert!(
        eventually(|| cache.get(&uid("ns", "b")).is_none() && cache.get(&uid("ns", "c")).is_none())
            .await
    );
    assert!(cache.by_container(&container_id("b")).is_none());
    assert_eq!(cache.stats().deleted_kept, 0);
}

#[tokio::test]
async fn forced_410_relists_with_no_stale_pod_and_no_duplicate() {
    init_logs();
    let server = TestApiServer::start().await;
    for name in ["keep", "drop"] {
        server.apply(&fixtures::pod("ns", name, NODE, &[("v", "1")]));
    }
    let cache = started(&server, config()).await;
    let (seq, _) = cache.changes_since(0);

    // The watch ends with a 410 ERROR event; what changes next is seen only by the relist (no
    // await in between: on this runtime the informer cannot run before the changes are made).
    server.expire_watches();
    server.delete("ns", "drop");
    server.apply(&fixtures::pod("ns", "keep", NODE, &[("v", "2")]));
    server.apply(&fixtures::pod("ns", "new", NODE, &[]));

    assert!(
        eventually(|| cache.stats().relists >= 1).await,
        "{:?}",
        cache.stats()
    );
    assert_eq!(
        cache.get(&uid("ns", "keep")).unwrap().labels.get("v"),
        Some("2")
    );
    assert!(
        cache.get(&uid("ns", "drop")).unwrap().deleted,
        "a pod gone during the gap is marked deleted"
    );
    assert!(cache.get(&uid("ns", "new")).is_some());
    let stats = cache.stats();
    assert_eq!(
        (stats.pods, stats.deleted_kept, stats.containers),
        (2, 1, 3),
        "{stats:?}"
    );
    let (_, mut changed) = cache.changes_since(seq);
    changed.sort();
    let mut expected = vec![uid("ns", "keep"), uid("ns", "drop"), uid("ns", "new")];
    expected.sort();
    assert_eq!(changed, expected);
    // The relist read the most recent state, not the API server's cache.
    let relist = server
        .requests()
        .into_iter()
        .filter(|r| !r.contains("watch=true"))
        .nth(1)
        .unwrap();
    assert!(!relist.contains("resourceVersion=0"), "{relist}");
}

#[tokio::test]
async fn api_server_restart_relists_with_no_stale_pod_and_no_duplicate() {
    init_logs();
    let server = TestApiServer::start().await;
    for name in ["keep", "drop"] {
        server.apply(&fixtures::pod("ns", name, NODE, &[]));
    }
    let cache = started(&server, config()).await;

    server.stop();
    server.delete("ns", "drop");
    server.apply(&fixtures::pod("ns", "new", NODE, &[]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Down: the cache keeps serving what it had.
    assert!(!cache.get(&uid("ns", "drop")).unwrap().deleted);
    server.resume(false).await;

    assert!(
        eventually(|| cache.get(&uid("ns", "new")).is_some()).await,
        "{:?}",
        cache.stats()
    );
    assert!(cache.get(&uid("ns", "drop")).unwrap().deleted);
    let stats = cache.stats();
    assert_eq!((stats.pods, stats.deleted_kept), (2, 1), "{stats:?}");
    assert!(stats.relists >= 1 && stats.errors >= 1, "{stats:?}");

    // A restart that lost everything (state reset): every pod is gone, none left live.
    server.restart(true).await;
    assert!(
        eventually(|| cache.stats().pods == 0).await,
        "{:?}",
        cache.stats()
    );
    assert!(cache.get(&uid("ns", "keep")).unwrap().deleted);
    server.apply(&fixtures::pod("ns", "after", NODE, &[]));
    assert!(eventually(|| cache.get(&uid("ns", "after")).is_some()).await);
    assert_eq!(cache.stats().pods, 1);
}

#[tokio::test]
async fn bad_pod_objects_are_skipped_and_counted() {
    init_logs();
    let server = TestApiServer::start().await;
    server.apply(&fixtures::pod("ns", "good", NODE, &[]));
    server.apply_raw(
        json!({"metadata": {"name": "wrong-type", "namespace": "ns", "uid": "u-bad",
        "labels": {"app": 5}}, "spec": {"nodeName": NODE}}),
    );
    server.apply_raw(
        json!({"metadata": {"name": "no-uid", "namespace": "ns"}, "spec": {"nodeName": NODE}}),
    );
    let cache = started(&server, config()).await;
    assert!(cache.get(&uid("ns", "good")).is_some());
    assert!(cache.get("u-bad").is_none());
    assert_eq!(cache.stats().objects_skipped, 2);

    // Through the watch too; the watch goes on.
    server.apply_raw(
        json!({"metadata": {"name": "bad-status", "namespace": "ns", "uid": "u-bad2"},
        "spec": {"nodeName": NODE}, "status": {"containerStatuses": {"not": "a list"}}}),
    );
    server.apply(&fixtures::pod("ns", "later", NODE, &[]));
    assert!(eventually(|| cache.get(&uid("ns", "later")).is_some()).await);
    let stats = cache.stats();
    assert_eq!(
        (stats.objects_skipped, stats.relists, stats.pods),
        (3, 0, 2),
        "{stats:?}"
    );
}

#[tokio::test]
async fn garbage_and_hanging_answers_are_retried_with_backoff_while_the_cache_serves() {
    init_logs();
    let server = TestApiServer::start().await;
    server.apply(&fixtures::pod("ns", "steady", NODE, &[]));
    let cache = started(&server, config()).await;
    let steady = uid("ns", "steady");

    // A garbage line in an open watch: the watch resumes from its last version, no relist.
    server.inject_watch_line("{{{ not json");
    assert!(eventually(|| cache.stats().watch_restarts >= 1).await);
    assert_eq!(cache.stats().relists, 0);
    assert!(eventually(|| server.stats().open_watches == 1).await);

    // Garbage bodies for every request, then a forced relist: it fails with backoff.
    server.set_fault(Fault::Garbage);
    server.expire_watches();
    let before = server.stats().lists;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts = server.stats().lists - before;
    // Backoff 50 ms doubling to 400 ms (plus jitter): a handful of attempts in 1.5 s, not hundreds.
    assert!((2..=12).contains(&attempts), "{attempts} list attempts");
    assert!(cache.get(&steady).is_some(), "the cache keeps serving");
    assert!(cache.stats().errors >= 2);

    // Hanging: each attempt times out, and the cache keeps serving.
    server.set_fault(Fault::Hang);
    let errors = cache.stats().errors;
    assert!(
        eventually(|| cache.stats().errors >= errors + 2).await,
        "{:?}",
        cache.stats()
    );
    assert!(cache.get(&steady).is_some());
    assert!(
        cache.stats().last_event_age.unwrap() >= Duration::from_millis(1000),
        "staleness shows"
    );

    // Recovered: relisted, fresh again, and new pods arrive.
    server.set_fault(Fault::None);
    server.apply(&fixtures::pod("ns", "after", NODE, &[]));
    assert!(
        eventually(|| cache.get(&uid("ns", "after")).is_some()).await,
        "{:?}",
        cache.stats()
    );
    let stats = cache.stats();
    assert!(
        stats.relists >= 1 && stats.last_event_age.unwrap() < Duration::from_secs(1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn watch_timeouts_and_bookmarks_keep_a_quiet_cache_fresh() {
    init_logs();
    let server = TestApiServer::start().await;
    server.apply(&fixtures::pod("ns", "quiet", NODE, &[]));
    let cache = started(
        &server,
        CacheConfig {
            watch_timeout: Duration::from_secs(1),
            ..config()
        },
    )
    .await;

    // Nothing changes; the server closes each watch after 1 s with a bookmark, and the
    // informer resumes without relisting.
    assert!(
        eventually(|| cache.stats().watch_restarts >= 2).await,
        "{:?}",
        cache.stats()
    );
    let stats = cache.stats();
    assert_eq!(stats.relists, 0, "{stats:?}");
    assert!(stats.bookmarks >= 2, "{stats:?}");
    assert!(
        stats.last_event_age.unwrap() < Duration::from_millis(1500),
        "{stats:?}"
    );
}

#[tokio::test]
async fn lists_from_the_watch_cache_whole_and_relists_page_by_page() {
    init_logs();
    let server = TestApiServer::start().await;
    for i in 0..25 {
        server.apply(&fixtures::pod("ns", &format!("p{i}"), NODE, &[]));
    }
    let cache = started(
        &server,
        CacheConfig {
            page_size: 10,
            ..config()
        },
    )
    .await;
    // The first list asks the watch cache (resourceVersion=0), which ignores the limit: one body.
    assert_eq!(cache.stats().pods, 25);
    assert_eq!(server.stats().lists, 1);
    let first = &server.requests()[0];
    assert!(
        first.contains("resourceVersion=0") && first.contains("limit=10"),
        "{first}"
    );

    // After a 410 the relist reads the storage, which honours the limit: three pages of one
    // snapshot, the later ones by continue token alone.
    server.apply(&fixtures::pod("ns", "p25", NODE, &[]));
    server.expire_watches();
    assert!(eventually(|| cache.stats().relists == 1).await);
    assert_eq!(cache.stats().pods, 26);
    let requests: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| !r.contains("watch="))
        .collect();
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert!(
        !requests[1].contains("resourceVersion") && !requests[1].contains("continue="),
        "{requests:?}"
    );
    assert!(
        requests[2..]
            .iter()
            .all(|r| r.contains("continue=") && !r.contains("resourceVersion")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_pod_moving_off_the_node_leaves_the_cache() {
    init_logs();
    let server = TestApiServer::start().await;
    server.apply(&fixtures::pod("ns", "mover", NODE, &[]));
    let cache = started(&server, config()).await;
    // Not a real transition (nodeName is immutable once set), but what a field-selected watch
    // sends when an object stops matching: DELETED.
    server.apply(&fixtures::pod("ns", "mover", "node-b", &[]));
    assert!(eventually(|| cache.get(&uid("ns", "mover")).unwrap().deleted).await);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_informer() {
    let server = TestApiServer::start().await;
    let cache = started(&server, config()).await;
    let clone = cache.clone();
    drop(cache);
    drop(clone);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats().open_watches, 0);
}
