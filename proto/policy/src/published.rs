//! The policies podmapd put in force, published for the runtime plugins. podmapd writes them to
//! [`ACTIVE_FILE`] in the policy directory each time its set changes; the plugins decide a new
//! container's memberships from that file, and from the directory itself only when there is
//! none (podmapd never ran, or cannot write there). So the daemon and the plugins decide from
//! the same set: while a file is broken, podmapd keeps its last valid version in force, and a
//! container created meanwhile joins that version too (the hook, a new process per container,
//! would otherwise read the broken file and start the container outside the policy). The file
//! matches what the kernel enforces: podmapd writes the rule tables from the same set, and while
//! podmapd is down neither changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Loaded, PodPolicy, PolicyDir, PolicySet};
use crate::file::{read_bounded, ReadError, MAX_POLICY_FILE_BYTES};

/// In the policy directory; a dot file not ending in .yaml, so no reader takes it for a policy.
pub const ACTIVE_FILE: &str = ".podmap-active.json";

#[derive(Serialize, Deserialize)]
struct Published {
    policies: Vec<PublishedPolicy>,
}

#[derive(Serialize, Deserialize)]
struct PublishedPolicy {
    source: String,
    mirrored: bool,
    policy: PodPolicy,
}

impl PolicySet {
    /// podmapd: writes the policies in force to `dir`/[`ACTIVE_FILE`], through a temporary file
    /// and a rename, so a plugin never reads half of it.
    pub fn publish(&self, dir: &Path) -> std::io::Result<()> {
        let published = Published {
            policies: self
                .policies
                .iter()
                .map(|l| PublishedPolicy {
                    source: l.source.clone(),
                    mirrored: l.mirrored,
                    policy: l.policy.clone(),
                })
                .collect(),
        };
        let text = serde_json::to_vec(&published).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!("{ACTIVE_FILE}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(ACTIVE_FILE))
    }

    /// The set podmapd published in `dir`: `None` when there is none.
    pub fn load_published(dir: &Path) -> Option<Result<PolicySet, String>> {
        let path = dir.join(ACTIVE_FILE);
        // Every policy file may be at its limit; the snapshot holds them all, as JSON.
        let text = match read_bounded(&path, 16 * MAX_POLICY_FILE_BYTES) {
            Ok(t) => t,
            Err(ReadError::Gone) => return None,
            Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
        };
        Some(
            serde_json::from_slice::<Published>(&text)
                .map(|p| PolicySet {
                    policies: p
                        .policies
                        .into_iter()
                        .map(|p| Loaded {
                            policy: p.policy,
                            source: p.source,
                            mirrored: p.mirrored,
                        })
                        .collect(),
                    errors: Vec::new(),
                })
                .map_err(|e| format!("{}: {e}", path.display())),
        )
    }
}

/// Where a plugin's policies came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// podmapd's published set.
    Published,
    /// The directory itself: nothing published (or it could not be read, with why).
    Directory { why: Option<String> },
}

/// A runtime plugin's view of the policies: podmapd's published set when there is one, else
/// the directory read as podmapd reads it.
#[derive(Debug)]
pub struct PluginPolicies {
    dir: PolicyDir,
    published: Option<(Option<SystemTime>, u64, PolicySet)>,
    origin: Origin,
}

impl PluginPolicies {
    pub fn new(dir: &Path) -> Self {
        PluginPolicies {
            dir: PolicyDir::new(dir),
            published: None,
            origin: Origin::Directory { why: None },
        }
    }

    /// Looks again (cheap when nothing changed); returns whether the set or its errors changed.
    pub fn refresh(&mut self) -> bool {
        let path: PathBuf = self.dir.dir().join(ACTIVE_FILE);
        if let Ok(md) = std::fs::metadata(&path) {
            let stamp = (md.modified().ok(), md.len());
            if self
                .published
                .as_ref()
                .is_some_and(|(t, n, _)| (*t, *n) == stamp)
            {
                return false;
            }
            match PolicySet::load_published(self.dir.dir()) {
                Some(Ok(set)) => {
                    self.published = Some((stamp.0, stamp.1, set));
                    self.origin = Origin::Published;
                    return true;
                }
                Some(Err(why)) => self.origin = Origin::Directory { why: Some(why) },
                // Removed since the look: the directory's own.
                None => self.origin = Origin::Directory { why: None },
            }
        } else {
            self.origin = Origin::Directory { why: None };
        }
        let had_published = self.published.take().is_some();
        self.dir.refresh() || had_published
    }

    pub fn set(&self) -> &PolicySet {
        match &self.published {
            Some((_, _, set)) => set,
            None => self.dir.set(),
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Failed reads of the directory or its files (when it decides), since this started.
    pub fn read_failures(&self) -> u64 {
        self.dir.read_failures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{policy_id, Target};

    fn doc(name: &str, ns: &str) -> String {
        format!(
            "apiVersion: podmap.dev/v1alpha1\nkind: PodPolicy\nmetadata: {{name: {name}}}\n\
             spec:\n  namespaces: [{ns}]\n  rules:\n  - exec: {{paths: [/bin/sh]}}\n    action: kill\n"
        )
    }

    fn selects(set: &PolicySet, ns: &str) -> Vec<u32> {
        let none = Default::default();
        set.selecting(&Target::container(ns, &none, "app", false, None))
    }

    #[test]
    fn a_plugin_decides_from_the_published_set_while_a_file_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), doc("no-sh", "prod")).unwrap();
        // podmapd's view: loads the file, then keeps its last valid version once it breaks.
        let mut daemon = PolicyDir::new(dir.path());
        assert!(daemon.refresh());
        daemon.set().publish(dir.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.path().join("a.yaml"), "kind: [").unwrap();
        assert!(daemon.refresh());
        assert_eq!(selects(daemon.set(), "prod"), [policy_id("no-sh")]);

        // A plugin started now (a hook: a new process per container) decides as podmapd does;
        // reading the directory alone, it would not select the container at all.
        let mut plugin = PluginPolicies::new(dir.path());
        assert!(plugin.refresh());
        assert_eq!(plugin.origin(), &Origin::Published);
        assert_eq!(selects(plugin.set(), "prod"), [policy_id("no-sh")]);
        assert!(selects(&PolicySet::load_dir(dir.path()), "prod").is_empty());
        // Nothing changed: no reload.
        assert!(!plugin.refresh());
    }

    #[test]
    fn without_a_published_set_or_with_a_damaged_one_the_directory_decides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), doc("no-sh", "prod")).unwrap();
        let mut plugin = PluginPolicies::new(dir.path());
        assert!(plugin.refresh());
        assert_eq!(plugin.origin(), &Origin::Directory { why: None });
        assert_eq!(selects(plugin.set(), "prod"), [policy_id("no-sh")]);

        std::fs::write(dir.path().join(ACTIVE_FILE), b"{not json").unwrap();
        plugin.refresh();
        assert!(
            matches!(plugin.origin(), Origin::Directory { why: Some(w) } if w.contains(ACTIVE_FILE)),
            "{:?}",
            plugin.origin()
        );
        assert_eq!(selects(plugin.set(), "prod"), [policy_id("no-sh")]);
    }

    #[test]
    fn publishing_is_no_change_of_the_directory() {
        // podmapd reloads when the directory's policy files change; its own published file is
        // not one, or it would reload (and publish) forever.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), doc("no-sh", "prod")).unwrap();
        let mut daemon = PolicyDir::new(dir.path());
        assert!(daemon.refresh());
        daemon.set().publish(dir.path()).unwrap();
        assert!(!daemon.refresh());
    }
}
