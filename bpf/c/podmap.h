/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Every layout and constant the kernel programs share with userspace: map keys and values, map
 * sizes, event records and the regions of their variable tails, counter indices, the codes the
 * loader sets. The Rust side (bpf/src/layout.rs) is generated from this header by bindgen at build
 * time: nothing here is written twice. Keep every shared name prefixed PODMAP_ / podmap_ (the
 * generator takes only those), and make each constant something bindgen can evaluate: an enum
 * constant or a #define of an integer expression.
 */
#ifndef PODMAP_H
#define PODMAP_H

#include <linux/types.h>

#define PODMAP_FILENAME_MAX 256
#define PODMAP_CWD_MAX 256
#define PODMAP_ARGS_MAX 1024
#define PODMAP_CGROUP_PATH_MAX 512
#define PODMAP_META_MAX 4088
/*
 * Deepest level (the root is 0) at which a mapped cgroup is found for processes in cgroups below
 * it; below it, any depth. A process in a mapped cgroup itself is found at any level.
 * docs/decisions.md #4.
 */
#define PODMAP_MAX_CONTAINER_LEVEL 16

#define PODMAP_POLICY_PATH_MAX 256
#define PODMAP_RULE_REFS 16

#define PODMAP_MAX_CONTAINERS 32768
#define PODMAP_MAX_MEMBERS 65536
#define PODMAP_MAX_RULES 8192
#define PODMAP_MAX_PROCS 65536 /* the process table; podmapd's own table is as large */
#define PODMAP_COUNTERS 128

/* Queued ring-buffer bytes past which a record wakes the reader (docs/decisions.md #27). */
#define PODMAP_WAKEUP_BYTES_DEFAULT (256 * 1024)

/* Which cgroup hierarchy a cgroup id belongs to: ids of different hierarchies collide. */
enum podmap_hierarchy {
	PODMAP_HIER_V2 = 0,
	PODMAP_HIER_V1 = 1, /* the tracked v1 controller */
};

/* The v1 controller the programs read ids from, set by the loader; NONE: v1 not tracked. */
enum podmap_v1_controller {
	PODMAP_V1_NONE = 0,
	PODMAP_V1_MEMORY = 1,
	PODMAP_V1_PIDS = 2,
	PODMAP_V1_CPU = 3,
	PODMAP_V1_CPUSET = 4,
	PODMAP_V1_CPUACCT = 5,
	PODMAP_V1_BLKIO = 6,
	PODMAP_V1_DEVICES = 7,
	PODMAP_V1_FREEZER = 8,
};

struct podmap_cgroup_key {
	__u64 id;
	__u32 hierarchy;
	__u32 _pad;
};

/* Compact record the programs read: enough to attribute and (later) to enforce. */
struct podmap_container {
	__u64 created_ns; /* CLOCK_BOOTTIME ns when the writer mapped it */
	__u64 removed_ns; /* CLOCK_BOOTTIME ns when the runtime removed it (grace period), or 0 */
	__u32 flags;      /* PODMAP_CF_* */
	__u32 writer;     /* PODMAP_WRITER_* */
};

#define PODMAP_CF_SANDBOX (1U << 0)  /* the pod sandbox (pause) cgroup */
#define PODMAP_CF_REMOVING (1U << 1) /* removed by the runtime, kept for the grace period */

enum podmap_writer {
	PODMAP_WRITER_TEST = 0,
	PODMAP_WRITER_NRI = 1,
	PODMAP_WRITER_OCI_HOOK = 2,
	PODMAP_WRITER_DAEMON = 3,
};

/* Metadata of a container: a bounded JSON blob, read by podmapd once per new cgroup id. */
struct podmap_container_meta {
	__u32 len;
	__u8 data[PODMAP_META_MAX];
};

/* The process table (podmapd's own pin): tgid -> the boot-time ns of its latest exec. */
struct podmap_proc {
	__u64 exec_ktime;
	__u32 flags;     /* PODMAP_PF_* */
	__u32 entry_pid; /* see podmap_exec_event.entry_pid */
};

enum podmap_event_type {
	/*
	 * An exec record of programs older than the credentials: struct podmap_exec_event up to
	 * `creds` (PODMAP_EXEC_EVENT_NO_CREDS_SIZE bytes), its tail right after. The programs pinned
	 * by an older podmapd still send it; these programs send PODMAP_EV_EXEC_CREDS.
	 */
	PODMAP_EV_EXEC = 1,
	PODMAP_EV_EXIT = 2,
	PODMAP_EV_CGROUP_MKDIR = 3,
	PODMAP_EV_CGROUP_RMDIR = 4,
	PODMAP_EV_POLICY_OPEN = 5,
	/*
	 * An exec record with the credentials: struct podmap_exec_event whole, then its tail. A
	 * type of its own, not a flag: a podmapd older than it refuses the record as unknown (and
	 * counts it) instead of reading the tail 24 bytes off.
	 */
	PODMAP_EV_EXEC_CREDS = 6,
};

/*
 * Policies. Membership: (policy id, container cgroup) -> present. Rules: longest-prefix tries
 * keyed by path; an exact path's key includes its NUL, a prefix's does not, so the longest
 * match is the exact entry when there is one. Each entry lists every policy rule that applies to
 * that path (userspace folds shorter prefixes into longer ones).
 */
struct podmap_member_key {
	__u32 policy_id;
	__u32 hierarchy;
	__u64 cgroup_id;
};

struct podmap_path_key {
	__u32 prefixlen; /* in bits */
	__u8 path[PODMAP_POLICY_PATH_MAX];
};

enum podmap_action {
	PODMAP_ACT_NONE = 0,
	PODMAP_ACT_AUDIT = 1,
	PODMAP_ACT_KILL = 2,
	PODMAP_ACT_DENY = 3,
};

/* How an action was carried out. */
enum podmap_mode {
	PODMAP_MODE_NONE = 0,
	PODMAP_MODE_AUDIT = 1,
	PODMAP_MODE_KILL = 2,
	PODMAP_MODE_LSM = 3,
};

#define PODMAP_RF_FALLBACK_KILL (1U << 0) /* deny acts as kill where BPF-LSM is not loaded */
#define PODMAP_RF_READ (1U << 1)          /* open rules: applies to opens for reading */
#define PODMAP_RF_WRITE (1U << 2)         /* open rules: applies to opens for writing */

struct podmap_rule_ref {
	__u32 policy_id;
	__u16 rule_index;
	__u8 action; /* enum podmap_action */
	__u8 flags;  /* PODMAP_RF_* */
};

struct podmap_rule_set {
	__u32 count;
	__u32 _pad;
	struct podmap_rule_ref refs[PODMAP_RULE_REFS];
};

/* Written by podmapd: whether any rules exist (programs skip all policy work otherwise). */
struct podmap_policy_state {
	__u32 exec_rules;
	__u32 open_rules;
	__u32 lsm_active; /* the LSM programs are attached: deny is enforced there */
	__u32 _pad;
};

/* The rule that acted on an event; policy_id 0 and action NONE when none did. */
struct podmap_policy_hit {
	__u32 policy_id;
	__u16 rule_index;
	__u8 action; /* enum podmap_action */
	__u8 mode;   /* enum podmap_mode */
};

/* Event and process flags. */
#define PODMAP_PF_ARGS_TRUNCATED (1U << 0)
#define PODMAP_PF_PROCFS_SCAN (1U << 1)
#define PODMAP_PF_PATH_UNREADABLE (1U << 2)
#define PODMAP_PF_CWD_TRUNCATED (1U << 3)

/* Attribution as the kernel saw it: the mapped cgroup (leaf or an ancestor), if any. */
struct podmap_task_ids {
	__u64 cgroup_v2;      /* the task's cgroup v2 id */
	__u64 cgroup_v1;      /* the task's id in the tracked v1 controller, 0 if none */
	__u64 container_cgid; /* id of the mapped cgroup the task lives in or below, 0 if none */
	__u32 container_hier; /* enum podmap_hierarchy of container_cgid */
	__u32 pid;            /* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 _pad;
};

struct podmap_event_header {
	__u32 type;  /* enum podmap_event_type */
	__u32 flags; /* PODMAP_PF_* */
	__u64 ktime; /* bpf_ktime_get_boot_ns() */
};

/*
 * The exec'ing task's credentials once the exec has installed them (a set-user-ID binary's
 * euid, file capabilities), from task->real_cred: ids as the initial user namespace sees them
 * (a user-namespaced container's root is its host uid), capabilities as the task holds them
 * in its own user namespace.
 */
struct podmap_creds {
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 egid;
	__u64 cap_effective; /* bit n: capability n (CAP_CHOWN = 0) */
};

/*
 * Followed by the exec tail, fixed regions at the PODMAP_EXEC_*_OFF offsets from the tail's start
 * (the end of this struct): filename (filename_len bytes, NUL-terminated), cwd (cwd_len bytes:
 * path components leaf first, each NUL-terminated), then args_len bytes of NUL-separated argv.
 */
struct podmap_exec_event {
	struct podmap_event_header hdr;
	struct podmap_task_ids ids;
	struct podmap_policy_hit policy;
	/*
	 * The tgid of the process through which this one's line came into its container: the
	 * process whose exec found its parent outside the container (the container's init, or a
	 * process the runtime's exec put there), inherited by everything that process starts
	 * inside. 0: unknown (not in a container, a parent older than the programs, or a record
	 * of programs older than this field, whose 4 bytes of padding were always 0).
	 */
	__u32 entry_pid;
	__u64 start_time;        /* task start, boot-time ns */
	__u64 parent_exec_ktime; /* the parent's latest exec, 0 if unknown */
	__u16 filename_len;      /* bytes including the NUL */
	__u16 cwd_len;
	__u16 args_len;
	__u16 _pad[1];
	/* Only in PODMAP_EV_EXEC_CREDS records: the fields above are the older record whole. */
	struct podmap_creds creds;
};

/* The older exec record's struct (PODMAP_EV_EXEC), before `creds` existed. */
#define PODMAP_EXEC_EVENT_NO_CREDS_SIZE 104

struct podmap_exit_event {
	struct podmap_event_header hdr;
	struct podmap_task_ids ids;
	__u64 exec_ktime; /* this process's latest exec, 0 if unknown */
	__s32 exit_code;  /* task->exit_code: wait(2) status layout */
	__u32 entry_pid;  /* as in podmap_exec_event; 0 from older programs */
	__u8 comm[16];    /* names processes podmap never saw exec (runc's init helpers, forks) */
};

/* Followed by path_len bytes of the cgroup path (NUL-terminated). */
struct podmap_cgroup_event {
	struct podmap_event_header hdr;
	__u64 id;
	__s32 hierarchy_id; /* kernel hierarchy id: 0 is cgroup2 */
	__s32 level;
	__u16 path_len;
	__u16 _pad[3];
};

/* An open a policy rule acted on. Followed by path_len bytes of the path as passed. */
struct podmap_open_event {
	struct podmap_event_header hdr;
	struct podmap_task_ids ids;
	struct podmap_policy_hit policy;
	__s32 open_flags;
	__u16 path_len;
	__u16 _pad[3];
};

/*
 * The exec tail, after the record's struct. In a PODMAP_EV_EXEC record (older programs) its
 * regions sit at these fixed offsets. A PODMAP_EV_EXEC_CREDS record packs them: filename_len
 * bytes of filename, then cwd_len of cwd, then args_len of args, nothing between, so the ring
 * gets only the bytes used (writing the fixed regions' unused bytes into the ring was the
 * largest part of the exec program's time). PODMAP_EXEC_DATA_MAX bounds either tail.
 */
#define PODMAP_EXEC_FILENAME_OFF 0
#define PODMAP_EXEC_CWD_OFF (PODMAP_EXEC_FILENAME_OFF + PODMAP_FILENAME_MAX)
#define PODMAP_EXEC_ARGS_OFF (PODMAP_EXEC_CWD_OFF + PODMAP_CWD_MAX)
#define PODMAP_EXEC_DATA_MAX (PODMAP_EXEC_ARGS_OFF + PODMAP_ARGS_MAX)

/*
 * Shared counters, one u64 each in the mmapable pinned array `podmap_counters`: the kernel
 * programs add with atomics, userspace writers add through the mapping with atomics too.
 */
enum podmap_counter {
	PODMAP_C_EXEC = 0,
	PODMAP_C_EXIT,
	PODMAP_C_RINGBUF_DROPPED,
	PODMAP_C_ARGS_TRUNCATED,
	PODMAP_C_CWD_TRUNCATED,
	PODMAP_C_PATH_UNREADABLE,
	PODMAP_C_CGROUP_EVENTS,
	PODMAP_C_PROC_TABLE_FULL,
	PODMAP_C_POLICY_HITS,
	PODMAP_C_POLICY_KILLS,
	PODMAP_C_POLICY_DENY_AUDITED, /* deny rules without LSM and without fallback: audited */
	PODMAP_C_OPEN_PATH_UNREADABLE,
	PODMAP_C_POLICY_REFS_TRUNCATED,
	PODMAP_C_V1_RECORDS, /* records keyed by a v1 id ever written: the programs skip v1 walks at 0 */
	PODMAP_C_RECORDS_WRITTEN = 16,
	PODMAP_C_RECORDS_REMOVED,
	PODMAP_C_RECORDS_EXPIRED,
	PODMAP_C_MAP_WRITE_ERRORS,
	PODMAP_C_STORE_ERRORS,
	PODMAP_C_CGROUP_UNRESOLVED,
	PODMAP_C_NRI_EVENTS,
	PODMAP_C_NRI_MAPPED,
	PODMAP_C_NRI_FAILURES,
	PODMAP_C_NRI_SLOW_REPLIES,
	PODMAP_C_HOOK_RUNS,
	PODMAP_C_HOOK_MAPPED,
	PODMAP_C_HOOK_FAILURES,
	PODMAP_C_HOOK_TIMEOUTS,
	PODMAP_C_HOOK_BAD_INPUT,
	PODMAP_C_MEMBERSHIP_WRITES,
	PODMAP_C_MEMBERSHIP_ERRORS,
	PODMAP_C_STORE_RECOVERED, /* a writer's store would not open: moved aside, started afresh */
	PODMAP_C_STORE_TEMPORARY, /* a writer's store was held elsewhere: a temporary one stood in */
	/* records written for a cgroup below PODMAP_MAX_CONTAINER_LEVEL: its sub-cgroups are not
	 * attributed to it */
	PODMAP_C_DEEP_CONTAINERS,
	/* pins found missing and pinned again by a process holding the maps */
	PODMAP_C_PINS_RESTORED,
	/* pins found naming other maps than the ones a writer holds: writers no longer share them */
	PODMAP_C_PINS_FOREIGN,
	/* the sum of the create-to-mapping-ready latencies in the histogram below, in microseconds
	 * (the histogram's sum in metrics) */
	PODMAP_C_MAPPING_LATENCY_SUM_US,
	/* containers whose capabilities a runtime plugin could not learn: recorded as unknown */
	PODMAP_C_CAPABILITIES_UNREAD,
	/* records marked removed (their grace period started): a sweep has something to look for */
	PODMAP_C_RECORDS_MARKED,
	/* create-to-mapping-ready histogram: bucket i counts latencies < 2^i microseconds */
	PODMAP_C_LATENCY_BUCKET0 = 64,
	PODMAP_C_LATENCY_BUCKETS = 32,
	PODMAP_C_COUNT = PODMAP_COUNTERS,
};

#endif
