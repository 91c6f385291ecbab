//! Reaching connections and topics from any thread: [`ConnHandle`], [`Publisher`], and the
//! fanout side of [`ServerHandle`].
//!
//! Everything goes through the target worker's mailbox (a lock-free queue and a wake-up), so the
//! worker stays the only thread that touches its connections. Order: commands posted by one thread
//! to one worker are executed in the order posted, so one publisher's messages to a topic, and a
//! handle's sends mixed with publishes from the same thread, arrive in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::mailbox::Command;
use super::registry::ConnId;
use super::{ServerHandle, Shared};
use crate::prepared::PreparedMessage;
use crate::proto::CloseCode;

/// Why a handle could not pass a command on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandleError {
    /// The connection has closed (`on_close` ran, or is about to run for a close already under
    /// way); nothing was queued.
    Closed,
    /// The server is shutting down.
    Stopped,
}

impl std::fmt::Display for HandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HandleError::Closed => "connection closed",
            HandleError::Stopped => "server stopped",
        })
    }
}

impl std::error::Error for HandleError {}

impl Shared {
    /// Posts `cmd` to worker `w`'s mailbox, waking it if needed.
    pub(crate) fn post(&self, w: usize, cmd: Command) {
        let wakers = &self.wakers;
        self.mailboxes[w].post(cmd, || {
            let _ = wakers[w].wake();
        });
    }

    /// Posts a publish to every worker but `except` (one command per worker, whatever the number
    /// of subscribers).
    pub(crate) fn publish_except(&self, except: Option<usize>, topic: &str, msg: &PreparedMessage) {
        let topic: Arc<str> = Arc::from(topic);
        for w in 0..self.mailboxes.len() {
            if Some(w) != except {
                self.post(
                    w,
                    Command::Publish {
                        topic: Arc::clone(&topic),
                        msg: msg.clone(),
                    },
                );
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn connection_count(&self) -> usize {
        self.mailboxes
            .iter()
            .map(|m| m.connections.load(Ordering::Relaxed))
            .sum()
    }

    fn dropped_count(&self) -> u64 {
        self.mailboxes
            .iter()
            .map(|m| m.dropped.load(Ordering::Relaxed))
            .sum()
    }
}

/// One connection, reachable from any thread (from [`Conn::handle`](crate::Conn::handle)).
/// `Send + Sync + Clone`.
///
/// Commands reach the connection's worker through its mailbox and run there in the order this
/// thread posted them. A handle to a connection that has closed fails with
/// [`HandleError::Closed`]; a command already posted when the connection closes is discarded by
/// the worker (the id's generation no longer matches).
#[derive(Clone)]
pub struct ConnHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) worker: u32,
    pub(crate) id: ConnId,
    pub(crate) alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("worker", &self.worker)
            .field("id", &self.id)
            .field("open", &self.is_open())
            .finish()
    }
}

impl ConnHandle {
    /// The connection's id within its worker.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The index of the connection's worker.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }

    /// Whether the connection was open when last seen (it may close any moment after).
    pub fn is_open(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.shared.stopped()
    }

    fn post(&self, cmd: Command) -> Result<(), HandleError> {
        if self.shared.stopped() {
            return Err(HandleError::Stopped);
        }
        if !self.alive.load(Ordering::Acquire) {
            return Err(HandleError::Closed);
        }
        self.shared.post(self.worker as usize, cmd);
        Ok(())
    }

    /// Sends a prepared message (shared, not copied). The backpressure policy applies on the
    /// worker: a message over the limit is dropped and counted, or closes the connection.
    pub fn send(&self, msg: &PreparedMessage) -> Result<(), HandleError> {
        self.post(Command::Send {
            id: self.id,
            msg: msg.clone(),
        })
    }

    /// Sends a text message (encoded here, once).
    pub fn send_text(&self, text: &str) -> Result<(), HandleError> {
        self.send(&PreparedMessage::text(text))
    }

    /// Sends a binary message (encoded here, once).
    pub fn send_binary(&self, data: &[u8]) -> Result<(), HandleError> {
        self.send(&PreparedMessage::binary(data))
    }

    /// Starts the close handshake with `code` and `reason`.
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), HandleError> {
        self.post(Command::Close {
            id: self.id,
            code,
            reason: reason.into(),
        })
    }

    /// Subscribes the connection to `topic`.
    pub fn subscribe(&self, topic: &str) -> Result<(), HandleError> {
        self.post(Command::Subscribe {
            id: self.id,
            topic: Arc::from(topic),
        })
    }

    /// Unsubscribes the connection from `topic`.
    pub fn unsubscribe(&self, topic: &str) -> Result<(), HandleError> {
        self.post(Command::Unsubscribe {
            id: self.id,
            topic: Arc::from(topic),
        })
    }
}

/// Publishes and reads server-wide figures from any thread; cheap to clone (from
/// [`ServerHandle::publisher`]).
#[derive(Clone)]
pub struct Publisher {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("workers", &self.shared.mailboxes.len())
            .finish()
    }
}

impl Publisher {
    /// Sends `msg` to every subscriber of `topic` on every worker: one command per worker, each
    /// worker writes the shared frame to its subscribers in one loop turn. Messages published by
    /// one thread to one topic arrive in order.
    pub fn publish(&self, topic: &str, msg: &PreparedMessage) -> Result<(), HandleError> {
        if self.shared.stopped() {
            return Err(HandleError::Stopped);
        }
        self.shared.publish_except(None, topic, msg);
        Ok(())
    }

    /// Connections held by all workers (handshakes and closing ones included), as of each
    /// worker's last loop turn.
    pub fn connection_count(&self) -> usize {
        self.shared.connection_count()
    }

    /// Messages dropped under backpressure by all workers so far (as of their last loop turn).
    pub fn dropped_count(&self) -> u64 {
        self.shared.dropped_count()
    }
}

impl ServerHandle {
    /// See [`Publisher::publish`].
    pub fn publish(&self, topic: &str, msg: &PreparedMessage) -> Result<(), HandleError> {
        self.publisher().publish(topic, msg)
    }

    /// See [`Publisher::connection_count`].
    pub fn connection_count(&self) -> usize {
        self.shared.connection_count()
    }

    /// See [`Publisher::dropped_count`].
    pub fn dropped_count(&self) -> u64 {
        self.shared.dropped_count()
    }

    /// A cloneable publisher for other threads.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            shared: Arc::clone(&self.shared),
        }
    }
}
