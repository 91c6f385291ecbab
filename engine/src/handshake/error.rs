//! Why a handshake request was refused, and the HTTP response that says so.

use std::error::Error;
use std::fmt;

/// A request that is not an acceptable WebSocket upgrade. Each variant is one violation and maps
/// to one HTTP status ([`status`](HandshakeError::status)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The header block goes past the configured limit, complete or not (431).
    RequestTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More header fields than [`MAX_HEADERS`](super::MAX_HEADERS) (431).
    TooManyHeaders,
    /// Not HTTP/1.x syntax (400); the text says what `httparse` objected to.
    Malformed(&'static str),
    /// The request head is not valid UTF-8 (400).
    NotUtf8,
    /// "The method of the request MUST be GET" (405, with `Allow: GET`).
    MethodNotAllowed,
    /// "the HTTP version MUST be at least 1.1" (505).
    HttpVersion,
    /// The request target is neither a path nor an absolute http(s)/ws(s) URI without user info
    /// (400).
    InvalidTarget,
    /// No `Host` header (400).
    MissingHost,
    /// A header that must appear once appears several times (400).
    DuplicateHeader(&'static str),
    /// "An |Upgrade| header field containing the value "websocket"" is missing (400).
    UpgradeNotWebSocket,
    /// "A |Connection| header field that includes the token "Upgrade"" is missing (400).
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Version` is missing or not 13 (426, with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key` (400).
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 encoding of 16 bytes (400).
    InvalidKey,
    /// The origin policy refused the request's `Origin` (403).
    OriginRejected,
}

impl HandshakeError {
    /// The HTTP status code that answers this error.
    pub fn status(&self) -> u16 {
        use HandshakeError::*;
        match self {
            RequestTooLarge { .. } | TooManyHeaders => 431,
            Malformed(_) | NotUtf8 | InvalidTarget | MissingHost | DuplicateHeader(_) => 400,
            UpgradeNotWebSocket | ConnectionNotUpgrade | MissingKey | InvalidKey => 400,
            MethodNotAllowed => 405,
            HttpVersion => 505,
            UnsupportedVersion => 426,
            OriginRejected => 403,
        }
    }

    /// The response to send: status, the headers this status calls for, and the error's text as
    /// the body.
    pub fn to_rejection(&self) -> Rejection {
        let mut headers = Vec::new();
        match self {
            // RFC 7231 section 6.5.5: a 405 response MUST carry an Allow header.
            HandshakeError::MethodNotAllowed => headers.push(("Allow".into(), "GET".into())),
            // RFC 6455 section 4.4: the server "MUST ... send back an appropriate
            // |Sec-WebSocket-Version| header field indicating the version(s) the server is
            // capable of understanding".
            HandshakeError::UnsupportedVersion => headers.push((
                "Sec-WebSocket-Version".into(),
                super::WEBSOCKET_VERSION.into(),
            )),
            _ => {}
        }
        Rejection {
            status: self.status(),
            headers,
            body: format!("{self}\n").into_bytes(),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HandshakeError::*;
        match self {
            RequestTooLarge { limit } => {
                write!(
                    f,
                    "websocket: request header block larger than {limit} bytes"
                )
            }
            TooManyHeaders => write!(
                f,
                "websocket: more than {} request header fields",
                super::MAX_HEADERS
            ),
            Malformed(what) => write!(f, "websocket: malformed HTTP request: {what}"),
            NotUtf8 => f.write_str("websocket: request head is not valid UTF-8"),
            MethodNotAllowed => f.write_str("websocket: request method is not GET"),
            HttpVersion => f.write_str("websocket: HTTP/1.1 or later is required"),
            InvalidTarget => f.write_str(
                "websocket: request target must be a path or an absolute http(s) or ws(s) URI",
            ),
            MissingHost => f.write_str("websocket: 'Host' header is missing"),
            DuplicateHeader(name) => write!(f, "websocket: '{name}' header appears more than once"),
            UpgradeNotWebSocket => f.write_str(
                "websocket: the client is not using the websocket protocol: \
                 'websocket' token not found in 'Upgrade' header",
            ),
            ConnectionNotUpgrade => f.write_str(
                "websocket: the client is not using the websocket protocol: \
                 'upgrade' token not found in 'Connection' header",
            ),
            UnsupportedVersion => f.write_str(
                "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
            ),
            MissingKey => f.write_str("websocket: 'Sec-WebSocket-Key' header is missing"),
            InvalidKey => f.write_str(
                "websocket: 'Sec-WebSocket-Key' header must be the base64 encoding of 16 bytes",
            ),
            OriginRejected => {
                f.write_str("websocket: request origin not allowed by the origin policy")
            }
        }
    }
}

impl Error for HandshakeError {}

/// An HTTP error response: what [`write_rejection`](super::write_rejection) sends instead of 101.
/// The application builds its own to refuse an upgrade for its own reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The status code, e.g. 403.
    pub status: u16,
    /// Headers beyond those `write_rejection` always adds (`Content-Length`, `Connection:
    /// close`, and `Content-Type: text/plain` unless given here).
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Rejection {
    /// A rejection with a plain-text body and no extra headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Rejection {
        Rejection {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

impl From<&HandshakeError> for Rejection {
    fn from(e: &HandshakeError) -> Rejection {
        e.to_rejection()
    }
}
