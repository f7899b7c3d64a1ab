//! The generated NRI messages: round trips, and the field numbers containerd's side uses, checked
//! on hand-encoded bytes.

use podmap_nri_protocol::api::{
    ConfigureRequest, ConfigureResponse, Container, ContainerState, CreateContainerRequest, Event,
    LinuxContainer, LinuxPodSandbox, PodSandbox, RegisterPluginRequest, StateChangeEvent,
    SynchronizeRequest,
};
use podmap_nri_protocol::protobuf::{Message, MessageField};

fn pod() -> PodSandbox {
    let mut p = PodSandbox::new();
    p.id = "a".repeat(64);
    p.name = "web-1".into();
    p.uid = "12345678-1234-1234-1234-123456789abc".into();
    p.namespace = "prod".into();
    p.labels.insert("app".into(), "web".into());
    p.labels
        .insert("io.cri-containerd.kind".into(), "sandbox".into());
    let mut linux = LinuxPodSandbox::new();
    linux.cgroup_parent = "/kubepods/besteffort/pod12345678-1234-1234-1234-123456789abc".into();
    p.linux = MessageField::some(linux);
    p.pid = 4242;
    p
}

fn container() -> Container {
    let mut c = Container::new();
    c.id = "b".repeat(64);
    c.pod_sandbox_id = "a".repeat(64);
    c.name = "nginx".into();
    c.state = ContainerState::CONTAINER_CREATED.into();
    c.annotations
        .insert("io.kubernetes.cri.image-name".into(), "nginx:1".into());
    let mut linux = LinuxContainer::new();
    linux.cgroups_path = format!(
        "/kubepods/besteffort/pod12345678-1234-1234-1234-123456789abc/{}",
        "b".repeat(64)
    );
    c.linux = MessageField::some(linux);
    c.pid = 77;
    c
}

#[test]
fn requests_round_trip() {
    let mut req = CreateContainerRequest::new();
    req.pod = MessageField::some(pod());
    req.container = MessageField::some(container());
    let bytes = req.write_to_bytes().unwrap();
    let back = CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
    assert_eq!(back, req);
    assert_eq!(
        back.container.linux.cgroups_path,
        container().linux.cgroups_path
    );

    let mut sync = SynchronizeRequest::new();
    sync.pods = vec![pod(); 3];
    sync.containers = vec![container(); 40];
    let bytes = sync.write_to_bytes().unwrap();
    assert!(bytes.len() > 4096, "a synchronize this size spans chunks");
    assert_eq!(SynchronizeRequest::parse_from_bytes(&bytes).unwrap(), sync);

    let mut ev = StateChangeEvent::new();
    ev.event = Event::REMOVE_CONTAINER.into();
    ev.pod = MessageField::some(pod());
    ev.container = MessageField::some(container());
    let bytes = ev.write_to_bytes().unwrap();
    assert_eq!(StateChangeEvent::parse_from_bytes(&bytes).unwrap(), ev);
}

#[test]
fn field_numbers_match_the_wire() {
    let mut reg = RegisterPluginRequest::new();
    reg.plugin_name = "podmap".into();
    reg.plugin_idx = "10".into();
    assert_eq!(
        reg.write_to_bytes().unwrap(),
        b"\x0a\x06podmap\x12\x0210".to_vec()
    );

    let mut resp = ConfigureResponse::new();
    resp.events = 0x421;
    // Field 2, varint 0x421.
    assert_eq!(resp.write_to_bytes().unwrap(), vec![0x10, 0xa1, 0x08]);

    // Container{id=1 "c", linux=11 {cgroups_path=5 "/x"}, pid=12 7}.
    let wire = b"\x0a\x01c\x5a\x04\x2a\x02/x\x60\x07";
    let c = Container::parse_from_bytes(wire).unwrap();
    assert_eq!(c.id, "c");
    assert_eq!(c.linux.cgroups_path, "/x");
    assert_eq!(c.pid, 7);

    // PodSandbox{uid=3 "u", linux=8 {cgroup_parent=3 "/p", cgroups_path=4 "/q"}}.
    let wire = b"\x1a\x01u\x42\x08\x1a\x02/p\x22\x02/q";
    let p = PodSandbox::parse_from_bytes(wire).unwrap();
    assert_eq!(p.uid, "u");
    assert_eq!(p.linux.cgroup_parent, "/p");
    assert_eq!(p.linux.cgroups_path, "/q");

    // StateChangeEvent{event=1 START_CONTAINER(6)}.
    let e = StateChangeEvent::parse_from_bytes(b"\x08\x06").unwrap();
    assert_eq!(e.event.enum_value(), Ok(Event::START_CONTAINER));
}

#[test]
fn fields_of_newer_nri_are_tolerated() {
    // ConfigureRequest{config=1 "a: b", runtime_name=2 "containerd",
    //   registration_timeout=4 5000, NRI_version=6 "v0.12.2", 40 "later"}: field 40 is newer
    //   than any NRI this build knows.
    let mut wire = b"\x0a\x04a: b\x12\x0acontainerd".to_vec();
    wire.extend_from_slice(b"\x20\x88\x27");
    wire.extend_from_slice(b"\x32\x07v0.12.2");
    wire.extend_from_slice(b"\xc2\x02\x05later");
    let c = ConfigureRequest::parse_from_bytes(&wire).unwrap();
    assert_eq!(c.config, "a: b");
    assert_eq!(c.runtime_name, "containerd");
    assert_eq!(c.registration_timeout, 5000);
    assert_eq!(c.NRI_version, "v0.12.2");
    assert_eq!(c.special_fields.unknown_fields().iter().count(), 1);
    // Unknown fields survive a re-encode, so nothing is lost passing a message on.
    let again = ConfigureRequest::parse_from_bytes(&c.write_to_bytes().unwrap()).unwrap();
    assert_eq!(again, c);
}
