//! Compact event lines: one readable line per event, for people at a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

use podmap_proto::{Attribution, Event, ProcessFlag};

use super::text::{escape, shell_word};

/// One readable line per event (no newline), e.g.
/// `12:00:00.123 exec   prod/web-7d9c/nginx  /bin/sh -c "echo hi"`. Times are UTC, as in the JSON.
pub fn compact_line(ev: &Event) -> String {
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "{} {:<6} {}  {}",
        clock(&ev.time),
        ev.kind.as_str(),
        whereabouts(ev),
        command(&ev.process.binary, &ev.process.args)
    );
    for flag in &ev.process.flags {
        line.push_str(match flag {
            ProcessFlag::ArgsTruncated => " [args truncated]",
            ProcessFlag::ProcfsScan => " [procfs scan]",
            ProcessFlag::PathUnreadable => " [path unreadable]",
            ProcessFlag::CwdTruncated => " [cwd truncated]",
            ProcessFlag::RuntimeInit => " [runtime init]",
            // A flag of a newer podmapd this client does not know.
            ProcessFlag::Other => " [other flag]",
        });
    }
    // What came in through `kubectl exec` (or any runtime exec) is what people look for.
    if ev.process.entered_via_exec == Some(true) {
        line.push_str(" [via exec]");
    }
    if let Some(exit) = &ev.exit {
        match (&exit.code, &exit.signal) {
            (_, Some(sig)) => {
                let _ = write!(line, " signal={}", escape(sig));
            }
            (Some(code), None) => {
                let _ = write!(line, " exit={code}");
            }
            (None, None) => line.push_str(" exit=?"),
        }
    }
    if let Some(p) = &ev.policy {
        let _ = write!(
            line,
            " policy={} rule={} action={} mode={}",
            escape(&p.name),
            escape(&p.rule),
            escape(&p.action),
            escape(&p.mode)
        );
        // An exec rule matches the binary shown already; an open rule's path is news.
        if *p.path != *ev.process.binary {
            let _ = write!(line, " path={}", shell_word(&p.path));
        }
    }
    line
}

/// `HH:MM:SS.mmm` of an RFC 3339 time; the raw text when it has another shape.
fn clock(time: &str) -> Cow<'_, str> {
    let Some((_, rest)) = time.split_once('T') else {
        return Cow::Borrowed(time);
    };
    let hms = rest.get(..8).filter(|s| {
        s.bytes().enumerate().all(|(i, b)| {
            if i == 2 || i == 5 {
                b == b':'
            } else {
                b.is_ascii_digit()
            }
        })
    });
    let Some(hms) = hms else {
        return Cow::Borrowed(time);
    };
    let frac: String = rest[8..]
        .strip_prefix('.')
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .take(3)
        .collect();
    Cow::Owned(format!("{hms}.{frac:0<3}"))
}

fn whereabouts(ev: &Event) -> String {
    match ev.attribution {
        Attribution::Host => "host".to_string(),
        Attribution::Unknown => format!("unknown({})", ev.process.cgroup_id),
        // An attribution of a newer podmapd this client does not know.
        Attribution::Other => format!("other({})", ev.process.cgroup_id),
        Attribution::Container => match (ev.pod.as_deref(), ev.container.as_deref()) {
            (Some(pod), Some(c)) => format!(
                "{}/{}/{}",
                escape(&pod.namespace),
                escape(&pod.name),
                escape(&c.name)
            ),
            // A container outside Kubernetes (e.g. podman): its name is all there is.
            (None, Some(c)) => escape(&c.name).into_owned(),
            (Some(pod), None) => format!("{}/{}", escape(&pod.namespace), escape(&pod.name)),
            (None, None) => format!("container({})", ev.process.cgroup_id),
        },
    }
}

fn command(binary: &str, args: &[String]) -> String {
    let mut cmd = shell_word(binary).into_owned();
    for arg in args {
        cmd.push(' ');
        cmd.push_str(&shell_word(arg));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_entered_through_the_runtimes_exec_is_marked() {
        let mut ev: Event = serde_json::from_value(serde_json::json!({
            "schema_version": 1,
            "type": "exec", "time": "2026-11-25T12:00:00Z", "node": "n",
            "process": {"pid": 9, "tid": 9, "ppid": 1, "uid": 0, "binary": "/bin/sh",
                "args": [], "cwd": "/", "exec_id": "e", "parent_exec_id": null,
                "start_time": "", "cgroup_id": 1, "entered_via_exec": true},
            "container": null, "pod": null, "attribution": "host"
        }))
        .unwrap();
        assert!(
            compact_line(&ev).ends_with(" [via exec]"),
            "{}",
            compact_line(&ev)
        );
        ev.process.entered_via_exec = Some(false);
        assert!(!compact_line(&ev).contains("via exec"));
        ev.process.entered_via_exec = None;
        assert!(!compact_line(&ev).contains("via exec"));
    }

    #[test]
    fn clock_takes_hms_and_milliseconds() {
        assert_eq!(clock("2026-11-25T12:00:00.123456789Z"), "12:00:00.123");
        assert_eq!(clock("2026-11-25T12:00:00.1Z"), "12:00:00.100");
        assert_eq!(clock("2026-11-25T12:00:00Z"), "12:00:00.000");
        assert_eq!(clock("yesterday"), "yesterday");
        assert_eq!(clock("2026-11-25Tnoon"), "2026-11-25Tnoon");
    }
}
