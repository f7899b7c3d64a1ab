//! `podmap containers` as a table: one line per mapped cgroup, the fields people look for first;
//! `-o json` has the whole rows.

use std::fmt::Write as _;

use podmap_proto::containers::ContainerRow;

use super::text::escape;

/// The rows as an aligned table. The ERROR column shows only when a row has an error.
pub fn containers_table(rows: &[ContainerRow]) -> String {
    if rows.is_empty() {
        return "no containers mapped\n".to_string();
    }
    let with_errors = rows.iter().any(|r| r.error.is_some());
    let mut header = vec![
        "NAMESPACE",
        "POD",
        "CONTAINER",
        "CONTAINER ID",
        "CGROUP ID",
        "RUNTIME",
        "SANDBOX",
        "REMOVING",
        "POLICIES",
        "MAPPED AT",
    ];
    if with_errors {
        header.push("ERROR");
    }
    let header: Vec<String> = header.into_iter().map(str::to_string).collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let container = r.container.as_ref();
            let pod = r.pod.as_ref();
            let mut line = vec![
                text(pod.map(|p| p.namespace.as_str())),
                text(pod.map(|p| p.name.as_str())),
                text(container.map(|c| c.name.as_str())),
                container.map_or_else(|| "-".to_string(), |c| short_id(&c.id)),
                r.cgroup_id.to_string(),
                text(container.map(|c| c.runtime.as_str())),
                flag(r.sandbox),
                flag(r.removing),
                if r.policies.is_empty() {
                    "-".to_string()
                } else {
                    r.policies
                        .iter()
                        .map(|p| escape(p).into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                text(r.mapped_at.as_deref()),
            ];
            if with_errors {
                line.push(text(r.error.as_deref()));
            }
            line
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(cells.iter())
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(cells.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            let _ = write!(line, "{cell}{:pad$}  ", "");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A text cell: `-` when absent or empty, control characters escaped.
fn text(s: Option<&str>) -> String {
    match s {
        None | Some("") => "-".to_string(),
        Some(s) => escape(s).into_owned(),
    }
}

fn flag(b: Option<bool>) -> String {
    b.map_or_else(|| "-".to_string(), |b| b.to_string())
}

/// A 64-hex container id as its 12-character prefix, as runtimes' CLIs show it.
fn short_id(id: &str) -> String {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_string()
    } else {
        text(Some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(json: serde_json::Value) -> Vec<ContainerRow> {
        serde_json::from_value(json).expect("rows as podmapd sends them")
    }

    #[test]
    fn containers_table_shows_podmapd_rows() {
        let rows = rows(serde_json::json!([
            {"cgroup_id": 7311, "hierarchy": "v2", "sandbox": false, "removing": false,
             "mapped_at": "2026-11-25T12:00:00Z", "cgroup_path": "/kubepods/x",
             "container": {"id": "a".repeat(64), "name": "nginx", "image": "nginx:1.27",
                           "runtime": "containerd"},
             "pod": {"uid": "u1", "name": "web-7d9c", "namespace": "prod",
                     "labels": {"app": "web"}},
             "policies": ["no-shell", "no-nc"]},
            {"cgroup_id": 12, "hierarchy": "v2", "sandbox": null, "removing": null,
             "mapped_at": null, "policies": [], "error": "no metadata"},
        ]));
        let t = containers_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "NAMESPACE  POD       CONTAINER  CONTAINER ID  CGROUP ID  RUNTIME     SANDBOX  REMOVING  POLICIES        MAPPED AT             ERROR",
                "prod       web-7d9c  nginx      aaaaaaaaaaaa  7311       containerd  false    false     no-shell,no-nc  2026-11-25T12:00:00Z  -",
                "-          -         -          -             12         -           -        -         -               -                     no metadata",
            ]
        );
        assert_eq!(containers_table(&[]), "no containers mapped\n");
    }

    /// A row is typed: the table shows its fields, never guesses at shapes; names a runtime or
    /// writer chose cannot break the table's lines.
    #[test]
    fn container_rows_without_errors_have_no_error_column_and_names_are_escaped() {
        let rows = rows(serde_json::json!([
            {"cgroup_id": 5, "hierarchy": "v1", "sandbox": true, "removing": false,
             "mapped_at": null,
             "container": {"id": "short", "name": "a\nb", "image": "", "runtime": ""},
             "pod": {"uid": null, "name": "", "namespace": "", "labels": {}}},
        ]));
        assert_eq!(
            containers_table(&rows),
            "NAMESPACE  POD  CONTAINER  CONTAINER ID  CGROUP ID  RUNTIME  SANDBOX  REMOVING  POLICIES  MAPPED AT\n\
             -          -    a\\nb       short         5          -        true     false     -         -\n"
        );
    }
}
