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

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;

use super::config::{Backend, BackpressurePolicy, ServerConfig};
use super::registry::{ConnId, Registry};
use super::timer::TimerWheel;
use super::Shared;
use crate::buf::{ChunkPool, QueueOutput, WriteQueue};
use crate::driver::{AcceptErrors, Driver, IoEvent, Socket, ACCEPT_RETRY};
use crate::handler::{CloseInfo, Handler, SendStatus, Upgrade};
use crate::handshake::{
    check_origin, parse_request, write_accept_response, write_rejection, HandshakeConfig,
    ParseStatus, Rejection,
};
use crate::proto::{self, CloseCode, Event, Message, MessageKind, OpCode, Role, State};

pub(crate) mod dial;
use dial::{ClientState, ConnectError, Dial};
mod compression;
use compression::{Compression, Inflated};
mod budget;
mod protocols;
use protocols::Protocols;

/// Token of the worker's waker.
pub(crate) const WAKER_TOKEN: usize = usize::MAX;
/// Token of listener `i`: counting down from below the waker (connection tokens have the top bit
/// clear).
pub(crate) fn listener_token(i: usize) -> usize {
    usize::MAX - 1 - i
}

/// Tokens with the top bit set are the waker's and the listeners'.
const SPECIAL: usize = 1 << (usize::BITS - 1);

/// Reads per readable connection per loop turn before others get their turn.
const MAX_READS_PER_TURN: usize = 16;

// Connection flags.
/// In the dirty list: flushed at the end of the loop turn.
const DIRTY: u8 = 1;
/// A write-stall check is in the timer wheel (`TimerEntry::Stall`): at most one per connection.
const STALL_ARMED: u8 = 2;
/// Went over the backpressure limit: `on_drain` when it falls back under.
const OVER: u8 = 4;
/// `shutdown(Write)` done.
const FIN_SENT: u8 = 8;
/// The peer's EOF was read.
const PEER_EOF: u8 = 16;
/// io_uring: a send of this connection's queue is in flight (its chunks must stay put).
const SENDING: u8 = 32;
/// Has an entry in the worker's topic table (subscriptions or a handle): unlink it when closing.
const LINKED: u8 = 64;
/// An outgoing connection (client role: our frames are masked); see `dial.rs`.
const CLIENT: u8 = 128;

#[path = "fanout.rs"]
mod fanout;

/// Where a connection stands.
#[derive(Debug)]
enum Stage {
    /// Reading the upgrade request.
    Handshake(Handshake),
    /// Upgraded: the protocol core. While events are delivered its reader is out on the stack
    /// (they borrow it) and its writer stays here, where the connection's sends reach it.
    Open(proto::Conn),
    /// Flushing the last bytes, then FIN, then discarding input until EOF or the deadline.
    Draining,
    /// An outgoing connection: connecting, then reading the upgrade response (see `dial.rs`).
    Dial(Box<Dial>),
}

/// The handshake stage's state (it fits in the stage's size, set by the protocol core).
#[derive(Debug, Default)]
struct Handshake {
    /// Bytes of an incomplete request (pooled buffer; none allocated until needed).
    held: Vec<u8>,
    /// io_uring direct descriptors: the peer's address, asked through the ring at accept.
    peer: Option<SocketAddr>,
    /// That query is in flight: bytes wait in `held` until it completes (the query is linked
    /// ahead of the receive, so this is a safety net, not the common path).
    peer_pending: bool,
}

/// A direct descriptor's peer address kept past the handshake (it has no fd for `getpeername`):
/// an IPv4 address (bytes 0..4) and port (4..6, big-endian), in bytes that the connection's
/// alignment padding had anyway. A connected TCP peer has neither address 0.0.0.0 nor port 0, so
/// all zeros means none, and address 0.0.0.0 with port 1 means IPv6 (in the worker's `peers6`
/// side table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PackedPeer([u8; 6]);

impl PackedPeer {
    const V6: PackedPeer = PackedPeer([0, 0, 0, 0, 0, 1]);

    fn get(self) -> Option<SocketAddr> {
        let p = self.0;
        let port = u16::from_be_bytes([p[4], p[5]]);
        (port != 0 && p[..4] != [0; 4]).then(|| SocketAddr::from(([p[0], p[1], p[2], p[3]], port)))
    }
}

/// One connection: the registry's slot content. Kept small (see the `entry_size` test): no peer
/// address (asked of the kernel when wanted; a direct descriptor's packed in padding), no
/// subprotocol string (an index), no buffers when idle.
#[derive(Debug)]
pub(crate) struct Connection<D> {
    socket: Socket,
    /// The armed timer's tick plus one (0: none); older wheel entries are stale.
    timer: u32,
    /// Messages refused under the `Drop` backpressure policy.
    dropped: u32,
    /// Since when (the wheel's tick, low 32 bits, never 0) the write queue has been waiting with
    /// no byte written; 0 when it is empty. See `ServerConfig::write_stall_timeout`.
    stall: u32,
    flags: u8,
    /// The subprotocol the 101 named: a tag in the worker's `Protocols` (0: none).
    subprotocol: u8,
    /// io_uring direct descriptors: the peer's address after the handshake.
    peer: PackedPeer,
    queue: WriteQueue,
    stage: Stage,
    data: Option<D>,
    /// permessage-deflate, when negotiated (see `compression.rs`).
    deflate: Option<Box<proto::DeflateState>>,
}

impl<D> Connection<D> {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Whether data may be sent: upgraded, and the protocol core's writer says so (no close sent,
    /// received or failed).
    fn can_send(&self) -> bool {
        matches!(&self.stage, Stage::Open(p) if p.writer.can_send())
    }

    /// Whether `len` more bytes would take a non-empty write queue past `limit` (the
    /// backpressure policy's test: a message is never refused on an empty queue). The queue
    /// counts what it costs in memory (`WriteQueue::cost`), not only its bytes.
    fn would_pass(&self, len: usize, limit: usize) -> bool {
        !self.queue.is_empty() && self.queue.cost().saturating_add(len) > limit
    }
}

/// What a wheel entry is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimerEntry {
    Conn(ConnId),
    /// The connection's write-stall check (`STALL_ARMED`).
    Stall(ConnId),
    App {
        id: u64,
        seq: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct AppTimer {
    seq: u64,
    due: Instant,
    period: Option<Duration>,
}

/// A worker's state as the application sees it in callbacks: its connections, its timers.
///
/// Reached through [`Conn::worker`] or given to [`Handler::on_timer`].
pub struct WorkerCtx<D> {
    index: usize,
    conns: Registry<Connection<D>>,
    chunks: ChunkPool,
    assembly: ChunkPool,
    wheel: TimerWheel<TimerEntry>,
    dirty: Vec<ConnId>,
    now: Instant,
    cfg: Arc<ServerConfig>,
    hs_cfg: HandshakeConfig,
    /// Subprotocols of live connections (see `protocols.rs`).
    protocols: Protocols,
    app_timers: HashMap<u64, AppTimer>,
    timer_seq: u64,
    dropped: u64,
    /// The driver is io_uring: removing a connection cancels its receive and keeps the chunks of
    /// an in-flight send alive (both handed to the driver before the next poll).
    uring: bool,
    /// io_uring: removed connections whose receive must be cancelled, then their sockets closed.
    cancels: Vec<(u64, Socket)>,
    /// io_uring: queues of removed connections whose send is in flight.
    orphans: Vec<(u64, WriteQueue)>,
    /// Topics, handles and the mailbox (fanout.rs).
    fanout: fanout::Fanout,
    /// Outgoing connections: pending upgrades, the client-role settings.
    client: ClientState<D>,
    /// permessage-deflate: the worker's pooled compressors and buffers.
    compression: Compression,
    /// Bytes held by messages in progress, against `max_assembly_per_worker` (budget.rs).
    budget: budget::AssemblyBudget,
    /// io_uring direct descriptors: IPv6 peer addresses of upgraded connections (an IPv4 one is
    /// packed in the connection).
    peers6: HashMap<ConnId, SocketAddr>,
    /// The protocol settings the server-role reader gets: `cfg.proto` without automatic pongs,
    /// which the worker sends itself, within the backpressure limit (`send_pong`).
    rx_proto: proto::Config,
    /// Pongs waiting for a write queue over the backpressure limit to drain: only the latest per
    /// connection (RFC 6455 5.5.3 allows answering only the most recent ping).
    pending_pongs: HashMap<ConnId, Vec<u8>>,
    /// Rate-limited log lines about connections closed for writes that stall.
    stall_log: crate::ratelog::RateLog,
    /// io_uring: the driver's share of `buffer_memory` (its receive buffers' pages and kept send
    /// boxes), copied each loop turn.
    driver_held: usize,
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
    fn new(index: usize, cfg: Arc<ServerConfig>, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        let cfg_uring = cfg.backend == Backend::IoUring;
        let cfg_proto = cfg.proto.clone();
        let mut rx_proto = cfg.proto.clone();
        rx_proto.auto_pong = false;
        WorkerCtx {
            index,
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
            dropped: 0,
            uring: cfg_uring,
            cancels: Vec::new(),
            orphans: Vec::new(),
            fanout: fanout::Fanout::new(shared),
            client: ClientState::new(&cfg_proto),
            peers6: HashMap::new(),
            rx_proto,
            pending_pongs: HashMap::new(),
            stall_log: crate::ratelog::RateLog::default(),
            driver_held: 0,
        }
    }

    /// Bytes of buffers this worker keeps for reuse: the free chunks of its pools and, on
    /// io_uring, its provided receive buffers whose pages may be resident and the boxes of
    /// completed sends. Follows the working set: what an interval of
    /// [`ServerConfig::buffer_trim_interval`] did not need is given back at its end, so it drops
    /// to (nearly) 0 within two intervals after the load stops.
    pub fn buffer_memory(&self) -> usize {
        self.chunks.cached_bytes() + self.assembly.cached_bytes() + self.driver_held
    }

    /// This worker's index (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Connections held, handshakes and closing ones included.
    pub fn connection_count(&self) -> usize {
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

    /// Calls [`Handler::on_timer`] with `id` once, after `after`. Replaces a timer with the same id.
    pub fn set_timeout(&mut self, after: Duration, id: u64) {
        self.arm_app(after, id, None);
    }

    /// Calls [`Handler::on_timer`] with `id` every `every` (a game tick), without drift. Replaces a
    /// timer with the same id.
    pub fn set_interval(&mut self, every: Duration, id: u64) {
        self.arm_app(every, id, Some(every.max(super::timer::TICK)));
    }

    /// Cancels the timer `id`; returns whether one was set.
    pub fn cancel_timer(&mut self, id: u64) -> bool {
        self.app_timers.remove(&id).is_some()
    }

    fn arm_app(&mut self, after: Duration, id: u64, period: Option<Duration>) {
        self.timer_seq += 1;
        let due = self.now + after;
        let seq = self.timer_seq;
        self.app_timers.insert(id, AppTimer { seq, due, period });
        self.wheel.insert(due, TimerEntry::App { id, seq });
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            if !c.has(DIRTY) {
                c.flags |= DIRTY;
                self.dirty.push(id);
            }
        }
    }

    /// Arms the connection's one timer for `at` (`None`: disarm). Entries of earlier arms go stale.
    fn arm(&mut self, id: ConnId, at: Option<Instant>) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // The connection keeps its tick's low 32 bits: deadlines are capped at ~24.8 days ahead
        // (a timer that fires early on an open connection is re-armed by its core).
        let at = at.map(|at| at.min(self.now + super::timer::MAX_LOW32_AHEAD));
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
    fn sync_timer(&mut self, id: ConnId) {
        let at = match self.conns.get(id).map(|c| &c.stage) {
            Some(Stage::Open(p)) => p.poll_timeout(),
            _ => return,
        };
        self.arm(id, at);
    }

    /// Starts our close handshake (also while the connection's events are delivered: the core's
    /// writer is in the slot).
    fn start_close(&mut self, id: ConnId, code: CloseCode, reason: &str) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        let Stage::Open(p) = &mut c.stage else {
            return SendStatus::Closed;
        };
        if !p.writer.can_send() {
            return SendStatus::Closed;
        }
        if !code.is_valid_on_wire() {
            return SendStatus::Invalid;
        }
        let mut out = QueueOutput {
            queue: &mut c.queue,
            pool: &mut self.chunks,
        };
        let _ = p
            .writer
            .close(&mut out, Some(code), reason, self.now, &self.cfg.proto);
        self.mark_dirty(id);
        self.sync_timer(id);
        SendStatus::Sent
    }

    /// Queues one data message or control frame, applying the backpressure policy to data.
    fn send_frame(
        &mut self,
        id: ConnId,
        op: OpCode,
        payload: &[u8],
        fin: bool,
        exempt: bool,
    ) -> SendStatus {
        self.send_frame_rsv(id, op, payload, fin, exempt, 0)
    }

    /// [`WorkerCtx::send_frame`] with RSV bits on a whole message's first frame (RSV1: compressed).
    fn send_frame_rsv(
        &mut self,
        id: ConnId,
        op: OpCode,
        payload: &[u8],
        fin: bool,
        exempt: bool,
        rsv: u8,
    ) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        if !c.can_send() {
            return SendStatus::Closed;
        }
        if !exempt && c.would_pass(payload.len(), self.cfg.max_backpressure) {
            return self.refuse_over_limit(id);
        }
        let Stage::Open(p) = &mut c.stage else {
            return SendStatus::Closed;
        };
        let mut out = QueueOutput {
            queue: &mut c.queue,
            pool: &mut self.chunks,
        };
        // The connection's own writer: it masks for a client connection and refuses data once
        // the close handshake has begun.
        let writer = &mut p.writer;
        let result = match op {
            OpCode::Ping => writer.ping(&mut out, payload),
            OpCode::Pong => writer.pong(&mut out, payload),
            OpCode::Text | OpCode::Binary if fin => {
                let kind = if op == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                writer.send_with_rsv(&mut out, kind, payload, &self.cfg.proto, rsv)
            }
            _ => writer.frame(&mut out, op, fin, payload),
        };
        if result.is_err() {
            return SendStatus::Invalid;
        }
        self.queued(id)
    }

    /// The backpressure policy for a message that `id`'s write queue refuses (see
    /// `Connection::would_pass`): marks the connection over the limit, then drops the message
    /// (counted) or starts the close, as the policy says.
    fn refuse_over_limit(&mut self, id: ConnId) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        c.flags |= OVER;
        match self.cfg.backpressure_policy {
            BackpressurePolicy::Drop => {
                c.dropped = c.dropped.saturating_add(1);
                self.dropped += 1;
                SendStatus::Dropped
            }
            BackpressurePolicy::Close(code) => {
                let _ = self.start_close(id, code, "backpressure limit");
                SendStatus::Closed
            }
        }
    }

    /// Queues a pong (the automatic answer to a ping, or the handler's), counted toward the
    /// backpressure limit like data: a peer that sends pings and reads nothing cannot make the
    /// queue grow without bound. Past the limit, under the `Drop` policy, only the latest pong
    /// waits (sent once the queue falls back under: `Backpressure`); under `Close`, the close starts.
    fn send_pong(&mut self, id: ConnId, payload: &[u8]) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        if !c.can_send() {
            return SendStatus::Closed;
        }
        if payload.len() > 125 {
            return SendStatus::Invalid;
        }
        if c.would_pass(payload.len() + 6, self.cfg.max_backpressure) {
            c.flags |= OVER;
            if let BackpressurePolicy::Close(code) = self.cfg.backpressure_policy {
                let _ = self.start_close(id, code, "backpressure limit");
                return SendStatus::Closed;
            }
            let pending = self.pending_pongs.entry(id).or_default();
            pending.clear();
            pending.extend_from_slice(payload);
            return SendStatus::Backpressure;
        }
        self.send_frame(id, OpCode::Pong, payload, true, true)
    }

    /// A connection's write queue fell back under the limit: the pong that waited goes out.
    fn send_pending_pong(&mut self, id: ConnId) {
        if self.pending_pongs.is_empty() {
            return;
        }
        if let Some(p) = self.pending_pongs.remove(&id) {
            let _ = self.send_frame(id, OpCode::Pong, &p, true, true);
        }
    }

    /// Records a flush's outcome for the write-stall check: `wrote` whether any byte left. A
    /// queue that starts waiting (or makes progress) restarts the stall clock; the first wait arms
    /// the connection's one check in the wheel.
    fn note_flush(&mut self, id: ConnId, wrote: bool) {
        let Some(timeout) = self.cfg.write_stall_timeout else {
            return;
        };
        let now = self.wheel.tick_of(self.now) as u32 | 1;
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.queue.is_empty() {
            c.stall = 0;
            return;
        }
        if wrote || c.stall == 0 {
            c.stall = now;
        }
        if !c.has(STALL_ARMED) {
            c.flags |= STALL_ARMED;
            self.wheel.insert(self.now + timeout, TimerEntry::Stall(id));
        }
    }

    /// Ends a send that queued bytes on `id`: marks it for flushing and, when its write queue is
    /// now past the limit, marks it over and applies the `Close` policy (`Drop` only refuses
    /// later messages). `Backpressure` when over the limit, else `Sent`.
    fn queued(&mut self, id: ConnId) -> SendStatus {
        let over = match self.conns.get_mut(id) {
            Some(c) if c.queue.cost() > self.cfg.max_backpressure => {
                c.flags |= OVER;
                true
            }
            _ => false,
        };
        self.mark_dirty(id);
        if over {
            if let BackpressurePolicy::Close(code) = self.cfg.backpressure_policy {
                let _ = self.start_close(id, code, "backpressure limit");
            }
            SendStatus::Backpressure
        } else {
            SendStatus::Sent
        }
    }

    /// Removes a connection and closes its socket (the kernel drops it from epoll).
    fn remove(&mut self, id: ConnId) {
        self.unlink(id);
        self.arm(id, None);
        if !self.pending_pongs.is_empty() {
            self.pending_pongs.remove(&id);
        }
        if let Some(mut c) = self.conns.remove(id) {
            self.assembly_released(c.assembly_held());
            if c.peer == PackedPeer::V6 {
                self.peers6.remove(&id);
            }
            self.protocols.release(id, c.subprotocol);
            if self.uring {
                if c.has(SENDING) {
                    // The kernel may still read these chunks: they live until the completion.
                    self.orphans.push((id.0, std::mem::take(&mut c.queue)));
                }
                self.cancels.push((id.0, c.socket));
            }
            c.queue.release(&mut self.chunks);
            match c.stage {
                Stage::Handshake(hs) => self.chunks.put(hs.held),
                Stage::Open(mut p) => p.recycle(&mut self.assembly),
                Stage::Dial(d) => self.client.forget(id, *d, &mut self.chunks, self.uring),
                _ => {}
            }
        }
    }

    /// Moves a connection whose core is closed to draining, with the close timeout as deadline.
    fn enter_draining(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        self.budget.release(c.assembly_held());
        if let Stage::Open(mut p) = std::mem::replace(&mut c.stage, Stage::Draining) {
            p.recycle(&mut self.assembly);
        }
        let deadline = self.now + self.cfg.proto.close_timeout;
        self.arm(id, Some(deadline));
        self.mark_dirty(id);
    }
}

/// A connection, as handlers see it in callbacks.
pub struct Conn<'a, D> {
    ctx: &'a mut WorkerCtx<D>,
    id: ConnId,
}

impl<D> std::fmt::Debug for Conn<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("id", &self.id).finish()
    }
}

impl<'a, D> Conn<'a, D> {
    fn entry(&self) -> &Connection<D> {
        self.ctx
            .conns
            .get(self.id)
            .expect("a Conn handle names a live connection")
    }

    /// This connection's id within its worker.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> SendStatus {
        self.ctx
            .send_message(self.id, MessageKind::Text, text.as_bytes(), true)
    }

    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> SendStatus {
        self.ctx
            .send_message(self.id, MessageKind::Binary, data, true)
    }

    /// Sends a message of either kind (an echo server passes the received one straight back).
    pub fn send(&mut self, msg: Message<'_>) -> SendStatus {
        match msg {
            Message::Text(t) => self.send_text(t),
            Message::Binary(b) => self.send_binary(b),
        }
    }

    /// A writer for one message sent in pieces: a frame goes out each time its buffer (one write
    /// chunk) fills, and [`MessageWriter::finish`] (or dropping it) ends the message.
    pub fn writer(&mut self, kind: MessageKind) -> MessageWriter<'_, D> {
        let buf = self.ctx.chunks.get();
        MessageWriter {
            ctx: self.ctx,
            id: self.id,
            kind,
            buf,
            first: true,
            done: false,
            status: SendStatus::Sent,
        }
    }

    /// Sends a ping (payload at most 125 bytes). It counts toward the backpressure limit like a
    /// message and is refused (or closes) as the policy says.
    pub fn ping(&mut self, payload: &[u8]) -> SendStatus {
        self.ctx
            .send_frame(self.id, OpCode::Ping, payload, true, false)
    }

    /// Sends a pong (payload at most 125 bytes). It counts toward the backpressure limit: past it,
    /// under the `Drop` policy, only the latest pong waits for the queue to drain (`Backpressure`);
    /// under `Close`, the connection closes.
    pub fn pong(&mut self, payload: &[u8]) -> SendStatus {
        self.ctx.send_pong(self.id, payload)
    }

    /// Starts the close handshake. `on_close` follows when the peer answers, or with 1006 after the
    /// close timeout. No data can be sent afterwards.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> SendStatus {
        self.ctx.start_close(self.id, code, reason)
    }

    /// Bytes queued and not yet written to the socket. (The backpressure limit counts a little
    /// more: what the queue costs in memory, 32 bytes per queued frame reference or chunk besides
    /// the bytes.)
    pub fn buffered_amount(&self) -> usize {
        self.entry().queue.len()
    }

    /// Messages refused on this connection under the `Drop` backpressure policy.
    pub fn dropped_count(&self) -> u32 {
        self.entry().dropped
    }

    /// Whether data can still be sent (open, no close sent).
    pub fn is_open(&self) -> bool {
        self.entry().can_send()
    }

    /// The peer's address: asked of the kernel on an ordinary descriptor (`None` once the socket
    /// is broken); on an io_uring direct descriptor the one asked through the ring at accept
    /// (`None` where the kernel lacks that command: see
    /// [`ServerConfig::uring_direct_descriptors`]).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        let c = self.entry();
        if let Socket::Fd(_) = c.socket {
            return c.socket.peer_addr().ok();
        }
        if c.peer == PackedPeer::V6 {
            return self.ctx.peers6.get(&self.id).copied();
        }
        c.peer.get()
    }

    /// The subprotocol agreed at upgrade.
    pub fn subprotocol(&self) -> Option<&str> {
        self.ctx.protocols.get(self.id, self.entry().subprotocol)
    }

    /// The user data created at upgrade.
    pub fn data(&self) -> &D {
        self.entry()
            .data
            .as_ref()
            .expect("open connections have data")
    }

    /// The user data created at upgrade.
    pub fn data_mut(&mut self) -> &mut D {
        self.ctx
            .conns
            .get_mut(self.id)
            .and_then(|c| c.data.as_mut())
            .expect("open connections have data")
    }

    /// The worker: timers and the other connections.
    pub fn worker(&mut self) -> &mut WorkerCtx<D> {
        self.ctx
    }
}

/// A message sent in pieces (gorilla's `NextWriter`), from [`Conn::writer`]. Pieces are never
/// dropped by the backpressure policy (that would corrupt the message), but the status reports it.
pub struct MessageWriter<'a, D> {
    ctx: &'a mut WorkerCtx<D>,
    id: ConnId,
    kind: MessageKind,
    buf: Vec<u8>,
    first: bool,
    done: bool,
    status: SendStatus,
}

impl<D> std::fmt::Debug for MessageWriter<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl<D> MessageWriter<'_, D> {
    fn emit(&mut self, fin: bool) -> SendStatus {
        let op = if self.first {
            self.kind.opcode()
        } else {
            OpCode::Continuation
        };
        let status = self.ctx.send_frame(self.id, op, &self.buf, fin, true);
        self.first = false;
        self.buf.clear();
        if status != SendStatus::Sent {
            self.status = status;
        }
        status
    }

    /// Ends the message (sends its last frame). Returns the worst status of its frames.
    pub fn finish(mut self) -> SendStatus {
        self.done = true;
        let _ = self.emit(true);
        self.status
    }
}

impl<D> io::Write for MessageWriter<'_, D> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if matches!(self.status, SendStatus::Closed | SendStatus::Invalid) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = self.buf.capacity() - self.buf.len();
        if room == 0 {
            if self.emit(false) == SendStatus::Closed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            return self.write(data);
        }
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D> Drop for MessageWriter<'_, D> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.emit(true);
        }
        let buf = std::mem::take(&mut self.buf);
        self.ctx.chunks.put(buf);
    }
}

/// The event loop of one worker thread.
pub(crate) struct Worker<H: Handler> {
    ctx: WorkerCtx<H::Data>,
    handler: H,
    driver: Driver,
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
            ctx: WorkerCtx::new(index, cfg, Arc::clone(&shared)),
            handler,
            driver,
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
        for (i, l) in self.listeners.iter_mut().enumerate() {
            self.driver.register_listener(l, listener_token(i), i)?;
        }
        self.handler.on_start(&mut self.ctx);
        loop {
            let now = Instant::now();
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
            self.hand_over_removed();
            self.rearm_starved();
            self.register_dials();
            self.poll(timeout)?;
            self.ctx.now = Instant::now();

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
            self.trim_buffers();

            if let Some(deadline) = self.stop_deadline {
                if self.ctx.conns.len() == 0 {
                    return Ok(());
                }
                if self.ctx.now >= deadline {
                    for id in self.ctx.conns.ids().collect::<Vec<_>>() {
                        self.close_callback(id, CloseCode::ABNORMAL, "", false);
                        self.ctx.remove(id);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Waits for events, spinning first when busy-poll is configured.
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let (Some(spin), false) = (self.ctx.cfg.busy_poll, timeout == Some(Duration::ZERO)) {
            let start = Instant::now();
            let until = start + timeout.map_or(spin, |t| t.min(spin));
            loop {
                self.driver.poll(&mut self.events, Some(Duration::ZERO))?;
                if !self.events.is_empty() {
                    return Ok(());
                }
                let now = Instant::now();
                if now >= until {
                    let spent = now - start;
                    let rest = timeout.map(|t| t.saturating_sub(spent));
                    return self.driver.poll(&mut self.events, rest);
                }
                std::hint::spin_loop();
            }
        }
        self.driver.poll(&mut self.events, timeout)
    }

    /// io_uring: cancels the receives of removed connections and parks the queues of their
    /// in-flight sends in the driver, before the next submit.
    fn hand_over_removed(&mut self) {
        let Driver::Uring(d) = &mut self.driver else {
            return;
        };
        for (token, socket) in std::mem::take(&mut self.ctx.cancels) {
            d.cancel_recv(token);
            if let Socket::Direct(slot) = socket {
                d.close_direct(slot);
            } // an ordinary descriptor closes here, on drop
        }
        for (token, queue) in self.ctx.orphans.drain(..) {
            if let Some(mut q) = d.orphan_send(token, queue) {
                q.release(&mut self.ctx.chunks); // its send completed already
            }
        }
    }

    fn dispatch(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Ready {
                token,
                readable,
                writable,
                hup,
            } => self.dispatch_ready(token, readable, writable, hup),
            IoEvent::Wake => self.dispatch_ready(WAKER_TOKEN, true, false, false),
            other => self.dispatch_completion(other),
        }
    }

    /// io_uring completions.
    fn dispatch_completion(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Accepted { listener, socket } => {
                if listener < self.listeners.len() {
                    self.admit(socket, listener);
                } else {
                    self.driver.close(socket); // shutting down
                }
            }
            IoEvent::Received {
                token,
                bid,
                at,
                len,
                keep,
                more,
            } => {
                let id = ConnId(token);
                let Driver::Uring(d) = &mut self.driver else {
                    unreachable!("completions come from the uring driver")
                };
                // SAFETY: the completion handed `bid` to us and it is recycled only below, after
                // the last use of `input`. The buffer is in the driver's mapping, which neither the
                // handler nor the protocol core can reach, so nothing else aliases it meanwhile.
                let input = unsafe { &mut *d.buffer(bid, at, len as usize) };
                if self.ctx.conns.get(id).is_some() {
                    self.process_input(id, input);
                }
                let Driver::Uring(d) = &mut self.driver else {
                    unreachable!()
                };
                d.recycle(bid, keep);
                if !more {
                    self.rearm_recv(id);
                }
            }
            IoEvent::RecvEnd { token, res, more } => {
                let id = ConnId(token);
                if self.ctx.conns.get(id).is_none() {
                    return; // cancelled, or a stale completion
                }
                let starved = matches!(&self.driver, Driver::Uring(d) if d.recv_starved());
                if res == 0 {
                    self.on_eof(id);
                } else if res == -libc::ENOBUFS && starved {
                    // The ring is at its limit: wait for buffers with the bytes in the socket,
                    // behind the connections already waiting (re-armed a few per turn).
                    self.starved.push_back(id);
                } else if res == -libc::ENOBUFS || res == -libc::EINTR || res == -libc::EAGAIN {
                    // Out of provided buffers: the bytes wait in the socket; they are back by the
                    // next submit.
                    if !more {
                        self.rearm_recv(id);
                    }
                } else if res < 0 && res != -libc::ECANCELED {
                    self.close_callback(id, CloseCode::ABNORMAL, "", false);
                    self.ctx.remove(id);
                } else if !more {
                    self.rearm_recv(id);
                }
            }
            IoEvent::Sent { token, res, orphan } => {
                if let Some(mut q) = orphan {
                    q.release(&mut self.ctx.chunks);
                }
                let id = ConnId(token);
                let ctx = &mut self.ctx;
                let Some(c) = ctx.conns.get_mut(id) else {
                    return;
                };
                c.flags &= !SENDING;
                if res < 0 {
                    self.close_callback(id, CloseCode::ABNORMAL, "", false);
                    self.ctx.remove(id);
                    return;
                }
                c.queue.advance(res as usize, &mut ctx.chunks);
                ctx.note_flush(id, res > 0);
                // The next send, or what follows an emptied queue (on_drain, FIN, removal).
                ctx.mark_dirty(id);
            }
            IoEvent::Readable { token } => {
                let id = ConnId(token);
                let Some(c) = self.ctx.conns.get(id) else {
                    return; // closed: its poll is cancelled
                };
                if c.has(PEER_EOF) {
                    return;
                }
                if let Driver::Uring(d) = &mut self.driver {
                    d.recv_once(&c.socket, token);
                }
            }
            IoEvent::Connected { token, res } => self.dial_polled(ConnId(token), res),
            IoEvent::Peer { token, addr } => {
                let id = ConnId(token);
                let Some(c) = self.ctx.conns.get_mut(id) else {
                    return;
                };
                let Stage::Handshake(hs) = &mut c.stage else {
                    return;
                };
                hs.peer = addr;
                hs.peer_pending = false;
                if !hs.held.is_empty() {
                    // Bytes came first after all (the link was split): parse them now.
                    self.handshake_bytes(id, &mut []);
                }
            }
            IoEvent::Ready { .. } | IoEvent::Wake => unreachable!("handled by dispatch"),
        }
    }

    /// io_uring: re-arms the receives of up to half the ring's buffers' worth of connections
    /// that found the ring empty at its limit, first come first served, before the next submit.
    /// (Re-arming them all at once would end most in `ENOBUFS` again, each turn.)
    fn rearm_starved(&mut self) {
        let Driver::Uring(d) = &mut self.driver else {
            return;
        };
        let mut budget = d.starved_budget();
        while budget > 0 {
            let Some(id) = self.starved.pop_front() else {
                break;
            };
            let Some(c) = self.ctx.conns.get(id) else {
                continue; // closed meanwhile
            };
            if c.has(PEER_EOF) {
                continue;
            }
            d.rearm_starved(&c.socket, id.0);
            budget -= 1;
        }
    }

    /// The periodic buffer trim (`ServerConfig::buffer_trim_interval`): when due, the pools and
    /// the io_uring buffer ring give back what the last interval did not need, then the
    /// allocator its free pages. Armed only while something is held, so an idle worker holding
    /// nothing is never woken for it. Per turn: a clock comparison and a few loads.
    fn trim_buffers(&mut self) {
        let Some(interval) = self.ctx.cfg.buffer_trim_interval else {
            return;
        };
        if self.trim_at.is_some_and(|at| self.ctx.now >= at) {
            self.trim_at = None;
            let freed = self.ctx.chunks.trim() + self.ctx.assembly.trim();
            crate::buf::pool::release_to_system(freed);
            if let Driver::Uring(d) = &mut self.driver {
                d.trim();
            }
        }
        let driver_spare = match &self.driver {
            Driver::Uring(d) => {
                self.ctx.driver_held = d.held_bytes();
                d.holds_spare()
            }
            Driver::Epoll(_) => false,
        };
        if self.trim_at.is_none()
            && (driver_spare || self.ctx.chunks.cached() > 0 || self.ctx.assembly.cached() > 0)
        {
            self.trim_at = Some(self.ctx.now + interval);
        }
    }

    /// io_uring: re-arms a connection's multishot receive unless its input has ended.
    fn rearm_recv(&mut self, id: ConnId) {
        let Some(c) = self.ctx.conns.get(id) else {
            return;
        };
        if c.has(PEER_EOF) {
            return;
        }
        if let Driver::Uring(d) = &mut self.driver {
            d.arm_recv(&c.socket, id.0);
        }
    }

    fn dispatch_ready(&mut self, token: usize, readable: bool, writable: bool, hup: bool) {
        if token == WAKER_TOKEN {
            self.ctx.drain_mailbox();
            if self.shared.stop.load(Ordering::Acquire) && self.stop_deadline.is_none() {
                self.begin_shutdown();
            }
            return;
        }
        if token & SPECIAL != 0 {
            let i = usize::MAX - 1 - token;
            if i < self.listeners.len() {
                self.accept(i);
            }
            return;
        }
        let id = ConnId(token as u64);
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
            let (stream, _addr) = match listener.accept() {
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
            self.admit(Socket::Fd(stream), i);
        }
    }

    /// Takes an accepted connection in: registers it and arms its handshake deadline.
    /// (`TCP_NODELAY` comes from the listener.)
    fn admit(&mut self, socket: Socket, listener: usize) {
        {
            if self.ctx.conns.len() >= self.ctx.cfg.max_connections_per_worker {
                self.driver.close(socket); // closed at once
                return;
            }
            let id = self.ctx.conns.insert(Connection {
                socket,
                timer: 0,
                dropped: 0,
                stall: 0,
                flags: 0,
                subprotocol: 0,
                peer: PackedPeer::default(),
                queue: WriteQueue::new(),
                stage: Stage::Handshake(Handshake::default()),
                data: None,
                deflate: None,
            });
            let c = self.ctx.conns.get_mut(id).expect("just inserted");
            // Linked ahead of the receive registered next.
            if self.driver.query_peer(&c.socket, listener, id.0 as usize) {
                if let Stage::Handshake(hs) = &mut c.stage {
                    hs.peer_pending = true;
                }
            }
            if self
                .driver
                .register_conn(&mut c.socket, id.0 as usize)
                .is_err()
            {
                self.ctx.remove(id);
                return;
            }
            let deadline = self.ctx.now + self.ctx.cfg.handshake_timeout;
            self.ctx.arm(id, Some(deadline));
        }
    }

    /// Reads what the socket has (bounded per turn) and processes it by stage.
    /// `hup`: the peer's EOF is known to be queued, so a short read does not mean "empty".
    /// epoll: reads what connection `id` has, hands it to the protocol core, then sends what
    /// handling it queued on this connection at once, before the next connection is read (as
    /// uWebSockets uncorks after each socket's data): a chunk written goes straight back to the
    /// pool for the next connection, so a turn that echoes hundreds of messages holds one or two
    /// chunks, not one per message until the end of the turn. Sends to other connections still
    /// wait for the turn's end (one `writev` each, however many messages).
    fn on_readable(&mut self, id: ConnId, hup: bool) {
        self.read_input(id, hup);
        if self.ctx.conns.get(id).is_some_and(|c| c.has(DIRTY)) {
            self.flush_conn(id);
        }
    }

    fn read_input(&mut self, id: ConnId, hup: bool) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(c) = self.ctx.conns.get_mut(id) else {
                return;
            };
            if matches!(c.stage, Stage::Draining) && c.has(PEER_EOF) {
                return;
            }
            let n = match c.socket.read(&mut self.read_buf) {
                Ok(0) => {
                    self.on_eof(id);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_callback(id, CloseCode::ABNORMAL, "", false);
                    self.ctx.remove(id);
                    return;
                }
            };
            let mut input = std::mem::take(&mut self.read_buf);
            self.process_input(id, &mut input[..n]);
            let short = n < input.len();
            self.read_buf = input;
            // Linux reports every arrival on an edge-triggered socket, so a short read means the
            // socket is empty for now: skip the read that would only say WouldBlock. Not when the
            // same edge reported the peer's FIN: data and FIN arriving together make one edge,
            // and the EOF would never be read (the connection would leak).
            if short && !hup {
                return;
            }
        }
        self.pending_reads.push(id);
    }

    /// Received bytes, by stage: the upgrade request, frames, or (draining) discarded.
    fn process_input(&mut self, id: ConnId, input: &mut [u8]) {
        let Some(c) = self.ctx.conns.get(id) else {
            return;
        };
        match c.stage {
            Stage::Handshake(_) => self.handshake_bytes(id, input),
            Stage::Open(_) => self.ws_bytes(id, input),
            Stage::Dial(_) => self.dial_bytes(id, input),
            Stage::Draining => {}
        }
    }

    fn on_eof(&mut self, id: ConnId) {
        let Some(c) = self.ctx.conns.get_mut(id) else {
            return;
        };
        c.flags |= PEER_EOF;
        if c.queue.is_empty() {
            self.close_callback(id, CloseCode::ABNORMAL, "", false);
            self.ctx.remove(id);
            return;
        }
        // The peer only half-closed, maybe right after its request or a message: what is queued
        // for it (a 101, an echo, a close frame) is flushed first, as in the draining stage; then
        // the connection goes (flush_dirty), or at the close timeout.
        if !matches!(c.stage, Stage::Draining) {
            self.close_callback(id, CloseCode::ABNORMAL, "", false);
            let ctx = &mut self.ctx;
            let Some(c) = ctx.conns.get_mut(id) else {
                return;
            };
            ctx.budget.release(c.assembly_held());
            match std::mem::replace(&mut c.stage, Stage::Draining) {
                Stage::Open(mut p) => p.recycle(&mut ctx.assembly),
                Stage::Handshake(hs) => ctx.chunks.put(hs.held),
                Stage::Dial(d) => ctx.client.forget(id, *d, &mut ctx.chunks, ctx.uring),
                Stage::Draining => {}
            }
            let deadline = ctx.now + ctx.cfg.proto.close_timeout;
            ctx.arm(id, Some(deadline));
        }
        self.ctx.mark_dirty(id);
    }

    /// Calls `on_close` if the connection was open and has not had it yet.
    fn close_callback(&mut self, id: ConnId, code: CloseCode, reason: &str, by_peer: bool) {
        self.ctx.unlink(id);
        if self.is_dialing(id) {
            self.dial_failed(id, ConnectError::Closed);
            return;
        }
        let Some(c) = self.ctx.conns.get_mut(id) else {
            return;
        };
        if let Some(data) = c.data.take() {
            let info = CloseInfo {
                id,
                code,
                reason,
                by_peer,
            };
            self.handler.on_close(&mut self.ctx, data, &info);
        }
    }

    /// Bytes of the upgrade request (and maybe the first frames behind it).
    fn handshake_bytes(&mut self, id: ConnId, new: &mut [u8]) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let Stage::Handshake(hs) = &mut c.stage else {
            return;
        };
        let mut held = std::mem::take(&mut hs.held);
        let peer = hs.peer;
        if hs.peer_pending {
            // The peer's address first (on_upgrade and on_http see it): keep the bytes.
            if held.capacity() == 0 {
                held = ctx.chunks.get();
            }
            held.extend_from_slice(new);
            hs.held = held;
            return;
        }
        if held.capacity() != 0 {
            held.extend_from_slice(new);
        }
        let status = {
            let bytes: &[u8] = if held.capacity() != 0 { &held } else { new };
            parse_request(bytes, &ctx.hs_cfg)
        };
        let (mut request, consumed) = match status {
            Ok(ParseStatus::Partial) => {
                if held.capacity() == 0 {
                    held = ctx.chunks.get();
                    held.extend_from_slice(new);
                }
                c.stage = Stage::Handshake(Handshake {
                    held,
                    peer,
                    peer_pending: false,
                });
                return;
            }
            Ok(ParseStatus::Complete { request, consumed }) => (request, consumed),
            Ok(ParseStatus::Http { mut request, .. }) => {
                ctx.chunks.put(held);
                request.peer = peer.or_else(|| c.socket.peer_addr().ok());
                let response = self.handler.on_http(&request);
                self.reject(id, &response);
                return;
            }
            Err(e) => {
                ctx.chunks.put(held);
                self.reject(id, &e.to_rejection());
                return;
            }
        };
        request.peer = peer.or_else(|| c.socket.peer_addr().ok());
        if let Err(e) = check_origin(&request, &ctx.hs_cfg) {
            ctx.chunks.put(held);
            self.reject(id, &e.to_rejection());
            return;
        }
        let accept = match self.handler.on_upgrade(&request) {
            Upgrade::Accept(a) => a,
            Upgrade::Reject(r) => {
                self.ctx.chunks.put(held);
                self.reject(id, &r);
                return;
            }
        };
        let ctx = &mut self.ctx;
        let chosen = match &accept.subprotocol {
            Some(p) => Some(p.as_str()),
            None => request.select_subprotocol(&ctx.cfg.subprotocols),
        };
        let tag = chosen.map_or(0, |p| ctx.protocols.intern(id, p));
        let deflate = ctx.compression.negotiate(&request);
        let mut resp = ctx.chunks.get();
        let ext = deflate.as_ref().map(|(_, ext)| ext.as_str());
        write_accept_response(&mut resp, request.key(), chosen, ext, &accept.headers);
        drop(request);
        let c = ctx.conns.get_mut(id).expect("still registered");
        c.queue.push_chunk(resp, &mut ctx.chunks);
        let mut core = proto::Conn::new(Role::Server, 0);
        if let Some((state, _)) = deflate {
            core.enable_compression();
            c.deflate = Some(state);
        }
        core.start(ctx.now, &ctx.cfg.proto);
        c.stage = Stage::Open(core);
        c.subprotocol = tag;
        if let (Socket::Direct(_), Some(addr)) = (&c.socket, peer) {
            c.peer = match addr {
                SocketAddr::V4(a) => {
                    let [a0, a1, a2, a3] = a.ip().octets();
                    let [p0, p1] = a.port().to_be_bytes();
                    PackedPeer([a0, a1, a2, a3, p0, p1])
                }
                SocketAddr::V6(_) => {
                    ctx.peers6.insert(id, addr);
                    PackedPeer::V6
                }
            };
        }
        c.data = Some(accept.data);
        ctx.mark_dirty(id);
        ctx.sync_timer(id);
        self.handler.on_open(&mut Conn {
            ctx: &mut self.ctx,
            id,
        });
        // Frames the client sent right behind its request.
        if held.capacity() != 0 {
            if consumed < held.len() {
                self.ws_bytes(id, &mut held[consumed..]);
            }
            self.ctx.chunks.put(held);
        } else if consumed < new.len() {
            self.ws_bytes(id, &mut new[consumed..]);
        }
    }

    /// Answers with an HTTP error, then drains and closes.
    fn reject(&mut self, id: ConnId, rejection: &Rejection) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let mut resp = ctx.chunks.get();
        write_rejection(&mut resp, rejection);
        c.queue.push_chunk(resp, &mut ctx.chunks);
        c.stage = Stage::Draining;
        let deadline = ctx.now + ctx.cfg.proto.close_timeout;
        ctx.arm(id, Some(deadline));
        ctx.mark_dirty(id);
    }

    /// Feeds received bytes to the protocol core and delivers its events, strictly in order. The
    /// core's reader is out on the stack meanwhile (the events borrow its buffers); its writer stays
    /// in the slot, so what the handler sends or closes goes straight through it.
    fn ws_bytes(&mut self, id: ConnId, input: &mut [u8]) {
        let held_before = self.ctx.conns.get(id).map_or(0, Connection::assembly_held);
        let Some(Stage::Open(core)) = self.ctx.conns.get_mut(id).map(|c| &mut c.stage) else {
            unreachable!("ws_bytes is called in the open stage");
        };
        let mut reader = std::mem::take(&mut core.reader);
        let mut pos = 0;
        while pos < input.len() {
            let ctx = &mut self.ctx;
            let c = ctx
                .conns
                .get_mut(id)
                .expect("handlers cannot remove connections");
            let Stage::Open(core) = &mut c.stage else {
                unreachable!("only ws_bytes leaves the open stage of a connection it reads");
            };
            let mut out = QueueOutput {
                queue: &mut c.queue,
                pool: &mut ctx.chunks,
            };
            let had = out.queue.len();
            let proto_cfg = if c.flags & CLIENT != 0 {
                &ctx.client.proto
            } else {
                &ctx.rx_proto
            };
            let result = reader.read_ext(
                &mut core.writer,
                &mut input[pos..],
                proto_cfg,
                &mut out,
                &mut ctx.assembly,
            );
            let wrote = out.queue.len() != had;
            if wrote {
                ctx.mark_dirty(id);
            }
            let (n, event, compressed) = match result {
                Ok(found) => found,
                Err(e) => {
                    // The core queued a close with the error's code; bytes after the bad frame are
                    // not looked at.
                    self.close_callback(id, e.close_code(), "", false);
                    break;
                }
            };
            pos += n;
            let Some(event) = event else {
                continue;
            };
            let mut conn = Conn {
                ctx: &mut self.ctx,
                id,
            };
            let mut inflated = Inflated::Delivered;
            let mut closed_by_peer = false;
            match event {
                Event::Message(m) => match compressed {
                    None => self.handler.on_message(&mut conn, m),
                    Some(kind) => inflated = self.deliver_compressed(id, kind, m.as_bytes(), None),
                },
                Event::Fragment {
                    kind,
                    data,
                    first,
                    last,
                } if compressed.is_some() => {
                    inflated = self.deliver_compressed(id, kind, data, Some((first, last)));
                }
                Event::Fragment {
                    kind,
                    data,
                    first,
                    last,
                } => self.handler.on_fragment(&mut conn, kind, data, first, last),
                Event::Ping(d) => {
                    if conn.ctx.cfg.proto.auto_pong {
                        let _ = conn.ctx.send_pong(id, d);
                    }
                    self.handler.on_ping(&mut conn, d)
                }
                Event::Pong(d) => self.handler.on_pong(&mut conn, d),
                Event::Close { code, reason } => {
                    self.close_callback(id, code, reason, true);
                    closed_by_peer = true;
                }
            }
            if let Inflated::Failed(e) = inflated {
                // As for a protocol error: the core queues a close with the error's code.
                let ctx = &mut self.ctx;
                let c = ctx.conns.get_mut(id).expect("still registered");
                if let Stage::Open(core) = &mut c.stage {
                    let mut out = QueueOutput {
                        queue: &mut c.queue,
                        pool: &mut ctx.chunks,
                    };
                    core.writer.fail(&mut out, &e);
                }
                ctx.mark_dirty(id);
                self.close_callback(id, e.close_code(), "", false);
                break;
            }
            if closed_by_peer {
                break;
            }
        }
        let ctx = &mut self.ctx;
        reader.recycle(&mut ctx.assembly);
        let Some(Stage::Open(core)) = ctx.conns.get_mut(id).map(|c| &mut c.stage) else {
            unreachable!("handlers cannot remove connections");
        };
        core.reader = reader;
        let closed = core.writer.is_closed();
        ctx.assembly_settled(id, held_before);
        if closed {
            ctx.enter_draining(id);
        } else {
            ctx.sync_timer(id);
        }
        self.enforce_assembly_budget();
    }

    fn fire_timers(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        self.ctx.wheel.expire(self.ctx.now, &mut expired);
        for (tick, entry) in expired.drain(..) {
            match entry {
                TimerEntry::Conn(id) => self.conn_timer(id, tick),
                TimerEntry::Stall(id) => self.stall_check(id),
                TimerEntry::App { id, seq } => {
                    let Some(t) = self.ctx.app_timers.get_mut(&id) else {
                        continue;
                    };
                    if t.seq != seq {
                        continue;
                    }
                    match t.period {
                        Some(p) => {
                            let mut next = t.due + p;
                            if next <= self.ctx.now {
                                next = self.ctx.now + p; // fell behind: skip the missed ticks
                            }
                            t.due = next;
                            self.ctx.wheel.insert(next, TimerEntry::App { id, seq });
                        }
                        None => {
                            self.ctx.app_timers.remove(&id);
                        }
                    }
                    self.handler.on_timer(&mut self.ctx, id);
                }
            }
        }
        self.expired = expired;
    }

    /// A connection's write-stall check: closes it (1008, at once: a peer that reads nothing would
    /// not read a close frame either) when its queue has waited with no progress for the
    /// configured time, else checks again when that time would be up.
    fn stall_check(&mut self, id: ConnId) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        c.flags &= !STALL_ARMED;
        let Some(timeout) = ctx.cfg.write_stall_timeout else {
            return;
        };
        if c.stall == 0 {
            return; // drained since
        }
        let now = ctx.wheel.tick_of(ctx.now) as u32;
        let waited = Duration::from_millis(u64::from(now.wrapping_sub(c.stall)));
        if waited < timeout {
            c.flags |= STALL_ARMED;
            let at = ctx.now + (timeout - waited);
            ctx.wheel.insert(at, TimerEntry::Stall(id));
            return;
        }
        let queued = c.queue.len();
        if let Some(quiet) = ctx.stall_log.ready(ctx.now, 1) {
            eprintln!(
                "surge: closing a connection whose peer read nothing for {} ms ({queued} bytes \
                 queued; write_stall_timeout){}",
                waited.as_millis(),
                crate::ratelog::RateLog::more(quiet)
            );
        }
        self.close_callback(id, CloseCode::POLICY, "write stall", false);
        self.ctx.remove(id);
    }

    fn conn_timer(&mut self, id: ConnId, tick: u64) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if c.timer != (tick as u32).wrapping_add(1) {
            return; // re-armed or disarmed since
        }
        c.timer = 0;
        match &mut c.stage {
            Stage::Handshake(_) | Stage::Draining => ctx.remove(id),
            Stage::Dial(_) => self.dial_failed(id, ConnectError::Timeout),
            Stage::Open(core) => {
                let was_closing = core.state() == State::CloseSent;
                let mut out = QueueOutput {
                    queue: &mut c.queue,
                    pool: &mut ctx.chunks,
                };
                match core.handle_timeout(ctx.now, &ctx.cfg.proto, &mut out) {
                    proto::TimeoutAction::None => ctx.sync_timer(id),
                    proto::TimeoutAction::PingSent => {
                        ctx.mark_dirty(id);
                        ctx.sync_timer(id);
                    }
                    proto::TimeoutAction::Closed => {
                        self.close_callback(id, CloseCode::ABNORMAL, "", false);
                        if was_closing {
                            // The peer never answered our close: nothing more to wait for.
                            self.ctx.remove(id);
                        } else {
                            // Keepalive gave up: the core queued a 1001 close; flush it if we can.
                            self.ctx.enter_draining(id);
                        }
                    }
                }
            }
        }
    }

    /// One `writev` (or a few, until the socket is full) per connection with something queued.
    fn flush_dirty(&mut self) {
        while let Some(id) = self.ctx.dirty.pop() {
            self.flush_conn(id);
        }
    }

    /// Sends what connection `id` has queued (if it is marked dirty; an entry of `dirty` whose
    /// connection was flushed early is skipped).
    fn flush_conn(&mut self, id: ConnId) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if !c.has(DIRTY) {
            return;
        }
        c.flags &= !DIRTY;
        let empty = if let Driver::Uring(d) = &mut self.driver {
            if c.has(SENDING) {
                return; // its completion marks it dirty again
            }
            if c.queue.is_empty() {
                true
            } else {
                // The chunks stay in the queue, untouched, until the completion (SENDING).
                let _ = d.send(&c.socket, id.0, &c.queue);
                c.flags |= SENDING;
                if c.stall == 0 && c.has(OVER) {
                    // A queue past the limit starts the stall clock even if this send never
                    // completes; otherwise completions do (a partial one leaves bytes), so
                    // the sends of idle connections arm nothing.
                    ctx.note_flush(id, false);
                }
                false
            }
        } else {
            let before = c.queue.len();
            match c.queue.flush(&mut c.socket, &mut ctx.chunks) {
                Ok(empty) => {
                    if !empty || c.stall != 0 {
                        let wrote = c.queue.len() != before;
                        ctx.note_flush(id, wrote);
                    }
                    empty
                }
                Err(_) => {
                    self.close_callback(id, CloseCode::ABNORMAL, "", false);
                    self.ctx.remove(id);
                    return;
                }
            }
        };
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if c.has(OVER) && c.queue.cost() < ctx.cfg.max_backpressure {
            c.flags &= !OVER;
            ctx.send_pending_pong(id);
            let Some(c) = self.ctx.conns.get_mut(id) else {
                return;
            };
            if c.data.is_some() && c.can_send() {
                self.handler.on_drain(&mut Conn {
                    ctx: &mut self.ctx,
                    id,
                });
            }
        }
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if empty && matches!(c.stage, Stage::Draining) {
            if c.has(PEER_EOF) {
                ctx.remove(id);
            } else if !c.has(FIN_SENT) {
                c.flags |= FIN_SENT;
                if self.driver.shutdown_write(&c.socket).is_err() {
                    ctx.remove(id);
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let _ = self.driver.deregister_listener(l, i);
        }
        self.listeners.clear();
        self.stop_deadline = Some(self.ctx.now + self.ctx.cfg.shutdown_timeout);
        for id in self.ctx.conns.ids().collect::<Vec<_>>() {
            let stage_is_handshake = matches!(
                self.ctx.conns.get(id).map(|c| &c.stage),
                Some(Stage::Handshake(_))
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
    /// before the fields drop (the context, and its queues, drop first). If some never complete,
    /// the queues are leaked rather than freed under the kernel.
    fn drop(&mut self) {
        if !self.driver.quiesce() {
            std::mem::forget(std::mem::replace(&mut self.ctx.conns, Registry::new()));
            std::mem::forget(std::mem::take(&mut self.ctx.orphans));
        }
    }
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_to_cpu(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty set; CPU_SET writes inside
    // it (the index is reduced below CPU_SETSIZE), and sched_setaffinity only reads `size_of` bytes
    // of it. Pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_size() {
        let entry = Registry::<Connection<()>>::slot_size();
        let core = std::mem::size_of::<proto::Conn>();
        let queue = std::mem::size_of::<WriteQueue>();
        println!(
            "slot {entry} B (connection {} B, stage {} B, protocol core {core} B, write queue {queue} B)",
            std::mem::size_of::<Connection<()>>(),
            std::mem::size_of::<Stage>()
        );
        assert!(entry <= 256, "slot of {entry} bytes");
    }
}
