//! Header lookup over an owned header block: each field is a pair of spans into the block's text,
//! so a parsed request costs one copy of the block and one vector, not a `String` per header.

use super::Span;

/// A borrowed view of a header block: its text and the (name, value) spans of its fields.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'a> {
    pub(crate) text: &'a str,
    pub(crate) spans: &'a [(Span, Span)],
}

impl<'a> Fields<'a> {
    /// All fields in the order received.
    pub(crate) fn iter(self) -> HeaderIter<'a> {
        HeaderIter {
            text: self.text,
            spans: self.spans.iter(),
        }
    }

    /// The values of every field called `name` (field names are case-insensitive: RFC 7230
    /// section 3.2).
    pub(crate) fn all(self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.spans
            .iter()
            .filter(move |(n, _)| n.get(self.text).eq_ignore_ascii_case(name))
            .map(move |&(_, v)| v.get(self.text))
    }

    /// The value span of the first field called `name`, and how many such fields there are.
    pub(crate) fn find(self, name: &str) -> (Option<Span>, usize) {
        let mut first = None;
        let mut count = 0;
        for &(n, v) in self.spans {
            if n.get(self.text).eq_ignore_ascii_case(name) {
                first = first.or(Some(v));
                count += 1;
            }
        }
        (first, count)
    }

    pub(crate) fn get(self, name: &str) -> Option<&'a str> {
        self.find(name).0.map(|v| v.get(self.text))
    }

    /// Whether any field called `name`, read as a comma-separated list (RFC 7230 section 7),
    /// holds `token`, compared case-insensitively.
    pub(crate) fn list_contains(self, name: &str, token: &str) -> bool {
        self.spans.iter().any(|&(n, v)| {
            n.get(self.text).eq_ignore_ascii_case(name)
                && v.get(self.text)
                    .split(',')
                    .any(|item| item.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
        })
    }

    /// The non-empty elements of every comma-separated field called `name`, as spans.
    pub(crate) fn list_spans(self, name: &str) -> Vec<Span> {
        let mut out = Vec::new();
        for &(n, v) in self.spans {
            if !n.get(self.text).eq_ignore_ascii_case(name) {
                continue;
            }
            let mut start = v.start as usize;
            for item in v.get(self.text).split(',') {
                let span = Span::new(start, start + item.len()).trim(self.text);
                if span.start != span.end {
                    out.push(span);
                }
                start += item.len() + 1;
            }
        }
        out
    }
}

/// Why a header block was refused before its fields were read; the request's and the response's
/// errors each have a variant for every one of these.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HeadError {
    /// The block goes past the limit, complete or not.
    TooLarge { limit: usize },
    /// More fields than `MAX_HEADERS`.
    TooManyHeaders,
    /// Not HTTP/1.x syntax: what `httparse` objected to.
    Malformed(&'static str),
    /// The block is not valid UTF-8.
    NotUtf8,
}

impl From<HeadError> for super::HandshakeError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge { limit } => Self::RequestTooLarge { limit },
            HeadError::TooManyHeaders => Self::TooManyHeaders,
            HeadError::Malformed(why) => Self::Malformed(why),
            HeadError::NotUtf8 => Self::NotUtf8,
        }
    }
}

impl From<HeadError> for super::client::ClientHandshakeError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge { limit } => Self::ResponseTooLarge { limit },
            HeadError::TooManyHeaders => Self::TooManyHeaders,
            HeadError::Malformed(why) => Self::Malformed(why),
            HeadError::NotUtf8 => Self::NotUtf8,
        }
    }
}

/// Reads the header block at the start of `buf` with `parse` (an `httparse` request's or
/// response's), never looking past `limit` bytes: a longer block is refused however it ends, and
/// bytes beyond a complete block belong to the WebSocket stream. The block's text and length;
/// `None` while it is not complete. The answer depends only on the first `limit` bytes and on
/// whether there are more.
pub(crate) fn parse_head<'b>(
    buf: &'b [u8],
    limit: usize,
    parse: impl FnOnce(&'b [u8]) -> httparse::Result<usize>,
) -> Result<Option<(&'b str, usize)>, HeadError> {
    let window = &buf[..buf.len().min(limit)];
    let consumed = match parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limit => {
            return Err(HeadError::TooLarge { limit })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(describe_syntax_error(e))),
    };
    let head = std::str::from_utf8(&window[..consumed]).map_err(|_| HeadError::NotUtf8)?;
    Ok(Some((head, consumed)))
}

/// The (name, trimmed value) spans of the headers `httparse` found in `head`.
pub(crate) fn header_spans(head: &str, raw: &[httparse::Header<'_>]) -> Vec<(Span, Span)> {
    let bytes = head.as_bytes();
    raw.iter()
        .map(|h| {
            let name = Span::within(bytes, h.name.as_bytes());
            (name, Span::within(bytes, h.value).trim(head))
        })
        .collect()
}

/// Whether `b` may appear in an HTTP token (RFC 7230 section 3.2.6 `tchar`).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// The headers of a request or response: name as received and trimmed value.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    text: &'a str,
    spans: std::slice::Iter<'a, (Span, Span)>,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let &(n, v) = self.spans.next()?;
        Some((n.get(self.text), v.get(self.text)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}

/// What `httparse` objected to, in words.
fn describe_syntax_error(e: httparse::Error) -> &'static str {
    use httparse::Error::*;
    match e {
        HeaderName => "invalid header name",
        HeaderValue => "invalid header value",
        NewLine => "invalid new line",
        Status => "invalid status",
        Token => "invalid token",
        TooManyHeaders => "too many headers",
        Version => "invalid HTTP version",
    }
}
