//! Deferred upgrades (`Upgrade::defer` / `PendingUpgrade`), once per driver (`per_driver!`):
//! accepted and rejected from another thread, bytes held meanwhile, and the races: a decision after
//! the client left, after the handshake timeout, after too many early bytes, a handle dropped
//! undecided, a decision from another thread while the server shuts down.
//!
//! Run without `SURGE_BACKEND` or `SURGE_URING_RECV` set: they override the configured driver.

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use support::{encode_frame, upgrade_request, wait_until, RawClient, READ_TIMEOUT};
use surge::{
    Accept, CloseInfo, Conn, HandleError, Handler, Message, PendingUpgrade, Rejection, Request,
    Server, ServerConfig, ServerHandle, Upgrade, WorkerCtx,
};

/// A pending upgrade and the path its request asked for.
type Pending = (String, PendingUpgrade<String>);

#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    closed: AtomicUsize,
}

/// Defers every upgrade (the decision is the test's), except for a path starting with `/now`,
/// which is accepted inside the `defer` closure, on the worker. Echoes `data: message`.
struct Deferring {
    pending: Sender<Pending>,
    counts: Arc<Counts>,
}

impl Handler for Deferring {
    type Data = String;
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<String> {
        let path = req.path().to_owned();
        let tx = self.pending.clone();
        Upgrade::defer(move |pending| {
            if path.starts_with("/now") {
                pending.accept(Accept::new(path)).expect("accepted at once");
            } else {
                let _ = tx.send((path, pending));
            }
        })
    }
    fn on_open(&mut self, _conn: &mut Conn<'_, String>) {
        self.counts.opened.fetch_add(1, Ordering::Relaxed);
    }
    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let reply = format!(
            "{}: {}",
            conn.data(),
            String::from_utf8_lossy(msg.as_bytes())
        );
        let _ = conn.send_text(&reply);
    }
    fn on_close(&mut self, _: &mut WorkerCtx<String>, _: String, _: &CloseInfo<'_>) {
        self.counts.closed.fetch_add(1, Ordering::Relaxed);
    }
}

struct Fixture {
    server: ServerHandle,
    addr: SocketAddr,
    pending: Receiver<Pending>,
    counts: Arc<Counts>,
}

fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> Fixture {
    let mut cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    };
    tune(&mut cfg);
    let (tx, rx) = mpsc::channel();
    let counts = Arc::new(Counts::default());
    let c = Arc::clone(&counts);
    let server = Server::new(cfg)
        .start(move |_| Deferring {
            pending: tx.clone(),
            counts: Arc::clone(&c),
        })
        .expect("server starts");
    let addr = server.local_addr();
    Fixture {
        server,
        addr,
        pending: rx,
        counts,
    }
}

fn start() -> Fixture {
    start_with(|_| {})
}

impl Fixture {
    fn next_pending(&self) -> Pending {
        self.pending
            .recv_timeout(READ_TIMEOUT)
            .expect("the upgrade was deferred")
    }

    fn stop(self) {
        self.server.shutdown();
        self.server.join().expect("server stops cleanly");
    }
}

/// A client that sent its upgrade request and waits for the answer.
fn send_request(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(upgrade_request(addr, path, "").as_bytes())
        .unwrap();
    s
}

/// Reads until EOF (or reset): the whole response.
fn read_to_end(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading: {e} (got {:?})", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads the response head (up to the blank line), leaving what follows in the socket... and in
/// the returned remainder.
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(i + 4);
            return (String::from_utf8_lossy(&got).into_owned(), rest);
        }
        let n = s.read(&mut buf).expect("reading the response head");
        assert!(n > 0, "closed before the response head");
        got.extend_from_slice(&buf[..n]);
    }
}

// ---------------------------------------------------------------------------------------------

/// Accepted from the test thread: 101 with the handler's headers, `on_open`, data in the slot.
fn accept_from_another_thread() {
    let f = start();
    let client = std::thread::spawn({
        let addr = f.addr;
        move || {
            let mut c = RawClient::connect(addr, "/room/7");
            assert!(c.response.contains("x-user: ada"), "{}", c.response);
            c.send(true, 1, b"hi");
            let reply = c.expect_frame();
            assert_eq!(reply.payload, b"/room/7: hi");
        }
    });
    let (path, pending) = f.next_pending();
    assert_eq!(path, "/room/7");
    assert!(pending.is_pending());
    let decider = std::thread::spawn(move || {
        let mut accept = Accept::new(path);
        accept.headers.push(("x-user".into(), "ada".into()));
        pending.accept(accept)
    });
    decider.join().unwrap().expect("accepted");
    client.join().unwrap();
    assert_eq!(f.counts.opened.load(Ordering::Relaxed), 1);
    f.stop();
}

/// Accepted inside the `defer` closure, on the worker itself.
fn accept_at_once_in_the_closure() {
    let f = start();
    let mut c = RawClient::connect(f.addr, "/now");
    c.send(true, 1, b"x");
    assert_eq!(c.expect_frame().payload, b"/now: x");
    drop(c);
    f.stop();
}

/// Rejected from another thread: the status, headers and body, then the connection closes.
fn reject_from_another_thread() {
    let f = start();
    let mut s = send_request(f.addr, "/private");
    let (_, pending) = f.next_pending();
    let mut r = Rejection::new(401, "bad token");
    r.headers.push(("WWW-Authenticate".into(), "Bearer".into()));
    std::thread::spawn(move || pending.reject(r))
        .join()
        .unwrap()
        .expect("rejected");
    let response = read_to_end(&mut s);
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("WWW-Authenticate: Bearer"), "{response}");
    assert!(response.ends_with("bad token"), "{response}");
    assert_eq!(f.counts.opened.load(Ordering::Relaxed), 0);
    drop(s);
    f.stop();
}

/// A handle dropped without a decision: 500, and the server carries on.
fn dropped_undecided_is_500() {
    let f = start();
    let mut s = send_request(f.addr, "/drop");
    drop(f.next_pending());
    let response = read_to_end(&mut s);
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    let mut ok = RawClient::connect(f.addr, "/now/after");
    ok.send(true, 1, b"still");
    assert_eq!(ok.expect_frame().payload, b"/now/after: still");
    drop((s, ok));
    f.stop();
}

/// The client leaves before the decision: everything is freed, a late accept is `Closed` and
/// `on_open` never runs.
fn client_leaves_before_the_decision() {
    let f = start();
    let s = send_request(f.addr, "/gone");
    let (path, pending) = f.next_pending();
    drop(s);
    assert!(
        wait_until(Duration::from_secs(5), || !pending.is_pending()),
        "the worker saw the client leave"
    );
    assert_eq!(pending.accept(Accept::new(path)), Err(HandleError::Closed));
    assert!(wait_until(Duration::from_secs(5), || f
        .server
        .socket_count()
        == 0));
    assert_eq!(f.counts.opened.load(Ordering::Relaxed), 0);
    f.stop();
}

/// The handshake timeout still applies while the application decides.
fn handshake_timeout_while_deferred() {
    let f = start_with(|cfg| cfg.handshake_timeout = Duration::from_millis(300));
    let mut s = send_request(f.addr, "/slow");
    let (path, pending) = f.next_pending();
    // The server closes without an answer at the timeout.
    assert_eq!(read_to_end(&mut s), "");
    assert!(!pending.is_pending());
    assert_eq!(pending.accept(Accept::new(path)), Err(HandleError::Closed));
    assert_eq!(f.counts.opened.load(Ordering::Relaxed), 0);
    f.stop();
}

/// Frames sent right behind the request (before the 101) wait in the slot and are read once the
/// upgrade is accepted.
fn early_frames_are_held_until_accepted() {
    let f = start();
    let mut s = send_request(f.addr, "/eager");
    let (path, pending) = f.next_pending();
    s.write_all(&encode_frame(true, 0, 1, b"early")).unwrap();
    // Give the worker the bytes before the decision (they are held, not parsed).
    std::thread::sleep(Duration::from_millis(50));
    pending.accept(Accept::new(path)).expect("accepted");
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut c = RawClient::from_stream(s);
    let reply = if rest.is_empty() {
        c.expect_frame()
    } else {
        support::parse_frame(&rest).expect("a whole frame").0
    };
    assert_eq!(reply.payload, b"/eager: early");
    drop(c);
    f.stop();
}

/// More than `max_handshake_size` bytes while deferred: closed; the late accept is `Closed`.
fn early_bytes_are_bounded() {
    let f = start_with(|cfg| cfg.max_handshake_size = 1024);
    let mut s = send_request(f.addr, "/flood");
    let (path, pending) = f.next_pending();
    let _ = s.write_all(&encode_frame(true, 0, 2, &[7u8; 2000]));
    assert!(
        wait_until(Duration::from_secs(5), || !pending.is_pending()),
        "the flooding client was closed"
    );
    assert_eq!(read_to_end(&mut s), "");
    assert_eq!(pending.accept(Accept::new(path)), Err(HandleError::Closed));
    f.stop();
}

/// Decisions from another thread while the server shuts down: each is `Ok` (it reached the
/// mailbox first), `Closed` or `Stopped`; nothing hangs or leaks, and after the shutdown every
/// decision fails.
fn decisions_racing_shutdown() {
    // The accepted ones' clients never answer the 1001 close: the shutdown waits this long.
    let f = start_with(|cfg| cfg.shutdown_timeout = Duration::from_millis(300));
    let clients: Vec<TcpStream> = (0..20)
        .map(|i| send_request(f.addr, &format!("/race/{i}")))
        .collect();
    let pendings: Vec<Pending> = (0..20).map(|_| f.next_pending()).collect();
    let (early, late): (Vec<_>, Vec<_>) = pendings
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let decider = std::thread::spawn(move || {
        for (_, (path, p)) in early {
            match p.accept(Accept::new(path)) {
                Ok(()) | Err(HandleError::Closed) | Err(HandleError::Stopped) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    });
    f.server.shutdown();
    decider.join().unwrap();
    f.server.join().expect("server stops cleanly");
    for (_, (path, p)) in late {
        assert!(!p.is_pending());
        assert!(p.accept(Accept::new(path)).is_err());
    }
    drop(clients);
}

per_driver!(
    accept_from_another_thread,
    accept_at_once_in_the_closure,
    reject_from_another_thread,
    dropped_undecided_is_500,
    client_leaves_before_the_decision,
    handshake_timeout_while_deferred,
    early_frames_are_held_until_accepted,
    early_bytes_are_bounded,
    decisions_racing_shutdown,
);
