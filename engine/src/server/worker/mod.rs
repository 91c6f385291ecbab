//! One worker: an event loop on its own thread with its own listeners, connections, buffer pools
//! and timer wheel. Nothing here is shared with other workers.
//!
//! A loop turn: poll (after an optional busy-poll spin) -> for each event, accept or read (bytes go
//! through the handshake parser or the protocol core, and the handler is called per event; on epoll
//! the connection's own replies are sent right after its input) -> fire due timers -> flush every
//! connection that still has something to send, one `writev` (or `sendmsg`) each -> every
//! `buffer_trim_interval`, give back the buffers the last interval did not need.
//!
//! Connection stages: `Handshake` (request bytes accumulate in a pooled buffer) -> `Open` (the
//! protocol core drives the close handshake) -> `Draining` (our last bytes are flushed, then
//! `shutdown(Write)` sends FIN, and the socket is read and discarded until the peer's EOF or the
//! close timeout). Closing a socket with unread data would make Linux send RST, and the peer could
//! lose our close frame; draining avoids that.

use std::io::{self};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;

use super::config::ServerConfig;
use super::registry::ConnId;
use super::Shared;
use crate::buf::WriteQueue;
use crate::driver::{AcceptErrors, Driver, IoEvent, Socket, Token, Written, ACCEPT_RETRY};
use crate::handler::Handler;
use crate::proto::CloseCode;

pub(crate) mod dial;
use dial::{ClientState, ConnectError, Dial};
mod compression;
use compression::Compression;
mod budget;
mod protocols;
use protocols::Protocols;

/// Reads per readable connection per loop turn before others get their turn.
const MAX_READS_PER_TURN: usize = 16;

pub(crate) mod commands;
mod completions;
mod conn;
mod ctx;
mod fanout;
mod flush;
#[cfg(test)]
mod harness;
mod input;
mod limits;
mod metrics;
mod proxy;
mod send;
mod slot;
mod timers;
mod tls;
mod upgrade;
pub use conn::{Conn, MessageWriter};
pub(crate) use ctx::TimerEntry;
pub use ctx::{Timer, TimerId, WorkerCtx};
use slot::*;

/// The event loop of one worker thread.
pub(crate) struct Worker<H: Handler> {
    ctx: WorkerCtx<H::Data>,
    handler: H,
    listeners: Vec<TcpListener>,
    read_buf: Vec<u8>,
    events: Vec<IoEvent>,
    shared: Arc<Shared>,
    /// Connections that still had input when their read turn ended.
    pending_reads: Vec<ConnId>,
    expired: Vec<(u64, TimerEntry)>,
    stop_deadline: Option<Instant>,
    /// epoll: an accept failed (out of descriptors): when to try the listeners again. The
    /// edge-triggered listener reports nothing more until a new connection arrives, however long
    /// the queued ones wait.
    accept_retry: Option<Instant>,
    accept_errors: AcceptErrors,
    /// io_uring: connections whose receive ended with `ENOBUFS` while the buffer ring was at its
    /// limit; their bytes wait in the socket and a few are re-armed each turn (`rearm_starved`).
    starved: std::collections::VecDeque<ConnId>,
    /// When the next buffer trim is due (`ServerConfig::buffer_trim_interval`); `None` while the
    /// worker holds nothing a trim could give back.
    trim_at: Option<Instant>,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(
        index: usize,
        cfg: Arc<ServerConfig>,
        driver: Driver,
        listeners: Vec<TcpListener>,
        handler: H,
        shared: Arc<Shared>,
    ) -> Self {
        Worker {
            read_buf: vec![0; cfg.read_buffer_size.max(4096)],
            ctx: WorkerCtx::new(index, cfg, Arc::clone(&shared), driver),
            handler,
            listeners,
            events: Vec::with_capacity(1024),
            shared,
            pending_reads: Vec::new(),
            expired: Vec::new(),
            stop_deadline: None,
            accept_retry: None,
            accept_errors: AcceptErrors::default(),
            starved: std::collections::VecDeque::new(),
            trim_at: None,
        }
    }

    pub(crate) fn run(mut self) -> io::Result<()> {
        self.start()?;
        while self.turn(Instant::now)? {}
        Ok(())
    }

    /// Registers the listeners and calls `on_start`.
    fn start(&mut self) -> io::Result<()> {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            self.ctx.driver.register_listener(l, i)?;
        }
        self.handler.on_start(&mut self.ctx);
        Ok(())
    }

    /// One loop turn: wait for events (until the next timer at most), handle them, fire due timers,
    /// flush. `clock` reads the time (the worker harness's is fake). Returns `false` once the worker
    /// has shut down.
    fn turn(&mut self, clock: impl Fn() -> Instant) -> io::Result<bool> {
        let now = clock();
        let mut timeout = if self.pending_reads.is_empty() {
            self.ctx.wheel.next_timeout(now)
        } else {
            Some(Duration::ZERO)
        };
        if let Some(deadline) = self.stop_deadline {
            let left = deadline.saturating_duration_since(now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        for at in [self.accept_retry, self.trim_at].into_iter().flatten() {
            let left = at.saturating_duration_since(now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        self.rearm_starved();
        self.register_dials();
        self.poll(timeout)?;
        self.ctx.now = clock();

        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            self.dispatch(ev);
        }
        self.events = events;
        if self.accept_retry.is_some_and(|at| self.ctx.now >= at) {
            self.accept_retry = None;
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }

        for id in std::mem::take(&mut self.pending_reads) {
            // Read until WouldBlock: an EOF seen with the earlier edge has no edge of its own.
            self.on_readable(id, true);
        }
        self.fire_timers();
        self.flush_dirty();
        self.ctx.store_stats();
        self.ctx.publish_metrics(&clock);
        self.trim_buffers();

        if let Some(deadline) = self.stop_deadline {
            if self.ctx.conns.len() == 0 {
                return Ok(false);
            }
            if self.ctx.now >= deadline {
                for id in self.ctx.conns.ids().collect::<Vec<_>>() {
                    self.close_callback(id, CloseCode::ABNORMAL, "", false);
                    self.ctx.remove(id);
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits for events, spinning first when busy-poll is configured.
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let (Some(spin), false) = (self.ctx.cfg.busy_poll, timeout == Some(Duration::ZERO)) {
            let start = Instant::now();
            let until = start + timeout.map_or(spin, |t| t.min(spin));
            loop {
                self.ctx
                    .driver
                    .poll(&mut self.events, Some(Duration::ZERO))?;
                if !self.events.is_empty() {
                    return Ok(());
                }
                let now = Instant::now();
                if now >= until {
                    let spent = now - start;
                    let rest = timeout.map(|t| t.saturating_sub(spent));
                    return self.ctx.driver.poll(&mut self.events, rest);
                }
                std::hint::spin_loop();
            }
        }
        self.ctx.driver.poll(&mut self.events, timeout)
    }
    fn dispatch(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Ready {
                token,
                readable,
                writable,
                hup,
            } => self.dispatch_ready(token, readable, writable, hup),
            IoEvent::Wake => self.dispatch_ready(Token::Waker, true, false, false),
            other => self.dispatch_completion(other),
        }
    }
    fn dispatch_ready(&mut self, token: Token, readable: bool, writable: bool, hup: bool) {
        let id = match token {
            Token::Conn(id) => ConnId(id),
            Token::Waker => {
                self.drain_mailbox();
                if self.shared.stop.load(Ordering::Acquire) && self.stop_deadline.is_none() {
                    self.begin_shutdown();
                }
                return;
            }
            Token::Listener(i) => {
                if i < self.listeners.len() {
                    self.accept(i);
                }
                return;
            }
        };
        if !self.dial_event(id) {
            return;
        }
        if readable {
            self.on_readable(id, hup);
        }
        if writable && self.ctx.conns.get(id).is_some_and(|c| !c.queue.is_empty()) {
            self.ctx.mark_dirty(id);
        }
    }

    fn accept(&mut self, i: usize) {
        loop {
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            let (stream, addr) = match listener.accept() {
                Ok(found) => found,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or this connection was reset while queued: the next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                // Out of descriptors or memory (the connections stay queued): no new edge comes
                // for them, so try again after a pause, as the io_uring driver does.
                Err(e) => {
                    self.accept_errors.log(&e);
                    self.accept_retry = Some(self.ctx.now + ACCEPT_RETRY);
                    return;
                }
            };
            self.admit(Socket::Fd(stream), i, Some(addr));
        }
    }

    /// Takes an accepted connection in: registers it and arms its handshake deadline.
    /// (`TCP_NODELAY` comes from the listener.) `peer`: the address `accept(2)` gave, kept for
    /// the handshake (the per-client limits, `Request::peer`) instead of a `getpeername` each.
    fn admit(&mut self, socket: Socket, listener: usize, peer: Option<std::net::SocketAddr>) {
        self.ctx.metrics.accepted();
        {
            if self.ctx.conns.len() >= self.ctx.cfg.max_connections_per_worker {
                self.ctx.driver.close(socket); // closed at once
                return;
            }
            let id = self.ctx.conns.insert(Connection {
                socket,
                timer: 0,
                dropped: 0,
                stall: 0,
                flags: Flags::default(),
                subprotocol: 0,
                peer: PackedPeer::default(),
                queue: WriteQueue::new(),
                stage: Stage::Handshake(Handshake {
                    proxy: crate::server::proxy::listener_mode(&self.ctx.cfg, listener),
                    peer,
                    ..Handshake::default()
                }),
                data: None,
                deflate: None,
            });
            let c = self.ctx.conns.get_mut(id).expect("just inserted");
            // Linked ahead of the receive registered next.
            if self.ctx.driver.query_peer(&c.socket, listener, id.0) {
                if let Stage::Handshake(hs) = &mut c.stage {
                    hs.peer_pending = true;
                }
            }
            if self.ctx.driver.register_conn(&mut c.socket, id.0).is_err() {
                self.ctx.remove(id);
                return;
            }
            // Listeners past `bind` are the TLS ones (`tls_bind`).
            if listener >= self.ctx.cfg.bind.len() && !self.tls_admit(id) {
                return;
            }
            let deadline = self.ctx.now + self.ctx.cfg.handshake_timeout;
            self.ctx.arm(id, Some(deadline));
            self.count_client(id); // per-client limits (limits.rs)
        }
    }
    fn begin_shutdown(&mut self) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let _ = self.ctx.driver.deregister_listener(l, i);
        }
        self.listeners.clear();
        self.stop_deadline = Some(self.ctx.now + self.ctx.cfg.shutdown_timeout);
        for id in self.ctx.conns.ids().collect::<Vec<_>>() {
            let stage_is_handshake = matches!(
                self.ctx.conns.get(id).map(|c| &c.stage),
                Some(Stage::Handshake(_) | Stage::Deferred(_))
            );
            if stage_is_handshake {
                self.ctx.remove(id);
            } else if self.is_dialing(id) {
                self.dial_failed(id, ConnectError::Shutdown);
            } else {
                let _ = self
                    .ctx
                    .start_close(id, CloseCode::GOING_AWAY, "server shutting down");
            }
        }
    }
}

impl<H: Handler> Drop for Worker<H> {
    /// The kernel may still be reading write queues through in-flight io_uring sends (at the
    /// shutdown deadline, after a poll error, during an unwind): those are cancelled and reaped
    /// before the fields drop. A queue whose write never completes leaks its chunks when dropped
    /// (`buf::write_queue`), and the driver leaks what its own operations name.
    fn drop(&mut self) {
        self.ctx.driver.quiesce();
    }
}
