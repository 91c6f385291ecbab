//! surge-cluster's limits and bad input, without a broker process: a scripted `Broker` stands in
//! for the session (the engine and the bridge are real).
//!
//! - `max_queued`: publishes beyond it, while the session does not take them, are dropped and
//!   counted; local subscribers get every one.
//! - `max_message_size`: a larger publish is not sent to other nodes (counted), local
//!   subscribers get it; a larger message from the broker is dropped (counted).
//! - From the broker: garbage, another magic, text that is not UTF-8 are dropped and counted as
//!   malformed; the node's own envelopes are skipped; a good one is delivered once.
//! - A broker that is not there (nothing listening): the cluster starts, local delivery works, and
//!   shutdown returns promptly, for NATS and Redis URLs.

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surge::{
    Accept, Conn, Handler, Message, PreparedMessage, Request, Server, ServerConfig, ServerHandle,
    Upgrade,
};
use surge_cluster::{envelope, BoxFuture, Broker, Cluster, ClusterConfig, Inbound, Link, Op};
use tungstenite::stream::MaybeTlsStream;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

const TOPIC: &str = "t";

struct App;

impl Handler for App {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        conn.subscribe(TOPIC);
        let _ = conn.send_text("ready");
    }
    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: Message<'_>) {}
}

fn start(cluster: &Cluster) -> ServerHandle {
    Server::new(ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        ..ServerConfig::default()
    })
    .with_bridge(cluster.bridge())
    .start(|_| App)
    .unwrap()
}

fn subscriber(server: &ServerHandle) -> Ws {
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/", server.local_addr())).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    assert_eq!(read(&mut ws).as_deref(), Some("ready"));
    ws
}

fn read(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return Some(t),
            Ok(tungstenite::Message::Binary(b)) => return Some(format!("bin:{}", b.len())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn quiet(ws: &mut Ws) -> bool {
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    read(ws).is_none()
}

/// A session that takes nothing from the link until told, and hands the test its way in.
struct Scripted {
    inbound: Arc<Mutex<Option<Inbound>>>,
    drain: Arc<std::sync::atomic::AtomicBool>,
    taken: Arc<Mutex<Vec<String>>>,
}

impl Broker for Scripted {
    fn run(self: Box<Self>, mut link: Link) -> BoxFuture {
        Box::pin(async move {
            *self.inbound.lock().unwrap() = Some(link.inbound());
            link.set_connected(true);
            while !self.drain.load(std::sync::atomic::Ordering::Relaxed) {
                if link.stopping() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            while let Some(op) = link.next().await {
                let what = match op {
                    Op::Subscribe(t) => format!("sub {t}"),
                    Op::Unsubscribe(t) => format!("unsub {t}"),
                    Op::Publish(o) => {
                        link.sent(1);
                        let e = envelope::decode(&o.envelope).unwrap();
                        format!("pub {} {}", o.topic, e.payload.len())
                    }
                };
                self.taken.lock().unwrap().push(what);
            }
        })
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

#[test]
fn queue_and_size_limits_drop_and_count_bad_input_is_dropped() {
    let inbound = Arc::new(Mutex::new(None));
    let drain = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let taken = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = ClusterConfig::new("scripted://");
    cfg.max_queued = 4;
    cfg.max_message_size = 1000;
    let cluster = Cluster::with_broker(
        cfg,
        Box::new(Scripted {
            inbound: Arc::clone(&inbound),
            drain: Arc::clone(&drain),
            taken: Arc::clone(&taken),
        }),
    )
    .unwrap();
    let server = start(&cluster);
    let mut ws = subscriber(&server);
    let publisher = server.publisher();
    // Ten publishes while the session takes none: four queued, six dropped; all ten local.
    for i in 0..10 {
        publisher
            .publish(TOPIC, &PreparedMessage::text(&format!("m{i}")))
            .unwrap();
    }
    for i in 0..10 {
        assert_eq!(read(&mut ws), Some(format!("m{i}")));
    }
    assert_eq!(cluster.stats().dropped_queue_full, 6);
    // Over max_message_size: delivered here, not queued for the others.
    publisher
        .publish(TOPIC, &PreparedMessage::binary(&[7u8; 1001]))
        .unwrap();
    assert_eq!(read(&mut ws).as_deref(), Some("bin:1001"));
    assert_eq!(cluster.stats().dropped_oversized, 1);
    // The session now drains: the interest change first, then the four queued publishes.
    drain.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(5), || taken
        .lock()
        .unwrap()
        .len()
        == 5));
    assert_eq!(
        *taken.lock().unwrap(),
        ["sub t", "pub t 2", "pub t 2", "pub t 2", "pub t 2"]
    );
    // From the broker.
    let inb = inbound.lock().unwrap().clone().unwrap();
    let other = envelope::encode(42, &PreparedMessage::text("from elsewhere"));
    let own = envelope::encode(cluster.node_id(), &PreparedMessage::text("mine"));
    let mut not_utf8 = envelope::encode(42, &PreparedMessage::text("x"));
    not_utf8.push(0xff);
    let mut magic = other.clone();
    magic[0] = b'X';
    let big = envelope::encode(42, &PreparedMessage::binary(&[1u8; 1001]));
    for bad in [&b"garbage"[..], &magic, &not_utf8, &own, &big] {
        inb.deliver(TOPIC, bad);
    }
    inb.deliver(TOPIC, &other);
    assert_eq!(read(&mut ws).as_deref(), Some("from elsewhere"));
    assert!(quiet(&mut ws), "nothing else was delivered");
    let s = cluster.stats();
    assert_eq!(
        (s.received, s.malformed, s.own_skipped, s.delivered),
        (6, 3, 1, 1),
        "{s:?}"
    );
    assert_eq!(s.dropped_oversized, 2, "{s:?}");
    drop(ws);
    server.shutdown();
    server.join().unwrap();
    let t = Instant::now();
    cluster.shutdown();
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn no_broker_listening_local_delivery_works_and_shutdown_is_prompt() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for url in [
        format!("nats://127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
        format!("redis-cluster://127.0.0.1:{port}"),
    ] {
        let cluster = Cluster::start(ClusterConfig::new(&url)).unwrap();
        let server = start(&cluster);
        let mut ws = subscriber(&server);
        for i in 0..20 {
            server
                .publish(TOPIC, &PreparedMessage::text(&i.to_string()))
                .unwrap();
        }
        for i in 0..20 {
            assert_eq!(read(&mut ws), Some(i.to_string()), "{url}");
        }
        let s = cluster.stats();
        assert!(!s.connected, "{url}: {s:?}");
        // Every publish is accounted for, sooner or later: lost (the session saw it while
        // disconnected) or still queued.
        assert!(s.sent == 0, "{url}: {s:?}");
        drop(ws);
        server.shutdown();
        server.join().unwrap();
        let t = Instant::now();
        cluster.shutdown();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{url}: shutdown took {:?}",
            t.elapsed()
        );
    }
}
