//! A worker without sockets (quinn-proto's `Pair` is the model): a fake driver
//! ([`crate::driver::fake`]) feeds bytes and completions and records what is written, and a fake
//! clock moves only when the test says. Each test runs loop turns itself, so everything here is
//! deterministic: backpressure and drain, close sequencing and its timeout, timers, the mailbox,
//! completions arriving after their connection closed, slots reused.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Conn, Worker, WorkerCtx};
use crate::driver::fake::{FakeDriver, FakeNet, Pipe};
use crate::driver::{Driver, IoEvent, Socket, Token, Waker};
use crate::handler::{Accept, CloseInfo, Handler, SendStatus, Upgrade};
use crate::handshake::{OriginPolicy, Request};
use crate::proto::{CloseCode, Message};
use crate::server::config::{BackpressurePolicy, ServerConfig};
use crate::server::{PendingUpgrade, Shared};
use crate::ConnId;

/// What the test handler saw, in order.
type Log = Rc<RefCell<Vec<String>>>;

/// What the test handler does with a message.
type OnMessage = Box<dyn FnMut(&mut Conn<'_, u32>, Message<'_>)>;

/// The test handler: logs every callback; echoes messages unless `on_message` says otherwise.
struct Rec {
    log: Log,
    on_message: Option<OnMessage>,
    /// `on_timer` re-arms timer 7 with this period from within the callback.
    rearm: Option<Duration>,
    /// `on_timer` cancels the timer it is called for.
    cancel_own_timer: bool,
    /// Upgrades of `/defer` wait here for the test's decision.
    deferred: Deferred,
}

/// The pending upgrades of `/defer` requests.
type Deferred = Rc<RefCell<Vec<PendingUpgrade<u32>>>>;

impl Handler for Rec {
    type Data = u32;

    fn on_upgrade(&mut self, req: &Request) -> Upgrade<u32> {
        if req.path() == "/deny" {
            return Upgrade::Reject(crate::Rejection::new(403, "denied"));
        }
        if req.path() == "/defer" {
            let deferred = Rc::clone(&self.deferred);
            return Upgrade::defer(move |p| deferred.borrow_mut().push(p));
        }
        Upgrade::Accept(Accept::new(7))
    }

    fn on_open(&mut self, conn: &mut Conn<'_, u32>) {
        self.log.borrow_mut().push(format!("open {}", conn.data()));
    }

    fn on_message(&mut self, conn: &mut Conn<'_, u32>, msg: Message<'_>) {
        self.log
            .borrow_mut()
            .push(format!("message {}", msg.as_bytes().len()));
        match &mut self.on_message {
            Some(f) => f(conn, msg),
            None => {
                let _ = conn.send(msg);
            }
        }
    }

    fn on_ping(&mut self, _conn: &mut Conn<'_, u32>, data: &[u8]) {
        self.log.borrow_mut().push(format!("ping {}", data.len()));
    }

    fn on_close(&mut self, _w: &mut WorkerCtx<u32>, data: u32, info: &CloseInfo<'_>) {
        self.log
            .borrow_mut()
            .push(format!("close {} {} {}", data, info.code.0, info.by_peer));
    }

    fn on_command(&mut self, worker: &mut WorkerCtx<u32>, cmd: crate::Command) {
        match cmd.downcast::<(ConnId, &'static str)>() {
            Ok((id, text)) => {
                self.log.borrow_mut().push(format!("command {text}"));
                if let Some(mut conn) = worker.conn(id) {
                    let _ = conn.send_text(text);
                }
            }
            Err(other) => self
                .log
                .borrow_mut()
                .push(format!("command of another type: {}", other.is::<u64>())),
        }
    }

    fn on_drain(&mut self, _conn: &mut Conn<'_, u32>) {
        self.log.borrow_mut().push("drain".into());
    }

    fn on_timer(&mut self, worker: &mut WorkerCtx<u32>, mut timer: crate::Timer<'_>) {
        let interval = timer.is_interval();
        match timer.get::<u64>() {
            Some(v) => {
                self.log.borrow_mut().push(format!("timer {v}"));
                if interval {
                    *v += 1; // an interval's value stays with it
                }
            }
            None => self.log.borrow_mut().push("timer of another type".into()),
        }
        if let Some(every) = self.rearm.take() {
            worker.set_interval(every, 7u64);
        }
        if self.cancel_own_timer {
            worker.cancel_timer(timer.id());
        }
    }
}

/// A worker with a fake driver and clock.
struct Harness {
    worker: Worker<Rec>,
    net: Rc<RefCell<FakeNet>>,
    shared: Arc<Shared>,
    log: Log,
    deferred: Deferred,
    now: Instant,
    next_slot: u32,
}

/// One connection as the test (its peer) sees it.
#[derive(Clone, Copy, Debug)]
struct Peer {
    slot: u32,
    token: u64,
}

/// An upgrade request whose decision `Rec` defers.
const DEFERRED_REQUEST: &[u8] = b"GET /defer HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame.
pub(super) fn frame(op: u8, payload: &[u8], fin: bool) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![if fin { 0x80 | op } else { op }];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    frame(0x8, &p, true)
}

/// The server's (unmasked) frames in `bytes`: (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let op = bytes[0] & 0x0f;
        assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
        let (len, head) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        out.push((op, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    assert!(bytes.is_empty(), "a partial frame");
    out
}

impl Harness {
    fn new(cfg: ServerConfig) -> Harness {
        Harness::with(cfg, None)
    }

    fn with(mut cfg: ServerConfig, on_message: Option<OnMessage>) -> Harness {
        cfg.origin = OriginPolicy::AllowAll;
        let net = Rc::new(RefCell::new(FakeNet::default()));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wakers: vec![Waker::Noop],
            mailboxes: vec![Default::default()],
            metrics: vec![Default::default()],
            metrics_addr: None,
            bridge: None,
            limiter: crate::server::ClientLimiter::new(&cfg.client_limits).map(Arc::new),
            proxy_refused: Default::default(),
            tls: Default::default(),
        });
        let log = Log::default();
        let deferred = Deferred::default();
        let handler = Rec {
            log: Rc::clone(&log),
            on_message,
            rearm: None,
            cancel_own_timer: false,
            deferred: Rc::clone(&deferred),
        };
        let driver = Driver::Fake(FakeDriver(Rc::clone(&net)));
        let mut worker = Worker::new(
            0,
            Arc::new(cfg),
            driver,
            Vec::new(),
            handler,
            Arc::clone(&shared),
        );
        worker.start().unwrap();
        let now = worker.ctx.now;
        Harness {
            worker,
            net,
            shared,
            log,
            deferred,
            now,
            next_slot: 0,
        }
    }

    /// One loop turn at the fake time; `false` once the worker stopped.
    fn turn(&mut self) -> bool {
        let now = self.now;
        self.worker.turn(move || now).unwrap()
    }

    /// Moves the clock on, then runs a turn.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.turn();
    }

    fn pipe<T>(&self, p: Peer, f: impl FnOnce(&mut Pipe) -> T) -> T {
        f(self.net.borrow_mut().pipes.get_mut(&p.slot).unwrap())
    }

    /// A new accepted connection (nothing read yet).
    fn accept(&mut self) -> Peer {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.net.borrow_mut().pipes.insert(slot, Pipe::default());
        let registered = self.net.borrow().registered.len();
        self.worker.admit(Socket::Direct(slot), 0, None);
        let token = self.net.borrow().registered.get(registered).copied();
        Peer {
            slot,
            token: token.unwrap_or(u64::MAX),
        }
    }

    fn ready(&mut self, p: Peer, readable: bool, writable: bool, hup: bool) {
        self.net.borrow_mut().events.push_back(IoEvent::Ready {
            token: Token::Conn(p.token),
            readable,
            writable,
            hup,
        });
    }

    /// The peer sends `bytes`; the worker reads them in the next turn.
    fn send(&mut self, p: Peer, bytes: &[u8]) {
        self.pipe(p, |pipe| pipe.input.extend(bytes));
        self.ready(p, true, false, false);
        self.turn();
    }

    /// The peer's FIN.
    fn eof(&mut self, p: Peer) {
        self.pipe(p, |pipe| pipe.eof = true);
        self.ready(p, true, false, true);
        self.turn();
    }

    /// What the worker wrote since the last call.
    fn output(&mut self, p: Peer) -> Vec<u8> {
        self.pipe(p, |pipe| std::mem::take(&mut pipe.output))
    }

    /// The frames the worker wrote since the last call.
    fn frames(&mut self, p: Peer) -> Vec<(u8, Vec<u8>)> {
        frames(&self.output(p))
    }

    fn closed(&self, p: Peer) -> bool {
        self.pipe(p, |pipe| pipe.closed)
    }

    /// A connection upgraded (its 101 read and checked).
    fn open(&mut self) -> Peer {
        let p = self.accept();
        self.send(p, REQUEST);
        let out = self.output(p);
        assert!(
            out.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        p
    }

    /// The oldest upgrade waiting for the test's decision.
    fn pending(&self) -> PendingUpgrade<u32> {
        self.deferred.borrow_mut().remove(0)
    }

    /// The worker is woken (mailbox commands run).
    fn wake(&mut self) {
        self.net.borrow_mut().events.push_back(IoEvent::Wake);
        self.turn();
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.borrow_mut())
    }

    fn id(&self, p: Peer) -> ConnId {
        ConnId(p.token)
    }
}

impl Harness {
    /// [`Harness::open`] with completion-mode writes: the 101's write completes at once.
    fn open_completion(&mut self) -> Peer {
        let p = self.accept();
        self.send(p, REQUEST);
        let (token, len) = self.net.borrow_mut().in_flight.pop().expect("the 101");
        self.net.borrow_mut().events.push_back(IoEvent::Sent {
            token,
            res: len as i32,
            orphan: None,
        });
        self.turn();
        self.log();
        p
    }
}

mod metrics_tests;
mod proxy_tests;
mod tests;
