//! What a peer or the clock does must not stall a worker or grow memory without bound: timers
//! beside far deadlines, floods of pings and small frames into connections that never read, end of
//! file right after a request, panicking handlers. Each test runs on every driver (`per_driver!`).

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{encode_frame, upgrade_request, wait_until, RawClient};
use surge::{
    Accept, BackpressurePolicy, CloseCode, CloseInfo, Conn, Handler, Message, PreparedMessage,
    Request, Server, ServerConfig, ServerHandle, Upgrade, WorkerCtx,
};

fn config(workers: usize) -> ServerConfig {
    ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    }
}

/// Shuts the server down and waits for it, at most 10 s.
fn stop(handle: ServerHandle) {
    handle.shutdown();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(handle.join());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("join() returns after shutdown")
        .expect("workers exit cleanly");
}

/// A 30 Hz game tick beside a timer 10 s away on a worker that sees no traffic.
struct Ticker {
    ticks: Arc<Mutex<Vec<Instant>>>,
}

impl Handler for Ticker {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: Message<'_>) {}
    fn on_start(&mut self, worker: &mut WorkerCtx<()>) {
        worker.set_timeout(Duration::from_secs(10), "far");
        worker.set_interval(Duration::from_millis(33), "tick");
        self.ticks.lock().unwrap().push(Instant::now()); // the first gap counts too
    }
    fn on_timer(&mut self, _worker: &mut WorkerCtx<()>, mut timer: surge::Timer<'_>) {
        if timer.get::<&str>() == Some(&mut "tick") {
            self.ticks.lock().unwrap().push(Instant::now());
        }
    }
}

/// Finding 1: a far timer stalled every nearer one for up to 4.1 s.
fn interval_beside_far_timeout() {
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let t = Arc::clone(&ticks);
    let handle = Server::new(config(1))
        .start(move |_| Ticker {
            ticks: Arc::clone(&t),
        })
        .expect("server starts");
    std::thread::sleep(Duration::from_secs(3));
    let mut got = ticks.lock().unwrap().clone();
    let ticks = got.len().saturating_sub(1);
    got.push(Instant::now()); // the last gap counts too
    stop(handle);
    let gaps: Vec<u128> = got.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    let max_gap = gaps.iter().copied().max().unwrap_or(u128::MAX);
    println!("{ticks} ticks in 3 s, largest gap {max_gap} ms");
    assert!(ticks >= 85, "{ticks} ticks in 3 s");
    assert!(max_gap <= 100, "a gap of {max_gap} ms between ticks");
}

/// What the probe handler saw.
#[derive(Default)]
struct Seen {
    /// The largest buffered amount seen when a ping arrived.
    max_buffered: AtomicUsize,
    /// Close codes of `on_close`.
    closes: Mutex<Vec<u16>>,
    opened: AtomicUsize,
}

/// Echoes; `/sub` subscribes the connection to topic "t"; records what it saw.
struct Probe {
    seen: Arc<Seen>,
}

impl Handler for Probe {
    type Data = bool;
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<bool> {
        Upgrade::Accept(Accept::new(req.path() == "/sub"))
    }
    fn on_open(&mut self, conn: &mut Conn<'_, bool>) {
        self.seen.opened.fetch_add(1, Ordering::Relaxed);
        if *conn.data() {
            conn.subscribe("t");
        }
    }
    fn on_message(&mut self, conn: &mut Conn<'_, bool>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
    fn on_ping(&mut self, conn: &mut Conn<'_, bool>, _data: &[u8]) {
        self.seen
            .max_buffered
            .fetch_max(conn.buffered_amount(), Ordering::Relaxed);
    }
    fn on_close(&mut self, _w: &mut WorkerCtx<bool>, _data: bool, info: &CloseInfo<'_>) {
        self.seen.closes.lock().unwrap().push(info.code.0);
    }
}

fn start_probe(f: impl FnOnce(&mut ServerConfig)) -> (ServerHandle, SocketAddr, Arc<Seen>) {
    let mut cfg = config(1);
    f(&mut cfg);
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    let handle = Server::new(cfg)
        .start(move |_| Probe {
            seen: Arc::clone(&s),
        })
        .expect("server starts");
    let addr = handle.local_addr();
    (handle, addr, seen)
}

/// A client whose kernel buffers hold little, so that what the server sends piles up in the
/// server's queue as soon as the client stops reading.
fn small_window_client(addr: SocketAddr, path: &str) -> RawClient {
    // The buffer is set before connecting: shrunk later, it would be smaller than the window
    // already advertised, and the kernel would drop segments (retransmits, seconds of delay).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(upgrade_request(addr, path, "").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "closed during the handshake"
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "not upgraded");
    RawClient::from_stream(stream)
}

const LIMIT: usize = 64 * 1024;

/// Finding 3: a client that sends pings and never reads made the server queue a pong per ping.
/// Now pongs count toward the backpressure limit and only the latest waits past it.
fn ping_flood_stays_bounded() {
    let (handle, addr, seen) = start_probe(|c| c.max_backpressure = LIMIT);
    let mut c = small_window_client(addr, "/");
    // 16 MiB of 125-byte pings, numbered, written without reading anything.
    const PINGS: u32 = 128 * 1024;
    let mut burst = Vec::with_capacity(1 << 20);
    for i in 0..PINGS {
        let mut payload = [b'.'; 125];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        burst.extend_from_slice(&encode_frame(true, 0, 0x9, &payload));
        if burst.len() >= 1 << 20 || i == PINGS - 1 {
            c.write_raw(&burst);
            burst.clear();
        }
    }
    let max = seen.max_buffered.load(Ordering::Relaxed);
    println!("largest buffered amount during the flood: {max} B");
    assert!(
        max <= LIMIT + 1024,
        "{max} bytes buffered for a {LIMIT} limit"
    );
    // Reading now: the pongs come, the last one answers the last ping.
    let mut last = None;
    while let Some(f) = c.read_frame_timeout(Duration::from_secs(2)) {
        assert_eq!(f.opcode, 0xA, "only pongs");
        last = Some(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
        if last == Some(PINGS - 1) {
            break;
        }
    }
    assert_eq!(last, Some(PINGS - 1), "the latest ping is answered");
    stop(handle);
}

/// Finding 3 under the `Close` policy: the flood ends the connection.
fn ping_flood_closes_under_close_policy() {
    let (handle, addr, seen) = start_probe(|c| {
        c.max_backpressure = LIMIT;
        c.backpressure_policy = BackpressurePolicy::Close(CloseCode::POLICY);
    });
    let mut c = small_window_client(addr, "/");
    let frame = encode_frame(true, 0, 0x9, &[b'.'; 125]);
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 8192)
        .collect();
    for _ in 0..16 {
        // The server stops reading once it closes; the writes may then fail or block: bound them.
        c.stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        if c.stream.write_all(&burst).is_err() {
            break;
        }
    }
    assert!(seen.max_buffered.load(Ordering::Relaxed) <= LIMIT + 1024);
    // The close frame waits behind the pongs: read them, then answer the close.
    let close = c.read_until_close().expect("a close frame");
    assert_eq!(close.close_code().map(|c| c.0), Some(1008));
    c.send(true, 0x8, &support::close_payload(1008, ""));
    assert!(wait_until(Duration::from_secs(5), || !seen
        .closes
        .lock()
        .unwrap()
        .is_empty()));
    stop(handle);
}

/// Finding 4: tiny shared frames cost more in queue entries than in bytes; the limit counts both.
fn tiny_shared_frames_count_their_entries() {
    let (handle, addr, seen) = start_probe(|c| {
        c.max_backpressure = LIMIT;
        c.write_stall_timeout = None;
    });
    let mut c = small_window_client(addr, "/sub");
    assert!(wait_until(Duration::from_secs(5), || seen
        .opened
        .load(Ordering::Relaxed)
        == 1));
    let msg = PreparedMessage::binary(&[7u8]);
    for _ in 0..200_000 {
        handle.publish("t", &msg).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || handle
        .dropped_count()
        > 0));
    // A ping reports the buffered amount: frames of 3 bytes, each also costing a 32-byte entry.
    c.send(true, 0x9, b"");
    assert!(wait_until(Duration::from_secs(5), || seen
        .max_buffered
        .load(Ordering::Relaxed)
        > 0));
    let buffered = seen.max_buffered.load(Ordering::Relaxed);
    println!("buffered {buffered} B of 3-byte frames under a {LIMIT} B limit");
    assert!(
        buffered <= LIMIT * 3 / 35 + 1024,
        "{buffered} bytes of tiny frames"
    );
    stop(handle);
}

/// Finding 4: a peer that reads nothing is closed after the write-stall timeout (1008); one that
/// reads is not.
fn write_stall_closes_a_peer_that_reads_nothing() {
    let (handle, addr, seen) = start_probe(|c| {
        c.max_backpressure = LIMIT;
        c.write_stall_timeout = Some(Duration::from_millis(1500));
    });
    let mut stuck = small_window_client(addr, "/sub");
    let mut slow = small_window_client(addr, "/sub");
    assert!(wait_until(Duration::from_secs(5), || seen
        .opened
        .load(Ordering::Relaxed)
        == 2));
    // Fill the kernel's buffers toward the stuck peer at once, then keep its queue non-empty.
    let big = PreparedMessage::binary(&vec![1u8; 64 * 1024]);
    for _ in 0..96 {
        handle.publish("t", &big).unwrap();
    }
    let msg = PreparedMessage::binary(&[1u8; 16 * 1024]);
    let start = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    slow.stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    while start.elapsed() < Duration::from_secs(6) {
        for _ in 0..4 {
            handle.publish("t", &msg).unwrap();
        }
        // The other peer reads what has come, every 30 ms or so.
        while let Ok(n) = slow.stream.read(&mut buf) {
            got += n;
            if n == 0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let closes = seen.closes.lock().unwrap().clone();
    println!(
        "closes {closes:?}; the slow reader read {got} B; dropped {}",
        handle.dropped_count()
    );
    assert_eq!(
        closes,
        vec![1008],
        "the stuck peer, and only it, closed with 1008"
    );
    assert!(stuck.reaches_eof(), "the stuck peer's socket is closed");
    stop(handle);
}

/// Finding 6: a client that half-closes right after its request still gets its 101; one that
/// half-closes right after a message gets the echo.
fn eof_right_after_request_or_message_flushes_first() {
    let (handle, addr, _seen) = start_probe(|_| {});
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(upgrade_request(addr, "/", "").as_bytes())
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 101"), "got {text:?}");
    }
    for _ in 0..20 {
        let mut c = RawClient::connect(addr, "/");
        c.send(true, 0x1, b"last words");
        c.stream.shutdown(Shutdown::Write).unwrap();
        let f = c.expect_frame();
        assert_eq!((f.opcode, &f.payload[..]), (0x1, &b"last words"[..]));
        assert!(c.reaches_eof());
    }
    stop(handle);
}

/// Panics on the message "boom".
struct Bomb;

impl Handler for Bomb {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        if msg.as_bytes() == b"boom" {
            panic!("boom");
        }
        let _ = conn.send(msg);
    }
}

/// Finding 9, `PanicPolicy::Shutdown`: a panicking handler stops the whole server (the other
/// connections are closed, not left to a worker that is gone) and `join` names the panic.
fn panic_shuts_the_server_down() {
    let mut cfg = config(2);
    cfg.panic_policy = surge::PanicPolicy::Shutdown;
    let handle = Server::new(cfg).start(|_| Bomb).expect("server starts");
    let addr = handle.local_addr();
    let mut others: Vec<RawClient> = (0..4).map(|_| RawClient::connect(addr, "/")).collect();
    let mut bomb = RawClient::connect(addr, "/");
    bomb.send(true, 0x1, b"boom");
    for c in &mut others {
        // A 1001 close (another worker) or the socket dropped (the panicking worker's).
        if let Some(f) = c.read_frame_timeout(Duration::from_secs(10)) {
            assert_eq!(f.close_code().map(|c| c.0), Some(1001));
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(handle.join());
    });
    let joined = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("join returns");
    let err = joined.expect_err("join reports the panic");
    assert!(err.to_string().contains("boom"), "{err}");
}

/// Finding 9, `PanicPolicy::Abort` (the default): the process aborts with a log line. Run in a
/// child process (this test binary again, `panic_abort_child`).
fn panic_aborts_the_process() {
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--ignored", "--exact", "panic_abort_child", "--nocapture"])
        .env("SURGE_BACKEND", support::backend().name())
        .env("SURGE_URING_RECV", support::uring_recv().name())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("the child prints its address").unwrap();
        if let Some(a) = line.strip_prefix("ADDR ") {
            break a.parse().unwrap();
        }
    };
    let mut c = RawClient::connect(addr, "/");
    c.send(true, 0x1, b"boom");
    assert!(wait_until(Duration::from_secs(10), || matches!(
        child.try_wait(),
        Ok(Some(_))
    )));
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}: {err}");
    assert!(
        err.contains("surge: worker 0 panicked (boom); aborting the process"),
        "{err}"
    );
}

/// The child of `panic_aborts_the_process`: a server with the default policy that panics on
/// "boom" (waits at most 20 s).
#[test]
#[ignore = "run by panic_aborts_the_process as a child process"]
fn panic_abort_child() {
    let handle = Server::new(config(1))
        .start(|_| Bomb)
        .expect("server starts");
    println!("ADDR {}", handle.local_addr());
    std::thread::sleep(Duration::from_secs(20));
}

per_driver!(
    panic_shuts_the_server_down,
    panic_aborts_the_process,
    interval_beside_far_timeout,
    ping_flood_stays_bounded,
    ping_flood_closes_under_close_policy,
    tiny_shared_frames_count_their_entries,
    write_stall_closes_a_peer_that_reads_nothing,
    eof_right_after_request_or_message_flushes_first,
);
