//! The client's opening handshake as the server reads it (RFC 6455 section 4.2.1).

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;

use super::extensions::{ExtensionList, Extensions};
use super::fields::{header_spans, parse_head, Fields, HeaderIter};
use super::{HandshakeConfig, HandshakeError, Span, MAX_HEADERS, WEBSOCKET_VERSION};

/// What [`parse_request`] made of the bytes so far.
// Returned once per connection and moved straight out: boxing the request would cost an
// allocation for nothing.
#[allow(clippy::large_enum_variant)]
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
    /// A well-formed HTTP/1.1 request that does not ask for a WebSocket upgrade (no `Upgrade:
    /// websocket`): a page, a health check. The engine hands it to `Handler::on_http`, whose
    /// default answer is gorilla's 400. Its [`Request::key`] is empty.
    Http {
        /// The request.
        request: Request,
        /// Bytes of the buffer the request took (a body, if any, is not read).
        consumed: usize,
    },
}

/// Parses and validates a WebSocket upgrade request from the bytes received so far.
///
/// Checks, in order: size limit (431), HTTP syntax (400), HTTP/1.1 (505), GET (405), request
/// target (400), `Host` (400), `Upgrade: websocket` (400), `Connection: upgrade` (400),
/// `Sec-WebSocket-Version: 13` (426), `Sec-WebSocket-Key` (400). The origin is left to
/// [`check_origin`](super::check_origin).
///
/// The request target (RFC 9112 section 3.2) is a path (origin-form) or an absolute `http`,
/// `https`, `ws` or `wss` URI without user info (absolute-form, which an HTTP/1.1 server must
/// accept): then, as RFC 9112 section 3.2.2 requires and as Go's `net/http` (gorilla) does, the
/// URI's authority is the request's [`host`](Request::host) in place of the `Host` header (which
/// must still be there), so the origin check compares with it, and its path (`/` when empty) and
/// query are [`path`](Request::path) and [`query`](Request::query). The authority-form (only for
/// `CONNECT`) and the asterisk-form (only for `OPTIONS`, so never an upgrade; a plain `OPTIONS *`
/// goes to the application) are refused, as is anything else.
///
/// The answer depends only on the first `cfg.max_request_size` bytes and on whether there are
/// more, so feeding the bytes in any number of pieces gives the same result once it is not
/// `Partial`.
pub fn parse_request(buf: &[u8], cfg: &HandshakeConfig) -> Result<ParseStatus, HandshakeError> {
    let limit = cfg.max_request_size.min(u32::MAX as usize);
    let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut raw = httparse::Request::new(&mut raw_headers);
    let Some((head, consumed)) = parse_head(buf, limit, |w| raw.parse(w))? else {
        return Ok(ParseStatus::Partial);
    };
    let bytes = head.as_bytes();
    // httparse hands out sub-slices of the buffer; keep their positions instead of copies.
    let method = Span::within(bytes, raw.method.unwrap_or(&head[..0]).as_bytes());
    let target = Span::within(bytes, raw.path.unwrap_or(&head[..0]).as_bytes());
    let headers = header_spans(head, raw.headers);
    let fields = Fields {
        text: head,
        spans: &headers,
    };

    // RFC 6455 section 4.1: "The method of the request MUST be GET, and the HTTP version MUST be
    // at least 1.1."
    if raw.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    // "The request MUST contain an |Upgrade| header field whose value MUST include the
    // "websocket" keyword." Without it, this is a plain HTTP request for the application.
    let upgrade = fields.list_contains("Upgrade", "websocket");
    if upgrade && method.get(head) != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    let (authority, target) = match split_target(head, target) {
        Some(t) => t,
        None if !upgrade && method.get(head) == "OPTIONS" && target.get(head) == "*" => {
            (None, target)
        }
        None => return Err(HandshakeError::InvalidTarget),
    };
    // "The request MUST contain a |Host| header field whose value contains /host/ plus optionally
    // ":" followed by /port/".
    let host = match fields.find("Host") {
        (Some(host), 1) if host.start != host.end => host,
        (_, 0 | 1) => return Err(HandshakeError::MissingHost),
        _ => return Err(HandshakeError::DuplicateHeader("Host")),
    };
    // RFC 9112 section 3.2.2: "When an origin server receives a request with an absolute-form of
    // request-target, the origin server MUST ignore the received Host header field (if any) and
    // instead use the host information of the request-target."
    let host = authority.unwrap_or(host);
    if !upgrade {
        let request = build_request(
            head,
            method,
            target,
            headers,
            host,
            Span::new(0, 0),
            consumed,
        );
        return Ok(ParseStatus::Http { request, consumed });
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

    let request = build_request(head, method, target, headers, host, key, consumed);
    Ok(ParseStatus::Complete { request, consumed })
}

/// Splits a request target (RFC 9112 section 3.2) into the authority of an absolute-form (`None`
/// for an origin-form) and its path with the query; `None` for any other form.
fn split_target(head: &str, target: Span) -> Option<(Option<Span>, Span)> {
    let t = target.get(head);
    if t.starts_with('/') {
        return Some((None, target));
    }
    // absolute-URI = scheme ":" hier-part [ "?" query ], with hier-part = "//" authority path.
    let (scheme, rest) = t.split_once("://")?;
    if !["http", "https", "ws", "wss"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        return None;
    }
    let at = target.start as usize + scheme.len() + 3;
    let len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..len];
    // RFC 9110 section 4.2.4: user info in an http(s) URI is treated as an error.
    if authority.is_empty() || authority.contains('@') || rest[len..].starts_with('#') {
        return None;
    }
    Some((
        Some(Span::new(at, at + len)),
        Span::new(at + len, target.end as usize),
    ))
}

/// Builds the owned request: one copy of the header block, spans into it.
fn build_request(
    head: &str,
    method: Span,
    target: Span,
    headers: Vec<(Span, Span)>,
    host: Span,
    key: Span,
    consumed: usize,
) -> Request {
    let (path, query) = match target.get(head).find('?') {
        Some(q) => {
            let q = target.start as usize + q;
            let path = Span::new(target.start as usize, q);
            (path, Some(Span::new(q + 1, target.end as usize)))
        }
        None => (target, None),
    };
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
    let mut text = String::with_capacity(consumed + unescaped.len() + 1);
    text.push_str(head);
    text.push_str(&unescaped);
    // An absolute-form target with an empty path (`http://host` or `http://host?q`) asks for `/`.
    let path = if path.start == path.end {
        text.push('/');
        Span::new(text.len() - 1, text.len())
    } else {
        path
    };

    Request {
        text,
        method,
        path,
        query,
        headers,
        host,
        key,
        extensions,
        peer: None,
        tls: None,
    }
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
    extensions: ExtensionList,
    /// The peer's address; the engine sets it, the parser leaves it `None`.
    pub peer: Option<SocketAddr>,
    /// On a `wss://` listener: the TLS session (the engine sets it).
    pub(crate) tls: Option<Box<crate::tls::TlsInfo>>,
}

impl Request {
    fn fields(&self) -> Fields<'_> {
        Fields {
            text: &self.text,
            spans: &self.headers,
        }
    }

    /// On a TLS listener (`wss://`): the server name the client asked for, the ALPN protocol,
    /// the TLS version. `None` on a plain connection.
    pub fn tls(&self) -> Option<&crate::tls::TlsInfo> {
        self.tls.as_deref()
    }

    /// Whether the request came over TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
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

    /// The decoded value of the first query parameter called `name`
    /// (`application/x-www-form-urlencoded`, as browsers and `URLSearchParams` write it:
    /// percent-escapes decoded, `+` as a space; invalid UTF-8 replaced). A parameter without `=`
    /// has the value `""`.
    ///
    /// ```
    /// # use surge::handshake::{parse_request, HandshakeConfig, ParseStatus};
    /// let raw = b"GET /game?room=blue%20team&token=a+b&debug HTTP/1.1\r\nHost: x\r\n\
    ///     Upgrade: websocket\r\nConnection: Upgrade\r\n\
    ///     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    /// let Ok(ParseStatus::Complete { request, .. }) = parse_request(raw, &HandshakeConfig::default())
    /// else {
    ///     panic!("a valid request")
    /// };
    /// assert_eq!(request.query_param("room").as_deref(), Some("blue team"));
    /// assert_eq!(request.query_param("token").as_deref(), Some("a b"));
    /// assert_eq!(request.query_param("debug").as_deref(), Some(""));
    /// assert_eq!(request.query_param("missing"), None);
    /// ```
    pub fn query_param(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.query_params().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Every query parameter in order, decoded as [`query_param`](Self::query_param) does.
    pub fn query_params(
        &self,
    ) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
        form_urlencoded::parse(self.query().unwrap_or("").as_bytes())
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

    /// The host the request is for: the `Host` header, or the authority of an absolute-form
    /// target (`GET http://host:port/path HTTP/1.1`), which RFC 9112 section 3.2.2 puts in its
    /// place (`header("Host")` still gives the header).
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
            headers: self.headers.iter(),
            items: None,
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

/// The subprotocols a client offers, read from the header block as they are asked for.
#[derive(Clone, Debug)]
pub struct Protocols<'a> {
    text: &'a str,
    headers: std::slice::Iter<'a, (Span, Span)>,
    /// The rest of the `Sec-WebSocket-Protocol` header being read.
    items: Option<std::str::Split<'a, char>>,
}

impl<'a> Iterator for Protocols<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if let Some(items) = &mut self.items {
                // RFC 7230 section 7: empty list elements are ignored.
                let item = items.find(|i| !i.trim_matches([' ', '\t']).is_empty());
                if let Some(item) = item {
                    return Some(item.trim_matches([' ', '\t']));
                }
            }
            let text = self.text;
            let &(_, value) = self
                .headers
                .find(|(n, _)| n.get(text).eq_ignore_ascii_case("Sec-WebSocket-Protocol"))?;
            self.items = Some(value.get(text).split(','));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{check_origin, OriginPolicy};
    use super::*;

    const CHROME: &str = "GET /chat?room=1&x=y HTTP/1.1\r\n\
        Host: example.com:8080\r\n\
        Connection: Upgrade\r\n\
        Pragma: no-cache\r\n\
        Cache-Control: no-cache\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36\r\n\
        Upgrade: websocket\r\n\
        Origin: http://example.com:8080\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br\r\n\
        Accept-Language: en-US,en;q=0.9\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        \r\n";

    fn cfg() -> HandshakeConfig {
        HandshakeConfig::default()
    }

    fn parse(text: &str) -> Result<Request, HandshakeError> {
        match parse_request(text.as_bytes(), &cfg())? {
            ParseStatus::Complete { request, consumed } => {
                assert_eq!(consumed, text.len());
                Ok(request)
            }
            ParseStatus::Partial => panic!("partial: {text:?}"),
            ParseStatus::Http { .. } => panic!("not an upgrade: {text:?}"),
        }
    }

    /// A minimal valid request with one header line replaced (or removed when `value` is None).
    fn with_header(name: &str, value: Option<&str>) -> String {
        let mut lines = vec![
            ("Host", "server.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        lines.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            lines.push((name, v));
        }
        let mut s = String::from("GET /chat HTTP/1.1\r\n");
        for (n, v) in lines {
            s += &format!("{n}: {v}\r\n");
        }
        s + "\r\n"
    }

    #[test]
    fn chrome_request_parses() {
        let req = parse(CHROME).unwrap();
        assert_eq!(req.method(), "GET");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1&x=y"));
        assert_eq!(req.host(), "example.com:8080");
        assert_eq!(req.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.header("sec-websocket-version"), Some("13"));
        assert_eq!(req.header("ACCEPT-ENCODING"), Some("gzip, deflate, br"));
        assert_eq!(req.header("X-Missing"), None);
        assert_eq!(req.headers().len(), 13);
        assert_eq!(req.headers().next(), Some(("Host", "example.com:8080")));
        assert_eq!(req.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
        let exts: Vec<_> = req.extensions().collect();
        assert_eq!(exts.len(), 1);
        assert_eq!(exts[0].name(), "permessage-deflate");
        assert_eq!(exts[0].param("client_max_window_bits"), Some(None));
        assert_eq!(req.peer(), None);
        assert_eq!(check_origin(&req, &cfg()), Ok(()));
    }

    #[test]
    fn peer_is_set_by_the_engine() {
        let mut req = parse(CHROME).unwrap();
        let addr: SocketAddr = "192.0.2.1:4567".parse().unwrap();
        req.peer = Some(addr);
        assert_eq!(req.peer(), Some(addr));
    }

    #[test]
    fn no_query_and_empty_query() {
        assert_eq!(parse(&with_header("X", None)).unwrap().query(), None);
        let req = parse(&with_header("X", None).replace("/chat", "/a?")).unwrap();
        assert_eq!((req.path(), req.query()), ("/a", Some("")));
    }

    #[test]
    fn partial_at_every_split_then_complete_with_trailing_bytes() {
        let frame = [0x81u8, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut bytes = CHROME.as_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        let whole = parse_request(&bytes, &cfg()).unwrap();
        let ParseStatus::Complete { request, consumed } = &whole else {
            panic!("not complete")
        };
        assert_eq!(*consumed, CHROME.len());
        assert_eq!(&bytes[*consumed..], frame);
        assert_eq!(request, &parse(CHROME).unwrap());
        for split in 0..bytes.len() {
            let got = parse_request(&bytes[..split], &cfg()).unwrap();
            if split < CHROME.len() {
                assert_eq!(got, ParseStatus::Partial, "split {split}");
            } else {
                let ParseStatus::Complete { consumed, .. } = got else {
                    panic!("split {split}")
                };
                assert_eq!(consumed, CHROME.len());
            }
        }
    }

    /// `with_header` with the request target `target`.
    fn with_target(target: &str) -> String {
        with_header("X", None).replace("GET /chat ", &format!("GET {target} "))
    }

    #[test]
    fn absolute_form_target_names_the_host() {
        let req = parse(&with_target("http://Other.example:8080/chat/x?room=1")).unwrap();
        assert_eq!(req.host(), "Other.example:8080");
        assert_eq!(req.header("Host"), Some("server.example.com"));
        assert_eq!((req.path(), req.query()), ("/chat/x", Some("room=1")));
        let cases = [
            ("ws://h", "h", "/", None),
            ("WSS://h:443?x=1", "h:443", "/", Some("x=1")),
            ("https://[::1]:9000/", "[::1]:9000", "/", None),
            ("HTTP://h/?", "h", "/", Some("")),
        ];
        for (target, host, path, query) in cases {
            let req = parse(&with_target(target)).unwrap();
            assert_eq!(
                (req.host(), req.path(), req.query()),
                (host, path, query),
                "{target}"
            );
        }
        // The Host header is still required (RFC 9112 section 3.2).
        let req = with_header("Host", None).replace("/chat", "http://h/chat");
        assert_eq!(parse(&req).unwrap_err(), HandshakeError::MissingHost);
        // A plain HTTP request too.
        let req = with_target("http://h/page?a").replace("Upgrade: websocket\r\n", "");
        let ParseStatus::Http { request, .. } = parse_request(req.as_bytes(), &cfg()).unwrap()
        else {
            panic!("not plain HTTP")
        };
        assert_eq!(
            (request.host(), request.path(), request.query()),
            ("h", "/page", Some("a"))
        );
    }

    #[test]
    fn other_target_forms_are_400() {
        let targets = [
            "*",              // asterisk-form (OPTIONS only)
            "example.com:80", // authority-form (CONNECT only)
            "example.com",    // relative
            "chat",           // relative
            "ftp://h/chat",   // not an HTTP or WebSocket URI
            "http:/chat",     // no authority
            "http:///chat",   // empty authority
            "http://u:p@h/",  // user info
            "http://h#f",     // fragment
            "mailto:a@b",     // no hier-part
        ];
        for target in targets {
            let err = parse(&with_target(target)).unwrap_err();
            assert_eq!(err, HandshakeError::InvalidTarget, "{target}");
            assert_eq!(err.status(), 400);
            // Plain HTTP requests alike.
            let plain = with_target(target).replace("Upgrade: websocket\r\n", "");
            assert_eq!(
                parse_request(plain.as_bytes(), &cfg()),
                Err(HandshakeError::InvalidTarget),
                "{target}"
            );
        }
        // Except `OPTIONS *`, which is not an upgrade: it goes to the application.
        let req = with_target("*")
            .replace("GET ", "OPTIONS ")
            .replace("Upgrade: websocket\r\n", "");
        let ParseStatus::Http { request, .. } = parse_request(req.as_bytes(), &cfg()).unwrap()
        else {
            panic!("not plain HTTP")
        };
        assert_eq!((request.method(), request.path()), ("OPTIONS", "*"));
        // An OPTIONS * upgrade is refused for its method.
        let req = with_target("*").replace("GET ", "OPTIONS ");
        assert_eq!(parse(&req).unwrap_err(), HandshakeError::MethodNotAllowed);
    }

    #[test]
    fn method_not_get_is_405_with_allow() {
        let req = with_header("X", None).replace("GET ", "POST ");
        let err = parse(&req).unwrap_err();
        assert_eq!(err, HandshakeError::MethodNotAllowed);
        let rej = err.to_rejection();
        assert_eq!(rej.status, 405);
        assert_eq!(rej.headers, [("Allow".to_string(), "GET".to_string())]);
    }

    #[test]
    fn http_1_0_is_505() {
        let req = with_header("X", None).replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(parse(&req).unwrap_err().status(), 505);
    }

    #[test]
    fn version_missing_or_not_13_is_426_with_header() {
        for v in [None, Some("8"), Some("13, 8"), Some("")] {
            let err = parse(&with_header("Sec-WebSocket-Version", v)).unwrap_err();
            assert_eq!(err, HandshakeError::UnsupportedVersion, "{v:?}");
            let rej = err.to_rejection();
            assert_eq!(rej.status, 426);
            assert!(rej
                .headers
                .contains(&("Sec-WebSocket-Version".into(), "13".into())));
        }
    }

    #[test]
    fn bad_keys_are_400() {
        let cases = [
            (None, HandshakeError::MissingKey),
            (Some("not base64 at all!!!!!!!"), HandshakeError::InvalidKey),
            (Some("!!!!!!!!!!!!!!!!!!!!!!=="), HandshakeError::InvalidKey),
            // 15 bytes, 16 bytes unpadded, 17 bytes
            (Some("AAAAAAAAAAAAAAAAAAAA"), HandshakeError::InvalidKey),
            (Some("AAAAAAAAAAAAAAAAAAAAAA"), HandshakeError::InvalidKey),
            (Some("AAAAAAAAAAAAAAAAAAAAAAA="), HandshakeError::InvalidKey),
            (Some(""), HandshakeError::InvalidKey),
        ];
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode("AAAAAAAAAAAAAAAAAAAAAAA=")
                .unwrap()
                .len(),
            17
        );
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode("AAAAAAAAAAAAAAAAAAAA")
                .unwrap()
                .len(),
            15
        );
        for (key, want) in cases {
            let err = parse(&with_header("Sec-WebSocket-Key", key)).unwrap_err();
            assert_eq!(err, want, "{key:?}");
            assert_eq!(err.status(), 400);
        }
        let twice = with_header("X", None).replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert_eq!(
            parse(&twice).unwrap_err(),
            HandshakeError::DuplicateHeader("Sec-WebSocket-Key")
        );
    }

    #[test]
    fn missing_host_is_400() {
        let err = parse(&with_header("Host", None)).unwrap_err();
        assert_eq!((err, err.status()), (HandshakeError::MissingHost, 400));
        let err = parse(&with_header("Host", Some(""))).unwrap_err();
        assert_eq!(err, HandshakeError::MissingHost);
        let twice = with_header("X", None).replace("\r\n\r\n", "\r\nHost: other\r\n\r\n");
        assert_eq!(parse(&twice).unwrap_err().status(), 400);
    }

    #[test]
    fn upgrade_header_rules() {
        // Without `Upgrade: websocket` it is a plain HTTP request, for the application.
        for plain in [None, Some("h2c"), Some("websockets"), Some("")] {
            let text = with_header("Upgrade", plain);
            match parse_request(text.as_bytes(), &cfg()) {
                Ok(ParseStatus::Http { request, consumed }) => {
                    assert_eq!(consumed, text.len());
                    assert_eq!(
                        (request.method(), request.path(), request.key()),
                        ("GET", "/chat", "")
                    );
                }
                other => panic!("{plain:?}: {other:?}"),
            }
        }
        // Any method may ask for a page; only upgrades must be GET.
        let post = "POST /form?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        let Ok(ParseStatus::Http { request, .. }) = parse_request(post.as_bytes(), &cfg()) else {
            panic!("POST page")
        };
        assert_eq!(
            (request.method(), request.path(), request.query()),
            ("POST", "/form", Some("x=1"))
        );
        for good in ["WebSocket", "h2c, websocket", "foo,WEBSOCKET"] {
            assert!(parse(&with_header("Upgrade", Some(good))).is_ok(), "{good}");
        }
    }

    #[test]
    fn connection_header_rules() {
        for bad in [None, Some("keep-alive"), Some("upgrades"), Some("close")] {
            let err = parse(&with_header("Connection", bad)).unwrap_err();
            assert_eq!(err, HandshakeError::ConnectionNotUpgrade, "{bad:?}");
            assert_eq!(err.status(), 400);
        }
        for good in ["keep-alive, Upgrade", "UPGRADE", "upgrade,keep-alive"] {
            assert!(
                parse(&with_header("Connection", Some(good))).is_ok(),
                "{good}"
            );
        }
        // Two Connection headers: the token may be in either.
        let two = with_header("Connection", Some("keep-alive"))
            .replace("\r\n\r\n", "\r\nConnection: upgrade\r\n\r\n");
        assert!(parse(&two).is_ok());
    }

    #[test]
    fn malformed_http_is_400() {
        for bad in [
            "GET /chat HTTP/1.1\r\nHost example.com\r\n\r\n",
            "GET /chat HTTP/9.9\r\n\r\n",
            "GET\r\n\r\n",
            "\x01\x02\x03\r\n\r\n",
            "GET /chat HTTP/1.1\r\nHo st: x\r\n\r\n",
        ] {
            let err = parse_request(bad.as_bytes(), &cfg()).unwrap_err();
            assert!(
                matches!(err, HandshakeError::Malformed(_)),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.status(), 400);
        }
        let base = with_header("X", None);
        let latin1 = [
            &base.as_bytes()[..base.len() - 2],
            b"X-Name: caf\xe9\r\n\r\n",
        ]
        .concat();
        assert_eq!(parse_request(&latin1, &cfg()), Err(HandshakeError::NotUtf8));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut req = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            req += &format!("X-{i}: y\r\n");
        }
        req += "\r\n";
        let err = parse_request(req.as_bytes(), &cfg()).unwrap_err();
        assert_eq!((err, err.status()), (HandshakeError::TooManyHeaders, 431));
    }

    #[test]
    fn oversize_is_431_complete_or_not() {
        let small = HandshakeConfig {
            max_request_size: 200,
            ..cfg()
        };
        let long = with_header("X-Padding", Some(&"a".repeat(200)));
        // Complete but too long.
        let err = parse_request(long.as_bytes(), &small).unwrap_err();
        assert_eq!(err, HandshakeError::RequestTooLarge { limit: 200 });
        assert_eq!(err.status(), 431);
        // Incomplete and already too long.
        let err = parse_request(&long.as_bytes()[..201], &small).unwrap_err();
        assert_eq!(err.status(), 431);
        // Exactly at the limit and incomplete: wait for more.
        assert_eq!(
            parse_request(&long.as_bytes()[..200], &small),
            Ok(ParseStatus::Partial)
        );
        // A request within the limit followed by many frame bytes is fine.
        let ok = with_header("X", None);
        let mut bytes = ok.clone().into_bytes();
        bytes.extend_from_slice(&[0u8; 10_000]);
        let got = parse_request(&bytes, &small).unwrap();
        assert!(matches!(got, ParseStatus::Complete { consumed, .. } if consumed == ok.len()));
        // The default limit is 8 KiB.
        let big = with_header("X-Padding", Some(&"a".repeat(8192)));
        assert_eq!(
            parse_request(big.as_bytes(), &cfg()).unwrap_err(),
            HandshakeError::RequestTooLarge { limit: 8192 }
        );
    }

    #[test]
    fn origin_policies() {
        let cross = parse(&with_header("Origin", Some("https://evil.example"))).unwrap();
        let err = check_origin(&cross, &cfg()).unwrap_err();
        assert_eq!((err, err.status()), (HandshakeError::OriginRejected, 403));

        let no_origin = parse(&with_header("Origin", None)).unwrap();
        assert_eq!(check_origin(&no_origin, &cfg()), Ok(()));

        let same = with_header("Origin", Some("http://SERVER.example.com:8080"))
            .replace("Host: server.example.com", "Host: server.Example.COM:8080");
        assert_eq!(check_origin(&parse(&same).unwrap(), &cfg()), Ok(()));
        let other_port = with_header("Origin", Some("http://server.example.com:9090"))
            .replace("Host: server.example.com", "Host: server.example.com:8080");
        assert!(check_origin(&parse(&other_port).unwrap(), &cfg()).is_err());
        let default_port = with_header("Origin", Some("https://server.example.com"))
            .replace("Host: server.example.com", "Host: server.example.com:443");
        assert_eq!(check_origin(&parse(&default_port).unwrap(), &cfg()), Ok(()));

        let allow_all = HandshakeConfig {
            origin: OriginPolicy::AllowAll,
            ..cfg()
        };
        assert_eq!(check_origin(&cross, &allow_all), Ok(()));

        let custom = HandshakeConfig {
            origin: OriginPolicy::Custom(Arc::new(|req: &Request| {
                req.header("Origin")
                    .is_some_and(|o| o.ends_with(".evil.example") || o == "https://evil.example")
            })),
            ..cfg()
        };
        assert_eq!(check_origin(&cross, &custom), Ok(()));
        assert!(check_origin(&no_origin, &custom).is_err());
        assert_eq!(format!("{:?}", custom.origin), "Custom(..)");
    }

    #[test]
    fn subprotocol_selection_follows_server_preference() {
        let req = with_header("Sec-WebSocket-Protocol", Some("v1.chat, v2.chat")).replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Protocol: mqtt,, wamp\r\n\r\n",
        );
        let req = parse(&req).unwrap();
        assert_eq!(
            req.protocols().collect::<Vec<_>>(),
            ["v1.chat", "v2.chat", "mqtt", "wamp"]
        );
        assert_eq!(req.select_subprotocol(&["wamp", "v1.chat"]), Some("wamp"));
        assert_eq!(
            req.select_subprotocol(&["v2.chat", "wamp"]),
            Some("v2.chat")
        );
        assert_eq!(
            req.select_subprotocol(&["x".to_string(), "mqtt".to_string()]),
            Some("mqtt")
        );
        assert_eq!(req.select_subprotocol(&["V1.CHAT"]), None);
        assert_eq!(req.select_subprotocol::<&str>(&[]), None);
        let none = parse(&with_header("X", None)).unwrap();
        assert_eq!(none.select_subprotocol(&["chat"]), None);
    }

    #[test]
    fn extension_offers_across_headers_and_bad_syntax_ignored() {
        let req = with_header(
            "Sec-WebSocket-Extensions",
            Some("permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=10"),
        )
        .replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: broken;;\r\n\
             Sec-WebSocket-Extensions: x-custom; mode=\"fa\\st\"\r\n\r\n",
        );
        let req = parse(&req).unwrap();
        type Offer<'a> = (&'a str, Vec<(&'a str, Option<&'a str>)>);
        let got: Vec<Offer> = req
            .extensions()
            .map(|e| (e.name(), e.params().collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("permessage-deflate", vec![("client_max_window_bits", None)]),
                (
                    "permessage-deflate",
                    vec![("server_max_window_bits", Some("10"))]
                ),
                ("x-custom", vec![("mode", Some("fast"))]),
            ]
        );
    }

    #[test]
    fn error_bodies_say_what_was_wrong() {
        let err = parse(&with_header("Connection", None)).unwrap_err();
        let body = String::from_utf8(err.to_rejection().body).unwrap();
        assert!(
            body.contains("'upgrade' token not found in 'Connection' header"),
            "{body}"
        );
        let e: &dyn std::error::Error = &err;
        assert!(e.to_string().starts_with("websocket: "));
    }
}
