//! Stopping on SIGINT (Ctrl-C) and SIGTERM without a signal handler: the signals are blocked, so
//! that none interrupts a worker, and one thread takes them with `sigwait`.
//!
//! ```no_run
//! # fn serve<H: surge::Handler>(handler: fn(usize) -> H) -> std::io::Result<()> {
//! use surge::signal::ShutdownSignals;
//! use surge::{Server, ServerConfig};
//!
//! // Before the server starts, so that its threads inherit the mask.
//! let signals = ShutdownSignals::block();
//! let handle = Server::new(ServerConfig::default()).start(handler)?;
//! let trigger = handle.trigger();
//! signals.on_signal(move || trigger.shutdown());
//! handle.join()
//! # }
//! ```

use std::fmt;
use std::thread::JoinHandle;

/// SIGINT and SIGTERM, blocked in the thread that called [`ShutdownSignals::block`] (and in the
/// threads it starts afterwards, which inherit its signal mask), waiting to be taken with
/// [`wait`](Self::wait) or [`on_signal`](Self::on_signal).
#[derive(Clone, Copy)]
pub struct ShutdownSignals {
    set: libc::sigset_t,
}

impl ShutdownSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread. Call it before starting any thread that
    /// must not take them (a server's workers): a thread inherits the mask of the one that starts
    /// it.
    pub fn block() -> Self {
        // SAFETY: sigset_t is plain data, and all zeroes is a valid value of it; sigemptyset
        // initialises it, and sigaddset and pthread_sigmask read and write only that set (the old
        // mask is not asked for: a null pointer).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            ShutdownSignals { set }
        }
    }

    /// Blocks until SIGINT or SIGTERM arrives (and takes it); the signal's number.
    pub fn wait(&self) -> i32 {
        let mut sig = 0;
        // SAFETY: `self.set` is an initialised signal set and `sig` a valid place for the result.
        unsafe {
            libc::sigwait(&self.set, &mut sig);
        }
        sig
    }

    /// Starts a thread that waits for SIGINT or SIGTERM, then runs `f` (typically
    /// `ShutdownTrigger::shutdown`).
    pub fn on_signal<F: FnOnce() + Send + 'static>(self, f: F) -> JoinHandle<()> {
        std::thread::spawn(move || {
            self.wait();
            f();
        })
    }
}

impl fmt::Debug for ShutdownSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShutdownSignals(SIGINT, SIGTERM)")
    }
}
