//! A fake runtime for in-process tests of podmap-nri: it speaks NRI over the same multiplexer
//! from the other side (ttrpc client of `Plugin` on conn 1, server of `Runtime` on conn 2), and
//! builders of the pods and containers it tells the plugin about.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use podmap_bpf::testing::{unique_name, PinDir, TestCgroup};
use podmap_cgroup::CgroupLayout;
use podmap_nri::config::{Mode, Settings};
use podmap_nri_protocol::api::{
    ConfigureRequest, ConfigureResponse, Container, ContainerState, CreateContainerRequest, Empty,
    Event, LinuxContainer, LinuxPodSandbox, PodSandbox, RegisterPluginRequest, StateChangeEvent,
    SynchronizeRequest, SynchronizeResponse,
};
use podmap_nri_protocol::api_ttrpc::{create_runtime, PluginClient, Runtime};
use podmap_nri_protocol::mux::{ConnId, Multiplexer};
use podmap_nri_protocol::protobuf::MessageField;
use podmap_nri_protocol::transport::{client, single_connection_listener};
use podmap_nri_protocol::ttrpc;
use podmap_nri_protocol::ttrpc::context;
use podmap_nri_protocol::ttrpc::r#async::{Server, TtrpcContext};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Generous waits: the machine is shared; outcomes are asserted, not speed.
pub const WAIT: Duration = Duration::from_secs(10);

struct RuntimeService {
    registrations: mpsc::UnboundedSender<RegisterPluginRequest>,
}

#[async_trait]
impl Runtime for RuntimeService {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: RegisterPluginRequest,
    ) -> ttrpc::Result<Empty> {
        let _ = self.registrations.send(req);
        Ok(Empty::new())
    }
}

/// The runtime's end of one plugin connection.
pub struct FakeRuntime {
    pub mux: Multiplexer,
    pub plugin: PluginClient,
    /// The same connection, for calls by name (methods the typed client may not know).
    pub raw: ttrpc::r#async::Client,
    server: Server,
    registrations: mpsc::UnboundedReceiver<RegisterPluginRequest>,
}

impl FakeRuntime {
    pub async fn on(stream: UnixStream) -> FakeRuntime {
        let mut mux =
            Multiplexer::new(stream, &[ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE]).unwrap();
        let (tx, registrations) = mpsc::unbounded_channel();
        let service: Arc<dyn Runtime + Send + Sync> =
            Arc::new(RuntimeService { registrations: tx });
        let mut server = Server::new()
            .add_listener(single_connection_listener(
                mux.take(ConnId::RUNTIME_SERVICE).unwrap(),
            ))
            .register_service(create_runtime(service));
        server.start().await.unwrap();
        let raw = client(mux.take(ConnId::PLUGIN_SERVICE).unwrap());
        let plugin = PluginClient::new(raw.clone());
        FakeRuntime {
            mux,
            plugin,
            raw,
            server,
            registrations,
        }
    }

    pub async fn accept(listener: &tokio::net::UnixListener) -> FakeRuntime {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the plugin connects")
            .unwrap();
        FakeRuntime::on(stream).await
    }

    pub async fn registered(&mut self) -> RegisterPluginRequest {
        tokio::time::timeout(WAIT, self.registrations.recv())
            .await
            .expect("RegisterPlugin in time")
            .expect("registration")
    }

    fn ctx() -> context::Context {
        // containerd's default request timeout.
        context::with_duration(Duration::from_secs(2))
    }

    pub async fn configure(&self, runtime: &str, config: &str) -> ConfigureResponse {
        let mut req = ConfigureRequest::new();
        req.runtime_name = runtime.into();
        req.runtime_version = "1.7.24".into();
        req.config = config.into();
        self.plugin.configure(Self::ctx(), &req).await.unwrap()
    }

    pub async fn synchronize(&self, pods: Vec<PodSandbox>, containers: Vec<Container>) {
        let mut req = SynchronizeRequest::new();
        req.pods = pods;
        req.containers = containers;
        self.plugin.synchronize(Self::ctx(), &req).await.unwrap();
    }

    /// One part of a Synchronize split the way NRI v0.8 and up splits a large state.
    pub async fn synchronize_part(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
        more: bool,
    ) -> SynchronizeResponse {
        let mut req = SynchronizeRequest::new();
        req.pods = pods;
        req.containers = containers;
        req.more = more;
        self.plugin.synchronize(Self::ctx(), &req).await.unwrap()
    }

    /// Calls `method` of the Plugin service by name with `payload`; the answer's payload, or
    /// the status the plugin answered with.
    pub async fn call(&self, method: &str, payload: Vec<u8>) -> Result<Vec<u8>, ttrpc::Status> {
        let mut req = ttrpc::Request::new();
        req.service = podmap_nri_protocol::PLUGIN_SERVICE.into();
        req.method = method.into();
        req.timeout_nano = Duration::from_secs(2).as_nanos() as i64;
        req.payload = payload;
        match self.raw.request(req).await {
            Ok(resp) => Ok(resp.payload),
            Err(ttrpc::Error::RpcStatus(status)) => Err(status),
            Err(e) => panic!("{method}: the connection failed: {e}"),
        }
    }

    /// CreateContainer; returns how long the answer took.
    pub async fn create(&self, pod: &PodSandbox, c: &Container) -> Duration {
        let mut req = CreateContainerRequest::new();
        req.pod = MessageField::some(pod.clone());
        req.container = MessageField::some(c.clone());
        let t = Instant::now();
        let resp = self
            .plugin
            .create_container(Self::ctx(), &req)
            .await
            .unwrap();
        assert!(resp.adjust.is_none() && resp.update.is_empty() && resp.evict.is_empty());
        t.elapsed()
    }

    /// A StateChange event; returns how long the answer took.
    pub async fn event(&self, event: Event, pod: &PodSandbox, c: Option<&Container>) -> Duration {
        let mut req = StateChangeEvent::new();
        req.event = event.into();
        req.pod = MessageField::some(pod.clone());
        if let Some(c) = c {
            req.container = MessageField::some(c.clone());
        }
        let t = Instant::now();
        self.plugin.state_change(Self::ctx(), &req).await.unwrap();
        t.elapsed()
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server.shutdown()).await;
    }
}

/// A pod whose cgroups exist: `<unified>/<pod dir>/{<sandbox id>,<container ids>...}`.
pub struct TestPod {
    pub cgroup: TestCgroup,
    pub pod: PodSandbox,
    pub layout: CgroupLayout,
}

pub const POD_UID_PREFIX: &str = "0000aaaa-bbbb-cccc-dddd-";

impl TestPod {
    pub fn new(name: &str) -> TestPod {
        let layout = CgroupLayout::detect(Path::new("/sys/fs/cgroup"), "memory").unwrap();
        let mount = layout.unified.clone().expect("a cgroup2 hierarchy");
        let cgroup = TestCgroup::new(&mount, "podmap-test-nri-pod").unwrap();
        let mut pod = PodSandbox::new();
        pod.id = unique_name("sandbox");
        pod.name = name.into();
        pod.uid = format!("{POD_UID_PREFIX}{:012}", std::process::id());
        pod.namespace = "prod".into();
        for (k, v) in [
            ("app", name),
            ("io.cri-containerd.kind", "sandbox"),
            ("io.kubernetes.pod.namespace", "prod"),
        ] {
            pod.labels.insert(k.into(), v.into());
        }
        let mut linux = LinuxPodSandbox::new();
        linux.cgroup_parent = format!("/{}", cgroup.rel.display());
        pod.linux = MessageField::some(linux);
        TestPod {
            cgroup,
            pod,
            layout,
        }
    }

    /// Creates the sandbox's cgroup (the pause process runs before RUN_POD_SANDBOX).
    pub fn start_sandbox(&self) -> u64 {
        self.child(&self.pod.id)
    }

    /// Creates a cgroup below the pod's; removed with the pod's (its own handle is let go, or
    /// dropping it would remove the cgroup at once).
    fn child(&self, name: &str) -> u64 {
        let child = self.cgroup.child(name).unwrap();
        let id = child.id();
        std::mem::forget(child);
        id
    }

    /// A container of this pod; its cgroup does not exist until [`TestPod::run`].
    pub fn container(&self, name: &str) -> Container {
        let mut c = Container::new();
        c.id = unique_name("ctr");
        c.pod_sandbox_id = self.pod.id.clone();
        c.name = name.into();
        c.state = ContainerState::CONTAINER_CREATED.into();
        c.annotations.insert(
            "io.kubernetes.cri.image-name".into(),
            format!("registry.local/{name}:1"),
        );
        let mut linux = LinuxContainer::new();
        linux.cgroups_path = format!("/{}/{}", self.cgroup.rel.display(), c.id);
        c.linux = MessageField::some(linux);
        c
    }

    /// runc create: the container's cgroup appears. Returns its cgroup v2 id.
    pub fn run(&self, c: &Container) -> u64 {
        self.child(&c.id)
    }

    pub fn cgroup_path(&self, c: &Container) -> String {
        format!("/{}/{}", self.cgroup.rel.display(), c.id)
    }
}

/// Private pins, state and a plugin's settings pointing at them.
pub struct Env {
    pub pins: PinDir,
    pub state: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let state = tempfile::tempdir().unwrap();
        let socket = state.path().join("nri.sock");
        Env {
            pins: PinDir::new("podmap-test-nri"),
            state,
            socket,
        }
    }

    pub fn settings(&self, grace: Duration) -> Settings {
        Settings {
            mode: Mode::External {
                socket: self.socket.clone(),
            },
            plugin_name: "podmap".into(),
            plugin_idx: "10".into(),
            bpffs_dir: self.pins.path.clone(),
            state_dir: self.state.path().join("state"),
            cgroup_root: "/sys/fs/cgroup".into(),
            v1_controller: "memory".into(),
            grace,
            log_file: None,
            policy_dir: self.state.path().join("policies"),
            own_namespace: None,
        }
    }
}

/// Polls `f` until it returns Some, up to [`WAIT`].
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn annotations(c: &Container) -> HashMap<String, String> {
    c.annotations.clone()
}
