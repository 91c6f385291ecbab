//! permessage-deflate (RFC 7692): compressing and inflating whole messages, sans-IO.
//!
//! What is kept where:
//!
//! - [`DeflateConfig`]: the server's (or client's) settings, shared by a worker's connections.
//! - [`DeflateParams`]: what was negotiated for one connection (4 bytes; see
//!   `handshake::deflate_negotiation`).
//! - [`DeflateState`]: one connection's compression state: the parameters, resolved for our role, and
//!   the streaming compressor and inflater that context takeover needs. Both are created on first use
//!   and only when the LZ77 window must outlive a message; without context takeover a connection holds
//!   no compression state at all.
//! - [`DeflatePool`]: per worker, the state that no connection needs to keep between messages: a
//!   libdeflate compressor for whole messages, zlib-rs compressors for small windows, one inflater.
//!
//! Sending ([`DeflateState::compress`]): without context takeover and with a 32 KiB window, a message
//! is compressed in one call by libdeflate (the fastest; its output ends with a block that has BFINAL
//! set, which RFC 7692 section 7.2.3.3 allows); otherwise zlib-rs (through flate2) compresses with
//! `Z_SYNC_FLUSH` and the trailing `0x00 0x00 0xff 0xff` is removed (7.2.1).
//!
//! Receiving ([`DeflateState::decompress`]): pieces are inflated into a caller's buffer (from the
//! worker's buffer pool); the four octets are appended at the end of the message (7.2.2). The maximum
//! message size applies to the inflated size: the buffer never grows past `max_decompressed + 1` bytes,
//! so a decompression bomb fails with 1009 after at most one byte of excess output, whatever its
//! compressed size. Text is validated as UTF-8 once inflated (1007).
//!
//! Window bits 8: zlib (and zlib-rs) refuse a raw deflate stream with an 8-bit window and raise 8 to 9
//! elsewhere. With window bits 9 the compressor never emits a distance beyond `512 - 262 = 250`
//! (`MAX_DIST = w_size - MIN_LOOKAHEAD`), so its output is valid for a peer whose window is 256 bytes:
//! when 8 is negotiated we compress with 9 and say 8. For inflating, a larger window accepts anything
//! made with a smaller one, so 8 is inflated with 9.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::assemble::{Message, MessageKind};
use super::error::Error;
use super::frame::Role;

/// The octets a sync flush ends with, removed by the sender and appended by the receiver (7.2.1, 7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Smallest and largest LZ77 window sizes (as powers of two) that may be negotiated (7.1.2).
pub const MIN_WINDOW_BITS: u8 = 8;
/// See [`MIN_WINDOW_BITS`].
pub const MAX_WINDOW_BITS: u8 = 15;

/// How a server (or client) uses permessage-deflate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeflateMode {
    /// Not offered, every offer declined (the default, as in gorilla).
    #[default]
    Disabled,
    /// Compression without context takeover in either direction: no state is kept between messages,
    /// so a connection costs nothing extra; the compressor and inflater are the worker's.
    NoContextTakeover,
    /// Context takeover: each connection keeps a streaming compressor (and an inflater, unless the
    /// peer agrees to `client_no_context_takeover`) between messages. Better ratios for streams of
    /// similar messages (chat, JSON pushes) at a memory cost per connection; see docs/BENCHMARKS.md.
    ContextTakeover {
        /// Largest window the server compresses with (8..=15; a smaller offer wins).
        server_max_window_bits: u8,
        /// Largest window the server asks clients to compress with (8..=15; only when the client
        /// offers `client_max_window_bits`, else the client may use 15).
        client_max_window_bits: u8,
    },
}

/// permessage-deflate settings, shared by a worker's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// What to negotiate.
    pub mode: DeflateMode,
    /// Messages shorter than this are sent uncompressed (default 64 bytes; deflate rarely wins below).
    pub min_size: usize,
    /// Compression level, 0 (store) to 9 (default 1, as gorilla: the fastest level that compresses).
    pub level: u8,
    /// Largest inflated message accepted (1009 beyond it); the engine passes its maximum message size.
    pub max_decompressed: u64,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            mode: DeflateMode::Disabled,
            min_size: 64,
            level: 1,
            max_decompressed: 16 << 20,
        }
    }
}

/// The parameters agreed for one connection (RFC 7692 section 7.1), as they apply on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// The server's compression window, 8..=15 (15 when not negotiated).
    pub server_max_window_bits: u8,
    /// The client's compression window, 8..=15 (15 when not negotiated).
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

impl DeflateParams {
    /// How `role` compresses what it sends.
    pub fn send(&self, role: Role) -> Direction {
        match role {
            Role::Server => Direction {
                no_context_takeover: self.server_no_context_takeover,
                window_bits: self.server_max_window_bits,
            },
            Role::Client => Direction {
                no_context_takeover: self.client_no_context_takeover,
                window_bits: self.client_max_window_bits,
            },
        }
    }

    /// How the peer of `role` compresses what `role` receives.
    pub fn recv(&self, role: Role) -> Direction {
        match role {
            Role::Server => self.send(Role::Client),
            Role::Client => self.send(Role::Server),
        }
    }
}

/// One direction of a connection: the window and whether it is kept between messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Direction {
    /// The compressor is reset after each message.
    pub no_context_takeover: bool,
    /// The LZ77 window, 8..=15.
    pub window_bits: u8,
}

/// What a prepared message must be compressed for: connections whose sending window is the same can
/// share one compressed payload ([`compress_variant`]). Connections with context takeover can take it
/// too: see [`DeflateState::sent_independent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The sending window, 8..=15.
    pub window_bits: u8,
}

/// Compression state that no connection keeps between messages: one per worker.
pub struct DeflatePool {
    level: u8,
    /// libdeflate: whole messages, 32 KiB window.
    whole: Option<libdeflater::Compressor>,
    /// zlib-rs compressors for windows 9..=15 (8 uses 9), reset before each message.
    windowed: [Option<Box<Compress>>; 7],
    /// The inflater for peers without context takeover, reset before each message.
    inflater: Option<Box<Decompress>>,
}

impl std::fmt::Debug for DeflatePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeflatePool")
            .field("level", &self.level)
            .field("whole", &self.whole.is_some())
            .field("inflater", &self.inflater.is_some())
            .finish()
    }
}

impl DeflatePool {
    /// An empty pool compressing at `level` (0..=9); everything is created on first use.
    pub fn new(level: u8) -> Self {
        DeflatePool {
            level: level.min(9),
            whole: None,
            windowed: Default::default(),
            inflater: None,
        }
    }

    /// The compression level.
    pub fn level(&self) -> u8 {
        self.level
    }

    fn whole(&mut self) -> &mut libdeflater::Compressor {
        let level = i32::from(self.level);
        self.whole.get_or_insert_with(|| {
            let lvl = libdeflater::CompressionLvl::new(level).unwrap_or_default();
            libdeflater::Compressor::new(lvl)
        })
    }

    fn windowed(&mut self, window_bits: u8) -> &mut Compress {
        let bits = zlib_window_bits(window_bits);
        let level = self.level;
        let slot = &mut self.windowed[usize::from(bits - 9)];
        slot.get_or_insert_with(|| Box::new(new_compressor(level, bits)))
    }

    fn inflater(&mut self) -> &mut Decompress {
        self.inflater
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, 15)))
    }
}

/// zlib has no raw deflate with an 8-bit window; 9 is used instead (see the module documentation).
fn zlib_window_bits(bits: u8) -> u8 {
    bits.clamp(9, MAX_WINDOW_BITS)
}

fn new_compressor(level: u8, window_bits: u8) -> Compress {
    Compress::new_with_window_bits(
        Compression::new(u32::from(level.min(9))),
        false,
        zlib_window_bits(window_bits),
    )
}

/// Compresses `payload` for `variant` without context takeover, into `out` (appended): the payload
/// of a message to send with RSV1. The building block for prepared messages: compress once per
/// distinct variant among the recipients.
pub fn compress_variant(
    payload: &[u8],
    variant: Variant,
    pool: &mut DeflatePool,
    out: &mut Vec<u8>,
) {
    if variant.window_bits >= MAX_WINDOW_BITS {
        compress_whole(pool.whole(), payload, out);
    } else {
        let c = pool.windowed(variant.window_bits);
        c.reset();
        compress_stream(c, payload, out);
    }
}

/// libdeflate in one call. Its last block has BFINAL set: allowed by RFC 7692 section 7.2.3.3, and a
/// peer without context takeover (the only kind this is used for) starts afresh for each message.
fn compress_whole(c: &mut libdeflater::Compressor, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let bound = c.deflate_compress_bound(payload.len());
    out.resize(start + bound, 0);
    let n = c
        .deflate_compress(payload, &mut out[start..])
        .expect("deflate_compress_bound is an upper bound");
    out.truncate(start + n);
}

/// zlib-rs with a sync flush; the trailing `0x00 0x00 0xff 0xff` is removed: "Remove 4 octets (that
/// are 0x00 0x00 0xff 0xff) from the tail end" (7.2.1).
fn compress_stream(c: &mut Compress, payload: &[u8], out: &mut Vec<u8>) {
    if payload.is_empty() {
        // zlib emits nothing for an empty sync flush right after another one. "An empty uncompressed
        // DEFLATE block" compresses an empty message, "0x00" once its tail is removed (7.2.3.6).
        out.push(0x00);
        return;
    }
    let start = out.len();
    let mut input = payload;
    loop {
        // A sync flush is complete once a call returns with output space left.
        out.reserve(input.len() / 2 + 64);
        let before = c.total_in();
        c.compress_vec(input, out, FlushCompress::Sync)
            .expect("compressing into a buffer cannot fail");
        input = &input[(c.total_in() - before) as usize..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    debug_assert!(out[start..].ends_with(&TAIL));
    if out[start..].ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

/// One connection's permessage-deflate state.
#[derive(Debug)]
pub struct DeflateState {
    send: Direction,
    recv: Direction,
    /// Our streaming compressor, kept between messages (context takeover only; created on first use).
    compressor: Option<Box<Compress>>,
    /// The peer's stream, kept between messages (context takeover only; created on first use).
    inflater: Option<Box<Decompress>>,
}

impl DeflateState {
    /// State for a connection where `params` were negotiated and we play `role`. Allocates nothing.
    pub fn new(params: DeflateParams, role: Role) -> Self {
        DeflateState {
            send: params.send(role),
            recv: params.recv(role),
            compressor: None,
            inflater: None,
        }
    }

    /// How we compress.
    pub fn send_direction(&self) -> Direction {
        self.send
    }

    /// How the peer compresses.
    pub fn recv_direction(&self) -> Direction {
        self.recv
    }

    /// The variant a prepared message must be compressed for to be sent here.
    pub fn variant(&self) -> Variant {
        Variant {
            window_bits: self.send.window_bits,
        }
    }

    /// Whether this connection holds compression state between messages.
    pub fn holds_state(&self) -> bool {
        self.compressor.is_some() || self.inflater.is_some()
    }

    /// Compresses one whole message into `out` (appended) unless it is shorter than
    /// `cfg.min_size`. `true`: send `out` with RSV1 set on the first frame; `false`: send `payload`
    /// uncompressed (RSV1 clear). For the per-message opt-out, do not call this.
    ///
    /// Without context takeover a message that does not shrink is sent uncompressed too. With context
    /// takeover it cannot be: the peer's window must see every byte our compressor's window saw.
    pub fn compress(
        &mut self,
        payload: &[u8],
        cfg: &DeflateConfig,
        pool: &mut DeflatePool,
        out: &mut Vec<u8>,
    ) -> bool {
        if payload.len() < cfg.min_size {
            return false;
        }
        let start = out.len();
        if self.send.no_context_takeover {
            compress_variant(payload, self.variant(), pool, out);
            if out.len() - start >= payload.len() {
                out.truncate(start);
                return false;
            }
            return true;
        }
        let send = self.send;
        let c = self
            .compressor
            .get_or_insert_with(|| Box::new(new_compressor(pool.level, send.window_bits)));
        compress_stream(c, payload, out);
        true
    }

    /// A message compressed without context takeover (a prepared message from
    /// [`compress_variant`]) was sent here. With context takeover the peer's window now holds bytes
    /// that our compressor's window does not: our compressor is reset, which only makes it refer to
    /// less history than the peer holds, and that is always valid.
    pub fn sent_independent(&mut self) {
        if let Some(c) = &mut self.compressor {
            c.reset();
        }
    }

    /// Inflates one piece of a compressed message, appending to `out`; `fin` marks the message's last
    /// piece. The first piece of each message must come with `first`. `out.len()` may not exceed
    /// `cfg.max_decompressed`: beyond it, [`Error::MessageTooBig`] (1009), and `out` never grows past
    /// one byte more than the limit. Corrupt data is [`Error::CompressedDataInvalid`] (1007).
    pub fn decompress(
        &mut self,
        input: &[u8],
        first: bool,
        fin: bool,
        cfg: &DeflateConfig,
        pool: &mut DeflatePool,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let recv = self.recv;
        let d: &mut Decompress = if recv.no_context_takeover {
            pool.inflater()
        } else {
            self.inflater.get_or_insert_with(|| {
                Box::new(Decompress::new_with_window_bits(
                    false,
                    zlib_window_bits(recv.window_bits),
                ))
            })
        };
        if first && recv.no_context_takeover {
            d.reset(false);
        }
        let max = cfg.max_decompressed;
        let mut ended = inflate(d, input, out, max)?;
        if fin && !ended {
            // "Append 4 octets of 0x00 0x00 0xff 0xff to the tail end of the payload of the message" (7.2.2)
            ended = inflate(d, &TAIL, out, max)?;
        }
        if ended {
            // A block with BFINAL set ended the stream (7.2.3.3): what follows is a new stream. The
            // window is lost with it; a peer that ends its streams does not take over context.
            d.reset(false);
        }
        Ok(())
    }

    /// Inflates a whole compressed message of `kind` into `out` (cleared first; a buffer from the
    /// worker's pool) and returns it, text validated as UTF-8 (1007).
    pub fn decompress_message<'a>(
        &mut self,
        kind: MessageKind,
        input: &[u8],
        cfg: &DeflateConfig,
        pool: &mut DeflatePool,
        out: &'a mut Vec<u8>,
    ) -> Result<Message<'a>, Error> {
        out.clear();
        self.decompress(input, true, true, cfg, pool, out)?;
        Ok(match kind {
            MessageKind::Text => {
                Message::Text(simdutf8::basic::from_utf8(out).map_err(|_| Error::InvalidUtf8)?)
            }
            MessageKind::Binary => Message::Binary(out),
        })
    }
}

/// Inflates `input` into `out`, growing it geometrically but never past `max + 1` bytes. Returns
/// whether the deflate stream ended (a BFINAL block).
fn inflate(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    max: u64,
) -> Result<bool, Error> {
    let cap_limit = usize::try_from(max).unwrap_or(usize::MAX - 1) + 1;
    loop {
        if out.len() == out.capacity() {
            let target = out
                .len()
                .saturating_mul(2)
                .max(out.len() + 4096)
                .min(cap_limit);
            out.reserve_exact(target - out.len());
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| Error::CompressedDataInvalid)?;
        let consumed = (d.total_in() - in0) as usize;
        let produced = d.total_out() - out0;
        input = &input[consumed..];
        if out.len() as u64 > max {
            return Err(Error::MessageTooBig {
                len: out.len() as u64,
                max,
            });
        }
        match status {
            Status::StreamEnd => return Ok(true),
            _ if out.len() < out.capacity()
                && (input.is_empty() || consumed == 0 && produced == 0) =>
            {
                // All input taken and all output written (the inflater had room left).
                return Ok(false);
            }
            _ => {}
        }
    }
}
