//! Events of unmapped, container-shaped cgroups waiting for their mapping (docs/decisions.md #4,
//! #29): one queue per cgroup, indexed by cgroup and by deadline, bounded per cgroup and in
//! total. A bound that is hit releases the oldest waiting events early (they go out as
//! `unknown`, counted), so a storm from one such cgroup costs bounded memory and never lets the
//! queue grow until podmapd is killed; nothing is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};

use podmap_cgroup::CgroupKey;
use podmap_cgroup::ContainerShape;

/// How many events may wait, per cgroup and in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    pub per_cgroup: usize,
    pub total: usize,
}

/// A container's first events arrive before its mapping only in a short race (the plugins map
/// before the first instruction): 256 covers any real start-up, 4,096 in all keeps a few MiB.
pub const DEFAULT_LIMITS: HoldLimits = HoldLimits {
    per_cgroup: 256,
    total: 4096,
};

struct Queue<T> {
    shape: ContainerShape,
    /// When the first waiting event's time is up; later events share it, so a cgroup's events
    /// leave together and in order.
    deadline: u64,
    /// Position in `by_deadline` (deadline, arrival) so equal deadlines never collide.
    seq: u64,
    /// When the mapping was last looked up from userspace.
    checked: u64,
    events: VecDeque<T>,
}

/// A cgroup's events leaving the hold, in arrival order.
pub struct Released<T> {
    pub key: CgroupKey,
    pub shape: ContainerShape,
    pub events: VecDeque<T>,
}

pub struct HoldQueue<T> {
    limits: HoldLimits,
    by_cgroup: HashMap<CgroupKey, Queue<T>>,
    by_deadline: BTreeMap<(u64, u64), CgroupKey>,
    len: usize,
    peak: usize,
    seq: u64,
}

impl<T> HoldQueue<T> {
    pub fn new(limits: HoldLimits) -> Self {
        assert!(limits.per_cgroup > 0 && limits.total >= limits.per_cgroup);
        HoldQueue {
            limits,
            by_cgroup: HashMap::new(),
            by_deadline: BTreeMap::new(),
            len: 0,
            peak: 0,
            seq: 0,
        }
    }

    pub fn limits(&self) -> HoldLimits {
        self.limits
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most events that ever waited at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    pub fn contains(&self, key: CgroupKey) -> bool {
        self.by_cgroup.contains_key(&key)
    }

    /// Queues `event` behind the cgroup's waiting events, or starts the cgroup's wait with
    /// `shape` and `deadline`. Returns what a bound forced out early: the cgroup's own queue when
    /// it is full (the new event last, so order holds), or the cgroup whose time is nearest when
    /// the total is.
    pub fn push(
        &mut self,
        key: CgroupKey,
        shape: ContainerShape,
        deadline: u64,
        now: u64,
        event: T,
    ) -> Option<Released<T>> {
        if self.by_cgroup.contains_key(&key) {
            return self.join(key, event).ok().flatten();
        }
        let evicted = if self.len >= self.limits.total {
            let oldest = *self.by_deadline.values().next().expect("len > 0");
            self.take(oldest)
        } else {
            None
        };
        self.seq += 1;
        self.by_deadline.insert((deadline, self.seq), key);
        self.by_cgroup.insert(
            key,
            Queue {
                shape,
                deadline,
                seq: self.seq,
                checked: now,
                events: VecDeque::from([event]),
            },
        );
        self.len += 1;
        self.peak = self.peak.max(self.len);
        evicted
    }

    /// Queues `event` behind a cgroup that is waiting already (its shape and deadline stay the
    /// first event's); `Err(event)` if it is not. Returns the cgroup's whole queue, this event
    /// last, when the cgroup or the total is at its bound.
    pub fn join(&mut self, key: CgroupKey, event: T) -> Result<Option<Released<T>>, T> {
        let Some(q) = self.by_cgroup.get_mut(&key) else {
            return Err(event);
        };
        if q.events.len() < self.limits.per_cgroup && self.len < self.limits.total {
            q.events.push_back(event);
            self.len += 1;
            self.peak = self.peak.max(self.len);
            return Ok(None);
        }
        let mut r = self.take(key).expect("present");
        r.events.push_back(event);
        Ok(Some(r))
    }

    /// Removes a cgroup's waiting events.
    pub fn take(&mut self, key: CgroupKey) -> Option<Released<T>> {
        let q = self.by_cgroup.remove(&key)?;
        self.by_deadline.remove(&(q.deadline, q.seq));
        self.len -= q.events.len();
        Some(Released {
            key,
            shape: q.shape,
            events: q.events,
        })
    }

    /// The cgroups whose time is up at `now`, nearest deadline first.
    pub fn due(&self, now: u64) -> Vec<CgroupKey> {
        self.by_deadline
            .range(..=(now, u64::MAX))
            .map(|(_, k)| *k)
            .collect()
    }

    /// The cgroups whose mapping was last looked up `every` ns ago or more, marked as looked up
    /// at `now`: the caller looks them up (a few syscalls each), so not every batch pays for
    /// every waiting cgroup.
    pub fn to_check(&mut self, now: u64, every: u64) -> Vec<CgroupKey> {
        self.by_cgroup
            .iter_mut()
            .filter(|(_, q)| now.saturating_sub(q.checked) >= every)
            .map(|(k, q)| {
                q.checked = now;
                *k
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: u64) -> ContainerShape {
        ContainerShape {
            container_id: format!("{n:064x}"),
            pod_uid: None,
        }
    }

    fn limits(per_cgroup: usize, total: usize) -> HoldQueue<u32> {
        HoldQueue::new(HoldLimits { per_cgroup, total })
    }

    #[test]
    fn a_cgroup_is_bounded_and_its_overflow_leaves_in_order() {
        let mut q = limits(3, 10);
        let a = CgroupKey::v2(1);
        for ev in 0..3 {
            assert!(q.push(a, shape(1), 500, 0, ev).is_none());
        }
        assert_eq!(q.len(), 3);
        let r = q.push(a, shape(1), 500, 0, 3).expect("released early");
        assert_eq!(r.key, a);
        assert_eq!(Vec::from(r.events), [0, 1, 2, 3]);
        assert_eq!((q.len(), q.peak()), (0, 3));
        assert!(!q.contains(a) && q.due(u64::MAX).is_empty());
        // The cgroup's next event starts a new wait.
        assert!(q.push(a, shape(1), 900, 0, 4).is_none());
        assert_eq!(q.due(900), [a]);
        // Joining needs a wait to join.
        assert!(matches!(q.join(a, 5), Ok(None)));
        assert!(matches!(q.join(CgroupKey::v2(2), 6), Err(6)));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_total_is_bounded_by_releasing_the_nearest_deadline() {
        let mut q = limits(4, 6);
        let keys: Vec<_> = (1..=3).map(CgroupKey::v2).collect();
        for (i, k) in keys.iter().enumerate() {
            for ev in 0..2 {
                assert!(q.push(*k, shape(1), 100 * (3 - i as u64), 0, ev).is_none());
            }
        }
        assert_eq!(q.len(), 6);
        // A queued cgroup cannot grow past the total either: it leaves whole.
        let r = q.push(keys[0], shape(1), 300, 0, 2).expect("total reached");
        assert_eq!((r.key, Vec::from(r.events)), (keys[0], vec![0, 1, 2]));
        assert_eq!(q.len(), 4);
        q.push(keys[0], shape(1), 300, 0, 9);
        q.push(keys[0], shape(1), 300, 0, 10);
        // A new cgroup at the total evicts the one whose time is nearest (keys[2], deadline 100).
        let new = CgroupKey::v2(9);
        let r = q.push(new, shape(9), 1000, 0, 7).expect("evicted");
        assert_eq!(r.key, keys[2]);
        assert_eq!(q.len(), 5);
        assert!(q.len() <= q.limits().total && q.peak() <= q.limits().total);
    }

    #[test]
    fn deadlines_and_lookups_are_indexed() {
        let mut q = limits(8, 64);
        let (a, b, c) = (CgroupKey::v2(1), CgroupKey::v2(2), CgroupKey::v1(1));
        q.push(a, shape(1), 500, 0, 0);
        q.push(b, shape(2), 200, 0, 0);
        q.push(c, shape(3), 200, 50, 0);
        q.push(a, shape(1), 999, 60, 1); // joins a's wait: a's deadline stays 500
        assert_eq!(q.due(199), Vec::<CgroupKey>::new());
        assert_eq!(q.due(200), [b, c]);
        assert_eq!(q.due(500), [b, c, a]);
        let mut checked = q.to_check(40, 25);
        checked.sort();
        assert_eq!(checked, [a, b], "c was looked up at 50");
        assert!(q.to_check(50, 25).is_empty());
        let r = q.take(b).unwrap();
        assert_eq!(Vec::from(r.events), [0]);
        assert_eq!(q.due(500), [c, a]);
        assert_eq!(q.len(), 3);
    }
}
