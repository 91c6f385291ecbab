//! `Sec-WebSocket-Extensions` (RFC 6455 section 9.1):
//!
//! ```text
//! extension-list  = 1#extension
//! extension       = extension-token *( ";" extension-param )
//! extension-token = registered-token
//! extension-param = token [ "=" (token | quoted-string) ]
//! ```
//!
//! "When using the quoted-string syntax variant, the value after quoted-string unescaping MUST
//! conform to the 'token' ABNF." Offers are kept as spans into the owned header block; the rare
//! quoted value with backslash escapes is unescaped into text appended behind the block.

use std::fmt;

use super::fields::{is_tchar, is_token};
use super::Span;

/// One extension, followed in [`ExtensionList::entries`] by one entry per parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    name: Span,
    /// A parameter's value.
    value: Option<Span>,
    /// For an extension: how many parameter entries follow it.
    params: u32,
}

/// Parsed extension offers, as spans into some text that the owner keeps. Extensions and their
/// parameters share one vector: one allocation for the whole header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExtensionList {
    entries: Vec<Entry>,
    count: usize,
}

impl ExtensionList {
    /// Parses one header value, `value` inside `text`. A quoted value with escapes is unescaped
    /// onto `unescaped`, whose text the caller will place at offset `unescaped_base` of `text`.
    /// On bad syntax nothing of this header is kept and `false` comes back.
    pub(crate) fn parse_header(
        &mut self,
        text: &str,
        value: Span,
        unescaped: &mut String,
        unescaped_base: usize,
    ) -> bool {
        let marks = (self.entries.len(), self.count, unescaped.len());
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: value.start as usize,
            end: value.end as usize,
            unescaped,
            unescaped_base,
        };
        if parser.extension_list(self).is_some() {
            return true;
        }
        self.entries.truncate(marks.0);
        self.count = marks.1;
        parser.unescaped.truncate(marks.2);
        false
    }

    pub(crate) fn iter<'a>(&'a self, text: &'a str) -> Extensions<'a> {
        Extensions {
            text,
            entries: &self.entries,
            left: self.count,
        }
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    unescaped: &'a mut String,
    unescaped_base: usize,
}

impl Parser<'_> {
    fn extension_list(&mut self, list: &mut ExtensionList) -> Option<()> {
        loop {
            self.skip_ows();
            match self.peek() {
                None => return Some(()),
                // RFC 7230 section 7: empty list elements are allowed and ignored.
                Some(b',') => self.pos += 1,
                Some(_) => {
                    let name = self.token()?;
                    let at = list.entries.len();
                    list.entries.push(Entry {
                        name,
                        value: None,
                        params: 0,
                    });
                    loop {
                        self.skip_ows();
                        match self.peek() {
                            None | Some(b',') => break,
                            Some(b';') => self.pos += 1,
                            Some(_) => return None,
                        }
                        self.skip_ows();
                        let name = self.token()?;
                        self.skip_ows();
                        let mut value = None;
                        if self.peek() == Some(b'=') {
                            self.pos += 1;
                            self.skip_ows();
                            value = Some(if self.peek() == Some(b'"') {
                                self.quoted()?
                            } else {
                                self.token()?
                            });
                        }
                        list.entries.push(Entry {
                            name,
                            value,
                            params: 0,
                        });
                    }
                    list.entries[at].params = (list.entries.len() - at - 1) as u32;
                    list.count += 1;
                }
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        (self.pos < self.end).then(|| self.bytes[self.pos])
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn token(&mut self) -> Option<Span> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        (self.pos > start).then(|| Span::new(start, self.pos))
    }

    /// A quoted-string (RFC 7230 section 3.2.6) whose unescaped content is a token.
    fn quoted(&mut self) -> Option<Span> {
        self.pos += 1; // the opening quote
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    self.peek()?;
                }
                _ => {}
            }
            self.pos += 1;
        }
        let close = self.pos;
        let inner = &self.bytes[start..close];
        self.pos += 1; // the closing quote
        if !escaped {
            let ok = !inner.is_empty() && inner.iter().all(|&b| is_tchar(b));
            return ok.then(|| Span::new(start, close));
        }
        // Only token characters may remain after unescaping, so each escaped character is ASCII.
        let from = self.unescaped.len();
        let mut it = inner.iter();
        while let Some(&b) = it.next() {
            let c = if b == b'\\' { *it.next()? } else { b };
            if !is_tchar(c) {
                return None;
            }
            self.unescaped.push(char::from(c));
        }
        let base = self.unescaped_base;
        let span = Span::new(base + from, base + self.unescaped.len());
        is_token(&self.unescaped[from..]).then_some(span)
    }
}

/// The extensions offered in a request (or accepted in a response), in order.
#[derive(Clone, Debug)]
pub struct Extensions<'a> {
    text: &'a str,
    entries: &'a [Entry],
    left: usize,
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Extension<'a>;

    fn next(&mut self) -> Option<Extension<'a>> {
        let (ext, rest) = self.entries.split_first()?;
        let (params, rest) = rest.split_at(ext.params as usize);
        self.entries = rest;
        self.left -= 1;
        Some(Extension {
            text: self.text,
            name: ext.name,
            params,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Extensions<'_> {}

/// One extension: its name and parameters, e.g. `permessage-deflate; client_max_window_bits`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    text: &'a str,
    name: Span,
    params: &'a [Entry],
}

impl<'a> Extension<'a> {
    /// The extension token, e.g. `permessage-deflate`.
    pub fn name(&self) -> &'a str {
        self.name.get(self.text)
    }

    /// The parameters in order: name and value (`None` for a bare parameter). A quoted value
    /// comes back unquoted and unescaped.
    pub fn params(&self) -> ExtensionParams<'a> {
        ExtensionParams {
            text: self.text,
            params: self.params.iter(),
        }
    }

    /// The first parameter called `name` (ASCII case-insensitive): `Some(None)` when present
    /// without a value.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for Extension<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extension")
            .field("name", &self.name())
            .field("params", &self.params().collect::<Vec<_>>())
            .finish()
    }
}

/// The parameters of one [`Extension`].
#[derive(Clone, Debug)]
pub struct ExtensionParams<'a> {
    text: &'a str,
    params: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for ExtensionParams<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        let p = self.params.next()?;
        Some((p.name.get(self.text), p.value.map(|v| v.get(self.text))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.params.size_hint()
    }
}

impl ExactSizeIterator for ExtensionParams<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = Vec<(String, Vec<(String, Option<String>)>)>;

    /// Parses each header value in turn, the way a request with several headers is parsed.
    fn parse(values: &[&str]) -> Owned {
        let text: String = values.concat();
        let mut list = ExtensionList::default();
        let mut unescaped = String::new();
        let mut start = 0;
        for v in values {
            list.parse_header(
                &text,
                Span::new(start, start + v.len()),
                &mut unescaped,
                text.len(),
            );
            start += v.len();
        }
        let full = text + &unescaped;
        list.iter(&full)
            .map(|e| {
                let params = e
                    .params()
                    .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
                    .collect();
                (e.name().to_owned(), params)
            })
            .collect()
    }

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> (String, Vec<(String, Option<String>)>) {
        let params = params
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_owned)))
            .collect();
        (name.to_owned(), params)
    }

    #[test]
    fn permessage_deflate_offers() {
        let got = parse(&[
            "permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=10",
        ]);
        assert_eq!(
            got,
            vec![
                ext("permessage-deflate", &[("client_max_window_bits", None)]),
                ext(
                    "permessage-deflate",
                    &[("server_max_window_bits", Some("10"))]
                ),
            ]
        );
    }

    #[test]
    fn quoted_values_are_unquoted_and_unescaped() {
        let got = parse(&[r#"foo; a="10" ; b = "1\5";c, bar"#]);
        assert_eq!(
            got,
            vec![
                ext("foo", &[("a", Some("10")), ("b", Some("15")), ("c", None)]),
                ext("bar", &[]),
            ]
        );
    }

    #[test]
    fn empty_elements_and_whitespace_are_tolerated() {
        let got = parse(&[" , x-webkit-deflate-frame ,\t,mux ;\tmax=3 ,"]);
        assert_eq!(
            got,
            vec![
                ext("x-webkit-deflate-frame", &[]),
                ext("mux", &[("max", Some("3"))])
            ]
        );
    }

    #[test]
    fn bad_syntax_drops_only_that_header() {
        for bad in [
            "a; b=",
            "a; =1",
            "a b",
            ";a",
            "a; b=\"unterminated",
            "a; b=\"\"",
            "a; b=\"x y\"",
            "a; b=\"x\\",
            "a; b=\"\\ \"",
            "a;; b",
            "a=1",
            "\u{e9}",
        ] {
            let got = parse(&["good; x=1", bad]);
            assert_eq!(got, vec![ext("good", &[("x", Some("1"))])], "input {bad:?}");
        }
    }

    #[test]
    fn param_lookup() {
        let text = "permessage-deflate; Client_Max_Window_Bits; server_max_window_bits=12";
        let mut list = ExtensionList::default();
        let mut unescaped = String::new();
        assert!(list.parse_header(text, Span::new(0, text.len()), &mut unescaped, text.len()));
        let e = list.iter(text).next().unwrap();
        assert_eq!(e.param("client_max_window_bits"), Some(None));
        assert_eq!(e.param("server_max_window_bits"), Some(Some("12")));
        assert_eq!(e.param("server_no_context_takeover"), None);
        assert_eq!(list.iter(text).len(), 1);
    }
}
