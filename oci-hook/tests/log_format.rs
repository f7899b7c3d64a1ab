//! `--log-format` (PODMAP_LOG_FORMAT) on the hook, through the real binary: an OCI state that
//! is not JSON is one logged problem and exit 0. Its log goes to the log file, or to stderr when
//! the file cannot be opened (here: the path is a directory).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_podmap-oci-hook");

/// Runs the hook on a broken state with `log_file` as its log; returns its stderr.
fn run(dir: &Path, log_file: &Path, format: Option<&str>, env_json: bool) -> String {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("PODMAP_LOG_FORMAT")
        .arg("--log-file")
        .arg(log_file)
        .arg("--bpffs-dir")
        .arg(dir.join("not-bpffs"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    if let Some(f) = format {
        cmd.args(["--log-format", f]);
    }
    if env_json {
        cmd.env("PODMAP_LOG_FORMAT", "json");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not an OCI state\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the hook never fails the container");
    String::from_utf8(out.stderr).unwrap()
}

fn assert_json_lines(text: &str) {
    assert!(!text.trim().is_empty(), "nothing was logged");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {line}"
        );
    }
}

#[test]
fn json_to_the_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hook.log");
    let stderr = run(dir.path(), &log, Some("json"), false);
    assert_eq!(stderr, "", "the file takes the lines");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_json_lines(&text);
    assert!(text.contains("not JSON"), "{text}");
}

#[test]
fn json_from_the_environment_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the log file should be: the lines (and why) go to stderr.
    let stderr = run(dir.path(), dir.path(), None, true);
    assert_json_lines(&stderr);
    assert!(stderr.contains("log file"), "{stderr}");
}

#[test]
fn text_to_stderr_is_not_coloured() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = run(dir.path(), dir.path(), Some("text"), false);
    assert!(stderr.contains("ERROR podmap-oci-hook["), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert!(stderr.lines().all(|l| !l.starts_with('{')), "{stderr}");
}
