//! The read half of a blocking connection: [`Reader`], its settings and handlers, and the
//! [`MessageReader`] of a message read as it arrives. How frames are read, decoded and inflated is
//! recv.rs.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use super::recv::{Pending, ReadDeflate, ReadStream};
use super::shared::{lock, Shared};
use super::writer::Writer;
use super::{CloseCode, Error, MessageType, Stream};
use crate::proto;

/// The ping handler: gets a writer (to answer) and the ping's payload.
type PingHandler<S> = Box<dyn FnMut(&Writer<S>, &[u8]) -> Result<(), Error> + Send>;
/// The close handler: gets a writer, the peer's code and reason.
type CloseHandler<S> = Box<dyn FnMut(&Writer<S>, CloseCode, &str) -> Result<(), Error> + Send>;

/// The read half of a connection: messages, whole or streamed, and the control frames between them
/// (handled by the handlers as they pass). Not `Clone`: one reader at a time, as gorilla.
pub struct Reader<S> {
    pub(super) shared: Arc<Shared<S>>,
    pub(super) writer: Writer<S>,
    pub(super) stream: ReadStream<S>,
    pub(super) cfg: proto::Config,
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) pending: Pending,
    /// What the core inflates compressed messages with (`Some` when permessage-deflate was
    /// negotiated).
    pub(super) inflate: Option<Box<ReadDeflate>>,
    /// A message is being delivered and its last piece has not been decoded yet.
    pub(super) msg_open: bool,
    pub(super) deadline: Option<Instant>,
    pub(super) timeout_set: bool,
    /// A read failed: the connection is done for reading; every later read returns this.
    pub(super) err: Option<Error>,
    /// `None`: gorilla's defaults (pong the ping; nothing; nothing beyond the close echo).
    pub(super) ping: Option<PingHandler<S>>,
    pub(super) pong: Option<PingHandler<S>>,
    pub(super) close: Option<CloseHandler<S>>,
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

impl<S: Stream> Reader<S> {
    /// The read half of a new connection (from `Conn::new`): `buf` is the read buffer, its first
    /// `end` bytes read already (past the handshake); `own` is the stream's second handle, if it
    /// has one.
    pub(super) fn new(
        shared: Arc<Shared<S>>,
        writer: Writer<S>,
        own: Option<S>,
        cfg: proto::Config,
        buf: Vec<u8>,
        end: usize,
    ) -> Reader<S> {
        let inflate = shared
            .deflate
            .as_ref()
            .map(|n| ReadDeflate::new(n, shared.role));
        Reader {
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
            pending: Pending::default(),
            inflate,
            msg_open: false,
            deadline: None,
            timeout_set: false,
            err: None,
            ping: None,
            pong: None,
            close: None,
        }
    }

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
    /// its close frame had none) and reason before the read returns the
    /// [`CloseError`](super::CloseError).
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
