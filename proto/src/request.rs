//! The one request line a socket client sends, and its validation.

use crate::event::{Event, EventType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request line longer than this is refused.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Events(EventFilter),
    Status(Empty),
    Containers(Empty),
}

/// `{}`: the status and containers requests take no parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Server-side filter of an events stream; every field is optional and all given ones must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Only types this podmapd knows: an unknown one is refused, never taken as `other`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_types"
    )]
    pub types: Option<Vec<EventType>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Only events of privileged processes ([`crate::event::Process::is_privileged`]): execs,
    /// their exits (which carry the exec's credentials) and policy events alike. Written only
    /// when true, so a request without it reads the same to a podmapd older than the field;
    /// one with it is refused by such a podmapd (unknown fields are), never taken as "all".
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A filter's types, each one this build knows: [`EventType`]'s `Other` is for decoding events
/// from a newer podmapd, not for requests.
fn known_types<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<EventType>>, D::Error> {
    let Some(names) = Option::<Vec<String>>::deserialize(d)? else {
        return Ok(None);
    };
    const KNOWN: [&str; 3] = ["exec", "exit", "policy"];
    names
        .iter()
        .map(|n| EventType::parse(n).ok_or_else(|| serde::de::Error::unknown_variant(n, &KNOWN)))
        .collect::<Result<_, _>>()
        .map(Some)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request line is longer than {MAX_REQUEST_LINE} bytes")]
    TooLong,
    #[error("request is empty: send one JSON object such as {{\"events\": {{}}}}")]
    Empty,
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Request {
    /// Parses one request line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
        if line.len() > MAX_REQUEST_LINE {
            return Err(RequestError::TooLong);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(RequestError::Empty);
        }
        serde_json::from_slice(line).map_err(|e| {
            RequestError::Malformed(format!(
                "{e}; expected one of {{\"events\": {{...}}}}, {{\"status\": {{}}}}, {{\"containers\": {{}}}}"
            ))
        })
    }
}

impl EventFilter {
    /// Whether the filter selects everything (the fast path: no per-event checks).
    pub fn is_empty(&self) -> bool {
        self.types.is_none()
            && self.namespace.is_none()
            && self.pod.is_none()
            && self.container.is_none()
            && self.labels.is_empty()
            && !self.privileged
    }

    pub fn matches(&self, ev: &Event) -> bool {
        if self.privileged && !ev.process.is_privileged() {
            return false;
        }
        if let Some(types) = &self.types {
            if !types.contains(&ev.kind) {
                return false;
            }
        }
        let pod = ev.pod.as_deref();
        if let Some(ns) = &self.namespace {
            if pod.map(|p| p.namespace.as_str()) != Some(ns.as_str()) {
                return false;
            }
        }
        if let Some(name) = &self.pod {
            if pod.map(|p| p.name.as_str()) != Some(name.as_str()) {
                return false;
            }
        }
        if let Some(name) = &self.container {
            if ev.container.as_deref().map(|c| c.name.as_str()) != Some(name.as_str()) {
                return false;
            }
        }
        if !self.labels.is_empty() {
            let Some(pod) = pod else { return false };
            if !self
                .labels
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
            {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_requests() {
        assert_eq!(
            Request::parse(br#"{"events": {}}"#).unwrap(),
            Request::Events(EventFilter::default())
        );
        assert_eq!(
            Request::parse(br#"{"status": {}}"#).unwrap(),
            Request::Status(Empty {})
        );
        assert_eq!(
            Request::parse(br#"{"containers": {}}"#).unwrap(),
            Request::Containers(Empty {})
        );
        let Request::Events(f) = Request::parse(
            br#"{"events": {"types": ["exec","exit"], "namespace": "prod", "labels": {"app": "web"}}}"#,
        )
        .unwrap() else {
            panic!("not events")
        };
        assert_eq!(f.types, Some(vec![EventType::Exec, EventType::Exit]));
        assert_eq!(f.namespace.as_deref(), Some("prod"));
        assert_eq!(f.labels.get("app").map(String::as_str), Some("web"));
    }

    fn exec(uid: u32, euid: Option<u32>, caps: Option<&[&str]>) -> Event {
        let mut v = serde_json::json!({
            "type": "exec", "time": "t", "node": "n",
            "process": {"pid": 1, "tid": 1, "ppid": 0, "uid": uid, "binary": "/bin/sh",
                "args": [], "cwd": "/", "exec_id": "e", "parent_exec_id": null,
                "start_time": "s", "cgroup_id": 1},
            "container": null, "pod": null, "attribution": "host"
        });
        if let Some(euid) = euid {
            v["process"]["euid"] = euid.into();
        }
        if let Some(caps) = caps {
            v["process"]["cap_effective"] = caps.into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_privileged_filter_selects_root_and_cap_sys_admin_only() {
        let Request::Events(f) = Request::parse(br#"{"events": {"privileged": true}}"#).unwrap()
        else {
            panic!("not events")
        };
        assert!(f.privileged && !f.is_empty());
        assert!(f.matches(&exec(0, Some(0), Some(&["CAP_CHOWN"]))));
        assert!(f.matches(&exec(1000, Some(0), Some(&[]))), "effective root");
        assert!(f.matches(&exec(1000, Some(1000), Some(&["CAP_SYS_ADMIN"]))));
        assert!(!f.matches(&exec(1000, Some(1000), Some(&["CAP_NET_RAW"]))));
        assert!(
            !f.matches(&exec(1000, None, None)),
            "unknown is not privileged"
        );
        // Written only when asked for: the request an older podmapd knows stays the same.
        let everything = Request::Events(EventFilter::default());
        assert_eq!(
            serde_json::to_string(&everything).unwrap(),
            r#"{"events":{}}"#
        );
        let Request::Events(f) = Request::parse(br#"{"events": {"privileged": false}}"#).unwrap()
        else {
            panic!("not events")
        };
        assert!(f.is_empty() && f.matches(&exec(1000, None, None)));
    }

    #[test]
    fn refuses_bad_requests_with_a_reason() {
        for bad in [
            &br#"{"evnts": {}}"#[..],
            br#"{"events": {"types": ["fork"]}}"#,
            br#"{"events": {"nmespace": "x"}}"#,
            br#"not json"#,
            br#"{"events": {}, "status": {}}"#,
        ] {
            let err = Request::parse(bad).unwrap_err();
            assert!(matches!(err, RequestError::Malformed(_)), "{err}");
        }
        assert_eq!(Request::parse(b"  ").unwrap_err(), RequestError::Empty);
        // A privileged filter that is not a boolean is refused, not taken as "everything".
        for bad in [
            &br#"{"events": {"privileged": "yes"}}"#[..],
            br#"{"events": {"privileged": 1}}"#,
            br#"{"events": {"privileged": null}}"#,
        ] {
            assert!(
                Request::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b' '; MAX_REQUEST_LINE + 1];
        assert_eq!(Request::parse(&long).unwrap_err(), RequestError::TooLong);
    }
}
