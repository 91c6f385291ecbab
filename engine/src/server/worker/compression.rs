//! permessage-deflate (RFC 7692) in the engine: negotiation at upgrade, what the protocol core needs
//! to inflate received messages (lent per read by `ws_bytes`), deflating sent ones. The sans-IO parts
//! are `proto::deflate` and `handshake::deflate_negotiation`; this module only joins them to the
//! worker.
//!
//! What is held where: per worker a [`DeflatePool`] (compressors and inflaters, shared by every
//! connection) and two buffers (inflated messages, compressed messages), taken out while in use;
//! per connection an `Option<Box<DeflateState>>` (8 bytes in the slot; `None` without compression),
//! whose windows are allocated on the first compressed message (context takeover only).
//!
//! Live streams (context takeover): a connection that receives (sends) compressed messages keeps
//! an inflater (compressor) of the pool attached, so that each message goes through its own stream
//! with no priming. At most `DeflateConfig::live_inflaters` (`live_compressors`) per worker: a
//! [`LiveSet`] per kind lists the holders, and when a connection without a stream needs one and the
//! set is full, a clock (second chance on the state's used bit) detaches the stream of one that
//! was not used since the hand last passed; its window stays saved, so its next message primes a
//! stream again. The core attaches a stream from the pool while it reads; the connection is listed
//! (and room made) right after that read, before its event reaches the handler. A closed
//! connection's stream goes with it; its entry is dropped when the hand reaches it.

use super::{Conn, WorkerCtx};
use crate::handler::SendStatus;
use crate::handshake::{deflate_negotiation::negotiate, Request};
use crate::prepared::PreparedMessage;
use crate::proto::{
    DeflateConfig, DeflatePool, DeflateState, Inflate, Message, MessageKind, Role, MAX_KEPT_BUFFER,
    RSV1,
};
use crate::ServerConfig;

/// A worker's permessage-deflate state.
#[derive(Debug)]
pub(super) struct Compression {
    cfg: DeflateConfig,
    pool: DeflatePool,
    /// Where the core inflates received messages (taken out by `ws_bytes` while the handler has
    /// the message).
    inflated: Vec<u8>,
    /// Where sent messages are compressed (taken out while the frame is queued).
    deflated: Vec<u8>,
    /// Connections holding a live inflater.
    live_in: LiveSet,
    /// Connections holding a live compressor.
    live_out: LiveSet,
}

/// Which live stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Inflater,
    Compressor,
}

/// Where a [`LiveSet`] finds a holder's state by its key.
trait Holders<K> {
    fn state(&mut self, key: K) -> Option<&mut DeflateState>;
}

impl<D> Holders<crate::ConnId> for crate::server::registry::Registry<super::Connection<D>> {
    fn state(&mut self, id: crate::ConnId) -> Option<&mut DeflateState> {
        self.get_mut(id).and_then(|c| c.deflate.as_deref_mut())
    }
}

/// The connections of a worker that hold a live stream of one kind, with a clock hand.
#[derive(Debug)]
struct LiveSet<K = crate::ConnId> {
    /// Holders (and connections that were holders: closed, or whose stream went otherwise; removed
    /// when the hand reaches them).
    ids: Vec<K>,
    hand: usize,
}

impl<K> Default for LiveSet<K> {
    fn default() -> Self {
        LiveSet {
            ids: Vec::new(),
            hand: 0,
        }
    }
}

impl<K: Copy> LiveSet<K> {
    /// Detaches one stream if the set holds `limit` or more: the first holder from the hand that
    /// has not used its stream since the hand last passed (a closed connection or one that holds
    /// none is only dropped from the list). Gives up after two turns (every holder mid-message):
    /// the set then goes past the limit until some message ends.
    fn make_room(
        &mut self,
        limit: usize,
        kind: Stream,
        conns: &mut impl Holders<K>,
        pool: &mut DeflatePool,
    ) {
        let mut steps = 0;
        while self.ids.len() >= limit.max(1) && steps <= 2 * self.ids.len() {
            if self.hand >= self.ids.len() {
                self.hand = 0;
            }
            let id = self.ids[self.hand];
            steps += 1;
            let Some(st) = conns.state(id) else {
                self.ids.swap_remove(self.hand);
                continue;
            };
            let (holds, used) = match kind {
                Stream::Inflater => (st.holds_inflater(), st.take_inflater_used()),
                Stream::Compressor => (st.holds_compressor(), st.take_compressor_used()),
            };
            if !holds {
                self.ids.swap_remove(self.hand);
                continue;
            }
            if used {
                self.hand += 1;
                continue;
            }
            let released = match kind {
                Stream::Inflater => st.release_inflater(pool),
                Stream::Compressor => {
                    st.release_compressor(pool);
                    true
                }
            };
            if released {
                self.ids.swap_remove(self.hand);
            } else {
                self.hand += 1;
            }
        }
    }

    /// Lists `key` as a holder of a stream it is about to attach (a compressor) or has just
    /// attached (an inflater: the core attaches it while it reads), making room first (see
    /// [`LiveSet::make_room`]; `key` is not listed yet, so its own stream stays).
    fn admit(
        &mut self,
        key: K,
        limit: usize,
        kind: Stream,
        conns: &mut impl Holders<K>,
        pool: &mut DeflatePool,
    ) {
        self.make_room(limit, kind, conns, pool);
        self.ids.push(key);
    }

    /// How many holders are listed (stale entries included until the hand drops them).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

impl Compression {
    pub(super) fn new(cfg: &ServerConfig) -> Self {
        let mut dcfg = cfg.deflate;
        dcfg.max_decompressed = dcfg.max_decompressed.min(cfg.proto.max_message_size);
        let mut pool = DeflatePool::new(dcfg.level);
        pool.use_libdeflate(dcfg.libdeflate);
        Compression {
            cfg: dcfg,
            pool,
            inflated: Vec::new(),
            deflated: Vec::new(),
            live_in: LiveSet::default(),
            live_out: LiveSet::default(),
        }
    }

    /// The first acceptable offer of `request`: the connection's state and the
    /// `Sec-WebSocket-Extensions` value to answer with.
    pub(super) fn negotiate(&self, request: &Request) -> Option<(Box<DeflateState>, String)> {
        let n = negotiate(request.extensions(), self.cfg.mode)?;
        Some((
            Box::new(DeflateState::new(n.params, Role::Server)),
            n.response,
        ))
    }

    fn keep(slot: &mut Vec<u8>, mut buf: Vec<u8>) {
        if buf.capacity() <= MAX_KEPT_BUFFER {
            buf.clear();
            *slot = buf;
        }
    }

    /// The worker's buffer for inflated messages, out until [`Compression::keep_inflated`].
    pub(super) fn take_inflated(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inflated)
    }

    /// Gives the buffer for inflated messages back (freed instead when it grew past
    /// [`MAX_KEPT_BUFFER`]).
    /// Bytes compressed and inflated through the worker's pool so far (the metrics).
    pub(super) fn stats(&self) -> crate::proto::DeflateStats {
        self.pool.stats()
    }

    pub(super) fn keep_inflated(&mut self, buf: Vec<u8>) {
        Self::keep(&mut self.inflated, buf);
    }

    /// What the protocol core needs to inflate a read of the connection whose state is `state`:
    /// the worker's settings and pool, and `buf` (from [`Compression::take_inflated`]).
    pub(super) fn inflate<'s, 'b>(
        &'s mut self,
        state: &'s mut DeflateState,
        buf: &'b mut Vec<u8>,
    ) -> Inflate<'s, 'b> {
        Inflate {
            state,
            cfg: &self.cfg,
            pool: &mut self.pool,
            buf,
        }
    }
}

impl<D> WorkerCtx<D> {
    /// A read of `id` attached a live inflater to it (context takeover: the first compressed
    /// message, or the first since its stream was detached): it is listed as a holder, and if the
    /// worker holds `live_inflaters` already, the stream of one not used lately is detached.
    pub(super) fn inflater_attached(&mut self, id: crate::ConnId) {
        let comp = &mut self.compression;
        let limit = comp.cfg.live_inflaters;
        comp.live_in
            .admit(id, limit, Stream::Inflater, &mut self.conns, &mut comp.pool);
    }

    /// The frame to send `msg` with on a server-role connection `id` that negotiated
    /// permessage-deflate: its compressed variant for the connection's sending window (compressed by
    /// the first worker that needs it, shared from then on). `None`: the plain frame (no compression
    /// negotiated, the message opted out, is under `min_size` or does not shrink).
    pub(super) fn shared_variant(
        &mut self,
        id: crate::ConnId,
        msg: &PreparedMessage,
    ) -> Option<bytes::Bytes> {
        let st = self.conns.get(id)?.deflate.as_deref()?;
        let comp = &mut self.compression;
        let mut buf = std::mem::take(&mut comp.deflated);
        let frame = msg.deflated(st.variant(), comp.cfg.min_size, &mut comp.pool, &mut buf);
        Compression::keep(&mut comp.deflated, buf);
        frame
    }

    /// Sends a data message, compressed when the connection negotiated permessage-deflate, `compress`
    /// allows it and the message is at least `min_size` bytes. Backpressure applies to what goes on
    /// the wire (the compressed bytes).
    pub(super) fn send_message(
        &mut self,
        id: crate::ConnId,
        kind: MessageKind,
        payload: &[u8],
        compress: bool,
    ) -> SendStatus {
        let op = kind.opcode();
        let st = match self.conns.get_mut(id) {
            Some(c) if compress && c.can_send() => c.deflate.as_deref_mut(),
            _ => None,
        };
        let Some(st) = st else {
            return self.send_frame(id, op, payload, true, false, 0);
        };
        let comp = &mut self.compression;
        if st.wants_compressor() && payload.len() >= comp.cfg.min_size {
            let limit = comp.cfg.live_compressors;
            comp.live_out.admit(
                id,
                limit,
                Stream::Compressor,
                &mut self.conns,
                &mut comp.pool,
            );
        }
        let Some(st) = self
            .conns
            .get_mut(id)
            .and_then(|c| c.deflate.as_deref_mut())
        else {
            return self.send_frame(id, op, payload, true, false, 0);
        };
        let comp = &mut self.compression;
        let mut buf = std::mem::take(&mut comp.deflated);
        let status = if st.compress_pending(payload, &comp.cfg, &mut comp.pool, &mut buf) {
            let status = self.send_frame(id, op, &buf, true, false, RSV1);
            if status.is_queued() {
                if let Some(st) = self
                    .conns
                    .get_mut(id)
                    .and_then(|c| c.deflate.as_deref_mut())
                {
                    st.commit(payload);
                }
            }
            status
        } else {
            self.send_frame(id, op, payload, true, false, 0)
        };
        Compression::keep(&mut self.compression.deflated, buf);
        status
    }
}

impl<D> Conn<'_, D> {
    /// Sends a message without compressing it, whatever was negotiated (the per-message opt-out:
    /// already compressed data, or data that must not share a compression context with other
    /// messages because an attacker could learn a secret from the compressed sizes).
    pub fn send_uncompressed(&mut self, msg: Message<'_>) -> SendStatus {
        self.ctx
            .send_message(self.id, msg.kind(), msg.as_bytes(), false)
    }

    /// Whether permessage-deflate was negotiated on this connection.
    pub fn compression(&self) -> bool {
        self.entry().deflate.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DeflateParams;
    use flate2::{Compress, Compression as Level, FlushCompress};

    impl Holders<usize> for Vec<Option<DeflateState>> {
        fn state(&mut self, key: usize) -> Option<&mut DeflateState> {
            self.get_mut(key).and_then(Option::as_mut)
        }
    }

    /// Many connections with context takeover, more than the live set, messages interleaved
    /// (random order, similar contents so that each refers back to earlier ones, some connections
    /// closing and others opening): every message inflates to the bytes sent, compared against a
    /// flate2 stream per connection playing the peer, and the set never goes past its limit.
    #[test]
    fn eviction_keeps_every_window() {
        const CONNS: usize = 40;
        const LIMIT: usize = 7;
        let cfg = DeflateConfig {
            min_size: 0,
            ..DeflateConfig::default()
        };
        let mut pool = DeflatePool::new(1);
        let mut live_in: LiveSet<usize> = LiveSet::default();
        let mut live_out: LiveSet<usize> = LiveSet::default();
        let new_conn = || {
            (
                Some(DeflateState::new(DeflateParams::default(), Role::Server)),
                Compress::new_with_window_bits(Level::new(6), false, 15),
                flate2::Decompress::new_with_window_bits(false, 15),
            )
        };
        let (mut states, mut peers): (Vec<_>, Vec<_>) = (0..CONNS)
            .map(|_| {
                let (s, c, d) = new_conn();
                (s, (c, d))
            })
            .unzip();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut out = Vec::new();
        for step in 0..6000u64 {
            let i = (next() % CONNS as u64) as usize;
            if next() % 300 == 0 {
                // The connection closes; a new one takes its place.
                let (s, c, d) = new_conn();
                states[i] = s;
                peers[i] = (c, d);
                continue;
            }
            let len = 10 + (next() % 600) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|k| {
                    b"abcdefgh"[((k as u64 + step * (i as u64 + 1)) % 8) as usize]
                        ^ (next() % 7 == 0) as u8
                })
                .collect();
            // The peer compresses with its own stream; we inflate.
            let mut wire = Vec::with_capacity(len + 64);
            peers[i]
                .0
                .compress_vec(&msg, &mut wire, FlushCompress::Sync)
                .unwrap();
            wire.truncate(wire.len() - 4);
            // As `ws_bytes`: the core attaches a stream while it reads, then the worker lists it.
            let attaching = states[i].as_ref().unwrap().wants_inflater();
            out.clear();
            let st = states[i].as_mut().unwrap();
            st.decompress(&wire, true, true, &cfg, &mut pool, &mut out)
                .unwrap();
            assert_eq!(out, msg, "connection {i}, step {step}");
            if attaching && states[i].as_ref().unwrap().holds_inflater() {
                live_in.admit(i, LIMIT, Stream::Inflater, &mut states, &mut pool);
            }
            assert!(live_in.len() <= LIMIT);
            // We compress the message back; the peer's stream reads it.
            if states[i].as_ref().unwrap().wants_compressor() {
                live_out.admit(i, LIMIT, Stream::Compressor, &mut states, &mut pool);
            }
            let st = states[i].as_mut().unwrap();
            let mut back = Vec::new();
            assert!(st.compress_pending(&msg, &cfg, &mut pool, &mut back));
            if next() % 10 == 0 {
                // Dropped before it was queued: not in either window.
                continue;
            }
            st.commit(&msg);
            back.extend_from_slice(&crate::proto::deflate::TAIL);
            let mut read = Vec::with_capacity(len + 64);
            peers[i]
                .1
                .decompress_vec(&back, &mut read, flate2::FlushDecompress::Sync)
                .unwrap();
            assert_eq!(
                read, msg,
                "connection {i}, step {step}: the peer read other bytes"
            );
            assert!(live_out.len() <= LIMIT);
        }
        let live = states
            .iter()
            .flatten()
            .filter(|s| s.holds_inflater())
            .count();
        assert!(live <= LIMIT, "{live} live inflaters");
    }
}
