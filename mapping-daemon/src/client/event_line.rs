//! Compact event lines: one readable line per event, for people at a terminal, coloured on
//! request ([`Colors`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use podmap_proto::{Attribution, Event, EventType, ProcessFlag};

use super::text::{escape, shell_word};

/// ANSI colours for the compact line, or none. Only podmap's own text is coloured, around
/// fields already escaped: nothing a process chooses can emit an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Colors(pub bool);

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const RED_BOLD: &str = "\x1b[1;31m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const YELLOW_BOLD: &str = "\x1b[1;33m";
const BLUE: &str = "\x1b[34m";
const MAGENTA_BOLD: &str = "\x1b[1;35m";
const CYAN: &str = "\x1b[36m";

impl Colors {
    fn paint<'a>(self, style: &str, text: &'a str) -> Cow<'a, str> {
        if self.0 && !style.is_empty() && !text.is_empty() {
            Cow::Owned(format!("{style}{text}{RESET}"))
        } else {
            Cow::Borrowed(text)
        }
    }
}

/// One readable line per event (no newline), e.g.
/// `12:00:00.123 exec   prod/web-7d9c/nginx  /bin/sh -c "echo hi"`. Times are UTC, as in the JSON.
pub fn compact_line(ev: &Event) -> String {
    compact_line_colored(ev, Colors(false))
}

/// [`compact_line`], coloured for a person scanning a fast stream: what happened (the kind),
/// where (namespace/pod/container), and what needs a look (a failed exit, a signal death,
/// `[via exec]`, a policy that denied or killed) stand out; the command does not.
pub fn compact_line_colored(ev: &Event, colors: Colors) -> String {
    let mut line = String::with_capacity(128);
    let kind = ev.kind.as_str();
    let kind_style = match ev.kind {
        EventType::Exec => GREEN,
        EventType::Exit => BLUE,
        EventType::Policy => MAGENTA_BOLD,
        EventType::Other => "",
    };
    let where_style = match ev.attribution {
        Attribution::Container => CYAN,
        // Unmapped or unknown to this client: worth a second look.
        Attribution::Unknown | Attribution::Other => YELLOW,
        Attribution::Host => "",
    };
    let _ = write!(
        line,
        "{} {}{:pad$} {}  {}",
        colors.paint(DIM, &clock(&ev.time)),
        colors.paint(kind_style, kind),
        "",
        colors.paint(where_style, &whereabouts(ev)),
        command(&ev.process.binary, &ev.process.args),
        // The padding of `{:<6}`, outside the colour so the codes do not count as width.
        pad = 6usize.saturating_sub(kind.chars().count()),
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
    // Privilege is what an attacker wants and a reviewer looks for: a container the runtime
    // made privileged (every capability in its bounding set), and a process whose exec left it
    // privileged (root, or CAP_SYS_ADMIN).
    if ev
        .container
        .as_deref()
        .is_some_and(|c| c.privileged == Some(true))
    {
        line.push(' ');
        line.push_str(&colors.paint(RED, "[priv ctr]"));
    }
    if privileged_by_credentials(&ev.process) {
        line.push(' ');
        line.push_str(&colors.paint(RED_BOLD, "[priv]"));
    }
    // What came in through `kubectl exec` (or any runtime exec) is what people look for.
    if ev.process.entered_via_exec == Some(true) {
        line.push(' ');
        line.push_str(&colors.paint(YELLOW_BOLD, "[via exec]"));
    }
    if let Some(exit) = &ev.exit {
        let status = match (&exit.code, &exit.signal) {
            (_, Some(sig)) => Some(format!("signal={}", escape(sig))),
            (Some(0), None) => None,
            (Some(code), None) => Some(format!("exit={code}")),
            (None, None) => Some("exit=?".to_string()),
        };
        match status {
            Some(status) => {
                line.push(' ');
                line.push_str(&colors.paint(RED, &status));
            }
            None => line.push_str(" exit=0"),
        }
    }
    if let Some(p) = &ev.policy {
        let action = format!("action={}", escape(&p.action));
        let action_style = match &*p.action {
            "deny" | "kill" => RED_BOLD,
            "audit" => YELLOW,
            _ => "",
        };
        let _ = write!(
            line,
            " policy={} rule={} {} mode={}",
            escape(&p.name),
            escape(&p.rule),
            colors.paint(action_style, &action),
            escape(&p.mode)
        );
        // An exec rule matches the binary shown already; an open rule's path is news.
        if *p.path != *ev.process.binary {
            let _ = write!(line, " path={}", shell_word(&p.path));
        }
    }
    line
}

/// Whether to mark a process `[priv]`: [`podmap_proto::Process::is_privileged`], judged only
/// when the event carries the credentials the kernel read at the exec. Without them (a podmapd
/// older than credentials, a process whose exec podmapd never saw) the real uid alone would
/// mark nearly every such line, and a mark that means "root, for all we know" helps nobody.
fn privileged_by_credentials(p: &podmap_proto::Process) -> bool {
    p.euid.is_some() && p.is_privileged()
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

    fn event(extra: serde_json::Value) -> Event {
        let mut v = serde_json::json!({
            "schema_version": 1,
            "type": "exec", "time": "2026-11-25T12:00:00Z", "node": "n",
            "process": {"pid": 9, "tid": 9, "ppid": 1, "uid": 0, "binary": "/bin/sh",
                "args": ["-c", "x"], "cwd": "/", "exec_id": "e", "parent_exec_id": null,
                "start_time": "", "cgroup_id": 1},
            "container": {"id": "c", "name": "app", "runtime": "r", "image": "i"},
            "pod": {"uid": "u", "name": "web-1", "namespace": "prod", "labels": {},
                "workload": null, "workload_kind": null},
            "attribution": "container"
        });
        for (k, x) in extra.as_object().unwrap() {
            if k == "process" {
                for (pk, px) in x.as_object().unwrap() {
                    v["process"][pk] = px.clone();
                }
            } else {
                v[k] = x.clone();
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn strip(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('\x1b') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            rest = &rest[rest.find('m').unwrap() + 1..];
        }
        out + rest
    }

    #[test]
    fn colours_mark_what_deserves_a_look_and_change_nothing_else() {
        let on = Colors(true);
        let exec = event(serde_json::json!({"process": {"entered_via_exec": true}}));
        let line = compact_line_colored(&exec, on);
        assert!(
            line.contains("\x1b[32mexec\x1b[0m   \x1b[36mprod/web-1/app\x1b[0m"),
            "{line:?}"
        );
        assert!(line.ends_with(" \x1b[1;33m[via exec]\x1b[0m"), "{line:?}");

        let failed =
            event(serde_json::json!({"type": "exit", "exit": {"code": 3, "signal": null}}));
        assert!(compact_line_colored(&failed, on).ends_with(" \x1b[31mexit=3\x1b[0m"));
        let ok = event(serde_json::json!({"type": "exit", "exit": {"code": 0, "signal": null}}));
        let ok_line = compact_line_colored(&ok, on);
        assert!(
            ok_line.ends_with(" exit=0") && ok_line.contains("\x1b[34mexit\x1b[0m"),
            "{ok_line:?}"
        );
        let killed =
            event(serde_json::json!({"type": "exit", "exit": {"code": null, "signal": "SIGKILL"}}));
        assert!(compact_line_colored(&killed, on).ends_with("\x1b[31msignal=SIGKILL\x1b[0m"));

        let policy = |action: &str| {
            event(
                serde_json::json!({"type": "policy", "policy": {"name": "p", "rule": "exec",
                "path": "/bin/sh", "action": action, "mode": "lsm"}}),
            )
        };
        for (action, style) in [("deny", RED_BOLD), ("kill", RED_BOLD), ("audit", YELLOW)] {
            let line = compact_line_colored(&policy(action), on);
            assert!(
                line.contains(&format!(" {style}action={action}{RESET} ")),
                "{line:?}"
            );
            assert!(line.contains("\x1b[1;35mpolicy\x1b[0m "), "{line:?}");
        }
        let host =
            event(serde_json::json!({"attribution": "host", "pod": null, "container": null}));
        let host_line = compact_line_colored(&host, on);
        assert!(
            host_line.contains("\x1b[0m   host  /bin/sh"),
            "{host_line:?}"
        );

        // Without the codes, the coloured line is the plain one; off, there are none.
        for ev in [exec, failed, ok, killed, policy("deny"), host] {
            assert_eq!(strip(&compact_line_colored(&ev, on)), compact_line(&ev));
            assert!(!compact_line_colored(&ev, Colors(false)).contains('\x1b'));
        }
    }

    #[test]
    fn privileged_processes_and_containers_are_marked() {
        let creds = |uid: u32, euid: u32, caps: &[&str]| {
            serde_json::json!({"process": {"uid": uid, "euid": euid, "gid": uid, "egid": uid,
                "cap_effective": caps}})
        };
        let root = event(creds(0, 0, &["CAP_CHOWN", "CAP_SYS_ADMIN"]));
        assert!(
            compact_line(&root).ends_with(" [priv]"),
            "{}",
            compact_line(&root)
        );
        let setuid = event(creds(1000, 0, &[]));
        assert!(compact_line(&setuid).ends_with(" [priv]"));
        let admin = event(creds(1000, 1000, &["CAP_SYS_ADMIN"]));
        assert!(compact_line(&admin).ends_with(" [priv]"));
        let user = event(creds(1000, 1000, &["CAP_NET_RAW"]));
        assert!(
            !compact_line(&user).contains("[priv"),
            "{}",
            compact_line(&user)
        );
        // Without the exec's credentials nothing is claimed, even for a real uid of 0.
        let unknown = event(serde_json::json!({}));
        assert_eq!(unknown.process.uid, 0);
        assert!(!compact_line(&unknown).contains("[priv"));

        // A privileged container, its non-root process, then with a root one; the marks come
        // before `[via exec]` and the exit status.
        let mut in_priv = event(creds(1000, 1000, &[]));
        let mut c = (*in_priv.container.clone().unwrap()).clone();
        c.privileged = Some(true);
        in_priv.container = Some(c.clone().into());
        assert!(compact_line(&in_priv).ends_with("/bin/sh -c x [priv ctr]"));
        let mut exit = event(serde_json::json!({"type": "exit",
            "exit": {"code": 1, "signal": null},
            "process": {"uid": 0, "euid": 0, "cap_effective": [], "entered_via_exec": true}}));
        exit.container = Some(c.clone().into());
        assert!(
            compact_line(&exit).ends_with(" [priv ctr] [priv] [via exec] exit=1"),
            "{}",
            compact_line(&exit)
        );
        c.privileged = Some(false);
        in_priv.container = Some(c.into());
        assert!(!compact_line(&in_priv).contains("[priv"));

        // Coloured: the marks are, the rest of the line is not changed.
        let line = compact_line_colored(&exit, Colors(true));
        assert!(
            line.contains(" \x1b[31m[priv ctr]\x1b[0m \x1b[1;31m[priv]\x1b[0m "),
            "{line:?}"
        );
        assert_eq!(strip(&line), compact_line(&exit));
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
