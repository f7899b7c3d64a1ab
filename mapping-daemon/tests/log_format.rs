//! `--log-format` (PODMAP_LOG_FORMAT) on podmapd and `podmap export`, through the real
//! binaries: json is one object per line with a level and a message; text to a pipe carries no
//! colour. podmapd logs and stops at once on pins that are not on bpffs; export logs while it
//! retries a socket nobody serves.

use std::process::Command;

use podmap_node::log_lines::{assert_json_lines, assert_plain_text, stderr_lines};

const PODMAPD: &str = env!("CARGO_BIN_EXE_podmapd");
const PODMAP: &str = env!("CARGO_BIN_EXE_podmap");

fn podmapd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(PODMAPD);
    cmd.env_remove("PODMAP_LOG_FORMAT")
        .env("PODMAP_LOG", "info")
        .arg("--bpffs-dir")
        .arg(dir.join("not-bpffs"))
        .arg("--socket")
        .arg(dir.join("podmapd.sock"));
    cmd
}

fn export(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(PODMAP);
    cmd.env_remove("PODMAP_LOG_FORMAT")
        .env("PODMAP_LOG", "info")
        .arg("export")
        .arg("--stdout")
        .arg("--socket")
        .arg(dir.join("nobody.sock"));
    cmd
}

#[test]
fn podmapd_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = podmapd(dir.path());
    cmd.args(["--log-format", "json"]);
    let lines = stderr_lines(cmd, usize::MAX);
    assert_json_lines(&lines);
    assert!(lines.iter().any(|l| l.contains("\"ERROR\"")), "{lines:?}");
}

#[test]
fn podmapd_takes_the_format_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = podmapd(dir.path());
    cmd.env("PODMAP_LOG_FORMAT", "json");
    assert_json_lines(&stderr_lines(cmd, usize::MAX));
}

#[test]
fn podmapd_text_to_a_pipe_is_not_coloured() {
    let dir = tempfile::tempdir().unwrap();
    let lines = stderr_lines(podmapd(dir.path()), usize::MAX);
    assert_plain_text(&lines);
    assert!(lines.iter().any(|l| l.contains("ERROR")), "{lines:?}");
}

#[test]
fn export_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = export(dir.path());
    cmd.args(["--log-format", "json"]);
    let lines = stderr_lines(cmd, 2);
    assert_json_lines(&lines);
    assert!(lines.iter().any(|l| l.contains("\"WARN\"")), "{lines:?}");
}

#[test]
fn export_text_to_a_pipe_is_not_coloured() {
    let dir = tempfile::tempdir().unwrap();
    assert_plain_text(&stderr_lines(export(dir.path()), 2));
}
