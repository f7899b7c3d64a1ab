// SPDX-License-Identifier: Apache-2.0
/* Host program: prints every shared layout of podmap.h, for the Rust layout test. */
#include <stddef.h>
#include <stdio.h>
#include "podmap.h"

#define S(t) printf("size %s %zu\n", #t, sizeof(struct t))
#define F(t, f) printf("field %s.%s %zu %zu\n", #t, #f, offsetof(struct t, f), sizeof(((struct t *)0)->f))
#define C(n) printf("const %s %lld\n", #n, (long long)(n))

int main(void)
{
	S(podmap_cgroup_key); F(podmap_cgroup_key, id); F(podmap_cgroup_key, hierarchy);
	S(podmap_container); F(podmap_container, created_ns); F(podmap_container, removed_ns); F(podmap_container, flags); F(podmap_container, writer);
	S(podmap_container_meta); F(podmap_container_meta, len); F(podmap_container_meta, data);
	S(podmap_proc); F(podmap_proc, exec_ktime); F(podmap_proc, flags);
	S(podmap_task_ids); F(podmap_task_ids, cgroup_v2); F(podmap_task_ids, cgroup_v1);
	F(podmap_task_ids, container_cgid); F(podmap_task_ids, container_hier); F(podmap_task_ids, pid);
	F(podmap_task_ids, tid); F(podmap_task_ids, ppid); F(podmap_task_ids, uid);
	S(podmap_event_header); F(podmap_event_header, type); F(podmap_event_header, flags); F(podmap_event_header, ktime);
	S(podmap_exec_event); F(podmap_exec_event, hdr); F(podmap_exec_event, ids); F(podmap_exec_event, start_time);
	F(podmap_exec_event, parent_exec_ktime); F(podmap_exec_event, filename_len); F(podmap_exec_event, cwd_len);
	F(podmap_exec_event, args_len);
	S(podmap_exit_event); F(podmap_exit_event, hdr); F(podmap_exit_event, ids); F(podmap_exit_event, exec_ktime);
	F(podmap_exit_event, exit_code);
	S(podmap_cgroup_event); F(podmap_cgroup_event, hdr); F(podmap_cgroup_event, id);
	F(podmap_cgroup_event, hierarchy_id); F(podmap_cgroup_event, level); F(podmap_cgroup_event, path_len);
	C(PODMAP_FILENAME_MAX); C(PODMAP_CWD_MAX); C(PODMAP_ARGS_MAX); C(PODMAP_CGROUP_PATH_MAX);
	C(PODMAP_META_MAX); C(PODMAP_MAX_CONTAINERS); C(PODMAP_COUNTERS);
	C(PODMAP_HIER_V2); C(PODMAP_HIER_V1); C(PODMAP_CF_SANDBOX); C(PODMAP_CF_REMOVING);
	C(PODMAP_EV_EXEC); C(PODMAP_EV_EXIT); C(PODMAP_EV_CGROUP_MKDIR); C(PODMAP_EV_CGROUP_RMDIR);
	C(PODMAP_PF_ARGS_TRUNCATED); C(PODMAP_PF_PROCFS_SCAN); C(PODMAP_PF_PATH_UNREADABLE); C(PODMAP_PF_CWD_TRUNCATED);
	C(PODMAP_C_EXEC); C(PODMAP_C_EXIT); C(PODMAP_C_RINGBUF_DROPPED); C(PODMAP_C_ARGS_TRUNCATED);
	C(PODMAP_C_CWD_TRUNCATED); C(PODMAP_C_PATH_UNREADABLE); C(PODMAP_C_CGROUP_EVENTS); C(PODMAP_C_PROC_TABLE_FULL);
	C(PODMAP_C_RECORDS_WRITTEN); C(PODMAP_C_RECORDS_REMOVED); C(PODMAP_C_RECORDS_EXPIRED);
	C(PODMAP_C_MAP_WRITE_ERRORS); C(PODMAP_C_STORE_ERRORS); C(PODMAP_C_CGROUP_UNRESOLVED);
	C(PODMAP_C_NRI_EVENTS); C(PODMAP_C_NRI_MAPPED); C(PODMAP_C_NRI_FAILURES); C(PODMAP_C_NRI_SLOW_REPLIES);
	C(PODMAP_C_HOOK_RUNS); C(PODMAP_C_HOOK_MAPPED); C(PODMAP_C_HOOK_FAILURES); C(PODMAP_C_HOOK_TIMEOUTS);
	C(PODMAP_C_HOOK_BAD_INPUT); C(PODMAP_C_LATENCY_BUCKET0); C(PODMAP_C_LATENCY_BUCKETS);
	return 0;
}
