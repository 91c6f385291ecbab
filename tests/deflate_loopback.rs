//! permessage-deflate end to end, generated once per driver (epoll, io_uring, and io_uring in the
//! poll receive mode; the io_uring versions are skipped with a message where the kernel refuses
//! io_uring):
//!
//! - Python `websockets` with its default compression (permessage-deflate with context takeover and
//!   `client_max_window_bits`): compressed echo of text and binary, similar messages, fragments.
//! - Raw frames, compressed by the test with `proto::DeflateState` in the client role: the 101
//!   names the extension, echoes come back with RSV1 and inflate to what was sent, a repeated
//!   message comes back much smaller (context takeover across messages), a fragmented compressed
//!   message is echoed, the per-message opt-out (`send_uncompressed`) goes out without RSV1, and
//!   small messages (under `min_size`) go uncompressed.
//! - Failures: a decompression bomb ends with 1009 without the server's heap growing by more than a
//!   few MiB; data that does not inflate and compressed text that is not UTF-8 end with 1007.
//! - Streamed (`stream_fragments`): a compressed message delivered piece by piece is bounded as a
//!   whole by the maximum message size, however small each piece inflates.
//! - Without `ServerConfig::deflate` the offer is declined and RSV1 is a protocol error (1002).
//!
//! Run without `SURGE_BACKEND` set: that variable overrides the configured backend.

#[macro_use]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};

use flate2::{Compress, Compression, FlushCompress};
use support::{encode_frame, Frame, RawClient};
use surge::proto::{DeflateConfig, DeflateMode, DeflateParams, DeflatePool, DeflateState, Role};
use surge::{Accept, Backend, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade};

/// Counts live heap bytes and the peak, to bound what a decompression bomb costs the server.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments; the counters are atomics
// and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now =
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let delta = new_size as isize - layout.size() as isize;
        let now = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

per_driver!(
    python_websockets_compressed_echo,
    raw_frames_context_takeover_fragments_and_opt_out,
    bomb_corrupt_and_invalid_utf8_fail_the_connection,
    streamed_compressed_message_is_bounded_as_a_whole,
    declined_without_configuration,
);

/// Echoes every message; messages starting with `raw:` go back through the per-message opt-out.
struct Echo;

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        if msg.as_bytes().starts_with(b"raw:") {
            let _ = conn.send_uncompressed(msg);
        } else {
            let _ = conn.send(msg);
        }
    }
}

const MAX_MESSAGE: u64 = 1 << 20;

fn start(backend: Backend, mode: DeflateMode) -> surge::ServerHandle {
    let mut cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        backend,
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    };
    cfg.deflate.mode = mode;
    cfg.proto.max_message_size = MAX_MESSAGE;
    let server = Server::new(cfg).start(|_| Echo).unwrap();
    assert_eq!(server.backend(), backend, "the configured backend runs");
    server
}

const TAKEOVER: DeflateMode = DeflateMode::ContextTakeover {
    server_max_window_bits: 15,
    client_max_window_bits: 15,
};

/// A chat-like JSON message.
fn chat(i: usize) -> String {
    format!(
        r#"{{"type":"chat","room":"lobby","user":"player{}","text":"hello everyone, this is message number {i} of the compression test","ts":{}}}"#,
        i % 7,
        1_700_000_000 + i
    )
}

// ---- Python websockets ----------------------------------------------------------------------

fn python_websockets_compressed_echo(backend: Backend) {
    let candidates = ["python3", support::VENV_PYTHON, "/tmp/kvenv/bin/python3"];
    let Some(python) = support::python_with_websockets(&candidates) else {
        println!("SKIPPED: python3 with the `websockets` package not found (.ci/run installs it)");
        return;
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/deflate_checks.py"
    );
    for mode in [TAKEOVER, DeflateMode::NoContextTakeover] {
        let server = start(backend, mode);
        let out = std::process::Command::new(python)
            .arg(script)
            .arg(server.local_addr().port().to_string())
            .output()
            .unwrap();
        println!("{mode:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "deflate_checks.py failed ({mode:?}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server.shutdown();
        server.join().unwrap();
    }
}

// ---- raw frames -----------------------------------------------------------------------------

/// A raw client that negotiated permessage-deflate, with its own compression state.
struct DeflateClient {
    raw: RawClient,
    state: DeflateState,
    pool: DeflatePool,
    cfg: DeflateConfig,
}

impl DeflateClient {
    fn connect(addr: SocketAddr, offer: &str) -> DeflateClient {
        let raw =
            RawClient::connect_with(addr, "/", &format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        let ext = raw
            .response
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
            .unwrap_or_else(|| panic!("no extension in the 101: {}", raw.response))
            .to_owned();
        assert!(ext.starts_with("permessage-deflate"), "{ext}");
        let params = DeflateParams {
            server_no_context_takeover: ext.contains("server_no_context_takeover"),
            client_no_context_takeover: ext.contains("client_no_context_takeover"),
            ..DeflateParams::default()
        };
        DeflateClient {
            raw,
            state: DeflateState::new(params, Role::Client),
            pool: DeflatePool::new(6),
            cfg: DeflateConfig {
                min_size: 0,
                ..DeflateConfig::default()
            },
        }
    }

    /// Sends `data` compressed (RSV1) as one frame.
    fn send_compressed(&mut self, opcode: u8, data: &[u8]) {
        let mut w = Vec::new();
        assert!(self.state.compress(data, &self.cfg, &mut self.pool, &mut w));
        self.raw.write_raw(&encode_frame(true, 4, opcode, &w));
    }

    /// Reads one data frame and returns it with its payload inflated when RSV1 is set.
    fn recv(&mut self) -> (Frame, Vec<u8>) {
        let f = self.raw.expect_frame();
        let mut out = Vec::new();
        if f.rsv & 4 != 0 {
            self.state
                .decompress(&f.payload, true, f.fin, &self.cfg, &mut self.pool, &mut out)
                .expect("the server's frame inflates");
        } else {
            out = f.payload.clone();
        }
        (f, out)
    }
}

fn raw_frames_context_takeover_fragments_and_opt_out(backend: Backend) {
    let server = start(backend, TAKEOVER);
    let addr = server.local_addr();
    let mut c = DeflateClient::connect(addr, "permessage-deflate; client_max_window_bits");

    // Compressed echo, context takeover across messages: the same message again costs far less.
    let msg = chat(1);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        c.send_compressed(1, msg.as_bytes());
        let (f, data) = c.recv();
        assert_eq!(
            (f.opcode, f.rsv, f.fin),
            (1, 4, true),
            "compressed text echo"
        );
        assert_eq!(data, msg.as_bytes());
        sizes.push(f.payload.len());
    }
    assert!(
        sizes[1] * 4 < sizes[0] && sizes[2] * 4 < sizes[0],
        "no context takeover? wire sizes {sizes:?} for {} bytes",
        msg.len()
    );

    // Similar messages, binary too.
    for i in 0..50 {
        let m = chat(i);
        let op = if i % 2 == 0 { 1 } else { 2 };
        c.send_compressed(op, m.as_bytes());
        let (f, data) = c.recv();
        assert_eq!((f.opcode, f.rsv), (op, 4));
        assert_eq!(data, m.as_bytes());
    }

    // A fragmented compressed message: RSV1 on the first frame only.
    let big: String = (0..40).map(chat).collect();
    let mut w = Vec::new();
    assert!(c
        .state
        .compress(big.as_bytes(), &c.cfg, &mut c.pool, &mut w));
    let third = w.len() / 3;
    c.raw.write_raw(&encode_frame(false, 4, 1, &w[..third]));
    c.raw
        .write_raw(&encode_frame(false, 0, 0, &w[third..2 * third]));
    c.raw.write_raw(&encode_frame(true, 0, 0, &w[2 * third..]));
    let (f, data) = c.recv();
    assert_eq!((f.opcode, f.rsv), (1, 4));
    assert_eq!(data, big.as_bytes());

    // The per-message opt-out: no RSV1, the bytes as they are.
    let raw = format!("raw:{}", chat(7));
    c.send_compressed(1, raw.as_bytes());
    let (f, data) = c.recv();
    assert_eq!((f.opcode, f.rsv), (1, 0), "send_uncompressed sets no RSV1");
    assert_eq!(data, raw.as_bytes());
    // An uncompressed message from the client is fine too, and small ones come back uncompressed.
    c.raw.send(true, 1, b"tiny");
    let (f, data) = c.recv();
    assert_eq!((f.opcode, f.rsv), (1, 0), "under min_size: uncompressed");
    assert_eq!(data, b"tiny");
    // Context is intact after the uncompressed ones.
    c.send_compressed(1, msg.as_bytes());
    let (f, data) = c.recv();
    assert_eq!((f.rsv, data.as_slice()), (4, msg.as_bytes()));

    c.raw.send(true, 8, &support::close_payload(1000, ""));
    assert_eq!(
        c.raw.read_until_close().unwrap().close_code().unwrap().0,
        1000
    );

    // No context takeover asked by the client: still compressed, each message alone.
    let mut c = DeflateClient::connect(
        addr,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    );
    for _ in 0..3 {
        c.send_compressed(1, msg.as_bytes());
        let (f, data) = c.recv();
        assert_eq!((f.opcode, f.rsv), (1, 4));
        assert_eq!(data, msg.as_bytes());
    }
    server.shutdown();
    server.join().unwrap();
}

fn expect_close(c: &mut RawClient, code: u16, what: &str) {
    let close = c
        .read_until_close()
        .unwrap_or_else(|| panic!("{what}: no close frame"));
    assert_eq!(close.close_code().map(|c| c.0), Some(code), "{what}");
    assert!(c.reaches_eof(), "{what}: the server closes the connection");
}

fn bomb_corrupt_and_invalid_utf8_fail_the_connection(backend: Backend) {
    let server = start(backend, TAKEOVER);
    let addr = server.local_addr();
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";

    // 32 MiB of zeros compress to about 32 KiB: 32 times the 1 MiB limit. Made in pieces, so
    // that the test itself never holds the 256 MiB.
    let zeros = vec![0u8; 1 << 20];
    let mut z = Compress::new_with_window_bits(Compression::new(9), false, 15);
    let mut bomb = Vec::with_capacity(1 << 20);
    for i in 0..32 {
        let flush = if i == 31 {
            FlushCompress::Sync
        } else {
            FlushCompress::None
        };
        let before = z.total_in();
        while z.total_in() - before < zeros.len() as u64 {
            let done = (z.total_in() - before) as usize;
            bomb.reserve(64 << 10);
            z.compress_vec(&zeros[done..], &mut bomb, flush).unwrap();
        }
    }
    while !bomb.ends_with(&[0, 0, 0xff, 0xff]) {
        bomb.reserve(64 << 10);
        z.compress_vec(&[], &mut bomb, FlushCompress::Sync).unwrap();
    }
    bomb.truncate(bomb.len() - 4);
    drop((zeros, z));
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut c = RawClient::connect_with(addr, "/", offer);
    c.write_raw(&encode_frame(true, 4, 2, &bomb));
    expect_close(&mut c, 1009, "decompression bomb");
    let grew = PEAK.load(Ordering::Relaxed) - before;
    // The inflated bytes stop at the limit (1 MiB); the compressed frame is assembled (32 KiB); the
    // rest is the test's own reading and the worker's pools.
    assert!(
        grew < 16 << 20,
        "the heap grew by {grew} bytes for a bomb against a {MAX_MESSAGE}-byte limit"
    );

    // Data that does not inflate.
    let mut c = RawClient::connect_with(addr, "/", offer);
    c.write_raw(&encode_frame(true, 4, 2, &[0xff, 0xff, 0xff, 0xff]));
    expect_close(&mut c, 1007, "corrupt deflate data");

    // Compressed text that is not UTF-8.
    let mut st = DeflateState::new(DeflateParams::default(), Role::Client);
    let cfg = DeflateConfig {
        min_size: 0,
        ..DeflateConfig::default()
    };
    let mut w = Vec::new();
    st.compress(
        b"abc\xff\xfe invalid",
        &cfg,
        &mut DeflatePool::new(1),
        &mut w,
    );
    let mut c = RawClient::connect_with(addr, "/", offer);
    c.write_raw(&encode_frame(true, 4, 1, &w));
    expect_close(&mut c, 1007, "compressed text that is not UTF-8");

    // The server is still fine.
    let mut c = DeflateClient::connect(addr, "permessage-deflate");
    c.send_compressed(1, chat(3).as_bytes());
    assert_eq!(c.recv().1, chat(3).as_bytes());
    server.shutdown();
    server.join().unwrap();
}

/// Counts what each message delivers (whole or in pieces) and answers with the count.
struct Count;

impl Handler for Count {
    type Data = usize;
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<usize> {
        Upgrade::Accept(Accept::new(0))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, usize>, msg: Message<'_>) {
        let _ = conn.send(Message::Text(&msg.as_bytes().len().to_string()));
    }
    fn on_fragment(
        &mut self,
        conn: &mut Conn<'_, usize>,
        _kind: surge::proto::MessageKind,
        data: &[u8],
        first: bool,
        last: bool,
    ) {
        if first {
            *conn.data_mut() = 0;
        }
        *conn.data_mut() += data.len();
        if last {
            let total = *conn.data();
            let _ = conn.send(Message::Text(&total.to_string()));
        }
    }
}

/// A compressed message in three frames, streamed: each piece inflates to about a third of it, well
/// under the maximum message size, but the whole is over it: 1009 (each piece used to be checked
/// alone, and the message went through whole). Within the limit it is delivered in pieces.
fn streamed_compressed_message_is_bounded_as_a_whole(backend: Backend) {
    let mut cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        backend,
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    };
    cfg.deflate.mode = DeflateMode::NoContextTakeover;
    cfg.proto.max_message_size = MAX_MESSAGE;
    cfg.proto.stream_fragments = true;
    let server = Server::new(cfg).start(|_| Count).unwrap();
    let addr = server.local_addr();
    let offer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    let send = |c: &mut DeflateClient, data: &[u8]| {
        let mut w = Vec::new();
        assert!(c.state.compress(data, &c.cfg, &mut c.pool, &mut w));
        let cuts = [0, w.len() / 3, 2 * w.len() / 3, w.len()];
        // The pieces as the server inflates them: each is under the limit.
        let mut model = DeflateState::new(
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                ..DeflateParams::default()
            },
            Role::Server,
        );
        let mut piece = Vec::new();
        for i in 0..3 {
            piece.clear();
            model
                .decompress(
                    &w[cuts[i]..cuts[i + 1]],
                    i == 0,
                    i == 2,
                    &c.cfg,
                    &mut c.pool,
                    &mut piece,
                )
                .unwrap();
            assert!(
                (piece.len() as u64) < MAX_MESSAGE,
                "piece {i}: {}",
                piece.len()
            );
        }
        for i in 0..3 {
            let (rsv, opcode) = if i == 0 { (4, 2) } else { (0, 0) };
            c.raw
                .write_raw(&encode_frame(i == 2, rsv, opcode, &w[cuts[i]..cuts[i + 1]]));
        }
    };

    // Within the limit: delivered piece by piece, all of it.
    let mut c = DeflateClient::connect(addr, offer);
    let fits: Vec<u8> = (0..MAX_MESSAGE as usize)
        .map(|i| (i / 1000) as u8)
        .collect();
    send(&mut c, &fits);
    let (f, data) = c.recv();
    assert_eq!(f.opcode, 1);
    assert_eq!(data, fits.len().to_string().as_bytes());

    // Twice the limit, in pieces of about two thirds of it.
    let mut c = DeflateClient::connect(addr, offer);
    let over: Vec<u8> = (0..2 * MAX_MESSAGE as usize)
        .map(|i| (i / 1000) as u8)
        .collect();
    send(&mut c, &over);
    expect_close(
        &mut c.raw,
        1009,
        "a streamed compressed message past the limit",
    );
    server.shutdown();
    server.join().unwrap();
}

fn declined_without_configuration(backend: Backend) {
    let server = start(backend, DeflateMode::Disabled);
    let addr = server.local_addr();
    let mut c = RawClient::connect_with(
        addr,
        "/",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    assert!(
        !c.response.contains("Sec-WebSocket-Extensions"),
        "declined: {}",
        c.response
    );
    c.send(true, 1, chat(1).as_bytes());
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.rsv), (1, 0));
    c.write_raw(&encode_frame(true, 4, 1, b"\xf2\x48\xcd\xc9\xc9\x07\x00"));
    expect_close(&mut c, 1002, "RSV1 without the extension");
    server.shutdown();
    server.join().unwrap();
}
