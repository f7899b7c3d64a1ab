//! A node with much to know (`--prefill N`): N pods on the in-process API server, listed by
//! podmapd's pod cache, and N container records written into podmapd's pinned maps through the
//! runtime plugins' writer path (`podmap-writer`'s `Registry`, with its sled store). The storm's
//! own cgroup is one of the N containers (that of the first pod), so every storm event is
//! attributed to a container and joined with a cached pod, as on a busy node; the other N - 1
//! records are keyed by cgroup ids no cgroup has, so they cost map and cache space, never events.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use k8s_openapi::api::core::v1::Pod;
use podmap_bpf::{ContainerId, ContainerMeta, PodUid, RecordFlags, SharedMaps, Writer};
use podmap_cgroup::{CgroupId, CgroupIds};
use podmap_pod_cache::testing::fixtures::deployment_pod;
use podmap_pod_cache::testing::TestApiServer;
use podmap_writer::{Registry, Store};

/// The node name podmapd runs under in the bench (NODE_NAME), and the pods' spec.nodeName.
pub(super) const NODE: &str = "podmap-bench";
/// Containers mapped and pods cached in the large scaling setting.
pub(super) const LARGE_PREFILL: u32 = 10_000;
/// Cgroup ids of the records no storm uses: far above any inode number a cgroup gets.
const UNUSED_CGROUP_IDS: u64 = 1 << 48;

/// One API server holding `pods` pods for this node, for every measurement of that size.
pub(super) struct Prefill {
    pub(super) pods: u32,
    server: TestApiServer,
    pub(super) kubeconfig: PathBuf,
    /// The "app" container of each pod, in the order records are written (the storm's first).
    containers: Vec<ContainerMeta>,
}

impl Prefill {
    pub(super) fn start(
        runtime: &tokio::runtime::Runtime,
        dir: &Path,
        pods: u32,
    ) -> anyhow::Result<Prefill> {
        let server = runtime.block_on(TestApiServer::start());
        let mut containers = Vec::with_capacity(pods as usize);
        // The fixture's names end in 5 hex digits of a hash: two replicas of a deployment may
        // share one (10,000 pods gave 9,999), and the second would replace the first.
        let mut names = std::collections::HashSet::new();
        let mut i = 0usize;
        while containers.len() < pods as usize {
            // Deployments of 100 replicas, as the pod cache bench makes them: about 7 KiB each.
            let pod = deployment_pod("bench", &format!("app-{}", i / 100), "6d4cf56db9", i, NODE);
            i += 1;
            if !names.insert(pod.metadata.name.clone()) {
                continue;
            }
            containers.push(app_container(&pod)?);
            server.apply(&pod);
        }
        let kubeconfig = crate::daemon::kubeconfig(
            &std::fs::create_dir_all(dir.join(pods.to_string()))
                .map(|()| dir.join(pods.to_string()))
                .context("creating the kubeconfig's directory")?,
            &server.url(),
        );
        Ok(Prefill {
            pods,
            server,
            kubeconfig,
            containers,
        })
    }

    /// Writes the records into podmapd's maps (pinned under `pins`), the storm's cgroup first;
    /// the writer's store goes to `store_dir`.
    pub(super) fn write_records(
        &self,
        pins: &Path,
        store_dir: &Path,
        storm_cgroup: u64,
    ) -> anyhow::Result<()> {
        let maps = SharedMaps::open(pins).context("opening podmapd's maps")?;
        let store = Store::open(store_dir).context("opening the writer's store")?;
        let boot = podmap_writer::boot_id().context("reading the boot id")?;
        let mut registry = Registry::new(
            maps,
            store,
            Writer::Nri,
            podmap_writer::DEFAULT_GRACE_NS,
            boot,
        );
        for (i, meta) in self.containers.iter().enumerate() {
            let id = if i == 0 {
                storm_cgroup
            } else {
                UNUSED_CGROUP_IDS + i as u64
            };
            let ids = CgroupIds {
                v2: Some(CgroupId(id)),
                v1: None,
            };
            registry
                .map(meta.clone(), ids, RecordFlags::default())
                .with_context(|| format!("writing container record {i}"))?;
        }
        Ok(())
    }

    pub(super) fn url(&self) -> String {
        self.server.url()
    }
}

/// The record a runtime plugin writes for the pod's "app" container.
fn app_container(pod: &Pod) -> anyhow::Result<ContainerMeta> {
    let meta = &pod.metadata;
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "app"))
        .ok_or_else(|| anyhow!("the fixture pod has no app container status"))?;
    let id = status
        .container_id
        .as_deref()
        .and_then(|id| id.split_once("://"))
        .map(|(_, id)| id.to_string())
        .ok_or_else(|| anyhow!("the fixture's app container has no id"))?;
    Ok(ContainerMeta {
        container_id: ContainerId(id),
        name: "app".into(),
        pod_uid: meta.uid.clone().map(PodUid),
        pod_name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        image: status.image.clone(),
        runtime: "containerd".into(),
        ..Default::default()
    })
}
