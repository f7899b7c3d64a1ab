//! Events as OTLP log records: the body is the event's JSON line as podmapd sent it, the
//! attributes follow OpenTelemetry's semantic conventions where one exists (`k8s.*`,
//! `container.*`, `process.*`) and carry podmap's own fields under `podmap.`, so a collector
//! can route and index on them without parsing the body.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use podmap_proto::{Event, EventType};

/// A record waiting to be sent, with the node it came from (the record's resource).
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub node: String,
    pub record: LogRecord,
}

fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::ArrayValue(ArrayValue {
        values: items
            .into_iter()
            .map(|i| AnyValue { value: Some(s(i)) })
            .collect(),
    })
}

/// An image reference split as the conventions want it: `container.image.name` without the tag
/// or digest, the tag in `container.image.tags`, the digest in `container.image.repo_digests`.
fn split_image(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    // A tag's colon comes after the last slash; a colon before it is a registry's port.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..]), digest),
        None => (rest, None, digest),
    }
}

/// The attribute key of a workload kind, where the conventions name one.
fn workload_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "k8s.deployment.name",
        "ReplicaSet" => "k8s.replicaset.name",
        "StatefulSet" => "k8s.statefulset.name",
        "DaemonSet" => "k8s.daemonset.name",
        "Job" => "k8s.job.name",
        "CronJob" => "k8s.cronjob.name",
        _ => return None,
    })
}

/// The record of one event. `raw` is the event's line as podmapd sent it (the body, so the
/// collector receives exactly what `podmap events -o json` prints); `observed_ns` is now.
pub fn log_record(ev: &Event, raw: &str, observed_ns: u64) -> LogRecord {
    let mut a = Vec::with_capacity(32);
    if let Some(pod) = ev.pod.as_deref() {
        a.push(kv("k8s.pod.name", s(&pod.name)));
        a.push(kv("k8s.pod.uid", s(&pod.uid)));
        a.push(kv("k8s.namespace.name", s(&pod.namespace)));
        for (k, v) in &pod.labels {
            a.push(kv(format!("k8s.pod.label.{k}"), s(v)));
        }
        if let (Some(kind), Some(name)) = (pod.workload_kind.as_deref(), pod.workload.as_deref()) {
            if let Some(key) = workload_key(kind) {
                a.push(kv(key, s(name)));
            }
            a.push(kv("podmap.workload.kind", s(kind)));
            a.push(kv("podmap.workload.name", s(name)));
        }
    }
    if let Some(c) = ev.container.as_deref() {
        a.push(kv("k8s.container.name", s(&c.name)));
        a.push(kv("container.name", s(&c.name)));
        a.push(kv("container.id", s(&c.id)));
        if !c.image.is_empty() {
            let (name, tag, digest) = split_image(&c.image);
            a.push(kv("container.image.name", s(name)));
            if let Some(tag) = tag {
                a.push(kv("container.image.tags", strings([tag])));
            }
            if let Some(digest) = digest {
                a.push(kv(
                    "container.image.repo_digests",
                    strings([format!("{name}@{digest}").as_str()]),
                ));
            }
            a.push(kv("podmap.container.image", s(&c.image)));
        }
        a.push(kv("podmap.container.runtime", s(&c.runtime)));
    }
    let p = &ev.process;
    a.push(kv("process.pid", Value::IntValue(p.pid.into())));
    a.push(kv("process.parent_pid", Value::IntValue(p.ppid.into())));
    a.push(kv("process.executable.path", s(&*p.binary)));
    // The conventions' command_args include the command itself; podmapd's args are argv
    // without argv[0], so the executable's path stands first.
    a.push(kv(
        "process.command_args",
        strings(std::iter::once(&*p.binary).chain(p.args.iter().map(String::as_str))),
    ));
    a.push(kv("process.working_directory", s(&*p.cwd)));
    a.push(kv("process.user.id", Value::IntValue(p.uid.into())));
    a.push(kv("process.creation.time", s(&p.start_time)));
    if let Some(exit) = &ev.exit {
        if let Some(code) = exit.code {
            a.push(kv("process.exit.code", Value::IntValue(code.into())));
        }
        if let Some(sig) = &exit.signal {
            a.push(kv("podmap.exit.signal", s(sig)));
        }
    }
    a.push(kv("podmap.event.type", s(ev.kind.as_str())));
    // The event contract's version, so a pipeline can route or refuse by it without the body.
    a.push(kv(
        "podmap.schema_version",
        Value::IntValue(ev.schema_version.into()),
    ));
    a.push(kv("podmap.attribution", s(ev.attribution.as_str())));
    if ev.path_derived {
        a.push(kv("podmap.path_derived", Value::BoolValue(true)));
    }
    a.push(kv("podmap.process.tid", Value::IntValue(p.tid.into())));
    a.push(kv("podmap.process.exec_id", s(&*p.exec_id)));
    if let Some(parent) = p.parent_exec_id.as_deref() {
        a.push(kv("podmap.process.parent_exec_id", s(parent)));
    }
    // The kernel's cgroup ids are u64; OTLP's integers are i64. Ids past i63 are not seen in
    // practice, and a string keeps even those exact.
    a.push(kv("podmap.process.cgroup_id", s(p.cgroup_id.to_string())));
    // Which processes came in through `kubectl exec`: absent when podmapd could not tell.
    if let Some(via_exec) = p.entered_via_exec {
        a.push(kv(
            "podmap.process.entered_via_exec",
            Value::BoolValue(via_exec),
        ));
    }
    if !p.flags.is_empty() {
        let flags: Vec<String> = p
            .flags
            .iter()
            .map(|f| match serde_json::to_value(f) {
                Ok(serde_json::Value::String(name)) => name,
                _ => format!("{f:?}"),
            })
            .collect();
        a.push(kv(
            "podmap.process.flags",
            strings(flags.iter().map(String::as_str)),
        ));
    }
    if let Some(pol) = &ev.policy {
        a.push(kv("podmap.policy.name", s(&pol.name)));
        a.push(kv("podmap.policy.rule", s(&pol.rule)));
        a.push(kv("podmap.policy.path", s(&pol.path)));
        a.push(kv("podmap.policy.action", s(&pol.action)));
        a.push(kv("podmap.policy.mode", s(&pol.mode)));
    }
    let (severity, text) = match ev.kind {
        EventType::Policy => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    LogRecord {
        // An unparsable time leaves 0, which OTLP defines as "unknown": the collector then
        // goes by the observed time.
        time_unix_nano: podmap_proto::time::parse_rfc3339(&ev.time).unwrap_or(0),
        observed_time_unix_nano: observed_ns,
        severity_number: severity as i32,
        severity_text: text.to_string(),
        event_name: format!("podmap.{}", ev.kind.as_str()),
        body: Some(AnyValue {
            value: Some(s(raw.trim_end())),
        }),
        attributes: a,
        ..Default::default()
    }
}

/// A line that is not an event this client can decode (a newer podmapd's): it still goes out,
/// with its body only, rather than being lost.
pub fn opaque_record(raw: &str, observed_ns: u64) -> LogRecord {
    LogRecord {
        observed_time_unix_nano: observed_ns,
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".to_string(),
        body: Some(AnyValue {
            value: Some(s(raw.trim_end())),
        }),
        ..Default::default()
    }
}

/// The resource of a node's records: the node and the service that reports.
pub fn resource(node: &str) -> Resource {
    let mut attributes = vec![
        kv("service.name", s("podmap")),
        kv("service.version", s(env!("CARGO_PKG_VERSION"))),
    ];
    if !node.is_empty() {
        attributes.push(kv("k8s.node.name", s(node)));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// One export request of a batch: one ResourceLogs per node (one in practice: a sidecar reads
/// its node's podmapd), the records in the order they came.
pub fn request(batch: Vec<Pending>) -> ExportLogsServiceRequest {
    let mut by_node: BTreeMap<String, Vec<LogRecord>> = BTreeMap::new();
    for p in batch {
        by_node.entry(p.node).or_default().push(p.record);
    }
    ExportLogsServiceRequest {
        resource_logs: by_node
            .into_iter()
            .map(|(node, log_records)| ResourceLogs {
                resource: Some(resource(&node)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "podmap".to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}
