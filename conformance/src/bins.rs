//! Where the workspace's binaries are: `$PODMAP_BIN_DIR`, else the target directory this test
//! binary was built into (`cargo build --workspace --bins` puts them there; scripts/test.sh
//! does that before running the suites).

use std::path::PathBuf;

pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PODMAP_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let mut d = exe.parent().expect("exe dir").to_path_buf();
    if d.ends_with("deps") {
        d.pop();
    }
    d
}

/// The path of a workspace binary; panics with the fix when it was not built.
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, \
         which scripts/test.sh runs), or point PODMAP_BIN_DIR at them",
        p.display()
    );
    p
}
