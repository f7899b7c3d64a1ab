//! The bounded in-memory buffer between the socket reader and the OTLP sender. When the
//! collector is slower than podmapd (or away), the buffer fills; then new records are refused and
//! counted, as the OpenTelemetry SDK's batch processor does, so memory stays bounded and every
//! loss is visible in the counters.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct BoundedBuffer<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> BoundedBuffer<T> {
    pub fn new(capacity: usize) -> Self {
        // Not preallocated: a large bound costs memory only while the collector lags.
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item`; false when the buffer is full (the caller counts the drop).
    pub fn push(&mut self, item: T) -> bool {
        if self.items.len() >= self.capacity {
            return false;
        }
        self.items.push_back(item);
        true
    }

    /// Up to `n` of the oldest items, in order.
    pub fn take(&mut self, n: usize) -> Vec<T> {
        let n = n.min(self.items.len());
        self.items.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_refuses_the_newest() {
        let mut b = BoundedBuffer::new(3);
        let refused = (0..5).filter(|i| !b.push(*i)).count();
        assert_eq!(b.len(), 3);
        assert_eq!(refused, 2);
        // The oldest are kept, in order: the refused ones are the newest.
        assert_eq!(b.take(2), vec![0, 1]);
        assert!(b.push(5));
        assert!(b.push(6));
        assert!(!b.push(7));
        assert_eq!(b.take(10), vec![2, 5, 6]);
        assert_eq!(b.len(), 0);
        assert_eq!(b.take(1), Vec::<i32>::new());
    }
}
