// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/* Maps only: loaded by the runtime plugins to create or reuse the pinned maps. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
