//! The engine's client (`WorkerCtx::connect`, `Client`): against the engine's server on both
//! drivers (generated once per driver by `per_driver!` of tests/support, and on io_uring once more
//! with `UringRecv::PollThenRecv`), against a
//! tungstenite server, a refused upgrade, the handshake timeout, a refused connect and source
//! address binding.

#[macro_use]
mod support;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surge::{
    proto::{DeflateConfig, DeflateMode},
    Accept, Backend, Client, CloseCode, CloseInfo, Conn, ConnId, ConnectError, ConnectRequest,
    Handler, Message, Rejection, Request, Server, ServerConfig, ServerHandle, Upgrade, WorkerCtx,
};

per_driver!(
    echo_against_the_engine_server,
    refused_upgrade_reports_status,
    compressed_echo_against_the_engine_server,
    reconnect_from_on_close_is_refused_during_shutdown,
);

/// What the client saw.
#[derive(Debug)]
enum Ev {
    Open {
        subprotocol: Option<String>,
        /// permessage-deflate was negotiated.
        compressed: bool,
    },
    /// A connection went through its whole script and closed.
    Done {
        code: u16,
    },
    Failed {
        status: Option<u16>,
        error: String,
    },
}

/// Opens every request at start; each open connection sends `script` one message at a time,
/// checks each echo, then closes with 1000.
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
        let _ = self.tx.send(Ev::Open {
            subprotocol: conn.subprotocol().map(str::to_owned),
            compressed: conn.compression(),
        });
        assert!(conn.send_binary(&self.script[0]).is_queued());
    }

    fn on_message(&mut self, conn: &mut Conn<'_, usize>, msg: Message<'_>) {
        let i = *conn.data();
        let got = match msg {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
        };
        assert_eq!(got.len(), self.script[i].len(), "message {i}");
        assert!(got == &self.script[i][..], "message {i} intact");
        *conn.data_mut() = i + 1;
        if i + 1 < self.script.len() {
            assert!(conn.send_binary(&self.script[i + 1]).is_queued());
        } else {
            let _ = conn.close(CloseCode::NORMAL, "done");
        }
    }

    fn on_close(&mut self, _worker: &mut WorkerCtx<usize>, sent: usize, info: &CloseInfo<'_>) {
        assert_eq!(sent, self.script.len(), "closed before the script's end");
        let _ = self.tx.send(Ev::Done { code: info.code.0 });
    }

    fn on_connect_error(
        &mut self,
        _worker: &mut WorkerCtx<usize>,
        _id: ConnId,
        _data: usize,
        error: &ConnectError,
    ) {
        let _ = self.tx.send(Ev::Failed {
            status: error.status(),
            error: error.to_string(),
        });
    }
}

fn run_client(
    backend: Backend,
    workers: usize,
    requests: Vec<ConnectRequest>,
    script: Vec<Vec<u8>>,
) -> (ServerHandle, Receiver<Ev>) {
    run_client_with(backend, workers, requests, script, DeflateConfig::default())
}

fn run_client_with(
    backend: Backend,
    workers: usize,
    requests: Vec<ConnectRequest>,
    script: Vec<Vec<u8>>,
    deflate: DeflateConfig,
) -> (ServerHandle, Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let script = Arc::new(script);
    let cfg = ServerConfig {
        workers,
        backend,
        uring_recv: support::uring_recv(),
        max_backpressure: 64 << 20,
        deflate,
        ..ServerConfig::default()
    };
    let per_worker = requests.len().div_ceil(workers);
    let requests = Arc::new(requests);
    let client = Client::new(cfg)
        .start(move |i| Scripted {
            requests: requests
                .iter()
                .skip(i * per_worker)
                .take(per_worker)
                .cloned()
                .collect(),
            script: Arc::clone(&script),
            tx: tx.lock().unwrap().clone(),
        })
        .unwrap();
    assert_eq!(client.backend(), backend);
    assert!(client.local_addrs().is_empty());
    (client, rx)
}

fn recv(rx: &Receiver<Ev>) -> Ev {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("client event")
}

struct Echo;
impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
        if req.path() == "/deny" {
            return Upgrade::Reject(Rejection::new(403, "no"));
        }
        let mut a = Accept::new(());
        if req.protocols().any(|p| p == "chat") {
            a.subprotocol = Some("chat".into());
        }
        Upgrade::Accept(a)
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn server(backend: Backend) -> ServerHandle {
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend,
        uring_recv: support::uring_recv(),
        max_backpressure: 64 << 20,
        ..ServerConfig::default()
    };
    Server::new(cfg).start(|_| Echo).unwrap()
}

fn script() -> Vec<Vec<u8>> {
    [0usize, 1, 125, 126, 65535, 65536, 300_000, 2 << 20, 20]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
        .collect()
}

fn echo_against_the_engine_server(backend: Backend) {
    let server = server(backend);
    let url = format!("ws://{}/echo?x=1", server.local_addr());
    let n = 40;
    let requests = (0..n)
        .map(|i| {
            let r = ConnectRequest::new(url.clone()).header("X-Test", "1");
            if i % 2 == 0 {
                r.subprotocol("chat")
            } else {
                r
            }
        })
        .collect();
    let (client, rx) = run_client(backend, 2, requests, script());
    let (mut opened, mut chat, mut done) = (0, 0, 0);
    while done < n {
        match recv(&rx) {
            Ev::Open { subprotocol, .. } => {
                opened += 1;
                chat += usize::from(subprotocol.as_deref() == Some("chat"));
            }
            Ev::Done { code } => {
                assert_eq!(code, 1000, "the server's close echo");
                done += 1;
            }
            Ev::Failed { error, .. } => panic!("connect failed: {error}"),
        }
    }
    assert_eq!((opened, chat), (n, n / 2));
    client.shutdown();
    client.join().unwrap();
    server.shutdown();
    server.join().unwrap();
}

fn refused_upgrade_reports_status(backend: Backend) {
    let server = server(backend);
    let url = format!("ws://{}/deny", server.local_addr());
    let (client, rx) = run_client(backend, 1, vec![ConnectRequest::new(url)], script());
    match recv(&rx) {
        Ev::Failed { status, error } => assert_eq!(status, Some(403), "{error}"),
        other => panic!("{other:?}"),
    }
    client.shutdown();
    client.join().unwrap();
    server.shutdown();
    server.join().unwrap();
}

#[test]
fn against_a_tungstenite_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(s).unwrap();
        loop {
            match ws.read() {
                Ok(m @ (tungstenite::Message::Binary(_) | tungstenite::Message::Text(_))) => {
                    ws.send(m).unwrap()
                }
                Ok(tungstenite::Message::Close(_)) => {
                    // Flushes tungstenite's close echo.
                    let _ = ws.flush();
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    let url = format!("ws://{addr}/");
    let (client, rx) = run_client(Backend::Epoll, 1, vec![ConnectRequest::new(url)], script());
    assert!(matches!(recv(&rx), Ev::Open { .. }));
    match recv(&rx) {
        Ev::Done { code } => assert_eq!(code, 1000),
        other => panic!("{other:?}"),
    }
    peer.join().unwrap();
    client.shutdown();
    client.join().unwrap();
}

#[test]
fn handshake_timeout_and_refused_connect() {
    // Accepts (the kernel's backlog does) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("ws://{}/", silent.local_addr().unwrap());
    // Nobody listens here.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("ws://{}/", closed.local_addr().unwrap());
    drop(closed);
    let started = Instant::now();
    let requests = vec![
        ConnectRequest::new(silent_url).timeout(Duration::from_millis(300)),
        ConnectRequest::new(closed_url),
    ];
    let (client, rx) = run_client(Backend::Epoll, 1, requests, script());
    let mut errors = vec![recv(&rx), recv(&rx)]
        .into_iter()
        .map(|e| match e {
            Ev::Failed { error, .. } => error,
            other => panic!("{other:?}"),
        })
        .collect::<Vec<_>>();
    errors.sort();
    assert!(errors[0].contains("connect failed"), "{errors:?}");
    assert!(errors[1].contains("timed out"), "{errors:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    client.shutdown();
    client.join().unwrap();
}

/// Records the peer address of each upgrade request.
struct Peers(Sender<SocketAddr>);
impl Handler for Peers {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
        let _ = self.0.send(req.peer().unwrap());
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

#[test]
fn source_address_binding() {
    let (ptx, prx) = mpsc::channel();
    let ptx = Mutex::new(ptx);
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        ..ServerConfig::default()
    };
    let server = Server::new(cfg)
        .start(move |_| Peers(ptx.lock().unwrap().clone()))
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let sources: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.1.2.3"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let requests = sources
        .iter()
        .map(|&s| ConnectRequest::new(url.clone()).source(s))
        .collect();
    let (client, rx) = run_client(Backend::Epoll, 1, requests, vec![b"hi".to_vec()]);
    let mut seen: Vec<IpAddr> = (0..3)
        .map(|_| prx.recv_timeout(Duration::from_secs(10)).unwrap().ip())
        .collect();
    seen.sort();
    assert_eq!(seen, sources);
    for _ in 0..3 {
        loop {
            match recv(&rx) {
                Ev::Open { .. } => continue,
                Ev::Done { .. } => break,
                Ev::Failed { error, .. } => panic!("{error}"),
            }
        }
    }
    client.shutdown();
    client.join().unwrap();
    server.shutdown();
    server.join().unwrap();
}

/// Echoes every message; reports on each open whether permessage-deflate was negotiated.
struct DeflateEcho(Sender<bool>);
impl Handler for DeflateEcho {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        let _ = self.0.send(conn.compression());
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn deflate_server(backend: Backend, mode: DeflateMode) -> (ServerHandle, Receiver<bool>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend,
        uring_recv: support::uring_recv(),
        max_backpressure: 64 << 20,
        deflate: DeflateConfig {
            mode,
            ..DeflateConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::new(cfg)
        .start(move |_| DeflateEcho(tx.lock().unwrap().clone()))
        .unwrap();
    (server, rx)
}

/// Compressible messages of every size class (JSON-like text as binary), and incompressible ones.
fn deflate_script() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [0usize, 10, 63, 64, 200, 4096, 70_000, 1 << 20]
        .iter()
        .map(|&n| {
            let unit = b"{\"user\":\"alice\",\"seq\":12345,\"text\":\"hello\"}";
            (0..n).map(|i| unit[i % unit.len()]).collect()
        })
        .collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    out.push(
        (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
    );
    out.push(b"last".to_vec());
    out
}

fn compressed_echo_against_the_engine_server(backend: Backend) {
    let takeover = DeflateMode::ContextTakeover {
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let small_window = DeflateMode::ContextTakeover {
        server_max_window_bits: 10,
        client_max_window_bits: 9,
    };
    // (server mode, client mode: from the request or, for None, the client's configuration)
    let cases = [
        (takeover, Some(takeover)),
        (
            DeflateMode::NoContextTakeover,
            Some(DeflateMode::NoContextTakeover),
        ),
        (takeover, Some(DeflateMode::NoContextTakeover)),
        (DeflateMode::NoContextTakeover, Some(takeover)),
        (small_window, Some(takeover)),
        (takeover, Some(small_window)),
        (takeover, None),
    ];
    for (server_mode, client_mode) in cases {
        let (server, opened) = deflate_server(backend, server_mode);
        let url = format!("ws://{}/", server.local_addr());
        let n = 6;
        let requests = (0..n)
            .map(|i| {
                let mut r = ConnectRequest::new(url.clone());
                if i % 2 == 1 {
                    // We compress each message alone; the server keeps its context.
                    r = r.client_no_context_takeover();
                }
                match client_mode {
                    Some(m) => r.compression(m),
                    None => r,
                }
            })
            .collect();
        let client_cfg = DeflateConfig {
            mode: client_mode.unwrap_or(takeover),
            ..DeflateConfig::default()
        };
        let (client, rx) = run_client_with(backend, 2, requests, deflate_script(), client_cfg);
        let mut done = 0;
        while done < n {
            match recv(&rx) {
                Ev::Open { compressed, .. } => {
                    assert!(compressed, "{server_mode:?} / {client_mode:?}: client side")
                }
                Ev::Done { code } => {
                    assert_eq!(code, 1000);
                    done += 1;
                }
                Ev::Failed { error, .. } => panic!("connect failed: {error}"),
            }
        }
        for _ in 0..n {
            assert!(
                opened.recv_timeout(Duration::from_secs(10)).unwrap(),
                "{server_mode:?} / {client_mode:?}: server side"
            );
        }
        client.shutdown();
        client.join().unwrap();
        server.shutdown();
        server.join().unwrap();
    }
}

#[test]
fn compression_declined_by_the_server() {
    let (server, opened) = deflate_server(Backend::Epoll, DeflateMode::Disabled);
    let url = format!("ws://{}/", server.local_addr());
    let req = ConnectRequest::new(url).compression(DeflateMode::NoContextTakeover);
    let (client, rx) = run_client(Backend::Epoll, 1, vec![req], deflate_script());
    match recv(&rx) {
        Ev::Open { compressed, .. } => assert!(!compressed),
        other => panic!("{other:?}"),
    }
    assert!(matches!(recv(&rx), Ev::Done { code: 1000 }));
    assert!(!opened.recv_timeout(Duration::from_secs(10)).unwrap());
    client.shutdown();
    client.join().unwrap();
    server.shutdown();
    server.join().unwrap();
}

/// A server whose 101 answers the offer wrongly: the connection fails with a handshake error.
#[test]
fn invalid_deflate_response_fails_the_connection() {
    use std::io::{BufRead, BufReader, Write};
    let bad = [
        // client_max_window_bits without a value, in a response.
        "permessage-deflate; client_max_window_bits",
        // server_no_context_takeover was offered (NoContextTakeover) and must be echoed.
        "permessage-deflate; client_no_context_takeover",
        // An unknown parameter.
        "permessage-deflate; server_no_context_takeover; foo=1",
    ];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        for ext in bad {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut key = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(k) = line.to_ascii_lowercase().strip_prefix("sec-websocket-key:") {
                    key = line[line.len() - k.len()..].trim().to_owned();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut s = s;
            write!(
                s,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n"
            )
            .unwrap();
            // Held until the client gives up on it.
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        }
    });
    let url = format!("ws://{addr}/");
    let requests = (0..3)
        .map(|_| ConnectRequest::new(url.clone()).compression(DeflateMode::NoContextTakeover))
        .collect();
    // One worker connects all three at once; the peer answers them in turn.
    let (client, rx) = run_client(Backend::Epoll, 1, requests, script());
    for _ in 0..3 {
        match recv(&rx) {
            Ev::Failed { status, error } => {
                assert_eq!(status, None);
                assert!(error.contains("permessage-deflate"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
    peer.join().unwrap();
    client.shutdown();
    client.join().unwrap();
}

/// A response that arrives over several reads (held by the worker between them) or in one read
/// (parsed in place), with a frame right behind it in its last read: the connection opens and the
/// frame is its first message.
#[test]
fn response_in_pieces_with_a_frame_behind() {
    use std::io::{BufRead, BufReader, Read, Write};
    let cuts = [vec![], vec![30], vec![1, 30, 90]];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        for cuts in cuts {
            let (s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut key = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(k) = line.to_ascii_lowercase().strip_prefix("sec-websocket-key:") {
                    key = line[line.len() - k.len()..].trim().to_owned();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut bytes = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            // The echo the client expects, before it has even sent its message.
            bytes.extend_from_slice(b"\x82\x02hi");
            let mut s = s;
            let mut at = 0;
            for cut in cuts.iter().copied().chain([bytes.len()]) {
                s.write_all(&bytes[at..cut]).unwrap();
                at = cut;
                std::thread::sleep(Duration::from_millis(30));
            }
            // The client's frames (masked, short): its message, then its close, answered.
            loop {
                let mut head = [0u8; 6];
                r.read_exact(&mut head).unwrap();
                assert_eq!(head[1] & 0x80, 0x80, "masked");
                let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
                r.read_exact(&mut payload).unwrap();
                if head[0] & 0x0f == 8 {
                    s.write_all(b"\x88\x02\x03\xe8").unwrap();
                    break;
                }
            }
        }
    });
    let url = format!("ws://{addr}/");
    let requests = (0..3).map(|_| ConnectRequest::new(url.clone())).collect();
    // One worker connects all three at once; the peer answers them in turn.
    let (client, rx) = run_client(Backend::Epoll, 1, requests, vec![b"hi".to_vec()]);
    for _ in 0..3 {
        match recv(&rx) {
            Ev::Open { .. } => {}
            other => panic!("{other:?}"),
        }
        match recv(&rx) {
            Ev::Done { code } => assert_eq!(code, 1000),
            other => panic!("{other:?}"),
        }
    }
    peer.join().unwrap();
    client.shutdown();
    client.join().unwrap();
}

/// Reconnects from `on_close`; reports each connect attempt's outcome.
struct Reconnecting {
    url: String,
    tx: Sender<Result<(), String>>,
}

impl Handler for Reconnecting {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Reject(Rejection::new(404, "client only"))
    }
    fn on_start(&mut self, worker: &mut WorkerCtx<()>) {
        worker.connect(&ConnectRequest::new(&self.url), ()).unwrap();
    }
    fn on_open(&mut self, _conn: &mut Conn<'_, ()>) {
        let _ = self.tx.send(Ok(()));
    }
    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: Message<'_>) {}
    fn on_close(&mut self, worker: &mut WorkerCtx<()>, _data: (), _info: &CloseInfo<'_>) {
        let r = worker.connect(&ConnectRequest::new(&self.url), ());
        let _ = self.tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
    }
}

/// A reconnect from `on_close` while the client shuts down is refused (it would otherwise hold
/// the worker until the shutdown deadline and then be dropped without a callback).
fn reconnect_from_on_close_is_refused_during_shutdown(backend: Backend) {
    let server = server(backend);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let url = format!("ws://{}/", server.local_addr());
    let cfg = ServerConfig {
        workers: 1,
        backend,
        shutdown_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    };
    let client = Client::new(cfg)
        .start(move |_| Reconnecting {
            url: url.clone(),
            tx: tx.lock().unwrap().clone(),
        })
        .unwrap();
    assert_eq!(recv_any(&rx), Ok(()), "opened");
    let started = Instant::now();
    client.shutdown();
    let refused = recv_any(&rx).expect_err("a reconnect during shutdown is refused");
    assert!(refused.contains("shutting down"), "{refused}");
    client.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the client stopped without waiting for its 30 s shutdown deadline"
    );
    server.shutdown();
    server.join().unwrap();
}

fn recv_any<T>(rx: &Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(30)).expect("event")
}
