//! Whether a cgroup path looks like a container's, and the pod uid and container id it names.
//! podmapd uses this for events from cgroups no plugin has mapped (yet): such events are held
//! briefly, then reported as `unknown` with what the path says.

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
/// resolve to the container.
pub fn container_shape(path: &str) -> Option<ContainerShape> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // The deepest component that names a container.
    for (i, comp) in comps.iter().enumerate().rev() {
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
}
