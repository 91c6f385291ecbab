//! A client-only runtime: workers with no listener, whose handlers open outgoing connections.

use std::io;

use super::{Server, ServerConfig, ServerHandle};
use crate::handler::Handler;

/// Worker threads with no listener: each handler opens connections with
/// [`WorkerCtx::connect`](crate::WorkerCtx::connect), typically from
/// [`Handler::on_start`] or a timer (a connection ramp). Same loops, drivers, settings
/// ([`ServerConfig`]; `bind` is ignored) and callbacks as a server; a handler may also connect
/// from a server's workers. `wss://` URLs connect over TLS, verified against the webpki roots or
/// [`ConnectRequest::tls`](crate::ConnectRequest::tls).
///
/// ```no_run
/// use surge::{Client, ConnectRequest, Conn, Handler, Message, Request, ServerConfig, Upgrade, WorkerCtx};
///
/// struct Hello;
/// impl Handler for Hello {
///     type Data = ();
///     fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
///         unreachable!("a client accepts nothing")
///     }
///     fn on_start(&mut self, worker: &mut WorkerCtx<()>) {
///         worker.connect(&ConnectRequest::new("ws://127.0.0.1:9001/"), ()).unwrap();
///     }
///     fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
///         let _ = conn.send_text("hello");
///     }
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, _msg: Message<'_>) {
///         let _ = conn.close(surge::CloseCode::NORMAL, "");
///     }
/// }
/// let cfg = ServerConfig { workers: 1, ..ServerConfig::default() };
/// Client::new(cfg).start(|_worker| Hello).unwrap().join().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    config: ServerConfig,
}

impl Client {
    /// A client runtime with these settings (`bind` is ignored).
    pub fn new(config: ServerConfig) -> Self {
        Client { config }
    }

    /// Starts the workers and returns at once; stop them with [`ServerHandle::shutdown`] (pending
    /// connects fail with `Shutdown`, open connections get close 1001). Its `local_addrs` is empty.
    pub fn start<H, F>(self, factory: F) -> io::Result<ServerHandle>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        Server::new(self.config).launch(factory, true)
    }
}
