//! The Rust mirror of `c/podmap.h`: every struct and constant the kernel programs share with
//! userspace. Kept equal to the C header by the `layout_matches_c` test, which compares this
//! module's sizes, offsets and constants with what a host build of the header prints.

#![allow(non_camel_case_types)]

pub const FILENAME_MAX: usize = 256;
pub const CWD_MAX: usize = 256;
pub const ARGS_MAX: usize = 1024;
pub const CGROUP_PATH_MAX: usize = 512;
pub const META_MAX: usize = 4088;
/// Deepest level at which the kernel finds a container for processes in its sub-cgroups.
pub const MAX_CONTAINER_LEVEL: usize = 16;
pub const POLICY_PATH_MAX: usize = 256;
pub const RULE_REFS: usize = 16;
pub const MAX_CONTAINERS: u32 = 32768;
pub const MAX_MEMBERS: u32 = 65536;
pub const MAX_RULES: u32 = 8192;
pub const COUNTERS: u32 = 128;

pub const HIER_V2: u32 = 0;
pub const HIER_V1: u32 = 1;

pub const CF_SANDBOX: u32 = 1 << 0;
pub const CF_REMOVING: u32 = 1 << 1;

pub const EV_EXEC: u32 = 1;
pub const EV_EXIT: u32 = 2;
pub const EV_CGROUP_MKDIR: u32 = 3;
pub const EV_CGROUP_RMDIR: u32 = 4;
pub const EV_POLICY_OPEN: u32 = 5;

pub const ACT_NONE: u8 = 0;
pub const ACT_AUDIT: u8 = 1;
pub const ACT_KILL: u8 = 2;
pub const ACT_DENY: u8 = 3;

pub const MODE_NONE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;
pub const MODE_KILL: u8 = 2;
pub const MODE_LSM: u8 = 3;

pub const RF_FALLBACK_KILL: u8 = 1 << 0;
pub const RF_READ: u8 = 1 << 1;
pub const RF_WRITE: u8 = 1 << 2;

pub const PF_ARGS_TRUNCATED: u32 = 1 << 0;
pub const PF_PROCFS_SCAN: u32 = 1 << 1;
pub const PF_PATH_UNREADABLE: u32 = 1 << 2;
pub const PF_CWD_TRUNCATED: u32 = 1 << 3;

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct podmap_cgroup_key {
    pub id: u64,
    pub hierarchy: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_container {
    pub created_ns: u64,
    pub removed_ns: u64,
    pub flags: u32,
    pub writer: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct podmap_container_meta {
    pub len: u32,
    pub data: [u8; META_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_proc {
    pub exec_ktime: u64,
    pub flags: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_task_ids {
    pub cgroup_v2: u64,
    pub cgroup_v1: u64,
    pub container_cgid: u64,
    pub container_hier: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct podmap_member_key {
    pub policy_id: u32,
    pub hierarchy: u32,
    pub cgroup_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct podmap_path_key {
    pub prefixlen: u32,
    pub path: [u8; POLICY_PATH_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_rule_ref {
    pub policy_id: u32,
    pub rule_index: u16,
    pub action: u8,
    pub flags: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_rule_set {
    pub count: u32,
    pub _pad: u32,
    pub refs: [podmap_rule_ref; RULE_REFS],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_policy_state {
    pub exec_rules: u32,
    pub open_rules: u32,
    pub lsm_active: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_policy_hit {
    pub policy_id: u32,
    pub rule_index: u16,
    pub action: u8,
    pub mode: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_event_header {
    pub r#type: u32,
    pub flags: u32,
    pub ktime: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_exec_event {
    pub hdr: podmap_event_header,
    pub ids: podmap_task_ids,
    pub policy: podmap_policy_hit,
    pub _pad2: u32,
    pub start_time: u64,
    pub parent_exec_ktime: u64,
    pub filename_len: u16,
    pub cwd_len: u16,
    pub args_len: u16,
    pub _pad: [u16; 1],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_exit_event {
    pub hdr: podmap_event_header,
    pub ids: podmap_task_ids,
    pub exec_ktime: u64,
    pub exit_code: i32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_open_event {
    pub hdr: podmap_event_header,
    pub ids: podmap_task_ids,
    pub policy: podmap_policy_hit,
    pub open_flags: i32,
    pub path_len: u16,
    pub _pad: [u16; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct podmap_cgroup_event {
    pub hdr: podmap_event_header,
    pub id: u64,
    pub hierarchy_id: i32,
    pub level: i32,
    pub path_len: u16,
    pub _pad: [u16; 3],
}

// SAFETY (all impls below): repr(C) plain-old-data with explicit padding fields, so every bit
// pattern is valid and no byte is uninitialised when written to a map.
unsafe impl aya::Pod for podmap_cgroup_key {}
unsafe impl aya::Pod for podmap_container {}
unsafe impl aya::Pod for podmap_container_meta {}
unsafe impl aya::Pod for podmap_proc {}
unsafe impl aya::Pod for podmap_member_key {}
unsafe impl aya::Pod for podmap_path_key {}
unsafe impl aya::Pod for podmap_rule_set {}
unsafe impl aya::Pod for podmap_policy_state {}

/// Indices into the shared counters array (`enum podmap_counter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    Exec = 0,
    Exit = 1,
    RingbufDropped = 2,
    ArgsTruncated = 3,
    CwdTruncated = 4,
    PathUnreadable = 5,
    CgroupEvents = 6,
    ProcTableFull = 7,
    PolicyHits = 8,
    PolicyKills = 9,
    PolicyDenyAudited = 10,
    OpenPathUnreadable = 11,
    PolicyRefsTruncated = 12,
    V1Records = 13,
    RecordsWritten = 16,
    RecordsRemoved = 17,
    RecordsExpired = 18,
    MapWriteErrors = 19,
    StoreErrors = 20,
    CgroupUnresolved = 21,
    NriEvents = 22,
    NriMapped = 23,
    NriFailures = 24,
    NriSlowReplies = 25,
    HookRuns = 26,
    HookMapped = 27,
    HookFailures = 28,
    HookTimeouts = 29,
    HookBadInput = 30,
    MembershipWrites = 31,
    MembershipErrors = 32,
    StoreRecovered = 33,
    StoreTemporary = 34,
    DeepContainers = 35,
}

pub const LATENCY_BUCKET0: u32 = 64;
pub const LATENCY_BUCKETS: u32 = 32;

impl Counter {
    pub const ALL: [Counter; 34] = [
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
        }
    }

    /// The C enumerator's name, for the layout test.
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

/// The lines the C layout dumper prints, computed from this module.
pub fn describe() -> Vec<String> {
    use std::mem::{offset_of, size_of};
    let mut v = Vec::new();
    macro_rules! s {
        ($t:ident) => {
            v.push(format!("size {} {}", stringify!($t), size_of::<$t>()))
        };
    }
    macro_rules! f {
        ($t:ident, $f:ident) => {{
            fn field_size<T, F>(_: impl Fn(&T) -> &F) -> usize {
                size_of::<F>()
            }
            let sz = field_size(|x: &$t| &x.$f);
            v.push(format!(
                "field {}.{} {} {}",
                stringify!($t),
                stringify!($f).trim_start_matches("r#"),
                offset_of!($t, $f),
                sz
            ))
        }};
    }
    macro_rules! c {
        ($n:literal, $e:expr) => {
            v.push(format!("const {} {}", $n, $e as i64))
        };
    }
    s!(podmap_cgroup_key);
    f!(podmap_cgroup_key, id);
    f!(podmap_cgroup_key, hierarchy);
    s!(podmap_container);
    f!(podmap_container, created_ns);
    f!(podmap_container, removed_ns);
    f!(podmap_container, flags);
    f!(podmap_container, writer);
    s!(podmap_container_meta);
    f!(podmap_container_meta, len);
    f!(podmap_container_meta, data);
    s!(podmap_proc);
    f!(podmap_proc, exec_ktime);
    f!(podmap_proc, flags);
    s!(podmap_task_ids);
    f!(podmap_task_ids, cgroup_v2);
    f!(podmap_task_ids, cgroup_v1);
    f!(podmap_task_ids, container_cgid);
    f!(podmap_task_ids, container_hier);
    f!(podmap_task_ids, pid);
    f!(podmap_task_ids, tid);
    f!(podmap_task_ids, ppid);
    f!(podmap_task_ids, uid);
    s!(podmap_member_key);
    f!(podmap_member_key, policy_id);
    f!(podmap_member_key, hierarchy);
    f!(podmap_member_key, cgroup_id);
    s!(podmap_path_key);
    f!(podmap_path_key, prefixlen);
    f!(podmap_path_key, path);
    s!(podmap_rule_ref);
    f!(podmap_rule_ref, policy_id);
    f!(podmap_rule_ref, rule_index);
    f!(podmap_rule_ref, action);
    f!(podmap_rule_ref, flags);
    s!(podmap_rule_set);
    f!(podmap_rule_set, count);
    f!(podmap_rule_set, refs);
    s!(podmap_policy_state);
    f!(podmap_policy_state, exec_rules);
    f!(podmap_policy_state, open_rules);
    f!(podmap_policy_state, lsm_active);
    s!(podmap_policy_hit);
    f!(podmap_policy_hit, policy_id);
    f!(podmap_policy_hit, rule_index);
    f!(podmap_policy_hit, action);
    f!(podmap_policy_hit, mode);
    s!(podmap_open_event);
    f!(podmap_open_event, hdr);
    f!(podmap_open_event, ids);
    f!(podmap_open_event, policy);
    f!(podmap_open_event, open_flags);
    f!(podmap_open_event, path_len);
    s!(podmap_event_header);
    f!(podmap_event_header, r#type);
    f!(podmap_event_header, flags);
    f!(podmap_event_header, ktime);
    s!(podmap_exec_event);
    f!(podmap_exec_event, hdr);
    f!(podmap_exec_event, ids);
    f!(podmap_exec_event, policy);
    f!(podmap_exec_event, start_time);
    f!(podmap_exec_event, parent_exec_ktime);
    f!(podmap_exec_event, filename_len);
    f!(podmap_exec_event, cwd_len);
    f!(podmap_exec_event, args_len);
    s!(podmap_exit_event);
    f!(podmap_exit_event, hdr);
    f!(podmap_exit_event, ids);
    f!(podmap_exit_event, exec_ktime);
    f!(podmap_exit_event, exit_code);
    f!(podmap_exit_event, comm);
    s!(podmap_cgroup_event);
    f!(podmap_cgroup_event, hdr);
    f!(podmap_cgroup_event, id);
    f!(podmap_cgroup_event, hierarchy_id);
    f!(podmap_cgroup_event, level);
    f!(podmap_cgroup_event, path_len);
    c!("PODMAP_FILENAME_MAX", FILENAME_MAX);
    c!("PODMAP_CWD_MAX", CWD_MAX);
    c!("PODMAP_ARGS_MAX", ARGS_MAX);
    c!("PODMAP_CGROUP_PATH_MAX", CGROUP_PATH_MAX);
    c!("PODMAP_META_MAX", META_MAX);
    c!("PODMAP_MAX_CONTAINER_LEVEL", MAX_CONTAINER_LEVEL);
    c!("PODMAP_MAX_CONTAINERS", MAX_CONTAINERS);
    c!("PODMAP_POLICY_PATH_MAX", POLICY_PATH_MAX);
    c!("PODMAP_RULE_REFS", RULE_REFS);
    c!("PODMAP_MAX_MEMBERS", MAX_MEMBERS);
    c!("PODMAP_MAX_RULES", MAX_RULES);
    c!("PODMAP_EV_POLICY_OPEN", EV_POLICY_OPEN);
    c!("PODMAP_ACT_NONE", ACT_NONE);
    c!("PODMAP_ACT_AUDIT", ACT_AUDIT);
    c!("PODMAP_ACT_KILL", ACT_KILL);
    c!("PODMAP_ACT_DENY", ACT_DENY);
    c!("PODMAP_MODE_NONE", MODE_NONE);
    c!("PODMAP_MODE_AUDIT", MODE_AUDIT);
    c!("PODMAP_MODE_KILL", MODE_KILL);
    c!("PODMAP_MODE_LSM", MODE_LSM);
    c!("PODMAP_RF_FALLBACK_KILL", RF_FALLBACK_KILL);
    c!("PODMAP_RF_READ", RF_READ);
    c!("PODMAP_RF_WRITE", RF_WRITE);
    c!("PODMAP_COUNTERS", COUNTERS);
    c!("PODMAP_HIER_V2", HIER_V2);
    c!("PODMAP_HIER_V1", HIER_V1);
    c!("PODMAP_CF_SANDBOX", CF_SANDBOX);
    c!("PODMAP_CF_REMOVING", CF_REMOVING);
    c!("PODMAP_EV_EXEC", EV_EXEC);
    c!("PODMAP_EV_EXIT", EV_EXIT);
    c!("PODMAP_EV_CGROUP_MKDIR", EV_CGROUP_MKDIR);
    c!("PODMAP_EV_CGROUP_RMDIR", EV_CGROUP_RMDIR);
    c!("PODMAP_PF_ARGS_TRUNCATED", PF_ARGS_TRUNCATED);
    c!("PODMAP_PF_PROCFS_SCAN", PF_PROCFS_SCAN);
    c!("PODMAP_PF_PATH_UNREADABLE", PF_PATH_UNREADABLE);
    c!("PODMAP_PF_CWD_TRUNCATED", PF_CWD_TRUNCATED);
    for c in Counter::ALL {
        v.push(format!("const {} {}", c.c_name(), c as u32));
    }
    c!("PODMAP_C_LATENCY_BUCKET0", LATENCY_BUCKET0);
    c!("PODMAP_C_LATENCY_BUCKETS", LATENCY_BUCKETS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares the C header, compiled for the host by build.rs, with this module.
    #[test]
    fn layout_matches_c() {
        let dumper = concat!(env!("OUT_DIR"), "/layout_dump");
        let out = std::process::Command::new(dumper)
            .output()
            .expect("run the layout dumper built by build.rs");
        assert!(out.status.success());
        let c: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let rust = describe();
        let mut c_sorted = c.clone();
        c_sorted.sort();
        let mut r_sorted = rust.clone();
        r_sorted.sort();
        let only_c: Vec<_> = c_sorted.iter().filter(|l| !r_sorted.contains(l)).collect();
        let only_rust: Vec<_> = r_sorted.iter().filter(|l| !c_sorted.contains(l)).collect();
        assert!(
            only_c.is_empty() && only_rust.is_empty(),
            "C and Rust layouts differ\nonly in C: {only_c:#?}\nonly in Rust: {only_rust:#?}"
        );
        assert!(c.len() > 60, "the dumper printed too little: {c:?}");
    }
}
