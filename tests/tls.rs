//! `wss://`: the server's TLS listeners on every driver, against rustls + tungstenite, Python
//! `websockets` with an `ssl` context and `openssl s_client`. Certificates are made at test time
//! (`support::pki`).

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::pki::{Leaf, Pki};
use support::wait_until;
use surge::tls::{TlsConfig, TlsInfo};
use surge::{Accept, Conn, Handler, Message, Request, Server, ServerConfig, ServerHandle, Upgrade};
use tungstenite::Message as TMessage;

/// Client configurations trusting the test CA.
impl Pki {
    fn client_config(&self, alpn: bool) -> Arc<rustls::ClientConfig> {
        self.client_config_versions(alpn, rustls::DEFAULT_VERSIONS)
    }

    fn client_config_versions(
        &self,
        alpn: bool,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(surge::tls::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if alpn {
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Arc::new(cfg)
    }
}

/// What the handlers saw of each request.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Option<TlsInfo>>>,
    /// Each request's peer address.
    peers: Mutex<Vec<Option<SocketAddr>>>,
    /// The code of every `on_close`.
    closes: Mutex<Vec<u16>>,
}

/// Echoes every message; records each request's TLS info.
struct Echo(Arc<Seen>);

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
        assert_eq!(req.is_tls(), req.tls().is_some());
        self.0.requests.lock().unwrap().push(req.tls().cloned());
        self.0.peers.lock().unwrap().push(req.peer);
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
    fn on_close(&mut self, _: &mut surge::WorkerCtx<()>, _: (), info: &surge::CloseInfo<'_>) {
        self.0.closes.lock().unwrap().push(info.code.0);
    }
}

fn start(
    tls: TlsConfig,
    plain: bool,
    tune: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, Arc<Seen>) {
    let mut cfg = ServerConfig {
        bind: if plain {
            vec!["127.0.0.1:0".parse().unwrap()]
        } else {
            Vec::new()
        },
        tls_bind: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Some(tls),
        workers: 2,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    };
    tune(&mut cfg);
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    let server = Server::new(cfg)
        .start(move |_| Echo(Arc::clone(&s)))
        .unwrap();
    (server, seen)
}

fn default_tls(leaf: &Leaf) -> TlsConfig {
    TlsConfig::builder()
        .cert_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .unwrap()
        .build()
        .unwrap()
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A `wss://` client: rustls over a TCP stream, tungstenite on top.
fn wss_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> tungstenite::WebSocket<TlsStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, name.to_string().try_into().unwrap()).unwrap();
    let stream = rustls::StreamOwned::new(conn, tcp);
    let url = format!("wss://{name}:{}/", addr.port());
    let (ws, resp) = tungstenite::client::client(url, stream).expect("wss handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn tls_addr(server: &ServerHandle) -> SocketAddr {
    server.tls_addrs()[0]
}

fn echo_round(ws: &mut tungstenite::WebSocket<TlsStream>) {
    ws.send(TMessage::text("hello over tls")).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::text("hello over tls"));
    let bin: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    ws.send(TMessage::binary(bin.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::binary(bin));
}

fn stop(server: ServerHandle) {
    server.shutdown();
    server.join().unwrap();
}

/// Text, binary and large messages (several records each way, records split across reads).
fn echo_text_binary_large() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
    let (server, seen) = start(default_tls(&leaf), false, |_| {});
    let mut ws = wss_connect(tls_addr(&server), pki.client_config(true), "localhost");
    echo_round(&mut ws);
    for size in [16 * 1024 - 30, 16 * 1024, 100_000, 3 << 20] {
        let big: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        ws.send(TMessage::binary(big.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), TMessage::binary(big), "size {size}");
    }
    // Many small messages in one flush: one write, several records.
    for i in 0..200 {
        ws.write(TMessage::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..200 {
        assert_eq!(ws.read().unwrap(), TMessage::text(format!("m{i}")));
    }
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    // The request saw TLS: the name, ALPN, TLS 1.3.
    let reqs = seen.requests.lock().unwrap().clone();
    let info = reqs[0].clone().expect("a TLS request");
    assert_eq!(info.server_name(), Some("localhost"));
    assert_eq!(info.alpn(), Some(&b"http/1.1"[..]));
    assert_eq!(info.version(), Some(rustls::ProtocolVersion::TLSv1_3));
    stop(server);
}

/// SNI picks the certificate; a name without one (or none) gets the default.
fn sni_picks_the_certificate() {
    let pki = Pki::new();
    let default = pki.leaf(&["localhost", "127.0.0.1"]);
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test"]);
    let tls = TlsConfig::builder()
        .cert_pem(default.cert_pem.as_bytes(), default.key_pem.as_bytes())
        .unwrap()
        .sni_cert_pem("a.test", a.cert_pem.as_bytes(), a.key_pem.as_bytes())
        .unwrap()
        .sni_cert_pem("B.test", b.cert_pem.as_bytes(), b.key_pem.as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let (server, seen) = start(tls, false, |_| {});
    let addr = tls_addr(&server);
    for (name, leaf) in [("a.test", &a), ("b.test", &b), ("localhost", &default)] {
        let mut ws = wss_connect(addr, pki.client_config(false), name);
        let certs = ws.get_ref().conn.peer_certificates().unwrap();
        assert_eq!(certs[0].as_ref(), &leaf.der[..], "{name}");
        assert_eq!(ws.get_ref().conn.alpn_protocol(), None, "no ALPN offered");
        echo_round(&mut ws);
    }
    // By IP address: no SNI, the default certificate.
    let mut ws = wss_connect(addr, pki.client_config(true), "127.0.0.1");
    let certs = ws.get_ref().conn.peer_certificates().unwrap();
    assert_eq!(certs[0].as_ref(), &default.der[..]);
    assert_eq!(ws.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo_round(&mut ws);
    let names: Vec<Option<String>> = seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|i| i.as_ref().unwrap().server_name().map(str::to_string))
        .collect();
    assert_eq!(
        names,
        [Some("a.test"), Some("b.test"), Some("localhost"), None]
            .map(|n| n.map(str::to_string))
            .to_vec()
    );
    stop(server);
}

/// A reload: the open connection carries on, a new one gets the new certificate.
fn reload_keeps_old_connections() {
    let pki = Pki::new();
    let first = pki.leaf(&["localhost"]);
    let second = pki.leaf(&["localhost"]);
    let (server, _) = start(default_tls(&first), false, |_| {});
    let addr = tls_addr(&server);
    let mut old = wss_connect(addr, pki.client_config(true), "localhost");
    assert_eq!(
        old.get_ref().conn.peer_certificates().unwrap()[0].as_ref(),
        &first.der[..]
    );
    // From files this time.
    let dir = temp_dir("reload");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    server
        .reload_tls(&TlsConfig::from_pem_files(&cert, &key).unwrap())
        .unwrap();
    let mut new = wss_connect(addr, pki.client_config(true), "localhost");
    assert_eq!(
        new.get_ref().conn.peer_certificates().unwrap()[0].as_ref(),
        &second.der[..]
    );
    echo_round(&mut old);
    echo_round(&mut new);
    let _ = std::fs::remove_dir_all(&dir);
    stop(server);
}

/// Plain and TLS listeners in one server; bad PEM is refused at build time.
fn plain_and_tls_listeners_together() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let (server, seen) = start(default_tls(&leaf), true, |_| {});
    assert_eq!(server.local_addrs().len(), 2);
    let mut plain = support::ws_connect(server.local_addr(), "/");
    let mut tls = wss_connect(tls_addr(&server), pki.client_config(true), "localhost");
    plain.send(TMessage::text("plain")).unwrap();
    assert_eq!(plain.read().unwrap(), TMessage::text("plain"));
    echo_round(&mut tls);
    let reqs = seen.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0].is_none() && reqs[1].is_some());
    assert!(TlsConfig::builder().cert_pem(b"nope", b"nope").is_err());
    assert!(TlsConfig::builder().build().is_err());
    assert!(TlsConfig::from_pem_files("/nonexistent/c.pem", "/nonexistent/k.pem").is_err());
    // tls_bind without settings is refused at start.
    let cfg = ServerConfig {
        tls_bind: vec!["127.0.0.1:0".parse().unwrap()],
        backend: support::backend(),
        ..ServerConfig::default()
    };
    assert!(Server::new(cfg)
        .start(|_| Echo(Default::default()))
        .is_err());
    stop(server);
}

/// Resumption: a second connection with the client's session cache resumes.
fn session_resumption() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let (server, _) = start(default_tls(&leaf), false, |c| c.workers = 1);
    let cfg = pki.client_config(true);
    let mut first = wss_connect(tls_addr(&server), Arc::clone(&cfg), "localhost");
    echo_round(&mut first); // the tickets arrive with the first reads
    let mut second = wss_connect(tls_addr(&server), cfg, "localhost");
    assert_eq!(
        second.get_ref().conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    echo_round(&mut second);
    stop(server);
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "surge-tls-{what}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tool missing: skipped with a reason, or a failure under CI=true.
fn missing(tool: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{tool} is missing (required under CI=true)");
    }
    eprintln!("SKIPPED: {tool} not found");
}

/// Python `websockets` with an `ssl` context that trusts the test CA.
fn python_websockets_client() {
    let Some(py) = support::python_with_websockets(&[support::VENV_PYTHON, "python3"]) else {
        missing("python3 with websockets");
        return;
    };
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let (server, _) = start(default_tls(&leaf), false, |_| {});
    let dir = temp_dir("python");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let script = r#"
import asyncio, ssl, sys
from websockets.asyncio.client import connect
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    async with connect(f"wss://localhost:{sys.argv[1]}/", ssl=ctx, max_size=None) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        big = bytes(range(256)) * 4096
        await ws.send(big)
        assert await ws.recv() == big
    print("python ok")
asyncio.run(main())
"#;
    let out = Command::new(py)
        .args(["-c", script, &tls_addr(&server).port().to_string()])
        .arg(&ca)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("python ok"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    stop(server);
}

/// `openssl s_client`: the handshake, the certificate, ALPN, then an upgrade by hand.
fn openssl_s_client() {
    if Command::new("openssl").arg("version").output().is_err() {
        missing("openssl");
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let (server, _) = start(default_tls(&leaf), false, |_| {});
    let dir = temp_dir("openssl");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let addr = tls_addr(&server);
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args([
            "-alpn",
            "http/1.1",
            "-verify_return_error",
            "-quiet",
            "-CAfile",
        ])
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(support::upgrade_request(addr, "/", "").as_bytes())
        .unwrap();
    // A masked text frame "ssl".
    let mut frame = vec![0x81, 0x83, 1, 2, 3, 4];
    frame.extend(b"ssl".iter().zip([1u8, 2, 3]).map(|(b, k)| b ^ k));
    stdin.write_all(&frame).unwrap();
    stdin.flush().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut b) {
            if n == 0 {
                break;
            }
            g.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    let ok = wait_until(Duration::from_secs(10), || {
        let g = got.lock().unwrap();
        g.windows(5).any(|w| w == [0x81, 3, b's', b's', b'l'])
    });
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let g = got.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&g);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(ok, "no echo: {text}");
    let _ = std::fs::remove_dir_all(&dir);
    stop(server);
}

/// A close handshake from the client's side, read to the end.
fn close(mut ws: tungstenite::WebSocket<TlsStream>) {
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

/// Connection count back to 0 within `limit`.
fn drained(server: &ServerHandle, limit: Duration) -> bool {
    wait_until(limit, || server.socket_count() == 0)
}

/// Whether the server closes `s` (EOF or reset, after whatever it sends) within `limit`.
fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let start = std::time::Instant::now();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) if start.elapsed() < limit => return true,
            Ok(_) if start.elapsed() < limit => continue,
            _ => return false,
        }
    }
}

/// A bad-input test: a server, a healthy `wss://` connection kept open beside the bad one.
struct Bad {
    pki: Pki,
    server: ServerHandle,
    seen: Arc<Seen>,
    good: tungstenite::WebSocket<TlsStream>,
}

impl Bad {
    fn new() -> Bad {
        let pki = Pki::new();
        let leaf = pki.leaf(&["localhost"]);
        let (server, seen) = start(default_tls(&leaf), false, |c| {
            c.handshake_timeout = Duration::from_millis(500);
            c.workers = 1;
        });
        let mut good = wss_connect(tls_addr(&server), pki.client_config(true), "localhost");
        echo_round(&mut good);
        Bad {
            pki,
            server,
            seen,
            good,
        }
    }

    fn addr(&self) -> SocketAddr {
        tls_addr(&self.server)
    }

    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// A client's first flight (its ClientHello).
    fn client_hello(&self) -> (rustls::ClientConnection, Vec<u8>) {
        let mut c = rustls::ClientConnection::new(
            self.pki.client_config(true),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        (c, hello)
    }

    /// Another `wss://` connection to the server, echoing once.
    fn open(&self) -> tungstenite::WebSocket<TlsStream> {
        let mut ws = wss_connect(self.addr(), self.pki.client_config(true), "localhost");
        echo_round(&mut ws);
        ws
    }

    /// Some connection's `on_close` got `code` within 3 s.
    fn saw_close(&self, code: u16) -> bool {
        wait_until(Duration::from_secs(3), || {
            self.seen.closes.lock().unwrap().contains(&code)
        })
    }

    /// The healthy connection still echoes, then everything closes and the count drops to 0.
    fn finish(self) {
        let Bad {
            server, mut good, ..
        } = self;
        echo_round(&mut good);
        good.close(None).unwrap();
        while good.read().is_ok() {}
        drop(good);
        assert!(
            drained(&server, Duration::from_secs(4)),
            "connections left: {}",
            server.socket_count()
        );
        stop(server);
    }
}

/// Plain HTTP on the TLS port: closed (with an alert), nothing left.
fn plain_http_on_tls_port() {
    let b = Bad::new();
    let mut s = b.raw();
    s.write_all(support::upgrade_request(b.addr(), "/", "").as_bytes())
        .unwrap();
    assert!(closed_by_server(&mut s, Duration::from_secs(3)));
    drop(s);
    b.finish();
}

/// Garbage, handshake-looking garbage, and a record over the size limit: each closed.
fn garbage_on_tls_port() {
    let b = Bad::new();
    let junk: [&[u8]; 3] = [
        &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7],
        &[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
        &[22, 3, 1, 0xff, 0xff, 1, 2, 3],
    ];
    for j in junk {
        let mut s = b.raw();
        s.write_all(j).unwrap();
        assert!(closed_by_server(&mut s, Duration::from_secs(3)), "{j:?}");
    }
    b.finish();
}

/// A ClientHello written one byte at a time, then a normal session.
fn client_hello_in_one_byte_writes() {
    let b = Bad::new();
    let mut s = b.raw();
    let (conn, hello) = b.client_hello();
    for byte in &hello {
        s.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    s.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
    let stream = rustls::StreamOwned::new(conn, s);
    let url = format!("wss://localhost:{}/", b.addr().port());
    let (mut ws, _) = tungstenite::client::client(url, stream).unwrap();
    echo_round(&mut ws);
    close(ws);
    b.finish();
}

/// Half a ClientHello, then silence (slowloris over TLS): closed at the handshake timeout.
fn stalled_handshake_closed_at_timeout() {
    let b = Bad::new();
    let mut s = b.raw();
    let (_, hello) = b.client_hello();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    let t = std::time::Instant::now();
    assert!(closed_by_server(&mut s, Duration::from_secs(4)));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    drop(s);
    b.finish();
}

/// A peer gone mid-handshake (after its hello, after half of it), and one sending an alert.
fn peer_vanishes_or_alerts_mid_handshake() {
    let b = Bad::new();
    let (_, hello) = b.client_hello();
    {
        let mut s = b.raw();
        s.write_all(&hello).unwrap();
    }
    {
        let mut s = b.raw();
        s.write_all(&hello[..10]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(closed_by_server(&mut s, Duration::from_secs(3)));
    }
    let mut s = b.raw();
    s.write_all(&hello).unwrap();
    // A fatal handshake_failure alert (TLS 1.2 record framing, as a peer would send it).
    s.write_all(&[21, 3, 3, 0, 2, 2, 40]).unwrap();
    assert!(closed_by_server(&mut s, Duration::from_secs(3)));
    drop(s);
    b.finish();
}

/// A record cut short by the peer's FIN after the upgrade: on_close 1006, closed.
fn truncated_record_then_eof() {
    let b = Bad::new();
    let mut ws = b.open();
    let sock = &mut ws.get_mut().sock;
    sock.write_all(&[23, 3, 3, 0, 100, 1, 2, 3]).unwrap();
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_server(sock, Duration::from_secs(3)));
    assert!(b.saw_close(1006));
    drop(ws);
    b.finish();
}

/// close_notify without a WebSocket close: on_close 1006, our close_notify, closed.
fn close_notify_without_websocket_close() {
    let b = Bad::new();
    let mut ws = b.open();
    let stream = ws.get_mut();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The server's close_notify ends the TLS stream cleanly (Ok(0), not an error).
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    assert!(end.is_ok(), "{end:?}");
    assert!(b.saw_close(1006));
    drop(ws);
    b.finish();
}

/// Key updates after the handshake, the client's asking for ours too: the server follows
/// (its record layer takes the next secrets from rustls's kernel connection) and answers; echo
/// goes on under the new keys both ways, several times over.
fn key_updates_both_ways() {
    let b = Bad::new();
    let mut ws = b.open();
    for _ in 0..3 {
        ws.get_mut().conn.refresh_traffic_keys().unwrap();
        echo_round(&mut ws);
    }
    // A large message after an update: several records under the new key.
    ws.get_mut().conn.refresh_traffic_keys().unwrap();
    let big = vec![9u8; 100_000];
    ws.send(TMessage::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::binary(big));
    close(ws);
    b.finish();
}

/// TLS 1.2 stays with rustls throughout (only TLS 1.3 sessions are handed over): echo works and
/// the request says 1.2.
fn tls12_session() {
    let b = Bad::new();
    let cfg = b
        .pki
        .client_config_versions(true, &[&rustls::version::TLS12]);
    let mut ws = wss_connect(b.addr(), cfg, "localhost");
    echo_round(&mut ws);
    let big = vec![3u8; 70_000];
    ws.send(TMessage::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), TMessage::binary(big));
    let info = b.seen.requests.lock().unwrap().last().cloned().flatten();
    assert_eq!(
        info.and_then(|i| i.version()),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    close(ws);
    b.finish();
}

/// A forged application-data record after the handshake (whole, but not sealed with the key):
/// bad_record_mac, on_close 1006, closed; the other connection carries on.
fn forged_record_after_handshake() {
    let b = Bad::new();
    let mut ws = b.open();
    let sock = &mut ws.get_mut().sock;
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend_from_slice(&[0x5a; 40]);
    sock.write_all(&forged).unwrap();
    assert!(closed_by_server(sock, Duration::from_secs(3)));
    assert!(b.saw_close(1006));
    drop(ws);
    b.finish();
}

/// A PROXY header comes before the TLS handshake, in clear: the client's address reaches the
/// request, whole or split from the records behind it.
fn proxy_header_before_tls() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let (server, seen) = start(default_tls(&leaf), true, |cfg| {
        // Only the TLS listener is behind the balancer (an address of its own: the override is
        // keyed by the address as written, and both lists say 127.0.0.1:0 otherwise).
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        cfg.tls_bind = vec![free.local_addr().unwrap()];
        drop(free);
        cfg.proxy_protocol_listeners = vec![(cfg.tls_bind[0], surge::ProxyProtocol::Required)];
    });
    // The plain listener reads no header.
    let mut plain = support::RawClient::connect(server.local_addrs()[0], "/");
    plain.send(true, 1, b"plain");
    assert_eq!(plain.expect_frame().payload, b"plain");
    drop(plain);
    let addr = tls_addr(&server);
    for (i, split) in [false, true].into_iter().enumerate() {
        let port = 40000 + i as u16;
        let header = format!("PROXY TCP4 203.0.113.7 127.0.0.1 {port} 443\r\n");
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
        if split {
            tcp.write_all(&header.as_bytes()[..10]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            tcp.write_all(&header.as_bytes()[10..]).unwrap();
        } else {
            tcp.write_all(header.as_bytes()).unwrap();
        }
        let conn =
            rustls::ClientConnection::new(pki.client_config(true), "localhost".try_into().unwrap())
                .unwrap();
        let stream = rustls::StreamOwned::new(conn, tcp);
        let url = format!("wss://localhost:{}/", addr.port());
        let (mut ws, _) = tungstenite::client::client(url, stream).expect("wss over PROXY");
        echo_round(&mut ws);
        let peers = seen.peers.lock().unwrap().clone();
        assert_eq!(
            peers.last().copied().flatten(),
            Some(SocketAddr::from(([203, 0, 113, 7], port)))
        );
    }
    stop(server);
}

per_driver!(
    proxy_header_before_tls,
    echo_text_binary_large,
    sni_picks_the_certificate,
    reload_keeps_old_connections,
    plain_and_tls_listeners_together,
    session_resumption,
    python_websockets_client,
    openssl_s_client,
    plain_http_on_tls_port,
    garbage_on_tls_port,
    client_hello_in_one_byte_writes,
    stalled_handshake_closed_at_timeout,
    peer_vanishes_or_alerts_mid_handshake,
    truncated_record_then_eof,
    close_notify_without_websocket_close,
    key_updates_both_ways,
    tls12_session,
    forged_record_after_handshake,
);
