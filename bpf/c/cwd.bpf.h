/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The exec record's cwd: the task's working directory read component by component, leaf first,
 * into the scratch record's tail right after the filename (the packed tail, podmap.h), across
 * mount points up to the task's root.
 */
#ifndef PODMAP_CWD_BPF_H
#define PODMAP_CWD_BPF_H

#include "kernel.bpf.h"
#include "events.bpf.h"

/* Most steps of one walk (components and mount crossings); deeper is marked truncated. */
#define CWD_MAX_STEPS 64

/*
 * Verifier bound on where the next component is written in the cwd. Each component is read with
 * the cwd's full size, so a long name may run past the cwd into where the args go (written after
 * the walk, excluded by the cwd length), never past the scratch buffer.
 */
#define CWD_OFF_MASK (PODMAP_CWD_MAX - 1)
_Static_assert(((CWD_OFF_MASK + 1) & CWD_OFF_MASK) == 0, "a mask is 2^n - 1");
_Static_assert(CWD_OFF_MASK + 1 == PODMAP_CWD_MAX, "the mask covers the cwd exactly");
_Static_assert(EXEC_CWD_BASE_MASK + CWD_OFF_MASK + PODMAP_CWD_MAX <= EXEC_SCRATCH_DATA,
	       "a component read at the last offset stays in the scratch buffer");

struct cwd_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	/* The exec program's own scratch record, passed in so the step has no buffer of its own. */
	struct exec_scratch *s;
	/* Where the cwd starts in the tail: right after the filename. */
	__u32 base;
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
	struct exec_scratch *s = w->s;
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
	if (w->off >= PODMAP_CWD_MAX - 1) {
		w->truncated = 1;
		return 1;
	}
	n = bpf_probe_read_kernel_str(s->data + (w->base & EXEC_CWD_BASE_MASK) +
					      (w->off & CWD_OFF_MASK),
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
static __always_inline __u32 read_cwd(struct task_struct *task, struct exec_scratch *s, __u32 base,
				      __u32 *flags)
{
	struct fs_struct *fs = task->fs;
	struct cwd_walk w = {};
	long steps;

	if (!fs)
		return 0;
	w.s = s;
	w.base = base;
	w.dentry = BPF_CORE_READ(fs, pwd.dentry);
	w.vfsmnt = BPF_CORE_READ(fs, pwd.mnt);
	w.root_dentry = BPF_CORE_READ(fs, root.dentry);
	w.root_mnt = BPF_CORE_READ(fs, root.mnt);
	w.mnt = (struct mount *)((char *)w.vfsmnt - bpf_core_field_offset(struct mount, mnt));
	steps = bpf_loop(CWD_MAX_STEPS, cwd_step, &w, 0);
	if (w.truncated || steps >= CWD_MAX_STEPS) {
		*flags |= PODMAP_PF_CWD_TRUNCATED;
		count(PODMAP_C_CWD_TRUNCATED);
	}
	return w.off > PODMAP_CWD_MAX ? PODMAP_CWD_MAX : w.off;
}

#endif
