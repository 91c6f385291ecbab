//! The application's own messages between workers: [`Command`], posted with
//! [`WorkerCtx::post`](crate::WorkerCtx::post) (from a callback) or
//! [`Publisher::post`](crate::Publisher::post) / [`ServerHandle::post`](crate::ServerHandle::post)
//! (from any thread), delivered to [`Handler::on_command`](crate::Handler::on_command) on the
//! target worker, in the order each thread posted them, through the worker's mailbox (the same
//! lock-free queue and wake-up as a `ConnHandle`'s sends, in order with them).
//!
//! This is how state that spans workers lives without locks: a room (a match, a document) has a
//! *home* worker (e.g. [`WorkerCtx::home_of`](crate::WorkerCtx::home_of) its name), which alone
//! owns its state; players connected to other workers post their inputs there, and the home
//! answers them through [`ConnHandle`](crate::ConnHandle)s or a topic.

use std::any::Any;

/// An application value on its way to a worker's [`Handler::on_command`](crate::Handler::on_command):
/// any `Send + 'static` type, boxed once when posted; the handler takes it back by type with
/// [`downcast`](Command::downcast), so one worker can receive several command types (inputs,
/// joins, ticks) without an enum of them all.
pub struct Command(Box<dyn Any + Send>);

impl Command {
    /// Wraps a value.
    pub fn new<T: Any + Send>(value: T) -> Command {
        Command(Box::new(value))
    }

    /// Whether the value is a `T`.
    pub fn is<T: Any>(&self) -> bool {
        self.0.is::<T>()
    }

    /// The value, if it is a `T`; the command back otherwise (to try another type).
    pub fn downcast<T: Any>(self) -> Result<T, Command> {
        self.0.downcast::<T>().map(|b| *b).map_err(Command)
    }

    /// A reference to the value, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command(..)")
    }
}
