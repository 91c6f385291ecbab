//! Helpers shared by the integration tests (a `#[path]` module of each that uses it): a raw
//! WebSocket client over `TcpStream` (to send what well-behaved clients never send), HTTP status
//! reads, a client *process* that holds thousands of connections (the machine allows 20,000
//! descriptors per process, so 10k clients and 10k server sockets cannot share one), `per_driver!`
//! and the Python `websockets` lookup.

#![allow(dead_code)] // each test binary uses its own subset

pub mod pki;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single read may block in a test.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The sample key of RFC 6455 section 1.3.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A complete upgrade request for `path` to `addr`, with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends raw request bytes and reads the whole response until the server closes (or the timeout).
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "reading the response: {e} (got {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The code and reason of a close frame.
    pub fn close_code(&self) -> Option<(u16, String)> {
        (self.opcode == 8 && self.payload.len() >= 2).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                String::from_utf8_lossy(&self.payload[2..]).into_owned(),
            )
        })
    }
}

/// Encodes one masked client frame.
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(u8::from(fin) << 7 | (rsv & 7) << 4 | (opcode & 15));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A close frame payload: code then reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A WebSocket client on a plain `TcpStream`, writing frames byte by byte as the test wants them.
pub struct RawClient {
    pub stream: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
    /// The 101 response head.
    pub response: String,
}

impl RawClient {
    /// Connects and upgrades (panics unless the answer is 101).
    pub fn connect(addr: SocketAddr, path: &str) -> RawClient {
        Self::connect_with(addr, path, "")
    }

    /// Connects and upgrades with extra request header lines.
    pub fn connect_with(addr: SocketAddr, path: &str, extra: &str) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
            response: String::new(),
        };
        c.stream
            .write_all(upgrade_request(addr, path, extra).as_bytes())
            .unwrap();
        let end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(c.fill().unwrap() > 0, "closed during the handshake");
        };
        c.response = String::from_utf8_lossy(&c.buf[..end]).into_owned();
        c.buf.drain(..end);
        assert!(
            c.response.starts_with("HTTP/1.1 101"),
            "not upgraded: {}",
            c.response
        );
        c
    }

    /// A client over a stream that already did its upgrade (the 101 head read).
    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            buf: Vec::new(),
            response: String::new(),
        }
    }

    /// The next frame, or `None` when none arrives within `limit` (or at EOF).
    pub fn read_frame_timeout(&mut self, limit: Duration) -> Option<Frame> {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let got = self.read_frame();
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match got {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Writes one masked frame.
    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.write_raw(&encode_frame(fin, 0, opcode, payload));
    }

    /// Reads the next frame; `Ok(None)` at EOF (or reset).
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            match self.fill() {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the next frame, panicking at EOF or timeout.
    pub fn expect_frame(&mut self) -> Frame {
        self.read_frame()
            .expect("read timed out")
            .expect("connection closed")
    }

    /// Reads frames until a close frame (returned), skipping data and pings; `None` at EOF.
    pub fn read_until_close(&mut self) -> Option<Frame> {
        while let Some(f) = self.read_frame().expect("read timed out") {
            if f.opcode == 8 {
                return Some(f);
            }
        }
        None
    }

    /// Whether the server closes the TCP connection (EOF or reset) within the read timeout,
    /// discarding anything before it.
    pub fn reaches_eof(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`.
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let (len, mut pos) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        126 | 127 => return None,
        n => (u64::from(n), 2),
    };
    let len = len as usize;
    if buf.len() < pos + len {
        return None;
    }
    let payload = buf[pos..pos + len].to_vec();
    pos += len;
    Some((
        Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 15,
            payload,
        },
        pos,
    ))
}

/// A tungstenite client with a read timeout.
pub fn ws_connect(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<TcpStream> {
    ws_connect_req(addr, format!("ws://{addr}{path}"))
}

/// A tungstenite client for a prepared request.
pub fn ws_connect_req<R: tungstenite::client::IntoClientRequest>(
    addr: SocketAddr,
    req: R,
) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, _resp) = tungstenite::client(req, stream).expect("tungstenite handshake");
    ws
}

// ---------------------------------------------------------------------------------------------
// Many clients in a child process.
//
// The parent spawns the current test executable running one `#[ignore]`d test (the *client
// mode*), with the server address and the count in the environment. They talk in lines: the child
// prints `CLIENT <word> <n>` on stdout after each phase and waits for the next command on stdin.

/// Environment variable naming the server address for the client mode.
pub const ENV_ADDR: &str = "SURGE_TEST_CLIENT_ADDR";
/// Environment variable with the number of connections for the client mode.
pub const ENV_COUNT: &str = "SURGE_TEST_CLIENT_COUNT";

/// The parent's end of a client process.
pub struct ClientProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ClientProcess {
    /// Runs `test_name` (an ignored test of this executable that calls [`client_mode`]) as a child.
    pub fn spawn(test_name: &str, addr: SocketAddr, count: usize) -> ClientProcess {
        Self::spawn_with(
            test_name,
            &[(ENV_ADDR, addr.to_string()), (ENV_COUNT, count.to_string())],
        )
    }

    /// Runs `test_name` (an ignored test of this executable) as a child with `env` set; it speaks
    /// the same `CLIENT <word> <n>` lines.
    pub fn spawn_with(test_name: &str, env: &[(&str, String)]) -> ClientProcess {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                test_name,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness may have printed "test NAME ... " on the same line.
                if let Some(i) = line.find("CLIENT ") {
                    if tx.send(line[i + 7..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        ClientProcess {
            child,
            stdin: Some(stdin),
            lines,
        }
    }

    /// Waits for the child's report `word n`; returns `n`. Panics on timeout or an error report.
    pub fn wait(&mut self, word: &str, limit: Duration) -> usize {
        let line = match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                panic!("client process: no `{word}` report within {limit:?} ({e})");
            }
        };
        let (got, n) = line.split_once(' ').unwrap_or((&line, "0"));
        assert_eq!(got, word, "client process reported: {line}");
        n.parse().unwrap()
    }

    /// Tells the child to go on with its next phase.
    pub fn command(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the child to exit successfully.
    pub fn finish(mut self) {
        self.stdin = None;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "client process failed: {status}");
                return;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                panic!("client process did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
        }
    }
}

pub fn report(word: &str, n: usize) {
    println!("CLIENT {word} {n}");
    io::stdout().flush().unwrap();
}

/// The child's side: holds `ENV_COUNT` connections through three phases, each started by a line
/// on stdin. Does nothing when the environment does not ask for it (a plain `--ignored` run).
///
/// 1. Connect and upgrade every connection (in batches that stay under the listen backlog), then
///    report `opened N`.
/// 2. `echo`: send one text message on each, then read each one's echo; report `echoed N`.
/// 3. `close`: send close 1000 on each, then read each until the server's FIN; report `closed N`.
pub fn client_mode() {
    let (Ok(addr), Ok(count)) = (std::env::var(ENV_ADDR), std::env::var(ENV_COUNT)) else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let count: usize = count.parse().unwrap();
    let request = upgrade_request(addr, "/", "");
    let mut conns: Vec<TcpStream> = Vec::with_capacity(count);
    const BATCH: usize = 256;
    while conns.len() < count {
        let start = conns.len();
        let end = (start + BATCH).min(count);
        for _ in start..end {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
            conns.push(s);
        }
        for s in &mut conns[start..end] {
            s.write_all(request.as_bytes()).unwrap();
        }
        for s in &mut conns[start..end] {
            let head = read_head(s);
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        }
    }
    report("opened", conns.len());

    let mut cmd = String::new();
    let stdin = io::stdin();
    cmd.clear();
    if stdin.lock().read_line(&mut cmd).unwrap() == 0 {
        return;
    }
    if cmd.trim() == "echo" {
        for (i, s) in conns.iter_mut().enumerate() {
            s.write_all(&encode_frame(true, 0, 1, format!("m{i}").as_bytes()))
                .unwrap();
        }
        let mut ok = 0;
        for (i, s) in conns.iter_mut().enumerate() {
            let want = format!("m{i}");
            let mut head = [0u8; 2];
            s.read_exact(&mut head).unwrap();
            assert_eq!(head, [0x81, want.len() as u8]);
            let mut body = vec![0u8; want.len()];
            s.read_exact(&mut body).unwrap();
            assert_eq!(body, want.as_bytes());
            ok += 1;
        }
        report("echoed", ok);
        cmd.clear();
        if stdin.lock().read_line(&mut cmd).unwrap() == 0 {
            return;
        }
    }
    assert_eq!(cmd.trim(), "close");
    for s in &mut conns {
        s.write_all(&encode_frame(true, 0, 8, &close_payload(1000, "")))
            .unwrap();
    }
    let mut closed = 0;
    for s in &mut conns {
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("waiting for the server's FIN: {e}"),
        }
        assert!(
            got.starts_with(&[0x88, 2, 0x03, 0xe8]),
            "close echo: {got:?}"
        );
        closed += 1;
    }
    report("closed", closed);
}

/// Reads an HTTP response head (nothing follows a 101 until the client speaks).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed during the handshake");
        head.extend_from_slice(&b[..n]);
    }
    String::from_utf8(head).unwrap()
}

/// `.venv`'s python3 (where `.ci/run` installs `websockets`).
pub const VENV_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python3");

/// The first of `candidates` (interpreter names or paths) that can `import websockets`.
pub fn python_with_websockets(candidates: &[&'static str]) -> Option<&'static str> {
    candidates.iter().copied().find(|py| {
        Command::new(py)
            .args(["-c", "import websockets"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

thread_local! {
    /// The driver the current test runs on (set by `per_driver!`).
    static BACKEND: std::cell::Cell<surge::Backend> = const { std::cell::Cell::new(surge::Backend::Auto) };
    /// How io_uring connections of the current test receive (set by `per_driver!`).
    static URING_RECV: std::cell::Cell<surge::UringRecv> = const { std::cell::Cell::new(surge::UringRecv::Multishot) };
}

/// How io_uring connections of the current test receive: what its server config should ask for
/// (`ServerConfig::uring_recv`).
pub fn uring_recv() -> surge::UringRecv {
    URING_RECV.with(|b| b.get())
}

/// Runs `test` with [`backend`] set to io_uring and [`uring_recv`] to `recv`.
pub fn run_on_uring<Args>(recv: surge::UringRecv, test: impl DriverTest<Args>) {
    URING_RECV.with(|b| b.set(recv));
    run_on(surge::Backend::IoUring, test)
}

/// The driver the current test runs on: what its server config should ask for.
pub fn backend() -> surge::Backend {
    BACKEND.with(|b| b.get())
}

/// A test that `per_driver!` runs: a `fn()` that reads the driver from [`backend`], or a
/// `fn(Backend)` that is handed it (`Args` tells the two apart).
pub trait DriverTest<Args> {
    fn run(self, driver: surge::Backend);
}

impl<F: FnOnce()> DriverTest<()> for F {
    fn run(self, _driver: surge::Backend) {
        self()
    }
}

impl<F: FnOnce(surge::Backend)> DriverTest<(surge::Backend,)> for F {
    fn run(self, driver: surge::Backend) {
        self(driver)
    }
}

/// Runs `test` with [`backend`] set to `driver`.
pub fn run_on<Args>(driver: surge::Backend, test: impl DriverTest<Args>) {
    BACKEND.with(|b| b.set(driver));
    test.run(driver)
}

/// Generates `epoll::name`, `io_uring::name` and `io_uring_poll::name` tests for each `fn name()`
/// or `fn name(backend: Backend)` listed; the first kind reads the driver from [`backend`], both
/// read the io_uring receive mode from [`uring_recv`] (`io_uring_poll`: `UringRecv::PollThenRecv`).
/// io_uring versions are skipped, with a line saying why, where the kernel refuses io_uring. Run
/// without `SURGE_BACKEND` or `SURGE_URING_RECV`, which would override them.
#[allow(unused_macros)] // not every test binary runs per driver
macro_rules! per_driver {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $(#[test] fn $name() { crate::support::run_on(surge::Backend::Epoll, super::$name) })*
        }
        mod io_uring {
            $(#[test] fn $name() {
                if let Err(why) = surge::Backend::io_uring_support() {
                    eprintln!("SKIPPED io_uring::{}: {why}", stringify!($name));
                    return;
                }
                crate::support::run_on(surge::Backend::IoUring, super::$name)
            })*
        }
        mod io_uring_poll {
            $(#[test] fn $name() {
                if let Err(why) = surge::Backend::io_uring_support() {
                    eprintln!("SKIPPED io_uring_poll::{}: {why}", stringify!($name));
                    return;
                }
                crate::support::run_on_uring(surge::UringRecv::PollThenRecv, super::$name)
            })*
        }
    };
}

/// A PROXY protocol v1 header (written here, not by the parser under test) naming `client` as
/// the source and `server` as the destination.
pub fn proxy_v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

/// A PROXY protocol v2 `PROXY` header (TCP) naming `client` as the source and `server` as the
/// destination (same family), with `tlv` bytes after the addresses.
pub fn proxy_v2(client: SocketAddr, server: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            body.extend_from_slice(&c.ip().octets());
            body.extend_from_slice(&s.ip().octets());
            0x11
        }
        (SocketAddr::V6(c), SocketAddr::V6(s)) => {
            body.extend_from_slice(&c.ip().octets());
            body.extend_from_slice(&s.ip().octets());
            0x21
        }
        _ => panic!("one family for both addresses"),
    };
    body.extend_from_slice(&client.port().to_be_bytes());
    body.extend_from_slice(&server.port().to_be_bytes());
    body.extend_from_slice(tlv);
    proxy_v2_raw(0x21, family, &body)
}

/// A PROXY protocol v2 header from its parts: version/command byte, family/protocol byte, body.
pub fn proxy_v2_raw(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(version_command);
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// Reads until EOF (a reset counts as EOF): everything the server sent before closing.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "waiting for the server to close: {e} (got {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Reads an HTTP response head (nothing follows a 101 until the client speaks).
pub fn read_response_head(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).unwrap();
        assert!(
            n > 0,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}
