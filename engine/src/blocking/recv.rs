//! The read path of a blocking connection: input read into the read buffer (from the reader's own
//! handle or through the writer's lock), decoded (and compressed pieces inflated) by [`proto::Session`]
//! under the `proto` lock, control frames handed to the handlers, and the linger after the close.

use std::io;
use std::net::Shutdown;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::reader::Reader;
use super::shared::{apply_deadline, lock, Negotiated};
use super::writer::Writer;
use super::{CloseCode, CloseError, Error, MessageType, Stream};
use crate::proto::{
    self, DeflateConfig, DeflatePool, DeflateState, Event, Inflate, MessageKind, NoPool, Role,
};

/// How long the default ping handler may take to send its pong (gorilla's `writeWait`).
const PONG_WAIT: Duration = Duration::from_secs(1);

/// The read side's compression state (the inflater and windows are allocated on the first
/// compressed message), lent to the protocol core for each read.
pub(super) struct ReadDeflate {
    state: DeflateState,
    cfg: DeflateConfig,
    pool: DeflatePool,
    /// Where the core inflates a piece; the piece being handed out.
    out: Vec<u8>,
}

impl ReadDeflate {
    pub(super) fn new(n: &Negotiated, role: Role) -> Box<Self> {
        Box::new(ReadDeflate {
            state: DeflateState::new(n.params, role),
            cfg: n.cfg,
            pool: DeflatePool::new(n.cfg.level),
            out: Vec::new(),
        })
    }

    fn lend(&mut self) -> Inflate<'_, '_> {
        Inflate {
            state: &mut self.state,
            cfg: &self.cfg,
            pool: &mut self.pool,
            buf: &mut self.out,
        }
    }
}

/// Where the reader's stream is.
pub(super) enum ReadStream<S> {
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
        /// Bytes of the read buffer (relative to the decoded input), or `None`: the piece the core
        /// inflated, all of the inflate buffer.
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
    /// The inflated piece (permessage-deflate).
    Inflated,
}

/// Payload waiting to be handed to the caller.
#[derive(Default)]
pub(super) struct Pending {
    src: Src,
    pub(super) range: Range<usize>,
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
    pub(super) fn pending_slice(&self) -> &[u8] {
        let src: &[u8] = match (self.pending.src, &self.inflate) {
            (Src::Buf, _) => &self.buf,
            (Src::Inflated, Some(d)) => &d.out,
            (Src::Inflated, None) => &[],
        };
        &src[self.pending.range.clone()]
    }

    /// Skips what is left of the current message and decodes up to the first piece of the next.
    pub(super) fn begin_message(&mut self) -> Result<MessageType, Error> {
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
    pub(super) fn next_piece(&mut self) -> Result<(MessageKind, bool), Error> {
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
                let inflate = self.inflate.as_deref_mut().map(ReadDeflate::lend);
                match p
                    .conn
                    .read(input, &self.cfg, &mut replies, &mut NoPool, inflate)
                {
                    Ok((n, ev)) => {
                        let got = match ev {
                            None => Got::Nothing,
                            Some(Event::Message(m)) => {
                                piece(m.kind(), m.as_bytes(), true, true, base, len)
                            }
                            Some(Event::Fragment {
                                kind,
                                data,
                                first,
                                last,
                            }) => piece(kind, data, first, last, base, len),
                            Some(Event::Ping(d)) => Got::Ping(d.to_vec()),
                            Some(Event::Pong(d)) => Got::Pong(d.to_vec()),
                            Some(Event::Close { code, reason }) => {
                                Got::Close(code, reason.to_owned())
                            }
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
                // A protocol error, or a compressed message that does not inflate (1007) or
                // inflates past the read limit (1009): the core queued the close.
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
                            src: Src::Inflated,
                            range: 0..self.inflate.as_ref().map_or(0, |d| d.out.len()),
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
            let mut out = lock(&self.shared.out);
            let _ = out.stream.finish_writes();
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

/// Where a data piece's bytes are: inside the decoded input (a range relative to it), or else in the
/// inflate buffer, all of it (the core inflated them; with streaming on, which the blocking API
/// always has, nothing else is handed out of the input).
fn piece(kind: MessageKind, data: &[u8], first: bool, last: bool, base: usize, len: usize) -> Got {
    let at = (data.as_ptr() as usize).wrapping_sub(base);
    let range = if data.is_empty() {
        Some(0..0)
    } else if at < len && at + data.len() <= len {
        Some(at..at + data.len())
    } else {
        None
    };
    Got::Data {
        kind,
        range,
        first,
        last,
    }
}
