//! The OCI `linux.cgroupsPath` notations: cgroupfs (`/kubepods/besteffort/pod<uid>/<id>`) and
//! systemd (`<slice>:<prefix>:<name>`), turned into a path relative to a hierarchy's root.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotationError {
    #[error("cgroups path is empty")]
    Empty,
    #[error("systemd cgroups path {0:?} is not of the form slice:prefix:name")]
    BadSystemd(String),
    #[error("systemd slice name {0:?} is invalid")]
    BadSlice(String),
    #[error("cgroups path {0:?} climbs out of the hierarchy")]
    Escapes(String),
    #[error("cgroups path {0:?} names the hierarchy's root, which no container owns")]
    Root(String),
}

/// Turns an OCI cgroupsPath into a path relative to a hierarchy root.
pub fn parse_cgroups_path(raw: &str) -> Result<PathBuf, NotationError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(NotationError::Empty);
    }
    let rel = if !raw.starts_with('/') && raw.contains(':') {
        systemd(raw)?
    } else {
        raw.trim_start_matches('/').to_string()
    };
    if rel.split('/').any(|c| c == ".." || c == ".") {
        return Err(NotationError::Escapes(raw.to_string()));
    }
    // The root holds every process of the host: a container recorded there would take them all
    // (and a policy selecting it would act on them).
    if rel.split('/').all(str::is_empty) {
        return Err(NotationError::Root(raw.to_string()));
    }
    Ok(PathBuf::from(rel))
}

fn systemd(raw: &str) -> Result<String, NotationError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(NotationError::BadSystemd(raw.to_string()));
    };
    if name.is_empty() {
        return Err(NotationError::BadSystemd(raw.to_string()));
    }
    let mut path = expand_slice(if slice.is_empty() {
        "system.slice"
    } else {
        slice
    })?;
    let unit = if name.ends_with(".slice") || name.ends_with(".scope") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    if name.ends_with(".slice") {
        // A slice as the unit nests under its own parents, like any slice.
        path = expand_slice(name)?;
    } else {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&unit);
    }
    Ok(path)
}

/// `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
pub(super) fn expand_slice(slice: &str) -> Result<String, NotationError> {
    let bad = || NotationError::BadSlice(slice.to_string());
    let stem = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if stem == "-" {
        return Ok(String::new());
    }
    if stem.is_empty()
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
        || stem.contains('/')
    {
        return Err(bad());
    }
    let mut out = String::new();
    let mut acc = String::new();
    for (i, part) in stem.split('-').enumerate() {
        if i > 0 {
            acc.push('-');
            out.push('/');
        }
        acc.push_str(part);
        out.push_str(&acc);
        out.push_str(".slice");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notations() {
        let cases: &[(&str, &str)] = &[
            ("/kubepods/besteffort/pod1234/abcd", "kubepods/besteffort/pod1234/abcd"),
            ("/kubepods/pod1234/abcd", "kubepods/pod1234/abcd"),
            ("/libpod_parent/libpod-abcd", "libpod_parent/libpod-abcd"),
            ("podmap-test/abc", "podmap-test/abc"),
            (
                "kubepods-besteffort-pod12_34.slice:cri-containerd:abcd",
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-abcd.scope",
            ),
            (
                "kubepods-burstable-podxyz.slice:crio:abcd",
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podxyz.slice/crio-abcd.scope",
            ),
            ("kubepods-podxyz.slice:crio:abcd", "kubepods.slice/kubepods-podxyz.slice/crio-abcd.scope"),
            ("system.slice:docker:abcd", "system.slice/docker-abcd.scope"),
            ("-.slice:libpod:abcd", "libpod-abcd.scope"),
            (":libpod:abcd", "system.slice/libpod-abcd.scope"),
            ("machine.slice::abcd", "machine.slice/abcd.scope"),
            ("user.slice:x:app.slice", "app.slice"),
        ];
        for (raw, want) in cases {
            assert_eq!(
                parse_cgroups_path(raw).unwrap(),
                PathBuf::from(want),
                "{raw}"
            );
        }
    }

    #[test]
    fn bad_notations_say_why() {
        assert_eq!(parse_cgroups_path(""), Err(NotationError::Empty));
        assert!(matches!(
            parse_cgroups_path("a:b"),
            Err(NotationError::BadSystemd(_))
        ));
        assert!(matches!(
            parse_cgroups_path("a:b:c:d"),
            Err(NotationError::BadSystemd(_))
        ));
        assert!(matches!(
            parse_cgroups_path("kube--x.slice:p:n"),
            Err(NotationError::BadSlice(_))
        ));
        assert!(matches!(
            parse_cgroups_path("notaslice:p:n"),
            Err(NotationError::BadSlice(_))
        ));
        assert!(matches!(
            parse_cgroups_path("/a/../../etc"),
            Err(NotationError::Escapes(_))
        ));
        // A path that names the hierarchy's root (found by fuzzing: "." came back as ".") would
        // record the container over every process of the host.
        for root in ["/", "//", ".", "/./", "a/./b", "-.slice::-.slice"] {
            assert!(
                matches!(
                    parse_cgroups_path(root),
                    Err(NotationError::Root(_) | NotationError::Escapes(_))
                ),
                "{root:?}: {:?}",
                parse_cgroups_path(root)
            );
        }
    }
}
