//! One connection's protocol state, in two halves: the [`RecvHalf`] (the decoder and the message being
//! assembled) and the [`SendHalf`] (the encoder, the close handshake, keepalive). Reading borrows only
//! the reader for as long as the event it returns lives, so a caller can keep sending through the
//! writer (the one place that says whether data may still be sent) while it handles the event. Time
//! is passed in by the caller (`now`), never read here.

use std::time::{Duration, Instant};

use super::assemble::{BufferPool, Decoder, DecoderConfig, Event, MessageKind};
use super::deflate::Inflate;
use super::encode::{Encoder, Output};
use super::error::{CloseCode, Error, SendError};
use super::frame::{HeaderRules, OpCode, Role, RSV1};

/// Protocol settings, shared by every connection of a worker (a connection stores none of them).
#[derive(Clone, Debug)]
pub struct Config {
    /// Server or client.
    pub role: Role,
    /// Largest frame accepted (default 16 MiB; 1009 beyond).
    pub max_frame_size: u64,
    /// Largest message accepted, after reassembly (default 16 MiB; 1009 beyond).
    pub max_message_size: u64,
    /// Most frames in one received data message, its first included (default 131072 = 2^17;
    /// 1009 beyond). Twice the 65,536 frames of the longest Autobahn case (9.3.1/9.4.1: 4 MiB in
    /// 64-byte fragments); a 16 MiB message under it has fragments of 128 bytes on average.
    /// Without it, 0-byte continuation frames keep a message open for ever.
    pub max_fragments: u32,
    /// Answer pings with pongs automatically (default on, as gorilla's default ping handler).
    pub auto_pong: bool,
    /// Deliver messages that do not arrive whole in one read piece by piece (default off).
    pub stream_fragments: bool,
    /// RSV bits a negotiated extension gives meaning to.
    pub allowed_rsv: u8,
    /// Split outgoing messages into frames of at most this many bytes (default 0: never split).
    pub max_send_frame_size: usize,
    /// How long to wait for the peer's close after sending ours (default 5 s).
    pub close_timeout: Duration,
    /// Silence after which a ping is sent (default: off).
    pub idle_timeout: Option<Duration>,
    /// How long to wait for any frame after the keepalive ping before giving up (default 10 s).
    pub pong_timeout: Duration,
}

impl Config {
    /// Defaults for a server.
    pub fn server() -> Self {
        Config {
            role: Role::Server,
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 1 << 17,
            auto_pong: true,
            stream_fragments: false,
            allowed_rsv: 0,
            max_send_frame_size: 0,
            close_timeout: Duration::from_secs(5),
            idle_timeout: None,
            pong_timeout: Duration::from_secs(10),
        }
    }

    /// Defaults for a client.
    pub fn client() -> Self {
        Config {
            role: Role::Client,
            ..Config::server()
        }
    }

    /// The receive-side part of the settings.
    pub fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            rules: HeaderRules {
                role: self.role,
                allowed_rsv: self.allowed_rsv,
                max_frame_size: self.max_frame_size,
            },
            max_message_size: self.max_message_size,
            max_fragments: self.max_fragments,
            stream_fragments: self.stream_fragments,
        }
    }
}

/// Where the close handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's (received data is discarded meanwhile).
    CloseSent,
    /// Done: both close frames were exchanged, the connection was failed, or a timeout struck. The caller
    /// flushes what is queued and closes the transport.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Waiting for the peer's close frame.
    Close,
    /// Keepalive: a ping is due if nothing arrived since the timer was armed.
    Idle,
    /// Keepalive ping sent; anything received ends the wait.
    Pong,
}

/// What a timeout did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Nothing is due yet, or the timer was re-armed.
    None,
    /// A keepalive ping was written to the output.
    PingSent,
    /// The connection is over (close handshake or pong deadline missed): drop the transport.
    Closed,
}

/// The receiving half of a connection: the decoder and the message it assembles. An event returned
/// by [`RecvHalf::read`] borrows the reader (and the input, and the buffer of an [`Inflate`]), never
/// the [`SendHalf`].
#[derive(Debug, Default)]
pub struct RecvHalf {
    decoder: Decoder,
}

/// The sending half of a connection: the encoder, where the close handshake stands, keepalive. The
/// only record of whether data may still be sent ([`SendHalf::can_send`]).
#[derive(Debug)]
pub struct SendHalf {
    encoder: Encoder,
    state: State,
    /// Something was received since the keepalive timer was armed.
    activity: bool,
    /// permessage-deflate was negotiated: RSV1 is allowed on data frames (RFC 7692 section 6).
    compression: bool,
    /// When the armed timer is due (`None`: no timer), and what it is for. Kept apart so the kind
    /// packs with the flags instead of padding a tuple.
    deadline: Option<Instant>,
    timer: Timer,
}

/// Protocol state of one connection: its two halves.
#[derive(Debug)]
pub struct Session {
    /// The receiving half.
    pub reader: RecvHalf,
    /// The sending half.
    pub writer: SendHalf,
}

impl Session {
    /// A connection in the open state. `seed` feeds client masking keys (ignored by servers).
    pub fn new(role: Role, seed: u64) -> Self {
        Session {
            reader: RecvHalf::default(),
            writer: SendHalf::new(role, seed),
        }
    }

    /// Arms keepalive, if configured. Call once when the connection opens.
    pub fn start(&mut self, now: Instant, cfg: &Config) {
        self.writer.start(now, cfg);
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.writer.state()
    }

    /// Whether the caller should close the transport once its output is flushed.
    pub fn is_closed(&self) -> bool {
        self.writer.is_closed()
    }

    /// Whether the receive side is between messages (no partial frame or message held).
    pub fn is_idle(&self) -> bool {
        self.reader.is_idle()
    }

    /// permessage-deflate was negotiated for this connection: RSV1 ("Per-Message Compressed") is
    /// accepted on the first frame of data messages, whatever `Config::allowed_rsv` says.
    pub fn enable_compression(&mut self) {
        self.writer.enable_compression();
    }

    /// Whether permessage-deflate was negotiated for this connection.
    pub fn compression_enabled(&self) -> bool {
        self.writer.compression_enabled()
    }

    /// Reads input: see [`RecvHalf::read`].
    pub fn read<'a>(
        &'a mut self,
        input: &'a mut [u8],
        cfg: &Config,
        out: &mut impl Output,
        pool: &mut impl BufferPool,
        inflate: Option<Inflate<'_, 'a>>,
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        self.reader
            .read(&mut self.writer, input, cfg, out, pool, inflate)
    }

    /// Fails the connection: see [`SendHalf::fail`].
    pub fn fail(&mut self, out: &mut impl Output, error: &Error) {
        self.writer.fail(out, error);
    }

    /// Gives idle assembly buffers back to the pool.
    pub fn recycle(&mut self, pool: &mut impl BufferPool) {
        self.reader.recycle(pool);
    }

    /// Sends a whole message: see [`SendHalf::send`].
    pub fn send(
        &mut self,
        out: &mut impl Output,
        kind: MessageKind,
        payload: &[u8],
        cfg: &Config,
        rsv: u8,
    ) -> Result<(), SendError> {
        self.writer.send(out, kind, payload, cfg, rsv)
    }

    /// Opens a fragmented message; see [`Encoder::begin_message`].
    pub fn begin_message(&mut self, kind: MessageKind) -> Result<(), SendError> {
        self.writer.begin_message(kind)
    }

    /// Writes the next piece of the open message: see [`SendHalf::write_fragment`].
    pub fn write_fragment(
        &mut self,
        out: &mut impl Output,
        data: &[u8],
        first: bool,
        fin: bool,
        rsv: u8,
    ) -> Result<(), SendError> {
        self.writer.write_fragment(out, data, first, fin, rsv)
    }

    /// Sends a ping.
    pub fn ping(&mut self, out: &mut impl Output, payload: &[u8]) -> Result<(), SendError> {
        self.writer.ping(out, payload)
    }

    /// Sends a pong (unsolicited, or as a custom ping handler's answer).
    pub fn pong(&mut self, out: &mut impl Output, payload: &[u8]) -> Result<(), SendError> {
        self.writer.pong(out, payload)
    }

    /// Starts the close handshake: see [`SendHalf::close`].
    pub fn close(
        &mut self,
        out: &mut impl Output,
        code: Option<CloseCode>,
        reason: &str,
        now: Instant,
        cfg: &Config,
    ) -> Result<(), SendError> {
        self.writer.close(out, code, reason, now, cfg)
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.writer.poll_timeout()
    }

    /// Advances timers to `now`: see [`SendHalf::handle_timeout`].
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        cfg: &Config,
        out: &mut impl Output,
    ) -> TimeoutAction {
        self.writer.handle_timeout(now, cfg, out)
    }
}

impl RecvHalf {
    /// Whether the receive side is between messages (no partial frame or message held).
    pub fn is_idle(&self) -> bool {
        self.decoder.is_idle()
    }

    /// Gives idle assembly buffers back to the pool.
    pub fn recycle(&mut self, pool: &mut impl BufferPool) {
        self.decoder.recycle(pool);
    }

    /// Heap bytes held for a message (or control frame) partly received; see
    /// [`Decoder::held_bytes`].
    pub fn held_bytes(&self) -> usize {
        self.decoder.held_bytes()
    }

    /// Reads input: see [`Decoder::decode`]. Automatic replies (pong, the close echo, the close
    /// that fails the connection on a protocol error) go through `writer` to `out`, and the close
    /// handshake advances there. Data received after we sent a close is consumed and discarded.
    /// After `Err`, the writer's state is `Closed` and `out` holds the close frame with the error's
    /// code.
    ///
    /// permessage-deflate: once [`SendHalf::enable_compression`] was called, RSV1 marks compressed
    /// messages, and the core inflates them itself through `inflate` (the connection's
    /// [`DeflateState`](super::DeflateState) and the caller's pool and buffer, lent for this read):
    /// the event holds the plain message, of its real kind. A message that does not inflate, or
    /// not without a lent `inflate` (1007), inflates past the limit (1009) or is not UTF-8 (1007)
    /// fails the connection as a protocol error does. Reads that meet no compressed message do
    /// not touch `inflate`, so it may be lent on every read.
    ///
    /// The event borrows this reader, the input and the buffer of `inflate` only: `writer` is free
    /// again once this returns.
    pub fn read<'a>(
        &'a mut self,
        writer: &mut SendHalf,
        input: &'a mut [u8],
        cfg: &Config,
        out: &mut impl Output,
        pool: &mut impl BufferPool,
        inflate: Option<Inflate<'_, 'a>>,
    ) -> Result<(usize, Option<Event<'a>>), Error> {
        match writer.state {
            State::Closed => return Ok((input.len(), None)),
            // "After sending a Close frame, the endpoint ... MAY discard" further data.
            State::CloseSent => self.decoder.discard_data(),
            State::Open => {}
        }
        writer.activity = true;
        let mut dcfg = cfg.decoder();
        if writer.compression {
            dcfg.rules.allowed_rsv |= RSV1;
        }
        let (n, ev) = match self.decoder.decode(input, &dcfg, pool, inflate) {
            Ok(found) => found,
            Err(e) => {
                // Fail the connection: a close with the error's code (unless one was sent), then done.
                writer.fail(out, &e);
                return Err(e);
            }
        };
        match ev {
            Some(Event::Ping(data)) if cfg.auto_pong && writer.state == State::Open => {
                let _ = writer.encoder.control(out, OpCode::Pong, data);
            }
            Some(Event::Close { code, .. }) => {
                if writer.state == State::Open {
                    // "If an endpoint receives a Close frame and did not previously send a Close frame,
                    // the endpoint MUST send a Close frame in response ... typically echoing the status
                    // code it received" (5.5.1)
                    let echo = if code == CloseCode::NO_STATUS {
                        None
                    } else {
                        Some(code)
                    };
                    let _ = writer.encoder.close(out, echo, "");
                }
                writer.state = State::Closed;
                writer.deadline = None;
            }
            _ => {}
        }
        Ok((n, ev))
    }
}

impl SendHalf {
    /// The sending half of an open connection. `seed` feeds client masking keys (ignored by servers).
    pub fn new(role: Role, seed: u64) -> Self {
        SendHalf {
            encoder: Encoder::new(role, seed),
            state: State::Open,
            activity: false,
            compression: false,
            deadline: None,
            timer: Timer::Close,
        }
    }

    /// Arms keepalive, if configured. Call once when the connection opens.
    pub fn start(&mut self, now: Instant, cfg: &Config) {
        if let Some(idle) = cfg.idle_timeout {
            self.arm(now + idle, Timer::Idle);
        }
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether data may still be sent: open, no close sent or received, not failed.
    pub fn can_send(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the caller should close the transport once its output is flushed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// permessage-deflate was negotiated for this connection: RSV1 ("Per-Message Compressed") is
    /// accepted on the first frame of data messages, whatever `Config::allowed_rsv` says.
    pub fn enable_compression(&mut self) {
        self.compression = true;
    }

    /// Whether permessage-deflate was negotiated for this connection.
    pub fn compression_enabled(&self) -> bool {
        self.compression
    }

    /// Fails the connection because of an error the caller found: as for a protocol error in
    /// [`RecvHalf::read`], a close with the error's code is written to `out` (unless one was sent)
    /// and the state is `Closed`.
    pub fn fail(&mut self, out: &mut impl Output, error: &Error) {
        self.fail_with(out, error.close_code(), "");
    }

    /// Fails the connection for a reason of the caller's (a resource limit above the protocol:
    /// `code` 1013 when a server sheds load): as [`SendHalf::fail`], with this code and reason
    /// (unless a close was sent already; the reason cut to 123 bytes).
    pub fn fail_with(&mut self, out: &mut impl Output, code: CloseCode, reason: &str) {
        if !self.encoder.close_sent() {
            let _ = self.encoder.close(out, Some(code), reason);
        }
        self.state = State::Closed;
        self.deadline = None;
    }

    /// Sends a whole message, split into frames of at most `cfg.max_send_frame_size` bytes, with
    /// `rsv` on its first frame (0; RSV1 for a message compressed by permessage-deflate).
    pub fn send(
        &mut self,
        out: &mut impl Output,
        kind: MessageKind,
        payload: &[u8],
        cfg: &Config,
        rsv: u8,
    ) -> Result<(), SendError> {
        self.check_open()?;
        self.encoder
            .message(out, kind, payload, cfg.max_send_frame_size, rsv)
    }

    /// Writes one data frame as given (`opcode` Text, Binary or Continuation, `fin` as the caller
    /// frames its message), unless the connection can no longer send.
    pub fn frame(
        &mut self,
        out: &mut impl Output,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.check_open()?;
        self.encoder.raw_frame(out, opcode, fin, 0, payload);
        Ok(())
    }

    /// Opens a fragmented message; see [`Encoder::begin_message`].
    pub fn begin_message(&mut self, kind: MessageKind) -> Result<(), SendError> {
        self.check_open()?;
        self.encoder.begin_message(kind)
    }

    /// Writes the next piece of the open message, `rsv` on the first piece (0; RSV1 for a message
    /// compressed by permessage-deflate); see [`Encoder::fragment`].
    pub fn write_fragment(
        &mut self,
        out: &mut impl Output,
        data: &[u8],
        first: bool,
        fin: bool,
        rsv: u8,
    ) -> Result<(), SendError> {
        self.check_open()?;
        self.encoder.fragment(out, data, first, fin, rsv)
    }

    /// Sends a ping.
    pub fn ping(&mut self, out: &mut impl Output, payload: &[u8]) -> Result<(), SendError> {
        self.check_open()?;
        self.encoder.control(out, OpCode::Ping, payload)
    }

    /// Sends a pong (unsolicited, or as a custom ping handler's answer).
    pub fn pong(&mut self, out: &mut impl Output, payload: &[u8]) -> Result<(), SendError> {
        self.check_open()?;
        self.encoder.control(out, OpCode::Pong, payload)
    }

    /// Starts the close handshake: sends a close frame and waits up to `close_timeout` for the
    /// peer's. Data the reader receives from then on is discarded.
    pub fn close(
        &mut self,
        out: &mut impl Output,
        code: Option<CloseCode>,
        reason: &str,
        now: Instant,
        cfg: &Config,
    ) -> Result<(), SendError> {
        self.check_open()?;
        self.encoder.close(out, code, reason)?;
        self.state = State::CloseSent;
        self.arm(now + cfg.close_timeout, Timer::Close);
        Ok(())
    }

    fn check_open(&self) -> Result<(), SendError> {
        match self.state {
            State::Open => Ok(()),
            _ => Err(SendError::Closed),
        }
    }

    fn arm(&mut self, at: Instant, timer: Timer) {
        self.deadline = Some(at);
        self.timer = timer;
    }

    /// When [`SendHalf::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Advances timers to `now`. Keepalive is lazy: receiving only sets a flag, and an expired idle
    /// timer that sees the flag re-arms instead of pinging, so the ping goes out after between one and
    /// two idle periods of silence, with no timer update per message.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        cfg: &Config,
        out: &mut impl Output,
    ) -> TimeoutAction {
        let (Some(at), timer) = (self.deadline, self.timer) else {
            return TimeoutAction::None;
        };
        if now < at {
            return TimeoutAction::None;
        }
        match timer {
            Timer::Close => {
                self.state = State::Closed;
                self.deadline = None;
                TimeoutAction::Closed
            }
            Timer::Idle | Timer::Pong if std::mem::take(&mut self.activity) => {
                self.deadline = cfg.idle_timeout.map(|idle| now + idle);
                self.timer = Timer::Idle;
                TimeoutAction::None
            }
            Timer::Idle => {
                if self.state == State::Open && self.encoder.control(out, OpCode::Ping, b"").is_ok()
                {
                    self.arm(now + cfg.pong_timeout, Timer::Pong);
                    TimeoutAction::PingSent
                } else {
                    self.deadline = None;
                    TimeoutAction::None
                }
            }
            Timer::Pong => {
                // The peer stayed silent after our ping: it is gone. Say so, without waiting.
                let _ = self
                    .encoder
                    .close(out, Some(CloseCode::GOING_AWAY), "keepalive timeout");
                self.state = State::Closed;
                self.deadline = None;
                TimeoutAction::Closed
            }
        }
    }
}
