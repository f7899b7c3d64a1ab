//! Which cgroup a container is in: the one answer both runtime plugins use.
//!
//! Two witnesses, checked against each other in every hierarchy the layout tracks:
//!
//! - the runtime's word, the OCI `linux.cgroupsPath` (cgroupfs or systemd notation), which the
//!   runtime may have built wrongly or been handed forged;
//! - the container's init process, `/proc/<pid>/cgroup`, which is where the kernel actually put
//!   it, when there is a pid and the process is still there.
//!
//! Per hierarchy:
//!
//! | the process is in                                   | the container's cgroup is |
//! |-----------------------------------------------------|---------------------------|
//! | the cgroupsPath's cgroup                            | that cgroup (agreed)      |
//! | a direct child of it (crun's `container` leaf, an init that moved to its own leaf) | the cgroupsPath's cgroup: it holds the whole container |
//! | anywhere else                                       | the process's (the path is wrong or forged); noted |
//! | nowhere we can use (no pid, gone, the root, the runtime's own cgroup, outside our cgroup namespace) | the cgroupsPath's cgroup, if it exists |
//!
//! A cgroupsPath that climbs out of the hierarchy (`..`) or names its root is refused outright:
//! a container never lives in the root cgroup, and mapping it would claim every host process.
//! A process path with `..` (the process is outside the reader's cgroup namespace) or at the root
//! is not used.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::ids::{CgroupId, CgroupIds, Hierarchy};
use crate::layout::CgroupLayout;
use crate::notation::{parse_cgroups_path, NotationError};

/// A process's cgroup paths, as `/proc/<pid>/cgroup` lists them.
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

    /// `/proc/<pid>/cgroup`.
    pub fn of_pid(pid: u32) -> io::Result<ProcCgroups> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|t| Self::parse(&t))
    }

    /// The calling process's own (`/proc/self/cgroup`).
    pub fn own() -> io::Result<ProcCgroups> {
        std::fs::read_to_string("/proc/self/cgroup").map(|t| Self::parse(&t))
    }

    pub fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|c| c == controller))
            .map(|(_, p)| p.as_str())
    }
}

/// What is known of the container's init process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// The runtime named no process.
    NoPid,
    /// Its `/proc/<pid>/cgroup` could not be read (it exited, or never was).
    Gone { pid: u32, error: String },
    /// Its membership.
    Cgroups { pid: u32, cgroups: ProcCgroups },
}

impl Process {
    /// Reads `/proc/<pid>/cgroup`; `None` and pid 0 both mean no process.
    pub fn read(pid: Option<u32>) -> Process {
        match pid.filter(|p| *p != 0) {
            None => Process::NoPid,
            Some(pid) => match ProcCgroups::of_pid(pid) {
                Ok(cgroups) => Process::Cgroups { pid, cgroups },
                Err(e) => Process::Gone {
                    pid,
                    error: e.to_string(),
                },
            },
        }
    }

    fn cgroups(&self) -> Option<&ProcCgroups> {
        match self {
            Process::Cgroups { cgroups, .. } => Some(cgroups),
            _ => None,
        }
    }

    fn note(&self, runtime_own: bool) -> String {
        match self {
            Process::NoPid => ", and no pid was given to look up".to_string(),
            Process::Gone { pid, error } => format!(", and /proc/{pid}/cgroup: {error}"),
            Process::Cgroups { pid, .. } if runtime_own => format!(
                ", and process {pid} is in no cgroup of its own (the root, the runtime's, or \
                 outside this cgroup namespace)"
            ),
            Process::Cgroups { pid, .. } => {
                format!(", and process {pid} is in no cgroup under the layout's root")
            }
        }
    }
}

/// What the resolver is given.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The OCI `linux.cgroupsPath`, when the runtime gave one.
    pub cgroups_path: Option<&'a str>,
    /// The container's init process.
    pub process: &'a Process,
    /// Cgroups that are the runtime's own, never a container's (the hook runs in the runtime's
    /// cgroup: an init process still there was not moved into this hierarchy). `None` when the
    /// caller is not in the runtime's cgroup.
    pub runtime: Option<&'a ProcCgroups>,
}

/// How a hierarchy's cgroup was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The cgroupsPath's cgroup, where the process is.
    Agreed,
    /// The cgroupsPath's cgroup; the process is in a direct child of it.
    ProcessInLeaf,
    /// The cgroupsPath's cgroup; the process could not be used.
    PathOnly,
    /// The process's cgroup; there was no cgroupsPath.
    ProcessOnly,
    /// The process's cgroup, which the cgroupsPath did not name (or named a missing cgroup).
    ProcessOverPath,
}

/// One hierarchy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub hierarchy: Hierarchy,
    /// Relative to the hierarchy's root.
    pub rel: PathBuf,
    pub id: CgroupId,
    pub how: How,
    /// For [`How::ProcessOverPath`] and [`How::ProcessInLeaf`]: the other witness's path.
    pub path_said: Option<PathBuf>,
}

/// The container's cgroup in each hierarchy where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    pub ids: CgroupIds,
    /// Its path relative to the hierarchy roots: the cgroup2 one where there is one.
    pub rel: PathBuf,
    pub found: Vec<Found>,
}

impl ContainerCgroup {
    /// The path as podmap-nri's records carry it: absolute within the hierarchy.
    pub fn record_path(&self) -> String {
        format!("/{}", self.rel.display())
    }

    /// The path relative to the hierarchy root, as the hook's records carry it.
    pub fn rel_str(&self) -> String {
        self.rel.to_string_lossy().into_owned()
    }

    /// Where the process overrode the cgroupsPath, one line per hierarchy, for the log.
    pub fn disagreements(&self) -> Vec<String> {
        self.found
            .iter()
            .filter(|f| f.how == How::ProcessOverPath)
            .map(|f| {
                let name = match f.hierarchy {
                    Hierarchy::V2 => "cgroup2",
                    Hierarchy::V1 => "cgroup1",
                };
                match &f.path_said {
                    Some(p) => format!(
                        "{name}: the cgroups path names {}, the process is in {} (taken)",
                        p.display(),
                        f.rel.display()
                    ),
                    None => format!(
                        "{name}: the cgroups path's cgroup does not exist, the process is in {} \
                         (taken)",
                        f.rel.display()
                    ),
                }
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cgroups path {raw:?}: {source}")]
    Notation {
        raw: String,
        #[source]
        source: NotationError,
    },
    #[error("cgroups path {raw:?} names the hierarchy's root, never a container's cgroup")]
    Root { raw: String },
    #[error("cgroup {path} (the cgroups path) exists in no hierarchy under {root}{process_note}")]
    Missing {
        path: String,
        root: PathBuf,
        process_note: String,
    },
    #[error("no cgroups path was given{process_note}")]
    NoPath { process_note: String },
}

/// A relative path made only of normal components; `None` for the root, `..`, `.`.
fn contained(p: &str) -> Option<PathBuf> {
    let p = Path::new(p.trim_start_matches('/'));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(c) => out.push(c),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn dir_id(mount: &Path, rel: &Path) -> Option<CgroupId> {
    std::fs::metadata(mount.join(rel))
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| CgroupId(m.ino()))
}

/// The container's cgroup: see the module's table.
pub fn resolve_container(
    layout: &CgroupLayout,
    req: &Request<'_>,
) -> Result<ContainerCgroup, ResolveError> {
    let path_rel = match req.cgroups_path.filter(|p| !p.trim().is_empty()) {
        None => None,
        Some(raw) => {
            let rel = parse_cgroups_path(raw).map_err(|source| ResolveError::Notation {
                raw: raw.to_string(),
                source,
            })?;
            Some(
                contained(&rel.to_string_lossy()).ok_or_else(|| ResolveError::Root {
                    raw: raw.to_string(),
                })?,
            )
        }
    };
    let v1_name = layout.v1.as_ref().map(|v| v.name.as_str());
    let mut hierarchies: Vec<(Hierarchy, &Path, Option<&str>, Option<&str>)> = Vec::new();
    let proc = req.process.cgroups();
    if let Some(mount) = layout.unified.as_deref() {
        hierarchies.push((
            Hierarchy::V2,
            mount,
            proc.and_then(|p| p.v2.as_deref()),
            req.runtime.and_then(|p| p.v2.as_deref()),
        ));
    }
    if let (Some(v1), Some(name)) = (layout.v1.as_ref(), v1_name) {
        hierarchies.push((
            Hierarchy::V1,
            &v1.path,
            proc.and_then(|p| p.v1_path(name)),
            req.runtime.and_then(|p| p.v1_path(name)),
        ));
    }

    let mut ids = CgroupIds::default();
    let mut found = Vec::new();
    let mut process_unusable = true;
    for (hierarchy, mount, proc_path, runtime_path) in hierarchies {
        let runtime_rel = runtime_path.and_then(contained);
        let from_proc = proc_path
            .and_then(contained)
            .filter(|p| Some(p) != runtime_rel.as_ref());
        if from_proc.is_some() {
            process_unusable = false;
        }
        let from_proc = from_proc.and_then(|p| dir_id(mount, &p).map(|id| (p, id)));
        let from_path = path_rel
            .as_ref()
            .and_then(|p| dir_id(mount, p).map(|id| (p.clone(), id)));
        let chosen = match (from_path, from_proc) {
            (Some((p, id)), Some((q, _))) if p == q => Some((p, id, How::Agreed, None)),
            (Some((p, id)), Some((q, _))) if q.parent() == Some(p.as_path()) => {
                Some((p, id, How::ProcessInLeaf, Some(q)))
            }
            (Some((p, _)), Some((q, qid))) => Some((q, qid, How::ProcessOverPath, Some(p))),
            (None, Some((q, qid))) if path_rel.is_some() => {
                Some((q, qid, How::ProcessOverPath, None))
            }
            (None, Some((q, qid))) => Some((q, qid, How::ProcessOnly, None)),
            (Some((p, id)), None) => Some((p, id, How::PathOnly, None)),
            (None, None) => None,
        };
        if let Some((rel, id, how, path_said)) = chosen {
            match hierarchy {
                Hierarchy::V2 => ids.v2 = Some(id),
                Hierarchy::V1 => ids.v1 = Some(id),
            }
            found.push(Found {
                hierarchy,
                rel,
                id,
                how,
                path_said,
            });
        }
    }

    match found.first() {
        Some(first) => Ok(ContainerCgroup {
            ids,
            rel: first.rel.clone(),
            found,
        }),
        None => {
            let process_note = req.process.note(process_unusable);
            match path_rel {
                Some(rel) => Err(ResolveError::Missing {
                    path: rel.display().to_string(),
                    root: layout.root.clone(),
                    process_note,
                }),
                None => Err(ResolveError::NoPath { process_note }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{LayoutKind, V1Controller};

    const UID: &str = "12345678-1234-1234-1234-123456789abc";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A fake cgroup root over plain directories: resolution only stats directories.
    struct Fake {
        _tmp: tempfile::TempDir,
        layout: CgroupLayout,
    }

    /// A hybrid layout (`unified/` and `memory/`) with `dirs` created under the root.
    fn hybrid(dirs: &[&str]) -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        let unified = tmp.path().join("unified");
        let memory = tmp.path().join("memory");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::create_dir_all(&memory).unwrap();
        for d in dirs {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
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

    /// A pure cgroup2 layout with `dirs` created under the root.
    fn unified(dirs: &[&str]) -> Fake {
        let tmp = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let layout = CgroupLayout {
            root: tmp.path().to_owned(),
            kind: LayoutKind::Unified,
            unified: Some(tmp.path().to_owned()),
            v1: None,
        };
        Fake { _tmp: tmp, layout }
    }

    fn id_of(f: &Fake, rel: &str) -> CgroupId {
        dir_id(&f.layout.root, Path::new(rel)).unwrap()
    }

    fn process(text: &str) -> Process {
        Process::Cgroups {
            pid: 42,
            cgroups: ProcCgroups::parse(text),
        }
    }

    fn resolve(
        f: &Fake,
        path: Option<&str>,
        process: &Process,
        runtime: Option<&ProcCgroups>,
    ) -> Result<ContainerCgroup, ResolveError> {
        resolve_container(
            &f.layout,
            &Request {
                cgroups_path: path,
                process,
                runtime,
            },
        )
    }

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

    /// runc, cgroupfs driver, hybrid: path and process agree in both hierarchies.
    #[test]
    fn runc_cgroupfs_hybrid_agrees() {
        let c = format!("kubepods/burstable/pod{UID}/{ID}");
        let f = hybrid(&[&format!("unified/{c}"), &format!("memory/{c}")]);
        let p = process(&format!("4:memory:/{c}\n1:name=systemd:/{c}\n0::/{c}\n"));
        let own = ProcCgroups::parse("4:memory:/\n0::/system.slice/crio.service\n");
        let m = resolve(&f, Some(&format!("/{c}")), &p, Some(&own)).unwrap();
        assert_eq!(m.ids.v2, Some(id_of(&f, &format!("unified/{c}"))));
        assert_eq!(m.ids.v1, Some(id_of(&f, &format!("memory/{c}"))));
        assert_eq!(m.rel, PathBuf::from(&c));
        assert_eq!(m.record_path(), format!("/{c}"));
        assert!(m.found.iter().all(|f| f.how == How::Agreed), "{m:?}");
        assert!(m.disagreements().is_empty());
        // No pid, or a pid that is gone: the path alone.
        for p in [
            Process::NoPid,
            Process::Gone {
                pid: 7,
                error: "No such file or directory".into(),
            },
        ] {
            let m = resolve(&f, Some(&format!("/{c}")), &p, Some(&own)).unwrap();
            assert_eq!(m.ids.v2, Some(id_of(&f, &format!("unified/{c}"))));
            assert!(m.found.iter().all(|f| f.how == How::PathOnly), "{m:?}");
        }
    }

    /// systemd notation (runc's and CRI-O's systemd driver), pure cgroup2.
    #[test]
    fn systemd_notation() {
        let uid_us = UID.replace('-', "_");
        let scope = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_us}.slice/cri-containerd-{ID}.scope"
        );
        let f = unified(&[&scope]);
        let raw = format!("kubepods-burstable-pod{uid_us}.slice:cri-containerd:{ID}");
        let m = resolve(&f, Some(&raw), &process(&format!("0::/{scope}\n")), None).unwrap();
        assert_eq!(m.rel, PathBuf::from(&scope));
        assert_eq!(m.ids.v2, Some(id_of(&f, &scope)));
        assert_eq!(m.ids.v1, None);
        assert_eq!(m.found[0].how, How::Agreed);
    }

    /// crun (systemd driver on cgroup2) puts the init process in a `container` leaf below the
    /// scope: the container is the scope, which holds the leaf and whatever else it makes.
    #[test]
    fn cruns_leaf_maps_the_container_scope() {
        let scope = format!("machine.slice/libpod-{ID}.scope");
        let f = unified(&[&format!("{scope}/container")]);
        let p = process(&format!("0::/{scope}/container\n"));
        let m = resolve(&f, Some(&format!("machine.slice:libpod:{ID}")), &p, None).unwrap();
        assert_eq!(m.rel, PathBuf::from(&scope));
        assert_eq!(m.ids.v2, Some(id_of(&f, &scope)));
        assert_eq!(m.found[0].how, How::ProcessInLeaf);
        assert!(m.disagreements().is_empty());
        // Without a cgroupsPath the process's own cgroup is all there is.
        let m = resolve(&f, None, &p, None).unwrap();
        assert_eq!(m.rel, PathBuf::from(format!("{scope}/container")));
        assert_eq!(m.found[0].how, How::ProcessOnly);
    }

    /// A cgroupsPath naming a cgroup the process is not in (another container's, or an
    /// ancestor several levels up) loses to where the kernel put the process.
    #[test]
    fn a_path_the_process_is_not_in_loses_to_the_process() {
        let mine = format!("kubepods/burstable/pod{UID}/{ID}");
        let other = format!("kubepods/burstable/pod{UID}/{}", "fe".repeat(32));
        let f = hybrid(&[
            &format!("unified/{mine}"),
            &format!("unified/{other}"),
            &format!("memory/{mine}"),
            &format!("memory/{other}"),
        ]);
        let p = process(&format!("4:memory:/{mine}\n0::/{mine}\n"));
        for forged in [format!("/{other}"), "/kubepods".to_string()] {
            let m = resolve(&f, Some(&forged), &p, None).unwrap();
            assert_eq!(
                m.ids.v2,
                Some(id_of(&f, &format!("unified/{mine}"))),
                "{forged}"
            );
            assert_eq!(
                m.ids.v1,
                Some(id_of(&f, &format!("memory/{mine}"))),
                "{forged}"
            );
            assert_eq!(m.rel, PathBuf::from(&mine));
            assert!(
                m.found.iter().all(|f| f.how == How::ProcessOverPath),
                "{forged}: {m:?}"
            );
            assert_eq!(m.disagreements().len(), 2, "{:?}", m.disagreements());
            assert!(
                m.disagreements()[0].contains(&format!("names {}", forged.trim_start_matches('/')))
            );
            assert!(m.disagreements()[0].contains("(taken)"));
        }
        // A path that does not exist, a process that is somewhere real.
        let m = resolve(&f, Some("/nowhere/x"), &p, None).unwrap();
        assert_eq!(m.ids.v1, Some(id_of(&f, &format!("memory/{mine}"))));
        assert_eq!(m.disagreements().len(), 2);
    }

    /// cgroupsPaths that climb out of the hierarchy or name its root are refused, whatever the
    /// process says; process paths outside the reader's cgroup namespace are not used.
    #[test]
    fn escapes_and_the_root_are_refused() {
        let f = unified(&["pods/c1", "etc"]);
        let p = process("0::/pods/c1\n");
        for raw in ["/pods/../../etc", "../etc", "kubepods.slice:x:../../etc"] {
            let e = resolve(&f, Some(raw), &p, None).unwrap_err();
            assert!(matches!(e, ResolveError::Notation { .. }), "{raw}: {e}");
        }
        for raw in ["/", "/.", "//", "-.slice:x:-.slice"] {
            let e = resolve(&f, Some(raw), &p, None).unwrap_err();
            // Refused here, or already by the notation where it knows the root.
            assert!(
                matches!(e, ResolveError::Root { .. } | ResolveError::Notation { .. }),
                "{raw}: {e:?}"
            );
        }
        // A process path with `..` is not followed out of the mount.
        let outside = process("0::/../../etc\n");
        let e = resolve(&f, None, &outside, None).unwrap_err();
        assert!(e.to_string().contains("no cgroup of its own"), "{e}");
        let m = resolve(&f, Some("/pods/c1"), &outside, None).unwrap();
        assert_eq!(m.found[0].how, How::PathOnly);
    }

    /// The hook runs in the runtime's cgroup: an init process still there (crun on a v1-only
    /// host leaves the cgroup2 line at the runtime's), or at the root, was not placed in that
    /// hierarchy.
    #[test]
    fn the_runtimes_cgroup_and_the_root_are_not_the_containers() {
        let f = hybrid(&["unified/runtime", "memory/pods/c1"]);
        let p = process("4:memory:/pods/c1\n0::/runtime\n");
        let own = ProcCgroups::parse("4:memory:/\n0::/runtime\n");
        let m = resolve(&f, Some("/pods/c1"), &p, Some(&own)).unwrap();
        assert_eq!(m.ids.v2, None);
        assert_eq!(m.ids.v1, Some(id_of(&f, "memory/pods/c1")));
        assert_eq!(m.rel, PathBuf::from("pods/c1"));
        let p = process("4:memory:/pods/c1\n0::/\n");
        let m = resolve(&f, Some("/pods/c1"), &p, None).unwrap();
        assert_eq!(m.ids.v2, None);
        let e = resolve(&f, None, &process("0::/runtime\n"), Some(&own)).unwrap_err();
        assert!(e.to_string().contains("no cgroup of its own"), "{e}");
    }

    #[test]
    fn unresolved_says_why() {
        let f = hybrid(&[]);
        let e = resolve(&f, Some("/nowhere/x"), &Process::NoPid, None).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("nowhere/x") && s.contains("exists in no hierarchy") && s.contains("no pid"),
            "{s}"
        );
        let gone = Process::Gone {
            pid: 7,
            error: "No such file or directory".into(),
        };
        let e = resolve(&f, Some("/nowhere/x"), &gone, None).unwrap_err();
        assert!(e.to_string().contains("/proc/7/cgroup"), "{e}");
        let e = resolve(&f, None, &Process::NoPid, None).unwrap_err();
        assert!(matches!(e, ResolveError::NoPath { .. }), "{e}");
        let e = resolve(&f, Some("a:b"), &Process::NoPid, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("is not of the form slice:prefix:name"),
            "{e}"
        );
    }
}
