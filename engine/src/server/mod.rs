//! The server: configuration, worker threads, and the handle to stop them.
//!
//! [`Server::start`] binds one `SO_REUSEPORT` listener per worker and address (on the calling
//! thread, so that bind errors surface there and port 0 resolves to one port for all workers), then
//! spawns the workers. Each worker creates its handler with the factory on its own thread.

pub(crate) mod bridge;
mod client;
mod command;
pub mod config;
pub(crate) mod handle;
pub mod handler;
pub mod limits;
pub(crate) mod mailbox;
pub mod metrics;
pub(crate) mod pending;
pub mod proxy;
pub(crate) mod registry;
pub(crate) mod timer;
pub(crate) mod topics;
pub(crate) mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

pub use bridge::FanoutBridge;
pub use client::Client;
pub use command::Command;
pub use config::{Backend, BackpressurePolicy, PanicPolicy, ServerConfig, UringRecv};
pub use handle::{ConnHandle, HandleError, Publisher};
pub use limits::{ClientLimiter, ClientLimits, LimitAction};
pub use pending::PendingUpgrade;
pub use proxy::ProxyProtocol;
pub use registry::ConnId;
pub use worker::dial::{ConnectError, ConnectRequest};
pub use worker::{Conn, MessageWriter, Timer, TimerId, WorkerCtx};

use crate::driver::{probe, DriverSeed};
use crate::handler::Handler;

/// State shared between the handles and the workers: the stop flag, the wakers, and each
/// worker's mailbox (commands from other threads, figures for them).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) wakers: Vec<crate::driver::Waker>,
    pub(crate) mailboxes: Vec<crossbeam_utils::CachePadded<mailbox::Mailbox>>,
    /// Where publishes and topic interest go beyond this process ([`Server::with_bridge`]).
    pub(crate) bridge: Option<Arc<dyn FanoutBridge>>,
    /// The per-client counters all workers share (`ServerConfig::client_limits`; `None`: off).
    pub(crate) limiter: Option<Arc<ClientLimiter>>,
    /// Connections closed for a malformed, oversized or missing PROXY protocol header.
    pub(crate) proxy_refused: std::sync::atomic::AtomicU64,
    /// Each worker's counters (`metrics.rs`), read at scrape time.
    pub(crate) metrics: Vec<Arc<crossbeam_utils::CachePadded<metrics::WorkerMetrics>>>,
    /// The metrics listener's address (`MetricsConfig::addr`, port resolved), woken at shutdown.
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// The TLS listeners' current settings ([`ServerHandle::reload_tls`]).
    pub(crate) tls: Arc<crate::tls::TlsCell>,
}

/// A WebSocket server: [`ServerConfig`] plus [`run`](Server::run) or [`start`](Server::start).
///
/// `start` returns a [`ServerHandle`] at once (its address, publishing, commands, shutdown);
/// `run` is `start` then `join`. The closure makes one handler per worker thread.
///
/// ```
/// use std::time::Duration;
/// use surge::{Accept, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade};
///
/// struct Echo;
/// impl Handler for Echo {
///     type Data = ();
///     fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
///         Upgrade::Accept(Accept::new(()))
///     }
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         let _ = conn.send(msg);
///     }
/// }
///
/// # fn main() -> std::io::Result<()> {
/// let config = ServerConfig {
///     workers: 2,
///     handshake_timeout: Duration::from_secs(5),
///     ..ServerConfig::bind("127.0.0.1:0".parse().unwrap()) // 0: any free port
/// };
/// let server = Server::new(config).start(|_worker_index| Echo)?;
/// println!("listening on ws://{}", server.local_addr());
/// server.shutdown(); // closes every connection with 1001 ("going away")
/// server.join()
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    config: ServerConfig,
    bridge: Option<Arc<dyn FanoutBridge>>,
}

impl Server {
    /// A server with these settings.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            bridge: None,
        }
    }

    /// Extends this server's topics beyond the process: every publish and every change of a
    /// worker's topic interest is told to `bridge`, which delivers messages from other nodes
    /// through [`Publisher::publish_local`] (see [`FanoutBridge`]; the `surge-cluster` crate
    /// implements it over NATS and Redis).
    pub fn with_bridge(mut self, bridge: Arc<dyn FanoutBridge>) -> Self {
        self.bridge = Some(bridge);
        self
    }

    /// Starts the workers and blocks until they stop (after [`ShutdownTrigger::shutdown`] from
    /// another thread, or an error).
    pub fn run<H, F>(self, factory: F) -> io::Result<()>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        self.start(factory)?.join()
    }

    /// Binds, starts the workers and returns at once. `factory(i)` creates worker `i`'s handler on
    /// that worker's thread.
    pub fn start<H, F>(self, factory: F) -> io::Result<ServerHandle>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        self.launch(factory, false)
    }

    /// [`start`](Self::start); `unbound`: no listener at all (a client-only runtime).
    pub(crate) fn launch<H, F>(self, factory: F, unbound: bool) -> io::Result<ServerHandle>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let mut cfg = self.config;
        cfg.proto.role = crate::proto::Role::Server;
        let workers = cfg.workers.max(1);
        if unbound {
            cfg.bind.clear();
            cfg.tls_bind.clear();
        } else if cfg.bind.is_empty() && cfg.tls_bind.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no bind address",
            ));
        }
        if !unbound {
            proxy::check_listeners(&cfg)?;
        }
        // Bind the first worker's sockets, then the others on the ports those got.
        if !cfg.tls_bind.is_empty() && cfg.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tls_bind without tls settings (ServerConfig::tls)",
            ));
        }
        let tls = Arc::new(crate::tls::TlsCell::new(cfg.tls.as_ref()));
        // Bind the first worker's sockets, then the others on the ports those got: the plain
        // addresses, then the TLS ones (a listener's index tells which it is).
        let mut addrs = cfg.bind.clone();
        addrs.extend_from_slice(&cfg.tls_bind);
        let mut per_worker = Vec::with_capacity(workers);
        for _ in 0..workers {
            let mut listeners = Vec::with_capacity(addrs.len());
            for addr in &mut addrs {
                let l = bind_reuseport(*addr, cfg.backlog, cfg.tcp_nodelay)?;
                *addr = l.local_addr()?;
                listeners.push(l);
            }
            per_worker.push(listeners);
        }
        // Auto and the SURGE_BACKEND override are resolved once, here.
        let backend = probe::resolve(cfg.backend)?;
        cfg.backend = backend;
        let direct = direct_table_size(&cfg);
        cfg.uring_recv = cfg.uring_recv.requested();
        let mut drivers = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (seed, waker) = DriverSeed::new(
                backend,
                direct,
                rings_per_worker(&cfg, direct),
                cfg.uring_recv,
                cfg.uring_max_recv_buffers,
            )?;
            wakers.push(waker);
            drivers.push(seed);
        }
        let metrics_listener = cfg.metrics.addr.map(metrics::serve::bind).transpose()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            mailboxes: (0..wakers.len()).map(|_| Default::default()).collect(),
            metrics: (0..wakers.len()).map(|_| Default::default()).collect(),
            metrics_addr: metrics_listener
                .as_ref()
                .map(|l| l.local_addr())
                .transpose()?,
            wakers,
            bridge: self.bridge,
            limiter: ClientLimiter::new(&cfg.client_limits).map(Arc::new),
            proxy_refused: Default::default(),
            tls,
        });
        if let Some(bridge) = &shared.bridge {
            bridge.attach(Publisher {
                shared: Arc::clone(&shared),
            });
        }
        let cfg = Arc::new(cfg);
        let factory = Arc::new(factory);
        let mut threads = Vec::with_capacity(workers);
        // Each worker opens its driver on its own thread and reports back before we return, so a
        // worker that cannot (a refused ring) fails the start instead of leaving a listener that
        // nobody serves.
        let (opened_tx, opened_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        for (i, (driver, listeners)) in drivers.into_iter().zip(per_worker).enumerate() {
            let cfg = Arc::clone(&cfg);
            let shared = Arc::clone(&shared);
            let factory = Arc::clone(&factory);
            let opened = opened_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("surge-worker-{i}"))
                .spawn(move || {
                    if cfg.pin_cpus {
                        crate::driver::sys::pin_to_cpu(i);
                    }
                    let driver = match driver.open() {
                        Ok(d) => {
                            let _ = opened.send(Ok(()));
                            d
                        }
                        Err(e) => {
                            let _ = opened.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    drop(opened);
                    let handler = factory(i);
                    let listeners = listeners
                        .into_iter()
                        .map(mio::net::TcpListener::from_std)
                        .collect();
                    let policy = cfg.panic_policy;
                    let stop = Arc::clone(&shared);
                    let run = std::panic::AssertUnwindSafe(|| {
                        worker::Worker::new(i, cfg, driver, listeners, handler, shared).run()
                    });
                    // The worker's Drop has quiesced its ring by the time the unwind gets here.
                    std::panic::catch_unwind(run).unwrap_or_else(|payload| {
                        let what = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a non-string payload".into());
                        match policy {
                            PanicPolicy::Abort => {
                                eprintln!(
                                    "surge: worker {i} panicked ({what}); aborting the process \
                                     (ServerConfig::panic_policy)"
                                );
                                std::process::abort();
                            }
                            PanicPolicy::Shutdown => {
                                eprintln!(
                                    "surge: worker {i} panicked ({what}); shutting the server down \
                                     (ServerConfig::panic_policy)"
                                );
                                ShutdownTrigger { shared: stop }.shutdown();
                                Err(io::Error::other(format!("worker {i} panicked: {what}")))
                            }
                        }
                    })
                })?;
            threads.push(thread);
        }
        drop(opened_tx);
        let mut failure = None;
        for _ in 0..workers {
            match opened_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => {
                    failure = failure.or(Some(io::Error::other("worker thread died at start")))
                }
            }
        }
        let metrics_thread = match (failure.is_none(), metrics_listener) {
            (true, Some(l)) => Some(metrics::serve::spawn(l, Arc::clone(&shared))?),
            _ => None,
        };
        if let Some(e) = failure {
            let handle = ServerHandle {
                addrs,
                plain: cfg.bind.len(),
                backend,
                shared,
                threads,
                metrics_thread,
            };
            handle.shutdown();
            let _ = handle.join();
            return Err(e);
        }
        Ok(ServerHandle {
            addrs,
            plain: cfg.bind.len(),
            backend,
            shared,
            threads,
            metrics_thread,
        })
    }
}

/// Slots of each of a worker's direct-descriptor tables (0: ordinary descriptors): one per
/// connection the worker may hold (and [`OVER_LIMIT`] over), capped by
/// `RLIMIT_NOFILE`, which the kernel applies to each table (a worker opens more rings, each with
/// its own table, to hold more), or by `uring_ring_slots`.
fn direct_table_size(cfg: &ServerConfig) -> u32 {
    if cfg.backend != Backend::IoUring || !cfg.uring_direct_descriptors || !probe::direct_support()
    {
        return 0;
    }
    let nofile = crate::driver::sys::nofile_limit();
    let want = cfg.max_connections_per_worker.saturating_add(OVER_LIMIT) as u64;
    let cap = match cfg.uring_ring_slots {
        Some(n) => u64::from(n.max(1)).min(nofile),
        None => nofile,
    };
    want.min(cap).min(1 << 20) as u32
}

/// Direct-descriptor slots a worker has beyond `max_connections_per_worker`, so that it can still
/// accept (and close at once) connections past its limit rather than leave them in the backlog.
const OVER_LIMIT: usize = 64;

/// How many io_uring rings (each with a table of `direct` slots) a worker may open: enough for
/// `max_connections_per_worker` and [`OVER_LIMIT`].
fn rings_per_worker(cfg: &ServerConfig, direct: u32) -> usize {
    if direct == 0 {
        return 1;
    }
    let want = cfg.max_connections_per_worker.saturating_add(OVER_LIMIT);
    want.div_ceil(direct as usize)
        .clamp(1, crate::driver::uring::MAX_RINGS)
}

fn bind_reuseport(
    addr: SocketAddr,
    backlog: i32,
    nodelay: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if nodelay {
        // Accepted sockets inherit it (Linux): no setsockopt per connection.
        socket.set_nodelay(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// A running server: its addresses, and the way to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    /// How many of `addrs` are plain (`bind`); the TLS ones (`tls_bind`) follow.
    plain: usize,
    backend: Backend,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// The metrics listener's thread (`MetricsConfig::addr`).
    metrics_thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The server's metrics: every worker's counters, encoded in the Prometheus text format on
    /// demand (docs/OPERATIONS.md lists them), for an application that serves them
    /// itself. Valid after the server stopped too (the final counts).
    pub fn metrics(&self) -> metrics::Metrics {
        metrics::Metrics {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The metrics listener's address ([`MetricsConfig::addr`](metrics::MetricsConfig::addr) with
    /// its port resolved); `None` without one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.shared.metrics_addr
    }

    /// The bound addresses, ports resolved (in the order of `ServerConfig::bind`, then
    /// `ServerConfig::tls_bind`).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound TLS addresses (`ServerConfig::tls_bind`), ports resolved.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.addrs[self.plain.min(self.addrs.len())..]
    }

    /// Replaces the TLS certificates and settings: handshakes that start after this call use
    /// `tls`, connections already open (or handshaking) carry on with what they started with.
    /// Fails on a server started without [`ServerConfig::tls`].
    pub fn reload_tls(&self, tls: &crate::tls::TlsConfig) -> io::Result<()> {
        if self.shared.tls.get().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this server has no TLS listener settings",
            ));
        }
        self.shared.tls.set(tls);
        Ok(())
    }

    /// The backend the workers run: [`Backend::Epoll`] or [`Backend::IoUring`] (never `Auto`:
    /// resolved at start, after the `SURGE_BACKEND` override).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The per-client limits' shared table and its refusal counters (`None` when
    /// [`ServerConfig::client_limits`] sets no limit).
    pub fn client_limiter(&self) -> Option<&ClientLimiter> {
        self.shared.limiter.as_deref()
    }

    /// Connections closed so far for a malformed, oversized or (where required) missing PROXY
    /// protocol header (see [`ServerConfig::proxy_protocol`]); a counter for metrics.
    pub fn proxy_refused(&self) -> u64 {
        self.shared.proxy_refused.load(Ordering::Relaxed)
    }

    /// The first bound address. Panics for a [`Client`] runtime, which has none.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Stops the server: no more accepts, close 1001 to every connection, then the workers exit once
    /// their connections are gone or after `shutdown_timeout`. Returns at once; see [`join`](Self::join).
    pub fn shutdown(&self) {
        self.trigger().shutdown();
    }

    /// A handle that can stop the server from another thread (a signal handler thread).
    pub fn trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Waits for every worker to exit; the first error any of them met.
    pub fn join(self) -> io::Result<()> {
        if let Some(t) = self.metrics_thread {
            let _ = t.join();
        }
        let mut result = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("worker thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Stops a server from any thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    shared: Arc<Shared>,
}

impl ShutdownTrigger {
    /// See [`ServerHandle::shutdown`].
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in &self.shared.wakers {
            let _ = w.wake();
        }
        metrics::serve::wake(&self.shared);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::handler::{Accept, SendStatus, Upgrade};
    use crate::proto::Message;
    use crate::{Conn, Request};

    struct Echo;
    impl Handler for Echo {
        type Data = ();
        fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
            if req.path() == "/deny" {
                Upgrade::Reject(crate::Rejection::new(403, "no"))
            } else {
                Upgrade::Accept(Accept::new(()))
            }
        }
        fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
            let _ = conn.send(msg);
        }
    }

    const REQUEST: &str = "GET /PATH HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn read_all(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    }

    #[test]
    fn handshake_timeout_rejection_echo_and_shutdown() {
        let cfg = ServerConfig {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 1,
            handshake_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        let server = Server::new(cfg).start(|_| Echo).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        // Half a request: dropped at the deadline, while others are served.
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = Instant::now();

        // An application rejection, answered and closed with FIN.
        let mut denied = TcpStream::connect(addr).unwrap();
        denied
            .write_all(REQUEST.replace("/PATH", "/deny").as_bytes())
            .unwrap();
        let resp = String::from_utf8(read_all(&mut denied)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
        drop(denied);

        // Upgrade with a masked frame right behind the request: echoed.
        let mut ok = TcpStream::connect(addr).unwrap();
        let mut bytes = REQUEST.replace("/PATH", "/").into_bytes();
        bytes.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        ok.write_all(&bytes).unwrap();
        ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(&[0x81, 2, b'h', b'i']) {
            let n = ok.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101"));

        half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(read_all(&mut half).is_empty());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
            "{waited:?}"
        );

        // Shutdown: close 1001, then the worker exits once the client answers.
        server.shutdown();
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = ok.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..4], &[0x88, got[1], 0x03, 0xe9], "close 1001");
        ok.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9]).unwrap();
        assert!(
            read_all(&mut ok).is_empty(),
            "FIN after the close handshake"
        );
        drop(ok);
        server.join().unwrap();
    }

    /// Sends 256 KiB per received message; records what the engine reported.
    struct Flood {
        log: std::sync::mpsc::Sender<(SendStatus, usize)>,
    }
    impl Handler for Flood {
        type Data = ();
        fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
            Upgrade::Accept(Accept::new(()))
        }
        fn on_message(&mut self, conn: &mut Conn<'_, ()>, _msg: Message<'_>) {
            let status = conn.send_binary(&vec![7u8; 256 * 1024]);
            let _ = self.log.send((status, conn.buffered_amount()));
        }
        fn on_drain(&mut self, conn: &mut Conn<'_, ()>) {
            let _ = self
                .log
                .send((SendStatus::Sent, usize::MAX - conn.buffered_amount()));
        }
    }

    #[test]
    fn backpressure_drop_policy_bounds_memory_and_drains() {
        let (tx, rx) = std::sync::mpsc::channel();
        let cfg = ServerConfig {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 1,
            ..ServerConfig::default()
        };
        let tx = std::sync::Mutex::new(tx);
        let server = Server::new(cfg)
            .start(move |_| Flood {
                log: tx.lock().unwrap().clone(),
            })
            .unwrap();
        let mut c = TcpStream::connect(server.local_addr()).unwrap();
        let mut bytes = REQUEST.replace("/PATH", "/").into_bytes();
        for _ in 0..200 {
            bytes.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
        }
        c.write_all(&bytes).unwrap();
        let mut dropped = 0;
        let mut max_buffered = 0;
        for _ in 0..200 {
            let (status, buffered) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            if status == SendStatus::Dropped {
                dropped += 1;
            }
            max_buffered = max_buffered.max(buffered);
        }
        assert!(dropped > 150, "dropped {dropped}");
        assert!(max_buffered <= (1 << 20) + 256 * 1024, "{max_buffered}");
        // Reading relieves the pressure: on_drain.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = vec![0u8; 1 << 16];
        let drained = loop {
            let _ = c.read(&mut sink).unwrap();
            if let Ok((_, b)) = rx.try_recv() {
                break b;
            }
        };
        assert!(drained > usize::MAX - (1 << 20), "on_drain under the limit");
        drop(c);
        server.shutdown();
        server.join().unwrap();
    }
}
