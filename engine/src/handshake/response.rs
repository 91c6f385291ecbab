//! The server's opening handshake (RFC 6455 section 4.2.2) and HTTP error responses.

use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::{Rejection, WEBSOCKET_GUID};

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: "the base64-encoded SHA-1 of the
/// concatenation of the |Sec-WebSocket-Key| (as a string, not base64-decoded) with the string
/// "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"" (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let digest = Sha1::new()
        .chain_update(key)
        .chain_update(WEBSOCKET_GUID)
        .finalize();
    let mut out = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(digest, &mut out)
        .expect("20 bytes encode to 28 base64 characters");
    debug_assert_eq!(n, 28);
    out
}

/// Appends the `101 Switching Protocols` response accepting the request with `key`.
///
/// `subprotocol` and `extensions` are echoed as `Sec-WebSocket-Protocol` and
/// `Sec-WebSocket-Extensions` when given; `extra` headers (cookies, ...) follow. Names and values
/// come from the application and must not contain CR or LF.
pub fn write_accept_response(
    out: &mut Vec<u8>,
    key: &str,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
    extra: &[(String, String)],
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key.as_bytes()));
    out.extend_from_slice(b"\r\n");
    if let Some(p) = subprotocol {
        header(out, "Sec-WebSocket-Protocol", p);
    }
    if let Some(e) = extensions {
        header(out, "Sec-WebSocket-Extensions", e);
    }
    for (name, value) in extra {
        header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an HTTP error response: status line, the rejection's headers, `Content-Type:
/// text/plain; charset=utf-8` (unless the rejection has its own), `Content-Length`,
/// `Connection: close`, then the body. The connection is to be closed once it is sent.
pub fn write_rejection(out: &mut Vec<u8>, rej: &Rejection) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(rej.status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(rej.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_type = false;
    for (name, value) in &rej.headers {
        // These two describe the body and the connection as this function sends them.
        if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("Connection") {
            continue;
        }
        has_type |= name.eq_ignore_ascii_case("Content-Type");
        header(out, name, value);
    }
    if !has_type {
        header(out, "Content-Type", "text/plain; charset=utf-8");
    }
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, rej.body.len() as u64);
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(&rej.body);
}

pub(crate) fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(
        !name.contains(['\r', '\n', ':']) && !value.contains(['\r', '\n']),
        "header {name:?} would break the response"
    );
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The standard reason phrase for `status` (RFC 9110 section 15); empty for an unknown code,
/// which HTTP/1.1 allows.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::HandshakeError;

    /// RFC 6455 section 1.3: key "dGhlIHNhbXBsZSBub25jZQ==" gives
    /// "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" (also what Python's hashlib gives).
    #[test]
    fn rfc6455_section_1_3_vector() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accept_response_layout() {
        let mut out = b"prefix".to_vec();
        let extra = [("Set-Cookie".to_string(), "id=1".to_string())];
        write_accept_response(
            &mut out,
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some("chat"),
            Some("permessage-deflate"),
            &extra,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "prefixHTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Protocol: chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate\r\n\
             Set-Cookie: id=1\r\n\
             \r\n"
        );
        let mut bare = Vec::new();
        write_accept_response(&mut bare, "dGhlIHNhbXBsZSBub25jZQ==", None, None, &[]);
        assert!(!bare.windows(22).any(|w| w == b"Sec-WebSocket-Protocol"));
        assert!(bare.ends_with(b"Oo=\r\n\r\n"));
    }

    #[test]
    fn rejection_layout() {
        let mut out = Vec::new();
        write_rejection(&mut out, &HandshakeError::UnsupportedVersion.to_rejection());
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/1.1 426 Upgrade Required"));
        let headers: Vec<&str> = lines.collect();
        assert!(headers.contains(&"Sec-WebSocket-Version: 13"));
        assert!(headers.contains(&"Content-Type: text/plain; charset=utf-8"));
        assert!(headers.contains(&"Connection: close"));
        assert!(headers.contains(&format!("Content-Length: {}", body.len()).as_str()));
        assert!(body.contains("unsupported version"));
    }

    #[test]
    fn application_rejection_keeps_its_content_type() {
        let mut rej = Rejection::new(401, "{\"error\":\"login\"}");
        rej.headers
            .push(("Content-Type".into(), "application/json".into()));
        rej.headers.push(("Content-Length".into(), "999".into()));
        let mut out = Vec::new();
        write_rejection(&mut out, &rej);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert_eq!(text.matches("Content-Type").count(), 1);
        assert!(text.contains("Content-Length: 17\r\n") && !text.contains("999"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"login\"}"));
    }

    #[test]
    fn every_error_status_has_a_reason_phrase() {
        for status in [400, 403, 405, 426, 431, 505] {
            assert!(!reason_phrase(status).is_empty(), "{status}");
        }
        assert_eq!(reason_phrase(599), "");
        let mut out = Vec::new();
        write_rejection(&mut out, &Rejection::new(599, ""));
        assert!(out.starts_with(b"HTTP/1.1 599 \r\n"));
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 431, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
