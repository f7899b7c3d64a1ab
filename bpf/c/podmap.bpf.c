// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * podmap's kernel side: exec, exit and fork tracking, cgroup mkdir/rmdir, each event stamped with
 * the task's cgroup ids and the mapped container cgroup it lives in or below.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "kernel.bpf.h"
#include "maps.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load. */
const volatile __u32 v1_controller = 0;   /* enum podmap_v1_controller; 0: no v1 tracking */
const volatile __s32 v1_hierarchy_id = -1; /* kernel hierarchy id of that controller */
const volatile __u64 wakeup_bytes = 256 * 1024;

enum podmap_v1_controller {
	V1_NONE = 0,
	V1_MEMORY,
	V1_PIDS,
	V1_CPU,
	V1_CPUSET,
	V1_CPUACCT,
	V1_BLKIO,
	V1_DEVICES,
	V1_FREEZER,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} podmap_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODMAP_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct podmap_proc);
} podmap_procs SEC(".maps");

struct exec_scratch {
	struct podmap_exec_event ev;
	char data[PODMAP_EXEC_DATA_MAX];
};

struct cgroup_scratch {
	struct podmap_cgroup_event ev;
	char path[PODMAP_CGROUP_PATH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} exec_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgroup_scratch);
} cgroup_scratch SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&podmap_counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* Wake the reader only when enough is queued; otherwise it polls on a short timer. */
static __always_inline __u64 wakeup_flag(void)
{
	return bpf_ringbuf_query(&podmap_events, BPF_RB_AVAIL_DATA) >= wakeup_bytes
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

static __always_inline int v1_ssid(void)
{
	switch (v1_controller) {
	case V1_MEMORY: return bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	case V1_PIDS: return bpf_core_enum_value(enum cgroup_subsys_id, pids_cgrp_id);
	case V1_CPU: return bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
	case V1_CPUSET: return bpf_core_enum_value(enum cgroup_subsys_id, cpuset_cgrp_id);
	case V1_CPUACCT: return bpf_core_enum_value(enum cgroup_subsys_id, cpuacct_cgrp_id);
	case V1_BLKIO: return bpf_core_enum_value(enum cgroup_subsys_id, io_cgrp_id);
	case V1_DEVICES: return bpf_core_enum_value(enum cgroup_subsys_id, devices_cgrp_id);
	case V1_FREEZER: return bpf_core_enum_value(enum cgroup_subsys_id, freezer_cgrp_id);
	default: return -1;
	}
}

static __always_inline struct cgroup *v1_cgroup(struct task_struct *task)
{
	int ssid = v1_ssid();
	struct css_set *cset;
	struct cgroup_subsys_state *css = 0;

	if (ssid < 0 || ssid >= 16)
		return 0;
	cset = BPF_CORE_READ(task, cgroups);
	if (!cset)
		return 0;
	bpf_core_read(&css, sizeof(css), &cset->subsys[ssid]);
	if (!css)
		return 0;
	return BPF_CORE_READ(css, cgroup);
}

/*
 * Fills the cgroup ids and finds the mapped container cgroup: the leaf or its nearest mapped
 * ancestor, so a sub-cgroup a container makes for itself is attributed to the container.
 */
static __always_inline void task_ids(struct task_struct *task, struct podmap_task_ids *ids)
{
	struct podmap_cgroup_key key = {};
	int level, i;

	ids->cgroup_v2 = bpf_get_current_cgroup_id();
	ids->container_cgid = 0;
	ids->container_hier = PODMAP_HIER_V2;

	level = BPF_CORE_READ(task, cgroups, dfl_cgrp, level);
	key.hierarchy = PODMAP_HIER_V2;
	for (i = 0; i < PODMAP_MAX_CGROUP_DEPTH; i++) {
		if (level - i < 1)
			break;
		key.id = bpf_get_current_ancestor_cgroup_id(level - i);
		if (bpf_map_lookup_elem(&podmap_containers, &key)) {
			ids->container_cgid = key.id;
			break;
		}
	}

	ids->cgroup_v1 = 0;
	struct cgroup *cg = v1_cgroup(task);
	if (!cg)
		return;
	ids->cgroup_v1 = BPF_CORE_READ(cg, kn, id);
	if (ids->container_cgid)
		return;
	key.hierarchy = PODMAP_HIER_V1;
	for (i = 0; i < PODMAP_MAX_CGROUP_DEPTH && cg; i++) {
		if (BPF_CORE_READ(cg, level) < 1)
			break;
		key.id = BPF_CORE_READ(cg, kn, id);
		if (bpf_map_lookup_elem(&podmap_containers, &key)) {
			ids->container_cgid = key.id;
			ids->container_hier = PODMAP_HIER_V1;
			return;
		}
		cg = BPF_CORE_READ(cg, self.parent, cgroup);
	}
}

static __always_inline void task_pids(struct task_struct *task, struct podmap_task_ids *ids)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	ids->pid = pid_tgid >> 32;
	ids->tid = (__u32)pid_tgid;
	ids->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ids->uid = (__u32)bpf_get_current_uid_gid();
	ids->_pad = 0;
}

struct cwd_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u32 off;
	__u32 truncated;
};

/*
 * One step of the cwd walk, run under bpf_loop so the verifier checks it once. Writes the next
 * component (leaf first, NUL-terminated) into the scratch cwd region. The read has a constant
 * size: a long name may run into the args region, which is written after the walk and which the
 * cwd length excludes.
 */
static long cwd_step(__u64 i, struct cwd_walk *w)
{
	/* Locals, so CO-RE relocates only the kernel structures' fields, not the walk's. */
	struct dentry *dentry = w->dentry, *mnt_root, *parent;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt, *mnt_parent;
	struct exec_scratch *s;
	__u32 zero = 0;
	long n;

	if (dentry == w->root_dentry && vfsmnt == w->root_mnt)
		return 1;
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	if (dentry == mnt_root) {
		mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (mnt_parent == mnt)
			return 1;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = (struct vfsmount *)((char *)mnt_parent +
						bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	parent = BPF_CORE_READ(dentry, d_parent);
	if (parent == dentry)
		return 1;
	s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s || w->off >= PODMAP_CWD_MAX - 1) {
		w->truncated = 1;
		return 1;
	}
	n = bpf_probe_read_kernel_str(s->data + PODMAP_FILENAME_MAX + (w->off & (PODMAP_CWD_MAX - 1)),
				      PODMAP_CWD_MAX, BPF_CORE_READ(dentry, d_name.name));
	if (n <= 0) {
		w->truncated = 1;
		return 1;
	}
	w->off += n;
	w->dentry = parent;
	return 0;
}

/* Fills the scratch cwd region; crosses mount points up to the task's root. */
static __always_inline __u32 read_cwd(struct task_struct *task, __u32 *flags)
{
	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	struct cwd_walk w = {};
	long steps;

	if (!fs)
		return 0;
	w.dentry = BPF_CORE_READ(fs, pwd.dentry);
	w.vfsmnt = BPF_CORE_READ(fs, pwd.mnt);
	w.root_dentry = BPF_CORE_READ(fs, root.dentry);
	w.root_mnt = BPF_CORE_READ(fs, root.mnt);
	w.mnt = (struct mount *)((char *)w.vfsmnt - bpf_core_field_offset(struct mount, mnt));
	steps = bpf_loop(64, cwd_step, &w, 0);
	if (w.truncated || steps >= 64) {
		*flags |= PODMAP_PF_CWD_TRUNCATED;
		count(PODMAP_C_CWD_TRUNCATED);
	}
	return w.off > PODMAP_CWD_MAX ? PODMAP_CWD_MAX : w.off;
}

struct sched_process_exec_args {
	__u64 common;
	__u32 filename_loc;
	int pid;
	int old_pid;
};

SEC("tracepoint/sched/sched_process_exec")
int podmap_exec(struct sched_process_exec_args *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct podmap_proc proc = {}, *parent;
	struct exec_scratch *s;
	__u32 zero = 0, ppid;
	unsigned long arg_start, arg_end, args_len;
	long n;

	count(PODMAP_C_EXEC);
	s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s)
		return 0;

	s->ev.hdr.type = PODMAP_EV_EXEC;
	s->ev.hdr.flags = 0;
	s->ev.hdr.ktime = bpf_ktime_get_boot_ns();
	task_pids(task, &s->ev.ids);
	task_ids(task, &s->ev.ids);
	s->ev.start_time = BPF_CORE_READ(task, group_leader, start_boottime);

	ppid = s->ev.ids.ppid;
	parent = bpf_map_lookup_elem(&podmap_procs, &ppid);
	s->ev.parent_exec_ktime = parent ? parent->exec_ktime : 0;

	proc.exec_ktime = s->ev.hdr.ktime;
	if (bpf_map_update_elem(&podmap_procs, &s->ev.ids.pid, &proc, BPF_ANY))
		count(PODMAP_C_PROC_TABLE_FULL);

	/* The kernel's own copy of the filename: always readable here. */
	n = bpf_probe_read_kernel_str(s->data, PODMAP_FILENAME_MAX,
				      (char *)ctx + (ctx->filename_loc & 0xFFFF));
	if (n <= 0) {
		s->data[0] = 0;
		n = 1;
		s->ev.hdr.flags |= PODMAP_PF_PATH_UNREADABLE;
		count(PODMAP_C_PATH_UNREADABLE);
	}
	s->ev.filename_len = n;

	s->ev.cwd_len = read_cwd(task, &s->ev.hdr.flags);

	arg_start = BPF_CORE_READ(task, mm, arg_start);
	arg_end = BPF_CORE_READ(task, mm, arg_end);
	args_len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (args_len > PODMAP_ARGS_MAX) {
		args_len = PODMAP_ARGS_MAX;
		s->ev.hdr.flags |= PODMAP_PF_ARGS_TRUNCATED;
		count(PODMAP_C_ARGS_TRUNCATED);
	}
	if (args_len &&
	    bpf_probe_read_user(s->data + PODMAP_FILENAME_MAX + PODMAP_CWD_MAX,
				args_len & (PODMAP_ARGS_MAX * 2 - 1), (void *)arg_start)) {
		args_len = 0;
		s->ev.hdr.flags |= PODMAP_PF_ARGS_TRUNCATED;
		count(PODMAP_C_ARGS_TRUNCATED);
	}
	s->ev.args_len = args_len;

	__u64 size = sizeof(s->ev) + PODMAP_FILENAME_MAX + PODMAP_CWD_MAX + args_len;
	if (size > sizeof(*s))
		size = sizeof(*s);
	if (bpf_ringbuf_output(&podmap_events, s, size, wakeup_flag()))
		count(PODMAP_C_RINGBUF_DROPPED);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int podmap_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct podmap_exit_event *ev;
	struct podmap_proc *proc;
	__u32 tgid;

	/* One event per process: when its last thread goes. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
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
	ev->exit_code = BPF_CORE_READ(task, signal, group_exit_code);
	if (!ev->exit_code)
		ev->exit_code = BPF_CORE_READ(task, exit_code);
	ev->_pad = 0;
	bpf_map_delete_elem(&podmap_procs, &tgid);
	bpf_ringbuf_submit(ev, wakeup_flag());
	return 0;
}

/* A new process inherits its parent's latest exec until it execs itself. */
SEC("raw_tracepoint/sched_process_fork")
int podmap_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct podmap_proc *pp;
	__u32 ptgid, ctgid;

	ctgid = BPF_CORE_READ(child, tgid);
	if (BPF_CORE_READ(child, pid) != ctgid)
		return 0; /* a thread */
	ptgid = BPF_CORE_READ(parent, tgid);
	pp = bpf_map_lookup_elem(&podmap_procs, &ptgid);
	if (!pp)
		return 0;
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

static __always_inline int cgroup_event(struct cgroup_tp_args *ctx, __u32 type)
{
	struct cgroup_scratch *s;
	__u32 zero = 0;
	long n;

	if (ctx->root != 0 && ctx->root != v1_hierarchy_id)
		return 0;
	count(PODMAP_C_CGROUP_EVENTS);
	s = bpf_map_lookup_elem(&cgroup_scratch, &zero);
	if (!s)
		return 0;
	s->ev.hdr.type = type;
	s->ev.hdr.flags = 0;
	s->ev.hdr.ktime = bpf_ktime_get_boot_ns();
	s->ev.id = ctx->id;
	s->ev.hierarchy_id = ctx->root;
	s->ev.level = ctx->level;
	n = bpf_probe_read_kernel_str(s->path, PODMAP_CGROUP_PATH_MAX,
				      (char *)ctx + (ctx->path_loc & 0xFFFF));
	if (n <= 0) {
		s->path[0] = 0;
		n = 1;
	}
	s->ev.path_len = n;
	/* Rare and needed promptly (held events wait on them): always wake the reader. */
	if (bpf_ringbuf_output(&podmap_events, s, (sizeof(s->ev) + n) & 1023, 0))
		count(PODMAP_C_RINGBUF_DROPPED);
	return 0;
}

SEC("tracepoint/cgroup/cgroup_mkdir")
int podmap_cgroup_mkdir(struct cgroup_tp_args *ctx)
{
	return cgroup_event(ctx, PODMAP_EV_CGROUP_MKDIR);
}

SEC("tracepoint/cgroup/cgroup_rmdir")
int podmap_cgroup_rmdir(struct cgroup_tp_args *ctx)
{
	return cgroup_event(ctx, PODMAP_EV_CGROUP_RMDIR);
}
