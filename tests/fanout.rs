//! Fanout (issue 7): topics across workers, prepared messages, cross-thread handles, slow
//! consumers. Every test runs once per driver (`per_driver!` of tests/support: epoll,
//! io_uring, and io_uring in the poll receive mode).
//!
//! - 10k subscribers over 2 workers (clients in a child process: 20,000 descriptors per process)
//!   receive every message published from a non-worker thread, in order.
//! - A subscriber that never reads is dropped (counted per connection and in total) or closed
//!   with 1008, per policy, while the other subscribers get everything.
//! - Handles to closed connections fail cleanly; after shutdown they report `Stopped`.
//! - A connection's direct sends and topic messages stay in order, from a thread and from a
//!   callback; a publish from a callback reaches subscribers on both workers.
//!
//! - Subscribers that negotiated permessage-deflate receive a published message compressed (RSV1)
//!   for their window, compressed once per distinct window; short and opted-out messages go plain,
//!   and direct compressed sends around it stay decodable (context takeover).
//!
//! - A `FanoutBridge` (what surge-cluster plugs in) is told every publish made on the node and
//!   each worker's topic interest exactly (first subscriber in, last out, closes included);
//!   `Publisher::publish_local` reaches the node's subscribers without going back to it.
//!
//! Run without `SURGE_BACKEND` set: that variable overrides the configured backend.

#[macro_use]
mod support;

use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{encode_frame, parse_frame, upgrade_request, wait_until, ClientProcess, RawClient};
use surge::blocking::MessageType;
use surge::{
    Accept, Backend, BackpressurePolicy, CloseCode, CloseInfo, Conn, ConnHandle, HandleError,
    Handler, Message, PreparedMessage, Request, SendStatus, Server, ServerConfig, ServerHandle,
    Upgrade,
};

per_driver!(
    ten_thousand_subscribers_over_two_workers_get_every_message_in_order,
    slow_subscriber_is_dropped_and_counted_others_unaffected,
    slow_subscriber_is_closed_with_1008_others_unaffected,
    handles_to_closed_connections_fail_cleanly,
    direct_sends_and_topic_messages_stay_in_order,
    compressing_subscribers_get_one_compressed_variant_per_window,
    prepared_messages_respect_max_send_frame_size,
    a_bridge_sees_every_publish_and_exact_topic_interest,
);

/// The 10k tests hold 10k server sockets each: one at a time in this process.
static BIG: Mutex<()> = Mutex::new(());

const TOPIC: &str = "t";
const SUBSCRIBERS: usize = 10_000;
const MESSAGES: usize = 20;

#[derive(Default)]
struct State {
    opened: AtomicUsize,
    per_worker: [AtomicUsize; 2],
    closed: Mutex<Vec<(String, u16)>>,
    handles: Mutex<Vec<(String, ConnHandle)>>,
    /// (path, dropped count, buffered amount) reported on a "stats" message.
    stats: Mutex<Vec<(String, u32, usize)>>,
}

/// Subscribes connections whose path starts with `/sub`; "pub:X" publishes X from the callback,
/// "mix" sends m1 directly, publishes m2, sends m3 directly, "stats" records the counters, "say:X"
/// sends X back directly.
struct Fan(Arc<State>);

impl Handler for Fan {
    type Data = String;
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<String> {
        Upgrade::Accept(Accept::new(req.path().to_owned()))
    }
    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        if conn.data().starts_with("/sub") {
            assert!(conn.subscribe(TOPIC));
            assert!(!conn.subscribe(TOPIC), "subscribed once");
            assert!(conn.is_subscribed(TOPIC));
        }
        if !conn.data().starts_with("/sub/many") {
            let h = conn.handle();
            self.0
                .handles
                .lock()
                .unwrap()
                .push((conn.data().clone(), h));
        }
        let w = conn.worker().index();
        self.0.per_worker[w.min(1)].fetch_add(1, Ordering::SeqCst);
        self.0.opened.fetch_add(1, Ordering::SeqCst);
    }
    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let Message::Text(t) = msg else { return };
        if let Some(rest) = t.strip_prefix("pub:") {
            conn.publish(TOPIC, &PreparedMessage::text(rest));
        } else if t == "mix" {
            let _ = conn.send_text("m1");
            // surge::blocking's control messages are refused: nothing goes out.
            let close = PreparedMessage::new(MessageType::Close, &[]).unwrap();
            assert_eq!(conn.send_prepared(&close), SendStatus::Invalid);
            conn.publish(TOPIC, &close);
            conn.publish(TOPIC, &PreparedMessage::text("m2"));
            let _ = conn.send_prepared(&PreparedMessage::text("m3"));
        } else if t == "stats" {
            let entry = (
                conn.data().clone(),
                conn.dropped_count(),
                conn.buffered_amount(),
            );
            self.0.stats.lock().unwrap().push(entry);
        } else if let Some(rest) = t.strip_prefix("say:") {
            let _ = conn.send_text(rest);
        } else if t == "unsub" {
            assert!(conn.unsubscribe(TOPIC));
            let _ = conn.send_text("unsubscribed");
        }
    }
    fn on_close(
        &mut self,
        worker: &mut surge::WorkerCtx<String>,
        path: String,
        info: &CloseInfo<'_>,
    ) {
        if path == "/a" {
            // The worker is reachable from on_close; the closed connection no longer is.
            assert!(worker.conn(info.id).is_none());
            worker.publish(TOPIC, &PreparedMessage::text("a left"));
        }
        self.0.closed.lock().unwrap().push((path, info.code.0));
    }
}

fn start(backend: Backend, cfg: ServerConfig) -> (ServerHandle, Arc<State>) {
    let state = Arc::new(State::default());
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend,
        uring_recv: support::uring_recv(),
        ..cfg
    };
    let s = Arc::clone(&state);
    let server = Server::new(cfg)
        .start(move |_| Fan(Arc::clone(&s)))
        .unwrap();
    assert_eq!(server.backend(), backend);
    (server, state)
}

fn text(f: &support::Frame) -> String {
    assert_eq!(f.opcode, 1, "a text frame: {f:?}");
    String::from_utf8(f.payload.clone()).unwrap()
}

fn ten_thousand_subscribers_over_two_workers_get_every_message_in_order(backend: Backend) {
    let _big = BIG.lock().unwrap_or_else(|e| e.into_inner());
    let (server, state) = start(backend, ServerConfig::default());
    let started = Instant::now();
    let mut clients = ClientProcess::spawn("subscriber_process", server.local_addr(), SUBSCRIBERS);
    assert_eq!(clients.wait("opened", Duration::from_secs(60)), SUBSCRIBERS);
    assert!(wait_until(Duration::from_secs(10), || {
        state.opened.load(Ordering::SeqCst) == SUBSCRIBERS
    }));
    let per_worker: Vec<usize> = state
        .per_worker
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers: {per_worker:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || server
        .connection_count()
        == SUBSCRIBERS));
    // Published from this (non-worker) thread: one command per worker per message.
    let publisher = server.publisher();
    let t0 = Instant::now();
    let thread = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            let msg = PreparedMessage::text(&format!("seq:{i}"));
            publisher.publish(TOPIC, &msg).unwrap();
        }
    });
    thread.join().unwrap();
    clients.command("read");
    assert_eq!(
        clients.wait("received", Duration::from_secs(60)),
        SUBSCRIBERS
    );
    println!(
        "{SUBSCRIBERS} subscribers on workers {per_worker:?}: {} deliveries in {:?} (set up in {:?})",
        SUBSCRIBERS * MESSAGES,
        t0.elapsed(),
        t0 - started
    );
    assert_eq!(server.dropped_count(), 0);
    clients.command("close");
    assert_eq!(clients.wait("closed", Duration::from_secs(30)), SUBSCRIBERS);
    clients.finish();
    assert!(wait_until(Duration::from_secs(10), || {
        state.closed.lock().unwrap().len() == SUBSCRIBERS
    }));
    assert!(wait_until(Duration::from_secs(5), || server.socket_count() == 0));
    server.shutdown();
    server.join().unwrap();
}

/// The child side of the 10k test: connects `ENV_COUNT` subscribers, then on `read` reads
/// `MESSAGES` messages from each and checks their order, then on `close` closes each with 1000.
#[test]
#[ignore = "helper: run by the 10k fanout test in a child process"]
fn subscriber_process() {
    let (Ok(addr), Ok(count)) = (
        std::env::var(support::ENV_ADDR),
        std::env::var(support::ENV_COUNT),
    ) else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let count: usize = count.parse().unwrap();
    let request = upgrade_request(addr, "/sub/many", "");
    let mut conns: Vec<(TcpStream, Vec<u8>)> = Vec::with_capacity(count);
    const BATCH: usize = 256;
    while conns.len() < count {
        let start = conns.len();
        let end = (start + BATCH).min(count);
        for _ in start..end {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            conns.push((s, Vec::new()));
        }
        for (s, _) in &mut conns[start..end] {
            s.write_all(request.as_bytes()).unwrap();
        }
        for (s, buf) in &mut conns[start..end] {
            // The head, and maybe more behind it (nothing is published yet, though).
            let mut tmp = [0u8; 512];
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0, "closed during the handshake");
                buf.extend_from_slice(&tmp[..n]);
            };
            assert!(buf.starts_with(b"HTTP/1.1 101"));
            buf.drain(..end);
        }
    }
    report("opened", conns.len());
    expect_command("read");
    let mut tmp = vec![0u8; 64 * 1024];
    for (s, buf) in &mut conns {
        for i in 0..MESSAGES {
            let frame = loop {
                if let Some((f, used)) = parse_frame(buf) {
                    buf.drain(..used);
                    break f;
                }
                let n = s.read(&mut tmp).unwrap();
                assert!(n > 0, "closed before message {i}");
                buf.extend_from_slice(&tmp[..n]);
            };
            assert_eq!(text(&frame), format!("seq:{i}"));
        }
    }
    report("received", conns.len());
    expect_command("close");
    for (s, _) in &mut conns {
        s.write_all(&encode_frame(true, 0, 8, &support::close_payload(1000, "")))
            .unwrap();
    }
    for (s, _) in &mut conns {
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("waiting for the server's FIN: {e}"),
        }
    }
    report("closed", conns.len());
}

fn report(word: &str, n: usize) {
    println!("CLIENT {word} {n}");
    io::stdout().flush().unwrap();
}

fn expect_command(want: &str) {
    let mut cmd = String::new();
    io::stdin().lock().read_line(&mut cmd).unwrap();
    assert_eq!(cmd.trim(), want);
}

/// Reads text frames until `n` arrived; returns them.
fn read_texts(c: &mut RawClient, n: usize) -> Vec<String> {
    (0..n).map(|_| text(&c.expect_frame())).collect()
}

/// A client whose receive buffer is small and which never reads.
fn slow_client(addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request(addr, "/sub/slow", "").as_bytes())
        .unwrap();
    // The 101 head is all that comes before the client asks for more.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

const FAST: usize = 4;
const FLOOD: usize = 400;
const FLOOD_SIZE: usize = 16 * 1024;

/// `FAST` subscribers that read everything, counting what they got in `progress`.
fn fast_readers(
    server: &ServerHandle,
    progress: &Arc<[AtomicUsize; FAST]>,
) -> Vec<std::thread::JoinHandle<Vec<usize>>> {
    let addr = server.local_addr();
    (0..FAST)
        .map(|i| {
            let mut c = RawClient::connect(addr, &format!("/sub/fast{i}"));
            let progress = Arc::clone(progress);
            std::thread::spawn(move || {
                (0..FLOOD)
                    .map(|k| {
                        let f = c
                            .read_frame_timeout(Duration::from_secs(5))
                            .unwrap_or_else(|| panic!("reader {i}: message {k} missing"));
                        assert_eq!(f.opcode, 2);
                        assert_eq!(f.payload.len(), FLOOD_SIZE);
                        progress[i].fetch_add(1, Ordering::SeqCst);
                        u32::from_be_bytes(f.payload[..4].try_into().unwrap()) as usize
                    })
                    .collect()
            })
        })
        .collect()
}

/// Publishes `FLOOD` messages of `FLOOD_SIZE` bytes (numbered), never more than a few ahead of
/// the slowest fast reader (so that only the subscriber that never reads goes over the limit).
fn publish_flood(server: &ServerHandle, progress: &[AtomicUsize; FAST]) {
    for i in 0..FLOOD {
        assert!(wait_until(Duration::from_secs(10), || {
            progress.iter().all(|p| p.load(Ordering::SeqCst) + 4 >= i)
        }));
        let mut payload = vec![0u8; FLOOD_SIZE];
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        server
            .publish(TOPIC, &PreparedMessage::binary(&payload))
            .unwrap();
    }
}

fn slow_config(policy: BackpressurePolicy) -> ServerConfig {
    let mut cfg = ServerConfig {
        max_backpressure: 256 * 1024,
        backpressure_policy: policy,
        ..ServerConfig::default()
    };
    cfg.proto.close_timeout = Duration::from_secs(3);
    cfg
}

fn slow_subscriber_is_dropped_and_counted_others_unaffected(backend: Backend) {
    let (server, state) = start(backend, slow_config(BackpressurePolicy::Drop));
    let addr = server.local_addr();
    let mut slow = slow_client(addr);
    let progress = Arc::new([const { AtomicUsize::new(0) }; FAST]);
    let readers = fast_readers(&server, &progress);
    assert!(wait_until(Duration::from_secs(5), || {
        state.opened.load(Ordering::SeqCst) == FAST + 1
    }));
    publish_flood(&server, &progress);
    for r in readers {
        assert_eq!(
            r.join().unwrap(),
            (0..FLOOD).collect::<Vec<_>>(),
            "in order, none lost"
        );
    }
    // The flood is over (every fast reader has it all). The slow one asks for its counters (its
    // own direction is not blocked).
    slow.write_all(&encode_frame(true, 0, 1, b"stats")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        !state.stats.lock().unwrap().is_empty()
    }));
    let (path, dropped, buffered) = state.stats.lock().unwrap()[0].clone();
    assert_eq!(path, "/sub/slow");
    // The server-wide count is published once per loop turn: it catches up, and then every drop
    // is the slow one's.
    assert!(
        wait_until(Duration::from_secs(5), || server.dropped_count()
            == u64::from(dropped)),
        "every drop was the slow one's: server {} vs connection {dropped}",
        server.dropped_count()
    );
    assert!(dropped as usize > FLOOD / 2, "dropped {dropped}");
    assert!(
        buffered <= 256 * 1024 + FLOOD_SIZE + 16,
        "memory bounded: {buffered} B buffered"
    );
    // The fast readers' clients are gone (their threads ended); the slow one is still open.
    assert!(
        !state
            .closed
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _)| p == "/sub/slow"),
        "dropped, not closed"
    );
    // What it did get is in order, without gaps before the first drop.
    let mut c = RawClient::from_stream(slow);
    let mut last = None;
    while let Some(f) = c.read_frame_timeout(Duration::from_millis(300)) {
        let n = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
        assert!(last < Some(n), "in order");
        last = Some(n);
    }
    assert!(last.is_some());
    server.shutdown();
    server.join().unwrap();
}

fn slow_subscriber_is_closed_with_1008_others_unaffected(backend: Backend) {
    let policy = BackpressurePolicy::Close(CloseCode::POLICY);
    let (server, state) = start(backend, slow_config(policy));
    let addr = server.local_addr();
    let slow = slow_client(addr);
    let progress = Arc::new([const { AtomicUsize::new(0) }; FAST]);
    let readers = fast_readers(&server, &progress);
    assert!(wait_until(Duration::from_secs(5), || {
        state.opened.load(Ordering::SeqCst) == FAST + 1
    }));
    publish_flood(&server, &progress);
    for r in readers {
        assert_eq!(
            r.join().unwrap(),
            (0..FLOOD).collect::<Vec<_>>(),
            "in order, none lost"
        );
    }
    // The slow one now reads: data, then the close 1008 that ended it.
    let mut c = RawClient::from_stream(slow);
    let close = c.read_until_close().expect("a close frame");
    assert_eq!(close.close_code().unwrap().0, 1008);
    c.send(true, 8, &support::close_payload(1008, ""));
    assert!(wait_until(Duration::from_secs(5), || {
        state
            .closed
            .lock()
            .unwrap()
            .iter()
            .any(|(p, _)| p == "/sub/slow")
    }));
    assert_eq!(server.dropped_count(), 0, "closed, not dropped");
    server.shutdown();
    server.join().unwrap();
}

fn handles_to_closed_connections_fail_cleanly(backend: Backend) {
    let (server, state) = start(backend, ServerConfig::default());
    let addr = server.local_addr();
    let mut a = RawClient::connect(addr, "/a");
    let mut b = RawClient::connect(addr, "/b");
    assert!(wait_until(Duration::from_secs(5), || {
        state.handles.lock().unwrap().len() == 2
    }));
    let handle = |p: &str| {
        let hs = state.handles.lock().unwrap();
        hs.iter().find(|(q, _)| q == p).unwrap().1.clone()
    };
    let (ha, hb) = (handle("/a"), handle("/b"));
    // Usable from any thread.
    let h = ha.clone();
    std::thread::spawn(move || h.send_text("from a thread").unwrap())
        .join()
        .unwrap();
    assert_eq!(text(&a.expect_frame()), "from a thread");
    assert!(ha.is_open());
    // Subscribe through the handle, then a publish right after reaches it (the subscribe is
    // counted in the worker's topic interest before it is posted).
    hb.subscribe(TOPIC).unwrap();
    server
        .publish(TOPIC, &PreparedMessage::text("ping"))
        .unwrap();
    assert_eq!(text(&b.expect_frame()), "ping");
    // a closes: its handle fails from on_close on.
    a.send(true, 8, &support::close_payload(1000, ""));
    assert!(a.read_until_close().is_some());
    assert!(wait_until(Duration::from_secs(5), || {
        state.closed.lock().unwrap().len() == 1
    }));
    assert!(!ha.is_open());
    assert_eq!(ha.send_text("late"), Err(HandleError::Closed));
    assert_eq!(ha.close(CloseCode::NORMAL, ""), Err(HandleError::Closed));
    assert_eq!(ha.subscribe(TOPIC), Err(HandleError::Closed));
    // b is unaffected (and heard of a's departure, published from on_close), and can be closed
    // through its handle.
    hb.send_text("still here").unwrap();
    let mut heard_left = false;
    loop {
        let t = text(&b.expect_frame());
        if t == "still here" {
            break;
        }
        heard_left |= t == "a left";
        assert!(t == "ping" || t == "a left", "{t}");
    }
    assert!(heard_left, "on_close published to the topic");
    hb.close(CloseCode::NORMAL, "bye").unwrap();
    let close = b.read_until_close().unwrap();
    assert_eq!(close.close_code().unwrap(), (1000, "bye".to_owned()));
    b.send(true, 8, &support::close_payload(1000, ""));
    assert!(wait_until(Duration::from_secs(5), || {
        state.closed.lock().unwrap().len() == 2
    }));
    assert_eq!(hb.send_text("x"), Err(HandleError::Closed));
    server.shutdown();
    assert_eq!(hb.send_text("x"), Err(HandleError::Stopped));
    assert_eq!(
        server.publish(TOPIC, &PreparedMessage::text("x")),
        Err(HandleError::Stopped)
    );
    server.join().unwrap();
}

fn direct_sends_and_topic_messages_stay_in_order(backend: Backend) {
    let (server, state) = start(backend, ServerConfig::default());
    let addr = server.local_addr();
    // Enough subscribers that both workers have some (SO_REUSEPORT spreads them by hash).
    let mut subs: Vec<RawClient> = (0..16)
        .map(|i| RawClient::connect(addr, &format!("/sub/{i}")))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        state.handles.lock().unwrap().len() == 16
    }));
    let per_worker: Vec<usize> = state
        .per_worker
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    let h0 = {
        let hs = state.handles.lock().unwrap();
        hs.iter().find(|(p, _)| p == "/sub/0").unwrap().1.clone()
    };
    // From a thread: direct sends through a handle interleaved with publishes.
    let publisher = server.publisher();
    std::thread::spawn(move || {
        for i in 0..100 {
            h0.send_text(&format!("d{i}")).unwrap();
            publisher
                .publish(TOPIC, &PreparedMessage::text(&format!("p{i}")))
                .unwrap();
        }
    })
    .join()
    .unwrap();
    let want: Vec<String> = (0..100)
        .flat_map(|i| [format!("d{i}"), format!("p{i}")])
        .collect();
    assert_eq!(read_texts(&mut subs[0], 200), want);
    let topic_only: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    for c in &mut subs[1..] {
        assert_eq!(read_texts(c, 100), topic_only);
    }
    // From a callback: m1 direct, m2 published (reaching both workers), m3 direct.
    subs[3].send(true, 1, b"mix");
    assert_eq!(read_texts(&mut subs[3], 3), ["m1", "m2", "m3"]);
    for (i, c) in subs.iter_mut().enumerate() {
        if i != 3 {
            assert_eq!(
                read_texts(c, 1),
                ["m2"],
                "subscriber {i} (workers {per_worker:?})"
            );
        }
    }
    // A publish from a callback, after one unsubscribed.
    subs[5].send(true, 1, b"unsub");
    assert_eq!(read_texts(&mut subs[5], 1), ["unsubscribed"]);
    subs[0].send(true, 1, b"pub:last");
    for (i, c) in subs.iter_mut().enumerate() {
        if i == 5 {
            assert!(c.read_frame_timeout(Duration::from_millis(200)).is_none());
        } else {
            assert_eq!(read_texts(c, 1), ["last"]);
        }
    }
    server.shutdown();
    server.join().unwrap();
}

/// Inflates one message of a permessage-deflate stream (the peer's context kept in `d`).
fn inflate(d: &mut flate2::Decompress, data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        out.reserve(64 << 10);
        let (i, o) = (d.total_in(), d.total_out());
        d.decompress_vec(&input[pos..], &mut out, flate2::FlushDecompress::Sync)
            .expect("inflates");
        pos += (d.total_in() - i) as usize;
        let stalled = d.total_in() == i && d.total_out() == o;
        if (pos == input.len() && out.len() < out.capacity()) || stalled {
            return out;
        }
    }
}

fn compressing_subscribers_get_one_compressed_variant_per_window(backend: Backend) {
    let cfg = ServerConfig {
        deflate: surge::proto::DeflateConfig {
            mode: surge::proto::DeflateMode::ContextTakeover {
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            },
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let (server, state) = start(backend, cfg);
    let addr = server.local_addr();
    // A third ask for a 1 KiB window, a third take the default (32 KiB), a third no compression.
    let offers = [
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        "",
    ];
    let n = 12;
    let mut subs: Vec<(RawClient, usize, flate2::Decompress)> = (0..n)
        .map(|i| {
            let c = RawClient::connect_with(addr, &format!("/sub/{i}"), offers[i % 3]);
            let ext = c.response.to_ascii_lowercase();
            match i % 3 {
                0 => assert!(ext.contains("server_max_window_bits=10"), "{ext}"),
                1 => assert!(ext.contains("permessage-deflate"), "{ext}"),
                _ => assert!(!ext.contains("permessage-deflate"), "{ext}"),
            }
            (
                c,
                i % 3,
                flate2::Decompress::new_with_window_bits(false, 15),
            )
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        state.handles.lock().unwrap().len() == n
    }));
    let json = |tag: &str| -> String {
        (0..60)
            .map(|i| format!("{{\"tag\":\"{tag}\",\"seq\":{i},\"user\":\"alice\"}},"))
            .collect()
    };
    let big = PreparedMessage::text(&json("prepared"));
    let small = PreparedMessage::text("hi");
    let opted_out = PreparedMessage::uncompressed(surge::MessageKind::Text, big.payload());
    let direct = json("direct");
    let publisher = server.publisher();
    // To each subscriber: a direct message (compressed with the connection's context), the
    // published three, then the same direct message again (with context takeover it would refer
    // to the first: decodable only if the prepared message, compressed without the connection's
    // context, made the server forget that context).
    let say = format!("say:{direct}");
    let want: [(&[u8], bool); 5] = [
        (direct.as_bytes(), true),
        (big.payload(), true),
        (b"hi", false),
        (big.payload(), false),
        (direct.as_bytes(), true),
    ];
    for step in 0..3 {
        match step {
            1 => {
                for m in [&big, &small, &opted_out] {
                    publisher.publish(TOPIC, m).unwrap();
                }
            }
            _ => {
                for (c, ..) in &mut subs {
                    c.send(true, 1, say.as_bytes());
                }
            }
        }
        let range = match step {
            0 => 0..1,
            1 => 1..4,
            _ => 4..5,
        };
        for (c, kind, d) in &mut subs {
            check_frames(c, *kind, d, &want, range.clone());
        }
    }
    // Compressed once per window (10 and 15), whatever the number of subscribers and workers.
    assert_eq!(big.variant_count(), 2);
    assert_eq!(small.variant_count(), 0);
    assert_eq!(opted_out.variant_count(), 0);
    server.shutdown();
    server.join().unwrap();
}

/// Reads frames `range` of `want` (payload, compressible) on a subscriber that made offer `kind`
/// (2: none), inflating compressed ones with the subscriber's inflater `d`.
fn check_frames(
    c: &mut RawClient,
    kind: usize,
    d: &mut flate2::Decompress,
    want: &[(&[u8], bool)],
    range: std::ops::Range<usize>,
) {
    {
        for i in range {
            let (payload, compressible) = &want[i];
            let f = c.expect_frame();
            assert_eq!(f.opcode, 1, "frame {i}");
            let compressed = kind != 2 && *compressible;
            assert_eq!(
                f.rsv,
                if compressed { 4 } else { 0 },
                "frame {i}, offer {kind}"
            );
            let got = if compressed {
                assert!(f.payload.len() < payload.len() / 2, "frame {i} shrank");
                inflate(d, &f.payload)
            } else {
                f.payload.clone()
            };
            assert!(got == *payload, "frame {i}, offer {kind}: content");
        }
    }
}

/// Prepared messages (topic deliveries, handle sends) respect `max_send_frame_size`: a longer
/// message goes out fragmented, a shorter one as the shared frame.
fn prepared_messages_respect_max_send_frame_size(backend: Backend) {
    let mut cfg = ServerConfig::default();
    cfg.proto.max_send_frame_size = 100;
    let (server, state) = start(backend, cfg);
    let mut sub = RawClient::connect(server.local_addr(), "/sub/frames");
    assert!(wait_until(Duration::from_secs(5), || {
        state.handles.lock().unwrap().len() == 1
    }));
    let long: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    server
        .publish(TOPIC, &PreparedMessage::text(&long))
        .unwrap();
    server
        .publish(TOPIC, &PreparedMessage::text("short"))
        .unwrap();
    let mut got = Vec::new();
    let mut frames = 0;
    loop {
        let f = sub.expect_frame();
        assert!(f.payload.len() <= 100, "frame of {} bytes", f.payload.len());
        assert_eq!(f.opcode, if frames == 0 { 1 } else { 0 });
        frames += 1;
        got.extend_from_slice(&f.payload);
        if f.fin {
            break;
        }
    }
    assert_eq!(frames, 10);
    assert_eq!(got, long.as_bytes());
    let f = sub.expect_frame();
    assert!(f.fin && f.opcode == 1);
    assert_eq!(f.payload, b"short");
    drop(sub);
    server.shutdown();
    server.join().unwrap();
}

/// Records what the engine tells a bridge.
#[derive(Debug, Default)]
struct Recorder {
    publisher: Mutex<Option<surge::Publisher>>,
    published: Mutex<Vec<(String, String)>>,
    interest: Mutex<Vec<(usize, String, bool)>>,
}

impl surge::FanoutBridge for Recorder {
    fn attach(&self, publisher: surge::Publisher) {
        *self.publisher.lock().unwrap() = Some(publisher);
    }
    fn published(&self, topic: &str, msg: &PreparedMessage) {
        let text = String::from_utf8(msg.payload().to_vec()).unwrap();
        self.published
            .lock()
            .unwrap()
            .push((topic.to_owned(), text));
    }
    fn interest(&self, worker: usize, topic: &Arc<str>, subscribed: bool) {
        self.interest
            .lock()
            .unwrap()
            .push((worker, topic.to_string(), subscribed));
    }
}

impl Recorder {
    /// Workers with a subscriber of `topic`, by summing the interest calls.
    fn workers_with(&self, topic: &str) -> i64 {
        self.interest
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| t == topic)
            .map(|&(_, _, s)| if s { 1 } else { -1 })
            .sum()
    }
}

fn a_bridge_sees_every_publish_and_exact_topic_interest(backend: Backend) {
    let state = Arc::new(State::default());
    let bridge = Arc::new(Recorder::default());
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend,
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    };
    let s = Arc::clone(&state);
    let server = Server::new(cfg)
        .with_bridge(Arc::clone(&bridge) as Arc<dyn surge::FanoutBridge>)
        .start(move |_| Fan(Arc::clone(&s)))
        .unwrap();
    let addr = server.local_addr();
    assert!(
        bridge.publisher.lock().unwrap().is_some(),
        "attached at start"
    );
    assert_eq!(bridge.workers_with(TOPIC), 0);
    let mut subs: Vec<RawClient> = (0..16)
        .map(|i| RawClient::connect(addr, &format!("/sub/{i}")))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        state.handles.lock().unwrap().len() == 16
    }));
    let workers_used = state
        .per_worker
        .iter()
        .filter(|a| a.load(Ordering::SeqCst) > 0)
        .count() as i64;
    assert!(wait_until(Duration::from_secs(5), || {
        bridge.workers_with(TOPIC) == workers_used
    }));
    // One call per worker that gained the topic, however many subscribers it has.
    assert_eq!(bridge.interest.lock().unwrap().len() as i64, workers_used);
    // A publish from a callback and one from a thread both reach the bridge; a local publish
    // (what the bridge itself does with messages from other nodes) does not, but is delivered.
    subs[0].send(true, 1, b"pub:from-callback");
    for c in &mut subs {
        assert_eq!(read_texts(c, 1), ["from-callback"]);
    }
    // A control message (surge::blocking's) is published nowhere, the bridge included.
    let ping = PreparedMessage::new(MessageType::Ping, b"no").unwrap();
    server.publisher().publish(TOPIC, &ping).unwrap();
    server
        .publisher()
        .publish(TOPIC, &PreparedMessage::text("from-thread"))
        .unwrap();
    for c in &mut subs {
        assert_eq!(read_texts(c, 1), ["from-thread"]);
    }
    let local = bridge.publisher.lock().unwrap().clone().unwrap();
    local
        .publish_local(TOPIC, &PreparedMessage::text("from-elsewhere"))
        .unwrap();
    for c in &mut subs {
        assert_eq!(read_texts(c, 1), ["from-elsewhere"]);
    }
    assert_eq!(
        *bridge.published.lock().unwrap(),
        [
            (TOPIC.to_owned(), "from-callback".to_owned()),
            (TOPIC.to_owned(), "from-thread".to_owned())
        ]
    );
    // Unsubscribing and closing: the last subscriber out of each worker ends its interest.
    subs[1].send(true, 1, b"unsub");
    assert_eq!(read_texts(&mut subs[1], 1), ["unsubscribed"]);
    assert_eq!(bridge.workers_with(TOPIC), workers_used, "others remain");
    for c in subs.drain(..) {
        drop(c);
    }
    assert!(wait_until(Duration::from_secs(5), || {
        bridge.workers_with(TOPIC) == 0
    }));
    let calls = bridge.interest.lock().unwrap().clone();
    assert_eq!(calls.len() as i64, 2 * workers_used, "{calls:?}");
    server.shutdown();
    server.join().unwrap();
}
