//! Receives into the provided buffers: a multishot `RECV` per connection, or in the poll mode a
//! multishot readiness poll and pairs of linked single-shot receives ([`RecvPair`]); the buffers
//! lent with the bytes come back through [`UringDriver::recycle`] (see the module docs of
//! [`uring`](super)).

use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{cqueue, opcode, squeue, types};

use super::buf_ring::{RecvBuf, BGID};
use super::ops::Op;
use super::UringDriver;
use crate::driver::{IoEvent, RecvEnd, Socket};

/// Poll mode: a connection's pair of linked single-shot receives in flight.
#[derive(Debug)]
pub(super) struct RecvPair {
    /// Completions still to come (2, then 1).
    inflight: u8,
    /// The poll reported readiness meanwhile: another pair follows, whatever these find.
    again: bool,
    /// The first result without data (EOF, `-EAGAIN`, an error); the pair's later results say
    /// nothing new (a second EOF, `-ECANCELED` from the broken link).
    ended: Option<i32>,
}

impl UringDriver {
    /// Arms the multishot receive of connection `token` (also after `ENOBUFS` or when the kernel
    /// ended it); in the poll mode, its multishot readiness poll (also when the kernel ended it).
    pub(crate) fn arm_recv(&mut self, socket: &Socket, token: u64) {
        if self.poll_mode {
            // POLLIN also reports the peer's FIN; POLLRDHUP says it explicitly. POLLERR and
            // POLLHUP are named too: a wake-up whose key is only EPOLLERR (a reset) is otherwise
            // filtered out (epoll adds them itself, io_uring does not). Each wake-up of the socket
            // matching the mask posts a completion while the poll stays armed, so bytes arriving
            // after a receive found the socket empty always bring a new one.
            let mask = (libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP) as u32;
            let e = match socket {
                Socket::Fd(s) => opcode::PollAdd::new(types::Fd(s.as_raw_fd()), mask),
                Socket::Direct(slot) => opcode::PollAdd::new(super::fixed(*slot), mask),
            }
            .multi(true)
            .build()
            .user_data(Op::Poll.ud(token));
            // SAFETY: a poll names no user memory.
            unsafe { self.push(e) };
            return;
        }
        let e = match socket {
            Socket::Fd(s) => opcode::RecvMulti::new(types::Fd(s.as_raw_fd()), BGID).build(),
            Socket::Direct(slot) => opcode::RecvMulti::new(super::fixed(*slot), BGID).build(),
        }
        .user_data(Op::Recv.ud(token));
        // SAFETY: the kernel writes only into provided buffers of group BGID, which live as long as
        // the driver (see BufRing::new); no other memory is named.
        unsafe { self.push(e) };
    }

    /// Poll mode: two non-blocking receives of connection `token` into provided buffers, the
    /// second linked after the first (after an [`IoEvent::Readable`]). Receives already in
    /// flight only get more after them.
    ///
    /// Why two: after bytes, only a receive that finds the socket empty (`-EAGAIN`) proves that
    /// no EOF or error is pending (see [`UringDriver::recv_done`]). The second one is that check,
    /// made in the same submission as the first rather than a loop turn later; it reads on if
    /// more arrived. (An `IO_LINK`: a first receive that fails, `-EAGAIN` included, cancels the
    /// second; one that returns EOF does not, and the second's EOF is dropped.)
    pub(crate) fn recv_once(&mut self, socket: &Socket, token: u64) {
        if let Some(pair) = self.recvs.get_mut(&token) {
            pair.again = true;
            return;
        }
        self.recvs.insert(
            token,
            RecvPair {
                inflight: 2,
                again: false,
                ended: None,
            },
        );
        self.reserve(2); // the pair in one submission
        let first = self.recv_entry(socket, token).flags(squeue::Flags::IO_LINK);
        // SAFETY: see `recv_entry`.
        unsafe { self.push(first) };
        let second = self.recv_entry(socket, token);
        // SAFETY: see `recv_entry`.
        unsafe { self.push(second) };
    }

    /// A non-blocking single-shot receive of connection `token` into a provided buffer. Pushing it
    /// is safe in the sense of [`UringDriver::push`]: with BUFFER_SELECT the kernel writes only
    /// into a provided buffer of group BGID (the null address is not used), which lives as long as
    /// the driver (see BufRing::new).
    fn recv_entry(&self, socket: &Socket, token: u64) -> squeue::Entry {
        let flags = libc::MSG_DONTWAIT;
        match socket {
            Socket::Fd(s) => opcode::Recv::new(
                types::Fd(s.as_raw_fd()),
                std::ptr::null_mut(),
                self.bufs.size,
            )
            .buf_group(BGID)
            .flags(flags)
            .build(),
            Socket::Direct(slot) => {
                opcode::Recv::new(super::fixed(*slot), std::ptr::null_mut(), self.bufs.size)
                    .buf_group(BGID)
                    .flags(flags)
                    .build()
            }
        }
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(Op::Recv.ud(token))
    }

    /// Cancels connection `token`'s receive (before its descriptor is closed); in the poll mode its
    /// poll and any receive in flight. (Their completions may still come, with the token of a
    /// connection that is gone.)
    pub(crate) fn cancel_recv(&mut self, token: u64) {
        if self.poll_mode {
            self.cancel(Op::Poll.ud(token));
            if self.recvs.contains_key(&token) {
                self.cancel(Op::Recv.ud(token));
            }
            return;
        }
        self.cancel(Op::Recv.ud(token));
    }

    /// The worker is done with a `Received` event's bytes: the buffer goes back to the kernel
    /// (visible at the next poll), unless the kernel kept its rest for later receives: then it
    /// comes back with the receive that finishes it.
    pub(crate) fn recycle(&mut self, buf: RecvBuf) {
        debug_assert!(
            Rc::ptr_eq(&buf.live, &self.bufs.live),
            "another ring's buffer"
        );
        if !buf.keep {
            self.bufs.give_back(buf.bid);
        }
    }

    /// Re-arms the receive of a connection whose receive ended with `ENOBUFS` while the ring could
    /// not grow: its multishot receive, or in the poll mode a pair of receives.
    pub(crate) fn rearm_starved(&mut self, socket: &Socket, token: u64) {
        if self.poll_mode {
            self.recv_once(socket, token);
        } else {
            self.arm_recv(socket, token);
        }
    }

    /// How many starved connections to re-arm before the next submit: half the ring's buffers
    /// (a receive of a message larger than a buffer takes two), so that most find one.
    pub(crate) fn starved_budget(&self) -> usize {
        usize::from(self.bufs.target / 2).max(1)
    }

    /// The completion of connection `token`'s multishot receive: bytes, lent in a provided buffer,
    /// or the end of the receive (`more`: it stays armed).
    pub(super) fn received(
        &mut self,
        token: u64,
        res: i32,
        flags: u32,
        more: bool,
        out: &mut Vec<IoEvent>,
    ) {
        match cqueue::buffer_select(flags) {
            Some(bid) if res > 0 => {
                let (at, keep) = self.bufs.take(bid, res as u32, flags);
                let buf = self.bufs.lend(bid, at, res as u32, keep);
                out.push(IoEvent::Received { token, buf, more })
            }
            Some(bid) => {
                if !(self.bufs.inc && cqueue::buffer_more(flags)) {
                    self.bufs.give_back(bid);
                }
                out.push(IoEvent::RecvEnd {
                    token,
                    end: RecvEnd::of(res, self.bufs.at_max()),
                    more,
                });
            }
            None => {
                if res == -libc::ENOBUFS {
                    self.bufs.note_short();
                }
                out.push(IoEvent::RecvEnd {
                    token,
                    end: RecvEnd::of(res, self.bufs.at_max()),
                    more,
                })
            }
        }
    }

    /// Poll mode: a completion of connection `token`'s readiness poll (`more`: it stays armed).
    pub(super) fn polled(&mut self, token: u64, res: i32, more: bool, out: &mut Vec<IoEvent>) {
        if res < 0 {
            // -ECANCELED: cancelled at close (the connection is gone), or by the
            // kernel; the worker re-arms if the connection is still there.
            out.push(IoEvent::RecvEnd {
                token,
                end: RecvEnd::of(res, self.bufs.at_max()),
                more,
            });
            return;
        }
        self.readable(token, out);
        if !more {
            out.push(IoEvent::RecvEnd {
                token,
                end: RecvEnd::Retry,
                more: false,
            });
        }
    }

    /// Poll mode: connection `token` is readable: a receive, unless one is in flight (then
    /// another follows it).
    fn readable(&mut self, token: u64, out: &mut Vec<IoEvent>) {
        match self.recvs.get_mut(&token) {
            Some(pair) => pair.again = true,
            None => out.push(IoEvent::Readable { token }),
        }
    }

    /// Poll mode: the completion of one of connection `token`'s paired receives.
    ///
    /// Bytes go to the worker at once. What follows is decided at the pair's last completion:
    /// another pair after bytes (until a receive finds the socket empty, `-EAGAIN`), after
    /// `ENOBUFS`, or when the poll reported readiness meanwhile; otherwise the poll brings the next
    /// arrival. Not only after a full buffer: a short read does not prove that nothing follows.
    /// Wake-ups that come before the poll's completion is made are folded into it, with the mask
    /// of the first (data: `POLLIN`), so bytes followed at once by the peer's FIN or RST make one
    /// completion, and the EOF or the error is only seen by the next read (epoll reports the mask
    /// as it is at `epoll_wait`, which is why its `hup` flag works; here no completion would ever
    /// come for it).
    pub(super) fn recv_done(&mut self, token: u64, res: i32, flags: u32, out: &mut Vec<IoEvent>) {
        let bid = cqueue::buffer_select(flags);
        let Some(pair) = self.recvs.get_mut(&token) else {
            // Not ours to track (cannot happen: every receive has its entry until its pair is
            // done); just give the buffer back (or its part, when the kernel keeps the rest).
            if let Some(bid) = bid {
                let (_, keep) = self.bufs.take(bid, res.max(0) as u32, flags);
                if !keep {
                    self.bufs.give_back(bid);
                }
            }
            return;
        };
        pair.inflight = pair.inflight.saturating_sub(1);
        match bid {
            Some(bid) if res > 0 && pair.ended.is_none() => {
                let (at, keep) = self.bufs.take(bid, res as u32, flags);
                let buf = self.bufs.lend(bid, at, res as u32, keep);
                // The poll stays armed.
                out.push(IoEvent::Received {
                    token,
                    buf,
                    more: true,
                })
            }
            _ => {
                if let Some(bid) = bid {
                    if res > 0 {
                        // Bytes after the pair ended: dropped, the buffer's part consumed.
                        let (_, keep) = self.bufs.take(bid, res as u32, flags);
                        if !keep {
                            self.bufs.give_back(bid);
                        }
                    } else if !(self.bufs.inc && cqueue::buffer_more(flags)) {
                        self.bufs.give_back(bid);
                    }
                }
                pair.ended.get_or_insert(res);
            }
        }
        if pair.inflight > 0 {
            return;
        }
        let RecvPair { again, ended, .. } = self.recvs.remove(&token).expect("looked up above");
        match ended {
            // Both brought bytes: read on.
            None => out.push(IoEvent::Readable { token }),
            Some(res) if res == -libc::ENOBUFS => {
                // The bytes wait in the socket; buffers are back (and the ring larger, unless at
                // its limit: then the worker re-arms a few such connections per turn) by the
                // next submit, which carries the retry.
                self.bufs.note_short();
                if self.bufs.at_max() {
                    out.push(IoEvent::RecvEnd {
                        token,
                        end: RecvEnd::Starved,
                        more: true,
                    });
                } else {
                    out.push(IoEvent::Readable { token });
                }
            }
            // Nothing more there: the poll brings the next arrival.
            Some(res) if res == -libc::EAGAIN || res == -libc::EINTR => {
                if again {
                    out.push(IoEvent::Readable { token });
                }
            }
            // EOF (0), an error, or -ECANCELED at close: the worker ends the connection or
            // ignores it. The poll stays armed (cancelled at close).
            Some(res) => out.push(IoEvent::RecvEnd {
                token,
                end: RecvEnd::of(res, self.bufs.at_max()),
                more: true,
            }),
        }
    }
}
