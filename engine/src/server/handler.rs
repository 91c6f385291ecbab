//! The application's side: the [`Handler`] trait whose callbacks run on each connection's own loop
//! thread, and the values they exchange with the engine.
//!
//! ```no_run
//! use surge::{Accept, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type Data = ();
//!     fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
//!         Upgrade::Accept(Accept::new(()))
//!     }
//!     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
//!         conn.send(msg);
//!     }
//! }
//! Server::new(ServerConfig::default()).run(|_worker| Echo).unwrap();
//! ```

use crate::handshake::{Rejection, Request, Response};
use crate::proto::{CloseCode, Message, MessageKind};
use crate::server::{Conn, ConnId, ConnectError, PendingUpgrade, WorkerCtx};

/// What [`Handler::on_upgrade`] decides.
#[derive(Debug)]
pub enum Upgrade<D> {
    /// Switch protocols: answer 101 and open the connection with this user data.
    Accept(Accept<D>),
    /// Refuse: answer with this HTTP response and close.
    Reject(Rejection),
    /// Decide later, from any thread: see [`Upgrade::defer`].
    Defer(Defer<D>),
}

impl<D> Upgrade<D> {
    /// Decides later: `f` runs on the worker right after `on_upgrade` returns, with the
    /// [`PendingUpgrade`] to accept or reject from any thread (typically moved into a task that
    /// asks an authentication service). The request is kept by the worker until then; copy what
    /// the decision needs (a token from the query, a cookie) into the closure.
    ///
    /// ```no_run
    /// use surge::{Accept, Conn, Handler, Message, PendingUpgrade, Rejection, Request, Upgrade};
    ///
    /// struct Auth {
    ///     checks: std::sync::mpsc::Sender<(String, PendingUpgrade<String>)>,
    /// }
    /// impl Handler for Auth {
    ///     type Data = String;
    ///     fn on_upgrade(&mut self, req: &Request) -> Upgrade<String> {
    ///         let token = req.query().unwrap_or("").to_owned();
    ///         let checks = self.checks.clone();
    ///         // Another thread checks the token, then calls `pending.accept(Accept::new(user))`
    ///         // or `pending.reject(Rejection::new(401, "bad token"))`.
    ///         Upgrade::defer(move |pending| {
    ///             let _ = checks.send((token, pending));
    ///         })
    ///     }
    ///     fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
    ///         conn.send(msg);
    ///     }
    /// }
    /// ```
    pub fn defer(f: impl FnOnce(PendingUpgrade<D>) + 'static) -> Self {
        Upgrade::Defer(Defer(Box::new(f)))
    }
}

/// A deferred decision: what [`Upgrade::defer`] makes.
pub struct Defer<D>(pub(crate) Box<dyn FnOnce(PendingUpgrade<D>)>);

impl<D> std::fmt::Debug for Defer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Defer(..)")
    }
}

/// An accepted upgrade.
#[derive(Debug)]
pub struct Accept<D> {
    /// The connection's user data, handed back in [`Handler::on_close`].
    pub data: D,
    /// The subprotocol to answer with. `None`: the first of
    /// [`ServerConfig::subprotocols`](crate::ServerConfig::subprotocols) that the client offers,
    /// if any.
    pub subprotocol: Option<String>,
    /// Extra response headers (cookies, ...). Names and values must not contain CR or LF.
    pub headers: Vec<(String, String)>,
}

impl<D> Accept<D> {
    /// Accepts with `data`, the default subprotocol choice and no extra headers.
    pub fn new(data: D) -> Self {
        Accept {
            data,
            subprotocol: None,
            headers: Vec::new(),
        }
    }
}

/// How a connection ended, given to [`Handler::on_close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseInfo<'a> {
    /// The connection's id on its worker (no longer valid: kept to match it with what the
    /// application keyed by id, such as handles or its own tables).
    pub id: ConnId,
    /// The peer's close code (1005 when its close frame had none), the code of the protocol error
    /// the connection was failed with (1002, 1007, 1009), or 1006 when it ended without a close
    /// frame (reset, EOF, timeout).
    pub code: CloseCode,
    /// The peer's close reason, if it sent one.
    pub reason: &'a str,
    /// Whether `code` and `reason` come from a close frame the peer sent.
    pub by_peer: bool,
}

/// The outcome of a send (uWebSockets' send status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a send may be dropped under backpressure"]
pub enum SendStatus {
    /// Queued; the buffered amount is within the limit.
    Sent,
    /// Queued, but the buffered amount is now over the limit: [`Handler::on_drain`] follows when it
    /// falls back under.
    Backpressure,
    /// Not queued: the backpressure limit was reached and the policy is to drop.
    Dropped,
    /// Not queued: the connection is closing or closed.
    Closed,
    /// Not queued: a control payload over 125 bytes, or a close code that may not be sent.
    Invalid,
}

impl SendStatus {
    /// Whether the data was queued.
    pub fn is_queued(self) -> bool {
        matches!(self, SendStatus::Sent | SendStatus::Backpressure)
    }
}

/// The application's callbacks. One handler per worker thread (created there by the factory given
/// to [`Server::run`](crate::Server::run)); every callback of a connection runs on its worker's
/// thread, so a handler needs no locks.
pub trait Handler: 'static {
    /// Per-connection user data: created at upgrade, dropped after `on_close`.
    type Data: 'static;

    /// Decides on an upgrade request (method, path, query, headers, peer address). The origin has
    /// already passed the configured policy.
    ///
    /// An [`Upgrade::Accept`] returned here is always followed by [`on_open`](Self::on_open) for
    /// this connection, at once and before any other callback of it, so a seat reserved here (a
    /// room's player count) is always taken in `on_open` and given back in `on_close`, which runs
    /// exactly once per `on_open`. A deferred accept ([`Upgrade::defer`]) is followed by `on_open`
    /// too, unless the connection ended before the worker ran the decision (see
    /// [`PendingUpgrade::accept`]); the `Data` is then dropped without either callback.
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<Self::Data>;

    /// A plain HTTP request on the WebSocket port (no `Upgrade: websocket`): a page, a health
    /// check, a JSON status (`Response::json`, with the `json` feature). The
    /// worker is at hand: its connections, timers and commands. The answer is written and the connection closed
    /// after it (`Connection: close`). The default is gorilla's: 400 "the client is not using the
    /// websocket protocol". The request body, if any, is not read.
    ///
    /// ```
    /// use surge::{Handler, Request, Response, WorkerCtx};
    /// # struct App;
    /// impl Handler for App {
    ///     type Data = ();
    ///     fn on_http(&mut self, worker: &mut WorkerCtx<()>, req: &Request) -> Response {
    ///         match req.path() {
    ///             "/health" => Response::ok("ok"),
    ///             "/stats" => Response::ok(format!("{} players here", worker.connection_count())),
    ///             _ => Response::new(404, "not found"),
    ///         }
    ///     }
    /// #   fn on_upgrade(&mut self, _r: &Request) -> surge::Upgrade<()> { surge::Upgrade::Accept(surge::Accept::new(())) }
    /// #   fn on_message(&mut self, _c: &mut surge::Conn<'_, ()>, _m: surge::Message<'_>) {}
    /// }
    /// ```
    fn on_http(&mut self, worker: &mut WorkerCtx<Self::Data>, req: &Request) -> Response {
        let _ = (worker, req);
        crate::handshake::HandshakeError::UpgradeNotWebSocket.to_rejection()
    }

    /// The connection is open (the 101 response is queued).
    fn on_open(&mut self, conn: &mut Conn<'_, Self::Data>) {
        let _ = conn;
    }

    /// A whole message, borrowed from the read buffer or the assembly buffer (no copy).
    fn on_message(&mut self, conn: &mut Conn<'_, Self::Data>, msg: Message<'_>);

    /// A piece of a message that did not arrive whole in one read (only with
    /// `proto.stream_fragments`).
    fn on_fragment(
        &mut self,
        conn: &mut Conn<'_, Self::Data>,
        kind: MessageKind,
        data: &[u8],
        first: bool,
        last: bool,
    ) {
        let _ = (conn, kind, data, first, last);
    }

    /// A ping arrived (already answered when `proto.auto_pong` is on).
    fn on_ping(&mut self, conn: &mut Conn<'_, Self::Data>, data: &[u8]) {
        let _ = (conn, data);
    }

    /// A pong arrived.
    fn on_pong(&mut self, conn: &mut Conn<'_, Self::Data>, data: &[u8]) {
        let _ = (conn, data);
    }

    /// The connection is over for the application: exactly once per `on_open`. The close handshake
    /// and the TCP shutdown may still be finishing. `worker` reaches the other connections, topics,
    /// timers and `connect` (to announce a departure, or to reconnect; refused once the server is
    /// shutting down). This connection is no longer open: `worker.conn(info.id)` is `None`, it is
    /// not in `conn_ids`/`for_each_conn` and its subscriptions have ended (it is no longer in
    /// `connection_count`, but in `socket_count` until its close handshake and TCP shutdown are
    /// done).
    fn on_close(
        &mut self,
        worker: &mut WorkerCtx<Self::Data>,
        data: Self::Data,
        info: &CloseInfo<'_>,
    ) {
        let _ = (worker, data, info);
    }

    /// An application command posted to this worker ([`WorkerCtx::post`],
    /// [`Publisher::post`](crate::Publisher::post)), in the order each poster sent it. Take the
    /// value back by type with [`Command::downcast`](crate::Command::downcast). The default drops it.
    ///
    /// ```no_run
    /// use surge::{Command, WorkerCtx};
    /// # struct Input { player: u32, dx: i8 }
    /// # struct Rooms;
    /// # impl Rooms {
    /// fn on_command(&mut self, worker: &mut WorkerCtx<()>, cmd: Command) {
    ///     match cmd.downcast::<Input>() {
    ///         Ok(input) => { /* move the player in this home worker's room state */ }
    ///         Err(other) => { /* another command type */ let _ = other; }
    ///     }
    /// }
    /// # }
    /// ```
    fn on_command(&mut self, worker: &mut WorkerCtx<Self::Data>, cmd: crate::server::Command) {
        let _ = (worker, cmd);
    }

    /// The buffered amount fell under the backpressure limit after being over it.
    fn on_drain(&mut self, conn: &mut Conn<'_, Self::Data>) {
        let _ = conn;
    }

    /// The worker starts, before its first poll: a client opens its connections here (or arms a
    /// timer that does, for a ramp).
    fn on_start(&mut self, worker: &mut WorkerCtx<Self::Data>) {
        let _ = worker;
    }

    /// An outgoing connection opened with [`WorkerCtx::connect`] never opened: the connect failed,
    /// the server refused the upgrade ([`ConnectError::status`] gives its HTTP status), the
    /// response was invalid, the TLS handshake of a `wss://` connection failed
    /// ([`ConnectError::Tls`]: the certificate refused, an alert), the handshake timed out, or the
    /// worker is shutting down. `data` is
    /// the value given to `connect`; no `on_close` follows.
    fn on_connect_error(
        &mut self,
        worker: &mut WorkerCtx<Self::Data>,
        id: ConnId,
        data: Self::Data,
        error: &ConnectError,
    ) {
        let _ = (worker, id, data, error);
    }

    /// An application timer set with [`WorkerCtx::set_timeout`] or [`WorkerCtx::set_interval`]
    /// is due: [`Timer::get`](crate::Timer::get) gives back the value it was set with (see
    /// [`Timer`](crate::Timer) for an example).
    fn on_timer(&mut self, worker: &mut WorkerCtx<Self::Data>, timer: crate::Timer<'_>) {
        let _ = (worker, timer);
    }
}
