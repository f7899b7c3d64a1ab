//! Local OCI images: no registry is reachable here, so the suites write an OCI image layout tar
//! themselves and `ctr images import` it. One uncompressed layer holds busybox-static and its
//! applet symlinks; two images share it:
//! - the sandbox ("pause") image, whose only process traps TERM so StopPodSandbox is quick;
//! - the test image, whose containers get their command from each test.
//!
//! The tar is built byte for byte deterministic (fixed mtimes, sorted entries), so every run
//! imports the same digests.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const PAUSE_IMAGE: &str = "podmap.test/pause:1";
pub const TEST_IMAGE: &str = "podmap.test/busybox:1";

/// Where busybox-static installs its binary (scripts/setup.sh installs the package).
const BUSYBOX: &str = "/bin/busybox";

/// PID 1 of a container must trap TERM, or StopContainer waits out its whole timeout (the
/// kernel drops a signal to a pid namespace's init that has no handler for it).
pub const TRAP_TERM: &str = "trap 'exit 0' TERM INT";

/// Waits for TERM and exits at once. `sleep` runs by absolute path so it is a real exec; the pid
/// namespace's end takes it down with PID 1.
pub const WAIT_FOR_TERM: &str = "trap 'exit 0' TERM INT; /bin/sleep 2147483647 & wait";

/// What follows a script in a container that should stay up until stopped.
pub const THEN_WAIT: &str = "/bin/sleep 2147483647 & wait";

const ENV_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes the OCI layout tar with both images to `dest`.
pub fn write_layout(dest: &Path) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX} (install busybox-static: scripts/setup.sh does)")
    })?;
    let applets = applets()?;
    let layer = rootfs_layer(&busybox, &applets);
    let layer_desc = Blob::new(layer, "application/vnd.oci.image.layer.v1.tar");

    let mut blobs = vec![];
    let mut manifests = vec![];
    for (name, entrypoint, cmd) in [
        (
            PAUSE_IMAGE,
            json!(["/bin/sh", "-c", WAIT_FOR_TERM]),
            json!(null),
        ),
        (
            TEST_IMAGE,
            json!(null),
            json!(["/bin/sh", "-c", WAIT_FOR_TERM]),
        ),
    ] {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [ENV_PATH], "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc.digest()]},
        });
        let config = Blob::new(
            serde_json::to_vec(&config)?,
            "application/vnd.oci.image.config.v1+json",
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(),
            "layers": [layer_desc.descriptor()],
        });
        let manifest = Blob::new(
            serde_json::to_vec(&manifest)?,
            "application/vnd.oci.image.manifest.v1+json",
        );
        let mut desc = manifest.descriptor();
        desc["platform"] = json!({"architecture": "amd64", "os": "linux"});
        desc["annotations"] = json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest"),
        });
        manifests.push(desc);
        blobs.push(config);
        blobs.push(manifest);
    }
    blobs.push(layer_desc);

    let mut tar = Tar::default();
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    tar.file("index.json", &serde_json::to_vec(&index)?, 0o644);
    tar.dir("blobs", 0o755);
    tar.dir("blobs/sha256", 0o755);
    for b in &blobs {
        tar.file(&format!("blobs/sha256/{}", b.hex), &b.data, 0o644);
    }
    std::fs::write(dest, tar.finish()).with_context(|| format!("writing {}", dest.display()))
}

/// Imports the layout into containerd's `k8s.io` namespace (the one CRI uses), unpacked for
/// the snapshotter CRI runs containers from.
pub fn import(ctr: &Path, socket: &Path, layout: &Path, snapshotter: &str) -> Result<()> {
    // ctr rejects a relative socket path.
    let socket = std::path::absolute(socket)?;
    let out = Command::new(ctr)
        .arg("-a")
        .arg(&socket)
        .args([
            "-n",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            snapshotter,
        ])
        .arg(layout)
        .output()
        .with_context(|| format!("running {}", ctr.display()))?;
    if !out.status.success() {
        bail!(
            "ctr images import failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// busybox's applets with their install paths (`bin/sh`, `usr/bin/awk`, ...).
fn applets() -> Result<Vec<String>> {
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list-full"))?;
    if !out.status.success() {
        bail!("{BUSYBOX} --list-full failed: {}", out.status);
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// The root filesystem: the usual directories, busybox, its applets as symlinks, and a
/// minimal passwd/group so user lookups of root succeed.
fn rootfs_layer(busybox: &[u8], applets: &[String]) -> Vec<u8> {
    let mut tar = Tar::default();
    for d in [
        "bin", "dev", "etc", "proc", "root", "run", "sbin", "sys", "usr", "usr/bin", "usr/sbin",
        "var",
    ] {
        tar.dir(d, 0o755);
    }
    tar.dir("tmp", 0o1777);
    tar.file("bin/busybox", busybox, 0o755);
    tar.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    tar.file("etc/group", b"root:x:0:\n", 0o644);
    for a in applets {
        tar.symlink(a, "/bin/busybox");
    }
    tar.finish()
}

/// A content-addressed blob of the layout.
struct Blob {
    data: Vec<u8>,
    hex: String,
    media_type: &'static str,
}

impl Blob {
    fn new(data: Vec<u8>, media_type: &'static str) -> Self {
        let hex = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Blob {
            data,
            hex,
            media_type,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.data.len()})
    }
}

/// A minimal ustar writer: regular files, directories and symlinks, names up to 100 bytes
/// (every name here is shorter), owned by root, mtime fixed for reproducible digests.
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
}

const MTIME: u64 = 1_700_000_000;

impl Tar {
    fn file(&mut self, name: &str, data: &[u8], mode: u32) {
        self.header(name, b'0', mode, data.len() as u64, "");
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn dir(&mut self, name: &str, mode: u32) {
        self.header(&format!("{name}/"), b'5', mode, 0, "");
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, b'2', 0o777, 0, target);
    }

    fn header(&mut self, name: &str, kind: u8, mode: u32, size: u64, link: &str) {
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "tar name too long: {name}"
        );
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], MTIME);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.extend_from_slice(&h);
    }

    fn pad(&mut self) {
        let rem = self.out.len() % 512;
        if rem != 0 {
            self.out.resize(self.out.len() + 512 - rem, 0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// A zero-padded, NUL-terminated octal field.
fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_term_is_the_trap_then_the_wait() {
        assert_eq!(WAIT_FOR_TERM, format!("{TRAP_TERM}; {THEN_WAIT}"));
    }

    #[test]
    fn tar_lists_and_extracts_with_the_system_tar() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tar::default();
        t.dir("a", 0o755);
        t.file("a/f", b"hello", 0o644);
        t.symlink("a/l", "/a/f");
        let path = dir.path().join("t.tar");
        std::fs::write(&path, t.finish()).unwrap();
        let out = Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(dir.path().join("a/f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(dir.path().join("a/l")).unwrap(),
            Path::new("/a/f")
        );
    }
}
