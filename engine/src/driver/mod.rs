//! The worker's interface to the kernel, with static dispatch over the available backends.
//!
//! Only epoll is built today ([`epoll::EpollDriver`], over mio). The interface is shaped so that
//! io_uring plugs in as a second variant, `Driver::Uring(uring::UringDriver)`:
//!
//! - `register_*` / `deregister_*` become no-ops or fixed-file registrations for uring; the token
//!   stays the connection's [`ConnId`](crate::ConnId) bits, carried in each SQE's `user_data`.
//! - `poll` fills the same `Vec<IoEvent>`. A readiness backend reports `readable`/`writable` and the
//!   worker reads itself; a completion backend reports [`IoEvent::received`] bytes (a ring-provided
//!   buffer the worker hands to the protocol core and returns with `recycle`) and `written` counts
//!   for sends it submitted. The worker already processes "bytes arrived for connection X" and
//!   "socket can take more" as separate steps, so it only needs a branch on where the bytes come from.
//! - Sends: epoll flushes with `writev` at the end of the loop turn; uring would submit one `sendmsg`
//!   per dirty connection that owns its chunks until the completion arrives (monoio's lifecycle rule:
//!   a buffer the kernel may still read stays owned, even if the connection is gone).

pub(crate) mod epoll;

use std::io;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};

use crate::server::config::Backend;

/// One thing the kernel reported for a token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IoEvent {
    pub(crate) token: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

/// The kernel interface of one worker.
#[derive(Debug)]
pub(crate) enum Driver {
    Epoll(epoll::EpollDriver),
}

impl Driver {
    /// Opens the backend that `backend` resolves to.
    pub(crate) fn new(backend: Backend, worker: usize) -> io::Result<Driver> {
        if backend != Backend::Epoll && worker == 0 {
            eprintln!("surge: io_uring backend is not built yet; using epoll");
        }
        Ok(Driver::Epoll(epoll::EpollDriver::new()?))
    }

    /// A handle other threads use to wake this worker's `poll`.
    pub(crate) fn waker(&self, token: usize) -> io::Result<mio::Waker> {
        match self {
            Driver::Epoll(d) => d.waker(token),
        }
    }

    pub(crate) fn register_listener(
        &mut self,
        listener: &mut TcpListener,
        token: usize,
    ) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.register_listener(listener, token),
        }
    }

    pub(crate) fn deregister_listener(&mut self, listener: &mut TcpListener) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.deregister_listener(listener),
        }
    }

    /// Starts watching a connection for both directions, once: edge-triggered, so no re-arming is
    /// needed when a write would block.
    pub(crate) fn register_conn(&mut self, stream: &mut TcpStream, token: usize) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.register_conn(stream, token),
        }
    }

    /// Closing the socket deregisters it too (the worker relies on that); kept for the uring
    /// variant, whose registrations are not tied to the descriptor.
    #[allow(dead_code)]
    pub(crate) fn deregister_conn(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.deregister_conn(stream),
        }
    }

    /// Waits up to `timeout` (`None`: forever, zero: not at all) and appends what happened to `out`.
    pub(crate) fn poll(
        &mut self,
        out: &mut Vec<IoEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.poll(out, timeout),
        }
    }
}
