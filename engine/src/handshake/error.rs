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

/// An HTTP response: what [`Handler::on_http`](crate::Handler::on_http) answers a plain request
/// with (a page, a health check, a JSON status), and, as [`Rejection`], what the server sends
/// instead of 101 when it refuses an upgrade. [`write_rejection`](super::write_rejection) writes
/// it; the connection is closed after it (`Connection: close`).
///
/// ```
/// use surge::Response;
///
/// let health = Response::ok("ok");
/// let page = Response::html("<h1>lobby</h1>").header("Cache-Control", "no-store");
/// let gone = Response::new(404, "no such room");
/// assert_eq!((health.status, page.status, gone.status), (200, 200, 404));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200 or 403.
    pub status: u16,
    /// Headers beyond those `write_rejection` always adds (`Content-Length`, `Connection:
    /// close`, and `Content-Type: text/plain` unless given here). Names and values must not
    /// contain CR or LF.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

/// A refused upgrade: the [`Response`] sent instead of 101 (the name reads better in
/// [`Upgrade::Reject`](crate::Upgrade::Reject)).
pub type Rejection = Response;

impl Response {
    /// A response with a plain-text body (`text/plain; charset=utf-8`) and no extra headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// 200 with a plain-text body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response::new(200, body)
    }

    /// 200 with an HTML body (`text/html; charset=utf-8`).
    pub fn html(body: impl Into<Vec<u8>>) -> Response {
        Response::new(200, body).header("Content-Type", "text/html; charset=utf-8")
    }

    /// 200 with `value` as JSON (`application/json`); a value that does not serialize gives 500
    /// with the error as text. Behind the `json` feature.
    ///
    /// ```
    /// # #[cfg(feature = "json")] {
    /// let r = surge::Response::json(&serde_json::json!({ "players": 3 }));
    /// assert_eq!(r.body, br#"{"players":3}"#);
    /// # }
    /// ```
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200, body).header("Content-Type", "application/json"),
            Err(e) => Response::new(500, format!("cannot serialize the response: {e}")),
        }
    }

    /// The same response with another status.
    pub fn status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// The same response with one more header (a `Content-Type` given here replaces the
    /// default one).
    ///
    /// # Panics
    /// If the name or the value contains CR or LF, or the name a colon: they would break the
    /// response.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        let (name, value) = (name.into(), value.into());
        assert!(
            !name.contains(['\r', '\n', ':']) && !value.contains(['\r', '\n']),
            "header {name:?}: {value:?} would break the response"
        );
        self.headers.retain(|(n, _)| {
            !(name.eq_ignore_ascii_case("Content-Type") && n.eq_ignore_ascii_case("Content-Type"))
        });
        self.headers.push((name, value));
        self
    }
}

impl From<&HandshakeError> for Rejection {
    fn from(e: &HandshakeError) -> Rejection {
        e.to_rejection()
    }
}
