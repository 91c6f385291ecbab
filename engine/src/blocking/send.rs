//! The write path, under the `out` lock: frames encoded into the write buffer (a long payload of
//! the server's written from the caller's slice), permessage-deflate on the way out, and whole
//! frame sequences written to the stream. The writer's and the reader's sends (automatic replies)
//! both go through here.

use std::io::{self, IoSlice, Write};
use std::time::Instant;

use super::shared::{apply_deadline, lock, Negotiated, ProtoSide, Shared};
use super::{Error, Stream};
use crate::prepared::PreparedMessage;
use crate::proto::{
    self, DeflatePool, DeflateState, MessageKind, Output, Role, MAX_KEPT_BUFFER, RSV1,
};

/// Payloads at least this long are written straight from the caller's slice (server role), not
/// copied into the write buffer.
pub(super) const ZERO_COPY_MIN: usize = 1024;

/// The write side's compression state, created on the first compressed message.
pub(super) struct WriteDeflate {
    state: DeflateState,
    pub(super) pool: DeflatePool,
    /// Where messages are compressed.
    buf: Vec<u8>,
}

impl WriteDeflate {
    fn new(n: &Negotiated, role: Role, level: u8) -> Box<Self> {
        let mut pool = DeflatePool::new(level);
        pool.use_libdeflate(n.cfg.libdeflate);
        Box::new(WriteDeflate {
            state: DeflateState::new(n.params, role),
            pool,
            buf: Vec::new(),
        })
    }
}

/// The write stream, behind the `out` lock.
pub(super) struct OutSide<S> {
    pub(super) stream: S,
    pub(super) buf: Vec<u8>,
    pub(super) deadline: Option<Instant>,
    /// A write timeout is set on the stream (so it must be cleared when there is no deadline).
    pub(super) timeout_set: bool,
    /// A write failed: the stream may hold a partial frame, nothing more can be written.
    pub(super) err: Option<Error>,
    /// Data messages are compressed (when negotiated; gorilla's `EnableWriteCompression`, on by
    /// default).
    pub(super) compress: bool,
    /// Compression level, 0..=9.
    pub(super) level: u8,
    /// Compression state (`None` until the first compressed message).
    pub(super) deflate: Option<Box<WriteDeflate>>,
}

/// Where encoded frames go: the write buffer, except (server role) a long payload, which stays in
/// the caller's slice and is written after the buffer.
pub(super) struct FrameOut {
    buf: Vec<u8>,
    allow_tail: bool,
    tail: bool,
}

impl Output for FrameOut {
    fn write_frame(&mut self, header: &[u8], payload: &[u8], mask: Option<[u8; 4]>) {
        if mask.is_none() && self.allow_tail && !self.tail && payload.len() >= ZERO_COPY_MIN {
            self.buf.extend_from_slice(header);
            self.tail = true;
        } else {
            self.buf.write_frame(header, payload, mask);
        }
    }
}

/// Where the encoder's frame goes when a prepared message's own frame is written in its place:
/// nowhere (server role: unmasked, with the same header). A client masks each frame with a fresh
/// key, so it never sends a prepared frame as it is.
struct InPlaceOf;

impl Output for InPlaceOf {
    fn write_frame(&mut self, _header: &[u8], _payload: &[u8], mask: Option<[u8; 4]>) {
        debug_assert!(mask.is_none(), "a prepared frame is unmasked");
    }
}

fn write_all_vectored<S: Write>(stream: &mut S, head: &[u8], tail: &[u8]) -> io::Result<()> {
    let (mut head, mut tail) = (head, tail);
    while !head.is_empty() {
        let n = match stream.write_vectored(&[IoSlice::new(head), IoSlice::new(tail)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n >= head.len() {
            tail = &tail[n - head.len()..];
            head = &[];
        } else {
            head = &head[n..];
        }
    }
    stream.write_all(tail)
}

impl<S: Stream> Shared<S> {
    /// Encodes with `encode` under both locks, then writes under `out` alone. `tail` is the payload
    /// the encoder was given, written from the caller's slice when the encoder left it out.
    pub(super) fn send(
        &self,
        deadline: Option<Option<Instant>>,
        tail: &[u8],
        encode: impl FnOnce(&mut ProtoSide, &mut FrameOut) -> Result<(), proto::SendError>,
    ) -> Result<(), Error> {
        let mut out = lock(&self.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        self.send_on(&mut out, deadline, tail, encode)
    }

    /// [`Shared::send`] with the `out` lock held (and its sticky error checked) by the caller.
    fn send_on(
        &self,
        out: &mut OutSide<S>,
        deadline: Option<Option<Instant>>,
        tail: &[u8],
        encode: impl FnOnce(&mut ProtoSide, &mut FrameOut) -> Result<(), proto::SendError>,
    ) -> Result<(), Error> {
        let mut frames = FrameOut {
            buf: std::mem::take(&mut out.buf),
            allow_tail: !tail.is_empty(),
            tail: false,
        };
        let encoded = encode(&mut lock(&self.proto), &mut frames);
        let result = match encoded {
            Ok(()) => {
                let tail = if frames.tail { tail } else { &[] };
                out.write(deadline, &frames.buf, tail)
            }
            Err(e) => Err(e.into()),
        };
        frames.buf.clear();
        if frames.buf.capacity() > 2 * self.write_buffer_size.max(ZERO_COPY_MIN) {
            // A large message passed through: an idle connection keeps only a small buffer.
            frames.buf = Vec::new();
        }
        out.buf = frames.buf;
        result
    }

    /// Sends a whole data message, compressed when permessage-deflate was negotiated, write
    /// compression is on and `DeflateConfig::min_size` allows it (and, without context takeover, it
    /// shrinks). With context takeover the compressor's window advances only once the message was
    /// encoded (a refused send leaves it as it was).
    pub(super) fn send_data(
        &self,
        kind: MessageKind,
        data: &[u8],
        allow_compress: bool,
    ) -> Result<(), Error> {
        let Some(n) = self.deflate.filter(|_| allow_compress) else {
            return self.send(None, data, |p, out| p.conn.send(out, kind, data, &p.cfg, 0));
        };
        let mut out = lock(&self.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        if !out.compress {
            return self.send_on(&mut out, None, data, |p, o| {
                p.conn.send(o, kind, data, &p.cfg, 0)
            });
        }
        self.send_deflated(&mut out, &n, data, |p, o, payload, rsv| {
            p.conn.send(o, kind, payload, &p.cfg, rsv)
        })
    }

    /// Sends `data` through the compressor, with the `out` lock held (and its sticky error checked)
    /// by the caller: compressed, with RSV1, when the compressor says so, else as it is.
    /// `encode(proto, frames, payload, rsv)` frames the message. With context takeover the
    /// compressor's window advances only once the message was encoded (a refused send leaves it as
    /// it was).
    pub(super) fn send_deflated(
        &self,
        out: &mut OutSide<S>,
        n: &Negotiated,
        data: &[u8],
        mut encode: impl FnMut(&mut ProtoSide, &mut FrameOut, &[u8], u8) -> Result<(), proto::SendError>,
    ) -> Result<(), Error> {
        let level = out.level;
        let mut wd = out
            .deflate
            .take()
            .unwrap_or_else(|| WriteDeflate::new(n, self.role, level));
        let mut cbuf = std::mem::take(&mut wd.buf);
        cbuf.clear();
        let result = if wd
            .state
            .compress_pending(data, &n.cfg, &mut wd.pool, &mut cbuf)
        {
            let mut encoded = false;
            let result = self.send_on(out, None, &cbuf, |p, o| {
                let r = encode(p, o, &cbuf, RSV1);
                encoded = r.is_ok();
                r
            });
            if encoded {
                wd.state.commit(data);
            }
            result
        } else {
            self.send_on(out, None, data, |p, o| encode(p, o, data, 0))
        };
        if cbuf.capacity() <= MAX_KEPT_BUFFER {
            wd.buf = cbuf;
        }
        out.deflate = Some(wd);
        result
    }

    /// Sends a prepared data message (server role): the message's shared frame, written from its
    /// buffer (no copy); or, with permessage-deflate negotiated and write compression on, its variant
    /// compressed without context takeover for this connection's window, made once and shared by
    /// every connection sending with that window (as the engine's workers do; gorilla compresses
    /// prepared messages too). Messages made with `PreparedMessage::uncompressed`, shorter than
    /// `min_size` or (`min_size` above 0) that do not shrink go as the plain frame. The encoder
    /// checks that a data message may go now, as for any other.
    pub(super) fn send_prepared(&self, pm: &PreparedMessage) -> Result<(), Error> {
        debug_assert_eq!(self.role, Role::Server, "a client masks each frame");
        let mut out = lock(&self.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        let compressed = match self.deflate {
            Some(n) if out.compress && pm.compressible() => {
                let level = out.level;
                let wd = out
                    .deflate
                    .get_or_insert_with(|| WriteDeflate::new(&n, self.role, level));
                let mut scratch = std::mem::take(&mut wd.buf);
                let frame = pm.deflated(
                    wd.state.variant(),
                    n.cfg.min_size,
                    &mut wd.pool,
                    &mut scratch,
                );
                if scratch.capacity() <= MAX_KEPT_BUFFER {
                    wd.buf = scratch;
                }
                frame
            }
            _ => None,
        };
        let (frame, rsv) = match &compressed {
            Some(frame) => (frame, RSV1),
            None => (pm.frame(), 0),
        };
        let encoded = {
            let mut p = lock(&self.proto);
            let ProtoSide { conn, cfg } = &mut *p;
            conn.send(&mut InPlaceOf, pm.kind(), pm.payload(), cfg, rsv)
        };
        if let Err(e) = encoded {
            return Err(e.into());
        }
        if compressed.is_some() {
            if let Some(wd) = &mut out.deflate {
                // The peer's window now holds a message ours does not (it was compressed alone):
                // ours is forgotten, so later messages refer only to what both hold.
                wd.state.sent_independent();
            }
        }
        out.write(None, &[], frame)
    }

    /// Writes bytes the reader's decoding produced (automatic replies).
    pub(super) fn send_raw(&self, bytes: &[u8]) -> Result<(), Error> {
        let mut out = lock(&self.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        out.write(None, bytes, &[])
    }
}

impl<S: Stream> OutSide<S> {
    /// Writes a whole frame sequence; any failure is sticky (the stream may hold half a frame).
    pub(super) fn write(
        &mut self,
        deadline: Option<Option<Instant>>,
        head: &[u8],
        tail: &[u8],
    ) -> Result<(), Error> {
        let deadline = deadline.unwrap_or(self.deadline);
        let stream = &self.stream;
        let result = apply_deadline(deadline, &mut self.timeout_set, |t| {
            stream.set_write_timeout(t)
        })
        .and_then(|()| {
            write_all_vectored(&mut self.stream, head, tail)
                .and_then(|()| self.stream.flush())
                .map_err(Error::from_io)
        });
        if let Err(e) = &result {
            self.err = Some(e.duplicate());
        }
        result
    }
}
