//! podmap's NRI API against the API the runtimes here were built from: the api.proto and the
//! generated Go stub (api.pb.go) of containerd/nri as Debian packages them for containerd 1.7
//! (trixie, NRI v0.6.1) and containerd 2.1 (forky, NRI v0.8.0), fetched and cached by
//! scripts/fetch-nri-upstream.sh.
//!
//! Two checks per release:
//! - every message, field (name, number, type, label) and enum value, and every method of its
//!   services, is in podmap's api.proto unchanged;
//! - every message, encoded with every field set by the upstream Go stub itself
//!   (tests/upstream/encode.go, built here with Debian's Go), decodes with podmap's generated
//!   types with no field unknown, and encodes back to the same bytes.
//!
//! `PODMAP_NRI_API_PROTO=<path to an upstream api.proto>` adds a structural check against
//! that file, both ways (the tag podmap's file follows, v0.12.2, which no registry here
//! carries: `git show v0.12.2:pkg/api/api.proto` in a clone of containerd/nri).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use podmap_nri_protocol::api;
use podmap_nri_protocol::protobuf;
use protobuf::descriptor::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};
use protobuf::reflect::{FileDescriptor, ReflectFieldRef, ReflectValueRef};
use protobuf::MessageDyn;

const PACKAGE: &str = "nri.pkg.api.v1alpha1";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: needs root (the upstream API is fetched into /var/cache)"
    );
    true
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cached prefix with `trixie/` and `forky/`.
fn upstream() -> PathBuf {
    let out = Command::new(repo().join("scripts/fetch-nri-upstream.sh"))
        .output()
        .expect("running scripts/fetch-nri-upstream.sh");
    assert!(
        out.status.success(),
        "scripts/fetch-nri-upstream.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

const RELEASES: [(&str, &str); 2] = [("trixie", "containerd 1.7"), ("forky", "containerd 2.1")];

fn api_dir(release: &Path) -> PathBuf {
    release.join("usr/share/gocode/src/github.com/containerd/nri/pkg/api")
}

/// The NRI module's version in a release directory, as Debian numbers it.
fn nri_version(release: &Path) -> String {
    let packages = std::fs::read_to_string(release.join(".packages")).unwrap();
    packages
        .lines()
        .find_map(|l| l.strip_prefix("golang-github-containerd-nri-dev "))
        .expect("the nri package's version")
        .to_string()
}

fn parse_proto(path: &Path) -> FileDescriptorProto {
    let dir = path.parent().unwrap();
    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include(dir)
        .input(path)
        .parse_and_typecheck()
        .unwrap_or_else(|e| panic!("parsing {}: {e:#}", path.display()));
    parsed
        .file_descriptors
        .into_iter()
        .find(|f| f.package() == PACKAGE)
        .expect("the NRI package")
}

/// Every message (nested ones as `Outer.Inner`) and enum of a file, by name.
fn index(
    file: &FileDescriptorProto,
) -> (
    BTreeMap<String, DescriptorProto>,
    BTreeMap<String, EnumDescriptorProto>,
) {
    fn walk(
        prefix: &str,
        messages: &[DescriptorProto],
        m: &mut BTreeMap<String, DescriptorProto>,
        e: &mut BTreeMap<String, EnumDescriptorProto>,
    ) {
        for msg in messages {
            let name = format!("{prefix}{}", msg.name());
            for en in &msg.enum_type {
                e.insert(format!("{name}.{}", en.name()), en.clone());
            }
            walk(&format!("{name}."), &msg.nested_type, m, e);
            m.insert(name, msg.clone());
        }
    }
    let (mut m, mut e) = (BTreeMap::new(), BTreeMap::new());
    for en in &file.enum_type {
        e.insert(en.name().to_string(), en.clone());
    }
    walk("", &file.message_type, &mut m, &mut e);
    (m, e)
}

/// What podmap's api.proto lacks or has differently from `upstream`, one line each.
fn differences(upstream: &FileDescriptorProto, ours: &FileDescriptorProto) -> Vec<String> {
    let (their_msgs, their_enums) = index(upstream);
    let (our_msgs, our_enums) = index(ours);
    let mut out = Vec::new();
    for (name, theirs) in &their_msgs {
        let Some(mine) = our_msgs.get(name) else {
            out.push(format!("message {name} missing"));
            continue;
        };
        for f in &theirs.field {
            let shape = |f: &protobuf::descriptor::FieldDescriptorProto| {
                (
                    f.number(),
                    f.type_(),
                    f.label(),
                    f.type_name().to_string(),
                    f.oneof_index,
                )
            };
            match mine.field.iter().find(|m| m.name() == f.name()) {
                None => out.push(format!("{name}.{} missing", f.name())),
                Some(m) if shape(m) != shape(f) => out.push(format!(
                    "{name}.{}: ours {:?}, upstream {:?}",
                    f.name(),
                    shape(m),
                    shape(f)
                )),
                Some(_) => {}
            }
            if let Some(other) = mine
                .field
                .iter()
                .find(|m| m.number() == f.number() && m.name() != f.name())
            {
                out.push(format!(
                    "{name}: number {} is {} upstream, {} here",
                    f.number(),
                    f.name(),
                    other.name()
                ));
            }
        }
    }
    for (name, theirs) in &their_enums {
        let Some(mine) = our_enums.get(name) else {
            out.push(format!("enum {name} missing"));
            continue;
        };
        for v in &theirs.value {
            // Event.LAST marks the end of the events a release knows; it moves with every new
            // event by design and is never sent.
            if name == "Event" && v.name() == "LAST" {
                continue;
            }
            match mine.value.iter().find(|m| m.name() == v.name()) {
                Some(m) if m.number() == v.number() => {}
                Some(m) => out.push(format!(
                    "{name}.{}: ours {}, upstream {}",
                    v.name(),
                    m.number(),
                    v.number()
                )),
                None => out.push(format!("{name}.{} missing", v.name())),
            }
        }
    }
    for service in &upstream.service {
        let Some(mine) = ours.service.iter().find(|s| s.name() == service.name()) else {
            out.push(format!("service {} missing", service.name()));
            continue;
        };
        for method in &service.method {
            let sig = |m: &protobuf::descriptor::MethodDescriptorProto| {
                (m.input_type().to_string(), m.output_type().to_string())
            };
            match mine.method.iter().find(|m| m.name() == method.name()) {
                Some(m) if sig(m) == sig(method) => {}
                Some(m) => out.push(format!(
                    "{}.{}: ours {:?}, upstream {:?}",
                    service.name(),
                    method.name(),
                    sig(m),
                    sig(method)
                )),
                None => out.push(format!("{}.{} missing", service.name(), method.name())),
            }
        }
    }
    out
}

fn ours() -> FileDescriptorProto {
    parse_proto(&Path::new(env!("CARGO_MANIFEST_DIR")).join("nri/api.proto"))
}

#[test]
fn the_check_finds_a_changed_number_a_missing_field_and_a_missing_enum_value() {
    let mut changed = ours();
    let pod = changed
        .message_type
        .iter_mut()
        .find(|m| m.name() == "PodSandbox")
        .unwrap();
    pod.field
        .iter_mut()
        .find(|f| f.name() == "uid")
        .unwrap()
        .set_number(30);
    pod.field.retain(|f| f.name() != "namespace");
    let event = changed
        .enum_type
        .iter_mut()
        .find(|e| e.name() == "Event")
        .unwrap();
    event.value.retain(|v| v.name() != "REMOVE_CONTAINER");
    let found = differences(&ours(), &changed);
    assert!(
        found
            .iter()
            .any(|d| d.starts_with("PodSandbox.uid: ours (30")),
        "{found:?}"
    );
    assert!(
        found.contains(&"PodSandbox.namespace missing".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"Event.REMOVE_CONTAINER missing".to_string()),
        "{found:?}"
    );
    assert!(differences(&ours(), &ours()).is_empty());
    // The generated types are built from the same file.
    let generated = index(api::file_descriptor().proto());
    assert_eq!(generated.0.len(), index(&ours()).0.len());
    // More than v0.8.0 (containerd 2.1) has: 52, map entries included.
    assert!(generated.0.len() > 52, "{}", generated.0.len());
}

#[test]
fn every_message_field_and_enum_value_of_the_runtimes_nri_is_here_unchanged() {
    if skip_unless_root() {
        return;
    }
    let prefix = upstream();
    let mine = ours();
    let mut files: Vec<(String, PathBuf)> = RELEASES
        .iter()
        .map(|(dir, runtime)| {
            let release = prefix.join(dir);
            (
                format!("NRI {} ({runtime})", nri_version(&release)),
                api_dir(&release).join("api.proto"),
            )
        })
        .collect();
    if let Some(extra) = std::env::var_os("PODMAP_NRI_API_PROTO") {
        let theirs = parse_proto(Path::new(&extra));
        let extra_here = differences(&mine, &theirs);
        assert!(
            extra_here.is_empty(),
            "beyond {extra:?}:\n{}",
            extra_here.join("\n")
        );
        files.push(("PODMAP_NRI_API_PROTO".into(), PathBuf::from(extra)));
    }
    for (what, path) in files {
        let theirs = parse_proto(&path);
        let (messages, enums) = index(&theirs);
        assert!(messages.len() >= 40, "{what}: {} messages?", messages.len());
        let diff = differences(&theirs, &mine);
        assert!(
            diff.is_empty(),
            "{what} ({}):\n{}",
            path.display(),
            diff.join("\n")
        );
        eprintln!(
            "{what}: {} messages, {} enums, {} methods: all here",
            messages.len(),
            enums.len(),
            theirs.service.iter().map(|s| s.method.len()).sum::<usize>()
        );
    }
}

/// Builds tests/upstream/encode.go against a release's api.pb.go with the cached Go toolchain
/// and runs it: "<full name> <hex>" per message.
fn encoded_by_upstream(prefix: &Path, release: &Path) -> Vec<(String, Vec<u8>)> {
    let forky = prefix.join("forky");
    let goroot = std::fs::read_dir(forky.join("usr/lib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("go-"))
        })
        .expect("the Go toolchain in the cache");
    let gopath = tempfile::tempdir().unwrap();
    let src = gopath.path().join("src");
    std::fs::create_dir_all(src.join("nriapi")).unwrap();
    std::fs::create_dir_all(src.join("encode")).unwrap();
    std::fs::create_dir_all(src.join("google.golang.org")).unwrap();
    std::fs::copy(
        api_dir(release).join("api.pb.go"),
        src.join("nriapi/api.pb.go"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/encode.go"),
        src.join("encode/main.go"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        forky.join("usr/share/gocode/src/google.golang.org/protobuf"),
        src.join("google.golang.org/protobuf"),
    )
    .unwrap();
    let binary = gopath.path().join("encode");
    // GOPATH mode with nothing but the stub and Go's protobuf runtime: no module download.
    let out = Command::new(goroot.join("bin/go"))
        .args(["build", "-o"])
        .arg(&binary)
        .arg("encode")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", gopath.path())
        .env("GOROOT", &goroot)
        .env("GOPATH", gopath.path())
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", prefix.join("gocache"))
        .env("CGO_ENABLED", "0")
        .output()
        .expect("running go build");
    assert!(
        out.status.success(),
        "building the encoder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&binary).output().expect("running the encoder");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, hex) = l.split_once(' ').expect("<name> <hex>");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (name.to_string(), bytes)
        })
        .collect()
}

/// Fields of `m` and its nested messages that the generated types did not recognise.
fn unknown_fields(m: &dyn MessageDyn, path: &str, out: &mut Vec<String>) {
    let unknown: Vec<u32> = m.unknown_fields_dyn().iter().map(|(n, _)| n).collect();
    if !unknown.is_empty() {
        out.push(format!("{path}: unknown field numbers {unknown:?}"));
    }
    let nested = |v: ReflectValueRef, p: String, out: &mut Vec<String>| {
        if let ReflectValueRef::Message(inner) = v {
            unknown_fields(&*inner, &p, out);
        }
    };
    for f in m.descriptor_dyn().fields() {
        let p = format!("{path}.{}", f.name());
        match f.get_reflect(m) {
            ReflectFieldRef::Optional(o) => {
                if let Some(v) = o.value() {
                    nested(v, p, out);
                }
            }
            ReflectFieldRef::Repeated(r) => {
                for v in r.into_iter() {
                    nested(v, p.clone(), out);
                }
            }
            ReflectFieldRef::Map(map) => {
                for (_, v) in &map {
                    nested(v, p.clone(), out);
                }
            }
        }
    }
}

#[test]
fn what_the_runtimes_go_stubs_encode_decodes_whole_and_encodes_back_the_same() {
    if skip_unless_root() {
        return;
    }
    let prefix = upstream();
    let ours: FileDescriptor = api::file_descriptor().clone();
    for (dir, runtime) in RELEASES {
        let release = prefix.join(dir);
        let what = format!("NRI {} ({runtime})", nri_version(&release));
        let encoded = encoded_by_upstream(&prefix, &release);
        assert!(encoded.len() >= 40, "{what}: {} messages?", encoded.len());
        let mut problems = Vec::new();
        for (name, bytes) in &encoded {
            let short = name.strip_prefix(&format!("{PACKAGE}.")).unwrap();
            let Some(desc) = ours.message_by_package_relative_name(short) else {
                problems.push(format!("{name}: no such message here"));
                continue;
            };
            assert!(
                !bytes.is_empty() || desc.fields().next().is_none(),
                "{name}"
            );
            let decoded = match desc.parse_from_bytes(bytes) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    continue;
                }
            };
            unknown_fields(&*decoded, short, &mut problems);
            let again = decoded.write_to_bytes_dyn().unwrap();
            if &again != bytes {
                problems.push(format!(
                    "{name}: re-encoded {} bytes differ from upstream's {}",
                    again.len(),
                    bytes.len()
                ));
            }
        }
        assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
        eprintln!(
            "{what}: {} messages decoded whole and re-encoded the same",
            encoded.len()
        );
    }
}

/// The decoding check can fail: a message with a field number podmap does not define is
/// reported, and a field of the wrong type re-encodes differently.
#[test]
fn the_decoding_check_sees_unknown_fields() {
    let mut pod = api::PodSandbox::new();
    pod.id = "x".into();
    let mut bytes = protobuf::Message::write_to_bytes(&pod).unwrap();
    // Field 90, varint 1: no field of PodSandbox.
    bytes.extend_from_slice(&[0xd0, 0x05, 0x01]);
    let desc = api::file_descriptor()
        .message_by_package_relative_name("PodSandbox")
        .unwrap();
    let decoded = desc.parse_from_bytes(&bytes).unwrap();
    let mut problems = Vec::new();
    unknown_fields(&*decoded, "PodSandbox", &mut problems);
    assert_eq!(
        problems,
        vec!["PodSandbox: unknown field numbers [90]".to_string()]
    );
    let mut ev = api::StateChangeEvent::new();
    ev.pod = protobuf::MessageField::some(api::PodSandbox::new());
    let mut bytes = protobuf::Message::write_to_bytes(&ev).unwrap();
    // PodSandbox.linux (8) holding LinuxPodSandbox field 70: found one level down.
    let inner = [0xb0, 0x04, 0x01];
    let linux = [&[0x42, inner.len() as u8][..], &inner[..]].concat();
    bytes.extend_from_slice(&[0x12, linux.len() as u8]);
    bytes.extend_from_slice(&linux);
    let desc = api::file_descriptor()
        .message_by_package_relative_name("StateChangeEvent")
        .unwrap();
    let decoded = desc.parse_from_bytes(&bytes).unwrap();
    let mut problems = Vec::new();
    unknown_fields(&*decoded, "StateChangeEvent", &mut problems);
    assert_eq!(
        problems,
        vec!["StateChangeEvent.pod.linux: unknown field numbers [70]".to_string()]
    );
}
