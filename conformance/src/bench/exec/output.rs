//! Tracer output: one reader thread per stream, telling the storm's execs from everything else and
//! counting them as they arrive.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::STORM_COMM;

/// How a tracer's lines read, and how each tells a storm exec from the host's other execs.
#[derive(Debug, Clone, Copy)]
pub(super) enum LineFormat {
    /// `podmap events -o json`: an exec of the storm's binary in the storm's cgroup.
    Podmap,
    /// `<pid> <filename>`: the storm's private path.
    Bpftrace,
    /// `PCOMM PID PPID RET ARGS` (after a header line): the storm's name, and the storm driver
    /// as parent (ARGS is read from user memory at execve entry, which can come back empty).
    Execsnoop,
    /// stderr: loss reports and diagnostics only.
    Diagnostics,
}

/// What identifies the storm's execs in a tracer's output.
#[derive(Debug, Default)]
pub(super) struct StormId {
    pub(super) cgroup_id: u64,
    pub(super) binary: String,
    /// The storm driver's pid, set before it starts (0 until then).
    pub(super) parent_pid: AtomicU32,
}

/// One event line, as far as the bench cares.
pub(super) struct EventLine {
    pub(super) pid: u32,
    pub(super) storm_exec: bool,
    /// Kernel timestamp, unix ns (podmapd only).
    pub(super) time_ns: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct PodmapEvent<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) time: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) process: PodmapProcess<'a>,
}

#[derive(Deserialize)]
pub(super) struct PodmapProcess<'a> {
    pub(super) pid: u32,
    #[serde(borrow)]
    pub(super) binary: Cow<'a, str>,
    pub(super) cgroup_id: u64,
}

impl LineFormat {
    pub(super) fn parse(self, line: &[u8], storm: &StormId) -> Option<EventLine> {
        match self {
            LineFormat::Podmap => {
                let ev: PodmapEvent = serde_json::from_slice(line).ok()?;
                Some(EventLine {
                    pid: ev.process.pid,
                    storm_exec: ev.kind == "exec"
                        && ev.process.cgroup_id == storm.cgroup_id
                        && ev.process.binary == storm.binary,
                    time_ns: parse_rfc3339_ns(&ev.time),
                })
            }
            LineFormat::Bpftrace => {
                let text = String::from_utf8_lossy(line);
                let (pid, file) = text.trim_end().split_once(' ')?;
                Some(EventLine {
                    pid: pid.parse().ok()?,
                    storm_exec: file == storm.binary,
                    time_ns: None,
                })
            }
            LineFormat::Execsnoop => {
                let text = String::from_utf8_lossy(line);
                let mut cols = text.split_whitespace();
                let comm = cols.next()?;
                let pid = cols.next()?.parse().ok()?;
                let ppid: u32 = cols.next()?.parse().ok()?;
                let parent = storm.parent_pid.load(Ordering::Relaxed);
                Some(EventLine {
                    pid,
                    storm_exec: comm == STORM_COMM && parent != 0 && ppid == parent,
                    time_ns: None,
                })
            }
            LineFormat::Diagnostics => None,
        }
    }
}

/// What the reader threads of one tracer have seen so far.
#[derive(Default)]
pub(super) struct OutputStats {
    pub(super) storm: StormId,
    /// Event lines of any process.
    pub(super) events: AtomicU64,
    /// Exec events of the storm.
    pub(super) storm_execs: AtomicU64,
    /// Events the tracer itself reported lost ("Lost N events").
    pub(super) lost: AtomicU64,
    /// Kernel-to-bench latency of each storm exec, ns (podmapd only).
    pub(super) latencies_ns: Mutex<Vec<i64>>,
    /// pids of recent events, kept only while the bench waits for its canary exec.
    pub(super) watch_pids: AtomicBool,
    pub(super) seen_pids: Mutex<HashSet<u32>>,
    /// Last diagnostic lines, for error messages.
    pub(super) tail: Mutex<VecDeque<String>>,
}

impl OutputStats {
    pub(super) fn new(storm: StormId) -> Arc<Self> {
        Arc::new(OutputStats {
            storm,
            ..OutputStats::default()
        })
    }

    pub(super) fn take_line(&self, format: LineFormat, line: &[u8], received_ns: i64) {
        match format.parse(line, &self.storm) {
            Some(ev) => self.take_event(ev, received_ns),
            None => self.take_diagnostic(line),
        }
    }

    pub(super) fn take_event(&self, ev: EventLine, received_ns: i64) {
        self.events.fetch_add(1, Ordering::Relaxed);
        if ev.storm_exec {
            self.storm_execs.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = ev.time_ns {
                lock(&self.latencies_ns).push(received_ns - t);
            }
        }
        if self.watch_pids.load(Ordering::Relaxed) {
            lock(&self.seen_pids).insert(ev.pid);
        }
    }

    pub(super) fn take_diagnostic(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        if let Some(n) = lost_count(&text) {
            self.lost.fetch_add(n, Ordering::Relaxed);
        }
        if text.is_empty() {
            return;
        }
        let mut tail = lock(&self.tail);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(text);
    }

    pub(super) fn tail_text(&self) -> String {
        lock(&self.tail)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// "Lost 12 events" (bpftrace) or "Lost 12 events on CPU #0!" (libbpf-tools).
pub(super) fn lost_count(line: &str) -> Option<u64> {
    let rest = &line[line.find("Lost ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub(super) fn spawn_reader(
    stream: impl Read + Send + 'static,
    format: LineFormat,
    stats: Arc<OutputStats>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 * 1024, stream);
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => stats.take_line(format, &line, unix_now_ns()),
            }
        }
    })
}

pub(super) fn unix_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The event time in Unix ns (podmapd writes UTC with nanoseconds).
pub(super) fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    podmap_proto::time::parse_rfc3339(s).and_then(|ns| i64::try_from(ns).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storm() -> StormId {
        StormId {
            cgroup_id: 42,
            binary: "/tmp/podmap-bench-storm-x/true".into(),
            parent_pid: AtomicU32::new(21924),
        }
    }

    #[test]
    fn podmap_lines_match_by_cgroup_and_binary() {
        let storm = storm();
        let line = r#"{"type":"exec","time":"1970-01-01T00:00:01Z","node":"n","process":{"pid":7,"binary":"/tmp/podmap-bench-storm-x/true","cgroup_id":42,"args":[]},"attribution":"host"}"#;
        let ev = LineFormat::Podmap.parse(line.as_bytes(), &storm).unwrap();
        assert!(ev.storm_exec);
        assert_eq!((ev.pid, ev.time_ns), (7, Some(1_000_000_000)));
        for other in [
            line.replace("42", "43"),
            line.replace("/tmp/podmap-bench-storm-x/true", "/bin/true"),
            line.replace("\"exec\"", "\"exit\""),
        ] {
            let ev = LineFormat::Podmap.parse(other.as_bytes(), &storm).unwrap();
            assert!(!ev.storm_exec, "{other}");
        }
        assert!(LineFormat::Podmap
            .parse(b"{\"error\":\"x\"}", &storm)
            .is_none());
    }

    #[test]
    fn peer_lines_match_by_path_or_parent() {
        let storm = storm();
        let ev = LineFormat::Bpftrace
            .parse(b"22202 /tmp/podmap-bench-storm-x/true\n", &storm)
            .unwrap();
        assert!(ev.storm_exec && ev.pid == 22202);
        let ev = LineFormat::Bpftrace
            .parse(b"22203 /bin/true\n", &storm)
            .unwrap();
        assert!(!ev.storm_exec);
        assert!(LineFormat::Bpftrace
            .parse(b"Attaching 1 probe...\n", &storm)
            .is_none());

        let ev = LineFormat::Execsnoop
            .parse(b"true             21931  21924    0 \n", &storm)
            .unwrap();
        assert!(ev.storm_exec && ev.pid == 21931);
        let ev = LineFormat::Execsnoop
            .parse(b"true             21932  1    0 /bin/true\n", &storm)
            .unwrap();
        assert!(!ev.storm_exec);
        assert!(LineFormat::Execsnoop
            .parse(b"PCOMM            PID    PPID   RET ARGS\n", &storm)
            .is_none());
    }

    #[test]
    fn loss_reports() {
        assert_eq!(lost_count("Lost 12 events"), Some(12));
        assert_eq!(lost_count("Lost 3 events on CPU #1!"), Some(3));
        assert_eq!(lost_count("Attaching 1 probe..."), None);
    }
}
