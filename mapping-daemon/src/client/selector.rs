//! Kubernetes label-selector syntax for `podmap events -l` / `--selector`: requirements joined
//! by commas, all of which must hold. Each is `key=value` (or `key==value`), `key!=value`,
//! `key` (the label is set), `!key` (it is not), `key in (a,b)` or `key notin (a,b)`. As in
//! Kubernetes, `!=` and `notin` also hold for a pod without the label.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector: every requirement must hold. Empty selects every pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// The `key=value` requirements: what podmapd's own label filter can apply.
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError(String);

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SelectorError {}

fn err(s: String) -> SelectorError {
    SelectorError(s)
}

/// A label key or value: letters, digits, `-`, `_`, `.`, and `/` in keys (a prefix).
fn check_name(what: &str, s: &str, in_req: &str, allow_slash: bool) -> Result<(), SelectorError> {
    let ok = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (allow_slash && c == '/')
    };
    match s.chars().find(|c| !ok(*c)) {
        Some(c) => Err(err(format!(
            "{what} {s:?} in {in_req:?} has {c:?}: expected letters, digits, '-', '_', '.'{}",
            if allow_slash { " or a '/' prefix" } else { "" }
        ))),
        None if what == "key" && s.is_empty() => {
            Err(err(format!("a requirement without a key: {in_req:?}")))
        }
        None => Ok(()),
    }
}

/// Splits on the commas outside parentheses.
fn split_requirements(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(err(format!("unbalanced parentheses in {s:?}")));
        }
    }
    if depth != 0 {
        return Err(err(format!("unbalanced parentheses in {s:?}")));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(op: &str, rest: &str, req: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            err(format!(
                "{op:?} takes a list in parentheses, as in `key {op} (a,b)`: {req:?}"
            ))
        })?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().all(|v| v.is_empty()) {
        return Err(err(format!("an empty list after {op:?}: {req:?}")));
    }
    for v in &values {
        check_name("value", v, req, false)?;
    }
    Ok(values)
}

fn parse_requirement(req: &str) -> Result<Requirement, SelectorError> {
    let r = req.trim();
    if r.is_empty() {
        return Err(err(
            "an empty requirement (two commas, or a comma at an end)".into(),
        ));
    }
    if let Some(key) = r.strip_prefix('!') {
        let key = key.trim();
        check_name("key", key, req, true)?;
        return Ok(Requirement::NotExists(key.to_string()));
    }
    for (op, neg) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = r.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            check_name("key", k, req, true)?;
            check_name("value", v, req, false)?;
            return Ok(if neg {
                Requirement::NotEquals(k.into(), v.into())
            } else {
                Requirement::Equals(k.into(), v.into())
            });
        }
    }
    let mut words = r.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if rest.is_empty() {
        check_name("key", key, req, true)?;
        return Ok(Requirement::Exists(key.to_string()));
    }
    check_name("key", key, req, true)?;
    let (op, set) = rest.split_at(
        rest.find(|c: char| c.is_whitespace() || c == '(')
            .unwrap_or(rest.len()),
    );
    match op {
        "in" => Ok(Requirement::In(key.into(), parse_set("in", set, req)?)),
        "notin" => Ok(Requirement::NotIn(
            key.into(),
            parse_set("notin", set, req)?,
        )),
        _ => Err(err(format!(
            "unknown operator {op:?} in {req:?}: expected =, ==, !=, in, notin, `key` or `!key`"
        ))),
    }
}

/// Parses a selector (`app=web,tier!=db,env in (prod,staging),!canary`).
pub fn parse(s: &str) -> Result<Selector, SelectorError> {
    if s.trim().is_empty() {
        return Err(err("an empty selector".into()));
    }
    split_requirements(s)?
        .into_iter()
        .map(parse_requirement)
        .collect::<Result<_, _>>()
        .map(Selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Requirement::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_form() {
        let s = parse("app=web, tier!=db,x==y,team,!canary,env in (prod, staging),zone notin (a)")
            .unwrap();
        assert_eq!(
            s.0,
            vec![
                Equals("app".into(), "web".into()),
                NotEquals("tier".into(), "db".into()),
                Equals("x".into(), "y".into()),
                Exists("team".into()),
                NotExists("canary".into()),
                In("env".into(), vec!["prod".into(), "staging".into()]),
                NotIn("zone".into(), vec!["a".into()]),
            ]
        );
        assert_eq!(parse("app.kubernetes.io/name=web").unwrap().0.len(), 1);
        assert_eq!(
            parse("k=").unwrap().0,
            vec![Equals("k".into(), String::new())]
        );
        assert_eq!(
            s.equalities().collect::<Vec<_>>(),
            vec![("app", "web"), ("x", "y")]
        );
    }

    #[test]
    fn clear_errors() {
        for (bad, says) in [
            ("", "empty selector"),
            ("a=b,,c", "empty requirement"),
            ("a=b,", "empty requirement"),
            ("=web", "without a key"),
            ("a b", "unknown operator \"b\""),
            ("env in prod", "list in parentheses"),
            ("env in ()", "empty list"),
            ("env in (a,b", "unbalanced"),
            ("env in (a))", "unbalanced"),
            ("a=b c", "has ' '"),
            ("a=x/y", "has '/'"),
            ("!", "without a key"),
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn matching_follows_kubernetes() {
        let pod = labels(&[("app", "web"), ("env", "prod")]);
        let m = |s: &str| parse(s).unwrap().matches(&pod);
        assert!(m("app=web"));
        assert!(!m("app=db"));
        assert!(m("app=web,env=prod"));
        assert!(!m("app=web,env=dev"));
        assert!(m("tier!=db"), "!= holds without the label");
        assert!(!m("app!=web"));
        assert!(m("app") && !m("tier"));
        assert!(m("!tier") && !m("!app"));
        assert!(m("env in (dev,prod)") && !m("env in (dev)"));
        assert!(!m("tier in (db)"), "in needs the label");
        assert!(m("env notin (dev)") && !m("env notin (prod)"));
        assert!(m("tier notin (db)"), "notin holds without the label");
        assert!(Selector::default().matches(&pod));
    }
}
