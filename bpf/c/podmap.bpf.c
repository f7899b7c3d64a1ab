// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * podmap's kernel side: exec, exit and fork tracking, cgroup mkdir/rmdir, each event stamped with
 * the task's cgroup ids and the mapped container cgroup it lives in or below.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct podmap_path_key);
} path_scratch SEC(".maps");

struct open_scratch {
	struct podmap_open_event ev;
	char path[PODMAP_POLICY_PATH_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct open_scratch);
} open_scratch SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&podmap_counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* Whether any writer ever keyed a record by a v1 id: if not, the v1 walk cannot find one. */
static __always_inline int v1_records(void)
{
	__u32 idx = PODMAP_C_V1_RECORDS;
	__u64 *v = bpf_map_lookup_elem(&podmap_counters, &idx);
	return v && *v;
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

/* Id of `cg`'s ancestor at `level` (0 the root), read from the cgroup's own ancestor array. */
static __always_inline __u64 v1_ancestor_id(struct cgroup *cg, int level)
{
	struct cgroup *anc = 0;
	__u64 id = 0;

	if (bpf_core_field_exists(cg->ancestors)) {
		bpf_probe_read_kernel(&anc, sizeof(anc),
				      (char *)cg + bpf_core_field_offset(struct cgroup, ancestors) +
					      level * sizeof(anc));
		return anc ? BPF_CORE_READ(anc, kn, id) : 0;
	}
	bpf_probe_read_kernel(&id, sizeof(id),
			      (char *)cg + bpf_core_field_offset(struct cgroup, ancestor_ids) +
				      level * sizeof(id));
	return id;
}

/*
 * Fills the cgroup ids and finds the mapped container cgroup: the task's own cgroup, else its
 * nearest mapped ancestor at level PODMAP_MAX_CONTAINER_LEVEL or above, so a sub-cgroup a
 * container makes for itself is attributed to the container however deep it nests
 * (docs/decisions.md #4). Ancestors are taken by level from the root side: the ones between the
 * task and that level are never looked at, so nesting deeper costs nothing and hides nothing.
 * The own cgroup first: a process directly in its container's cgroup costs one lookup.
 */
static __always_inline void task_ids(struct task_struct *task, struct podmap_task_ids *ids)
{
	struct podmap_cgroup_key key = {};
	int level, top, i;

	ids->cgroup_v2 = bpf_get_current_cgroup_id();
	ids->container_cgid = 0;
	ids->container_hier = PODMAP_HIER_V2;

	level = BPF_CORE_READ(task, cgroups, dfl_cgrp, level);
	key.hierarchy = PODMAP_HIER_V2;
	key.id = ids->cgroup_v2;
	if (level >= 1 && bpf_map_lookup_elem(&podmap_containers, &key)) {
		ids->container_cgid = key.id;
	} else {
		top = level - 1 < PODMAP_MAX_CONTAINER_LEVEL ? level - 1 : PODMAP_MAX_CONTAINER_LEVEL;
		for (i = 0; i < PODMAP_MAX_CONTAINER_LEVEL; i++) {
			if (top - i < 1)
				break;
			key.id = bpf_get_current_ancestor_cgroup_id(top - i);
			if (bpf_map_lookup_elem(&podmap_containers, &key)) {
				ids->container_cgid = key.id;
				break;
			}
		}
	}

	ids->cgroup_v1 = 0;
	struct cgroup *cg = v1_cgroup(task);
	if (!cg)
		return;
	ids->cgroup_v1 = BPF_CORE_READ(cg, kn, id);
	if (ids->container_cgid || !v1_records())
		return;
	/* The same search in the tracked v1 hierarchy, which has no helper: the cgroup's own
	 * ancestor array, indexed by level like the helper's. */
	level = BPF_CORE_READ(cg, level);
	if (level < 1)
		return;
	key.hierarchy = PODMAP_HIER_V1;
	key.id = ids->cgroup_v1;
	if (bpf_map_lookup_elem(&podmap_containers, &key)) {
		ids->container_cgid = key.id;
		ids->container_hier = PODMAP_HIER_V1;
		return;
	}
	top = level - 1 < PODMAP_MAX_CONTAINER_LEVEL ? level - 1 : PODMAP_MAX_CONTAINER_LEVEL;
	for (i = 0; i < PODMAP_MAX_CONTAINER_LEVEL; i++) {
		if (top - i < 1)
			break;
		key.id = v1_ancestor_id(cg, top - i);
		if (key.id && bpf_map_lookup_elem(&podmap_containers, &key)) {
			ids->container_cgid = key.id;
			ids->container_hier = PODMAP_HIER_V1;
			return;
		}
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

static __always_inline struct podmap_policy_state *policy_state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&podmap_policy_state, &zero);
}

struct policy_walk {
	struct podmap_rule_set *set;
	struct podmap_member_key key;
	__u32 want_flags; /* for opens: PODMAP_RF_READ and/or PODMAP_RF_WRITE */
	__u32 lsm_active;
	struct podmap_policy_hit hit;
};

/*
 * One rule of a matched rule set, under bpf_loop: applies when the container is a member of the
 * rule's policy (and, for opens, the access matches). Kill beats audit; the first of a kind wins.
 */
static long policy_step(__u64 i, struct policy_walk *w)
{
	struct podmap_rule_ref ref;
	__u8 mode, action;

	if (i >= w->set->count || i >= PODMAP_RULE_REFS)
		return 1;
	ref = w->set->refs[i & (PODMAP_RULE_REFS - 1)];
	if (w->want_flags && !(ref.flags & w->want_flags))
		return 0;
	w->key.policy_id = ref.policy_id;
	if (!bpf_map_lookup_elem(&podmap_policy_members, &w->key))
		return 0;
	action = ref.action;
	if (action == PODMAP_ACT_KILL) {
		mode = PODMAP_MODE_KILL;
	} else if (action == PODMAP_ACT_DENY) {
		if (w->lsm_active)
			return 0; /* the LSM program already refused it */
		mode = (ref.flags & PODMAP_RF_FALLBACK_KILL) ? PODMAP_MODE_KILL : PODMAP_MODE_AUDIT;
		if (mode == PODMAP_MODE_AUDIT)
			count(PODMAP_C_POLICY_DENY_AUDITED);
	} else {
		mode = PODMAP_MODE_AUDIT;
	}
	if (w->hit.mode == PODMAP_MODE_KILL || (w->hit.mode == PODMAP_MODE_AUDIT && mode == PODMAP_MODE_AUDIT))
		return 0;
	w->hit.policy_id = ref.policy_id;
	w->hit.rule_index = ref.rule_index;
	w->hit.action = action;
	w->hit.mode = mode;
	return mode == PODMAP_MODE_KILL;
}

/* Looks `key` up in `rules` and decides which policy acts on this task's container. */
static __always_inline void policy_match(void *rules, struct podmap_path_key *key,
					 struct podmap_task_ids *ids, __u32 want_flags,
					 struct podmap_policy_state *st, struct podmap_policy_hit *hit)
{
	struct policy_walk w = {};

	w.set = bpf_map_lookup_elem(rules, key);
	if (!w.set)
		return;
	if (w.set->count > PODMAP_RULE_REFS)
		count(PODMAP_C_POLICY_REFS_TRUNCATED);
	w.key.hierarchy = ids->container_hier;
	w.key.cgroup_id = ids->container_cgid;
	w.want_flags = want_flags;
	w.lsm_active = st->lsm_active;
	bpf_loop(PODMAP_RULE_REFS, policy_step, &w, 0);
	*hit = w.hit;
	if (hit->mode != PODMAP_MODE_NONE)
		count(PODMAP_C_POLICY_HITS);
	if (hit->mode == PODMAP_MODE_KILL) {
		count(PODMAP_C_POLICY_KILLS);
		/* At exec the new program dies before its first instruction; at open before the
		 * call returns to user space. */
		bpf_send_signal(9);
	}
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

	s->ev.policy = (struct podmap_policy_hit){};
	s->ev._pad2 = 0;
	struct podmap_policy_state *st = policy_state();
	if (st && st->exec_rules && s->ev.ids.container_cgid) {
		struct podmap_path_key *key = bpf_map_lookup_elem(&path_scratch, &zero);
		if (key && bpf_probe_read_kernel_str(key->path, PODMAP_POLICY_PATH_MAX,
						     (char *)ctx + (ctx->filename_loc & 0xFFFF)) > 0) {
			key->prefixlen = PODMAP_POLICY_PATH_MAX * 8;
			policy_match(&podmap_exec_rules, key, &s->ev.ids, 0, st, &s->ev.policy);
		}
	}

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
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
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

#define O_ACCMODE 3
#define O_WRONLY 1
#define O_RDWR 2
#define O_CREAT 0100
#define O_TRUNC 01000

static __always_inline int open_policy(const char *filename, __u64 oflags)
{
	struct task_struct *task;
	struct podmap_policy_state *st = policy_state();
	struct podmap_path_key *key;
	struct open_scratch *s;
	struct podmap_policy_hit hit = {};
	__u32 zero = 0, want = 0;
	long n;

	if (!st || !st->open_rules)
		return 0;
	s = bpf_map_lookup_elem(&open_scratch, &zero);
	key = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!s || !key)
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	task_ids(task, &s->ev.ids);
	if (!s->ev.ids.container_cgid)
		return 0;
	n = bpf_probe_read_user_str(key->path, PODMAP_POLICY_PATH_MAX, filename);
	if (n <= 0) {
		/* The path is in user memory that may not be paged in: never silent. */
		count(PODMAP_C_OPEN_PATH_UNREADABLE);
		return 0;
	}
	if ((oflags & O_ACCMODE) != O_WRONLY)
		want |= PODMAP_RF_READ;
	if ((oflags & O_ACCMODE) == O_WRONLY || (oflags & O_ACCMODE) == O_RDWR ||
	    (oflags & (O_CREAT | O_TRUNC)))
		want |= PODMAP_RF_WRITE;
	key->prefixlen = PODMAP_POLICY_PATH_MAX * 8;
	policy_match(&podmap_open_rules, key, &s->ev.ids, want, st, &hit);
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
	if (bpf_ringbuf_output(&podmap_events, s, (sizeof(s->ev) + n) & 511, 0))
		count(PODMAP_C_RINGBUF_DROPPED);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int podmap_openat(struct sys_enter_open_args *ctx)
{
	return open_policy(ctx->filename, ctx->flags);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int podmap_openat2(struct sys_enter_open_args *ctx)
{
	/* openat2's third argument is struct open_how, whose first field is the flags. */
	__u64 flags = 0;
	bpf_probe_read_user(&flags, sizeof(flags), (void *)ctx->flags);
	return open_policy(ctx->filename, flags);
}

SEC("tracepoint/syscalls/sys_enter_open")
int podmap_open(struct sys_enter_legacy_open_args *ctx)
{
	return open_policy(ctx->filename, ctx->flags);
}

/*
 * BPF-LSM: where the kernel loads these, deny rules return EPERM before the exec or open
 * happens. podmapd probes by loading them; where that fails (no BPF-LSM, as on VMs that refuse
 * trampolines) deny rules fall back to kill or audit, and status says which.
 */
static __always_inline int lsm_deny(void *rules, const char *path, int from_user, __u32 want)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct podmap_policy_state *st = policy_state();
	struct podmap_path_key *key;
	struct podmap_rule_set *set;
	struct podmap_task_ids ids = {};
	struct podmap_member_key mk = {};
	__u32 zero = 0;
	int i;

	if (!st)
		return 0;
	key = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!key)
		return 0;
	task_ids(task, &ids);
	if (!ids.container_cgid)
		return 0;
	if (bpf_probe_read_kernel_str(key->path, PODMAP_POLICY_PATH_MAX, path) <= 0)
		return 0;
	key->prefixlen = PODMAP_POLICY_PATH_MAX * 8;
	set = bpf_map_lookup_elem(rules, key);
	if (!set)
		return 0;
	mk.hierarchy = ids.container_hier;
	mk.cgroup_id = ids.container_cgid;
	for (i = 0; i < PODMAP_RULE_REFS; i++) {
		if (i >= set->count)
			break;
		if (set->refs[i].action != PODMAP_ACT_DENY)
			continue;
		if (want && !(set->refs[i].flags & want))
			continue;
		mk.policy_id = set->refs[i].policy_id;
		if (bpf_map_lookup_elem(&podmap_policy_members, &mk)) {
			count(PODMAP_C_POLICY_HITS);
			return -1; /* -EPERM */
		}
	}
	return 0;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(podmap_lsm_exec, struct linux_binprm *bprm, int ret)
{
	struct podmap_policy_state *st = policy_state();

	if (ret || !st || !st->exec_rules)
		return ret;
	return lsm_deny(&podmap_exec_rules, BPF_CORE_READ(bprm, filename), 0, 0);
}

SEC("lsm/file_open")
int BPF_PROG(podmap_lsm_open, struct file *file, int ret)
{
	struct podmap_policy_state *st = policy_state();
	struct podmap_path_key *key;
	__u32 zero = 0, want = 0, fl;

	if (ret || !st || !st->open_rules)
		return ret;
	key = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!key)
		return 0;
	if (bpf_d_path(&file->f_path, (char *)key->path, PODMAP_POLICY_PATH_MAX) <= 0)
		return 0;
	fl = BPF_CORE_READ(file, f_flags);
	if ((fl & O_ACCMODE) != O_WRONLY)
		want |= PODMAP_RF_READ;
	if ((fl & O_ACCMODE) != 0)
		want |= PODMAP_RF_WRITE;
	return lsm_deny(&podmap_open_rules, (const char *)key->path, 0, want);
}
