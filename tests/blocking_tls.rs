//! `surge::blocking` over rustls (`rustls::StreamOwned`, as the module docs show): the blocking
//! client against surge's own TLS server (the engine), and the blocking server against a
//! tungstenite client over rustls. Certificates are made at test time (`support::pki`).

mod support;

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use surge::blocking::{Dialer, Error, MessageType, Upgrader};
use surge::tls::{rustls, ClientTlsConfig, TlsConfig};
use surge::{Accept, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade};

/// A test CA's certificate for `localhost` (server side) and a client configuration trusting
/// that CA.
fn pki() -> (TlsConfig, ClientTlsConfig) {
    let pki = support::pki::Pki::new();
    let client = ClientTlsConfig::with_ca_pem(pki.ca_pem().as_bytes()).unwrap();
    (pki.server_tls(&["localhost"]), client)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A rustls client stream to `localhost:port`, checked against `tls`.
fn tls_client(
    tls: &ClientTlsConfig,
    port: u16,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(tls.rustls_config()), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

struct Echo;

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
        assert!(req.is_tls());
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

#[test]
fn blocking_client_over_rustls_against_the_engine() {
    let (server_tls, client_tls) = pki();
    let cfg = ServerConfig {
        bind: Vec::new(),
        tls_bind: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Some(server_tls),
        workers: 1,
        max_backpressure: 64 << 20,
        ..ServerConfig::default()
    };
    let server = Server::new(cfg).start(|_| Echo).unwrap();
    let port = server.tls_addrs()[0].port();
    let stream = tls_client(&client_tls, port);
    let url = format!("wss://localhost:{port}/echo");
    let (mut conn, _response) = Dialer::default().dial_stream(stream, &url).unwrap();
    conn.set_read_deadline(Some(Instant::now() + Duration::from_secs(10)))
        .unwrap();
    conn.write_message(MessageType::Text, b"hello").unwrap();
    assert_eq!(
        conn.read_message().unwrap(),
        (MessageType::Text, b"hello".to_vec())
    );
    let big = payload(1 << 20);
    conn.write_message(MessageType::Binary, &big).unwrap();
    let (kind, echo) = conn.read_message().unwrap();
    assert_eq!(kind, MessageType::Binary);
    assert!(echo == big, "1 MiB echoed intact");
    // A fragmented message (next_writer writes frames as its buffer fills).
    {
        use std::io::Write;
        let mut w = conn.next_writer(MessageType::Binary).unwrap();
        for piece in big.chunks(10_000) {
            w.write_all(piece).unwrap();
        }
        w.close().unwrap();
    }
    let (_, echo) = conn.read_message().unwrap();
    assert!(echo == big, "the fragmented message echoed intact");
    // The close handshake: the server answers our close.
    conn.write_close(surge::blocking::CloseCode::NORMAL, "bye")
        .unwrap();
    match conn.read_message() {
        Err(Error::Close(c)) => assert_eq!(c.code, surge::blocking::CloseCode::NORMAL),
        other => panic!("expected the server's close, got {other:?}"),
    }
    // Deadlines reach the socket under TLS (a read error ends a connection: a second one).
    let stream = tls_client(&client_tls, port);
    let (mut conn, _) = Dialer::default().dial_stream(stream, &url).unwrap();
    conn.set_read_deadline(Some(Instant::now() + Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    assert!(matches!(conn.read_message(), Err(Error::Timeout)));
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(conn);
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn blocking_server_over_rustls_against_tungstenite() {
    let (server_tls, client_tls) = pki();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rustls_server = Arc::clone(server_tls.rustls_config());
    let served = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let session = rustls::ServerConnection::new(rustls_server).unwrap();
        let stream = rustls::StreamOwned::new(session, tcp);
        let mut conn = Upgrader::default().upgrade(stream).unwrap();
        conn.set_read_deadline(Some(Instant::now() + Duration::from_secs(10)))
            .unwrap();
        let mut echoed = 0;
        loop {
            match conn.read_message() {
                Ok((kind, data)) => {
                    conn.write_message(kind, &data).unwrap();
                    echoed += 1;
                }
                Err(e) => return (echoed, e),
            }
        }
    });
    let stream = tls_client(&client_tls, port);
    let url = format!("wss://localhost:{port}/");
    let (mut ws, _) = tungstenite::client::client(url, stream).unwrap();
    let big = payload(1 << 20);
    ws.send(tungstenite::Message::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("hi"));
    ws.send(tungstenite::Message::binary(big.clone())).unwrap();
    assert!(ws.read().unwrap().into_data() == big, "1 MiB echoed intact");
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
    drop(ws);
    let (echoed, end) = served.join().unwrap();
    assert_eq!(echoed, 2);
    assert!(matches!(end, Error::Close(_)), "ended with {end:?}");
}
