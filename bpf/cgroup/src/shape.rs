//! Whether a cgroup path looks like a container's, and the pod uid and container id it names.
//! podmapd uses this for events from cgroups no plugin has mapped (yet): such events are held
//! briefly, then reported as `unknown` with what the path says.
//!
//! A cgroup's name is chosen by whoever can create it, and systemd hands every logged-in user a
//! writable subtree (`user@<uid>.service`). So a name is believed only below the runtime's pod
//! parents, which only root (the runtime, kubelet) can write to (docs/decisions.md #29).

use super::notation::{expand_slice, NotationError};

/// The cgroups under which kubelet and the runtimes place pods and containers, relative to a
/// hierarchy's root: kubelet's cgroupfs and systemd roots, and systemd's container slice.
pub const DEFAULT_POD_PARENTS: [&str; 3] = ["/kubepods", "/kubepods.slice", "/machine.slice"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodParentError {
    #[error("pod parent is empty")]
    Empty,
    #[error("pod parent {0:?} is the cgroup root: any cgroup anyone creates would pass for a container's")]
    Root(String),
    #[error("pod parent {0:?} climbs out of the hierarchy")]
    Escapes(String),
    #[error(
        "pod parent {0:?} is neither a path (/kubepods) nor a systemd slice (kubepods.slice): {1}"
    )]
    Slice(String, NotationError),
}

/// The cgroups whose descendants' names podmapd believes, as `/a/b` relative to a hierarchy's
/// root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodParents(Vec<String>);

impl Default for PodParents {
    fn default() -> Self {
        PodParents(DEFAULT_POD_PARENTS.iter().map(|p| p.to_string()).collect())
    }
}

impl PodParents {
    /// The defaults plus `extra`, each a cgroupfs path (`/kubepods`, `/custom/pods`) or a systemd
    /// slice name (`kubepods-besteffort.slice`, expanded to its path).
    pub fn with_extra<S: AsRef<str>>(extra: &[S]) -> Result<Self, PodParentError> {
        let mut parents = PodParents::default();
        for raw in extra {
            let p = Self::parse_one(raw.as_ref())?;
            if !parents.0.contains(&p) {
                parents.0.push(p);
            }
        }
        Ok(parents)
    }

    fn parse_one(raw: &str) -> Result<String, PodParentError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PodParentError::Empty);
        }
        let path = if raw.starts_with('/') {
            raw.to_string()
        } else {
            let p = expand_slice(raw).map_err(|e| PodParentError::Slice(raw.to_string(), e))?;
            format!("/{p}")
        };
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if comps.iter().any(|c| *c == ".." || *c == ".") {
            return Err(PodParentError::Escapes(raw.to_string()));
        }
        if comps.is_empty() {
            return Err(PodParentError::Root(raw.to_string()));
        }
        Ok(format!("/{}", comps.join("/")))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The part of `path` strictly below one of the parents, if any.
    fn below<'a>(&self, path: &'a str) -> Option<&'a str> {
        self.0.iter().find_map(|parent| {
            path.strip_prefix(parent.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .filter(|rest| !rest.is_empty())
        })
    }
}

/// What a cgroup path says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeVerdict {
    /// Not shaped like a container's cgroup.
    None,
    /// Shaped like a container's and below a pod parent: its names are believed.
    Container(ContainerShape),
    /// Shaped like a container's but outside every pod parent: anyone who can make cgroups
    /// there could have chosen that name.
    Outside(ContainerShape),
}

/// Whether `path` (relative to its hierarchy's root) is a container's cgroup below `parents`.
pub fn classify(path: &str, parents: &PodParents) -> ShapeVerdict {
    if let Some(rest) = parents.below(path) {
        if let Some(shape) = container_shape(rest) {
            return ShapeVerdict::Container(shape);
        }
    }
    match container_shape(path) {
        Some(shape) => ShapeVerdict::Outside(shape),
        None => ShapeVerdict::None,
    }
}

/// What a container-shaped cgroup path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerShape {
    pub container_id: String,
    pub pod_uid: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() >= 32 && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Recognises `.../pod<uid>/<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`, `libpod-<id>[.scope]`, and the systemd pod slice
/// `...-pod<uid_with_underscores>.slice`. Sub-cgroups below a container (crun's `container`)
/// resolve to the container. Says nothing of who made the cgroup: see [`classify`].
pub fn container_shape(path: &str) -> Option<ContainerShape> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // The shallowest component that names a container: the runtime makes the container's
    // cgroup, the workload may make any name below it (a nested `cri-containerd-<other>.scope`
    // must not turn one container into another).
    for (i, comp) in comps.iter().enumerate() {
        let id = [
            "cri-containerd-",
            "crio-",
            "docker-",
            "libpod-",
            "crio-conmon-",
        ]
        .iter()
        .find_map(|p| comp.strip_prefix(p))
        .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
        .filter(|id| is_container_id(id))
        .or_else(|| is_container_id(comp).then_some(*comp));
        let Some(id) = id else { continue };
        let pod_uid = comps[..i].iter().rev().find_map(|c| pod_uid_of(c));
        return Some(ContainerShape {
            container_id: id.to_string(),
            pod_uid,
        });
    }
    None
}

fn pod_uid_of(comp: &str) -> Option<String> {
    if let Some(uid) = comp.strip_prefix("pod") {
        return looks_like_uid(uid).then(|| uid.to_string());
    }
    let stem = comp.strip_suffix(".slice")?;
    let uid = &stem[stem.rfind("-pod")? + 4..];
    let uid = uid.replace('_', "-");
    looks_like_uid(&uid).then_some(uid)
}

fn looks_like_uid(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "12345678-1234-1234-1234-123456789abc";

    #[test]
    fn shapes() {
        let uid_us = UID.replace('-', "_");
        let cases = [
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Some(UID)),
            (format!("/kubepods/pod{UID}/{ID}/container"), Some(UID)),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_us}.slice/cri-containerd-{ID}.scope"),
                Some(UID),
            ),
            (format!("/kubepods.slice/kubepods-pod{uid_us}.slice/crio-{ID}.scope/container"), Some(UID)),
            (format!("/machine.slice/libpod-{ID}.scope"), None),
            (format!("/libpod_parent/libpod-{ID}"), None),
            (format!("/system.slice/docker-{ID}.scope"), None),
        ];
        for (path, uid) in cases {
            let s = container_shape(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(s.container_id, ID, "{path}");
            assert_eq!(s.pod_uid.as_deref(), uid, "{path}");
        }
        for host in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/podmap-test-1/x",
            "/kubepods/besteffort",
        ] {
            assert_eq!(container_shape(host), None, "{host}");
        }
    }

    #[test]
    fn a_name_below_a_container_does_not_make_another_container() {
        let other = "fe".repeat(32);
        let s = container_shape(&format!(
            "/kubepods/pod{UID}/{ID}/cri-containerd-{other}.scope"
        ))
        .unwrap();
        assert_eq!(s.container_id, ID);
    }

    #[test]
    fn names_are_believed_only_below_the_pod_parents() {
        let uid_us = UID.replace('-', "_");
        let parents = PodParents::with_extra(&["/podmap-test-1/kubepods"]).unwrap();
        for path in [
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_us}.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/podmap-test-1/kubepods/pod{UID}/{ID}/container"),
        ] {
            let ShapeVerdict::Container(s) = classify(&path, &parents) else {
                panic!("{path}: {:?}", classify(&path, &parents));
            };
            assert_eq!(s.container_id, ID, "{path}");
        }
        // What an unprivileged user can create with a delegated systemd user manager, and names
        // that only look like a parent.
        for path in [
            format!("/user.slice/user-1000.slice/user@1000.service/cri-containerd-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{ID}"),
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{ID}.scope"),
            format!("/kubepodsx/pod{UID}/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/podmap-test-1/pod{UID}/{ID}"),
        ] {
            assert!(
                matches!(classify(&path, &parents), ShapeVerdict::Outside(_)),
                "{path}"
            );
        }
        for path in ["/kubepods", "/kubepods/besteffort", "/user.slice", "/"] {
            assert_eq!(classify(path, &parents), ShapeVerdict::None, "{path}");
        }
    }

    #[test]
    fn pod_parents_parse_paths_and_slices_and_refuse_the_root() {
        let p = PodParents::with_extra(&["/custom/pods/", "kubepods-besteffort.slice"]).unwrap();
        assert_eq!(
            p.as_slice(),
            [
                "/kubepods",
                "/kubepods.slice",
                "/machine.slice",
                "/custom/pods",
                "/kubepods.slice/kubepods-besteffort.slice"
            ]
        );
        assert_eq!(PodParents::with_extra(&[""]), Err(PodParentError::Empty));
        assert!(matches!(
            PodParents::with_extra(&["/"]),
            Err(PodParentError::Root(_))
        ));
        assert!(matches!(
            PodParents::with_extra(&["-.slice"]),
            Err(PodParentError::Root(_))
        ));
        assert!(matches!(
            PodParents::with_extra(&["/kubepods/../user.slice"]),
            Err(PodParentError::Escapes(_))
        ));
        assert!(matches!(
            PodParents::with_extra(&["kubepods"]),
            Err(PodParentError::Slice(..))
        ));
    }
}
