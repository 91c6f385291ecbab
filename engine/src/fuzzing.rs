//! Bodies of the cargo-fuzz targets, kept in the library so that the ordinary test suite runs them over
//! the committed seed corpora (`tests/fuzz_corpus.rs`). Each asserts invariants, not only "no panic".

mod deflate;
pub use deflate::fuzz_check_deflate;

use crate::proto::{Config, Conn, Event, FrameHeader, HeaderRules, Message, NoPool, Role, RSV1};

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
    let mut conn = Conn::new(cfg.role, 1);
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

/// The worker's timer wheel against a reference model (a map of live timers and their deadlines).
/// Input: a sequence of operations (arm with a delay from sub-millisecond to about 24 days, cancel,
/// a loop step that sleeps as `next_timeout` says but at most a given time, a busy jump forward,
/// a jump to just before 2^32 ms). After every step: `next_timeout` is never later than the
/// earliest deadline and `None` only when nothing is armed; every timer fires at most once, never
/// before its deadline, and, when the loop slept as told, at most one tick after it; nothing due
/// is left unfired; `cancel` at the tick from `full_tick` removes exactly the timer.
pub fn fuzz_check_timer_wheel(data: &[u8]) {
    use crate::server::timer::{TimerWheel, MAX_LOW32_AHEAD};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    let t0 = Instant::now();
    let mut wheel = TimerWheel::new(t0);
    // id -> (deadline in µs since t0, tick)
    let mut live: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut next_id = 0u64;
    let mut now_us = 0u64;
    let mut out = Vec::new();
    let at = |us: u64| t0 + Duration::from_micros(us);
    let max_ahead_ms = MAX_LOW32_AHEAD.as_millis() as u64 - 1;

    let mut bytes = data.iter().copied();
    let num = |n: usize, bytes: &mut dyn Iterator<Item = u8>| -> u64 {
        (0..n).fold(0u64, |acc, _| {
            acc << 8 | u64::from(bytes.next().unwrap_or(0))
        })
    };
    while let Some(op) = bytes.next() {
        let mut slept_as_told = false;
        match op % 8 {
            0..=2 => {
                let r = num(4, &mut bytes);
                let delay_us = match (op >> 3) % 4 {
                    0 => r % 64_000,
                    1 => r % 9_000_000, // a few turns of the wheel ahead
                    2 => r % (4_096 * 1_100 * 1000), // a thousand turns ahead
                    _ => (r << 12) % (max_ahead_ms * 1000),
                };
                let deadline = now_us + delay_us;
                next_id += 1;
                let tick = wheel.insert(at(deadline), next_id);
                assert!(tick * 1000 >= deadline, "tick before the deadline");
                live.insert(next_id, (deadline, tick));
            }
            3 => {
                let pick = num(2, &mut bytes) as usize;
                let mut ids: Vec<u64> = live.keys().copied().collect();
                ids.sort_unstable();
                if let Some(&id) = ids.get(pick % ids.len().max(1)) {
                    let (_, tick) = live.remove(&id).expect("listed");
                    let full = wheel.full_tick(tick as u32);
                    assert_eq!(full, tick, "full_tick of a live timer");
                    let before = wheel.len();
                    wheel.cancel(full, |t, v| t == tick && *v == id);
                    assert_eq!(wheel.len(), before - 1, "cancel removed one entry");
                }
            }
            4 | 5 => {
                // A loop turn: sleep as next_timeout says, or less (an event came).
                let cap = num(3, &mut bytes) % 20_000_000;
                let wait = wheel
                    .next_timeout(at(now_us))
                    .map_or(u64::MAX, |d| d.as_micros() as u64);
                if wait <= cap {
                    slept_as_told = true;
                    now_us += wait;
                } else {
                    now_us += cap;
                }
            }
            6 => now_us += num(4, &mut bytes) << 10, // a busy or suspended worker: up to ~50 days
            _ => now_us = now_us.max(((1u64 << 32) - num(2, &mut bytes) % 10_000) * 1000),
        }
        out.clear();
        wheel.expire(at(now_us), &mut out);
        for &(tick, id) in &out {
            let (deadline, armed) = live.remove(&id).expect("fired once, not after cancel");
            assert_eq!(tick, armed, "fired with the tick it was armed for");
            assert!(deadline <= now_us, "fired early: {deadline} > {now_us}");
            if slept_as_told {
                assert!(
                    now_us - deadline <= 1000,
                    "late by {} µs",
                    now_us - deadline
                );
            }
        }
        let now_ms = now_us / 1000;
        for (&id, &(deadline, tick)) in &live {
            assert!(
                tick > now_ms,
                "timer {id} (deadline {deadline} µs) due at {now_us} µs"
            );
        }
        assert_eq!(wheel.len(), live.len());
        match (
            wheel.next_timeout(at(now_us)),
            live.values().map(|v| v.1).min(),
        ) {
            (None, None) => {}
            (Some(wait), Some(first)) => {
                let wake = now_us + wait.as_micros() as u64;
                assert!(
                    wake <= first * 1000,
                    "wakes at {wake} µs, first due {first} ms"
                );
            }
            (got, want) => panic!("next_timeout {got:?} with first tick {want:?}"),
        }
    }
}
