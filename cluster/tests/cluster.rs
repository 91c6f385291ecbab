//! surge-cluster against real brokers: `nats-server` and `redis-server` (Debian's packages), each
//! started by the test on a free loopback port (found on PATH, or through `SURGE_NATS_SERVER` /
//! `SURGE_REDIS_SERVER`). Without the binary a test prints why and passes, unless `CI=true`: then
//! it fails.
//!
//! Each test runs three surge nodes (servers with two workers, each with its own `Cluster`) in
//! this process on one broker:
//! - a subscriber on node A receives, in order and once, what node C publishes (from a thread
//!   and from a callback); C's own subscriber gets C's messages once (never back through the
//!   broker); node B without subscribers of the topic is not subscribed at the broker (asked of
//!   the broker itself: NATS monitoring `/subsz`, Redis `PUBSUB NUMSUB`, and `PUBSUB SHARDNUMSUB`
//!   for the sharded pub/sub of a (one-node) Redis Cluster), is subscribed while it
//!   has one, and is not once that one leaves;
//! - the broker is killed and restarted on the same port while C publishes: local delivery goes
//!   on, traffic to A resumes, the counts add up, nothing hangs; a cluster whose broker is dead
//!   shuts down at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use surge::{
    Accept, Conn, Handler, Message, PreparedMessage, Request, Server, ServerConfig, ServerHandle,
    Upgrade,
};
use surge_cluster::{Cluster, ClusterConfig};
use tungstenite::stream::MaybeTlsStream;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// The broker binary, or `None` after saying why the test is skipped (a failure under CI).
fn find(name: &str, var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let why = format!(
        "{name} not found on PATH (nor {var}): install Debian's {name} package to run this test"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: not skipping)");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Nats,
    Redis,
    /// A one-node Redis Cluster (all 16,384 slots): sharded pub/sub.
    RedisCluster,
}

/// A broker process of the test's own, killed on drop.
struct Broker {
    kind: Kind,
    bin: PathBuf,
    port: u16,
    monitor: u16,
    child: Option<Child>,
    /// Redis Cluster: the node's directory (its nodes.conf keeps the slots across a restart).
    dir: Option<PathBuf>,
}

impl Broker {
    fn start(kind: Kind) -> Option<Broker> {
        let bin = match kind {
            Kind::Nats => find("nats-server", "SURGE_NATS_SERVER")?,
            Kind::Redis | Kind::RedisCluster => find("redis-server", "SURGE_REDIS_SERVER")?,
        };
        let mut b = Broker {
            kind,
            bin,
            port: free_port(),
            monitor: free_port(),
            child: None,
            dir: None,
        };
        if kind == Kind::RedisCluster {
            let dir = std::env::temp_dir().join(format!(
                "surge-cluster-test-{}-{}",
                std::process::id(),
                b.port
            ));
            std::fs::create_dir_all(&dir).unwrap();
            b.dir = Some(dir);
        }
        b.restart();
        if kind == Kind::RedisCluster {
            // One node owning every slot, then wait for the cluster to say it is up.
            let _: () = redis_query(
                b.port,
                ::redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(0)
                    .arg(16383),
            );
            assert!(wait_until(Duration::from_secs(10), || {
                let info: String = redis_query(b.port, ::redis::cmd("CLUSTER").arg("INFO"));
                info.contains("cluster_state:ok")
            }));
        }
        Some(b)
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::RedisCluster => format!("redis-cluster://127.0.0.1:{}", self.port),
        }
    }

    /// (Re)starts the server on the same port and waits until it accepts connections.
    fn restart(&mut self) {
        let mut cmd = Command::new(&self.bin);
        match self.kind {
            Kind::Nats => cmd.args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor.to_string(),
            ]),
            Kind::Redis => cmd.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
            Kind::RedisCluster => cmd
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &self.port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .current_dir(self.dir.as_ref().unwrap()),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "{:?} did not come up on port {port}",
            self.kind
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// How many clients are subscribed to `topic`'s subject or channel, in the broker's view.
    fn subscribers(&self, topic: &str) -> usize {
        match self.kind {
            Kind::Nats => {
                let subject = surge_cluster::nats::subject("surge", topic);
                let body = http_get(self.monitor, "/subsz?subs=1&limit=10000");
                let v: serde_json::Value = serde_json::from_str(&body).expect("subsz JSON");
                v["subscriptions_list"]
                    .as_array()
                    .map(|l| l.iter().filter(|s| s["subject"] == subject).count())
                    .unwrap_or(0)
            }
            Kind::Redis | Kind::RedisCluster => {
                let channel = surge_cluster::redis::channel("surge", topic);
                let sub = if self.kind == Kind::Redis {
                    "NUMSUB"
                } else {
                    "SHARDNUMSUB"
                };
                let reply: (String, usize) =
                    redis_query(self.port, ::redis::cmd("PUBSUB").arg(sub).arg(&channel));
                reply.1
            }
        }
    }
}

/// One command to the Redis server on `port`, through the redis crate's blocking client.
fn redis_query<T: ::redis::FromRedisValue>(port: u16, cmd: &mut ::redis::Cmd) -> T {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut con = client.get_connection().unwrap();
    cmd.query(&mut con).unwrap()
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (_, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    body.to_owned()
}

/// `/sub/TOPIC` subscribes to TOPIC; a text "pub:TOPIC:X" publishes X to TOPIC from the callback.
struct App;

impl Handler for App {
    type Data = String;
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<String> {
        Upgrade::Accept(Accept::new(req.path().to_owned()))
    }
    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        if let Some(topic) = conn.data().strip_prefix("/sub/").map(percent_decode) {
            assert!(conn.subscribe(&topic));
        }
        let _ = conn.send_text("ready");
    }
    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        if let Message::Text(t) = msg {
            if let Some((topic, text)) = t.strip_prefix("pub:").and_then(|r| r.split_once(':')) {
                conn.publish(topic, &PreparedMessage::text(text));
            }
        }
    }
}

/// The test's topics go in the request path percent-encoded (spaces, non-ASCII).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == b'/' {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

struct Node {
    server: Option<ServerHandle>,
    cluster: Option<Cluster>,
    addr: SocketAddr,
}

impl Node {
    fn start(url: &str) -> Node {
        let cluster = Cluster::start(ClusterConfig::new(url)).unwrap();
        let server = Server::new(ServerConfig {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 2,
            ..ServerConfig::default()
        })
        .with_bridge(cluster.bridge())
        .start(|_| App)
        .unwrap();
        Node {
            addr: server.local_addr(),
            server: Some(server),
            cluster: Some(cluster),
        }
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().unwrap()
    }

    fn server(&self) -> &ServerHandle {
        self.server.as_ref().unwrap()
    }

    fn connect(&self, path: &str) -> Ws {
        let (mut ws, _) =
            tungstenite::connect(format!("ws://{}{}", self.addr, percent_encode(path))).unwrap();
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        assert_eq!(read_text(&mut ws).as_deref(), Some("ready"));
        ws
    }

    fn stop(mut self) {
        let server = self.server.take().unwrap();
        server.shutdown();
        server.join().unwrap();
        let t = Instant::now();
        self.cluster.take().unwrap().shutdown();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "cluster shutdown hung"
        );
    }
}

fn read_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.read() {
            Ok(Message2::Text(t)) => return Some(t.to_string()),
            Ok(Message2::Binary(_)) => panic!("binary"),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

use tungstenite::Message as Message2;

/// Waits until the broker sees `n` subscriptions of `topic`.
fn expect_subscribers(broker: &Broker, topic: &str, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || broker.subscribers(topic) == n),
        "{:?}: {} subscribers of {topic:?} at the broker, want {n}",
        broker.kind,
        broker.subscribers(topic)
    );
}

fn three_nodes_one_topic(kind: Kind) {
    let Some(broker) = Broker::start(kind) else {
        return;
    };
    let url = broker.url();
    let (a, b, c) = (Node::start(&url), Node::start(&url), Node::start(&url));
    assert!(wait_until(Duration::from_secs(10), || {
        [&a, &b, &c].iter().all(|n| n.cluster().stats().connected)
    }));
    let topic = "room/1 é.*";
    assert_eq!(broker.subscribers(topic), 0);
    let mut on_a = a.connect(&format!("/sub/{topic}"));
    let mut on_c = c.connect(&format!("/sub/{topic}"));
    // A and C are subscribed at the broker (once each, whatever their workers do); B is not.
    expect_subscribers(&broker, topic, 2);
    // From a thread on C (Publisher) and from a callback on C.
    let publisher = c.server().publisher();
    for i in 0..200 {
        publisher
            .publish(topic, &PreparedMessage::text(&format!("m{i}")))
            .unwrap();
    }
    let mut sender = c.connect("/pub");
    sender
        .send(Message2::text(format!("pub:{topic}:from-callback")))
        .unwrap();
    let want: Vec<String> = (0..200)
        .map(|i| format!("m{i}"))
        .chain(["from-callback".to_owned()])
        .collect();
    for (who, ws) in [("A", &mut on_a), ("C", &mut on_c)] {
        let got: Vec<String> = (0..want.len()).map(|_| read_text(ws).unwrap()).collect();
        assert_eq!(got, want, "node {who} in order");
    }
    // Nothing twice: C's subscriber had it locally and C never delivers its own publication
    // again; A got one copy.
    for ws in [&mut on_a, &mut on_c] {
        if let MaybeTlsStream::Plain(s) = ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        assert!(read_text(ws).is_none(), "an extra message");
    }
    let (sa, sb, sc) = (
        a.cluster().stats(),
        b.cluster().stats(),
        c.cluster().stats(),
    );
    assert_eq!(sc.sent, 201, "{sc:?}");
    assert_eq!(sa.delivered, 201, "{sa:?}");
    assert_eq!(sb.received, 0, "B has no subscriber: {sb:?}");
    assert_eq!(sc.delivered, 0, "{sc:?}");
    match kind {
        // Redis echoes to the publisher's own subscription: skipped by node id.
        Kind::Redis | Kind::RedisCluster => assert_eq!(sc.own_skipped, 201, "{sc:?}"),
        Kind::Nats => assert_eq!(sc.received, 0, "no_echo: {sc:?}"),
    }
    // B gains a subscriber (0 -> 1), then loses it (1 -> 0).
    let on_b = b.connect(&format!("/sub/{topic}"));
    expect_subscribers(&broker, topic, 3);
    assert_eq!(b.cluster().stats().topics, 1);
    drop(on_b);
    expect_subscribers(&broker, topic, 2);
    assert!(wait_until(Duration::from_secs(5), || b
        .cluster()
        .stats()
        .topics
        == 0));
    let sb = b.cluster().stats();
    assert_eq!((sb.subscribes, sb.unsubscribes), (1, 1), "{sb:?}");
    drop((on_a, on_c, sender));
    for n in [a, b, c] {
        n.stop();
    }
}

fn broker_restart_mid_stream(kind: Kind) {
    let Some(mut broker) = Broker::start(kind) else {
        return;
    };
    let url = broker.url();
    let (a, c) = (Node::start(&url), Node::start(&url));
    let topic = "ticks";
    let mut on_a = a.connect(&format!("/sub/{topic}"));
    let mut on_c = c.connect(&format!("/sub/{topic}"));
    expect_subscribers(&broker, topic, 2);
    let publisher = c.server().publisher();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let feeder = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            publisher
                .publish(topic, &PreparedMessage::text(&i.to_string()))
                .unwrap();
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        i
    });
    // Reads on A until `last` is at least `until`, checking order (gaps allowed: loss while the
    // broker is away).
    let mut last_a: Option<u64> = None;
    let mut read_a = |until: u64, ws: &mut Ws| {
        while last_a.is_none_or(|l| l < until) {
            let v: u64 = read_text(ws).expect("A reads").parse().unwrap();
            assert!(
                last_a.is_none_or(|l| v > l),
                "out of order: {v} after {last_a:?}"
            );
            last_a = Some(v);
        }
    };
    read_a(50, &mut on_a);
    broker.kill();
    let killed = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || !c
        .cluster()
        .stats()
        .connected));
    // Local delivery goes on while the broker is away: C's own subscriber keeps reading.
    let mut last_c = 0u64;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(600) {
        last_c = read_text(&mut on_c).unwrap().parse().unwrap();
    }
    std::thread::sleep(Duration::from_millis(
        800u64.saturating_sub(killed.elapsed().as_millis() as u64),
    ));
    broker.restart();
    assert!(
        wait_until(Duration::from_secs(15), || {
            a.cluster().stats().connected && c.cluster().stats().connected
        }),
        "reconnected: A {:?}, C {:?}",
        a.cluster().stats(),
        c.cluster().stats()
    );
    // A's subscription was restored: messages published after the restart reach it.
    expect_subscribers(&broker, topic, 2);
    read_a(last_c + 100, &mut on_a);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = feeder.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (sa, sc) = (a.cluster().stats(), c.cluster().stats());
    assert!(sc.disconnects >= 1 && sa.disconnects >= 1, "{sa:?} {sc:?}");
    assert!(
        sc.lost_disconnected > 0,
        "publishes while away are counted: {sc:?}"
    );
    // Every publish is accounted for: sent to the broker, or counted as lost or dropped.
    assert_eq!(
        sc.sent + sc.lost_disconnected + sc.dropped_queue_full,
        published,
        "{sc:?}"
    );
    // A publish in flight when a command failed counts as lost, yet it may have reached the
    // broker (the reply is what was lost): a few such may be delivered beyond `sent`.
    assert!(sa.delivered <= sc.sent + 4, "A {sa:?}, C {sc:?}");
    assert!(
        sa.delivered >= sc.sent.saturating_sub(200),
        "A {sa:?}, C {sc:?}"
    );
    drop((on_a, on_c));
    // A cluster whose broker is gone shuts down at once.
    broker.kill();
    a.stop();
    c.stop();
}

#[test]
fn nats_three_nodes_one_topic() {
    three_nodes_one_topic(Kind::Nats);
}

#[test]
fn redis_three_nodes_one_topic() {
    three_nodes_one_topic(Kind::Redis);
}

#[test]
fn nats_broker_restart_mid_stream() {
    broker_restart_mid_stream(Kind::Nats);
}

#[test]
fn redis_broker_restart_mid_stream() {
    broker_restart_mid_stream(Kind::Redis);
}

#[test]
fn redis_cluster_sharded_three_nodes_one_topic() {
    three_nodes_one_topic(Kind::RedisCluster);
}

#[test]
fn redis_cluster_sharded_broker_restart_mid_stream() {
    broker_restart_mid_stream(Kind::RedisCluster);
}

#[test]
fn unknown_scheme_is_refused() {
    let e = Cluster::start(ClusterConfig::new("kafka://x")).unwrap_err();
    assert!(e.to_string().contains("kafka://x"), "{e}");
}
