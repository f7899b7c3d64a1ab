//! The pod store: pods by uid and by container id, deleted pods kept for a bounded time and
//! count, and a bounded log of which pods changed.
//!
//! One writer (the informer task) and many readers (the daemon's join). Readers take the read
//! lock for one hash lookup and leave with an `Arc`; a relist swaps in its result under one write
//! lock, so a reader sees the store before or after it, never half of it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::compact::{strip_runtime, CachedPod};

/// How long and how many deleted pods are kept, and how long the change log is.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// A deleted pod is kept this long after its deletion ...
    pub deleted_ttl: Duration,
    /// ... and at most this many deleted pods are kept (the oldest go first).
    pub deleted_max: usize,
    /// Change log entries kept; a reader further behind gets every uid.
    pub change_log: usize,
}

impl Default for Retention {
    fn default() -> Self {
        // Late exit events come within seconds of a pod's deletion; 5 min / 1024 pods covers a
        // node draining at once (Tetragon keeps 1024 deleted pods).
        Retention {
            deleted_ttl: Duration::from_secs(300),
            deleted_max: 1024,
            change_log: 4096,
        }
    }
}

pub(crate) struct Store {
    data: RwLock<StoreData>,
    retention: Retention,
    /// Notified (one permit, so changes between two waits count once) whenever a write moved
    /// the change log.
    pub(crate) changed: Notify,
}

/// The write lock, and a notification when it is dropped (just before the lock is released) if
/// the change log moved under it: a waiter that then reads waits for the lock and sees the change.
struct WriteGuard<'a> {
    data: RwLockWriteGuard<'a, StoreData>,
    seq: u64,
    changed: &'a Notify,
}

impl Deref for WriteGuard<'_> {
    type Target = StoreData;
    fn deref(&self) -> &StoreData {
        &self.data
    }
}

impl DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut StoreData {
        &mut self.data
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.data.log.seq != self.seq {
            self.changed.notify_one();
        }
    }
}

#[derive(Default)]
pub(crate) struct StoreData {
    /// Live and deleted pods, by uid.
    pods: HashMap<Arc<str>, Arc<CachedPod>>,
    /// Container id (bare, without runtime prefix) to pod uid.
    by_container: HashMap<Arc<str>, Arc<str>>,
    /// Deleted pods in deletion order. An entry whose pod was since replaced (re-listed, deleted
    /// again) is stale and skipped: it no longer points to the pod's current `Arc`.
    tombstones: VecDeque<Tombstone>,
    live: usize,
    log: ChangeLog,
}

struct Tombstone {
    pod: Arc<CachedPod>,
    at: Instant,
}

/// A bounded log of changed pod uids, numbered from 1.
#[derive(Default)]
struct ChangeLog {
    entries: VecDeque<(u64, Arc<str>)>,
    seq: u64,
}

impl Store {
    pub(crate) fn new(retention: Retention) -> Store {
        Store {
            data: RwLock::new(StoreData::default()),
            retention,
            changed: Notify::new(),
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, StoreData> {
        // A panic while holding the lock leaves the data consistent at the last complete
        // operation (every mutation is a few map operations with no early exit): keep serving.
        self.data
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> WriteGuard<'_> {
        let data = self
            .data
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        WriteGuard {
            seq: data.log.seq,
            data,
            changed: &self.changed,
        }
    }

    pub(crate) fn get(&self, uid: &str) -> Option<Arc<CachedPod>> {
        self.read().pods.get(uid).cloned()
    }

    pub(crate) fn by_container(&self, container_id: &str) -> Option<Arc<CachedPod>> {
        let data = self.read();
        let uid = data.by_container.get(strip_runtime(container_id))?;
        data.pods.get(uid).cloned()
    }

    /// `pod` as the store already holds it, when it holds an equal one: a relist keeps the
    /// store's copy of every pod that did not change, rather than a second one until it swaps.
    pub(crate) fn unchanged(&self, pod: CachedPod) -> Arc<CachedPod> {
        match self.read().pods.get(&pod.uid) {
            Some(held) if **held == pod => held.clone(),
            _ => Arc::new(pod),
        }
    }

    /// A pod was added or modified.
    pub(crate) fn apply(&self, pod: CachedPod) {
        self.write().apply(pod, &self.retention);
    }

    /// A pod was deleted; `last` is its final state.
    pub(crate) fn delete(&self, last: CachedPod, now: Instant) {
        let mut data = self.write();
        data.delete(last, now, &self.retention);
        data.enforce_count(&self.retention);
    }

    /// A (re)list finished: `pods` is the whole truth. Pods not in it were deleted while the
    /// informer was not watching; they are kept as deleted like any other. A listed pod that is
    /// the store's own `Arc` (see [`Store::unchanged`]) or equal to it changes nothing.
    pub(crate) fn replace(&self, pods: Vec<Arc<CachedPod>>, now: Instant) {
        let listed: HashSet<Arc<str>> = pods.iter().map(|p| p.uid.clone()).collect();
        let mut data = self.write();
        for pod in pods {
            data.apply_shared(pod, &self.retention);
        }
        let gone: Vec<Arc<CachedPod>> = data
            .pods
            .values()
            .filter(|p| !p.deleted && !listed.contains(&p.uid))
            .cloned()
            .collect();
        for pod in gone {
            data.delete((*pod).clone(), now, &self.retention);
        }
        data.enforce_count(&self.retention);
    }

    /// Drops deleted pods past their time; returns how many.
    pub(crate) fn expire(&self, now: Instant) -> usize {
        let ttl = self.retention.deleted_ttl;
        // Cheap check under the read lock first: most sweeps find nothing to do.
        let due = |t: &Tombstone| now.saturating_duration_since(t.at) >= ttl;
        if !self.read().tombstones.front().is_some_and(due) {
            return 0;
        }
        let mut data = self.write();
        let mut expired = 0;
        while data.tombstones.front().is_some_and(due) {
            let tombstone = data.tombstones.pop_front().expect("front checked");
            expired += usize::from(data.evict(&tombstone, &self.retention));
        }
        expired
    }

    /// The change log's current sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.read().log.seq
    }

    /// The current sequence number and the uids changed after `seq` (each once); every uid the
    /// store holds when `seq` is no longer in the log (or is from the future).
    pub(crate) fn changes_since(&self, seq: u64) -> (u64, Vec<String>) {
        let data = self.read();
        let log = &data.log;
        let first_kept = log.entries.front().map_or(log.seq + 1, |(s, _)| *s);
        if seq > log.seq || seq + 1 < first_kept {
            let all = data.pods.keys().map(|uid| uid.to_string()).collect();
            return (log.seq, all);
        }
        // The log's numbers are consecutive: what came after `seq` starts at a known place, so
        // a caller that is up to date (every event batch asks) costs no walk of the log.
        let after = (seq + 1 - first_kept) as usize;
        let mut seen = HashSet::new();
        let changed = log
            .entries
            .range(after..)
            .filter(|(_, uid)| seen.insert(uid.clone()))
            .map(|(_, uid)| uid.to_string())
            .collect();
        (log.seq, changed)
    }
}

impl StoreData {
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    pub(crate) fn deleted(&self) -> usize {
        self.pods.len() - self.live
    }

    pub(crate) fn pods(&self) -> impl Iterator<Item = &Arc<CachedPod>> {
        self.pods.values()
    }

    pub(crate) fn container_index(&self) -> &HashMap<Arc<str>, Arc<str>> {
        &self.by_container
    }

    /// Capacities of the pod table, the container table, the tombstone queue and the change
    /// log, for heap accounting.
    pub(crate) fn capacities(&self) -> [usize; 4] {
        [
            self.pods.capacity(),
            self.by_container.capacity(),
            self.tombstones.capacity(),
            self.log.entries.capacity(),
        ]
    }

    /// The uids in the change log, for heap accounting.
    pub(crate) fn logged_uids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.log.entries.iter().map(|(_, uid)| uid)
    }

    fn apply(&mut self, pod: CachedPod, retention: &Retention) {
        if self.pods.get(&pod.uid).is_some_and(|old| **old == pod) {
            return;
        }
        self.put(Arc::new(pod), retention);
    }

    fn apply_shared(&mut self, pod: Arc<CachedPod>, retention: &Retention) {
        if self
            .pods
            .get(&pod.uid)
            .is_some_and(|old| Arc::ptr_eq(old, &pod) || **old == *pod)
        {
            return;
        }
        self.put(pod, retention);
    }

    fn delete(&mut self, last: CachedPod, now: Instant, retention: &Retention) {
        if self.pods.get(&last.uid).is_some_and(|old| old.deleted) {
            return;
        }
        let pod = Arc::new(last.as_deleted());
        self.tombstones.push_back(Tombstone {
            pod: pod.clone(),
            at: now,
        });
        self.put(pod, retention);
    }

    /// Inserts or replaces a pod, keeping the container index, the live count and the change
    /// log in step.
    fn put(&mut self, pod: Arc<CachedPod>, retention: &Retention) {
        if let Some(old) = self.pods.insert(pod.uid.clone(), pod.clone()) {
            if !old.deleted {
                self.live -= 1;
            }
            for container in old.containers.iter() {
                if pod.container(&container.id).is_none() {
                    self.unindex(&container.id, &pod.uid);
                }
            }
        }
        for container in pod.containers.iter() {
            self.by_container
                .insert(container.id.clone(), pod.uid.clone());
        }
        if !pod.deleted {
            self.live += 1;
        }
        self.log.push(pod.uid.clone(), retention.change_log);
    }

    /// Removes a container id from the index if it still points to pod `uid`.
    fn unindex(&mut self, container_id: &str, uid: &str) {
        if self
            .by_container
            .get(container_id)
            .is_some_and(|owner| &**owner == uid)
        {
            self.by_container.remove(container_id);
        }
    }

    /// Drops a deleted pod for good, unless the tombstone is stale. Returns whether it did.
    fn evict(&mut self, tombstone: &Tombstone, retention: &Retention) -> bool {
        let uid = &tombstone.pod.uid;
        if !self
            .pods
            .get(uid)
            .is_some_and(|current| Arc::ptr_eq(current, &tombstone.pod))
        {
            return false;
        }
        self.pods.remove(uid);
        for container in tombstone.pod.containers.iter() {
            self.unindex(&container.id, uid);
        }
        self.log.push(uid.clone(), retention.change_log);
        true
    }

    /// Keeps at most `deleted_max` deleted pods, dropping the oldest.
    fn enforce_count(&mut self, retention: &Retention) {
        while self.deleted() > retention.deleted_max {
            let Some(tombstone) = self.tombstones.pop_front() else {
                break;
            };
            self.evict(&tombstone, retention);
        }
        // Stale tombstones at the front cost memory only; drop them while here.
        while self.tombstones.front().is_some_and(|t| {
            !self
                .pods
                .get(&t.pod.uid)
                .is_some_and(|current| Arc::ptr_eq(current, &t.pod))
        }) {
            self.tombstones.pop_front();
        }
    }
}

impl ChangeLog {
    fn push(&mut self, uid: Arc<str>, cap: usize) {
        self.seq += 1;
        self.entries.push_back((self.seq, uid));
        while self.entries.len() > cap {
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::{CachedContainer, ContainerKind, Labels};

    fn pod(uid: &str, containers: &[&str]) -> CachedPod {
        CachedPod {
            uid: uid.into(),
            name: format!("pod-{uid}").into(),
            namespace: "ns".into(),
            labels: Labels::default(),
            annotations: Labels::default(),
            workload: Some(format!("pod-{uid}").into()),
            workload_kind: Some("Pod".into()),
            containers: containers
                .iter()
                .map(|id| CachedContainer {
                    id: (*id).into(),
                    name: "c".into(),
                    image: None,
                    kind: ContainerKind::Regular,
                })
                .collect(),
            terminating: false,
            deleted: false,
        }
    }

    /// Whether the store's change notification holds a permit now (taking it).
    fn notified(store: &Store) -> bool {
        use futures::FutureExt;
        store.changed.notified().now_or_never().is_some()
    }

    #[test]
    fn a_write_that_moves_the_change_log_notifies_once() {
        let store = Store::new(Retention::default());
        assert!(!notified(&store), "nothing written yet");
        store.apply(pod("a", &["c1"]));
        store.apply(pod("b", &["c2"]));
        assert!(notified(&store), "two changes");
        assert!(!notified(&store), "count as one");
        store.apply(pod("a", &["c1"]));
        assert!(!notified(&store), "an equal pod changes nothing");
        store.delete(pod("a", &["c1"]), Instant::now());
        assert!(notified(&store), "a deletion");
        store.replace(vec![], Instant::now());
        assert!(notified(&store), "a relist without b");
        store.replace(vec![], Instant::now());
        assert!(!notified(&store), "the same relist again");
    }

    fn retention(ttl_secs: u64, max: usize, log: usize) -> Retention {
        Retention {
            deleted_ttl: Duration::from_secs(ttl_secs),
            deleted_max: max,
            change_log: log,
        }
    }

    #[test]
    fn indexes_by_uid_and_container_and_follows_container_changes() {
        let store = Store::new(Retention::default());
        store.apply(pod("a", &["c1"]));
        assert_eq!(&*store.by_container("containerd://c1").unwrap().uid, "a");
        store.apply(pod("a", &["c2"]));
        assert!(store.by_container("c1").is_none());
        assert_eq!(&*store.by_container("c2").unwrap().uid, "a");
        assert_eq!(store.read().live(), 1);
    }

    #[test]
    fn deleted_pods_stay_for_the_ttl_then_go() {
        let store = Store::new(retention(300, 10, 100));
        let t0 = Instant::now();
        store.apply(pod("a", &["c1"]));
        store.delete(pod("a", &["c1"]), t0);
        let kept = store.get("a").unwrap();
        assert!(kept.deleted);
        assert!(store.by_container("c1").unwrap().deleted);
        assert_eq!((store.read().live(), store.read().deleted()), (0, 1));
        assert_eq!(store.expire(t0 + Duration::from_secs(299)), 0);
        assert_eq!(store.expire(t0 + Duration::from_secs(300)), 1);
        assert!(store.get("a").is_none() && store.by_container("c1").is_none());
    }

    #[test]
    fn at_most_deleted_max_deleted_pods_are_kept() {
        let store = Store::new(retention(300, 2, 100));
        let now = Instant::now();
        for uid in ["a", "b", "c"] {
            store.apply(pod(uid, &[]));
            store.delete(pod(uid, &[]), now);
        }
        assert!(store.get("a").is_none());
        assert!(store.get("b").is_some() && store.get("c").is_some());
    }

    #[test]
    fn replace_marks_unlisted_pods_deleted_and_never_duplicates() {
        let store = Store::new(Retention::default());
        let now = Instant::now();
        store.apply(pod("a", &["ca"]));
        store.apply(pod("b", &["cb"]));
        let b = store.get("b").unwrap();
        let seq = store.seq();
        store.replace(
            vec![
                store.unchanged(pod("b", &["cb"])),
                Arc::new(pod("c", &["cc"])),
                Arc::new(pod("c", &["cc"])),
            ],
            now,
        );
        let data = store.read();
        assert_eq!((data.live(), data.deleted()), (2, 1));
        assert_eq!(data.pods().count(), 3);
        drop(data);
        assert!(store.get("a").unwrap().deleted);
        assert!(!store.get("b").unwrap().deleted);
        assert_eq!(&*store.by_container("cc").unwrap().uid, "c");
        // The unchanged pod is the same allocation, and not a change.
        assert!(Arc::ptr_eq(&b, &store.get("b").unwrap()));
        let (_, changed) = store.changes_since(seq);
        assert!(!changed.contains(&"b".to_string()), "{changed:?}");
    }

    #[test]
    fn a_deleted_pod_listed_again_is_live_and_its_old_tombstone_is_void() {
        let store = Store::new(retention(10, 10, 100));
        let t0 = Instant::now();
        store.apply(pod("a", &[]));
        store.delete(pod("a", &[]), t0);
        store.replace(vec![store.unchanged(pod("a", &[]))], t0);
        assert!(!store.get("a").unwrap().deleted);
        assert_eq!(store.expire(t0 + Duration::from_secs(60)), 0);
        assert!(store.get("a").is_some());
    }

    #[test]
    fn change_log_names_changed_pods_once_and_falls_back_to_all() {
        let store = Store::new(retention(300, 10, 3));
        let (s0, none) = store.changes_since(0);
        assert_eq!((s0, none.len()), (0, 0));
        store.apply(pod("a", &[]));
        store.apply(pod("a", &[])); // no change: not logged
        let (s1, changed) = store.changes_since(s0);
        assert_eq!((s1, changed), (1, vec!["a".to_string()]));
        store.apply(pod("b", &[]));
        store.apply(pod("b", &["x"]));
        let (s2, changed) = store.changes_since(s1);
        assert_eq!((s2, changed), (3, vec!["b".to_string()]));
        for uid in ["c", "d", "e"] {
            store.apply(pod(uid, &[]));
        }
        // The 3-entry log still has every change after seq 3.
        let (s3, changed) = store.changes_since(s2);
        assert_eq!(
            (s3, changed),
            (6, vec!["c".to_string(), "d".to_string(), "e".to_string()])
        );
        store.apply(pod("f", &[]));
        // Seq 4 (the change right after seq 3) fell off: every uid.
        let (_, mut all) = store.changes_since(s2);
        all.sort();
        assert_eq!(all, ["a", "b", "c", "d", "e", "f"]);
        let (s, mut all) = store.changes_since(u64::MAX);
        all.sort();
        assert_eq!((s, all.len()), (7, 6));
        // From the middle of a full log (seqs 5 to 7), and from its end.
        assert_eq!(
            store.changes_since(5),
            (7, vec!["e".to_string(), "f".to_string()])
        );
        assert_eq!(store.changes_since(4).1, ["d", "e", "f"]);
        assert_eq!(store.changes_since(7), (7, vec![]));
    }
}
