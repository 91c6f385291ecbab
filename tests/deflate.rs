//! permessage-deflate (RFC 7692): round trips in every mode and window size, split input, context
//! takeover, bombs, the negotiation table, the RFC's own examples, and the memory a connection holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use surge::handshake::{
    client_accept, client_offer, negotiate, parse_request, DeflateResponseError, HandshakeConfig,
    ParseStatus,
};
use surge::proto::deflate::{compress_variant, TAIL};
use surge::proto::{
    Config, DeflateConfig, DeflateMode, DeflateParams, DeflatePool, DeflateState, Error, Event,
    Inflate, Message, MessageKind, NoPool, Role, Session, Variant, RSV1,
};

// ---- a counting allocator: live heap bytes of this thread -------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as isize));
        // SAFETY: same layout, caller's contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as isize));
        // SAFETY: same layout, caller's contract.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as isize));
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + new as isize - l.size() as isize));
        // SAFETY: caller's contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.with(|c| c.get())
}

// ---- helpers ----------------------------------------------------------------------------------

fn cfg(mode: DeflateMode) -> DeflateConfig {
    DeflateConfig {
        mode,
        min_size: 0,
        ..DeflateConfig::default()
    }
}

fn params(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: snct,
        client_no_context_takeover: cnct,
        server_max_window_bits: sbits,
        client_max_window_bits: cbits,
    }
}

/// A deterministic, compressible JSON-ish corpus.
fn corpus(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let mut s = String::new();
            let items = 1 + (next() % 40) as usize;
            s.push_str(&format!(
                "{{\"seq\":{i},\"room\":\"lobby-{}\",\"events\":[",
                next() % 7
            ));
            for k in 0..items {
                s.push_str(&format!(
                    "{{\"user\":\"player{}\",\"x\":{},\"y\":{},\"text\":\"héllo wörld {}\"}}{}",
                    next() % 50,
                    next() % 1000,
                    next() % 1000,
                    next() % 100_000,
                    if k + 1 < items { "," } else { "" }
                ));
            }
            s.push_str("]}");
            s.into_bytes()
        })
        .collect()
}

/// Sends each message from `a` (role `ra`) to `b` and checks what comes out.
fn round_trip(p: DeflateParams, msgs: &[Vec<u8>], split: Option<usize>) -> usize {
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool_a = DeflatePool::new(6);
    let mut pool_b = DeflatePool::new(6);
    let mut tx = DeflateState::new(p, Role::Server);
    let mut rx = DeflateState::new(p, Role::Client);
    let mut wire_total = 0;
    for m in msgs {
        let mut wire = Vec::new();
        let compressed = tx.compress(m, &c, &mut pool_a, &mut wire);
        if !compressed {
            // Sent as is; nothing to inflate.
            continue;
        }
        wire_total += wire.len();
        let mut out = Vec::new();
        match split {
            None => rx
                .decompress(&wire, true, true, &c, &mut pool_b, &mut out)
                .unwrap(),
            Some(step) => {
                let pieces: Vec<&[u8]> = wire.chunks(step.max(1)).collect();
                if pieces.is_empty() {
                    rx.decompress(&[], true, true, &c, &mut pool_b, &mut out)
                        .unwrap();
                }
                for (i, piece) in pieces.iter().enumerate() {
                    rx.decompress(
                        piece,
                        i == 0,
                        i + 1 == pieces.len(),
                        &c,
                        &mut pool_b,
                        &mut out,
                    )
                    .unwrap();
                }
            }
        }
        assert_eq!(&out, m, "params {p:?} split {split:?}");
    }
    wire_total
}

// ---- round trips --------------------------------------------------------------------------------

#[test]
fn round_trips_in_every_mode_and_window() {
    let msgs = corpus(40, 7);
    for bits in 8..=15 {
        for snct in [false, true] {
            for cnct in [false, true] {
                // Server to client uses the server parameters.
                round_trip(params(snct, cnct, bits, 15), &msgs, None);
                round_trip(params(snct, cnct, 15, bits), &msgs, None);
                round_trip(params(snct, cnct, bits, bits), &msgs, Some(7));
            }
        }
    }
}

#[test]
fn split_input_at_every_position() {
    let msgs = corpus(3, 11);
    for p in [
        params(false, false, 15, 15),
        params(true, true, 15, 15),
        params(false, false, 9, 9),
    ] {
        let c = cfg(DeflateMode::NoContextTakeover);
        let mut pool = DeflatePool::new(6);
        let mut tx = DeflateState::new(p, Role::Server);
        let mut wires = Vec::new();
        for m in &msgs {
            let mut w = Vec::new();
            assert!(tx.compress(m, &c, &mut pool, &mut w));
            wires.push(w);
        }
        // Every split point of every message, each time with a fresh receiver fed all messages.
        for at in 0..=wires[1].len() {
            let mut rx = DeflateState::new(p, Role::Client);
            let mut rpool = DeflatePool::new(6);
            for (i, w) in wires.iter().enumerate() {
                let mut out = Vec::new();
                if i == 1 {
                    rx.decompress(&w[..at], true, false, &c, &mut rpool, &mut out)
                        .unwrap();
                    rx.decompress(&w[at..], false, true, &c, &mut rpool, &mut out)
                        .unwrap();
                } else {
                    rx.decompress(w, true, true, &c, &mut rpool, &mut out)
                        .unwrap();
                }
                assert_eq!(out, msgs[i], "{p:?} split at {at}");
            }
        }
    }
}

#[test]
fn empty_and_tiny_messages() {
    for p in [
        params(false, false, 15, 15),
        params(true, true, 15, 15),
        params(true, true, 8, 8),
    ] {
        round_trip(
            p,
            &[Vec::new(), b"a".to_vec(), Vec::new(), b"ab".to_vec()],
            None,
        );
    }
    // The RFC's empty message is one 0x00 octet (7.2.3.6).
    let mut rx = DeflateState::new(params(false, false, 15, 15), Role::Server);
    let mut out = Vec::new();
    let c = cfg(DeflateMode::NoContextTakeover);
    rx.decompress(&[0x00], true, true, &c, &mut DeflatePool::new(1), &mut out)
        .unwrap();
    assert!(out.is_empty());
}

#[test]
fn context_takeover_makes_the_second_identical_message_much_smaller() {
    let msg = corpus(1, 3).remove(0);
    let c = cfg(DeflateMode::ContextTakeover {
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    });
    let mut pool = DeflatePool::new(6);
    let mut tx = DeflateState::new(params(false, false, 15, 15), Role::Server);
    let mut rx = DeflateState::new(params(false, false, 15, 15), Role::Client);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let mut w = Vec::new();
        assert!(tx.compress(&msg, &c, &mut pool, &mut w));
        sizes.push(w.len());
        let mut out = Vec::new();
        rx.decompress(&w, true, true, &c, &mut pool, &mut out)
            .unwrap();
        assert_eq!(out, msg);
    }
    assert!(
        sizes[1] * 10 < sizes[0],
        "sizes {sizes:?} for {} bytes",
        msg.len()
    );
    assert!(tx.holds_state() && rx.holds_state());

    // Without takeover, every copy costs the same and nothing is held.
    let mut tx = DeflateState::new(params(true, true, 15, 15), Role::Server);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    tx.compress(&msg, &c, &mut pool, &mut a);
    tx.compress(&msg, &c, &mut pool, &mut b);
    assert_eq!(a, b);
    assert!(!tx.holds_state());
}

#[test]
fn min_size_and_incompressible_messages_go_uncompressed() {
    let c = DeflateConfig {
        mode: DeflateMode::NoContextTakeover,
        min_size: 64,
        ..DeflateConfig::default()
    };
    let mut pool = DeflatePool::new(1);
    let mut tx = DeflateState::new(params(true, true, 15, 15), Role::Server);
    let mut w = Vec::new();
    assert!(!tx.compress(&[b'a'; 63], &c, &mut pool, &mut w));
    assert!(w.is_empty());
    assert!(tx.compress(&[b'a'; 64], &c, &mut pool, &mut w));
    // Random bytes do not shrink: sent as they are.
    let mut x = 1u64;
    let noise: Vec<u8> = (0..1000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    let mut w = Vec::new();
    assert!(!tx.compress(&noise, &c, &mut pool, &mut w));
    assert!(w.is_empty());
}

#[test]
fn prepared_messages_per_variant_and_reset_after_independent_send() {
    let msgs = corpus(4, 5);
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool = DeflatePool::new(6);
    for bits in 8..=15 {
        let p = params(false, false, bits, 15);
        let mut tx = DeflateState::new(p, Role::Server);
        let mut rx = DeflateState::new(p, Role::Client);
        let mut rpool = DeflatePool::new(6);
        for (i, m) in msgs.iter().enumerate() {
            let mut w = Vec::new();
            if i % 2 == 1 {
                // A prepared message, compressed once for this variant.
                compress_variant(m, tx.variant(), &mut pool, &mut w);
                tx.sent_independent();
            } else {
                assert!(tx.compress(m, &c, &mut pool, &mut w));
            }
            let mut out = Vec::new();
            rx.decompress(&w, true, true, &c, &mut rpool, &mut out)
                .unwrap();
            assert_eq!(&out, m, "window {bits}, message {i}");
        }
    }
    assert_eq!(
        DeflateState::new(params(true, true, 12, 9), Role::Server).variant(),
        Variant { window_bits: 12 }
    );
}

// ---- RFC 7692 section 7.2.3 examples ---------------------------------------------------------

#[test]
fn rfc7692_examples() {
    let c = cfg(DeflateMode::ContextTakeover {
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    });
    let mut pool = DeflatePool::new(6);
    let takeover = params(false, false, 15, 15);

    // 7.2.3.1: "Hello" as one compressed message.
    let mut rx = DeflateState::new(takeover, Role::Client);
    let mut out = Vec::new();
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let m = rx
        .decompress_message(MessageKind::Text, &hello, &c, &mut pool, &mut out)
        .unwrap();
    assert_eq!(m, Message::Text("Hello"));

    // 7.2.3.2: with context takeover the second "Hello" refers back to the first.
    let mut out = Vec::new();
    let m = rx
        .decompress_message(
            MessageKind::Text,
            &[0xf2, 0x00, 0x11, 0x00, 0x00],
            &c,
            &mut pool,
            &mut out,
        )
        .unwrap();
    assert_eq!(m, Message::Text("Hello"));

    // And our compressor produces exactly these bytes (zlib-rs, as zlib).
    let mut tx = DeflateState::new(takeover, Role::Server);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let c5 = DeflateConfig { min_size: 0, ..c };
    assert!(tx.compress(b"Hello", &c5, &mut pool, &mut a));
    assert!(tx.compress(b"Hello", &c5, &mut pool, &mut b));
    assert_eq!(a, hello);
    assert_eq!(b, [0xf2, 0x00, 0x11, 0x00, 0x00]);

    // 7.2.3.3: a DEFLATE block with BFINAL set; then the stream starts anew.
    let mut rx = DeflateState::new(params(true, true, 15, 15), Role::Client);
    let mut out = Vec::new();
    rx.decompress(
        &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
        true,
        true,
        &c,
        &mut pool,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"Hello");

    // 7.2.3.4: two DEFLATE blocks in one message.
    let mut out = Vec::new();
    rx.decompress(
        &[
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ],
        true,
        true,
        &c,
        &mut pool,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"Hello");

    // 7.2.3.5 (and the no-compression block example): "Hello" in a stored block.
    let mut out = Vec::new();
    rx.decompress(
        &[
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ],
        true,
        true,
        &c,
        &mut pool,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"Hello");

    // Split into two frames: 0xf2 0x48 0xcd | 0xc9 0xc9 0x07 0x00 (7.2.3.1's fragmented form).
    let mut rx = DeflateState::new(takeover, Role::Client);
    let mut out = Vec::new();
    rx.decompress(&[0xf2, 0x48, 0xcd], true, false, &c, &mut pool, &mut out)
        .unwrap();
    rx.decompress(
        &[0xc9, 0xc9, 0x07, 0x00],
        false,
        true,
        &c,
        &mut pool,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"Hello");
}

/// Bytes after a block with BFINAL set are not read, however the message is split (found by the
/// `deflate` fuzz target: split right after that block, the rest was inflated as a new stream).
#[test]
fn bytes_after_a_final_block_are_ignored_at_every_split() {
    // 7.2.3.3's "Hello" with BFINAL set, then "Hello" again (7.2.3.1), then the next message.
    let mut msg = vec![0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    msg.extend_from_slice(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool = DeflatePool::new(1);
    for takeover in [false, true] {
        let p = params(!takeover, !takeover, 15, 15);
        for cut in 0..=msg.len() {
            for cut2 in cut..=msg.len() {
                let mut rx = DeflateState::new(p, Role::Client);
                let mut out = Vec::new();
                for (piece, first, fin) in [
                    (&msg[..cut], true, false),
                    (&msg[cut..cut2], false, false),
                    (&msg[cut2..], false, true),
                ] {
                    rx.decompress(piece, first, fin, &c, &mut pool, &mut out)
                        .unwrap();
                }
                assert_eq!(out, b"Hello", "cuts {cut} {cut2}");
                // The next message is read afresh.
                let mut next = Vec::new();
                rx.decompress(&msg[7..], true, true, &c, &mut pool, &mut next)
                    .unwrap();
                assert_eq!(next, b"Hello", "cuts {cut} {cut2}");
            }
        }
    }
}

// ---- bombs and bad data --------------------------------------------------------------------------

/// A reused output buffer with more capacity than the limit is not filled past the limit plus one
/// (found by the `deflate` fuzz target, with a piece's limit below the buffer's capacity).
#[test]
fn limit_holds_in_a_buffer_with_more_capacity() {
    let zeros = vec![0u8; 100_000];
    let mut compressed = Vec::new();
    let mut pool = DeflatePool::new(1);
    let p = params(true, true, 15, 15);
    let mut tx = DeflateState::new(p, Role::Server);
    assert!(tx.compress(
        &zeros,
        &cfg(DeflateMode::NoContextTakeover),
        &mut pool,
        &mut compressed
    ));
    let mut rx = DeflateState::new(p, Role::Client);
    for max in [0, 1, 100, 4073] {
        let c = DeflateConfig {
            max_decompressed: max,
            ..cfg(DeflateMode::NoContextTakeover)
        };
        let mut out = Vec::with_capacity(65536);
        let err = rx
            .decompress(&compressed, true, true, &c, &mut pool, &mut out)
            .unwrap_err();
        assert!(matches!(err, Error::MessageTooBig { .. }), "{err:?}");
        assert!(
            out.len() as u64 <= max + 1,
            "{} bytes out, limit {max}",
            out.len()
        );
    }
}

#[test]
fn decompression_bomb_ends_with_1009_and_bounded_memory() {
    // 64 MiB of zeros compress to about 64 KiB.
    let zeros = vec![0u8; 64 << 20];
    let mut pool = DeflatePool::new(9);
    let mut bomb = Vec::new();
    compress_variant(&zeros, Variant { window_bits: 15 }, &mut pool, &mut bomb);
    drop(zeros);
    assert!(bomb.len() < 200 << 10, "bomb is {} bytes", bomb.len());

    for (p, max) in [
        (params(true, true, 15, 15), 1 << 20),
        (params(false, false, 15, 15), 100_000),
    ] {
        let c = DeflateConfig {
            max_decompressed: max,
            ..cfg(DeflateMode::NoContextTakeover)
        };
        let mut rx = DeflateState::new(p, Role::Server);
        let mut out = Vec::with_capacity(4096);
        let before = live();
        let err = rx
            .decompress(&bomb, true, true, &c, &mut pool, &mut out)
            .unwrap_err();
        assert!(matches!(err, Error::MessageTooBig { .. }), "{err:?}");
        assert_eq!(err.close_code().0, 1009);
        assert!(out.len() as u64 <= max + 1, "{} bytes out", out.len());
        assert!(out.capacity() as u64 <= max + 1 + 4096);
        // The buffer plus, for context takeover, the inflater's state.
        let grown = live() - before;
        assert!(grown < (max as isize) + (64 << 10), "grew by {grown}");
    }
}

#[test]
fn bomb_split_into_small_pieces_stops_early() {
    let zeros = vec![b'x'; 8 << 20];
    let mut pool = DeflatePool::new(9);
    let mut bomb = Vec::new();
    compress_variant(&zeros, Variant { window_bits: 15 }, &mut pool, &mut bomb);
    let c = DeflateConfig {
        max_decompressed: 65536,
        ..cfg(DeflateMode::NoContextTakeover)
    };
    let mut rx = DeflateState::new(params(true, true, 15, 15), Role::Server);
    let mut out = Vec::new();
    let mut failed_at = None;
    for (i, piece) in bomb.chunks(100).enumerate() {
        if let Err(e) = rx.decompress(piece, i == 0, false, &c, &mut pool, &mut out) {
            assert_eq!(e.close_code().0, 1009);
            failed_at = Some(i);
            break;
        }
    }
    assert!(failed_at.is_some());
    assert!(out.len() <= 65537);
}

#[test]
fn corrupt_data_and_invalid_utf8() {
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool = DeflatePool::new(1);
    let mut rx = DeflateState::new(params(true, true, 15, 15), Role::Server);
    let mut out = Vec::new();
    // BTYPE 11 is reserved.
    let err = rx
        .decompress(&[0xff, 0xff, 0xff], true, true, &c, &mut pool, &mut out)
        .unwrap_err();
    assert_eq!(err, Error::CompressedDataInvalid);
    assert_eq!(err.close_code().0, 1007);

    // Compressed text that is not UTF-8 after inflating: 1007.
    let mut w = Vec::new();
    compress_variant(
        b"ok \xff\xfe not utf-8",
        Variant { window_bits: 15 },
        &mut pool,
        &mut w,
    );
    let mut out = Vec::new();
    let err = rx
        .decompress_message(MessageKind::Text, &w, &c, &mut pool, &mut out)
        .unwrap_err();
    assert_eq!(err, Error::InvalidUtf8);
    // The same bytes as binary are fine; the pooled inflater recovered from the corrupt message.
    let mut out = Vec::new();
    let m = rx
        .decompress_message(MessageKind::Binary, &w, &c, &mut pool, &mut out)
        .unwrap();
    assert_eq!(m.as_bytes(), b"ok \xff\xfe not utf-8");
}

#[test]
fn tail_is_stripped_from_sync_flushed_output() {
    let mut pool = DeflatePool::new(6);
    let mut tx = DeflateState::new(params(false, false, 15, 15), Role::Server);
    let mut w = Vec::new();
    assert!(tx.compress(
        &corpus(1, 9)[0],
        &cfg(DeflateMode::NoContextTakeover),
        &mut pool,
        &mut w
    ));
    assert!(!w.ends_with(&TAIL));
}

// ---- the protocol core with RSV1 -----------------------------------------------------------------

/// A client connection's frames of `payload` (a masked message with `rsv` on its first frame),
/// cut into frames at `cuts` (none: one frame).
fn client_frames(kind: MessageKind, payload: &[u8], rsv: u8, cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut client = Session::new(Role::Client, 42);
    client.enable_compression();
    let ccfg = Config::client();
    if cuts.is_empty() {
        let mut wire = Vec::new();
        client.send(&mut wire, kind, payload, &ccfg, rsv).unwrap();
        return vec![wire];
    }
    client.begin_message(kind).unwrap();
    let mut frames = Vec::new();
    let mut start = 0;
    for (i, end) in cuts.iter().copied().chain([payload.len()]).enumerate() {
        let mut wire = Vec::new();
        let last = i == cuts.len();
        client
            .write_fragment(&mut wire, &payload[start..end], i == 0, last, rsv)
            .unwrap();
        frames.push(wire);
        start = end;
    }
    frames
}

/// What a server connection reported for `frames`, each read apart, compressed messages inflated
/// through `inflate` (its state, pool and buffer), until an error.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Piece(MessageKind, Vec<u8>, bool, bool),
    Error(Error),
}

fn server_reads(
    server: &mut Session,
    cfg: &Config,
    frames: &[Vec<u8>],
    mut inflate: Option<(&mut DeflateState, &DeflateConfig, &mut DeflatePool)>,
    out: &mut Vec<u8>,
) -> Vec<Got> {
    let mut got = Vec::new();
    let mut buf = Vec::new();
    for frame in frames {
        let mut input = frame.clone();
        let mut pos = 0;
        while pos < input.len() {
            let lent = inflate.as_mut().map(|(state, cfg, pool)| Inflate {
                state,
                cfg,
                pool,
                buf: &mut buf,
            });
            match server.read(&mut input[pos..], cfg, out, &mut NoPool, lent) {
                Ok((n, ev)) => {
                    pos += n;
                    got.extend(ev.map(|ev| match ev {
                        Event::Message(Message::Text(t)) => Got::Text(t.to_owned()),
                        Event::Message(Message::Binary(b)) => Got::Binary(b.to_vec()),
                        Event::Fragment {
                            kind,
                            data,
                            first,
                            last,
                        } => Got::Piece(kind, data.to_vec(), first, last),
                        other => panic!("{other:?}"),
                    }));
                }
                Err(e) => {
                    assert!(server.is_closed());
                    got.push(Got::Error(e));
                    return got;
                }
            }
        }
        server.recycle(&mut NoPool);
    }
    got
}

/// The close frame a server writes with `code` (unmasked, no reason).
fn close_frame(code: u16) -> Vec<u8> {
    let mut f = vec![0x88, 0x02];
    f.extend_from_slice(&code.to_be_bytes());
    f
}

#[test]
fn conn_inflates_compressed_messages_and_accepts_rsv1_only_when_negotiated() {
    let cfg_p = Config::server();
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool = DeflatePool::new(6);
    let text = "hello hello hello hello";
    let mut payload = Vec::new();
    compress_variant(
        text.as_bytes(),
        Variant { window_bits: 15 },
        &mut pool,
        &mut payload,
    );
    let text_frame = client_frames(MessageKind::Text, &payload, RSV1, &[]);
    let binary_frame = client_frames(MessageKind::Binary, &payload, RSV1, &[]);
    let mut rx = DeflateState::new(params(true, true, 15, 15), Role::Server);

    // Without negotiation: RSV1 is a protocol error (1002).
    let mut server = Session::new(Role::Server, 1);
    let mut out = Vec::new();
    let got = server_reads(&mut server, &cfg_p, &text_frame, None, &mut out);
    assert_eq!(got.len(), 1);
    assert!(
        matches!(&got[0], Got::Error(e) if e.close_code().0 == 1002),
        "{got:?}"
    );

    // Negotiated: the core inflates; the message is plain and of its real kind.
    let mut server = Session::new(Role::Server, 1);
    server.enable_compression();
    let mut out = Vec::new();
    let frames = [text_frame.clone(), binary_frame].concat();
    let got = server_reads(
        &mut server,
        &cfg_p,
        &frames,
        Some((&mut rx, &c, &mut pool)),
        &mut out,
    );
    assert_eq!(
        got,
        vec![
            Got::Text(text.into()),
            Got::Binary(text.as_bytes().to_vec())
        ]
    );
    assert!(out.is_empty(), "nothing written back");

    // An uncompressed message afterwards is as it came, and reads without compression state lent
    // meet no compressed message.
    let plain = client_frames(MessageKind::Text, b"plain", 0, &[]);
    let got = server_reads(&mut server, &cfg_p, &plain, None, &mut out);
    assert_eq!(got, vec![Got::Text("plain".into())]);

    // Negotiated, but a compressed message and no state lent: 1007, as data that does not inflate.
    let got = server_reads(&mut server, &cfg_p, &text_frame, None, &mut out);
    assert_eq!(got, vec![Got::Error(Error::CompressedDataInvalid)]);
    assert_eq!(out, close_frame(1007));
}

#[test]
fn conn_fails_what_does_not_inflate_with_the_core_close() {
    let cfg_p = Config::server();
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool = DeflatePool::new(6);
    let run = |kind: MessageKind, payload: &[u8], cfg_p: &Config, pool: &mut DeflatePool| {
        let mut rx = DeflateState::new(params(true, true, 15, 15), Role::Server);
        let mut server = Session::new(Role::Server, 1);
        server.enable_compression();
        let mut out = Vec::new();
        let frames = client_frames(kind, payload, RSV1, &[]);
        let got = server_reads(
            &mut server,
            cfg_p,
            &frames,
            Some((&mut rx, &c, pool)),
            &mut out,
        );
        (got, out)
    };

    // Not deflate data (a reserved block type).
    let (got, out) = run(MessageKind::Binary, &[0xff, 0xff, 0xff], &cfg_p, &mut pool);
    assert_eq!(got, vec![Got::Error(Error::CompressedDataInvalid)]);
    assert_eq!(out, close_frame(1007));

    // Text that inflates to bytes that are not UTF-8.
    let mut bad = Vec::new();
    compress_variant(
        b"abc\xff\xfe",
        Variant { window_bits: 15 },
        &mut pool,
        &mut bad,
    );
    let (got, out) = run(MessageKind::Text, &bad, &cfg_p, &mut pool);
    assert_eq!(got, vec![Got::Error(Error::InvalidUtf8)]);
    assert_eq!(out, close_frame(1007));
    // The same bytes as binary are fine.
    let (got, _) = run(MessageKind::Binary, &bad, &cfg_p, &mut pool);
    assert_eq!(got, vec![Got::Binary(b"abc\xff\xfe".to_vec())]);

    // Past the limit: the smaller of max_decompressed and max_message_size, here the latter.
    let zeros = vec![0u8; 5000];
    let mut z = Vec::new();
    compress_variant(&zeros, Variant { window_bits: 15 }, &mut pool, &mut z);
    let small = Config {
        max_message_size: 4999,
        ..Config::server()
    };
    let (got, out) = run(MessageKind::Binary, &z, &small, &mut pool);
    assert!(
        matches!(
            got[..],
            [Got::Error(Error::MessageTooBig { max: 4999, .. })]
        ),
        "{got:?}"
    );
    assert_eq!(out, close_frame(1009));
    let exact = Config {
        max_message_size: 5000,
        ..Config::server()
    };
    let (got, _) = run(MessageKind::Binary, &z, &exact, &mut pool);
    assert_eq!(got, vec![Got::Binary(zeros)]);
}

/// A compressed message streamed in pieces (`stream_fragments`): each piece is inflated as it
/// comes, text validated as a stream, and the limit bounds the whole message, not each piece.
#[test]
fn conn_inflates_streamed_pieces_and_bounds_the_whole_message() {
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool = DeflatePool::new(6);
    let streamed = |max: u64| Config {
        stream_fragments: true,
        max_message_size: max,
        ..Config::server()
    };
    let text: String = corpus(20, 3)
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect::<Vec<_>>()
        .join("é");
    let mut payload = Vec::new();
    compress_variant(
        text.as_bytes(),
        Variant { window_bits: 15 },
        &mut pool,
        &mut payload,
    );
    let cuts = [payload.len() / 3, 2 * payload.len() / 3];
    let frames = client_frames(MessageKind::Text, &payload, RSV1, &cuts);
    let read = |cfg_p: &Config, pool: &mut DeflatePool| {
        let mut rx = DeflateState::new(params(true, true, 15, 15), Role::Server);
        let mut server = Session::new(Role::Server, 1);
        server.enable_compression();
        let mut out = Vec::new();
        let got = server_reads(
            &mut server,
            cfg_p,
            &frames,
            Some((&mut rx, &c, pool)),
            &mut out,
        );
        (got, out, rx)
    };

    let (got, out, rx) = read(&streamed(1 << 20), &mut pool);
    assert!(out.is_empty());
    assert!(!rx.inflater_held(), "given back with the last piece");
    let mut whole = Vec::new();
    for (i, g) in got.iter().enumerate() {
        let Got::Piece(kind, data, first, last) = g else {
            panic!("{got:?}")
        };
        assert_eq!(
            (*kind, *first, *last),
            (MessageKind::Text, i == 0, i == got.len() - 1)
        );
        whole.extend_from_slice(data);
    }
    assert_eq!(got.len(), 3);
    assert_eq!(whole, text.as_bytes());

    // Each piece inflates to less than the limit, the message to more: 1009 at the piece that
    // goes past it, the length counted over the whole message.
    let limit = text.len() as u64 - 1;
    assert!(got
        .iter()
        .all(|g| matches!(g, Got::Piece(_, d, ..) if (d.len() as u64) < limit)));
    let (got, out, _) = read(&streamed(limit), &mut pool);
    let Some(Got::Error(Error::MessageTooBig { len, max })) = got.last() else {
        panic!("{got:?}")
    };
    assert_eq!(*max, limit);
    assert!(*len > limit && *len <= limit + 1, "{len}");
    assert_eq!(out, close_frame(1009));
    // Exactly the limit passes.
    let (got, _, _) = read(&streamed(text.len() as u64), &mut pool);
    assert!(
        matches!(got.last(), Some(Got::Piece(_, _, _, true))),
        "{got:?}"
    );
}

// ---- negotiation ---------------------------------------------------------------------------------

fn offer(ext: &str, mode: DeflateMode) -> Option<(DeflateParams, String)> {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {ext}\r\n\r\n"
    );
    let Ok(ParseStatus::Complete { request, .. }) =
        parse_request(req.as_bytes(), &HandshakeConfig::default())
    else {
        panic!("request for {ext:?}")
    };
    negotiate(request.extensions(), mode).map(|n| (n.params, n.response))
}

const CT15: DeflateMode = DeflateMode::ContextTakeover {
    server_max_window_bits: 15,
    client_max_window_bits: 15,
};
const CT10: DeflateMode = DeflateMode::ContextTakeover {
    server_max_window_bits: 10,
    client_max_window_bits: 11,
};
const NCT: DeflateMode = DeflateMode::NoContextTakeover;

/// An offer, the server's mode, the parameters and response expected.
type ServerRow = (
    &'static str,
    DeflateMode,
    Option<(DeflateParams, &'static str)>,
);
/// A response, the client's mode, what the client makes of it.
type ClientRow = (
    &'static str,
    DeflateMode,
    Result<Option<DeflateParams>, DeflateResponseError>,
);

#[test]
fn negotiation_table() {
    let pmd = "permessage-deflate";
    #[rustfmt::skip]
    let table: &[ServerRow] = &[
        (pmd, DeflateMode::Disabled, None),
        ("x-webkit-deflate-frame", CT15, None),
        (pmd, CT15, Some((params(false, false, 15, 15), pmd))),
        (pmd, NCT, Some((params(true, true, 15, 15),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"))),
        (pmd, CT10, Some((params(false, false, 10, 15), "permessage-deflate; server_max_window_bits=10"))),
        ("permessage-deflate; server_no_context_takeover", CT15,
            Some((params(true, false, 15, 15), "permessage-deflate; server_no_context_takeover"))),
        ("permessage-deflate; client_no_context_takeover", CT15,
            Some((params(false, true, 15, 15), "permessage-deflate; client_no_context_takeover"))),
        ("permessage-deflate; server_max_window_bits=8", CT15,
            Some((params(false, false, 8, 15), "permessage-deflate; server_max_window_bits=8"))),
        ("permessage-deflate; server_max_window_bits=12", CT10,
            Some((params(false, false, 10, 15), "permessage-deflate; server_max_window_bits=10"))),
        ("permessage-deflate; server_max_window_bits=9", NCT,
            Some((params(true, true, 9, 15),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"))),
        ("permessage-deflate; client_max_window_bits", CT15, Some((params(false, false, 15, 15), pmd))),
        ("permessage-deflate; client_max_window_bits", CT10,
            Some((params(false, false, 10, 11), "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11"))),
        ("permessage-deflate; client_max_window_bits=9", CT15,
            Some((params(false, false, 15, 9), "permessage-deflate; client_max_window_bits=9"))),
        ("permessage-deflate; client_max_window_bits=\"12\"", CT10,
            Some((params(false, false, 10, 11), "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11"))),
        ("permessage-deflate; Server_No_Context_Takeover; CLIENT_MAX_WINDOW_BITS=15", CT15,
            Some((params(true, false, 15, 15), "permessage-deflate; server_no_context_takeover; client_max_window_bits=15"))),
        // Bad parameters: the offer is declined, the next one may be taken.
        ("permessage-deflate; server_max_window_bits=7", CT15, None),
        ("permessage-deflate; server_max_window_bits=16", CT15, None),
        ("permessage-deflate; server_max_window_bits=08", CT15, None),
        ("permessage-deflate; server_max_window_bits", CT15, None),
        ("permessage-deflate; client_max_window_bits=7", CT15, None),
        ("permessage-deflate; client_max_window_bits=abc", CT15, None),
        ("permessage-deflate; server_no_context_takeover=1", CT15, None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", CT15, None),
        ("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", CT15, None),
        ("permessage-deflate; foo", CT15, None),
        ("permessage-deflate; foo, permessage-deflate; client_no_context_takeover", CT15,
            Some((params(false, true, 15, 15), "permessage-deflate; client_no_context_takeover"))),
        // The first acceptable offer wins; the others are declined.
        ("permessage-deflate; server_max_window_bits=10, permessage-deflate", CT15,
            Some((params(false, false, 10, 15), "permessage-deflate; server_max_window_bits=10"))),
        ("foo, permessage-deflate; client_max_window_bits=10, permessage-deflate", CT15,
            Some((params(false, false, 15, 10), "permessage-deflate; client_max_window_bits=10"))),
    ];
    for (ext, mode, want) in table {
        let got = offer(ext, *mode);
        let want = want.map(|(p, r)| (p, r.to_owned()));
        assert_eq!(got, want, "offer {ext:?} under {mode:?}");
    }
}

#[test]
fn client_offers_and_checks_responses() {
    assert_eq!(client_offer(DeflateMode::Disabled), None);
    let nct = client_offer(NCT).unwrap();
    assert_eq!(
        nct,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    // Context takeover: the offer, then a fallback that also accepts client_no_context_takeover.
    assert_eq!(
        client_offer(CT15).unwrap(),
        "permessage-deflate; client_max_window_bits, \
         permessage-deflate; client_max_window_bits; client_no_context_takeover"
    );
    assert_eq!(
        client_offer(CT10).unwrap(),
        "permessage-deflate; client_max_window_bits; server_max_window_bits=10, \
         permessage-deflate; client_max_window_bits; server_max_window_bits=10; \
         client_no_context_takeover"
    );

    // Each offer, answered by our own server, is accepted by our client with the same parameters.
    for server_mode in [NCT, CT15, CT10] {
        for client_mode in [NCT, CT15, CT10] {
            let (server_params, response) =
                offer(&client_offer(client_mode).unwrap(), server_mode).unwrap();
            let got = accept_response(&response, client_mode).unwrap().unwrap();
            assert_eq!(
                got.server_max_window_bits,
                server_params.server_max_window_bits
            );
            assert!(got.client_max_window_bits <= server_params.client_max_window_bits);
            assert_eq!(
                got.server_no_context_takeover,
                server_params.server_no_context_takeover
            );
            assert!(got.client_no_context_takeover || !server_params.client_no_context_takeover);
        }
    }

    use DeflateResponseError as E;
    let table: &[ClientRow] = &[
        ("", CT15, Ok(None)),
        (
            "permessage-deflate",
            CT15,
            Ok(Some(params(false, false, 15, 15))),
        ),
        (
            "permessage-deflate",
            DeflateMode::Disabled,
            Err(E::NotOffered),
        ),
        (
            "permessage-deflate, permessage-deflate",
            CT15,
            Err(E::Repeated),
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            CT15,
            Ok(Some(params(false, false, 15, 10))),
        ),
        (
            "permessage-deflate; client_max_window_bits",
            CT15,
            Err(E::InvalidParameter),
        ),
        (
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            NCT,
            Err(E::NotOffered),
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            NCT,
            Err(E::Missing),
        ),
        (
            "permessage-deflate; server_no_context_takeover",
            NCT,
            Ok(Some(params(true, true, 15, 15))),
        ),
        (
            "permessage-deflate; server_max_window_bits=11",
            CT10,
            Err(E::NotOffered),
        ),
        ("permessage-deflate", CT10, Err(E::Missing)),
        (
            "permessage-deflate; server_max_window_bits=9",
            CT10,
            Ok(Some(params(false, false, 9, 11))),
        ),
        (
            "permessage-deflate; server_max_window_bits=12",
            CT15,
            Ok(Some(params(false, false, 12, 15))),
        ),
        ("permessage-deflate; mux", CT15, Err(E::InvalidParameter)),
    ];
    for (resp, mode, want) in table {
        assert_eq!(
            accept_response(resp, *mode),
            *want,
            "response {resp:?} for {mode:?}"
        );
    }
}

/// Parses a 101 with `ext` as its extensions through the client handshake, then checks it.
fn accept_response(
    ext: &str,
    mode: DeflateMode,
) -> Result<Option<DeflateParams>, DeflateResponseError> {
    use surge::handshake::client::{parse_response, ClientRequest, ResponseStatus};
    let mut req = ClientRequest::new("a", 80, "/");
    if let Some(o) = client_offer(mode).or_else(|| Some("permessage-deflate".into())) {
        req = req.extensions(o);
    }
    let expected = req.write_with_nonce(&mut Vec::new(), [7; 16]);
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        expected.accept()
    );
    if !ext.is_empty() {
        resp.push_str(&format!("Sec-WebSocket-Extensions: {ext}\r\n"));
    }
    resp.push_str("\r\n");
    let Ok(ResponseStatus::Complete { response, .. }) = parse_response(resp.as_bytes(), &expected)
    else {
        panic!("response {ext:?} rejected by the handshake")
    };
    client_accept(response.extensions(), mode)
}

// ---- memory per connection -----------------------------------------------------------------------

/// Heap bytes a connection's state holds after it has sent and received `n` messages (the worker's
/// pooled compressors and inflaters excluded: they are warmed first and shared by every connection).
/// Heap bytes one connection holds after `n` messages each way: all of it (windows and live
/// streams), and the saved windows alone (what it keeps once its streams are detached).
fn held_bytes(p: DeflateParams, level: u8, n: usize) -> (isize, usize) {
    let msgs = corpus(n, 1);
    let c = cfg(DeflateMode::NoContextTakeover);
    let mut pool = DeflatePool::new(level);
    let mut other = DeflateState::new(p, Role::Client);
    // The messages that went compressed, and their wire bytes.
    let (msgs, wires): (Vec<Vec<u8>>, Vec<Vec<u8>>) = msgs
        .into_iter()
        .filter_map(|m| {
            let mut w = Vec::new();
            other.compress(&m, &c, &mut pool, &mut w).then_some((m, w))
        })
        .unzip();
    // Warm the pool (the same kind of state, then dropped) so that its state is not counted.
    let mut warm = DeflateState::new(p, Role::Server);
    let mut scratch = Vec::new();
    warm.compress(&msgs[0], &c, &mut pool, &mut scratch);
    warm.decompress(&wires[0], true, true, &c, &mut pool, &mut Vec::new())
        .unwrap();
    drop(warm);

    let before = live();
    let mut st = DeflateState::new(p, Role::Server);
    let mut out = Vec::new();
    let mut inflated = Vec::new();
    for (m, w) in msgs.iter().zip(&wires) {
        out.clear();
        st.compress(m, &c, &mut pool, &mut out);
        inflated.clear();
        st.decompress(w, true, true, &c, &mut pool, &mut inflated)
            .unwrap();
        assert_eq!(&inflated, m);
    }
    drop((out, inflated));
    let held = live() - before;
    std::hint::black_box(&st);
    let windows = st.held_bytes();
    assert!(st.release_inflater(&mut pool));
    st.release_compressor(&mut pool);
    assert!(!st.holds_inflater() && !st.holds_compressor());
    assert_eq!(st.held_bytes(), windows, "the windows stay");
    (held, windows)
}

#[test]
fn memory_per_connection() {
    // Without context takeover a connection holds nothing: the pool's state is shared.
    assert_eq!(held_bytes(params(true, true, 15, 15), 1, 100), (0, 0));
    let mut report = String::new();
    for bits in [9u8, 10, 12, 15] {
        let (_, one) = held_bytes(params(false, false, bits, bits), 1, 1);
        let (active, both) = held_bytes(params(false, false, bits, bits), 1, 100);
        let (active_send, send_only) = held_bytes(params(false, true, bits, bits), 1, 100);
        report.push_str(&format!(
            "window {bits}: saved windows after one message each way {one} B; after 100: takeover \
             both ways {both} B, send only {send_only} B; active with live streams {active} B, \
             send only {active_send} B\n"
        ));
        // Saved, context takeover keeps only the windows: the last 2^w bytes each way (grown on
        // use). Active, a live inflater (~47 KiB) and compressor (245-371 KiB) besides.
        let window = 1usize << bits.max(9);
        assert!(send_only > 0 && both > send_only, "{report}");
        assert!(both <= 2 * window + 256, "{report}");
        assert!(one < both || bits < 11, "{report}");
        assert!(active as usize <= both + (430 << 10), "{report}");
        assert!(active > active_send, "{report}");
    }
    eprintln!("{report}");
}
