//! podmapd's own counters (the kernel's and the plugins' live in the pinned counters map).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use podmap_proto::status::PolicyActionCount;

#[derive(Debug, Default)]
pub struct Stats {
    pub exec: AtomicU64,
    pub exit: AtomicU64,
    pub cgroup: AtomicU64,
    pub policy: AtomicU64,
    pub decode_errors: AtomicU64,
    pub attributed_container: AtomicU64,
    pub attributed_host: AtomicU64,
    pub attributed_unknown: AtomicU64,
    pub held: AtomicU64,
    pub held_timed_out: AtomicU64,
    /// Held events sent on before their mapping or their time because a hold bound was
    /// reached (docs/decisions.md #29): `unknown`, not lost.
    pub held_released_early: AtomicU64,
    /// Events held now, and the most ever held at once.
    pub held_now: AtomicU64,
    pub held_peak: AtomicU64,
    /// Events of cgroups named like a container's outside every pod parent: attributed to the
    /// host, since anyone who can make a cgroup there chooses its name.
    pub shaped_outside_pod_parents: AtomicU64,
    /// `unknown` events whose container id the pod cache has under another pod than the path
    /// names: no pod data joined.
    pub unknown_pod_mismatch: AtomicU64,
    /// Container metadata blobs in the map that did not parse (a writer bug or version skew).
    pub meta_corrupt: AtomicU64,
    /// Execs not kept in the process table because it was full (their exits lose the binary).
    pub procs_untracked: AtomicU64,
    /// The event reader fell asleep (idle: no timer), was woken by a record, and found records
    /// its slow look caught instead (submitted as it fell asleep: late, not lost).
    pub reader_sleeps: AtomicU64,
    pub reader_woken: AtomicU64,
    pub reader_late: AtomicU64,
    /// Records found queued in the pinned ring buffer at start (produced while no podmapd read
    /// it, or during this one's start), read before the socket opened: no client received them.
    pub backlog_at_start: AtomicU64,
    /// Whether the reader sleeps now.
    pub reader_asleep: AtomicBool,
    /// Metrics connections turned away over the cap (shared with the metrics endpoint).
    pub metrics_refused: std::sync::Arc<AtomicU64>,
    /// Kernel timestamp to hand-off to clients, microseconds, log2 buckets, and their sum.
    pub latency_us: [AtomicU64; 32],
    pub latency_sum_us: AtomicU64,
    /// Policy events handed on, by (policy, action, mode): rare, so a lock is cheap.
    pub policy_actions: Mutex<BTreeMap<(String, String, String), u64>>,
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn record_latency(&self, micros: u64) {
        let b = (64 - micros.leading_zeros()).min(31) as usize;
        self.latency_us[b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts one policy event.
    pub fn policy_action(&self, policy: &str, action: &str, mode: &str) {
        let mut counts = self
            .policy_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A storm of kills or denials counts on a known key: no allocation for it.
        if let Some((_, n)) = counts
            .iter_mut()
            .find(|((p, a, m), _)| p == policy && a == action && m == mode)
        {
            *n += 1;
            return;
        }
        counts.insert(
            (policy.to_string(), action.to_string(), mode.to_string()),
            1,
        );
    }

    /// The policy events counted, sorted by policy, action and mode.
    pub fn policy_actions(&self) -> Vec<PolicyActionCount> {
        let counts = self
            .policy_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .map(|((policy, action, mode), count)| PolicyActionCount {
                policy: policy.clone(),
                action: action.clone(),
                mode: mode.clone(),
                count: *count,
            })
            .collect()
    }

    pub fn latency_histogram(&self) -> Vec<u64> {
        self.latency_us
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

pub use podmap_bpf::maps::histogram_percentile;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_log2_buckets() {
        let mut h = vec![0u64; 32];
        h[3] = 98; // < 8 us
        h[10] = 2; // < 1024 us
        assert_eq!(histogram_percentile(&h, 0.5), Some(8));
        assert_eq!(histogram_percentile(&h, 0.98), Some(8));
        assert_eq!(histogram_percentile(&h, 0.99), Some(1024));
        assert_eq!(histogram_percentile(&[0; 32], 0.5), None);
    }
}
