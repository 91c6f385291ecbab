//! The server: configuration, worker threads, and the handle to stop them.
//!
//! [`Server::start`] binds one `SO_REUSEPORT` listener per worker and address (on the calling
//! thread, so that bind errors surface there and port 0 resolves to one port for all workers), then
//! spawns the workers. Each worker creates its handler with the factory on its own thread.

pub mod config;
pub(crate) mod registry;
pub(crate) mod timer;
pub(crate) mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

pub use config::{Backend, BackpressurePolicy, ServerConfig};
pub use registry::ConnId;
pub use worker::{Conn, MessageWriter, WorkerCtx};

use crate::driver::Driver;
use crate::handler::Handler;

/// State shared between the handle and the workers: only the stop flag and the wakers (never
/// touched on the hot path).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    wakers: Vec<mio::Waker>,
}

/// A WebSocket server: [`ServerConfig`] plus [`run`](Server::run) or [`start`](Server::start).
#[derive(Debug, Clone)]
pub struct Server {
    config: ServerConfig,
}

impl Server {
    /// A server with these settings.
    pub fn new(config: ServerConfig) -> Self {
        Server { config }
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
        let mut cfg = self.config;
        cfg.proto.role = crate::proto::Role::Server;
        let workers = cfg.workers.max(1);
        if cfg.bind.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no bind address",
            ));
        }
        // Bind the first worker's sockets, then the others on the ports those got.
        let mut addrs = cfg.bind.clone();
        let mut per_worker = Vec::with_capacity(workers);
        for _ in 0..workers {
            let mut listeners = Vec::with_capacity(addrs.len());
            for addr in &mut addrs {
                let l = bind_reuseport(*addr, cfg.backlog)?;
                *addr = l.local_addr()?;
                listeners.push(l);
            }
            per_worker.push(listeners);
        }
        let mut drivers = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        for i in 0..workers {
            let driver = Driver::new(cfg.backend, i)?;
            wakers.push(driver.waker(worker::WAKER_TOKEN)?);
            drivers.push(driver);
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wakers,
        });
        let cfg = Arc::new(cfg);
        let factory = Arc::new(factory);
        let mut threads = Vec::with_capacity(workers);
        for (i, (driver, listeners)) in drivers.into_iter().zip(per_worker).enumerate() {
            let cfg = Arc::clone(&cfg);
            let shared = Arc::clone(&shared);
            let factory = Arc::clone(&factory);
            let thread = std::thread::Builder::new()
                .name(format!("surge-worker-{i}"))
                .spawn(move || {
                    if cfg.pin_cpus {
                        worker::pin_to_cpu(i);
                    }
                    let handler = factory(i);
                    let listeners = listeners
                        .into_iter()
                        .map(mio::net::TcpListener::from_std)
                        .collect();
                    worker::Worker::new(i, cfg, driver, listeners, handler, shared).run()
                })?;
            threads.push(thread);
        }
        Ok(ServerHandle {
            addrs,
            shared,
            threads,
        })
    }
}

fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
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
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// The bound addresses, ports resolved (in the order of `ServerConfig::bind`).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first bound address.
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
    }
}
