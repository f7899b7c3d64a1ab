//! podmapd mirroring PodPolicy resources from the (in-process) API server into the policy
//! directory: what the runtime plugins read. A resource added, changed, made invalid, named
//! twice and deleted; files of resources deleted while podmapd was away; hand-written files
//! untouched; a relist after the watch expired.

use std::path::Path;

use podmap_conformance::daemon::{kubeconfig, Daemon, DaemonOptions};
use podmap_pod_cache::testing::{Resource, TestApiServer};
use podmap_policy::MIRRORED_HEADER;
use serde_json::{json, Value};

fn policy(name: &str, binary: &str) -> Value {
    json!({
        "apiVersion": "podmap.dev/v1alpha1",
        "kind": "PodPolicy",
        "metadata": {"name": name, "labels": {"team": "sec"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"namespaces": ["prod"], "rules": [{"exec": {"paths": [binary]}, "action": "kill"}]}
    })
}

fn loaded(st: &Value) -> Vec<String> {
    let mut names: Vec<String> = st["policies"]["loaded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some(l.as_str()?.split(' ').next()?.to_string()))
        .collect();
    names.sort();
    names
}

fn mirrored(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("podpolicy.{name}.yaml"))).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_mirrored_into_the_policy_directory() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let server = TestApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    server.apply_object(Resource::PodPolicies, policy("before-start", "/bin/false"));
    // Left by an earlier run for a resource deleted since; and a hand-written policy.
    std::fs::write(
        dir.join("podpolicy.deleted-meanwhile.yaml"),
        format!(
            "{MIRRORED_HEADER}\n{}",
            serde_yaml_ng::to_string(&policy("deleted-meanwhile", "/bin/true")).unwrap()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("local.yaml"),
        "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: local}\nspec:\n  rules: [{exec: {paths: [/bin/ed]}, action: audit}]\n",
    )
    .unwrap();
    let kc = kubeconfig(tmp.path(), &server.url());

    tokio::task::block_in_place(|| {
        let daemon = Daemon::start_with(DaemonOptions {
            env: vec![
                ("PODMAP_KUBECONFIG".into(), kc.display().to_string()),
                ("PODMAP_POLICY_DIR".into(), dir.display().to_string()),
            ],
            ..Default::default()
        });

        // The first list: the resource is mirrored, the stale file removed, the local one kept.
        let st = daemon.wait_status("the first list mirrored", |st| {
            st["policies"]["resources"]["synced"] == true && loaded(st) == ["before-start", "local"]
        });
        assert_eq!(st["policies"]["resources"]["resources"], 1, "{st:#}");
        assert!(mirrored(dir, "deleted-meanwhile").is_none());
        let text = mirrored(dir, "before-start").expect("mirrored file");
        assert!(text.starts_with(MIRRORED_HEADER), "{text}");
        assert!(
            !text.contains("last-applied") && !text.contains("resourceVersion"),
            "only name and labels of the metadata are kept: {text}"
        );

        // Added, then changed: the file follows, and podmapd loads it.
        server.apply_object(Resource::PodPolicies, policy("added", "/bin/sleep"));
        daemon.wait_status("the added resource loaded", |st| {
            loaded(st) == ["added", "before-start", "local"]
        });
        server.apply_object(Resource::PodPolicies, policy("added", "/bin/cat"));
        daemon.wait_status("the changed resource mirrored", |_| {
            mirrored(dir, "added").is_some_and(|t| t.contains("/bin/cat"))
        });

        // Made invalid: refused, named with field and reason; the last valid version stays.
        server.apply_object(Resource::PodPolicies, policy("added", "bin/cat"));
        let st = daemon.wait_status("the invalid resource refused", |st| {
            st["policies"]["resources"]["refused"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        });
        let refusal = st["policies"]["resources"]["refused"][0].as_str().unwrap();
        assert!(
            refusal.contains("PodPolicy resource \"added\"")
                && refusal.contains("spec.rules[0].exec.paths[0]")
                && refusal.contains("not an absolute path"),
            "{refusal}"
        );
        assert!(mirrored(dir, "added").unwrap().contains("/bin/cat"));
        assert_eq!(loaded(&st), ["added", "before-start", "local"], "{st:#}");

        // A resource with a hand-written policy's name, and one whose name's id collides with a
        // hand-written policy's: the node's own files win (a cluster resource must not displace
        // them), the resources are refused, each named in status with the winner.
        std::fs::write(
            dir.join("node.yaml"),
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {name: p54848}\nspec:\n  rules: [{exec: {paths: [/bin/ed]}, action: audit}]\n",
        )
        .unwrap();
        server.apply_object(Resource::PodPolicies, policy("local", "/bin/ls"));
        server.apply_object(Resource::PodPolicies, policy("p179bb", "/bin/ls"));
        let st = daemon.wait_status("the resources that clash refused", |st| {
            let errors = st["policies"]["errors"].to_string();
            errors.contains("podpolicy.local.yaml") && errors.contains("podpolicy.p179bb.yaml")
        });
        assert_eq!(
            loaded(&st),
            ["added", "before-start", "local", "p54848"],
            "{st:#}"
        );
        assert!(
            st["policies"]["loaded"]
                .to_string()
                .contains(&format!("local ({})", dir.join("local.yaml").display())),
            "{st:#}"
        );
        let errors: Vec<&str> = st["policies"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str())
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        for (file, winner) in [
            ("podpolicy.local.yaml", "local.yaml"),
            ("podpolicy.p179bb.yaml", "node.yaml"),
        ] {
            let e = errors.iter().find(|e| e.contains(file)).unwrap();
            assert!(
                e.contains("mirrored from a PodPolicy resource")
                    && e.contains(&format!("hand-written file {}", dir.join(winner).display())),
                "{e}"
            );
        }
        assert!(server.delete_object(Resource::PodPolicies, "", "p179bb"));
        std::fs::remove_file(dir.join("node.yaml")).unwrap();

        // The watch expires (the API server compacted): relist, and changes still arrive.
        server.expire_watches();
        assert!(server.delete_object(Resource::PodPolicies, "", "local"));
        assert!(server.delete_object(Resource::PodPolicies, "", "added"));
        daemon.wait_status("deletions mirrored after the relist", |st| {
            loaded(st) == ["before-start", "local"]
        });
        assert!(mirrored(dir, "added").is_none());
        assert!(mirrored(dir, "local").is_none());
        assert!(dir.join("local.yaml").exists());
        let st = daemon.status();
        let m = &st["policies"]["resources"];
        assert_eq!(m["resources"], 1, "{st:#}");
        assert!(m["refused"].as_array().unwrap().is_empty(), "{st:#}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_reported_and_mirroring_can_be_turned_off() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    // An API server podmapd cannot reach (nothing listens on port 9): the mirror's failures are
    // counted and shown, never silent. Turned off, the mirror does not run at all.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), "http://127.0.0.1:9");
    let env = |off: bool| {
        let mut env = vec![
            ("PODMAP_KUBECONFIG".to_string(), kc.display().to_string()),
            (
                "PODMAP_POLICY_DIR".to_string(),
                dir.path().display().to_string(),
            ),
        ];
        if off {
            env.push(("PODMAP_NO_POLICY_RESOURCES".into(), "true".into()));
        }
        env
    };
    tokio::task::block_in_place(|| {
        let daemon = Daemon::start_with(DaemonOptions {
            env: env(false),
            ..Default::default()
        });
        let st = daemon.wait_status("the unreachable API server counted", |st| {
            st["policies"]["resources"]["errors"].as_u64() >= Some(1)
        });
        assert_eq!(st["policies"]["resources"]["synced"], false, "{st:#}");
        assert!(
            st["policies"]["resources"]["last_error"].is_string(),
            "{st:#}"
        );
        drop(daemon);

        let daemon = Daemon::start_with(DaemonOptions {
            env: env(true),
            ..Default::default()
        });
        let st = daemon.status();
        assert!(st["policies"].get("resources").is_none(), "{st:#}");
        assert_eq!(st["mode"], "kubernetes");
    });
}
