//! Loopback tests: the server runs in this process (two workers on 127.0.0.1:0) and third-party
//! clients talk to it over TCP: `tungstenite`, a raw socket writing frames by hand (for what a
//! well-behaved client never sends), Python `websockets`, and a child process holding 10k
//! connections.
//!
//! Every read has a timeout (support::READ_TIMEOUT), so a broken server fails a test instead of
//! hanging it.

#[macro_use]
mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{http_exchange, upgrade_request, wait_until, ClientProcess, RawClient};
use surge::{
    Accept, BackpressurePolicy, CloseCode, CloseInfo, Conn, ConnId, Handler, Message, Rejection,
    Request, Response, SendStatus, Server, ServerConfig, ServerHandle, Upgrade, WorkerCtx,
};
use tungstenite::protocol::frame::coding::CloseCode as TCloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message as TMessage;

/// 64 KiB: the unit of the flood tests.
const FLOOD_MSG: usize = 64 * 1024;
/// Messages one "flood" text makes the handler send at once.
const FLOOD_COUNT: usize = 64;

/// What the handlers of one server saw, shared with the test thread.
#[derive(Default)]
struct Stats {
    opened: AtomicUsize,
    closed: AtomicUsize,
    /// (code, reason, by_peer) of every `on_close`.
    closes: Mutex<Vec<(u16, String, bool)>>,
    queued: AtomicUsize,
    dropped: AtomicUsize,
    refused_closed: AtomicUsize,
    max_buffered: AtomicUsize,
    drained: AtomicUsize,
    ticks: AtomicUsize,
}

impl Stats {
    fn closes(&self) -> Vec<(u16, String, bool)> {
        self.closes.lock().unwrap().clone()
    }
}

/// What an application timer is for.
#[derive(Clone, Copy)]
enum TimerKind {
    /// Send "tick" to the connection (a game tick).
    Tick,
    /// Send 4 x 64 KiB to the connection, which never reads.
    Flood,
}

/// The handler of every loopback test: echoes, and reacts to a few magic messages and paths.
///
/// Paths: `/reject` is refused with 401; `/tick` starts a 20 ms interval timer sending "tick";
/// `/proto/NAME` is accepted with subprotocol NAME (whatever the client offered).
/// Texts: "please close" -> close 4001; "flood" -> 64 x 64 KiB at once; "flood-timer" -> 4 x 64 KiB
/// every millisecond.
struct TestHandler {
    stats: Arc<Stats>,
}

impl TestHandler {
    fn record(&self, status: SendStatus, buffered: usize) {
        match status {
            SendStatus::Sent | SendStatus::Backpressure => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            SendStatus::Dropped => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            SendStatus::Closed => {
                self.stats.refused_closed.fetch_add(1, Ordering::Relaxed);
            }
            SendStatus::Invalid => panic!("invalid send"),
        }
        self.stats
            .max_buffered
            .fetch_max(buffered, Ordering::Relaxed);
    }

    fn start_timer(&mut self, conn: &mut Conn<'_, String>, every: Duration, kind: TimerKind) {
        let id = conn.id();
        conn.worker().set_interval(every, (id, kind));
    }
}

impl Handler for TestHandler {
    type Data = String;

    fn on_http(&mut self, worker: &mut WorkerCtx<String>, req: &Request) -> Response {
        Response::ok(format!("page {} (worker {})", req.path(), worker.index()))
            .header("Content-Type", "text/html")
    }

    fn on_upgrade(&mut self, req: &Request) -> Upgrade<String> {
        if req.path() == "/reject" {
            let mut r = Rejection::new(401, "who are you?");
            r.headers.push(("WWW-Authenticate".into(), "Bearer".into()));
            return Upgrade::Reject(r);
        }
        let mut accept = Accept::new(req.path().to_owned());
        if let Some(name) = req.path().strip_prefix("/proto/") {
            accept.subprotocol = Some(name.to_owned());
        }
        Upgrade::Accept(accept)
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        self.stats.opened.fetch_add(1, Ordering::SeqCst);
        if conn.data() == "/tick" {
            self.start_timer(conn, Duration::from_millis(20), TimerKind::Tick);
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        match msg {
            Message::Text("please close") => {
                assert_eq!(conn.close(CloseCode(4001), "as you wish"), SendStatus::Sent);
            }
            Message::Text("flood") => {
                let data = vec![7u8; FLOOD_MSG];
                for _ in 0..FLOOD_COUNT {
                    let status = conn.send_binary(&data);
                    self.record(status, conn.buffered_amount());
                }
            }
            Message::Text("flood-timer") => {
                self.start_timer(conn, Duration::from_millis(1), TimerKind::Flood);
            }
            Message::Text("subprotocol?") => {
                let p = conn.subprotocol().unwrap_or("none").to_owned();
                let _ = conn.send_text(&p);
            }
            msg => {
                let _ = conn.send(msg);
            }
        }
    }

    fn on_close(&mut self, _worker: &mut WorkerCtx<String>, _data: String, info: &CloseInfo<'_>) {
        self.stats
            .closes
            .lock()
            .unwrap()
            .push((info.code.0, info.reason.to_owned(), info.by_peer));
        self.stats.closed.fetch_add(1, Ordering::SeqCst);
    }

    fn on_drain(&mut self, _conn: &mut Conn<'_, String>) {
        self.stats.drained.fetch_add(1, Ordering::SeqCst);
    }

    fn on_timer(&mut self, worker: &mut WorkerCtx<String>, mut timer: surge::Timer<'_>) {
        let id = timer.id();
        let Some(&mut (cid, kind)) = timer.get::<(ConnId, TimerKind)>() else {
            return;
        };
        let Some(mut conn) = worker.conn(cid) else {
            worker.cancel_timer(id);
            return;
        };
        match kind {
            TimerKind::Tick => {
                let _ = conn.send_text("tick");
                self.stats.ticks.fetch_add(1, Ordering::Relaxed);
            }
            TimerKind::Flood => {
                let data = vec![9u8; FLOOD_MSG];
                for _ in 0..4 {
                    let status = conn.send_binary(&data);
                    let buffered = conn.buffered_amount();
                    self.record(status, buffered);
                    if status == SendStatus::Closed {
                        conn.worker().cancel_timer(id);
                        break;
                    }
                }
            }
        }
    }
}

/// A server under test; shut down (without waiting) when dropped.
struct TestServer {
    handle: Option<ServerHandle>,
    stats: Arc<Stats>,
    addr: SocketAddr,
}

impl TestServer {
    fn start(cfg: ServerConfig) -> TestServer {
        let stats = Arc::new(Stats::default());
        let s = Arc::clone(&stats);
        let handle = Server::new(cfg)
            .start(move |_| TestHandler {
                stats: Arc::clone(&s),
            })
            .expect("server starts");
        let addr = handle.local_addr();
        TestServer {
            handle: Some(handle),
            stats,
            addr,
        }
    }

    fn with(f: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut cfg = config();
        f(&mut cfg);
        TestServer::start(cfg)
    }

    /// Shuts down and waits for the workers, at most `limit`.
    fn shutdown_and_join(&mut self, limit: Duration) {
        let handle = self.handle.take().unwrap();
        handle.shutdown();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(handle.join());
        });
        rx.recv_timeout(limit)
            .expect("join() returns after shutdown")
            .expect("workers exit cleanly");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.shutdown();
        }
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    }
}

fn read_msg(ws: &mut tungstenite::WebSocket<TcpStream>) -> TMessage {
    ws.read().expect("a message")
}

/// Reads until the server's close frame; returns its code and reason.
fn read_close(ws: &mut tungstenite::WebSocket<TcpStream>) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(TMessage::Close(Some(f))) => return (f.code.into(), f.reason.into_owned()),
            Ok(TMessage::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

fn echo_text_and_binary() {
    let server = TestServer::start(config());
    let mut ws = support::ws_connect(server.addr, "/");
    let big_text: String = "héllo wörld ".repeat((1 << 20) / 14);
    let big_bin: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let msgs = vec![
        TMessage::Text("hello".into()),
        TMessage::Binary((0..=255u8).collect()),
        TMessage::Text(String::new()),
        TMessage::Binary(Vec::new()),
        TMessage::Text(big_text),
        TMessage::Binary(big_bin),
    ];
    // One at a time: under the default `Drop` policy, an echo of 1 MiB behind another queued
    // one would be over the 1 MiB limit and dropped.
    for m in &msgs {
        ws.send(m.clone()).unwrap();
        assert_eq!(&read_msg(&mut ws), m);
    }
    // Small ones pipelined.
    for i in 0..100 {
        ws.send(TMessage::Text(format!("p{i}"))).unwrap();
    }
    for i in 0..100 {
        assert_eq!(read_msg(&mut ws), TMessage::Text(format!("p{i}")));
    }
    ws.close(None).unwrap();
}

fn large_fragmented_messages_echo_intact() {
    // The 1 MiB echo may find the pong to "mid" still queued (one loop turn reads it all): room
    // for both under the backpressure limit, which counts queue entries too.
    let server = TestServer::with(|c| c.max_backpressure = 4 << 20);
    let mut c = RawClient::connect(server.addr, "/");
    // 4 MiB binary in 64 KiB fragments.
    let data: Vec<u8> = (0..4 << 20).map(|i| (i % 253) as u8).collect();
    let frag = 64 * 1024;
    let n = data.len() / frag;
    for (i, piece) in data.chunks(frag).enumerate() {
        let opcode = if i == 0 { 2 } else { 0 };
        c.send(i == n - 1, opcode, piece);
    }
    let f = c.expect_frame();
    assert_eq!((f.fin, f.opcode, f.payload.len()), (true, 2, data.len()));
    assert!(f.payload == data, "4 MiB echo differs");

    // 1 MiB of text in odd-sized fragments that split multi-byte characters, with a ping between
    // fragments (answered at once, the message still echoed whole).
    let text = "añ€😀".repeat((1 << 20) / 10);
    let bytes = text.as_bytes();
    let pieces: Vec<&[u8]> = bytes.chunks(65_537).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { 1 } else { 0 };
        c.send(i == pieces.len() - 1, opcode, piece);
        if i == 1 {
            c.send(true, 9, b"mid");
        }
    }
    let pong = c.expect_frame();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (10, &b"mid"[..]));
    let f = c.expect_frame();
    assert_eq!((f.fin, f.opcode), (true, 1));
    assert!(f.payload == bytes, "text echo differs");
}

fn ping_gets_pong_with_same_payload() {
    let server = TestServer::start(config());
    let mut ws = support::ws_connect(server.addr, "/");
    ws.send(TMessage::Ping(b"are you there?".to_vec())).unwrap();
    assert_eq!(
        read_msg(&mut ws),
        TMessage::Pong(b"are you there?".to_vec())
    );
    ws.send(TMessage::Ping(Vec::new())).unwrap();
    assert_eq!(read_msg(&mut ws), TMessage::Pong(Vec::new()));
    // Largest control payload.
    let mut raw = RawClient::connect(server.addr, "/");
    raw.send(true, 9, &[0xab; 125]);
    let f = raw.expect_frame();
    assert_eq!((f.opcode, f.payload), (10, vec![0xab; 125]));
}

fn client_close_code_reaches_on_close_and_is_echoed() {
    let server = TestServer::start(config());
    let mut ws = support::ws_connect(server.addr, "/");
    ws.close(Some(CloseFrame {
        code: TCloseCode::from(4000),
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(read_close(&mut ws), (4000, String::new()));
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == 1
    }));
    assert_eq!(server.stats.closes(), vec![(4000, "bye".to_owned(), true)]);
}

fn server_close_code_reaches_client() {
    let server = TestServer::start(config());
    let mut ws = support::ws_connect(server.addr, "/");
    ws.send(TMessage::Text("please close".into())).unwrap();
    assert_eq!(read_close(&mut ws), (4001, "as you wish".to_owned()));
    // tungstenite answers the close; the server reports the peer's echo.
    let _ = ws.read();
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == 1
    }));
    let closes = server.stats.closes();
    assert_eq!(closes[0].0, 4001, "{closes:?}");
}

fn message_over_read_limit_gets_1009() {
    let server = TestServer::with(|c| c.proto.max_message_size = 64 * 1024);
    let mut ws = support::ws_connect(server.addr, "/");
    ws.send(TMessage::Binary(vec![1; 1000])).unwrap();
    assert_eq!(read_msg(&mut ws), TMessage::Binary(vec![1; 1000]));
    ws.send(TMessage::Binary(vec![2; 64 * 1024 + 1])).unwrap();
    assert_eq!(read_close(&mut ws).0, 1009);

    // Fragments that only add up to too much.
    let mut c = RawClient::connect(server.addr, "/");
    c.send(false, 2, &[0; 40 * 1024]);
    c.send(true, 0, &[0; 40 * 1024]);
    let f = c.read_until_close().expect("close frame");
    assert_eq!(f.close_code().unwrap().0, 1009);
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == 2
    }));
    assert!(server.stats.closes().iter().all(|c| c.0 == 1009 && !c.2));
}

fn invalid_utf8_text_gets_1007() {
    let server = TestServer::start(config());
    let mut c = RawClient::connect(server.addr, "/");
    c.send(true, 1, &[b'o', b'k', 0xff, 0xfe]);
    let f = c.read_until_close().expect("close frame");
    assert_eq!(f.close_code().unwrap().0, 1007);
    assert!(c.reaches_eof(), "FIN after the close");

    // Split across fragments: the bad byte is in the second one.
    let mut c = RawClient::connect(server.addr, "/");
    c.send(false, 1, "é".as_bytes());
    c.send(true, 0, &[0xc3, 0x28]);
    let f = c.read_until_close().expect("close frame");
    assert_eq!(f.close_code().unwrap().0, 1007);
}

fn protocol_error_gets_1002_after_earlier_messages() {
    let server = TestServer::start(config());
    let mut c = RawClient::connect(server.addr, "/");
    let mut bytes = support::encode_frame(true, 0, 1, b"one");
    bytes.extend(support::encode_frame(true, 0, 2, b"two"));
    bytes.extend(support::encode_frame(
        true,
        0b100,
        1,
        b"rsv1 without an extension",
    ));
    bytes.extend(support::encode_frame(true, 0, 1, b"never echoed"));
    c.write_raw(&bytes);
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload.as_slice()), (1, &b"one"[..]));
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload.as_slice()), (2, &b"two"[..]));
    let f = c.expect_frame();
    assert_eq!(f.close_code().map(|c| c.0), Some(1002), "{f:?}");
    assert!(c.reaches_eof(), "FIN after the close");
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == 1
    }));
    assert_eq!(server.stats.closes()[0].0, 1002);
}

// ---------------------------------------------------------------------------------------------
// Handshake

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

fn handshake_rejections() {
    let server = TestServer::start(config());
    let addr = server.addr;
    let good = upgrade_request(addr, "/", "");

    let resp = http_exchange(addr, good.replace("Version: 13", "Version: 8").as_bytes());
    assert!(status_line(&resp).starts_with("HTTP/1.1 426"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("sec-websocket-version: 13\r\n"),
        "{resp}"
    );

    let resp = http_exchange(addr, good.replace(support::KEY, "c2hvcnQ=").as_bytes());
    assert!(status_line(&resp).starts_with("HTTP/1.1 400"), "{resp}");

    let evil = upgrade_request(addr, "/", "Origin: http://evil.example\r\n");
    let resp = http_exchange(addr, evil.as_bytes());
    assert!(status_line(&resp).starts_with("HTTP/1.1 403"), "{resp}");
    // Same host: accepted.
    let same = format!("Origin: http://{addr}\r\n");
    RawClient::connect_with(addr, "/", &same);

    let resp = http_exchange(addr, good.replacen("GET", "POST", 1).as_bytes());
    assert!(status_line(&resp).starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.contains("Allow: GET"), "{resp}");

    let big = upgrade_request(addr, "/", &format!("X-Big: {}\r\n", "a".repeat(9 * 1024)));
    let resp = http_exchange(addr, big.as_bytes());
    assert!(status_line(&resp).starts_with("HTTP/1.1 431"), "{resp}");

    // The application's own rejection, headers and body included.
    let resp = http_exchange(addr, upgrade_request(addr, "/reject", "").as_bytes());
    assert!(status_line(&resp).starts_with("HTTP/1.1 401"), "{resp}");
    assert!(resp.contains("WWW-Authenticate: Bearer\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nwho are you?"), "{resp}");
    assert_eq!(server.stats.opened.load(Ordering::SeqCst), 1);
}

/// A request that arrives over several reads (held by the worker between them) or in one read
/// (parsed in place), with frames right behind it in its last read: upgraded, and the frames
/// handled.
fn request_in_pieces_with_frames_behind() {
    use std::io::{Read, Write};
    let server = TestServer::start(config());
    let request = upgrade_request(server.addr, "/", "");
    let mut bytes = request.clone().into_bytes();
    bytes.extend(support::encode_frame(true, 0, 1, b"early"));
    bytes.extend(support::encode_frame(true, 0, 2, b"bird"));
    for cuts in [vec![], vec![40], vec![1, 40, request.len() - 1]] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
        let mut at = 0;
        for cut in cuts.iter().copied().chain([bytes.len()]) {
            s.write_all(&bytes[at..cut]).unwrap();
            at = cut;
            // Each piece its own read.
            std::thread::sleep(Duration::from_millis(30));
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let frames = loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]);
                assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
                let mut rest = &got[end + 4..];
                let mut frames = Vec::new();
                while let Some((f, used)) = support::parse_frame(rest) {
                    frames.push((f.opcode, f.payload));
                    rest = &rest[used..];
                }
                if frames.len() == 2 {
                    break frames;
                }
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        };
        assert_eq!(
            frames,
            [(1, b"early".to_vec()), (2, b"bird".to_vec())],
            "{cuts:?}"
        );
    }
    assert_eq!(server.stats.opened.load(Ordering::SeqCst), 3);
}

fn half_request_dropped_at_handshake_timeout_while_others_served() {
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(300));
    let mut half = TcpStream::connect(server.addr).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let request = upgrade_request(server.addr, "/", "");
    std::io::Write::write_all(&mut half, &request.as_bytes()[..40]).unwrap();
    let started = Instant::now();

    // Meanwhile, others connect and are served.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let r = std::io::Read::read_to_end(&mut half, &mut got);
        (r.map_err(|e| e.kind()), got, started.elapsed())
    });
    for i in 0..5 {
        let mut ws = support::ws_connect(server.addr, "/");
        ws.send(TMessage::Text(format!("hi {i}"))).unwrap();
        assert_eq!(read_msg(&mut ws), TMessage::Text(format!("hi {i}")));
        ws.close(None).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let (result, got, waited) = reader.join().unwrap();
    assert!(
        matches!(result, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "{result:?}"
    );
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(1500),
        "dropped after {waited:?}"
    );
    assert_eq!(server.stats.opened.load(Ordering::SeqCst), 5);
}

fn subprotocol_selection_follows_server_preference() {
    use tungstenite::client::IntoClientRequest;
    let server = TestServer::with(|c| c.subprotocols = vec!["b".into(), "a".into()]);
    let mut req = format!("ws://{}/", server.addr)
        .into_client_request()
        .unwrap();
    // tungstenite 0.24 splits the offer on "," without trimming: no space here (the raw client
    // below sends "a, b").
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "a,b".parse().unwrap());
    let stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(support::READ_TIMEOUT))
        .unwrap();
    let (mut ws, resp) = tungstenite::client(req, stream).unwrap();
    assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "b");
    ws.send(TMessage::Text("subprotocol?".into())).unwrap();
    assert_eq!(read_msg(&mut ws), TMessage::Text("b".into()));

    let c = RawClient::connect_with(server.addr, "/", "Sec-WebSocket-Protocol: a, b\r\n");
    assert!(
        c.response.contains("Sec-WebSocket-Protocol: b\r\n"),
        "{}",
        c.response
    );
    let c = RawClient::connect_with(server.addr, "/", "Sec-WebSocket-Protocol: a\r\n");
    assert!(
        c.response.contains("Sec-WebSocket-Protocol: a\r\n"),
        "{}",
        c.response
    );

    // None offered: none chosen, no header.
    let c = RawClient::connect(server.addr, "/");
    assert!(!c
        .response
        .to_ascii_lowercase()
        .contains("sec-websocket-protocol"));
}

/// A plain `GET` (no `Upgrade` header) reaches `Handler::on_http`, so that one port can serve a
/// page and the WebSocket (the chat example).
fn plain_http_get_reaches_the_handler() {
    let server = TestServer::start(config());
    let req = format!("GET /index.html HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let resp = http_exchange(server.addr, req.as_bytes());
    // TestHandler::on_http serves a page naming the path.
    assert!(status_line(&resp).starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Content-Type: text/html"), "{resp}");
    assert!(resp.contains("page /index.html (worker "), "{resp}");
}

// ---------------------------------------------------------------------------------------------
// Timers, keepalive

fn idle_timeout_sends_ping_and_closes_without_pong() {
    let server = TestServer::with(|c| {
        c.proto.idle_timeout = Some(Duration::from_millis(200));
        c.proto.pong_timeout = Duration::from_millis(300);
    });
    // A client that answers stays open across several idle periods.
    let mut good = RawClient::connect(server.addr, "/");
    // A client that reads but never answers.
    let mut silent = RawClient::connect(server.addr, "/");
    let opened = Instant::now();

    for round in 0..3 {
        let f = good.expect_frame();
        assert_eq!(f.opcode, 9, "round {round}: {f:?}");
        good.send(true, 10, &f.payload);
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(550),
        "{:?}",
        opened.elapsed()
    );

    let f = silent.expect_frame();
    assert_eq!(f.opcode, 9, "{f:?}");
    // No answer: the server gives up after the pong timeout (a close frame, then FIN).
    match silent.read_frame().unwrap() {
        None => {}
        Some(f) => {
            assert_eq!(f.opcode, 8, "{f:?}");
            assert!(silent.reaches_eof());
        }
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == 1
    }));
    assert_eq!(server.stats.closes()[0].0, 1006);
    // The good one is still served.
    good.send(true, 1, b"still here");
    loop {
        let f = good.expect_frame();
        if f.opcode == 9 {
            good.send(true, 10, &f.payload);
            continue;
        }
        assert_eq!(f.payload, b"still here");
        break;
    }
}

fn application_interval_timer_ticks() {
    let server = TestServer::start(config());
    let mut ws = support::ws_connect(server.addr, "/tick");
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(read_msg(&mut ws), TMessage::Text("tick".into()));
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(1000),
        "5 ticks of 20 ms in {took:?}"
    );
    drop(ws);
    // The timer stops once the connection is gone.
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == 1
    }));
    std::thread::sleep(Duration::from_millis(60));
    let ticks = server.stats.ticks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.stats.ticks.load(Ordering::SeqCst), ticks);
}

// ---------------------------------------------------------------------------------------------
// Backpressure

fn backpressure_drop_bounds_the_queue_and_on_drain_follows() {
    let limit = 256 * 1024;
    let server = TestServer::with(|c| {
        c.max_backpressure = limit;
        c.backpressure_policy = BackpressurePolicy::Drop;
    });
    let mut c = RawClient::connect(server.addr, "/");
    c.send(true, 1, b"flood");
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.queued.load(Ordering::SeqCst) + server.stats.dropped.load(Ordering::SeqCst)
            == FLOOD_COUNT
    }));
    let queued = server.stats.queued.load(Ordering::SeqCst);
    let dropped = server.stats.dropped.load(Ordering::SeqCst);
    let max = server.stats.max_buffered.load(Ordering::SeqCst);
    println!("flood: {queued} queued, {dropped} dropped, max buffered {max} B");
    assert!(dropped > 0);
    assert!(max <= limit + FLOOD_MSG + 16, "buffered {max} B");
    // A slow reader: start reading late, get exactly the queued messages, intact.
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..queued {
        let f = c.expect_frame();
        assert_eq!((f.opcode, f.payload.len()), (2, FLOOD_MSG));
        assert!(f.payload.iter().all(|&b| b == 7));
    }
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.drained.load(Ordering::SeqCst) >= 1
    }));
    // Still open and in order.
    c.send(true, 1, b"after");
    assert_eq!(c.expect_frame().payload, b"after");
}

fn backpressure_never_reading_client_cannot_grow_server_memory() {
    let limit = 512 * 1024;
    let server = TestServer::with(|c| {
        c.max_backpressure = limit;
        c.backpressure_policy = BackpressurePolicy::Drop;
    });
    let mut c = RawClient::connect(server.addr, "/");
    c.send(true, 1, b"flood-timer");
    // The kernel's socket buffers fill first; then the queue reaches the limit and drops begin.
    assert!(
        wait_until(Duration::from_secs(4), || {
            server.stats.dropped.load(Ordering::SeqCst) >= 100
        }),
        "no drops: {} queued",
        server.stats.queued.load(Ordering::SeqCst)
    );
    let max = server.stats.max_buffered.load(Ordering::SeqCst);
    println!(
        "timer flood: {} queued, {} dropped, max buffered {max} B",
        server.stats.queued.load(Ordering::SeqCst),
        server.stats.dropped.load(Ordering::SeqCst)
    );
    assert!(max <= limit + FLOOD_MSG + 16, "buffered {max} B");
    drop(c);
}

fn backpressure_close_policy_closes_with_1008() {
    let server = TestServer::with(|c| {
        c.max_backpressure = 256 * 1024;
        c.backpressure_policy = BackpressurePolicy::Close(CloseCode::POLICY);
    });
    let mut c = RawClient::connect(server.addr, "/");
    c.send(true, 1, b"flood");
    let f = c.read_until_close().expect("a close frame");
    assert_eq!(f.close_code().unwrap().0, 1008, "{f:?}");
    let refused = server.stats.refused_closed.load(Ordering::SeqCst);
    assert!(refused > 0, "sends after the close are refused");
    assert!(server.stats.max_buffered.load(Ordering::SeqCst) <= 256 * 1024 + FLOOD_MSG + 16);
    // Answer the close: the handshake completes and on_close reports our echo.
    c.send(true, 8, &support::close_payload(1008, ""));
    assert!(c.reaches_eof());
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == 1
    }));
    assert_eq!(server.stats.closes()[0].0, 1008);

    // A reader that never reads while a timer floods: closed too (we eventually see the close
    // frame or EOF behind the data).
    let mut c = RawClient::connect(server.addr, "/");
    c.send(true, 1, b"flood-timer");
    std::thread::sleep(Duration::from_millis(300));
    let f = c.read_until_close();
    if let Some(f) = f {
        assert_eq!(f.close_code().unwrap().0, 1008);
    }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

fn open_and_close_pair_one_to_one_with_abrupt_disconnects() {
    let server = TestServer::start(config());
    let n = 20;
    let mut clients: Vec<_> = (0..n)
        .map(|_| support::ws_connect(server.addr, "/"))
        .collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(TMessage::Text(format!("{i}"))).unwrap();
        assert_eq!(read_msg(ws), TMessage::Text(format!("{i}")));
    }
    assert_eq!(server.stats.opened.load(Ordering::SeqCst), n);
    assert_eq!(server.stats.closed.load(Ordering::SeqCst), 0);
    // Drop the sockets without a close frame.
    drop(clients);
    assert!(wait_until(Duration::from_secs(3), || {
        server.stats.closed.load(Ordering::SeqCst) == n
    }));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.stats.closed.load(Ordering::SeqCst), n);
    let closes = server.stats.closes();
    assert!(closes.iter().all(|c| c.0 == 1006 && !c.2), "{closes:?}");
}

fn shutdown_sends_1001_and_join_returns() {
    let mut server = TestServer::start(config());
    let mut clients: Vec<_> = (0..4)
        .map(|_| support::ws_connect(server.addr, "/"))
        .collect();
    for ws in &mut clients {
        ws.send(TMessage::Text("x".into())).unwrap();
        assert_eq!(read_msg(ws), TMessage::Text("x".into()));
    }
    let started = Instant::now();
    server.handle.as_ref().unwrap().shutdown();
    for ws in &mut clients {
        assert_eq!(read_close(ws).0, 1001);
        // tungstenite answers the close on the next read; then the server's FIN.
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{other:?}"),
        }
    }
    // The server waits for our FIN (up to the close timeout) before it lets a socket go.
    drop(clients);
    server.shutdown_and_join(Duration::from_secs(3));
    println!("shutdown took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.stats.closed.load(Ordering::SeqCst), 4);
    // Nothing listens any more.
    assert!(TcpStream::connect(server.addr).is_err());
}

// ---------------------------------------------------------------------------------------------
// Python websockets

fn python_websockets_client() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/client_checks.py"
    );
    let Some(python) = support::python_with_websockets(&["python3", support::VENV_PYTHON]) else {
        println!("SKIPPED: python3 with the `websockets` package not found (.ci/run installs it)");
        return;
    };
    let server = TestServer::start(config());
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(server.addr.port().to_string())
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "client_checks.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(2), || {
        server.stats.closed.load(Ordering::SeqCst) == server.stats.opened.load(Ordering::SeqCst)
    }));
    assert!(server
        .stats
        .closes()
        .iter()
        .any(|c| c.0 == 4000 && c.1 == "py bye"));
}

// ---------------------------------------------------------------------------------------------
// 10k connections

const MANY: usize = 10_000;

fn ten_thousand_concurrent_connections() {
    let started = Instant::now();
    let server = TestServer::start(config());
    let mut clients = ClientProcess::spawn("client_process", server.addr, MANY);
    assert_eq!(clients.wait("opened", Duration::from_secs(30)), MANY);
    let opened_in = started.elapsed();
    assert!(wait_until(Duration::from_secs(5), || {
        server.stats.opened.load(Ordering::SeqCst) == MANY
    }));
    clients.command("echo");
    assert_eq!(clients.wait("echoed", Duration::from_secs(20)), MANY);
    assert_eq!(server.stats.closed.load(Ordering::SeqCst), 0);
    clients.command("close");
    assert_eq!(clients.wait("closed", Duration::from_secs(20)), MANY);
    clients.finish();
    assert!(wait_until(Duration::from_secs(5), || {
        server.stats.closed.load(Ordering::SeqCst) == MANY
    }));
    assert!(server.stats.closes().iter().all(|c| c.0 == 1000 && c.2));
    println!(
        "{MANY} connections: open in {opened_in:?}, all done in {:?}",
        started.elapsed()
    );
}

/// The client side of `ten_thousand_concurrent_connections`, run in a child process.
#[test]
#[ignore = "helper: run by ten_thousand_concurrent_connections in a child process"]
fn client_process() {
    support::client_mode();
}

/// Whatever the number of distinct subprotocols a handler picks, every connection's
/// `subprotocol()` is what its 101 named (the connection keeps a one-byte tag; one worker interns
/// at most 254 names, the others are kept per connection), also once closed connections' names
/// are freed and their tags reused.
fn handler_chosen_subprotocols_are_all_reported() {
    let server = TestServer::with(|c| c.workers = 1);
    let open = |name: String| {
        let c = RawClient::connect(server.addr, &format!("/proto/{name}"));
        let line = format!("Sec-WebSocket-Protocol: {name}\r\n");
        assert!(c.response.contains(&line), "{}", c.response);
        (name, c)
    };
    let check = |clients: &mut [(String, RawClient)]| {
        for (name, c) in clients {
            c.send(true, 1, b"subprotocol?");
            let f = c.read_frame_timeout(support::READ_TIMEOUT).expect("answer");
            assert_eq!(String::from_utf8_lossy(&f.payload), name.as_str());
        }
    };
    let mut clients: Vec<_> = (0..300).map(|i| open(format!("p{i}"))).collect();
    check(&mut clients);
    // Every other one closes (interned names and side-table ones alike): new names take their
    // place.
    let (gone, kept): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    for (_, (_, mut c)) in gone {
        c.send(true, 8, &1000u16.to_be_bytes());
    }
    let mut clients: Vec<_> = kept.into_iter().map(|(_, c)| c).collect();
    assert!(
        wait_until(Duration::from_secs(5), || {
            server.stats.closed.load(Ordering::SeqCst) == 150
        }),
        "{} closed",
        server.stats.closed.load(Ordering::SeqCst)
    );
    clients.extend((0..150).map(|i| open(format!("q{i}"))));
    check(&mut clients);
    // A name another live connection holds.
    clients.push(open("p100".into()));
    check(&mut clients);
}

per_driver!(
    echo_text_and_binary,
    large_fragmented_messages_echo_intact,
    ping_gets_pong_with_same_payload,
    client_close_code_reaches_on_close_and_is_echoed,
    server_close_code_reaches_client,
    message_over_read_limit_gets_1009,
    invalid_utf8_text_gets_1007,
    protocol_error_gets_1002_after_earlier_messages,
    handshake_rejections,
    half_request_dropped_at_handshake_timeout_while_others_served,
    request_in_pieces_with_frames_behind,
    subprotocol_selection_follows_server_preference,
    handler_chosen_subprotocols_are_all_reported,
    plain_http_get_reaches_the_handler,
    idle_timeout_sends_ping_and_closes_without_pong,
    application_interval_timer_ticks,
    backpressure_drop_bounds_the_queue_and_on_drain_follows,
    backpressure_never_reading_client_cannot_grow_server_memory,
    backpressure_close_policy_closes_with_1008,
    open_and_close_pair_one_to_one_with_abrupt_disconnects,
    shutdown_sends_1001_and_join_returns,
    python_websockets_client,
    ten_thousand_concurrent_connections,
);
