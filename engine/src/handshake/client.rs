//! The client's side of the opening handshake (RFC 6455 sections 4.1 and 4.2.2): write the
//! upgrade request, then check the server's response.
//!
//! ```text
//! ClientRequest::write(&mut out) -> ExpectedResponse
//! parse_response(bytes so far, &expected) -> Partial | Complete { response, consumed }
//! ```

use std::error::Error;
use std::fmt;

use base64::Engine as _;

use super::extensions::{ExtensionList, Extensions};
use super::fields::{header_spans, parse_head, Fields, HeaderIter};
use super::response::{header, push_decimal};
use super::{accept_key, Span, DEFAULT_MAX_HEAD_SIZE, MAX_HEADERS, WEBSOCKET_VERSION};

/// A client upgrade request, built up and then written with [`write`](ClientRequest::write).
#[derive(Clone, Debug)]
pub struct ClientRequest {
    host: String,
    port: u16,
    secure: bool,
    path: String,
    protocols: Vec<String>,
    extensions: Option<String>,
    headers: Vec<(String, String)>,
    max_response_size: usize,
}

impl ClientRequest {
    /// A request for `ws://host:port/path` (`path` may carry a `?query`; empty means `/`).
    pub fn new(host: impl Into<String>, port: u16, path: impl Into<String>) -> ClientRequest {
        ClientRequest {
            host: host.into(),
            port,
            secure: false,
            path: path.into(),
            protocols: Vec::new(),
            extensions: None,
            headers: Vec::new(),
            max_response_size: DEFAULT_MAX_HEAD_SIZE,
        }
    }

    /// `wss`: only changes which port the `Host` header leaves implicit (443 instead of 80).
    pub fn secure(mut self, secure: bool) -> ClientRequest {
        self.secure = secure;
        self
    }

    /// Offers a subprotocol; call again for more, in order of preference.
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> ClientRequest {
        self.protocols.push(protocol.into());
        self
    }

    /// The `Sec-WebSocket-Extensions` offer, e.g. `permessage-deflate; client_max_window_bits`.
    pub fn extensions(mut self, offer: impl Into<String>) -> ClientRequest {
        self.extensions = Some(offer.into());
        self
    }

    /// An extra request header (`Origin`, `Cookie`, ...). Must not contain CR or LF.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> ClientRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Largest response header block accepted (default 8 KiB).
    pub fn max_response_size(mut self, limit: usize) -> ClientRequest {
        self.max_response_size = limit;
        self
    }

    /// Appends the request with a fresh random key ("a randomly selected 16-byte value",
    /// RFC 6455 section 4.1) and returns what the response must match.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<ExpectedResponse, getrandom::Error> {
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce)?;
        Ok(self.write_with_nonce(out, nonce))
    }

    /// [`write`](ClientRequest::write) with a given nonce, for reproducible tests.
    pub fn write_with_nonce(&self, out: &mut Vec<u8>, nonce: [u8; 16]) -> ExpectedResponse {
        let mut key = [0u8; 24];
        base64::engine::general_purpose::STANDARD
            .encode_slice(nonce, &mut key)
            .expect("16 bytes encode to 24 base64 characters");
        let key = std::str::from_utf8(&key).expect("base64 is ASCII");

        out.extend_from_slice(b"GET ");
        out.extend_from_slice(
            if self.path.is_empty() {
                "/"
            } else {
                &self.path
            }
            .as_bytes(),
        );
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        // An IPv6 literal needs brackets to carry a port.
        let bracket = self.host.contains(':') && !self.host.starts_with('[');
        if bracket {
            out.push(b'[');
        }
        out.extend_from_slice(self.host.as_bytes());
        if bracket {
            out.push(b']');
        }
        if self.port != if self.secure { 443 } else { 80 } {
            out.push(b':');
            push_decimal(out, u64::from(self.port));
        }
        out.extend_from_slice(b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
        header(out, "Sec-WebSocket-Key", key);
        header(out, "Sec-WebSocket-Version", WEBSOCKET_VERSION);
        if !self.protocols.is_empty() {
            header(out, "Sec-WebSocket-Protocol", &self.protocols.join(", "));
        }
        let mut extensions = Vec::new();
        if let Some(offer) = &self.extensions {
            header(out, "Sec-WebSocket-Extensions", offer);
            let mut list = ExtensionList::default();
            list.parse_header(
                offer,
                Span::new(0, offer.len()),
                &mut String::new(),
                offer.len(),
            );
            extensions = list.iter(offer).map(|e| e.name().to_owned()).collect();
        }
        for (name, value) in &self.headers {
            header(out, name, value);
        }
        out.extend_from_slice(b"\r\n");

        ExpectedResponse {
            key: key.to_owned(),
            accept: accept_key(key.as_bytes()),
            protocols: self.protocols.clone(),
            extensions,
            max_response_size: self.max_response_size,
        }
    }
}

/// What the server's response must match: the accept value for the key sent, and the
/// subprotocols and extensions offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedResponse {
    key: String,
    accept: [u8; 28],
    protocols: Vec<String>,
    extensions: Vec<String>,
    max_response_size: usize,
}

impl ExpectedResponse {
    /// The `Sec-WebSocket-Key` sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The `Sec-WebSocket-Accept` the server must send back.
    pub fn accept(&self) -> &str {
        std::str::from_utf8(&self.accept).expect("base64 is ASCII")
    }
}

/// What [`parse_response`] made of the bytes so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseStatus {
    /// The header block is not complete yet: read more and call again with all bytes so far.
    Partial,
    /// The server accepted. The response took the first `consumed` bytes; the rest, if any, is
    /// the start of the WebSocket stream.
    Complete {
        /// The response.
        response: Response,
        /// Bytes of the buffer the response took.
        consumed: usize,
    },
}

/// A server's `101 Switching Protocols` response that matched the request.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    text: String,
    headers: Vec<(Span, Span)>,
    protocol: Option<Span>,
    extensions: ExtensionList,
}

impl Response {
    fn fields(&self) -> Fields<'_> {
        Fields {
            text: &self.text,
            spans: &self.headers,
        }
    }

    /// The value of the first header called `name` (ASCII case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.fields().get(name)
    }

    /// All headers as received.
    pub fn headers(&self) -> HeaderIter<'_> {
        self.fields().iter()
    }

    /// The subprotocol the server selected, one of those offered.
    pub fn subprotocol(&self) -> Option<&str> {
        self.protocol.map(|p| p.get(&self.text))
    }

    /// The extensions the server accepted, each one of those offered, with their parameters.
    pub fn extensions(&self) -> Extensions<'_> {
        self.extensions.iter(&self.text)
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("headers", &self.headers().collect::<Vec<_>>())
            .finish()
    }
}

/// Why the client refuses the server's response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// The response header block goes past the limit.
    ResponseTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More header fields than [`MAX_HEADERS`].
    TooManyHeaders,
    /// Not an HTTP/1.x response.
    Malformed(&'static str),
    /// The response head is not valid UTF-8.
    NotUtf8,
    /// The server answered with another status than 101: it refused the upgrade. The headers
    /// are kept for the caller to report (e.g. `Location`, `Sec-WebSocket-Version`).
    Refused {
        /// The status code, e.g. 403.
        status: u16,
        /// The response's headers.
        headers: Vec<(String, String)>,
    },
    /// "If the response lacks an |Upgrade| header field or the |Upgrade| header field contains a
    /// value that is not an ASCII case-insensitive match for the value "websocket", the client
    /// MUST _Fail the WebSocket Connection_."
    UpgradeNotWebSocket,
    /// The same for `Connection: Upgrade`.
    ConnectionNotUpgrade,
    /// No `Sec-WebSocket-Accept`.
    MissingAccept,
    /// `Sec-WebSocket-Accept` does not match the key sent.
    AcceptMismatch,
    /// A header that must appear at most once appears several times.
    DuplicateHeader(&'static str),
    /// The server selected a subprotocol the client did not offer.
    UnexpectedSubprotocol,
    /// The server accepted an extension the client did not offer.
    UnexpectedExtension,
    /// `Sec-WebSocket-Extensions` does not parse.
    InvalidExtensions,
    /// The server's permessage-deflate parameters answer the offer wrongly (RFC 7692 section 5:
    /// the client "MUST _Fail the WebSocket Connection_").
    Deflate(super::deflate_negotiation::DeflateResponseError),
}

impl ClientHandshakeError {
    /// The HTTP status of a refusal; `None` for the other errors.
    pub fn refused_status(&self) -> Option<u16> {
        match self {
            ClientHandshakeError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ClientHandshakeError::*;
        match self {
            ResponseTooLarge { limit } => {
                write!(
                    f,
                    "websocket: response header block larger than {limit} bytes"
                )
            }
            TooManyHeaders => write!(f, "websocket: more than {MAX_HEADERS} response headers"),
            Malformed(what) => write!(f, "websocket: malformed HTTP response: {what}"),
            NotUtf8 => f.write_str("websocket: response head is not valid UTF-8"),
            Refused { status, .. } => write!(
                f,
                "websocket: handshake refused with {status} {}",
                super::reason_phrase(*status)
            ),
            UpgradeNotWebSocket => {
                f.write_str("websocket: 'Upgrade: websocket' missing in response")
            }
            ConnectionNotUpgrade => {
                f.write_str("websocket: 'Connection: upgrade' missing in response")
            }
            MissingAccept => f.write_str("websocket: 'Sec-WebSocket-Accept' missing in response"),
            AcceptMismatch => {
                f.write_str("websocket: 'Sec-WebSocket-Accept' does not match the key")
            }
            DuplicateHeader(name) => {
                write!(f, "websocket: '{name}' appears more than once in response")
            }
            UnexpectedSubprotocol => {
                f.write_str("websocket: server selected a subprotocol not offered")
            }
            UnexpectedExtension => {
                f.write_str("websocket: server accepted an extension not offered")
            }
            InvalidExtensions => {
                f.write_str("websocket: bad 'Sec-WebSocket-Extensions' in response")
            }
            Deflate(e) => write!(f, "websocket: {e}"),
        }
    }
}

impl Error for ClientHandshakeError {}

/// Parses and checks the server's response to the request that returned `expected`.
///
/// Like the server's [`parse_request`](super::parse_request), the answer depends only on the
/// first `max_response_size` bytes and on whether there are more.
pub fn parse_response(
    buf: &[u8],
    expected: &ExpectedResponse,
) -> Result<ResponseStatus, ClientHandshakeError> {
    use ClientHandshakeError as E;
    let limit = expected.max_response_size.min(u32::MAX as usize);
    let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut raw = httparse::Response::new(&mut raw_headers);
    let Some((head, consumed)) = parse_head(buf, limit, |w| raw.parse(w))? else {
        return Ok(ResponseStatus::Partial);
    };
    let headers = header_spans(head, raw.headers);
    let fields = Fields {
        text: head,
        spans: &headers,
    };

    // RFC 6455 section 4.1: "If the status code received from the server is not 101, the client
    // handles the response per HTTP procedures."
    let status = raw.code.unwrap_or_default();
    if status != 101 {
        let headers = fields
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        return Err(E::Refused { status, headers });
    }
    if !fields.list_contains("Upgrade", "websocket") {
        return Err(E::UpgradeNotWebSocket);
    }
    if !fields.list_contains("Connection", "upgrade") {
        return Err(E::ConnectionNotUpgrade);
    }
    // "If the response lacks a |Sec-WebSocket-Accept| header field or the
    // |Sec-WebSocket-Accept| contains a value other than the base64-encoded SHA-1 of the
    // concatenation of the |Sec-WebSocket-Key| (as a string, not base64-decoded) with the string
    // "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" ... the client MUST _Fail the WebSocket
    // Connection_."
    match fields.find("Sec-WebSocket-Accept") {
        (None, _) => return Err(E::MissingAccept),
        (Some(a), 1) if a.get(head).as_bytes() == expected.accept => {}
        (Some(_), 1) => return Err(E::AcceptMismatch),
        _ => return Err(E::DuplicateHeader("Sec-WebSocket-Accept")),
    }
    // "If the response includes a |Sec-WebSocket-Protocol| header field and this header field
    // indicates the use of a subprotocol that was not present in the client's handshake ... the
    // client MUST _Fail the WebSocket Connection_."
    let protocols = fields.list_spans("Sec-WebSocket-Protocol");
    let protocol = match protocols[..] {
        [] => None,
        [p] if expected.protocols.iter().any(|o| o == p.get(head)) => Some(p),
        _ => return Err(E::UnexpectedSubprotocol),
    };
    // "If the response includes a |Sec-WebSocket-Extensions| header field and this header field
    // indicates the use of an extension that was not present in the client's handshake ... the
    // client MUST _Fail the WebSocket Connection_."
    let mut extensions = ExtensionList::default();
    let mut unescaped = String::new();
    for &(name, value) in &headers {
        if name
            .get(head)
            .eq_ignore_ascii_case("Sec-WebSocket-Extensions")
            && !extensions.parse_header(head, value, &mut unescaped, consumed)
        {
            return Err(E::InvalidExtensions);
        }
    }
    let mut text = String::with_capacity(consumed + unescaped.len());
    text.push_str(head);
    text.push_str(&unescaped);
    if extensions
        .iter(&text)
        .any(|e| !expected.extensions.iter().any(|o| o == e.name()))
    {
        return Err(E::UnexpectedExtension);
    }
    Ok(ResponseStatus::Complete {
        response: Response {
            text,
            headers,
            protocol,
            extensions,
        },
        consumed,
    })
}

#[cfg(any(test, fuzzing))]
/// Checks one fuzz input as a server response: no panic, `consumed <= len`, and the same result
/// when a prefix (at a position derived from the input) is fed first.
#[doc(hidden)]
pub fn fuzz_check_response(data: &[u8]) {
    let expected = ClientRequest::new("example.com", 80, "/")
        .subprotocol("chat")
        .extensions("permessage-deflate; client_max_window_bits")
        .max_response_size(1024)
        .write_with_nonce(&mut Vec::new(), *b"the sample nonce");
    let whole = parse_response(data, &expected);
    if let Ok(ResponseStatus::Complete { response, consumed }) = &whole {
        assert!(*consumed <= data.len());
        let _ = (response.subprotocol(), response.extensions().count());
    }
    let pos = match data {
        [a, b, ..] => (usize::from(*a) << 8 | usize::from(*b)) % (data.len() + 1),
        _ => 0,
    };
    match parse_response(&data[..pos], &expected) {
        Ok(ResponseStatus::Partial) => {}
        early => assert_eq!(early, whole, "split at {pos} changed the result"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{
        check_origin, parse_request, write_accept_response, write_rejection, HandshakeConfig,
        HandshakeError, ParseStatus,
    };

    const NONCE: [u8; 16] = *b"the sample nonce";

    fn request() -> ClientRequest {
        ClientRequest::new("example.com", 8080, "/chat?room=1")
            .subprotocol("v2.chat")
            .subprotocol("v1.chat")
            .extensions("permessage-deflate; client_max_window_bits")
            .header("Origin", "http://example.com:8080")
    }

    fn expected() -> ExpectedResponse {
        request().write_with_nonce(&mut Vec::new(), NONCE)
    }

    fn response(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
    }

    fn parse(text: &str) -> Result<Response, ClientHandshakeError> {
        match parse_response(text.as_bytes(), &expected())? {
            ResponseStatus::Complete { response, consumed } => {
                assert_eq!(consumed, text.len());
                Ok(response)
            }
            ResponseStatus::Partial => panic!("partial"),
        }
    }

    #[test]
    fn request_has_the_required_headers() {
        let mut out = Vec::new();
        let exp = request().write_with_nonce(&mut out, NONCE);
        assert_eq!(exp.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(exp.accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /chat?room=1 HTTP/1.1\r\n\
             Host: example.com:8080\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: v2.chat, v1.chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
             Origin: http://example.com:8080\r\n\
             \r\n"
        );
    }

    #[test]
    fn host_header_forms_and_random_keys() {
        let host = |req: ClientRequest| {
            let mut out = Vec::new();
            req.write(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            text.lines().nth(1).unwrap().to_owned()
        };
        assert_eq!(
            host(ClientRequest::new("a.example", 80, "")),
            "Host: a.example"
        );
        assert_eq!(
            host(ClientRequest::new("a.example", 443, "/").secure(true)),
            "Host: a.example"
        );
        assert_eq!(
            host(ClientRequest::new("a.example", 443, "/")),
            "Host: a.example:443"
        );
        assert_eq!(
            host(ClientRequest::new("::1", 9000, "/")),
            "Host: [::1]:9000"
        );
        let a = ClientRequest::new("h", 80, "/")
            .write(&mut Vec::new())
            .unwrap();
        let b = ClientRequest::new("h", 80, "/")
            .write(&mut Vec::new())
            .unwrap();
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key().len(), 24);
    }

    #[test]
    fn good_response() {
        let resp = parse(&response(
            "Sec-WebSocket-Protocol: v1.chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12\r\n",
        ))
        .unwrap();
        assert_eq!(resp.subprotocol(), Some("v1.chat"));
        let ext = resp.extensions().next().unwrap();
        assert_eq!(ext.name(), "permessage-deflate");
        assert_eq!(ext.param("client_max_window_bits"), Some(Some("12")));
        assert_eq!(resp.header("upgrade"), Some("websocket"));
        assert_eq!(resp.headers().len(), 5);
        let bare = parse(&response("")).unwrap();
        assert_eq!(bare.subprotocol(), None);
        assert_eq!(bare.extensions().len(), 0);
    }

    #[test]
    fn bad_responses() {
        use ClientHandshakeError as E;
        let wrong_accept = response("").replace("xOo=", "xOp=");
        assert_eq!(parse(&wrong_accept).unwrap_err(), E::AcceptMismatch);
        let no_accept = response("").replace("Sec-WebSocket-Accept", "X-Accept");
        assert_eq!(parse(&no_accept).unwrap_err(), E::MissingAccept);
        let no_upgrade = response("").replace("Upgrade: websocket\r\n", "");
        assert_eq!(parse(&no_upgrade).unwrap_err(), E::UpgradeNotWebSocket);
        let no_connection = response("").replace("Connection: Upgrade", "Connection: close");
        assert_eq!(parse(&no_connection).unwrap_err(), E::ConnectionNotUpgrade);
        let unknown_protocol = response("Sec-WebSocket-Protocol: mqtt\r\n");
        assert_eq!(
            parse(&unknown_protocol).unwrap_err(),
            E::UnexpectedSubprotocol
        );
        let two_protocols = response("Sec-WebSocket-Protocol: v1.chat, v2.chat\r\n");
        assert_eq!(parse(&two_protocols).unwrap_err(), E::UnexpectedSubprotocol);
        let unknown_ext = response("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n");
        assert_eq!(parse(&unknown_ext).unwrap_err(), E::UnexpectedExtension);
        let bad_ext = response("Sec-WebSocket-Extensions: permessage-deflate;;\r\n");
        assert_eq!(parse(&bad_ext).unwrap_err(), E::InvalidExtensions);
        let garbage = "HTTP/1.1 abc\r\n\r\n";
        assert!(matches!(parse(garbage).unwrap_err(), E::Malformed(_)));
    }

    #[test]
    fn refusal_reports_status_and_headers() {
        let mut out = Vec::new();
        write_rejection(&mut out, &HandshakeError::OriginRejected.to_rejection());
        let err = parse_response(&out, &expected()).unwrap_err();
        assert_eq!(err.refused_status(), Some(403));
        assert!(
            err.to_string().contains("refused with 403 Forbidden"),
            "{err}"
        );
        let ClientHandshakeError::Refused { headers, .. } = err else {
            unreachable!()
        };
        assert!(headers.contains(&("Connection".into(), "close".into())));
    }

    #[test]
    fn split_at_every_byte_with_trailing_frame() {
        let text = response("Sec-WebSocket-Protocol: v2.chat\r\n");
        let mut bytes = text.clone().into_bytes();
        bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let exp = expected();
        for split in 0..=bytes.len() {
            let got = parse_response(&bytes[..split], &exp).unwrap();
            match got {
                ResponseStatus::Partial => assert!(split < text.len(), "{split}"),
                ResponseStatus::Complete { response, consumed } => {
                    assert!(split >= text.len());
                    assert_eq!(consumed, text.len());
                    assert_eq!(response.subprotocol(), Some("v2.chat"));
                }
            }
        }
        assert_eq!(&bytes[text.len()..], [0x81, 0x02, b'h', b'i']);
    }

    #[test]
    fn response_size_limit() {
        let exp = request()
            .max_response_size(100)
            .write_with_nonce(&mut Vec::new(), NONCE);
        let long = response(&format!("X-Pad: {}\r\n", "a".repeat(100)));
        let err = parse_response(long.as_bytes(), &exp).unwrap_err();
        assert_eq!(err, ClientHandshakeError::ResponseTooLarge { limit: 100 });
        assert_eq!(
            parse_response(&long.as_bytes()[..50], &exp),
            Ok(ResponseStatus::Partial)
        );
    }

    /// Client request -> server parse -> server response -> client verify.
    #[test]
    fn round_trip() {
        let cfg = HandshakeConfig {
            subprotocols: vec!["v1.chat".into(), "v2.chat".into()],
            ..HandshakeConfig::default()
        };
        let mut wire = Vec::new();
        let exp = request().write(&mut wire).unwrap();
        wire.extend_from_slice(b"\x81\x80\x00\x00\x00\x00"); // the client's first frame
        let ParseStatus::Complete { request, consumed } = parse_request(&wire, &cfg).unwrap()
        else {
            panic!("partial")
        };
        assert_eq!(&wire[consumed..], b"\x81\x80\x00\x00\x00\x00");
        assert_eq!((request.path(), request.query()), ("/chat", Some("room=1")));
        assert_eq!(request.key(), exp.key());
        check_origin(&request, &cfg).unwrap();
        let protocol = request.select_subprotocol(&cfg.subprotocols);
        assert_eq!(protocol, Some("v1.chat"));
        let offered = request.extensions().next().unwrap();
        assert_eq!(offered.name(), "permessage-deflate");

        let mut reply = Vec::new();
        write_accept_response(
            &mut reply,
            request.key(),
            protocol,
            Some("permessage-deflate"),
            &[],
        );
        let ResponseStatus::Complete { response, consumed } = parse_response(&reply, &exp).unwrap()
        else {
            panic!("partial")
        };
        assert_eq!(consumed, reply.len());
        assert_eq!(response.subprotocol(), Some("v1.chat"));
        assert_eq!(
            response.extensions().next().unwrap().name(),
            "permessage-deflate"
        );
    }
}
