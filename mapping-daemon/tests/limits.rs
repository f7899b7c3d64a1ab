//! The real podmapd's limits, as users set them: the socket's numeric group, the cap on
//! clients, and a --grace too large to multiply into nanoseconds. Runs as root; each test has
//! its own pins and socket (conformance/src/daemon.rs).

use std::io::BufRead as _;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use podmap_bpf::{ContainerId, ContainerMeta, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::{CgroupId, CgroupIds, CgroupKey};
use podmap_conformance::daemon::{Daemon, DaemonOptions};
use serde_json::Value;

fn env(pairs: &[(&str, &str)]) -> DaemonOptions {
    DaemonOptions {
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn podmapd_gives_the_socket_a_numeric_group_and_caps_its_clients() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let daemon = Daemon::start_with(env(&[
        ("PODMAP_SOCKET_GROUP", "54321"),
        ("PODMAP_MAX_CLIENTS", "3"),
    ]));
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(
        meta.gid(),
        54321,
        "the host gid as given, no name looked up"
    );
    assert_eq!(meta.mode() & 0o777, 0o660);

    let _a = daemon.events("{}");
    let _b = daemon.events("{}");
    let _c = daemon.events("{}");
    daemon.wait_status("three streaming clients", |st| st["clients_connected"] == 3);
    // A fourth stream is told why and closed; status keeps its own places.
    let mut over = daemon.request(r#"{"events": {}}"#);
    let mut line = String::new();
    over.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{line}"));
    assert!(msg.starts_with("too many event streams"), "{msg}");
    line.clear();
    assert_eq!(
        over.read_line(&mut line).unwrap(),
        0,
        "closed after the error"
    );
    let st = daemon.status();
    assert!(
        st.get("error").is_none(),
        "status answered beside full streams: {st:#}"
    );
    assert!(st["clients_refused"].as_u64() >= Some(1), "{st:#}");
    assert_eq!(st["client_errors"], 0, "{st:#}");
}

#[test]
fn a_grace_too_large_for_nanoseconds_keeps_records_and_the_sweeper_alive() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    // 18446744074 s is the first whole second past 2^64 ns: multiplied in u64 it wraps to
    // 0.29 s (release) or panics the sweeper (debug).
    let daemon = Daemon::start_with(env(&[("PODMAP_GRACE", "18446744074")]));
    let mut maps = SharedMaps::open(&daemon.pins.path).unwrap();
    let ids = CgroupIds {
        v2: Some(CgroupId(0x7ffe_0001)),
        v1: None,
    };
    let meta = ContainerMeta {
        container_id: ContainerId("grace".into()),
        name: "c".into(),
        namespace: "prod".into(),
        runtime: "test".into(),
        ..Default::default()
    };
    maps.records
        .insert(&ids, &meta, RecordFlags::default(), Writer::Test)
        .unwrap();
    assert!(maps
        .records
        .mark_removed(&ids, podmap_bpf::maps::boot_ns())
        .unwrap());
    // The sweeper ticks every min(grace, 5) s: two ticks.
    let until = Instant::now() + Duration::from_secs(11);
    while Instant::now() < until {
        assert!(
            maps.records
                .get(CgroupKey::v2(0x7ffe_0001))
                .unwrap()
                .is_some(),
            "a removed record was swept long before its grace"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(daemon.status().get("node").is_some());
    maps.records.remove(&ids).unwrap();
}
