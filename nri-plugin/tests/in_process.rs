//! podmap-nri driven in-process by a fake runtime written against the same NRI code from the
//! other side, over a real unix socket: registration, configuration, Synchronize, the container
//! lifecycle, the reply bound, chunking of what the plugin sends, reconnection and the
//! pre-launched mode. Real cgroups (private, under the cgroup2 mount) and private pins.

mod common;

use std::os::fd::IntoRawFd;
use std::time::Duration;

use common::{eventually, labels, Env, FakeRuntime, TestPod, WAIT};
use podmap_bpf::layout::Counter;
use podmap_bpf::testing::TestCgroup;
use podmap_bpf::{ContainerId, ContainerMeta, SharedMaps};
use podmap_cgroup::{CgroupIds, CgroupKey};
use podmap_nri::config::{PreLaunchEnv, Settings};
use podmap_nri::connection;
use podmap_nri::plugin::PodmapPlugin;
use podmap_nri::records::SANDBOX_NAME;
use podmap_nri_protocol::api::{ContainerState, Event};
use podmap_nri_protocol::MAX_CHUNK_PAYLOAD;
use podmap_writer::store::{boot_id, ContainerRecord, Store};
use std::sync::atomic::Ordering;

/// What the runtime may wait for an answer, as podmap promises it (docs/decisions.md #20).
const ANSWER_BOUND: Duration = Duration::from_millis(50);

fn meta_of(maps: &SharedMaps, id: u64) -> Option<ContainerMeta> {
    maps.records.meta(CgroupKey::v2(id)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_plugin_maps_pods_and_containers_through_their_lifecycle() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let pod_a = TestPod::new("existing");
    let sandbox_a = pod_a.start_sandbox();
    let mut a1 = pod_a.container("db");
    let a1_id = pod_a.run(&a1);
    a1.state = ContainerState::CONTAINER_RUNNING.into();
    // Created before the plugin started, not started yet: waits for its START.
    let a2 = pod_a.container("late");

    // A record the runtime no longer has, left in the store by an earlier run.
    let gone = TestCgroup::new(
        pod_a.layout.unified.as_ref().unwrap(),
        "podmap-test-nri-stale",
    )
    .unwrap();
    let stale = ContainerRecord {
        meta: ContainerMeta {
            container_id: ContainerId("stale".into()),
            cgroup_path: format!("/{}", gone.rel.display()),
            ..Default::default()
        },
        ids: CgroupIds {
            v2: Some(podmap_cgroup::CgroupId(gone.id())),
            v1: None,
        },
        boot_id: boot_id().unwrap(),
        created_ns: 1,
        removed_ns: None,
    };
    {
        let settings = env.settings(Duration::from_secs(1));
        std::fs::create_dir_all(&settings.state_dir).unwrap();
        Store::open(&settings.store_path())
            .unwrap()
            .put(&stale)
            .unwrap();
    }

    let listener = tokio::net::UnixListener::bind(&env.socket).unwrap();
    let plugin = PodmapPlugin::new(env.settings(Duration::from_secs(1)), None);
    let sweeper = plugin.spawn_sweeper(Duration::from_millis(200));
    {
        let p = plugin.clone();
        assert!(tokio::task::spawn_blocking(move || p.open_backend())
            .await
            .unwrap());
    }
    let maps = SharedMaps::open(&env.pins.path).unwrap();
    // Restored from the store at start-up.
    assert!(maps
        .records
        .get(CgroupKey::v2(gone.id()))
        .unwrap()
        .is_some());

    let socket = env.socket.clone();
    let p = plugin.clone();
    let serving =
        tokio::spawn(async move { connection::run_external(&socket, p, "podmap", "10").await });

    let mut rt = FakeRuntime::accept(&listener).await;
    let reg = rt.registered().await;
    assert_eq!(
        (reg.plugin_name.as_str(), reg.plugin_idx.as_str()),
        ("podmap", "10")
    );

    let conf = rt.configure("containerd", "").await;
    assert_eq!(
        conf.events,
        0x1 | 0x4 | 0x8 | 0x20 | 0x400,
        "RUN_POD_SANDBOX, REMOVE_POD_SANDBOX, CREATE, START, REMOVE_CONTAINER"
    );

    // Synchronize: what exists is mapped, what the runtime forgot is dropped.
    rt.synchronize(vec![pod_a.pod.clone()], vec![a1.clone(), a2.clone()])
        .await;
    let m = eventually("the running container mapped by Synchronize", || {
        meta_of(&maps, a1_id)
    })
    .await;
    assert_eq!(m.name, "db");
    assert_eq!(m.pod_name, "existing");
    assert_eq!(m.labels, labels(&[("app", "existing")]));
    let s = eventually("the existing sandbox mapped", || meta_of(&maps, sandbox_a)).await;
    assert!(s.sandbox);
    assert!(
        maps.records
            .get(CgroupKey::v2(sandbox_a))
            .unwrap()
            .unwrap()
            .flags
            .sandbox
    );
    eventually("the stale record forgotten", || {
        maps.records
            .get(CgroupKey::v2(gone.id()))
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        plugin.inspect(|m| m.backend().unwrap().registry.records().iter().all(|r| r
            .meta
            .container_id
            .0
            != "stale"))
    );
    // The created-not-started container maps at its START, with its create-time metadata.
    let a2_id = pod_a.run(&a2);
    assert!(
        rt.event(Event::START_CONTAINER, &pod_a.pod, Some(&a2))
            .await
            < WAIT
    );
    assert_eq!(meta_of(&maps, a2_id).unwrap().name, "late");

    // A new pod: the sandbox's own cgroup is mapped at RUN_POD_SANDBOX.
    let pod_b = TestPod::new("web");
    let sandbox_b = pod_b.start_sandbox();
    rt.event(Event::RUN_POD_SANDBOX, &pod_b.pod, None).await;
    let s = meta_of(&maps, sandbox_b).expect("sandbox mapped before the answer");
    assert!(s.sandbox);
    assert_eq!(s.name, SANDBOX_NAME);
    assert_eq!(s.container_id.0, pod_b.pod.id);
    assert_eq!(s.pod_uid.as_ref().unwrap().0, pod_b.pod.uid);

    // CreateContainer records the metadata; the cgroup appears (runc create); START maps it
    // before answering. The START's copy lacks the annotations: the create's metadata is used.
    let c = pod_b.container("nginx");
    rt.create(&pod_b.pod, &c).await;
    let c_id = pod_b.run(&c);
    assert!(meta_of(&maps, c_id).is_none());
    let mut at_start = c.clone();
    at_start.annotations.clear();
    at_start.pid = 0;
    rt.event(Event::START_CONTAINER, &pod_b.pod, Some(&at_start))
        .await;
    let rec = maps
        .records
        .get(CgroupKey::v2(c_id))
        .unwrap()
        .expect("mapped when START_CONTAINER is answered");
    assert!(!rec.flags.sandbox && !rec.flags.removing);
    let m = meta_of(&maps, c_id).unwrap();
    assert_eq!(m.container_id.0, c.id);
    assert_eq!(m.name, "nginx");
    assert_eq!(m.pod_uid.unwrap().0, pod_b.pod.uid);
    assert_eq!(m.pod_name, "web");
    assert_eq!(m.namespace, "prod");
    assert_eq!(m.labels, labels(&[("app", "web")]), "runtime keys stripped");
    assert_eq!(m.image, "registry.local/nginx:1");
    assert_eq!(m.runtime, "containerd");
    assert!(!m.sandbox);
    assert_eq!(m.cgroup_path, pod_b.cgroup_path(&c));
    let counters = &maps.counters;
    assert!(counters.get(Counter::NriMapped) >= 5);
    assert!(counters.get(Counter::NriEvents) >= 6);
    assert!(counters.latency_histogram().iter().sum::<u64>() >= 2);
    assert_eq!(counters.get(Counter::NriFailures), 0);

    // REMOVE_CONTAINER: kept through the grace period (1 s here), then swept.
    rt.event(Event::REMOVE_CONTAINER, &pod_b.pod, Some(&c))
        .await;
    assert!(
        maps.records
            .get(CgroupKey::v2(c_id))
            .unwrap()
            .unwrap()
            .flags
            .removing
    );
    eventually("the removed container swept after its grace", || {
        maps.records
            .get(CgroupKey::v2(c_id))
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // A START whose work blocks (a stuck map write, simulated by holding the lock) is still
    // answered within the bound; the mapping lands when the work gets through.
    let slow = pod_b.container("slow");
    rt.create(&pod_b.pod, &slow).await;
    let slow_id = pod_b.run(&slow);
    let slow_before = counters.get(Counter::NriSlowReplies);
    plugin.inject_stall(Duration::from_millis(1500));
    let took = rt
        .event(Event::START_CONTAINER, &pod_b.pod, Some(&slow))
        .await;
    assert!(took < ANSWER_BOUND, "answered after {took:?}");
    // Calls behind the stuck one are bounded too.
    let other = pod_b.container("other");
    let took = rt.create(&pod_b.pod, &other).await;
    assert!(took < ANSWER_BOUND, "answered after {took:?}");
    assert!(counters.get(Counter::NriSlowReplies) >= slow_before + 2);
    eventually("the stalled mapping lands", || meta_of(&maps, slow_id)).await;

    // A START whose cgroup does not exist is answered with success and counted.
    let ghost = pod_b.container("ghost");
    rt.event(Event::START_CONTAINER, &pod_b.pod, Some(&ghost))
        .await;
    assert_eq!(counters.get(Counter::NriFailures), 1);
    assert!(counters.get(Counter::CgroupUnresolved) >= 1);

    // The runtime goes away: the plugin connects again and registers again.
    drop(rt);
    let mut rt = FakeRuntime::accept(&listener).await;
    assert_eq!(rt.registered().await.plugin_name, "podmap");
    rt.configure("containerd", "").await;
    rt.event(Event::REMOVE_POD_SANDBOX, &pod_b.pod, None).await;
    assert!(
        maps.records
            .get(CgroupKey::v2(sandbox_b))
            .unwrap()
            .unwrap()
            .flags
            .removing
    );

    rt.close().await;
    serving.abort();
    sweeper.abort();
}

/// What a runtime of NRI v0.8 to v0.12 does that containerd 1.7 never did: a Synchronize split
/// over several requests, one call per lifecycle event instead of StateChange, and calls the
/// plugin may not know. Each is answered, and the split state is reconciled as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_runtimes_split_synchronize_and_per_event_calls_are_handled() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let listener = tokio::net::UnixListener::bind(&env.socket).unwrap();
    let plugin = PodmapPlugin::new(env.settings(Duration::from_secs(30)), None);
    {
        let p = plugin.clone();
        assert!(tokio::task::spawn_blocking(move || p.open_backend())
            .await
            .unwrap());
    }
    let maps = SharedMaps::open(&env.pins.path).unwrap();
    let socket = env.socket.clone();
    let p = plugin.clone();
    let serving =
        tokio::spawn(async move { connection::run_external(&socket, p, "podmap", "10").await });
    let mut rt = FakeRuntime::accept(&listener).await;
    rt.registered().await;
    rt.configure("containerd", "").await;

    // Two running containers, told in two parts. The first part alone must not be taken for
    // the whole state (it would forget the second part's container if that were mapped).
    let pod = TestPod::new("split");
    let sandbox = pod.start_sandbox();
    let mut first = pod.container("first");
    let mut second = pod.container("second");
    first.state = ContainerState::CONTAINER_RUNNING.into();
    second.state = ContainerState::CONTAINER_RUNNING.into();
    let first_id = pod.run(&first);
    let second_id = pod.run(&second);
    let part = rt
        .synchronize_part(vec![pod.pod.clone()], vec![first.clone()], true)
        .await;
    assert!(part.more, "a plugin that takes a split answers more = true");
    assert!(part.update.is_empty());
    assert!(
        meta_of(&maps, first_id).is_none(),
        "nothing is reconciled before the last part"
    );
    let last = rt
        .synchronize_part(vec![], vec![second.clone()], false)
        .await;
    assert!(!last.more);
    for (id, name) in [(first_id, "first"), (second_id, "second")] {
        let m = eventually("both parts' containers mapped", || meta_of(&maps, id)).await;
        assert_eq!((m.name.as_str(), m.pod_name.as_str()), (name, "split"));
    }
    assert!(meta_of(&maps, sandbox).unwrap().sandbox);

    // One call per event (NRI v0.12): RunPodSandbox maps the sandbox, StartContainer the
    // container, RemoveContainer marks it, each before its answer, as StateChange does.
    use podmap_nri_protocol::api::{
        CreateContainerRequest, RemoveContainerRequest, RunPodSandboxRequest, StartContainerRequest,
    };
    use podmap_nri_protocol::protobuf::{Message, MessageField};
    let next = TestPod::new("percall");
    let next_sandbox = next.start_sandbox();
    let mut run = RunPodSandboxRequest::new();
    run.pod = MessageField::some(next.pod.clone());
    rt.call("RunPodSandbox", run.write_to_bytes().unwrap())
        .await
        .unwrap();
    assert!(
        meta_of(&maps, next_sandbox)
            .expect("sandbox mapped")
            .sandbox
    );
    let c = next.container("web");
    let mut create = CreateContainerRequest::new();
    create.pod = MessageField::some(next.pod.clone());
    create.container = MessageField::some(c.clone());
    rt.call("CreateContainer", create.write_to_bytes().unwrap())
        .await
        .unwrap();
    let c_id = next.run(&c);
    let mut start = StartContainerRequest::new();
    start.pod = MessageField::some(next.pod.clone());
    start.container = MessageField::some(c.clone());
    rt.call("StartContainer", start.write_to_bytes().unwrap())
        .await
        .unwrap();
    let m = meta_of(&maps, c_id).expect("mapped when StartContainer is answered");
    assert_eq!((m.name.as_str(), m.pod_name.as_str()), ("web", "percall"));
    let mut remove = RemoveContainerRequest::new();
    remove.pod = MessageField::some(next.pod.clone());
    remove.container = MessageField::some(c.clone());
    rt.call("RemoveContainer", remove.write_to_bytes().unwrap())
        .await
        .unwrap();
    let rec = maps.records.get(CgroupKey::v2(c_id)).unwrap().unwrap();
    assert!(
        rec.flags.removing,
        "marked when RemoveContainer is answered"
    );

    assert_eq!(maps.counters.get(Counter::NriFailures), 0);

    // Every method of the service is answered with success, whatever podmap makes of it: a
    // method left to the generated default would answer NOT_FOUND, which a v0.12 runtime takes
    // as a failed event. An empty payload is every request message with no field set.
    let methods: Vec<String> = podmap_nri_protocol::api::file_descriptor()
        .proto()
        .service
        .iter()
        .find(|s| s.name() == "Plugin")
        .expect("the Plugin service")
        .method
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(methods.len(), 18, "the v0.12 service: {methods:?}");
    for method in &methods {
        if method == "Shutdown" {
            continue;
        }
        if let Err(status) = rt.call(method, Vec::new()).await {
            panic!("{method} answered {status:?}");
        }
    }
    // A method of an API newer than this build: UNIMPLEMENTED (a runtime then falls back to
    // StateChange), and the connection goes on serving.
    let status = rt.call("NextYearsCall", Vec::new()).await.unwrap_err();
    assert_eq!(
        status.code(),
        podmap_nri_protocol::ttrpc::Code::UNIMPLEMENTED
    );
    // An event number from the future, through StateChange: answered, ignored.
    let mut future = podmap_nri_protocol::api::StateChangeEvent::new();
    future.event = podmap_nri_protocol::protobuf::EnumOrUnknown::from_i32(99);
    rt.call("StateChange", future.write_to_bytes().unwrap())
        .await
        .unwrap();
    assert_eq!(rt.configure("containerd", "").await.events & !0x7ff, 0);

    rt.close().await;
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_4096_bytes_from_the_plugin_is_split_into_chunks() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let listener = tokio::net::UnixListener::bind(&env.socket).unwrap();
    let plugin = PodmapPlugin::new(env.settings(Duration::from_secs(30)), None);
    // The registration is the plugin's biggest message: a long name makes it 5000+ bytes.
    let name = "p".repeat(5000);
    let socket = env.socket.clone();
    let (p, n) = (plugin.clone(), name.clone());
    let serving = tokio::spawn(async move { connection::run_external(&socket, p, &n, "10").await });
    let mut rt = FakeRuntime::accept(&listener).await;
    assert_eq!(rt.registered().await.plugin_name, name);
    let stats = rt.mux.stats();
    let max = stats.max_chunk_in.load(Ordering::Relaxed) as usize;
    assert!(
        max <= MAX_CHUNK_PAYLOAD,
        "the plugin sent a {max}-byte chunk"
    );
    assert!(stats.chunks_in.load(Ordering::Relaxed) >= 2);
    // Still in step after the split message.
    assert_eq!(rt.configure("containerd", "").await.events & !0x7ff, 0);
    // Configure opens maps and store in the background: let that finish before the pins go.
    let p = plugin.clone();
    assert!(
        tokio::task::spawn_blocking(move || p.inspect(|m| m.is_ready()))
            .await
            .unwrap()
    );
    rt.close().await;
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prelaunched_plugin_registers_and_takes_its_settings_from_configure() {
    if podmap_bpf::testing::requires_root() {
        return;
    }
    let env = Env::new();
    let (theirs, ours) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = theirs.into_raw_fd();
    let penv = PreLaunchEnv {
        socket: Some(fd.to_string()),
        name: Some("podmap".into()),
        idx: Some("10".into()),
    };
    // Defaults until Configure: they are never used to open anything.
    let settings = Settings::prelaunched_defaults(&penv);
    let plugin = PodmapPlugin::new(settings, None);
    let sweeper = plugin.spawn_sweeper(Duration::from_millis(50));
    let p = plugin.clone();
    let serving =
        tokio::spawn(async move { connection::run_prelaunched(fd, p, "podmap", "10").await });

    ours.set_nonblocking(true).unwrap();
    let mut rt = FakeRuntime::on(tokio::net::UnixStream::from_std(ours).unwrap()).await;
    let reg = rt.registered().await;
    assert_eq!(
        (reg.plugin_name.as_str(), reg.plugin_idx.as_str()),
        ("podmap", "10")
    );
    let wanted = env.settings(Duration::from_secs(7));
    let yaml = format!(
        "bpffs-dir: '{}'\nstate-dir: '{}'\ncgroup-root: /sys/fs/cgroup\ngrace: 7\n",
        wanted.bpffs_dir.display(),
        wanted.state_dir.display()
    );
    rt.configure("containerd", &yaml).await;
    let s = plugin.settings();
    assert_eq!(s.bpffs_dir, wanted.bpffs_dir);
    assert_eq!(s.state_dir, wanted.state_dir);
    assert_eq!(s.grace, Duration::from_secs(7));
    let p = plugin.clone();
    assert!(
        tokio::task::spawn_blocking(move || p.inspect(|m| m.is_ready()))
            .await
            .unwrap()
    );

    // Pre-launched plugins get no Synchronize: events alone map.
    let pod = TestPod::new("pre");
    let sandbox = pod.start_sandbox();
    rt.event(Event::RUN_POD_SANDBOX, &pod.pod, None).await;
    let maps = SharedMaps::open(&env.pins.path).unwrap();
    let m = eventually("the sandbox mapped in the configured pins", || {
        maps.records.meta(CgroupKey::v2(sandbox)).unwrap()
    })
    .await;
    assert!(m.sandbox);
    assert_eq!(
        plugin.inspect(|m| m.store_path().map(|p| p.to_owned())),
        Some(wanted.store_path())
    );
    sweeper.abort();

    // The runtime closes the connection: the session ends (a new instance takes over).
    rt.close().await;
    let end = tokio::time::timeout(WAIT, serving)
        .await
        .expect("the session ends with the connection")
        .unwrap()
        .unwrap();
    assert!(end.registered);
}
