//! Fanout beyond this process: the hook a cluster layer (the `surge-cluster` crate) plugs into a
//! server with [`Server::with_bridge`](super::Server::with_bridge).
//!
//! The engine tells the bridge two things, from the thread where they happen (a worker, or
//! whichever thread holds a [`Publisher`]): every publish made on this node, and every topic that
//! gains its first or loses its last subscriber on one worker. The bridge hands back messages
//! from other nodes through [`Publisher::publish_local`], which delivers to this node's
//! subscribers only (never back to the bridge).
//!
//! Every call is made on a hot or latency-critical path (a worker's loop turn): an implementation
//! must not block, take a lock that a slow thread may hold, or do I/O; it queues and returns.

use std::sync::Arc;

use super::Publisher;
use crate::prepared::PreparedMessage;

/// The other side of a server's topics: where publishes go beyond this process and where
/// messages from elsewhere come in: the hook a cluster layer (the `surge-cluster` crate) plugs into a
/// server with [`Server::with_bridge`](crate::server::Server::with_bridge).
///
/// The engine tells the bridge two things, from the thread where they happen (a worker, or
/// whichever thread holds a [`Publisher`]): every publish made on this node, and every topic that
/// gains its first or loses its last subscriber on one worker. The bridge hands back messages
/// from other nodes through [`Publisher::publish_local`], which delivers to this node's
/// subscribers only (never back to the bridge).
///
/// Every call is made on a hot or latency-critical path (a worker's loop turn): an implementation
/// must not block, take a lock that a slow thread may hold, or do I/O; it queues and returns.
pub trait FanoutBridge: Send + Sync + std::fmt::Debug + 'static {
    /// Called once, when the server starts and before any worker runs: the publisher through
    /// which messages from other nodes reach this node's subscribers
    /// ([`Publisher::publish_local`]).
    fn attach(&self, publisher: Publisher);

    /// `msg` was published to `topic` on this node (from a callback, a [`Publisher`] or a
    /// handle); this node's subscribers have it already or will have it through the workers'
    /// mailboxes. Called on the publishing thread, in the order of its publishes.
    fn published(&self, topic: &str, msg: &PreparedMessage);

    /// Worker `worker`'s subscribers of `topic` went from none to some (`subscribed`) or from
    /// some to none. Exact, and in order per worker: summed over the workers, the calls give the
    /// number of workers with a subscriber of `topic`.
    fn interest(&self, worker: usize, topic: &Arc<str>, subscribed: bool);
}
