//! Deadlines from caller-given durations. `Instant + Duration` panics on overflow, and a
//! duration can mean "no limit" (`Duration::MAX`): such a deadline is a century away instead.

use std::time::{Duration, Instant};

/// A century: later than any wait here, early enough never to overflow an `Instant`.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d`, or a century from now when that cannot be represented.
pub fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or(now + FAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unrepresentable_deadline_is_far_away_not_a_panic() {
        assert!(after(Duration::MAX) > Instant::now() + Duration::from_secs(3600 * 24 * 365));
        let t = after(Duration::from_millis(5));
        assert!(
            t > Instant::now() - Duration::from_secs(1)
                && t < Instant::now() + Duration::from_secs(1)
        );
    }
}
