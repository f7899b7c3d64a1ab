//! Ids and the container record: what a runtime plugin knows of a container, as stored in the
//! metadata map (and, by the plugins, in their sled stores).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

use crate::layout;

/// A container id as the runtime names it (64 hex characters for containerd and CRI-O).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerId(pub String);

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pod's UID (metadata.uid).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodUid(pub String);

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the programs and podmapd know of a mapped container: written once by a runtime plugin
/// at creation. Pod fields are empty for a container outside Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub container_id: ContainerId,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub pod_uid: Option<PodUid>,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub namespace: String,
    /// The pod's own labels (runtime-added keys stripped).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub image: String,
    /// "containerd", "cri-o", "runc", "podman", ...
    #[serde(default)]
    pub runtime: String,
    /// True for the pod sandbox (pause) container.
    #[serde(default)]
    pub sandbox: bool,
    /// The cgroup path relative to the hierarchy root, as resolved.
    #[serde(default)]
    pub cgroup_path: String,
    /// The container's init process (host pid), as the runtime reported it when the container
    /// started: the one process whose line into the container is not an exec
    /// (docs/decisions.md #35). None where the runtime did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<u32>,
    /// Whether the runtime made the container privileged: its bounding set holds every
    /// capability the node can give (docs/decisions.md #36). None where the writer could
    /// not tell, and in records written before podmap recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// The container's capability bounding set as the runtime gave it, bit n for capability n
    /// (a mask, not names: a privileged container's 41 names would take a sixth of the record).
    /// None where unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_bounding: Option<u64>,
}

impl ContainerMeta {
    /// Records the container's capability bounding set and whether it is privileged: it holds
    /// every capability the node can give, `node` (podmap-writer's `privilege::node_capabilities`:
    /// every capability the kernel knows, less any the host's init itself lacks), which is what
    /// CRI's `privileged: true` gives a container.
    pub fn set_capabilities(&mut self, bounding: u64, node: u64) {
        self.cap_bounding = Some(bounding);
        self.privileged = Some(bounding & node == node);
    }

    /// The bounded blob stored in the metadata map, never over [`layout::META_MAX`]. A record
    /// too large for the map (huge labels) keeps its ids and names and drops labels until it
    /// fits; then each free-text field is cut to its Kubernetes bound; then (strings JSON
    /// escapes up to six times over) the longest field is halved until it fits. `truncated`
    /// tells. Every cut is at a character boundary: these strings come from annotations anyone
    /// creating a container can set.
    pub fn to_blob(&self) -> (Vec<u8>, bool) {
        let full = blob(self);
        if full.len() <= layout::META_MAX {
            return (full, false);
        }
        let mut slim = self.clone();
        if !slim.labels.is_empty() {
            // The most leading labels (in key order) that fit. Size grows with each label
            // kept, so a binary search finds it in a few serializations, not one per label (a
            // 256 KiB labels annotation holds tens of thousands).
            let all: Vec<(String, String)> = std::mem::take(&mut slim.labels).into_iter().collect();
            let (mut lo, mut hi) = (0, all.len() - 1);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                slim.labels = all[..mid].iter().cloned().collect();
                if blob(&slim).len() <= layout::META_MAX {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            slim.labels = all[..lo].iter().cloned().collect();
            let v = blob(&slim);
            if v.len() <= layout::META_MAX {
                return (v, true);
            }
        }
        truncate_str(&mut slim.image, 256);
        truncate_str(&mut slim.cgroup_path, 1024);
        truncate_str(&mut slim.name, 253);
        truncate_str(&mut slim.pod_name, 253);
        truncate_str(&mut slim.namespace, 253);
        truncate_str(&mut slim.runtime, 64);
        if let Some(uid) = slim.pod_uid.as_mut() {
            truncate_str(&mut uid.0, 128);
        }
        loop {
            let v = blob(&slim);
            if v.len() <= layout::META_MAX {
                return (v, true);
            }
            // The container id goes last: it is what podmapd joins on (a runtime's ids are
            // far shorter; only an id full of escaped characters gets here).
            let uid = slim.pod_uid.as_mut().map(|u| &mut u.0);
            let longest = [
                Some(&mut slim.cgroup_path),
                Some(&mut slim.image),
                Some(&mut slim.name),
                Some(&mut slim.pod_name),
                Some(&mut slim.namespace),
                Some(&mut slim.runtime),
                uid,
            ]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .max_by_key(|s| s.len());
            // Every pass shortens a non-empty string; an empty record is far under the limit.
            let s = longest.unwrap_or(&mut slim.container_id.0);
            let half = s.len() / 2;
            truncate_str(s, half);
        }
    }

    pub fn from_blob(b: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

fn blob(m: &ContainerMeta) -> Vec<u8> {
    serde_json::to_vec(m).expect("ContainerMeta serializes: string keys, no floats")
}

/// Cuts `s` to at most `max` bytes, at a character boundary (`String::truncate` panics inside a
/// character). What is cut is whole characters.
pub fn truncate_str(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    // At most 3 steps back: a UTF-8 character is at most 4 bytes; 0 is a boundary.
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_labels_are_dropped_to_fit() {
        let mut m = ContainerMeta {
            container_id: ContainerId("a".repeat(64)),
            name: "c".into(),
            ..Default::default()
        };
        for i in 0..200 {
            m.labels.insert(format!("label-{i:03}"), "v".repeat(40));
        }
        let (blob, truncated) = m.to_blob();
        assert!(truncated);
        assert!(blob.len() <= layout::META_MAX);
        let back = ContainerMeta::from_blob(&blob).unwrap();
        assert_eq!(back.container_id, m.container_id);
        assert!(back.labels.len() < m.labels.len() && !back.labels.is_empty());

        let small = ContainerMeta {
            container_id: ContainerId("b".into()),
            ..Default::default()
        };
        let (blob, truncated) = small.to_blob();
        assert!(!truncated);
        assert_eq!(ContainerMeta::from_blob(&blob).unwrap(), small);
    }

    /// Multi-byte values at and around every cut `to_blob` makes: the blob is valid JSON of a
    /// record within the map's limit, each string a prefix of the original.
    #[test]
    fn multi_byte_values_are_cut_at_character_boundaries() {
        // 2-, 3- and 4-byte characters, shifted by an ASCII prefix of 0..4 bytes so that every
        // cut (256, 1024, 253) falls inside a character for some case.
        for ch in ['é', '€', '😀'] {
            for shift in 0..4 {
                for count in [3_000, 4_088 / ch.len_utf8(), 1, 130] {
                    let long = format!("{}{}", "a".repeat(shift), ch.to_string().repeat(count));
                    let m = ContainerMeta {
                        container_id: ContainerId("c".repeat(64)),
                        name: long.clone(),
                        pod_uid: Some(PodUid(long.clone())),
                        pod_name: long.clone(),
                        namespace: long.clone(),
                        image: long.clone(),
                        runtime: long.clone(),
                        cgroup_path: long.clone(),
                        labels: [("k".to_string(), long.clone())].into(),
                        ..Default::default()
                    };
                    let (blob, truncated) = m.to_blob();
                    let case = format!("{ch:?} x{count} after {shift}");
                    assert!(
                        blob.len() <= layout::META_MAX,
                        "{case}: {} bytes",
                        blob.len()
                    );
                    let back = ContainerMeta::from_blob(&blob).expect("valid UTF-8 JSON");
                    assert_eq!(back.container_id, m.container_id, "{case}");
                    for (got, full) in [
                        (&back.name, &m.name),
                        (&back.pod_name, &m.pod_name),
                        (&back.namespace, &m.namespace),
                        (&back.image, &m.image),
                        (&back.runtime, &m.runtime),
                        (&back.cgroup_path, &m.cgroup_path),
                    ] {
                        assert!(full.starts_with(got.as_str()), "{case}: not a prefix");
                    }
                    let whole = serde_json::to_vec(&m).unwrap().len() <= layout::META_MAX;
                    assert_eq!(truncated, !whole, "{case}");
                    if whole {
                        assert_eq!(back, m, "{case}");
                    }
                }
            }
        }
    }

    /// Each free-text field cut to its own bound, however it was filled.
    #[test]
    fn oversized_names_are_cut_to_their_bounds() {
        let m = ContainerMeta {
            container_id: ContainerId("d".repeat(64)),
            name: "é".repeat(3_000),
            image: "i".to_string() + &"€".repeat(3_000),
            ..Default::default()
        };
        let (blob, truncated) = m.to_blob();
        assert!(truncated);
        let back = ContainerMeta::from_blob(&blob).unwrap();
        assert_eq!(back.name, "é".repeat(126), "253 bytes cut inside an é: 252");
        assert_eq!(
            back.image,
            "i".to_string() + &"€".repeat(85),
            "256 bytes, cut to 256"
        );
    }

    /// Strings that JSON escapes (quotes, backslashes, control characters) take up to six times
    /// their length in the blob: it still fits, ids kept.
    #[test]
    fn escaped_strings_still_fit() {
        let nasty = "\u{1}\"\\".repeat(1_000);
        let m = ContainerMeta {
            container_id: ContainerId("\"\\".repeat(512)),
            name: nasty.clone(),
            pod_name: nasty.clone(),
            namespace: nasty.clone(),
            image: nasty.clone(),
            runtime: nasty.clone(),
            cgroup_path: nasty.clone(),
            pod_uid: Some(PodUid(nasty.clone())),
            ..Default::default()
        };
        let (blob, truncated) = m.to_blob();
        assert!(truncated);
        assert!(blob.len() <= layout::META_MAX, "{} bytes", blob.len());
        let back = ContainerMeta::from_blob(&blob).unwrap();
        assert_eq!(back.container_id, m.container_id);
    }

    #[test]
    fn privileged_is_a_bounding_set_of_every_capability_the_node_gives() {
        let node = 0x1ff_ffff_ffff; // a kernel whose last capability is 40
        let mut m = ContainerMeta::default();
        m.set_capabilities(node, node);
        assert_eq!((m.privileged, m.cap_bounding), (Some(true), Some(node)));
        // One missing (CAP_SYS_ADMIN dropped): not privileged.
        m.set_capabilities(node & !(1 << 21), node);
        assert_eq!(m.privileged, Some(false));
        // A node that lacks one itself (its init dropped it): all the rest is enough.
        m.set_capabilities(node & !(1 << 21), node & !(1 << 21));
        assert_eq!(m.privileged, Some(true));
        // Bits beyond the node's set change nothing.
        m.set_capabilities(u64::MAX, node);
        assert_eq!(m.privileged, Some(true));
    }

    /// A record written before the capability fields existed reads as "unknown", never as
    /// unprivileged; a new one reads back whole.
    #[test]
    fn records_without_capabilities_still_decode() {
        let old = br#"{"container_id":"c1","name":"app","runtime":"containerd","init_pid":7}"#;
        let m = ContainerMeta::from_blob(old).unwrap();
        assert_eq!((m.privileged, m.cap_bounding), (None, None));
        assert_eq!(m.init_pid, Some(7));
        let mut m2 = m.clone();
        m2.set_capabilities(0x3, 0x1ff_ffff_ffff);
        let (blob, _) = m2.to_blob();
        assert_eq!(ContainerMeta::from_blob(&blob).unwrap(), m2);
        assert!(!serde_json::to_string(&m).unwrap().contains("privileged"));
    }

    #[test]
    fn truncate_str_keeps_whole_characters() {
        let mut s = "aé€😀".to_string(); // 1 + 2 + 3 + 4 bytes
        for (max, want) in [
            (10, "aé€😀"),
            (9, "aé€"),
            (6, "aé€"),
            (5, "aé"),
            (2, "a"),
            (0, ""),
        ] {
            let mut t = s.clone();
            truncate_str(&mut t, max);
            assert_eq!(t, want, "max {max}");
        }
        truncate_str(&mut s, 100);
        assert_eq!(s, "aé€😀");
    }
}
