//! Every cgroup's path by id, from a walk at start-up and the kernel's mkdir/rmdir events: how
//! podmapd tells a container-shaped cgroup that nobody mapped (yet) from a host cgroup.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use podmap_cgroup::CgroupLayout;
use podmap_cgroup::{CgroupId, CgroupKey, Hierarchy};

#[derive(Debug, Default)]
pub struct CgroupPaths {
    by_key: HashMap<CgroupKey, Arc<str>>,
    by_path: HashMap<(Hierarchy, Arc<str>), CgroupId>,
    /// The kernel's hierarchy id of the tracked v1 controller (-1: none).
    v1_hierarchy_id: i32,
}

impl CgroupPaths {
    /// Walks the tracked hierarchies under the layout's mounts.
    pub fn scan(layout: &CgroupLayout) -> Self {
        let mut t = CgroupPaths {
            v1_hierarchy_id: layout.v1.as_ref().map_or(-1, |v| v.hierarchy_id),
            ..Default::default()
        };
        if let Some(u) = &layout.unified {
            t.walk(u, Hierarchy::V2);
        }
        if let Some(v1) = &layout.v1 {
            t.walk(&v1.path, Hierarchy::V1);
        }
        t
    }

    fn walk(&mut self, mount: &Path, hier: Hierarchy) {
        let mut stack = vec![mount.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(md) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(mount)
                .map(|r| format!("/{}", r.display()))
                .unwrap_or_else(|_| "/".into());
            let rel = if rel == "/" {
                rel
            } else {
                rel.trim_end_matches('/').to_string()
            };
            self.insert(
                CgroupKey {
                    id: CgroupId(md.ino()),
                    hierarchy: hier,
                },
                &rel,
            );
            if let Ok(rd) = std::fs::read_dir(&dir) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
    }

    fn hierarchy_of(&self, kernel_hierarchy_id: i32) -> Option<Hierarchy> {
        if kernel_hierarchy_id == 0 {
            Some(Hierarchy::V2)
        } else if kernel_hierarchy_id == self.v1_hierarchy_id {
            Some(Hierarchy::V1)
        } else {
            None
        }
    }

    pub fn insert(&mut self, key: CgroupKey, path: &str) {
        let path: Arc<str> = Arc::from(path);
        self.by_path.insert((key.hierarchy, path.clone()), key.id);
        self.by_key.insert(key, path);
    }

    pub fn mkdir(&mut self, kernel_hierarchy_id: i32, id: u64, path: &str) {
        if let Some(h) = self.hierarchy_of(kernel_hierarchy_id) {
            self.insert(
                CgroupKey {
                    id: CgroupId(id),
                    hierarchy: h,
                },
                path,
            );
        }
    }

    /// Forgets a removed cgroup; returns its key.
    pub fn rmdir(&mut self, kernel_hierarchy_id: i32, id: u64) -> Option<CgroupKey> {
        let h = self.hierarchy_of(kernel_hierarchy_id)?;
        let key = CgroupKey {
            id: CgroupId(id),
            hierarchy: h,
        };
        if let Some(path) = self.by_key.remove(&key) {
            self.by_path.remove(&(h, path));
        }
        Some(key)
    }

    pub fn path(&self, key: CgroupKey) -> Option<&Arc<str>> {
        self.by_key.get(&key)
    }

    /// The cgroup itself, then each ancestor up to (not including) the root.
    pub fn self_and_ancestors(&self, key: CgroupKey) -> Vec<CgroupKey> {
        let mut out = vec![key];
        let Some(path) = self.by_key.get(&key) else {
            return out;
        };
        let mut p: &str = path;
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            if p.is_empty() {
                break;
            }
            if let Some(id) = self.by_path.get(&(key.hierarchy, Arc::from(p))) {
                out.push(CgroupKey {
                    id: *id,
                    hierarchy: key.hierarchy,
                });
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_mkdir_rmdir_and_ancestors() {
        let mut t = CgroupPaths {
            v1_hierarchy_id: 4,
            ..Default::default()
        };
        t.mkdir(0, 10, "/a");
        t.mkdir(0, 11, "/a/b");
        t.mkdir(0, 12, "/a/b/c");
        t.mkdir(4, 10, "/a"); // same id, other hierarchy
        t.mkdir(7, 99, "/ignored");
        assert_eq!(t.path(CgroupKey::v2(12)).map(|p| &**p), Some("/a/b/c"));
        assert_eq!(t.path(CgroupKey::v1(10)).map(|p| &**p), Some("/a"));
        assert_eq!(t.len(), 4);
        assert_eq!(
            t.self_and_ancestors(CgroupKey::v2(12)),
            vec![CgroupKey::v2(12), CgroupKey::v2(11), CgroupKey::v2(10)]
        );
        assert_eq!(t.rmdir(0, 11), Some(CgroupKey::v2(11)));
        assert_eq!(t.path(CgroupKey::v2(11)), None);
        assert_eq!(
            t.self_and_ancestors(CgroupKey::v2(12)),
            vec![CgroupKey::v2(12), CgroupKey::v2(10)]
        );
    }
}
