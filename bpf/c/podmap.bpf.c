// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * podmap's kernel side, the programs: exec, exit and fork tracking, cgroup mkdir/rmdir, each
 * event stamped with the task's cgroup ids and the mapped container cgroup it lives in or below;
 * exec and open policies at the tracepoints and, where BPF-LSM loads, in the LSM hooks. What they
 * share is in the headers, by concern: task_ids.bpf.h (who a task is), cwd.bpf.h (the exec's
 * working directory), policy.bpf.h (the rule walk), events.bpf.h (records, scratch, counters),
 * maps.bpf.h (the pinned maps), kernel.bpf.h (the kernel structures read), podmap.h (everything
 * shared with userspace).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "kernel.bpf.h"
#include "maps.bpf.h"
#include "events.bpf.h"
#include "task_ids.bpf.h"
#include "cwd.bpf.h"
#include "policy.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* A tracepoint's __data_loc field: the offset of the data in the record, in its low 16 bits. */
#define DATA_LOC_OFFSET(loc) ((loc)&0xFFFF)

/*
 * Verifier bound on the argv length copied into the args region: a mask of 2^n - 1 at least
 * PODMAP_ARGS_MAX, so a full region (PODMAP_ARGS_MAX itself) passes unchanged.
 */
#define ARGS_LEN_MASK (PODMAP_ARGS_MAX * 2 - 1)
_Static_assert(((ARGS_LEN_MASK + 1) & ARGS_LEN_MASK) == 0, "a mask is 2^n - 1");
_Static_assert((PODMAP_ARGS_MAX & (PODMAP_ARGS_MAX - 1)) == 0 &&
		       ARGS_LEN_MASK + 1 == 2 * PODMAP_ARGS_MAX,
	       "the smallest mask a full args region passes");
_Static_assert(EXEC_ARGS_BASE_MASK + ARGS_LEN_MASK <= EXEC_SCRATCH_DATA,
	       "the args read at their last start stays in the scratch buffer");

struct sched_process_exec_args {
	__u64 common;
	__u32 filename_loc;
	int pid;
	int old_pid;
};

SEC("tracepoint/sched/sched_process_exec")
int podmap_exec(struct sched_process_exec_args *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct podmap_proc proc = {}, *parent, *own;
	struct exec_scratch *s;
	__u32 zero = 0, ppid;
	unsigned long arg_start, arg_end, args_len;
	__u32 tail;
	long n;

	count(PODMAP_C_EXEC);
	s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s)
		return 0;

	s->ev.hdr.type = PODMAP_EV_EXEC_CREDS;
	s->ev.hdr.flags = 0;
	s->ev.hdr.ktime = bpf_ktime_get_boot_ns();
	task_pids(task, &s->ev.ids);
	task_ids(task, &s->ev.ids);
	s->ev.start_time = task->group_leader->start_boottime;
	task_creds(task, &s->ev.creds);

	ppid = s->ev.ids.ppid;
	parent = bpf_map_lookup_elem(&podmap_procs, &ppid);
	s->ev.parent_exec_ktime = parent ? parent->exec_ktime : 0;

	own = bpf_map_lookup_elem(&podmap_procs, &s->ev.ids.pid);
	s->ev.entry_pid = entry_pid(task, &s->ev.ids, own, parent);

	if (own) {
		/* Written in place: the exec has made the task its process's only thread, so no
		 * fork reads the entry meanwhile, and an update would take a bucket lock and a
		 * fresh element for the same bytes. */
		own->exec_ktime = s->ev.hdr.ktime;
		own->entry_pid = s->ev.entry_pid;
		own->flags = 0;
	} else {
		proc.exec_ktime = s->ev.hdr.ktime;
		proc.entry_pid = s->ev.entry_pid;
		if (bpf_map_update_elem(&podmap_procs, &s->ev.ids.pid, &proc, BPF_ANY))
			count(PODMAP_C_PROC_TABLE_FULL);
	}

	/* The kernel's own copy of the filename: always readable here. */
	n = bpf_probe_read_kernel_str(s->data, PODMAP_FILENAME_MAX,
				      (char *)ctx + DATA_LOC_OFFSET(ctx->filename_loc));
	if (n <= 0) {
		s->data[0] = 0;
		n = 1;
		s->ev.hdr.flags |= PODMAP_PF_PATH_UNREADABLE;
		count(PODMAP_C_PATH_UNREADABLE);
	}
	s->ev.filename_len = n;

	s->ev.policy = (struct podmap_policy_hit){};
	struct podmap_policy_state *st = policy_state();
	if (st && st->exec_rules && s->ev.ids.container_cgid) {
		struct podmap_path_key *key = bpf_map_lookup_elem(&exec_path_scratch, &zero);
		if (key && bpf_probe_read_kernel_str(
				   key->path, PODMAP_POLICY_PATH_MAX,
				   (char *)ctx + DATA_LOC_OFFSET(ctx->filename_loc)) > 0) {
			key->prefixlen = PODMAP_POLICY_PATH_MAX * 8;
			policy_match(&podmap_exec_rules, key, &s->ev.ids, 0, st, &s->ev.policy);
		}
	}

	s->ev.cwd_len = read_cwd(task, s, s->ev.filename_len, &s->ev.hdr.flags);
	tail = s->ev.filename_len + s->ev.cwd_len;

	arg_start = task->mm->arg_start;
	arg_end = task->mm->arg_end;
	args_len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (args_len > PODMAP_ARGS_MAX) {
		args_len = PODMAP_ARGS_MAX;
		s->ev.hdr.flags |= PODMAP_PF_ARGS_TRUNCATED;
		count(PODMAP_C_ARGS_TRUNCATED);
	}
	if (args_len && bpf_probe_read_user(s->data + (tail & EXEC_ARGS_BASE_MASK),
					    args_len & ARGS_LEN_MASK, (void *)arg_start)) {
		args_len = 0;
		s->ev.hdr.flags |= PODMAP_PF_ARGS_TRUNCATED;
		count(PODMAP_C_ARGS_TRUNCATED);
	}
	s->ev.args_len = args_len;

	/* The packed tail (podmap.h): only the bytes used go into the ring. */
	__u64 size = sizeof(s->ev) + tail + args_len;
	if (size > sizeof(s->ev) + PODMAP_EXEC_DATA_MAX)
		size = sizeof(s->ev) + PODMAP_EXEC_DATA_MAX;
	if (bpf_ringbuf_output(&podmap_events, s, size, wakeup_flag()))
		count(PODMAP_C_RINGBUF_DROPPED);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int podmap_exit(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct podmap_exit_event *ev;
	struct podmap_proc *proc;
	__u32 tgid;

	/* One event per process: when its last thread goes. */
	if (task->signal->live.counter != 0)
		return 0;
	count(PODMAP_C_EXIT);

	ev = bpf_ringbuf_reserve(&podmap_events, sizeof(*ev), 0);
	if (!ev) {
		count(PODMAP_C_RINGBUF_DROPPED);
		return 0;
	}
	ev->hdr.type = PODMAP_EV_EXIT;
	ev->hdr.flags = 0;
	ev->hdr.ktime = bpf_ktime_get_boot_ns();
	task_pids(task, &ev->ids);
	task_ids(task, &ev->ids);
	tgid = ev->ids.pid;
	proc = bpf_map_lookup_elem(&podmap_procs, &tgid);
	ev->exec_ktime = proc ? proc->exec_ktime : 0;
	ev->hdr.flags = proc ? proc->flags : 0;
	/* A group exit carries the status in the signal struct; a lone exit in the task. */
	ev->exit_code = task->signal->group_exit_code;
	if (!ev->exit_code)
		ev->exit_code = task->exit_code;
	ev->entry_pid = proc ? proc->entry_pid : 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_map_delete_elem(&podmap_procs, &tgid);
	bpf_ringbuf_submit(ev, wakeup_flag());
	return 0;
}

/*
 * A new process inherits its parent's latest exec (and line of entry) until it execs itself. The
 * tracepoint runs in the parent, so its tgid is the current one; the child's pid and tgid are
 * read in one go where they are neighbours (every kernel podmap supports).
 */
SEC("raw_tracepoint/sched_process_fork")
int podmap_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct podmap_proc *pp;
	struct {
		int pid;
		int tgid;
	} c = {};
	__u32 ptgid, ctgid;

	if (bpf_core_field_offset(struct task_struct, tgid) ==
	    bpf_core_field_offset(struct task_struct, pid) + sizeof(int)) {
		bpf_probe_read_kernel(&c, sizeof(c), &child->pid);
	} else {
		c.pid = BPF_CORE_READ(child, pid);
		c.tgid = BPF_CORE_READ(child, tgid);
	}
	if (c.pid != c.tgid)
		return 0; /* a thread */
	ctgid = c.tgid;
	ptgid = bpf_get_current_pid_tgid() >> 32;
	pp = bpf_map_lookup_elem(&podmap_procs, &ptgid);
	if (!pp) {
		/* Nothing to inherit: nor may an entry left under a reused pid stand for the child. */
		bpf_map_delete_elem(&podmap_procs, &ctgid);
		return 0;
	}
	if (bpf_map_update_elem(&podmap_procs, &ctgid, pp, BPF_ANY))
		count(PODMAP_C_PROC_TABLE_FULL);
	return 0;
}

struct cgroup_tp_args {
	__u64 common;
	int root;
	int level;
	__u64 id;
	__u32 path_loc;
};

static __always_inline int cgroup_event(struct cgroup_tp_args *ctx, __u32 type, void *scratch)
{
	struct cgroup_scratch *s;
	__u32 zero = 0;
	long n;

	if (ctx->root != 0 && ctx->root != v1_hierarchy_id)
		return 0;
	count(PODMAP_C_CGROUP_EVENTS);
	s = bpf_map_lookup_elem(scratch, &zero);
	if (!s)
		return 0;
	s->ev.hdr.type = type;
	s->ev.hdr.flags = 0;
	s->ev.hdr.ktime = bpf_ktime_get_boot_ns();
	s->ev.id = ctx->id;
	s->ev.hierarchy_id = ctx->root;
	s->ev.level = ctx->level;
	n = bpf_probe_read_kernel_str(s->path, PODMAP_CGROUP_PATH_MAX,
				      (char *)ctx + DATA_LOC_OFFSET(ctx->path_loc));
	if (n <= 0) {
		s->path[0] = 0;
		n = 1;
	}
	s->ev.path_len = n;
	/* Rare and needed promptly (held events wait on them): always wake the reader. */
	if (bpf_ringbuf_output(&podmap_events, s, (sizeof(s->ev) + n) & CGROUP_RECORD_MASK, 0))
		count(PODMAP_C_RINGBUF_DROPPED);
	return 0;
}

SEC("tracepoint/cgroup/cgroup_mkdir")
int podmap_cgroup_mkdir(struct cgroup_tp_args *ctx)
{
	return cgroup_event(ctx, PODMAP_EV_CGROUP_MKDIR, &cgroup_mkdir_scratch);
}

SEC("tracepoint/cgroup/cgroup_rmdir")
int podmap_cgroup_rmdir(struct cgroup_tp_args *ctx)
{
	return cgroup_event(ctx, PODMAP_EV_CGROUP_RMDIR, &cgroup_rmdir_scratch);
}

struct sys_enter_open_args {
	__u64 common;
	__u64 nr;
	__u64 dfd;
	const char *filename;
	__u64 flags;
};

struct sys_enter_legacy_open_args {
	__u64 common;
	__u64 nr;
	const char *filename;
	__u64 flags;
};

/* `record` and `path` are the calling program's own scratch buffers (events.bpf.h). */
static __always_inline int open_policy(const char *filename, __u64 oflags, void *record, void *path)
{
	struct task_struct *task;
	struct podmap_policy_state *st = policy_state();
	struct podmap_path_key *key;
	struct open_scratch *s;
	struct podmap_policy_hit hit = {};
	__u32 zero = 0;
	long n;

	if (!st || !st->open_rules)
		return 0;
	s = bpf_map_lookup_elem(record, &zero);
	key = bpf_map_lookup_elem(path, &zero);
	if (!s || !key)
		return 0;
	task = bpf_get_current_task_btf();
	task_ids(task, &s->ev.ids);
	if (!s->ev.ids.container_cgid)
		return 0;
	n = bpf_probe_read_user_str(key->path, PODMAP_POLICY_PATH_MAX, filename);
	if (n <= 0) {
		/* The path is in user memory that may not be paged in: never silent. */
		count(PODMAP_C_OPEN_PATH_UNREADABLE);
		return 0;
	}
	key->prefixlen = PODMAP_POLICY_PATH_MAX * 8;
	policy_match(&podmap_open_rules, key, &s->ev.ids, open_access(oflags), st, &hit);
	if (hit.mode == PODMAP_MODE_NONE)
		return 0;
	task_pids(task, &s->ev.ids);
	s->ev.hdr.type = PODMAP_EV_POLICY_OPEN;
	s->ev.hdr.flags = 0;
	s->ev.hdr.ktime = bpf_ktime_get_boot_ns();
	s->ev.policy = hit;
	s->ev.open_flags = (__s32)oflags;
	n = bpf_probe_read_kernel_str(s->path, PODMAP_POLICY_PATH_MAX, key->path);
	if (n <= 0)
		n = 1;
	s->ev.path_len = n;
	if (bpf_ringbuf_output(&podmap_events, s, (sizeof(s->ev) + n) & OPEN_RECORD_MASK, 0))
		count(PODMAP_C_RINGBUF_DROPPED);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int podmap_openat(struct sys_enter_open_args *ctx)
{
	return open_policy(ctx->filename, ctx->flags, &openat_scratch, &openat_path_scratch);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int podmap_openat2(struct sys_enter_open_args *ctx)
{
	/* openat2's third argument is struct open_how, whose first field is the flags. */
	__u64 flags = 0;
	bpf_probe_read_user(&flags, sizeof(flags), (void *)ctx->flags);
	return open_policy(ctx->filename, flags, &openat2_scratch, &openat2_path_scratch);
}

SEC("tracepoint/syscalls/sys_enter_open")
int podmap_open(struct sys_enter_legacy_open_args *ctx)
{
	return open_policy(ctx->filename, ctx->flags, &open_scratch, &open_path_scratch);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(podmap_lsm_exec, struct linux_binprm *bprm, int ret)
{
	struct podmap_policy_state *st = policy_state();
	struct podmap_path_key *key;
	__u32 zero = 0;

	if (ret || !st || !st->exec_rules)
		return ret;
	key = bpf_map_lookup_elem(&lsm_exec_path_scratch, &zero);
	if (!key)
		return 0;
	if (bpf_probe_read_kernel_str(key->path, PODMAP_POLICY_PATH_MAX,
				      BPF_CORE_READ(bprm, filename)) <= 0)
		return 0;
	return lsm_deny(&podmap_exec_rules, key, 0);
}

SEC("lsm/file_open")
int BPF_PROG(podmap_lsm_open, struct file *file, int ret)
{
	struct podmap_policy_state *st = policy_state();
	struct podmap_path_key *key;
	__u32 zero = 0;

	if (ret || !st || !st->open_rules)
		return ret;
	key = bpf_map_lookup_elem(&lsm_open_path_scratch, &zero);
	if (!key)
		return 0;
	if (bpf_d_path(&file->f_path, (char *)key->path, PODMAP_POLICY_PATH_MAX) <= 0)
		return 0;
	return lsm_deny(&podmap_open_rules, key, open_access(BPF_CORE_READ(file, f_flags)));
}
