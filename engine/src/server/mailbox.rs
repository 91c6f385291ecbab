//! Messages to a worker from other threads: a lock-free queue per worker plus its waker.
//!
//! Any thread (a `ConnHandle`, a `ServerHandle::publish`, another worker's callback) pushes a
//! [`Command`] onto the target worker's [`SegQueue`] and wakes it only if no wake-up is pending
//! already (`armed`), so a burst of commands costs one eventfd write. The worker clears `armed`
//! before draining, so a command pushed during the drain either is drained or wakes it again.
//!
//! The same per-worker block carries the figures other threads may read (relaxed atomics, stored
//! by the worker once per loop turn): connection count and dropped messages.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;

use super::registry::ConnId;
use crate::prepared::PreparedMessage;
use crate::proto::CloseCode;

/// What another thread asks a worker to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a prepared message to one connection (if it is still the same connection).
    Send {
        id: ConnId,
        msg: PreparedMessage,
    },
    /// Start one connection's close handshake.
    Close {
        id: ConnId,
        code: CloseCode,
        reason: Box<str>,
    },
    Subscribe {
        id: ConnId,
        topic: Arc<str>,
    },
    Unsubscribe {
        id: ConnId,
        topic: Arc<str>,
    },
    /// Deliver to this worker's subscribers of `topic`.
    Publish {
        topic: Arc<str>,
        msg: PreparedMessage,
    },
}

/// One worker's end for other threads. Padded: workers' counters do not share cache lines.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: SegQueue<Command>,
    /// A wake-up is pending (set by the first poster, cleared by the worker before it drains).
    armed: AtomicBool,
    /// Connections held (handshakes included), stored by the worker each loop turn.
    pub(crate) connections: AtomicUsize,
    /// Messages dropped under backpressure so far, stored by the worker each loop turn.
    pub(crate) dropped: AtomicU64,
}

impl Mailbox {
    /// Queues `cmd`; wakes the worker with `wake` unless a wake-up is already pending.
    pub(crate) fn post(&self, cmd: Command, wake: impl FnOnce()) {
        self.queue.push(cmd);
        if !self.armed.swap(true, Ordering::AcqRel) {
            wake();
        }
    }

    /// Worker side: allows the next post to wake us; call before draining.
    pub(crate) fn disarm(&self) {
        // A read-modify-write: it reads the last poster's `swap(true)` (release), so every command
        // pushed before that swap is visible to the drain that follows.
        self.armed.swap(false, Ordering::AcqRel);
    }

    /// Worker side: wakes the worker again unless a wake-up is pending (commands were left for the
    /// next turn).
    pub(crate) fn rearm(&self, wake: impl FnOnce()) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            wake();
        }
    }

    /// Worker side: the next command.
    pub(crate) fn pop(&self) -> Option<Command> {
        self.queue.pop()
    }

    /// Worker side: whether commands wait.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
