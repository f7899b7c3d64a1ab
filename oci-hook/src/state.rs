//! The OCI state the runtime writes on the hook's stdin. Runtimes differ (runc: ociVersion
//! "1.0.2-dev", status "creating", no pid at poststop; crun: "1.0", "created", an extra "root",
//! pid 0 at poststop), so everything but the id is optional and unknown fields are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use podmap_bpf::ContainerId;
use serde_json::{Map, Value};

/// The most state read from stdin. Kubernetes caps a pod's annotations at 256 KiB; a state
/// beyond this is not one a runtime wrote.
pub const MAX_STATE_BYTES: u64 = 8 << 20;

/// A host process id (the container's init process, as the hook sees it at createRuntime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pid(pub u32);

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: ContainerId,
    pub status: String,
    /// None when absent or zero (poststop, or runtimes that run the hook without one).
    pub pid: Option<Pid>,
    pub bundle: Option<PathBuf>,
    /// The state's copy of the config's annotations (runc and crun both include them).
    pub annotations: BTreeMap<String, String>,
    /// crun adds the rootfs as "root"; runc does not (a hint of which runtime ran us).
    pub has_root: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the OCI state from stdin: {0}")]
    Read(#[source] std::io::Error),
    #[error("the OCI state on stdin is empty")]
    Empty,
    #[error("the OCI state on stdin is over {MAX_STATE_BYTES} bytes")]
    TooLarge,
    #[error("the OCI state on stdin is truncated ({len} bytes): {source}")]
    Truncated {
        len: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("the OCI state on stdin is not JSON ({len} bytes, starts {start:?}): {source}")]
    NotJson {
        len: usize,
        start: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the OCI state on stdin is not a JSON object: {0}")]
    NotObject(#[source] serde_json::Error),
    #[error("the OCI state on stdin has no container id")]
    MissingId,
    #[error("the OCI state's container id {0:?} is not a valid id")]
    BadId(String),
}

/// Reads all of stdin (bounded).
pub fn read_input(mut r: impl Read) -> Result<Vec<u8>, StateError> {
    let mut buf = Vec::with_capacity(4096);
    r.by_ref()
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(StateError::Read)?;
    if buf.len() as u64 > MAX_STATE_BYTES {
        return Err(StateError::TooLarge);
    }
    Ok(buf)
}

impl State {
    pub fn parse(input: &[u8]) -> Result<State, StateError> {
        if input.iter().all(u8::is_ascii_whitespace) {
            return Err(StateError::Empty);
        }
        // A map, not a derived struct: serde would also accept a JSON array as a struct.
        let mut raw: Map<String, Value> =
            serde_json::from_slice(input).map_err(|source| match source.classify() {
                serde_json::error::Category::Eof => StateError::Truncated {
                    len: input.len(),
                    source,
                },
                serde_json::error::Category::Data => StateError::NotObject(source),
                _ => StateError::NotJson {
                    len: input.len(),
                    start: String::from_utf8_lossy(&input[..input.len().min(32)]).into_owned(),
                    source,
                },
            })?;
        let id = match raw.remove("id") {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => return Err(StateError::MissingId),
            Some(other) => {
                // Shown in one log line: bounded like an invalid string id.
                let mut shown = other.to_string();
                podmap_bpf::truncate_str(&mut shown, 80);
                return Err(StateError::BadId(shown));
            }
        };
        if !valid_id(&id) {
            let mut shown = id;
            podmap_bpf::truncate_str(&mut shown, 80);
            return Err(StateError::BadId(shown));
        }
        Ok(State {
            id: ContainerId(id),
            status: raw
                .remove("status")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            pid: raw
                .remove("pid")
                .and_then(|v| v.as_u64())
                .filter(|&p| p > 0 && p <= u32::MAX as u64)
                .map(|p| Pid(p as u32)),
            bundle: raw
                .remove("bundle")
                .and_then(|v| v.as_str().map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty()),
            annotations: string_map(raw.remove("annotations")),
            has_root: raw.contains_key("root"),
        })
    }
}

/// Container ids become store keys and log fields: printable, no path separators, bounded.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && !id.contains('/')
        && !id.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// The string-valued entries of a JSON object (anything else is not an OCI annotation).
pub(crate) fn string_map(v: Option<Value>) -> BTreeMap<String, String> {
    match v {
        Some(Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_and_crun_states() {
        let runc = br#"{"ociVersion":"1.0.2-dev","id":"exp1","status":"creating","pid":27435,
            "bundle":"/tmp/b","annotations":{"io.kubernetes.pod.name":"web-1"}}"#;
        let s = State::parse(runc).unwrap();
        assert_eq!(s.id, ContainerId("exp1".into()));
        assert_eq!(s.pid, Some(Pid(27435)));
        assert_eq!(s.bundle, Some(PathBuf::from("/tmp/b")));
        assert_eq!(s.annotations["io.kubernetes.pod.name"], "web-1");
        assert!(!s.has_root);

        let crun = br#"{"ociVersion":"1.0","id":"exp2","pid":0,"root":"rootfs","bundle":"/tmp/b",
            "status":"stopped","annotations":{},"future":{"x":[1,2]}}"#;
        let s = State::parse(crun).unwrap();
        assert_eq!(s.pid, None, "pid 0 is no pid");
        assert!(s.has_root);

        let runc_poststop =
            br#"{"ociVersion":"1.0.2-dev","id":"exp1","status":"stopped","bundle":"/b"}"#;
        assert_eq!(State::parse(runc_poststop).unwrap().pid, None);
    }

    #[test]
    fn odd_values_are_tolerated() {
        let s = State::parse(
            br#"{"id":"a","pid":-5,"bundle":7,"annotations":{"k":"v","n":1,"o":{"x":1}}}"#,
        )
        .unwrap();
        assert_eq!(s.pid, None);
        assert_eq!(s.bundle, None);
        assert_eq!(s.annotations.len(), 1);
        assert_eq!(
            State::parse(br#"{"id":"a","annotations":null}"#)
                .unwrap()
                .status,
            ""
        );
    }

    #[test]
    fn broken_states_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"  \n", "empty"),
            (br#"{"ociVersion":"1.0.2-dev","id":"ab"#, "truncated"),
            (b"hello", "not JSON"),
            (br#"["id"]"#, "not a JSON object"),
            (br#"{"status":"creating"}"#, "no container id"),
            (br#"{"id":""}"#, "not a valid id"),
            (br#"{"id":"../../etc"}"#, "not a valid id"),
            (br#"{"id":42}"#, "not a valid id"),
        ];
        for (input, want) in cases {
            let e = State::parse(input).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{:?}: {e:?} lacks {want:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// An invalid id is shown cut to 80 bytes, at a character boundary whatever it holds.
    #[test]
    fn a_multi_byte_invalid_id_is_shown_cut() {
        for shift in 0..4 {
            let id = format!("/{}{}", "x".repeat(shift), "😀é€".repeat(100));
            let input = serde_json::json!({"id": id}).to_string();
            match State::parse(input.as_bytes()) {
                Err(StateError::BadId(shown)) => {
                    assert!(shown.len() <= 80 && shown.len() > 76, "{shown:?}");
                    assert!(id.starts_with(&shown), "{shown:?}");
                }
                other => panic!("shift {shift}: {other:?}"),
            }
        }
        // A non-string id is shown as its JSON, bounded the same way.
        let input = serde_json::json!({"id": ["é".repeat(500)]}).to_string();
        match State::parse(input.as_bytes()) {
            Err(StateError::BadId(shown)) => {
                assert!(shown.len() <= 80 && shown.starts_with("[\"éé"), "{shown:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn input_is_bounded() {
        let big = vec![b' '; (MAX_STATE_BYTES + 10) as usize];
        assert!(matches!(read_input(&big[..]), Err(StateError::TooLarge)));
        assert_eq!(read_input(&b"{}"[..]).unwrap(), b"{}");
    }
}
