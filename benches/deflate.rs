//! permessage-deflate on a generated corpus of chat and game-state JSON messages (100 B to 4 KiB):
//! compression and decompression throughput, ratio, and heap bytes held per connection, for each mode,
//! against no compression; libdeflate against zlib-rs for whole messages without context takeover.
//!
//! `cargo bench -p surge --bench deflate` prints Markdown tables (docs/BENCHMARKS.md). A plain
//! timing loop (best of several rounds of the whole corpus) rather than criterion: every figure is
//! a whole-corpus rate, and the memory column needs the counting allocator installed here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, FlushCompress};
use surge::proto::deflate::compress_variant;
use surge::proto::{DeflateConfig, DeflateParams, DeflatePool, DeflateState, Role, Variant};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: caller's contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: caller's contract.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: caller's contract.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: caller's contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// xorshift64: the corpus is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const NAMES: &[&str] = &[
    "alice", "bob", "carol", "dmitri", "eve", "fatima", "gustav", "hiro", "ines", "jamal", "kwame",
    "lena", "mateo", "noor", "olga", "pierre",
];
const WORDS: &[&str] = &[
    "the", "game", "starts", "in", "five", "minutes", "who", "is", "ready", "gg", "nice", "shot",
    "lag", "again", "let's", "go", "team", "base", "push", "left", "right", "wait", "for", "me",
    "ok", "thanks", "lol", "map", "vote", "next", "round", "héllo", "naïve", "über",
];

/// A chat message: 100 B to about 1 KiB.
fn chat(r: &mut Rng, seq: u64) -> String {
    let mut text = String::new();
    let words = 5 + r.next() % 120;
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(r.pick(WORDS));
    }
    format!(
        r#"{{"type":"message","id":"{:016x}","seq":{seq},"room":"room-{}","from":{{"id":{},"name":"{}","avatar":"https://cdn.example.com/a/{}.png"}},"ts":{},"text":"{text}","mentions":[],"reactions":{{}}}}"#,
        r.next(),
        r.next() % 20,
        r.next() % 10_000,
        r.pick(NAMES),
        r.next() % 10_000,
        1_764_000_000_000u64 + seq * 1375,
    )
}

/// A game-state delta: a few to several dozen entities, 200 B to 4 KiB.
fn game_state(r: &mut Rng, seq: u64) -> String {
    let n = 1 + r.next() % 30;
    let mut s = format!(r#"{{"type":"state","tick":{seq},"entities":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":{},"kind":"{}","pos":{{"x":{:.2},"y":{:.2}}},"vel":{{"x":{:.2},"y":{:.2}}},"hp":{},"team":"{}"}}"#,
            r.next() % 500,
            r.pick(&["player", "bullet", "crate", "npc"]),
            (r.next() % 100_000) as f64 / 100.0,
            (r.next() % 100_000) as f64 / 100.0,
            (r.next() % 2000) as f64 / 100.0 - 10.0,
            (r.next() % 2000) as f64 / 100.0 - 10.0,
            r.next() % 101,
            r.pick(&["red", "blue"]),
        ));
    }
    s.push_str("]}");
    s
}

fn corpus() -> Vec<Vec<u8>> {
    let mut r = Rng(0x5eed_cafe_f00d_d00d);
    let mut out = Vec::new();
    for seq in 0..4000u64 {
        let m = if seq % 2 == 0 {
            chat(&mut r, seq)
        } else {
            game_state(&mut r, seq)
        };
        let mut m = m.into_bytes();
        m.truncate(4096);
        out.push(m);
    }
    out
}

/// Best rate of several rounds, in MiB/s of uncompressed bytes.
fn rate(total: usize, mut round: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut rounds = 0;
    while rounds < 3 || (Instant::now() < deadline && rounds < 50) {
        let t = Instant::now();
        round();
        best = best.min(t.elapsed());
        rounds += 1;
    }
    total as f64 / best.as_secs_f64() / (1 << 20) as f64
}

fn params(nct: bool, bits: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: nct,
        client_no_context_takeover: nct,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
    }
}

/// Compresses the corpus as one connection would; returns the wire bytes of each message.
fn compress_all(p: DeflateParams, level: u8, msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let cfg = DeflateConfig {
        min_size: 0,
        level,
        ..DeflateConfig::default()
    };
    let mut pool = DeflatePool::new(level);
    let mut st = DeflateState::new(p, Role::Server);
    msgs.iter()
        .map(|m| {
            let mut w = Vec::new();
            if !st.compress(m, &cfg, &mut pool, &mut w) {
                w = m.clone();
            }
            w
        })
        .collect()
}

fn main() {
    let msgs = corpus();
    let total: usize = msgs.iter().map(Vec::len).sum();
    let (min, max) = msgs.iter().fold((usize::MAX, 0), |(a, b), m| {
        (a.min(m.len()), b.max(m.len()))
    });
    println!(
        "corpus: {} messages (chat and game-state JSON, alternating), {} bytes, {}..{} bytes each, mean {}",
        msgs.len(),
        total,
        min,
        max,
        total / msgs.len()
    );

    // -- whole messages without context takeover: libdeflate against zlib-rs ----------------------
    println!("\n### Without context takeover: whole-message compression, libdeflate vs zlib-rs\n");
    println!("| library | level | compress MiB/s | ratio (wire / raw) |");
    println!("|---|---:|---:|---:|");
    for level in [1u8, 6, 9] {
        let mut pool = DeflatePool::new(level);
        pool.use_libdeflate(true);
        let mut out = Vec::with_capacity(8192);
        let mut wire = 0;
        for m in &msgs {
            out.clear();
            compress_variant(m, Variant { window_bits: 15 }, &mut pool, &mut out);
            wire += out.len();
        }
        let r = rate(total, || {
            for m in &msgs {
                out.clear();
                compress_variant(m, Variant { window_bits: 15 }, &mut pool, &mut out);
                black_box(&out);
            }
        });
        println!(
            "| libdeflate | {level} | {r:.0} | {:.3} |",
            wire as f64 / total as f64
        );

        let mut c = Compress::new_with_window_bits(Compression::new(u32::from(level)), false, 15);
        let mut zlib = |m: &[u8], out: &mut Vec<u8>| {
            c.reset();
            out.reserve(m.len() + 64);
            c.compress_vec(m, out, FlushCompress::Sync).unwrap();
            out.truncate(out.len() - 4);
        };
        let mut wire = 0;
        for m in &msgs {
            out.clear();
            zlib(m, &mut out);
            wire += out.len();
        }
        let r = rate(total, || {
            for m in &msgs {
                out.clear();
                zlib(m, &mut out);
                black_box(&out);
            }
        });
        println!(
            "| zlib-rs | {level} | {r:.0} | {:.3} |",
            wire as f64 / total as f64
        );
    }

    // -- each mode: compress, decompress, ratio, memory per connection ---------------------------
    println!("\n### Each mode (one connection sending the whole corpus, then one receiving it)\n");
    println!("| mode | level | compress MiB/s | decompress MiB/s | ratio | held per connection |");
    println!("|---|---:|---:|---:|---:|---:|");
    let copy = rate(total, || {
        for m in &msgs {
            black_box(m.clone());
        }
    });
    println!("| no compression (copy) | - | {copy:.0} | {copy:.0} | 1.000 | 0 B |");
    let modes: &[(&str, bool, u8)] = &[
        ("no context takeover", true, 15),
        ("context takeover, window 15", false, 15),
        ("context takeover, window 12", false, 12),
        ("context takeover, window 10", false, 10),
        ("context takeover, window 9 (8)", false, 9),
    ];
    for &(name, nct, bits) in modes {
        for level in [1u8, 6] {
            let p = params(nct, bits);
            let wires = compress_all(p, level, &msgs);
            let wire: usize = wires.iter().map(Vec::len).sum();
            let comp = rate(total, || {
                black_box(compress_all(p, level, &msgs));
            });
            let cfg = DeflateConfig::default();
            let mut pool = DeflatePool::new(level);
            let mut out = Vec::with_capacity(8192);
            let decomp = rate(total, || {
                let mut rx = DeflateState::new(p, Role::Client);
                for w in &wires {
                    out.clear();
                    rx.decompress(w, true, true, &cfg, &mut pool, &mut out)
                        .unwrap();
                    black_box(&out);
                }
            });
            // Heap held by one connection's state once its windows are full: after 100 messages
            // each way (the pool warmed first with the same kind of state, then dropped).
            let mut warm = DeflateState::new(p, Role::Server);
            let mut scratch = Vec::new();
            warm.compress(&msgs[1], &cfg, &mut pool, &mut scratch);
            let mut inflated = Vec::with_capacity(1 << 20);
            warm.decompress(&wires[0], true, true, &cfg, &mut pool, &mut inflated)
                .unwrap();
            drop(warm);
            let mut w = Vec::with_capacity(1 << 20);
            let before = live();
            let mut st = DeflateState::new(p, Role::Server);
            for (m, wire) in msgs.iter().zip(&wires).take(100) {
                w.clear();
                st.compress(m, &cfg, &mut pool, &mut w);
                // The peer's stream, as the client sent it, inflated by the server.
                inflated.clear();
                st.decompress(wire, true, true, &cfg, &mut pool, &mut inflated)
                    .unwrap();
            }
            let held = live() - before;
            black_box(&st);
            println!(
                "| {name} | {level} | {comp:.0} | {decomp:.0} | {:.3} | {} |",
                wire as f64 / total as f64,
                kib(held)
            );
        }
    }

    // -- context takeover: a compressor per connection (phase 1) vs the pooled one primed -------
    println!("\n### Context takeover: a zlib-rs stream kept per connection vs the pool's, primed with the window\n");
    println!("| window | level | kept stream MiB/s | primed MiB/s | kept ratio | primed ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for bits in [15u8, 12] {
        for level in [1u8, 6] {
            let kept = |out: &mut usize| {
                let mut c =
                    Compress::new_with_window_bits(Compression::new(u32::from(level)), false, bits);
                let mut w = Vec::with_capacity(8192);
                for m in &msgs {
                    w.clear();
                    w.reserve(m.len() + 64);
                    c.compress_vec(m, &mut w, FlushCompress::Sync).unwrap();
                    *out += w.len() - 4;
                }
            };
            let mut kept_wire = 0;
            kept(&mut kept_wire);
            let r_kept = rate(total, || kept(&mut 0));
            let p = params(false, bits);
            let wire: usize = compress_all(p, level, &msgs).iter().map(Vec::len).sum();
            let r_primed = rate(total, || {
                black_box(compress_all(p, level, &msgs));
            });
            println!(
                "| {bits} | {level} | {r_kept:.0} | {r_primed:.0} | {:.3} | {:.3} |",
                kept_wire as f64 / total as f64,
                wire as f64 / total as f64
            );
        }
    }

    // -- zlib-rs state by window bits: compressor and inflater apart ------------------------------
    println!("\n### Heap bytes of one zlib-rs state (flate2, memLevel 8)\n");
    println!("| window bits | compressor | inflater |");
    println!("|---:|---:|---:|");
    for bits in 9u8..=15 {
        let before = live();
        let mut c = Box::new(Compress::new_with_window_bits(
            Compression::new(1),
            false,
            bits,
        ));
        let mut o = Vec::with_capacity(8192);
        c.compress_vec(&msgs[1], &mut o, FlushCompress::Sync)
            .unwrap();
        drop(o);
        let comp = live() - before;
        let before = live();
        let mut d = Box::new(flate2::Decompress::new_with_window_bits(false, bits));
        let mut o = Vec::with_capacity(8192);
        d.decompress_vec(
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
            &mut o,
            flate2::FlushDecompress::Sync,
        )
        .unwrap();
        drop(o);
        let inf = live() - before;
        black_box((&c, &d));
        println!("| {bits} | {} | {} |", kib(comp), kib(inf));
    }
}

fn kib(b: isize) -> String {
    if b < 1024 {
        format!("{b} B")
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}
