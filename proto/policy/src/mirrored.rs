//! The marks of a policy file podmapd mirrored from a PodPolicy resource (docs/decisions.md #10):
//! its name and its first line. A hand-written file carries neither, so podmapd never rewrites or
//! removes one, and it wins any conflict with a mirrored one.

use std::path::Path;

/// Files podmapd writes for the cluster's PodPolicy resources (docs/decisions.md #10) are named
/// `podpolicy.<resource name>.yaml`...
pub const MIRRORED_PREFIX: &str = "podpolicy.";
/// ...and start with this line: podmapd only ever rewrites or removes files that carry it, so a
/// hand-written file that happens to share the prefix is left alone.
pub const MIRRORED_HEADER: &str =
    "# Mirrored by podmapd from a PodPolicy resource: edit the resource, not this file.";

/// Whether a file of the policy directory is one podmapd mirrored: its name and first line say so.
pub fn is_mirrored(path: &Path) -> bool {
    use std::io::BufRead;
    named_as_mirrored(path)
        && std::fs::File::open(path)
            .ok()
            .and_then(|f| std::io::BufReader::new(f).lines().next()?.ok())
            .is_some_and(|first| first == MIRRORED_HEADER)
}

/// The same, for a file already read.
pub(crate) fn text_is_mirrored(path: &Path, text: &str) -> bool {
    named_as_mirrored(path) && text.lines().next() == Some(MIRRORED_HEADER)
}

fn named_as_mirrored(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|f| f.to_string_lossy().starts_with(MIRRORED_PREFIX))
}
