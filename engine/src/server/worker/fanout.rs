//! The worker's side of fanout: prepared sends, topics, and commands from other threads.
//!
//! A child module of `worker` (it reaches the connection table directly); the rest of the worker
//! only calls in at a few points: the waker event drains the mailbox, closing or removing a
//! connection unlinks it, and each loop turn ends by storing the figures other threads read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Conn, Flag, WorkerCtx};
use crate::handler::SendStatus;
use crate::prepared::PreparedMessage;
use crate::server::handle::ConnHandle;
use crate::server::mailbox::{topic_bucket, Command, Interest};
use crate::server::registry::ConnId;
use crate::server::topics::TopicTable;
use crate::server::Shared;

/// Most mailbox commands run per loop turn; the rest wait for the next turn (which comes at
/// once), so that a flood of commands cannot starve I/O.
pub(super) const MAX_COMMANDS_PER_TURN: usize = 4096;

/// A worker's fanout state.
#[derive(Debug)]
pub(crate) struct Fanout {
    topics: TopicTable,
    shared: Arc<Shared>,
}

impl Fanout {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Fanout {
            topics: TopicTable::default(),
            shared,
        }
    }

    /// The state shared with the handles and the other workers.
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl<D> WorkerCtx<D> {
    /// Queues a shared frame on one connection, applying the backpressure policy (the frame's
    /// length counts toward the buffered amount like any other bytes).
    fn send_shared(&mut self, id: ConnId, msg: &PreparedMessage) -> SendStatus {
        if msg.is_control() {
            // surge::blocking's control messages: the engine sends control frames through its own
            // calls (ping, pong, close), which keep the close handshake's state.
            return SendStatus::Invalid;
        }
        let Some(c) = self.conns.get(id) else {
            return SendStatus::Closed;
        };
        if c.has(Flag::Client) {
            // An outgoing connection masks every frame with its own key: the shared (unmasked)
            // frame cannot go out as is, so the payload is framed (and compressed, when
            // negotiated) for it alone.
            return self.send_message(id, msg.kind(), msg.payload(), msg.compressible());
        }
        let limit = self.cfg.proto.max_send_frame_size;
        if limit != 0 && msg.payload().len() > limit {
            // The shared frame is one frame: where frames are limited (`max_send_frame_size`), a
            // longer message is framed (and compressed) for this connection alone, in frames of
            // at most the limit, as any other send.
            return self.send_message(id, msg.kind(), msg.payload(), msg.compressible());
        }
        if !c.can_send() {
            return SendStatus::Closed;
        }
        // permessage-deflate: the variant compressed for this connection's sending window, once
        // per message and window; otherwise the plain frame.
        let variant = match c.deflate {
            Some(_) => self.shared_variant(id, msg),
            None => None,
        };
        let frame = variant.as_ref().unwrap_or(msg.frame());
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        if c.would_pass(frame.len(), self.cfg.max_backpressure) {
            return self.refuse_over_limit(id);
        }
        c.queue.push_shared(frame);
        self.metrics.sent(msg.payload().len());
        if variant.is_some() {
            // The peer's inflater now holds a message our window does not (it was compressed
            // without our context): forget ours so later messages stay decodable.
            if let Some(st) = c.deflate.as_deref_mut() {
                st.sent_independent();
            }
        }
        self.queued(id)
    }

    /// Writes `msg` to this worker's subscribers of `topic` (queued now, flushed at the end of the
    /// loop turn with everything else). Returns how many took it.
    fn deliver(&mut self, topic: &str, msg: &PreparedMessage) -> usize {
        self.deliver_except(topic, msg, None)
    }

    /// [`deliver`](Self::deliver) to every subscriber but `except`.
    fn deliver_except(
        &mut self,
        topic: &str,
        msg: &PreparedMessage,
        except: Option<ConnId>,
    ) -> usize {
        // Taken out for the walk: sends never change subscriptions (closing happens later, in
        // `close_callback`), and this keeps the borrow of the list apart from the connections.
        let table = std::mem::take(&mut self.fanout.topics);
        let mut queued = 0;
        for &id in table.subscribers(topic) {
            if Some(id) == except {
                continue;
            }
            if self.send_shared(id, msg).is_queued() {
                queued += 1;
            }
        }
        self.fanout.topics = table;
        queued
    }

    /// Sends `msg` to every subscriber of `topic` on every worker: this worker's subscribers now,
    /// the other workers' through one mailbox command each (only to workers that may have
    /// subscribers of `topic`).
    ///
    /// With a [`FanoutBridge`](crate::server::FanoutBridge) (a cluster), the message also goes to
    /// the other nodes.
    ///
    /// A control message ([`PreparedMessage::is_control`]) is refused by every connection: it is
    /// not published at all.
    ///
    /// ```
    /// use surge::{Conn, PreparedMessage, WorkerCtx};
    ///
    /// // A connection joins a room: it subscribes to the room's topic...
    /// fn join(conn: &mut Conn<'_, String>, room: &str) {
    ///     conn.subscribe(room);
    ///     // ...and the others hear of it (not the newcomer: publish_others skips the sender).
    ///     let news = PreparedMessage::text(&format!("{} joined", conn.data()));
    ///     conn.publish_others(room, &news);
    /// }
    ///
    /// // A tick sends the room's state to every subscriber on every worker: framed once, shared.
    /// fn tick(worker: &mut WorkerCtx<String>, room: &str, state: &str) {
    ///     worker.publish(room, &PreparedMessage::text(state));
    /// }
    /// ```
    pub fn publish(&mut self, topic: &str, msg: &PreparedMessage) {
        self.publish_except(topic, msg, None);
    }

    /// [`publish`](Self::publish) to every subscriber but the connection `except` (the sender of
    /// "others moved"); the other workers and nodes never hold it.
    pub(super) fn publish_except(
        &mut self,
        topic: &str,
        msg: &PreparedMessage,
        except: Option<ConnId>,
    ) {
        if msg.is_control() {
            return;
        }
        self.deliver_except(topic, msg, except);
        let shared = &self.fanout.shared;
        shared.publish_except(Some(self.index), topic, msg);
        if let Some(bridge) = &shared.bridge {
            bridge.published(topic, msg);
        }
    }

    /// This worker's subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.fanout.topics.subscribers(topic).len()
    }

    /// The same as [`publish`](Self::publish) from another thread.
    pub fn publisher(&self) -> crate::server::Publisher {
        crate::server::Publisher {
            shared: Arc::clone(&self.fanout.shared),
        }
    }

    /// This worker's topic interest, which publishers on any thread read.
    fn interest(&self) -> &Interest {
        &self.fanout.shared.mailboxes[self.index].interest
    }

    /// Subscribes `id` to `topic`; true if it was not subscribed. The caller counts a new
    /// subscription in the worker's [`Interest`] (unless a handle counted it already).
    fn subscribe_id(&mut self, id: ConnId, topic: &str) -> bool {
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        if c.data.is_none() && !c.has(Flag::Lent) {
            return false;
        }
        c.set(Flag::Linked);
        match self.fanout.topics.subscribe(id, topic) {
            None => false,
            Some(created) => {
                if created {
                    if let Some(bridge) = &self.fanout.shared.bridge {
                        bridge.interest(self.index, &Arc::from(topic), true);
                    }
                }
                true
            }
        }
    }

    fn unsubscribe_id(&mut self, id: ConnId, topic: &str) -> bool {
        let removed = match self.conns.get(id) {
            Some(c) if c.has(Flag::Linked) => self.fanout.topics.unsubscribe(id, topic),
            _ => None,
        };
        let Some(ended) = removed else {
            return false;
        };
        self.interest().sub(topic_bucket(topic));
        if let (Some(name), Some(bridge)) = (ended, &self.fanout.shared.bridge) {
            bridge.interest(self.index, &name, false);
        }
        true
    }

    /// The connection is closed (or gone): drops its subscriptions and fails its handles.
    pub(super) fn unlink(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            if c.has(Flag::Linked) {
                c.clear(Flag::Linked);
                let shared = &self.fanout.shared;
                let interest = &shared.mailboxes[self.index].interest;
                let index = self.index;
                self.fanout.topics.unlink(id, |name, gone| {
                    interest.sub(topic_bucket(name));
                    if let (true, Some(bridge)) = (gone, &shared.bridge) {
                        bridge.interest(index, name, false);
                    }
                });
            }
        }
    }

    /// Runs a command another thread posted that needs no handler callback.
    pub(super) fn run_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { topic, msg } => {
                self.deliver(&topic, &msg);
            }
            Command::Send { id, msg } => {
                // A stale id (the connection closed since) fails the generation check: discarded.
                let _ = self.send_shared(id, &msg);
            }
            Command::Close { id, code, reason } => {
                let _ = self.start_close(id, code, &reason);
            }
            Command::Subscribe { id, topic } => {
                // The handle counted it when posting: taken back unless it is a new subscription.
                if !self.subscribe_id(id, &topic) {
                    self.interest().sub(topic_bucket(&topic));
                }
            }
            Command::Unsubscribe { id, topic } => {
                self.unsubscribe_id(id, &topic);
            }
            // They call the handler: the worker runs them (`Worker::drain_mailbox`).
            Command::Upgrade { .. } | Command::App(_) => unreachable!("run by the worker"),
        }
    }

    /// The state shared with the other workers and the handles.
    pub(super) fn shared_state(&self) -> &Arc<crate::server::Shared> {
        &self.fanout.shared
    }

    /// The server is shutting down (no new outgoing connections).
    pub(crate) fn stopping(&self) -> bool {
        self.fanout.shared.stop.load(Ordering::Acquire)
    }

    /// Stores the figures other threads read (once per loop turn).
    pub(super) fn store_stats(&self) {
        let m = &self.fanout.shared.mailboxes[self.index];
        m.connections.store(self.open, Ordering::Relaxed);
        m.sockets.store(self.conns.len(), Ordering::Relaxed);
        m.dropped.store(self.dropped, Ordering::Relaxed);
    }
}

impl<D> Conn<'_, D> {
    /// Sends a prepared message: the connection's queue takes a reference to the shared frame,
    /// no copy. The backpressure policy applies as for any data message. A control message
    /// ([`PreparedMessage::is_control`]) is refused: [`SendStatus::Invalid`].
    pub fn send_prepared(&mut self, msg: &PreparedMessage) -> SendStatus {
        self.ctx.send_shared(self.id, msg)
    }

    /// Subscribes this connection to `topic` (on its worker; publishes from any worker or thread
    /// reach it). Returns false if it already was subscribed. Subscriptions end with the
    /// connection.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        let new = self.ctx.subscribe_id(self.id, topic);
        if new {
            self.ctx.interest().add(topic_bucket(topic));
        }
        new
    }

    /// Unsubscribes this connection from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        self.ctx.unsubscribe_id(self.id, topic)
    }

    /// Whether this connection is subscribed to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.entry().has(Flag::Linked) && self.ctx.fanout.topics.is_subscribed(self.id, topic)
    }

    /// Sends `msg` to every subscriber of `topic` on every worker (this connection too, if it is
    /// subscribed). See [`WorkerCtx::publish`].
    pub fn publish(&mut self, topic: &str, msg: &PreparedMessage) {
        self.ctx.publish(topic, msg);
    }

    /// Sends `msg` to every subscriber of `topic` on every worker except this connection (as
    /// uWebSockets' `ws->publish` does): "the others moved" in a game room, a chat line not echoed
    /// to its author.
    pub fn publish_others(&mut self, topic: &str, msg: &PreparedMessage) {
        self.ctx.publish_except(topic, msg, Some(self.id));
    }

    /// A handle to this connection for other threads (`Send + Sync + Clone`): send, close,
    /// subscribe. Once the connection closes, the handle's calls fail with
    /// [`HandleError::Closed`](crate::server::HandleError::Closed).
    pub fn handle(&mut self) -> ConnHandle {
        let id = self.id;
        let ctx = &mut *self.ctx;
        let c = ctx
            .conns
            .get_mut(id)
            .expect("a Conn handle names a live connection");
        c.set(Flag::Linked);
        let open = c.data.is_some();
        let alive = ctx
            .fanout
            .topics
            .links_mut(id)
            .alive
            .get_or_insert_with(|| Arc::new(AtomicBool::new(open)));
        ConnHandle {
            shared: Arc::clone(&ctx.fanout.shared),
            worker: ctx.index as u32,
            id,
            alive: Arc::clone(alive),
        }
    }
}
