//! The worker's provided-buffer ring ([`BufRing`]) and the received bytes it lends
//! ([`RecvBuf`]).

use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, types, IoUring};

use super::sys::mmap;

/// Provided buffers per worker (a power of two) and their size: 4096 x 16 KiB = 64 MiB of address
/// space per worker, of which only the buffers the ring grew to (64 at first, see
/// [`BufRing::grow`]) are ever touched: as many as one loop turn's receives needed at the peak.
pub(super) const RING_BUFFERS: u16 = 4096;
pub(super) const RING_BUFFER_SIZE: u32 = 16 * 1024;
/// The buffer size where the kernel consumes provided buffers incrementally
/// (`IOU_PBUF_RING_INC`, 6.12): receives are packed one after another into a buffer, so a larger
/// buffer costs no more memory per small receive, and a 16 KiB frame with its header arrives in
/// one receive instead of two (a 16 KiB buffer holds the payload but not the header).
pub(super) const RING_BUFFER_SIZE_INC: u32 = 128 * 1024;
/// `IOU_PBUF_RING_INC` of `io_uring_register_pbuf_ring_flags` (the io-uring crate does not
/// re-export it).
const IOU_PBUF_RING_INC: u16 = 2;
pub(super) const BGID: u16 = 0;
/// Provided buffers in the ring at first (see [`BufRing::new`]).
const RING_INITIAL: u16 = 64;

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
    pub(super) size: u32,
    /// Our copy of the tail: entries up to here are written, published by [`BufRing::publish`].
    tail: u16,
    published: u16,
    /// Buffers not in the ring (never added, or retired), sorted highest id first: popped lowest
    /// id first.
    spare: Vec<u16>,
    /// The ring's size: buffers with a lower id belong in it, higher ones retire when they come
    /// back (see [`BufRing::give_back`]).
    pub(super) target: u16,
    /// The most buffers the ring may grow to (`ServerConfig::uring_max_recv_buffers`).
    pub(super) max: u16,
    /// A receive ended with `ENOBUFS` since the last publish: grow once, at the publish.
    short: bool,
    /// Receives that ended with `ENOBUFS` so far (the metrics read it).
    pub(super) enobufs: u64,
    /// Buffers handed out since the last publish (one loop turn), and the most of any turn since
    /// the last trim.
    used_turn: u32,
    peak: u32,
    /// Every buffer's pages were dropped and none was handed out since.
    dropped: bool,
    /// The kernel consumes buffers incrementally (`IOU_PBUF_RING_INC`): a completion may take
    /// part of a buffer and leave the rest in the ring for the next receive (`BUF_MORE`).
    pub(super) inc: bool,
    /// With `inc`: where the next receive into each buffer starts.
    offsets: Vec<u32>,
    /// Buffers in the ring at first, and the least a trim leaves: [`RING_INITIAL`] buffers'
    /// worth of 16 KiB ones.
    pub(super) initial: u16,
    /// Shared with every [`RecvBuf`] lent: while one lives, the buffers' mapping stays.
    pub(super) live: Rc<()>,
    /// The index of the ring it belongs to among the worker's rings (stamped on each lent buffer).
    pub(super) ring: u8,
    /// The ring defers its task work (DEFER_TASKRUN): the kernel writes buffers in the ring only
    /// inside this thread's `io_uring_enter` on it, so their pages may be dropped between turns.
    /// Otherwise it may write one whenever the thread leaves the kernel, and data written but not
    /// yet reaped would be lost with the page: only buffers out of the ring (retired as they come
    /// back) have their pages dropped.
    pub(super) deferred: bool,
}

/// Bytes the kernel received into a provided buffer, lent to the worker by an
/// [`IoEvent::Received`](crate::driver::IoEvent::Received) until it gives them back with
/// [`UringDriver::recycle`](super::UringDriver::recycle). Only this process
/// touches them meanwhile: the kernel handed the range out and reuses it only once it is given
/// back (with incremental consumption it writes the same buffer later, past this range).
pub(crate) struct RecvBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    pub(super) bid: u16,
    /// The kernel keeps the rest of the buffer for later receives: giving this part back does not
    /// return the buffer.
    pub(super) keep: bool,
    /// Keeps the mapping: a `BufRing` dropped while buffers are lent leaks it.
    pub(super) live: Rc<()>,
    /// The index of the ring it came from among the worker's rings.
    pub(super) ring: u8,
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
            enobufs: 0,
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
            ring: 0,
            deferred: true,
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
    pub(super) fn note_short(&mut self) {
        self.short = true;
        self.enobufs += 1;
    }

    /// Whether the ring is as large as it may grow: a receive that ran short waits for buffers
    /// to come back rather than for more.
    pub(super) fn at_max(&self) -> bool {
        self.target >= self.max
    }

    /// A completion handed a buffer out.
    fn handed_out(&mut self) {
        self.used_turn += 1;
        self.dropped = false;
    }

    /// A receive completion named buffer `bid` with `len` bytes: where in the buffer they start,
    /// and whether the kernel keeps the rest of the buffer for the next receive (then the buffer
    /// is not given back when this part is: [`UringDriver::recycle`](super::UringDriver::recycle)
    /// is told).
    pub(super) fn take(&mut self, bid: u16, len: u32, flags: u32) -> (u32, bool) {
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
    pub(super) fn give_back(&mut self, bid: u16) {
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
        // A buffer of the range still in the ring is dropped only where the ring defers its task
        // work (`deferred`, see `trim`): the kernel then writes it only while it runs a receive of
        // this ring inside this thread's io_uring_enter (inline issue or deferred task work;
        // receives are never forced to the kernel's worker threads), not concurrently with this
        // call, and no write of it waits unreaped; the next write faults in a zeroed page. Other
        // rings drop only buffers out of the ring (retired in `give_back`), which the kernel cannot
        // pick. MADV_DONTNEED on a private anonymous mapping keeps the mapping valid.
        unsafe {
            libc::madvise(self.mem.add(start).cast(), len, libc::MADV_DONTNEED);
        }
    }

    /// The end of a loop turn's buffer use (at the publish): grows if a receive ran short.
    pub(super) fn end_turn(&mut self) {
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
    pub(super) fn trim(&mut self) {
        let peak = std::mem::take(&mut self.peak);
        let floor = self.initial.min(self.max);
        let want = (peak.saturating_mul(2).next_power_of_two())
            .clamp(u32::from(floor), u32::from(self.max)) as u16;
        if want < self.target {
            // Past `want`: spare buffers have no pages (dropped when retired); those in the ring
            // retire when they come back (then their pages go), and where the kernel writes only
            // inside our enter, their pages go now.
            if self.deferred {
                self.drop_pages(want, self.target);
            }
            self.target = want;
        }
        if peak == 0 && !self.dropped && self.deferred {
            self.drop_pages(0, self.target);
            self.dropped = true;
        }
    }

    /// Buffers in the ring (or handed out) whose pages may be resident, in bytes: 0 after an
    /// interval without receives.
    pub(super) fn held_bytes(&self) -> usize {
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
    pub(super) fn publish(&mut self) {
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

    /// Buffers were given back (or the ring is to grow) since the last publish.
    pub(super) fn unpublished(&self) -> bool {
        self.published != self.tail || self.short
    }

    /// Lends the `len` bytes at `at` of buffer `bid`, which a completion handed out.
    pub(super) fn lend(&mut self, bid: u16, at: u32, len: u32, keep: bool) -> RecvBuf {
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
            ring: self.ring,
        }
    }

    /// Gives up the mappings without unmapping them (the kernel may still write them), leaving in
    /// their place an empty ring that owns no mapping: the driver's Drop, when operations are
    /// still in flight.
    pub(super) fn leak(&mut self) {
        let leaked = std::mem::replace(
            self,
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
                enobufs: 0,
                inc: false,
                offsets: Vec::new(),
                initial: 0,
                live: Rc::new(()),
                ring: self.ring,
                deferred: self.deferred,
                used_turn: 0,
                peak: 0,
                dropped: true,
            },
        );
        std::mem::forget(leaked);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.entries.is_null() {
            return; // the stand-in of a leaked ring (`BufRing::leak`)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::uring::builder;

    /// The ring's size follows its use: one growth per turn however many receives ran short, up
    /// to its limit; a trim shrinks it to twice the busiest turn (at least the initial size),
    /// buffers past that retire as they come back, and a quiet interval drops every page.
    #[test]
    fn buf_ring_follows_the_working_set() {
        if crate::driver::probe::uring_support().is_err() {
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

    #[test]
    fn without_deferred_task_work_buffers_in_the_ring_keep_their_pages() {
        if crate::driver::probe::uring_support().is_err() {
            eprintln!("SKIPPED: no io_uring");
            return;
        }
        // The kernel may write a buffer in the ring whenever the thread leaves the kernel: a trim
        // must not drop it (the bytes of a receive not yet reaped would read as zeros).
        let ring = builder().build(8).unwrap();
        let mut br = BufRing::new(&ring, 1024, 4096, 0, 512, false).unwrap();
        br.deferred = false;
        br.note_short();
        br.end_turn();
        assert_eq!(br.target, 128);
        br.handed_out();
        br.give_back(100);
        br.end_turn();
        // A light interval shrinks the ring (buffers past it retire as they come back) and a
        // quiet one leaves the pages of the buffers in the ring.
        br.trim();
        assert_eq!(br.target, RING_INITIAL);
        br.trim();
        assert!(!br.dropped, "no page of a buffer in the ring is dropped");
        assert!(br.held_bytes() > 0);
        // One that comes back past the ring's size retires (out of the ring: its pages go).
        br.handed_out();
        br.give_back(100);
        assert!(br.spare.contains(&100));
        drop(br);
        drop(ring);
    }

    /// Incremental consumption: completions of one buffer start where the previous one ended
    /// while the kernel keeps the buffer (`BUF_MORE`); the one without it ends the buffer, which
    /// counts once as used.
    #[test]
    fn incremental_buffers_are_read_in_parts() {
        if crate::driver::probe::uring_support().is_err() {
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
