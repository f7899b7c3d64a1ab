//! Which cgroup the container lives in: config.json's `linux.cgroupsPath` (cgroupfs or systemd
//! notation, resolved by bpf/) checked against the init process's real membership in
//! /proc/<pid>/cgroup. Where they disagree the real membership wins (a runtime may add a
//! sub-cgroup, e.g. crun's systemd `container` leaf); the disagreement is reported for the log.

use std::path::{Path, PathBuf};

use podmap_bpf::cgroup::{parse_cgroups_path, CgroupLayout, NotationError};
use podmap_bpf::{CgroupId, CgroupIds};

use crate::state::Pid;

/// A process's cgroup paths, from /proc/<pid>/cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// The cgroup2 path (`0::/path`).
    pub v2: Option<String>,
    /// (controllers, path) of each v1 hierarchy.
    pub v1: Vec<(Vec<String>, String)>,
}

impl ProcCgroups {
    pub fn parse(text: &str) -> ProcCgroups {
        let mut out = ProcCgroups::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(hier), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if hier == "0" && ctrls.is_empty() {
                out.v2 = Some(path.to_string());
            } else if !ctrls.is_empty() {
                out.v1.push((
                    ctrls.split(',').map(str::to_owned).collect(),
                    path.to_string(),
                ));
            }
        }
        out
    }

    pub fn read(pid: Pid) -> std::io::Result<ProcCgroups> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|t| Self::parse(&t))
    }

    pub fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == controller))
            .map(|(_, p)| p.as_str())
    }
}

/// Where the container's cgroup is, and how that was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub ids: CgroupIds,
    /// The cgroup's path relative to the hierarchy root (the v2 path where there is one).
    pub path: String,
    /// Config and /proc named different cgroups (the /proc one was taken), per hierarchy.
    pub disagreements: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("linux.cgroupsPath {raw:?}: {source}")]
    Notation {
        raw: String,
        #[source]
        source: NotationError,
    },
    #[error("cgroup {path} (linux.cgroupsPath) exists in no hierarchy under {root}{proc_note}")]
    Missing {
        path: String,
        root: PathBuf,
        proc_note: String,
    },
    #[error("config.json has no linux.cgroupsPath{proc_note}")]
    NoPath { proc_note: String },
}

/// One hierarchy's view: where its root is mounted, and the process's path in it.
struct Hierarchy<'a> {
    name: String,
    v2: bool,
    mount: &'a Path,
    proc_path: Option<&'a str>,
    /// The hook's own path in it: the runtime's cgroup, which a container never shares. A
    /// process still there (or at the root) was not placed in this hierarchy by the runtime.
    own_path: Option<&'a str>,
}

/// Resolves the container's cgroup ids from the config's cgroupsPath and the init process's
/// real membership (`proc`, when a pid was given). `own` is the hook's own membership.
pub fn resolve(
    layout: &CgroupLayout,
    cgroups_path: Option<&str>,
    proc: Option<&ProcCgroups>,
    own: Option<&ProcCgroups>,
) -> Result<Membership, MembershipError> {
    let config_rel = cgroups_path
        .map(|raw| {
            parse_cgroups_path(raw).map_err(|source| MembershipError::Notation {
                raw: raw.to_string(),
                source,
            })
        })
        .transpose()?;
    let v1_name = layout.v1.as_ref().map(|v| v.name.as_str());
    let mut hierarchies = Vec::new();
    if let Some(mount) = layout.unified.as_deref() {
        hierarchies.push(Hierarchy {
            name: "cgroup2".into(),
            v2: true,
            mount,
            proc_path: proc.and_then(|p| p.v2.as_deref()),
            own_path: own.and_then(|p| p.v2.as_deref()),
        });
    }
    if let (Some(v1), Some(name)) = (layout.v1.as_ref(), v1_name) {
        hierarchies.push(Hierarchy {
            name: format!("cgroup1 {name}"),
            v2: false,
            mount: &v1.path,
            proc_path: proc.and_then(|p| p.v1_path(name)),
            own_path: own.and_then(|p| p.v1_path(name)),
        });
    }

    let mut ids = CgroupIds::default();
    let mut path = None;
    let mut disagreements = Vec::new();
    for h in &hierarchies {
        let from_config = config_rel.as_deref().and_then(|rel| {
            dir_id(h.mount, rel).map(|id| (id, rel.to_string_lossy().into_owned()))
        });
        let from_proc = h
            .proc_path
            .map(|p| p.trim_start_matches('/'))
            .filter(|p| !p.is_empty())
            .filter(|p| h.own_path.map(|o| o.trim_start_matches('/')) != Some(*p))
            .and_then(|p| dir_id(h.mount, Path::new(p)).map(|id| (id, p.to_string())));
        let chosen = match (from_config, from_proc) {
            (Some(c), Some(p)) if c.1 != p.1 => {
                disagreements.push(format!(
                    "{}: linux.cgroupsPath is {}, the process is in {} (taken)",
                    h.name, c.1, p.1
                ));
                Some(p)
            }
            (None, Some(p)) => {
                if let Some(rel) = &config_rel {
                    disagreements.push(format!(
                        "{}: linux.cgroupsPath {} does not exist, the process is in {} (taken)",
                        h.name,
                        rel.display(),
                        p.1
                    ));
                }
                Some(p)
            }
            (c, _) => c,
        };
        if let Some((id, p)) = chosen {
            if h.v2 {
                ids.v2 = Some(id);
            } else {
                ids.v1 = Some(id);
            }
            path.get_or_insert(p);
        }
    }

    match path {
        Some(path) => Ok(Membership {
            ids,
            path,
            disagreements,
        }),
        None => {
            let proc_note = if proc.is_some() {
                ", and the process's own cgroups are the runtime's".to_string()
            } else {
                ", and the state gives no pid to look up".to_string()
            };
            match config_rel {
                Some(rel) => Err(MembershipError::Missing {
                    path: rel.display().to_string(),
                    root: layout.root.clone(),
                    proc_note,
                }),
                None => Err(MembershipError::NoPath { proc_note }),
            }
        }
    }
}

fn dir_id(mount: &Path, rel: &Path) -> Option<CgroupId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(mount.join(rel))
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| CgroupId(m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmap_bpf::cgroup::{LayoutKind, V1Controller};

    #[test]
    fn parses_proc_cgroup() {
        let p = ProcCgroups::parse(
            "9:name=systemd:/a\n4:memory:/podmap/c1\n2:cpu,cpuacct:/x\n0::/podmap/c1\n",
        );
        assert_eq!(p.v2.as_deref(), Some("/podmap/c1"));
        assert_eq!(p.v1_path("memory"), Some("/podmap/c1"));
        assert_eq!(p.v1_path("cpuacct"), Some("/x"));
        assert_eq!(p.v1_path("pids"), None);
        assert_eq!(ProcCgroups::parse("garbage\n"), ProcCgroups::default());
    }

    /// A fake layout over plain directories: resolution only stats directories.
    struct Fake {
        _tmp: tempfile::TempDir,
        layout: CgroupLayout,
    }

    fn fake(dirs: &[&str]) -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let unified = tmp.path().join("unified");
        let memory = tmp.path().join("memory");
        for d in dirs {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::create_dir_all(&memory).unwrap();
        let layout = CgroupLayout {
            root: tmp.path().to_owned(),
            kind: LayoutKind::Hybrid,
            unified: Some(unified),
            v1: Some(V1Controller {
                name: "memory".into(),
                path: memory,
                hierarchy_id: 4,
            }),
        };
        Fake { _tmp: tmp, layout }
    }

    fn id_of(f: &Fake, rel: &str) -> CgroupId {
        dir_id(&f.layout.root, Path::new(rel)).unwrap()
    }

    #[test]
    fn config_and_proc_agree() {
        let f = fake(&["unified/pods/c1", "memory/pods/c1"]);
        let proc = ProcCgroups::parse("4:memory:/pods/c1\n0::/pods/c1\n");
        let own = ProcCgroups::parse("4:memory:/\n0::/\n");
        let m = resolve(&f.layout, Some("/pods/c1"), Some(&proc), Some(&own)).unwrap();
        assert_eq!(m.ids.v2, Some(id_of(&f, "unified/pods/c1")));
        assert_eq!(m.ids.v1, Some(id_of(&f, "memory/pods/c1")));
        assert_eq!(m.path, "pods/c1");
        assert!(m.disagreements.is_empty());
        // No pid: the config alone.
        let m = resolve(&f.layout, Some("/pods/c1"), None, Some(&own)).unwrap();
        assert_eq!(m.ids.v2, Some(id_of(&f, "unified/pods/c1")));
    }

    #[test]
    fn the_real_membership_wins() {
        let f = fake(&["unified/pods/c1/container", "memory/pods/c1"]);
        let proc = ProcCgroups::parse("4:memory:/pods/c1\n0::/pods/c1/container\n");
        let m = resolve(&f.layout, Some("/pods/c1"), Some(&proc), None).unwrap();
        assert_eq!(m.ids.v2, Some(id_of(&f, "unified/pods/c1/container")));
        assert_eq!(m.path, "pods/c1/container");
        assert_eq!(m.disagreements.len(), 1, "{:?}", m.disagreements);
        assert!(m.disagreements[0].contains("(taken)"));

        // A cgroupsPath that does not exist, a process that is somewhere real.
        let m = resolve(&f.layout, Some("/nowhere/x"), Some(&proc), None).unwrap();
        assert_eq!(m.ids.v1, Some(id_of(&f, "memory/pods/c1")));
        assert_eq!(m.disagreements.len(), 2);
    }

    #[test]
    fn a_process_left_in_the_runtimes_cgroup_is_not_taken() {
        // crun on a v1-only layout: the v2 line still names the runtime's (the hook's) cgroup.
        let f = fake(&["unified/runtime", "memory/pods/c1"]);
        let proc = ProcCgroups::parse("4:memory:/pods/c1\n0::/runtime\n");
        let own = ProcCgroups::parse("4:memory:/\n0::/runtime\n");
        let m = resolve(&f.layout, Some("/pods/c1"), Some(&proc), Some(&own)).unwrap();
        assert_eq!(m.ids.v2, None);
        assert_eq!(m.ids.v1, Some(id_of(&f, "memory/pods/c1")));
        assert_eq!(m.path, "pods/c1");
        // ... nor one at the root.
        let proc = ProcCgroups::parse("4:memory:/pods/c1\n0::/\n");
        let m = resolve(&f.layout, Some("/pods/c1"), Some(&proc), None).unwrap();
        assert_eq!(m.ids.v2, None);
    }

    #[test]
    fn systemd_notation() {
        let f = fake(&["unified/kubepods.slice/kubepods-pod1.slice/crio-abc.scope"]);
        let m = resolve(&f.layout, Some("kubepods-pod1.slice:crio:abc"), None, None).unwrap();
        assert_eq!(m.path, "kubepods.slice/kubepods-pod1.slice/crio-abc.scope");
        assert!(m.ids.v2.is_some() && m.ids.v1.is_none());
    }

    #[test]
    fn unresolved_says_why() {
        let f = fake(&[]);
        let e = resolve(&f.layout, Some("/nowhere/x"), None, None).unwrap_err();
        assert!(
            e.to_string().contains("nowhere/x") && e.to_string().contains("no pid"),
            "{e}"
        );
        let e = resolve(&f.layout, None, None, None).unwrap_err();
        assert!(e.to_string().contains("no linux.cgroupsPath"), "{e}");
        let e = resolve(&f.layout, Some("a:b"), None, None).unwrap_err();
        assert!(matches!(e, MembershipError::Notation { .. }), "{e}");
    }
}
