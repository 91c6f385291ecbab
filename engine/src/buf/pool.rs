//! A per-worker free list of byte buffers (gorilla's `WriteBufferPool`, always on).
//!
//! Single-threaded by design: each worker owns its pools, so taking and giving a buffer is a `Vec`
//! push or pop, no atomics.

use crate::proto::BufferPool;

/// A free list of `Vec<u8>` buffers of (at least) one chunk size.
///
/// Buffers that grew far beyond the chunk size (a 16 MiB message assembled in one) are freed instead
/// of kept, so the pool's memory stays bounded by `max_cached * chunk_size * 4`.
#[derive(Debug)]
pub struct ChunkPool {
    free: Vec<Vec<u8>>,
    chunk_size: usize,
    max_cached: usize,
    /// Buffers handed out and not given back (for tests and statistics).
    outstanding: usize,
}

impl ChunkPool {
    /// A pool of buffers with `chunk_size` capacity that keeps at most `max_cached` free ones.
    pub fn new(chunk_size: usize, max_cached: usize) -> Self {
        ChunkPool {
            free: Vec::new(),
            chunk_size: chunk_size.max(64),
            max_cached,
            outstanding: 0,
        }
    }

    /// The capacity of a fresh buffer.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// An empty buffer with at least `chunk_size` capacity.
    pub fn get(&mut self) -> Vec<u8> {
        self.outstanding += 1;
        match self.free.pop() {
            Some(buf) => buf,
            None => Vec::with_capacity(self.chunk_size),
        }
    }

    /// Gives a buffer back. Its contents are cleared; an oversized or surplus buffer is freed.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if buf.capacity() < self.chunk_size
            || buf.capacity() > self.chunk_size * 4
            || self.free.len() >= self.max_cached
        {
            return;
        }
        buf.clear();
        self.free.push(buf);
    }

    /// Free buffers held.
    pub fn cached(&self) -> usize {
        self.free.len()
    }

    /// Buffers handed out and not yet given back.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Frees every cached buffer.
    pub fn shrink(&mut self) {
        self.free = Vec::new();
    }
}

/// The protocol core takes its assembly buffers from here.
impl BufferPool for ChunkPool {
    fn take(&mut self) -> Vec<u8> {
        self.get()
    }
    fn give(&mut self, buf: Vec<u8>) {
        self.put(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut pool = ChunkPool::new(1024, 2);
        let a = pool.get();
        assert_eq!(a.capacity(), 1024);
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get();
        assert_eq!(b.as_ptr(), ptr, "a returned buffer is reused");
        assert_eq!(pool.outstanding(), 1);
        pool.put(b);
        // Surplus buffers are freed.
        let (x, y, z) = (pool.get(), pool.get(), pool.get());
        pool.put(x);
        pool.put(y);
        pool.put(z);
        assert_eq!(pool.cached(), 2);
        // Oversized buffers are freed, undersized ones too.
        let mut big = pool.get();
        big.reserve(1 << 20);
        pool.put(big);
        pool.put(Vec::new());
        assert_eq!(pool.cached(), 1);
        let mut c = pool.get();
        c.extend_from_slice(b"abc");
        pool.put(c);
        assert!(pool.get().is_empty(), "returned buffers come back cleared");
    }
}
