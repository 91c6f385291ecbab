//! The worker's mailbox drain: commands from other threads and other workers, in the order each
//! poster sent them: sends, closes, subscriptions and publishes (run by the context, fanout.rs),
//! deferred-upgrade decisions (upgrade.rs) and the application's own commands
//! ([`Handler::on_command`]), which call the handler.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::fanout::MAX_COMMANDS_PER_TURN;
use super::*;
use crate::server::mailbox::Command as Posted;
use crate::server::{Command, HandleError};

impl<H: Handler> Worker<H> {
    /// Runs the commands other threads posted (on the waker's event), at most
    /// `MAX_COMMANDS_PER_TURN` a turn (the rest wake the worker again) so that a flood of them
    /// cannot starve I/O.
    pub(super) fn drain_mailbox(&mut self) {
        let shared = Arc::clone(self.ctx.shared_state());
        let mailbox = &shared.mailboxes[self.ctx.index];
        mailbox.disarm();
        for _ in 0..MAX_COMMANDS_PER_TURN {
            let Some(cmd) = mailbox.pop() else {
                return;
            };
            self.ctx.metrics.mailbox_command();
            match cmd {
                Posted::Upgrade { id, decision } => self.decided(id, decision),
                Posted::App(cmd) => self.handler.on_command(&mut self.ctx, cmd),
                other => self.ctx.run_command(other),
            }
        }
        if !mailbox.is_empty() {
            let waker = &shared.wakers[self.ctx.index];
            mailbox.rearm(|| {
                let _ = waker.wake();
            });
        }
    }
}

impl<D> WorkerCtx<D> {
    /// Posts an application command to worker `worker` (this one included), for its handler's
    /// [`on_command`](crate::Handler::on_command): delivered in the order this worker posted, in
    /// order with its handles' sends, at that worker's next mailbox drain (never inside this
    /// callback, even for this worker). `Err(Stopped)` once the server is shutting down.
    ///
    /// Panics if `worker` is not below [`worker_count`](Self::worker_count).
    pub fn post<T: std::any::Any + Send>(&self, worker: usize, cmd: T) -> Result<(), HandleError> {
        post(self.shared_state(), worker, Command::new(cmd))
    }

    /// How many workers the server runs (the bound of [`post`](Self::post)'s index).
    pub fn worker_count(&self) -> usize {
        self.shared_state().mailboxes.len()
    }

    /// The worker that is home to `key` (a room's name, a match id): the same for every worker
    /// and thread of this server, spread evenly. Post a room's commands there and keep its state
    /// only there.
    pub fn home_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        home_of(self.worker_count(), key)
    }
}

/// A key's home among `workers` workers: a fixed-key SipHash, the same on every thread.
pub(crate) fn home_of<K: Hash + ?Sized>(workers: usize, key: &K) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

/// Posts `cmd` to `worker`'s mailbox (see [`WorkerCtx::post`]).
pub(crate) fn post(
    shared: &crate::server::Shared,
    worker: usize,
    cmd: Command,
) -> Result<(), HandleError> {
    let count = shared.mailboxes.len();
    assert!(worker < count, "post to worker {worker} of {count}");
    if shared.stopped() {
        return Err(HandleError::Stopped);
    }
    shared.post(worker, Posted::App(cmd));
    Ok(())
}
