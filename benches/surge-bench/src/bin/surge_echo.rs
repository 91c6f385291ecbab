//! The surge echo server as the harness runs it: a child process like every peer, so that each system
//! is measured the same way. `surge-echo --port P --workers N [--busy-poll-us US] [--backend B]
//! [--deflate off|no-context|context] [--uring-recv multishot|poll] [--uring-max-recv-buffers N]
//! [--defer off|thread] [--metrics-addr ADDR] [--tls-cert chain.pem --tls-key key.pem]
//! [--max-conns-per-worker N] [--uring-ring-slots N] [--subscribe-all on|off]`. `--defer thread`: every upgrade is deferred
//! (`Upgrade::defer`) and accepted by another thread, to measure what a deferred decision costs
//! against an immediate one. `--metrics-addr`: the Prometheus metrics at `http://ADDR/metrics`.
//! `--tls-cert`/`--tls-key`: the port speaks TLS (`wss://`; surge's defaults: ALPN `http/1.1`,
//! session tickets). `--max-conns-per-worker`: `ServerConfig::max_connections_per_worker` (default:
//! the engine's). `--subscribe-all on` (`surge-bench idle --broadcast`): every connection subscribes
//! to the topic `all` when it opens, and a line `publish` on stdin publishes one text message
//! `bcast` to it (answered `published` once handed to the workers); echo works as before.

#[path = "../server_args.rs"]
mod server_args;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use surge::{
    Accept, Backend, Conn, Handler, Message, PendingUpgrade, PreparedMessage, Request, Server,
    ServerConfig, Upgrade,
};

/// The topic of `--subscribe-all on`.
const TOPIC: &str = "all";

/// Counts heap bytes in use, for `surge-bench idle` (asked with a `heap` line on stdin).
struct Counting;

static HEAP: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Echo {
    /// `--defer thread`: where pending upgrades go to be accepted.
    defer: Option<mpsc::Sender<PendingUpgrade<()>>>,
    /// `--subscribe-all on`: every connection subscribes to `all` when it opens.
    subscribe: bool,
}

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        match &self.defer {
            None => Upgrade::Accept(Accept::new(())),
            Some(tx) => {
                let tx = tx.clone();
                Upgrade::defer(move |pending| {
                    let _ = tx.send(pending);
                })
            }
        }
    }
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        if self.subscribe {
            conn.subscribe(TOPIC);
        }
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn main() -> std::io::Result<()> {
    let mut cfg = ServerConfig::default();
    let mut defer = false;
    let mut subscribe = false;
    let (mut tls_cert, mut tls_key) = (None, None);
    let (port, workers) = server_args::parse(cfg.workers, |flag, value| {
        match flag {
            "--busy-poll-us" => {
                cfg.busy_poll = Some(Duration::from_micros(value.parse().expect("us")))
            }
            "--backend" => cfg.backend = value.parse::<Backend>().expect("backend"),
            "--metrics-addr" => cfg.metrics.addr = Some(value.parse().expect("metrics address")),
            "--uring-recv" => cfg.uring_recv = value.parse().expect("uring receive mode"),
            "--uring-max-recv-buffers" => {
                cfg.uring_max_recv_buffers = value.parse().expect("buffer count")
            }
            "--deflate" => {
                cfg.deflate.mode = match value {
                    "off" => surge::proto::DeflateMode::Disabled,
                    "no-context" => surge::proto::DeflateMode::NoContextTakeover,
                    "context" => surge::proto::DeflateMode::ContextTakeover {
                        server_max_window_bits: 15,
                        client_max_window_bits: 15,
                    },
                    _ => panic!("--deflate off|no-context|context"),
                };
                // Replies leave uncompressed, as uWS's echo sends them (`ws->send(msg, op, false)`):
                // the workload measures receiving compressed messages.
                cfg.deflate.min_size = usize::MAX;
            }
            "--max-conns-per-worker" => {
                cfg.max_connections_per_worker = value.parse().expect("connections per worker")
            }
            "--uring-ring-slots" => {
                cfg.uring_ring_slots = Some(value.parse().expect("slots per io_uring ring"))
            }
            "--subscribe-all" => {
                subscribe = match value {
                    "off" => false,
                    "on" => true,
                    _ => panic!("--subscribe-all on|off"),
                }
            }
            "--tls-cert" => tls_cert = Some(value.to_owned()),
            "--tls-key" => tls_key = Some(value.to_owned()),
            "--defer" => {
                defer = match value {
                    "off" => false,
                    "thread" => true,
                    _ => panic!("--defer off|thread"),
                }
            }
            _ => return false,
        }
        true
    });
    let deciders = defer.then(|| {
        let (tx, rx) = mpsc::channel::<PendingUpgrade<()>>();
        std::thread::spawn(move || {
            for pending in rx {
                let _ = pending.accept(Accept::new(()));
            }
        });
        tx
    });
    cfg.workers = workers;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            cfg.tls = Some(surge::tls::TlsConfig::from_pem_files(cert, key)?);
            cfg.bind = Vec::new();
            cfg.tls_bind = vec![addr];
        }
        (None, None) => cfg.bind = vec![addr],
        _ => panic!("--tls-cert and --tls-key go together"),
    }
    cfg.origin = surge::handshake::OriginPolicy::AllowAll;
    let handle = Server::new(cfg).start(move |_| Echo {
        defer: deciders.clone(),
        subscribe,
    })?;
    println!("listening on {}", handle.local_addr());
    let publisher = handle.publisher();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "heap" => {
                    println!("heap {}", HEAP.load(Ordering::Relaxed));
                }
                Ok(l) if l.trim() == "publish" => {
                    let ok = publisher
                        .publish(TOPIC, &PreparedMessage::text("bcast"))
                        .is_ok();
                    println!("published {ok}");
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    handle.join()
}
