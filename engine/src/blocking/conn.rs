//! The blocking connection: a read half that feeds a read buffer to [`proto::Conn`] and a write half
//! shared behind locks.
//!
//! Two locks, never held across each other's I/O: `proto` guards the protocol state (decoder,
//! encoder, close handshake) and is held only to decode or encode, never while blocked on the
//! stream; `out` guards the write stream and is held while a frame is written. A writer takes `out`
//! then `proto`, encodes, drops `proto` and writes. The reader takes `proto` alone to decode, and
//! `out` only to send what decoding produced (the close echo, the close that fails the
//! connection). So a reader is never stuck behind a writer that is blocked on a slow peer, unless
//! it has something to send itself, and frames are always written whole.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{format_close_message, CloseCode, CloseError, Error, MessageType, Stream};
use crate::handshake::Request;
use crate::proto::{
    self, parse_close_payload, DeflateConfig, DeflateParams, DeflatePool, DeflateState, Encoder,
    Event, MessageKind, NoPool, Output, Role, RSV1,
};

/// How long the default ping handler may take to send its pong (gorilla's `writeWait`).
const PONG_WAIT: Duration = Duration::from_secs(1);

/// Payloads at least this long are written straight from the caller's slice (server role), not
/// copied into the write buffer.
const ZERO_COPY_MIN: usize = 1024;

/// Compression buffers larger than this are freed after use rather than kept for the next message.
const MAX_KEPT_BUFFER: usize = 1 << 20;

/// A message written through [`MessageWriter`] with compression on is compressed whole at
/// [`MessageWriter::close`] while it stays this short; a longer one goes out uncompressed, a frame
/// per full buffer (see [`Writer::next_writer`]).
pub const COMPRESS_WHOLE_MAX: usize = 1 << 20;

/// permessage-deflate as negotiated for a connection (fixed after the handshake).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Negotiated {
    pub(crate) params: DeflateParams,
    /// `min_size`, `level` (the initial one), `libdeflate`; `max_decompressed` caps the read limit.
    pub(crate) cfg: DeflateConfig,
}

/// The write side's compression state, created on the first compressed message.
struct WriteDeflate {
    state: DeflateState,
    pool: DeflatePool,
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

/// The read side's compression state, created on the first compressed message.
struct ReadDeflate {
    state: DeflateState,
    pool: DeflatePool,
    /// The inflated piece being handed out.
    out: Vec<u8>,
}

/// The ping handler: gets a writer (to answer) and the ping's payload.
type PingHandler<S> = Box<dyn FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send>;
/// The close handler: gets a writer, the peer's code and reason.
type CloseHandler<S> = Box<dyn FnMut(&Writer<S>, CloseCode, &str) -> Result<(), Error> + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a handler must not make the other half unusable: the state stays consistent
    // because every critical section finishes its update before anything can panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The protocol state, behind the `proto` lock.
struct ProtoSide {
    conn: proto::Conn,
    /// Send-side settings (role, frame size 0: a message is one frame unless written in pieces).
    cfg: proto::Config,
}

/// The write stream, behind the `out` lock.
struct OutSide<S> {
    stream: S,
    buf: Vec<u8>,
    deadline: Option<Instant>,
    /// A write timeout is set on the stream (so it must be cleared when there is no deadline).
    timeout_set: bool,
    /// A write failed: the stream may hold a partial frame, nothing more can be written.
    err: Option<Error>,
    /// Data messages are compressed (when negotiated; gorilla's `EnableWriteCompression`, on by
    /// default).
    compress: bool,
    /// Compression level, 0..=9.
    level: u8,
    /// Compression state (`None` until the first compressed message).
    deflate: Option<Box<WriteDeflate>>,
}

struct Shared<S> {
    proto: Mutex<ProtoSide>,
    out: Mutex<OutSide<S>>,
    role: Role,
    subprotocol: Option<String>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    write_buffer_size: usize,
    /// permessage-deflate, when negotiated.
    deflate: Option<Negotiated>,
}

/// Where encoded frames go: the write buffer, except (server role) a long payload, which stays in
/// the caller's slice and is written after the buffer.
struct FrameOut {
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

/// A prepared message's frame in place of the one the encoder would write (server role only; a
/// client masks each frame with a fresh key, so it encodes each time).
struct PreparedOut<'a> {
    buf: &'a mut Vec<u8>,
    frame: &'a [u8],
}

impl Output for PreparedOut<'_> {
    fn write_frame(&mut self, header: &[u8], payload: &[u8], mask: Option<[u8; 4]>) {
        match mask {
            None => self.buf.extend_from_slice(self.frame),
            Some(_) => self.buf.write_frame(header, payload, mask),
        }
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

/// Sets the stream's timeout for an operation that must end by `deadline`. Streams without timeouts
/// ignore deadlines (`set_*_deadline` refuses them up front).
fn apply_deadline(
    deadline: Option<Instant>,
    timeout_set: &mut bool,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> Result<(), Error> {
    let timeout = match deadline {
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            Some(left)
        }
        None if *timeout_set => None,
        None => return Ok(()),
    };
    match set(timeout) {
        Ok(()) => {
            *timeout_set = timeout.is_some();
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
        Err(e) => Err(Error::Io(e)),
    }
}

impl<S: Stream> Shared<S> {
    /// Encodes with `encode` under both locks, then writes under `out` alone. `tail` is the payload
    /// the encoder was given, written from the caller's slice when the encoder left it out.
    fn send(
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
    fn send_data(&self, kind: MessageKind, data: &[u8], allow_compress: bool) -> Result<(), Error> {
        let Some(n) = self.deflate.filter(|_| allow_compress) else {
            return self.send(None, data, |p, out| p.conn.send(out, kind, data, &p.cfg));
        };
        let mut out = lock(&self.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        if !out.compress {
            return self.send_on(&mut out, None, data, |p, o| {
                p.conn.send(o, kind, data, &p.cfg)
            });
        }
        self.send_deflated(&mut out, &n, data, |p, o, payload, rsv| {
            p.conn.send_with_rsv(o, kind, payload, &p.cfg, rsv)
        })
    }

    /// Sends `data` through the compressor, with the `out` lock held (and its sticky error checked)
    /// by the caller: compressed, with RSV1, when the compressor says so, else as it is.
    /// `encode(proto, frames, payload, rsv)` frames the message. With context takeover the
    /// compressor's window advances only once the message was encoded (a refused send leaves it as
    /// it was).
    fn send_deflated(
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

    /// Writes bytes the reader's decoding produced (automatic replies).
    fn send_raw(&self, bytes: &[u8]) -> Result<(), Error> {
        let mut out = lock(&self.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        out.write(None, bytes, &[])
    }
}

impl<S: Stream> OutSide<S> {
    /// Writes a whole frame sequence; any failure is sticky (the stream may hold half a frame).
    fn write(
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

/// The write half of a connection: whole messages, message writers, control frames, prepared
/// messages, the write deadline. `Clone` (an `Arc`), `Send` and `Sync` for `Send` streams: any
/// thread may send; frames are never interleaved mid-frame.
pub struct Writer<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Writer<S> {
    fn clone(&self) -> Self {
        Writer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for Writer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("role", &self.shared.role)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl<S: Stream> Writer<S> {
    /// Sends a whole message (gorilla's `WriteMessage`) as one frame. Control types go through
    /// [`write_control`](Writer::write_control) with no deadline.
    pub fn write_message(&self, kind: MessageType, data: &[u8]) -> Result<(), Error> {
        let Some(data_kind) = kind.data_kind() else {
            return self.write_control(kind, data, None);
        };
        self.shared.send_data(data_kind, data, true)
    }

    /// Sends a whole message uncompressed whatever was negotiated (the per-message opt-out: data
    /// that is already compressed, or that must not share a compression context with other
    /// messages because an attacker could learn a secret from the compressed sizes).
    pub fn write_message_uncompressed(&self, kind: MessageType, data: &[u8]) -> Result<(), Error> {
        let Some(data_kind) = kind.data_kind() else {
            return self.write_control(kind, data, None);
        };
        self.shared.send_data(data_kind, data, false)
    }

    /// Whether permessage-deflate was negotiated on this connection.
    pub fn compression(&self) -> bool {
        self.shared.deflate.is_some()
    }

    /// Turns compression of later data messages on or off (gorilla's `EnableWriteCompression`; on
    /// by default). Only matters when permessage-deflate was negotiated: received compressed
    /// messages are inflated either way.
    pub fn enable_write_compression(&self, enable: bool) {
        lock(&self.shared.out).compress = enable;
    }

    /// The compression level of later messages, 0 (stored) to 9 (best) (gorilla's
    /// `SetCompressionLevel`; default `DeflateConfig::level`, 1). Other values are refused.
    pub fn set_compression_level(&self, level: u8) -> Result<(), Error> {
        if level > 9 {
            return Err(Error::Unsupported("compression levels above 9"));
        }
        let mut out = lock(&self.shared.out);
        out.level = level;
        if let (Some(wd), Some(n)) = (&mut out.deflate, self.shared.deflate) {
            if wd.pool.level() != level {
                // The compressors are made for a level; the windows (context takeover) stay.
                wd.pool = DeflatePool::new(level);
                wd.pool.use_libdeflate(n.cfg.libdeflate);
            }
        }
        Ok(())
    }

    /// Sends a text message.
    pub fn write_text(&self, text: &str) -> Result<(), Error> {
        self.write_message(MessageType::Text, text.as_bytes())
    }

    /// Sends a control frame (gorilla's `WriteControl`), whatever else is going on: between the
    /// frames of a message being written in pieces, or from another thread than the writer's.
    /// `deadline` bounds the write (`None`: no bound). A close payload is a code and a reason
    /// ([`format_close_message`]; empty for none); sending it starts the close handshake: the
    /// reader then returns the peer's close as a [`CloseError`].
    pub fn write_control(
        &self,
        kind: MessageType,
        data: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        match kind {
            MessageType::Ping => self
                .shared
                .send(Some(deadline), &[], |p, out| p.conn.ping(out, data)),
            MessageType::Pong => self
                .shared
                .send(Some(deadline), &[], |p, out| p.conn.pong(out, data)),
            MessageType::Close => {
                if data.len() > 125 {
                    return Err(Error::Send(proto::SendError::ControlTooLong));
                }
                let (code, reason) = match parse_close_payload(data) {
                    Ok((CloseCode::NO_STATUS, _)) => (None, ""),
                    Ok((code, reason)) => (Some(code), reason),
                    Err(proto::Error::InvalidCloseCode(c)) => {
                        return Err(Error::Send(proto::SendError::InvalidCloseCode(c)))
                    }
                    Err(_) => {
                        return Err(Error::Send(proto::SendError::InvalidCloseCode(
                            data.first().copied().unwrap_or(0).into(),
                        )))
                    }
                };
                let now = Instant::now();
                self.shared.send(Some(deadline), &[], |p, out| {
                    p.conn.close(out, code, reason, now, &p.cfg)
                })
            }
            MessageType::Text | MessageType::Binary => {
                Err(Error::Unsupported("data messages through write_control"))
            }
        }
    }

    /// Sends the close frame for `code` and `reason` (shorthand for `write_control(Close, ...)`).
    pub fn write_close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.write_control(
            MessageType::Close,
            &format_close_message(code, reason),
            None,
        )
    }

    /// A writer for one message sent in pieces (gorilla's `NextWriter`): a frame goes out each time
    /// its buffer (the write buffer size) fills; [`MessageWriter::close`] (or dropping it) sends the
    /// last frame. Control frames may go out between its frames; another data message may not start
    /// until it is closed.
    ///
    /// With compression negotiated and on, the message is buffered and compressed whole at
    /// `close` (one frame with RSV1), as long as it stays under [`COMPRESS_WHOLE_MAX`] (1 MiB);
    /// once it grows past that, what is buffered goes out uncompressed and the rest follows
    /// uncompressed, a frame per full buffer, so memory stays bounded. `flush` sends nothing while
    /// the message may still be compressed whole.
    pub fn next_writer(&self, kind: MessageType) -> Result<MessageWriter<S>, Error> {
        let data_kind = kind
            .data_kind()
            .ok_or(Error::Unsupported("control frames through next_writer"))?;
        let compress = {
            let out = lock(&self.shared.out);
            let mut p = lock(&self.shared.proto);
            p.conn.begin_message(data_kind)?;
            out.compress && self.shared.deflate.is_some()
        };
        Ok(MessageWriter {
            writer: self.clone(),
            buf: Vec::with_capacity(self.shared.write_buffer_size.max(1)),
            frame_size: self.shared.write_buffer_size.max(1),
            compress,
            first: true,
            done: false,
        })
    }

    /// Sends a message encoded once for many connections (gorilla's `WritePreparedMessage`).
    pub fn write_prepared_message(&self, pm: &PreparedMessage) -> Result<(), Error> {
        let Some(kind) = pm.kind.data_kind() else {
            return self.write_control(pm.kind, &pm.data, None);
        };
        let mut out = lock(&self.shared.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        let mut buf = std::mem::take(&mut out.buf);
        let encoded = {
            let mut p = lock(&self.shared.proto);
            let ProtoSide { conn, cfg } = &mut *p;
            let mut prepared = PreparedOut {
                buf: &mut buf,
                frame: &pm.frame,
            };
            conn.send(&mut prepared, kind, &pm.data, cfg)
        };
        let result = match encoded {
            Ok(()) => out.write(None, &buf, &[]),
            Err(e) => Err(e.into()),
        };
        buf.clear();
        if buf.capacity() > 2 * self.shared.write_buffer_size.max(ZERO_COPY_MIN) {
            buf = Vec::new();
        }
        out.buf = buf;
        result
    }

    /// Sends `value` as JSON in a text message (gorilla's `WriteJSON`).
    #[cfg(feature = "json")]
    pub fn write_json<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        let data = serde_json::to_vec(value).map_err(Error::Json)?;
        self.write_message(MessageType::Text, &data)
    }

    /// The deadline for every later write (gorilla's `SetWriteDeadline`; `None`: none). After a
    /// write times out the connection cannot be written any more. Needs a stream with timeouts.
    pub fn set_write_deadline(&self, deadline: Option<Instant>) -> Result<(), Error> {
        let mut out = lock(&self.shared.out);
        if deadline.is_some() {
            match out.stream.set_write_timeout(None) {
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    return Err(Error::Unsupported("write deadlines"))
                }
                _ => out.timeout_set = false,
            }
        }
        out.deadline = deadline;
        Ok(())
    }

    /// Closes the stream without a close frame (gorilla's `Close`): both directions are shut down,
    /// which also ends a read blocked in another thread (for sockets). For a clean end, send a close
    /// frame first and read until the peer's close arrives.
    pub fn close(&self) -> Result<(), Error> {
        let mut out = lock(&self.shared.out);
        let _ = out.stream.flush();
        let result = out.stream.shutdown(Shutdown::Both).map_err(Error::Io);
        if out.err.is_none() {
            out.err = Some(Error::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "use of closed connection",
            )));
        }
        result
    }

    /// The subprotocol agreed during the handshake (gorilla's `Subprotocol`).
    pub fn subprotocol(&self) -> Option<&str> {
        self.shared.subprotocol.as_deref()
    }

    /// The local address, for sockets (gorilla's `LocalAddr`).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local
    }

    /// The peer's address, for sockets (gorilla's `RemoteAddr`).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared.peer
    }
}

/// A message being sent in pieces, from [`Writer::next_writer`] (gorilla's `NextWriter`): an
/// `io::Write` whose buffer goes out as a frame each time it fills; [`close`](MessageWriter::close)
/// ends the message. Dropping it without `close` also ends the message (errors are then lost).
pub struct MessageWriter<S: Stream> {
    writer: Writer<S>,
    buf: Vec<u8>,
    /// A frame goes out each time this much is buffered (uncompressed).
    frame_size: usize,
    /// The message is buffered to be compressed whole at `close`.
    compress: bool,
    first: bool,
    done: bool,
}

impl<S: Stream> std::fmt::Debug for MessageWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter")
            .field("buffered", &self.buf.len())
            .field("compress", &self.compress)
            .field("first", &self.first)
            .finish()
    }
}

impl<S: Stream> MessageWriter<S> {
    fn emit(&mut self, fin: bool) -> Result<(), Error> {
        if self.compress && fin {
            return self.emit_compressed();
        }
        let first = std::mem::replace(&mut self.first, false);
        let data = std::mem::take(&mut self.buf);
        let result = self.writer.shared.send(None, &data, |p, out| {
            p.conn.write_fragment(out, &data, first, fin)
        });
        self.buf = data;
        self.buf.clear();
        result
    }

    /// The whole message, buffered, goes out as one frame: compressed with RSV1 when it shrinks
    /// (or with context takeover), else as it is.
    fn emit_compressed(&mut self) -> Result<(), Error> {
        let shared = &self.writer.shared;
        let Some(n) = shared.deflate else {
            self.compress = false;
            return self.emit(true);
        };
        let first = std::mem::replace(&mut self.first, false);
        let data = std::mem::take(&mut self.buf);
        let mut out = lock(&shared.out);
        if let Some(e) = &out.err {
            return Err(e.duplicate());
        }
        let result = shared.send_deflated(&mut out, &n, &data, |p, o, payload, rsv| {
            p.conn.write_fragment_rsv(o, payload, first, true, rsv)
        });
        drop(out);
        self.buf = if data.capacity() <= MAX_KEPT_BUFFER {
            data
        } else {
            Vec::new()
        };
        self.buf.clear();
        result
    }

    /// Sends the last frame: the message is complete (gorilla's `Close` on the writer).
    pub fn close(mut self) -> Result<(), Error> {
        self.done = true;
        self.emit(true)
    }
}

impl<S: Stream> Write for MessageWriter<S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.compress {
            if self.buf.len() + data.len() <= COMPRESS_WHOLE_MAX {
                self.buf.extend_from_slice(data);
                return Ok(data.len());
            }
            // Too long to compress whole: uncompressed frames from here on.
            self.compress = false;
            if !self.buf.is_empty() {
                self.emit(false)?;
            }
            if self.buf.capacity() > MAX_KEPT_BUFFER {
                self.buf = Vec::with_capacity(self.frame_size);
            }
        }
        if self.buf.len() >= self.frame_size {
            self.emit(false)?;
        }
        let n = (self.frame_size - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Sends what is buffered as a (non-final) frame, if anything is (nothing while the message is
    /// buffered to be compressed whole).
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() && !self.compress {
            self.emit(false)?;
        }
        Ok(())
    }
}

impl<S: Stream> Drop for MessageWriter<S> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.emit(true);
        }
    }
}

/// A message encoded once and sent to many connections (gorilla's `PreparedMessage`). The server's
/// frame is built here, once; a client's frames are masked with a fresh key per send, so a client
/// encodes them each time.
#[derive(Clone, Debug)]
pub struct PreparedMessage {
    kind: MessageType,
    data: Arc<[u8]>,
    frame: Arc<[u8]>,
}

impl PreparedMessage {
    /// Prepares a message of any type (a control payload must be at most 125 bytes).
    pub fn new(kind: MessageType, data: &[u8]) -> Result<PreparedMessage, Error> {
        let mut frame = Vec::new();
        match kind.data_kind() {
            Some(data_kind) => {
                Encoder::new(Role::Server, 0).message(&mut frame, data_kind, data, 0, 0)?;
            }
            None if data.len() > 125 => return Err(Error::Send(proto::SendError::ControlTooLong)),
            None => {}
        }
        Ok(PreparedMessage {
            kind,
            data: data.into(),
            frame: frame.into(),
        })
    }

    /// The message type.
    pub fn kind(&self) -> MessageType {
        self.kind
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// Where the reader's stream is.
enum ReadStream<S> {
    /// A handle of its own ([`Stream::try_clone`]).
    Own(S),
    /// The writer's, read under its lock.
    Shared,
}

/// What a decoded event left for the reader, with the borrow of the decoder released.
enum Got {
    Nothing,
    Data {
        kind: MessageKind,
        /// Bytes of the read buffer (relative to the decoded input), or `None` when they were
        /// copied to the side buffer.
        range: Option<Range<usize>>,
        first: bool,
        last: bool,
    },
    /// A piece of a compressed message, still compressed (where as for `Data`).
    Compressed {
        kind: MessageKind,
        range: Option<Range<usize>>,
        first: bool,
        last: bool,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(CloseCode, String),
}

/// Which buffer pending payload is in.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Src {
    /// The read buffer.
    #[default]
    Buf,
    /// The side buffer.
    Side,
    /// The inflated piece (permessage-deflate).
    Inflated,
}

/// Payload waiting to be handed to the caller.
#[derive(Default)]
struct Pending {
    src: Src,
    range: Range<usize>,
}

/// The read half of a connection: messages, whole or streamed, and the control frames between them
/// (handled by the handlers as they pass). Not `Clone`: one reader at a time, as gorilla.
pub struct Reader<S> {
    shared: Arc<Shared<S>>,
    writer: Writer<S>,
    stream: ReadStream<S>,
    cfg: proto::Config,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    side: Vec<u8>,
    pending: Pending,
    /// Inflating (`None` until the first compressed message).
    inflate: Option<Box<ReadDeflate>>,
    /// Bytes of the current compressed message inflated so far (against the read limit).
    inflated_len: u64,
    /// A message is being delivered and its last piece has not been decoded yet.
    msg_open: bool,
    deadline: Option<Instant>,
    timeout_set: bool,
    /// A read failed: the connection is done for reading; every later read returns this.
    err: Option<Error>,
    /// `None`: gorilla's defaults (pong the ping; nothing; nothing beyond the close echo).
    ping: Option<PingHandler<S>>,
    pong: Option<PingHandler<S>>,
    close: Option<CloseHandler<S>>,
}

impl<S> std::fmt::Debug for Reader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("role", &self.shared.role)
            .field("buffered", &(self.end - self.start))
            .field("err", &self.err)
            .finish()
    }
}

/// gorilla's default ping handler: answer with a pong carrying the same data; a close already sent
/// or a slow peer is not an error of the read path.
fn default_ping<S: Stream>(w: &Writer<S>, data: &[u8]) -> Result<(), Error> {
    match w.write_control(MessageType::Pong, data, Some(Instant::now() + PONG_WAIT)) {
        Err(Error::CloseSent | Error::Timeout) => Ok(()),
        other => other,
    }
}

impl<S: Stream> Reader<S> {
    /// The next message, whole (gorilla's `ReadMessage`): its type (text or binary) and payload.
    /// Text is valid UTF-8. Control frames met on the way go to the handlers. After the peer's close
    /// the error is [`Error::Close`] with its code and reason.
    pub fn read_message(&mut self) -> Result<(MessageType, Vec<u8>), Error> {
        let kind = self.begin_message()?;
        let mut data = Vec::new();
        loop {
            let piece = self.pending_slice();
            data.extend_from_slice(piece);
            self.pending = Pending::default();
            if !self.msg_open {
                return Ok((kind, data));
            }
            self.next_piece()?;
        }
    }

    /// The next message as an `io::Read` (gorilla's `NextReader`), delivered piece by piece as its
    /// frames arrive: a message is never held whole, whatever its size. Read it to the end (`Ok(0)`);
    /// what is left unread is skipped by the next call.
    pub fn next_reader(&mut self) -> Result<(MessageType, MessageReader<'_, S>), Error> {
        let kind = self.begin_message()?;
        Ok((kind, MessageReader { reader: self }))
    }

    /// Reads a text message and parses it as JSON (gorilla's `ReadJSON`).
    #[cfg(feature = "json")]
    pub fn read_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, Error> {
        let (_, reader) = self.next_reader()?;
        serde_json::from_reader(reader).map_err(|e| {
            if e.is_io() {
                Error::from(io::Error::from(e))
            } else {
                Error::Json(e)
            }
        })
    }

    /// The largest message accepted (gorilla's `SetReadLimit`): beyond it the connection is closed
    /// with 1009 and the read returns [`Error::ReadLimit`]. Also bounds single frames. Checked on
    /// frame headers, before anything is stored.
    pub fn set_read_limit(&mut self, limit: u64) {
        self.cfg.max_message_size = limit;
        self.cfg.max_frame_size = limit;
    }

    /// The deadline for every later read (gorilla's `SetReadDeadline`; `None`: none). After a read
    /// times out the connection cannot be read any more. Needs a stream with timeouts.
    pub fn set_read_deadline(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        if deadline.is_some() {
            let probe = match &self.stream {
                ReadStream::Own(s) => s.set_read_timeout(None),
                ReadStream::Shared => lock(&self.shared.out).stream.set_read_timeout(None),
            };
            match probe {
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    return Err(Error::Unsupported("read deadlines"))
                }
                _ => self.timeout_set = false,
            }
        }
        self.deadline = deadline;
        Ok(())
    }

    /// Replaces the ping handler (gorilla's `SetPingHandler`). The default answers with a pong
    /// carrying the ping's data. An error it returns is returned by the read.
    pub fn set_ping_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send + 'static,
    ) {
        self.ping = Some(Box::new(handler));
    }

    /// Replaces the pong handler (gorilla's `SetPongHandler`). The default does nothing.
    pub fn set_pong_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send + 'static,
    ) {
        self.pong = Some(Box::new(handler));
    }

    /// Sets the close handler (gorilla's `SetCloseHandler`), called with the peer's code (1005 when
    /// its close frame had none) and reason before the read returns the [`CloseError`].
    ///
    /// Unlike gorilla, the reply is not the handler's job: the close frame echoing the peer's code
    /// (gorilla's default handler) is always sent first, because RFC 6455 section 5.5.1 says the
    /// endpoint "MUST send a Close frame in response"; the handler cannot send another one.
    pub fn set_close_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, CloseCode, &str) -> Result<(), Error> + Send + 'static,
    ) {
        self.close = Some(Box::new(handler));
    }

    /// The write half this reader answers through (for handlers and other threads).
    pub fn writer(&self) -> &Writer<S> {
        &self.writer
    }

    fn pending_slice(&self) -> &[u8] {
        let src = match self.pending.src {
            Src::Buf => &self.buf,
            Src::Side => &self.side,
            Src::Inflated => match &self.inflate {
                Some(d) => &d.out,
                None => &self.side,
            },
        };
        &src[self.pending.range.clone()]
    }

    /// Skips what is left of the current message and decodes up to the first piece of the next.
    fn begin_message(&mut self) -> Result<MessageType, Error> {
        self.pending = Pending::default();
        while self.msg_open {
            self.next_piece()?;
            self.pending = Pending::default();
        }
        loop {
            let (kind, first) = self.next_piece()?;
            if first {
                return Ok(kind.into());
            }
            // A piece of a message abandoned by an earlier error cannot be here: errors are sticky.
            self.pending = Pending::default();
        }
    }

    /// Decodes until the next piece of a data message, handling control frames on the way. The piece
    /// is left in `pending`; `msg_open` says whether more pieces follow. Returns its kind and whether
    /// it starts a message.
    fn next_piece(&mut self) -> Result<(MessageKind, bool), Error> {
        loop {
            if let Some(e) = &self.err {
                return Err(e.duplicate());
            }
            if self.start == self.end {
                if let Err(e) = self.fill() {
                    return Err(self.fail(e));
                }
            }
            let mut replies = Vec::new();
            let (n, got, failed) = {
                let mut p = lock(&self.shared.proto);
                let input = &mut self.buf[self.start..self.end];
                let base = input.as_ptr() as usize;
                let len = input.len();
                match p.conn.read_ext(input, &self.cfg, &mut replies, &mut NoPool) {
                    Ok((n, ev, compressed)) => {
                        let got = match ev {
                            None => Got::Nothing,
                            Some(Event::Message(m)) => piece(
                                m.kind(),
                                m.as_bytes(),
                                true,
                                true,
                                base,
                                len,
                                &mut self.side,
                            ),
                            Some(Event::Fragment {
                                kind,
                                data,
                                first,
                                last,
                            }) => piece(kind, data, first, last, base, len, &mut self.side),
                            Some(Event::Ping(d)) => Got::Ping(d.to_vec()),
                            Some(Event::Pong(d)) => Got::Pong(d.to_vec()),
                            Some(Event::Close { code, reason }) => {
                                Got::Close(code, reason.to_owned())
                            }
                        };
                        let got = match got {
                            Got::Data {
                                range, first, last, ..
                            } if compressed.is_some() => Got::Compressed {
                                kind: compressed.unwrap_or(MessageKind::Binary),
                                range,
                                first,
                                last,
                            },
                            other => other,
                        };
                        p.conn.recycle(&mut NoPool);
                        (n, got, None)
                    }
                    Err(e) => (len, Got::Nothing, Some(e)),
                }
            };
            let at = self.start;
            self.start += n;
            if !replies.is_empty() {
                // The close echo, or the close that fails the connection. If it cannot be written,
                // the read side still reports what happened on the wire.
                let _ = self.shared.send_raw(&replies);
            }
            if let Some(e) = failed {
                let err = match e {
                    proto::Error::MessageTooBig { .. } | proto::Error::FrameTooBig { .. } => {
                        Error::ReadLimit
                    }
                    other => Error::Protocol(other),
                };
                self.linger();
                return Err(self.fail(err));
            }
            match got {
                Got::Nothing => {}
                Got::Compressed {
                    kind,
                    range,
                    first,
                    last,
                } => {
                    let range = range.map(|r| at + r.start..at + r.end);
                    if let Err(e) = self.inflate_piece(kind, range, first, last) {
                        let mut replies = Vec::new();
                        lock(&self.shared.proto).conn.fail(&mut replies, &e);
                        if !replies.is_empty() {
                            let _ = self.shared.send_raw(&replies);
                        }
                        let err = match e {
                            proto::Error::MessageTooBig { .. } => Error::ReadLimit,
                            other => Error::Protocol(other),
                        };
                        self.linger();
                        return Err(self.fail(err));
                    }
                    self.msg_open = !last;
                    return Ok((kind, first));
                }
                Got::Data {
                    kind,
                    range,
                    first,
                    last,
                } => {
                    self.pending = match range {
                        Some(r) => Pending {
                            src: Src::Buf,
                            range: at + r.start..at + r.end,
                        },
                        None => Pending {
                            src: Src::Side,
                            range: 0..self.side.len(),
                        },
                    };
                    self.msg_open = !last;
                    return Ok((kind, first));
                }
                Got::Ping(data) => {
                    let handled = match &mut self.ping {
                        Some(handler) => handler(&self.writer, &data),
                        None => default_ping(&self.writer, &data),
                    };
                    if let Err(e) = handled {
                        return Err(self.fail(e));
                    }
                }
                Got::Pong(data) => {
                    let handled = match &mut self.pong {
                        Some(handler) => handler(&self.writer, &data),
                        None => Ok(()),
                    };
                    if let Err(e) = handled {
                        return Err(self.fail(e));
                    }
                }
                Got::Close(code, text) => {
                    let handled = match &mut self.close {
                        Some(handler) => handler(&self.writer, code, &text),
                        None => Ok(()),
                    };
                    self.linger();
                    let err = match handled {
                        Ok(()) => Error::Close(CloseError { code, text }),
                        Err(e) => e,
                    };
                    return Err(self.fail(err));
                }
            }
        }
    }

    /// Inflates a piece of a compressed message (in the read buffer at `range`, or in the side
    /// buffer) into the inflate buffer and leaves it pending. The read limit bounds the whole
    /// inflated message: a decompression bomb fails with 1009 after at most one byte past it.
    fn inflate_piece(
        &mut self,
        kind: MessageKind,
        range: Option<Range<usize>>,
        first: bool,
        last: bool,
    ) -> Result<(), proto::Error> {
        let Some(n) = self.shared.deflate else {
            return Err(proto::Error::CompressedDataInvalid);
        };
        let d = self.inflate.get_or_insert_with(|| {
            Box::new(ReadDeflate {
                state: DeflateState::new(n.params, self.shared.role),
                pool: DeflatePool::new(n.cfg.level),
                out: Vec::new(),
            })
        });
        if first {
            self.inflated_len = 0;
            if d.out.capacity() > MAX_KEPT_BUFFER {
                d.out = Vec::new();
            }
        }
        let limit = self.cfg.max_message_size.min(n.cfg.max_decompressed);
        let mut cfg = n.cfg;
        cfg.max_decompressed = limit.saturating_sub(self.inflated_len);
        let input = match &range {
            Some(r) => &self.buf[r.clone()],
            None => &self.side[..],
        };
        let ReadDeflate { state, pool, out } = &mut **d;
        let result = state.decompress_piece(kind, input, first, last, &cfg, pool, out);
        if let Err(proto::Error::MessageTooBig { .. }) = result {
            return Err(proto::Error::MessageTooBig {
                len: self.inflated_len + out.len() as u64,
                max: limit,
            });
        }
        result?;
        self.inflated_len += out.len() as u64;
        self.pending = Pending {
            src: Src::Inflated,
            range: 0..out.len(),
        };
        Ok(())
    }

    /// Records a read error as the connection's last word for reading.
    fn fail(&mut self, e: Error) -> Error {
        self.msg_open = false;
        self.pending = Pending::default();
        self.err = Some(e.duplicate());
        e
    }

    /// Reads more input. `pending` is empty, so the whole buffer can be reused.
    fn fill(&mut self) -> Result<(), Error> {
        self.start = 0;
        self.end = 0;
        let deadline = self.deadline;
        let n = loop {
            let result = match &mut self.stream {
                ReadStream::Own(s) => {
                    apply_deadline(deadline, &mut self.timeout_set, |t| s.set_read_timeout(t))?;
                    s.read(&mut self.buf)
                }
                ReadStream::Shared => {
                    let mut out = lock(&self.shared.out);
                    let s = &mut out.stream;
                    apply_deadline(deadline, &mut self.timeout_set, |t| s.set_read_timeout(t))?;
                    s.read(&mut self.buf)
                }
            };
            match result {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from_io(e)),
            }
        };
        if n == 0 {
            // gorilla reports a stream that ends without a close frame as close 1006.
            return Err(Error::Close(CloseError {
                code: CloseCode::ABNORMAL,
                text: "unexpected EOF".into(),
            }));
        }
        self.end = n;
        Ok(())
    }

    /// After the close handshake or a failure: shut our sending side down and read until the peer
    /// closes (bounded by the close timeout), so that our close frame is not lost to a reset caused
    /// by unread input. Streams without read timeouts are only shut down.
    fn linger(&mut self) {
        let limit = Instant::now() + self.cfg.close_timeout;
        let mut scratch = [0u8; 4096];
        let mut timeout_set = self.timeout_set;
        {
            let out = lock(&self.shared.out);
            let _ = out.stream.shutdown(Shutdown::Write);
        }
        loop {
            let result = match &mut self.stream {
                ReadStream::Own(s) => {
                    match apply_deadline(Some(limit), &mut timeout_set, |t| s.set_read_timeout(t)) {
                        Ok(()) if timeout_set => s.read(&mut scratch),
                        _ => break,
                    }
                }
                ReadStream::Shared => {
                    let mut out = lock(&self.shared.out);
                    let s = &mut out.stream;
                    match apply_deadline(Some(limit), &mut timeout_set, |t| s.set_read_timeout(t)) {
                        Ok(()) if timeout_set => s.read(&mut scratch),
                        _ => break,
                    }
                }
            };
            match result {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.timeout_set = timeout_set;
        self.start = 0;
        self.end = 0;
    }
}

/// Where a data piece's bytes are: inside the decoded input (a range relative to it), or copied to
/// `side` (never the case with streaming on, where data is always handed out of the input).
fn piece(
    kind: MessageKind,
    data: &[u8],
    first: bool,
    last: bool,
    base: usize,
    len: usize,
    side: &mut Vec<u8>,
) -> Got {
    let at = (data.as_ptr() as usize).wrapping_sub(base);
    let range = if data.is_empty() {
        Some(0..0)
    } else if at < len && at + data.len() <= len {
        Some(at..at + data.len())
    } else {
        side.clear();
        side.extend_from_slice(data);
        None
    };
    Got::Data {
        kind,
        range,
        first,
        last,
    }
}

/// One message being read, from [`Reader::next_reader`] (gorilla's `NextReader`): `Ok(0)` at its
/// end. Control frames that arrive between its frames go to the handlers as they pass; a protocol
/// error, the peer's close or a timeout come out as an `io::Error` wrapping the [`Error`]
/// (`Error::from` unwraps it).
pub struct MessageReader<'a, S: Stream> {
    reader: &'a mut Reader<S>,
}

impl<S: Stream> std::fmt::Debug for MessageReader<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageReader")
            .field("more", &self.reader.msg_open)
            .finish()
    }
}

impl<S: Stream> Read for MessageReader<'_, S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        loop {
            if !r.pending.range.is_empty() {
                let src = r.pending_slice();
                let n = src.len().min(out.len());
                out[..n].copy_from_slice(&src[..n]);
                r.pending.range.start += n;
                return Ok(n);
            }
            if !r.msg_open || out.is_empty() {
                return Ok(0);
            }
            r.next_piece().map_err(io::Error::from)?;
        }
    }
}

/// A blocking WebSocket connection (gorilla's `Conn`), from [`Upgrader::upgrade`](super::Upgrader)
/// or [`Dialer::dial`](super::Dialer): a [`Reader`] and a [`Writer`] in one value. Use it from one
/// thread, or [`split`](Conn::split) it for a reader thread and writer threads.
pub struct Conn<S> {
    reader: Reader<S>,
    request: Option<Request>,
}

impl<S> std::fmt::Debug for Conn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("reader", &self.reader)
            .field("request", &self.request)
            .finish()
    }
}

/// Buffer sizes of a new connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Buffers {
    pub(crate) read: usize,
    pub(crate) write: usize,
}

impl<S: Stream> Conn<S> {
    /// A connection over a stream whose handshake is already done (`cfg.role` says which end this
    /// is). Read and write buffers of 16 KiB.
    pub fn from_upgraded(stream: S, cfg: proto::Config) -> Conn<S> {
        Conn::new(
            stream,
            cfg,
            Vec::new(),
            None,
            None,
            Buffers {
                read: 16 * 1024,
                write: 16 * 1024,
            },
            None,
        )
    }

    pub(crate) fn new(
        stream: S,
        mut cfg: proto::Config,
        leftover: Vec<u8>,
        subprotocol: Option<String>,
        request: Option<Request>,
        sizes: Buffers,
        deflate: Option<Negotiated>,
    ) -> Conn<S> {
        // Pings go to the ping handler (whose default answers them); messages that do not arrive
        // whole in one read are delivered piece by piece, so a message is never held whole here.
        cfg.auto_pong = false;
        cfg.stream_fragments = true;
        let mut send_cfg = cfg.clone();
        send_cfg.max_send_frame_size = 0;
        let seed = {
            let mut b = [0u8; 8];
            // A failing OS RNG leaves a fixed seed: masking still works, keys are just predictable.
            let _ = getrandom::getrandom(&mut b);
            u64::from_ne_bytes(b)
        };
        let local = stream.local_addr();
        let peer = stream.peer_addr();
        let own = stream.try_clone().ok();
        let mut conn = proto::Conn::new(cfg.role, seed);
        if deflate.is_some() {
            conn.enable_compression();
        }
        let shared = Arc::new(Shared {
            proto: Mutex::new(ProtoSide {
                conn,
                cfg: send_cfg,
            }),
            out: Mutex::new(OutSide {
                stream,
                buf: Vec::new(),
                deadline: None,
                timeout_set: false,
                err: None,
                compress: true,
                level: deflate.map_or(1, |n| n.cfg.level.min(9)),
                deflate: None,
            }),
            role: cfg.role,
            subprotocol,
            local,
            peer,
            write_buffer_size: sizes.write.max(1),
            deflate,
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
        };
        let read_size = sizes.read.max(leftover.len()).max(1);
        let end = leftover.len();
        let mut buf = leftover;
        buf.resize(read_size, 0);
        let reader = Reader {
            shared,
            writer,
            stream: match own {
                Some(s) => ReadStream::Own(s),
                None => ReadStream::Shared,
            },
            cfg,
            buf,
            start: 0,
            end,
            side: Vec::new(),
            pending: Pending::default(),
            inflate: None,
            inflated_len: 0,
            msg_open: false,
            deadline: None,
            timeout_set: false,
            err: None,
            ping: None,
            pong: None,
            close: None,
        };
        Conn { reader, request }
    }

    /// Splits into the read half and the write half, for a reader thread and writer threads.
    pub fn split(self) -> (Reader<S>, Writer<S>) {
        let writer = self.reader.writer.clone();
        (self.reader, writer)
    }

    /// A handle on the write half for another thread (`write_control`, `close`, messages).
    pub fn writer(&self) -> Writer<S> {
        self.reader.writer.clone()
    }

    /// The read half.
    pub fn reader(&mut self) -> &mut Reader<S> {
        &mut self.reader
    }

    /// The upgrade request this connection answered (server side; gorilla's application keeps the
    /// `*http.Request`).
    pub fn request(&self) -> Option<&Request> {
        self.request.as_ref()
    }

    /// See [`Reader::read_message`].
    pub fn read_message(&mut self) -> Result<(MessageType, Vec<u8>), Error> {
        self.reader.read_message()
    }

    /// See [`Reader::next_reader`].
    pub fn next_reader(&mut self) -> Result<(MessageType, MessageReader<'_, S>), Error> {
        self.reader.next_reader()
    }

    /// See [`Reader::read_json`].
    #[cfg(feature = "json")]
    pub fn read_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.reader.read_json()
    }

    /// See [`Reader::set_read_limit`].
    pub fn set_read_limit(&mut self, limit: u64) {
        self.reader.set_read_limit(limit)
    }

    /// See [`Reader::set_read_deadline`].
    pub fn set_read_deadline(&mut self, deadline: Option<Instant>) -> Result<(), Error> {
        self.reader.set_read_deadline(deadline)
    }

    /// See [`Reader::set_ping_handler`].
    pub fn set_ping_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send + 'static,
    ) {
        self.reader.set_ping_handler(handler)
    }

    /// See [`Reader::set_pong_handler`].
    pub fn set_pong_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send + 'static,
    ) {
        self.reader.set_pong_handler(handler)
    }

    /// See [`Reader::set_close_handler`].
    pub fn set_close_handler(
        &mut self,
        handler: impl FnMut(&Writer<S>, CloseCode, &str) -> Result<(), Error> + Send + 'static,
    ) {
        self.reader.set_close_handler(handler)
    }

    /// See [`Writer::write_message`].
    pub fn write_message(&self, kind: MessageType, data: &[u8]) -> Result<(), Error> {
        self.reader.writer.write_message(kind, data)
    }

    /// See [`Writer::write_message_uncompressed`].
    pub fn write_message_uncompressed(&self, kind: MessageType, data: &[u8]) -> Result<(), Error> {
        self.reader.writer.write_message_uncompressed(kind, data)
    }

    /// See [`Writer::compression`].
    pub fn compression(&self) -> bool {
        self.reader.writer.compression()
    }

    /// See [`Writer::enable_write_compression`].
    pub fn enable_write_compression(&self, enable: bool) {
        self.reader.writer.enable_write_compression(enable)
    }

    /// See [`Writer::set_compression_level`].
    pub fn set_compression_level(&self, level: u8) -> Result<(), Error> {
        self.reader.writer.set_compression_level(level)
    }

    /// See [`Writer::write_text`].
    pub fn write_text(&self, text: &str) -> Result<(), Error> {
        self.reader.writer.write_text(text)
    }

    /// See [`Writer::write_json`].
    #[cfg(feature = "json")]
    pub fn write_json<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.reader.writer.write_json(value)
    }

    /// See [`Writer::next_writer`].
    pub fn next_writer(&self, kind: MessageType) -> Result<MessageWriter<S>, Error> {
        self.reader.writer.next_writer(kind)
    }

    /// See [`Writer::write_control`].
    pub fn write_control(
        &self,
        kind: MessageType,
        data: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        self.reader.writer.write_control(kind, data, deadline)
    }

    /// See [`Writer::write_close`].
    pub fn write_close(&self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.reader.writer.write_close(code, reason)
    }

    /// See [`Writer::write_prepared_message`].
    pub fn write_prepared_message(&self, pm: &PreparedMessage) -> Result<(), Error> {
        self.reader.writer.write_prepared_message(pm)
    }

    /// See [`Writer::set_write_deadline`].
    pub fn set_write_deadline(&self, deadline: Option<Instant>) -> Result<(), Error> {
        self.reader.writer.set_write_deadline(deadline)
    }

    /// See [`Writer::close`].
    pub fn close(&self) -> Result<(), Error> {
        self.reader.writer.close()
    }

    /// See [`Writer::subprotocol`].
    pub fn subprotocol(&self) -> Option<&str> {
        self.reader.shared.subprotocol.as_deref()
    }

    /// See [`Writer::local_addr`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.reader.shared.local
    }

    /// See [`Writer::peer_addr`].
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.reader.shared.peer
    }
}
