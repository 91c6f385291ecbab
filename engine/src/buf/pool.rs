//! A per-worker free list of byte buffers (gorilla's `WriteBufferPool`, always on).
//!
//! Single-threaded by design: each worker owns its pools, so taking and giving a buffer is a `Vec`
//! push or pop, no atomics.

use crate::proto::BufferPool;

/// A free list of `Vec<u8>` buffers of (at least) one chunk size.
///
/// Buffers that grew far beyond the chunk size (a 16 MiB message assembled in one) are freed instead
/// of kept, so the pool's memory stays bounded by `max_cached * chunk_size * 4`. Within that, it
/// follows recent use: [`ChunkPool::trim`] (the worker's periodic buffer trim) frees as many free
/// buffers as sat unused since the previous trim (the fewest the free list held meanwhile), so
/// after a quiet interval the pool is empty again.
#[derive(Debug)]
pub struct ChunkPool {
    free: Vec<Vec<u8>>,
    chunk_size: usize,
    max_cached: usize,
    /// Buffers handed out and not given back (for tests and statistics).
    outstanding: usize,
    /// The fewest free buffers held since the last trim.
    low: usize,
    /// The capacity of the free buffers, in bytes.
    cached_bytes: usize,
}

impl ChunkPool {
    /// A pool of buffers with `chunk_size` capacity that keeps at most `max_cached` free ones.
    pub fn new(chunk_size: usize, max_cached: usize) -> Self {
        ChunkPool {
            free: Vec::new(),
            chunk_size: chunk_size.max(64),
            max_cached,
            outstanding: 0,
            low: 0,
            cached_bytes: 0,
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
            Some(buf) => {
                self.low = self.low.min(self.free.len());
                self.cached_bytes -= buf.capacity();
                buf
            }
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
        self.cached_bytes += buf.capacity();
        self.free.push(buf);
    }

    /// Free buffers held.
    pub fn cached(&self) -> usize {
        self.free.len()
    }

    /// Buffers handed out and not yet given back.
    #[cfg(test)]
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The capacity of the free buffers held, in bytes.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Frees the free buffers that were not needed since the last trim (as many as the free list
    /// never went below), the oldest first: after an interval without use, all of them. Returns
    /// the bytes freed.
    pub fn trim(&mut self) -> usize {
        let unused = self.low.min(self.free.len());
        let freed: usize = self.free.drain(..unused).map(|b| b.capacity()).sum();
        self.cached_bytes -= freed;
        if self.free.is_empty() {
            self.free = Vec::new();
        }
        self.low = self.free.len();
        freed
    }
}

/// Asks the allocator to give free memory back to the system, after a trim freed `freed` bytes.
/// glibc's malloc keeps freed chunks of the heap (below its 128 KiB mmap threshold, as pooled
/// chunks are) resident until `malloc_trim`, which returns every whole free page; other allocators
/// (and other C libraries) manage that themselves.
pub fn release_to_system(freed: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if freed >= 64 * 1024 {
        // SAFETY: malloc_trim takes no pointers and may be called at any time from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = freed;
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

    #[test]
    fn trim_frees_what_an_interval_did_not_need() {
        let mut pool = ChunkPool::new(1024, 64);
        // A burst: 10 buffers out at once, then back.
        let burst: Vec<_> = (0..10).map(|_| pool.get()).collect();
        for b in burst {
            pool.put(b);
        }
        assert_eq!(pool.cached(), 10);
        assert_eq!(pool.cached_bytes(), 10 * 1024);
        // The burst's interval: the free list went down to 0, so nothing is surplus yet.
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.cached(), 10);
        // Steady use of 3 at a time: the free list never goes below 7; those go.
        for _ in 0..5 {
            let held: Vec<_> = (0..3).map(|_| pool.get()).collect();
            for b in held {
                pool.put(b);
            }
        }
        assert_eq!(pool.trim(), 7 * 1024);
        assert_eq!(pool.cached(), 3);
        // A quiet interval: everything goes.
        assert_eq!(pool.trim(), 3 * 1024);
        assert_eq!(pool.cached(), 0);
        assert_eq!(pool.cached_bytes(), 0);
        assert_eq!(pool.trim(), 0);
        release_to_system(0);
    }
}
