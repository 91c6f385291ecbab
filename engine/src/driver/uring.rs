//! Completions through io_uring (one ring per worker, created on the worker's thread).
//!
//! - Accept: one multishot `ACCEPT` per listener, into ordinary descriptors (see below); re-armed
//!   when the kernel ends it, after 10 ms when it ended for want of descriptors.
//! - Receive: one multishot `RECV` per connection selecting from the worker's provided-buffer ring,
//!   so an idle connection holds no read buffer. The worker processes a buffer and gives it back
//!   ([`UringDriver::recycle`]) in the same loop turn. `ENOBUFS` ends the multishot without losing
//!   data (the bytes stay in the socket); the worker re-arms once buffers are back. The ring starts
//!   with 64 buffers and doubles on `ENOBUFS` (up to 4,096), so that receives land in buffers still
//!   in the CPU caches.
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
//!   copies it to accepted sockets). There is no `getpeername`: `peer_addr` is `None`.
//!   Without direct descriptors, connections keep ordinary fds and those steps are syscalls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{IoEvent, Socket};
use crate::buf::WriteQueue;

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

fn ud(kind: u64, payload: u64) -> u64 {
    debug_assert!(payload <= PAYLOAD);
    kind << KIND_SHIFT | payload
}

/// Submission and completion queue sizes.
const SQ_ENTRIES: u32 = 4096;
const CQ_ENTRIES: u32 = 32768;
/// Provided buffers per worker (a power of two) and their size: 4096 x 16 KiB = 64 MiB of address
/// space per worker, of which only the buffers the ring grew to (64 at first, see
/// [`BufRing::grow`]) are ever touched: as many as one loop turn's receives needed at the peak.
const RING_BUFFERS: u16 = 4096;
const RING_BUFFER_SIZE: u32 = 16 * 1024;
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
    /// Buffers not in the ring yet (see [`BufRing::grow`]), popped lowest id first.
    spare: Vec<u16>,
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
    /// Maps `count` buffers of `size` bytes and registers them as group `bgid` of `ring`.
    pub(crate) fn new(ring: &IoUring, count: u16, size: u32, bgid: u16) -> io::Result<BufRing> {
        assert!(count.is_power_of_two());
        let entries_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let mem_len = usize::from(count) * size as usize;
        let entries = mmap(entries_len)?.cast::<types::BufRingEntry>();
        let mem = match mmap(mem_len) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: `entries` was mapped above with this length and nothing refers to it.
                unsafe { libc::munmap(entries.cast(), entries_len) };
                return Err(e);
            }
        };
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
        };
        // SAFETY: the entry array is page aligned (mmap), `count` entries long, and lives until
        // `Drop` of this BufRing, which the owner (UringDriver) runs only after the ring is idle or
        // leaks it otherwise (see UringDriver's Drop). The probe's throwaway ring is dropped
        // before its BufRing (declaration order at the call site: the BufRing is a temporary).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, bgid, 0)?
        };
        // Only a few buffers go in at first. The kernel takes buffers in ring order and the
        // worker gives each back in the same loop turn, so every buffer in the ring is used in
        // turn: with all of them (up to 64 MiB) in, each receive would land in memory that left the CPU
        // caches long ago, and copying into it (and unmasking it) costs several times a copy into
        // a buffer used a moment ago. The ring grows when the kernel runs short (ENOBUFS).
        let first = count.min(RING_INITIAL);
        for bid in 0..first {
            br.push(bid);
        }
        br.spare = (first..count).rev().collect();
        br.publish();
        Ok(br)
    }

    /// The kernel ran out of buffers (a receive ended with ENOBUFS): doubles the buffers in the
    /// ring, from the spare ones (visible at the next publish). Returns how many were added.
    fn grow(&mut self) -> usize {
        let in_ring = usize::from(self.count) - self.spare.len();
        let add = in_ring.max(16).min(self.spare.len());
        for _ in 0..add {
            let bid = self.spare.pop().expect("counted above");
            self.push(bid);
        }
        add
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

    /// Buffer `bid`'s first `len` bytes.
    ///
    /// # Safety
    /// The kernel must have handed `bid` out (a completion named it) and it must not have been
    /// given back yet: then only this process touches it.
    unsafe fn slice(&mut self, bid: u16, len: usize) -> &mut [u8] {
        debug_assert!(bid < self.count && len <= self.size as usize);
        // SAFETY: in bounds of the mapping (bid < count, len <= size); exclusive per the contract.
        unsafe {
            std::slice::from_raw_parts_mut(self.mem.add(usize::from(bid) * self.size as usize), len)
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` with these lengths. The owner guarantees the
        // kernel no longer uses them (the ring is idle or closed).
        unsafe {
            libc::munmap(self.mem.cast(), self.mem_len);
            libc::munmap(self.entries.cast(), self.entries_len);
        }
    }
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
    pub(crate) fn new(wake_fd: Arc<OwnedFd>, direct: u32) -> io::Result<Self> {
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
        let bufs = BufRing::new(&ring, RING_BUFFERS, RING_BUFFER_SIZE, BGID)?;
        let mut d = UringDriver {
            ring,
            ring_index,
            bufs,
            sends: slab::Slab::new(),
            free_sends: Vec::new(),
            cq: Vec::new(),
            listeners: Vec::new(),
            wake_fd,
            wake_buf: Box::new(0),
            retry_ts: Box::new(types::Timespec::new().nsec(10_000_000)),
            inflight: 0,
            closing: false,
            direct,
            shutting: Default::default(),
        };
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

    /// Arms the multishot receive of connection `token` (also after `ENOBUFS` or when the kernel
    /// ended it).
    pub(crate) fn arm_recv(&mut self, socket: &Socket, token: u64) {
        let e = match socket {
            Socket::Fd(s) => opcode::RecvMulti::new(types::Fd(s.as_raw_fd()), BGID).build(),
            Socket::Direct(slot) => opcode::RecvMulti::new(types::Fixed(*slot), BGID).build(),
        }
        .user_data(ud(RECV, token));
        // SAFETY: the kernel writes only into provided buffers of group BGID, which live as long as
        // the driver (see BufRing::new); no other memory is named.
        unsafe { self.push(e) };
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

    /// Cancels connection `token`'s receive (before its descriptor is closed).
    pub(crate) fn cancel_recv(&mut self, token: u64) {
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

    /// The bytes of provided buffer `bid`, handed out by a [`IoEvent::Received`].
    ///
    /// # Safety
    /// `bid` and `len` must come from a `Received` event not yet given back with `recycle`, and the
    /// slice must be dropped before that.
    pub(crate) unsafe fn buffer(&mut self, bid: u16, len: usize) -> *mut [u8] {
        // SAFETY: forwarded contract.
        unsafe { self.bufs.slice(bid, len) as *mut [u8] }
    }

    /// Gives a provided buffer back to the kernel (visible at the next poll).
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.bufs.push(bid);
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
        let mut op = match self.free_sends.pop() {
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

    /// The connection whose send is in flight is gone: its queue stays alive until the completion.
    pub(crate) fn orphan_send(&mut self, token: u64, queue: WriteQueue) -> Option<WriteQueue> {
        match self.sends.iter_mut().find(|(_, op)| op.token == token) {
            Some((_, op)) => {
                op.orphan = Some(queue);
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
                        if res == -libc::EMFILE || res == -libc::ENFILE || res == -libc::ENOMEM {
                            retry_accept.push(index);
                        } else {
                            rearm_accept.push(index);
                        }
                    }
                }
                RETRY => rearm_accept.push(payload as usize),
                RECV => {
                    let token = payload;
                    match cqueue::buffer_select(flags) {
                        Some(bid) if res > 0 => out.push(IoEvent::Received {
                            token,
                            bid,
                            len: res as u32,
                            more,
                        }),
                        Some(bid) => {
                            self.bufs.push(bid);
                            out.push(IoEvent::RecvEnd { token, res, more });
                        }
                        None => {
                            if res == -libc::ENOBUFS {
                                self.bufs.grow();
                            }
                            out.push(IoEvent::RecvEnd { token, res, more })
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
                CONNECT => out.push(IoEvent::Connected {
                    token: payload,
                    res,
                }),
                WAKE => {
                    out.push(IoEvent::Wake);
                    rearm_wake = true;
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

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Cancel everything and wait for the completions, so that no operation can still touch the
        // provided buffers, the send iovecs or the wake buffer once they are freed.
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
        if self.inflight > 0 {
            // Something is still owned by the kernel: leak the memory it might touch rather than
            // free it under it. (The ring fd closes below; the kernel tears the rest down.)
            std::mem::forget(std::mem::take(&mut self.sends));
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
                },
            );
            std::mem::forget(leaked);
        }
    }
}
