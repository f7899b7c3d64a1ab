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
	S(podmap_member_key); F(podmap_member_key, policy_id); F(podmap_member_key, hierarchy); F(podmap_member_key, cgroup_id);
	S(podmap_path_key); F(podmap_path_key, prefixlen); F(podmap_path_key, path);
	S(podmap_rule_ref); F(podmap_rule_ref, policy_id); F(podmap_rule_ref, rule_index); F(podmap_rule_ref, action); F(podmap_rule_ref, flags);
	S(podmap_rule_set); F(podmap_rule_set, count); F(podmap_rule_set, refs);
	S(podmap_policy_state); F(podmap_policy_state, exec_rules); F(podmap_policy_state, open_rules); F(podmap_policy_state, lsm_active);
	S(podmap_policy_hit); F(podmap_policy_hit, policy_id); F(podmap_policy_hit, rule_index); F(podmap_policy_hit, action); F(podmap_policy_hit, mode);
	S(podmap_open_event); F(podmap_open_event, hdr); F(podmap_open_event, ids); F(podmap_open_event, policy); F(podmap_open_event, open_flags); F(podmap_open_event, path_len);
	S(podmap_event_header); F(podmap_event_header, type); F(podmap_event_header, flags); F(podmap_event_header, ktime);
	S(podmap_exec_event); F(podmap_exec_event, hdr); F(podmap_exec_event, ids); F(podmap_exec_event, policy); F(podmap_exec_event, start_time);
	F(podmap_exec_event, parent_exec_ktime); F(podmap_exec_event, filename_len); F(podmap_exec_event, cwd_len);
	F(podmap_exec_event, args_len);
	S(podmap_exit_event); F(podmap_exit_event, hdr); F(podmap_exit_event, ids); F(podmap_exit_event, exec_ktime);
	F(podmap_exit_event, exit_code); F(podmap_exit_event, comm);
	S(podmap_cgroup_event); F(podmap_cgroup_event, hdr); F(podmap_cgroup_event, id);
	F(podmap_cgroup_event, hierarchy_id); F(podmap_cgroup_event, level); F(podmap_cgroup_event, path_len);
	C(PODMAP_FILENAME_MAX); C(PODMAP_CWD_MAX); C(PODMAP_ARGS_MAX); C(PODMAP_CGROUP_PATH_MAX);
	C(PODMAP_META_MAX); C(PODMAP_MAX_CONTAINERS); C(PODMAP_MAX_CONTAINER_LEVEL); C(PODMAP_COUNTERS);
	C(PODMAP_POLICY_PATH_MAX); C(PODMAP_RULE_REFS); C(PODMAP_MAX_MEMBERS); C(PODMAP_MAX_RULES); C(PODMAP_EV_POLICY_OPEN);
	C(PODMAP_ACT_NONE); C(PODMAP_ACT_AUDIT); C(PODMAP_ACT_KILL); C(PODMAP_ACT_DENY);
	C(PODMAP_MODE_NONE); C(PODMAP_MODE_AUDIT); C(PODMAP_MODE_KILL); C(PODMAP_MODE_LSM);
	C(PODMAP_RF_FALLBACK_KILL); C(PODMAP_RF_READ); C(PODMAP_RF_WRITE);
	C(PODMAP_HIER_V2); C(PODMAP_HIER_V1); C(PODMAP_CF_SANDBOX); C(PODMAP_CF_REMOVING);
	C(PODMAP_EV_EXEC); C(PODMAP_EV_EXIT); C(PODMAP_EV_CGROUP_MKDIR); C(PODMAP_EV_CGROUP_RMDIR);
	C(PODMAP_PF_ARGS_TRUNCATED); C(PODMAP_PF_PROCFS_SCAN); C(PODMAP_PF_PATH_UNREADABLE); C(PODMAP_PF_CWD_TRUNCATED);
	C(PODMAP_C_EXEC); C(PODMAP_C_EXIT); C(PODMAP_C_RINGBUF_DROPPED); C(PODMAP_C_ARGS_TRUNCATED);
	C(PODMAP_C_CWD_TRUNCATED); C(PODMAP_C_PATH_UNREADABLE); C(PODMAP_C_CGROUP_EVENTS); C(PODMAP_C_PROC_TABLE_FULL);
	C(PODMAP_C_POLICY_HITS); C(PODMAP_C_POLICY_KILLS); C(PODMAP_C_POLICY_DENY_AUDITED); C(PODMAP_C_OPEN_PATH_UNREADABLE);
	C(PODMAP_C_POLICY_REFS_TRUNCATED); C(PODMAP_C_V1_RECORDS); C(PODMAP_C_MEMBERSHIP_WRITES); C(PODMAP_C_MEMBERSHIP_ERRORS);
	C(PODMAP_C_STORE_RECOVERED); C(PODMAP_C_STORE_TEMPORARY); C(PODMAP_C_DEEP_CONTAINERS);
	C(PODMAP_C_RECORDS_WRITTEN); C(PODMAP_C_RECORDS_REMOVED); C(PODMAP_C_RECORDS_EXPIRED);
	C(PODMAP_C_MAP_WRITE_ERRORS); C(PODMAP_C_STORE_ERRORS); C(PODMAP_C_CGROUP_UNRESOLVED);
	C(PODMAP_C_NRI_EVENTS); C(PODMAP_C_NRI_MAPPED); C(PODMAP_C_NRI_FAILURES); C(PODMAP_C_NRI_SLOW_REPLIES);
	C(PODMAP_C_HOOK_RUNS); C(PODMAP_C_HOOK_MAPPED); C(PODMAP_C_HOOK_FAILURES); C(PODMAP_C_HOOK_TIMEOUTS);
	C(PODMAP_C_HOOK_BAD_INPUT); C(PODMAP_C_LATENCY_BUCKET0); C(PODMAP_C_LATENCY_BUCKETS);
	return 0;
}
