//! Reading podmapd's event lines in the containerd suites: which container an event names, its
//! arguments, its time as wall-clock nanoseconds (to compare with a record's creation), and the
//! one check that an event is attributed to a pod's container.

use serde_json::{json, Value};

use super::Pod;

/// Asserts that `e` is attributed to container `cid` (named `name`) of `pod`: the container's id
/// and name, and the pod's uid, name, namespace and its own labels (runtime-added keys stripped).
pub fn assert_attributed(e: &Value, pod: &Pod, cid: &str, name: &str) {
    let ctx = || format!("event: {e:#}");
    assert_eq!(e["attribution"], "container", "{}", ctx());
    assert_eq!(e["container"]["id"], cid, "{}", ctx());
    assert_eq!(e["container"]["name"], name, "{}", ctx());
    assert_eq!(e["pod"]["uid"], pod.spec.uid.as_str(), "{}", ctx());
    assert_eq!(e["pod"]["name"], pod.spec.name.as_str(), "{}", ctx());
    assert_eq!(
        e["pod"]["namespace"],
        pod.spec.namespace.as_str(),
        "{}",
        ctx()
    );
    assert_eq!(e["pod"]["labels"], json!(pod.spec.labels), "{}", ctx());
}

/// The container id an event names: the mapped container's, or for an `unknown` event the one
/// read from its cgroup path.
pub fn container_id(ev: &Value) -> Option<&str> {
    ev["container"]["id"].as_str()
}

pub fn is(ev: &Value, kind: &str) -> bool {
    ev["type"] == kind
}

pub fn binary(ev: &Value) -> &str {
    ev["process"]["binary"].as_str().unwrap_or("")
}

pub fn pid(ev: &Value) -> u64 {
    ev["process"]["pid"].as_u64().unwrap_or(0)
}

pub fn args_contain(ev: &Value, needle: &str) -> bool {
    ev["process"]["args"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains(needle)))
    })
}

/// The event's `time` (RFC 3339, UTC, `Z`) as nanoseconds since the epoch.
pub fn time_ns(ev: &Value) -> Option<u64> {
    parse_rfc3339_utc(ev["time"].as_str()?)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
pub use podmap_proto::time::parse_rfc3339 as parse_rfc3339_utc;
