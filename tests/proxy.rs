//! The PROXY protocol (v1 and v2) in front of the upgrade, once per driver (`per_driver!`).
//!
//! - Through a real HAProxy (`send-proxy`, `send-proxy-v2`): `Request::peer` and
//!   `Conn::peer_addr` are the client's address and port, not HAProxy's. Without `haproxy` on
//!   PATH these print why and pass, except under `CI=true`, where they fail (`.ci/run` installs
//!   Debian's `haproxy`).
//! - With headers written by the test: v1 TCP4/TCP6/UNKNOWN, v2 IPv4/IPv6 with and without TLVs,
//!   the v2 LOCAL command (the socket's own peer stands), a header and request written one byte
//!   at a time, malformed headers, a truncated header left to the handshake timeout, a missing
//!   header where required, `Optional` with and without one, an oversized v2 header, and the
//!   per-listener setting.
//!
//! Run without `SURGE_BACKEND` or `SURGE_URING_RECV` set: they override the configured driver.

#[macro_use]
#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{
    proxy_v1, proxy_v2, proxy_v2_raw, read_response_head, read_to_close, upgrade_request,
    RawClient, READ_TIMEOUT,
};
use surge::{
    Accept, Conn, Handler, Message, ProxyProtocol, Request, Server, ServerConfig, ServerHandle,
    Upgrade,
};

/// What the handler saw of a connection: `Request::peer` in `on_upgrade`, `Conn::peer_addr` in
/// `on_open`.
type Seen = (Option<SocketAddr>, Option<SocketAddr>);

struct Peers(Sender<Seen>);

impl Handler for Peers {
    type Data = Option<SocketAddr>;
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<Self::Data> {
        Upgrade::Accept(Accept::new(req.peer()))
    }
    fn on_open(&mut self, conn: &mut Conn<'_, Self::Data>) {
        let _ = self.0.send((*conn.data(), conn.peer_addr()));
    }
    fn on_message(&mut self, conn: &mut Conn<'_, Self::Data>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn config(mode: ProxyProtocol) -> ServerConfig {
    ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        // Clients still connected at the end do not answer the shutdown's close.
        shutdown_timeout: Duration::from_millis(200),
        proxy_protocol: mode,
        ..ServerConfig::default()
    }
}

fn start(cfg: ServerConfig) -> (ServerHandle, Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = Server::new(cfg)
        .start(move |_| Peers(tx.lock().unwrap().clone()))
        .expect("server starts");
    (server, rx)
}

fn stop(server: ServerHandle) {
    server.shutdown();
    server.join().unwrap();
}

/// Writes `prefix` and an upgrade request in one write; expects the 101.
fn upgrade_with(addr: SocketAddr, prefix: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(upgrade_request(addr, "/", "").as_bytes());
    s.write_all(&bytes).unwrap();
    let head = read_response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Writes `bytes` and expects the server to close without a byte of answer, within `within`.
fn refused(addr: SocketAddr, bytes: &[u8], within: Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    s.write_all(bytes).unwrap();
    let got = read_to_close(&mut s);
    assert!(
        got.is_empty(),
        "answered {:?} to {bytes:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < within, "{:?}", started.elapsed());
}

fn seen(rx: &Receiver<Seen>) -> Seen {
    rx.recv_timeout(READ_TIMEOUT).expect("on_open")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Through HAProxy.

/// `haproxy` on PATH; `None` (with a line saying so) where it is missing, except under
/// `CI=true`, where a missing one fails the test.
fn haproxy() -> Option<&'static str> {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("haproxy");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "haproxy is not on PATH (.ci/run installs Debian's haproxy)"
    );
    eprintln!("SKIPPED: haproxy is not on PATH (apt-get install haproxy)");
    None
}

/// A running `haproxy -db`, killed when dropped.
struct HaProxy {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts HAProxy in TCP mode on a free loopback port, forwarding to `server` with `send` (the
/// `server` line's PROXY option: `send-proxy` or `send-proxy-v2`).
fn start_haproxy(bin: &str, server: SocketAddr, send: &str) -> HaProxy {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!(
        "surge-haproxy-{}-{send}-{port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 256\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
             timeout server 30s\n\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\n\
             backend be\n    server surge {server} {send}\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("stderr")).unwrap();
    let child = Command::new(bin)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("haproxy starts");
    let mut proxy = HaProxy { child, port, dir };
    let up = support::wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !up {
        let _ = proxy.child.kill();
        let err = std::fs::read_to_string(proxy.dir.join("stderr")).unwrap_or_default();
        panic!("haproxy did not listen on {port}: {err}");
    }
    proxy
}

fn through_haproxy(send: &str) {
    let Some(bin) = haproxy() else {
        return;
    };
    let (server, rx) = start(config(ProxyProtocol::Required));
    let proxy = start_haproxy(bin, server.local_addr(), send);
    for _ in 0..3 {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let client = stream.local_addr().unwrap();
        let haproxy_side = stream.peer_addr().unwrap();
        let url = format!("ws://127.0.0.1:{}/", proxy.port);
        let (mut ws, _) = tungstenite::client(url, stream).expect("upgraded through haproxy");
        let (req_peer, conn_peer) = seen(&rx);
        assert_eq!(req_peer, Some(client), "Request::peer ({send})");
        assert_eq!(conn_peer, Some(client), "Conn::peer_addr ({send})");
        assert_ne!(Some(haproxy_side), req_peer);
        ws.send(tungstenite::Message::text("through")).unwrap();
        assert_eq!(ws.read().unwrap(), tungstenite::Message::text("through"));
        let _ = ws.close(None);
        while ws.read().is_ok() {}
    }
    drop(proxy);
    stop(server);
}

fn haproxy_send_proxy_v1() {
    through_haproxy("send-proxy");
}

fn haproxy_send_proxy_v2() {
    through_haproxy("send-proxy-v2");
}

// ---------------------------------------------------------------------------------------------
// Headers written by the test.

fn headers_name_the_client() {
    let (server, rx) = start(config(ProxyProtocol::Required));
    let at = server.local_addr();
    let v4 = addr("192.0.2.7:56324");
    let v6 = addr("[2001:db8::9]:7000");
    let dst6 = addr("[2001:db8::1]:443");
    let noop_tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
    for (header, client) in [
        (proxy_v1(v4, at), v4),
        (proxy_v1(v6, dst6), v6),
        (proxy_v2(v4, at, &[]), v4),
        (proxy_v2(v4, at, &noop_tlv), v4),
        (proxy_v2(v6, dst6, &[]), v6),
    ] {
        let s = upgrade_with(at, &header);
        assert_eq!(seen(&rx), (Some(client), Some(client)), "{header:?}");
        // Frames right behind the request in the same write are read too.
        let mut c = RawClient::from_stream(s);
        c.send(true, 1, b"hi");
        assert_eq!(c.expect_frame().payload, b"hi");
    }
    // Headers that name nobody: the socket's own peer stands.
    for header in [
        proxy_v2_raw(0x20, 0x00, &[]),          // LOCAL (a health check)
        proxy_v2_raw(0x20, 0x11, &[0u8; 12]),   // LOCAL with addresses
        proxy_v2_raw(0x21, 0x00, &[]),          // PROXY, family unspecified
        proxy_v2_raw(0x21, 0x31, &[b'x'; 216]), // PROXY, unix sockets
        b"PROXY UNKNOWN\r\n".to_vec(),          // v1 UNKNOWN
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
    ] {
        let s = upgrade_with(at, &header);
        let own = s.local_addr().unwrap();
        assert_eq!(seen(&rx), (Some(own), Some(own)), "{header:?}");
    }
    stop(server);
}

/// Header and request written one byte at a time: nothing is decided on a prefix.
fn header_in_one_byte_writes() {
    let (server, rx) = start(config(ProxyProtocol::Required));
    let at = server.local_addr();
    let client = addr("198.51.100.3:40000");
    for header in [proxy_v1(client, at), proxy_v2(client, at, &[0x04, 0, 1, 0])] {
        let mut s = TcpStream::connect(at).unwrap();
        s.set_nodelay(true).unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(upgrade_request(at, "/", "").as_bytes());
        for (i, b) in bytes.iter().enumerate() {
            s.write_all(&[*b]).unwrap();
            if i < header.len() + 2 {
                // Apart on the wire, at least through the header.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let head = read_response_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(seen(&rx), (Some(client), Some(client)));
    }
    stop(server);
}

fn malformed_headers_close_without_answer() {
    let (server, rx) = start(config(ProxyProtocol::Optional));
    let at = server.local_addr();
    let request = upgrade_request(at, "/", "");
    let mut long_v1 = b"PROXY TCP4 ".to_vec();
    long_v1.extend_from_slice(&[b'1'; 150]);
    for bad in [
        b"PROXY TCP4 192.0.2.999 10.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP9 192.0.2.1 10.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 10.0.0.1 1 99999\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 10.0.0.1 01 2\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1\n".to_vec(),
        b"PROXY \xff\xfe\r\n".to_vec(),
        long_v1,
        proxy_v2_raw(0x31, 0x11, &[0u8; 12]), // version 3
        proxy_v2_raw(0x22, 0x11, &[0u8; 12]), // command 2
        proxy_v2_raw(0x21, 0x41, &[0u8; 12]), // family 4
        proxy_v2_raw(0x21, 0x11, &[0u8; 8]),  // shorter than its addresses
    ] {
        let mut bytes = bad.clone();
        bytes.extend_from_slice(request.as_bytes());
        refused(at, &bytes, Duration::from_secs(3));
    }
    assert!(rx.try_recv().is_err(), "nothing was opened");
    assert_eq!(server.proxy_refused(), 11);
    let text = server.metrics().text();
    assert!(
        text.contains("surge_proxy_header_refusals_total 11"),
        "{text}"
    );
    stop(server);
}

fn truncated_header_times_out() {
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..config(ProxyProtocol::Required)
    };
    let (server, _rx) = start(cfg);
    let at = server.local_addr();
    let whole = proxy_v2(addr("192.0.2.1:1000"), at, &[]);
    for partial in [&b"PROXY TCP4 192.0.2.1 10."[..], b"PRO", &whole[..20]] {
        let mut s = TcpStream::connect(at).unwrap();
        let started = Instant::now();
        s.write_all(partial).unwrap();
        assert!(read_to_close(&mut s).is_empty());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
    stop(server);
}

fn required_but_missing() {
    let (server, rx) = start(config(ProxyProtocol::Required));
    let at = server.local_addr();
    refused(
        at,
        upgrade_request(at, "/", "").as_bytes(),
        Duration::from_secs(3),
    );
    // A header alone in the stream's first bytes is a header only at its very start.
    let mut late = upgrade_request(at, "/", "").into_bytes();
    late.extend_from_slice(&proxy_v1(addr("192.0.2.1:1"), at));
    refused(at, &late, Duration::from_secs(3));
    assert!(rx.try_recv().is_err(), "nothing was opened");
    stop(server);
}

fn optional_with_and_without() {
    let (server, rx) = start(config(ProxyProtocol::Optional));
    let at = server.local_addr();
    let client = addr("203.0.113.5:5555");
    let _a = upgrade_with(at, &proxy_v1(client, at));
    assert_eq!(seen(&rx), (Some(client), Some(client)));
    let _b = upgrade_with(at, &proxy_v2(client, at, &[]));
    assert_eq!(seen(&rx), (Some(client), Some(client)));
    let c = upgrade_with(at, b"");
    let own = c.local_addr().unwrap();
    assert_eq!(seen(&rx), (Some(own), Some(own)));
    // Without a header, byte by byte: "P" could start "PROXY ", "PO" cannot.
    let mut s = TcpStream::connect(at).unwrap();
    s.set_nodelay(true).unwrap();
    for b in upgrade_request(at, "/", "").bytes() {
        s.write_all(&[b]).unwrap();
    }
    assert!(read_response_head(&mut s).starts_with("HTTP/1.1 101"));
    let own = s.local_addr().unwrap();
    assert_eq!(seen(&rx), (Some(own), Some(own)));
    stop(server);
}

fn oversized_v2_header() {
    let (server, rx) = start(config(ProxyProtocol::Required));
    let at = server.local_addr();
    let client = addr("192.0.2.44:4444");
    // 16 + 12 + 603 bytes: over the default 536, refused as soon as its length is read.
    let mut tlv = vec![0x04, 0x02, 0x58];
    tlv.resize(603, 0);
    let big = proxy_v2(client, at, &tlv);
    refused(at, &big[..16], Duration::from_secs(3));
    stop(server);
    assert!(rx.try_recv().is_err());
    // Within a larger limit, the same header is read.
    let cfg = ServerConfig {
        max_proxy_header_size: 1024,
        ..config(ProxyProtocol::Required)
    };
    let (server, rx) = start(cfg);
    let at = server.local_addr();
    let big = proxy_v2(client, at, &tlv);
    let _s = upgrade_with(at, &big);
    assert_eq!(seen(&rx), (Some(client), Some(client)));
    stop(server);
}

fn per_listener_setting() {
    let direct: SocketAddr = addr("127.0.0.2:0");
    let cfg = ServerConfig {
        bind: vec![addr("127.0.0.1:0"), direct],
        proxy_protocol_listeners: vec![(direct, ProxyProtocol::Off)],
        ..config(ProxyProtocol::Required)
    };
    let (server, rx) = start(cfg);
    let (behind, direct) = (server.local_addrs()[0], server.local_addrs()[1]);
    let client = addr("192.0.2.8:8888");
    let _a = upgrade_with(behind, &proxy_v1(client, behind));
    assert_eq!(seen(&rx), (Some(client), Some(client)));
    refused(
        behind,
        upgrade_request(behind, "/", "").as_bytes(),
        Duration::from_secs(3),
    );
    let b = upgrade_with(direct, b"");
    let own = b.local_addr().unwrap();
    assert_eq!(seen(&rx), (Some(own), Some(own)));
    stop(server);

    // A setting for an address that is not listened on fails the start.
    let cfg = ServerConfig {
        proxy_protocol_listeners: vec![(addr("127.0.0.1:1"), ProxyProtocol::Off)],
        ..config(ProxyProtocol::Required)
    };
    let err = Server::new(cfg)
        .start(|_| Peers(mpsc::channel().0))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

per_driver!(
    haproxy_send_proxy_v1,
    haproxy_send_proxy_v2,
    headers_name_the_client,
    header_in_one_byte_writes,
    malformed_headers_close_without_answer,
    truncated_header_times_out,
    required_but_missing,
    optional_with_and_without,
    oversized_v2_header,
    per_listener_setting,
);
