//! The marks of a policy file podmapd mirrored from a PodPolicy resource (docs/decisions.md #10):
//! its name and its first line. A hand-written file carries neither, so podmapd never rewrites or
//! removes one, and it wins any conflict with a mirrored one.

use std::path::Path;

use crate::file::{read_bounded, MAX_POLICY_FILE_BYTES};

/// Files podmapd writes for the cluster's PodPolicy resources (docs/decisions.md #10) are named
/// `podpolicy.<resource name>.yaml`...
pub const MIRRORED_PREFIX: &str = "podpolicy.";
/// ...and start with this line: podmapd only ever rewrites or removes files that carry it, so a
/// hand-written file that happens to share the prefix is left alone.
pub const MIRRORED_HEADER: &str =
    "# Mirrored by podmapd from a PodPolicy resource: edit the resource, not this file.";

/// Whether a file of the policy directory is one podmapd mirrored: its name and first line say so.
/// Read within the policy files' bounds: a FIFO or a huge file there is no mirrored file, and
/// must not block or fill podmapd.
pub fn is_mirrored(path: &Path) -> bool {
    named_as_mirrored(path)
        && read_bounded(path, MAX_POLICY_FILE_BYTES)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .is_some_and(|text| text_is_mirrored(path, &text))
}

/// The same, for a file already read.
pub fn text_is_mirrored(path: &Path, text: &str) -> bool {
    named_as_mirrored(path) && text.lines().next() == Some(MIRRORED_HEADER)
}

fn named_as_mirrored(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|f| f.to_string_lossy().starts_with(MIRRORED_PREFIX))
}
