//! Completions through io_uring (one ring per worker, created on the worker's thread).
//!
//! - Accept: one multishot `ACCEPT` per listener, into ordinary descriptors (see below); re-armed
//!   when the kernel ends it, after 10 ms when it ended with an error (out of descriptors, or
//!   anything else that could persist and make an immediate re-arm spin; logged at most once a
//!   second).
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
//!   (`submit_with_args` with the timer wheel's timeout). Only a full submission queue forces an
//!   extra one.
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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::RecvEnd;
use super::UringRecv;
use super::{AcceptErrors, IoEvent, Socket, ACCEPT_RETRY};
use crate::buf::WriteQueue;
use std::rc::Rc;

/// Most chunks in one `sendmsg`.
const MAX_IOV: usize = 64;
/// Completed sends' boxes kept for reuse (each about 1 KiB).
const MAX_FREE_SENDS: usize = 1024;

// user_data: the kind in the top 4 bits, a payload below.
const KIND_SHIFT: u32 = 60;
const PAYLOAD: u64 = (1 << KIND_SHIFT) - 1;
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const WAKE: u64 = 4;
const CANCEL: u64 = 5;
const RETRY: u64 = 6;
const CONNECT: u64 = 7;
/// `CLOSE` of a direct descriptor: its result is not looked at.
const QUIET: u64 = 8;
/// `SHUTDOWN` of a direct descriptor (payload: the slot).
const SHUTDOWN: u64 = 9;
/// `getsockopt(SO_PEERNAME)` of a direct descriptor (payload: the key in `peers`).
const PEER: u64 = 10;
/// Poll mode: a connection's multishot readiness poll (payload: the token; its receives are
/// `RECV`, single-shot).
const POLL: u64 = 11;

/// `SOCKET_URING_OP_GETSOCKOPT`: the `cmd_op` of a socket's generic getsockopt through
/// `IORING_OP_URING_CMD` (kernel 6.7; `SOL_SOCKET` options only).
const SOCKET_URING_OP_GETSOCKOPT: u32 = 2;

/// The `SO_PEERNAME` query for `target`, writing at most `len` bytes (the kernel refuses a length
/// over the address's own: 16 for IPv4, 28 for IPv6) to `out`. The result is the length written.
///
/// # Safety
/// `out` must stay valid and unaliased until the entry's completion (see [`UringDriver::push`]).
pub(crate) unsafe fn peername_entry(
    target: PeerTarget,
    out: *mut libc::sockaddr_in6,
    len: u32,
) -> squeue::Entry {
    let level_optname =
        (libc::SOL_SOCKET as u32 as u64) | ((libc::SO_PEERNAME as u32 as u64) << 32);
    let mut cmd = [0u8; 16];
    cmd[..8].copy_from_slice(&(out as u64).to_ne_bytes());
    let e = match target {
        PeerTarget::Fd(fd) => opcode::UringCmd16::new(types::Fd(fd), SOCKET_URING_OP_GETSOCKOPT),
        PeerTarget::Fixed(slot) => {
            opcode::UringCmd16::new(types::Fixed(slot), SOCKET_URING_OP_GETSOCKOPT)
        }
    }
    // `level` and `optname` share the `addr` union (offset 16); `optval` is the first 8 bytes of
    // the command area (offset 48).
    .addr(Some(level_optname))
    .cmd(cmd)
    .build();
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`
    // (`transmute` checks the size), and any bit pattern is a valid `[u8; 64]`. Bytes 44..48 are
    // the `optlen` member of the union at that offset (`splice_fd_in`/`file_index`), which
    // `UringCmd16` leaves zero and the crate offers no setter for; writing it back is a valid
    // `io_uring_sqe` (plain integers) and so a valid `Entry`.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(e) };
    raw[44..48].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// What a [`peername_entry`] names: an ordinary descriptor (the probe) or a direct one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerTarget {
    Fd(RawFd),
    Fixed(u32),
}

/// The address an `SO_PEERNAME` query wrote (`len` bytes of `raw`).
pub(crate) fn parse_sockaddr(raw: &libc::sockaddr_in6, len: usize) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    match i32::from(raw.sin6_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: a sockaddr_in (16 bytes) fits in a sockaddr_in6 (28) and has alignment 4
            // like it; the kernel wrote one (family AF_INET).
            let v4 = unsafe { &*(raw as *const libc::sockaddr_in6).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(raw.sin6_addr.s6_addr),
                u16::from_be(raw.sin6_port),
                raw.sin6_flowinfo,
                raw.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An `SO_PEERNAME` query in flight: its output lives here (boxed: the kernel holds its address).
struct PeerOp {
    token: u64,
    addr: libc::sockaddr_in6,
}

fn ud(kind: u64, payload: u64) -> u64 {
    debug_assert!(payload <= PAYLOAD);
    kind << KIND_SHIFT | payload
}

/// Submission and completion queue sizes. Both rings are written in turn from start to end, so
/// over time every page of them is resident: 2,048 x 64 B + 8,192 x 16 B = 256 KiB per worker
/// (it was 768 KiB with 4,096 and 32,768). A turn that queues more entries submits early
/// ([`UringDriver::reserve`]); one that completes more than fit is held by the kernel
/// (IORING_FEAT_NODROP) and handed over at the next `io_uring_enter`.
const SQ_ENTRIES: u32 = 2048;
const CQ_ENTRIES: u32 = 8192;
/// Provided buffers per worker (a power of two) and their size: 4096 x 16 KiB = 64 MiB of address
/// space per worker, of which only the buffers the ring grew to (64 at first, see
/// [`BufRing::grow`]) are ever touched: as many as one loop turn's receives needed at the peak.
const RING_BUFFERS: u16 = 4096;
const RING_BUFFER_SIZE: u32 = 16 * 1024;
/// The buffer size where the kernel consumes provided buffers incrementally
/// (`IOU_PBUF_RING_INC`, 6.12): receives are packed one after another into a buffer, so a larger
/// buffer costs no more memory per small receive, and a 16 KiB frame with its header arrives in
/// one receive instead of two (a 16 KiB buffer holds the payload but not the header).
const RING_BUFFER_SIZE_INC: u32 = 128 * 1024;
/// `IOU_PBUF_RING_INC` of `io_uring_register_pbuf_ring_flags` (the io-uring crate does not
/// re-export it).
const IOU_PBUF_RING_INC: u16 = 2;
const BGID: u16 = 0;
/// Provided buffers in the ring at first (see [`BufRing::new`]).
const RING_INITIAL: u16 = 64;

const ENTER_GETEVENTS: u32 = 1;
const ENTER_EXT_ARG: u32 = 8;
const ENTER_REGISTERED_RING: u32 = 16;
const REGISTER_RING_FDS: u32 = 20;

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GetEventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// Registers the ring's descriptor in the calling thread's ring table (5.18); its index.
/// (The io-uring crate keeps the index inside a short-lived `Submitter`, so this is done here.)
fn register_ring_fd(ring_fd: RawFd) -> Option<u32> {
    let mut up = RsrcUpdate {
        offset: u32::MAX, // any free slot
        resv: 0,
        data: ring_fd as u64,
    };
    // SAFETY: IORING_REGISTER_RING_FDS reads and writes back one io_uring_rsrc_update, which `up`
    // is (repr(C), live for the call).
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring_fd,
            REGISTER_RING_FDS,
            &mut up as *mut RsrcUpdate,
            1u32,
        )
    };
    (r == 1).then_some(up.offset)
}

/// The ring settings: a single issuer (the worker thread) with task work deferred to its
/// `io_uring_enter`, or cooperative task work where the kernel lacks DEFER_TASKRUN.
pub(crate) fn builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer().setup_defer_taskrun();
    b
}

fn build_ring() -> io::Result<IoUring> {
    let try_build = |b: &mut io_uring::Builder| b.setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES);
    let mut b = builder();
    match try_build(b.setup_clamp()) {
        Ok(r) => Ok(r),
        Err(_) => {
            // Older kernels: no DEFER_TASKRUN (6.1) or no SINGLE_ISSUER (6.0).
            let mut b = IoUring::builder();
            b.setup_coop_taskrun().setup_clamp();
            try_build(&mut b)
        }
    }
}

/// A provided-buffer ring and the buffers it hands out (both in anonymous mappings).
///
/// Its size follows the working set: it starts with [`RING_INITIAL`] buffers, grows (doubling,
/// at most once per loop turn) when receives end with `ENOBUFS`, up to `max`, and shrinks at each
/// [`BufRing::trim`] (the worker's buffer-trim interval) to twice the most buffers one turn used
/// since the last trim: buffers past the new size leave the ring as they come back (retired),
/// and their pages are dropped at once (`MADV_DONTNEED`), so memory goes back to the system even
/// while they wait in the ring. After an interval without any receive, every page is dropped.
pub(crate) struct BufRing {
    entries: *mut types::BufRingEntry,
    entries_len: usize,
    mem: *mut u8,
    mem_len: usize,
    count: u16,
    size: u32,
    /// Our copy of the tail: entries up to here are written, published by [`BufRing::publish`].
    tail: u16,
    published: u16,
    /// Buffers not in the ring (never added, or retired), sorted highest id first: popped lowest
    /// id first.
    spare: Vec<u16>,
    /// The ring's size: buffers with a lower id belong in it, higher ones retire when they come
    /// back (see [`BufRing::give_back`]).
    target: u16,
    /// The most buffers the ring may grow to (`ServerConfig::uring_max_recv_buffers`).
    max: u16,
    /// A receive ended with `ENOBUFS` since the last publish: grow once, at the publish.
    short: bool,
    /// Buffers handed out since the last publish (one loop turn), and the most of any turn since
    /// the last trim.
    used_turn: u32,
    peak: u32,
    /// Every buffer's pages were dropped and none was handed out since.
    dropped: bool,
    /// The kernel consumes buffers incrementally (`IOU_PBUF_RING_INC`): a completion may take
    /// part of a buffer and leave the rest in the ring for the next receive (`BUF_MORE`).
    inc: bool,
    /// With `inc`: where the next receive into each buffer starts.
    offsets: Vec<u32>,
    /// Buffers in the ring at first, and the least a trim leaves: [`RING_INITIAL`] buffers'
    /// worth of 16 KiB ones.
    initial: u16,
    /// Shared with every [`RecvBuf`] lent: while one lives, the buffers' mapping stays.
    live: Rc<()>,
}

/// Bytes the kernel received into a provided buffer, lent to the worker by an
/// [`IoEvent::Received`] until it gives them back with [`UringDriver::recycle`]. Only this process
/// touches them meanwhile: the kernel handed the range out and reuses it only once it is given
/// back (with incremental consumption it writes the same buffer later, past this range).
pub(crate) struct RecvBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    bid: u16,
    /// The kernel keeps the rest of the buffer for later receives: giving this part back does not
    /// return the buffer.
    keep: bool,
    /// Keeps the mapping: a `BufRing` dropped while buffers are lent leaks it.
    live: Rc<()>,
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` lies in the ring's mapping (checked in `BufRing::lend`), which
        // stays mapped while `live` is shared; the kernel handed the range to us and does not
        // write it until it is given back, which consumes this value.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for RecvBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive (one `RecvBuf` per range).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

fn mmap(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choice; no existing
    // memory is affected. The result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl BufRing {
    /// Maps `count` buffers of `size` bytes and registers them as group `bgid` of `ring`; at
    /// most `max` of them are ever in the ring. `inc`: with incremental consumption, which fails
    /// where the kernel lacks it (before 6.12).
    pub(crate) fn new(
        ring: &IoUring,
        count: u16,
        size: u32,
        bgid: u16,
        max: u16,
        inc: bool,
    ) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let max = max.clamp(1, count);
        let entries_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        // Only the buffers the ring may hold are mapped.
        let mem_len = usize::from(max) * size as usize;
        let entries = mmap(entries_len)?.cast::<types::BufRingEntry>();
        let mem = match mmap(mem_len) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: `entries` was mapped above with this length and nothing refers to it.
                unsafe { libc::munmap(entries.cast(), entries_len) };
                return Err(e);
            }
        };
        let initial = if size > RING_BUFFER_SIZE {
            (u32::from(RING_INITIAL) * RING_BUFFER_SIZE / size).max(1) as u16
        } else {
            RING_INITIAL
        };
        let first = max.min(initial);
        let mut br = BufRing {
            entries,
            entries_len,
            mem,
            mem_len,
            count,
            size,
            tail: 0,
            published: 0,
            spare: Vec::new(),
            target: first,
            max,
            short: false,
            used_turn: 0,
            peak: 0,
            dropped: true,
            inc,
            offsets: if inc {
                vec![0; usize::from(max)]
            } else {
                Vec::new()
            },
            initial,
            live: Rc::new(()),
        };
        let flags = if br.inc { IOU_PBUF_RING_INC } else { 0 };
        // SAFETY: the entry array is page aligned (mmap), `count` entries long, and lives until
        // `Drop` of this BufRing, which the owner (UringDriver) runs only after the ring is idle or
        // leaks it otherwise (see UringDriver's Drop). The probe's throwaway ring is dropped
        // before its BufRing (declaration order at the call site: the BufRing is a temporary).
        // Refused (with `inc`, before 6.12: EINVAL): nothing was registered, and `br` unmaps
        // both mappings on the way out.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, bgid, flags)?
        };
        // Only a few buffers go in at first. The kernel takes buffers in ring order and the
        // worker gives each back in the same loop turn, so every buffer in the ring is used in
        // turn: with many more than a turn needs, each receive would land in memory that left the
        // CPU caches long ago, and copying into it (and unmasking it) costs several times a copy
        // into a buffer used a moment ago. The ring grows when the kernel runs short (ENOBUFS).
        for bid in 0..first {
            br.push(bid);
        }
        br.spare = (first..max).rev().collect();
        br.publish();
        Ok(br)
    }

    /// A receive ended with `ENOBUFS`: the ring grows at the next publish (once per turn however
    /// many receives ran short).
    fn note_short(&mut self) {
        self.short = true;
    }

    /// Whether the ring is as large as it may grow: a receive that ran short waits for buffers
    /// to come back rather than for more.
    fn at_max(&self) -> bool {
        self.target >= self.max
    }

    /// A completion handed buffer `bid` out.
    fn handed_out(&mut self) {
        self.used_turn += 1;
        self.dropped = false;
    }

    /// A receive completion named buffer `bid` with `len` bytes: where in the buffer they start,
    /// and whether the kernel keeps the rest of the buffer for the next receive (then the buffer
    /// is not given back when this part is: [`UringDriver::recycle`] is told).
    fn take(&mut self, bid: u16, len: u32, flags: u32) -> (u32, bool) {
        if !self.inc {
            self.handed_out();
            return (0, false);
        }
        let keep = cqueue::buffer_more(flags);
        let Some(off) = self.offsets.get_mut(usize::from(bid)) else {
            return (0, keep);
        };
        let at = *off;
        *off = if keep { at + len } else { 0 };
        if at == 0 {
            self.handed_out();
        }
        (at, keep)
    }

    /// Doubles the ring's size (at least 16 more), up to `max`, from the spare buffers (visible at
    /// the next publish). Returns how many were added.
    fn grow(&mut self) -> usize {
        self.target = (self.target.saturating_add(self.target.max(16))).min(self.max);
        let mut added = 0;
        while let Some(&bid) = self.spare.last() {
            if bid >= self.target {
                break;
            }
            self.spare.pop();
            self.push(bid);
            added += 1;
        }
        added
    }

    /// Buffer `bid` comes back from the worker (or a completion that used no data): into the
    /// ring, or retired if the ring shrank below it (its pages were dropped at the shrink).
    fn give_back(&mut self, bid: u16) {
        if bid < self.target {
            self.push(bid);
            return;
        }
        let at = self.spare.partition_point(|&b| b > bid);
        self.spare.insert(at, bid);
        // Handed out after the shrink: its pages may be back.
        self.drop_pages(bid, bid + 1);
    }

    /// Drops the pages of buffers `from..to`: the memory goes back to the system, and the next
    /// write into one of them finds a fresh zeroed page.
    fn drop_pages(&mut self, from: u16, to: u16) {
        let to = to.min(self.max);
        if from >= to {
            return;
        }
        let start = usize::from(from) * self.size as usize;
        let len = usize::from(to - from) * self.size as usize;
        // SAFETY: the range lies inside the buffer mapping (to <= max, which the mapping holds).
        // No buffer of the range is handed out to the worker (each comes back in the turn that
        // received it, before the worker trims), so nothing in this process refers to the bytes.
        // Those still in the ring may be written by the kernel, but only while it runs a receive
        // of this ring, which happens inside this thread's io_uring_enter (inline issue or task
        // work: DEFER_TASKRUN, or COOP_TASKRUN on older kernels; receives are never forced to the
        // kernel's worker threads), not concurrently with this call; the next write faults in a
        // zeroed page. MADV_DONTNEED on a private anonymous mapping keeps the mapping valid.
        unsafe {
            libc::madvise(self.mem.add(start).cast(), len, libc::MADV_DONTNEED);
        }
    }

    /// The end of a loop turn's buffer use (at the publish): grows if a receive ran short.
    fn end_turn(&mut self) {
        self.peak = self.peak.max(self.used_turn);
        self.used_turn = 0;
        if std::mem::take(&mut self.short) && !self.at_max() {
            self.grow();
        }
    }

    /// The worker's periodic trim: shrinks the ring to twice the most buffers one turn used since
    /// the last trim (at least [`RING_INITIAL`]), dropping the pages of the buffers past it; after
    /// an interval without receives, drops every buffer's pages (the ring keeps its entries).
    /// Call between loop turns, when no buffer is handed out.
    fn trim(&mut self) {
        let peak = std::mem::take(&mut self.peak);
        let floor = self.initial.min(self.max);
        let want = (peak.saturating_mul(2).next_power_of_two())
            .clamp(u32::from(floor), u32::from(self.max)) as u16;
        if want < self.target {
            // Past `want`: spare buffers have no pages (dropped when retired); those in the ring
            // retire when they come back.
            self.drop_pages(want, self.target);
            self.target = want;
        }
        if peak == 0 && !self.dropped {
            self.drop_pages(0, self.target);
            self.dropped = true;
        }
    }

    /// Buffers in the ring (or handed out) whose pages may be resident, in bytes: 0 after an
    /// interval without receives.
    fn held_bytes(&self) -> usize {
        if self.dropped {
            0
        } else {
            usize::from(self.max - self.spare.len() as u16) * self.size as usize
        }
    }

    /// Writes buffer `bid` into the next free entry (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: `tail & mask` indexes inside the mapped entry array. The kernel only reads
        // entries between its head and the published tail; this one is past the published tail, so
        // the kernel does not read it until `publish`. Writing `addr`/`len`/`bid` does not touch the
        // `resv` field of entry 0, which is the shared tail.
        unsafe {
            let e = &mut *self.entries.add(usize::from(self.tail & mask));
            e.set_addr(self.mem.add(usize::from(bid) * self.size as usize) as u64);
            e.set_len(self.size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed entries visible to the kernel.
    fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail is the u16 `resv` field of entry 0, inside the mapping and 2-byte
        // aligned; the kernel reads it with acquire ordering, so a release store publishes the
        // entries written before it. AtomicU16 has the layout of u16.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
    }

    /// Lends the `len` bytes at `at` of buffer `bid`, which a completion handed out.
    fn lend(&mut self, bid: u16, at: u32, len: u32, keep: bool) -> RecvBuf {
        assert!(bid < self.count && at as usize + len as usize <= self.size as usize);
        let offset = usize::from(bid) * self.size as usize + at as usize;
        // SAFETY: in bounds of the mapping (asserted above), which is not null.
        let ptr = unsafe { std::ptr::NonNull::new_unchecked(self.mem.add(offset)) };
        RecvBuf {
            ptr,
            len: len as usize,
            bid,
            keep,
            live: Rc::clone(&self.live),
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` with these lengths. The owner guarantees the
        // kernel no longer uses them (the ring is idle or closed). The buffers stay mapped (leaked)
        // while a `RecvBuf` still points into them.
        unsafe {
            if Rc::strong_count(&self.live) == 1 {
                libc::munmap(self.mem.cast(), self.mem_len);
            }
            libc::munmap(self.entries.cast(), self.entries_len);
        }
    }
}

/// Poll mode: a connection's pair of linked single-shot receives in flight.
#[derive(Debug)]
struct RecvPair {
    /// Completions still to come (2, then 1).
    inflight: u8,
    /// The poll reported readiness meanwhile: another pair follows, whatever these find.
    again: bool,
    /// The first result without data (EOF, `-EAGAIN`, an error); the pair's later results say
    /// nothing new (a second EOF, `-ECANCELED` from the broken link).
    ended: Option<i32>,
}

/// One `sendmsg` in flight: its header and iovecs (read by the kernel) and, once the connection is
/// gone, the queue whose chunks the iovecs point into.
struct SendOp {
    token: u64,
    msg: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
    orphan: Option<WriteQueue>,
}

/// An io_uring instance, its provided buffers and its in-flight sends.
pub(crate) struct UringDriver {
    ring: IoUring,
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
    wake_fd: Arc<OwnedFd>,
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
    #[allow(clippy::vec_box)]
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
    pub(crate) fn new(
        wake_fd: Arc<OwnedFd>,
        direct: u32,
        recv: UringRecv,
        ring_max: usize,
    ) -> io::Result<Self> {
        let ring = build_ring()?;
        let direct = direct > 0
            && match ring.submitter().register_files_sparse(direct) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!(
                        "surge: io_uring direct descriptors refused ({e}); using ordinary fds"
                    );
                    false
                }
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
        let bufs = match inc {
            Some(b) => b,
            None => BufRing::new(&ring, RING_BUFFERS, RING_BUFFER_SIZE, BGID, max, false)?,
        };
        let mut d = UringDriver {
            ring,
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
        if direct {
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
        let buf: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(types::Fd(self.wake_fd.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(ud(WAKE, 0));
        // SAFETY: `wake_buf` is a heap allocation owned by the driver, moved never (Box), and only
        // written by the kernel: nothing reads it. The driver's Drop waits for every operation to
        // complete (or leaks the buffer), and the eventfd is kept open by the Arc we hold.
        unsafe { self.push(e) };
    }

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

    fn arm_accept(&mut self, index: usize) {
        let fd = self.listeners[index];
        if fd < 0 {
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
            .user_data(ud(ACCEPT, index as u64));
        // SAFETY: a multishot accept without an address buffer: the kernel writes no user memory.
        unsafe { self.push(e) };
    }

    /// Stops accepting on listener `index` (the worker closes the descriptor afterwards; the
    /// pending accept holds its own reference until the cancel lands).
    pub(crate) fn deregister_listener(&mut self, index: usize) {
        if let Some(fd) = self.listeners.get_mut(index) {
            *fd = -1;
        }
        self.cancel(ud(ACCEPT, index as u64));
    }

    fn cancel(&mut self, target: u64) {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(ud(CANCEL, 0));
        // SAFETY: a cancel names its target by user_data only: no memory is involved.
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
        let e = unsafe { peername_entry(PeerTarget::Fixed(slot), out, len) }
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(ud(PEER, key));
        // SAFETY: see above.
        unsafe { self.push(e) };
        true
    }

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
                Socket::Direct(slot) => opcode::PollAdd::new(types::Fixed(*slot), mask),
            }
            .multi(true)
            .build()
            .user_data(ud(POLL, token));
            // SAFETY: a poll names no user memory.
            unsafe { self.push(e) };
            return;
        }
        let e = match socket {
            Socket::Fd(s) => opcode::RecvMulti::new(types::Fd(s.as_raw_fd()), BGID).build(),
            Socket::Direct(slot) => opcode::RecvMulti::new(types::Fixed(*slot), BGID).build(),
        }
        .user_data(ud(RECV, token));
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
                opcode::Recv::new(types::Fixed(*slot), std::ptr::null_mut(), self.bufs.size)
                    .buf_group(BGID)
                    .flags(flags)
                    .build()
            }
        }
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(ud(RECV, token))
    }

    /// Waits for the non-blocking `connect(2)` of connection `token` to finish: a one-shot
    /// `POLL_ADD` for `POLLOUT` (the readiness approach, rather than `IORING_OP_CONNECT`: the
    /// socket was already connected with a plain syscall, so no address has to outlive the
    /// submission). Its completion is an [`IoEvent::Connected`]; the caller then reads `SO_ERROR`.
    pub(crate) fn poll_connect(&mut self, fd: RawFd, token: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(ud(CONNECT, token));
        // SAFETY: a poll names no user memory.
        unsafe { self.push(e) };
    }

    /// Cancels connection `token`'s connect poll (its socket is being closed).
    pub(crate) fn cancel_connect(&mut self, token: u64) {
        self.cancel(ud(CONNECT, token));
    }

    /// Cancels connection `token`'s receive (before its descriptor is closed); in the poll mode its
    /// poll and any receive in flight. (Their completions may still come, with the token of a
    /// connection that is gone.)
    pub(crate) fn cancel_recv(&mut self, token: u64) {
        if self.poll_mode {
            self.cancel(ud(POLL, token));
            if self.recvs.contains_key(&token) {
                self.cancel(ud(RECV, token));
            }
            return;
        }
        self.cancel(ud(RECV, token));
    }

    /// `shutdown(SHUT_WR)` of direct descriptor `slot`.
    pub(crate) fn shutdown_write(&mut self, slot: u32) {
        self.shutting.insert(slot, false);
        let e = opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_WR)
            .build()
            .user_data(ud(SHUTDOWN, u64::from(slot)));
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
        let e = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(ud(QUIET, 0));
        // SAFETY: a close names no memory.
        unsafe { self.push(e) };
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

    /// Whether a trim could free anything.
    pub(crate) fn holds_spare(&self) -> bool {
        self.held_bytes() > 0 || self.bufs.target > self.bufs.initial.min(self.bufs.max)
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

    /// Starts one `sendmsg` of (the first chunks of) `queue` for connection `token`.
    pub(crate) fn send(
        &mut self,
        socket: &Socket,
        token: u64,
        queue: &WriteQueue,
    ) -> io::Result<()> {
        let entry = self.sends.vacant_entry();
        let key = entry.key() as u64;
        let popped = self.free_sends.pop();
        self.free_sends_low = self.free_sends_low.min(self.free_sends.len());
        let mut op = match popped {
            Some(mut op) => {
                op.token = token;
                op
            }
            None => {
                // SAFETY: msghdr and iovec are plain C structs (integers and raw pointers) for
                // which all-zero is a valid value.
                let (msg, iov) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
                Box::new(SendOp {
                    token,
                    msg,
                    iov,
                    orphan: None,
                })
            }
        };
        let n = queue.fill_iovecs(&mut op.iov);
        op.msg.msg_iov = op.iov.as_mut_ptr();
        op.msg.msg_iovlen = n as _;
        let e = match socket {
            Socket::Fd(s) => opcode::SendMsg::new(types::Fd(s.as_raw_fd()), &op.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            Socket::Direct(slot) => opcode::SendMsg::new(types::Fixed(*slot), &op.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
        }
        .user_data(ud(SEND, key));
        entry.insert(op);
        // SAFETY: the msghdr and iovecs live in a Box held by `sends` until this op's completion
        // (the Box's heap address does not change when the slab grows). The iovecs point into the
        // chunks of `queue`: while the send is in flight the worker neither frees, shrinks nor
        // reallocates those chunks (it only appends after their written part, within capacity, or
        // pushes new chunks; `WriteQueue::consume` runs only at this op's completion), and if the
        // connection goes away its queue moves into this op (`orphan`), moving the `Vec` headers
        // but not the heap buffers the iovecs name. The kernel only reads them.
        unsafe { self.push(e) };
        Ok(())
    }

    /// The connection whose send is in flight is gone: its queue stays alive until the completion,
    /// and the send is cancelled (to a peer that reads nothing it would wait forever, holding the
    /// queue and the socket).
    pub(crate) fn orphan_send(&mut self, token: u64, queue: WriteQueue) -> Option<WriteQueue> {
        match self.sends.iter_mut().find(|(_, op)| op.token == token) {
            Some((key, op)) => {
                op.orphan = Some(queue);
                self.cancel(ud(SEND, key as u64));
                None
            }
            None => Some(queue),
        }
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
        let (fd, mut flags) = match self.ring_index {
            Some(i) => (i as libc::c_int, ENTER_GETEVENTS | ENTER_REGISTERED_RING),
            None => (self.ring.as_raw_fd(), ENTER_GETEVENTS),
        };
        let ts;
        let arg;
        let (argp, argsz): (*const GetEventsArg, usize) = match timeout {
            None => (std::ptr::null(), 0),
            Some(t) => {
                ts = KernelTimespec {
                    tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
                    tv_nsec: i64::from(t.subsec_nanos()),
                };
                arg = GetEventsArg {
                    sigmask: 0,
                    sigmask_sz: 0,
                    min_wait_usec: 0,
                    ts: &ts as *const KernelTimespec as u64,
                };
                flags |= ENTER_EXT_ARG;
                (&arg, std::mem::size_of::<GetEventsArg>())
            }
        };
        // SAFETY: io_uring_enter reads `argsz` bytes of `arg` (a live local, or null with size 0)
        // and the timespec it points to (a live local); no signal mask is passed. `fd` is this
        // ring's descriptor or its registered index (with the matching flag).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                to_submit,
                1u32,
                flags,
                argp,
                argsz,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<IoEvent>) {
        let mut rearm_wake = false;
        let mut rearm_accept = Vec::new();
        let mut retry_accept = Vec::new();
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
            let payload = user_data & PAYLOAD;
            match user_data >> KIND_SHIFT {
                ACCEPT => {
                    let index = payload as usize;
                    if res >= 0 {
                        let socket = if self.direct {
                            Socket::Direct(res as u32)
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
                            retry_accept.push(index);
                        } else {
                            rearm_accept.push(index);
                        }
                    }
                }
                RETRY => rearm_accept.push(payload as usize),
                RECV if self.poll_mode => self.recv_done(payload, res, flags, out),
                POLL => {
                    let token = payload;
                    if res < 0 {
                        // -ECANCELED: cancelled at close (the connection is gone), or by the
                        // kernel; the worker re-arms if the connection is still there.
                        out.push(IoEvent::RecvEnd {
                            token,
                            end: RecvEnd::of(res, self.bufs.at_max()),
                            more,
                        });
                        continue;
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
                RECV => {
                    let token = payload;
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
                SEND => {
                    let key = payload as usize;
                    if self.sends.contains(key) {
                        let mut op = self.sends.remove(key);
                        out.push(IoEvent::Sent {
                            token: op.token,
                            res,
                            orphan: op.orphan.take(),
                        });
                        if self.free_sends.len() < MAX_FREE_SENDS {
                            self.free_sends.push(op);
                        }
                    }
                }
                // A cancelled connect poll: its connection is gone.
                CONNECT if res == -libc::ECANCELED => {}
                CONNECT => out.push(IoEvent::Connected {
                    token: payload,
                    error: (res < 0 && res != -libc::EINTR)
                        .then(|| io::Error::from_raw_os_error(-res)),
                }),
                WAKE => {
                    out.push(IoEvent::Wake);
                    rearm_wake = true;
                }
                PEER => {
                    let key = payload as usize;
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
                SHUTDOWN => {
                    let slot = payload as u32;
                    if self.shutting.remove(&slot) == Some(true) && !self.closing {
                        self.close_direct(slot);
                    }
                }
                _ => {} // CANCEL, QUIET: nothing to do
            }
        }
        self.cq = cq;
        if self.closing {
            return;
        }
        if rearm_wake {
            self.arm_wake();
        }
        for i in rearm_accept {
            self.arm_accept(i);
        }
        for i in retry_accept {
            let ts: *const types::Timespec = &*self.retry_ts;
            let e = opcode::Timeout::new(ts)
                .build()
                .user_data(ud(RETRY, i as u64));
            // SAFETY: the timespec is a Box owned by the driver for its whole life and only read.
            unsafe { self.push(e) };
        }
    }
}

impl UringDriver {
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
    fn recv_done(&mut self, token: u64, res: i32, flags: u32, out: &mut Vec<IoEvent>) {
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
            .user_data(ud(CANCEL, 0));
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
            let leaked = std::mem::replace(
                &mut self.bufs,
                BufRing {
                    entries: std::ptr::null_mut(),
                    entries_len: 0,
                    mem: std::ptr::null_mut(),
                    mem_len: 0,
                    count: 1,
                    size: 0,
                    tail: 0,
                    published: 0,
                    spare: Vec::new(),
                    target: 0,
                    max: 0,
                    short: false,
                    inc: false,
                    offsets: Vec::new(),
                    initial: 0,
                    live: Rc::new(()),
                    used_turn: 0,
                    peak: 0,
                    dropped: true,
                },
            );
            std::mem::forget(leaked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring's size follows its use: one growth per turn however many receives ran short, up
    /// to its limit; a trim shrinks it to twice the busiest turn (at least the initial size),
    /// buffers past that retire as they come back, and a quiet interval drops every page.
    #[test]
    fn buf_ring_follows_the_working_set() {
        if super::super::probe::uring_support().is_err() {
            eprintln!("SKIPPED: no io_uring");
            return;
        }
        let ring = builder().build(8).unwrap();
        let mut br = BufRing::new(&ring, 1024, 4096, 0, 512, false).unwrap();
        assert_eq!(br.target, RING_INITIAL);
        assert_eq!(br.held_bytes(), 0, "nothing touched yet");
        // Many receives short in one turn: one doubling.
        for _ in 0..100 {
            br.note_short();
        }
        br.end_turn();
        assert_eq!(br.target, 128);
        assert!(!br.at_max());
        for _ in 0..5 {
            br.note_short();
            br.end_turn();
        }
        assert_eq!(br.target, 512, "capped at the limit");
        assert!(br.at_max());
        // A busy turn used 200 buffers (handed out and given back in the same turn).
        for bid in 0..200 {
            br.handed_out();
            br.give_back(bid);
        }
        br.end_turn();
        assert_eq!(br.held_bytes(), 512 * 4096);
        br.trim();
        assert_eq!(br.target, 512, "2 x 200 rounds up to 512");
        // A lighter interval: 20 buffers in the busiest turn -> 64 (the floor).
        for bid in 200..220 {
            br.handed_out();
            br.give_back(bid);
        }
        br.end_turn();
        br.trim();
        assert_eq!(br.target, RING_INITIAL);
        // Buffers past the new size retire when they come back; those below go back in.
        br.handed_out();
        br.give_back(300);
        br.handed_out();
        br.give_back(3);
        br.end_turn();
        assert!(br.spare.contains(&300));
        assert!(!br.spare.contains(&3));
        assert!(
            br.spare.windows(2).all(|w| w[0] > w[1]),
            "spare stays sorted"
        );
        // The interval that saw those two ends; a quiet one drops every page.
        br.trim();
        assert_eq!(br.target, RING_INITIAL);
        assert!(br.held_bytes() > 0);
        br.trim();
        assert_eq!(br.held_bytes(), 0);
        // Growth after a shrink takes the lowest spare ids first.
        br.note_short();
        br.end_turn();
        assert_eq!(br.target, 128);
        assert!(br.spare.iter().all(|&b| b >= 128));
        drop(br);
        drop(ring);
    }

    /// Incremental consumption: completions of one buffer start where the previous one ended
    /// while the kernel keeps the buffer (`BUF_MORE`); the one without it ends the buffer, which
    /// counts once as used.
    #[test]
    fn incremental_buffers_are_read_in_parts() {
        if super::super::probe::uring_support().is_err() {
            eprintln!("SKIPPED: no io_uring");
            return;
        }
        let ring = builder().build(8).unwrap();
        let Ok(mut br) = BufRing::new(&ring, 64, 65536, 0, 16, true) else {
            eprintln!("SKIPPED: the kernel has no incremental provided buffers (6.12)");
            return;
        };
        assert_eq!(br.target, 16, "64 x 16 KiB worth of 64 KiB buffers");
        let more = 1 << 4; // IORING_CQE_F_BUF_MORE
        assert_eq!(br.take(2, 100, more), (0, true));
        assert_eq!(br.take(2, 16388, more), (100, true));
        assert_eq!(
            br.take(2, 50, 0),
            (16488, false),
            "the last part ends the buffer"
        );
        assert_eq!(br.used_turn, 1, "one buffer used");
        assert_eq!(br.take(2, 10, more), (0, true), "its next use starts over");
        drop(br);
        drop(ring);
    }
}
