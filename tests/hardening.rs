//! What a peer or the clock does must not stall a worker or grow memory without bound: timers
//! beside far deadlines, floods of pings and small frames into connections that never read, end of
//! file right after a request, panicking handlers. Each test runs on every driver (`per_driver!`).

#[macro_use]
#[path = "support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use surge::{
    Accept, Conn, Handler, Message, Request, Server, ServerConfig, ServerHandle, Upgrade, WorkerCtx,
};

fn config(workers: usize) -> ServerConfig {
    ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    }
}

/// Shuts the server down and waits for it, at most 10 s.
fn stop(handle: ServerHandle) {
    handle.shutdown();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(handle.join());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("join() returns after shutdown")
        .expect("workers exit cleanly");
}

/// A 30 Hz game tick beside a timer 10 s away on a worker that sees no traffic.
struct Ticker {
    ticks: Arc<Mutex<Vec<Instant>>>,
}

impl Handler for Ticker {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: Message<'_>) {}
    fn on_start(&mut self, worker: &mut WorkerCtx<()>) {
        worker.set_timeout(Duration::from_secs(10), 2);
        worker.set_interval(Duration::from_millis(33), 1);
        self.ticks.lock().unwrap().push(Instant::now()); // the first gap counts too
    }
    fn on_timer(&mut self, _worker: &mut WorkerCtx<()>, id: u64) {
        if id == 1 {
            self.ticks.lock().unwrap().push(Instant::now());
        }
    }
}

/// Finding 1: a far timer stalled every nearer one for up to 4.1 s.
fn interval_beside_far_timeout() {
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let t = Arc::clone(&ticks);
    let handle = Server::new(config(1))
        .start(move |_| Ticker {
            ticks: Arc::clone(&t),
        })
        .expect("server starts");
    std::thread::sleep(Duration::from_secs(3));
    let mut got = ticks.lock().unwrap().clone();
    let ticks = got.len().saturating_sub(1);
    got.push(Instant::now()); // the last gap counts too
    stop(handle);
    let gaps: Vec<u128> = got.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    let max_gap = gaps.iter().copied().max().unwrap_or(u128::MAX);
    println!("{ticks} ticks in 3 s, largest gap {max_gap} ms");
    assert!(ticks >= 85, "{ticks} ticks in 3 s");
    assert!(max_gap <= 100, "a gap of {max_gap} ms between ticks");
}

per_driver!(interval_beside_far_timeout);
