//! Driver tests, generated once per driver (epoll and io_uring) by `per_driver!`; the io_uring
//! versions are skipped with a message where the kernel refuses io_uring.
//!
//! - Message sizes from 1 B to 16 MiB echo intact: received data spans many provided buffers
//!   (uWebSockets' io_uring backend silently drops messages over about 2 KB).
//! - Many connections sending at once exhaust the provided-buffer ring (ENOBUFS): every byte still
//!   arrives.
//! - Churn: thousands of clients that connect, send part of a message (or ask for a large echo)
//!   and disconnect mid-way, while sends are in flight; the server keeps serving and every
//!   `on_open` gets its `on_close`.
//!
//! - Direct descriptors: io_uring connections use no process descriptor (and `io_uring_fds` runs
//!   every test again with them off), and the peer's address is still known (IPv4 and IPv6).
//!
//! Run without `SURGE_BACKEND` set: that variable overrides the configured backend.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use surge::{
    Accept, Backend, CloseInfo, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade,
    UringRecv,
};

thread_local! {
    /// `ServerConfig::uring_direct_descriptors` for the servers this test thread starts.
    static DIRECT: Cell<bool> = const { Cell::new(true) };
    /// `ServerConfig::uring_recv` for the servers this test thread starts.
    static RECV: Cell<UringRecv> = const { Cell::new(UringRecv::Multishot) };
    /// `ServerConfig::uring_ring_slots` for the servers this test thread starts.
    static SLOTS: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Generates `mod epoll { #[test] fn name() }`, `mod io_uring { #[test] fn name() }` (direct
/// descriptors where the kernel has them) and `mod io_uring_fds { #[test] fn name() }` (ordinary
/// descriptors) and `mod io_uring_poll { #[test] fn name() }` (direct descriptors, receiving through
/// a readiness poll: `UringRecv::PollThenRecv`) and `mod io_uring_rings { #[test] fn name() }`
/// (direct descriptors in tables of 16 slots, so that connections spread over several rings per
/// worker) for each `fn name(backend: Backend)` listed.
macro_rules! per_driver {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(#[test] fn $name() { super::$name(surge::Backend::Epoll) })*
        }
        mod io_uring {
            $(#[test] fn $name() {
                if let Err(why) = surge::Backend::io_uring_support() {
                    eprintln!("SKIPPED {}: io_uring unavailable: {why}", stringify!($name));
                    return;
                }
                super::$name(surge::Backend::IoUring)
            })*
        }
        mod io_uring_fds {
            $(#[test] fn $name() {
                if let Err(why) = surge::Backend::io_uring_support() {
                    eprintln!("SKIPPED {}: io_uring unavailable: {why}", stringify!($name));
                    return;
                }
                super::DIRECT.with(|d| d.set(false));
                super::$name(surge::Backend::IoUring)
            })*
        }
        mod io_uring_poll {
            $(#[test] fn $name() {
                if let Err(why) = surge::Backend::io_uring_support() {
                    eprintln!("SKIPPED {}: io_uring unavailable: {why}", stringify!($name));
                    return;
                }
                super::RECV.with(|r| r.set(surge::UringRecv::PollThenRecv));
                super::$name(surge::Backend::IoUring)
            })*
        }
        mod io_uring_rings {
            $(#[test] fn $name() {
                if let Err(why) = surge::Backend::io_uring_support() {
                    eprintln!("SKIPPED {}: io_uring unavailable: {why}", stringify!($name));
                    return;
                }
                super::SLOTS.with(|s| s.set(Some(16)));
                super::$name(surge::Backend::IoUring)
            })*
        }
    };
}

per_driver!(
    sizes_1b_to_16mib_echo_intact,
    provided_buffer_exhaustion_loses_nothing,
    churn_disconnect_mid_message_and_mid_send,
    connections_use_process_fds_unless_direct,
    peer_address_ipv6,
    clean_closes_then_new_handshakes,
    listeners_close_when_shutdown_begins,
);

#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    closed: AtomicUsize,
}

struct Echo(Arc<Counts>);

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_open(&mut self, _conn: &mut Conn<'_, ()>) {
        self.0.opened.fetch_add(1, Ordering::Relaxed);
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
    fn on_close(&mut self, _worker: &mut surge::WorkerCtx<()>, _data: (), _info: &CloseInfo<'_>) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
    }
}

fn start(backend: Backend, workers: usize) -> (surge::ServerHandle, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers,
        backend,
        // Room for a 16 MiB echo in one message.
        max_backpressure: 64 << 20,
        uring_direct_descriptors: DIRECT.with(Cell::get),
        uring_recv: RECV.with(Cell::get),
        uring_ring_slots: SLOTS.with(Cell::get),
        ..ServerConfig::default()
    };
    let c = Arc::clone(&counts);
    let server = Server::new(cfg)
        .start(move |_| Echo(Arc::clone(&c)))
        .unwrap();
    assert_eq!(server.backend(), backend, "the configured backend runs");
    (server, counts)
}

/// A minimal blocking client: masked frames out, whole frames in.
struct Client {
    s: TcpStream,
    key: [u8; 4],
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Client {
            s,
            key: [0x37, 0xfa, 0x21, 0x3d],
        }
    }

    fn frame(&self, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&self.key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ self.key[i % 4]));
        f
    }

    fn send_binary(&mut self, payload: &[u8]) {
        let f = self.frame(2, payload);
        self.s.write_all(&f).unwrap();
    }

    /// Reads one unmasked server frame: (opcode, payload).
    fn read_frame(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h)?;
        let n = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b)?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b)?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; n];
        self.s.read_exact(&mut p)?;
        Ok((h[0] & 0x0f, p))
    }

    fn close(mut self) {
        let f = self.frame(8, &1000u16.to_be_bytes());
        let _ = self.s.write_all(&f);
        // Until the server's close and FIN.
        let mut sink = [0u8; 4096];
        while matches!(self.s.read(&mut sink), Ok(n) if n > 0) {}
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn wait_closed(counts: &Counts) {
    for _ in 0..1000 {
        if counts.closed.load(Ordering::Relaxed) == counts.opened.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "opened {} closed {}",
        counts.opened.load(Ordering::Relaxed),
        counts.closed.load(Ordering::Relaxed)
    );
}

fn sizes_1b_to_16mib_echo_intact(backend: Backend) {
    let (server, counts) = start(backend, 1);
    let mut c = Client::connect(server.local_addr());
    let sizes = [
        1usize,
        125,
        126,
        2047,
        2048,
        2049,
        4096,
        16383,
        16384,
        16385,
        65535,
        65536,
        100_000,
        1 << 20,
        (4 << 20) + 3,
        16 << 20,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let msg = pattern(n, i as u8);
        c.send_binary(&msg);
        let (op, got) = c.read_frame().unwrap();
        assert_eq!(op, 2);
        assert_eq!(got.len(), n, "size {n}");
        assert!(got == msg, "size {n}: payload differs");
    }
    c.close();
    wait_closed(&counts);
    server.shutdown();
    server.join().unwrap();
}

fn provided_buffer_exhaustion_loses_nothing(backend: Backend) {
    // 48 clients x 1 MiB in flight at once is three times the 16 MiB provided-buffer ring.
    let (server, counts) = start(backend, 1);
    let addr = server.local_addr();
    let threads: Vec<_> = (0..48u8)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let msg = pattern(1 << 20, k);
                let frame = c.frame(2, &msg);
                let mut w = c.s.try_clone().unwrap();
                let writer = std::thread::spawn(move || w.write_all(&frame).unwrap());
                let (op, got) = c.read_frame().unwrap();
                writer.join().unwrap();
                assert_eq!(op, 2);
                assert!(got == msg, "client {k}: payload differs");
                c.close();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_closed(&counts);
    server.shutdown();
    server.join().unwrap();
}

fn churn_disconnect_mid_message_and_mid_send(backend: Backend) {
    let (server, counts) = start(backend, 2);
    let addr = server.local_addr();
    let big = Arc::new(pattern(256 * 1024, 7));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let big = Arc::clone(&big);
            std::thread::spawn(move || {
                for i in 0..750 {
                    let mut c = Client::connect(addr);
                    match (i + t) % 3 {
                        // Half a frame, then gone: the server holds a partial message.
                        0 => {
                            let f = c.frame(2, &big[..4096]);
                            c.s.write_all(&f[..f.len() / 2]).unwrap();
                        }
                        // A large echo asked for and never read: the send is in flight (or
                        // queued) when the connection goes.
                        1 => {
                            let f = c.frame(2, &big);
                            c.s.write_all(&f).unwrap();
                        }
                        // A reset (SO_LINGER 0) right after a message.
                        _ => {
                            c.send_binary(b"bye");
                            let s2 = socket2::SockRef::from(&c.s);
                            s2.set_linger(Some(Duration::ZERO)).unwrap();
                        }
                    }
                    drop(c);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Still serving, and every open had its close.
    let mut c = Client::connect(addr);
    c.send_binary(&big);
    let (_, got) = c.read_frame().unwrap();
    assert!(got == *big);
    c.close();
    wait_closed(&counts);
    assert!(counts.opened.load(Ordering::Relaxed) >= 3000);
    server.shutdown();
    server.join().unwrap();
}

/// Descriptors of this process that are TCP sockets bound to local port `port` (the server's
/// listener and accepted connections; not the clients').
fn server_fds(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inodes: std::collections::HashSet<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| {
            let l = l.to_string_lossy();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|i| inodes.contains(i))
        })
        .count()
}

/// 200 open connections cost the server 200 process descriptors, none if they are direct
/// descriptors (io_uring with direct descriptors on, where the kernel has them). The peer's address
/// is known on every driver: in `on_upgrade` (`req.peer()`) and after it (`conn.peer_addr()` in
/// `on_open` and `on_message`), on direct descriptors asked through the ring (where the kernel has
/// that command).
fn connections_use_process_fds_unless_direct(backend: Backend) {
    peers_and_fds(backend, "127.0.0.1:0".parse().unwrap(), 200);
}

/// The same over IPv6 loopback (skipped where `[::1]` cannot be bound): on direct descriptors an
/// IPv6 peer is kept in the worker's side table after the handshake.
fn peer_address_ipv6(backend: Backend) {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED peer_address_ipv6: no IPv6 loopback");
        return;
    }
    peers_and_fds(backend, "[::1]:0".parse().unwrap(), 20);
}

type Seen = Arc<std::sync::Mutex<Vec<(&'static str, Option<SocketAddr>)>>>;

fn peers_and_fds(backend: Backend, bind: SocketAddr, n: usize) {
    struct Peer(Seen);
    impl Handler for Peer {
        type Data = ();
        fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
            self.0.lock().unwrap().push(("upgrade", req.peer()));
            Upgrade::Accept(Accept::new(()))
        }
        fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
            self.0.lock().unwrap().push(("open", conn.peer_addr()));
        }
        fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
            self.0.lock().unwrap().push(("message", conn.peer_addr()));
            let _ = conn.send(msg);
        }
    }
    let seen: Seen = Arc::default();
    let p = Arc::clone(&seen);
    let server = Server::new(ServerConfig {
        bind: vec![bind],
        workers: 1,
        backend,
        uring_direct_descriptors: DIRECT.with(Cell::get),
        uring_recv: RECV.with(Cell::get),
        uring_ring_slots: SLOTS.with(Cell::get),
        ..ServerConfig::default()
    })
    .start(move |_| Peer(Arc::clone(&p)))
    .unwrap();
    let direct = backend == Backend::IoUring
        && DIRECT.with(Cell::get)
        && surge::Backend::io_uring_direct_support();
    let mut clients: Vec<Client> = (0..n)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        c.send_binary(b"x");
        assert_eq!(c.read_frame().unwrap(), (2, b"x".to_vec()));
    }
    // Listener included (IPv4 only: `server_fds` reads /proc/net/tcp).
    let fds = server_fds(server.local_addr().port());
    if bind.is_ipv4() {
        let expected = if direct { 1 } else { n + 1 };
        assert_eq!(
            fds, expected,
            "descriptors for {n} connections (direct: {direct})"
        );
    }
    let mut expected: Vec<SocketAddr> = clients.iter().map(|c| c.s.local_addr().unwrap()).collect();
    expected.sort();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3 * n);
    for stage in ["upgrade", "open", "message"] {
        let mut got: Vec<SocketAddr> = seen
            .iter()
            .filter(|(s, _)| *s == stage)
            .map(|(_, a)| a.unwrap_or_else(|| panic!("no peer address in {stage}")))
            .collect();
        got.sort();
        assert_eq!(got, expected, "{stage}");
    }
    drop(seen);
    drop(clients);
    server.shutdown();
    server.join().unwrap();
}

/// Close handshakes (the client leaves right after the server's close frame, while the server's
/// FIN may be under way) back to back with new
/// connections on two threads: each new handshake must complete. (On direct descriptors a
/// `SHUTDOWN` that the kernel runs late once hit the next socket given the same slot.)
fn clean_closes_then_new_handshakes(backend: Backend) {
    let (server, counts) = start(backend, 1);
    let addr = server.local_addr();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..1500 {
                    let mut c = Client::connect(addr);
                    c.send_binary(b"x");
                    assert_eq!(c.read_frame().unwrap(), (2, b"x".to_vec()));
                    // Our close, the server's close, and gone without waiting for its FIN.
                    let f = c.frame(8, &1000u16.to_be_bytes());
                    c.s.write_all(&f).unwrap();
                    assert_eq!(c.read_frame().unwrap().0, 8);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_closed(&counts);
    server.shutdown();
    server.join().unwrap();
}

/// More connections than one ring's descriptor table holds (tables of 32 slots here; the kernel
/// caps them at `RLIMIT_NOFILE`): the worker opens more rings, every connection echoes whatever
/// ring holds it, slots freed on any ring are used again, and past `max_connections_per_worker`
/// connections are closed at once while the others carry on. Both receive modes, one and two
/// workers.
#[test]
fn rings_hold_more_than_one_table() {
    if let Err(why) = surge::Backend::io_uring_support() {
        eprintln!("SKIPPED rings_hold_more_than_one_table: io_uring unavailable: {why}");
        return;
    }
    if !surge::Backend::io_uring_direct_support() {
        eprintln!("SKIPPED rings_hold_more_than_one_table: no io_uring direct descriptors");
        return;
    }
    for (recv, workers) in [
        (UringRecv::Multishot, 1),
        (UringRecv::PollThenRecv, 1),
        (UringRecv::Multishot, 2),
    ] {
        let counts = Arc::new(Counts::default());
        let c = Arc::clone(&counts);
        let limit = 300;
        let server = Server::new(ServerConfig {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            workers,
            backend: Backend::IoUring,
            uring_recv: recv,
            uring_ring_slots: Some(32),
            max_connections_per_worker: limit,
            ..ServerConfig::default()
        })
        .start(move |_| Echo(Arc::clone(&c)))
        .unwrap();
        let addr = server.local_addr();
        let echo = |c: &mut Client, k: usize| {
            let msg = format!("m{k}");
            c.send_binary(msg.as_bytes());
            assert_eq!(
                c.read_frame().unwrap(),
                (2, msg.into_bytes()),
                "{recv:?} {k}"
            );
        };
        // 250 per worker: about eight tables' worth.
        let n = 250 * workers;
        let mut clients: Vec<Client> = (0..n).map(|_| Client::connect(addr)).collect();
        for (k, c) in clients.iter_mut().enumerate() {
            echo(c, k);
        }
        // Every other one goes; as many new ones take the freed slots (and new ones).
        let mut kept = Vec::new();
        for (k, c) in clients.into_iter().enumerate() {
            if k % 2 == 0 {
                c.close();
            } else {
                kept.push(c);
            }
        }
        kept.extend((0..n / 2).map(|_| Client::connect(addr)));
        for (k, c) in kept.iter_mut().enumerate() {
            echo(c, k);
        }
        assert_eq!(counts.opened.load(Ordering::Relaxed), n + n / 2);
        if workers == 1 {
            // 250 open: 50 more reach the limit, the next ones are closed at once.
            kept.extend((0..limit - n).map(|_| Client::connect(addr)));
            for _ in 0..5 {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut b = [0u8; 1];
                assert!(
                    matches!(s.read(&mut b), Ok(0) | Err(_)),
                    "a connection past the limit is closed"
                );
            }
            for (k, c) in kept.iter_mut().enumerate() {
                echo(c, k);
            }
        }
        for c in kept {
            c.close();
        }
        wait_closed(&counts);
        server.shutdown();
        server.join().unwrap();
    }
}

/// Once shutdown begins the listening sockets close: connections are refused while an open
/// connection still holds the server in its close handshake. (Where a worker may open several
/// rings its accepts are single-shot, several in flight: stopping a listener must cancel every one
/// of them, or they keep the listening socket open, accepting connections only to close them,
/// until the worker exits.)
fn listeners_close_when_shutdown_begins(backend: Backend) {
    let (server, _counts) = start(backend, 1);
    let addr = server.local_addr();
    // Open, and never answers the server's close: the worker waits for it (up to 5 s).
    let mut held = Client::connect(addr);
    server.shutdown();
    // The server's close frame: shutdown has begun in the worker.
    assert_eq!(held.read_frame().unwrap().0, 8);
    // Each connection an accept left in flight takes is accepted and closed: count them.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut accepted = 0;
    while TcpStream::connect(addr).is_ok() {
        accepted += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the listening socket still accepts 1 s after shutdown began"
        );
    }
    assert!(
        accepted <= 1,
        "{accepted} connections accepted after shutdown began"
    );
    drop(held);
    server.join().unwrap();
}
