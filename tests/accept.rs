//! The accept path under pressure, once per driver (`per_driver!`: epoll, io_uring, io_uring in the
//! poll receive mode; the io_uring versions are skipped where the kernel refuses io_uring).
//!
//! - A connect storm: 5,000 non-blocking connects fired at once at one worker (a load generator,
//!   or the reconnect storm after a deploy); every one must be upgraded within a generous bound. A
//!   connect the kernel drops from a full accept queue comes back only after SYN retransmits
//!   (1 s, 3 s, 7 s, ...), so a slow accept path shows up as seconds of delay. The figures (how
//!   many were upgraded within 6 s, the system's `ListenOverflows` growth) are printed
//!   (`--nocapture`).
//! - Out of descriptors: a server whose process ran out of descriptors (a lowered
//!   `RLIMIT_NOFILE`, in a child process) serves the clients waiting in its accept queue once
//!   descriptors are free again, without a new connection arriving to wake it up.
//!
//! Run without `SURGE_BACKEND` or `SURGE_URING_RECV` set: they override the configured driver.

#[macro_use]
mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use support::{upgrade_request, wait_until, ClientProcess};
use surge::{Accept, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade};

#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
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
}

fn start(cfg: ServerConfig) -> (surge::ServerHandle, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let c = Arc::clone(&counts);
    let server = Server::new(cfg)
        .start(move |_| Echo(Arc::clone(&c)))
        .expect("server starts");
    (server, counts)
}

// ---------------------------------------------------------------------------------------------
// Connect storm

/// Connections in the storm.
const BURST: usize = 5_000;
/// Every one of them must be upgraded within this (generous: a 2-core machine shared with builds).
const BURST_LIMIT: Duration = Duration::from_secs(20);
/// The figure: how many were upgraded within this is printed.
const BURST_REPORT: Duration = Duration::from_secs(6);

/// One storm at a time: each holds 5,000 client and (epoll) 5,000 server descriptors of this
/// process (20,000 allowed), and they would share the 2 cores.
static STORM: Mutex<()> = Mutex::new(());

/// `TcpExt: ListenOverflows` of /proc/net/netstat (system-wide; `None` where unreadable).
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// A storm client: connects `n` non-blocking sockets at once, sends the upgrade request on each as
/// soon as its connect completes, and returns when each was upgraded (time since the first
/// connect), or `None` for those not upgraded within `limit`.
fn storm(addr: SocketAddr, n: usize, limit: Duration) -> Vec<Option<Duration>> {
    struct C {
        s: MioStream,
        sent: bool,
        got: Vec<u8>,
        done: Option<Duration>,
    }
    let request = upgrade_request(addr, "/", "");
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    // The sockets first, then the connects back to back: the storm arrives as fast as this
    // thread can make connect calls (on loopback each one runs the whole handshake).
    let sockets: Vec<socket2::Socket> = (0..n)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let to = socket2::SockAddr::from(addr);
    for (i, s) in sockets.iter().enumerate() {
        match s.connect(&to) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => panic!("connect #{i}: {e}"),
        }
    }
    let mut conns = Vec::with_capacity(n);
    for (i, s) in sockets.into_iter().enumerate() {
        // Registered after the connect: epoll reports the readiness a socket already has.
        let mut s = MioStream::from_std(s.into());
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
            .unwrap();
        conns.push(C {
            s,
            sent: false,
            got: Vec::new(),
            done: None,
        });
    }
    let mut upgraded = 0;
    let mut buf = [0u8; 1024];
    while upgraded < n && start.elapsed() < limit {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if c.done.is_some() {
                continue;
            }
            if !c.sent && ev.is_writable() {
                if let Some(e) = c.s.take_error().unwrap() {
                    panic!("connect failed: {e}");
                }
                match c.s.write(request.as_bytes()) {
                    // The request is far below any socket buffer: all of it or nothing.
                    Ok(k) => {
                        assert_eq!(k, request.len(), "short write of the request");
                        c.sent = true;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                        ) => {}
                    Err(e) => panic!("sending the request: {e}"),
                }
            }
            if c.sent && (ev.is_readable() || ev.is_read_closed()) {
                loop {
                    match c.s.read(&mut buf) {
                        Ok(0) => panic!("closed before the response: {:?}", c.got),
                        Ok(k) => c.got.extend_from_slice(&buf[..k]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("reading the response: {e}"),
                    }
                }
                if c.got.windows(4).any(|w| w == b"\r\n\r\n") {
                    assert!(
                        c.got.starts_with(b"HTTP/1.1 101"),
                        "not upgraded: {}",
                        String::from_utf8_lossy(&c.got)
                    );
                    c.done = Some(start.elapsed());
                    upgraded += 1;
                }
            }
        }
    }
    conns.into_iter().map(|c| c.done).collect()
}

/// Prints the storm's figures; returns how many were upgraded.
fn report(label: &str, done: &[Option<Duration>], overflows: Option<u64>) -> usize {
    let upgraded = done.iter().flatten().count();
    let early = done
        .iter()
        .flatten()
        .filter(|t| **t <= BURST_REPORT)
        .count();
    let last = done.iter().flatten().max().copied();
    println!(
        "storm {label}: {early}/{BURST} upgraded within {BURST_REPORT:?}, {upgraded} within \
         {BURST_LIMIT:?}, the last at {last:?}; ListenOverflows +{overflows:?} (system-wide)"
    );
    upgraded
}

/// Measuring another server: `SURGE_TEST_STORM_ADDR=host:port` makes the storm test run its
/// storm against it (instead of a server of its own) and only print the figures.
const STORM_ADDR: &str = "SURGE_TEST_STORM_ADDR";

/// 5,000 connects at once at one worker: all upgraded within [`BURST_LIMIT`].
fn connect_storm_of_5000_all_upgraded() {
    let _one = STORM.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    };
    let external = std::env::var(STORM_ADDR).ok();
    let (server, counts, addr) = match &external {
        // A server started elsewhere (another build, another engine): only the figures.
        Some(addr) => (
            None,
            None,
            addr.parse().expect("SURGE_TEST_STORM_ADDR: host:port"),
        ),
        None => {
            let (server, counts) = start(cfg);
            let addr = server.local_addr();
            (Some(server), Some(counts), addr)
        }
    };
    let overflows = listen_overflows();
    let done = storm(addr, BURST, BURST_LIMIT);
    let overflows = listen_overflows()
        .zip(overflows)
        .map(|(after, before)| after - before);
    let label = match &external {
        Some(addr) => addr.clone(),
        None => format!("{} ({})", support::backend(), support::uring_recv()),
    };
    let upgraded = report(&label, &done, overflows);
    let (Some(server), Some(counts)) = (server, counts) else {
        return;
    };
    assert_eq!(upgraded, BURST, "upgraded within {BURST_LIMIT:?}");
    assert!(wait_until(Duration::from_secs(5), || {
        counts.opened.load(Ordering::Relaxed) == BURST
    }));
    server.shutdown();
    server.join().expect("workers exit cleanly");
}

/// The listen backlog the kernel holds for the socket on `port` (the `Send-Q` that `ss -ltn` shows
/// for a listener), once per worker socket; `None` where `ss` cannot be run.
fn listen_backlogs(port: u16) -> Option<Vec<u64>> {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect(),
    )
}

/// `ServerConfig::backlog` reaches each worker's listening socket (capped by
/// `net.core.somaxconn`), and its default (4096) is large enough for a 5,000-connect storm.
#[test]
fn listen_backlog_is_the_configured_one() {
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    assert_eq!(ServerConfig::default().backlog, 4096);
    for backlog in [ServerConfig::default().backlog, 100] {
        let cfg = ServerConfig {
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            workers: 2,
            backend: surge::Backend::Epoll,
            backlog,
            ..ServerConfig::default()
        };
        let (server, _) = start(cfg);
        let Some(got) = listen_backlogs(server.local_addr().port()) else {
            eprintln!("SKIPPED listen_backlog_is_the_configured_one: `ss` unavailable");
            return;
        };
        let want = (backlog as u64).min(somaxconn);
        assert_eq!(
            got,
            vec![want; 2],
            "backlog {backlog}, somaxconn {somaxconn}"
        );
        server.shutdown();
        server.join().expect("workers exit cleanly");
    }
}

// ---------------------------------------------------------------------------------------------
// Out of descriptors

/// The child's driver (`Backend::name`) and io_uring receive mode (`UringRecv::name`).
const ENV_EMFILE_BACKEND: &str = "SURGE_TEST_EMFILE_BACKEND";
const ENV_EMFILE_RECV: &str = "SURGE_TEST_EMFILE_RECV";
/// The child's descriptor limit.
const EMFILE_NOFILE: u64 = 256;
/// Clients waiting in the accept queue while the server is out of descriptors (the issue's).
const WAITING: usize = 41;

/// A client that sent its upgrade request and reads the answer without blocking.
struct Waiting {
    s: TcpStream,
    got: Vec<u8>,
}

impl Waiting {
    fn connect(addr: SocketAddr) -> Waiting {
        let mut s = TcpStream::connect(addr).expect("connect (the kernel completes it)");
        s.write_all(upgrade_request(addr, "/", "").as_bytes())
            .unwrap();
        s.set_nonblocking(true).unwrap();
        Waiting { s, got: Vec::new() }
    }

    /// Reads what arrived; whether the whole 101 head is there.
    fn upgraded(&mut self) -> bool {
        let mut buf = [0u8; 512];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => panic!("closed: {}", String::from_utf8_lossy(&self.got)),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        let done = self.got.windows(4).any(|w| w == b"\r\n\r\n");
        assert!(
            !done || self.got.starts_with(b"HTTP/1.1 101"),
            "not upgraded: {}",
            String::from_utf8_lossy(&self.got)
        );
        done
    }
}

/// The server runs in a child process with `RLIMIT_NOFILE` lowered and every descriptor taken;
/// clients connect (the kernel queues them) and wait; once the child frees its descriptors, every
/// waiting client is served without any new connection arriving.
fn accepts_resume_after_emfile() {
    let mut child = ClientProcess::spawn_with(
        "emfile_server",
        &[
            (ENV_EMFILE_BACKEND, support::backend().name().to_owned()),
            (ENV_EMFILE_RECV, support::uring_recv().name().to_owned()),
        ],
    );
    let limit = Duration::from_secs(10);
    let port = child.wait("port", limit) as u16;
    assert!(child.wait("filled", limit) > 0);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut clients: Vec<Waiting> = (0..WAITING).map(|_| Waiting::connect(addr)).collect();
    // Out of descriptors: nobody can be served (accepts fail, retried every 10 ms).
    std::thread::sleep(Duration::from_millis(300));
    let early = clients
        .iter_mut()
        .map(|c| c.upgraded())
        .filter(|&u| u)
        .count();
    assert_eq!(
        early, 0,
        "served while out of descriptors: the fill did not work"
    );
    child.command("free");
    child.wait("freed", limit);
    let mut served = 0;
    let all = wait_until(limit, || {
        served = clients
            .iter_mut()
            .map(|c| c.upgraded())
            .filter(|&u| u)
            .count();
        served == WAITING
    });
    assert!(
        all,
        "{served} of {WAITING} waiting clients served after descriptors were freed"
    );
    drop(clients); // their EOF ends them: the shutdown has no close handshake to wait for
    child.command("exit");
    assert_eq!(child.wait("opened", limit), WAITING);
    child.finish();
}

/// The server side of `accepts_resume_after_emfile`, run in a child process: lowers
/// `RLIMIT_NOFILE`, starts a one-worker server (ordinary descriptors on io_uring too), reports
/// `port P`, opens `/dev/null` until `EMFILE` and reports `filled N`; on `free` closes them and
/// reports `freed N`; on `exit` (or EOF) reports `opened N` and stops the server.
#[test]
#[ignore = "helper: run by accepts_resume_after_emfile in a child process"]
fn emfile_server() {
    use std::io::BufRead;
    let (Ok(backend), Ok(recv)) = (
        std::env::var(ENV_EMFILE_BACKEND),
        std::env::var(ENV_EMFILE_RECV),
    ) else {
        return;
    };
    // SAFETY: `lim` is a live, writable rlimit for getrlimit, then read by setrlimit.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_cur.min(EMFILE_NOFILE);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        backend: backend.parse().unwrap(),
        uring_recv: recv.parse().unwrap(),
        // Connections on process descriptors, so that they run out.
        uring_direct_descriptors: false,
        ..ServerConfig::default()
    };
    let (server, counts) = start(cfg);
    support::report("port", usize::from(server.local_addr().port()));
    let mut fill = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fill.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("filling descriptors: {e}"),
        }
    }
    support::report("filled", fill.len());
    let stdin = io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "free");
    let freed = fill.len();
    drop(fill);
    support::report("freed", freed);
    line.clear();
    stdin.lock().read_line(&mut line).unwrap();
    support::report("opened", counts.opened.load(Ordering::Relaxed));
    server.shutdown();
    server.join().expect("workers exit cleanly");
}

per_driver!(
    connect_storm_of_5000_all_upgraded,
    accepts_resume_after_emfile,
);
