//! The layouts and constants the kernel programs share with userspace, generated from the one C
//! header `c/podmap.h` by bindgen at build time (bpf/build.rs): the C header is their only
//! definition. The raw view is [`c`]; this module re-exports its structs under their C names and
//! gives each constant the Rust type its users work in, converted (and range-checked) at compile
//! time, never copied. The assertions below tie the generated view to what the userspace code
//! relies on (record tails, map key shapes, no hidden padding); bindgen's own layout assertions
//! check each struct's size and offsets against what clang computed for the C.

/// The generated view of `c/podmap.h`: every `podmap_*` type and `PODMAP_*` constant.
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all
)]
pub mod c {
    include!(concat!(env!("OUT_DIR"), "/podmap_layout.rs"));
}

use c::*;
use core::mem::{offset_of, size_of};

pub use c::{
    podmap_cgroup_event, podmap_cgroup_key, podmap_container, podmap_container_meta, podmap_creds,
    podmap_event_header, podmap_exec_event, podmap_exit_event, podmap_member_key,
    podmap_open_event, podmap_path_key, podmap_policy_hit, podmap_policy_state, podmap_proc,
    podmap_rule_ref, podmap_rule_set, podmap_task_ids,
};

/// A C constant as a u8 field's value (rule actions and flags, policy modes).
const fn u8_of(v: u32) -> u8 {
    assert!(
        v <= u8::MAX as u32,
        "constant does not fit the u8 field it is stored in"
    );
    v as u8
}

/// A C size or offset as a Rust length.
const fn usize_of(v: u32) -> usize {
    v as usize
}

// Sizes of the bounded strings and regions.
pub const FILENAME_MAX: usize = usize_of(PODMAP_FILENAME_MAX);
pub const CWD_MAX: usize = usize_of(PODMAP_CWD_MAX);
pub const ARGS_MAX: usize = usize_of(PODMAP_ARGS_MAX);
pub const CGROUP_PATH_MAX: usize = usize_of(PODMAP_CGROUP_PATH_MAX);
pub const META_MAX: usize = usize_of(PODMAP_META_MAX);
/// Deepest level at which the kernel finds a container for processes in its sub-cgroups.
pub const MAX_CONTAINER_LEVEL: usize = usize_of(PODMAP_MAX_CONTAINER_LEVEL);
/// Longest policy path the rule tries match, in bytes (the NUL of an exact path included).
pub const POLICY_PATH_MAX: usize = usize_of(PODMAP_POLICY_PATH_MAX);
pub const RULE_REFS: usize = usize_of(PODMAP_RULE_REFS);

/// The exec record's tail (after `podmap_exec_event`): where each region starts, and its size.
pub const EXEC_FILENAME_OFF: usize = usize_of(PODMAP_EXEC_FILENAME_OFF);
pub const EXEC_CWD_OFF: usize = usize_of(PODMAP_EXEC_CWD_OFF);
pub const EXEC_ARGS_OFF: usize = usize_of(PODMAP_EXEC_ARGS_OFF);
pub const EXEC_DATA_MAX: usize = usize_of(PODMAP_EXEC_DATA_MAX);
/// The fixed part of an `EV_EXEC` record (older programs'): `podmap_exec_event` before `creds`.
pub const EXEC_EVENT_NO_CREDS_SIZE: usize = usize_of(PODMAP_EXEC_EVENT_NO_CREDS_SIZE);

// Map sizes (max_entries).
pub const MAX_CONTAINERS: u32 = PODMAP_MAX_CONTAINERS;
pub const MAX_MEMBERS: u32 = PODMAP_MAX_MEMBERS;
pub const MAX_RULES: u32 = PODMAP_MAX_RULES;
pub const MAX_PROCS: u32 = PODMAP_MAX_PROCS;
pub const COUNTERS: u32 = PODMAP_COUNTERS;

/// Queued ring-buffer bytes past which a record wakes the reader, unless the loader says other.
pub const WAKEUP_BYTES_DEFAULT: u64 = PODMAP_WAKEUP_BYTES_DEFAULT as u64;

pub const HIER_V2: u32 = PODMAP_HIER_V2;
pub const HIER_V1: u32 = PODMAP_HIER_V1;

/// `enum podmap_v1_controller`: the v1 controller code the loader gives the programs.
pub const V1_NONE: u32 = PODMAP_V1_NONE;
pub const V1_MEMORY: u32 = PODMAP_V1_MEMORY;
pub const V1_PIDS: u32 = PODMAP_V1_PIDS;
pub const V1_CPU: u32 = PODMAP_V1_CPU;
pub const V1_CPUSET: u32 = PODMAP_V1_CPUSET;
pub const V1_CPUACCT: u32 = PODMAP_V1_CPUACCT;
pub const V1_BLKIO: u32 = PODMAP_V1_BLKIO;
pub const V1_DEVICES: u32 = PODMAP_V1_DEVICES;
pub const V1_FREEZER: u32 = PODMAP_V1_FREEZER;

/// `enum podmap_writer`: who wrote a container record.
pub const WRITER_TEST: u32 = PODMAP_WRITER_TEST;
pub const WRITER_NRI: u32 = PODMAP_WRITER_NRI;
pub const WRITER_OCI_HOOK: u32 = PODMAP_WRITER_OCI_HOOK;
pub const WRITER_DAEMON: u32 = PODMAP_WRITER_DAEMON;

pub const CF_SANDBOX: u32 = PODMAP_CF_SANDBOX;
pub const CF_REMOVING: u32 = PODMAP_CF_REMOVING;

pub const EV_EXEC: u32 = PODMAP_EV_EXEC;
pub const EV_EXIT: u32 = PODMAP_EV_EXIT;
pub const EV_CGROUP_MKDIR: u32 = PODMAP_EV_CGROUP_MKDIR;
pub const EV_CGROUP_RMDIR: u32 = PODMAP_EV_CGROUP_RMDIR;
pub const EV_POLICY_OPEN: u32 = PODMAP_EV_POLICY_OPEN;
pub const EV_EXEC_CREDS: u32 = PODMAP_EV_EXEC_CREDS;

pub const ACT_NONE: u8 = u8_of(PODMAP_ACT_NONE);
pub const ACT_AUDIT: u8 = u8_of(PODMAP_ACT_AUDIT);
pub const ACT_KILL: u8 = u8_of(PODMAP_ACT_KILL);
pub const ACT_DENY: u8 = u8_of(PODMAP_ACT_DENY);

pub const MODE_NONE: u8 = u8_of(PODMAP_MODE_NONE);
pub const MODE_AUDIT: u8 = u8_of(PODMAP_MODE_AUDIT);
pub const MODE_KILL: u8 = u8_of(PODMAP_MODE_KILL);
pub const MODE_LSM: u8 = u8_of(PODMAP_MODE_LSM);

pub const RF_FALLBACK_KILL: u8 = u8_of(PODMAP_RF_FALLBACK_KILL);
pub const RF_READ: u8 = u8_of(PODMAP_RF_READ);
pub const RF_WRITE: u8 = u8_of(PODMAP_RF_WRITE);

pub const PF_ARGS_TRUNCATED: u32 = PODMAP_PF_ARGS_TRUNCATED;
pub const PF_PROCFS_SCAN: u32 = PODMAP_PF_PROCFS_SCAN;
pub const PF_PATH_UNREADABLE: u32 = PODMAP_PF_PATH_UNREADABLE;
pub const PF_CWD_TRUNCATED: u32 = PODMAP_PF_CWD_TRUNCATED;

pub const LATENCY_BUCKET0: u32 = PODMAP_C_LATENCY_BUCKET0;
pub const LATENCY_BUCKETS: u32 = PODMAP_C_LATENCY_BUCKETS;

// SAFETY (all impls below): repr(C) plain-old-data whose padding is explicit fields (asserted
// below), so every bit pattern is valid and no byte is uninitialised when written to a map.
unsafe impl aya::Pod for podmap_cgroup_key {}
unsafe impl aya::Pod for podmap_container {}
unsafe impl aya::Pod for podmap_container_meta {}
unsafe impl aya::Pod for podmap_proc {}
unsafe impl aya::Pod for podmap_member_key {}
unsafe impl aya::Pod for podmap_path_key {}
unsafe impl aya::Pod for podmap_rule_set {}
unsafe impl aya::Pod for podmap_policy_state {}

/// Asserts that `$t` is exactly its listed fields, back to back: no implicit padding (a byte the
/// Pod impls would send uninitialised) and no field left out of the list.
macro_rules! no_hidden_padding {
    ($t:ty: $($f:ident),+ $(,)?) => {
        const _: () = {
            let mut end = 0;
            $(
                assert!(offset_of!($t, $f) == end, concat!(stringify!($t), ".", stringify!($f), " is not where the previous field ends"));
                end += field_size(|x: &$t| &x.$f);
            )+
            assert!(end == size_of::<$t>(), concat!(stringify!($t), " has bytes no listed field covers"));
        };
    };
}

/// The size of the field `f` selects (in const context).
const fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Indices into the shared counters array (`enum podmap_counter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    Exec = PODMAP_C_EXEC,
    Exit = PODMAP_C_EXIT,
    RingbufDropped = PODMAP_C_RINGBUF_DROPPED,
    ArgsTruncated = PODMAP_C_ARGS_TRUNCATED,
    CwdTruncated = PODMAP_C_CWD_TRUNCATED,
    PathUnreadable = PODMAP_C_PATH_UNREADABLE,
    CgroupEvents = PODMAP_C_CGROUP_EVENTS,
    ProcTableFull = PODMAP_C_PROC_TABLE_FULL,
    PolicyHits = PODMAP_C_POLICY_HITS,
    PolicyKills = PODMAP_C_POLICY_KILLS,
    PolicyDenyAudited = PODMAP_C_POLICY_DENY_AUDITED,
    OpenPathUnreadable = PODMAP_C_OPEN_PATH_UNREADABLE,
    PolicyRefsTruncated = PODMAP_C_POLICY_REFS_TRUNCATED,
    V1Records = PODMAP_C_V1_RECORDS,
    RecordsWritten = PODMAP_C_RECORDS_WRITTEN,
    RecordsRemoved = PODMAP_C_RECORDS_REMOVED,
    RecordsExpired = PODMAP_C_RECORDS_EXPIRED,
    MapWriteErrors = PODMAP_C_MAP_WRITE_ERRORS,
    StoreErrors = PODMAP_C_STORE_ERRORS,
    CgroupUnresolved = PODMAP_C_CGROUP_UNRESOLVED,
    NriEvents = PODMAP_C_NRI_EVENTS,
    NriMapped = PODMAP_C_NRI_MAPPED,
    NriFailures = PODMAP_C_NRI_FAILURES,
    NriSlowReplies = PODMAP_C_NRI_SLOW_REPLIES,
    HookRuns = PODMAP_C_HOOK_RUNS,
    HookMapped = PODMAP_C_HOOK_MAPPED,
    HookFailures = PODMAP_C_HOOK_FAILURES,
    HookTimeouts = PODMAP_C_HOOK_TIMEOUTS,
    HookBadInput = PODMAP_C_HOOK_BAD_INPUT,
    MembershipWrites = PODMAP_C_MEMBERSHIP_WRITES,
    MembershipErrors = PODMAP_C_MEMBERSHIP_ERRORS,
    StoreRecovered = PODMAP_C_STORE_RECOVERED,
    StoreTemporary = PODMAP_C_STORE_TEMPORARY,
    DeepContainers = PODMAP_C_DEEP_CONTAINERS,
    PinsRestored = PODMAP_C_PINS_RESTORED,
    PinsForeign = PODMAP_C_PINS_FOREIGN,
    MappingLatencySumUs = PODMAP_C_MAPPING_LATENCY_SUM_US,
    CapabilitiesUnread = PODMAP_C_CAPABILITIES_UNREAD,
    RecordsMarked = PODMAP_C_RECORDS_MARKED,
}

impl Counter {
    pub const ALL: [Counter; 39] = [
        Counter::Exec,
        Counter::Exit,
        Counter::RingbufDropped,
        Counter::ArgsTruncated,
        Counter::CwdTruncated,
        Counter::PathUnreadable,
        Counter::CgroupEvents,
        Counter::ProcTableFull,
        Counter::PolicyHits,
        Counter::PolicyKills,
        Counter::PolicyDenyAudited,
        Counter::OpenPathUnreadable,
        Counter::PolicyRefsTruncated,
        Counter::V1Records,
        Counter::RecordsWritten,
        Counter::RecordsRemoved,
        Counter::RecordsExpired,
        Counter::MapWriteErrors,
        Counter::StoreErrors,
        Counter::CgroupUnresolved,
        Counter::NriEvents,
        Counter::NriMapped,
        Counter::NriFailures,
        Counter::NriSlowReplies,
        Counter::HookRuns,
        Counter::HookMapped,
        Counter::HookFailures,
        Counter::HookTimeouts,
        Counter::HookBadInput,
        Counter::MembershipWrites,
        Counter::MembershipErrors,
        Counter::StoreRecovered,
        Counter::StoreTemporary,
        Counter::DeepContainers,
        Counter::PinsRestored,
        Counter::PinsForeign,
        Counter::MappingLatencySumUs,
        Counter::CapabilitiesUnread,
        Counter::RecordsMarked,
    ];

    /// The name in status and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Exec => "kernel_exec",
            Counter::Exit => "kernel_exit",
            Counter::RingbufDropped => "kernel_ringbuf_dropped",
            Counter::ArgsTruncated => "kernel_args_truncated",
            Counter::CwdTruncated => "kernel_cwd_truncated",
            Counter::PathUnreadable => "kernel_path_unreadable",
            Counter::CgroupEvents => "kernel_cgroup_events",
            Counter::ProcTableFull => "kernel_proc_table_full",
            Counter::PolicyHits => "kernel_policy_hits",
            Counter::PolicyKills => "kernel_policy_kills",
            Counter::PolicyDenyAudited => "kernel_policy_deny_audited",
            Counter::OpenPathUnreadable => "kernel_open_path_unreadable",
            Counter::PolicyRefsTruncated => "kernel_policy_refs_truncated",
            Counter::V1Records => "v1_records",
            Counter::RecordsWritten => "records_written",
            Counter::RecordsRemoved => "records_removed",
            Counter::RecordsExpired => "records_expired",
            Counter::MapWriteErrors => "map_write_errors",
            Counter::StoreErrors => "store_errors",
            Counter::CgroupUnresolved => "cgroup_unresolved",
            Counter::NriEvents => "nri_events",
            Counter::NriMapped => "nri_mapped",
            Counter::NriFailures => "nri_failures",
            Counter::NriSlowReplies => "nri_slow_replies",
            Counter::HookRuns => "hook_runs",
            Counter::HookMapped => "hook_mapped",
            Counter::HookFailures => "hook_failures",
            Counter::HookTimeouts => "hook_timeouts",
            Counter::HookBadInput => "hook_bad_input",
            Counter::MembershipWrites => "membership_writes",
            Counter::MembershipErrors => "membership_errors",
            Counter::StoreRecovered => "store_recovered",
            Counter::StoreTemporary => "store_temporary",
            Counter::DeepContainers => "deep_containers",
            Counter::PinsRestored => "pins_restored",
            Counter::PinsForeign => "pins_foreign",
            Counter::MappingLatencySumUs => "mapping_latency_sum_us",
            Counter::CapabilitiesUnread => "capabilities_unread",
            Counter::RecordsMarked => "records_marked",
        }
    }

    /// The C enumerator's name (`PODMAP_C_*`).
    pub fn c_name(self) -> String {
        let mut s = String::from("PODMAP_C_");
        s.push_str(
            &self
                .name()
                .trim_start_matches("kernel_")
                .to_ascii_uppercase(),
        );
        s
    }
}

// Map keys and values userspace writes or reads.
no_hidden_padding!(podmap_cgroup_key: id, hierarchy, _pad);
no_hidden_padding!(podmap_container: created_ns, removed_ns, flags, writer);
no_hidden_padding!(podmap_container_meta: len, data);
no_hidden_padding!(podmap_proc: exec_ktime, flags, entry_pid);
no_hidden_padding!(podmap_member_key: policy_id, hierarchy, cgroup_id);
no_hidden_padding!(podmap_path_key: prefixlen, path);
no_hidden_padding!(podmap_rule_ref: policy_id, rule_index, action, flags);
no_hidden_padding!(podmap_rule_set: count, _pad, refs);
no_hidden_padding!(podmap_policy_state: exec_rules, open_rules, lsm_active, _pad);
// Records podmapd decodes.
// Records podmapd decodes (the kernel writes them; podmapd reads each whole, then its tail).
no_hidden_padding!(podmap_event_header: r#type, flags, ktime);
no_hidden_padding!(podmap_task_ids: cgroup_v2, cgroup_v1, container_cgid, container_hier, pid, tid, ppid, uid, _pad);
no_hidden_padding!(podmap_policy_hit: policy_id, rule_index, action, mode);
no_hidden_padding!(podmap_creds: uid, euid, gid, egid, cap_effective);
no_hidden_padding!(podmap_exit_event: hdr, ids, exec_ktime, exit_code, entry_pid, comm);
no_hidden_padding!(podmap_cgroup_event: hdr, id, hierarchy_id, level, path_len, _pad);

const _: () = {
    // The layouts stay: records queued by the pinned programs of an older podmapd are read with
    // this one. podmap_exec_event.entry_pid took the 4 bytes of padding before start_time, which
    // older programs wrote as 0 (read as "unknown"); podmap_open_event keeps 4 bytes of implicit
    // padding at its end, which the kernel never writes and podmapd ignores.
    assert!(offset_of!(podmap_exec_event, entry_pid) == 72);
    assert!(offset_of!(podmap_exec_event, start_time) == 80);
    // podmap_exec_event.creds came after the older record's last field: an EV_EXEC record is
    // the struct up to it, so everything before it keeps its place.
    assert!(offset_of!(podmap_exec_event, _pad) + 2 == EXEC_EVENT_NO_CREDS_SIZE);
    assert!(offset_of!(podmap_exec_event, creds) == EXEC_EVENT_NO_CREDS_SIZE);
    assert!(EXEC_EVENT_NO_CREDS_SIZE + size_of::<podmap_creds>() == size_of::<podmap_exec_event>());
    assert!(size_of::<podmap_exec_event>() == 128);
    assert!(offset_of!(podmap_open_event, _pad) + 6 == 84);
    assert!(size_of::<podmap_open_event>() == 88);
    // Each variable tail starts where its record's struct ends, 8-aligned as the C scratch
    // buffers lay it (podmap.bpf.c asserts their side).
    assert!(size_of::<podmap_exec_event>().is_multiple_of(8));
    assert!(size_of::<podmap_cgroup_event>().is_multiple_of(8));
    assert!(size_of::<podmap_open_event>().is_multiple_of(8));
};

// Arrays are as long as the constants their users index them with.
const _: fn(podmap_container_meta) -> [u8; META_MAX] = |m| m.data;
const _: fn(podmap_path_key) -> [u8; POLICY_PATH_MAX] = |k| k.path;
const _: fn(podmap_rule_set) -> [podmap_rule_ref; RULE_REFS] = |s| s.refs;

const _: () = {
    // Every record starts with its header: podmapd reads the type before the record.
    assert!(offset_of!(podmap_exec_event, hdr) == 0);
    assert!(offset_of!(podmap_exit_event, hdr) == 0);
    assert!(offset_of!(podmap_cgroup_event, hdr) == 0);
    assert!(offset_of!(podmap_open_event, hdr) == 0);
    // The exec tail as podmapd's decoder slices it: filename, then cwd at FILENAME_MAX, then
    // args at FILENAME_MAX + CWD_MAX, each region as long as its limit.
    assert!(EXEC_FILENAME_OFF == 0);
    assert!(EXEC_CWD_OFF == EXEC_FILENAME_OFF + FILENAME_MAX);
    assert!(EXEC_ARGS_OFF == EXEC_CWD_OFF + CWD_MAX);
    assert!(EXEC_DATA_MAX == EXEC_ARGS_OFF + ARGS_MAX);
    // The lengths fit the u16 fields that carry them.
    assert!(FILENAME_MAX <= u16::MAX as usize);
    assert!(CWD_MAX <= u16::MAX as usize);
    assert!(ARGS_MAX <= u16::MAX as usize);
    assert!(CGROUP_PATH_MAX <= u16::MAX as usize);
    assert!(POLICY_PATH_MAX <= u16::MAX as usize);
    // An LPM key as aya writes it: the prefix length in bits, then the path bytes.
    assert!(offset_of!(podmap_path_key, prefixlen) == 0);
    assert!(offset_of!(podmap_path_key, path) == size_of::<u32>());
    assert!(
        size_of::<podmap_path_key>()
            == size_of::<aya::maps::lpm_trie::Key<[u8; POLICY_PATH_MAX]>>()
    );
    assert!(POLICY_PATH_MAX * 8 <= u32::MAX as usize);
    // The latency histogram fits the counters array, above every named counter.
    assert!(LATENCY_BUCKET0 + LATENCY_BUCKETS <= COUNTERS);
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!((Counter::ALL[i] as u32) < LATENCY_BUCKET0);
        i += 1;
    }
    // Counter::ALL holds every named counter of enum podmap_counter, each once.
    let mut named = 0;
    let mut e = 0;
    while e < COUNTER_ENUMERATORS.len() {
        let v = COUNTER_ENUMERATORS[e].0;
        if v < LATENCY_BUCKET0 {
            named += 1;
            let mut found = 0;
            let mut j = 0;
            while j < Counter::ALL.len() {
                if Counter::ALL[j] as u32 == v {
                    found += 1;
                }
                j += 1;
            }
            assert!(
                found == 1,
                "a named counter of enum podmap_counter is not in Counter::ALL once"
            );
        }
        e += 1;
    }
    assert!(
        named == Counter::ALL.len(),
        "Counter::ALL lists a value enum podmap_counter has not"
    );
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Each counter's name is its C enumerator's (the values are tied at compile time).
    #[test]
    fn counter_names_follow_the_c_enumerators() {
        for c in Counter::ALL {
            let (_, names) = COUNTER_ENUMERATORS
                .iter()
                .find(|(v, _)| *v == c as u32)
                .unwrap();
            assert!(names.contains(&c.c_name().as_str()), "{c:?}: {names:?}");
        }
    }
}
