//! A connection's life around its bytes: accepting (one multishot accept per listener, re-armed
//! when it ends), connecting (a poll for the connect's end), the peer address of a direct
//! descriptor (`SO_PEERNAME` through the ring), and the `SHUTDOWN` and `CLOSE` of a direct
//! descriptor (see the module docs of [`uring`](super)).

use std::io;
use std::os::fd::{FromRawFd, RawFd};

use io_uring::{opcode, squeue, types};

use super::ops::Op;
use super::sys::{parse_sockaddr, peername_entry, PeerTarget};
use super::{fixed, pack_slot, Rearm, UringDriver};
use crate::driver::{IoEvent, Socket};

/// Several rings: single-shot accepts in flight per listener at most.
const ACCEPTS_IN_FLIGHT: u32 = 32;

/// An `SO_PEERNAME` query in flight: its output lives here (boxed: the kernel holds its address).
pub(super) struct PeerOp {
    token: u64,
    addr: libc::sockaddr_in6,
}

impl UringDriver {
    pub(crate) fn register_listener(&mut self, fd: RawFd, index: usize) {
        if self.listeners.len() <= index {
            self.listeners.resize(index + 1, -1);
        }
        self.listeners[index] = fd;
        if self.addr_lens.len() <= index {
            self.addr_lens.resize(index + 1, 0);
        }
        // SAFETY: borrowed for `local_addr` only: ManuallyDrop keeps the worker's descriptor open.
        let l = std::mem::ManuallyDrop::new(unsafe { std::net::TcpListener::from_raw_fd(fd) });
        self.addr_lens[index] = match l.local_addr() {
            Ok(std::net::SocketAddr::V4(_)) => std::mem::size_of::<libc::sockaddr_in>() as u32,
            _ => std::mem::size_of::<libc::sockaddr_in6>() as u32,
        };
        self.arm_accept(index);
    }

    pub(super) fn arm_accept(&mut self, index: usize) {
        let fd = self.listeners[index];
        if fd < 0 {
            return;
        }
        if self.spill {
            self.top_up_accepts(index, fd);
            return;
        }
        // A direct descriptor has no close-on-exec (the kernel refuses the flag for it).
        let flags = if self.direct {
            libc::SOCK_NONBLOCK
        } else {
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        };
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .allocate_file_index(self.direct)
            .flags(flags)
            .build()
            .user_data(Op::Accept.ud(index as u64));
        // SAFETY: a multishot accept without an address buffer: the kernel writes no user memory.
        unsafe { self.push(e) };
    }

    /// Several rings (see [`Rings`](super::Rings)): single-shot accepts of listener `index`, up to
    /// [`ACCEPTS_IN_FLIGHT`] and never more than the table's free slots, so that an accept never
    /// finds the table full. (A multishot accept takes every connection waiting in the backlog in
    /// one go, and one that finds no slot has already accepted the connection, which the kernel
    /// then drops.) With no slot left and none in flight, the listener moves to another ring.
    fn top_up_accepts(&mut self, index: usize, fd: RawFd) {
        if self.accepting.len() <= index {
            self.accepting.resize(index + 1, 0);
        }
        let in_flight: u32 = self.accepting.iter().sum();
        let free = self.table.saturating_sub(self.used + in_flight);
        let more = free.min(ACCEPTS_IN_FLIGHT.saturating_sub(self.accepting[index]));
        for _ in 0..more {
            let e = opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(Some(types::DestinationSlot::auto_target()))
                .flags(libc::SOCK_NONBLOCK)
                .build()
                .user_data(Op::Accept.ud(index as u64));
            // SAFETY: an accept without an address buffer: the kernel writes no user memory.
            unsafe { self.push(e) };
        }
        self.accepting[index] += more;
        if self.accepting[index] == 0 {
            // Full: the worker's rings move the accept to another ring.
            self.listeners[index] = -1;
            self.spilled.push(index);
        }
    }

    /// Stops accepting on listener `index` (the worker closes the descriptor afterwards; the
    /// pending accept holds its own reference until the cancel lands).
    pub(crate) fn deregister_listener(&mut self, index: usize) {
        if let Some(fd) = self.listeners.get_mut(index) {
            *fd = -1;
        }
        // Every accept of it: with several rings they are single-shot, up to ACCEPTS_IN_FLIGHT
        // (a plain cancel stops only the first match, and the others would keep the listening
        // socket open and accepting).
        let e = opcode::AsyncCancel2::new(
            types::CancelBuilder::user_data(Op::Accept.ud(index as u64)).all(),
        )
        .build()
        .user_data(Op::Cancel.ud(0));
        // SAFETY: a cancel names its targets by user_data only: no memory is involved.
        unsafe { self.push(e) };
    }

    /// The completion of listener `index`'s multishot accept: a connection (`res`: its descriptor
    /// or slot), and when the accept ended (`more` false), its re-arm: at once, or after
    /// `ACCEPT_RETRY` when it failed.
    pub(super) fn accepted(
        &mut self,
        index: usize,
        res: i32,
        more: bool,
        out: &mut Vec<IoEvent>,
        rearm: &mut Rearm,
    ) {
        if self.spill {
            // A single-shot accept (see `top_up_accepts`).
            if let Some(n) = self.accepting.get_mut(index) {
                *n = n.saturating_sub(1);
            }
        }
        if res >= 0 {
            let socket = if self.direct {
                self.used += 1;
                Socket::Direct(pack_slot(self.index, res as u32))
            } else {
                // SAFETY: the kernel just created descriptor `res` for us; nothing
                // else owns it.
                Socket::Fd(unsafe { mio::net::TcpStream::from_raw_fd(res) })
            };
            out.push(IoEvent::Accepted {
                listener: index,
                socket,
            });
        }
        if !more {
            if res < 0 && res != -libc::ECANCELED {
                // Out of descriptors or memory, or anything else that may persist:
                // re-arming at once could spin, so wait ACCEPT_RETRY (10 ms).
                self.accept_errors.log(&io::Error::from_raw_os_error(-res));
                rearm.retry.push(index);
            } else {
                rearm.accept.push(index);
            }
        }
    }

    /// Arms listener `index`'s accept again after `ACCEPT_RETRY` (it ended with an error).
    pub(super) fn retry_accept(&mut self, index: usize) {
        let ts: *const types::Timespec = &*self.retry_ts;
        let e = opcode::Timeout::new(ts)
            .build()
            .user_data(Op::Retry.ud(index as u64));
        // SAFETY: the timespec is a Box owned by the driver for its whole life and only read.
        unsafe { self.push(e) };
    }

    /// Asks the peer address of direct descriptor `slot` (accepted on listener `listener`) for
    /// connection `token`, hard-linked ahead of the next entry (the connection's first receive, or
    /// its poll in the poll mode), so that its [`IoEvent::Peer`] comes before any received byte.
    /// `false`: no query was made (the kernel lacks the command; the address stays unknown).
    pub(crate) fn query_peer(&mut self, slot: u32, listener: usize, token: u64) -> bool {
        if !self.peer_query {
            return false;
        }
        // The query and the entry linked after it (pushed next) in one submission.
        self.reserve(2);
        let len = self
            .addr_lens
            .get(listener)
            .copied()
            .filter(|&l| l != 0)
            .unwrap_or(std::mem::size_of::<libc::sockaddr_in6>() as u32);
        let entry = self.peers.vacant_entry();
        let key = entry.key() as u64;
        let op = entry.insert(Box::new(PeerOp {
            token,
            // SAFETY: sockaddr_in6 is a plain C struct; all-zero is valid.
            addr: unsafe { std::mem::zeroed() },
        }));
        let out: *mut libc::sockaddr_in6 = &mut op.addr;
        // SAFETY: `out` points into a Box held by `peers` until this entry's completion (the
        // Box's heap address does not move when the slab grows); nothing else reads or writes it
        // meanwhile. Drop waits for every completion or leaks `peers`.
        let e = unsafe { peername_entry(PeerTarget::Fixed(slot & super::SLOT_MASK), out, len) }
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(Op::Peer.ud(key));
        // SAFETY: see above.
        unsafe { self.push(e) };
        true
    }

    /// The completion of `SO_PEERNAME` query `key` (the key in `peers`): the connection's
    /// [`IoEvent::Peer`].
    pub(super) fn peer_done(&mut self, key: usize, res: i32, out: &mut Vec<IoEvent>) {
        if self.peers.contains(key) {
            let op = self.peers.remove(key);
            let addr = if res > 0 {
                parse_sockaddr(&op.addr, res as usize)
            } else {
                None
            };
            out.push(IoEvent::Peer {
                token: op.token,
                addr,
            });
        }
    }

    /// Waits for the non-blocking `connect(2)` of connection `token` to finish: a one-shot
    /// `POLL_ADD` for `POLLOUT` (the readiness approach, rather than `IORING_OP_CONNECT`: the
    /// socket was already connected with a plain syscall, so no address has to outlive the
    /// submission). Its completion is an [`IoEvent::Connected`]; the caller then reads `SO_ERROR`.
    pub(crate) fn poll_connect(&mut self, fd: RawFd, token: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(Op::Connect.ud(token));
        // SAFETY: a poll names no user memory.
        unsafe { self.push(e) };
    }

    /// Cancels connection `token`'s connect poll (its socket is being closed).
    pub(crate) fn cancel_connect(&mut self, token: u64) {
        self.cancel(Op::Connect.ud(token));
    }

    /// The completion of connection `token`'s connect poll (none when it was cancelled: the
    /// connection is gone).
    pub(super) fn connected(&mut self, token: u64, res: i32, out: &mut Vec<IoEvent>) {
        // A cancelled connect poll: its connection is gone.
        if res == -libc::ECANCELED {
            return;
        }
        out.push(IoEvent::Connected {
            token,
            error: (res < 0 && res != -libc::EINTR).then(|| io::Error::from_raw_os_error(-res)),
        });
    }

    /// `shutdown(SHUT_WR)` of direct descriptor `slot`.
    pub(crate) fn shutdown_write(&mut self, slot: u32) {
        self.shutting.insert(slot, false);
        let e = opcode::Shutdown::new(fixed(slot), libc::SHUT_WR)
            .build()
            .user_data(Op::Shutdown.ud(u64::from(slot)));
        // SAFETY: a shutdown names no memory.
        unsafe { self.push(e) };
    }

    /// Frees direct descriptor `slot` (the socket closes once pending operations let go of it; a
    /// later accept may reuse the slot, which no operation submitted after this one names). Waits
    /// for an in-flight `SHUTDOWN` of the slot: the kernel runs that one from its worker pool and
    /// looks the slot up only then, so after a `CLOSE` it would shut the slot's next socket down.
    pub(crate) fn close_direct(&mut self, slot: u32) {
        if let Some(close) = self.shutting.get_mut(&slot) {
            *close = true; // at the shutdown's completion
            return;
        }
        let e = opcode::Close::new(fixed(slot))
            .build()
            .user_data(Op::Quiet.ud(0));
        // SAFETY: a close names no memory.
        unsafe { self.push(e) };
    }

    /// The completion of direct descriptor `slot`'s `SHUTDOWN`: its `CLOSE`, if one waited for it.
    pub(super) fn shut_down(&mut self, slot: u32) {
        if self.shutting.remove(&slot) == Some(true) && !self.closing {
            self.close_direct(slot);
        }
    }
}
