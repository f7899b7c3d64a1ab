//! Property tests of everything the hook parses from the runtime (issue 12): whatever the OCI
//! state and config.json hold, parsing and building the record never panic (a panic was exit
//! status 101, a failed container), and the record's blob fits its map value.

use std::collections::BTreeMap;

use podmap_bpf::layout::META_MAX;
use podmap_bpf::ContainerMeta;
use podmap_oci_hook::annotations::{self, *};
use podmap_oci_hook::bundle::parse_config;
use podmap_oci_hook::meta::container_meta;
use podmap_oci_hook::state::{State, StateError};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Strings that stress every cut: runs of 1- to 4-byte characters, characters JSON escapes
/// (up to six bytes each), separators; from empty to several times the blob's size.
fn text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        Just('a'),
        Just('é'),
        Just('€'),
        Just('😀'),
        Just('"'),
        Just('\\'),
        Just('\u{1}'),
        Just('/'),
        Just(' '),
        Just(':'),
        any::<char>(),
    ];
    (prop::collection::vec(ch, 0..16), 0usize..200)
        .prop_map(|(unit, reps)| unit.into_iter().collect::<String>().repeat(reps.max(1)))
}

/// A short string, for keys and ids.
fn short() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect())
}

/// Annotations as CRI-O and containerd write them, with any values, and arbitrary others.
fn annotations_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    let known = prop::sample::select(vec![
        POD_NAME,
        POD_NAMESPACE,
        POD_UID,
        CONTAINER_NAME,
        CRIO_CONTAINER_TYPE,
        CRIO_SANDBOX_ID,
        CRIO_LABELS,
        CRIO_METADATA,
        CRIO_IMAGE_NAME,
        CRIO_IMAGE,
        CRIO_KUBE_NAME,
        CRIO_NAMESPACE,
        CRI_CONTAINER_TYPE,
        CRI_SANDBOX_ID,
        CRI_SANDBOX_NAME,
        CRI_SANDBOX_NAMESPACE,
        CRI_SANDBOX_UID,
        CRI_CONTAINER_NAME,
        CRI_IMAGE_NAME,
        CONTAINER_MANAGER,
    ])
    .prop_map(str::to_owned);
    let key = prop_oneof![3 => known, 1 => short()];
    // The labels and metadata annotations hold JSON objects: sometimes well-formed ones.
    let labels = prop::collection::btree_map(short(), text(), 0..12)
        .prop_map(|m| serde_json::to_string(&m).expect("a map of strings serializes"));
    let value = prop_oneof![3 => text(), 1 => labels];
    prop::collection::btree_map(key, value, 0..16)
}

fn state_json() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        3 => "[0-9a-f]{64}".prop_map(Value::String),
        2 => short().prop_map(Value::String),
        1 => text().prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::from),
        1 => prop::collection::vec(text(), 0..4).prop_map(|v| json!(v)),
    ];
    let status = prop::sample::select(vec!["creating", "created", "stopped", "running", ""]);
    (id, status, any::<i64>(), annotations_map(), any::<bool>()).prop_map(
        |(id, status, pid, ann, root)| {
            let mut s = json!({"ociVersion": "1.0.2-dev", "id": id, "status": status,
                               "pid": pid, "bundle": "/b", "annotations": ann});
            if root {
                s["root"] = json!("rootfs");
            }
            s
        },
    )
}

proptest! {
    // Failures are reported with their minimal input; an integration test has no source file
    // proptest could keep them next to.
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any bytes: a state or a reason, never a panic; a bad id is shown in at most 80 bytes.
    #[test]
    fn any_bytes_parse_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = State::parse(&bytes);
        let _ = parse_config(&bytes);
    }

    /// States as runtimes write them, with any id and annotations.
    #[test]
    fn states_parse_or_name_their_fault(state in state_json()) {
        let bytes = serde_json::to_vec(&state).unwrap();
        match State::parse(&bytes) {
            Ok(s) => {
                prop_assert_eq!(Some(s.id.0.as_str()), state["id"].as_str());
                prop_assert!(s.id.0.len() <= 1024);
            }
            Err(StateError::BadId(shown)) => prop_assert!(shown.len() <= 80, "{}", shown.len()),
            Err(StateError::MissingId) => prop_assert!(state["id"].is_null()),
            Err(e) => prop_assert!(false, "a JSON object refused: {}", e),
        }
    }

    /// config.json with any annotations and cgroupsPath.
    #[test]
    fn configs_keep_their_string_annotations(
        ann in annotations_map(),
        path in text(),
        junk in short(),
    ) {
        let config = json!({"ociVersion": "1.0.2", "linux": {"cgroupsPath": path},
                            "annotations": ann, "process": {"args": [junk]}});
        let c = parse_config(config.to_string().as_bytes()).unwrap();
        prop_assert_eq!(c.annotations, ann);
    }

    /// The whole createRuntime path from parsed inputs to the map's value: the state's and
    /// the config's annotations merged, the Kubernetes metadata, the record, its blob. The blob
    /// always fits, reads back, and names the container.
    #[test]
    fn records_from_any_annotations_fit_their_map_value(
        state in state_json(),
        config_ann in annotations_map(),
        cgroup_path in text(),
    ) {
        let Ok(s) = State::parse(&serde_json::to_vec(&state).unwrap()) else {
            return Ok(());
        };
        let config = json!({"linux": {"cgroupsPath": cgroup_path}, "annotations": config_ann});
        let c = parse_config(config.to_string().as_bytes()).unwrap();
        let mut ann = s.annotations.clone();
        ann.extend(c.annotations);
        let (kube, _problems) = annotations::kube_meta(&ann);
        let meta = container_meta(&s, &ann, kube.as_ref(), &cgroup_path);
        let (blob, truncated) = meta.to_blob();
        prop_assert!(blob.len() <= META_MAX, "{} bytes", blob.len());
        let back = ContainerMeta::from_blob(&blob).expect("the blob reads back");
        prop_assert_eq!(&back.container_id, &s.id, "the container id is never cut");
        if !truncated {
            prop_assert_eq!(back, meta);
        }
    }
}
