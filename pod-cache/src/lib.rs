//! podmap's pod cache: a node-scoped Pod informer feeding a compact store of what events need.
//!
//! The runtime plugins already record each container's pod uid, name, namespace and creation-time
//! labels. This crate adds what only the API server knows: the workload and its kind, labels and
//! annotations changed after creation, images, and the pods whose containers started before
//! podmap. It knows nothing of runtimes or cgroups.
//!
//! - [`informer`]: list and watch of `spec.nodeName=<node>` pods with backoff, resume and relist.
//! - `list_body`: a list body decoded as it arrives, one element of `items` at a time (a node's
//!   whole list can come in one body of tens of MB).
//! - `wire`: decoding only the fields used, one pod at a time (a bad pod is skipped and counted,
//!   never fatal).
//! - [`compact`]: the cached form, with repeated strings interned; [`workload`]: workload
//!   derivation from the controller owner reference.
//! - `store`: indexes by pod uid and container id, deleted-pod retention, the change log.
//! - `testing` (feature `testing`): an in-process API server for tests and the bench.
//!
//! [`PodCache`] is the handle the daemon holds: cheap to clone, reads are one lock and one hash
//! lookup, and it keeps serving what it has while the API server is away.

pub mod compact;
pub mod footprint;
pub mod informer;
pub mod workload;

mod list_body;
mod store;
mod wire;

#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

pub use compact::{CachedContainer, CachedPod, ContainerKind, Labels};
pub use footprint::Footprint;
pub use informer::CacheConfig;
pub use store::Retention;

use informer::{Informer, Shared};

/// Errors building a Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("not running in a cluster (no service account environment): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A Kubernetes client from the kubeconfig at `kubeconfig` (its current context), or, without
/// one, from the in-cluster service account. Must be called inside a tokio runtime.
///
/// Async because reading a kubeconfig may run its credential plugin.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let context = |source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(context)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(context)?
        }
        None => kube::Config::incluster().map_err(Error::InCluster)?,
    };
    kube::Client::try_from(config).map_err(Error::Client)
}

/// The node's pods, as the informer has them. Cheap to clone; all clones share one cache, and
/// its tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct PodCache {
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

/// The cache's counters and health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Live pods (on the API server now).
    pub pods: usize,
    /// Deleted pods still kept for late events.
    pub deleted_kept: usize,
    /// Containers indexed by id.
    pub containers: usize,
    /// Completed lists, the first included; `relists` is the ones after the first.
    pub lists: u64,
    pub relists: u64,
    /// Watches resumed from a resource version without a relist.
    pub watch_restarts: u64,
    /// Pod objects skipped because a field the cache needs was missing or of the wrong type.
    pub objects_skipped: u64,
    /// Failed list or watch attempts (each followed by a backoff).
    pub errors: u64,
    /// Watch events and bookmarks received.
    pub events: u64,
    pub bookmarks: u64,
    /// Staleness: time since the last completed list, watch event or bookmark. `None` before
    /// the first list completes.
    pub last_event_age: Option<Duration>,
    /// The first list has completed: an absent pod is really absent.
    pub synced: bool,
    /// The change log's current sequence number (see [`PodCache::changes_since`]).
    pub change_seq: u64,
}

impl PodCache {
    /// Starts the informer for pods on `node_name` on the current tokio runtime (a
    /// current-thread runtime is fine) with the default configuration.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(client: kube::Client, node_name: &str) -> PodCache {
        PodCache::start_with(client, node_name, CacheConfig::default())
    }

    /// [`PodCache::start`] with a chosen configuration (timeouts, backoff, retention).
    pub fn start_with(client: kube::Client, node_name: &str, config: CacheConfig) -> PodCache {
        let shared = Arc::new(Shared::new(config.retention));
        let sweep = tokio::spawn(informer::sweep(shared.clone(), config.sweep_interval));
        let informer = tokio::spawn(Informer::new(client, node_name, config, shared.clone()).run());
        let tasks = Tasks(vec![informer.abort_handle(), sweep.abort_handle()]);
        PodCache {
            shared,
            _tasks: Arc::new(tasks),
        }
    }

    /// The pod with this uid, live or recently deleted (`deleted` tells).
    pub fn get(&self, uid: &str) -> Option<Arc<CachedPod>> {
        self.shared.store.get(uid)
    }

    /// The pod of the container with this id (bare, or with its `containerd://` prefix).
    pub fn by_container(&self, container_id: &str) -> Option<Arc<CachedPod>> {
        self.shared.store.by_container(container_id)
    }

    /// The current change sequence number, and the uids of pods that changed (added, changed,
    /// deleted, or dropped after their retention) after `seq`, each once. Start with 0 and pass
    /// back the returned number. When `seq` is older than the bounded log holds (or is not one
    /// this cache handed out), every uid the cache holds is returned: invalidate everything.
    pub fn changes_since(&self, seq: u64) -> (u64, Vec<String>) {
        self.shared.store.changes_since(seq)
    }

    /// Resolves once the change log moved (see [`PodCache::changes_since`]) after the last call
    /// resolved, at once if it already has: a change between two waits is never missed, and
    /// many count as one. For one waiter.
    pub async fn changed(&self) {
        self.shared.store.changed.notified().await
    }

    pub fn stats(&self) -> CacheStats {
        let counters = &self.shared.counters;
        let (pods, deleted_kept, containers) = {
            let data = self.shared.store.read();
            (data.live(), data.deleted(), data.container_index().len())
        };
        let lists = counters.lists.load(Ordering::Relaxed);
        CacheStats {
            pods,
            deleted_kept,
            containers,
            lists,
            relists: lists.saturating_sub(1),
            watch_restarts: counters.watch_restarts.load(Ordering::Relaxed),
            objects_skipped: counters.objects_skipped.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
            events: counters.events.load(Ordering::Relaxed),
            bookmarks: counters.bookmarks.load(Ordering::Relaxed),
            last_event_age: counters.last_success().map(|at| at.elapsed()),
            synced: counters.synced.load(Ordering::Acquire),
            change_seq: self.shared.store.seq(),
        }
    }

    /// Waits until the first list has completed, at most `timeout`. Returns whether it has.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let synced = async {
            loop {
                let notified = self.shared.synced.notified();
                if self.shared.counters.synced.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, synced).await.is_ok()
    }

    /// The store's heap footprint (see [`footprint`]).
    pub fn footprint(&self) -> Footprint {
        let interner = self.shared.interner();
        footprint::measure(&self.shared.store.read(), &interner)
    }
}

/// Aborts the informer and sweeper tasks with the last handle.
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
