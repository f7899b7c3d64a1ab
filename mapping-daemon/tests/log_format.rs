//! `--log-format` (PODMAP_LOG_FORMAT) on podmapd and `podmap export`, through the real
//! binaries: json is one object per line with a level and a message; text to a pipe carries no
//! colour. podmapd logs and stops at once on pins that are not on bpffs; export logs while it
//! retries a socket nobody serves.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// Runs `cmd` with stderr piped (not a terminal), reads stderr until `want` lines have come or
/// five seconds passed, then stops the process (SIGTERM, then waits) and returns every line.
fn stderr_lines(mut cmd: Command, want: usize) -> Vec<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lines = Vec::new();
    while lines.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    if child.try_wait().unwrap().is_none() {
        // SAFETY: kill(2) on the pid of the child started above, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

/// Every line is one JSON object with a level and a message (tracing's json formatter puts the
/// message under `fields`).
fn assert_json_lines(lines: &[String]) {
    assert!(!lines.is_empty(), "nothing was logged");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(v["level"].is_string(), "no level: {line}");
        let msg = v["fields"]["message"].as_str().or(v["message"].as_str());
        assert!(msg.is_some_and(|m| !m.is_empty()), "no message: {line}");
    }
}

/// Text to a pipe: no ANSI escape at all.
fn assert_plain_text(lines: &[String]) {
    assert!(!lines.is_empty(), "nothing was logged");
    for line in lines {
        assert!(!line.contains('\x1b'), "an escape sequence in: {line:?}");
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "JSON: {line}"
        );
    }
}
