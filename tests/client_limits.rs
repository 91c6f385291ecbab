//! Per-client limits (`ServerConfig::client_limits`) across workers, once per driver
//! (`per_driver!`): connections per client address by the socket's peer and by the address a
//! PROXY header names (different addresses in headers written by the test count apart), IPv6
//! per /64, handshakes per second, 429 with `Retry-After` or a plain close, and the refusal
//! counters.
//!
//! Run without `SURGE_BACKEND` or `SURGE_URING_RECV` set: they override the configured driver.

#[macro_use]
#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{proxy_v1, proxy_v2, read_response_head, read_to_close, upgrade_request, wait_until};
use surge::{
    Accept, ClientLimits, Conn, Handler, LimitAction, Message, ProxyProtocol, Request, Server,
    ServerConfig, ServerHandle, Upgrade,
};

struct Echo;

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn start(mode: ProxyProtocol, limits: ClientLimits) -> ServerHandle {
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        // Clients still connected at the end do not answer the shutdown's close.
        shutdown_timeout: Duration::from_millis(200),
        proxy_protocol: mode,
        client_limits: limits,
        ..ServerConfig::default()
    };
    Server::new(cfg).start(|_| Echo).expect("server starts")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Connects (from `from`'s address when given), writes `prefix` and an upgrade request.
fn attempt(at: SocketAddr, from: Option<&str>, prefix: &[u8]) -> TcpStream {
    let mut s = match from {
        None => TcpStream::connect(at).unwrap(),
        Some(ip) => {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&addr(&format!("{ip}:0")).into()).unwrap();
            sock.connect(&at.into()).unwrap();
            sock.into()
        }
    };
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(upgrade_request(at, "/", "").as_bytes());
    s.write_all(&bytes).unwrap();
    s
}

fn upgraded(at: SocketAddr, from: Option<&str>, prefix: &[u8]) -> TcpStream {
    let mut s = attempt(at, from, prefix);
    let head = read_response_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Expects a 429 with `Retry-After: {secs}`, then the close.
fn too_many(at: SocketAddr, from: Option<&str>, prefix: &[u8], secs: u64) {
    let mut s = attempt(at, from, prefix);
    let got = String::from_utf8(read_to_close(&mut s)).unwrap();
    assert!(
        got.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{got}"
    );
    assert!(
        got.contains(&format!("\r\nRetry-After: {secs}\r\n")),
        "{got}"
    );
}

fn refused_connections(server: &ServerHandle) -> u64 {
    let l = server.client_limiter().expect("limits are on");
    let n = l.refused_connections.load(Ordering::Relaxed);
    // The metrics show the same count.
    let line = format!("surge_client_limit_refusals_total{{limit=\"connections\"}} {n}");
    assert!(server.metrics().text().contains(&line), "{line}");
    n
}

fn refused_rate(server: &ServerHandle) -> u64 {
    let l = server.client_limiter().expect("limits are on");
    l.refused_handshake_rate.load(Ordering::Relaxed)
}

fn stop(server: ServerHandle) {
    server.shutdown();
    server.join().unwrap();
}

/// By the socket's peer: 127.0.0.1 and 127.0.0.2 are two clients.
fn connections_per_socket_peer() {
    let server = start(
        ProxyProtocol::Off,
        ClientLimits {
            max_connections: Some(2),
            ..ClientLimits::default()
        },
    );
    let at = server.local_addr();
    let a1 = upgraded(at, None, b"");
    let _a2 = upgraded(at, None, b"");
    too_many(at, None, b"", 1);
    let _b = upgraded(at, Some("127.0.0.2"), b"");
    let l = server.client_limiter().unwrap();
    assert_eq!(l.open_connections(addr("127.0.0.1:1")), 2);
    assert_eq!(refused_connections(&server), 1);
    // A connection gone is a connection less.
    drop(a1);
    assert!(wait_until(Duration::from_secs(5), || l
        .open_connections(addr("127.0.0.1:1"))
        == 1));
    let _a3 = upgraded(at, None, b"");
    assert_eq!(refused_rate(&server), 0);
    stop(server);
}

/// By the address in the PROXY header: every connection comes from 127.0.0.1, yet the clients
/// the headers name count apart.
fn connections_per_proxied_client() {
    let server = start(
        ProxyProtocol::Required,
        ClientLimits {
            max_connections: Some(2),
            action: LimitAction::Reject {
                retry_after: Duration::from_secs(30),
            },
            ..ClientLimits::default()
        },
    );
    let at = server.local_addr();
    let a = |port: u16| addr(&format!("10.0.0.1:{port}"));
    let a1 = upgraded(at, None, &proxy_v1(a(1001), at));
    let _a2 = upgraded(at, None, &proxy_v2(a(1002), at, &[]));
    too_many(at, None, &proxy_v1(a(1003), at), 30);
    let _b1 = upgraded(at, None, &proxy_v1(addr("10.0.0.2:1001"), at));
    let _b2 = upgraded(at, None, &proxy_v2(addr("10.0.0.2:1002"), at, &[]));
    too_many(at, None, &proxy_v2(addr("10.0.0.2:1003"), at, &[]), 30);
    let l = server.client_limiter().unwrap();
    assert_eq!(l.open_connections(a(0)), 2, "refused ones are not counted");
    assert_eq!(refused_connections(&server), 2);
    drop(a1);
    assert!(wait_until(Duration::from_secs(5), || l
        .open_connections(a(0))
        == 1));
    let _a3 = upgraded(at, None, &proxy_v1(a(1004), at));
    stop(server);
}

/// IPv6 clients count per /64.
fn ipv6_per_64() {
    let server = start(
        ProxyProtocol::Required,
        ClientLimits {
            max_connections: Some(1),
            ..ClientLimits::default()
        },
    );
    let at = server.local_addr();
    let dst = addr("[2001:db8::ffff]:443");
    let _a = upgraded(at, None, &proxy_v1(addr("[2001:db8::1]:1"), dst));
    too_many(at, None, &proxy_v2(addr("[2001:db8::2]:1"), dst, &[]), 1);
    let _b = upgraded(at, None, &proxy_v1(addr("[2001:db8:0:1::1]:1"), dst));
    assert_eq!(refused_connections(&server), 1);
    stop(server);
}

/// Handshakes per second per client, by the PROXY header's address and by the socket's peer.
fn handshake_rate() {
    let server = start(
        ProxyProtocol::Optional,
        ClientLimits {
            max_handshakes_per_sec: Some(2),
            ..ClientLimits::default()
        },
    );
    let at = server.local_addr();
    let a = addr("10.1.0.1:1");
    let _a1 = upgraded(at, None, &proxy_v1(a, at));
    let _a2 = upgraded(at, None, &proxy_v1(a, at));
    too_many(at, None, &proxy_v1(a, at), 1);
    let _b = upgraded(at, None, &proxy_v1(addr("10.1.0.2:1"), at));
    // Without a header: the socket's peer, a client of its own.
    let _c1 = upgraded(at, None, b"");
    let _c2 = upgraded(at, None, b"");
    too_many(at, None, b"", 1);
    assert_eq!(refused_rate(&server), 2);
    assert_eq!(refused_connections(&server), 0);
    // Half a second refills one handshake.
    std::thread::sleep(Duration::from_millis(600));
    let _a3 = upgraded(at, None, &proxy_v1(a, at));
    too_many(at, None, &proxy_v1(a, at), 1);
    stop(server);
}

/// `LimitAction::Close`: no answer at all.
fn close_action() {
    let server = start(
        ProxyProtocol::Off,
        ClientLimits {
            max_connections: Some(1),
            action: LimitAction::Close,
            ..ClientLimits::default()
        },
    );
    let at = server.local_addr();
    let _a = upgraded(at, None, b"");
    let mut s = attempt(at, None, b"");
    assert!(read_to_close(&mut s).is_empty());
    assert_eq!(refused_connections(&server), 1);
    stop(server);
}

/// Off by default: no table, nothing refused.
fn off_by_default() {
    let server = start(ProxyProtocol::Off, ClientLimits::default());
    assert!(server.client_limiter().is_none());
    let at = server.local_addr();
    let _conns: Vec<_> = (0..20).map(|_| upgraded(at, None, b"")).collect();
    stop(server);
}

per_driver!(
    connections_per_socket_peer,
    connections_per_proxied_client,
    ipv6_per_64,
    handshake_rate,
    close_action,
    off_by_default,
);
