//! permessage-deflate with context takeover: the cost of one message once the window is full, and
//! whether it stays flat over a long sequence (issue 13, item 5).
//!
//! `cargo bench -p surge --bench deflate_takeover [-- SCENARIO...]` prints, for each scenario, the
//! nanoseconds per message over successive blocks of messages. Scenarios:
//!
//! - `inflate20`, `inflate512`: one connection receives 20 B (512 B) messages compressed by a
//!   client with context takeover, window 15: the server's inflating cost per message.
//! - `compress20`, `compress512`: the client's side of the same: compressing with context takeover.
//! - `conns100`, `conns1000`: 100 (1000) connections, messages interleaved round robin, 20 B:
//!   inflating with the worker's live set (see `DeflateConfig::live_streams`).
//!
//! Plain timing loops (no hardware counters on the VMs this runs on): run it niced, compare
//! medians of the blocks.

use std::hint::black_box;
use std::time::Instant;

use surge::proto::{DeflateConfig, DeflateParams, DeflatePool, DeflateState, Role};

/// xorshift64: the same messages on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A message of `len` bytes: a counter and some words, partly compressible (chat-like).
fn message(r: &mut Rng, seq: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "hello", "world", "game", "ready", "push", "left", "right", "wait", "ok", "lol", "gg",
        "team", "base", "next", "round", "vote",
    ];
    let mut m = format!("{seq:08} ").into_bytes();
    while m.len() < len {
        m.extend_from_slice(WORDS[(r.next() % WORDS.len() as u64) as usize].as_bytes());
        m.push(b' ');
    }
    m.truncate(len);
    m
}

fn cfg() -> DeflateConfig {
    DeflateConfig {
        min_size: 0,
        level: 1,
        ..DeflateConfig::default()
    }
}

/// The client's compressed messages, one stream per connection, `per_conn` messages each,
/// interleaved round robin: (connection, wire payload, raw length).
fn client_stream(conns: usize, per_conn: usize, len: usize) -> Vec<(usize, Vec<u8>)> {
    let cfg = cfg();
    let mut pool = DeflatePool::new(cfg.level);
    let mut states: Vec<DeflateState> = (0..conns)
        .map(|_| DeflateState::new(DeflateParams::default(), Role::Client))
        .collect();
    let mut r = Rng(0x5eed_cafe_f00d_d00d);
    let mut out = Vec::with_capacity(conns * per_conn);
    for i in 0..per_conn {
        for (c, st) in states.iter_mut().enumerate() {
            let m = message(&mut r, i as u64, len);
            let mut w = Vec::new();
            assert!(st.compress(&m, &cfg, &mut pool, &mut w));
            out.push((c, w));
        }
    }
    out
}

fn report(name: &str, blocks: &[f64]) {
    let mut sorted = blocks.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let shown: Vec<String> = blocks.iter().map(|b| format!("{b:.0}")).collect();
    println!(
        "{name}: median {median:.0} ns/msg; first {} last {}; blocks: {}",
        shown[0],
        shown[shown.len() - 1],
        shown.join(" ")
    );
}

/// Inflates `wire` with one server-role state per connection; ns per message per block.
fn inflate(conns: usize, wire: &[(usize, Vec<u8>)], block: usize) -> Vec<f64> {
    let cfg = cfg();
    let mut pool = DeflatePool::new(cfg.level);
    let mut states: Vec<DeflateState> = (0..conns)
        .map(|_| DeflateState::new(DeflateParams::default(), Role::Server))
        .collect();
    let mut out = Vec::with_capacity(1 << 16);
    let mut blocks = Vec::new();
    for chunk in wire.chunks(block) {
        let t = Instant::now();
        for (c, w) in chunk {
            out.clear();
            states[*c]
                .decompress(w, true, true, &cfg, &mut pool, &mut out)
                .unwrap();
            black_box(&out);
        }
        blocks.push(t.elapsed().as_nanos() as f64 / chunk.len() as f64);
    }
    blocks
}

/// Compresses `per_conn` messages of `len` bytes on one client-role state; ns per message per block.
fn compress(per_conn: usize, len: usize, block: usize) -> Vec<f64> {
    let cfg = cfg();
    let mut pool = DeflatePool::new(cfg.level);
    let mut st = DeflateState::new(DeflateParams::default(), Role::Client);
    let mut r = Rng(0x5eed_cafe_f00d_d00d);
    let msgs: Vec<Vec<u8>> = (0..per_conn)
        .map(|i| message(&mut r, i as u64, len))
        .collect();
    let mut w = Vec::with_capacity(1 << 16);
    let mut blocks = Vec::new();
    for chunk in msgs.chunks(block) {
        let t = Instant::now();
        for m in chunk {
            w.clear();
            st.compress(m, &cfg, &mut pool, &mut w);
            black_box(&w);
        }
        blocks.push(t.elapsed().as_nanos() as f64 / chunk.len() as f64);
    }
    blocks
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = [
        "inflate20",
        "inflate512",
        "compress20",
        "compress512",
        "conns100",
        "conns1000",
    ];
    let chosen: Vec<&str> = if args.is_empty() {
        all.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for s in chosen {
        match s {
            // 200,000 messages of 20 B: the window is full after the first 1,640.
            "inflate20" => report(s, &inflate(1, &client_stream(1, 200_000, 20), 20_000)),
            "inflate512" => report(s, &inflate(1, &client_stream(1, 40_000, 512), 4_000)),
            "compress20" => report(s, &compress(100_000, 20, 10_000)),
            "compress512" => report(s, &compress(20_000, 512, 2_000)),
            "conns100" => report(s, &inflate(100, &client_stream(100, 2_000, 20), 20_000)),
            "conns1000" => report(s, &inflate(1000, &client_stream(1000, 200, 20), 20_000)),
            other => eprintln!("unknown scenario {other}"),
        }
    }
}
