/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The few kernel structures the programs read, with only the fields used. CO-RE relocates every
 * access against the running kernel's BTF, so offsets here do not matter, names do.
 */
#ifndef PODMAP_KERNEL_BPF_H
#define PODMAP_KERNEL_BPF_H

#include <linux/types.h>

#define __co_re __attribute__((preserve_access_index))

typedef struct {
	int counter;
} __co_re atomic_t;

struct kernfs_node {
	__u64 id;
} __co_re;

struct cgroup;

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys_state *parent;
} __co_re;

struct cgroup {
	struct cgroup_subsys_state self;
	int level;
	struct kernfs_node *kn;
	/* ancestors[l] is the ancestor at level l (0 the root, `level` itself); Linux 6.1+. */
	struct cgroup *ancestors[0];
	/* Before 6.1: the ancestors' ids (their kn->id), indexed the same way. */
	__u64 ancestor_ids[0];
} __co_re;

/* Values are relocated with bpf_core_enum_value; the numbers here are placeholders. */
enum cgroup_subsys_id {
	cpuset_cgrp_id,
	cpu_cgrp_id,
	cpuacct_cgrp_id,
	io_cgrp_id,
	memory_cgrp_id,
	devices_cgrp_id,
	freezer_cgrp_id,
	pids_cgrp_id,
};

/*
 * Bound on a subsystem id read through css_set.subsys: the kernel's array has
 * CGROUP_SUBSYS_COUNT slots, at most this many (a placeholder: CO-RE relocates the field, not
 * its length).
 */
#define CSS_SET_SUBSYS_SLOTS 16

struct css_set {
	struct cgroup_subsys_state *subsys[CSS_SET_SUBSYS_SLOTS];
	struct cgroup *dfl_cgrp;
} __co_re;

struct signal_struct {
	atomic_t live;
	int group_exit_code;
} __co_re;

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __co_re;

struct qstr {
	union {
		struct {
			__u32 hash;
			__u32 len;
		};
		__u64 hash_len;
	};
	const unsigned char *name;
} __co_re;

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} __co_re;

struct vfsmount {
	struct dentry *mnt_root;
} __co_re;

struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __co_re;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __co_re;

struct fs_struct {
	struct path root;
	struct path pwd;
} __co_re;

/* uid_t and gid_t as the kernel keeps them: the ids of the initial user namespace. */
typedef struct {
	__u32 val;
} __co_re kuid_t;

typedef struct {
	__u32 val;
} __co_re kgid_t;

/*
 * A capability set, 64 bits wide: `__u64 val` since Linux 6.3, `__u32 cap[2]` before (the same
 * bytes, low word first). The programs read it whole, by the field that holds it, never by its
 * members, so either layout relocates.
 */
typedef struct {
	__u64 val;
} kernel_cap_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
	kuid_t euid;
	kgid_t egid;
	kernel_cap_t cap_effective;
} __co_re;

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct signal_struct *signal;
	struct css_set *cgroups;
	struct fs_struct *fs;
	struct mm_struct *mm;
	const struct cred *real_cred;
} __co_re;

struct file {
	struct path f_path;
	unsigned int f_flags;
} __co_re;

struct linux_binprm {
	struct file *file;
	const char *filename;
} __co_re;

#endif
