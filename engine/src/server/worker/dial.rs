//! Outgoing connections: the client side of the engine.
//!
//! [`WorkerCtx::connect`] opens a socket (bound first to a chosen source address with
//! `IP_BIND_ADDRESS_NO_PORT`, when asked), starts a non-blocking `connect(2)` and queues the
//! upgrade request; the connection is registered with the driver before the next poll. It then
//! lives in the worker's registry like an accepted one, in its own stage:
//!
//! `Dial` (connecting, then reading the response into a pooled buffer) -> `Open` with a
//! client-role protocol core (frames we send are masked, frames we receive must not be) ->
//! `Draining`, exactly as for the server side.
//!
//! - epoll: the socket is registered edge-triggered for both directions, as any connection; the
//!   connect's end is its first writable edge (or an error edge), and `SO_ERROR` says how it went.
//! - io_uring: a one-shot `POLL_ADD(POLLOUT)` waits for the connect's end ([`IoEvent::Connected`]),
//!   then `SO_ERROR` is read and the multishot receive is armed. (The readiness approach rather than
//!   `IORING_OP_CONNECT`: the connect is one plain syscall, no address must outlive a submission.)
//!
//! The handler hears of a connection that never opens through [`Handler::on_connect_error`]
//! (refused connect, a refused or invalid upgrade response with its status, the handshake
//! timeout, EOF before the response); an opened one gets `on_open` and, later, `on_close`, as on
//! the server side. Until the upgrade completes the user data waits in the worker's client state,
//! so `WorkerCtx::conn` does not see a connection that is not open yet.
//!
//! `wss://`: the connection carries TLS (`tls.rs`, the same code as accepted TLS connections:
//! records decrypted in place from the driver's bytes, sends sealed into the write queue at flush).
//! `connect` creates a rustls client connection for the URL's host (verified against
//! [`ConnectRequest::tls`], by default the webpki roots; the host is also the SNI) and queues its
//! ClientHello; the upgrade request waits in the `Dial` (`tls_request`) until the TLS handshake
//! completes, then is queued as plaintext and sealed like any send. The handshake timeout covers
//! the TCP connect, the TLS handshake and the upgrade. A failed TLS handshake (the server's
//! certificate refused, an alert, a server that does not speak TLS) reaches the handler as
//! [`ConnectError::Tls`], after the alert is sent.
//!
//! Compression (permessage-deflate): [`ConnectRequest::compression`] (default: the
//! configuration's `deflate.mode`) is offered with `client_offer`; the server's answer is checked
//! with `client_accept` (an invalid one fails the connection with [`ConnectError::Handshake`]) and
//! starts the connection's client-role `DeflateState`. From then on messages are inflated and
//! deflated by the same worker code as on accepted connections (`compression.rs`).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::{Conn, Connection, Flag, Flags, Stage, Worker, WorkerCtx};
use crate::buf::{ChunkPool, WriteQueue};
use crate::driver::Driver;
use crate::handler::Handler;
use crate::handshake::client::{
    parse_response, ClientHandshakeError, ClientRequest, ExpectedResponse, Response, ResponseStatus,
};
use crate::handshake::deflate_negotiation::{client_accept_with, client_offer_with};
use crate::handshake::HeadBuffer;
use crate::proto::{self, DeflateMode, DeflateState, Role};
use crate::server::registry::ConnId;
use crate::tls::ClientTlsConfig;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use std::sync::Arc;

/// What to connect to and how: [`WorkerCtx::connect`]'s argument.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// `ws://host:port/path?query` or `wss://host:port/path?query` (TLS; default ports 80 and
    /// 443).
    pub url: String,
    /// Extra request headers (names and values must not contain CR or LF).
    pub headers: Vec<(String, String)>,
    /// Subprotocols offered, in order of preference.
    pub subprotocols: Vec<String>,
    /// Local address to connect from (any port): e.g. one of 127.x.y.z, so that one machine
    /// opens far more than the ~28k connections one address pair allows. Bound with
    /// `IP_BIND_ADDRESS_NO_PORT`, so the port is picked at connect time per destination.
    pub source_addr: Option<IpAddr>,
    /// Time from `connect` to a complete upgrade response (default: the configuration's
    /// `handshake_timeout`).
    pub handshake_timeout: Option<Duration>,
    /// permessage-deflate to offer (default `None`: the configuration's `deflate.mode`). The
    /// minimum size, level and decompression limit are the configuration's.
    pub compression: Option<DeflateMode>,
    /// With context takeover: also offer `client_no_context_takeover` (we compress each message
    /// alone; the server may still take over its context). See `client_offer_with`.
    pub client_no_context_takeover: bool,
    /// `wss://` only: how the server is verified (default `None`: the webpki roots,
    /// [`ClientTlsConfig::webpki_roots`]). The URL's host is the name checked and sent as SNI.
    pub tls: Option<ClientTlsConfig>,
}

impl ConnectRequest {
    /// A request for `url` with no extra headers, no subprotocols, any source address and the
    /// default handshake timeout.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectRequest {
            url: url.into(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            source_addr: None,
            handshake_timeout: None,
            compression: None,
            client_no_context_takeover: false,
            tls: None,
        }
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offers a subprotocol (call again for more, in order of preference).
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocols.push(protocol.into());
        self
    }

    /// Connects from this local address.
    pub fn source(mut self, addr: IpAddr) -> Self {
        self.source_addr = Some(addr);
        self
    }

    /// Sets the handshake timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// Offers permessage-deflate in `mode` (`DeflateMode::Disabled`: no offer), whatever the
    /// configuration says.
    pub fn compression(mut self, mode: DeflateMode) -> Self {
        self.compression = Some(mode);
        self
    }

    /// Also offers `client_no_context_takeover`: see the field.
    pub fn client_no_context_takeover(mut self) -> Self {
        self.client_no_context_takeover = true;
        self
    }

    /// `wss://`: verifies the server with `tls` (e.g. a private CA) instead of the webpki roots.
    ///
    /// ```no_run
    /// # fn main() -> std::io::Result<()> {
    /// let ca = surge::tls::ClientTlsConfig::with_ca_pem_file("ca.pem")?;
    /// let req = surge::ConnectRequest::new("wss://localhost:9443/chat").tls(ca);
    /// # let _ = req;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Why an outgoing connection never opened: [`Handler::on_connect_error`]'s reason.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable, reset).
    Io(io::Error),
    /// The server's response was not an acceptable 101: a refusal (see [`status`](Self::status))
    /// or an invalid upgrade response.
    Handshake(ClientHandshakeError),
    /// No complete upgrade response within the handshake timeout.
    Timeout,
    /// The connection ended (EOF or an error) before the complete response; on `wss://` also a
    /// server gone during the TLS handshake (in the middle of a record or between records).
    Closed,
    /// `wss://`: the TLS handshake failed: the server's certificate was refused
    /// (`InvalidCertificate(UnknownIssuer)`, `InvalidCertificate(NotValidForName)`, expired, ...),
    /// the server sent an alert (`AlertReceived`), or it does not speak TLS (`InvalidMessage`, e.g.
    /// a plain server answering with an HTTP error). Also a bad record from the server before the
    /// upgrade response.
    Tls(rustls::Error),
    /// The worker is shutting down.
    Shutdown,
}

impl ConnectError {
    /// The HTTP status of a refused upgrade (e.g. 403); `None` for other failures.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Handshake(e) => e.refused_status(),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Handshake(e) => e.fmt(f),
            ConnectError::Timeout => f.write_str("websocket: handshake timed out"),
            ConnectError::Closed => f.write_str("websocket: connection closed during handshake"),
            ConnectError::Tls(e) => write!(f, "websocket: TLS handshake failed: {e}"),
            ConnectError::Shutdown => f.write_str("websocket: worker shutting down"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// An outgoing connection before its upgrade completes (boxed in `Stage::Dial`: the stage stays
/// small for the far more numerous open connections).
#[derive(Debug)]
pub(crate) struct Dial {
    expected: ExpectedResponse,
    /// The permessage-deflate mode offered (`Disabled`: none).
    deflate: DeflateMode,
    /// `client_no_context_takeover` was offered too.
    client_nct: bool,
    /// Bytes of an incomplete response (in a pooled buffer, taken when needed).
    head: HeadBuffer,
    /// The TCP connect has completed.
    connected: bool,
    /// `wss://`: the upgrade request (a pooled chunk), queued once the TLS handshake completes.
    pub(super) tls_request: Option<Vec<u8>>,
}

/// A worker's client-side state.
pub(crate) struct ClientState<D> {
    /// User data of connections whose upgrade is under way.
    pending: HashMap<ConnId, D>,
    /// Connections to register with the driver before the next poll.
    fresh: Vec<ConnId>,
    /// The protocol settings with the client role (frames received must not be masked) and no
    /// automatic pong (the worker sends it).
    pub(super) proto: proto::Config,
    /// xorshift64* for handshake nonces, seeded from the OS.
    rng: u64,
}

impl<D> fmt::Debug for ClientState<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientState")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn os_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_ne_bytes(b) | 1
}

impl<D> ClientState<D> {
    pub(crate) fn new(server_proto: &proto::Config) -> Self {
        let mut proto = server_proto.clone();
        proto.role = Role::Client;
        // The worker answers pings itself, within the backpressure limit (`send_pong`).
        proto.auto_pong = false;
        ClientState {
            pending: HashMap::new(),
            fresh: Vec::new(),
            proto,
            rng: os_seed(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A connection in the `Dial` stage leaves the registry.
    pub(super) fn forget(
        &mut self,
        id: ConnId,
        dial: Dial,
        chunks: &mut ChunkPool,
        driver: &mut Driver,
    ) {
        self.pending.remove(&id);
        dial.head.release(|b| chunks.put(b));
        if let Some(request) = dial.tls_request {
            chunks.put(request);
        }
        if !dial.connected {
            driver.cancel_connect(id.0);
        }
    }
}

/// A `ws://` or `wss://` URL's parts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Url {
    /// `wss://`.
    pub(crate) secure: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The path with its query (at least `/`).
    pub(crate) path: String,
}

/// Splits `ws://host:port/path` (or `wss://`) into host, port and path (with its query).
pub(crate) fn parse_url(url: &str) -> io::Result<Url> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{url:?}: {why}"));
    let (secure, rest) = if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else {
        return Err(bad("not a ws:// or wss:// URL"));
    };
    let default_port = if secure { 443 } else { 80 };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') {
        return Err(bad("user information is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match &v6[end + 1..] {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| bad("bad port"))?,
        };
        (v6[..end].to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
            None => (authority.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Url {
        secure,
        host,
        port,
        path,
    })
}

fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address found")))
}

impl<D> WorkerCtx<D> {
    /// Opens an outgoing WebSocket connection from this worker, driven by the same loop and driver
    /// as accepted ones, with the same handler: `on_open` once the server's 101 is checked, then
    /// `on_message` etc., or [`Handler::on_connect_error`] (with `data` back) if it never opens.
    ///
    /// Returns at once with the connection's id; an `Err` means nothing was started (bad URL, a
    /// `wss://` host that is no valid TLS server name, unresolvable host, no descriptor left, source address not bindable, immediate refusal, or
    /// the server shutting down: a reconnect from `on_close` during shutdown is refused).
    /// The host is resolved here, blocking, unless it is an IP literal.
    pub fn connect(&mut self, req: &ConnectRequest, data: D) -> io::Result<ConnId> {
        if self.stopping() {
            // A reconnect from on_close or on_connect_error while the workers stop would keep
            // the worker busy until the shutdown deadline.
            return Err(io::Error::other("server shutting down"));
        }
        let Url {
            secure,
            host,
            port,
            path,
        } = parse_url(&req.url)?;
        // TLS first: a bad name or configuration fails before any socket exists.
        let tls = if secure {
            let cfg = req
                .tls
                .clone()
                .unwrap_or_else(ClientTlsConfig::webpki_roots);
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}"))
            })?;
            let conn = UnbufferedClientConnection::new(Arc::clone(&cfg.rustls), name)
                .map_err(io::Error::other)?;
            Some(conn)
        } else {
            None
        };
        let addr = resolve(&host, port)?;
        let socket =
            crate::driver::sys::start_connect(addr, req.source_addr, self.cfg.tcp_nodelay)?;
        let mut request = ClientRequest::new(host, port, path).secure(secure);
        for p in &req.subprotocols {
            request = request.subprotocol(p.clone());
        }
        let deflate = req.compression.unwrap_or(self.cfg.deflate.mode);
        let client_nct = req.client_no_context_takeover;
        if let Some(offer) = client_offer_with(deflate, client_nct) {
            request = request.extensions(offer);
        }
        for (name, value) in &req.headers {
            request = request.header(name.clone(), value.clone());
        }
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.client.next_u64().to_ne_bytes());
        nonce[8..].copy_from_slice(&self.client.next_u64().to_ne_bytes());
        let mut bytes = self.chunks.get();
        let expected = request.write_with_nonce(&mut bytes, nonce);
        let mut queue = WriteQueue::new();
        let mut tls_request = None;
        if tls.is_some() {
            tls_request = Some(bytes);
        } else {
            queue.push_chunk(bytes, &mut self.chunks);
        }
        let id = self.conns.insert(Connection {
            socket: crate::driver::Socket::Fd(socket),
            timer: 0,
            dropped: 0,
            stall: 0,
            flags: Flags::only(Flag::Client),
            subprotocol: 0,
            peer: super::PackedPeer::default(),
            queue,
            stage: Stage::Dial(Box::new(Dial {
                expected,
                deflate,
                client_nct,
                head: HeadBuffer::new(),
                connected: false,
                tls_request,
            })),
            data: None,
            deflate: None,
        });
        if let Some(conn) = tls {
            let c = self.conns.get_mut(id).expect("just inserted");
            c.set(Flag::Tls);
            if let Err(e) = self
                .tls
                .start_client(id, conn, &mut c.queue, &mut self.chunks)
            {
                self.remove(id);
                return Err(io::Error::other(e));
            }
        }
        self.client.pending.insert(id, data);
        self.client.fresh.push(id);
        let timeout = req.handshake_timeout.unwrap_or(self.cfg.handshake_timeout);
        let deadline = self.now + timeout;
        self.arm(id, Some(deadline));
        Ok(id)
    }

    /// Outgoing connections whose upgrade is still under way on this worker.
    pub fn pending_connects(&self) -> usize {
        self.client.pending.len()
    }
}

impl<H: Handler> Worker<H> {
    /// Registers the connections opened since the last poll.
    pub(super) fn register_dials(&mut self) {
        while let Some(id) = self.ctx.client.fresh.pop() {
            let Some(c) = self.ctx.conns.get_mut(id) else {
                continue;
            };
            if let Err(e) = self.ctx.driver.register_dial(&mut c.socket, id.0) {
                self.dial_failed(id, ConnectError::Io(e));
            }
        }
    }

    /// An epoll event for `id`: if it is an outgoing connection still connecting, this is the
    /// connect's end. Returns whether the connection is still there.
    pub(super) fn dial_event(&mut self, id: ConnId) -> bool {
        match self.ctx.conns.get(id).map(|c| &c.stage) {
            None => false,
            Some(Stage::Dial(d)) if !d.connected => self.dial_connected(id),
            Some(_) => true,
        }
    }

    /// io_uring: the connect poll of `id` completed.
    pub(super) fn dial_polled(&mut self, id: ConnId, error: Option<io::Error>) {
        if !matches!(
            self.ctx.conns.get(id).map(|c| &c.stage),
            Some(Stage::Dial(d)) if !d.connected
        ) {
            return; // stale (removed, or its slot reused)
        }
        if let Some(e) = error {
            self.dial_failed(id, ConnectError::Io(e));
            return;
        }
        if self.dial_connected(id) {
            let ctx = &mut self.ctx;
            let c = ctx.conns.get(id).expect("still there");
            // Connected: the receive starts; not yet: wait again.
            let connected = matches!(&c.stage, Stage::Dial(dial) if dial.connected);
            ctx.driver.dial_progress(&c.socket, id.0, connected);
        }
    }

    /// Reads the connect's outcome (`SO_ERROR`); on success the request is flushed. Returns whether
    /// the connection is still there.
    fn dial_connected(&mut self, id: ConnId) -> bool {
        let Some(c) = self.ctx.conns.get_mut(id) else {
            return false;
        };
        match c.socket.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                self.dial_failed(id, ConnectError::Io(e));
                return false;
            }
        }
        // No error and a peer: connected. (No peer yet: a spurious wake-up, wait for the next.)
        match c.socket.peer_addr() {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return true,
            Err(e) => {
                self.dial_failed(id, ConnectError::Io(e));
                return false;
            }
        }
        if let Stage::Dial(d) = &mut c.stage {
            d.connected = true;
        }
        self.ctx.mark_dirty(id);
        true
    }

    /// Bytes of the server's response (and maybe the first frames behind it).
    pub(super) fn dial_bytes(&mut self, id: ConnId, new: &mut [u8]) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let Stage::Dial(dial) = &mut c.stage else {
            return;
        };
        let mut head = std::mem::take(&mut dial.head);
        let status = head.feed(
            new,
            || ctx.chunks.get(),
            |b| parse_response(b, &dial.expected),
        );
        let (response, consumed) = match status {
            Ok(ResponseStatus::Partial) => {
                dial.head = head;
                return;
            }
            Ok(ResponseStatus::Complete { response, consumed }) => (response, consumed),
            Err(e) => {
                head.release(|b| ctx.chunks.put(b));
                self.dial_failed(id, ConnectError::Handshake(e));
                return;
            }
        };
        let accepted = client_accept_with(response.extensions(), dial.deflate, dial.client_nct);
        let params = match accepted {
            Ok(p) => p,
            Err(e) => {
                drop(response);
                head.release(|b| self.ctx.chunks.put(b));
                self.dial_failed(
                    id,
                    ConnectError::Handshake(ClientHandshakeError::Deflate(e)),
                );
                return;
            }
        };
        self.dial_open(id, &response, params);
        // Frames the server sent right behind its response (plaintext already, on TLS).
        let rest = head.rest(new, consumed);
        if !rest.is_empty() && self.ctx.conns.get(id).is_some() {
            self.stage_input(id, rest);
        }
        head.release(|b| self.ctx.chunks.put(b));
    }

    /// The upgrade succeeded: the connection opens with a client-role protocol core.
    fn dial_open(
        &mut self,
        id: ConnId,
        response: &Response,
        deflate: Option<proto::DeflateParams>,
    ) {
        let ctx = &mut self.ctx;
        let tag = response
            .subprotocol()
            .map_or(0, |p| ctx.protocols.intern(id, p));
        let seed = ctx.client.next_u64();
        let c = ctx.conns.get_mut(id).expect("still registered");
        let mut core = proto::Session::new(Role::Client, seed);
        if let Some(params) = deflate {
            core.enable_compression();
            c.deflate = Some(Box::new(DeflateState::new(params, Role::Client)));
        }
        core.start(ctx.now, &ctx.client.proto);
        c.stage = Stage::Open(core);
        c.subprotocol = tag;
        c.data = ctx.client.pending.remove(&id);
        ctx.open += usize::from(c.data.is_some());
        ctx.arm(id, None);
        ctx.sync_timer(id);
        ctx.metrics.dialed();
        self.handler.on_open(&mut Conn {
            ctx: &mut self.ctx,
            id,
        });
    }

    /// The connection never opened: removed, and the handler told (with its data back).
    pub(super) fn dial_failed(&mut self, id: ConnId, err: ConnectError) {
        let data = self.ctx.client.pending.remove(&id);
        self.ctx.remove(id);
        if let Some(data) = data {
            self.handler.on_connect_error(&mut self.ctx, id, data, &err);
        }
    }

    /// The TLS handshake of outgoing connection `id` failed: the handler is told, and the
    /// connection drains (the alert rustls queued goes out before FIN).
    pub(super) fn dial_failed_tls(&mut self, id: ConnId, err: rustls::Error) {
        let data = self.ctx.client.pending.remove(&id);
        self.ctx.enter_draining(id);
        if let Some(data) = data {
            self.handler
                .on_connect_error(&mut self.ctx, id, data, &ConnectError::Tls(err));
        }
    }

    /// Whether `id` is an outgoing connection whose upgrade is under way.
    pub(super) fn is_dialing(&self, id: ConnId) -> bool {
        matches!(
            self.ctx.conns.get(id).map(|c| &c.stage),
            Some(Stage::Dial(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        let p = |u: &str| {
            let u = parse_url(u).unwrap();
            (u.secure, u.host, u.port, u.path)
        };
        assert_eq!(p("ws://a:1/x?y"), (false, "a".into(), 1, "/x?y".into()));
        assert_eq!(p("ws://a"), (false, "a".into(), 80, "/".into()));
        assert_eq!(p("ws://a:9?q=1"), (false, "a".into(), 9, "/?q=1".into()));
        assert_eq!(p("ws://[::1]:7/"), (false, "::1".into(), 7, "/".into()));
        assert_eq!(p("wss://a/x"), (true, "a".into(), 443, "/x".into()));
        assert_eq!(p("wss://[::1]/"), (true, "::1".into(), 443, "/".into()));
        assert_eq!(p("wss://a:9443"), (true, "a".into(), 9443, "/".into()));
        assert!(parse_url("http://a/").is_err());
        assert!(parse_url("wss:/a/").is_err());
        assert!(parse_url("ws://a:x/").is_err());
        assert!(parse_url("ws://:1/").is_err());
    }
}
