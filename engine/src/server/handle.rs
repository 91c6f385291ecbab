//! Reaching connections and topics from any thread: [`ConnHandle`], [`Publisher`], and the
//! fanout side of [`ServerHandle`].
//!
//! Everything goes through the target worker's mailbox (a lock-free queue and a wake-up), so the
//! worker stays the only thread that touches its connections. Order: commands posted by one thread
//! to one worker are executed in the order posted, so one publisher's messages to a topic, and a
//! handle's sends mixed with publishes from the same thread, arrive in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::mailbox::{topic_bucket, Command};
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

    /// Posts a publish to every worker but `except` that may have subscribers of `topic` (one
    /// command per such worker, whatever the number of subscribers; see [`Interest`]).
    ///
    /// [`Interest`]: super::mailbox::Interest
    pub(crate) fn publish_except(&self, except: Option<usize>, topic: &str, msg: &PreparedMessage) {
        let bucket = topic_bucket(topic);
        let mut name: Option<Arc<str>> = None;
        for (w, mailbox) in self.mailboxes.iter().enumerate() {
            if Some(w) == except || !mailbox.interest.may_want(bucket) {
                continue;
            }
            let topic = Arc::clone(name.get_or_insert_with(|| Arc::from(topic)));
            self.post(
                w,
                Command::Publish {
                    topic,
                    msg: msg.clone(),
                },
            );
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn connection_count(&self) -> usize {
        self.mailboxes
            .iter()
            .map(|m| m.connections.load(Ordering::Relaxed))
            .sum()
    }

    fn socket_count(&self) -> usize {
        self.mailboxes
            .iter()
            .map(|m| m.sockets.load(Ordering::Relaxed))
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
///
/// ```
/// use surge::{Accept, Conn, ConnHandle, Handler, Message, Request, Upgrade};
///
/// /// Replies come from a thread pool, not from the worker.
/// struct Api { jobs: std::sync::mpsc::Sender<(ConnHandle, String)> }
///
/// impl Handler for Api {
///     type Data = ();
/// #   fn on_upgrade(&mut self, _r: &Request) -> Upgrade<()> { Upgrade::Accept(Accept::new(())) }
///     fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
///         if let Message::Text(query) = msg {
///             let _ = self.jobs.send((conn.handle(), query.to_owned()));
///         }
///     }
/// }
///
/// // On the pool's thread:
/// fn answer(conn: &ConnHandle, result: &str) {
///     if conn.send_text(result).is_err() {
///         // the connection has closed (or the server is stopping): nothing to do
///     }
/// }
/// ```
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

    /// Subscribes the connection to `topic`. A publish to `topic` made after this call returns
    /// (from this thread, or one ordered after it) reaches the connection, except a publish from a
    /// callback on the connection's own worker: the subscribe runs there when the worker drains its
    /// mailbox, after the callback; in a callback, use [`Conn::subscribe`](crate::Conn::subscribe).
    pub fn subscribe(&self, topic: &str) -> Result<(), HandleError> {
        // Counted before the command is posted, so that publishes see it at once; the worker takes
        // it back if the subscribe is a no-op (see `Interest`).
        let interest = &self.shared.mailboxes[self.worker as usize].interest;
        let bucket = topic_bucket(topic);
        interest.add(bucket);
        let posted = self.post(Command::Subscribe {
            id: self.id,
            topic: Arc::from(topic),
        });
        if posted.is_err() {
            interest.sub(bucket);
        }
        posted
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
    ///
    /// With a [`FanoutBridge`](crate::server::FanoutBridge) (a cluster), the message also goes to
    /// the other nodes.
    pub fn publish(&self, topic: &str, msg: &PreparedMessage) -> Result<(), HandleError> {
        if self.shared.stopped() {
            return Err(HandleError::Stopped);
        }
        self.shared.publish_except(None, topic, msg);
        // A control message reaches no connection (see `PreparedMessage::is_control`).
        if let (Some(bridge), false) = (&self.shared.bridge, msg.is_control()) {
            bridge.published(topic, msg);
        }
        Ok(())
    }

    /// Sends `msg` to this node's subscribers of `topic` only: what a
    /// [`FanoutBridge`](crate::server::FanoutBridge) calls with a message from another node (the
    /// bridge is not told). Otherwise the same as [`publish`](Self::publish).
    pub fn publish_local(&self, topic: &str, msg: &PreparedMessage) -> Result<(), HandleError> {
        if self.shared.stopped() {
            return Err(HandleError::Stopped);
        }
        self.shared.publish_except(None, topic, msg);
        Ok(())
    }

    /// Server worker threads (mailboxes) this publisher reaches.
    pub fn worker_count(&self) -> usize {
        self.shared.mailboxes.len()
    }

    /// Open WebSocket connections on all workers (from `on_open` to `on_close`), as of each
    /// worker's last loop turn.
    pub fn connection_count(&self) -> usize {
        self.shared.connection_count()
    }

    /// Every connection the workers hold: open WebSocket ones and those in a handshake, a plain
    /// HTTP exchange, a deferred decision or closing, as of each worker's last loop turn.
    pub fn socket_count(&self) -> usize {
        self.shared.socket_count()
    }

    /// Messages dropped under backpressure by all workers so far (as of their last loop turn).
    pub fn dropped_count(&self) -> u64 {
        self.shared.dropped_count()
    }

    /// Posts an application command to worker `worker`'s
    /// [`Handler::on_command`](crate::Handler::on_command); see
    /// [`WorkerCtx::post`](crate::WorkerCtx::post). Panics if `worker` is not below
    /// [`worker_count`](Self::worker_count).
    pub fn post<T: std::any::Any + Send>(&self, worker: usize, cmd: T) -> Result<(), HandleError> {
        super::worker::commands::post(&self.shared, worker, super::Command::new(cmd))
    }

    /// The worker that is home to `key`: see [`WorkerCtx::home_of`](crate::WorkerCtx::home_of).
    pub fn home_of<K: std::hash::Hash + ?Sized>(&self, key: &K) -> usize {
        super::worker::commands::home_of(self.worker_count(), key)
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

    /// See [`Publisher::socket_count`].
    pub fn socket_count(&self) -> usize {
        self.shared.socket_count()
    }

    /// See [`Publisher::post`].
    pub fn post<T: std::any::Any + Send>(&self, worker: usize, cmd: T) -> Result<(), HandleError> {
        self.publisher().post(worker, cmd)
    }

    /// See [`Publisher::worker_count`].
    pub fn worker_count(&self) -> usize {
        self.publisher().worker_count()
    }

    /// See [`Publisher::home_of`].
    pub fn home_of<K: std::hash::Hash + ?Sized>(&self, key: &K) -> usize {
        self.publisher().home_of(key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Waker;

    fn shared(workers: usize) -> Arc<Shared> {
        let wakers = (0..workers)
            .map(|_| Waker::EventFd(Arc::new(crate::driver::sys::event_fd().unwrap())))
            .collect::<Vec<_>>();
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            mailboxes: (0..workers).map(|_| Default::default()).collect(),
            metrics: (0..workers).map(|_| Default::default()).collect(),
            metrics_addr: None,
            wakers,
            bridge: None,
            limiter: None,
            proxy_refused: Default::default(),
            tls: Default::default(),
        })
    }

    fn drain(s: &Shared, w: usize) -> Vec<Command> {
        s.mailboxes[w].disarm();
        std::iter::from_fn(|| s.mailboxes[w].pop()).collect()
    }

    #[test]
    fn publishes_skip_workers_without_interest() {
        let s = shared(3);
        let msg = PreparedMessage::text("x");
        let publisher = Publisher {
            shared: Arc::clone(&s),
        };
        publisher.publish("room/1", &msg).unwrap();
        for w in 0..3 {
            assert!(drain(&s, w).is_empty(), "worker {w} has no subscribers");
        }
        // A handle's subscribe counts at once: the publish right after it is posted behind it.
        let handle = ConnHandle {
            shared: Arc::clone(&s),
            worker: 1,
            id: ConnId::new(7, 0),
            alive: Arc::new(AtomicBool::new(true)),
        };
        handle.subscribe("room/1").unwrap();
        publisher.publish("room/1", &msg).unwrap();
        assert!(drain(&s, 0).is_empty());
        assert!(drain(&s, 2).is_empty());
        let got = drain(&s, 1);
        assert!(matches!(
            &got[..],
            [Command::Subscribe { .. }, Command::Publish { .. }]
        ));
        // Publishing from worker 1 itself posts nowhere (it delivers its own subscribers).
        s.publish_except(Some(1), "room/1", &msg);
        assert!((0..3).all(|w| drain(&s, w).is_empty()));
        // Once the subscription ends (the worker subtracts), publishes skip worker 1 again.
        s.mailboxes[1].interest.sub(topic_bucket("room/1"));
        publisher.publish("room/1", &msg).unwrap();
        assert!((0..3).all(|w| drain(&s, w).is_empty()));
        // A subscribe refused at the handle (connection closed) leaves no count behind.
        handle.alive.store(false, Ordering::Release);
        assert_eq!(handle.subscribe("room/1"), Err(HandleError::Closed));
        assert!(!s.mailboxes[1].interest.may_want(topic_bucket("room/1")));
    }
}
