//! Deferred upgrades: [`PendingUpgrade`], the handle an application gets from
//! [`Upgrade::defer`](crate::Upgrade::defer) and decides with later, from any thread.
//!
//! The decision travels to the connection's worker through its mailbox, as a [`ConnHandle`]'s
//! commands do; the worker then answers (101 and `on_open`, or the rejection) exactly as if
//! `on_upgrade` had returned it. One atomic shared by the handle and the worker says who got there
//! first: the application's decision, or the end of the connection (the client left, the handshake
//! timeout, shutdown). A late decision returns an error and changes nothing.
//!
//! [`ConnHandle`]: crate::ConnHandle

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::mailbox::Command;
use super::registry::ConnId;
use super::{HandleError, Shared};
use crate::handler::Accept;
use crate::handshake::Rejection;

/// Waiting for the application's decision.
const PENDING: u8 = 0;
/// Decided (accepted, rejected, or the handle dropped): the decision is in the mailbox.
const DECIDED: u8 = 1;
/// The connection ended before a decision (client gone, timeout, shutdown).
const GONE: u8 = 2;

/// What the application decided, on its way to the worker.
pub(crate) enum Decision {
    /// An [`Accept<D>`] of the handler's `Data` type (checked by the worker).
    Accept(Box<dyn Any + Send>),
    Reject(Rejection),
    /// The [`PendingUpgrade`] was dropped without a decision.
    Dropped,
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Accept(_) => f.write_str("Accept(..)"),
            Decision::Reject(r) => write!(f, "Reject({})", r.status),
            Decision::Dropped => f.write_str("Dropped"),
        }
    }
}

/// The worker's side of one deferred upgrade: marks the race lost for a late decision.
#[derive(Debug)]
pub(crate) struct PendingState(Arc<AtomicU8>);

impl PendingState {
    /// The connection ended: a decision not yet taken fails from now on.
    pub(crate) fn gone(&self) {
        let _ = self
            .0
            .compare_exchange(PENDING, GONE, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// An upgrade request whose answer the application gives later, from any thread: [`accept`] it
/// (the 101 is sent and [`Handler::on_open`] runs on the connection's worker, as for an immediate
/// [`Upgrade::Accept`]) or [`reject`] it with an HTTP response. `Send` and `Sync` when `D` is.
///
/// Meanwhile the connection is held by its worker: the handshake timeout
/// ([`ServerConfig::handshake_timeout`], counted from the connection's accept) still applies, bytes
/// the client sends early are held up to [`ServerConfig::max_handshake_size`] (beyond, the
/// connection is closed), and a client that leaves frees everything at once. A decision that comes
/// after the connection ended (the client left, the timeout, shutdown) returns an error.
///
/// Dropping the handle without a decision rejects the upgrade with 500 and logs a line.
///
/// [`accept`]: PendingUpgrade::accept
/// [`reject`]: PendingUpgrade::reject
/// [`Handler::on_open`]: crate::Handler::on_open
/// [`Upgrade::Accept`]: crate::Upgrade::Accept
/// [`ServerConfig::handshake_timeout`]: crate::ServerConfig::handshake_timeout
/// [`ServerConfig::max_handshake_size`]: crate::ServerConfig::max_handshake_size
pub struct PendingUpgrade<D> {
    shared: Arc<Shared>,
    worker: u32,
    id: ConnId,
    state: Arc<AtomicU8>,
    _data: std::marker::PhantomData<fn(D)>,
}

impl<D> std::fmt::Debug for PendingUpgrade<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingUpgrade")
            .field("worker", &self.worker)
            .field("id", &self.id)
            .field("pending", &self.is_pending())
            .finish()
    }
}

impl<D> PendingUpgrade<D> {
    /// A handle and the worker's side of the same pending upgrade.
    pub(crate) fn new(shared: Arc<Shared>, worker: usize, id: ConnId) -> (Self, PendingState) {
        let state = Arc::new(AtomicU8::new(PENDING));
        let handle = PendingUpgrade {
            shared,
            worker: worker as u32,
            id,
            state: Arc::clone(&state),
            _data: std::marker::PhantomData,
        };
        (handle, PendingState(state))
    }

    /// The connection's id within its worker (the id its [`Conn`](crate::Conn) will have).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The index of the connection's worker.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }

    /// Whether the upgrade still waits for a decision (the connection may end any moment after).
    pub fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == PENDING && !self.shared.stopped()
    }

    /// Rejects the upgrade: the response is written and the connection closed.
    pub fn reject(self, rejection: Rejection) -> Result<(), HandleError> {
        self.decide(Decision::Reject(rejection))
    }

    /// Takes the decision (once), then posts it to the worker.
    fn decide(&self, decision: Decision) -> Result<(), HandleError> {
        // Lost to the connection's end (GONE); DECIDED cannot be seen here: a decision consumes
        // the handle, and drop decides only while PENDING.
        self.state
            .compare_exchange(PENDING, DECIDED, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| HandleError::Closed)?;
        if self.shared.stopped() {
            return Err(HandleError::Stopped);
        }
        self.shared.post(
            self.worker as usize,
            Command::Upgrade {
                id: self.id,
                decision,
            },
        );
        Ok(())
    }
}

impl<D: Send + 'static> PendingUpgrade<D> {
    /// Accepts the upgrade with this user data (subprotocol, headers): the 101 is sent and
    /// `on_open` runs on the connection's worker.
    ///
    /// `Ok` means the decision reached the worker's mailbox before the connection ended; the
    /// connection may still end before the worker runs it (the client leaving at that moment),
    /// and then `data` is dropped on the worker without `on_open`. `Err(Closed)`: the connection
    /// had ended (client gone, handshake timeout); `Err(Stopped)`: the server is shutting down.
    pub fn accept(self, accept: Accept<D>) -> Result<(), HandleError> {
        self.decide(Decision::Accept(Box::new(accept)))
    }
}

impl<D> Drop for PendingUpgrade<D> {
    fn drop(&mut self) {
        if self.state.load(Ordering::Acquire) == PENDING {
            let _ = self.decide(Decision::Dropped);
        }
    }
}
