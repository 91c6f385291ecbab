//! The worker's state as the application sees it ([`WorkerCtx`]): connections, pools, timers.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::buf::ChunkPool;

use crate::handshake::HandshakeConfig;
use crate::proto;
use crate::server::config::ServerConfig;
use crate::server::registry::{ConnId, Registry};
use crate::server::timer::TimerWheel;
use crate::server::Shared;

/// What a wheel entry is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimerEntry {
    Conn(ConnId),
    /// The connection's write-stall check (`STALL_ARMED`).
    Stall(ConnId),
    App(TimerId),
}

/// An application timer: when it is due next, its period, and the value handed back.
pub(super) struct AppTimer {
    pub(super) due: Instant,
    pub(super) period: Option<Duration>,
    /// `None` while the handler holds it (in `on_timer`).
    pub(super) value: Option<Box<dyn Any>>,
}

/// A timer set with [`WorkerCtx::set_timeout`] or [`WorkerCtx::set_interval`]: the handle that
/// cancels it ([`WorkerCtx::cancel_timer`]) and tells it apart in [`Handler::on_timer`]
/// ([`Timer::id`]). Unique on its worker for the worker's life (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

/// A due timer, as [`Handler::on_timer`] gets it: its [`TimerId`] and the value it was set with,
/// typed back with [`Timer::get`] (the value of an interval stays with the timer from one tick
/// to the next, so a tick may update it).
///
/// ```
/// use std::time::Duration;
/// use surge::{Handler, Timer, WorkerCtx};
///
/// /// What a timer is for: the application's own type.
/// enum Due {
///     Tick { room: u32, frame: u64 },
///     Kick(surge::ConnId),
/// }
///
/// struct Game;
/// # impl Game { fn step(&mut self, _room: u32, _frame: u64) {} }
/// impl Handler for Game {
///     type Data = ();
/// #   fn on_upgrade(&mut self, _r: &surge::Request) -> surge::Upgrade<()> { surge::Upgrade::Accept(surge::Accept::new(())) }
/// #   fn on_message(&mut self, _c: &mut surge::Conn<'_, ()>, _m: surge::Message<'_>) {}
///     fn on_start(&mut self, worker: &mut WorkerCtx<()>) {
///         worker.set_interval(Duration::from_millis(33), Due::Tick { room: 7, frame: 0 });
///     }
///     fn on_timer(&mut self, worker: &mut WorkerCtx<()>, mut timer: Timer<'_>) {
///         match timer.get::<Due>() {
///             Some(Due::Tick { room, frame }) => {
///                 *frame += 1;
///                 let (room, frame) = (*room, *frame);
///                 self.step(room, frame);
///             }
///             Some(Due::Kick(id)) => {
///                 if let Some(mut conn) = worker.conn(*id) {
///                     conn.close(surge::CloseCode::POLICY, "idle");
///                 }
///             }
///             None => {} // a timer of another type
///         }
///     }
/// }
/// ```
pub struct Timer<'a> {
    id: TimerId,
    interval: bool,
    value: &'a mut Box<dyn Any>,
}

impl Timer<'_> {
    /// The handle [`WorkerCtx::set_timeout`] or [`WorkerCtx::set_interval`] returned.
    pub fn id(&self) -> TimerId {
        self.id
    }

    /// Whether it is an interval (it fires again unless cancelled).
    pub fn is_interval(&self) -> bool {
        self.interval
    }

    /// The value the timer was set with, if it is a `T`.
    pub fn get<T: 'static>(&mut self) -> Option<&mut T> {
        self.value.downcast_mut::<T>()
    }

    /// Whether the value is a `T`.
    pub fn is<T: 'static>(&self) -> bool {
        self.value.is::<T>()
    }
}

impl std::fmt::Debug for Timer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("id", &self.id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A worker's state as the application sees it in callbacks: its connections, its timers.
///
/// Reached through [`Conn::worker`] or given to [`Handler::on_timer`].
pub struct WorkerCtx<D> {
    pub(super) index: usize,
    pub(super) conns: Registry<Connection<D>>,
    pub(super) chunks: ChunkPool,
    pub(super) assembly: ChunkPool,
    pub(super) wheel: TimerWheel<TimerEntry>,
    pub(super) dirty: Vec<ConnId>,
    pub(super) now: Instant,
    pub(super) cfg: Arc<ServerConfig>,
    pub(super) hs_cfg: HandshakeConfig,
    /// Subprotocols of live connections (see `protocols.rs`).
    pub(super) protocols: Protocols,
    pub(super) app_timers: HashMap<TimerId, AppTimer>,
    pub(super) timer_seq: u64,
    /// Open WebSocket connections (those with data: from `on_open` to `on_close`).
    pub(super) open: usize,
    pub(super) dropped: u64,
    /// Topics, handles and the mailbox (fanout.rs).
    pub(super) fanout: fanout::Fanout,
    /// Outgoing connections: pending upgrades, the client-role settings.
    pub(super) client: ClientState<D>,
    /// permessage-deflate: the worker's pooled compressors and buffers.
    pub(super) compression: Compression,
    /// Bytes held by messages in progress, against `max_assembly_per_worker` (budget.rs).
    pub(super) budget: budget::AssemblyBudget,
    /// io_uring direct descriptors: IPv6 peer addresses of upgraded connections (an IPv4 one is
    /// packed in the connection).
    pub(super) peers6: HashMap<ConnId, SocketAddr>,
    /// The protocol settings the server-role reader gets: `cfg.proto` without automatic pongs,
    /// which the worker sends itself, within the backpressure limit (`send_pong`).
    pub(super) rx_proto: proto::Config,
    /// Pongs waiting for a write queue over the backpressure limit to drain: only the latest per
    /// connection (RFC 6455 5.5.3 allows answering only the most recent ping).
    pub(super) pending_pongs: HashMap<ConnId, Vec<u8>>,
    /// Per-client limits and the PROXY protocol's log lines (limits.rs, proxy.rs).
    pub(super) admission: limits::Admission,
    /// Rate-limited log lines about connections closed for writes that stall.
    pub(super) stall_log: crate::ratelog::RateLog,
    /// Log lines about deferred upgrades (dropped undecided, overflowing clients).
    pub(super) deferred_log: crate::ratelog::RateLog,
    /// TLS connections' state (`tls.rs`).
    pub(super) tls: tls::TlsTable,
    /// The kernel side: sockets, and with io_uring the operations in flight and their buffers.
    pub(super) driver: Driver,
    /// This worker's counters (`server::metrics`; counted in place, read by scrapes).
    pub(super) metrics: Arc<crossbeam_utils::CachePadded<crate::server::metrics::WorkerMetrics>>,
}

impl<D> std::fmt::Debug for WorkerCtx<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCtx")
            .field("index", &self.index)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<D> WorkerCtx<D> {
    pub(super) fn new(
        index: usize,
        cfg: Arc<ServerConfig>,
        shared: Arc<Shared>,
        driver: Driver,
    ) -> Self {
        let now = Instant::now();
        let cfg_proto = cfg.proto.clone();
        let mut rx_proto = cfg.proto.clone();
        rx_proto.auto_pong = false;
        WorkerCtx {
            index,
            metrics: Arc::clone(&shared.metrics[index]),
            conns: Registry::new(),
            chunks: ChunkPool::new(cfg.write_chunk_size, cfg.pool_max_cached),
            assembly: ChunkPool::new(cfg.write_chunk_size, cfg.pool_max_cached),
            wheel: TimerWheel::new(now),
            dirty: Vec::new(),
            now,
            hs_cfg: cfg.handshake(),
            protocols: Protocols::new(&cfg.subprotocols),
            compression: Compression::new(&cfg),
            budget: budget::AssemblyBudget::default(),
            cfg,
            app_timers: HashMap::new(),
            timer_seq: 0,
            open: 0,
            dropped: 0,
            admission: limits::Admission::new(&shared),
            fanout: fanout::Fanout::new(shared),
            client: ClientState::new(&cfg_proto),
            peers6: HashMap::new(),
            rx_proto,
            pending_pongs: HashMap::new(),
            stall_log: crate::ratelog::RateLog::default(),
            deferred_log: crate::ratelog::RateLog::default(),
            tls: tls::TlsTable::default(),
            driver,
        }
    }

    /// Bytes of buffers this worker keeps for reuse: the free chunks of its pools and, on
    /// io_uring, its provided receive buffers whose pages may be resident and the boxes of
    /// completed sends. Follows the working set: what an interval of
    /// [`ServerConfig::buffer_trim_interval`] did not need is given back at its end, so it drops
    /// to (nearly) 0 within two intervals after the load stops.
    pub fn buffer_memory(&self) -> usize {
        self.chunks.cached_bytes() + self.assembly.cached_bytes() + self.driver.held_bytes()
    }

    /// This worker's index (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Open WebSocket connections on this worker: from `on_open` to `on_close` (accepted and
    /// dialed ones; not handshakes, plain HTTP requests or closing connections).
    pub fn connection_count(&self) -> usize {
        self.open
    }

    /// Every connection this worker holds: the open WebSocket connections and those in a
    /// handshake, a plain HTTP exchange, a deferred decision or closing.
    pub fn socket_count(&self) -> usize {
        self.conns.len()
    }

    /// Messages dropped under backpressure on this worker so far.
    pub fn dropped_count(&self) -> u64 {
        self.dropped
    }

    /// The time cached at the start of this loop turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// An open connection of this worker (`None` once `on_close` has been called for it).
    pub fn conn(&mut self, id: ConnId) -> Option<Conn<'_, D>> {
        let c = self.conns.get(id)?;
        c.data.as_ref()?;
        Some(Conn { ctx: self, id })
    }

    /// The ids of this worker's open connections (collected: the caller may then send to each).
    pub fn conn_ids(&self) -> Vec<ConnId> {
        self.conns
            .ids()
            .filter(|&id| self.conns.get(id).is_some_and(|c| c.data.is_some()))
            .collect()
    }

    /// Calls `f` on every open connection.
    pub fn for_each_conn(&mut self, mut f: impl FnMut(&mut Conn<'_, D>)) {
        for id in self.conn_ids() {
            if let Some(mut c) = self.conn(id) {
                f(&mut c);
            }
        }
    }

    /// Calls [`Handler::on_timer`] once, after `after`, with `value` (any type: the handler
    /// gets it back with [`Timer::get`]). Returns the handle that cancels it.
    ///
    /// Timers are the worker's: they fire on its thread, between I/O, at a resolution of 1 ms
    /// and never early.
    pub fn set_timeout<T: 'static>(&mut self, after: Duration, value: T) -> TimerId {
        self.arm_app(after, Box::new(value), None)
    }

    /// Calls [`Handler::on_timer`] every `every` (a game tick: at least 1 ms), without drift,
    /// with `value`, which stays with the timer from one tick to the next. A worker that fell
    /// behind skips the ticks it missed rather than firing them in a burst. Returns the handle
    /// that cancels it.
    pub fn set_interval<T: 'static>(&mut self, every: Duration, value: T) -> TimerId {
        let every = every.max(crate::server::timer::TICK);
        self.arm_app(every, Box::new(value), Some(every))
    }

    /// Cancels a timer (also from its own `on_timer`); returns whether it was still set. A
    /// timeout that has fired is no longer set.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.app_timers.remove(&id).is_some()
    }

    /// Application timers set and not yet fired or cancelled.
    pub fn timer_count(&self) -> usize {
        self.app_timers.len()
    }

    fn arm_app(
        &mut self,
        after: Duration,
        value: Box<dyn Any>,
        period: Option<Duration>,
    ) -> TimerId {
        self.timer_seq += 1;
        let id = TimerId(self.timer_seq);
        let due = self.now + after;
        self.app_timers.insert(
            id,
            AppTimer {
                due,
                period,
                value: Some(value),
            },
        );
        self.wheel.insert(due, TimerEntry::App(id));
        id
    }

    /// Hands a due timer's value to `f`, then keeps it for the next tick if the timer is an
    /// interval still set, or drops it.
    pub(super) fn with_due_timer(&mut self, id: TimerId, f: impl FnOnce(&mut Self, Timer<'_>)) {
        let Some(t) = self.app_timers.get_mut(&id) else {
            return; // cancelled
        };
        let Some(mut value) = t.value.take() else {
            return;
        };
        let interval = match t.period {
            Some(p) => {
                let mut next = t.due + p;
                if next <= self.now {
                    next = self.now + p; // fell behind: skip the missed ticks
                }
                t.due = next;
                self.wheel.insert(next, TimerEntry::App(id));
                true
            }
            None => {
                self.app_timers.remove(&id);
                false
            }
        };
        f(
            self,
            Timer {
                id,
                interval,
                value: &mut value,
            },
        );
        if interval {
            if let Some(t) = self.app_timers.get_mut(&id) {
                t.value = Some(value);
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            if !c.has(Flag::Dirty) {
                c.set(Flag::Dirty);
                self.dirty.push(id);
            }
        }
    }

    /// Arms the connection's one timer for `at` (`None`: disarm). Entries of earlier arms go stale.
    pub(super) fn arm(&mut self, id: ConnId, at: Option<Instant>) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // The connection keeps its tick's low 32 bits: deadlines are capped at ~24.8 days ahead
        // (a timer that fires early on an open connection is re-armed by its core).
        let at = at.map(|at| at.min(self.now + crate::server::timer::MAX_LOW32_AHEAD));
        let want = at.map_or(0, |at| (self.wheel.tick_of(at) as u32).wrapping_add(1));
        if c.timer == want {
            return;
        }
        if c.timer != 0 {
            // Cancel the old entry now rather than leave it to fire stale: idle connections
            // then hold nothing in the wheel.
            let old = c.timer.wrapping_sub(1);
            let tick = self.wheel.full_tick(old);
            self.wheel
                .cancel(tick, |_, v| matches!(v, TimerEntry::Conn(x) if *x == id));
            c.timer = 0;
        }
        let Some(at) = at else {
            return;
        };
        let tick = self.wheel.insert(at, TimerEntry::Conn(id));
        c.timer = (tick as u32).wrapping_add(1);
    }

    /// Re-arms the connection's timer from its protocol core.
    pub(super) fn sync_timer(&mut self, id: ConnId) {
        let at = match self.conns.get(id).map(|c| &c.stage) {
            Some(Stage::Open(p)) => p.poll_timeout(),
            _ => return,
        };
        self.arm(id, at);
    }

    /// Removes a connection and closes its socket (the kernel drops it from epoll).
    pub(super) fn remove(&mut self, id: ConnId) {
        self.unlink(id);
        self.arm(id, None);
        if !self.pending_pongs.is_empty() {
            self.pending_pongs.remove(&id);
        }
        self.release_client(id);
        if let Some(mut c) = self.conns.remove(id) {
            if c.data.is_some() || c.has(Flag::Lent) {
                self.open -= 1; // dropped without on_close (the worker is going away)
            }
            self.assembly_released(c.assembly_held());
            if c.peer == PackedPeer::V6 {
                self.peers6.remove(&id);
            }
            self.protocols.release(id, c.subprotocol);
            if c.has(Flag::Tls) {
                self.tls.forget(id, &mut self.chunks, self.now, self.index);
            }
            // Before the socket closes: a client that sees EOF finds a late decision refused.
            if let Stage::Deferred(d) = &c.stage {
                d.state.gone();
            }
            // A write in flight keeps its queue in the driver until its completion.
            let queue = std::mem::take(&mut c.queue);
            self.driver
                .close_conn(id.0, c.socket, queue, &mut self.chunks);
            match c.stage {
                Stage::Handshake(hs) => self.chunks.put(hs.held),
                Stage::Open(mut p) => p.recycle(&mut self.assembly),
                Stage::Dial(d) => self
                    .client
                    .forget(id, *d, &mut self.chunks, &mut self.driver),
                Stage::Deferred(d) => self.forget_deferred(*d),
                Stage::Draining => {}
            }
        }
    }

    /// A deferred upgrade's connection ended before the decision: a late decision now fails.
    pub(super) fn forget_deferred(&mut self, d: Deferred) {
        d.state.gone();
        if d.held.capacity() > 0 {
            self.chunks.put(d.held);
        }
    }

    /// Moves a connection to draining (its stage's buffers released, whatever the stage), with
    /// the close timeout as deadline.
    pub(super) fn enter_draining(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        self.budget.release(c.assembly_held());
        match std::mem::replace(&mut c.stage, Stage::Draining) {
            Stage::Open(mut p) => p.recycle(&mut self.assembly),
            Stage::Handshake(hs) => self.chunks.put(hs.held),
            Stage::Dial(d) => self
                .client
                .forget(id, *d, &mut self.chunks, &mut self.driver),
            Stage::Deferred(d) => self.forget_deferred(*d),
            Stage::Draining => {}
        }
        let deadline = self.now + self.cfg.proto.close_timeout;
        self.arm(id, Some(deadline));
        self.mark_dirty(id);
    }
}
