//! A driver without a kernel, for the worker harness's tests (`server/worker/harness.rs`): the
//! test scripts what the "kernel" reports (events, bytes to read, room to write) and reads what
//! the worker wrote, on a fake clock. Its sockets are "direct descriptors" (slots) naming pipes.
//! It behaves as epoll does (readiness: the worker reads and writes through the driver), or, with
//! `completion` set, writes as io_uring does (a write stays in flight, holding its queue, until
//! the test completes it with an [`IoEvent::Sent`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use super::{IoEvent, Socket, Written};
use crate::buf::{ChunkPool, WriteQueue};

/// One connection's two directions as the test sees them.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    /// Bytes the worker reads next.
    pub(crate) input: VecDeque<u8>,
    /// After `input`, reads return EOF.
    pub(crate) eof: bool,
    /// Reads and writes fail (`ConnectionReset`).
    pub(crate) reset: bool,
    /// What the worker wrote.
    pub(crate) output: Vec<u8>,
    /// How many more bytes writes may take (`None`: any number); then `WouldBlock`.
    pub(crate) room: Option<usize>,
    /// The worker shut its side down (FIN).
    pub(crate) fin: bool,
    /// The worker closed the socket.
    pub(crate) closed: bool,
}

impl io::Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if self.reset || self.fin {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut n = 0;
        for b in bufs {
            let take = self.room.map_or(b.len(), |r| r.min(b.len()));
            self.output.extend_from_slice(&b[..take]);
            n += take;
            if let Some(r) = &mut self.room {
                *r -= take;
            }
            if take < b.len() {
                break;
            }
        }
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the fake kernel holds and reports; shared with the test.
#[derive(Debug, Default)]
pub(crate) struct FakeNet {
    /// Each socket's pipe, by slot.
    pub(crate) pipes: HashMap<u32, Pipe>,
    /// Reported by the next poll.
    pub(crate) events: VecDeque<IoEvent>,
    /// Writes stay in flight until the test completes them (io_uring's way).
    pub(crate) completion: bool,
    /// Completion mode: writes in flight (token, bytes), in order.
    pub(crate) in_flight: Vec<(u64, usize)>,
    /// Completion mode: queues of connections closed with a write in flight, until it completes.
    pub(crate) orphans: HashMap<u64, WriteQueue>,
    /// Tokens of the connections registered, in order.
    pub(crate) registered: Vec<u64>,
    /// The timeout of each poll.
    pub(crate) timeouts: Vec<Option<Duration>>,
}

/// The driver the worker holds.
#[derive(Debug)]
pub(crate) struct FakeDriver(pub(crate) Rc<RefCell<FakeNet>>);

fn slot(socket: &Socket) -> u32 {
    match socket {
        Socket::Direct(slot) => *slot,
        Socket::Fd(_) => panic!("the fake driver's sockets are slots"),
    }
}

impl FakeDriver {
    pub(crate) fn poll(&mut self, out: &mut Vec<IoEvent>, timeout: Option<Duration>) {
        let mut net = self.0.borrow_mut();
        net.timeouts.push(timeout);
        out.extend(net.events.drain(..));
    }

    pub(crate) fn register_conn(&mut self, token: u64) {
        self.0.borrow_mut().registered.push(token);
    }

    pub(crate) fn shutdown_write(&mut self, socket: &Socket) {
        if let Some(p) = self.0.borrow_mut().pipes.get_mut(&slot(socket)) {
            p.fin = true;
        }
    }

    pub(crate) fn read(&mut self, socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
        let mut net = self.0.borrow_mut();
        let p = net.pipes.get_mut(&slot(socket)).expect("a pipe per socket");
        if p.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if p.input.is_empty() {
            return if p.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(p.input.len());
        for (dst, src) in buf.iter_mut().zip(p.input.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }

    pub(crate) fn write(
        &mut self,
        socket: &Socket,
        token: u64,
        queue: &mut WriteQueue,
        pool: &mut ChunkPool,
    ) -> io::Result<Written> {
        let mut net = self.0.borrow_mut();
        if net.completion {
            if queue.is_empty() {
                return Ok(Written::Done {
                    empty: true,
                    wrote: false,
                });
            }
            net.in_flight.push((token, queue.len()));
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 64];
            queue.lend_iovecs(&mut iov);
            return Ok(Written::InFlight);
        }
        let p = net.pipes.get_mut(&slot(socket)).expect("a pipe per socket");
        let before = queue.len();
        let empty = queue.flush(p, pool)?;
        Ok(Written::Done {
            empty,
            wrote: queue.len() != before,
        })
    }

    /// Closes a socket.
    pub(crate) fn close_socket(&mut self, socket: &Socket) {
        if let Some(p) = self.0.borrow_mut().pipes.get_mut(&slot(socket)) {
            p.closed = true;
        }
    }

    /// Closes a connection's socket; a queue with a write in flight stays here until the test
    /// completes the write.
    pub(crate) fn close(
        &mut self,
        token: u64,
        socket: Socket,
        mut queue: WriteQueue,
        pool: &mut ChunkPool,
    ) {
        self.close_socket(&socket);
        let mut net = self.0.borrow_mut();
        if queue.in_flight() {
            net.orphans.insert(token, queue);
        } else {
            queue.release(pool);
        }
    }
}
