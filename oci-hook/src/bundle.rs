//! The bundle's config.json: what the hook needs from it, `linux.cgroupsPath`, the annotations
//! (the Kubernetes metadata CRI-O puts there) and the bounding set of `process.capabilities`.
//! Everything else is skipped unparsed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Larger than any config a runtime writes (seccomp profiles included); a bound, not a limit
/// meant to be met.
pub const MAX_CONFIG_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleConfig {
    pub cgroups_path: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `process.capabilities.bounding`, the names as written; None when the spec has none (or
    /// not as a list of strings: the container's privilege is then unknown, never a reason not
    /// to map it).
    pub cap_bounding: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the OCI state names no bundle directory")]
    NoBundle,
    #[error("bundle {bundle} has no config.json")]
    NoConfig { bundle: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is over {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is not an OCI config: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    linux: Option<RawLinux>,
    #[serde(default)]
    annotations: Option<serde_json::Value>,
    #[serde(default)]
    process: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawLinux {
    #[serde(default, rename = "cgroupsPath")]
    cgroups_path: Option<serde_json::Value>,
}

/// Reads `<bundle>/config.json`.
pub fn read_config(bundle: &Path) -> Result<BundleConfig, BundleError> {
    let path = bundle.join("config.json");
    let f = std::fs::File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BundleError::NoConfig {
                bundle: bundle.to_owned(),
            }
        } else {
            BundleError::Io {
                path: path.clone(),
                source,
            }
        }
    })?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(BundleError::TooLarge { path });
    }
    parse_config(&buf).map_err(|source| BundleError::Parse { path, source })
}

pub fn parse_config(bytes: &[u8]) -> Result<BundleConfig, serde_json::Error> {
    let raw: RawConfig = serde_json::from_slice(bytes)?;
    Ok(BundleConfig {
        cgroups_path: raw
            .linux
            .and_then(|l| l.cgroups_path)
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|p| !p.trim().is_empty()),
        annotations: crate::state::string_map(raw.annotations),
        cap_bounding: raw.process.as_ref().and_then(bounding_set),
    })
}

/// `capabilities.bounding` of the spec's process, if it is a list of strings. A `capabilities`
/// object without `bounding` (or with `null`) is an empty set: that is how podman and the
/// runtime-spec's Go types write one that drops every capability (`omitempty`), and runc and
/// crun then drop them all. Without a `capabilities` object the runtime leaves the set as it
/// is: unknown here.
fn bounding_set(process: &serde_json::Value) -> Option<Vec<String>> {
    let caps = process.get("capabilities")?.as_object()?;
    match caps.get("bounding") {
        None | Some(serde_json::Value::Null) => Some(Vec::new()),
        Some(list) => list
            .as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroups_path_and_annotations() {
        let c = parse_config(
            br#"{"ociVersion":"1.0.2-dev","process":{"args":["sh"]},
                "linux":{"cgroupsPath":"kubepods-pod1.slice:crio:abc","namespaces":[]},
                "annotations":{"io.kubernetes.pod.name":"web","weird":3}}"#,
        )
        .unwrap();
        assert_eq!(
            c.cgroups_path.as_deref(),
            Some("kubepods-pod1.slice:crio:abc")
        );
        assert_eq!(c.annotations.len(), 1);
        assert_eq!(parse_config(b"{}").unwrap(), BundleConfig::default());
        assert_eq!(
            parse_config(br#"{"linux":{"cgroupsPath":""}}"#)
                .unwrap()
                .cgroups_path,
            None
        );
        assert!(parse_config(b"{\"linux\": 5}").is_err());
    }

    #[test]
    fn reads_the_bounding_set_or_leaves_it_unknown() {
        let c = parse_config(
            br#"{"process":{"capabilities":{"bounding":["CAP_CHOWN","CAP_NET_RAW"],
                "effective":["CAP_CHOWN"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.cap_bounding,
            Some(vec!["CAP_CHOWN".to_string(), "CAP_NET_RAW".to_string()])
        );
        let empty = parse_config(br#"{"process":{"capabilities":{"bounding":[]}}}"#).unwrap();
        assert_eq!(empty.cap_bounding, Some(vec![]), "none given: an empty set");
        // podman's --cap-drop=all: Go's omitempty leaves the empty list out.
        for dropped in [
            &br#"{"process":{"capabilities":{}}}"#[..],
            br#"{"process":{"capabilities":{"bounding":null}}}"#,
        ] {
            let c = parse_config(dropped).unwrap();
            assert_eq!(
                c.cap_bounding,
                Some(vec![]),
                "{}",
                String::from_utf8_lossy(dropped)
            );
        }
        for unknown in [
            &br#"{"process":{"args":["sh"]}}"#[..],
            br#"{"process":{"capabilities":{"bounding":"all"}}}"#,
            br#"{"process":{"capabilities":{"bounding":["CAP_CHOWN", 3]}}}"#,
            br#"{"process":7}"#,
            br#"{"process":{"capabilities":"all"}}"#,
        ] {
            let c = parse_config(unknown).expect("the config still parses");
            assert_eq!(c.cap_bounding, None, "{}", String::from_utf8_lossy(unknown));
        }
    }

    #[test]
    fn missing_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_config(dir.path()).unwrap_err();
        assert!(matches!(e, BundleError::NoConfig { .. }), "{e}");
        assert!(e.to_string().contains("has no config.json"));
        std::fs::write(dir.path().join("config.json"), b"{\"linux\":").unwrap();
        let e = read_config(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is not an OCI config"), "{e}");
    }
}
