//! A connection's slot in the worker's registry: its socket, stage, write queue, flags.

use std::net::SocketAddr;

use super::*;
use crate::buf::WriteQueue;
use crate::driver::Socket;
use crate::proto::{self};

/// One of a connection's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub(super) enum Flag {
    /// In the dirty list: flushed at the end of the loop turn.
    Dirty = 1,
    /// A write-stall check is in the timer wheel (`TimerEntry::Stall`): at most one per connection.
    StallArmed = 2,
    /// Went over the backpressure limit: `on_drain` when it falls back under.
    Over = 4,
    /// `shutdown(Write)` done.
    FinSent = 8,
    /// The peer's EOF was read.
    PeerEof = 16,
    /// Has an entry in the worker's topic table (subscriptions or a handle): unlink it when closing.
    Linked = 32,
    /// An outgoing connection (client role: our frames are masked); see `dial.rs`.
    Client = 64,
    /// Counted in the per-client limits' table under the address kept in `peer` (`limits.rs`):
    /// released when the connection is removed.
    Counted = 128,
    /// Accepted on a TLS listener: its state is in the worker's `TlsTable` (see `tls.rs`).
    Tls = 256,
    /// Open, its data lent to [`Conn::with_data`](crate::Conn::with_data)'s closure for now.
    Lent = 512,
}

/// A connection's flags, in two bytes of its slot (in its alignment padding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Flags(u16);

impl Flags {
    /// The flags of a new connection with only `flag` set.
    pub(super) fn only(flag: Flag) -> Flags {
        Flags(flag as u16)
    }

    pub(super) fn has(self, flag: Flag) -> bool {
        self.0 & flag as u16 != 0
    }
}

/// Where a connection stands.
#[derive(Debug)]
pub(super) enum Stage {
    /// Reading the upgrade request.
    Handshake(Handshake),
    /// Upgraded: the protocol core. While events are delivered its reader is out on the stack
    /// (they borrow it) and its writer stays here, where the connection's sends reach it.
    Open(proto::Session),
    /// Flushing the last bytes, then FIN, then discarding input until EOF or the deadline.
    Draining,
    /// An outgoing connection: connecting, then reading the upgrade response (see `dial.rs`).
    Dial(Box<Dial>),
    /// The upgrade request was read and the application decides later ([`Upgrade::defer`]).
    ///
    /// [`Upgrade::defer`]: crate::Upgrade::defer
    Deferred(Box<Deferred>),
}

/// A deferred upgrade's request, held until the application's decision arrives.
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) request: crate::handshake::Request,
    /// Bytes the client sent after its request (pooled buffer; none allocated until needed),
    /// bounded by `max_handshake_size`.
    pub(super) held: Vec<u8>,
    /// Shared with the application's `PendingUpgrade`: marked gone when the connection ends.
    pub(super) state: crate::server::pending::PendingState,
}

/// The handshake stage's state (it fits in the stage's size, set by the protocol core).
#[derive(Debug, Default)]
pub(super) struct Handshake {
    /// Bytes of an incomplete request (pooled buffer; none allocated until needed).
    pub(super) held: Vec<u8>,
    /// The peer's address: from `accept(2)` on epoll, asked through the ring at accept for
    /// io_uring direct descriptors; then the client's as a PROXY protocol header named it
    /// (`proxy.rs`).
    pub(super) peer: Option<SocketAddr>,
    /// That query is in flight: bytes wait in `held` until it completes (the query is linked
    /// ahead of the receive, so this is a safety net, not the common path).
    pub(super) peer_pending: bool,
    /// A PROXY protocol header is expected before the request (`proxy.rs`); `Off` once read.
    pub(super) proxy: crate::server::ProxyProtocol,
}

/// A direct descriptor's peer address kept past the handshake (it has no fd for `getpeername`):
/// an IPv4 address (bytes 0..4) and port (4..6, big-endian), in bytes that the connection's
/// alignment padding had anyway. A connected TCP peer has neither address 0.0.0.0 nor port 0, so
/// all zeros means none, and address 0.0.0.0 with port 1 means IPv6 (in the worker's `peers6`
/// side table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct PackedPeer(pub(super) [u8; 6]);

impl PackedPeer {
    pub(super) const V6: PackedPeer = PackedPeer([0, 0, 0, 0, 0, 1]);

    pub(super) fn get(self) -> Option<SocketAddr> {
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
    pub(super) socket: Socket,
    /// The armed timer's tick plus one (0: none); older wheel entries are stale.
    pub(super) timer: u32,
    /// Messages refused under the `Drop` backpressure policy.
    pub(super) dropped: u32,
    /// Since when (the wheel's tick, low 32 bits, never 0) the write queue has been waiting with
    /// no byte written; 0 when it is empty. See `ServerConfig::write_stall_timeout`.
    pub(super) stall: u32,
    pub(super) flags: Flags,
    /// The subprotocol the 101 named: a tag in the worker's `Protocols` (0: none).
    pub(super) subprotocol: u8,
    /// io_uring direct descriptors: the peer's address after the handshake.
    pub(super) peer: PackedPeer,
    pub(super) queue: WriteQueue,
    pub(super) stage: Stage,
    pub(super) data: Option<D>,
    /// permessage-deflate, when negotiated (see `compression.rs`).
    pub(super) deflate: Option<Box<proto::DeflateState>>,
}

impl<D> Connection<D> {
    pub(super) fn has(&self, flag: Flag) -> bool {
        self.flags.has(flag)
    }

    pub(super) fn set(&mut self, flag: Flag) {
        self.flags.0 |= flag as u16;
    }

    pub(super) fn clear(&mut self, flag: Flag) {
        self.flags.0 &= !(flag as u16);
    }

    /// Whether data may be sent: upgraded, and the protocol core's writer says so (no close sent,
    /// received or failed).
    pub(super) fn can_send(&self) -> bool {
        matches!(&self.stage, Stage::Open(p) if p.writer.can_send())
    }

    /// Whether `len` more bytes would take a non-empty write queue past `limit` (the
    /// backpressure policy's test: a message is never refused on an empty queue). The queue
    /// counts what it costs in memory (`WriteQueue::cost`), not only its bytes.
    pub(super) fn would_pass(&self, len: usize, limit: usize) -> bool {
        !self.queue.is_empty() && self.queue.cost().saturating_add(len) > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn entry_size() {
        let entry = crate::server::registry::Registry::<Connection<()>>::slot_size();
        let core = std::mem::size_of::<proto::Session>();
        let queue = std::mem::size_of::<WriteQueue>();
        println!(
            "slot {entry} B (connection {} B, stage {} B, protocol core {core} B, write queue {queue} B)",
            std::mem::size_of::<Connection<()>>(),
            std::mem::size_of::<Stage>()
        );
        assert!(entry <= 256, "slot of {entry} bytes");
    }
}
