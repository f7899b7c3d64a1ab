//! Exponential backoff with jitter between failed list or watch attempts.
//!
//! The same shape as client-go's reflector (and kube-runtime's `DefaultBackoff`: 800 ms doubling
//! to 30 s), with bounds the tests can shrink. Jitter spreads the relists of a whole cluster's
//! nodes after an API server restart instead of sending them all at once.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt: the current step plus up to 50 % jitter; doubles the
    /// step up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        let jitter = step.mul_f64(random_fraction() * 0.5);
        (step + jitter).min(self.max)
    }

    /// After a success: the next failure waits the minimum again.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A fraction in [0, 1) without a random number crate: std seeds each `RandomState` randomly.
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, step) in delays.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step && *delay <= (step.mul_f64(1.5)).min(Duration::from_secs(1)),
                "{delays:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(151));
    }
}
