//! The write half of a blocking connection: [`Writer`], the [`MessageWriter`] of a message sent in
//! pieces, and gorilla's side of [`PreparedMessage`] (the engine's type).

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::shared::{lock, Shared};
use super::{format_close_message, CloseCode, Error, MessageType, Stream};
use crate::prepared::{sealed, PreparedKind, PreparedMessage};
use crate::proto::{self, parse_close_payload, DeflatePool, OpCode, Role, MAX_KEPT_BUFFER};

/// A message written through [`MessageWriter`] with compression on is compressed whole at
/// [`MessageWriter::close`] while it stays this short; a longer one goes out uncompressed, a frame
/// per full buffer (see [`Writer::next_writer`]).
pub const COMPRESS_WHOLE_MAX: usize = 1 << 20;

/// The write half of a connection: whole messages, message writers, control frames, prepared
/// messages, the write deadline. `Clone` (an `Arc`), `Send` and `Sync` for `Send` streams: any
/// thread may send; frames are never interleaved mid-frame.
pub struct Writer<S> {
    pub(super) shared: Arc<Shared<S>>,
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
    /// reader then returns the peer's close as a [`CloseError`](super::CloseError).
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

    /// Sends a message encoded once for many connections (gorilla's `WritePreparedMessage`). A
    /// server writes the message's shared frame as it is, or with compression negotiated and on,
    /// its compressed variant for this connection's window (compressed once per window among the
    /// connections it is sent to). A client masks each frame with a fresh key (RFC 6455 section
    /// 5.3), so it frames (and compresses) the payload for itself, as
    /// [`write_message`](Writer::write_message) would. Under `min_size`, or made with
    /// `PreparedMessage::uncompressed`, it goes uncompressed. A control message goes as
    /// [`write_control`](Writer::write_control) sends it.
    pub fn write_prepared_message(&self, pm: &PreparedMessage) -> Result<(), Error> {
        if pm.is_control() {
            return self.write_control(pm.message_type(), pm.payload(), None);
        }
        match self.shared.role {
            Role::Server => self.shared.send_prepared(pm),
            Role::Client => self
                .shared
                .send_data(pm.kind(), pm.payload(), pm.compressible()),
        }
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
        let _ = out.stream.finish_writes();
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
            p.conn.write_fragment(out, &data, first, fin, 0)
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
            p.conn.write_fragment(o, payload, first, true, rsv)
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

impl sealed::Sealed for MessageType {}

/// gorilla's `NewPreparedMessage(messageType, data)`: `PreparedMessage::new(MessageType::Text,
/// data)?`. A control type is accepted too (its payload at most 125 bytes, else
/// [`Error::Send`]); [`Writer::write_prepared_message`] sends it as a control frame.
impl PreparedKind for MessageType {
    type Prepared = Result<PreparedMessage, Error>;

    fn prepare(self, payload: &[u8]) -> Result<PreparedMessage, Error> {
        match self.data_kind() {
            Some(kind) => Ok(PreparedMessage::new(kind, payload)),
            None => {
                let opcode = OpCode::from_u8(self as u8).expect("a message type is an opcode");
                PreparedMessage::control(opcode, payload).map_err(Error::Send)
            }
        }
    }
}

impl PreparedMessage {
    /// The message type, in gorilla's terms (for a control message, its control type).
    pub fn message_type(&self) -> MessageType {
        match self.opcode() {
            OpCode::Close => MessageType::Close,
            OpCode::Ping => MessageType::Ping,
            OpCode::Pong => MessageType::Pong,
            _ => self.kind().into(),
        }
    }
}
