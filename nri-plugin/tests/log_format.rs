//! `--log-format` (PODMAP_LOG_FORMAT) on podmap-nri, through the real binary: started
//! external against a socket nobody serves and pins that are not on bpffs, it logs at once
//! while it retries.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
