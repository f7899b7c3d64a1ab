//! Escaping shared by every renderer: names from runtimes and policies, and process arguments,
//! are not trusted, so nothing a process chooses can forge a line or drive the terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A word as a shell would need it: bare when plainly safe, else double-quoted with `"`, `\`,
/// `$` and backquote escaped. Control characters are always escaped, so a hostile argument cannot
/// forge a line or drive the terminal.
pub(super) fn shell_word(s: &str) -> Cow<'_, str> {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%^".contains(c));
    if plain {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// `s` with control characters escaped (names from runtimes and policies are not trusted).
pub(super) fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/bin/sh"), "/bin/sh");
        assert_eq!(shell_word("-c"), "-c");
        assert_eq!(shell_word("echo hi"), "\"echo hi\"");
        assert_eq!(shell_word(""), "\"\"");
        assert_eq!(shell_word("a\"b$c"), r#""a\"b\$c""#);
        assert_eq!(shell_word("x\ny"), r#""x\ny""#);
        assert_eq!(shell_word("\x1b[31m"), r#""\u{1b}[31m""#);
        assert_eq!(escape("web\n1"), "web\\n1");
    }
}
