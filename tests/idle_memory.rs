//! Heap bytes per idle connection, counted by a global allocator (issue 3, "Memory": <= 256 B).
//!
//! The server runs in this process; 10k clients run in two child processes (5k each: the machine
//! allows 20,000 descriptors per process). Live heap bytes are read when the server is idle
//! before any client, after 5k idle connections and after 10k. The bar applies to
//! (10k - base) / 10k; the marginal cost (10k - 5k) / 5k is printed too (it moves with the
//! registry's page rounding), with a histogram of what the live allocations are. Buffers of
//! exactly the write chunk size are the chunk pools' (free chunks are cached up to
//! `pool_max_cached` per pool, however many connections there are): they are counted apart and
//! checked against that bound.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{wait_until, ClientProcess};
use surge::{Accept, CloseInfo, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade};

/// The measuring tests run one at a time: the counts are the whole process's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Size classes of the histogram: class `i` holds sizes in `[2^i, 2^(i+1))`.
const CLASSES: usize = 40;

/// Counts live heap bytes and allocations, overall and per size class.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_COUNT: AtomicIsize = AtomicIsize::new(0);
/// Allocations of exactly the write chunk size: the per-worker chunk pools' buffers, bounded by
/// `pool_max_cached` whatever the connection count (a per-connection chunk would show up here as
/// thousands of them, and fail the bound).
static CHUNK_SIZE: AtomicUsize = AtomicUsize::new(usize::MAX);
static CHUNK_COUNT: AtomicIsize = AtomicIsize::new(0);
static CLASS_BYTES: [AtomicIsize; CLASSES] = [const { AtomicIsize::new(0) }; CLASSES];
static CLASS_COUNT: [AtomicIsize; CLASSES] = [const { AtomicIsize::new(0) }; CLASSES];

fn class(size: usize) -> usize {
    (usize::BITS - 1 - size.max(1).leading_zeros()).min(CLASSES as u32 - 1) as usize
}

fn count(size: usize, sign: isize) {
    let bytes = size as isize * sign;
    LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    LIVE_COUNT.fetch_add(sign, Ordering::Relaxed);
    if size == CHUNK_SIZE.load(Ordering::Relaxed) {
        CHUNK_COUNT.fetch_add(sign, Ordering::Relaxed);
    }
    let c = class(size);
    CLASS_BYTES[c].fetch_add(bytes, Ordering::Relaxed);
    CLASS_COUNT[c].fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the same arguments; the counters are atomics
// and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes through it).
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller guarantees `new_size` is valid for `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A snapshot of the counters.
#[derive(Clone, Copy)]
struct Snapshot {
    bytes: isize,
    count: isize,
    chunks: isize,
    class_bytes: [isize; CLASSES],
    class_count: [isize; CLASSES],
}

fn snapshot() -> Snapshot {
    Snapshot {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        count: LIVE_COUNT.load(Ordering::Relaxed),
        chunks: CHUNK_COUNT.load(Ordering::Relaxed),
        class_bytes: std::array::from_fn(|i| CLASS_BYTES[i].load(Ordering::Relaxed)),
        class_count: std::array::from_fn(|i| CLASS_COUNT[i].load(Ordering::Relaxed)),
    }
}

/// Waits until live bytes have not moved by more than 1 KiB for 300 ms; returns the last snapshot.
fn quiescent() -> Snapshot {
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = snapshot();
    let mut stable_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = snapshot();
        if (now.bytes - last.bytes).abs() > 1024 {
            stable_since = Instant::now();
        }
        last = now;
        if stable_since.elapsed() >= Duration::from_millis(300) || Instant::now() >= end {
            return last;
        }
    }
}

/// The difference between two snapshots, per connection, with the size classes that moved.
/// Returns the bytes per connection outside the chunk pools.
fn report(label: &str, from: &Snapshot, to: &Snapshot, conns: usize) -> f64 {
    let chunk_bytes = (to.chunks - from.chunks) * CHUNK_SIZE.load(Ordering::Relaxed) as isize;
    let bytes = to.bytes - from.bytes - chunk_bytes;
    let per = bytes as f64 / conns as f64;
    println!(
        "{label}: {bytes:+} B live over {conns} connections = {per:.1} B/conn, {:+} allocations \
         = {:.3}/conn; pooled chunks {:+} ({chunk_bytes:+} B, not counted)",
        to.count - from.count,
        (to.count - from.count) as f64 / conns as f64,
        to.chunks - from.chunks,
    );
    for i in 0..CLASSES {
        let db = to.class_bytes[i] - from.class_bytes[i];
        let dc = to.class_count[i] - from.class_count[i];
        if db != 0 || dc != 0 {
            println!(
                "    sizes {:>9}..{:<9} {dc:+7} allocations {db:+11} B ({:.1} B/conn)",
                1usize << i,
                (1usize << (i + 1)) - 1,
                db as f64 / conns as f64
            );
        }
    }
    per
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Echo, counting opens and closes. Unit user data: the test measures the engine's cost.
struct Counter {
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Handler for Counter {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_open(&mut self, _conn: &mut Conn<'_, ()>) {
        self.opened.fetch_add(1, Ordering::SeqCst);
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
    fn on_close(&mut self, _worker: &mut surge::WorkerCtx<()>, _data: (), _info: &CloseInfo<'_>) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

const HALF: usize = 5_000;
const BAR: f64 = 256.0;

#[test]
fn heap_bytes_per_idle_connection() {
    let _one = measuring();
    let started = Instant::now();
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        ..ServerConfig::default()
    };
    CHUNK_SIZE.store(cfg.write_chunk_size, Ordering::Relaxed);
    // Two pools (write chunks, assembly buffers) per worker.
    let max_pooled = (cfg.workers * 2 * cfg.pool_max_cached) as isize;
    let (o, c) = (Arc::clone(&opened), Arc::clone(&closed));
    let handle = Server::new(cfg)
        .start(move |_| Counter {
            opened: Arc::clone(&o),
            closed: Arc::clone(&c),
        })
        .unwrap();
    let addr = handle.local_addr();

    let base = quiescent();
    let rss_base = vm_rss_kib();

    let mut first = ClientProcess::spawn("client_process", addr, HALF);
    assert_eq!(first.wait("opened", Duration::from_secs(30)), HALF);
    assert!(wait_until(Duration::from_secs(5), || {
        opened.load(Ordering::SeqCst) == HALF
    }));
    let at_half = quiescent();

    let mut second = ClientProcess::spawn("client_process", addr, HALF);
    assert_eq!(second.wait("opened", Duration::from_secs(30)), HALF);
    assert!(wait_until(Duration::from_secs(5), || {
        opened.load(Ordering::SeqCst) == 2 * HALF
    }));
    let at_full = quiescent();
    let rss_full = vm_rss_kib();

    println!("--- heap per idle connection (2 workers, default settings) ---");
    let naive = report("first 10k (incl. warm-up)", &base, &at_full, 2 * HALF);
    report("first 5k", &base, &at_half, HALF);
    let marginal = report("second 5k (marginal)", &at_half, &at_full, HALF);
    // The registry allocates pages of 256 slots: the 32..64 KiB class above is slab pages.
    println!(
        "sizes: protocol core {} B (inside the registry slot)",
        std::mem::size_of::<surge::proto::Session>(),
    );
    println!(
        "VmRSS: {rss_base} KiB idle server, {rss_full} KiB with 10k connections \
         ({:+.0} B/conn, kernel socket memory not included)",
        (rss_full as f64 - rss_base as f64) * 1024.0 / (2 * HALF) as f64
    );

    // Everything goes back: close all, the heap returns near the base.
    for p in [&mut first, &mut second] {
        p.command("close");
    }
    for p in [&mut first, &mut second] {
        assert_eq!(p.wait("closed", Duration::from_secs(20)), HALF);
    }
    first.finish();
    second.finish();
    assert!(wait_until(Duration::from_secs(5), || {
        closed.load(Ordering::SeqCst) == 2 * HALF
    }));
    let after = quiescent();
    report("after closing all (vs base)", &base, &after, 2 * HALF);
    handle.shutdown();
    handle.join().unwrap();
    println!("took {:?}", started.elapsed());

    assert!(
        at_full.chunks <= max_pooled + 64,
        "{} pooled chunks live: more than the pools keep ({max_pooled})",
        at_full.chunks
    );
    assert!(
        naive <= BAR,
        "{naive:.1} heap bytes per idle connection (bar: {BAR}); marginal {marginal:.1}"
    );
}

/// The client side, run in a child process.
#[test]
#[ignore = "helper: run by heap_bytes_per_idle_connection in a child process"]
fn client_process() {
    support::client_mode();
}

/// TLS connections measured (fewer: each costs a handshake in a debug build).
const TLS_CONNS: usize = 1_000;
/// Heap bytes per idle TLS connection at most: the plain bar plus 1.5 KiB (issue 15's target;
/// measured: see the printed figure and docs/ENGINE.md, "TLS"). A TLS 1.3 connection past its
/// handshake keeps only its record keys and rustls's kernel connection (`tls::record`).
const TLS_BAR: f64 = BAR + 1536.0;
const ENV_TLS_CA: &str = "SURGE_TEST_TLS_CA";

/// Heap per idle `wss://` connection, beside the plain figure: what rustls keeps per session
/// (its state machine, record keys, a few empty queues) plus the worker's side table entry.
#[test]
fn heap_bytes_per_idle_tls_connection() {
    let _one = measuring();
    let pki = support::pki::Pki::new();
    let tls = pki.server_tls(&["localhost"]);
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let cfg = ServerConfig {
        bind: Vec::new(),
        tls_bind: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Some(tls),
        workers: 2,
        ..ServerConfig::default()
    };
    CHUNK_SIZE.store(cfg.write_chunk_size, Ordering::Relaxed);
    let (o, c) = (Arc::clone(&opened), Arc::clone(&closed));
    let handle = Server::new(cfg)
        .start(move |_| Counter {
            opened: Arc::clone(&o),
            closed: Arc::clone(&c),
        })
        .unwrap();
    let addr = handle.tls_addrs()[0];
    let base = quiescent();
    let mut clients = ClientProcess::spawn_with(
        "tls_client_process",
        &[
            (support::ENV_ADDR, addr.to_string()),
            (support::ENV_COUNT, TLS_CONNS.to_string()),
            (ENV_TLS_CA, pki.ca_pem()),
        ],
    );
    assert_eq!(clients.wait("opened", Duration::from_secs(60)), TLS_CONNS);
    assert!(wait_until(Duration::from_secs(5), || {
        opened.load(Ordering::SeqCst) == TLS_CONNS
    }));
    let at_full = quiescent();
    println!("--- heap per idle TLS connection (2 workers, TLS 1.3, tickets on) ---");
    let per = report("TLS connections", &base, &at_full, TLS_CONNS);
    clients.command("close");
    assert_eq!(clients.wait("closed", Duration::from_secs(30)), TLS_CONNS);
    clients.finish();
    assert!(wait_until(Duration::from_secs(5), || {
        closed.load(Ordering::SeqCst) == TLS_CONNS
    }));
    let after = quiescent();
    report("after closing all (vs base)", &base, &after, TLS_CONNS);
    handle.shutdown();
    handle.join().unwrap();
    assert!(
        per <= TLS_BAR,
        "{per:.1} heap bytes per idle TLS connection (bar: {TLS_BAR})"
    );
}

/// The TLS client side, run in a child process: `ENV_COUNT` `wss://` connections trusting the CA
/// in `ENV_TLS_CA`; `opened N`, then on `close` a close handshake on each, `closed N`.
#[test]
#[ignore = "helper: run by heap_bytes_per_idle_tls_connection in a child process"]
fn tls_client_process() {
    use std::io::BufRead;
    let (Ok(addr), Ok(count), Ok(ca)) = (
        std::env::var(support::ENV_ADDR),
        std::env::var(support::ENV_COUNT),
        std::env::var(ENV_TLS_CA),
    ) else {
        return;
    };
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let count: usize = count.parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(surge::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&cfg), "localhost".try_into().unwrap())
            .unwrap();
        let stream = rustls::StreamOwned::new(conn, tcp);
        let url = format!("wss://localhost:{}/", addr.port());
        let (ws, _) = tungstenite::client::client(url, stream).unwrap();
        conns.push(ws);
    }
    support::report("opened", conns.len());
    let mut cmd = String::new();
    if std::io::stdin().lock().read_line(&mut cmd).unwrap() == 0 {
        return;
    }
    assert_eq!(cmd.trim(), "close");
    for ws in &mut conns {
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    support::report("closed", conns.len());
}

/// Outgoing `wss://` connections measured.
const TLS_CLIENT_CONNS: usize = 1_000;
/// A generous bound on heap bytes per idle outgoing TLS connection (measured 5.5 KB: ~1.5 KB of
/// it a plain outgoing connection's, the rest rustls's client session; docs/ENGINE.md, "TLS").
const TLS_CLIENT_BAR: f64 = 8192.0;
const ENV_TLS_CERT: &str = "SURGE_TEST_TLS_CERT";
const ENV_TLS_KEY: &str = "SURGE_TEST_TLS_KEY";

/// The engine's client side of the TLS figure: heap per idle outgoing `wss://` connection
/// (`WorkerCtx::connect`), the server in a child process. Resumption is off so that the figure is
/// the connections' own (a shared session cache holds up to 256 sessions per configuration).
#[test]
fn heap_bytes_per_idle_tls_client_connection() {
    let _one = measuring();
    let pki = support::pki::Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let mut server = ClientProcess::spawn_with(
        "tls_server_process",
        &[(ENV_TLS_CERT, leaf.cert_pem), (ENV_TLS_KEY, leaf.key_pem)],
    );
    let port = server.wait("listening", Duration::from_secs(30));
    let tls = surge::tls::ClientTlsConfig::with_ca_pem(pki.ca_pem().as_bytes())
        .unwrap()
        .without_resumption();
    let request = surge::ConnectRequest::new(format!("wss://localhost:{port}/")).tls(tls);
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cfg = ServerConfig {
        workers: 1,
        handshake_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    CHUNK_SIZE.store(cfg.write_chunk_size, Ordering::Relaxed);
    let (o, c, g) = (Arc::clone(&opened), Arc::clone(&closed), Arc::clone(&go));
    let client = surge::Client::new(cfg)
        .start(move |_| Dialer {
            counter: Counter {
                opened: Arc::clone(&o),
                closed: Arc::clone(&c),
            },
            request: request.clone(),
            go: Arc::clone(&g),
        })
        .unwrap();
    // The worker is up and waits for `go`: the base is taken before any connection.
    std::thread::sleep(Duration::from_millis(200));
    let base = quiescent();
    go.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(120), || {
            opened.load(Ordering::SeqCst) == TLS_CLIENT_CONNS
        }),
        "{} of {TLS_CLIENT_CONNS} opened",
        opened.load(Ordering::SeqCst)
    );
    let at_full = quiescent();
    println!("--- heap per idle outgoing TLS connection (engine client, 1 worker, TLS 1.3) ---");
    let per = report(
        "wss:// client connections",
        &base,
        &at_full,
        TLS_CLIENT_CONNS,
    );
    client.shutdown();
    client.join().unwrap();
    server.command("quit");
    server.finish();
    assert!(
        per <= TLS_CLIENT_BAR,
        "{per:.1} heap bytes per idle outgoing TLS connection (bar: {TLS_CLIENT_BAR})"
    );
}

/// Opens `TLS_CLIENT_CONNS` connections once the test says go.
struct Dialer {
    counter: Counter,
    request: surge::ConnectRequest,
    go: Arc<std::sync::atomic::AtomicBool>,
}

impl Handler for Dialer {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
        self.counter.on_upgrade(req)
    }
    fn on_start(&mut self, worker: &mut surge::WorkerCtx<()>) {
        worker.set_interval(Duration::from_millis(10), ());
    }
    fn on_timer(&mut self, worker: &mut surge::WorkerCtx<()>, timer: surge::Timer<'_>) {
        if !self.go.load(Ordering::SeqCst) {
            return;
        }
        worker.cancel_timer(timer.id());
        for _ in 0..TLS_CLIENT_CONNS {
            worker.connect(&self.request, ()).unwrap();
        }
    }
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        self.counter.on_open(conn)
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        self.counter.on_message(conn, msg)
    }
    fn on_close(&mut self, worker: &mut surge::WorkerCtx<()>, data: (), info: &CloseInfo<'_>) {
        self.counter.on_close(worker, data, info)
    }
    fn on_connect_error(
        &mut self,
        _worker: &mut surge::WorkerCtx<()>,
        _id: surge::ConnId,
        _data: (),
        error: &surge::ConnectError,
    ) {
        panic!("connect: {error}");
    }
}

/// The server of `heap_bytes_per_idle_tls_client_connection`, in a child process: surge over TLS
/// with the certificate in the environment; reports `listening PORT`, exits on `quit`.
#[test]
#[ignore = "helper: run by heap_bytes_per_idle_tls_client_connection in a child process"]
fn tls_server_process() {
    use std::io::BufRead;
    let (Ok(cert), Ok(key)) = (std::env::var(ENV_TLS_CERT), std::env::var(ENV_TLS_KEY)) else {
        return;
    };
    let tls = surge::tls::TlsConfig::builder()
        .cert_pem(cert.as_bytes(), key.as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let cfg = ServerConfig {
        bind: Vec::new(),
        tls_bind: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Some(tls),
        workers: 1,
        handshake_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let (o, c) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handle = Server::new(cfg)
        .start(move |_| Counter {
            opened: Arc::clone(&o),
            closed: Arc::clone(&c),
        })
        .unwrap();
    support::report("listening", handle.tls_addrs()[0].port() as usize);
    let mut cmd = String::new();
    let _ = std::io::stdin().lock().read_line(&mut cmd);
    handle.shutdown();
    let _ = handle.join();
}
