//! Messages to a worker from other threads: a lock-free queue per worker plus its waker.
//!
//! Any thread (a `ConnHandle`, a `ServerHandle::publish`, another worker's callback) pushes a
//! [`Command`] onto the target worker's [`SegQueue`] and wakes it only if no wake-up is pending
//! already (`armed`), so a burst of commands costs one eventfd write. The worker clears `armed`
//! before draining, so a command pushed during the drain either is drained or wakes it again.
//!
//! The same per-worker block carries the figures other threads may read (relaxed atomics, stored
//! by the worker once per loop turn): connection count and dropped messages; and the worker's
//! topic [`Interest`], so that a publish skips workers with no subscriber of its topic.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    /// An application command for [`Handler::on_command`](crate::Handler::on_command).
    App(super::command::Command),
    /// The application's decision on a deferred upgrade ([`PendingUpgrade`]).
    ///
    /// [`PendingUpgrade`]: crate::server::PendingUpgrade
    Upgrade {
        id: ConnId,
        decision: super::pending::Decision,
    },
}

/// Buckets of a worker's [`Interest`] (4 bytes each: 16 KiB per worker). With `t` topics subscribed
/// on a worker, a publish to one of none of them wakes it needlessly with odds 1 - (1 - 1/4096)^t:
/// 2% at 100 topics, 14% at 625 (10k rooms over 16 workers).
const INTEREST_BUCKETS: usize = 4096;

/// Which bucket of an [`Interest`] counts `topic`'s subscriptions.
pub(crate) fn topic_bucket(topic: &str) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    topic.hash(&mut h);
    (h.finish() % INTEREST_BUCKETS as u64) as usize
}

/// A counting filter of one worker's subscriptions, read by publishers on any thread: a publish
/// posts to a worker only if the bucket of its topic is non-zero. Topics that share a bucket cost
/// a needless post (the worker finds no subscriber), never a lost message.
///
/// The count of a bucket covers every subscription on the worker to a topic of that bucket, plus
/// every `Subscribe` command still in its mailbox: a [`ConnHandle`](crate::server::ConnHandle)
/// adds one before it posts, so a publish from the same thread right after the subscribe reaches
/// the worker (in order, behind the subscribe); the worker takes it back if the subscribe turns out
/// a no-op. The worker subtracts one per subscription that ends.
pub(crate) struct Interest([AtomicU32; INTEREST_BUCKETS]);

impl Default for Interest {
    fn default() -> Self {
        Interest(std::array::from_fn(|_| AtomicU32::new(0)))
    }
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self
            .0
            .iter()
            .filter(|b| b.load(Ordering::Relaxed) != 0)
            .count();
        write!(f, "Interest({used} of {INTEREST_BUCKETS} buckets)")
    }
}

impl Interest {
    /// One more subscription (or pending subscribe) in `bucket`.
    pub(crate) fn add(&self, bucket: usize) {
        // Relaxed: a publisher that must see it is ordered after this store by the caller's own
        // synchronisation (program order on the same thread, or a happens-before edge).
        self.0[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// One subscription (or pending subscribe) in `bucket` fewer.
    pub(crate) fn sub(&self, bucket: usize) {
        let before = self.0[bucket].fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "interest bucket {bucket} underflow");
    }

    /// Whether a topic of `bucket` may have subscribers on this worker.
    pub(crate) fn may_want(&self, bucket: usize) -> bool {
        self.0[bucket].load(Ordering::Relaxed) != 0
    }
}

/// One worker's end for other threads. Padded: workers' counters do not share cache lines.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: SegQueue<Command>,
    /// A wake-up is pending (set by the first poster, cleared by the worker before it drains).
    armed: AtomicBool,
    /// Open WebSocket connections, stored by the worker each loop turn.
    pub(crate) connections: AtomicUsize,
    /// Connections held (handshakes, HTTP and closing ones included), stored likewise.
    pub(crate) sockets: AtomicUsize,
    /// Messages dropped under backpressure so far, stored by the worker each loop turn.
    pub(crate) dropped: AtomicU64,
    /// The worker's subscriptions by topic bucket (on cache lines of its own: publishers read it
    /// while the worker stores the figures above every loop turn).
    pub(crate) interest: crossbeam_utils::CachePadded<Interest>,
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

    /// Commands waiting (read by the metrics at scrape time).
    pub(crate) fn depth(&self) -> usize {
        self.queue.len()
    }

    /// Worker side: whether commands wait.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
