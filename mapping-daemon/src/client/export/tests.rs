//! Unit tests of the export's pure parts: the command line and the event → log record mapping.
//! The buffer and the file rotation test themselves in their modules; the collector, the
//! reconnects and the signals are tested end to end (conformance/tests/export.rs).

use std::collections::BTreeMap;

use clap::Parser as _;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use podmap_proto::Event;

use super::record::{log_record, request, resource, Pending};
use super::*;
use crate::client::{Cli, Command};

fn value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => format!("int:{i}"),
        Some(Value::BoolValue(b)) => format!("bool:{b}"),
        Some(Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values
                .iter()
                .map(|v| value(&Some(v.clone())))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for kv in kvs {
        assert!(
            m.insert(kv.key.clone(), value(&kv.value)).is_none(),
            "{} twice",
            kv.key
        );
    }
    m
}

const EXIT: &str = r#"{"type":"exit","time":"2026-11-25T12:00:01.500000000Z","node":"node-a","process":{"pid":4242,"tid":4242,"ppid":4200,"uid":1000,"binary":"/bin/sleep","args":["0.1","x y"],"cwd":"/srv","exec_id":"ZXhlYw","parent_exec_id":"cGFyZW50","start_time":"2026-11-25T12:00:00Z","cgroup_id":77,"flags":["args_truncated"],"entered_via_exec":true},"container":{"id":"c0ffee","name":"app","runtime":"containerd","image":"registry.local:5000/team/app:1.2"},"pod":{"uid":"uid-1","name":"web-1","namespace":"prod","labels":{"app":"web"},"workload":"web","workload_kind":"Deployment"},"attribution":"container","exit":{"code":3,"signal":null}}"#;

const POLICY: &str = r#"{"type":"policy","time":"2026-11-25T12:00:02Z","node":"node-a","process":{"pid":1,"tid":1,"ppid":0,"uid":0,"binary":"/bin/nc","args":[],"cwd":"/","exec_id":"e","parent_exec_id":null,"start_time":"2026-11-25T12:00:00Z","cgroup_id":5},"container":null,"pod":null,"attribution":"host","policy":{"name":"no-nc","rule":"r1","path":"/bin/nc","action":"deny","mode":"enforce"}}"#;

#[test]
fn an_exit_event_becomes_a_record_with_every_attribute() {
    let ev: Event = serde_json::from_str(EXIT).unwrap();
    let r = log_record(&ev, &format!("{EXIT}\n"), 99);
    // 2026-11-25T12:00:01.5Z
    assert_eq!(r.time_unix_nano, 1_795_608_001_500_000_000);
    assert_eq!(r.observed_time_unix_nano, 99);
    assert_eq!(
        value(&r.body),
        EXIT,
        "the body is the event line, newline trimmed"
    );
    assert_eq!(r.severity_text, "INFO");
    assert_eq!(r.event_name, "podmap.exit");
    let a = attrs(&r.attributes);
    let want = [
        ("k8s.pod.name", "web-1"),
        ("k8s.pod.uid", "uid-1"),
        ("k8s.namespace.name", "prod"),
        ("k8s.pod.label.app", "web"),
        ("k8s.deployment.name", "web"),
        ("k8s.container.name", "app"),
        ("container.name", "app"),
        ("container.id", "c0ffee"),
        ("container.image.name", "registry.local:5000/team/app"),
        ("container.image.tags", "[1.2]"),
        ("process.pid", "int:4242"),
        ("process.parent_pid", "int:4200"),
        ("process.executable.path", "/bin/sleep"),
        ("process.command_args", "[/bin/sleep,0.1,x y]"),
        ("process.working_directory", "/srv"),
        ("process.user.id", "int:1000"),
        ("process.creation.time", "2026-11-25T12:00:00Z"),
        ("process.exit.code", "int:3"),
        ("podmap.event.type", "exit"),
        ("podmap.schema_version", "int:1"),
        ("podmap.attribution", "container"),
        ("podmap.workload.kind", "Deployment"),
        ("podmap.workload.name", "web"),
        ("podmap.container.image", "registry.local:5000/team/app:1.2"),
        ("podmap.container.runtime", "containerd"),
        ("podmap.process.tid", "int:4242"),
        ("podmap.process.exec_id", "ZXhlYw"),
        ("podmap.process.parent_exec_id", "cGFyZW50"),
        ("podmap.process.cgroup_id", "77"),
        ("podmap.process.flags", "[args_truncated]"),
        ("podmap.process.entered_via_exec", "bool:true"),
    ];
    for (k, v) in want {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "attribute {k}");
    }
    let known: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    let extra: Vec<&String> = a.keys().filter(|k| !known.contains(&k.as_str())).collect();
    assert!(extra.is_empty(), "attributes not checked: {extra:?}");
}

#[test]
fn a_policy_event_carries_the_policy_and_no_pod() {
    let ev: Event = serde_json::from_str(POLICY).unwrap();
    let r = log_record(&ev, POLICY, 1);
    assert_eq!(r.severity_text, "WARN");
    assert_eq!(r.time_unix_nano, 1_795_608_002_000_000_000);
    let a = attrs(&r.attributes);
    for (k, v) in [
        ("podmap.event.type", "policy"),
        ("podmap.attribution", "host"),
        ("podmap.policy.name", "no-nc"),
        ("podmap.policy.rule", "r1"),
        ("podmap.policy.path", "/bin/nc"),
        ("podmap.policy.action", "deny"),
        ("podmap.policy.mode", "enforce"),
        ("process.command_args", "[/bin/nc]"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "attribute {k}");
    }
    for absent in [
        "k8s.pod.name",
        "container.id",
        "process.exit.code",
        "podmap.process.parent_exec_id",
        "podmap.process.flags",
    ] {
        assert!(!a.contains_key(absent), "{absent} on a host policy event");
    }
}

#[test]
fn a_batch_is_one_resource_per_node_with_the_node_and_service() {
    let ev: Event = serde_json::from_str(EXIT).unwrap();
    let rec = log_record(&ev, EXIT, 1);
    let req = request(vec![
        Pending {
            node: "node-a".into(),
            record: rec.clone(),
        },
        Pending {
            node: "node-b".into(),
            record: rec.clone(),
        },
        Pending {
            node: "node-a".into(),
            record: rec,
        },
    ]);
    assert_eq!(req.resource_logs.len(), 2);
    let a = &req.resource_logs[0];
    let ra = attrs(&a.resource.as_ref().unwrap().attributes);
    assert_eq!(ra["k8s.node.name"], "node-a");
    assert_eq!(ra["service.name"], "podmap");
    assert_eq!(a.scope_logs[0].log_records.len(), 2);
    assert_eq!(a.scope_logs[0].scope.as_ref().unwrap().name, "podmap");
    let rb = attrs(&resource("node-b").attributes);
    assert_eq!(rb["k8s.node.name"], "node-b");
}

#[test]
fn endpoints_take_host_port_or_a_url() {
    use otlp::endpoint_url;
    assert_eq!(
        endpoint_url("127.0.0.1:4317", OtlpProtocol::Grpc).unwrap(),
        "http://127.0.0.1:4317"
    );
    assert_eq!(
        endpoint_url("http://collector:4318", OtlpProtocol::Http).unwrap(),
        "http://collector:4318/v1/logs"
    );
    assert_eq!(
        endpoint_url("http://collector:4318/", OtlpProtocol::Http).unwrap(),
        "http://collector:4318/v1/logs"
    );
    assert_eq!(
        endpoint_url("http://gw:8080/otlp/v1/logs", OtlpProtocol::Http).unwrap(),
        "http://gw:8080/otlp/v1/logs"
    );
    assert!(endpoint_url("https://collector:4317", OtlpProtocol::Grpc).is_err());
    assert!(endpoint_url("ftp://collector", OtlpProtocol::Grpc).is_err());
}

fn export_args(argv: &[&str]) -> ExportArgs {
    let mut full = vec!["podmap", "export"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full).unwrap().command {
        Command::Export(a) => a,
        other => panic!("not export: {other:?}"),
    }
}

#[test]
fn the_command_line_takes_the_filters_and_the_three_sinks() {
    let a = export_args(&[
        "--namespace",
        "prod",
        "--label",
        "app=web",
        "--type",
        "exec,exit",
        "--otlp-endpoint",
        "http://c:4318",
        "--otlp-protocol",
        "http",
        "--file",
        "/var/log/podmap/events.log",
        "--file-max-size-mb",
        "7",
        "--file-backups",
        "2",
        "--file-mode",
        "0640",
        "--stdout",
    ]);
    let f = a.filters.filter();
    assert_eq!(f.namespace.as_deref(), Some("prod"));
    assert_eq!(f.labels["app"], "web");
    assert_eq!(f.types.as_ref().map(Vec::len), Some(2));
    assert_eq!(a.otlp_endpoint.as_deref(), Some("http://c:4318"));
    assert_eq!(a.otlp_protocol, OtlpProtocol::Http);
    assert_eq!(
        a.file.as_deref(),
        Some(Path::new("/var/log/podmap/events.log"))
    );
    assert_eq!((a.file_max_size_mb, a.file_backups), (7, 2));
    assert_eq!(a.file_mode, 0o640);
    assert!(a.stdout);

    let a = export_args(&["--stdout"]);
    assert_eq!(a.otlp_protocol, OtlpProtocol::Grpc);
    assert_eq!(a.file_mode, 0o600);
    assert!(a.filters.filter().is_empty());

    for bad in [
        &["--otlp-protocol", "thrift"][..],
        &["--file-mode", "0999"],
        &["--file-max-size-mb", "0"],
        &["--type", "fork"],
    ] {
        let mut full = vec!["podmap", "export"];
        full.extend_from_slice(bad);
        assert!(Cli::try_parse_from(full).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn no_sink_is_a_clear_error() {
    let a = export_args(&["--namespace", "prod"]);
    let e = run(Path::new("/nonexistent.sock"), &a).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("at least one sink"), "{msg}");
    assert!(msg.contains("--otlp-endpoint"), "{msg}");
}

#[test]
fn the_counters_line_names_each_active_sink() {
    let c = AllCounters::default();
    c.received.store(5, Ordering::Relaxed);
    c.otlp.exported.store(4, Ordering::Relaxed);
    c.otlp.dropped.store(1, Ordering::Relaxed);
    c.file.exported.store(5, Ordering::Relaxed);
    let s = c.summary(Active {
        otlp: true,
        file: true,
        stdout: false,
    });
    assert_eq!(
        s,
        "received=5 reconnects=0 undecoded=0 filtered=0 otlp.exported=4 otlp.dropped=1 otlp.retried=0 \
         file.exported=5 file.dropped=0 file.retried=0"
    );
}

#[test]
fn records_beyond_the_buffer_are_dropped_and_counted() {
    let counters = Arc::new(AllCounters::default());
    let queue = Arc::new(otlp::Queue::new(2));
    let mut sinks = LineSinks {
        otlp: Some(queue.clone()),
        file: None,
        stdout: None,
        filter: ClientFilter::default(),
        counters: counters.clone(),
        last_warning: None,
    };
    for _ in 0..5 {
        sinks.send(EXIT);
    }
    sinks.send("{\"type\":\"from-the-future\"}\n");
    assert_eq!(counters.received.load(Ordering::Relaxed), 6);
    assert_eq!(counters.otlp.dropped.load(Ordering::Relaxed), 4);
    assert_eq!(counters.undecoded.load(Ordering::Relaxed), 1);
    let kept = queue.buffer.lock().unwrap().take(10);
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].node, "node-a");
}

/// The client-side filters apply before any sink: only what they keep reaches the file and the
/// OTLP queue, and what they leave out is counted, so `received` is accounted for.
#[test]
fn client_side_filters_apply_before_the_sinks_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    let a = export_args(&["--host", "--binary", "^/bin/", "--file", "x"]);
    assert!(a.filters.needs_client());
    let counters = Arc::new(AllCounters::default());
    let queue = Arc::new(otlp::Queue::new(100));
    let mut sinks = LineSinks {
        otlp: Some(queue.clone()),
        file: Some(file::RotatingFile::open(&path, 1 << 20, 1, 0o600).unwrap()),
        stdout: None,
        filter: a.filters.client_filter(),
        counters: counters.clone(),
        last_warning: None,
    };
    // A host event of /bin/nc: kept. A container event: not --host. A host event of
    // /usr/sbin/nc: not --binary. A line that does not decode cannot be shown to match.
    let usr_nc = POLICY.replace("\"/bin/nc\"", "\"/usr/sbin/nc\"");
    for line in [POLICY, EXIT, &usr_nc, "{\"type\":\"exec\",\"garbled\n"] {
        sinks.send(&format!("{line}\n"));
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(get(&counters.received), 4);
    assert_eq!(get(&counters.filtered), 3);
    assert_eq!(get(&counters.undecoded), 1);
    assert_eq!(get(&counters.file.exported), 1);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{POLICY}\n")
    );
    let kept = queue.buffer.lock().unwrap().take(10);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].node, "node-a");
}
