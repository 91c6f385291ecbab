//! A worker's rings: one io_uring, or several where its connections outgrow one ring's file table.
//!
//! The kernel caps each ring's table of direct descriptors at `RLIMIT_NOFILE` slots (20,000 on a
//! typical host), so a worker with one ring holds at most that many connections. Here a worker
//! opens another ring (with its own table, provided buffers and queues) when the accepting ring's
//! table is full, and the listener's accept moves to the first ring with free slots (an eighth of
//! its table at least, so that it does not move straight back), or to a new ring while the worker
//! may have more ([`ServerConfig::max_connections_per_worker`](crate::ServerConfig) over the
//! table size).
//!
//! "Full" must be known before an accept finds it so: an accept into a full table has taken the
//! connection off the backlog already, and the kernel drops it (`-ENFILE`; the client sees its
//! connection closed). So where a worker may have several rings, accepts are single-shot, at most
//! 32 per listener in flight and never more than the table's free slots (slots are counted free
//! when their `CLOSE` completes); a multishot accept would take the whole backlog in one go. A
//! connection stays on the ring that accepted it: its [`Socket::Direct`] value carries the ring's
//! index above the slot (see [`ring_of_slot`]), and every operation on it goes to that ring.
//!
//! The worker waits on the first ring only. Each other ring has an eventfd registered with it
//! (`IORING_REGISTER_EVENTFD`; the kernel writes it when the ring posts completions, which the
//! other rings do without waiting for an enter: they run without DEFER_TASKRUN, see `build_ring`),
//! and the first ring keeps a read of that eventfd in flight, so a
//! completion on any ring wakes the worker. A loop turn then submits the queued entries of every
//! other ring that has some (one `io_uring_enter` each, without waiting), waits on the first, and
//! enters (without waiting) each ring whose eventfd was written. While a worker has one ring its
//! loop turn is what it was (one enter); only its accepts are single-shot if it may open more.
//!
//! The alternative, more workers (threads) each with one ring, was not taken: on a machine with
//! fewer cores than that, threads would share cores and a message to connections on several of
//! them would cross threads; the extra rings cost a syscall per turn only on the rings that have
//! work, and memory each: submission and completion queues (256 KiB once used), the table in the
//! kernel, provided buffers (trimmed like the first ring's).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::{ring_of_slot, RecvBuf, UringDriver};
use crate::buf::WriteQueue;
use crate::driver::{DriverStats, IoEvent, Socket, UringRecv};
use crate::ratelog::RateLog;

/// A ring is offered the accept of a listener only while its table has at least an eighth of its
/// slots free, and at most this many (closes free slots a little after the worker counts them
/// free, and a ring that fills again at once would only move the accept back and forth).
const SPARE_SLOTS: u32 = 64;

/// The most rings a worker has (the ring index is 8 bits of a direct descriptor's value).
pub(crate) const MAX_RINGS: usize = 256;

/// The rings of one worker (index 0: the one it waits on).
pub(crate) struct Rings {
    rings: Vec<UringDriver>,
    /// Rings this worker may open (1: one ring, no spilling).
    max_rings: usize,
    /// What a new ring is opened with.
    table: u32,
    recv: UringRecv,
    ring_max: usize,
    /// Listeners by index: the descriptor (-1: stopped) and the ring their accept is armed on.
    listeners: Vec<(RawFd, usize)>,
    /// "All rings full" lines, at most one a second.
    full_log: RateLog,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rings")
            .field("rings", &self.rings)
            .field("max_rings", &self.max_rings)
            .finish_non_exhaustive()
    }
}

impl Rings {
    /// Opens the first ring on the calling thread (see [`UringDriver::new`]); `max_rings`: how
    /// many rings (file tables of `direct` slots) the worker may open in all.
    pub(crate) fn new(
        wake_fd: Arc<OwnedFd>,
        direct: u32,
        max_rings: usize,
        recv: UringRecv,
        ring_max: usize,
    ) -> io::Result<Self> {
        let mut first = UringDriver::new(0, Some(wake_fd), direct, recv, ring_max)?;
        // Without direct descriptors (refused, or not asked for) there is no table to outgrow.
        let max_rings = if first.direct {
            max_rings.clamp(1, MAX_RINGS)
        } else {
            1
        };
        first.spill = max_rings > 1;
        Ok(Rings {
            rings: vec![first],
            max_rings,
            table: direct,
            recv,
            ring_max,
            listeners: Vec::new(),
            full_log: RateLog::default(),
        })
    }

    /// The first ring (ordinary descriptors, outgoing connections, listeners at first).
    pub(crate) fn first(&mut self) -> &mut UringDriver {
        &mut self.rings[0]
    }

    /// The ring of `socket`.
    pub(crate) fn of(&mut self, socket: &Socket) -> &mut UringDriver {
        match socket {
            Socket::Direct(packed) => &mut self.rings[ring_of_slot(*packed)],
            Socket::Fd(_) => &mut self.rings[0],
        }
    }

    /// The ring of direct descriptor `packed`.
    pub(crate) fn of_slot(&mut self, packed: u32) -> &mut UringDriver {
        &mut self.rings[ring_of_slot(packed)]
    }

    pub(crate) fn register_listener(&mut self, fd: RawFd, index: usize) {
        if self.listeners.len() <= index {
            self.listeners.resize(index + 1, (-1, 0));
        }
        let ring = self.accepting_ring(usize::MAX).unwrap_or(0);
        self.listeners[index] = (fd, ring);
        self.rings[ring].register_listener(fd, index);
    }

    pub(crate) fn deregister_listener(&mut self, index: usize) {
        if let Some(l) = self.listeners.get_mut(index) {
            l.0 = -1;
        }
        for r in &mut self.rings {
            if r.listeners.get(index).is_some_and(|&fd| fd >= 0) {
                r.deregister_listener(index);
            }
        }
    }

    /// The ring an accept should go to (other than `not`): the first open one with free slots;
    /// `None` when every open ring is full.
    fn accepting_ring(&self, not: usize) -> Option<usize> {
        (0..self.rings.len()).find(|&k| {
            let r = &self.rings[k];
            let spare = (r.table / 8).clamp(1, SPARE_SLOTS);
            k != not && (!r.direct || r.used + spare <= r.table)
        })
    }

    /// Listener `index`'s accept ended on ring `from` with its table full: it moves to a ring with
    /// free slots, a new one if the worker may open more; otherwise it is retried on `from` after
    /// `ACCEPT_RETRY` (the worker is at its most connections; clients wait in the backlog).
    fn spill(&mut self, from: usize, index: usize) {
        let Some(&(fd, _)) = self.listeners.get(index) else {
            return;
        };
        if fd < 0 {
            return;
        }
        let to = match self.accepting_ring(from) {
            Some(k) => Some(k),
            None if self.rings.len() < self.max_rings => match self.open_ring() {
                Ok(k) => Some(k),
                Err(e) => {
                    if let Some(quiet) = self.full_log.ready(std::time::Instant::now(), 1) {
                        eprintln!(
                            "surge: io_uring: could not open another ring ({e}) with {} open; \
                             accepts wait{}",
                            self.rings.len(),
                            RateLog::more(quiet)
                        );
                    }
                    None
                }
            },
            None => None,
        };
        match to {
            Some(k) => {
                self.rings[from].listeners[index] = -1;
                self.listeners[index].1 = k;
                self.rings[k].register_listener(fd, index);
            }
            None => {
                if let Some(quiet) = self.full_log.ready(std::time::Instant::now(), 1) {
                    eprintln!(
                        "surge: io_uring: every ring's descriptor table is full ({} rings x {} \
                         slots; ServerConfig::max_connections_per_worker sets how many rings a \
                         worker may open); accepts wait{}",
                        self.rings.len(),
                        self.table,
                        RateLog::more(quiet)
                    );
                }
                self.rings[from].listeners[index] = fd;
                self.rings[from].retry_accept(index);
            }
        }
    }

    /// Opens another ring with its own file table, its eventfd watched by the first ring; its index.
    fn open_ring(&mut self) -> io::Result<usize> {
        let k = self.rings.len();
        let index = u8::try_from(k).map_err(|_| io::Error::other("too many rings"))?;
        let mut r = UringDriver::new(index, None, self.table, self.recv, self.ring_max)?;
        if !r.direct {
            return Err(io::Error::other("no direct descriptors"));
        }
        r.spill = true;
        let fd = crate::driver::sys::event_fd()?;
        r.ring.submitter().register_eventfd(fd.as_raw_fd())?;
        self.rings.push(r);
        self.rings[0].watch_ring(k, fd);
        Ok(k)
    }

    /// Submits what was queued on every ring and waits up to `timeout` on the first; appends the
    /// completions of every ring to `out`.
    pub(crate) fn poll(
        &mut self,
        out: &mut Vec<IoEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        if self.rings.len() == 1 {
            self.rings[0].poll(out, timeout)?;
            return self.spills();
        }
        // The other rings' new entries go to the kernel first (their completions may already be
        // there: then the first ring is not waited on).
        for k in 1..self.rings.len() {
            if self.rings[k].has_queued() {
                self.rings[k].poll(out, Some(Duration::ZERO))?;
            }
        }
        let timeout = if out.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        self.rings[0].poll(out, timeout)?;
        // Each other ring has one read of its eventfd in flight: it is named once per reap.
        let mut woken = std::mem::take(&mut self.rings[0].woken);
        for &k in &woken {
            if let Some(r) = self.rings.get_mut(k) {
                r.poll(out, Some(Duration::ZERO))?;
            }
        }
        woken.clear();
        self.rings[0].woken = woken;
        self.spills()
    }

    /// Moves the accepts that ended with a full table.
    fn spills(&mut self) -> io::Result<()> {
        for from in 0..self.rings.len() {
            if self.rings[from].spilled.is_empty() {
                continue;
            }
            let spilled = std::mem::take(&mut self.rings[from].spilled);
            for &index in &spilled {
                self.spill(from, index);
            }
        }
        Ok(())
    }

    /// Cancels and waits for every ring's operations (see [`UringDriver::quiesce`]).
    pub(crate) fn quiesce(&mut self) -> bool {
        let mut idle = true;
        // The other rings first: the first one's reads of their eventfds are cancelled last.
        for r in self.rings.iter_mut().rev() {
            idle &= r.quiesce();
        }
        idle
    }

    /// Gives back a received buffer to the ring it came from.
    pub(crate) fn recycle(&mut self, buf: RecvBuf) {
        let k = usize::from(buf.ring);
        self.rings[k].recycle(buf);
    }

    /// Ends connection `token` on its ring: cancels its receive, closes a direct descriptor, and
    /// hands a queue with a send in flight to that send (`Some`: the queue is free to release).
    pub(crate) fn close_conn(
        &mut self,
        token: u64,
        socket: Socket,
        queue: WriteQueue,
    ) -> Option<WriteQueue> {
        let r = self.of(&socket);
        r.cancel_recv(token);
        if let Socket::Direct(slot) = socket {
            r.close_direct(slot);
        } // an ordinary descriptor closes on drop
        if queue.in_flight() {
            r.orphan_send(token, queue)
        } else {
            Some(queue)
        }
    }

    pub(crate) fn starved_budget(&self) -> usize {
        self.rings.iter().map(UringDriver::starved_budget).sum()
    }

    pub(crate) fn trim(&mut self) {
        self.rings.iter_mut().for_each(UringDriver::trim);
    }

    pub(crate) fn held_bytes(&self) -> usize {
        self.rings.iter().map(UringDriver::held_bytes).sum()
    }

    pub(crate) fn stats(&mut self) -> DriverStats {
        let mut s = DriverStats::default();
        for r in &mut self.rings {
            let t = r.stats();
            s.recv_enobufs += t.recv_enobufs;
            s.cq_overflow += t.cq_overflow;
        }
        s
    }

    pub(crate) fn holds_spare(&self) -> bool {
        self.rings.iter().any(UringDriver::holds_spare)
    }
}
