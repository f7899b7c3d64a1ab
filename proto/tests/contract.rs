//! The event contract's promises to older clients (docs/interfaces.md, "Compatibility of the
//! event contract"): what a newer podmapd may add (fields, enum values) decodes, and the version
//! is on every event.

use podmap_proto::containers::ContainerRow;
use podmap_proto::status::{Enforcement, StatusReport};
use podmap_proto::{Attribution, Event, EventType, ProcessFlag, Request, SCHEMA_VERSION};
use serde_json::json;

/// An event as a newer podmapd might send it: a version 1 event with a new type, a new
/// attribution, a new process flag, and fields nobody here knows at every level.
fn newer_event() -> serde_json::Value {
    json!({
        "schema_version": 1,
        "type": "network_connect",
        "time": "2026-11-25T12:00:00.123456789Z",
        "node": "node-a",
        "process": {
            "pid": 7, "tid": 7, "ppid": 1, "uid": 0, "binary": "/bin/sh", "args": [],
            "cwd": "/", "exec_id": "e", "parent_exec_id": null,
            "start_time": "2026-11-25T12:00:00Z", "cgroup_id": 9,
            "flags": ["args_truncated", "entered_via_exec"],
            "credentials": {"euid": 0, "caps": ["CAP_SYS_ADMIN"]}
        },
        "container": {"id": "c", "name": "web", "runtime": "containerd", "image": "i",
                      "privileged": true},
        "pod": {"uid": "u", "name": "p", "namespace": "ns", "labels": {}, "workload": null,
                "workload_kind": null, "annotations": {"a": "b"}},
        "attribution": "sandbox",
        "exit": {"code": 0, "signal": null, "core_dumped": false},
        "policy": {"name": "p", "rule": "connect", "path": "/x", "action": "notify",
                   "mode": "lsm", "rule_id": 3},
        "network": {"daddr": "10.0.0.1"}
    })
}

#[test]
fn unknown_enum_values_and_fields_decode() {
    let ev: Event = serde_json::from_value(newer_event()).expect("a newer event decodes");
    assert_eq!(ev.kind, EventType::Other);
    assert_eq!(ev.attribution, Attribution::Other);
    assert_eq!(
        ev.process.flags,
        vec![ProcessFlag::ArgsTruncated, ProcessFlag::Other]
    );
    assert_eq!(ev.schema_version, 1);
    assert_eq!(ev.container.as_ref().unwrap().name, "web");
    assert_eq!(ev.policy.as_ref().unwrap().action, "notify");
    // What the client knows survives a re-encoding; the unknown values become "other".
    let again = serde_json::to_value(&ev).unwrap();
    assert_eq!(again["type"], "other");
    assert_eq!(again["attribution"], "other");
    assert_eq!(
        again["process"]["flags"],
        json!(["args_truncated", "other"])
    );
    let back: Event = serde_json::from_value(again).unwrap();
    assert_eq!(back, ev);
}

#[test]
fn events_of_a_later_version_still_decode() {
    let mut v = newer_event();
    v["schema_version"] = json!(2);
    let ev: Event = serde_json::from_value(v).unwrap();
    assert_eq!(
        ev.schema_version, 2,
        "the client sees the version and decides"
    );
}

#[test]
fn unversioned_events_are_version_1() {
    let mut v = newer_event();
    v.as_object_mut().unwrap().remove("schema_version");
    v["type"] = json!("exec");
    let ev: Event = serde_json::from_value(v).unwrap();
    assert_eq!(ev.schema_version, 1);
    assert_eq!(ev.kind, EventType::Exec);
}

#[test]
fn every_event_carries_the_version() {
    let ev: Event = serde_json::from_value(newer_event()).unwrap();
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["schema_version"], json!(SCHEMA_VERSION));
    assert!(v["schema_version"].is_u64(), "an integer, not a string");
}

#[test]
fn status_and_containers_of_a_newer_podmapd_decode() {
    let status = json!({
        "node": "n", "version": "9.9.9", "uptime_seconds": 1.0, "mode": "kubernetes",
        "cgroup_hierarchy": "cgroup2", "cgroup_layout": "systemd", "events_seen": {},
        "events_delivered": 0, "events_lost_kernel": 0, "events_lost_slow_clients": 0,
        "attribution": {}, "events_held": 0, "events_held_timed_out": 0,
        "clients_connected": 0, "client_errors": 0, "containers_mapped": 0, "pods_cached": 0,
        "enforcement_mode": "something new", "enforcement": "seccomp",
        "shared_counters": {"a_counter_added_later": 3},
        "mapping_latency_us": {"count": 0, "p50": null, "p99": null, "max": null, "p999": 1},
        "a_section_added_later": {"x": 1}
    });
    let r: StatusReport = serde_json::from_value(status).expect("a newer status decodes");
    assert_eq!(r.enforcement, Enforcement::Unknown);
    assert_eq!(r.shared_counters["a_counter_added_later"], 3);

    let rows = json!([{"cgroup_id": 1, "hierarchy": "v3", "removing": null, "sandbox": null,
                       "mapped_at": null, "writer": "nri", "container": {"id": "c",
                       "name": "n", "runtime": "r", "image": "i", "privileged": false}}]);
    let rows: Vec<ContainerRow> = serde_json::from_value(rows).expect("newer rows decode");
    assert_eq!(rows[0].hierarchy, "v3");
}

/// `Other` is for decoding what a newer podmapd sends; a request naming a type this podmapd
/// does not know is refused, as before.
#[test]
fn requests_still_refuse_unknown_types() {
    let err = Request::parse(br#"{"events": {"types": ["exec", "network_connect"]}}"#)
        .expect_err("an unknown type is refused");
    assert!(
        err.to_string()
            .contains("unknown variant `network_connect`"),
        "{err}"
    );
    assert!(Request::parse(br#"{"events": {"types": ["other"]}}"#).is_err());
    let Ok(Request::Events(f)) =
        Request::parse(br#"{"events": {"types": ["exec", "exit", "policy"]}}"#)
    else {
        panic!("the known types are accepted");
    };
    assert_eq!(f.types, Some(EventType::ALL.to_vec()));
}
