//! The client's side of the opening handshake over a blocking stream (gorilla's `Dialer`).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::conn::Buffers;
use super::shared::Negotiated;
use super::upgrade::{read_some, write_until, Timeouts};
use super::{Conn, Error, Response, Stream};
use crate::handshake::client::{parse_response, ClientRequest, ResponseStatus};
use crate::handshake::deflate_negotiation::{client_accept, client_offer};
use crate::handshake::{HeadBuffer, DEFAULT_MAX_HEAD_SIZE};
use crate::proto::{self, Role};

/// Opens client connections (gorilla's `Dialer`): `ws://host:port/path?query` over TCP, or any URL
/// over a stream the caller connected (and wrapped in TLS for `wss`).
#[derive(Clone, Debug)]
pub struct Dialer {
    /// Time to connect, send the request and read the response (default 45 s, gorilla's
    /// `DefaultDialer`).
    pub handshake_timeout: Duration,
    /// Subprotocols to offer, in order of preference (`Sec-WebSocket-Protocol`).
    pub subprotocols: Vec<String>,
    /// Extra request headers (`Origin`, `Cookie`, `Authorization`, ...).
    pub headers: Vec<(String, String)>,
    /// Protocol limits: maximum frame and message size (16 MiB each), close timeout. The role is
    /// always client.
    pub proto: proto::Config,
    /// Size of the connection's read buffer (default 16 KiB).
    pub read_buffer_size: usize,
    /// Size of a message writer's buffer (default 16 KiB).
    pub write_buffer_size: usize,
    /// Largest response header block accepted (default 8 KiB).
    pub max_response_size: usize,
    /// permessage-deflate (RFC 7692; gorilla's `EnableCompression`): `mode` is what to offer
    /// (default `Disabled`: nothing offered; `NoContextTakeover` offers
    /// `server_no_context_takeover; client_no_context_takeover`; `ContextTakeover` offers
    /// `client_max_window_bits` and, below 15, `server_max_window_bits`). The response is validated
    /// (a bad or unasked parameter fails the dial with [`Error::Compression`]); a server that
    /// declines leaves the connection uncompressed. `level`, `min_size` as for the `Upgrader`.
    pub deflate: proto::DeflateConfig,
}

impl Default for Dialer {
    fn default() -> Self {
        Dialer {
            handshake_timeout: Duration::from_secs(45),
            subprotocols: Vec::new(),
            headers: Vec::new(),
            proto: proto::Config::client(),
            read_buffer_size: 16 * 1024,
            write_buffer_size: 16 * 1024,
            max_response_size: DEFAULT_MAX_HEAD_SIZE,
            deflate: proto::DeflateConfig::default(),
        }
    }
}

/// The parts of a `ws://` or `wss://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    secure: bool,
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    target: String,
}

fn parse_url(url: &str) -> Result<Url, Error> {
    let bad = || Error::BadUrl(url.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let secure = if scheme.eq_ignore_ascii_case("ws") {
        false
    } else if scheme.eq_ignore_ascii_case("wss") {
        true
    } else {
        return Err(bad());
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    if authority.contains('@') {
        // User info in the URL (gorilla turns it into basic auth): pass an Authorization header.
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None if secure => 443,
        None => 80,
    };
    let target = if target.is_empty() {
        "/".to_owned()
    } else if target.starts_with('?') {
        format!("/{target}")
    } else {
        target.to_owned()
    };
    Ok(Url {
        secure,
        host: host.to_owned(),
        port,
        target,
    })
}

impl Dialer {
    /// Connects to `ws://host[:port][/path][?query]` and performs the handshake. Returns the
    /// connection and the server's 101 response (headers, subprotocol). A server that answers with
    /// another status gives [`Error::ClientHandshake`] with that status ([`Error::status`]).
    /// `wss`: connect, wrap the socket in a `rustls::StreamOwned` and call
    /// [`dial_stream`](Dialer::dial_stream) (the module's "`wss://` over rustls" shows how).
    pub fn dial(&self, url: &str) -> Result<(Conn<TcpStream>, Response), Error> {
        let parsed = parse_url(url)?;
        if parsed.secure {
            return Err(Error::Unsupported(
                "wss without a TLS stream (use dial_stream)",
            ));
        }
        let deadline = Instant::now() + self.handshake_timeout;
        let addrs = (parsed.host.as_str(), parsed.port)
            .to_socket_addrs()
            .map_err(Error::Io)?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(Error::from_io(e)),
            (None, None) => return Err(Error::BadUrl(url.to_owned())),
        };
        let _ = stream.set_nodelay(true);
        self.handshake(stream, &parsed, deadline)
    }

    /// Performs the handshake for `url` over a stream the caller connected (a TLS stream for `wss`,
    /// a Unix socket, a pipe). The URL gives the `Host` header and the request target.
    pub fn dial_stream<S: Stream>(
        &self,
        stream: S,
        url: &str,
    ) -> Result<(Conn<S>, Response), Error> {
        let parsed = parse_url(url)?;
        self.handshake(stream, &parsed, Instant::now() + self.handshake_timeout)
    }

    fn handshake<S: Stream>(
        &self,
        mut stream: S,
        url: &Url,
        deadline: Instant,
    ) -> Result<(Conn<S>, Response), Error> {
        let mut request = ClientRequest::new(url.host.clone(), url.port, url.target.clone())
            .secure(url.secure)
            .max_response_size(self.max_response_size);
        for p in &self.subprotocols {
            request = request.subprotocol(p.clone());
        }
        for (name, value) in &self.headers {
            request = request.header(name.clone(), value.clone());
        }
        if let Some(offer) = client_offer(self.deflate.mode) {
            request = request.extensions(offer);
        }
        let mut out = Vec::with_capacity(256);
        let expected = request
            .write(&mut out)
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        let mut timeouts = Timeouts::default();
        write_until(&mut stream, &out, deadline, &mut timeouts)?;
        let mut head = HeadBuffer::from(Vec::with_capacity(1024));
        let (response, consumed) = loop {
            match head.parse(|b| parse_response(b, &expected)) {
                Ok(ResponseStatus::Complete { response, consumed }) => break (response, consumed),
                Ok(ResponseStatus::Partial) => {}
                Err(e) => return Err(Error::ClientHandshake(e)),
            }
            head.read_with(self.max_response_size, |room| {
                read_some(&mut stream, room, deadline, &mut timeouts)
            })?;
        };
        let params =
            client_accept(response.extensions(), self.deflate.mode).map_err(Error::Compression)?;
        timeouts.clear(&stream);
        let leftover = head.rest(&mut [], consumed).to_vec();
        let mut cfg = self.proto.clone();
        cfg.role = Role::Client;
        let conn = Conn::new(
            stream,
            cfg,
            leftover,
            response.subprotocol().map(str::to_owned),
            None,
            Buffers {
                read: self.read_buffer_size,
                write: self.write_buffer_size,
            },
            params.map(|params| Negotiated {
                params,
                cfg: self.deflate,
            }),
        );
        Ok((conn, response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("ws://example.com/chat?room=1#frag").unwrap();
        assert_eq!(
            u,
            Url {
                secure: false,
                host: "example.com".into(),
                port: 80,
                target: "/chat?room=1".into()
            }
        );
        let u = parse_url("WSS://[::1]:9443").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.target.as_str()),
            (true, "::1", 9443, "/")
        );
        let u = parse_url("ws://127.0.0.1:9001?x").unwrap();
        assert_eq!((u.port, u.target.as_str()), (9001, "/?x"));
        for bad in [
            "http://a/",
            "ws://",
            "ws://:80/",
            "ws://a:b/",
            "ws://u@a/",
            "ws://[::1/",
            "a",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
