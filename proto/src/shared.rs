//! Values many events share, with their JSON written once.
//!
//! Every event of a container carries the same container and pod objects, and every exec of a
//! root process the same forty-odd capability names. podmapd builds each such value once and
//! shares it by reference count; [`Shared`] also keeps the value's JSON once it has been written,
//! so the thousandth event of a container copies those bytes instead of escaping every string
//! again (escaping strings was the largest single cost of encoding an event: docs/decisions.md
//! #40).
//!
//! A `Shared` value is immutable, which is what makes the kept JSON always the value's own. To
//! a JSON serializer it writes exactly what the value would (compact, even inside a pretty
//! printer); a client decoding events gets a `Shared` whose JSON is written only if it is
//! encoded again.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// An immutable value shared by many events, encoded as JSON at most once (see the module).
pub struct Shared<T>(Arc<Inner<T>>);

struct Inner<T> {
    value: T,
    /// The value's JSON, written the first time it is serialized; `None` inside when the value
    /// has no JSON form (a map with non-string keys), and it is then serialized as itself.
    json: OnceLock<Option<Box<RawValue>>>,
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared(Arc::new(Inner {
            value,
            json: OnceLock::new(),
        }))
    }

    /// Whether both are the same shared value (not merely equal ones).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T: Serialize> Shared<T> {
    /// The value's JSON, written now if it was not yet.
    pub fn json(&self) -> Option<&RawValue> {
        self.0
            .json
            .get_or_init(|| {
                serde_json::to_string(&self.0.value)
                    .ok()
                    .and_then(|text| RawValue::from_string(text).ok())
            })
            .as_deref()
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T> AsRef<T> for Shared<T> {
    fn as_ref(&self) -> &T {
        &self.0.value
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Shared::new(value)
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Shared::ptr_eq(self, other) || self.0.value == other.0.value
    }
}

impl<T: Eq> Eq for Shared<T> {}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.json() {
            Some(raw) => raw.serialize(serializer),
            None => self.0.value.serialize(serializer),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Shared::new)
    }
}

/// The schema is the value's: sharing is invisible on the wire.
impl<T: JsonSchema> JsonSchema for Shared<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Labels {
        name: String,
        labels: BTreeMap<String, String>,
    }

    fn labels() -> Labels {
        Labels {
            name: "web \"1\"\n".to_string(),
            labels: [("app".to_string(), "ü\u{1}".to_string())].into(),
        }
    }

    #[test]
    fn writes_what_the_value_writes_every_time() {
        let shared = Shared::new(labels());
        let plain = serde_json::to_string(&labels()).unwrap();
        assert_eq!(serde_json::to_string(&shared).unwrap(), plain);
        // The second time comes from the kept JSON.
        assert!(shared.0.json.get().is_some());
        assert_eq!(serde_json::to_string(&shared).unwrap(), plain);
        assert_eq!(
            serde_json::to_string_pretty(&vec![shared.clone()]).unwrap(),
            format!("[\n  {plain}\n]")
        );
        assert_eq!(
            serde_json::to_value(&shared).unwrap(),
            serde_json::to_value(labels()).unwrap()
        );
    }

    #[test]
    fn decodes_as_the_value_and_round_trips() {
        let text = serde_json::to_string(&labels()).unwrap();
        let back: Shared<Labels> = serde_json::from_str(&text).unwrap();
        assert_eq!(*back, labels());
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert!(serde_json::from_str::<Shared<Labels>>("{\"name\": 1}").is_err());
    }

    #[test]
    fn a_value_without_a_json_form_fails_as_itself() {
        let map: BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into();
        let plain = serde_json::to_string(&map).unwrap_err().to_string();
        let shared = serde_json::to_string(&Shared::new(map))
            .unwrap_err()
            .to_string();
        assert_eq!(shared, plain);
    }

    #[test]
    fn clones_share_and_equality_is_by_value() {
        let a = Shared::new(labels());
        let b = a.clone();
        assert!(Shared::ptr_eq(&a, &b));
        let c = Shared::new(labels());
        assert!(!Shared::ptr_eq(&a, &c));
        assert_eq!(a, c);
    }
}
