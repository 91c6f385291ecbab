//! permessage-deflate (RFC 7692): compressing and inflating whole messages, sans-IO.
//!
//! What is kept where:
//!
//! - [`DeflateConfig`]: the server's (or client's) settings, shared by a worker's connections.
//! - [`DeflateParams`]: what was negotiated for one connection (4 bytes; see
//!   `handshake::deflate_negotiation`).
//! - [`DeflateState`]: one connection's compression state: the parameters, resolved for our role,
//!   and, with context takeover only, the last `2^w` bytes sent and received (the LZ77 windows),
//!   grown on use. No compressor or inflater is kept per connection: see [`DeflateState`].
//! - [`DeflatePool`]: per worker, the compressors and inflaters: a libdeflate compressor for whole
//!   messages, zlib-rs compressors per window size, free inflaters.
//!
//! Sending ([`DeflateState::compress`]): without context takeover and with a 32 KiB window, a message
//! is compressed in one call by libdeflate (the fastest; its output ends with a block that has BFINAL
//! set, which RFC 7692 section 7.2.3.3 allows); otherwise zlib-rs (through flate2) compresses with
//! `Z_SYNC_FLUSH` and the trailing `0x00 0x00 0xff 0xff` is removed (7.2.1). With context takeover
//! the pool's zlib-rs compressor is reset and primed with the connection's window as a preset
//! dictionary (`deflateSetDictionary` on a raw stream) before each message.
//!
//! Receiving ([`DeflateState::decompress`]): pieces are inflated by a pooled inflater (primed with
//! the connection's window under context takeover) into a caller's buffer; the four octets are
//! appended at the end of the message (7.2.2). The maximum message size applies to the inflated
//! size: the buffer never grows past `max_decompressed + 1` bytes, so a decompression bomb fails with
//! 1009 after at most one byte of excess output, whatever its compressed size. Text is validated as
//! UTF-8 once inflated (1007). The protocol core inflates what it receives itself: a caller lends it
//! an [`Inflate`] for a read (see `conn::Reader::read`), and its events hold plain messages.
//!
//! The mode's docs below ([`DeflateMode::ContextTakeover`]) and docs/BENCHMARKS.md give the memory
//! per connection: the windows only (64 KiB both ways at window 15, 8 KiB at 12), against 418 KiB
//! and 306 KiB with a zlib-rs stream kept per connection.
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

/// Compression buffers (inflated messages, compressed messages) larger than this are freed after
/// use rather than kept for the next message: one large message does not pin its size for the life
/// of a worker or connection.
pub const MAX_KEPT_BUFFER: usize = 1 << 20;

/// What the protocol core needs to inflate the compressed messages (RSV1) of one connection, lent
/// for one read ([`RecvHalf::read`](super::RecvHalf::read)): the connection's state, kept apart from
/// [`Session`](super::Session) by the caller (so that a connection without compression, or an idle one,
/// stays small), and the caller's pooled inflaters and buffer. The events of that read borrow
/// `buf` (lifetime `'b`), the rest only for the read (`'s`).
///
/// The inflated size is bounded by the smaller of `cfg.max_decompressed` and the protocol
/// config's `max_message_size`, for a whole message and for the total of a message delivered in
/// pieces alike (1009 beyond it, with at most one byte of excess inflated).
#[derive(Debug)]
pub struct Inflate<'s, 'b> {
    /// The connection's compression state (windows, a live or held inflater).
    pub state: &'s mut DeflateState,
    /// Compression settings (`max_decompressed`).
    pub cfg: &'s DeflateConfig,
    /// Where inflaters come from and go back to.
    pub pool: &'s mut DeflatePool,
    /// Where a message (or piece) is inflated; a buffer above [`MAX_KEPT_BUFFER`] is replaced by
    /// an empty one when the next message starts.
    pub buf: &'b mut Vec<u8>,
}

impl<'b> Inflate<'_, 'b> {
    /// The settings with `max_decompressed` lowered to `max_message_size` when that is smaller.
    fn limited(&self, max_message_size: u64) -> DeflateConfig {
        DeflateConfig {
            max_decompressed: self.cfg.max_decompressed.min(max_message_size),
            ..*self.cfg
        }
    }

    /// Inflates a whole compressed message of `kind`; see [`DeflateState::decompress_message`].
    pub(super) fn message(
        self,
        kind: MessageKind,
        data: &[u8],
        max_message_size: u64,
    ) -> Result<Message<'b>, Error> {
        let cfg = self.limited(max_message_size);
        self.state
            .decompress_message(kind, data, &cfg, self.pool, self.buf)
    }

    /// Inflates one piece of a compressed message of `kind`; see
    /// [`DeflateState::decompress_piece`].
    pub(super) fn piece(
        self,
        kind: MessageKind,
        data: &[u8],
        first: bool,
        last: bool,
        max_message_size: u64,
    ) -> Result<&'b [u8], Error> {
        let cfg = self.limited(max_message_size);
        let buf = self.buf;
        self.state
            .decompress_piece(kind, data, first, last, &cfg, self.pool, buf)?;
        Ok(buf)
    }
}

/// Empties `buf` for the next message, or replaces it when it is larger than [`MAX_KEPT_BUFFER`].
fn reuse(buf: &mut Vec<u8>) {
    if buf.capacity() > MAX_KEPT_BUFFER {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

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
    /// Context takeover: each connection keeps the last `2^w` bytes it sent compressed (and, unless
    /// the peer agrees to `client_no_context_takeover`, the last `2^w` it received), allocated on
    /// the first compressed message and grown up to the window; the compressor and inflater are the
    /// worker's, primed with those bytes for each message. Better ratios for streams of similar
    /// messages (chat, JSON pushes) for at most `2 x 2^w` bytes per connection; see
    /// docs/BENCHMARKS.md.
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
    /// 0: every message is compressed, even one that does not shrink.
    pub min_size: usize,
    /// Compression level, 0 (store) to 9 (default 1, as gorilla: the fastest level that compresses).
    pub level: u8,
    /// Largest inflated message accepted (1009 beyond it); the engine passes its maximum message size.
    pub max_decompressed: u64,
    /// Compress whole messages without context takeover (window 15) with libdeflate rather than
    /// zlib-rs (default off). libdeflate is 1.3-1.4x faster at comparable ratios, but its output ends
    /// with a BFINAL block: allowed (RFC 7692 section 7.2.3.3), yet some peers hang on it (kosoku's
    /// Autobahn client spins at 100 % CPU in cases 13.2.x and 13.6.x, apparently waiting for its
    /// inflater to take the appended `00 00 ff ff` after the stream ended). zlib-rs ends each
    /// message with a sync flush, as every common implementation does.
    pub libdeflate: bool,
    /// Live inflaters a worker keeps attached to connections with context takeover (default 256).
    /// An active connection inflates each message with its own stream, as a zlib stream kept per
    /// connection would, with no priming; past this many, the least recently used connection's
    /// stream is detached (its window is kept, as for an idle connection) and the next message it
    /// gets primes a stream from that window again. About 47 KiB per live inflater at window 15
    /// (zlib-rs: 14 KiB of state and the 32 KiB window): 12 MiB per worker at the default.
    pub live_inflaters: usize,
    /// Live compressors a worker keeps attached to connections that send with context takeover
    /// (default 128): without one, a message is compressed by a stream primed with the
    /// connection's window, and priming a compressor hashes the whole window (about 20 us for
    /// 32 KiB). About 371 KiB per live compressor at window 15 (46 MiB per worker at the
    /// default; 259 KiB at window 12).
    pub live_compressors: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            mode: DeflateMode::Disabled,
            min_size: 64,
            level: 1,
            max_decompressed: 16 << 20,
            libdeflate: false,
            live_inflaters: 256,
            live_compressors: 128,
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

/// Free inflaters a pool keeps per window size (more are only needed while that many connections
/// each have a compressed message arriving over several reads, or attach live streams at once).
const MAX_CACHED_INFLATERS: usize = 16;

/// Free compressors a pool keeps per window size for connections with context takeover.
const MAX_CACHED_COMPRESSORS: usize = 2;

/// Compression state that no connection keeps between messages: one per worker.
pub struct DeflatePool {
    level: u8,
    /// Whole messages without context takeover go through libdeflate (see
    /// [`DeflateConfig::libdeflate`]).
    libdeflate: bool,
    /// libdeflate: whole messages, 32 KiB window.
    whole: Option<libdeflater::Compressor>,
    /// zlib-rs compressors for windows 9..=15 (8 uses 9), reset before each message.
    windowed: [Option<Box<Compress>>; 7],
    /// Free inflaters per window size 9..=15 (without context takeover 15 is used: a larger window
    /// inflates anything made with a smaller one). Boxed: attached to a connection and given back
    /// without copying.
    #[allow(clippy::vec_box)]
    inflaters: [Vec<Box<Decompress>>; 7],
    /// Free compressors per window size 9..=15, for connections sending with context takeover.
    #[allow(clippy::vec_box)]
    compressors: [Vec<Box<Compress>>; 7],
    /// Bytes through this pool's streams so far (the engine's metrics read them).
    stats: DeflateStats,
}

/// Bytes through a [`DeflatePool`]'s streams so far: plain and compressed, each way (the ratio
/// of a direction is `compressed / plain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateStats {
    /// Plain bytes of messages compressed.
    pub out_plain: u64,
    /// What they compressed to.
    pub out_compressed: u64,
    /// Compressed bytes inflated.
    pub in_compressed: u64,
    /// What they inflated to.
    pub in_plain: u64,
}

impl std::fmt::Debug for DeflatePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeflatePool")
            .field("level", &self.level)
            .field("whole", &self.whole.is_some())
            .field(
                "inflaters",
                &self.inflaters.iter().map(Vec::len).sum::<usize>(),
            )
            .field(
                "compressors",
                &self.compressors.iter().map(Vec::len).sum::<usize>(),
            )
            .finish()
    }
}

impl DeflatePool {
    /// An empty pool compressing at `level` (0..=9); everything is created on first use.
    pub fn new(level: u8) -> Self {
        DeflatePool {
            level: level.min(9),
            libdeflate: false,
            whole: None,
            windowed: Default::default(),
            inflaters: Default::default(),
            compressors: Default::default(),
            stats: DeflateStats::default(),
        }
    }

    /// Bytes compressed and inflated through this pool so far.
    pub fn stats(&self) -> DeflateStats {
        self.stats
    }

    /// The compression level.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Compresses whole messages without context takeover with libdeflate (see
    /// [`DeflateConfig::libdeflate`]); off by default.
    pub fn use_libdeflate(&mut self, on: bool) {
        self.libdeflate = on;
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

    /// A reset inflater with a `window_bits` window (from the free list, or new).
    fn take_inflater(&mut self, window_bits: u8) -> Box<Decompress> {
        let bits = zlib_window_bits(window_bits);
        match self.inflaters[usize::from(bits - 9)].pop() {
            Some(mut d) => {
                d.reset(false);
                d
            }
            None => Box::new(Decompress::new_with_window_bits(false, bits)),
        }
    }

    /// Gives back an inflater with a `window_bits` window (a few are kept).
    fn give_inflater(&mut self, window_bits: u8, d: Box<Decompress>) {
        let list = &mut self.inflaters[usize::from(zlib_window_bits(window_bits) - 9)];
        if list.len() < MAX_CACHED_INFLATERS {
            list.push(d);
        }
    }

    /// A reset compressor with a `window_bits` window (from the free list, or new).
    fn take_compressor(&mut self, window_bits: u8) -> Box<Compress> {
        let bits = zlib_window_bits(window_bits);
        match self.compressors[usize::from(bits - 9)].pop() {
            Some(mut c) => {
                c.reset();
                c
            }
            None => Box::new(new_compressor(self.level, bits)),
        }
    }

    /// Gives back a compressor with a `window_bits` window (a few are kept).
    fn give_compressor(&mut self, window_bits: u8, c: Box<Compress>) {
        let list = &mut self.compressors[usize::from(zlib_window_bits(window_bits) - 9)];
        if list.len() < MAX_CACHED_COMPRESSORS {
            list.push(c);
        }
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
    let start = out.len();
    if variant.window_bits >= MAX_WINDOW_BITS && pool.libdeflate {
        compress_whole(pool.whole(), payload, out);
    } else {
        let c = pool.windowed(variant.window_bits);
        c.reset();
        compress_stream(c, payload, out);
    }
    pool.stats.out_plain += payload.len() as u64;
    pool.stats.out_compressed += (out.len() - start) as u64;
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

/// A sliding window: the last `size` bytes of everything pushed, kept as a ring so that pushing a
/// message copies only the message (no memmove of the window). Grows geometrically up to `size`,
/// never past it, so a connection that has sent little holds little.
#[derive(Debug, Default)]
struct Window {
    buf: Vec<u8>,
    /// Once `buf` holds `size` bytes: where the oldest byte is (and the next is written).
    next: usize,
}

impl Window {
    fn push(&mut self, mut data: &[u8], size: usize) {
        if data.len() >= size {
            self.buf.clear();
            self.buf.reserve_exact(size);
            self.buf.extend_from_slice(&data[data.len() - size..]);
            self.next = 0;
            return;
        }
        if self.buf.len() < size {
            let take = data.len().min(size - self.buf.len());
            let needed = self.buf.len() + take;
            if needed > self.buf.capacity() {
                let target = needed.max(self.buf.capacity().saturating_mul(2).min(size));
                self.buf.reserve_exact(target - self.buf.len());
            }
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        // Full: overwrite the oldest bytes, wrapping around.
        let first = data.len().min(size - self.next);
        self.buf[self.next..self.next + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.next = (self.next + data.len()) % size;
    }

    /// The window, oldest byte first (rotated in place when it wraps: only when a stream is
    /// primed, not per message).
    fn contiguous(&mut self) -> &[u8] {
        if self.next != 0 {
            self.buf.rotate_left(self.next);
            self.next = 0;
        }
        &self.buf
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.next = 0;
    }

    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// The window size in bytes for `bits` as zlib uses it (8 is compressed with 9, see the module
/// documentation).
fn window_size(bits: u8) -> usize {
    1 << zlib_window_bits(bits)
}

/// One connection's permessage-deflate state.
///
/// Context takeover: what the peer's inflater remembers of our stream is exactly the last `2^w`
/// bytes we sent compressed, and what ours must remember of the peer's is the last `2^w` bytes it
/// sent. A connection keeps those bytes (`sent`, `received`: rings grown on use up to the window,
/// appended to per message without moving what they hold), and, while it is active, a live
/// stream of each direction taken from the worker's pool: an inflater that inflates each message
/// of the peer in turn, as a zlib stream kept per connection does, and a compressor that
/// compresses each message we send with `Z_SYNC_FLUSH`. Neither is primed per message. A
/// connection without a live stream (its first compressed message, or after the worker detached
/// the stream for a more recently active connection: see [`DeflateConfig::live_inflaters`]) gets
/// one from the pool, reset and primed with the saved window as a preset dictionary (zlib's
/// `inflateSetDictionary` / `deflateSetDictionary` on a raw stream); the LZ77 history is the same
/// either way, and a sync flush ends every message on a block boundary. A message that does not
/// shrink, or that the application sends uncompressed, does not enter the window, so either may go
/// out uncompressed even with context takeover.
///
/// Attaching and detaching live streams is the caller's: [`DeflateState::holds_inflater`],
/// [`DeflateState::release_inflater`] and the compressor's counterparts, with a recently-used
/// bit for a clock ([`DeflateState::take_inflater_used`]). `surge::blocking` keeps both streams for
/// the life of the connection (one connection per pool); the engine bounds them per worker.
#[derive(Debug)]
pub struct DeflateState {
    send: Direction,
    recv: Direction,
    /// The last bytes we sent compressed (context takeover only; empty until the first).
    sent: Window,
    /// The last bytes the peer sent compressed, inflated (context takeover only).
    received: Window,
    /// The live compressor (context takeover only).
    compressor: Option<Box<Compress>>,
    /// The live compressor compressed a message that was not committed (dropped before it was
    /// queued): it must be primed again from `sent`.
    compressor_stale: bool,
    /// The live inflater (context takeover), or the pool's inflater held while a message arrives
    /// in pieces over several reads (without context takeover).
    inflater: Option<Box<Decompress>>,
    /// The inflater does not hold the window (a new stream after a BFINAL block, or an error):
    /// reset and prime it at the next message.
    inflater_stale: bool,
    /// Between the first and the last piece of a message: the inflater cannot be detached.
    mid_message: bool,
    /// Used since the caller last asked ([`DeflateState::take_inflater_used`]).
    inflater_used: bool,
    /// Used since the caller last asked ([`DeflateState::take_compressor_used`]).
    compressor_used: bool,
    /// A block with BFINAL set ended the message being inflated before its last piece: the rest of
    /// the message is not read (as when it follows in the same piece).
    ended: bool,
    /// UTF-8 of a compressed text message delivered in pieces.
    utf8: surge_simd::Utf8Stream,
    /// Bytes of the message delivered in pieces inflated so far (the limit bounds the total).
    piece_total: u64,
}

impl DeflateState {
    /// State for a connection where `params` were negotiated and we play `role`. Allocates nothing.
    pub fn new(params: DeflateParams, role: Role) -> Self {
        DeflateState {
            send: params.send(role),
            recv: params.recv(role),
            sent: Window::default(),
            received: Window::default(),
            compressor: None,
            compressor_stale: false,
            inflater: None,
            inflater_stale: false,
            mid_message: false,
            inflater_used: false,
            compressor_used: false,
            ended: false,
            utf8: surge_simd::Utf8Stream::new(),
            piece_total: 0,
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
        self.sent.capacity() != 0
            || self.received.capacity() != 0
            || self.inflater.is_some()
            || self.compressor.is_some()
    }

    /// Heap bytes of this connection's saved windows (live streams aside).
    pub fn held_bytes(&self) -> usize {
        self.sent.capacity() + self.received.capacity()
    }

    /// Whether an inflater is held between the pieces of a compressed message arriving over
    /// several reads (without context takeover: given back with its last piece).
    pub fn inflater_held(&self) -> bool {
        self.inflater.is_some() && self.mid_message
    }

    /// Whether this connection holds a live inflater (context takeover) or one mid-message.
    pub fn holds_inflater(&self) -> bool {
        self.inflater.is_some()
    }

    /// Whether this connection holds a live compressor (context takeover).
    pub fn holds_compressor(&self) -> bool {
        self.compressor.is_some()
    }

    /// Whether the next message received attaches a live inflater that stays after it (context
    /// takeover, none held yet): the caller may make room for one, before the read or once the read
    /// that attached it ([`DeflateState::holds_inflater`]) returns.
    pub fn wants_inflater(&self) -> bool {
        !self.recv.no_context_takeover && self.inflater.is_none()
    }

    /// Whether the next message sent compressed attaches a live compressor (context takeover, none
    /// held yet).
    pub fn wants_compressor(&self) -> bool {
        !self.send.no_context_takeover && self.compressor.is_none()
    }

    /// Whether the inflater was used since the last call (and clears the mark): a clock's
    /// second chance.
    pub fn take_inflater_used(&mut self) -> bool {
        std::mem::take(&mut self.inflater_used)
    }

    /// Whether the compressor was used since the last call (and clears the mark).
    pub fn take_compressor_used(&mut self) -> bool {
        std::mem::take(&mut self.compressor_used)
    }

    /// Gives the live inflater back to `pool`; the saved window stays, and the next message primes
    /// a stream from it. `false` (nothing done) between the pieces of a message.
    pub fn release_inflater(&mut self, pool: &mut DeflatePool) -> bool {
        if self.mid_message {
            return false;
        }
        if let Some(d) = self.inflater.take() {
            pool.give_inflater(self.recv.window_bits, d);
        }
        true
    }

    /// Gives the live compressor back to `pool`; the saved window stays.
    pub fn release_compressor(&mut self, pool: &mut DeflatePool) {
        if let Some(c) = self.compressor.take() {
            pool.give_compressor(self.send.window_bits, c);
        }
    }

    /// Compresses one whole message into `out` (appended) and advances our window: see
    /// [`DeflateState::compress_pending`] and [`DeflateState::commit`].
    pub fn compress(
        &mut self,
        payload: &[u8],
        cfg: &DeflateConfig,
        pool: &mut DeflatePool,
        out: &mut Vec<u8>,
    ) -> bool {
        let compressed = self.compress_pending(payload, cfg, pool, out);
        if compressed {
            self.commit(payload);
        }
        compressed
    }

    /// Compresses one whole message into `out` (appended) unless it is shorter than
    /// `cfg.min_size` or (without context takeover, and unless `min_size` is 0: "compress every
    /// message") does not shrink. `true`: send `out` with RSV1 set on the first frame, then
    /// call [`DeflateState::commit`] with the same payload once it is queued (not if it is dropped);
    /// `false`: send `payload` uncompressed (RSV1 clear). For the per-message opt-out, do not call
    /// this.
    pub fn compress_pending(
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
        } else {
            let mut c = match self.compressor.take() {
                Some(c) if !self.compressor_stale => c,
                Some(mut c) => {
                    c.reset();
                    self.prime_compressor(&mut c);
                    c
                }
                None => {
                    let mut c = pool.take_compressor(self.send.window_bits);
                    self.prime_compressor(&mut c);
                    c
                }
            };
            compress_stream(&mut c, payload, out);
            pool.stats.out_plain += payload.len() as u64;
            pool.stats.out_compressed += (out.len() - start) as u64;
            self.compressor = Some(c);
            self.compressor_used = true;
            // Until `commit`: a message dropped before it is queued is not in the peer's window.
            self.compressor_stale = true;
            // Sent compressed even when it did not shrink: the message then enters both windows and
            // the next similar message refers to it.
            return true;
        }
        if cfg.min_size > 0 && out.len() - start >= payload.len() {
            out.truncate(start);
            return false;
        }
        true
    }

    fn prime_compressor(&mut self, c: &mut Compress) {
        if !self.sent.is_empty() {
            c.set_dictionary(self.sent.contiguous())
                .expect("a raw deflate stream takes a dictionary after a reset");
        }
    }

    /// The message compressed by [`DeflateState::compress_pending`] was sent: the peer's window now
    /// holds it, so ours does too.
    pub fn commit(&mut self, payload: &[u8]) {
        if !self.send.no_context_takeover {
            self.sent.push(payload, window_size(self.send.window_bits));
            self.compressor_stale = false;
        }
    }

    /// A message compressed without context takeover (a prepared message from
    /// [`compress_variant`]) was sent here. With context takeover the peer's window now holds bytes
    /// that ours does not (and libdeflate's output may end the peer's stream): our window is
    /// forgotten, which only makes us refer to less history than the peer holds, and that is always
    /// valid.
    pub fn sent_independent(&mut self) {
        self.sent.clear();
        if let Some(c) = &mut self.compressor {
            // A reset stream refers to nothing before: the same as one primed with an empty window.
            c.reset();
        }
    }

    /// Inflates one piece of a compressed message, appending to `out`; `fin` marks the message's last
    /// piece. The first piece of each message must come with `first`. `out.len()` may not exceed
    /// `cfg.max_decompressed`: beyond it, [`Error::MessageTooBig`] (1009), and `out` never grows past
    /// one byte more than the limit. Corrupt data is [`Error::CompressedDataInvalid`] (1007).
    ///
    /// With context takeover the connection's live inflater is used (attached from the pool and
    /// primed with the saved window when there is none); without, the worker's inflater, held by
    /// the connection between the first and the last piece of a message and given back with the
    /// last.
    ///
    /// Bytes after a block with BFINAL set (which ends the message's DEFLATE stream, 7.2.3.3) are
    /// not read, whether they come in the same piece or in later ones, so the result does not
    /// depend on how the message is split (gorilla's reader, Go's `compress/flate`, stops there
    /// too). The next message is then a new stream, primed with the window.
    pub fn decompress(
        &mut self,
        input: &[u8],
        first: bool,
        fin: bool,
        cfg: &DeflateConfig,
        pool: &mut DeflatePool,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if first {
            self.ended = false;
        } else if self.ended {
            self.ended = !fin;
            return Ok(());
        }
        let takeover = !self.recv.no_context_takeover;
        // Without context takeover every message starts afresh, in a window-15 inflater (a larger
        // window inflates anything made with a smaller one).
        let bits = if takeover {
            self.recv.window_bits
        } else {
            MAX_WINDOW_BITS
        };
        let mut d = match self.inflater.take() {
            Some(d) if !first || (takeover && !self.inflater_stale && !self.mid_message) => d,
            Some(mut d) => {
                d.reset(false);
                self.prime_inflater(&mut d, takeover)?;
                d
            }
            None => {
                let mut d = pool.take_inflater(bits);
                self.prime_inflater(&mut d, takeover)?;
                d
            }
        };
        self.inflater_used = true;
        let max = cfg.max_decompressed;
        let start = out.len();
        let result = (|| {
            let mut ended = inflate(&mut d, input, out, max)?;
            if fin && !ended {
                // "Append 4 octets of 0x00 0x00 0xff 0xff to the tail end of the payload of the
                // message" (7.2.2)
                ended = inflate(&mut d, &TAIL, out, max)?;
            }
            if ended {
                // A block with BFINAL set ended the stream (7.2.3.3): the next message is a new
                // stream.
                d.reset(false);
            }
            Ok(ended)
        })();
        pool.stats.in_compressed += input.len() as u64;
        pool.stats.in_plain += (out.len() - start) as u64;
        if result.is_ok() && takeover {
            self.received
                .push(&out[start..], window_size(self.recv.window_bits));
        }
        self.mid_message = matches!(result, Ok(false)) && !fin;
        // After a BFINAL block or an error the stream no longer holds the window.
        self.inflater_stale = !matches!(result, Ok(false));
        if let Ok(true) = result {
            self.ended = !fin;
        }
        if takeover || self.mid_message {
            self.inflater = Some(d);
        } else {
            pool.give_inflater(bits, d);
        }
        result.map(|_| ())
    }

    /// Primes a reset inflater with the saved window (context takeover).
    fn prime_inflater(&mut self, d: &mut Decompress, takeover: bool) -> Result<(), Error> {
        self.inflater_stale = false;
        if takeover && !self.received.is_empty() {
            d.set_dictionary(self.received.contiguous())
                .map_err(|_| Error::CompressedDataInvalid)?;
        }
        Ok(())
    }

    /// Inflates one piece of a compressed message delivered in pieces (`stream_fragments`) into
    /// `out` (emptied first; at the first piece a buffer above [`MAX_KEPT_BUFFER`] is replaced),
    /// validating text as a stream: a piece may end inside a code point that the next completes
    /// (1007 as soon as the bytes cannot be UTF-8). `cfg.max_decompressed` bounds the whole
    /// message, the total of its pieces: beyond it, [`Error::MessageTooBig`] (1009) with that
    /// total, after at most one byte of excess inflated.
    #[allow(clippy::too_many_arguments)]
    pub fn decompress_piece(
        &mut self,
        kind: MessageKind,
        input: &[u8],
        first: bool,
        fin: bool,
        cfg: &DeflateConfig,
        pool: &mut DeflatePool,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if first {
            self.utf8.reset();
            self.piece_total = 0;
            reuse(out);
        } else {
            out.clear();
        }
        let max = cfg.max_decompressed;
        let left = DeflateConfig {
            max_decompressed: max.saturating_sub(self.piece_total),
            ..*cfg
        };
        let inflated = self.decompress(input, first, fin, &left, pool, out);
        self.piece_total += out.len() as u64;
        if let Err(Error::MessageTooBig { .. }) = inflated {
            return Err(Error::MessageTooBig {
                len: self.piece_total,
                max,
            });
        }
        inflated?;
        if kind == MessageKind::Text {
            self.utf8.feed(out).map_err(|_| Error::InvalidUtf8)?;
            if fin {
                self.utf8.finish().map_err(|_| Error::InvalidUtf8)?;
            }
        }
        Ok(())
    }

    /// Inflates a whole compressed message of `kind` into `out` (emptied first, or replaced when
    /// above [`MAX_KEPT_BUFFER`]) and returns it, text validated as UTF-8 (1007).
    pub fn decompress_message<'a>(
        &mut self,
        kind: MessageKind,
        input: &[u8],
        cfg: &DeflateConfig,
        pool: &mut DeflatePool,
        out: &'a mut Vec<u8>,
    ) -> Result<Message<'a>, Error> {
        reuse(out);
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
    let too_big = |out: &Vec<u8>| Error::MessageTooBig {
        len: out.len() as u64,
        max,
    };
    loop {
        if out.len() as u64 > max {
            return Err(too_big(out));
        }
        if out.len() == out.capacity() {
            let target = out
                .len()
                .saturating_mul(2)
                .max(out.len() + 4096)
                .min(cap_limit);
            out.reserve_exact(target - out.len());
        }
        // The output space ends at the limit plus one, also in a reused buffer with more capacity
        // than that (found by the `deflate` fuzz target: the inflater filled the whole capacity).
        let room_end = out.capacity().min(cap_limit);
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = if out.capacity() > cap_limit {
            let start = out.len();
            out.resize(cap_limit, 0);
            let status = d.decompress(input, &mut out[start..], FlushDecompress::Sync);
            out.truncate(start + (d.total_out() - out0) as usize);
            status
        } else {
            d.decompress_vec(input, out, FlushDecompress::Sync)
        }
        .map_err(|_| Error::CompressedDataInvalid)?;
        let consumed = (d.total_in() - in0) as usize;
        let produced = d.total_out() - out0;
        input = &input[consumed..];
        if out.len() as u64 > max {
            return Err(too_big(out));
        }
        match status {
            Status::StreamEnd => return Ok(true),
            _ if out.len() < room_end && (input.is_empty() || consumed == 0 && produced == 0) => {
                // All input taken and all output written (the inflater had room left).
                return Ok(false);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring holds the last `size` bytes pushed, whatever the sizes of the pushes.
    #[test]
    fn window_is_the_last_bytes_pushed() {
        for size in [512usize, 4096] {
            let mut w = Window::default();
            let mut all = Vec::new();
            let mut x = 7u32;
            for i in 0..2000usize {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let len = [0, 1, 3, 20, 511, 512, 513, 5000][(x >> 16) as usize % 8];
                let data: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
                w.push(&data, size);
                all.extend_from_slice(&data);
                assert!(w.capacity() <= size);
                if i % 7 == 0 {
                    let tail = &all[all.len().saturating_sub(size)..];
                    assert_eq!(w.contiguous(), tail);
                }
            }
        }
    }

    /// The pool counts the bytes through its compressors and inflaters (the engine's metrics).
    #[test]
    fn pool_counts_plain_and_compressed_bytes() {
        let cfg = DeflateConfig {
            min_size: 0,
            ..DeflateConfig::default()
        };
        let mut pool = DeflatePool::new(1);
        let mut server = DeflateState::new(DeflateParams::default(), Role::Server);
        let mut client = DeflateState::new(DeflateParams::default(), Role::Client);
        let msg = vec![b'a'; 1000];
        let mut wire = Vec::new();
        assert!(server.compress_pending(&msg, &cfg, &mut pool, &mut wire));
        server.commit(&msg);
        let mut out = Vec::new();
        client
            .decompress_message(MessageKind::Binary, &wire, &cfg, &mut pool, &mut out)
            .unwrap();
        let st = pool.stats();
        assert_eq!((st.out_plain, st.out_compressed), (1000, wire.len() as u64));
        assert_eq!((st.in_compressed, st.in_plain), (wire.len() as u64, 1000));
        assert!(st.out_compressed < 100, "{st:?}");
    }
}
