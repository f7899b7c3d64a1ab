/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Who a task is: its pids and uid, its cgroup v2 id and its id in the tracked v1 controller, and
 * the mapped container cgroup it lives in or below (docs/decisions.md #4).
 */
#ifndef PODMAP_TASK_IDS_BPF_H
#define PODMAP_TASK_IDS_BPF_H

#include "kernel.bpf.h"
#include "maps.bpf.h"

/* Set by the loader before load (bpf/src/programs.rs). */
const volatile __u32 v1_controller = PODMAP_V1_NONE; /* enum podmap_v1_controller */
const volatile __s32 v1_hierarchy_id = -1;           /* kernel hierarchy id of that controller */

/* Whether any writer ever keyed a record by a v1 id: if not, the v1 walk cannot find one. */
static __always_inline int v1_records(void)
{
	__u32 idx = PODMAP_C_V1_RECORDS;
	__u64 *v = bpf_map_lookup_elem(&podmap_counters, &idx);
	return v && *v;
}

static __always_inline int v1_ssid(void)
{
	switch (v1_controller) {
	case PODMAP_V1_MEMORY: return bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	case PODMAP_V1_PIDS: return bpf_core_enum_value(enum cgroup_subsys_id, pids_cgrp_id);
	case PODMAP_V1_CPU: return bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
	case PODMAP_V1_CPUSET: return bpf_core_enum_value(enum cgroup_subsys_id, cpuset_cgrp_id);
	case PODMAP_V1_CPUACCT: return bpf_core_enum_value(enum cgroup_subsys_id, cpuacct_cgrp_id);
	case PODMAP_V1_BLKIO: return bpf_core_enum_value(enum cgroup_subsys_id, io_cgrp_id);
	case PODMAP_V1_DEVICES: return bpf_core_enum_value(enum cgroup_subsys_id, devices_cgrp_id);
	case PODMAP_V1_FREEZER: return bpf_core_enum_value(enum cgroup_subsys_id, freezer_cgrp_id);
	default: return -1;
	}
}

static __always_inline struct cgroup *v1_cgroup(struct task_struct *task)
{
	int ssid = v1_ssid();
	struct css_set *cset;
	struct cgroup_subsys_state *css = 0;

	if (ssid < 0 || ssid >= CSS_SET_SUBSYS_SLOTS)
		return 0;
	cset = task->cgroups;
	if (!cset)
		return 0;
	/* Plain loads: the slot is fixed at load (the controller is read-only data), so the
	 * verifier sees a constant offset. */
	css = cset->subsys[ssid];
	if (!css)
		return 0;
	return css->cgroup;
}

/*
 * Id of `cg`'s ancestor at `level` (0 the root), read from the cgroup's own ancestor array: for
 * v1 cgroups, which have no helper, and for a cgroup other than the current task's.
 */
static __always_inline __u64 ancestor_id(struct cgroup *cg, int level)
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

	level = task->cgroups->dfl_cgrp->level;
	key.hierarchy = PODMAP_HIER_V2;
	key.id = ids->cgroup_v2;
	if (level >= 1 && bpf_map_lookup_elem(&podmap_containers, &key)) {
		ids->container_cgid = key.id;
	} else {
		top = level - 1 < PODMAP_MAX_CONTAINER_LEVEL ? level - 1
							     : PODMAP_MAX_CONTAINER_LEVEL;
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
	ids->cgroup_v1 = cg->kn->id;
	if (ids->container_cgid || !v1_records())
		return;
	/* The same search in the tracked v1 hierarchy, which has no helper: the cgroup's own
	 * ancestor array, indexed by level like the helper's. */
	level = cg->level;
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
		key.id = ancestor_id(cg, top - i);
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
	ids->ppid = task->real_parent->tgid;
	ids->uid = (__u32)bpf_get_current_uid_gid();
	ids->_pad = 0;
}

/*
 * The task's credentials (struct podmap_creds). At sched_process_exec the exec has committed
 * its new credentials, so these are the ones the new program runs with.
 */
static __always_inline void task_creds(struct task_struct *task, struct podmap_creds *c)
{
	const struct cred *cred = task->real_cred;

	c->uid = cred->uid.val;
	c->euid = cred->euid.val;
	c->gid = cred->gid.val;
	c->egid = cred->egid.val;
	/* The field whole, whichever of its two layouts this kernel has (kernel.bpf.h). */
	bpf_core_read(&c->cap_effective, sizeof(c->cap_effective), &cred->cap_effective);
}

/*
 * Whether `task`'s parent lives in the container `ids` attributes the task to: the parent's
 * cgroup (in the container's hierarchy) is the task's own, or has the container's cgroup among
 * its ancestors (a sub-cgroup the container made for itself). A parent elsewhere is the runtime:
 * its shim for the container's init, its exec for a process it put into the container.
 */
static __always_inline int parent_in_container(struct task_struct *task,
					       const struct podmap_task_ids *ids)
{
	struct task_struct *parent = task->real_parent;
	struct cgroup *cg;
	__u64 own;
	int level, i;

	if (ids->container_hier == PODMAP_HIER_V2) {
		cg = parent->cgroups->dfl_cgrp;
		own = ids->cgroup_v2;
	} else {
		cg = v1_cgroup(parent);
		own = ids->cgroup_v1;
	}
	if (!cg)
		return 0;
	if (cg->kn->id == own)
		return 1;
	level = cg->level;
	for (i = 1; i <= PODMAP_MAX_CONTAINER_LEVEL; i++) {
		if (i > level)
			break;
		if (ancestor_id(cg, i) == ids->container_cgid)
			return 1;
	}
	return 0;
}

/*
 * The process through which the exec'ing task's line came into its container (see
 * podmap_exec_event.entry_pid). A line already inside keeps its entry, whoever the parent is now:
 * a process orphaned and reparented (to the container's init, to a pause process, to the shim)
 * stays what it was. Otherwise the task is an entry itself when its parent is outside, else it
 * takes its parent's entry, if known. `own` is the task's table entry before this exec (copied
 * from its parent at fork, or left by its previous exec).
 */
static __always_inline __u32 entry_pid(struct task_struct *task, const struct podmap_task_ids *ids,
				       const struct podmap_proc *own,
				       const struct podmap_proc *parent)
{
	if (!ids->container_cgid)
		return 0;
	if (own && own->entry_pid)
		return own->entry_pid;
	if (!parent_in_container(task, ids))
		return ids->pid;
	return parent ? parent->entry_pid : 0;
}

#endif
