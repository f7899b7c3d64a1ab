//! Decoding Pod objects as the API server sends them (in list pages and watch events), keeping
//! only the fields podmap's events use.
//!
//! Why not `k8s_openapi::api::core::v1::Pod`: a full Pod decodes managed fields, the whole spec and
//! every condition only for the informer to throw them away, and one pod with a field of an
//! unexpected type would fail the whole list page it came in (kube-client decodes a page in one
//! go), so the informer would relist forever. Here every object is first taken as raw JSON text,
//! then decoded on its own: a bad pod becomes [`WirePod::Rejected`] and the rest of the page is
//! kept. Unknown fields are ignored, as the API's compatibility rules require of clients.

use std::collections::BTreeMap;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Annotations never kept: large and useless to an event (kubectl's copy of the whole object).
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];
/// Annotation values longer than this are not kept: the cache has a per-pod memory budget and
/// events want short tags, not embedded documents.
pub(crate) const MAX_ANNOTATION_VALUE: usize = 256;
/// At most this many annotations are kept per pod (the first ones in key order).
pub(crate) const MAX_ANNOTATIONS: usize = 16;

/// One Pod from a list page or a watch event: decoded, or rejected with the reason.
#[derive(Clone, Debug)]
pub(crate) enum WirePod {
    Pod(Box<PodFields>),
    Rejected(Rejected),
}

/// A pod object that could not be used, with what could be read of its identity (for the log
/// line, and so that a watch can still move its resource version past it).
#[derive(Clone, Debug, Default)]
pub(crate) struct Rejected {
    pub uid: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub resource_version: Option<String>,
    pub reason: String,
}

impl<'de> Deserialize<'de> for WirePod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Borrow the object's text first, so a field of the wrong type rejects this one pod
        // instead of failing the page or the watch line it came in. kube-client decodes list
        // bodies and watch lines from strings, so borrowing works and costs no copy.
        let raw: &'de RawValue = Deserialize::deserialize(deserializer)?;
        Ok(WirePod::decode(raw.get()))
    }
}

impl WirePod {
    /// Decodes one pod object's JSON text, known to be JSON (a `RawValue` checked it).
    pub(crate) fn decode(text: &str) -> WirePod {
        match serde_json::from_str::<PodFields>(text) {
            Ok(pod) => WirePod::checked(pod),
            Err(err) => WirePod::Rejected(Rejected::probe(text, err.to_string())),
        }
    }

    /// Decodes one element of a list body as the list decoder cut it out, which nothing has
    /// checked yet: text that is not JSON is an error (the body it came in is broken: the list
    /// fails, as a list decoded whole would), while JSON that is not a usable pod is
    /// [`WirePod::Rejected`], as with [`WirePod::decode`].
    pub(crate) fn decode_unchecked(bytes: &[u8]) -> Result<WirePod, serde_json::Error> {
        match serde_json::from_slice::<PodFields>(bytes) {
            Ok(pod) => Ok(WirePod::checked(pod)),
            Err(err) if err.is_syntax() || err.is_eof() => Err(err),
            // A type error stops decoding where it is: the rest must still be JSON.
            Err(err) => {
                let value: serde_json::Value = serde_json::from_slice(bytes)?;
                Ok(WirePod::Rejected(Rejected::of_value(
                    &value,
                    err.to_string(),
                )))
            }
        }
    }

    /// A decoded pod, unless it lacks its identity.
    fn checked(pod: PodFields) -> WirePod {
        match pod.missing_identity() {
            None => WirePod::Pod(Box::new(pod)),
            Some(missing) => WirePod::Rejected(Rejected {
                uid: pod.metadata.uid,
                namespace: pod.metadata.namespace,
                name: pod.metadata.name,
                resource_version: pod.metadata.resource_version,
                reason: format!("missing {missing}"),
            }),
        }
    }

    /// The object's resource version, when it has one.
    pub(crate) fn resource_version(&self) -> Option<&str> {
        match self {
            WirePod::Pod(pod) => pod.metadata.resource_version.as_deref(),
            WirePod::Rejected(rejected) => rejected.resource_version.as_deref(),
        }
    }
}

impl Rejected {
    /// Reads whatever identity a pod that failed to decode still has, field by field, so the
    /// log line can name it.
    fn probe(text: &str, reason: String) -> Rejected {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        Rejected::of_value(&value, reason)
    }

    /// The identity `value` has, as far as it goes.
    fn of_value(value: &serde_json::Value, reason: String) -> Rejected {
        let field = |name: &str| {
            value
                .get("metadata")
                .and_then(|meta| meta.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Rejected {
            uid: field("uid"),
            namespace: field("namespace"),
            name: field("name"),
            resource_version: field("resourceVersion"),
            reason,
        }
    }
}

/// The fields of a Pod that podmap uses. Everything is optional at this level; what an event
/// cannot do without is checked by [`PodFields::missing_identity`].
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct PodFields {
    pub metadata: Meta,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "kept_annotations")]
    pub annotations: Vec<(String, String)>,
    #[serde(default)]
    pub owner_references: Option<Vec<OwnerRef>>,
    /// Only its presence matters: the pod is terminating.
    #[serde(default)]
    pub deletion_timestamp: Option<IgnoredAny>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OwnerRef {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PodStatus {
    #[serde(default)]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ContainerStatus {
    pub name: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    pub image: Option<String>,
}

impl PodFields {
    /// The first identity field an event cannot do without that this pod lacks.
    fn missing_identity(&self) -> Option<&'static str> {
        let meta = &self.metadata;
        let empty = |v: &Option<String>| v.as_deref().is_none_or(str::is_empty);
        if empty(&meta.uid) {
            Some("metadata.uid")
        } else if empty(&meta.name) {
            Some("metadata.name")
        } else if empty(&meta.namespace) {
            Some("metadata.namespace")
        } else {
            None
        }
    }

    /// The controller owner reference (the one with `controller: true`), as client-go's
    /// `metav1.GetControllerOf` picks it.
    pub(crate) fn controller(&self) -> Option<&OwnerRef> {
        self.metadata
            .owner_references
            .as_deref()?
            .iter()
            .find(|owner| owner.controller == Some(true))
    }
}

/// Decodes `metadata.annotations`, keeping only the ones worth their memory (see the limits
/// above). Dropped values are skipped without being allocated.
fn kept_annotations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Kept;
    impl<'de> Visitor<'de> for Kept {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of strings, or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if DROPPED_ANNOTATIONS.contains(&key.as_str()) {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let value: String = map.next_value()?;
                if value.len() <= MAX_ANNOTATION_VALUE {
                    kept.push((key, value));
                }
            }
            kept.sort();
            kept.truncate(MAX_ANNOTATIONS);
            Ok(kept)
        }
    }
    d.deserialize_option(Kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> WirePod {
        WirePod::decode(text)
    }

    #[test]
    fn keeps_used_fields_and_ignores_the_rest() {
        let pod = decode(
            r#"{"kind":"Pod","metadata":{"name":"web-1","namespace":"prod","uid":"u1",
            "resourceVersion":"7","labels":{"app":"web"},"managedFields":[{"manager":"x"}],
            "annotations":{"a":"1","kubectl.kubernetes.io/last-applied-configuration":"{}"},
            "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-5d9","uid":"r","controller":true}],
            "deletionTimestamp":"2026-01-01T00:00:00Z","somethingNew":{"x":[1,2]}},
            "spec":{"nodeName":"n1","containers":[{"name":"c","image":"nginx"}]},
            "status":{"containerStatuses":[{"name":"c","containerID":"containerd://abc","image":"nginx:1"}]}}"#,
        );
        let WirePod::Pod(pod) = pod else {
            panic!("rejected: {pod:?}")
        };
        assert_eq!(pod.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(pod.metadata.annotations, vec![("a".into(), "1".into())]);
        assert!(pod.metadata.deletion_timestamp.is_some());
        assert_eq!(pod.controller().unwrap().name.as_deref(), Some("web-5d9"));
        let status = pod.status.unwrap().container_statuses.unwrap();
        assert_eq!(status[0].container_id.as_deref(), Some("containerd://abc"));
    }

    #[test]
    fn a_field_of_the_wrong_type_rejects_the_pod_with_its_identity() {
        let pod = decode(
            r#"{"metadata":{"name":"bad","namespace":"prod","uid":"u2","resourceVersion":"9",
            "labels":{"app":5}}}"#,
        );
        let WirePod::Rejected(rejected) = pod else {
            panic!("accepted")
        };
        assert_eq!(rejected.uid.as_deref(), Some("u2"));
        assert_eq!(rejected.resource_version.as_deref(), Some("9"));
        assert!(
            rejected.reason.contains("invalid type"),
            "{}",
            rejected.reason
        );
    }

    #[test]
    fn missing_identity_rejects_the_pod() {
        for (text, missing) in [
            (
                r#"{"metadata":{"name":"a","namespace":"n"}}"#,
                "metadata.uid",
            ),
            (
                r#"{"metadata":{"uid":"u","namespace":"n"}}"#,
                "metadata.name",
            ),
            (
                r#"{"metadata":{"uid":"u","name":"a","namespace":""}}"#,
                "metadata.namespace",
            ),
        ] {
            let WirePod::Rejected(rejected) = decode(text) else {
                panic!("accepted {text}")
            };
            assert_eq!(rejected.reason, format!("missing {missing}"));
        }
        let WirePod::Rejected(rejected) = decode(r#"{"spec":{}}"#) else {
            panic!()
        };
        assert!(rejected.reason.contains("metadata"), "{}", rejected.reason);
        let WirePod::Rejected(_) = decode("42") else {
            panic!()
        };
    }

    #[test]
    fn nulls_are_absent_values() {
        let pod = decode(
            r#"{"metadata":{"name":"a","namespace":"n","uid":"u","labels":null,"annotations":null,
            "ownerReferences":null},"status":{"containerStatuses":null}}"#,
        );
        assert!(matches!(pod, WirePod::Pod(_)), "{pod:?}");
    }

    #[test]
    fn unchecked_text_that_is_not_json_is_an_error_and_a_bad_pod_a_rejection() {
        let pod = br#"{"metadata":{"name":"a","namespace":"n","uid":"u"}}"#;
        assert!(matches!(
            WirePod::decode_unchecked(pod),
            Ok(WirePod::Pod(_))
        ));
        let WirePod::Rejected(rejected) = WirePod::decode_unchecked(
            br#"{"metadata":{"name":7,"namespace":"n","uid":"u","resourceVersion":"3"}}"#,
        )
        .unwrap() else {
            panic!("accepted")
        };
        assert_eq!(
            (
                rejected.uid.as_deref(),
                rejected.resource_version.as_deref()
            ),
            (Some("u"), Some("3"))
        );
        for broken in [
            &br#"{"metadata":{"name":"a","uid":"u"]}"#[..],
            br#"{"metadata":{"name":7,"uid":"u"]}"#,
            br#"{"metadata":{"name":"a"}"#,
            b"{\"metadata\":{\"name\":\"\xff\"}}",
        ] {
            assert!(
                WirePod::decode_unchecked(broken).is_err(),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn decodes_inside_a_list_page_one_pod_at_a_time() {
        #[derive(Deserialize)]
        struct Page {
            items: Vec<WirePod>,
        }
        let page: Page = serde_json::from_str(
            r#"{"items":[{"metadata":{"name":"a","namespace":"n","uid":"u"}},
            {"metadata":{"name":7}},{"metadata":{"name":"b","namespace":"n","uid":"v"}}]}"#,
        )
        .unwrap();
        let kinds: Vec<bool> = page
            .items
            .iter()
            .map(|p| matches!(p, WirePod::Pod(_)))
            .collect();
        assert_eq!(kinds, [true, false, true]);
    }
}
