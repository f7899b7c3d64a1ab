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

use crate::shared::Shared;

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
    /// The real user id, as the host (the initial user namespace) sees it: a user-namespaced
    /// container's root is its host uid here. Always known.
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
    /// The effective user id the process's latest exec gave it (a set-user-ID binary's owner),
    /// as the host sees it. This and the other credentials below are read by the kernel at the
    /// exec (for processes older than podmapd, from /proc when podmapd started); absent when
    /// unknown, never 0 for unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euid: Option<u32>,
    /// The real group id, as the host sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The effective group id, as the host sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egid: Option<u32>,
    /// The effective capability set, by name (`CAP_SYS_ADMIN`; a bit podmap has no name for is
    /// `CAP_<n>`), lowest bit first; `[]` for none. Held in the process's own user namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_effective: Option<Shared<Vec<String>>>,
}

impl Process {
    /// Whether the process runs privileged: as root (real or effective uid 0) or with
    /// CAP_SYS_ADMIN in its effective set. Credentials that are unknown count as not privileged:
    /// only what the kernel said can make a process privileged. The uids are the host's, but
    /// the capabilities are held in the process's own user namespace, so a user-namespaced
    /// container's CAP_SYS_ADMIN counts here although it is no power over the host.
    pub fn is_privileged(&self) -> bool {
        self.uid == 0
            || self.euid == Some(0)
            || self
                .cap_effective
                .as_deref()
                .is_some_and(|caps| caps.iter().any(|c| c == crate::caps::CAP_SYS_ADMIN))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub runtime: String,
    pub image: String,
    /// Whether the runtime made the container privileged (CRI's `privileged: true`): its
    /// capability bounding set holds every capability the node can give (each its kernel knows
    /// that the host's init holds). Absent when the runtime plugin could not tell (a record
    /// written before podmap recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// The capabilities the container was given: its capability bounding set, by name (as in
    /// `process.cap_effective`), the most any of its processes can ever hold (CRI's
    /// capabilities add and drop). The bounding set rather than the effective one because the
    /// effective set is each process's (a non-root user's is empty) and every exec's is in
    /// its event. Absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
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

/// One enriched event. Every event of a container carries the same `container` and `pod`:
/// podmapd builds them once per container and shares them, their JSON written once.
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
    pub container: Option<Shared<ContainerInfo>>,
    pub pod: Option<Shared<PodInfo>>,
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
                euid: None,
                gid: None,
                egid: None,
                cap_effective: None,
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
        // Unknown credentials are absent, not zeros.
        for k in ["euid", "gid", "egid", "cap_effective"] {
            assert!(v["process"].get(k).is_none(), "{k}: {v}");
        }
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    fn process(uid: u32, euid: Option<u32>, caps: Option<&[&str]>) -> Process {
        Process {
            pid: 1,
            tid: 1,
            ppid: 0,
            uid,
            binary: "/bin/sh".into(),
            args: Vec::new().into(),
            cwd: "/".into(),
            exec_id: "x".into(),
            parent_exec_id: None,
            start_time: String::new(),
            cgroup_id: 7,
            flags: Vec::new(),
            entered_via_exec: None,
            euid,
            gid: Some(1000),
            egid: Some(1000),
            cap_effective: caps.map(|c| Shared::new(c.iter().map(|s| s.to_string()).collect())),
        }
    }

    #[test]
    fn privileged_is_root_or_cap_sys_admin() {
        assert!(process(0, Some(0), Some(&[])).is_privileged());
        assert!(
            process(1000, Some(0), Some(&[])).is_privileged(),
            "setuid root"
        );
        assert!(process(0, None, None).is_privileged(), "real root");
        assert!(process(1000, Some(1000), Some(&["CAP_SYS_ADMIN"])).is_privileged());
        assert!(!process(1000, Some(1000), Some(&["CAP_NET_RAW", "CAP_CHOWN"])).is_privileged());
        assert!(
            !process(1000, None, None).is_privileged(),
            "unknown is not root"
        );
        let v = serde_json::to_value(process(1000, Some(0), Some(&[]))).unwrap();
        assert_eq!(v["euid"], 0);
        assert_eq!(
            v["cap_effective"],
            serde_json::json!([]),
            "none known: empty"
        );
    }
}
