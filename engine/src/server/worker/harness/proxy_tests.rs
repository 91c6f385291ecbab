//! The PROXY protocol and the per-client limits through the harness: a header across reads, the
//! driver's peer answer arriving after the bytes (io_uring's `peer_pending`), a client's count
//! released at removal.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::server::{ClientLimits, ProxyProtocol};

fn cfg(mode: ProxyProtocol, max_connections: Option<u32>) -> ServerConfig {
    ServerConfig {
        proxy_protocol: mode,
        client_limits: ClientLimits {
            max_connections,
            ..ClientLimits::default()
        },
        ..ServerConfig::default()
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl Harness {
    fn open_connections(&self, a: &str) -> u32 {
        let limiter = self.shared.limiter.as_deref().expect("limits on");
        limiter.open_connections(addr(a))
    }

    /// The driver is still asking for the socket's peer (io_uring direct descriptors).
    fn peer_pending(&mut self, p: Peer) {
        let id = self.id(p);
        let Some(super::super::Stage::Handshake(hs)) =
            self.worker.ctx.conns.get_mut(id).map(|c| &mut c.stage)
        else {
            panic!("in the handshake");
        };
        hs.peer_pending = true;
    }

    fn peer_answer(&mut self, p: Peer, a: &str) {
        self.net.borrow_mut().events.push_back(IoEvent::Peer {
            token: p.token,
            addr: Some(addr(a)),
        });
        self.turn();
    }
}

#[test]
fn a_header_across_reads_names_the_client_and_counts_it_until_removal() {
    let mut h = Harness::new(cfg(ProxyProtocol::Required, Some(1)));
    let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n";
    let p = h.accept();
    for piece in header.chunks(5) {
        h.send(p, piece);
        assert!(h.output(p).is_empty() && !h.closed(p));
    }
    h.send(p, REQUEST);
    assert!(h.output(p).starts_with(b"HTTP/1.1 101 "));
    let id = h.id(p);
    assert_eq!(h.worker.ctx.kept_peer(id), Some(addr("192.0.2.7:56324")));
    assert_eq!(h.open_connections("192.0.2.7:1"), 1);
    // The same client again: 429 at once, not counted.
    let q = h.accept();
    let mut bytes = b"PROXY TCP4 192.0.2.7 10.0.0.1 56325 443\r\n".to_vec();
    bytes.extend_from_slice(REQUEST);
    h.send(q, &bytes);
    let out = String::from_utf8(h.output(q)).unwrap();
    assert!(out.starts_with("HTTP/1.1 429 "), "{out}");
    assert!(out.contains("\r\nRetry-After: 1\r\n"), "{out}");
    assert_eq!(h.open_connections("192.0.2.7:1"), 1);
    // Gone: released.
    h.eof(p);
    assert!(h.closed(p));
    assert_eq!(h.open_connections("192.0.2.7:1"), 0);
    // A header that never completes: closed at the handshake timeout, never counted.
    let r = h.accept();
    h.send(r, b"PROXY TCP4 192.0.2.8 10.");
    h.advance(Duration::from_secs(11));
    assert!(h.closed(r));
    assert_eq!(h.open_connections("192.0.2.8:1"), 0);
}

#[test]
fn the_socket_peer_answered_after_the_bytes() {
    let mut h = Harness::new(cfg(ProxyProtocol::Required, Some(5)));
    // A PROXY header: its client replaces the socket's peer.
    let p = h.accept();
    h.peer_pending(p);
    let mut bytes = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n".to_vec();
    bytes.extend_from_slice(REQUEST);
    h.send(p, &bytes);
    assert!(h.output(p).is_empty(), "waits for the peer");
    h.peer_answer(p, "10.9.9.9:1234");
    assert!(h.output(p).starts_with(b"HTTP/1.1 101 "));
    assert_eq!(
        h.worker.ctx.kept_peer(h.id(p)),
        Some(addr("[2001:db8::7]:4000"))
    );
    assert_eq!(h.open_connections("[2001:db8::99]:1"), 1, "the /64 counts");
    assert_eq!(h.open_connections("10.9.9.9:1"), 0);
    // A v2 LOCAL header (a health check): the socket's peer stands, and counts.
    let q = h.accept();
    h.peer_pending(q);
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    bytes.extend_from_slice(REQUEST);
    h.send(q, &bytes);
    h.peer_answer(q, "10.9.9.9:1234");
    assert!(h.output(q).starts_with(b"HTTP/1.1 101 "));
    assert_eq!(h.worker.ctx.kept_peer(h.id(q)), Some(addr("10.9.9.9:1234")));
    assert_eq!(h.open_connections("10.9.9.9:1"), 1);
    h.eof(p);
    h.eof(q);
    assert_eq!(h.open_connections("[2001:db8::99]:1"), 0);
    assert_eq!(h.open_connections("10.9.9.9:1"), 0);
    assert!(h.worker.ctx.peers6.is_empty());
}

#[test]
fn without_proxy_the_socket_peer_counts_when_the_driver_answers() {
    let mut h = Harness::new(cfg(ProxyProtocol::Off, Some(1)));
    let p = h.accept();
    h.peer_pending(p);
    h.peer_answer(p, "10.1.1.1:1");
    h.send(p, REQUEST);
    assert!(h.output(p).starts_with(b"HTTP/1.1 101 "));
    assert_eq!(h.open_connections("10.1.1.1:1"), 1);
    // The second from that address is refused when its peer is known, before it sends a byte.
    let q = h.accept();
    h.peer_pending(q);
    h.peer_answer(q, "10.1.1.1:2");
    assert!(h.output(q).starts_with(b"HTTP/1.1 429 "));
    // A malformed header where none is expected is just a bad request.
    let r = h.accept();
    h.send(r, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\r\n");
    assert!(h.output(r).starts_with(b"HTTP/1.1 400 "));
}
