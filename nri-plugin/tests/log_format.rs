//! `--log-format` (PODMAP_LOG_FORMAT) on podmap-nri, through the real binary: started
//! external against a socket nobody serves and pins that are not on bpffs, it logs at once
//! while it retries.

use std::process::Command;

use podmap_node::log_lines::{assert_json_lines, assert_plain_text, stderr_lines};

const BIN: &str = env!("CARGO_BIN_EXE_podmap-nri");

fn nri(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("PODMAP_LOG_FORMAT")
        .env_remove("NRI_PLUGIN_SOCKET")
        .env("PODMAP_LOG", "info")
        .arg("--nri-socket")
        .arg(dir.join("nri.sock"))
        .arg("--bpffs-dir")
        .arg(dir.join("not-bpffs"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    cmd
}

#[test]
fn logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = nri(dir.path());
    cmd.args(["--log-format", "json"]);
    let lines = stderr_lines(cmd, 3);
    assert_json_lines(&lines);
    assert!(lines.iter().any(|l| l.contains("\"ERROR\"")), "{lines:?}");
}

#[test]
fn takes_the_format_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = nri(dir.path());
    cmd.env("PODMAP_LOG_FORMAT", "json");
    assert_json_lines(&stderr_lines(cmd, 3));
}

#[test]
fn text_to_a_pipe_is_not_coloured() {
    let dir = tempfile::tempdir().unwrap();
    assert_plain_text(&stderr_lines(nri(dir.path()), 3));
}
