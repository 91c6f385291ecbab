//! The origin check (RFC 6455 section 10.2): a browser names the page's origin, and a server that
//! serves only its own pages refuses the others.

use super::{HandshakeConfig, HandshakeError, OriginPolicy, Request};

/// Applies `cfg.origin` to the request: `Err(OriginRejected)` (403) when the policy refuses it.
pub fn check_origin(req: &Request, cfg: &HandshakeConfig) -> Result<(), HandshakeError> {
    let allowed = match &cfg.origin {
        OriginPolicy::AllowAll => true,
        OriginPolicy::Custom(allow) => allow(req),
        // gorilla's default: no Origin passes (not a browser); every Origin present must name
        // the host the request was sent to.
        OriginPolicy::SameHost => req
            .header_all("Origin")
            .all(|origin| same_host(origin, req.host())),
    };
    if allowed {
        Ok(())
    } else {
        Err(HandshakeError::OriginRejected)
    }
}

/// Whether `origin` (`scheme://host[:port]`, RFC 6454) names the same host and port as the
/// `Host` header, ASCII case-insensitively; a missing port is the scheme's default.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false; // "null" and anything else that names no host
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let is = |name: &str| scheme.eq_ignore_ascii_case(name);
    let default_port = if is("http") || is("ws") {
        Some("80")
    } else if is("https") || is("wss") {
        Some("443")
    } else {
        None
    };
    let (origin_host, origin_port) = split_port(authority);
    let (host_host, host_port) = split_port(host);
    let origin_port = origin_port.or(default_port);
    let host_port = host_port.or(default_port);
    !origin_host.is_empty()
        && origin_host.eq_ignore_ascii_case(host_host)
        && origin_port == host_port
}

/// Splits `host[:port]` (with `[v6]` literals) into host and port.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return (authority, None),
    };
    let port = &authority[colon + 1..];
    (&authority[..colon], (!port.is_empty()).then_some(port))
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, ParseStatus};
    use super::*;

    fn check(target: &str, origin: &str) -> Result<(), HandshakeError> {
        let text = format!(
            "GET {target} HTTP/1.1\r\nHost: victim.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
        );
        let cfg = HandshakeConfig::default();
        match parse_request(text.as_bytes(), &cfg) {
            Ok(ParseStatus::Complete { request, .. }) => check_origin(&request, &cfg),
            other => panic!("{other:?}"),
        }
    }

    /// An absolute-form target names the host in place of `Host` (RFC 9112 section 3.2.2): the
    /// origin must match it, not the header.
    #[test]
    fn absolute_form_target_is_the_host_checked() {
        assert_eq!(check("/chat", "http://victim.example"), Ok(()));
        assert_eq!(
            check("http://other.example/chat", "http://other.example"),
            Ok(())
        );
        assert_eq!(
            check("ws://other.example:80/", "http://other.example"),
            Ok(())
        );
        assert_eq!(
            check("http://other.example/chat", "http://victim.example"),
            Err(HandshakeError::OriginRejected)
        );
        assert_eq!(
            check("http://victim.example:8080/", "http://victim.example"),
            Err(HandshakeError::OriginRejected)
        );
    }

    #[test]
    fn same_host_rules() {
        assert!(same_host("http://example.com", "example.com"));
        assert!(same_host("https://EXAMPLE.com:8443", "example.COM:8443"));
        assert!(same_host("http://example.com", "example.com:80"));
        assert!(same_host("https://example.com:443", "example.com"));
        assert!(same_host("http://[::1]:9000", "[::1]:9000"));
        assert!(same_host("http://[::1]", "[::1]:80"));
        assert!(!same_host("http://example.com:8080", "example.com:9090"));
        assert!(!same_host("http://example.com", "example.com:8080"));
        assert!(!same_host("https://example.com", "example.com:80"));
        assert!(!same_host("http://evil.com", "example.com"));
        assert!(!same_host("http://example.com.evil.com", "example.com"));
        assert!(!same_host("null", "example.com"));
        assert!(!same_host("example.com", "example.com"));
        assert!(!same_host("http://", "example.com"));
    }
}
