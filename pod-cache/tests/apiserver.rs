//! The test API server against kube-rs's own client and its stock `watcher`: if these pass, the
//! server speaks the protocol as kube-rs expects it of a real API server.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use podmap_pod_cache::testing::fixtures;
use podmap_pod_cache::testing::{Resource, TestApiServer, TestApiServerConfig};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("timed out")
        .expect("stream ended")
}

/// The PodPolicy custom resource, as podmapd's client addresses it.
fn pod_policies() -> ApiResource {
    ApiResource {
        group: "podmap.dev".into(),
        version: "v1alpha1".into(),
        api_version: "podmap.dev/v1alpha1".into(),
        kind: "PodPolicy".into(),
        plural: "podpolicies".into(),
    }
}

fn policy(name: &str, mode: &str) -> Value {
    json!({"apiVersion": "podmap.dev/v1alpha1", "kind": "PodPolicy",
           "metadata": {"name": name}, "spec": {"mode": mode}})
}

fn named(object: &DynamicObject, name: &str) -> bool {
    object.metadata.name.as_deref() == Some(name)
}

#[tokio::test]
async fn lists_with_limit_continue_and_field_selectors() {
    let server = TestApiServer::start().await;
    for i in 0..5 {
        server.apply(&fixtures::pod("a", &format!("p{i}"), "node-a", &[]));
    }
    server.apply(&fixtures::pod("b", "other", "node-b", &[]));
    let pods: Api<Pod> = Api::all(server.client());

    let first = pods
        .list(
            &ListParams::default()
                .fields("spec.nodeName=node-a")
                .limit(2),
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().expect("continue token");
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let mut rest = ListParams::default()
        .fields("spec.nodeName=node-a")
        .limit(10);
    rest.continue_token = Some(token.clone());
    let second = pods.list(&rest).await.unwrap();
    assert_eq!(second.items.len(), 3);
    assert_eq!(
        second.metadata.resource_version, first.metadata.resource_version,
        "one snapshot"
    );

    let names = |list: &kube::api::ObjectList<Pod>| {
        list.items
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    };
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=other"))
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["other"]);
    let in_ns: Api<Pod> = Api::namespaced(server.client(), "b");
    assert_eq!(
        names(&in_ns.list(&ListParams::default()).await.unwrap()),
        ["other"]
    );
    let not_a = pods
        .list(&ListParams::default().fields("metadata.namespace!=a"))
        .await
        .unwrap();
    assert_eq!(names(&not_a), ["other"]);
    assert_eq!(
        in_ns.get("other").await.unwrap().metadata.name.as_deref(),
        Some("other")
    );

    // Unsupported field: 400, as the API server answers.
    let err = pods
        .list(&ListParams::default().fields("spec.hostname=x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );

    // A continue token from before a compaction: 410 Gone.
    server.compact();
    let err = pods.list(&rest).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 410),
        "{err:?}"
    );
}

#[tokio::test]
async fn watches_deliver_events_bookmarks_and_410() {
    let server = TestApiServer::start_with(TestApiServerConfig {
        bookmark_interval: Duration::from_millis(200),
        ..TestApiServerConfig::default()
    })
    .await;
    let rv = server.apply(&fixtures::pod("a", "p", "node-a", &[]));
    let pods: Api<Pod> = Api::all(server.client());
    let params = WatchParams::default().fields("spec.nodeName=node-a");
    let mut events = pods
        .watch(&params, &(rv - 1).to_string())
        .await
        .unwrap()
        .boxed();

    // Replayed from history, then live.
    assert!(
        matches!(next(&mut events).await.unwrap(), WatchEvent::Added(p) if p.metadata.name.as_deref() == Some("p"))
    );
    server.apply(&fixtures::pod("a", "p", "node-a", &[("v", "2")]));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        WatchEvent::Modified(_)
    ));
    server.apply(&fixtures::pod("a", "q", "node-b", &[])); // not selected: no event
    server.delete("a", "p");
    assert!(matches!(
        next(&mut events).await.unwrap(),
        WatchEvent::Deleted(_)
    ));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        WatchEvent::Bookmark(_)
    ));

    // Too old a version: one ERROR event with a 410 Status.
    server.compact();
    let mut old = pods.watch(&params, &rv.to_string()).await.unwrap().boxed();
    assert!(matches!(next(&mut old).await.unwrap(), WatchEvent::Error(s) if s.code == 410));

    // A forced expiry ends open watches with a 410.
    server.expire_watches();
    loop {
        match next(&mut events).await.unwrap() {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(status) => break assert_eq!(status.code, 410),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn kube_runtime_watcher_runs_against_it() {
    let server = TestApiServer::start().await;
    server.apply(&fixtures::pod("a", "p", "node-a", &[]));
    let pods: Api<Pod> = Api::all(server.client());
    let mut events = watcher(
        pods,
        watcher::Config::default().fields("spec.nodeName=node-a"),
    )
    .boxed();
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::Init
    ));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitApply(_)
    ));
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitDone
    ));
    server.apply(&fixtures::pod("a", "r", "node-a", &[]));
    assert!(
        matches!(next(&mut events).await.unwrap(), watcher::Event::Apply(p) if p.metadata.name.as_deref() == Some("r"))
    );
    // A restart with history lost: the watcher gets a 410 and relists.
    server.restart(false).await;
    server.apply(&fixtures::pod("a", "s", "node-a", &[]));
    server.compact();
    let mut saw_init = false;
    loop {
        match next(&mut events).await {
            Ok(watcher::Event::Init) => saw_init = true,
            Ok(watcher::Event::InitDone) if saw_init => break,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[tokio::test]
async fn serves_cluster_scoped_pod_policies_apart_from_pods() {
    let server = TestApiServer::start().await;
    server.apply_object(Resource::PodPolicies, policy("audit", "Audit"));
    server.apply_object(Resource::PodPolicies, policy("block", "Enforce"));
    server.apply(&fixtures::pod("a", "p", "node-a", &[]));
    let client = server.client();
    let policies: Api<DynamicObject> = Api::all_with(client.clone(), &pod_policies());

    let all = policies.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.types.kind, "PodPolicyList");
    assert_eq!(all.types.api_version, "podmap.dev/v1alpha1");
    let names: Vec<_> = all
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["audit", "block"]);
    let one = policies
        .list(&ListParams::default().fields("metadata.name=block"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    assert!(named(&one.items[0], "block"));
    let audit = policies.get("audit").await.unwrap();
    assert_eq!(audit.data["spec"]["mode"], "Audit");

    // Only the metadata fields, as for every custom resource.
    let err = policies
        .list(&ListParams::default().fields("spec.nodeName=x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400
            && s.message == "field label not supported: spec.nodeName"),
        "{err:?}"
    );
    let err = policies.get("missing").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404
            && s.message == r#"podpolicies.podmap.dev "missing" not found"#),
        "{err:?}"
    );
    // Cluster-scoped: no namespaced path.
    let namespaced = http::Request::get("/apis/podmap.dev/v1alpha1/namespaces/a/podpolicies")
        .body(Vec::new())
        .unwrap();
    let err = client.request_text(namespaced).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );

    let pods: Api<Pod> = Api::all(client);
    let pod_names: Vec<_> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(pod_names, ["p"]);

    // Bookmarks of a podpolicies watch are of its kind.
    let mut events = policies
        .watch(
            &WatchParams::default(),
            &server.resource_version().to_string(),
        )
        .await
        .unwrap()
        .boxed();
    server.send_bookmarks();
    match next(&mut events).await.unwrap() {
        WatchEvent::Bookmark(bookmark) => {
            assert_eq!(bookmark.types.kind, "PodPolicy");
            assert_eq!(bookmark.types.api_version, "podmap.dev/v1alpha1");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn kube_runtime_watcher_over_pod_policies_sees_no_pods() {
    let server = TestApiServer::start().await;
    server.apply_object(Resource::PodPolicies, policy("audit", "Audit"));
    server.apply_object(Resource::PodPolicies, policy("block", "Enforce"));
    server.apply(&fixtures::pod("a", "p", "node-a", &[]));
    let policies: Api<DynamicObject> = Api::all_with(server.client(), &pod_policies());
    let mut events = watcher(policies, watcher::Config::default()).boxed();
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::Init
    ));
    for name in ["audit", "block"] {
        assert!(
            matches!(next(&mut events).await.unwrap(), watcher::Event::InitApply(ref p) if named(p, name))
        );
    }
    assert!(matches!(
        next(&mut events).await.unwrap(),
        watcher::Event::InitDone
    ));

    // Pod changes interleaved with policy changes: only the policy ones arrive.
    server.apply(&fixtures::pod("a", "q", "node-a", &[]));
    server.apply_object(Resource::PodPolicies, policy("audit", "Enforce"));
    server.delete("a", "p");
    server.delete_object(Resource::PodPolicies, "", "audit");
    server.apply(&fixtures::pod("a", "r", "node-a", &[]));
    assert!(
        matches!(next(&mut events).await.unwrap(), watcher::Event::Apply(ref p)
            if named(p, "audit") && p.data["spec"]["mode"] == "Enforce")
    );
    assert!(
        matches!(next(&mut events).await.unwrap(), watcher::Event::Delete(ref p) if named(p, "audit"))
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "no more events"
    );

    // An expired watch: the watcher relists, then watches on.
    server.expire_watches();
    let mut relisted = Vec::new();
    loop {
        match next(&mut events).await {
            Ok(watcher::Event::Init) => relisted.clear(),
            Ok(watcher::Event::InitApply(p)) => relisted.extend(p.metadata.name),
            Ok(watcher::Event::InitDone) => break,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => continue, // the 410
        }
    }
    assert_eq!(relisted, ["block"]);
    server.apply_object(Resource::PodPolicies, policy("late", "Audit"));
    assert!(
        matches!(next(&mut events).await.unwrap(), watcher::Event::Apply(ref p) if named(p, "late"))
    );
}

#[tokio::test]
async fn a_watch_timeout_past_the_end_of_time_is_served_not_a_panic() {
    // timeoutSeconds is the client's to choose; the largest u64 once overflowed the deadline
    // (`Instant + Duration`) and killed the request.
    let server = TestApiServer::start().await;
    let rv = server.apply(&fixtures::pod("a", "p", "node-a", &[]));
    let uri = format!(
        "/api/v1/pods?watch=true&resourceVersion={}&timeoutSeconds={}",
        rv - 1,
        u64::MAX
    );
    let request = http::Request::get(uri)
        .body(kube::client::Body::empty())
        .unwrap();
    let response = tokio::time::timeout(WAIT, server.client().send(request))
        .await
        .expect("timed out")
        .expect("the watch is served");
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut body = http_body_util::BodyExt::into_data_stream(response.into_body());
    let chunk = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("timed out")
        .expect("a first event")
        .unwrap();
    let line = chunk.split(|&b| b == b'\n').next().unwrap();
    let first: Value = serde_json::from_slice(line).unwrap();
    assert_eq!(first["type"], "ADDED", "{first}");
}
