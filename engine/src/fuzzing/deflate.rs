//! The `deflate` fuzz target: permessage-deflate negotiation (both sides) and an operation sequence
//! over one connection's compression state, checked against flate2 as an independent peer.
//!
//! The input is read as a sequence of choices ([`Choices`]; a small stand-in for
//! `arbitrary::Unstructured`, so that the committed corpus replays under `cargo test` without the
//! fuzzer's crates): first the negotiation case, then the connection's parameters and limits, then
//! operations ([`Op`]) until the input runs out.
//!
//! What is asserted:
//!
//! - Negotiation: a client's own offer is accepted by a server with compression on, and the client
//!   accepts the answer with parameters that agree with the server's; any offer the server accepts
//!   yields parameters within the configured limits and an answer that, read back as an offer,
//!   negotiates the same parameters; any response the client accepts has windows in 8..=15 within
//!   what it asked for.
//! - Compression: what we compress (with or without context takeover, any window, libdeflate or
//!   zlib-rs, prepared messages) inflates back to the message in a flate2 inflater that plays the
//!   peer, with the negotiated window; what a flate2 compressor playing the peer sends (sync
//!   flushes, context takeover, blocks with BFINAL) inflates to the message, however it is split;
//!   arbitrary bytes as a compressed message give what a flate2 inflater gives (same output
//!   or both failing), however split, and never more than one byte past the size limit: a fresh
//!   one per message without context takeover, one kept across messages with it (see
//!   `LiveModel`). What the peer sends goes through the protocol core as frames (one frame, or
//!   a fragmented message streamed piece by piece), which inflates it as the engine and
//!   `surge::blocking` have it do.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::handshake::client::{parse_response, ClientRequest, ResponseStatus};
use crate::handshake::deflate_negotiation::{
    client_accept_with, client_offer_with, negotiate, Negotiated,
};
use crate::handshake::{parse_request, HandshakeConfig, ParseStatus, Request};
use crate::proto::deflate::TAIL;
use crate::proto::{
    compress_variant, Config, DeflateConfig, DeflateMode, DeflateParams, DeflatePool, DeflateState,
    Direction, Error, Event, Inflate, Message, MessageKind, NoPool, Role, Session, RSV1,
};

/// Reads choices off the input; past its end every read gives zeros.
struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bool(&mut self) -> bool {
        self.byte() & 1 != 0
    }

    /// A number below `n` (at most 256).
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    /// Up to `max` bytes (a length byte, or two when `max` is over 255, then the bytes).
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = if max > 255 {
            usize::from(u16::from_le_bytes([self.byte(), self.byte()]))
        } else {
            usize::from(self.byte())
        };
        let len = (len % (max + 1)).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation

fn mode(c: &mut Choices<'_>) -> DeflateMode {
    match c.below(3) {
        0 => DeflateMode::Disabled,
        1 => DeflateMode::NoContextTakeover,
        // Out-of-range windows too: the mode clamps them.
        _ => DeflateMode::ContextTakeover {
            server_max_window_bits: 6 + c.below(12) as u8,
            client_max_window_bits: 6 + c.below(12) as u8,
        },
    }
}

/// The windows a mode allows (server, client), clamped as the negotiation does.
fn limits(mode: DeflateMode) -> (u8, u8) {
    match mode {
        DeflateMode::ContextTakeover {
            server_max_window_bits: s,
            client_max_window_bits: c,
        } => (s.clamp(8, 15), c.clamp(8, 15)),
        _ => (15, 15),
    }
}

/// One `Sec-WebSocket-Extensions` value: offers of known and unknown extensions with known,
/// unknown, repeated and badly valued parameters, or a soup of the grammar's tokens.
fn extension_value(c: &mut Choices<'_>) -> String {
    const NAMES: [&str; 4] = [
        "permessage-deflate",
        "PerMessage-Deflate",
        "x-webkit-deflate-frame",
        "foo",
    ];
    const PARAMS: [&str; 6] = [
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
        "CLIENT_MAX_WINDOW_BITS",
        "x",
    ];
    const VALUES: [&str; 8] = ["8", "15", "16", "7", "08", "\"10\"", "\"1\\2\"", "a"];
    const SOUP: [&str; 12] = [
        "permessage-deflate",
        "client_max_window_bits",
        "server_no_context_takeover",
        "=",
        ";",
        ",",
        " ",
        "\"",
        "\\",
        "9",
        "\t",
        "=\"1\\1\"",
    ];
    let mut v = String::new();
    if c.below(4) == 0 {
        for _ in 0..c.below(16) {
            v.push_str(SOUP[c.below(SOUP.len())]);
        }
        return v;
    }
    for i in 0..1 + c.below(3) {
        if i > 0 {
            v.push_str([",", ", ", " ,\t"][c.below(3)]);
        }
        v.push_str(NAMES[c.below(NAMES.len())]);
        for _ in 0..c.below(5) {
            v.push_str(["; ", ";", " ; "][c.below(3)]);
            v.push_str(PARAMS[c.below(PARAMS.len())]);
            match c.below(4) {
                0 => {}
                1 => {
                    v.push('=');
                    v.push_str(&(c.below(21)).to_string());
                }
                _ => {
                    v.push('=');
                    v.push_str(VALUES[c.below(VALUES.len())]);
                }
            }
        }
    }
    v
}

fn request_with(values: &[String]) -> Request {
    let mut text = String::from(
        "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    for v in values {
        text.push_str(&format!("Sec-WebSocket-Extensions: {v}\r\n"));
    }
    text.push_str("\r\n");
    match parse_request(text.as_bytes(), &HandshakeConfig::default()) {
        Ok(ParseStatus::Complete { request, .. }) => request,
        other => panic!("request {text:?}: {other:?}"),
    }
}

/// Checks the server's parameters against its mode; returns them.
fn check_negotiated(n: &Negotiated, mode: DeflateMode) -> DeflateParams {
    let p = n.params;
    for bits in [p.server_max_window_bits, p.client_max_window_bits] {
        assert!((8..=15).contains(&bits), "{p:?}");
    }
    let (server_limit, client_limit) = limits(mode);
    assert!(p.server_max_window_bits <= server_limit, "{p:?} {mode:?}");
    // A client that did not offer client_max_window_bits may use 15 whatever the server wants.
    assert!(
        p.client_max_window_bits <= client_limit || p.client_max_window_bits == 15,
        "{p:?} {mode:?}"
    );
    if mode == DeflateMode::NoContextTakeover {
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
    }
    // The answer, read back as an offer by a server that allows anything, says the same.
    let again = negotiate(
        request_with(std::slice::from_ref(&n.response)).extensions(),
        DeflateMode::ContextTakeover {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        },
    )
    .unwrap_or_else(|| panic!("answer {:?} is not a valid offer", n.response));
    assert_eq!(again.params, p, "answer {:?}", n.response);
    p
}

fn client_response(offer: &str, value: &str) -> Option<crate::handshake::client::Response> {
    let expected = ClientRequest::new("h", 80, "/")
        .extensions(offer)
        .write_with_nonce(&mut Vec::new(), *b"the sample nonce");
    let text = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: {value}\r\n\r\n",
        expected.accept()
    );
    match parse_response(text.as_bytes(), &expected) {
        Ok(ResponseStatus::Complete { response, .. }) => Some(response),
        Ok(ResponseStatus::Partial) => panic!("partial response {text:?}"),
        Err(_) => None,
    }
}

fn check_negotiation(c: &mut Choices<'_>) {
    let server_mode = mode(c);
    let client_mode = mode(c);
    let client_nct = c.bool();

    // A client's own offer, the server's answer, the client's reading of it.
    let offer = client_offer_with(client_mode, client_nct);
    assert_eq!(offer.is_none(), client_mode == DeflateMode::Disabled);
    if let Some(offer) = &offer {
        let n = negotiate(
            request_with(std::slice::from_ref(offer)).extensions(),
            server_mode,
        );
        assert_eq!(n.is_none(), server_mode == DeflateMode::Disabled, "{offer}");
        if let Some(n) = n {
            let s = check_negotiated(&n, server_mode);
            let response = client_response(offer, &n.response)
                .unwrap_or_else(|| panic!("client refuses the response {:?}", n.response));
            let got = client_accept_with(response.extensions(), client_mode, client_nct)
                .unwrap_or_else(|e| panic!("{offer} -> {}: {e}", n.response))
                .expect("accepted");
            assert_eq!(got.server_no_context_takeover, s.server_no_context_takeover);
            assert_eq!(got.server_max_window_bits, s.server_max_window_bits);
            // The client may compress with less than the server allows, never more.
            assert!(got.client_max_window_bits <= s.client_max_window_bits);
            assert!(got.client_no_context_takeover || !s.client_no_context_takeover);
        }
    }

    // Arbitrary offers.
    let values: Vec<String> = (0..1 + c.below(2)).map(|_| extension_value(c)).collect();
    if let Some(n) = negotiate(request_with(&values).extensions(), server_mode) {
        check_negotiated(&n, server_mode);
    }

    // An arbitrary response.
    let value = extension_value(c);
    let offered = offer.as_deref().unwrap_or("permessage-deflate");
    if let Some(response) = client_response(offered, &value) {
        if let Ok(Some(p)) = client_accept_with(response.extensions(), client_mode, client_nct) {
            let (_, client_limit) = limits(client_mode);
            assert!((8..=15).contains(&p.server_max_window_bits), "{p:?}");
            assert!(
                (8..=client_limit).contains(&p.client_max_window_bits),
                "{p:?}"
            );
            if client_mode == DeflateMode::NoContextTakeover {
                assert!(p.server_no_context_takeover && p.client_no_context_takeover);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compression and inflation

/// One step of the connection.
#[derive(Debug)]
enum Op {
    /// The peer (a flate2 compressor) sends `data`; we inflate it in `cuts` pieces. `final_block`:
    /// the message ends with a BFINAL block instead of a sync flush (RFC 7692 section 7.2.3.3).
    PeerSends {
        kind: MessageKind,
        data: Vec<u8>,
        final_block: bool,
        cuts: Vec<usize>,
    },
    /// Arbitrary bytes as a compressed message from the peer, in `cuts` pieces.
    PeerRaw {
        kind: MessageKind,
        data: Vec<u8>,
        cuts: Vec<usize>,
    },
    /// We compress `data`: the peer (a flate2 inflater) must read it back.
    WeSend { data: Vec<u8> },
    /// We send `data` as a prepared message, compressed without context takeover.
    WeSendPrepared { data: Vec<u8> },
}

/// A message's bytes: taken from the input, repeated (long, compressible messages that cross
/// window sizes), or a piece of what was sent before followed by new bytes (back references at
/// every distance).
fn message(c: &mut Choices<'_>, before: &[u8]) -> Vec<u8> {
    match c.below(4) {
        0 | 1 => c.bytes(300).to_vec(),
        2 => {
            let unit = c.bytes(40);
            unit.repeat(1 + usize::from(c.byte()) * 4)
        }
        _ => {
            let len = before.len();
            let end = len - (usize::from(c.byte()) * 64).min(len);
            let start = end - (usize::from(c.byte()) * 8).min(end);
            let mut m = before[start..end].to_vec();
            m.extend_from_slice(c.bytes(40));
            m
        }
    }
}

fn cuts(c: &mut Choices<'_>, len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..c.below(4))
        .map(|_| usize::from(u16::from_le_bytes([c.byte(), c.byte()])) % (len + 1))
        .collect();
    cuts.sort_unstable();
    cuts
}

fn kind(c: &mut Choices<'_>) -> MessageKind {
    if c.bool() {
        MessageKind::Text
    } else {
        MessageKind::Binary
    }
}

fn op(c: &mut Choices<'_>, before: &[u8]) -> Op {
    match c.below(4) {
        0 => {
            let kind = kind(c);
            let data = message(c, before);
            let final_block = c.below(4) == 0;
            // Cut positions, taken modulo the compressed length once it is known.
            let cuts = (0..c.below(4))
                .map(|_| usize::from(u16::from_le_bytes([c.byte(), c.byte()])))
                .collect();
            Op::PeerSends {
                kind,
                data,
                final_block,
                cuts,
            }
        }
        1 => {
            let kind = kind(c);
            let data = c.bytes(600).to_vec();
            let cuts = cuts(c, data.len());
            Op::PeerRaw { kind, data, cuts }
        }
        2 => Op::WeSend {
            data: message(c, before),
        },
        _ => Op::WeSendPrepared {
            data: message(c, before),
        },
    }
}

/// zlib has no raw deflate with an 8-bit window: 9 (see `proto::deflate`).
fn zlib_bits(bits: u8) -> u8 {
    bits.clamp(9, 15)
}

/// Keeps the last `size` bytes of `history` after appending `data`.
fn push(history: &mut Vec<u8>, data: &[u8], size: usize) {
    history.extend_from_slice(data);
    if history.len() > size {
        history.drain(..history.len() - size);
    }
}

/// The peer's compressor: one zlib stream kept across messages with context takeover (as RFC 7692
/// describes a sender), reset per message without.
struct PeerCompressor {
    c: Compress,
    dir: Direction,
    level: u32,
    /// What the peer sent compressed, the last window of it (context takeover only).
    history: Vec<u8>,
}

impl PeerCompressor {
    fn new(dir: Direction, level: u32) -> Self {
        PeerCompressor {
            c: Compress::new_with_window_bits(
                Compression::new(level),
                false,
                zlib_bits(dir.window_bits),
            ),
            dir,
            level,
            history: Vec::new(),
        }
    }

    /// Starts a new stream whose window is `history` (after a BFINAL block, or when the peer's
    /// window holds bytes this stream did not compress).
    fn resync(&mut self) {
        *self = PeerCompressor {
            history: std::mem::take(&mut self.history),
            ..PeerCompressor::new(self.dir, self.level)
        };
        if !self.dir.no_context_takeover && !self.history.is_empty() {
            self.c.set_dictionary(&self.history).expect("dictionary");
        }
    }

    fn compress(&mut self, data: &[u8], final_block: bool) -> Vec<u8> {
        if self.dir.no_context_takeover {
            self.c.reset();
        }
        let flush = if final_block {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut input = data;
        loop {
            out.reserve(input.len() / 2 + 64);
            let before = self.c.total_in();
            let status = self
                .c
                .compress_vec(input, &mut out, flush)
                .expect("compress");
            input = &input[(self.c.total_in() - before) as usize..];
            let done = if final_block {
                status == Status::StreamEnd
            } else {
                input.is_empty() && out.len() < out.capacity()
            };
            if done {
                break;
            }
        }
        if !self.dir.no_context_takeover {
            push(
                &mut self.history,
                data,
                1 << zlib_bits(self.dir.window_bits),
            );
        }
        if final_block {
            self.resync();
        } else if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    }
}

/// A plain flate2 inflater: the message's bytes, then the four octets unless a BFINAL block ended
/// it (anything after that block is not read), at most `max + 1` bytes out. `dictionary`: the
/// window under context takeover.
fn inflate_plain(payload: &[u8], dictionary: &[u8], max: u64) -> Result<Vec<u8>, ()> {
    let mut d = Decompress::new(false);
    if !dictionary.is_empty() {
        d.set_dictionary(dictionary).map_err(|_| ())?;
    }
    inflate_with(&mut d, payload, max).map(|(out, _)| out)
}

/// Our inflater for a peer with context takeover, as a model: one flate2 stream with the peer's
/// window kept across messages (as a zlib stream per connection), started afresh and primed with
/// the window when none is running (the first message, and after a BFINAL block ended one).
struct LiveModel {
    d: Option<Decompress>,
    bits: u8,
}

impl LiveModel {
    fn message(&mut self, payload: &[u8], window: &[u8], max: u64) -> Result<Vec<u8>, ()> {
        let mut d = match self.d.take() {
            Some(d) => d,
            None => {
                let mut d = Decompress::new_with_window_bits(false, self.bits);
                if !window.is_empty() {
                    d.set_dictionary(window).map_err(|_| ())?;
                }
                d
            }
        };
        let (out, ended) = inflate_with(&mut d, payload, max)?;
        if !ended {
            self.d = Some(d);
        }
        Ok(out)
    }
}

/// `payload` then the four octets unless a BFINAL block ended the stream (anything after it is not
/// read), through `d`; at most `max + 1` bytes out. The output and whether the stream ended.
fn inflate_with(d: &mut Decompress, payload: &[u8], max: u64) -> Result<(Vec<u8>, bool), ()> {
    let cap = usize::try_from(max).unwrap_or(usize::MAX - 1) + 1;
    let mut out = Vec::new();
    for mut input in [payload, &TAIL[..]] {
        loop {
            if out.len() == out.capacity() {
                out.reserve_exact((out.len() * 2).max(out.len() + 4096).min(cap) - out.len());
            }
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| ())?;
            let consumed = (d.total_in() - in0) as usize;
            let produced = d.total_out() - out0;
            input = &input[consumed..];
            if out.len() as u64 > max {
                return Err(());
            }
            if status == Status::StreamEnd {
                return Ok((out, true));
            }
            if out.len() < out.capacity() && (input.is_empty() || consumed == 0 && produced == 0) {
                break;
            }
        }
    }
    Ok((out, false))
}

/// The peer's inflater for what we send: one zlib stream with the negotiated window (so a match
/// further back than the window fails), reset per message without context takeover and after a
/// BFINAL block (the strictest peer: it forgets its window then).
struct PeerInflater {
    d: Decompress,
    dir: Direction,
}

impl PeerInflater {
    fn new(dir: Direction) -> Self {
        PeerInflater {
            d: Decompress::new_with_window_bits(false, zlib_bits(dir.window_bits)),
            dir,
        }
    }

    fn inflate(&mut self, payload: &[u8]) -> Vec<u8> {
        if self.dir.no_context_takeover {
            self.d.reset(false);
        }
        let mut out = Vec::new();
        for mut input in [payload, &TAIL[..]] {
            loop {
                out.reserve(4096);
                let before = self.d.total_in();
                let status = self
                    .d
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .unwrap_or_else(|e| panic!("the peer cannot inflate what we sent: {e}"));
                input = &input[(self.d.total_in() - before) as usize..];
                if status == Status::StreamEnd {
                    self.d.reset(false);
                    return out;
                }
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
            }
        }
        out
    }
}

/// Our side: the protocol core of a connection with permessage-deflate, and the peer's encoder.
struct Core {
    ours: Session,
    peer: Session,
    cfg: Config,
    peer_cfg: Config,
}

impl Core {
    fn new(role: Role) -> Self {
        let peer_role = match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let mut ours = Session::new(role, 7);
        ours.enable_compression();
        let mut peer = Session::new(peer_role, 11);
        peer.enable_compression();
        let mut cfg = Config::server();
        cfg.role = role;
        // The inflated size is bounded by `max_decompressed` alone here.
        cfg.max_message_size = 1 << 30;
        let mut peer_cfg = Config::server();
        peer_cfg.role = peer_role;
        Core {
            ours,
            peer,
            cfg,
            peer_cfg,
        }
    }
}

/// Our side inflating one compressed message the way the engine and `blocking` do: the peer frames
/// it (one frame without `cuts`; else a fragmented message, a frame per piece) and the protocol
/// core reads the frames one by one, inflating through an [`Inflate`]: a whole message, or
/// (`stream_fragments`) the pieces of a fragmented one, the limit applied to their total.
fn inflate_ours(
    core: &mut Core,
    st: &mut DeflateState,
    kind: MessageKind,
    payload: &[u8],
    cuts: &[usize],
    cfg: &DeflateConfig,
    pool: &mut DeflatePool,
) -> Result<Vec<u8>, Error> {
    let mut frames = Vec::new();
    if cuts.is_empty() {
        let mut wire = Vec::new();
        core.peer
            .send(&mut wire, kind, payload, &core.peer_cfg, RSV1)
            .expect("the peer sends");
        frames.push(wire);
    } else {
        core.peer.begin_message(kind).expect("the peer sends");
        let mut start = 0;
        let ends = cuts.iter().copied().chain([payload.len()]);
        for (i, end) in ends.enumerate() {
            let end = end.clamp(start, payload.len());
            let mut wire = Vec::new();
            core.peer
                .write_fragment(
                    &mut wire,
                    &payload[start..end],
                    i == 0,
                    i == cuts.len(),
                    RSV1,
                )
                .expect("the peer sends");
            frames.push(wire);
            start = end;
        }
    }
    let read_cfg = Config {
        stream_fragments: !cuts.is_empty(),
        ..core.cfg.clone()
    };
    let mut whole = Vec::new();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut done = false;
    let mut pieces = 0;
    for mut frame in frames {
        let mut pos = 0;
        while pos < frame.len() {
            let inflate = Inflate {
                state: &mut *st,
                cfg,
                pool: &mut *pool,
                buf: &mut buf,
            };
            let read = core.ours.read(
                &mut frame[pos..],
                &read_cfg,
                &mut replies,
                &mut NoPool,
                Some(inflate),
            );
            let (n, ev) = match read {
                Ok(found) => found,
                Err(e) => {
                    assert!(core.ours.is_closed());
                    assert!(
                        whole.len() as u64 + buf.len() as u64 <= cfg.max_decompressed + 1,
                        "{e:?}: {} bytes inflated, limit {}",
                        whole.len() + buf.len(),
                        cfg.max_decompressed
                    );
                    return Err(e);
                }
            };
            pos += n;
            match ev {
                None => {}
                Some(Event::Message(m)) => {
                    assert_eq!(m.kind(), kind);
                    if let Message::Text(t) = m {
                        assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                    }
                    whole.extend_from_slice(m.as_bytes());
                    done = true;
                }
                Some(Event::Fragment {
                    kind: k,
                    data,
                    first,
                    last,
                }) => {
                    assert_eq!((k, first), (kind, pieces == 0));
                    pieces += 1;
                    whole.extend_from_slice(data);
                    done = last;
                }
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        core.ours.recycle(&mut NoPool);
    }
    assert!(done, "the message was delivered");
    assert!(replies.is_empty(), "nothing written back");
    assert!(whole.len() as u64 <= cfg.max_decompressed);
    Ok(whole)
}

fn check_connection(c: &mut Choices<'_>) {
    let role = if c.bool() { Role::Server } else { Role::Client };
    let params = DeflateParams {
        server_no_context_takeover: c.bool(),
        client_no_context_takeover: c.bool(),
        server_max_window_bits: 8 + c.below(8) as u8,
        client_max_window_bits: 8 + c.below(8) as u8,
    };
    let level = c.below(10) as u8;
    let cfg = DeflateConfig {
        mode: DeflateMode::NoContextTakeover, // unused here
        min_size: [0, 1, 64][c.below(3)],
        level,
        max_decompressed: [0, 1, 100, 4096, 1 << 16, 16 << 20][c.below(6)],
        libdeflate: c.bool(),
        ..DeflateConfig::default()
    };
    let mut pool = DeflatePool::new(level);
    pool.use_libdeflate(cfg.libdeflate);
    let mut st = DeflateState::new(params, role);
    let mut core = Core::new(role);
    let (send, recv) = (params.send(role), params.recv(role));
    assert_eq!((st.send_direction(), st.recv_direction()), (send, recv));
    let mut peer_out = PeerCompressor::new(recv, u32::from(c.below(10) as u8));
    let mut peer_in = PeerInflater::new(send);
    // Our model of the peer's window as we must hold it (context takeover only).
    let recv_window = 1usize << zlib_bits(recv.window_bits);
    let mut received: Vec<u8> = Vec::new();
    // Our live inflater as a model (context takeover only).
    let mut live = LiveModel {
        d: None,
        bits: zlib_bits(recv.window_bits),
    };
    // Everything exchanged, for messages that refer back to it.
    let mut before: Vec<u8> = Vec::new();

    for _ in 0..48 {
        if c.is_empty() {
            break;
        }
        let op = op(c, &before);
        match op {
            Op::PeerSends {
                kind,
                data,
                final_block,
                cuts,
            } => {
                let payload = peer_out.compress(&data, final_block);
                if !recv.no_context_takeover {
                    // Keeps the model's stream in step (what the peer sends inflates in it too).
                    let model = live.message(&payload, &received, cfg.max_decompressed);
                    if data.len() as u64 <= cfg.max_decompressed {
                        assert!(model.as_deref() == Ok(&data[..]), "the model disagrees");
                    }
                }
                let mut cuts: Vec<usize> = cuts.iter().map(|&x| x % (payload.len() + 1)).collect();
                cuts.sort_unstable();
                let got = inflate_ours(&mut core, &mut st, kind, &payload, &cuts, &cfg, &mut pool);
                let too_big = data.len() as u64 > cfg.max_decompressed;
                let bad_text = kind == MessageKind::Text && std::str::from_utf8(&data).is_err();
                match got {
                    Ok(out) => {
                        assert!(!too_big && !bad_text);
                        assert!(
                            out == data,
                            "inflated {} bytes, not the {} sent",
                            out.len(),
                            data.len()
                        );
                    }
                    Err(Error::MessageTooBig { .. }) if too_big => return,
                    Err(Error::InvalidUtf8) if bad_text => return,
                    Err(e) => panic!("the peer's message failed: {e:?} ({} bytes)", data.len()),
                }
                if !recv.no_context_takeover {
                    push(&mut received, &data, recv_window);
                }
                before.extend_from_slice(&data);
            }
            Op::PeerRaw { kind, data, cuts } => {
                // Without context takeover each message is a stream of its own; with it, the
                // connection's stream carries on from the last message (a message that does not
                // end on a block boundary leaves it mid-block, as a zlib stream per connection).
                let plain = if recv.no_context_takeover {
                    inflate_plain(&data, &[], cfg.max_decompressed)
                } else {
                    live.message(&data, &received, cfg.max_decompressed)
                };
                let got = inflate_ours(&mut core, &mut st, kind, &data, &cuts, &cfg, &mut pool);
                let plain_text_ok =
                    |p: &Vec<u8>| kind == MessageKind::Binary || std::str::from_utf8(p).is_ok();
                match (got, plain) {
                    (Ok(out), Ok(p)) => {
                        assert!(
                            out == p,
                            "{} bytes inflated, flate2 gives {}",
                            out.len(),
                            p.len()
                        );
                        assert!(plain_text_ok(&p));
                        if !recv.no_context_takeover {
                            push(&mut received, &out, recv_window);
                            // The peer's window now holds bytes its stream did not make.
                            peer_out.history = received.clone();
                            peer_out.resync();
                        }
                        before.extend_from_slice(&out);
                    }
                    (Err(e), Ok(p)) if !plain_text_ok(&p) => {
                        assert_eq!(e, Error::InvalidUtf8);
                        return;
                    }
                    (Err(_), Err(())) => return,
                    (got, plain) => panic!(
                        "we got {:?}, flate2 {:?}",
                        got.map(|o| o.len()),
                        plain.map(|p| p.len())
                    ),
                }
            }
            Op::WeSend { data } => {
                let mut out = Vec::new();
                if st.compress(&data, &cfg, &mut pool, &mut out) {
                    assert!(data.len() >= cfg.min_size);
                    assert!(
                        peer_in.inflate(&out) == data,
                        "the peer read back other bytes"
                    );
                } else {
                    assert!(out.is_empty());
                }
                before.extend_from_slice(&data);
            }
            Op::WeSendPrepared { data } => {
                let mut out = Vec::new();
                compress_variant(&data, st.variant(), &mut pool, &mut out);
                st.sent_independent();
                assert!(
                    peer_in.inflate(&out) == data,
                    "the peer read back other bytes"
                );
                before.extend_from_slice(&data);
            }
        }
        let excess = before.len().saturating_sub(1 << 16);
        before.drain(..excess);
        assert!(st.held_bytes() <= 2 << 15);
    }
}

/// The `deflate` fuzz target's check (see the module documentation).
pub fn fuzz_check_deflate(data: &[u8]) {
    let mut c = Choices { data };
    check_negotiation(&mut c);
    check_connection(&mut c);
}
