//! A policy directory kept current: reloaded when its listing changes, keeping the last valid
//! policies of a file that stops loading and the whole last set when the directory cannot be
//! read; and the marks of files podmapd mirrored from PodPolicy resources.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::compile::Limits;
use crate::resolve::{dir_error, policy_files, Candidates, Loaded, PolicySet};
use crate::validate::PolicyError;

/// A policy directory kept current: reloaded when its listing (names, sizes, times) changes.
/// A file that stops loading keeps its last valid policies active; only a file that is gone
/// takes its policies with it (the refusal is still reported). A directory that cannot be read
/// (anything but "does not exist") keeps the whole last good set, and is reported and counted.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    fingerprint: Option<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>>,
    set: PolicySet,
    reloads: u64,
    read_failures: u64,
    /// The current failure to read the directory, also among `set.errors`.
    dir_error: Option<PolicyError>,
}

impl PolicyDir {
    pub fn new(dir: &Path) -> Self {
        PolicyDir {
            dir: dir.to_owned(),
            fingerprint: None,
            set: PolicySet::default(),
            reloads: 0,
            read_failures: 0,
            dir_error: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set(&self) -> &PolicySet {
        &self.set
    }

    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// Failed reads of the directory or of one of its files, since this started.
    pub fn read_failures(&self) -> u64 {
        self.read_failures
    }

    #[allow(clippy::type_complexity)]
    fn listing(&self) -> std::io::Result<Vec<(PathBuf, Option<std::time::SystemTime>, u64)>> {
        // Only what `Candidates::read_dir` reads: the file podmapd publishes here must not look
        // like a change of the directory (it would reload, and publish, forever).
        Ok(policy_files(&self.dir)?
            .into_iter()
            // A file removed since the listing has no metadata: it is gone. Not followed, as
            // the directory entry's own metadata never was.
            .filter_map(|path| {
                let md = std::fs::symlink_metadata(&path).ok()?;
                Some((path, md.modified().ok(), md.len()))
            })
            .collect())
    }

    /// Reloads if the directory changed since the last look (or was never read); returns
    /// whether the set or its errors changed.
    pub fn refresh(&mut self) -> bool {
        let fp = match self.listing() {
            Ok(fp) => fp,
            Err(e) => return self.unreadable(dir_error(&self.dir, &e)),
        };
        if self.fingerprint.as_ref() == Some(&fp) {
            return false;
        }
        let mut next = match Candidates::read_dir(&self.dir) {
            Ok(c) => c,
            Err(e) => return self.unreadable(e),
        };
        // A file that could not be read is read again at the next look, even if the listing
        // stays the same.
        if next.unreadable {
            self.read_failures += 1;
            self.fingerprint = None;
        } else {
            self.fingerprint = Some(fp);
        }
        let carried: Vec<Loaded> = self
            .set
            .policies
            .iter()
            .filter(|l| next.failed_files.contains(&l.source) && Path::new(&l.source).exists())
            .filter(|l| {
                next.loaded
                    .iter()
                    .all(|n| n.policy.name() != l.policy.name())
            })
            .cloned()
            .collect();
        next.loaded.extend(carried);
        let active: HashSet<(String, String)> = self
            .set
            .policies
            .iter()
            .map(|l| (l.policy.name().to_string(), l.source.clone()))
            .collect();
        self.set = next.resolve(&active, Limits::KERNEL);
        self.dir_error = None;
        self.reloads += 1;
        true
    }

    /// Whether the next look must read the directory whatever its listing: never read yet, or
    /// the last look could not read it or one of its files (no change need be seen for that to
    /// end: a file made readable, descriptors available again).
    pub fn needs_look(&self) -> bool {
        self.fingerprint.is_none()
    }

    /// The directory could not be read: the last good set stays, with the error among its own.
    fn unreadable(&mut self, e: PolicyError) -> bool {
        self.read_failures += 1;
        // Read again as soon as it can be, whatever the listing then looks like.
        self.fingerprint = None;
        let e = PolicyError {
            reason: format!(
                "{}; the {} policies last loaded stay active",
                e.reason,
                self.set.policies.len()
            ),
            ..e
        };
        if self.dir_error.as_ref() == Some(&e) {
            return false;
        }
        if let Some(old) = self.dir_error.take() {
            self.set.errors.retain(|x| *x != old);
        }
        self.set.errors.push(e.clone());
        self.dir_error = Some(e);
        true
    }
}
