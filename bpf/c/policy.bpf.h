/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Policies in the kernel: what an open asks for, and the one rule walk that decides which rule
 * acts on a task's exec or open, used by the tracepoint programs (kill or audit) and by the LSM
 * programs (refuse). docs/decisions.md #12 to #14.
 */
#ifndef PODMAP_POLICY_BPF_H
#define PODMAP_POLICY_BPF_H

#include "maps.bpf.h"
#include "events.bpf.h"
#include "task_ids.bpf.h"

/* The signal a kill rule sends (the same on every architecture). */
#define SIGKILL 9
/* An LSM program's refusal. */
#define EPERM 1

/* Open flags (octal, as in the kernel's uapi asm-generic/fcntl.h). */
#define O_ACCMODE 3
#define O_WRONLY 1
#define O_RDWR 2
#define O_CREAT 0100
#define O_TRUNC 01000

/* The path being matched, as a rule-trie key: one buffer per program (events.bpf.h says why). */
PODMAP_SCRATCH(exec_path_scratch, struct podmap_path_key);
PODMAP_SCRATCH(open_path_scratch, struct podmap_path_key);
PODMAP_SCRATCH(openat_path_scratch, struct podmap_path_key);
PODMAP_SCRATCH(openat2_path_scratch, struct podmap_path_key);
PODMAP_SCRATCH(lsm_exec_path_scratch, struct podmap_path_key);
PODMAP_SCRATCH(lsm_open_path_scratch, struct podmap_path_key);

/* Verifier bound on the index into a rule set's refs. */
#define RULE_REF_MASK (PODMAP_RULE_REFS - 1)
_Static_assert(((RULE_REF_MASK + 1) & RULE_REF_MASK) == 0, "a mask is 2^n - 1");
_Static_assert(RULE_REF_MASK + 1 == PODMAP_RULE_REFS, "the mask covers the refs exactly");

static __always_inline struct podmap_policy_state *policy_state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&podmap_policy_state, &zero);
}

/*
 * Which open rules apply to an open with `flags`: read rules unless it is write-only; write rules
 * when it opens for writing, and also when it creates or truncates (O_CREAT, O_TRUNC): those
 * change the file system whatever the access mode, and O_RDONLY|O_TRUNC does truncate on Linux.
 * The one definition for the tracepoints (the flags as passed) and the LSM (file->f_flags, which
 * still carry O_CREAT and O_TRUNC at file_open).
 */
static __always_inline __u32 open_access(__u64 flags)
{
	__u32 want = 0;

	if ((flags & O_ACCMODE) != O_WRONLY)
		want |= PODMAP_RF_READ;
	if ((flags & O_ACCMODE) == O_WRONLY || (flags & O_ACCMODE) == O_RDWR ||
	    (flags & (O_CREAT | O_TRUNC)))
		want |= PODMAP_RF_WRITE;
	return want;
}

struct rule_walk {
	struct podmap_rule_set *set;
	struct podmap_member_key key;
	__u32 want;       /* opens: PODMAP_RF_READ and/or PODMAP_RF_WRITE; 0 for execs */
	__u32 lsm_active; /* the LSM programs are attached: deny is enforced there */
	__u32 at_lsm;     /* the walk of an LSM program: only deny rules act, as refusals */
	struct podmap_policy_hit hit;
};

/* How `ref` acts where the walk runs, PODMAP_MODE_NONE if not at all. */
static __always_inline __u8 rule_mode(const struct podmap_rule_ref *ref, const struct rule_walk *w)
{
	if (w->at_lsm)
		return ref->action == PODMAP_ACT_DENY ? PODMAP_MODE_LSM : PODMAP_MODE_NONE;
	if (ref->action == PODMAP_ACT_KILL)
		return PODMAP_MODE_KILL;
	if (ref->action == PODMAP_ACT_DENY) {
		if (w->lsm_active)
			return PODMAP_MODE_NONE; /* the LSM program already refused it */
		return (ref->flags & PODMAP_RF_FALLBACK_KILL) ? PODMAP_MODE_KILL
							      : PODMAP_MODE_AUDIT;
	}
	return PODMAP_MODE_AUDIT;
}

/*
 * One rule of the matched rule set, under bpf_loop: applies when the container is a member of the
 * rule's policy (and, for opens, the access matches). Kill beats audit, the first of a kind wins;
 * a kill or a refusal ends the walk.
 */
static long rule_step(__u64 i, struct rule_walk *w)
{
	struct podmap_rule_ref ref;
	__u8 mode;

	if (i >= w->set->count || i >= PODMAP_RULE_REFS)
		return 1;
	ref = w->set->refs[i & RULE_REF_MASK];
	if (w->want && !(ref.flags & w->want))
		return 0;
	mode = rule_mode(&ref, w);
	if (mode == PODMAP_MODE_NONE)
		return 0;
	w->key.policy_id = ref.policy_id;
	if (!bpf_map_lookup_elem(&podmap_policy_members, &w->key))
		return 0;
	if (ref.action == PODMAP_ACT_DENY && mode == PODMAP_MODE_AUDIT)
		count(PODMAP_C_POLICY_DENY_AUDITED);
	if (w->hit.mode == PODMAP_MODE_AUDIT && mode == PODMAP_MODE_AUDIT)
		return 0;
	w->hit.policy_id = ref.policy_id;
	w->hit.rule_index = ref.rule_index;
	w->hit.action = ref.action;
	w->hit.mode = mode;
	return mode != PODMAP_MODE_AUDIT;
}

/*
 * Looks `key` up in `rules` and walks the rule set found for the task's container: `hit` is the
 * rule that acts, mode PODMAP_MODE_NONE when none does.
 */
static __always_inline void rule_walk(void *rules, struct podmap_path_key *key,
				      const struct podmap_task_ids *ids, __u32 want,
				      __u32 lsm_active, __u32 at_lsm, struct podmap_policy_hit *hit)
{
	struct rule_walk w = {};

	w.set = bpf_map_lookup_elem(rules, key);
	if (!w.set)
		return;
	if (!at_lsm && w.set->count > PODMAP_RULE_REFS)
		count(PODMAP_C_POLICY_REFS_TRUNCATED);
	w.key.hierarchy = ids->container_hier;
	w.key.cgroup_id = ids->container_cgid;
	w.want = want;
	w.lsm_active = lsm_active;
	w.at_lsm = at_lsm;
	bpf_loop(PODMAP_RULE_REFS, rule_step, &w, 0);
	*hit = w.hit;
}

/* The tracepoints' decision: which policy acts on this exec or open; a kill is sent here. */
static __always_inline void policy_match(void *rules, struct podmap_path_key *key,
					 struct podmap_task_ids *ids, __u32 want,
					 struct podmap_policy_state *st,
					 struct podmap_policy_hit *hit)
{
	rule_walk(rules, key, ids, want, st->lsm_active, 0, hit);
	if (hit->mode != PODMAP_MODE_NONE)
		count(PODMAP_C_POLICY_HITS);
	if (hit->mode == PODMAP_MODE_KILL) {
		count(PODMAP_C_POLICY_KILLS);
		/* At exec the new program dies before its first instruction; at open before the
		 * call returns to user space. */
		bpf_send_signal(SIGKILL);
	}
}

/*
 * BPF-LSM: where the kernel loads these programs, deny rules return EPERM before the exec or open
 * happens. podmapd probes by loading them; where that fails (no BPF-LSM, as on VMs that refuse
 * trampolines) deny rules fall back to kill or audit, and status says which. `key` holds the
 * path; returns the LSM verdict.
 */
static __always_inline int lsm_deny(void *rules, struct podmap_path_key *key, __u32 want)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct podmap_task_ids ids = {};
	struct podmap_policy_hit hit = {};

	task_ids(task, &ids);
	if (!ids.container_cgid)
		return 0;
	key->prefixlen = PODMAP_POLICY_PATH_MAX * 8;
	rule_walk(rules, key, &ids, want, 1, 1, &hit);
	if (hit.mode != PODMAP_MODE_LSM)
		return 0;
	count(PODMAP_C_POLICY_HITS);
	return -EPERM;
}

#endif
