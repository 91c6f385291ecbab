//! Server handshake cost: parse + validate + origin check + subprotocol choice + write the 101
//! response, for a Chrome-like request. Reported as handshakes per second; allocations per
//! handshake are counted by a wrapping global allocator and printed once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use surge::handshake::{
    check_origin, parse_request, write_accept_response, HandshakeConfig, ParseStatus,
};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the GlobalAlloc contract;
// the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as this function's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as this function's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as this function's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CHROME: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
Host: example.com:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://example.com:8080\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=4f1c2a9e0b7d4e3f8a6c5b2d1e0f9a8b; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// One server-side handshake; `out` is reused, as the engine reuses a connection's buffer.
fn handshake(cfg: &HandshakeConfig, out: &mut Vec<u8>) -> usize {
    let ParseStatus::Complete { request, consumed } = parse_request(CHROME, cfg).unwrap() else {
        unreachable!("the request is complete")
    };
    check_origin(&request, cfg).unwrap();
    let protocol = request.select_subprotocol(&cfg.subprotocols);
    out.clear();
    write_accept_response(out, request.key(), protocol, None, &[]);
    consumed
}

fn bench(c: &mut Criterion) {
    let cfg = HandshakeConfig {
        subprotocols: vec!["superchat".into(), "chat".into()],
        ..HandshakeConfig::default()
    };
    let mut out = Vec::with_capacity(256);
    handshake(&cfg, &mut out);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    const N: usize = 1000;
    for _ in 0..N {
        black_box(handshake(&cfg, &mut out));
    }
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
    eprintln!(
        "handshake: {} allocations per handshake ({} bytes of request, {} headers)",
        allocs as f64 / N as f64,
        CHROME.len(),
        CHROME.windows(2).filter(|w| w == b"\r\n").count() - 2
    );

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("server_chrome_request", |b| {
        b.iter(|| black_box(handshake(&cfg, &mut out)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
