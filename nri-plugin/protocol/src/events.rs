//! The event subscription mask of ConfigureResponse.

use crate::api::Event;

/// Every event NRI v0.6.1 (containerd 1.7) knows: bits of later events (UPDATE_POD_SANDBOX and
/// on, from v0.10) make it reject the plugin, so a subscription never reaches past them.
pub const VALID_EVENTS: i32 = 0x7FF;

/// A set of events, as ConfigureResponse.events carries it: bit `E - 1` for event `E`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventMask(i32);

impl EventMask {
    /// The mask of `events`. `UNKNOWN` and `LAST` are not events and are left out.
    pub fn of(events: &[Event]) -> Self {
        let bits = events
            .iter()
            .map(|e| *e as i32)
            .filter(|&n| n >= 1 && (1 << (n - 1)) & VALID_EVENTS != 0)
            .fold(0, |acc, n| acc | (1 << (n - 1)));
        EventMask(bits)
    }

    pub fn bits(self) -> i32 {
        self.0
    }

    pub fn contains(self, event: Event) -> bool {
        let n = event as i32;
        (1..=31).contains(&n) && self.0 & (1 << (n - 1)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_the_event_numbers() {
        assert_eq!(EventMask::of(&[Event::RUN_POD_SANDBOX]).bits(), 0x1);
        assert_eq!(EventMask::of(&[Event::START_CONTAINER]).bits(), 0x20);
        assert_eq!(EventMask::of(&[Event::REMOVE_CONTAINER]).bits(), 0x400);
        let m = EventMask::of(&[Event::CREATE_CONTAINER, Event::START_CONTAINER]);
        assert_eq!(m.bits(), 0x8 | 0x20);
        assert!(m.contains(Event::START_CONTAINER));
        assert!(!m.contains(Event::STOP_CONTAINER));
    }

    #[test]
    fn never_sets_bits_above_the_valid_set() {
        let all = EventMask::of(&[
            Event::UNKNOWN,
            Event::RUN_POD_SANDBOX,
            Event::STOP_POD_SANDBOX,
            Event::REMOVE_POD_SANDBOX,
            Event::CREATE_CONTAINER,
            Event::POST_CREATE_CONTAINER,
            Event::START_CONTAINER,
            Event::POST_START_CONTAINER,
            Event::UPDATE_CONTAINER,
            Event::POST_UPDATE_CONTAINER,
            Event::STOP_CONTAINER,
            Event::REMOVE_CONTAINER,
            Event::LAST,
        ]);
        assert_eq!(all.bits(), VALID_EVENTS);
    }
}
