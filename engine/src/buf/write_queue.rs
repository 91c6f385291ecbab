//! A connection's outgoing bytes: a chain of pooled chunks, written with one `writev` per flush.
//!
//! Sends append encoded frames to the last chunk (or a fresh one from the worker's pool); a payload
//! larger than a chunk gets a buffer of its own. The worker flushes each connection once per loop
//! iteration (corking), and a written chunk goes straight back to the pool, so an idle connection's
//! queue is an empty `VecDeque` with no allocation.
//!
//! Besides pooled chunks, the queue holds references to shared frames ([`Bytes`], from a
//! [`PreparedMessage`](crate::prepared::PreparedMessage)): one iovec pointing into a buffer that
//! many connections send, kept alive by the reference until the bytes are written (on io_uring,
//! until the send's completion: the queue itself stays put until then).
//!
//! A completion-based write (io_uring) borrows the queue's chunks for the kernel: from
//! `WriteQueue::lend_iovecs` until `WriteQueue::advance` (its completion) or
//! `WriteQueue::end_write` the queue is *in flight*, and nothing frees, shrinks or reallocates a
//! chunk meanwhile: sends only append after the queued bytes within a chunk's capacity or push new
//! chunks, `release` and dropping the queue leak the chunks rather than free them under the kernel,
//! and a flush (`writev`) refuses. The driver's send relies on this and nothing else.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use super::pool::ChunkPool;
use crate::proto::Output;

/// Most chunks handed to one `writev` (the kernel's `IOV_MAX` is 1024; 64 x 16 KiB is plenty).
const MAX_IOVECS: usize = 64;

/// One piece of the queue: a pooled chunk (appended to while it has room) or a shared frame.
#[derive(Debug)]
enum Segment {
    Chunk(Vec<u8>),
    Shared(Bytes),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Chunk(c) => c,
            Segment::Shared(b) => b,
        }
    }

    fn release(self, pool: &mut ChunkPool) {
        if let Segment::Chunk(c) = self {
            pool.put(c);
        }
    }
}

/// Outgoing bytes of one connection.
#[derive(Debug, Default)]
pub struct WriteQueue {
    chunks: VecDeque<Segment>,
    /// Bytes queued and not yet written.
    len: usize,
    /// Bytes of the front chunk already written (a chunk or shared frame is under 4 GiB).
    head: u32,
    /// The kernel reads the chunks (see the module docs).
    in_flight: bool,
    /// TLS: how many entries at the front are records already encrypted (the rest is plaintext
    /// that [`WriteQueue::seal`] encrypts before the next write). Always 0 on a plain connection.
    /// In the padding after `in_flight`: the queue stays 48 bytes.
    sealed: u16,
}

impl WriteQueue {
    /// An empty queue (no allocation).
    pub const fn new() -> Self {
        WriteQueue {
            chunks: VecDeque::new(),
            len: 0,
            head: 0,
            in_flight: false,
            sealed: 0,
        }
    }

    /// Bytes waiting to be written (the connection's buffered amount).
    pub fn len(&self) -> usize {
        self.len
    }

    /// What the queued bytes cost in memory: the bytes plus the queue's ring of entries (a pooled
    /// chunk or a reference to a shared frame, 32 bytes each, the ring's whole capacity). Many tiny
    /// shared frames cost more in entries than in bytes; the backpressure limit counts this.
    pub fn cost(&self) -> usize {
        self.len + self.chunks.capacity() * std::mem::size_of::<Segment>()
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chunks held.
    #[cfg(test)]
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Appends a whole buffer as its own chunk (a handshake response built in a pooled buffer).
    pub fn push_chunk(&mut self, buf: Vec<u8>, pool: &mut ChunkPool) {
        if buf.is_empty() {
            pool.put(buf);
            return;
        }
        self.len += buf.len();
        self.chunks.push_back(Segment::Chunk(buf));
    }

    /// Appends a reference to a shared frame: its bytes are not copied (one more iovec).
    pub fn push_shared(&mut self, frame: &Bytes) {
        if frame.is_empty() {
            return;
        }
        self.len += frame.len();
        self.chunks.push_back(Segment::Shared(frame.clone()));
    }

    /// Appends `parts` back to back, into the last chunk when they fit, else into a fresh pooled
    /// chunk, or into a buffer of their own when larger than a chunk. With `mask`, the last part is
    /// XORed with the key (client role).
    pub fn append(&mut self, parts: &[&[u8]], mask: Option<[u8; 4]>, pool: &mut ChunkPool) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return;
        }
        // Never into a sealed (encrypted) entry: plaintext goes behind the records.
        let fits = self.chunks.len() > self.sealed as usize
            && matches!(self.chunks.back(),
            Some(Segment::Chunk(last)) if last.capacity() - last.len() >= total);
        if !fits {
            let chunk = pool.chunk_size();
            let buf = if total <= chunk {
                pool.get()
            } else if total <= chunk * 4 {
                // A frame a little larger than a chunk (a 16 KiB message plus its header): a pooled
                // buffer, grown once to a whole number of pages. The pool keeps buffers up to four
                // chunks, so steady traffic of such frames allocates nothing after the first ones.
                let mut buf = pool.get();
                if buf.capacity() < total {
                    buf.reserve_exact(total.next_multiple_of(4096).min(chunk * 4));
                }
                buf
            } else {
                Vec::with_capacity(total)
            };
            self.chunks.push_back(Segment::Chunk(buf));
        }
        let Some(Segment::Chunk(last)) = self.chunks.back_mut() else {
            unreachable!("a chunk was just ensured")
        };
        let mut start = last.len();
        for p in parts {
            start = last.len();
            last.extend_from_slice(p);
        }
        if let Some(key) = mask {
            surge_simd::apply_mask(&mut last[start..], key, 0);
        }
        self.len += total;
    }

    /// Writes as much as the socket takes with one `writev`; written chunks go back to `pool`.
    /// Returns the bytes written; `WouldBlock` when the socket took nothing.
    pub fn flush_once<W: Write>(
        &mut self,
        sink: &mut W,
        pool: &mut ChunkPool,
    ) -> io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        assert!(
            !self.in_flight,
            "a flush while a write of the queue is in flight"
        );
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                let from = if i == 0 { self.head as usize } else { 0 };
                slices[i] = IoSlice::new(&chunk.bytes()[from..]);
                count += 1;
            }
            sink.write_vectored(&slices[..count])?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.consume(n, pool);
        Ok(n)
    }

    /// Writes until the queue is empty or the socket would block. Returns whether it is empty.
    pub fn flush<W: Write>(&mut self, sink: &mut W, pool: &mut ChunkPool) -> io::Result<bool> {
        while self.len != 0 {
            match self.flush_once(sink, pool) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Starts a completion-based write: points `out` at the queued bytes, front first (at most
    /// `out.len()` chunks), and puts the queue in flight until [`WriteQueue::advance`] or
    /// [`WriteQueue::end_write`]; returns how many entries were filled. Panics if a write is
    /// already in flight.
    pub(crate) fn lend_iovecs(&mut self, out: &mut [libc::iovec]) -> usize {
        assert!(!self.in_flight, "one write of a queue at a time");
        self.in_flight = true;
        let mut count = 0;
        for (i, chunk) in self.chunks.iter().take(out.len()).enumerate() {
            let from = if i == 0 { self.head as usize } else { 0 };
            let bytes = &chunk.bytes()[from..];
            out[i] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            count += 1;
        }
        count
    }

    /// Whether a write of the queue is in flight (see the module docs).
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The write in flight completed with `n` bytes written: they leave the front (written chunks
    /// go back to `pool`) and the queue is no longer in flight.
    pub(crate) fn advance(&mut self, n: usize, pool: &mut ChunkPool) {
        self.in_flight = false;
        self.consume(n.min(self.len), pool);
    }

    /// The write in flight is over without bytes to account (it failed, or the queue's connection
    /// is gone): the queue is no longer in flight.
    pub(crate) fn end_write(&mut self) {
        self.in_flight = false;
    }

    /// Drops `n` written bytes from the front.
    fn consume(&mut self, mut n: usize, pool: &mut ChunkPool) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front().expect("written bytes were queued");
            let left = front.bytes().len() - self.head as usize;
            if n < left {
                self.head += n as u32;
                return;
            }
            n -= left;
            self.head = 0;
            self.sealed = self.sealed.saturating_sub(1);
            if let Some(chunk) = self.chunks.pop_front() {
                chunk.release(pool);
            }
        }
        if self.len == 0 {
            // Keep an idle connection free of allocations.
            self.release(pool);
        }
    }

    /// Gives every chunk back and forgets the queued bytes. While a write is in flight the chunks
    /// are leaked instead (a bug elsewhere, but never memory freed under the kernel).
    pub fn release(&mut self, pool: &mut ChunkPool) {
        if self.in_flight {
            debug_assert!(false, "a queue released with a write in flight");
            std::mem::forget(std::mem::take(&mut self.chunks));
        }
        for chunk in self.chunks.drain(..) {
            chunk.release(pool);
        }
        self.chunks = VecDeque::new();
        self.head = 0;
        self.len = 0;
        self.in_flight = false;
        self.sealed = 0;
    }

    /// TLS: whether plaintext waits behind the encrypted records (see [`WriteQueue::seal`]).
    pub fn has_unsealed(&self) -> bool {
        self.chunks.len() > self.sealed as usize
    }

    /// TLS: queues an encrypted record (a handshake message, an alert) ahead of the plaintext
    /// not yet encrypted, which will be encrypted after it (record order is key order).
    pub fn push_sealed(&mut self, buf: Vec<u8>, pool: &mut ChunkPool) {
        if buf.is_empty() {
            pool.put(buf);
            return;
        }
        self.len += buf.len();
        self.chunks
            .insert(self.sealed as usize, Segment::Chunk(buf));
        self.sealed += 1;
    }

    /// TLS: encrypts the plaintext behind the sealed front, in order, into pooled chunks that
    /// replace it: `encrypt(plaintext, out)` appends the records for `plaintext` to `out` (a
    /// chunk with at least `plaintext.len() + 64` spare bytes of capacity; it may grow it).
    /// Plaintext chunks go back to the pool, shared frames are dropped. Allowed while a write is
    /// in flight: the entries the kernel reads (all sealed) stay where they are. On an error the
    /// plaintext is dropped too (the connection is failing).
    pub fn seal<E>(
        &mut self,
        pool: &mut ChunkPool,
        mut encrypt: impl FnMut(&[u8], &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let first = self.sealed as usize;
        let plain = self.chunks.len() - first;
        if plain == 0 {
            return Ok(());
        }
        let mut result = Ok(());
        let mut out: Option<Vec<u8>> = None;
        let mut sealed_len = 0usize;
        let mut plain_len = 0usize;
        let mut new_entries = 0usize;
        // A record carries at most 16 KiB of plaintext; feed it in pieces that fit a chunk.
        let piece_max = pool.chunk_size().saturating_sub(64).clamp(1024, 16 * 1024);
        for k in 0..plain {
            // Each plaintext entry leaves from the middle (the records go to the back).
            let seg = self.chunks.remove(first).expect("counted");
            // A plaintext entry is never partly written (only sealed ones are), but be exact.
            let from = if first == 0 && k == 0 {
                self.head as usize
            } else {
                0
            };
            let bytes = &seg.bytes()[from..];
            plain_len += bytes.len();
            if result.is_ok() {
                for piece in bytes.chunks(piece_max) {
                    let need = piece.len() + 64;
                    let full = out.as_ref().is_some_and(|o| o.capacity() - o.len() < need);
                    if full {
                        let o = out.take().expect("checked");
                        sealed_len += o.len();
                        self.chunks.push_back(Segment::Chunk(o));
                        new_entries += 1;
                    }
                    let o = out.get_or_insert_with(|| pool.get());
                    if o.capacity() - o.len() < need {
                        o.reserve(need);
                    }
                    if let Err(e) = encrypt(piece, o) {
                        result = Err(e);
                        break;
                    }
                }
            }
            seg.release(pool);
        }
        if let Some(o) = out {
            if o.is_empty() {
                pool.put(o);
            } else {
                sealed_len += o.len();
                self.chunks.push_back(Segment::Chunk(o));
                new_entries += 1;
            }
        }
        if first == 0 {
            self.head = 0;
        }
        self.len = self.len - plain_len + sealed_len;
        self.sealed = u16::try_from(first + new_entries).unwrap_or(u16::MAX);
        debug_assert!(
            first + new_entries <= u16::MAX as usize,
            "sealed entries overflow"
        );
        if self.len == 0 && !self.in_flight {
            self.release(pool);
        }
        result
    }
}

impl Drop for WriteQueue {
    /// A queue dropped with a write in flight (a worker torn down while the kernel still reads
    /// it) leaks its chunks rather than free them under the kernel.
    fn drop(&mut self) {
        if self.in_flight {
            std::mem::forget(std::mem::take(&mut self.chunks));
        }
    }
}

/// The protocol core's [`Output`] for one connection: its queue plus the worker's chunk pool.
#[derive(Debug)]
pub struct QueueOutput<'a> {
    /// The connection's queue.
    pub queue: &'a mut WriteQueue,
    /// The worker's chunk pool.
    pub pool: &'a mut ChunkPool,
}

impl Output for QueueOutput<'_> {
    fn write_frame(&mut self, header: &[u8], payload: &[u8], mask: Option<[u8; 4]>) {
        self.queue.append(&[header, payload], mask, self.pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `cap` bytes per call and records what it got.
    struct Sink {
        got: Vec<u8>,
        cap: usize,
        calls: usize,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.cap == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn packs_frames_and_flushes_in_order() {
        let mut pool = ChunkPool::new(64, 8);
        let mut q = WriteQueue::new();
        let mut expect = Vec::new();
        for i in 0..20u8 {
            let payload = vec![i; (i as usize) * 7];
            let mut out = QueueOutput {
                queue: &mut q,
                pool: &mut pool,
            };
            out.write_frame(&[0x82, i], &payload, None);
            expect.extend_from_slice(&[0x82, i]);
            expect.extend_from_slice(&payload);
        }
        assert_eq!(q.len(), expect.len());
        let mut sink = Sink {
            got: Vec::new(),
            cap: 0,
            calls: 0,
        };
        assert!(!q.flush(&mut sink, &mut pool).unwrap(), "would block");
        sink.cap = 50;
        while !q.is_empty() {
            q.flush_once(&mut sink, &mut pool).unwrap();
        }
        assert_eq!(sink.got, expect);
        assert_eq!(q.chunk_count(), 0);
        assert_eq!(pool.outstanding(), 0, "every chunk went back to the pool");
    }

    #[test]
    fn corked_small_frames_share_one_writev() {
        let mut pool = ChunkPool::new(16 * 1024, 8);
        let mut q = WriteQueue::new();
        for _ in 0..100 {
            q.append(&[b"hd", b"payload"], None, &mut pool);
        }
        assert_eq!(q.chunk_count(), 1);
        let mut sink = Sink {
            got: Vec::new(),
            cap: usize::MAX,
            calls: 0,
        };
        assert!(q.flush(&mut sink, &mut pool).unwrap());
        assert_eq!(sink.calls, 1);
        assert_eq!(sink.got.len(), 900);
    }

    #[test]
    fn shared_frames_interleave_with_chunks_in_order() {
        let mut pool = ChunkPool::new(64, 8);
        let mut q = WriteQueue::new();
        let shared = Bytes::from(vec![9u8; 100]);
        q.append(&[b"ab"], None, &mut pool);
        q.push_shared(&shared);
        q.append(&[b"cd"], None, &mut pool);
        q.push_shared(&shared);
        assert_eq!(q.len(), 204);
        assert_eq!(
            q.chunk_count(),
            4,
            "a chunk after a shared frame is a new one"
        );
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 8];
        assert_eq!(q.lend_iovecs(&mut iov), 4);
        assert_eq!(iov[1].iov_base as *const u8, shared.as_ptr(), "no copy");
        assert!(q.in_flight());
        q.end_write();
        let mut sink = Sink {
            got: Vec::new(),
            cap: 37,
            calls: 0,
        };
        q.flush(&mut sink, &mut pool).unwrap();
        let mut expect = b"ab".to_vec();
        expect.extend_from_slice(&shared);
        expect.extend_from_slice(b"cd");
        expect.extend_from_slice(&shared);
        assert_eq!(sink.got, expect);
        assert_eq!(pool.outstanding(), 0);
    }

    #[test]
    fn large_payload_gets_its_own_buffer_and_masking_works() {
        let mut pool = ChunkPool::new(64, 8);
        let mut q = WriteQueue::new();
        let big = vec![0u8; 1000];
        q.append(&[b"h", &big], Some([1, 2, 3, 4]), &mut pool);
        assert_eq!(q.len(), 1001);
        let mut sink = Sink {
            got: Vec::new(),
            cap: 300,
            calls: 0,
        };
        q.flush(&mut sink, &mut pool).unwrap();
        assert_eq!(sink.got[0], b'h');
        assert_eq!(&sink.got[1..5], &[1, 2, 3, 4]);
        q.append(&[b"x"], None, &mut pool);
        q.release(&mut pool);
        assert!(q.is_empty());
    }

    #[test]
    fn frames_a_little_over_a_chunk_reuse_pooled_buffers() {
        let mut pool = ChunkPool::new(4096, 8);
        let mut q = WriteQueue::new();
        let payload = vec![7u8; 4096];
        let mut sink = Sink {
            got: Vec::new(),
            cap: usize::MAX,
            calls: 0,
        };
        for _ in 0..3 {
            q.append(&[b"hd", &payload], None, &mut pool);
            assert_eq!(q.len(), 4098);
            q.flush(&mut sink, &mut pool).unwrap();
            // The grown buffer went back to the pool and is handed out again.
            assert_eq!(pool.cached(), 1);
        }
        assert_eq!(sink.got.len(), 3 * 4098);
        assert_eq!(&sink.got[4098..4100], b"hd");
    }

    #[test]
    fn seal_encrypts_plaintext_behind_the_records_in_order() {
        let mut pool = ChunkPool::new(64, 8);
        let mut q = WriteQueue::new();
        q.append(&[b"ab"], None, &mut pool);
        q.push_sealed(b"H1".to_vec(), &mut pool);
        assert!(q.has_unsealed());
        // "Encryption": brackets around each piece.
        let enc = |p: &[u8], out: &mut Vec<u8>| -> Result<(), ()> {
            out.push(b'[');
            out.extend_from_slice(p);
            out.push(b']');
            Ok(())
        };
        q.seal(&mut pool, enc).unwrap();
        assert!(!q.has_unsealed());
        q.append(&[b"cd", b"ef"], None, &mut pool);
        q.push_sealed(b"H2".to_vec(), &mut pool);
        q.seal(&mut pool, enc).unwrap();
        let mut sink = Sink {
            got: Vec::new(),
            cap: 3,
            calls: 0,
        };
        assert!(q.flush(&mut sink, &mut pool).unwrap());
        assert_eq!(sink.got, b"H1[ab]H2[cdef]");
        assert!(q.is_empty() && !q.has_unsealed());
        assert_eq!(std::mem::size_of::<WriteQueue>(), 48);
    }
}
