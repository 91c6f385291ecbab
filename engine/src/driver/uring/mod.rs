//! Completions through io_uring (one ring per worker, created on the worker's thread, or several
//! where its connections outgrow one ring's table of direct descriptors: see [`rings`]).
//!
//! - Accept: one multishot `ACCEPT` per listener, into ordinary descriptors (see below); re-armed
//!   when the kernel ends it, after 10 ms when it ended with an error (out of descriptors, or
//!   anything else that could persist and make an immediate re-arm spin; logged at most once a
//!   second). Where the worker may open several rings, bounded single-shot accepts instead (see
//!   [`rings`]).
//! - Receive: one multishot `RECV` per connection selecting from the worker's provided-buffer ring,
//!   so an idle connection holds no read buffer. The worker processes a buffer and gives it back
//!   ([`UringDriver::recycle`]) in the same loop turn. `ENOBUFS` ends the multishot without losing
//!   data (the bytes stay in the socket); the worker re-arms once buffers are back. The ring starts
//!   with 64 buffers and doubles on `ENOBUFS` (up to 4,096), so that receives land in buffers still
//!   in the CPU caches.
//!   The poll mode ([`UringRecv::PollThenRecv`]) arms a multishot `POLL_ADD` (`POLLIN |
//!   POLLRDHUP | POLLERR | POLLHUP`) per connection instead, and on readiness a single-shot `RECV`
//!   from the same buffer ring with `MSG_DONTWAIT` (`-EAGAIN` rather than an internal poll armed
//!   on an empty socket), linked (`IO_LINK`) to a second one, and more pairs until a receive finds
//!   the socket empty (a short read does not prove it: see [`UringDriver::recv_done`]); an idle
//!   connection then costs the kernel only the poll. At most one pair per connection is in flight
//!   (`recvs`), and the link orders its two, so bytes arrive in order. `ENOBUFS` retries at the
//!   next submit; the poll's end (no `IORING_CQE_F_MORE`) re-arms it; closing cancels the poll
//!   and any receive in flight. Both kinds of completion carry the connection's token (index and
//!   generation), so late ones for a closed connection are recognised and ignored (their buffers
//!   go back to the ring).
//! - Send: one `SENDMSG` per connection at a time over the chunks of its write queue. The chunks
//!   stay in the queue (so `buffered_amount` counts them) until the completion says how many bytes
//!   went out; a connection removed meanwhile hands its whole queue to the in-flight table entry of
//!   that send, which frees it only when the completion arrives (monoio's lifecycle rule).
//! - Wake-ups: a `READ` on the worker's eventfd, re-armed after each wake.
//! - One `io_uring_enter` per loop turn submits everything pushed since the last one and waits
//!   (`sys::enter` with `IORING_ENTER_EXT_ARG` and the timer wheel's timeout). Only a full
//!   submission queue forces an extra one.
//!
//! - Direct descriptors (where the probe found them and the ring accepted a sparse file table,
//!   sized by [`ServerConfig::uring_direct_descriptors`](crate::ServerConfig)): the multishot accept
//!   allocates a slot of the ring's file table for each connection (`IORING_FILE_INDEX_ALLOC`), so
//!   connections hold no process descriptor and the process fd limit bounds each worker's table, not
//!   the process. Everything on such a connection then goes through the ring with `Fixed`: receive,
//!   `sendmsg`, `SHUTDOWN`, and a `CLOSE` of the slot after the receive was cancelled (pending
//!   operations hold their own file references). `TCP_NODELAY` comes from the listener (Linux
//!   copies it to accepted sockets). There is no `getpeername` without a process fd: the peer's
//!   address is asked with the generic socket getsockopt through the ring (`URING_CMD`,
//!   `SOCKET_URING_OP_GETSOCKOPT`, `SOL_SOCKET`/`SO_PEERNAME`, kernel 6.7), hard-linked ahead of
//!   the connection's first receive so that it is known before the upgrade request is parsed
//!   ([`UringDriver::query_peer`]). Where the probe finds the command missing, the address is
//!   `None` (one log line says why).
//!   Without direct descriptors, connections keep ordinary fds and those steps are syscalls.
//!
//! The parts: [`sys`] (the kernel interface below the io-uring crate), [`buf_ring`] (the provided
//! buffers), [`ops`] (what a completion's user_data says), [`conn`] (accept, connect, peer
//! address, shutdown and close), [`recv`], [`send`]; here the driver itself: the ring, its
//! submission queue, the loop turn's enter and reap, and its teardown.

mod buf_ring;
mod conn;
mod ops;
mod recv;
mod rings;
mod send;
mod sys;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use self::buf_ring::{BGID, RING_BUFFERS, RING_BUFFER_SIZE, RING_BUFFER_SIZE_INC};
use self::conn::PeerOp;
use self::ops::Op;
use self::recv::RecvPair;
use self::send::SendOp;
use self::sys::register_ring_fd;
use super::{AcceptErrors, IoEvent, UringRecv, ACCEPT_RETRY};

pub(crate) use self::buf_ring::{BufRing, RecvBuf};
pub(crate) use self::rings::{Rings, MAX_RINGS};
pub(crate) use self::sys::{parse_sockaddr, peername_entry, PeerTarget};

/// Submission and completion queue sizes. Both rings are written in turn from start to end, so
/// over time every page of them is resident: 2,048 x 64 B + 8,192 x 16 B = 256 KiB per worker
/// (it was 768 KiB with 4,096 and 32,768). A turn that queues more entries submits early
/// ([`UringDriver::reserve`]); one that completes more than fit is held by the kernel
/// (IORING_FEAT_NODROP) and handed over at the next `io_uring_enter`.
const SQ_ENTRIES: u32 = 2048;
const CQ_ENTRIES: u32 = 8192;

/// The ring settings: a single issuer (the worker thread) with task work deferred to its
/// `io_uring_enter`, or cooperative task work where the kernel lacks DEFER_TASKRUN.
pub(crate) fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer().setup_defer_taskrun();
    b
}

/// The ring of a worker: its first ring with [`builder`]'s settings; the others (`first` false)
/// with task work that interrupts the thread (no DEFER_TASKRUN, no COOP_TASKRUN), so that their
/// completions are posted, and their eventfds written, while the thread waits on the first ring:
/// deferred task work waits for an `io_uring_enter` on its own ring (connections on the other
/// rings took ~15 ms per handshake, the next timer tick), and with COOP_TASKRUN a handshake took
/// 3x as long as on the first ring (0.8 ms against 0.26 ms, one at a time). (A poll of a
/// DEFER_TASKRUN ring's own fd from the first ring never completed either.)
///
/// Also whether the ring defers its task work: only then does the kernel write received bytes
/// into the provided buffers solely inside this thread's `io_uring_enter` on the ring. Otherwise it
/// writes them whenever the thread returns from the kernel (any syscall or interrupt), which
/// [`BufRing`] must know (it may then not drop the pages of buffers in the ring).
fn build_ring(first: bool) -> io::Result<(IoUring, bool)> {
    let try_build = |b: &mut io_uring::Builder| b.setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES);
    if !first {
        let mut b = IoUring::builder();
        b.setup_single_issuer().setup_clamp();
        return Ok((try_build(&mut b)?, false));
    }
    let mut b = builder();
    match try_build(b.setup_clamp()) {
        Ok(r) => Ok((r, true)),
        Err(_) => {
            // Older kernels: no DEFER_TASKRUN (6.1) or no SINGLE_ISSUER (6.0).
            let mut b = IoUring::builder();
            b.setup_coop_taskrun().setup_clamp();
            Ok((try_build(&mut b)?, false))
        }
    }
}

/// Bits of a [`Socket::Direct`](super::Socket::Direct) value that name the slot in its ring's
/// file table; the bits above name the ring (its index among the worker's [`Rings`]).
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

/// The value of a direct descriptor: slot `slot` of ring `ring`'s file table.
fn pack_slot(ring: u8, slot: u32) -> u32 {
    debug_assert!(slot <= SLOT_MASK);
    u32::from(ring) << SLOT_BITS | slot
}

/// The ring (its index among the worker's rings) of direct descriptor `packed`.
pub(crate) fn ring_of_slot(packed: u32) -> usize {
    (packed >> SLOT_BITS) as usize
}

/// Direct descriptor `packed` as its ring's operations name it.
fn fixed(packed: u32) -> types::Fixed {
    types::Fixed(packed & SLOT_MASK)
}

/// One io_uring instance of a worker, its provided buffers and its in-flight sends. A worker has
/// one, or several where connections outgrow one ring's file table (see [`Rings`]).
pub(crate) struct UringDriver {
    ring: IoUring,
    /// This ring's index among the worker's rings (0: the one the worker waits on).
    index: u8,
    /// Slots of the file table (0: ordinary descriptors).
    table: u32,
    /// Direct descriptors allocated by accepts whose `CLOSE` has not completed.
    used: u32,
    /// The worker may have several rings: accepts are single-shot, as many as the table has free
    /// slots, and a listener whose accepts find no free slot moves to another ring ([`Rings`]).
    spill: bool,
    /// With `spill`: single-shot accepts in flight, by listener index.
    accepting: Vec<u32>,
    /// Listeners whose accept ended here with the file table full (for [`Rings`]).
    spilled: Vec<usize>,
    /// The primary ring: the eventfds of the other rings (each registered with its ring, so that
    /// it is written when that ring has completions) and the buffers their reads fill, by ring
    /// index.
    #[allow(clippy::type_complexity)]
    ring_wakes: Vec<Option<(OwnedFd, Box<u64>)>>,
    /// The primary ring: rings whose eventfd was written since the last look.
    woken: Vec<usize>,
    /// The ring's index in this thread's registered-ring table (`IORING_REGISTER_RING_FDS`): each
    /// enter then skips the fd lookup. `None` where the kernel refused.
    ring_index: Option<u32>,
    bufs: BufRing,
    /// In-flight sends keyed by slab index (the user_data payload). Boxed: the kernel holds
    /// pointers into each until its completion.
    sends: slab::Slab<Box<SendOp>>,
    /// Completed sends' boxes, reused by the next sends (no allocation per send). Boxed: a send
    /// op moves between this list and `sends`, and the kernel holds pointers into it meanwhile.
    #[allow(clippy::vec_box)]
    free_sends: Vec<Box<SendOp>>,
    /// The fewest boxes `free_sends` held since the last trim: that many were not needed.
    free_sends_low: usize,
    /// The completions of one reap (kept for its capacity).
    cq: Vec<(u64, i32, u32)>,
    /// Listener descriptors by index, for re-arming accepts (-1: stopped).
    listeners: Vec<RawFd>,
    /// The worker's eventfd (the primary ring only).
    wake_fd: Option<Arc<OwnedFd>>,
    wake_buf: Box<u64>,
    retry_ts: Box<types::Timespec>,
    /// Operations submitted whose final completion has not arrived.
    inflight: usize,
    /// Dropping: nothing is re-armed.
    closing: bool,
    /// Accepts allocate direct descriptors (a sparse file table is registered).
    direct: bool,
    /// Direct descriptors with a `SHUTDOWN` in flight, and whether their `CLOSE` waits for it.
    shutting: std::collections::HashMap<u32, bool>,
    /// Direct descriptors' peer addresses are asked with `SO_PEERNAME` through the ring (the probe
    /// found the command working).
    peer_query: bool,
    /// `SO_PEERNAME` queries in flight.
    peers: slab::Slab<Box<PeerOp>>,
    /// The size of a peer address on each listener (16: IPv4, 28: IPv6), by listener index.
    addr_lens: Vec<u32>,
    /// Connections receive through a readiness poll and single-shot receives
    /// ([`UringRecv::PollThenRecv`]) rather than a multishot receive.
    poll_mode: bool,
    /// Poll mode: connections with receives in flight. Only busy connections have an entry.
    recvs: std::collections::HashMap<u64, RecvPair>,
    /// Failed accepts, logged at most once a second.
    accept_errors: AcceptErrors,
}

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field("inflight", &self.inflight)
            .field("sends", &self.sends.len())
            .finish_non_exhaustive()
    }
}

impl UringDriver {
    /// Creates the ring on the calling thread (the only thread that may then use it), with a
    /// direct-descriptor table of `direct` slots (0: ordinary descriptors; also where the kernel
    /// refuses the table, with one log line).
    /// `recv`: how connections receive.
    /// `ring_max`: the most provided receive buffers in the ring
    /// ([`ServerConfig::uring_max_recv_buffers`](crate::ServerConfig)).
    /// `index`: the ring's index among the worker's rings; `wake_fd`: the worker's eventfd (the
    /// primary ring, index 0, only).
    pub(crate) fn new(
        index: u8,
        wake_fd: Option<Arc<OwnedFd>>,
        direct: u32,
        recv: UringRecv,
        ring_max: usize,
    ) -> io::Result<Self> {
        let (ring, deferred) = build_ring(index == 0)?;
        let table = direct;
        let direct = direct > 0
            && match ring.submitter().register_files_sparse(table) {
                Ok(()) => true,
                Err(e) if index == 0 => {
                    eprintln!(
                        "surge: io_uring direct descriptors refused ({e}); using ordinary fds"
                    );
                    false
                }
                Err(e) => return Err(e),
            };
        let ring_index = register_ring_fd(ring.as_raw_fd());
        let max = u16::try_from(ring_max.clamp(1, usize::from(RING_BUFFERS))).expect("clamped");
        // Incremental consumption where the kernel has it (6.12): as many bytes in fewer, larger
        // buffers (`uring_max_recv_buffers` counts 16 KiB). SURGE_URING_NO_INC=1 turns it off
        // (to compare).
        let per = (RING_BUFFER_SIZE_INC / RING_BUFFER_SIZE) as u16;
        let try_inc = max >= per && std::env::var_os("SURGE_URING_NO_INC").is_none();
        let inc = match try_inc {
            true => BufRing::new(
                &ring,
                RING_BUFFERS,
                RING_BUFFER_SIZE_INC,
                BGID,
                max / per,
                true,
            )
            .ok(),
            false => None,
        };
        let mut bufs = match inc {
            Some(b) => b,
            None => BufRing::new(&ring, RING_BUFFERS, RING_BUFFER_SIZE, BGID, max, false)?,
        };
        bufs.ring = index;
        bufs.deferred = deferred;
        let mut d = UringDriver {
            ring,
            index,
            table: if direct { table } else { 0 },
            used: 0,
            spill: false,
            accepting: Vec::new(),
            spilled: Vec::new(),
            ring_wakes: Vec::new(),
            woken: Vec::new(),
            ring_index,
            bufs,
            sends: slab::Slab::new(),
            free_sends: Vec::new(),
            free_sends_low: 0,
            cq: Vec::new(),
            listeners: Vec::new(),
            wake_fd,
            wake_buf: Box::new(0),
            retry_ts: Box::new(types::Timespec::from(ACCEPT_RETRY)),
            inflight: 0,
            closing: false,
            direct,
            shutting: Default::default(),
            peer_query: direct && super::probe::peer_support().is_ok(),
            peers: slab::Slab::new(),
            addr_lens: Vec::new(),
            poll_mode: recv == UringRecv::PollThenRecv,
            recvs: Default::default(),
            accept_errors: AcceptErrors::default(),
        };
        if direct && index == 0 {
            if let Err(why) = super::probe::peer_support() {
                eprintln!(
                    "surge: io_uring direct descriptors without peer addresses ({why}): \
                     peer() and peer_addr() return None"
                );
            }
        }
        d.arm_wake();
        Ok(d)
    }

    /// Whether the next [`UringDriver::poll`] has anything to hand the kernel: queued entries, or
    /// buffers given back and not yet published.
    pub(super) fn has_queued(&mut self) -> bool {
        !self.ring.submission().is_empty() || self.bufs.unpublished()
    }

    /// Queues an entry, submitting first if the submission queue is full.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid (and, if the kernel writes it, unaliased)
    /// until the entry's final completion has been reaped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        self.inflight += 1;
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Full: hand the batch to the kernel now.
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    // Nothing sensible left: drop the entry rather than spin.
                    self.inflight -= 1;
                    return;
                }
            }
        }
    }

    /// Makes room for `n` entries in the submission queue (submitting what is queued if there is
    /// not), so that entries linked to each other go to the kernel in one submission: a link that
    /// a submission's end cuts is run on its own, from the kernel's worker pool, and a receive
    /// meant to follow it could then run first.
    fn reserve(&mut self, n: usize) {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < n {
            // An error leaves the queue full: the pushes that follow retry the submit.
            let _ = self.ring.submit();
        }
    }

    fn arm_wake(&mut self) {
        let Some(fd) = &self.wake_fd else {
            return;
        };
        let fd = fd.as_raw_fd();
        let buf: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(Op::Wake.ud(0));
        // SAFETY: `wake_buf` is a heap allocation owned by the driver, moved never (Box), and only
        // written by the kernel: nothing reads it. The driver's Drop waits for every operation to
        // complete (or leaks the buffer), and the eventfd is kept open by the Arc we hold.
        unsafe { self.push(e) };
    }

    /// The primary ring: watches ring `k`'s eventfd `fd` (registered with ring `k`, so written
    /// whenever that ring has completions or deferred work): its read completing puts `k` in
    /// `woken`.
    pub(super) fn watch_ring(&mut self, k: usize, fd: OwnedFd) {
        if self.ring_wakes.len() <= k {
            self.ring_wakes.resize_with(k + 1, || None);
        }
        self.ring_wakes[k] = Some((fd, Box::new(0)));
        self.arm_ring_wake(k);
    }

    fn arm_ring_wake(&mut self, k: usize) {
        let Some(Some((fd, buf))) = self.ring_wakes.get_mut(k) else {
            return;
        };
        let fd = fd.as_raw_fd();
        let buf: *mut u64 = &mut **buf;
        let e = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(Op::Ring.ud(k as u64));
        // SAFETY: as for `wake_buf` in `arm_wake`: a Box owned by the driver in `ring_wakes`
        // (never replaced while a read is in flight, leaked by Drop if one still is), only written
        // by the kernel; the eventfd stays open as long as the entry.
        unsafe { self.push(e) };
    }

    fn cancel(&mut self, target: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(Op::Cancel.ud(0));
        // SAFETY: a cancel names its target by user_data only: no memory is involved.
        unsafe { self.push(e) };
    }

    /// The worker's periodic buffer trim (see [`BufRing::trim`]): the ring shrinks to what the
    /// last interval needed, and completed sends' boxes kept for reuse beyond what the interval
    /// needed are freed. Call between loop turns.
    pub(crate) fn trim(&mut self) {
        self.bufs.trim();
        let keep = self.free_sends.len() - self.free_sends_low.min(self.free_sends.len());
        self.free_sends.truncate(keep);
        self.free_sends.shrink_to(keep);
        self.free_sends_low = self.free_sends.len();
    }

    /// Bytes of provided buffers whose pages may be resident, plus the send boxes kept for reuse
    /// (see [`BufRing::held_bytes`]).
    pub(crate) fn held_bytes(&self) -> usize {
        self.bufs.held_bytes() + self.free_sends.len() * std::mem::size_of::<SendOp>()
    }

    /// What the metrics count: receives that found no provided buffer, completions the kernel
    /// could not post (the CQ ring's overflow counter).
    pub(crate) fn stats(&mut self) -> super::DriverStats {
        super::DriverStats {
            recv_enobufs: self.bufs.enobufs,
            cq_overflow: u64::from(self.ring.completion().overflow()),
        }
    }

    /// Whether a trim could free anything.
    pub(crate) fn holds_spare(&self) -> bool {
        // A ring that does not defer its task work keeps its buffers' pages while they are in the
        // ring (see `BufRing::trim`): only shrinking frees anything there.
        let bufs = self.bufs.deferred && self.bufs.held_bytes() > 0;
        bufs || !self.free_sends.is_empty()
            || self.bufs.target > self.bufs.initial.min(self.bufs.max)
    }

    /// Submits what was queued and waits up to `timeout`; appends completions to `out`.
    pub(crate) fn poll(
        &mut self,
        out: &mut Vec<IoEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.bufs.end_turn();
        self.bufs.publish();
        match self.enter(timeout) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap(out);
        Ok(())
    }

    /// The loop turn's one `io_uring_enter`: submits every queued entry and waits for at least one
    /// completion or the timeout (GETEVENTS also runs the deferred task work).
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        sys::enter(self.ring.as_raw_fd(), self.ring_index, to_submit, timeout)
    }

    /// Hands each completion to the handler of its kind (which may push events to `out`), then
    /// re-arms what ended (nothing while closing).
    fn reap(&mut self, out: &mut Vec<IoEvent>) {
        let mut rearm = Rearm::default();
        let mut cq = std::mem::take(&mut self.cq);
        cq.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (user_data, res, flags) in cq.drain(..) {
            let more = cqueue::more(flags);
            if !more {
                self.inflight -= 1;
            }
            let Some((op, payload)) = Op::decode(user_data) else {
                continue;
            };
            match op {
                Op::Accept => self.accepted(payload as usize, res, more, out, &mut rearm),
                Op::Retry => rearm.accept.push(payload as usize),
                Op::Recv if self.poll_mode => self.recv_done(payload, res, flags, out),
                Op::Poll => self.polled(payload, res, more, out),
                Op::Recv => self.received(payload, res, flags, more, out),
                Op::Send => self.sent(payload as usize, res, out),
                Op::Connect => self.connected(payload, res, out),
                Op::Wake => {
                    out.push(IoEvent::Wake);
                    rearm.wake = true;
                }
                Op::Ring => {
                    self.woken.push(payload as usize);
                    rearm.rings.push(payload as usize);
                }
                Op::Peer => self.peer_done(payload as usize, res, out),
                Op::Shutdown => self.shut_down(payload as u32),
                // A direct descriptor's slot is free again.
                Op::Quiet => self.used = self.used.saturating_sub(1),
                Op::Cancel => {} // nothing to do
            }
        }
        self.cq = cq;
        if self.closing {
            return;
        }
        if rearm.wake {
            self.arm_wake();
        }
        for k in rearm.rings {
            self.arm_ring_wake(k);
        }
        for i in rearm.accept {
            self.arm_accept(i);
        }
        for i in rearm.retry {
            self.retry_accept(i);
        }
    }
}

/// What one reap arms again once every completion is handled, in this order.
#[derive(Default)]
struct Rearm {
    /// The eventfd read completed.
    wake: bool,
    /// The primary ring: reads of other rings' eventfds that completed.
    rings: Vec<usize>,
    /// Listeners whose multishot accept ended: re-armed at once.
    accept: Vec<usize>,
    /// Listeners whose accept ended with an error: re-armed after `ACCEPT_RETRY`.
    retry: Vec<usize>,
}

impl UringDriver {
    /// Cancels every operation and waits (up to 2 s) for their completions, so that none can still
    /// touch memory that is about to be freed: the provided buffers, the send iovecs and the wake
    /// buffer here, and the write queues the sends point into, which the worker owns. Returns
    /// whether nothing is in flight any more. Nothing is re-armed afterwards; the events reaped
    /// meanwhile are dropped (each orphaned queue with its completion). Idempotent.
    pub(crate) fn quiesce(&mut self) -> bool {
        if self.closing {
            return self.inflight == 0;
        }
        self.closing = true;
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(Op::Cancel.ud(0));
        // SAFETY: a cancel names no memory.
        unsafe { self.push(e) };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sink = Vec::new();
        while self.inflight > 0 && Instant::now() < deadline {
            if self
                .poll(&mut sink, Some(Duration::from_millis(50)))
                .is_err()
            {
                break;
            }
            sink.clear();
        }
        self.inflight == 0
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Normally the worker quiesced the ring already (before its queues were freed).
        if !self.quiesce() {
            // Something is still owned by the kernel: leak the memory it might touch rather than
            // free it under it. (The ring fd closes below; the kernel tears the rest down.)
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::take(&mut self.peers));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            std::mem::forget(std::mem::take(&mut self.ring_wakes));
            self.bufs.leak();
        }
    }
}
