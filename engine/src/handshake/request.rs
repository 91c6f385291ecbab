//! The client's opening handshake as the server reads it (RFC 6455 section 4.2.1).

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;

use super::extensions::{ExtensionList, Extensions};
use super::fields::{describe_syntax_error, Fields, HeaderIter};
use super::{HandshakeConfig, HandshakeError, Span, MAX_HEADERS, WEBSOCKET_VERSION};

/// What [`parse_request`] made of the bytes so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseStatus {
    /// The header block is not complete yet: read more and call again with all bytes so far.
    Partial,
    /// A valid upgrade request. It took the first `consumed` bytes of the buffer; the rest, if
    /// any, is the start of the WebSocket stream.
    Complete {
        /// The request.
        request: Request,
        /// Bytes of the buffer the request took.
        consumed: usize,
    },
}

/// Parses and validates a WebSocket upgrade request from the bytes received so far.
///
/// Checks, in order: size limit (431), HTTP syntax (400), HTTP/1.1 (505), GET (405), `Host`
/// (400), `Upgrade: websocket` (400), `Connection: upgrade` (400), `Sec-WebSocket-Version: 13`
/// (426), `Sec-WebSocket-Key` (400). The origin is left to [`check_origin`](super::check_origin).
///
/// The answer depends only on the first `cfg.max_request_size` bytes and on whether there are
/// more, so feeding the bytes in any number of pieces gives the same result once it is not
/// `Partial`.
pub fn parse_request(buf: &[u8], cfg: &HandshakeConfig) -> Result<ParseStatus, HandshakeError> {
    let limit = cfg.max_request_size.min(u32::MAX as usize);
    // Never look past the limit: a longer header block is refused however it ends, and bytes
    // beyond a complete block belong to the WebSocket stream.
    let window = &buf[..buf.len().min(limit)];
    let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut raw = httparse::Request::new(&mut raw_headers);
    let consumed = match raw.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limit => {
            return Err(HandshakeError::RequestTooLarge { limit })
        }
        Ok(httparse::Status::Partial) => return Ok(ParseStatus::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(e) => return Err(HandshakeError::Malformed(describe_syntax_error(e))),
    };
    let head = std::str::from_utf8(&window[..consumed]).map_err(|_| HandshakeError::NotUtf8)?;
    let bytes = head.as_bytes();
    // httparse hands out sub-slices of the buffer; keep their positions instead of copies.
    let method = Span::within(bytes, raw.method.unwrap_or(&head[..0]).as_bytes());
    let target = Span::within(bytes, raw.path.unwrap_or(&head[..0]).as_bytes());
    let headers: Vec<(Span, Span)> = raw
        .headers
        .iter()
        .map(|h| {
            let name = Span::within(bytes, h.name.as_bytes());
            (name, Span::within(bytes, h.value).trim(head))
        })
        .collect();
    let fields = Fields {
        text: head,
        spans: &headers,
    };

    // RFC 6455 section 4.1: "The method of the request MUST be GET, and the HTTP version MUST be
    // at least 1.1."
    if raw.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    if method.get(head) != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    // "The request MUST contain a |Host| header field whose value contains /host/ plus optionally
    // ":" followed by /port/".
    let host = match fields.find("Host") {
        (Some(host), 1) if host.start != host.end => host,
        (_, 0 | 1) => return Err(HandshakeError::MissingHost),
        _ => return Err(HandshakeError::DuplicateHeader("Host")),
    };
    // "The request MUST contain an |Upgrade| header field whose value MUST include the
    // "websocket" keyword."
    if !fields.list_contains("Upgrade", "websocket") {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    // "The request MUST contain a |Connection| header field whose value MUST include the
    // "Upgrade" token."
    if !fields.list_contains("Connection", "upgrade") {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    // "The request MUST include a header field with the name |Sec-WebSocket-Version|. The value
    // of this header field MUST be 13."
    match fields.find("Sec-WebSocket-Version") {
        (Some(v), 1) if v.get(head) == WEBSOCKET_VERSION => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    // "The request MUST include a header field with the name |Sec-WebSocket-Key|. The value of
    // this header field MUST be a nonce consisting of a randomly selected 16-byte value that has
    // been base64-encoded."
    let key = match fields.find("Sec-WebSocket-Key") {
        (Some(key), 1) => key,
        (None, _) => return Err(HandshakeError::MissingKey),
        _ => return Err(HandshakeError::DuplicateHeader("Sec-WebSocket-Key")),
    };
    if !is_valid_key(key.get(head)) {
        return Err(HandshakeError::InvalidKey);
    }

    let (path, query) = match target.get(head).find('?') {
        Some(q) => {
            let q = target.start as usize + q;
            let path = Span::new(target.start as usize, q);
            (path, Some(Span::new(q + 1, target.end as usize)))
        }
        None => (target, None),
    };
    let protocols = fields.list_spans("Sec-WebSocket-Protocol");
    // Quoted extension values with escapes are unescaped behind the header block.
    let mut extensions = ExtensionList::default();
    let mut unescaped = String::new();
    for &(name, value) in &headers {
        if name
            .get(head)
            .eq_ignore_ascii_case("Sec-WebSocket-Extensions")
        {
            // Bad syntax drops that header's offers; the handshake goes on without them.
            extensions.parse_header(head, value, &mut unescaped, consumed);
        }
    }
    let mut text = String::with_capacity(consumed + unescaped.len());
    text.push_str(head);
    text.push_str(&unescaped);

    Ok(ParseStatus::Complete {
        request: Request {
            text,
            method,
            path,
            query,
            headers,
            host,
            key,
            protocols,
            extensions,
            peer: None,
        },
        consumed,
    })
}

/// Whether `key` is base64 (with padding) for exactly 16 bytes: 24 characters.
fn is_valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded) == Ok(16)
}

/// A valid WebSocket upgrade request. It owns one copy of the request's header block; every
/// accessor borrows from it.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    text: String,
    method: Span,
    path: Span,
    query: Option<Span>,
    headers: Vec<(Span, Span)>,
    host: Span,
    key: Span,
    protocols: Vec<Span>,
    extensions: ExtensionList,
    /// The peer's address; the engine sets it, the parser leaves it `None`.
    pub peer: Option<SocketAddr>,
}

impl Request {
    fn fields(&self) -> Fields<'_> {
        Fields {
            text: &self.text,
            spans: &self.headers,
        }
    }

    /// The request method (always `GET` once validated).
    pub fn method(&self) -> &str {
        self.method.get(&self.text)
    }

    /// The request target up to `?`, e.g. `/chat`.
    pub fn path(&self) -> &str {
        self.path.get(&self.text)
    }

    /// The request target after `?`, without it; `None` when there is no `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.map(|q| q.get(&self.text))
    }

    /// The value of the first header called `name` (ASCII case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.fields().get(name)
    }

    /// The values of every header called `name`, in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields().all(name)
    }

    /// All headers as received: name (original case) and trimmed value.
    pub fn headers(&self) -> HeaderIter<'_> {
        self.fields().iter()
    }

    /// The `Host` header.
    pub fn host(&self) -> &str {
        self.host.get(&self.text)
    }

    /// `Sec-WebSocket-Key`: 24 base64 characters, see [`accept_key`](super::accept_key).
    pub fn key(&self) -> &str {
        self.key.get(&self.text)
    }

    /// The subprotocols the client offers, in its order (all `Sec-WebSocket-Protocol` headers,
    /// comma-separated).
    pub fn protocols(&self) -> Protocols<'_> {
        Protocols {
            text: &self.text,
            spans: self.protocols.iter(),
        }
    }

    /// The extensions the client offers, in its order. A header with bad syntax contributes
    /// nothing.
    pub fn extensions(&self) -> Extensions<'_> {
        self.extensions.iter(&self.text)
    }

    /// The peer's address, if the engine set it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The first of the server's subprotocols, in the server's order of preference, that the
    /// client offered (compared exactly); `None` when there is none.
    pub fn select_subprotocol<S: AsRef<str>>(&self, server_prefs: &[S]) -> Option<&str> {
        server_prefs
            .iter()
            .find_map(|want| self.protocols().find(|&p| p == want.as_ref()))
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("query", &self.query())
            .field("headers", &self.headers().collect::<Vec<_>>())
            .field("peer", &self.peer)
            .finish()
    }
}

/// The subprotocols a client offers.
#[derive(Clone, Debug)]
pub struct Protocols<'a> {
    text: &'a str,
    spans: std::slice::Iter<'a, Span>,
}

impl<'a> Iterator for Protocols<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        Some(self.spans.next()?.get(self.text))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl ExactSizeIterator for Protocols<'_> {}
