//! Decoding a list body as it arrives, one element of `items` at a time.
//!
//! A first list at `resourceVersion=0` is served from the API server's watch cache, which
//! ignores `limit`: a node's pods come in one body of tens of MB. Decoding it whole (the body as
//! one string, then every pod) made the informer's peak several times its steady state, and
//! glibc's malloc kept much of it. [`ListDecoder`] is fed the body chunk by chunk as the
//! connection delivers it and hands out each element of `items` as its own raw JSON text, and
//! every other top-level field (`metadata`, `kind`, ...) the same way; the informer decodes and
//! compacts each pod before the next one is read, so at any time it holds one pod's text, not
//! the list's.
//!
//! Only the list's skeleton is read here: an object, its keys (JSON strings), and for `items`
//! an array or `null`. Each captured value is delimited by its brackets and strings and checked
//! fully by serde when the caller decodes it, so a body that is not JSON fails there or here.

use std::fmt;

/// A piece of a list body, as raw JSON text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Part<'a> {
    /// A top-level field other than `items` (`metadata`, `kind`, `apiVersion`, ...).
    Field { name: &'a str, value: &'a [u8] },
    /// One element of `items`.
    Item(&'a [u8]),
}

/// Why a list body is not one.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("list body is not a JSON object of fields at byte {offset}: {what}")]
    Syntax { offset: u64, what: Expected },
    #[error("list body ended after {0} bytes, before the object closed")]
    Truncated(u64),
}

/// What the decoder expected where it found something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expected {
    ObjectStart,
    Key,
    Colon,
    Value,
    CommaOrObjectEnd,
    ItemsArrayOrNull,
    CommaOrArrayEnd,
    KeyString,
    Nothing,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::ObjectStart => "expected '{'",
            Expected::Key => "expected a field name",
            Expected::Colon => "expected ':'",
            Expected::Value => "expected a value",
            Expected::CommaOrObjectEnd => "expected ',' or '}'",
            Expected::ItemsArrayOrNull => "expected items to be an array or null",
            Expected::CommaOrArrayEnd => "expected ',' or ']' in items",
            Expected::KeyString => "a field name that is not a valid JSON string",
            Expected::Nothing => "unexpected text after the object",
        })
    }
}

/// Where the decoder is in the list's skeleton.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,`: a key.
    Key,
    /// Inside a key's string.
    KeyText,
    Colon,
    /// Before a field's value.
    Value,
    /// Inside a field's value (not `items`' array).
    ValueText,
    /// After a value: `,` or `}`.
    AfterValue,
    /// After `items`' `[`: an element or `]`.
    ItemOrEnd,
    /// After `,` in `items`: an element.
    Item,
    /// Inside an element of `items`.
    ItemText,
    /// After an element: `,` or `]`.
    AfterItem,
    /// After the closing `}`: whitespace only.
    Done,
}

/// How far a captured value has got.
#[derive(Clone, Copy, Debug, Default)]
struct Scan {
    /// Open brackets.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A number, `true`, `false` or `null`: ends at the first delimiter.
    scalar: bool,
}

impl Scan {
    /// Starts a value whose first byte is `first`.
    fn start(first: u8) -> Scan {
        let mut scan = Scan::default();
        match first {
            b'{' | b'[' => scan.depth = 1,
            b'"' => scan.in_string = true,
            _ => scan.scalar = true,
        }
        scan
    }

    /// Advances over `bytes` (the value's first byte already counted by `start`). Returns how
    /// many bytes belong to the value and whether it ended there; a scalar's end is the
    /// delimiter after it, which is not the value's.
    fn advance(&mut self, bytes: &[u8]) -> (usize, bool) {
        for (i, &b) in bytes.iter().enumerate() {
            if self.scalar {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    return (i, true);
                }
            } else if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return (i + 1, true);
                        }
                    }
                    _ => {}
                }
            }
        }
        (bytes.len(), false)
    }
}

/// A push decoder of one list body: feed it the body's chunks in order, then [`finish`].
///
/// [`finish`]: ListDecoder::finish
#[derive(Debug)]
pub(crate) struct ListDecoder {
    state: State,
    /// Bytes of the body consumed so far (for error messages).
    offset: u64,
    /// The key, value or element being captured; reused, so it holds the largest one seen.
    buf: Vec<u8>,
    /// The current field's name.
    key: String,
    scan: Scan,
}

impl Default for ListDecoder {
    fn default() -> Self {
        ListDecoder {
            state: State::Start,
            offset: 0,
            buf: Vec::new(),
            key: String::new(),
            scan: Scan::default(),
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl ListDecoder {
    /// Decodes the next chunk of the body, calling `on` with each part it completes, in order.
    /// Stops at the first error, `on`'s or the body's.
    pub(crate) fn feed<E: From<BodyError>>(
        &mut self,
        chunk: &[u8],
        mut on: impl FnMut(Part<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            let at = self.offset + i as u64;
            let syntax = |what| BodyError::Syntax { offset: at, what };
            match self.state {
                State::ValueText | State::ItemText | State::KeyText => {
                    let (taken, ended) = self.scan.advance(&chunk[i..]);
                    self.buf.extend_from_slice(&chunk[i..i + taken]);
                    i += taken;
                    if ended {
                        self.ended(self.offset + i as u64, &mut on)?;
                    }
                    continue;
                }
                _ if is_space(b) => {}
                State::Start if b == b'{' => self.state = State::KeyOrEnd,
                State::Start => return Err(syntax(Expected::ObjectStart).into()),
                State::KeyOrEnd | State::Key if b == b'"' => self.capture(b, State::KeyText),
                State::KeyOrEnd if b == b'}' => self.state = State::Done,
                State::KeyOrEnd | State::Key => return Err(syntax(Expected::Key).into()),
                State::Colon if b == b':' => self.state = State::Value,
                State::Colon => return Err(syntax(Expected::Colon).into()),
                State::Value if self.key == "items" => match b {
                    b'[' => self.state = State::ItemOrEnd,
                    b'n' => self.capture(b, State::ValueText),
                    _ => return Err(syntax(Expected::ItemsArrayOrNull).into()),
                },
                State::Value if matches!(b, b',' | b':' | b'}' | b']') => {
                    return Err(syntax(Expected::Value).into())
                }
                State::Value => self.capture(b, State::ValueText),
                State::AfterValue => match b {
                    b',' => self.state = State::Key,
                    b'}' => self.state = State::Done,
                    _ => return Err(syntax(Expected::CommaOrObjectEnd).into()),
                },
                State::ItemOrEnd if b == b']' => self.state = State::AfterValue,
                State::ItemOrEnd | State::Item if matches!(b, b',' | b':' | b'}' | b']') => {
                    return Err(syntax(Expected::Value).into())
                }
                State::ItemOrEnd | State::Item => self.capture(b, State::ItemText),
                State::AfterItem => match b {
                    b',' => self.state = State::Item,
                    b']' => self.state = State::AfterValue,
                    _ => return Err(syntax(Expected::CommaOrArrayEnd).into()),
                },
                State::Done => return Err(syntax(Expected::Nothing).into()),
            }
            i += 1;
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// The body has ended: was it a whole object? (A scalar value still open at the end is
    /// cut short: a list body always ends with its closing `}`.)
    pub(crate) fn finish(&self) -> Result<(), BodyError> {
        match self.state {
            State::Done => Ok(()),
            _ => Err(BodyError::Truncated(self.offset)),
        }
    }

    /// Starts capturing a value whose first byte is `first`.
    fn capture(&mut self, first: u8, state: State) {
        self.buf.clear();
        self.buf.push(first);
        self.scan = Scan::start(first);
        self.state = state;
    }

    /// A captured key, value or element is complete in `buf`.
    /// `at` is the body's offset just after it.
    fn ended<E: From<BodyError>>(
        &mut self,
        at: u64,
        on: &mut impl FnMut(Part<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        match self.state {
            State::KeyText => {
                self.key = serde_json::from_slice(&self.buf).map_err(|_| BodyError::Syntax {
                    offset: at,
                    what: Expected::KeyString,
                })?;
                self.state = State::Colon;
            }
            State::ValueText => {
                self.state = State::AfterValue;
                on(Part::Field {
                    name: &self.key,
                    value: &self.buf,
                })?;
            }
            State::ItemText => {
                self.state = State::AfterItem;
                on(Part::Item(&self.buf))?;
            }
            _ => unreachable!("ended outside a capture"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a body decodes to, as owned text: fields as `name=value`, items as they are.
    fn decode(chunks: &[&[u8]]) -> Result<Vec<String>, BodyError> {
        let mut decoder = ListDecoder::default();
        let mut parts = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, |part| {
                parts.push(match part {
                    Part::Field { name, value } => {
                        format!("{name}={}", String::from_utf8_lossy(value))
                    }
                    Part::Item(text) => String::from_utf8_lossy(text).into_owned(),
                });
                Ok::<_, BodyError>(())
            })?;
        }
        decoder.finish()?;
        Ok(parts)
    }

    /// Every way of cutting `body` in two and in three gives the same parts as the whole.
    fn decode_every_split(body: &str) -> Result<Vec<String>, BodyError> {
        let bytes = body.as_bytes();
        let whole = decode(&[bytes]);
        for i in 0..=bytes.len() {
            assert_eq!(decode(&[&bytes[..i], &bytes[i..]]), whole, "split at {i}");
            for j in i..=bytes.len() {
                assert_eq!(
                    decode(&[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    whole,
                    "split at {i} and {j}"
                );
            }
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&bytewise), whole, "byte by byte");
        whole
    }

    #[test]
    fn hands_out_fields_and_each_item_in_order() {
        let body = r#" {"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"12","continue":"a}b"},
            "items":[{"metadata":{"name":"a","annotations":{"x":"]}\"{["}}},
            {"metadata":{"name":"b"},"spec":{"containers":[{"args":["[", "\\", "}"]}]}} , 7,"s",null,[1,[2]]],
            "extra":-1.5e3,"t":true} "#;
        let parts = decode_every_split(body).unwrap();
        assert_eq!(
            parts,
            [
                r#"kind="PodList""#,
                r#"apiVersion="v1""#,
                r#"metadata={"resourceVersion":"12","continue":"a}b"}"#,
                r#"{"metadata":{"name":"a","annotations":{"x":"]}\"{["}}}"#,
                r#"{"metadata":{"name":"b"},"spec":{"containers":[{"args":["[", "\\", "}"]}]}}"#,
                "7",
                r#""s""#,
                "null",
                "[1,[2]]",
                "extra=-1.5e3",
                "t=true",
            ]
        );
    }

    #[test]
    fn empty_null_and_absent_items() {
        for body in [
            r#"{"items":[]}"#,
            r#"{"items":null}"#,
            r#"{"items" : [ ] , "metadata":{}}"#,
            "{}",
        ] {
            let parts = decode_every_split(body).unwrap();
            assert!(
                parts.iter().all(|p| p.contains('=')),
                "{body}: no item expected: {parts:?}"
            );
        }
        // An escaped key is the same key.
        assert_eq!(
            decode(&[br#"{"\u0069tems":[1]}"#]).unwrap(),
            ["1".to_string()]
        );
    }

    #[test]
    fn what_is_not_a_list_body_fails() {
        let syntax = |body: &str| match decode(&[body.as_bytes()]) {
            Err(BodyError::Syntax { what, .. }) => what,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(syntax("this is not json"), Expected::ObjectStart);
        assert_eq!(syntax("[]"), Expected::ObjectStart);
        assert_eq!(syntax(r#"{"items":{}}"#), Expected::ItemsArrayOrNull);
        assert_eq!(syntax(r#"{"items":[1 2]}"#), Expected::CommaOrArrayEnd);
        assert_eq!(syntax(r#"{"items":[1,]}"#), Expected::Value);
        assert_eq!(syntax(r#"{"a":1 "b":2}"#), Expected::CommaOrObjectEnd);
        assert_eq!(syntax(r#"{"a" 1}"#), Expected::Colon);
        assert_eq!(syntax(r#"{a:1}"#), Expected::Key);
        assert_eq!(syntax(r#"{"a":,}"#), Expected::Value);
        assert_eq!(syntax(r#"{"a\x":1}"#), Expected::KeyString);
        assert_eq!(syntax(r#"{"a":1}}"#), Expected::Nothing);
        for cut in [
            "",
            " ",
            "{",
            r#"{"items":[{"a":1}"#,
            r#"{"items":[{"a":"}"#,
            r#"{"a":1"#,
            r#"{"a""#,
        ] {
            assert!(
                matches!(decode(&[cut.as_bytes()]), Err(BodyError::Truncated(_))),
                "{cut:?}"
            );
        }
    }

    #[test]
    fn the_callers_error_stops_decoding() {
        let mut decoder = ListDecoder::default();
        let mut seen = 0;
        let result = decoder.feed(br#"{"items":[1,2,3]}"#, |_| {
            seen += 1;
            if seen == 2 {
                Err(BodyError::Truncated(99))
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err(BodyError::Truncated(99)));
        assert_eq!(seen, 2);
    }
}
