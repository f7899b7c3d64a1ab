/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The pinned maps, defined once. Included by the programs (podmap.bpf.c) and by the maps-only
 * object (maps.bpf.c) that the runtime plugins load to create or reuse the pins without loading
 * any program.
 */
#ifndef PODMAP_MAPS_BPF_H
#define PODMAP_MAPS_BPF_H

#include "podmap.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODMAP_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct podmap_cgroup_key);
	__type(value, struct podmap_container);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podmap_containers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODMAP_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct podmap_cgroup_key);
	__type(value, struct podmap_container_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podmap_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PODMAP_COUNTERS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podmap_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PODMAP_MAX_MEMBERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct podmap_member_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podmap_policy_members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PODMAP_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct podmap_path_key);
	__type(value, struct podmap_rule_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podmap_exec_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PODMAP_MAX_RULES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct podmap_path_key);
	__type(value, struct podmap_rule_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podmap_open_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct podmap_policy_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} podmap_policy_state SEC(".maps");

#endif
