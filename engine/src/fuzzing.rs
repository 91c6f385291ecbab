//! Bodies of the cargo-fuzz targets, kept in the library so that the ordinary test suite runs them over
//! the committed seed corpora (`fuzzing/corpus.rs`). Each asserts invariants, not only "no panic".

#[cfg(test)]
mod corpus;
mod deflate;
pub use deflate::fuzz_check_deflate;

use crate::proto::{Config, Event, FrameHeader, HeaderRules, Message, NoPool, Role, Session, RSV1};

/// An owned record of what a connection reported, to compare runs over differently split input.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(bool, Vec<u8>),
    Piece(Vec<u8>, bool),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16, String),
    Error(String),
}

fn record(ev: Event<'_>, out: &mut Vec<Seen>) {
    out.push(match ev {
        Event::Message(Message::Text(s)) => Seen::Message(true, s.as_bytes().to_vec()),
        Event::Message(Message::Binary(b)) => Seen::Message(false, b.to_vec()),
        Event::Fragment { data, last, .. } => Seen::Piece(data.to_vec(), last),
        Event::Ping(p) => Seen::Ping(p.to_vec()),
        Event::Pong(p) => Seen::Pong(p.to_vec()),
        Event::Close { code, reason } => Seen::Close(code.0, reason.to_owned()),
    });
}

/// Runs `input` through a fresh connection in the pieces given by `cuts`; returns the events and the
/// bytes written back. Checks that every call consumes at most what it was given and that a call with
/// no event consumes everything.
fn run(cfg: &Config, input: &[u8], cuts: &[usize]) -> (Vec<Seen>, Vec<u8>) {
    let mut conn = Session::new(cfg.role, 1);
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        let end = end.clamp(start, input.len());
        let mut piece = input[start..end].to_vec();
        start = end;
        let len = piece.len();
        let mut pos = 0;
        while pos < len {
            match conn.read(&mut piece[pos..], cfg, &mut out, &mut NoPool, None) {
                Ok((n, ev)) => {
                    assert!(n <= len - pos, "consumed more than given");
                    match ev {
                        Some(ev) => record(ev, &mut seen),
                        None => assert_eq!(n, len - pos, "stopped without an event"),
                    }
                    pos += n;
                }
                Err(e) => {
                    assert!(conn.is_closed());
                    seen.push(Seen::Error(e.to_string()));
                    return (seen, out);
                }
            }
        }
        conn.recycle(&mut NoPool);
    }
    (seen, out)
}

/// Merges streamed pieces into whole messages, to compare a streamed run with an assembled one.
fn merge_pieces(seen: Vec<Seen>) -> Vec<Seen> {
    let mut merged = Vec::new();
    let mut acc: Option<Vec<u8>> = None;
    for s in seen {
        match s {
            Seen::Piece(d, last) => {
                let buf = acc.get_or_insert_with(Vec::new);
                buf.extend_from_slice(&d);
                if last {
                    merged.push(Seen::Piece(acc.take().unwrap_or_default(), true));
                }
            }
            Seen::Message(_, d) => merged.push(Seen::Piece(d, true)),
            other => merged.push(other),
        }
    }
    merged
}

/// Frame header parsing: no panic; a parsed header's length is 2-14 bytes and at most the input;
/// re-encoding it gives the same bytes; a prefix of a complete header is incomplete, never an error
/// the whole did not have.
pub fn fuzz_check_frame(data: &[u8]) {
    let Some((&cfg_byte, buf)) = data.split_first() else {
        return;
    };
    let rules = HeaderRules {
        role: if cfg_byte & 1 == 0 {
            Role::Server
        } else {
            Role::Client
        },
        allowed_rsv: if cfg_byte & 2 != 0 { RSV1 } else { 0 },
        max_frame_size: if cfg_byte & 4 != 0 {
            1 << 20
        } else {
            u64::MAX >> 1
        },
    };
    if let Ok(Some((h, n))) = FrameHeader::parse(buf, &rules) {
        assert!((2..=14).contains(&n) && n <= buf.len());
        assert!(h.len <= rules.max_frame_size);
        let mut enc = [0u8; 14];
        let m = h.encode(&mut enc);
        // Non-minimal lengths are legal to receive; re-encoding is minimal, so compare the parse.
        assert_eq!(FrameHeader::parse(&enc[..m], &rules), Ok(Some((h, m))));
        for cut in 0..n {
            assert_eq!(
                FrameHeader::parse(&buf[..cut], &rules),
                Ok(None),
                "prefix {cut}"
            );
        }
    }
}

/// The whole receive path. Input layout: `config split_seed data...`. The data is read whole, then
/// split at points drawn from the seed (and byte by byte for short inputs): the events and the bytes
/// written back are the same however the input is split. A streamed run, pieces merged, matches too.
pub fn fuzz_check_receive(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (cfg_byte, seed, input) = (data[0], data[1], &data[2..]);
    let mut cfg = if cfg_byte & 1 == 0 {
        Config::server()
    } else {
        Config::client()
    };
    if cfg_byte & 2 != 0 {
        cfg.max_message_size = 64;
        cfg.max_frame_size = 32;
    }
    let whole = run(&cfg, input, &[]);
    let mut cuts = Vec::new();
    let mut x = seed as usize + 1;
    let mut at = 0;
    while at < input.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
        at += 1 + x % 17;
        cuts.push(at);
    }
    assert_eq!(run(&cfg, input, &cuts), whole, "split at {cuts:?}");
    if input.len() <= 64 {
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(&cfg, input, &every), whole, "byte by byte");
    }
    let streamed = Config {
        stream_fragments: true,
        ..cfg.clone()
    };
    let (s, out) = run(&streamed, input, &cuts);
    assert_eq!(
        (merge_pieces(s), out),
        (merge_pieces(whole.0), whole.1),
        "streamed"
    );
}

pub use crate::server::timer::fuzz_check_timer_wheel;
