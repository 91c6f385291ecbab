//! `wss://` from the engine's client (`WorkerCtx::connect`, `Client`) on every driver: against
//! surge's own TLS server (echo both ways, large and fragmented messages, the close handshake and
//! close_notify), a rustls + tungstenite server that sends close_notify without a WebSocket close,
//! and servers that must be refused: an unknown CA, a certificate for another name, a plain
//! (non-TLS) server, one that closes in the middle of the handshake or of a record, one that
//! never answers. Certificates are made at test time (rcgen); no key is committed.

#[macro_use]
mod support;

use support::pki::Pki;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::CertificateError;
use surge::tls::{ClientTlsConfig, TlsConfig};
use surge::{
    Accept, Client, CloseCode, CloseInfo, Conn, ConnId, ConnectError, ConnectRequest, Handler,
    Message, Rejection, Request, Server, ServerConfig, ServerHandle, Upgrade, WorkerCtx,
};

per_driver!(
    echo_both_ways_large_and_fragmented,
    unknown_ca_refused,
    wrong_server_name_refused,
    plain_server_refused,
    server_closes_mid_handshake,
    server_truncates_a_record,
    handshake_timeout_covers_tls,
    close_notify_without_websocket_close,
    resumed_session_on_a_second_connection,
);

impl Pki {
    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::with_ca_pem(self.ca_pem().as_bytes()).unwrap()
    }
}

/// What the client saw.
#[derive(Debug)]
enum Ev {
    Open,
    /// The echo of message `i` came back intact.
    Echoed(usize),
    Closed {
        code: u16,
        by_peer: bool,
    },
    Failed(Fail),
}

/// Why a connection never opened.
#[derive(Debug)]
enum Fail {
    Tls(rustls::Error),
    Closed,
    Timeout,
    Other(#[allow(dead_code)] String),
}

/// Connects at start; each open connection sends `script` one message at a time, checks each
/// echo, then closes with 1000 (an empty script: it waits for the server).
struct Scripted {
    requests: Vec<ConnectRequest>,
    script: Arc<Vec<Vec<u8>>>,
    tx: Sender<Ev>,
}

impl Handler for Scripted {
    /// The index of the next message of the script to be echoed.
    type Data = usize;

    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<usize> {
        Upgrade::Reject(Rejection::new(404, "client only"))
    }

    fn on_start(&mut self, worker: &mut WorkerCtx<usize>) {
        for r in &self.requests {
            worker.connect(r, 0).unwrap();
        }
    }

    fn on_open(&mut self, conn: &mut Conn<'_, usize>) {
        let _ = self.tx.send(Ev::Open);
        if let Some(first) = self.script.first() {
            assert!(conn.send_binary(first).is_queued());
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, usize>, msg: Message<'_>) {
        let i = *conn.data();
        let got = match msg {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
        };
        assert_eq!(got.len(), self.script[i].len(), "message {i}");
        assert!(got == &self.script[i][..], "message {i} intact");
        let _ = self.tx.send(Ev::Echoed(i));
        *conn.data_mut() = i + 1;
        if i + 1 < self.script.len() {
            // Text and binary in turn.
            let next = &self.script[i + 1];
            if (i + 1).is_multiple_of(2) {
                assert!(conn.send_binary(next).is_queued());
            } else {
                let text = std::str::from_utf8(next).unwrap();
                assert!(conn.send_text(text).is_queued());
            }
        } else {
            let _ = conn.close(CloseCode::NORMAL, "done");
        }
    }

    fn on_close(&mut self, _worker: &mut WorkerCtx<usize>, _sent: usize, info: &CloseInfo<'_>) {
        let _ = self.tx.send(Ev::Closed {
            code: info.code.0,
            by_peer: info.by_peer,
        });
    }

    fn on_connect_error(
        &mut self,
        _worker: &mut WorkerCtx<usize>,
        _id: ConnId,
        _data: usize,
        error: &ConnectError,
    ) {
        let fail = match error {
            ConnectError::Tls(e) => Fail::Tls(e.clone()),
            ConnectError::Closed => Fail::Closed,
            ConnectError::Timeout => Fail::Timeout,
            e => Fail::Other(e.to_string()),
        };
        let _ = self.tx.send(Ev::Failed(fail));
    }
}

/// A client runtime (one worker) running `requests` with `script`; `frame`: the size the client
/// splits its messages into (0: one frame each).
fn client(
    requests: Vec<ConnectRequest>,
    script: Vec<Vec<u8>>,
    frame: usize,
) -> (ServerHandle, Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let script = Arc::new(script);
    let mut cfg = ServerConfig {
        workers: 1,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        max_backpressure: 64 << 20,
        ..ServerConfig::default()
    };
    cfg.proto.max_send_frame_size = frame;
    let requests = Arc::new(requests);
    let handle = Client::new(cfg)
        .start(move |_| Scripted {
            requests: requests.to_vec(),
            script: Arc::clone(&script),
            tx: tx.lock().unwrap().clone(),
        })
        .unwrap();
    (handle, rx)
}

fn recv(rx: &Receiver<Ev>) -> Ev {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("client event")
}

/// What the server saw: the SNI name of each upgrade, and the code of each close.
#[derive(Default)]
struct Seen {
    names: Mutex<Vec<Option<String>>>,
    /// Whether each upgrade's TLS handshake was resumed.
    resumed: Mutex<Vec<bool>>,
    closes: Mutex<Vec<u16>>,
}

struct Echo(Arc<Seen>);

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
        let name = req.tls().and_then(|t| t.server_name().map(str::to_owned));
        self.0.names.lock().unwrap().push(name);
        let resumed = req.tls().is_some_and(|t| t.resumed());
        self.0.resumed.lock().unwrap().push(resumed);
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
    fn on_close(&mut self, _: &mut WorkerCtx<()>, _: (), info: &CloseInfo<'_>) {
        self.0.closes.lock().unwrap().push(info.code.0);
    }
}

/// A surge echo server: TLS with `tls` (else plain); it splits what it sends into frames of
/// `frame` bytes (0: one frame per message).
fn server(tls: Option<TlsConfig>, frame: usize) -> (ServerHandle, SocketAddr, Arc<Seen>) {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = ServerConfig {
        workers: 1,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        max_backpressure: 64 << 20,
        ..ServerConfig::default()
    };
    let secure = tls.is_some();
    if secure {
        cfg.bind = Vec::new();
        cfg.tls_bind = vec![addr];
        cfg.tls = tls;
    } else {
        cfg.bind = vec![addr];
    }
    cfg.proto.max_send_frame_size = frame;
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    let handle = Server::new(cfg)
        .start(move |_| Echo(Arc::clone(&s)))
        .unwrap();
    let addr = if secure {
        handle.tls_addrs()[0]
    } else {
        handle.local_addrs()[0]
    };
    (handle, addr, seen)
}

/// Text-safe payloads (ASCII) of these sizes: 1 MiB and a 16 KiB record boundary included.
fn script() -> Vec<Vec<u8>> {
    [
        5usize,
        20,
        16 * 1024,
        16 * 1024 + 1,
        1 << 20,
        300_000,
        0,
        512,
    ]
    .iter()
    .map(|&n| (0..n).map(|i| b'a' + ((i * 7 + n) % 26) as u8).collect())
    .collect()
}

/// The connection fails with `want` (what it is, in words) before opening.
fn expect_failure(rx: &Receiver<Ev>, want: &str, ok: impl Fn(&Fail) -> bool) {
    match recv(rx) {
        Ev::Failed(f) if ok(&f) => {}
        ev => panic!("expected {want}, got {ev:?}"),
    }
}

fn echo_both_ways_large_and_fragmented() {
    let pki = Pki::new();
    // The server frames its echoes in 1000-byte pieces, the client its messages in 4 KiB ones.
    let (srv, addr, seen) = server(Some(pki.server_tls(&["localhost"])), 1000);
    let url = format!("wss://localhost:{}/echo", addr.port());
    let req = ConnectRequest::new(url).tls(pki.client_tls());
    let script = script();
    let n = script.len();
    let (cli, rx) = client(vec![req], script, 4096);
    assert!(matches!(recv(&rx), Ev::Open));
    for i in 0..n {
        match recv(&rx) {
            Ev::Echoed(j) => assert_eq!(j, i),
            ev => panic!("expected echo {i}, got {ev:?}"),
        }
    }
    // Our close, the server's answer.
    match recv(&rx) {
        Ev::Closed { code, by_peer } => assert_eq!((code, by_peer), (1000, true)),
        ev => panic!("expected the close, got {ev:?}"),
    }
    assert!(support::wait_until(Duration::from_secs(5), || {
        seen.closes.lock().unwrap().as_slice() == [1000]
    }));
    // SNI: the URL's host.
    assert_eq!(
        seen.names.lock().unwrap().as_slice(),
        [Some("localhost".to_owned())]
    );
    cli.shutdown();
    cli.join().unwrap();
    srv.shutdown();
    srv.join().unwrap();
}

fn unknown_ca_refused() {
    let pki = Pki::new();
    let (srv, addr, seen) = server(Some(pki.server_tls(&["localhost"])), 0);
    // No `tls`: the webpki roots, which do not know the test CA.
    let req = ConnectRequest::new(format!("wss://localhost:{}/", addr.port()));
    let (cli, rx) = client(vec![req], Vec::new(), 0);
    expect_failure(&rx, "an unknown issuer", |f| {
        matches!(
            f,
            Fail::Tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        )
    });
    // A CA of its own that did not sign the server's certificate: the same.
    let other = Pki::new();
    let req =
        ConnectRequest::new(format!("wss://localhost:{}/", addr.port())).tls(other.client_tls());
    let (cli2, rx2) = client(vec![req], Vec::new(), 0);
    expect_failure(&rx2, "an unknown issuer", |f| {
        matches!(
            f,
            Fail::Tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            ))
        )
    });
    assert!(seen.names.lock().unwrap().is_empty(), "nothing upgraded");
    for h in [cli, cli2, srv] {
        h.shutdown();
        h.join().unwrap();
    }
}

fn wrong_server_name_refused() {
    let pki = Pki::new();
    let (srv, addr, seen) = server(Some(pki.server_tls(&["chat.example.com"])), 0);
    let req =
        ConnectRequest::new(format!("wss://localhost:{}/", addr.port())).tls(pki.client_tls());
    let (cli, rx) = client(vec![req], Vec::new(), 0);
    expect_failure(&rx, "a certificate for another name", |f| {
        matches!(
            f,
            Fail::Tls(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        )
    });
    // An IP address is checked as one (the certificate names no address).
    let req =
        ConnectRequest::new(format!("wss://127.0.0.1:{}/", addr.port())).tls(pki.client_tls());
    let (cli2, rx2) = client(vec![req], Vec::new(), 0);
    expect_failure(&rx2, "a certificate without the address", |f| {
        matches!(
            f,
            Fail::Tls(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        )
    });
    assert!(seen.names.lock().unwrap().is_empty(), "nothing upgraded");
    for h in [cli, cli2, srv] {
        h.shutdown();
        h.join().unwrap();
    }
}

fn plain_server_refused() {
    let pki = Pki::new();
    let (srv, addr, _seen) = server(None, 0);
    let req =
        ConnectRequest::new(format!("wss://localhost:{}/", addr.port())).tls(pki.client_tls());
    let (cli, rx) = client(vec![req], Vec::new(), 0);
    // The server answers the ClientHello with an HTTP 400: not a TLS record.
    expect_failure(&rx, "a TLS error (not TLS)", |f| {
        matches!(f, Fail::Tls(rustls::Error::InvalidMessage(_)))
    });
    for h in [cli, srv] {
        h.shutdown();
        h.join().unwrap();
    }
}

/// A raw server: accepts one connection and runs `then` on it (in a thread).
fn raw_server(then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = listener.accept() {
            then(s)
        }
    });
    addr
}

/// Reads the ClientHello's first bytes (at least a record header).
fn read_some(s: &mut std::net::TcpStream) {
    let mut b = [0u8; 5];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 22, "a TLS handshake record");
}

fn server_closes_mid_handshake() {
    let pki = Pki::new();
    let addr = raw_server(|mut s| {
        read_some(&mut s);
        // Gone without a word.
    });
    let req =
        ConnectRequest::new(format!("wss://localhost:{}/", addr.port())).tls(pki.client_tls());
    let (cli, rx) = client(vec![req], Vec::new(), 0);
    expect_failure(&rx, "closed", |f| matches!(f, Fail::Closed));
    cli.shutdown();
    cli.join().unwrap();
}

fn server_truncates_a_record() {
    let pki = Pki::new();
    let addr = raw_server(|mut s| {
        read_some(&mut s);
        // The start of a ServerHello record (handshake, TLS 1.2, 80 bytes), then EOF.
        s.write_all(&[22, 3, 3, 0, 80, 2, 0, 0]).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        std::thread::sleep(Duration::from_millis(500));
    });
    let req =
        ConnectRequest::new(format!("wss://localhost:{}/", addr.port())).tls(pki.client_tls());
    let (cli, rx) = client(vec![req], Vec::new(), 0);
    expect_failure(&rx, "closed", |f| matches!(f, Fail::Closed));
    cli.shutdown();
    cli.join().unwrap();
}

fn handshake_timeout_covers_tls() {
    let pki = Pki::new();
    let addr = raw_server(|mut s| {
        read_some(&mut s);
        std::thread::sleep(Duration::from_secs(3)); // never answers
    });
    let req = ConnectRequest::new(format!("wss://localhost:{}/", addr.port()))
        .tls(pki.client_tls())
        .timeout(Duration::from_millis(300));
    let (cli, rx) = client(vec![req], Vec::new(), 0);
    expect_failure(&rx, "a timeout", |f| matches!(f, Fail::Timeout));
    cli.shutdown();
    cli.join().unwrap();
}

/// rustls + tungstenite as the server: it upgrades, echoes one message, then sends close_notify
/// without a WebSocket close. The client's connection ends with 1006 (not by the peer).
fn close_notify_without_websocket_close() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["localhost"]);
    let (cert, key) = (leaf.cert_pem, leaf.key_pem);
    let tls = TlsConfig::builder()
        .cert_pem(cert.as_bytes(), key.as_bytes())
        .unwrap()
        .build()
        .unwrap();
    let cfg = Arc::clone(tls.rustls_config());
    let addr = raw_server(move |s| {
        let conn = rustls::ServerConnection::new(cfg).unwrap();
        let stream = rustls::StreamOwned::new(conn, s);
        let mut ws = tungstenite::accept(stream).unwrap();
        let m = ws.read().unwrap();
        ws.send(m).unwrap();
        let stream = ws.get_mut();
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        // Wait for the client's end (its close_notify, then EOF).
        let mut b = [0u8; 64];
        while matches!(stream.sock.read(&mut b), Ok(n) if n > 0) {}
    });
    let req =
        ConnectRequest::new(format!("wss://localhost:{}/", addr.port())).tls(pki.client_tls());
    // A script of two: the second message is never echoed.
    let (cli, rx) = client(vec![req], vec![b"one".to_vec(), b"two".to_vec()], 0);
    assert!(matches!(recv(&rx), Ev::Open));
    assert!(matches!(recv(&rx), Ev::Echoed(0)));
    match recv(&rx) {
        Ev::Closed { code, by_peer } => assert_eq!((code, by_peer), (1006, false)),
        ev => panic!("expected an abnormal close, got {ev:?}"),
    }
    cli.shutdown();
    cli.join().unwrap();
}

/// Two connections with one `ClientTlsConfig`, one after the other: the second resumes the
/// first one's session (the server sees a resumed handshake); with `without_resumption`,
/// neither does.
fn resumed_session_on_a_second_connection() {
    let pki = Pki::new();
    let (srv, addr, seen) = server(Some(pki.server_tls(&["localhost"])), 0);
    let url = format!("wss://localhost:{}/", addr.port());
    for resume in [true, false] {
        let tls = if resume {
            pki.client_tls()
        } else {
            pki.client_tls().without_resumption()
        };
        for _ in 0..2 {
            let req = ConnectRequest::new(url.clone()).tls(tls.clone());
            let (cli, rx) = client(vec![req], vec![b"x".to_vec()], 0);
            assert!(matches!(recv(&rx), Ev::Open));
            assert!(matches!(recv(&rx), Ev::Echoed(0)));
            assert!(matches!(recv(&rx), Ev::Closed { code: 1000, .. }));
            cli.shutdown();
            cli.join().unwrap();
        }
    }
    assert_eq!(
        seen.resumed.lock().unwrap().as_slice(),
        [false, true, false, false]
    );
    srv.shutdown();
    srv.join().unwrap();
}
