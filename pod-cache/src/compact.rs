//! The cached form of a pod: only what events need, with repeated strings shared.
//!
//! Memory is the point (docs/performance.md: at most 2 KiB per cached pod, against ~35 KiB for
//! informers holding whole objects). Strings that repeat across pods (namespaces, label keys and
//! values, images, container names, workload names and kinds) are interned: every pod of a
//! Deployment shares one copy. Strings unique to a pod (uid, name, container ids) are stored
//! once, unshared.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::wire::{ContainerStatus, PodFields};
use crate::workload::{self, Owner};

/// A pod as the cache holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CachedPod {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    /// The pod's labels as the API server has them now (they can change after creation).
    pub labels: Labels,
    /// A few short annotations (see `wire`: kubectl's last-applied copy and long values are
    /// never kept).
    pub annotations: Labels,
    /// Derived from the controller owner reference (see [`crate::workload`]); a bare pod is its
    /// own workload, of kind `Pod`. Always set for a cached pod; an `Option` so that callers
    /// merging it with runtime-only data can keep one shape.
    pub workload: Option<Arc<str>>,
    pub workload_kind: Option<Arc<str>>,
    /// Containers that have a container id in the pod's status (init, regular, ephemeral).
    pub containers: Arc<[CachedContainer]>,
    /// The pod has a deletion timestamp: it is shutting down.
    pub terminating: bool,
    /// The API server no longer has the pod; the cache keeps it for a bounded time so that
    /// late events (the exits of its last processes) still get pod data.
    pub deleted: bool,
}

/// One container of a cached pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CachedContainer {
    /// The runtime's container id, without the `containerd://` (or `cri-o://`, ...) prefix.
    /// Shared with the store's container index.
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub image: Option<Arc<str>>,
    pub kind: ContainerKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    Init,
    Regular,
    Ephemeral,
}

impl CachedPod {
    /// The container of this pod with runtime id `id`.
    pub fn container(&self, id: &str) -> Option<&CachedContainer> {
        self.containers.iter().find(|c| &*c.id == id)
    }

    /// The same pod, marked as gone from the API server.
    pub(crate) fn as_deleted(&self) -> CachedPod {
        CachedPod {
            deleted: true,
            ..self.clone()
        }
    }
}

/// String pairs sorted by key, shared between clones: labels, or annotations.
///
/// Serializes as a JSON object, as events carry labels.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels(Arc<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An owned copy, for callers that want a plain map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The shared pairs, for heap accounting.
    pub(crate) fn pairs(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.0
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One shared copy of each repeated string.
///
/// Owned by the informer (the store's only writer); strings no pod uses any more are dropped by
/// [`Interner::purge`] after a relist or after expiring deleted pods.
#[derive(Default)]
pub(crate) struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        shared
    }

    /// Drops strings only the interner still holds.
    pub(crate) fn purge(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.strings.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.strings.capacity()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.strings.iter()
    }
}

/// Builds the cached form of a decoded pod. The pod's identity is known to be present (`wire`
/// rejects pods without it).
pub(crate) fn compact(pod: &PodFields, interner: &mut Interner) -> CachedPod {
    let meta = &pod.metadata;
    let name = meta.name.as_deref().unwrap_or_default();
    let label_map = meta.labels.as_ref();
    let labels = Labels(
        label_map
            .into_iter()
            .flatten()
            .map(|(k, v)| (interner.get(k), interner.get(v)))
            .collect(),
    );
    // `wire` keeps annotations sorted by key.
    let annotations = Labels(
        meta.annotations
            .iter()
            .map(|(k, v)| (interner.get(k), interner.get(v)))
            .collect(),
    );

    let controller = pod.controller().map(|owner| Owner {
        api_version: owner.api_version.as_deref().unwrap_or_default(),
        kind: owner.kind.as_deref().unwrap_or_default(),
        name: owner.name.as_deref().unwrap_or_default(),
    });
    let hash = label_map
        .and_then(|l| l.get(workload::POD_TEMPLATE_HASH))
        .map(String::as_str);
    let workload = workload::derive(name, controller, hash);

    let mut containers = Vec::new();
    if let Some(status) = &pod.status {
        let groups = [
            (&status.init_container_statuses, ContainerKind::Init),
            (&status.container_statuses, ContainerKind::Regular),
            (
                &status.ephemeral_container_statuses,
                ContainerKind::Ephemeral,
            ),
        ];
        for (statuses, kind) in groups {
            for status in statuses.iter().flatten() {
                if let Some(container) = container(status, kind, interner) {
                    containers.push(container);
                }
            }
        }
    }

    CachedPod {
        uid: Arc::from(meta.uid.as_deref().unwrap_or_default()),
        // A pod's own name is unique, except that it is also the workload name of a bare pod.
        name: if workload.name == name {
            interner.get(name)
        } else {
            Arc::from(name)
        },
        namespace: interner.get(meta.namespace.as_deref().unwrap_or_default()),
        labels,
        annotations,
        workload: Some(interner.get(workload.name)),
        workload_kind: Some(interner.get(workload.kind)),
        containers: containers.into(),
        terminating: meta.deletion_timestamp.is_some(),
        deleted: false,
    }
}

/// A container status with a container id (a container not started yet has none).
fn container(
    status: &ContainerStatus,
    kind: ContainerKind,
    interner: &mut Interner,
) -> Option<CachedContainer> {
    let id = strip_runtime(status.container_id.as_deref()?);
    if id.is_empty() {
        return None;
    }
    Some(CachedContainer {
        id: id.into(),
        name: interner.get(status.name.as_deref().unwrap_or_default()),
        image: status
            .image
            .as_deref()
            .filter(|i| !i.is_empty())
            .map(|i| interner.get(i)),
        kind,
    })
}

/// `containerd://<id>` (or `cri-o://`, `docker://`) to `<id>`: the runtime plugins and cgroup
/// paths know containers by the bare id.
pub fn strip_runtime(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WirePod;

    fn decode(text: &str) -> PodFields {
        match WirePod::decode(text) {
            WirePod::Pod(pod) => *pod,
            WirePod::Rejected(r) => panic!("rejected: {r:?}"),
        }
    }

    #[test]
    fn compacts_a_deployment_pod() {
        let pod = decode(
            r#"{"metadata":{"name":"web-7d9-x","namespace":"prod","uid":"u1",
            "labels":{"app":"web","pod-template-hash":"7d9"},
            "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9","controller":true}]},
            "status":{"initContainerStatuses":[{"name":"init","containerID":"containerd://i1","image":"busybox"}],
            "containerStatuses":[{"name":"web","containerID":"containerd://c1","image":"nginx"},
                                 {"name":"pending","image":"nginx"}],
            "ephemeralContainerStatuses":[{"name":"debug","containerID":"cri-o://e1","image":""}]}}"#,
        );
        let mut interner = Interner::default();
        let cached = compact(&pod, &mut interner);
        assert_eq!(&*cached.uid, "u1");
        assert_eq!(cached.labels.get("app"), Some("web"));
        assert_eq!(cached.labels.get("nope"), None);
        assert_eq!(cached.workload.as_deref(), Some("web"));
        assert_eq!(cached.workload_kind.as_deref(), Some("Deployment"));
        let ids: Vec<(&str, ContainerKind)> =
            cached.containers.iter().map(|c| (&*c.id, c.kind)).collect();
        assert_eq!(
            ids,
            [
                ("i1", ContainerKind::Init),
                ("c1", ContainerKind::Regular),
                ("e1", ContainerKind::Ephemeral)
            ]
        );
        assert_eq!(cached.container("e1").unwrap().image, None);
        assert!(!cached.terminating && !cached.deleted);
        let json = serde_json::to_value(&cached.labels).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"app": "web", "pod-template-hash": "7d9"})
        );
    }

    #[test]
    fn pods_of_one_workload_share_strings() {
        let text = |uid: &str| {
            format!(
                r#"{{"metadata":{{"name":"p-{uid}","namespace":"prod","uid":"{uid}","labels":{{"app":"web"}}}}}}"#
            )
        };
        let mut interner = Interner::default();
        let a = compact(&decode(&text("a")), &mut interner);
        let b = compact(&decode(&text("b")), &mut interner);
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(&a.labels.pairs()[0].1, &b.labels.pairs()[0].1));
        drop((a, b));
        interner.purge();
        assert_eq!(interner.len(), 0);
    }

    #[test]
    fn strips_runtime_prefixes() {
        assert_eq!(strip_runtime("containerd://abc"), "abc");
        assert_eq!(strip_runtime("cri-o://abc"), "abc");
        assert_eq!(strip_runtime("abc"), "abc");
    }
}
