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

/// SIGINT and SIGTERM, blocked in the thread that called [`ShutdownSignals::block`] (and in the
/// threads it starts afterwards, which inherit its signal mask), waiting to be taken with
/// [`wait`](Self::wait) or [`on_signal`](Self::on_signal).
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
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            // Fails only for an invalid `how`, which SIG_BLOCK is not.
            assert_eq!(rc, 0, "pthread_sigmask");
            set
        };
        ShutdownSignals { set }
    }

    /// Blocks until SIGINT or SIGTERM arrives (and takes it); the signal's number.
    pub fn wait(&self) -> i32 {
        loop {
            let mut sig = 0;
            // SAFETY: `self.set` is an initialised signal set and `sig` a valid place for the
            // result.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            // sigwait fails only for a set with an invalid signal (not ours); retry regardless
            // rather than report a signal that never came.
            if rc == 0 {
                return sig;
            }
        }
    }

    /// Starts a thread that waits for SIGINT or SIGTERM, then runs `f` (typically
    /// `ShutdownTrigger::shutdown`). A second signal while the shutdown is under way ends the
    /// process at once (exit status 128 + the signal's number), the usual force-quit of a second
    /// Ctrl-C. The thread is detached: it lives until the process ends.
    pub fn on_signal<F: FnOnce() + Send + 'static>(self, f: F) {
        std::thread::spawn(move || {
            self.wait();
            f();
            let second = self.wait();
            eprintln!("second signal {second}: exiting now");
            std::process::exit(128 + second);
        });
    }
}

impl fmt::Debug for ShutdownSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShutdownSignals(SIGINT, SIGTERM)")
    }
}
