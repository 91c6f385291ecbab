//! The server's side of the opening handshake over a blocking stream (gorilla's `Upgrader`), with
//! the engine's parser, origin policy and responses.

use std::io;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::conn::Buffers;
use super::shared::Negotiated;
use super::{Conn, Error, Stream};
use crate::handler::{Accept, Upgrade};
use crate::handshake::deflate_negotiation::negotiate;
use crate::handshake::{
    check_origin, parse_request, write_accept_response, write_rejection, HandshakeConfig,
    HandshakeError, HeadBuffer, ParseStatus, Rejection, Request,
};
use crate::proto::{self, Role};

/// Upgrades HTTP/1.1 requests read from a stream to WebSocket connections (gorilla's `Upgrader`).
/// Cheap to clone: one per listener, cloned into each connection's thread.
#[derive(Clone, Debug)]
pub struct Upgrader {
    /// Request size limit (431 beyond), origin policy (default: same host, 403 otherwise) and the
    /// server's subprotocols in preference order: the engine's rules and statuses.
    pub handshake: HandshakeConfig,
    /// Protocol limits: maximum frame and message size (16 MiB; 1009 beyond; see also
    /// [`Conn::set_read_limit`]) and the close timeout (how long to wait for the peer to end the
    /// stream after the close handshake). The role is always server.
    pub proto: proto::Config,
    /// Time for the client to send its request and for the response to go out (default 10 s);
    /// applied with the stream's timeouts.
    pub handshake_timeout: Duration,
    /// Size of the connection's read buffer (default 16 KiB). It does not limit message size:
    /// larger messages are read piece by piece.
    pub read_buffer_size: usize,
    /// Size of a message writer's buffer, i.e. of the frames it sends (default 16 KiB).
    pub write_buffer_size: usize,
    /// Extra headers for every 101 response (cookies, ...).
    pub headers: Vec<(String, String)>,
    /// permessage-deflate (RFC 7692; gorilla's `EnableCompression`): `mode` is what to accept
    /// (default `Disabled`: offers are declined; `NoContextTakeover`, as gorilla; or
    /// `ContextTakeover` with window bits), `level` the initial compression level
    /// ([`Conn::set_compression_level`]), `min_size` the size below which messages go uncompressed.
    /// Inflated messages are bounded by the read limit (and `max_decompressed`). A connection
    /// without compression holds nothing for it; one with it allocates its compressor, inflater and
    /// (context takeover) windows on the first compressed message.
    pub deflate: proto::DeflateConfig,
}

impl Default for Upgrader {
    fn default() -> Self {
        Upgrader {
            handshake: HandshakeConfig::default(),
            proto: proto::Config::server(),
            handshake_timeout: Duration::from_secs(10),
            read_buffer_size: 16 * 1024,
            write_buffer_size: 16 * 1024,
            headers: Vec::new(),
            deflate: proto::DeflateConfig::default(),
        }
    }
}

impl Upgrader {
    /// Reads the upgrade request from `stream`, validates it (method, version, key, origin, ...),
    /// answers 101 and returns the connection; a bad request is answered with its HTTP error (400,
    /// 403, 405, 426, 431, 505) and returned as [`Error::Handshake`]. Bytes the client sent after
    /// its request are kept for the connection.
    pub fn upgrade<S: Stream>(&self, stream: S) -> Result<Conn<S>, Error> {
        self.upgrade_with(stream, |_| Upgrade::Accept(Accept::new(())))
    }

    /// [`upgrade`](Upgrader::upgrade) with the application's say on a valid request (path, query,
    /// headers, peer address), as the engine's `on_upgrade`: accept with a subprotocol of its
    /// choice and extra headers, or reject with its own HTTP response ([`Error::Rejected`]).
    pub fn upgrade_with<S: Stream>(
        &self,
        mut stream: S,
        decide: impl FnOnce(&Request) -> Upgrade<()>,
    ) -> Result<Conn<S>, Error> {
        let deadline = Instant::now() + self.handshake_timeout;
        let mut timeouts = Timeouts::default();
        let mut head = HeadBuffer::from(Vec::with_capacity(1024));
        let (mut request, consumed) = loop {
            match head.parse(|b| parse_request(b, &self.handshake)) {
                Ok(ParseStatus::Complete { request, consumed }) => break (request, consumed),
                Ok(ParseStatus::Partial) => {}
                // Not an upgrade (gorilla: "the client is not using the websocket protocol").
                Ok(ParseStatus::Http { .. }) => {
                    let e = HandshakeError::UpgradeNotWebSocket;
                    reject(&mut stream, &e.to_rejection(), deadline, &mut timeouts);
                    return Err(Error::Handshake(e));
                }
                Err(e) => {
                    reject(&mut stream, &e.to_rejection(), deadline, &mut timeouts);
                    return Err(Error::Handshake(e));
                }
            }
            head.read_with(self.handshake.max_request_size, |room| {
                read_some(&mut stream, room, deadline, &mut timeouts)
            })?;
        };
        request.peer = stream.peer_addr();
        if let Err(e) = check_origin(&request, &self.handshake) {
            reject(&mut stream, &e.to_rejection(), deadline, &mut timeouts);
            return Err(Error::Handshake(e));
        }
        let accept = match decide(&request) {
            Upgrade::Accept(accept) => accept,
            Upgrade::Reject(rejection) => {
                reject(&mut stream, &rejection, deadline, &mut timeouts);
                return Err(Error::Rejected(rejection.status));
            }
            // A blocking upgrade already runs on the caller's thread: it decides in `decide`,
            // blocking there as long as it needs.
            Upgrade::Defer(_) => {
                let rejection = Rejection::new(500, "deferred upgrades need the engine");
                reject(&mut stream, &rejection, deadline, &mut timeouts);
                return Err(Error::Rejected(rejection.status));
            }
        };
        let subprotocol = accept.subprotocol.or_else(|| {
            request
                .select_subprotocol(&self.handshake.subprotocols)
                .map(str::to_owned)
        });
        let mut headers = self.headers.clone();
        headers.extend(accept.headers);
        let deflate = negotiate(request.extensions(), self.deflate.mode);
        let mut response = Vec::with_capacity(256);
        write_accept_response(
            &mut response,
            request.key(),
            subprotocol.as_deref(),
            deflate.as_ref().map(|n| n.response.as_str()),
            &headers,
        );
        write_until(&mut stream, &response, deadline, &mut timeouts)?;
        timeouts.clear(&stream);
        let leftover = head.rest(&mut [], consumed).to_vec();
        let mut cfg = self.proto.clone();
        cfg.role = Role::Server;
        Ok(Conn::new(
            stream,
            cfg,
            leftover,
            subprotocol,
            Some(request),
            Buffers {
                read: self.read_buffer_size,
                write: self.write_buffer_size,
            },
            deflate.map(|n| Negotiated {
                params: n.params,
                cfg: self.deflate,
            }),
        ))
    }
}

/// Which of the stream's timeouts the handshake set.
#[derive(Default)]
pub(crate) struct Timeouts {
    read: bool,
    write: bool,
}

impl Timeouts {
    pub(crate) fn clear<S: Stream>(&mut self, stream: &S) {
        if std::mem::take(&mut self.read) {
            let _ = stream.set_read_timeout(None);
        }
        if std::mem::take(&mut self.write) {
            let _ = stream.set_write_timeout(None);
        }
    }
}

fn left(deadline: Instant) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Error::Timeout)
    } else {
        Ok(left)
    }
}

fn supported(result: io::Result<()>) -> Result<bool, Error> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(false),
        Err(e) => Err(Error::Io(e)),
    }
}

/// Reads into `room` before `deadline` (at least one byte); the end of the stream is an error.
pub(crate) fn read_some<S: Stream>(
    stream: &mut S,
    room: &mut [u8],
    deadline: Instant,
    timeouts: &mut Timeouts,
) -> Result<usize, Error> {
    timeouts.read |= supported(stream.set_read_timeout(Some(left(deadline)?)))?;
    loop {
        match stream.read(room) {
            Ok(0) => return Err(Error::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::from_io(e)),
        }
    }
}

/// Writes all of `data` before `deadline`.
pub(crate) fn write_until<S: Stream>(
    stream: &mut S,
    data: &[u8],
    deadline: Instant,
    timeouts: &mut Timeouts,
) -> Result<(), Error> {
    timeouts.write |= supported(stream.set_write_timeout(Some(left(deadline)?)))?;
    stream
        .write_all(data)
        .and_then(|()| stream.flush())
        .map_err(Error::from_io)
}

/// Sends an HTTP error, then ends the stream without a reset: our side is shut down and the rest of
/// the request is read until the client closes (or the deadline, at most a second from now).
fn reject<S: Stream>(stream: &mut S, rejection: &Rejection, deadline: Instant, t: &mut Timeouts) {
    let mut response = Vec::with_capacity(256 + rejection.body.len());
    write_rejection(&mut response, rejection);
    if write_until(stream, &response, deadline, t).is_err() {
        return;
    }
    let _ = stream.finish_writes();
    let _ = stream.shutdown(Shutdown::Write);
    let until = deadline.min(Instant::now() + Duration::from_secs(1));
    let mut scratch = [0u8; 1024];
    while let Ok(left) = left(until) {
        match supported(stream.set_read_timeout(Some(left))) {
            Ok(true) => t.read = true,
            _ => break,
        }
        match stream.read(&mut scratch) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    t.clear(stream);
}
