//! The status report: one snapshot of every counter podmapd keeps, served by `{"status": {}}`,
//! printed by `podmap status`, and rendered as Prometheus metrics. One struct so the three never
//! disagree (docs/interfaces.md, "Status").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HoldLimitsStatus {
    pub per_cgroup: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusReport {
    pub node: String,
    pub version: String,
    pub uptime_seconds: f64,
    /// When podmapd's process started, in seconds since the Unix epoch (the kernel's record of
    /// it, so every report of one process gives the same value); 0 when it could not be read.
    #[serde(default)]
    pub start_time_seconds: f64,
    /// "standalone" or "kubernetes".
    pub mode: String,
    /// cgroup hierarchy events are keyed by: "cgroup2" (pure v2 or hybrid with containers in the
    /// unified hierarchy) or "cgroup1:<controller>".
    pub cgroup_hierarchy: String,
    pub cgroup_layout: String,
    /// Events read from the ring buffer, by type ("exec", "exit", "cgroup_mkdir", ...).
    pub events_seen: BTreeMap<String, u64>,
    /// Event lines handed to clients (one per client per event).
    pub events_delivered: u64,
    /// Events the kernel could not queue (ring buffer full).
    pub events_lost_kernel: u64,
    /// Event lines dropped because a client did not keep up.
    pub events_lost_slow_clients: u64,
    /// Attributed events by kind: container, host, unknown.
    pub attribution: BTreeMap<String, u64>,
    /// Events held waiting for their mapping, and how many of those timed out as unknown.
    pub events_held: u64,
    pub events_held_timed_out: u64,
    /// Events held now and the most ever held at once, within `events_held_limits`; held
    /// events sent on early (as `unknown`, not lost) because a bound was reached
    /// (docs/decisions.md #29).
    #[serde(default)]
    pub events_held_now: u64,
    #[serde(default)]
    pub events_held_peak: u64,
    #[serde(default)]
    pub events_held_released_early: u64,
    #[serde(default)]
    pub events_held_limits: HoldLimitsStatus,
    /// The cgroups below which a container-shaped cgroup's name is believed; events of such
    /// cgroups elsewhere (attributed to the host), and `unknown` events whose container the pod
    /// cache has under another pod than the path names (no pod data joined).
    #[serde(default)]
    pub pod_parents: Vec<String>,
    #[serde(default)]
    pub shaped_outside_pod_parents: u64,
    #[serde(default)]
    pub unknown_pod_mismatch: u64,
    /// Container records whose metadata did not parse, and execs the full process table could
    /// not keep: both counted, never silent.
    #[serde(default)]
    pub records_unreadable: u64,
    #[serde(default)]
    pub processes_untracked: u64,
    /// The event reader: times it fell asleep when idle (no timer), times a record woke it,
    /// and records its slow look found instead (late, not lost).
    #[serde(default)]
    pub reader_asleep: bool,
    #[serde(default)]
    pub reader_sleeps: u64,
    #[serde(default)]
    pub reader_woken: u64,
    #[serde(default)]
    pub reader_late: u64,
    pub clients_connected: u64,
    pub client_errors: u64,
    /// Socket connections refused because --max-clients were connected, and clients
    /// disconnected because a write to them timed out (they stopped reading).
    #[serde(default)]
    pub clients_refused: u64,
    #[serde(default)]
    pub clients_write_timeouts: u64,
    /// Metrics connections refused over the endpoint's cap.
    #[serde(default)]
    pub metrics_connections_refused: u64,
    pub containers_mapped: u64,
    pub pods_cached: u64,
    /// `lsm`, or the fallback with the reason BPF-LSM did not load (a sentence).
    pub enforcement_mode: String,
    /// `enforcement_mode` as one word: `lsm` or `fallback`.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Every shared counter of the pinned counters map (kernel programs and runtime plugins),
    /// by name.
    pub shared_counters: BTreeMap<String, u64>,
    /// Create-to-mapping-ready latency reported by the runtime plugins, in microseconds.
    pub mapping_latency_us: LatencySummary,
    /// Kernel timestamp to hand-off to the clients' queues, in microseconds.
    #[serde(default)]
    pub event_latency_us: LatencySummary,
    /// Loaded policies, refused files with their reasons, memberships.
    #[serde(default)]
    pub policies: PolicyStatus,
    /// The pod informer, in Kubernetes mode.
    #[serde(default)]
    pub pod_cache: Option<PodCacheStatus>,
    /// How this podmapd took over the programs' pinned links (docs/decisions.md #30).
    #[serde(default)]
    pub programs: ProgramsStatus,
}

/// The programs run through links pinned beside the maps, so they outlive podmapd; this says
/// what podmapd found at start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgramsStatus {
    /// "adopted" (the running programs were this podmapd's own: kept, never stopped),
    /// "replaced" (other programs: this podmapd's attached first, then the old ones detached) or
    /// "attached" (none were running).
    pub links: String,
    /// The pin directory; its `links/` holds one pin per program.
    pub pinned_at: String,
    /// The programs attached, by name.
    pub attached: Vec<String>,
    /// Replaced: why.
    pub replaced_because: Option<String>,
    /// Replaced: how long both generations ran, in microseconds (an event then may be reported
    /// twice).
    pub overlap_us: Option<u64>,
    /// Records the programs queued before this podmapd read the ring buffer (while no podmapd
    /// ran, and during this one's start), read before the socket opened: no client had them.
    #[serde(default)]
    pub backlog_read_at_start: u64,
    /// Ring-buffer drops counted before this podmapd started, those while no podmapd read the
    /// ring included (they are part of `events_lost_kernel` too).
    pub lost_kernel_before_start: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodCacheStatus {
    pub synced: bool,
    /// Seconds since the last list, watch event or bookmark; None before the first.
    pub staleness_seconds: Option<f64>,
    pub deleted_kept: u64,
    pub lists: u64,
    pub relists: u64,
    pub watch_restarts: u64,
    /// Pod objects that could not be decoded, skipped.
    pub objects_skipped: u64,
    pub errors: u64,
}

/// How policies are enforced on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// BPF-LSM is active: deny rules refuse the operation.
    Lsm,
    /// BPF-LSM did not load: deny rules act as kill where they say `fallback: kill`, else audit.
    Fallback,
    /// Not reported (a podmapd older than the field), or a value this build does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Lsm => "lsm",
            Enforcement::Fallback => "fallback",
            Enforcement::Unknown => "unknown",
        }
    }
}

/// A latency distribution in microseconds: a summary, and the log2 histogram it comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    /// Samples per bucket: element i counts latencies below 2^i microseconds (and at least
    /// 2^(i-1)); the last element also counts every larger one. Empty when not reported.
    #[serde(default)]
    pub buckets: Vec<u64>,
    /// The sum of the samples, in whole microseconds (each sample rounded down).
    #[serde(default)]
    pub sum_us: u64,
}

/// What status shows of policies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct PolicyStatus {
    pub dir: String,
    pub loaded: Vec<String>,
    /// Refused files, documents and policies (duplicate names, colliding ids, rules over the
    /// kernel's limits), each naming file, field and reason; a directory that cannot be read;
    /// rule table entries that could not be written as asked.
    pub errors: Vec<String>,
    pub memberships: u64,
    pub reloads: u64,
    /// Failed reads of the policy directory or of one of its files since podmapd started (the
    /// policies last loaded stayed in force).
    #[serde(default)]
    pub read_failures: u64,
    /// Rule table entries that could not be written as asked, since podmapd started (each also
    /// in `errors` while it lasts).
    #[serde(default)]
    pub rule_write_failures: u64,
    /// The open rules' programs attached now (on the open syscalls' tracepoints): attached
    /// only while open rules are in force, since any program on a syscall tracepoint slows
    /// every syscall on the node.
    #[serde(default)]
    pub open_tracepoints: Vec<String>,
    /// Times the open rules' programs could not be attached (open rules in force that could
    /// not act) or detached, since podmapd started (the reason is in `errors` while it lasts).
    #[serde(default)]
    pub open_tracepoint_failures: u64,
    /// Memberships removed because their container's record was gone (containers removed
    /// while podmapd was down, or a plugin that died between the membership and the record).
    #[serde(default)]
    pub orphan_memberships_removed: u64,
    /// Policy events podmapd handed on since it started, by policy, action and mode.
    #[serde(default)]
    pub actions: Vec<PolicyActionCount>,
    /// The PodPolicy resources mirrored into the directory, in Kubernetes mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<MirrorStatus>,
}

/// Policy events of one policy with one action in one mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyActionCount {
    /// The policy's name (`policy-<id>` when podmapd no longer knows it).
    pub policy: String,
    /// The rule's action: `audit`, `kill` or `deny`.
    pub action: String,
    /// What the kernel did: `lsm`, `kill` or `audit` (the event's `policy.mode`).
    pub mode: String,
    pub count: u64,
}

/// What `podmap status` shows of the mirror.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MirrorStatus {
    /// The first complete list of resources has been mirrored: files of deleted resources are
    /// gone from the directory.
    pub synced: bool,
    /// PodPolicy resources on the API server now.
    pub resources: u64,
    /// Files written or replaced, and removed, since podmapd started.
    pub writes: u64,
    pub removals: u64,
    /// Resources refused now, each naming the resource, the field and the reason.
    pub refused: Vec<String>,
    /// Failed watch attempts and file operations, and the last one.
    pub errors: u64,
    pub last_error: Option<String>,
}
