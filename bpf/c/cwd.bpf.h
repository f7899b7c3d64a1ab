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

/*
 * Neighbouring pointer fields are read in one helper call where the kernel keeps them within
 * FIELD_SPAN_WORDS words of each other (every kernel podmap supports), else one call each: a
 * call costs more than the bytes it copies (`read_two`). The offsets are the kernel's (CO-RE),
 * so the verifier sees constants and keeps one of the two branches.
 */
#define FIELD_SPAN_WORDS 4

static __always_inline int near_fields(__u32 first, __u32 later)
{
	return later > first && (later - first) % 8 == 0 &&
	       later - first <= 8 * (FIELD_SPAN_WORDS - 1);
}

struct cwd_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	/* The current mount's root dentry: read once per mount, not once per component. */
	struct dentry *mnt_root;
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
 * The pointer-sized fields `first` and `later` bytes into `base` (a kernel structure): in one
 * read where they are near, else one each.
 */
static __always_inline void read_two(const void *base, __u32 first, __u32 later, __u64 *a, __u64 *b)
{
	__u64 words[FIELD_SPAN_WORDS] = {};

	if (near_fields(first, later)) {
		bpf_probe_read_kernel(words, later - first + 8, (const char *)base + first);
		*a = words[0];
		*b = words[(later - first) / 8];
	} else {
		bpf_probe_read_kernel(a, sizeof(*a), (const char *)base + first);
		bpf_probe_read_kernel(b, sizeof(*b), (const char *)base + later);
	}
}

/*
 * One step of the cwd walk, run under bpf_loop so the verifier checks it once. Writes the next
 * component (leaf first, NUL-terminated) into the scratch cwd region. The read has a constant
 * size: a long name may run into the args region, which is written after the walk and which the
 * cwd length excludes.
 */
static long cwd_step(__u64 i, struct cwd_walk *w)
{
	/* Locals, so CO-RE relocates only the kernel structures' fields, not the walk's. */
	struct dentry *dentry = w->dentry;
	struct mount *mnt = w->mnt;
	struct vfsmount *vfsmnt;
	struct exec_scratch *s = w->s;
	__u64 up, there;
	long n;

	if (dentry == w->root_dentry && w->vfsmnt == w->root_mnt)
		return 1;
	if (dentry == w->mnt_root) {
		/* The mount's parent and the dentry it is mounted on. */
		read_two(mnt, bpf_core_field_offset(struct mount, mnt_parent),
			 bpf_core_field_offset(struct mount, mnt_mountpoint), &up, &there);
		if (up == (__u64)mnt)
			return 1;
		w->dentry = (struct dentry *)there;
		w->mnt = (struct mount *)up;
		vfsmnt = (struct vfsmount *)(up + bpf_core_field_offset(struct mount, mnt));
		w->vfsmnt = vfsmnt;
		w->mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		return 0;
	}
	/* The dentry's parent and name. */
	read_two(dentry, bpf_core_field_offset(struct dentry, d_parent),
		 bpf_core_field_offset(struct dentry, d_name.name), &up, &there);
	if (up == (__u64)dentry)
		return 1;
	if (w->off >= PODMAP_CWD_MAX - 1) {
		w->truncated = 1;
		return 1;
	}
	n = bpf_probe_read_kernel_str(s->data + (w->base & EXEC_CWD_BASE_MASK) +
					      (w->off & CWD_OFF_MASK),
				      PODMAP_CWD_MAX, (const char *)there);
	if (n <= 0) {
		w->truncated = 1;
		return 1;
	}
	w->off += n;
	w->dentry = (struct dentry *)up;
	return 0;
}

/* Fills the scratch cwd region; crosses mount points up to the task's root. */
static __always_inline __u32 read_cwd(struct task_struct *task, struct exec_scratch *s, __u32 base,
				      __u32 *flags)
{
	struct fs_struct *fs = task->fs;
	__u32 root = bpf_core_field_offset(struct fs_struct, root);
	__u32 pwd = bpf_core_field_offset(struct fs_struct, pwd);
	struct cwd_walk w = {};
	struct vfsmount *vfsmnt;
	long steps;

	if (!fs)
		return 0;
	w.s = s;
	w.base = base;
	/* The root and the working directory, each a (mount, dentry) pair: one read where near. */
	if (pwd > root && pwd - root == 2 * sizeof(void *) &&
	    bpf_core_field_offset(struct path, mnt) == 0 &&
	    bpf_core_field_offset(struct path, dentry) == sizeof(void *)) {
		void *paths[4] = {};
		bpf_probe_read_kernel(paths, sizeof(paths), (char *)fs + root);
		w.root_mnt = paths[0];
		w.root_dentry = paths[1];
		w.vfsmnt = paths[2];
		w.dentry = paths[3];
	} else {
		w.dentry = BPF_CORE_READ(fs, pwd.dentry);
		w.vfsmnt = BPF_CORE_READ(fs, pwd.mnt);
		w.root_dentry = BPF_CORE_READ(fs, root.dentry);
		w.root_mnt = BPF_CORE_READ(fs, root.mnt);
	}
	vfsmnt = w.vfsmnt; /* a local: CO-RE relocates the kernel's fields, not the walk's */
	w.mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	w.mnt = (struct mount *)((char *)vfsmnt - bpf_core_field_offset(struct mount, mnt));
	steps = bpf_loop(CWD_MAX_STEPS, cwd_step, &w, 0);
	if (w.truncated || steps >= CWD_MAX_STEPS) {
		*flags |= PODMAP_PF_CWD_TRUNCATED;
		count(PODMAP_C_CWD_TRUNCATED);
	}
	return w.off > PODMAP_CWD_MAX ? PODMAP_CWD_MAX : w.off;
}

#endif
