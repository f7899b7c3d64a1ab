/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * What the programs keep for themselves and how they send records: the ring buffer and the
 * reader's sleep flag, the process table, the per-CPU scratch records, the shared counters'
 * increment, and when a record wakes the reader.
 */
#ifndef PODMAP_EVENTS_BPF_H
#define PODMAP_EVENTS_BPF_H

#include "maps.bpf.h"

/* Set by the loader before load (bpf/src/programs.rs). */
const volatile __u64 wakeup_bytes = PODMAP_WAKEUP_BYTES_DEFAULT;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 * 1024 * 1024);
} podmap_events SEC(".maps");

/*
 * Non-zero while podmapd's reader sleeps without a timer (nothing came for a while): the next
 * record wakes it and clears this, so an idle node costs no periodic wake-ups.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} podmap_reader SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODMAP_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct podmap_proc);
} podmap_procs SEC(".maps");

/*
 * Verifier bounds of the packed exec tail (podmap.h): the cwd starts right after the filename,
 * the args right after the cwd. Each start is masked with the smallest 2^n - 1 its largest
 * value passes unchanged, and the scratch tail is large enough for a full-size read at the
 * largest masked start.
 */
#define EXEC_CWD_BASE_MASK (2 * PODMAP_FILENAME_MAX - 1)
#define EXEC_ARGS_BASE_MASK (2 * (PODMAP_FILENAME_MAX + PODMAP_CWD_MAX) - 1)
#define EXEC_SCRATCH_DATA (EXEC_ARGS_BASE_MASK + 1 + 2 * PODMAP_ARGS_MAX)
_Static_assert(((EXEC_CWD_BASE_MASK + 1) & EXEC_CWD_BASE_MASK) == 0 &&
		       ((EXEC_ARGS_BASE_MASK + 1) & EXEC_ARGS_BASE_MASK) == 0,
	       "a mask is 2^n - 1");
_Static_assert(PODMAP_FILENAME_MAX <= EXEC_CWD_BASE_MASK &&
		       PODMAP_FILENAME_MAX + PODMAP_CWD_MAX <= EXEC_ARGS_BASE_MASK,
	       "a start at its largest passes its mask unchanged");
_Static_assert(EXEC_SCRATCH_DATA >= PODMAP_EXEC_DATA_MAX, "the whole tail fits the scratch");

/* Each record as sent: its struct, then its variable tail (podmap.h says which). */
struct exec_scratch {
	struct podmap_exec_event ev;
	char data[EXEC_SCRATCH_DATA];
};

struct cgroup_scratch {
	struct podmap_cgroup_event ev;
	char path[PODMAP_CGROUP_PATH_MAX];
};

struct open_scratch {
	struct podmap_open_event ev;
	char path[PODMAP_POLICY_PATH_MAX];
};

/* userspace reads each tail right after its record's struct. */
_Static_assert(__builtin_offsetof(struct exec_scratch, data) == sizeof(struct podmap_exec_event),
	       "the exec tail follows the exec record");
_Static_assert(__builtin_offsetof(struct cgroup_scratch, path) ==
		       sizeof(struct podmap_cgroup_event),
	       "the cgroup path follows the cgroup record");
_Static_assert(__builtin_offsetof(struct open_scratch, path) == sizeof(struct podmap_open_event),
	       "the open path follows the open record");

/*
 * A per-CPU buffer of one entry, for exactly one program. A program can be preempted (LSM
 * programs and, on recent kernels, syscall tracepoint programs run with only migration
 * disabled), and another program run on the same CPU meanwhile would overwrite a shared buffer
 * half-way through a key or a record. The kernel never lets a program re-enter itself on a CPU,
 * so one buffer per program is safe; objects.rs tests that no buffer has two users.
 */
#define PODMAP_SCRATCH(name, value_type)                 \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__uint(max_entries, 1);                  \
		__type(key, __u32);                      \
		__type(value, value_type);               \
	} name SEC(".maps")

PODMAP_SCRATCH(exec_scratch, struct exec_scratch);
PODMAP_SCRATCH(cgroup_mkdir_scratch, struct cgroup_scratch);
PODMAP_SCRATCH(cgroup_rmdir_scratch, struct cgroup_scratch);
PODMAP_SCRATCH(open_scratch, struct open_scratch);
PODMAP_SCRATCH(openat_scratch, struct open_scratch);
PODMAP_SCRATCH(openat2_scratch, struct open_scratch);

/*
 * Verifier bounds on the lengths of the records sent from scratch: a length masked with one of
 * these is provably within its scratch buffer, and every real length (at most the buffer's size)
 * passes the mask unchanged.
 */
#define CGROUP_RECORD_MASK 1023
#define OPEN_RECORD_MASK 511
_Static_assert(((CGROUP_RECORD_MASK + 1) & CGROUP_RECORD_MASK) == 0, "a mask is 2^n - 1");
_Static_assert(sizeof(struct cgroup_scratch) <= CGROUP_RECORD_MASK,
	       "every cgroup record length passes the mask");
_Static_assert(((OPEN_RECORD_MASK + 1) & OPEN_RECORD_MASK) == 0, "a mask is 2^n - 1");
_Static_assert(sizeof(struct open_scratch) <= OPEN_RECORD_MASK,
	       "every open record length passes the mask");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&podmap_counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/*
 * Wake the reader when enough is queued, or when it sleeps without a timer; otherwise it polls
 * on a short timer (a wake-up per record is most of a tracer's cost).
 */
static __always_inline __u64 wakeup_flag(void)
{
	__u32 zero = 0, *asleep;

	if (bpf_ringbuf_query(&podmap_events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	asleep = bpf_map_lookup_elem(&podmap_reader, &zero);
	if (asleep && *asleep) {
		/* Two CPUs racing here both wake it: harmless. */
		*asleep = 0;
		return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

#endif
