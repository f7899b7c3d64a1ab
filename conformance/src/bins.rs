//! Where the workspace's binaries are: `$PODMAP_BIN_DIR`, else the target directory this test
//! binary was built into (`cargo build --workspace --bins` puts them there; scripts/test.sh
//! does that before running the suites).
//!
//! A binary found in the target directory must be of the current build: one older than any
//! source it is built from (the `src/`, C programs, build scripts and manifests of the
//! workspace crates it depends on, [`crates_of`]) is refused with the command that rebuilds it,
//! so an end-to-end test never passes or fails against a stale podmapd, podmap-nri or hook. Tests
//! of the crate that owns a binary use cargo's `CARGO_BIN_EXE_<name>` instead, always current.
//! `$PODMAP_BIN_DIR` (installed binaries) is taken as given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PODMAP_BIN_DIR") {
        return PathBuf::from(d);
    }
    target_dir()
}

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let mut d = exe.parent().expect("exe dir").to_path_buf();
    if d.ends_with("deps") {
        d.pop();
    }
    d
}

/// The workspace's root (this crate is one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The path of a workspace binary; panics with the fix when it was not built, or was built
/// before its sources last changed.
pub fn path(name: &str) -> PathBuf {
    checked_path(name).unwrap_or_else(|e| panic!("{e}"))
}

/// [`path`], with the fix as an error instead of a panic: for a program (the demo) that checks
/// its binaries before it starts anything.
pub fn checked_path(name: &str) -> Result<PathBuf, String> {
    let p = dir().join(name);
    if !p.exists() {
        return Err(format!(
            "{} is missing: build the workspace's binaries first (`cargo build --workspace \
             --bins`, which scripts/test.sh runs), or point PODMAP_BIN_DIR at them",
            p.display()
        ));
    }
    if std::env::var_os("PODMAP_BIN_DIR").is_none() {
        type Newest = Option<(SystemTime, PathBuf)>;
        static NEWEST: Mutex<Option<HashMap<String, Newest>>> = Mutex::new(None);
        let newest = NEWEST
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashMap::new)
            .entry(name.to_string())
            .or_insert_with(|| newest_source(&workspace_root(), &crates_of(name)))
            .clone();
        check_fresh(&p, newest.as_ref())?;
    }
    Ok(p)
}

/// The workspace crates (directories, relative to the root) a binary is built from: its own and,
/// transitively, the workspace crates its `[dependencies]` and `[build-dependencies]` name. Read
/// from the manifests, so a new dependency is never missed. Only these: cargo relinks a binary
/// when one of them changed, never for the others. An unknown binary gets every crate.
pub fn crates_of(name: &str) -> Vec<String> {
    let root = workspace_root();
    let paths = workspace_crates(&root);
    let own = match name {
        "podmapd" | "podmap" => "mapping-daemon",
        "podmap-nri" => "nri-plugin",
        "podmap-oci-hook" => "oci-hook",
        "podmap-test-runc" | "podmap-demo" | "podmap-bench" => "conformance",
        _ => {
            let mut all: Vec<String> = paths.into_values().collect();
            all.extend(
                ["conformance", "mapping-daemon", "nri-plugin", "oci-hook"].map(String::from),
            );
            all.sort();
            all.dedup();
            return all;
        }
    };
    let mut found = vec![own.to_string()];
    let mut i = 0;
    while i < found.len() {
        let manifest =
            std::fs::read_to_string(root.join(&found[i]).join("Cargo.toml")).unwrap_or_default();
        for dep in build_dependencies(&manifest) {
            if let Some(dir) = paths.get(&dep) {
                if !found.contains(dir) {
                    found.push(dir.clone());
                }
            }
        }
        i += 1;
    }
    found
}

/// The workspace's path crates by package name, from the root manifest's
/// `[workspace.dependencies]` (`podmap-x = { path = "dir" }`).
fn workspace_crates(root: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once('=')?;
            let rest = rest.trim();
            let path = rest.strip_prefix("{ path = \"")?.split('"').next()?;
            Some((name.trim().to_string(), path.to_string()))
        })
        .collect()
}

/// The package names a manifest's `[dependencies]` and `[build-dependencies]` list (dev
/// dependencies do not go into a binary).
fn build_dependencies(manifest: &str) -> Vec<String> {
    let mut section = "";
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[dependencies]" && section != "[build-dependencies]" {
            continue;
        }
        if let Some(name) = line.split(['.', '=', ' ']).next().filter(|n| !n.is_empty()) {
            out.push(name.to_string());
        }
    }
    out
}

/// Refuses `bin` when it is older than `newest`, the newest source file and its time.
pub fn check_fresh(bin: &Path, newest: Option<&(SystemTime, PathBuf)>) -> Result<(), String> {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    match newest {
        Some((changed, source)) if *changed > built => Err(format!(
            "{} is stale: {} changed after it was built. Rebuild the binaries \
             (`cargo build --workspace --bins`, which scripts/test.sh runs) with the same \
             CARGO_TARGET_DIR and profile as the tests",
            bin.display(),
            source.display()
        )),
        _ => Ok(()),
    }
}

/// The most recently modified file, below `root`, of the crates `crates` (directories relative
/// to it) that goes into a binary: `*.rs`, `*.c`, `*.h`, `*.proto` and the crate's `Cargo.toml`;
/// not in `tests/`, `benches/`, `examples/` (no binary's source) nor in a nested crate (a
/// directory with its own `Cargo.toml`: listed on its own when it is a dependency).
pub fn newest_source(root: &Path, crates: &[impl AsRef<Path>]) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = crates.iter().map(|c| root.join(c)).collect();
    let tops = stack.clone();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                let skip = name.starts_with('.')
                    || name.starts_with("target")
                    || matches!(name.as_ref(), "tests" | "benches" | "examples")
                    || (!tops.contains(&path) && path.join("Cargo.toml").exists());
                if !skip {
                    stack.push(path);
                }
                continue;
            }
            let source = [".rs", ".c", ".h", ".proto"]
                .iter()
                .any(|ext| name.ends_with(ext))
                || name == "Cargo.toml";
            if !source {
                continue;
            }
            if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, path));
                }
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn touch(path: &Path, at: SystemTime) {
        std::fs::write(path, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn a_binary_older_than_a_source_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3600);
        let crates = ["daemon", "lib"];
        for d in [
            "daemon/src",
            "daemon/tests",
            "lib/src",
            "lib/nested/src",
            "other/src",
        ] {
            std::fs::create_dir_all(ws.path().join(d)).unwrap();
        }
        std::fs::create_dir_all(ws.path().join("target/debug")).unwrap();
        touch(&ws.path().join("daemon/Cargo.toml"), old);
        touch(&ws.path().join("daemon/src/main.rs"), old);
        touch(&ws.path().join("lib/src/lib.rs"), old);
        touch(&ws.path().join("lib/nested/Cargo.toml"), old);
        let bin = ws.path().join("target/debug/podmapd");
        touch(&bin, old + Duration::from_secs(60));
        // Built after every source: taken.
        let newest = newest_source(ws.path(), &crates);
        assert_eq!(check_fresh(&bin, newest.as_ref()), Ok(()));
        // A test file, a crate it does not depend on, a nested crate of a dependency, or
        // anything under target changing later does not make it stale.
        touch(&ws.path().join("daemon/tests/e2e.rs"), now);
        touch(&ws.path().join("other/src/lib.rs"), now);
        touch(&ws.path().join("lib/nested/src/lib.rs"), now);
        touch(&ws.path().join("target/debug/build.rs"), now);
        let newest = newest_source(ws.path(), &crates);
        assert_eq!(check_fresh(&bin, newest.as_ref()), Ok(()));
        // A dependency's source changed since: refused, naming the source and the fix.
        touch(&ws.path().join("lib/src/lib.rs"), now);
        let newest = newest_source(ws.path(), &crates);
        let err = check_fresh(&bin, newest.as_ref()).unwrap_err();
        assert!(err.contains("lib/src/lib.rs"), "{err}");
        // Its own source too.
        touch(
            &ws.path().join("daemon/src/main.rs"),
            now + Duration::from_secs(1),
        );
        let newest = newest_source(ws.path(), &crates);
        let err = check_fresh(&bin, newest.as_ref()).unwrap_err();
        assert!(err.contains("is stale"), "{err}");
        assert!(err.contains("daemon/src/main.rs"), "{err}");
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
        // Rebuilt: taken again.
        touch(&bin, now + Duration::from_secs(2));
        assert_eq!(check_fresh(&bin, newest.as_ref()), Ok(()));
    }

    #[test]
    fn the_workspace_root_holds_the_sources() {
        let root = workspace_root();
        assert!(root.join("Cargo.lock").exists(), "{}", root.display());
        for bin in [
            "podmapd",
            "podmap-nri",
            "podmap-oci-hook",
            "podmap-test-runc",
            "x",
        ] {
            let crates = crates_of(bin);
            for c in &crates {
                assert!(root.join(c).join("Cargo.toml").exists(), "{bin}: {c}");
            }
            let (_, newest) = newest_source(&root, &crates).expect("sources");
            assert!(!newest.components().any(|c| c.as_os_str() == "tests"));
        }
    }

    /// The crates come from the manifests, transitively, dev dependencies left out.
    #[test]
    fn a_binarys_crates_are_read_from_the_manifests() {
        let hook = crates_of("podmap-oci-hook");
        for c in [
            "oci-hook",
            "bpf/writer",
            "bpf/node",
            "bpf/cgroup",
            "bpf",
            "proto/policy",
        ] {
            assert!(hook.iter().any(|h| h == c), "{c} missing from {hook:?}");
        }
        for c in [
            "mapping-daemon",
            "pod-cache",
            "nri-plugin/protocol",
            "conformance",
        ] {
            assert!(!hook.iter().any(|h| h == c), "{c} in {hook:?}");
        }
        let daemon = crates_of("podmapd");
        assert!(daemon.iter().any(|c| c == "pod-cache"), "{daemon:?}");
        assert!(
            !daemon.iter().any(|c| c == "conformance"),
            "dev dependency: {daemon:?}"
        );
    }
}
