//! The worker's interface to the kernel, with static dispatch over the two backends.
//!
//! - [`epoll::EpollDriver`] (readiness, over mio): events say a socket is readable or writable;
//!   the worker reads into its one read buffer and flushes with `writev`.
//! - [`uring::UringDriver`] (completions, io_uring): events carry accepted descriptors, received
//!   bytes in a provided buffer (the worker hands them to the protocol core, then `recycle`s the
//!   buffer), and send completions; sends own their chunks until the completion arrives.
//!
//! [`probe`] decides which one runs (`SURGE_BACKEND`, then a probe of the kernel), and whether the
//! uring driver accepts into direct descriptors ([`Socket::Direct`]).

pub(crate) mod backend;
pub(crate) mod epoll;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod probe;
mod stats;
pub(crate) mod sys;
pub(crate) mod uring;
pub(crate) use stats::DriverStats;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buf::{ChunkPool, WriteQueue};
use crate::ratelog::RateLog;

use mio::net::{TcpListener, TcpStream};

pub use backend::{Backend, UringRecv};

/// How long a worker waits before accepting again after an accept failed with an error that may
/// persist (out of descriptors or memory): retrying at once would spin, and waiting for the next
/// arrival could wait forever while clients sit in the accept queue.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// The log of failed accepts: one line per second at most, with the count of those not logged in
/// between. Both drivers retry after [`ACCEPT_RETRY`].
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors(RateLog);

impl AcceptErrors {
    pub(crate) fn log(&mut self, e: &io::Error) {
        if let Some(quiet) = self.0.ready(Instant::now(), 1) {
            let retry = ACCEPT_RETRY.as_millis();
            let more = RateLog::more(quiet);
            let hint = match e.raw_os_error() {
                Some(libc::EMFILE) | Some(libc::ENFILE) => {
                    " (each connection holds a file descriptor here: the process's RLIMIT_NOFILE or \
                     the system's fs.file-max bounds them; the io_uring backend with direct \
                     descriptors holds connections without descriptors)"
                }
                _ => "",
            };
            eprintln!("surge: accept failed: {e}{hint}; retrying in {retry} ms{more}");
        }
    }
}

/// A connection's socket.
#[derive(Debug)]
pub(crate) enum Socket {
    /// An ordinary descriptor (epoll; io_uring without direct descriptors): closed on drop.
    Fd(TcpStream),
    /// io_uring: a slot in the worker ring's file table (a direct descriptor). It uses no process
    /// descriptor, so the process fd limit does not bound connections; every operation on it goes
    /// through the ring, and [`Driver::close`] frees the slot.
    Direct(u32),
}

impl Socket {
    /// The peer's address, asked of the kernel. A direct descriptor has no process fd to ask
    /// `getpeername` with (and multishot accept returns no address): `Unsupported` (the worker
    /// asks it through the ring at accept instead, see [`Driver::query_peer`]).
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Socket::Fd(s) => s.peer_addr(),
            Socket::Direct(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// The pending error (`SO_ERROR`) of an ordinary descriptor (outgoing connections).
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Socket::Fd(s) => s.take_error(),
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        match self {
            Socket::Fd(s) => Ok(s),
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

/// Epoll reads: only ordinary descriptors are ever read with syscalls.
impl io::Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream()?.read(buf)
    }
}

/// Epoll writes (`writev` of a write queue): only ordinary descriptors.
impl io::Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream()?.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream()?.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One thing the kernel reported.
#[derive(Debug)]
pub(crate) enum IoEvent {
    /// epoll: `token` is ready. `hup`: the peer's EOF (or an error) is already known, so reading
    /// must go on until the read that reports it, even after a short read.
    Ready {
        token: Token,
        readable: bool,
        writable: bool,
        hup: bool,
    },
    /// uring: the connect poll of connection `token` completed (`error`: the poll failed; else the
    /// connect's own outcome is the socket's `SO_ERROR`). A cancelled poll reports nothing.
    Connected {
        token: u64,
        error: Option<io::Error>,
    },
    /// uring: the worker's eventfd was written.
    Wake,
    /// uring: listener `listener` accepted `socket` (now owned by the worker: dropping a direct
    /// one without [`Driver::close`] keeps its slot until the ring goes).
    Accepted { listener: usize, socket: Socket },
    /// uring: the peer address of direct-descriptor connection `token` (`None`: the query failed),
    /// asked by [`Driver::query_peer`]; it comes before the connection's first `Received`.
    Peer {
        token: u64,
        addr: Option<SocketAddr>,
    },
    /// uring: bytes arrived for connection `token`, lent in `buf` (give it back with
    /// [`Driver::recycle`] once they are processed); `more`: the receive stays armed (else re-arm
    /// with [`Driver::rearm_recv`]).
    Received {
        token: u64,
        buf: uring::RecvBuf,
        more: bool,
    },
    /// uring: a receive ended without data (see [`RecvEnd`]); `more`: the receive stays armed.
    RecvEnd {
        token: u64,
        end: RecvEnd,
        more: bool,
    },
    /// uring, poll mode: connection `token` may have bytes to read and none of its receives is in
    /// flight: start one with `UringDriver::recv_once` (unless the connection is gone or at EOF).
    Readable { token: u64 },
    /// uring: a send of connection `token` completed with `res` (bytes or -errno). `orphan`: the
    /// queue of a connection removed while it was in flight, now free to release.
    Sent {
        token: u64,
        res: i32,
        orphan: Option<crate::buf::WriteQueue>,
    },
}

/// What a readiness event is about. Connections are named by their worker-wide id (slot and
/// generation, as the worker's registry packs them into a `u64`), which every operation of theirs
/// carries (epoll tokens, io_uring user_data payloads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    Conn(u64),
    /// The worker's listener with this index.
    Listener(usize),
    /// The worker's waker (its mailbox has commands, or the server is stopping).
    Waker,
}

/// Why a receive ended without data (io_uring), as the worker acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecvEnd {
    /// The peer's EOF.
    Eof,
    /// Out of provided buffers with the ring at its limit: the bytes wait in the socket; re-arm
    /// with [`Driver::rearm_starved`], a few connections per turn (re-arming them all at once
    /// would end most in `ENOBUFS` again).
    Starved,
    /// Nothing wrong (out of buffers below the limit, interrupted, cancelled, the end of a
    /// readiness poll): re-arm unless the receive stays armed.
    Retry,
    /// A socket error: the connection is broken.
    Failed,
}

impl RecvEnd {
    /// The end a receive completion's result `res` (<= 0) means; `at_max`: the buffer ring cannot
    /// grow.
    pub(crate) fn of(res: i32, at_max: bool) -> RecvEnd {
        match -res {
            0 => RecvEnd::Eof,
            libc::ENOBUFS if at_max => RecvEnd::Starved,
            libc::ENOBUFS | libc::EINTR | libc::EAGAIN | libc::ECANCELED => RecvEnd::Retry,
            e if e > 0 => RecvEnd::Failed,
            _ => RecvEnd::Retry,
        }
    }
}

/// What [`Driver::write`] did with a write queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Written at once (epoll): `empty` the queue is now empty, `wrote` some bytes left.
    Done { empty: bool, wrote: bool },
    /// A write of the queue is in flight (io_uring): its chunks must stay put, and no other write
    /// of it may start, until its [`IoEvent::Sent`].
    InFlight,
}

/// Wakes a worker blocked in its driver's wait, from any thread.
#[derive(Debug)]
pub(crate) enum Waker {
    Mio(mio::Waker),
    EventFd(Arc<OwnedFd>),
    /// The worker harness's (tests): its wake-ups are events the test posts.
    #[cfg(test)]
    Noop,
}

impl Waker {
    pub(crate) fn wake(&self) -> io::Result<()> {
        match self {
            Waker::Mio(w) => w.wake(),
            #[cfg(test)]
            Waker::Noop => Ok(()),
            Waker::EventFd(fd) => {
                let one: u64 = 1;
                // SAFETY: writes the 8 bytes of `one` to an eventfd we keep open through the Arc.
                let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    // EAGAIN: the counter is saturated, a wake-up is pending anyway.
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Err(e);
                    }
                }
                Ok(())
            }
        }
    }
}

/// What `Server::start` prepares for a worker on the calling thread; the worker thread opens its
/// driver from it (an io_uring with SINGLE_ISSUER belongs to the thread that creates it).
#[derive(Debug)]
pub(crate) enum DriverSeed {
    Epoll(epoll::EpollDriver),
    Uring {
        wake: Arc<OwnedFd>,
        direct: u32,
        max_rings: usize,
        recv: UringRecv,
        ring_max: usize,
    },
}

impl DriverSeed {
    /// The seed for `backend` (already resolved: `Epoll` or `IoUring`) and its waker. `direct`: the
    /// size of the direct-descriptor table to ask for (0: ordinary descriptors); `max_rings`: how
    /// many rings (each with such a table) a worker may open; `recv`: how io_uring connections
    /// receive; `ring_max`: the most provided receive buffers per ring.
    pub(crate) fn new(
        backend: Backend,
        direct: u32,
        max_rings: usize,
        recv: UringRecv,
        ring_max: usize,
    ) -> io::Result<(DriverSeed, Waker)> {
        match backend {
            Backend::IoUring => {
                let fd = Arc::new(sys::event_fd()?);
                let seed = DriverSeed::Uring {
                    wake: Arc::clone(&fd),
                    direct,
                    max_rings,
                    recv,
                    ring_max,
                };
                Ok((seed, Waker::EventFd(fd)))
            }
            _ => {
                let d = epoll::EpollDriver::new()?;
                let w = d.waker()?;
                Ok((DriverSeed::Epoll(d), Waker::Mio(w)))
            }
        }
    }

    /// Opens the driver; call on the worker's thread.
    pub(crate) fn open(self) -> io::Result<Driver> {
        match self {
            DriverSeed::Epoll(d) => Ok(Driver::Epoll(d)),
            DriverSeed::Uring {
                wake,
                direct,
                max_rings,
                recv,
                ring_max,
            } => Ok(Driver::Uring(Box::new(uring::Rings::new(
                wake, direct, max_rings, recv, ring_max,
            )?))),
        }
    }
}

/// The kernel interface of one worker.
#[derive(Debug)]
pub(crate) enum Driver {
    Epoll(epoll::EpollDriver),
    Uring(Box<uring::Rings>),
    /// The worker harness's (tests).
    #[cfg(test)]
    Fake(fake::FakeDriver),
}

impl Driver {
    pub(crate) fn register_listener(
        &mut self,
        listener: &mut TcpListener,
        index: usize,
    ) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.register_listener(listener, index),
            #[cfg(test)]
            Driver::Fake(_) => Ok(()),
            Driver::Uring(d) => {
                d.register_listener(listener.as_raw_fd(), index);
                Ok(())
            }
        }
    }

    pub(crate) fn deregister_listener(
        &mut self,
        listener: &mut TcpListener,
        index: usize,
    ) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.deregister_listener(listener),
            #[cfg(test)]
            Driver::Fake(_) => Ok(()),
            Driver::Uring(d) => {
                d.deregister_listener(index);
                Ok(())
            }
        }
    }

    /// Starts watching a connection for both directions, once: edge-triggered on epoll (no
    /// re-arming when a write would block); a multishot receive on uring.
    pub(crate) fn register_conn(&mut self, socket: &mut Socket, token: u64) -> io::Result<()> {
        match self {
            Driver::Epoll(d) => d.register_conn(socket.stream()?, token),
            #[cfg(test)]
            Driver::Fake(d) => {
                d.register_conn(token);
                Ok(())
            }
            Driver::Uring(d) => {
                d.of(socket).arm_recv(socket, token);
                Ok(())
            }
        }
    }

    /// io_uring direct descriptors: asks the peer's address of `socket` (accepted on listener
    /// `listener`) for connection `token`; call right before [`Driver::register_conn`] (the query
    /// is linked ahead of the receive). `true`: an [`IoEvent::Peer`] will follow.
    pub(crate) fn query_peer(&mut self, socket: &Socket, listener: usize, token: u64) -> bool {
        match (self, socket) {
            (Driver::Uring(d), Socket::Direct(slot)) => {
                d.of_slot(*slot).query_peer(*slot, listener, token)
            }
            _ => false,
        }
    }

    /// Starts watching an outgoing connection whose non-blocking connect is under way: on epoll the
    /// same edge-triggered registration as any connection (the connect's end is a writable edge);
    /// on uring a connect poll, the multishot receive being armed once connected.
    /// (Outgoing connections are always ordinary descriptors.)
    pub(crate) fn register_dial(&mut self, socket: &mut Socket, token: u64) -> io::Result<()> {
        let stream = socket.stream()?;
        match self {
            Driver::Epoll(d) => d.register_conn(stream, token),
            #[cfg(test)]
            Driver::Fake(_) => Ok(()),
            Driver::Uring(d) => {
                d.first().poll_connect(stream.as_raw_fd(), token);
                Ok(())
            }
        }
    }

    /// `shutdown(Write)`: a syscall on an ordinary descriptor, a `SHUTDOWN` op on a direct one (its
    /// failure then goes unreported: the receive or the close timeout ends the connection).
    pub(crate) fn shutdown_write(&mut self, socket: &Socket) -> io::Result<()> {
        match (self, socket) {
            (_, Socket::Fd(s)) => s.shutdown(Shutdown::Write),
            (Driver::Uring(d), Socket::Direct(slot)) => {
                d.of_slot(*slot).shutdown_write(*slot);
                Ok(())
            }
            #[cfg(test)]
            (Driver::Fake(d), Socket::Direct(_)) => {
                d.shutdown_write(socket);
                Ok(())
            }
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Closes a socket: drops an ordinary descriptor, frees a direct one's slot with a `CLOSE` op.
    /// Cancels and reaps every kernel operation in flight (io_uring), so that the memory they name
    /// (the worker's write queues among it) can be freed; `false` if some are still in flight after
    /// the wait. Nothing to do on epoll, which holds no operation.
    pub(crate) fn quiesce(&mut self) -> bool {
        match self {
            Driver::Uring(d) => d.quiesce(),
            _ => true,
        }
    }

    pub(crate) fn close(&mut self, socket: Socket) {
        #[cfg(test)]
        if let Driver::Fake(d) = self {
            d.close_socket(&socket);
        }
        if let (Driver::Uring(d), Socket::Direct(slot)) = (self, &socket) {
            d.of_slot(*slot).close_direct(*slot);
        }
    }

    /// Ends connection `token` in the driver: its receive is cancelled, its socket closed (a direct
    /// descriptor's slot freed) and its write queue released, or, while a write of the queue is in
    /// flight, kept by the driver until that write's completion (the kernel may still read its
    /// chunks), and the write cancelled.
    pub(crate) fn close_conn(
        &mut self,
        token: u64,
        socket: Socket,
        mut queue: WriteQueue,
        pool: &mut ChunkPool,
    ) {
        #[cfg(test)]
        if let Driver::Fake(d) = self {
            d.close(token, socket, queue, pool);
            return;
        }
        if let Driver::Uring(d) = self {
            match d.close_conn(token, socket, queue) {
                Some(q) => queue = q, // no send in flight, or its completion came already
                None => return,
            }
        }
        queue.release(pool);
    }

    /// Gives back the buffer of a [`IoEvent::Received`] (the worker is done with its bytes).
    pub(crate) fn recycle(&mut self, buf: uring::RecvBuf) {
        if let Driver::Uring(d) = self {
            d.recycle(buf);
        }
    }

    /// Re-arms connection `token`'s receive after it ended (io_uring; epoll needs nothing).
    pub(crate) fn rearm_recv(&mut self, socket: &Socket, token: u64) {
        if let Driver::Uring(d) = self {
            d.of(socket).arm_recv(socket, token);
        }
    }

    /// After an [`IoEvent::Readable`]: starts reading connection `token` (io_uring poll mode).
    pub(crate) fn read_more(&mut self, socket: &Socket, token: u64) {
        if let Driver::Uring(d) = self {
            d.of(socket).recv_once(socket, token);
        }
    }

    /// How many [`RecvEnd::Starved`] connections to re-arm before the next poll (0 on epoll).
    pub(crate) fn starved_budget(&self) -> usize {
        match self {
            Driver::Uring(d) => d.starved_budget(),
            _ => 0,
        }
    }

    /// Re-arms a [`RecvEnd::Starved`] connection's receive.
    pub(crate) fn rearm_starved(&mut self, socket: &Socket, token: u64) {
        if let Driver::Uring(d) = self {
            d.of(socket).rearm_starved(socket, token);
        }
    }

    /// The periodic buffer trim: the driver gives back what the last interval did not need.
    pub(crate) fn trim(&mut self) {
        if let Driver::Uring(d) = self {
            d.trim();
        }
    }

    /// Bytes of buffers the driver keeps for reuse (part of `WorkerCtx::buffer_memory`).
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Driver::Uring(d) => d.held_bytes(),
            _ => 0,
        }
    }

    /// Counts of kernel events the metrics report (zeros on epoll).
    pub(crate) fn stats(&mut self) -> DriverStats {
        match self {
            Driver::Uring(d) => d.stats(),
            _ => DriverStats::default(),
        }
    }

    /// Whether a [`Driver::trim`] could free anything.
    pub(crate) fn holds_spare(&self) -> bool {
        match self {
            Driver::Uring(d) => d.holds_spare(),
            _ => false,
        }
    }

    /// Reads what connection `socket` has (epoll: `read(2)`; the readiness drivers only).
    pub(crate) fn read(&mut self, socket: &mut Socket, buf: &mut [u8]) -> io::Result<usize> {
        use io::Read;
        match self {
            #[cfg(test)]
            Driver::Fake(d) => d.read(socket, buf),
            _ => socket.read(buf),
        }
    }

    /// Writes connection `token`'s queue: at once with `writev` until the socket is full (epoll),
    /// or as a `sendmsg` in flight (io_uring, when the queue is not empty: then the queue's chunks
    /// must stay put until its [`IoEvent::Sent`]). An error means the connection is broken.
    pub(crate) fn write(
        &mut self,
        socket: &mut Socket,
        token: u64,
        queue: &mut WriteQueue,
        pool: &mut ChunkPool,
    ) -> io::Result<Written> {
        match self {
            Driver::Uring(d) if !queue.is_empty() => {
                d.of(socket).send(socket, token, queue)?;
                Ok(Written::InFlight)
            }
            Driver::Uring(_) => Ok(Written::Done {
                empty: true,
                wrote: false,
            }),
            #[cfg(test)]
            Driver::Fake(d) => d.write(socket, token, queue, pool),
            Driver::Epoll(_) => {
                let before = queue.len();
                let empty = queue.flush(socket, pool)?;
                Ok(Written::Done {
                    empty,
                    wrote: queue.len() != before,
                })
            }
        }
    }

    /// Cancels the connect wait of outgoing connection `token` (its socket is being closed).
    pub(crate) fn cancel_connect(&mut self, token: u64) {
        if let Driver::Uring(d) = self {
            d.first().cancel_connect(token);
        }
    }

    /// After an outgoing connection's connect wait ended (io_uring): `connected`, its receive
    /// starts; else it waits again. (epoll: its registration covers both.)
    pub(crate) fn dial_progress(&mut self, socket: &Socket, token: u64, connected: bool) {
        let Driver::Uring(d) = self else {
            return;
        };
        if connected {
            d.of(socket).arm_recv(socket, token);
        } else if let Socket::Fd(s) = socket {
            d.first().poll_connect(s.as_raw_fd(), token);
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
            #[cfg(test)]
            Driver::Fake(d) => {
                d.poll(out, timeout);
                Ok(())
            }
            Driver::Uring(d) => d.poll(out, timeout),
        }
    }
}
