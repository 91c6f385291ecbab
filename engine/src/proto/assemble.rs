//! The receive path: frame headers, in-place unmasking, message assembly and streaming UTF-8
//! validation (RFC 6455 sections 5.4 and 8.1).
//!
//! [`Decoder::decode`] takes the bytes the caller has just read and always makes progress: it consumes
//! everything up to the next event. A single-frame message wholly inside the input is unmasked in place
//! and handed out as a borrowed slice (zero copy). Only fragmented messages, and frames split across
//! reads, are copied, into an assembly buffer taken from the caller's [`BufferPool`]. An incomplete
//! header (at most 13 bytes) is the only thing the decoder keeps inline; so the caller never has to keep
//! leftover input of its own. A compressed message (RSV1, permessage-deflate) is inflated through the
//! [`Inflate`] the caller lends, into its buffer: events always hold plain messages of their real kind.

use super::close::parse_close_payload;
use super::deflate::Inflate;
use super::error::{CloseCode, Error};
use super::frame::{FrameHeader, HeaderRules, OpCode, MAX_HEADER_LEN, RSV1};
use surge_simd::{apply_mask, Utf8Stream};

/// The kind of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (opcode 0x1).
    Text,
    /// Binary data (opcode 0x2).
    Binary,
}

impl MessageKind {
    /// The opcode of the first frame of such a message.
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// A whole data message, borrowed from the input, the assembly buffer or (inflated) the buffer of
/// the caller's [`Inflate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, already validated as UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
    /// The message kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
        }
    }
}

/// What the peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message.
    Message(Message<'a>),
    /// A piece of a message delivered piece by piece (only with `stream_fragments`). Text pieces are
    /// validated as a stream: a piece may end inside a code point that the next piece completes.
    /// A piece of a compressed message is inflated (and may be empty where its frame was not).
    Fragment {
        /// The message's kind.
        kind: MessageKind,
        /// The bytes of this piece.
        data: &'a [u8],
        /// First piece of the message.
        first: bool,
        /// Last piece of the message.
        last: bool,
    },
    /// A ping with its application data.
    Ping(&'a [u8]),
    /// A pong with its application data.
    Pong(&'a [u8]),
    /// A close frame: its code (1005 when it had no body) and its reason.
    Close {
        /// The status code; [`CloseCode::NO_STATUS`] when the frame had no body.
        code: CloseCode,
        /// The reason, validated as UTF-8.
        reason: &'a str,
    },
}

/// Where assembly buffers come from and go back to. The engine keeps one pool per worker, so an idle
/// connection holds no buffer.
pub trait BufferPool {
    /// An empty buffer (any capacity).
    fn take(&mut self) -> Vec<u8>;
    /// A buffer that is no longer needed.
    fn give(&mut self, buf: Vec<u8>);
}

/// A pool that allocates on demand and frees on return.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPool;

impl BufferPool for NoPool {
    fn take(&mut self) -> Vec<u8> {
        Vec::new()
    }
    fn give(&mut self, _buf: Vec<u8>) {}
}

/// Receive-side settings, shared by all connections of a worker (not stored per connection).
#[derive(Clone, Copy, Debug)]
pub struct DecoderConfig {
    /// Header rules: role, negotiated RSV bits, maximum frame size.
    pub rules: HeaderRules,
    /// The largest message accepted, counted before anything is copied (1009 beyond it).
    pub max_message_size: u64,
    /// The most frames one data message may have, its first included (1009 beyond it; a limit
    /// under 1 counts as 1). Without it, 0-byte continuation frames would keep a message open for
    /// ever without reaching `max_message_size`.
    pub max_fragments: u32,
    /// Deliver messages that are not wholly in one input buffer piece by piece
    /// ([`Event::Fragment`]) instead of assembling them.
    pub stream_fragments: bool,
}

/// What the loop found, recorded as positions so that the borrow is taken once, after the loop.
enum Ready {
    Input {
        start: usize,
        end: usize,
        kind: MessageKind,
    },
    Assembled(MessageKind),
    Fragment {
        start: usize,
        end: usize,
        kind: MessageKind,
        first: bool,
        last: bool,
    },
    Control {
        start: usize,
        end: usize,
        opcode: OpCode,
    },
    ControlBuffered(OpCode),
}

/// Assembly-buffer bytes that belonged to the event last handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Settle {
    #[default]
    Nothing,
    /// A whole assembled message.
    All,
    /// A control payload behind `ctrl_at`.
    Control,
}

/// Receive state of one connection. Small (no inline payload storage) and allocation-free when idle.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of a header split across reads.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    /// A frame header has been parsed and `remaining` payload bytes are still to come.
    in_frame: bool,
    frame_op: Option<OpCode>,
    frame_fin: bool,
    /// The masking key of the frame in progress, rotated as its payload is unmasked so that it
    /// applies from the next byte (all zeros for an unmasked frame: XOR with 0 changes nothing,
    /// so no flag says whether there was one, nor a phase where the key stands).
    mask: [u8; 4],
    remaining: u64,
    /// The data message in progress (fragmented, or a frame split across reads).
    msg: Option<MessageKind>,
    /// The message in progress (or just delivered) was marked compressed (RSV1 on its first frame).
    msg_compressed: bool,
    /// The message in progress is delivered piece by piece.
    streaming: bool,
    first_piece: bool,
    /// Frames of the message in progress so far (see [`DecoderConfig::max_fragments`]).
    msg_frames: u32,
    msg_len: u64,
    utf8: Utf8Stream,
    /// Assembly buffer for the message in progress; empty and without capacity when idle.
    assembly: Vec<u8>,
    /// What to drop from the assembly buffer once the last event is done with.
    settle: Settle,
    /// Where the payload of a control frame split across reads starts in the assembly buffer
    /// (behind the bytes of a message in progress, if any): one buffer serves both.
    ctrl_at: usize,
    /// A close frame was received: nothing after it is read.
    closed: bool,
    /// We sent a close: data messages are consumed without being reported.
    discard: bool,
}

impl Decoder {
    /// A decoder in its initial state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a close frame was received (further input is ignored).
    pub fn close_received(&self) -> bool {
        self.closed
    }

    /// From now on, data messages are consumed and checked but not reported (control frames still are).
    pub fn discard_data(&mut self) {
        self.discard = true;
    }

    /// Whether a message or frame is partly received.
    pub fn is_idle(&self) -> bool {
        self.msg.is_none() && !self.in_frame && self.hdr_len == 0
    }

    /// Heap bytes this decoder holds: the capacity of its assembly buffer (a message or control
    /// frame partly received; 0 once [`Decoder::recycle`] has run between messages). What a peer
    /// can make a connection hold by trickling a message in, for a caller's memory budget.
    pub fn held_bytes(&self) -> usize {
        self.assembly.capacity()
    }

    /// Gives the assembly buffers back to `pool` when no message is in progress, so that an idle
    /// connection holds no buffer. The caller does this once it is done with the events of a read.
    pub fn recycle(&mut self, pool: &mut impl BufferPool) {
        self.settle();
        let control_pending = self.in_frame && self.frame_op.is_some_and(OpCode::is_control);
        if self.msg.is_none() && !control_pending && self.assembly.capacity() != 0 {
            let mut buf = std::mem::take(&mut self.assembly);
            buf.clear();
            pool.give(buf);
        }
    }

    /// Drops the bytes of the event last handed out from the assembly buffer.
    fn settle(&mut self) {
        match std::mem::take(&mut self.settle) {
            Settle::Nothing => {}
            Settle::All => self.assembly.clear(),
            Settle::Control => self.assembly.truncate(self.ctrl_at),
        }
    }

    /// Consumes bytes from `input` up to and including the next event. Returns how many bytes were
    /// consumed and the event, if one is complete; `(input.len(), None)` when all of the input was taken
    /// in without completing one. Payloads are unmasked in place in `input`.
    ///
    /// A compressed data message (RSV1 on its first frame, allowed by `cfg.rules`) is inflated
    /// through `inflate` into its buffer, which the event then borrows: whole, or piece by piece
    /// when it is streamed. Inflating fails with [`Error::CompressedDataInvalid`] (1007; also when
    /// no `inflate` is given), [`Error::MessageTooBig`] (1009: past `max_decompressed` or
    /// `max_message_size`, whichever is smaller) or [`Error::InvalidUtf8`] (1007). Without a
    /// compressed message `inflate` is not touched.
    ///
    /// After an error the connection must be failed: the decoder's state is no longer meaningful.
    pub fn decode<'a>(
        &'a mut self,
        input: &'a mut [u8],
        cfg: &DecoderConfig,
        pool: &mut impl BufferPool,
        inflate: Option<Inflate<'_, 'a>>,
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        if self.closed {
            // "the endpoint MUST NOT ... after receiving a Close frame" process more data: it is discarded.
            return Ok((input.len(), None));
        }
        self.settle();
        let mut pos = 0;
        let ready = loop {
            if !self.in_frame {
                let (h, n) = match self.parse_header(input, pos, cfg)? {
                    Some(found) => found,
                    None => return Ok((input.len(), None)),
                };
                pos += n;
                let avail = (input.len() - pos) as u64;
                if h.opcode.is_control() {
                    if h.len <= avail {
                        let (start, end) = (pos, pos + h.len as usize);
                        if let Some(key) = h.mask {
                            apply_mask(&mut input[start..end], key, 0);
                        }
                        pos = end;
                        break Ready::Control {
                            start,
                            end,
                            opcode: h.opcode,
                        };
                    }
                    if self.assembly.capacity() == 0 {
                        self.assembly = pool.take();
                        self.assembly.clear();
                    }
                    self.ctrl_at = self.assembly.len();
                } else {
                    let kind = self.check_data_header(&h, cfg)?;
                    if self.msg.is_none() && h.fin && h.len <= avail {
                        // Zero copy: the whole message is in the input.
                        let (start, end) = (pos, pos + h.len as usize);
                        if let Some(key) = h.mask {
                            apply_mask(&mut input[start..end], key, 0);
                        }
                        pos = end;
                        if self.discard {
                            continue;
                        }
                        break Ready::Input { start, end, kind };
                    }
                    if self.msg.is_none() {
                        self.msg = Some(kind);
                        self.msg_len = 0;
                        self.streaming = cfg.stream_fragments;
                        self.first_piece = true;
                        self.utf8.reset();
                    }
                }
                self.in_frame = true;
                self.frame_op = Some(h.opcode);
                self.frame_fin = h.fin;
                self.mask = h.mask.unwrap_or_default();
                self.remaining = h.len;
            }

            // Payload of the current frame, as much as this input holds.
            let take = self.remaining.min((input.len() - pos) as u64) as usize;
            let (start, end) = (pos, pos + take);
            if self.mask != [0; 4] {
                apply_mask(&mut input[start..end], self.mask, 0);
                self.mask.rotate_left(take % 4);
            }
            self.remaining -= take as u64;
            pos = end;
            let frame_done = self.remaining == 0;
            let opcode = self.frame_op.unwrap_or(OpCode::Binary);
            if opcode.is_control() {
                self.assembly.extend_from_slice(&input[start..end]);
                if !frame_done {
                    return Ok((pos, None));
                }
                self.in_frame = false;
                self.settle = Settle::Control;
                break Ready::ControlBuffered(opcode);
            }

            let kind = self.msg.unwrap_or(MessageKind::Binary);
            self.msg_len += take as u64;
            if kind == MessageKind::Text && !self.msg_compressed {
                // Fail fast: invalid UTF-8 is reported as soon as it arrives (Autobahn group 6).
                self.utf8
                    .feed(&input[start..end])
                    .map_err(|_| Error::InvalidUtf8)?;
            }
            let msg_done = frame_done && self.frame_fin;
            if frame_done {
                self.in_frame = false;
            }
            if msg_done && kind == MessageKind::Text && !self.msg_compressed {
                self.utf8.finish().map_err(|_| Error::InvalidUtf8)?;
            }
            if self.streaming {
                if msg_done {
                    self.msg = None;
                }
                if (take > 0 || msg_done) && !self.discard {
                    let first = std::mem::replace(&mut self.first_piece, false);
                    break Ready::Fragment {
                        start,
                        end,
                        kind,
                        first,
                        last: msg_done,
                    };
                }
            } else {
                if self.assembly.capacity() == 0 {
                    self.assembly = pool.take();
                    self.assembly.clear();
                }
                self.assembly.extend_from_slice(&input[start..end]);
                if msg_done {
                    self.msg = None;
                    if self.discard {
                        self.assembly.clear();
                        continue;
                    }
                    self.settle = Settle::All;
                    break Ready::Assembled(kind);
                }
            }
            if !frame_done {
                debug_assert_eq!(pos, input.len());
                return Ok((pos, None));
            }
        };

        let input: &'a [u8] = input;
        let this: &'a mut Self = self;
        let compressed = this.msg_compressed;
        let max = cfg.max_message_size;
        let event = match ready {
            Ready::Input { start, end, kind } => {
                Event::Message(message(kind, &input[start..end], compressed, inflate, max)?)
            }
            Ready::Assembled(kind) => {
                Event::Message(message(kind, &this.assembly, compressed, inflate, max)?)
            }
            Ready::Fragment {
                start,
                end,
                kind,
                first,
                last,
            } => {
                let mut data = &input[start..end];
                if compressed {
                    let inflate = inflate.ok_or(Error::CompressedDataInvalid)?;
                    data = inflate.piece(kind, data, first, last, max)?;
                }
                Event::Fragment {
                    kind,
                    data,
                    first,
                    last,
                }
            }
            Ready::Control { start, end, opcode } => {
                control_event(&mut this.closed, opcode, &input[start..end])?
            }
            Ready::ControlBuffered(opcode) => {
                control_event(&mut this.closed, opcode, &this.assembly[this.ctrl_at..])?
            }
        };
        Ok((pos, Some(event)))
    }

    /// Parses the next header, from the input or completing one split across reads. `None`: the input
    /// is exhausted (its tail kept inline).
    fn parse_header(
        &mut self,
        input: &[u8],
        pos: usize,
        cfg: &DecoderConfig,
    ) -> Result<Option<(FrameHeader, usize)>, Error> {
        let rest = &input[pos..];
        if self.hdr_len == 0 {
            return match FrameHeader::parse(rest, &cfg.rules)? {
                Some(found) => Ok(Some(found)),
                None => {
                    // An incomplete header is at most 13 bytes.
                    self.hdr[..rest.len()].copy_from_slice(rest);
                    self.hdr_len = rest.len() as u8;
                    Ok(None)
                }
            };
        }
        let have = self.hdr_len as usize;
        let take = (MAX_HEADER_LEN - have).min(rest.len());
        self.hdr[have..have + take].copy_from_slice(&rest[..take]);
        match FrameHeader::parse(&self.hdr[..have + take], &cfg.rules)? {
            Some((h, n)) => {
                self.hdr_len = 0;
                // The first `have` bytes did not hold a whole header, so n > have.
                Ok(Some((h, n - have)))
            }
            None => {
                // Fewer than 14 bytes in all, so `take` was the whole rest.
                self.hdr_len = (have + take) as u8;
                Ok(None)
            }
        }
    }

    /// Message-level rules for a data frame header (5.4) and the size limit, checked before any byte
    /// of its payload is stored.
    fn check_data_header(
        &mut self,
        h: &FrameHeader,
        cfg: &DecoderConfig,
    ) -> Result<MessageKind, Error> {
        let kind = match (h.opcode, self.msg) {
            // "a fragmented message consists of a single frame with the FIN bit clear and an opcode
            // other than 0, followed by zero or more frames with the FIN bit clear and the opcode set
            // to 0, and terminated by a single frame with the FIN bit set and an opcode of 0" (5.4)
            (OpCode::Continuation, None) => return Err(Error::ContinuationWithoutStart),
            (OpCode::Continuation, Some(kind)) => {
                if h.rsv & RSV1 != 0 {
                    return Err(Error::CompressedContinuation);
                }
                kind
            }
            (_, Some(_)) => return Err(Error::DataFrameInsideFragmented),
            (OpCode::Text, None) => MessageKind::Text,
            (_, None) => MessageKind::Binary,
        };
        if h.opcode != OpCode::Continuation {
            self.msg_compressed = h.rsv & RSV1 != 0;
        }
        let frames = if self.msg.is_some() {
            self.msg_frames.saturating_add(1)
        } else {
            1
        };
        if frames > cfg.max_fragments.max(1) {
            return Err(Error::TooManyFragments {
                max: cfg.max_fragments.max(1),
            });
        }
        self.msg_frames = frames;
        let total = if self.msg.is_some() { self.msg_len } else { 0 }.saturating_add(h.len);
        if total > cfg.max_message_size {
            return Err(Error::MessageTooBig {
                len: total,
                max: cfg.max_message_size,
            });
        }
        Ok(kind)
    }
}

/// A whole message: text validated as UTF-8, or (compressed) inflated through `inflate`.
fn message<'a>(
    kind: MessageKind,
    data: &'a [u8],
    compressed: bool,
    inflate: Option<Inflate<'_, 'a>>,
    max_message_size: u64,
) -> Result<Message<'a>, Error> {
    if compressed {
        let inflate = inflate.ok_or(Error::CompressedDataInvalid)?;
        return inflate.message(kind, data, max_message_size);
    }
    Ok(match kind {
        MessageKind::Text => {
            Message::Text(simdutf8::basic::from_utf8(data).map_err(|_| Error::InvalidUtf8)?)
        }
        MessageKind::Binary => Message::Binary(data),
    })
}

fn control_event<'a>(
    closed: &mut bool,
    opcode: OpCode,
    payload: &'a [u8],
) -> Result<Event<'a>, Error> {
    Ok(match opcode {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        _ => {
            let (code, reason) = parse_close_payload(payload)?;
            *closed = true;
            Event::Close { code, reason }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::Role;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// One masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&KEY);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        out
    }

    fn config(max_fragments: u32, stream_fragments: bool) -> DecoderConfig {
        DecoderConfig {
            rules: HeaderRules {
                role: Role::Server,
                allowed_rsv: 0,
                max_frame_size: 1 << 20,
            },
            max_message_size: 1 << 20,
            max_fragments,
            stream_fragments,
        }
    }

    /// What came out of feeding `input` in pieces of `step` bytes: messages (text and binary as
    /// bytes), pieces, control payloads, or the error that ended it.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Msg(Vec<u8>),
        Piece(Vec<u8>, bool),
        Ping(Vec<u8>),
        Err(Error),
    }

    fn feed(input: &[u8], step: usize, cfg: &DecoderConfig) -> Vec<Out> {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            let mut buf = chunk.to_vec();
            let mut pos = 0;
            while pos < buf.len() {
                match d.decode(&mut buf[pos..], cfg, &mut NoPool, None) {
                    Ok((n, ev)) => {
                        pos += n;
                        match ev {
                            Some(Event::Message(m)) => got.push(Out::Msg(m.as_bytes().to_vec())),
                            Some(Event::Fragment { data, last, .. }) => {
                                got.push(Out::Piece(data.to_vec(), last))
                            }
                            Some(Event::Ping(p)) => got.push(Out::Ping(p.to_vec())),
                            Some(other) => panic!("unexpected {other:?}"),
                            None => {}
                        }
                    }
                    Err(e) => {
                        got.push(Out::Err(e));
                        return got;
                    }
                }
            }
            d.recycle(&mut NoPool);
        }
        got
    }

    /// A text message "ab" in `frames` frames: "a", then 0-byte continuations, then "b" (fin).
    fn message_of(frames: u32) -> Vec<u8> {
        assert!(frames >= 2);
        let mut out = frame(false, 1, b"a");
        for _ in 0..frames - 2 {
            out.extend(frame(false, 0, b""));
        }
        out.extend(frame(true, 0, b"b"));
        out
    }

    #[test]
    fn fragment_limit_allows_exactly_the_limit() {
        let cfg = config(100, false);
        let mut input = message_of(100);
        // The count starts again with each message.
        input.extend(message_of(100));
        input.extend(frame(true, 2, b"one"));
        for step in [input.len(), 7, 1] {
            assert_eq!(
                feed(&input, step, &cfg),
                vec![
                    Out::Msg(b"ab".to_vec()),
                    Out::Msg(b"ab".to_vec()),
                    Out::Msg(b"one".to_vec())
                ],
                "in pieces of {step}"
            );
        }
    }

    #[test]
    fn fragment_limit_fails_one_frame_past_it_with_1009() {
        let cfg = config(100, false);
        let input = message_of(101);
        for step in [input.len(), 5, 1] {
            let got = feed(&input, step, &cfg);
            assert_eq!(
                got,
                vec![Out::Err(Error::TooManyFragments { max: 100 })],
                "in pieces of {step}"
            );
        }
        assert_eq!(
            Error::TooManyFragments { max: 100 }.close_code(),
            CloseCode::TOO_BIG
        );
    }

    #[test]
    fn endless_empty_continuations_end_at_the_limit() {
        // The attack: a message that starts and then only ever sends 0-byte continuations. It
        // never reaches the size limit; the frame count ends it.
        let cfg = config(1000, false);
        let mut input = frame(false, 2, b"x");
        let empty = frame(false, 0, b"");
        for _ in 0..5000 {
            input.extend_from_slice(&empty);
        }
        // All at once: consumed up to the header of frame 1001, then the error.
        let mut d = Decoder::new();
        let err = d
            .decode(&mut input.clone(), &cfg, &mut NoPool, None)
            .unwrap_err();
        assert_eq!(err, Error::TooManyFragments { max: 1000 });
        // Frame by frame: the first 1000 are taken in, the 1001st fails.
        let mut d = Decoder::new();
        let mut frames = vec![frame(false, 2, b"x")];
        frames.extend(std::iter::repeat_n(empty, 5000));
        let mut taken = 0;
        let err = loop {
            let mut f = frames[taken].clone();
            match d.decode(&mut f, &cfg, &mut NoPool, None) {
                Ok((_, None)) => taken += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, Error::TooManyFragments { max: 1000 });
        assert_eq!(taken, 1000);
    }

    #[test]
    fn fragment_limit_applies_to_streamed_messages_and_ignores_control_frames() {
        let cfg = config(3, true);
        // Three data frames with pings between them: within the limit.
        let mut ok = frame(false, 1, b"a");
        ok.extend(frame(true, 9, b"p"));
        ok.extend(frame(false, 0, b""));
        ok.extend(frame(true, 9, b"q"));
        ok.extend(frame(true, 0, b"b"));
        let got = feed(&ok, ok.len(), &cfg);
        assert_eq!(
            got,
            vec![
                Out::Piece(b"a".to_vec(), false),
                Out::Ping(b"p".to_vec()),
                Out::Ping(b"q".to_vec()),
                Out::Piece(b"b".to_vec(), true),
            ]
        );
        // A fourth data frame is one too many, even streamed.
        let bad = message_of(4);
        let got = feed(&bad, bad.len(), &cfg);
        assert_eq!(
            got.last(),
            Some(&Out::Err(Error::TooManyFragments { max: 3 }))
        );
    }

    #[test]
    fn a_zero_limit_counts_as_one() {
        let cfg = config(0, false);
        let whole = frame(true, 2, b"whole");
        assert_eq!(feed(&whole, 2, &cfg), vec![Out::Msg(b"whole".to_vec())]);
        let two = message_of(2);
        assert_eq!(
            feed(&two, two.len(), &cfg),
            vec![Out::Err(Error::TooManyFragments { max: 1 })]
        );
    }

    #[test]
    fn held_bytes_follow_a_partial_message() {
        let cfg = config(100, false);
        let mut d = Decoder::new();
        assert_eq!(d.held_bytes(), 0);
        let mut first = frame(false, 2, &[1; 1000]);
        let len = first.len();
        let (n, ev) = d.decode(&mut first, &cfg, &mut NoPool, None).unwrap();
        assert_eq!((n, ev), (len, None));
        assert!(d.held_bytes() >= 1000, "{}", d.held_bytes());
        d.recycle(&mut NoPool);
        assert!(
            d.held_bytes() >= 1000,
            "kept while the message is in progress"
        );
        let mut last = frame(true, 0, &[2; 10]);
        let (_, ev) = d.decode(&mut last, &cfg, &mut NoPool, None).unwrap();
        assert!(matches!(ev, Some(Event::Message(m)) if m.as_bytes().len() == 1010));
        d.recycle(&mut NoPool);
        assert_eq!(d.held_bytes(), 0, "given back between messages");
        // A whole message in the input is not copied: nothing held.
        let mut whole = frame(true, 2, &[3; 500]);
        d.decode(&mut whole, &cfg, &mut NoPool, None).unwrap();
        d.recycle(&mut NoPool);
        assert_eq!(d.held_bytes(), 0);
    }
}
