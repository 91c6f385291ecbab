//! Memory under load follows the working set and goes back when the load drops: a worker's kept
//! buffers (`WorkerCtx::buffer_memory`: free pool chunks, and on io_uring the provided receive
//! buffers' pages and send boxes) drop to nothing within two `buffer_trim_interval`s of quiet,
//! with the connections still open; with an io_uring buffer ring far smaller than one turn's
//! receives, every message still comes back whole and in order. Each test runs on every driver.

#[macro_use]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{wait_until, RawClient};
use surge::{
    Accept, Conn, Handler, Message, Request, Server, ServerConfig, ServerHandle, Upgrade, WorkerCtx,
};

const TRIM: Duration = Duration::from_millis(300);

/// Echoes, and samples the worker's kept buffer bytes every 10 ms.
struct Echo {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
    fn on_start(&mut self, worker: &mut WorkerCtx<()>) {
        worker.set_interval(Duration::from_millis(10), ());
    }
    fn on_timer(&mut self, worker: &mut WorkerCtx<()>, _timer: surge::Timer<'_>) {
        let held = worker.buffer_memory();
        self.now.store(held, Ordering::Relaxed);
        self.peak.fetch_max(held, Ordering::Relaxed);
    }
}

fn start(ring: usize) -> (ServerHandle, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(usize::MAX));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (Arc::clone(&now), Arc::clone(&peak));
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        buffer_trim_interval: Some(TRIM),
        uring_max_recv_buffers: ring,
        ..ServerConfig::default()
    };
    let handle = Server::new(cfg)
        .start(move |_| Echo {
            now: Arc::clone(&n),
            peak: Arc::clone(&p),
        })
        .unwrap();
    (handle, now, peak)
}

/// `clients` connections each send `rounds` messages of `size` bytes at once (all connections'
/// messages in flight together), then read every echo back and compare.
fn load(addr: std::net::SocketAddr, clients: usize, rounds: usize, size: usize) -> Vec<RawClient> {
    let mut conns: Vec<RawClient> = (0..clients)
        .map(|_| RawClient::connect(addr, "/"))
        .collect();
    for round in 0..rounds {
        for (i, c) in conns.iter_mut().enumerate() {
            let payload: Vec<u8> = (0..size).map(|j| (i * 31 + j + round) as u8).collect();
            c.send(true, 2, &payload);
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let f = c.expect_frame();
            assert_eq!(f.opcode, 2);
            assert_eq!(f.payload.len(), size, "connection {i}, round {round}");
            assert!(
                f.payload
                    .iter()
                    .enumerate()
                    .all(|(j, &b)| b == (i * 31 + j + round) as u8),
                "connection {i}, round {round}: the echo differs"
            );
        }
    }
    conns
}

/// Load, then quiet: the kept buffers drop to 0 within a few trim intervals, the connections open.
fn buffers_given_back_after_quiet() {
    let (handle, now, peak) = start(64);
    let conns = load(handle.local_addr(), 40, 5, 16 * 1024);
    assert!(
        peak.load(Ordering::Relaxed) >= 16 * 1024,
        "buffers were kept under load: {}",
        peak.load(Ordering::Relaxed)
    );
    assert!(
        wait_until(TRIM * 8, || now.load(Ordering::Relaxed) == 0),
        "kept buffers after a quiet period: {} bytes",
        now.load(Ordering::Relaxed)
    );
    // Still serving, from fresh buffers.
    let mut conns = conns;
    conns[0].send(true, 1, b"again");
    assert_eq!(conns[0].expect_frame().payload, b"again");
    drop(conns);
    handle.shutdown();
    handle.join().unwrap();
}

/// A buffer ring of 4 buffers (io_uring; 16 KiB messages take two each) under 40 connections'
/// messages at once: receives that find it empty wait their turn, none is lost or reordered.
fn tiny_ring_serves_everyone() {
    let (handle, _now, _peak) = start(4);
    let conns = load(handle.local_addr(), 40, 4, 16 * 1024 + 100);
    let conns2 = load(handle.local_addr(), 20, 20, 700);
    drop((conns, conns2));
    handle.shutdown();
    handle.join().unwrap();
}

per_driver!(buffers_given_back_after_quiet, tiny_ring_serves_everyone);
