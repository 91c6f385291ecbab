//! Buffers owned by a worker: the chunk pool and the per-connection write queue.
//!
//! An idle connection holds no buffer at all: received bytes land in the worker's one read buffer,
//! assembly buffers and write chunks are taken from the worker's [`ChunkPool`]s and go back to them as
//! soon as the message is delivered or the bytes are written.

pub mod pool;
pub mod write_queue;

pub use pool::ChunkPool;
pub use write_queue::{QueueOutput, WriteQueue};
