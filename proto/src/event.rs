//! The enriched event, one JSON object per line on the socket.
//!
//! The event contract (docs/interfaces.md, "Compatibility of the event contract"): every event
//! carries [`SCHEMA_VERSION`]; within one version fields and enum values are only ever added, so
//! a client ignores fields it does not know, and every enum a client decodes takes a value it
//! does not know as its `Other` variant instead of failing. proto/schema/ holds the JSON Schema
//! generated from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The version of the event contract every event carries as `schema_version`. It changes only
/// when an event changes in a way an existing client could misread (a field removed, renamed,
/// retyped or given another meaning); additions never change it.
pub const SCHEMA_VERSION: u32 = 1;

/// What an event without `schema_version` is: events written before the field existed have
/// version 1's shape.
fn schema_version_of_unversioned() -> u32 {
    1
}

/// The event's type. Clients must accept types they do not know (they decode as `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Exec,
    Exit,
    Policy,
    /// A type this build does not know, from a newer podmapd (a client decodes it, never
    /// fails; it is re-encoded as `"other"`). podmapd never sends it.
    #[serde(other)]
    #[schemars(skip)]
    Other,
}

impl EventType {
    pub const ALL: [EventType; 3] = [EventType::Exec, EventType::Exit, EventType::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Exec => "exec",
            EventType::Exit => "exit",
            EventType::Policy => "policy",
            EventType::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// How an event's process was tied to a container. Clients must accept values they do not know
/// (they decode as `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Attribution {
    /// Mapped to a container record written by a runtime plugin.
    Container,
    /// Outside every container cgroup.
    Host,
    /// In a cgroup shaped like a container's, but with no record (always counted).
    Unknown,
    /// A value this build does not know, from a newer podmapd (re-encoded as `"other"`).
    /// podmapd never sends it.
    #[serde(other)]
    #[schemars(skip)]
    Other,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Container => "container",
            Attribution::Host => "host",
            Attribution::Unknown => "unknown",
            Attribution::Other => "other",
        }
    }
}

/// Something to know about a process's fields. Clients must accept flags they do not know (they
/// decode as `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessFlag {
    ArgsTruncated,
    ProcfsScan,
    PathUnreadable,
    /// The working directory was deeper than the kernel reads: `cwd` holds its deepest
    /// components only.
    CwdTruncated,
    /// The container runtime's own init (runc's `init` stages), in the container's cgroup
    /// before it execs the container's program: the runtime at work, not the workload.
    RuntimeInit,
    /// A flag this build does not know, from a newer podmapd (re-encoded as `"other"`).
    /// podmapd never sends it.
    #[serde(other)]
    #[schemars(skip)]
    Other,
}

/// A process. The strings an exec fixes (binary, args, cwd, exec id) are shared, so an exit
/// event or another client's copy costs a reference count, not a copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub binary: Arc<str>,
    pub args: Arc<[String]>,
    pub cwd: Arc<str>,
    pub exec_id: Arc<str>,
    pub parent_exec_id: Option<Arc<str>>,
    pub start_time: String,
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<ProcessFlag>,
    /// Whether the process came into its container through the runtime's exec (`kubectl exec`,
    /// exec probes, `runc exec`) or descends from one that did: false for the container's init
    /// and what it starts; absent when unknown (docs/decisions.md #35).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered_via_exec: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub runtime: String,
    pub image: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub workload: Option<String>,
    pub workload_kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExitInfo {
    /// The exit status when the process exited; None when a signal killed it.
    pub code: Option<i32>,
    /// The name of the killing signal ("SIGKILL"), None for a normal exit.
    pub signal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyInfo {
    pub name: String,
    pub rule: String,
    pub path: String,
    pub action: String,
    pub mode: String,
}

/// One enriched event. `container` and `pod` are shared (`Arc`) because every event of a
/// container carries the same values; the daemon builds them once per container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The event contract's version, [`SCHEMA_VERSION`] (an integer). Absent from events
    /// written before it existed, which decode as version 1.
    #[serde(default = "schema_version_of_unversioned")]
    pub schema_version: u32,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub time: String,
    pub node: Arc<str>,
    pub process: Process,
    pub container: Option<Arc<ContainerInfo>>,
    pub pod: Option<Arc<PodInfo>>,
    pub attribution: Attribution,
    /// `container` and `pod` rest on the cgroup's name alone (an `unknown` event): no runtime
    /// record vouches for them, and whoever made the cgroup chose that name.
    #[serde(default, skip_serializing_if = "is_false")]
    pub path_derived: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInfo>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The conventional name of a signal number, as `kill -l` prints it with the SIG prefix.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(sig).ok().and_then(|i| NAMES.get(i)) {
        Some(n) if !n.is_empty() => (*n).to_string(),
        _ => format!("SIG{sig}"),
    }
}

impl ExitInfo {
    /// Decodes a kernel `task->exit_code` (wait status layout: low 7 bits signal, bits 8..15
    /// exit status).
    pub fn from_wait_status(raw: i32) -> Self {
        let sig = raw & 0x7f;
        if sig == 0 {
            ExitInfo {
                code: Some((raw >> 8) & 0xff),
                signal: None,
            }
        } else {
            ExitInfo {
                code: None,
                signal: Some(signal_name(sig)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_decodes_exit_and_signal() {
        assert_eq!(
            ExitInfo::from_wait_status(3 << 8),
            ExitInfo {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(
            ExitInfo::from_wait_status(9),
            ExitInfo {
                code: None,
                signal: Some("SIGKILL".into())
            }
        );
        // Core-dump bit set: still the signal.
        assert_eq!(
            ExitInfo::from_wait_status(0x80 | 11),
            ExitInfo {
                code: None,
                signal: Some("SIGSEGV".into())
            }
        );
        assert_eq!(signal_name(64), "SIG64");
    }

    #[test]
    fn event_json_shape_matches_design() {
        let ev = Event {
            schema_version: SCHEMA_VERSION,
            kind: EventType::Exit,
            time: "2026-11-25T12:00:00.123456789Z".into(),
            node: "node-a".into(),
            process: Process {
                pid: 1,
                tid: 1,
                ppid: 0,
                uid: 0,
                binary: "/bin/sh".into(),
                args: vec!["-c".into(), "true".into()].into(),
                cwd: "/".into(),
                exec_id: "x".into(),
                parent_exec_id: None,
                start_time: "2026-11-25T12:00:00Z".into(),
                cgroup_id: 7,
                flags: vec![ProcessFlag::ArgsTruncated],
                entered_via_exec: None,
            },
            container: None,
            pod: None,
            attribution: Attribution::Host,
            path_derived: false,
            exit: Some(ExitInfo {
                code: Some(0),
                signal: None,
            }),
            policy: None,
        };
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["type"], "exit");
        assert_eq!(v["attribution"], "host");
        assert_eq!(v["exit"]["code"], 0);
        assert!(v["exit"]["signal"].is_null());
        assert!(v["container"].is_null());
        assert_eq!(v["process"]["flags"][0], "args_truncated");
        assert!(v.get("policy").is_none());
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
