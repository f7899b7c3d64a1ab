//! Both NRI services over one multiplexed socket, with the ttrpc crate on both ends: what a
//! plugin and a runtime see of each other through the mux.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use podmap_nri_protocol::api::{
    ConfigureRequest, ConfigureResponse, Container, Empty, RegisterPluginRequest,
    SynchronizeRequest, SynchronizeResponse,
};
use podmap_nri_protocol::api_ttrpc::{
    create_plugin, create_runtime, Plugin, PluginClient, Runtime, RuntimeClient,
};
use podmap_nri_protocol::mux::{ConnId, Multiplexer, MAX_CHUNK_PAYLOAD};
use podmap_nri_protocol::transport::{client, single_connection_listener};
use podmap_nri_protocol::ttrpc::context;
use podmap_nri_protocol::ttrpc::r#async::{Server, TtrpcContext};

#[derive(Default)]
struct FakePlugin {
    synced: Mutex<usize>,
}

#[async_trait]
impl Plugin for FakePlugin {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureRequest,
    ) -> ttrpc::Result<ConfigureResponse> {
        let mut r = ConfigureResponse::new();
        r.events = req.config.len() as i32;
        Ok(r)
    }
    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: SynchronizeRequest,
    ) -> ttrpc::Result<SynchronizeResponse> {
        *self.synced.lock().unwrap() = req.containers.len();
        Ok(SynchronizeResponse::new())
    }
}

#[derive(Default)]
struct FakeRuntime {
    registered: Mutex<Option<(String, String)>>,
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: RegisterPluginRequest,
    ) -> ttrpc::Result<Empty> {
        *self.registered.lock().unwrap() = Some((req.plugin_name, req.plugin_idx));
        Ok(Empty::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_over_one_socket() {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let ids = [ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE];
    let mut plugin_mux = Multiplexer::new(a, &ids).unwrap();
    let mut runtime_mux = Multiplexer::new(b, &ids).unwrap();

    // Plugin side: serves conn 1, calls on conn 2.
    let plugin = Arc::new(FakePlugin::default());
    let mut plugin_server = Server::new()
        .add_listener(single_connection_listener(
            plugin_mux.take(ConnId::PLUGIN_SERVICE).unwrap(),
        ))
        .register_service(create_plugin(plugin.clone()));
    plugin_server.start().await.unwrap();
    let to_runtime = RuntimeClient::new(client(plugin_mux.take(ConnId::RUNTIME_SERVICE).unwrap()));

    // Runtime side: calls on conn 1, serves conn 2.
    let runtime = Arc::new(FakeRuntime::default());
    let mut runtime_server = Server::new()
        .add_listener(single_connection_listener(
            runtime_mux.take(ConnId::RUNTIME_SERVICE).unwrap(),
        ))
        .register_service(create_runtime(runtime.clone()));
    runtime_server.start().await.unwrap();
    let to_plugin = PluginClient::new(client(runtime_mux.take(ConnId::PLUGIN_SERVICE).unwrap()));

    let ctx = || context::with_duration(Duration::from_secs(5));
    // A plugin name long enough that the plugin's message spans two chunks.
    let long_name = "p".repeat(5000);
    let mut reg = RegisterPluginRequest::new();
    reg.plugin_name = long_name.clone();
    reg.plugin_idx = "10".into();
    to_runtime.register_plugin(ctx(), &reg).await.unwrap();
    assert_eq!(
        runtime.registered.lock().unwrap().clone(),
        Some((long_name, "10".to_string()))
    );

    let mut conf = ConfigureRequest::new();
    conf.config = "x".repeat(33);
    assert_eq!(to_plugin.configure(ctx(), &conf).await.unwrap().events, 33);

    // A synchronize far over one chunk, and calls in flight concurrently.
    let mut sync = SynchronizeRequest::new();
    for i in 0..300 {
        let mut c = Container::new();
        c.id = format!("{i:064}");
        sync.containers.push(c);
    }
    let (r1, r2) = tokio::join!(
        to_plugin.synchronize(ctx(), &sync),
        to_plugin.configure(ctx(), &conf)
    );
    r1.unwrap();
    assert_eq!(r2.unwrap().events, 33);
    assert_eq!(*plugin.synced.lock().unwrap(), 300);

    for (side, mux) in [("plugin", &plugin_mux), ("runtime", &runtime_mux)] {
        let max = mux.stats().max_chunk_in.load(Ordering::Relaxed);
        assert!(
            max as usize <= MAX_CHUNK_PAYLOAD,
            "{side} got a {max}-byte chunk"
        );
    }
    assert!(runtime_mux.stats().chunks_in.load(Ordering::Relaxed) >= 3);

    // The runtime goes away: the plugin side sees it.
    drop(runtime_server);
    drop(runtime_mux);
    let why = tokio::time::timeout(Duration::from_secs(5), plugin_mux.closed())
        .await
        .unwrap();
    assert_eq!(why, podmap_nri_protocol::Closed::Eof);
    plugin_server.shutdown().await.unwrap();
}
