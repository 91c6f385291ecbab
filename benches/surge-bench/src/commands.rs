//! `surge-bench commands`: the cost of an application command (`ServerHandle::post` ->
//! `Handler::on_command`), in CPU time per command on each side.
//!
//! One worker pinned to CPU 0 receives; this process's main thread, pinned to CPU 1, posts `-n`
//! commands (a `u64` each), keeping at most `--window` in flight (waiting, with `yield_now`, for
//! the worker to catch up: its mailbox stays bounded and it goes to sleep and is woken as in real
//! use whenever it empties it). Each side's thread CPU time (`CLOCK_THREAD_CPUTIME_ID`) is divided
//! by the commands: the worker's includes its mailbox drains, wake-ups and polls. Rounds run one
//! after another per driver and print medians.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use surge::{
    Accept, Backend, Command, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade,
    WorkerCtx,
};

#[derive(clap::Parser, Debug)]
pub struct CommandArgs {
    /// Commands per round.
    #[arg(short = 'n', long, default_value_t = 2_000_000)]
    count: u64,
    /// Commands in flight at most (posted, not yet handled).
    #[arg(long, default_value_t = 4096)]
    window: u64,
    /// Rounds per driver.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Drivers: epoll, io_uring.
    #[arg(long, value_delimiter = ',', default_value = "epoll,io_uring")]
    backends: Vec<String>,
}

/// This thread's CPU time.
pub(crate) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_THREAD_CPUTIME_ID always exists on
    // Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_this_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

struct Receiver {
    count: u64,
    done: Arc<AtomicU64>,
    started: Option<Duration>,
    report: mpsc::Sender<Duration>,
}

impl Handler for Receiver {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: Message<'_>) {}
    fn on_command(&mut self, _worker: &mut WorkerCtx<()>, cmd: Command) {
        let Ok(seq) = cmd.downcast::<u64>() else {
            return;
        };
        if seq == 0 {
            self.started = Some(thread_cpu());
        }
        let n = self.done.load(Ordering::Relaxed) + 1;
        self.done.store(n, Ordering::Release);
        if n == self.count {
            let spent = thread_cpu() - self.started.unwrap_or_default();
            let _ = self.report.send(spent);
        }
    }
}

/// One round: (worker CPU, poster CPU, wall).
fn round(backend: Backend, args: &CommandArgs) -> std::io::Result<(Duration, Duration, Duration)> {
    let cfg = ServerConfig {
        workers: 1,
        pin_cpus: true,
        backend,
        ..ServerConfig::bind("127.0.0.1:0".parse().unwrap())
    };
    let done = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let (d, count) = (Arc::clone(&done), args.count);
    let server = Server::new(cfg).start(move |_| Receiver {
        count,
        done: Arc::clone(&d),
        started: None,
        report: tx.clone(),
    })?;
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let cpu0 = thread_cpu();
    let mut posted = 0u64;
    while posted < args.count {
        while posted - done.load(Ordering::Acquire) >= args.window {
            std::thread::yield_now();
        }
        server.post(0, posted).expect("running");
        posted += 1;
    }
    let poster = thread_cpu() - cpu0;
    let worker = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the worker handled every command");
    let wall = t0.elapsed();
    server.shutdown();
    server.join()?;
    Ok((worker, poster, wall))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: CommandArgs) -> std::io::Result<()> {
    pin_this_thread(1);
    println!(
        "{} commands per round, at most {} in flight, {} rounds; worker on CPU 0, poster on CPU 1",
        args.count, args.window, args.rounds
    );
    for name in &args.backends {
        let backend = match name.as_str() {
            "epoll" => Backend::Epoll,
            "io_uring" => Backend::IoUring,
            other => {
                eprintln!("unknown backend {other}");
                continue;
            }
        };
        let (mut w, mut p, mut rate) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..args.rounds {
            let (worker, poster, wall) = round(backend, &args)?;
            let n = args.count as f64;
            let row = (
                worker.as_nanos() as f64 / n,
                poster.as_nanos() as f64 / n,
                n / wall.as_secs_f64(),
            );
            println!(
                "{name} round {}: worker {:.0} ns/command, poster {:.0} ns/command, {:.2} M commands/s",
                r + 1,
                row.0,
                row.1,
                row.2 / 1e6
            );
            w.push(row.0);
            p.push(row.1);
            rate.push(row.2);
        }
        println!(
            "{name} median: worker {:.0} ns/command, poster {:.0} ns/command, {:.2} M commands/s",
            median(w),
            median(p),
            median(rate) / 1e6
        );
    }
    Ok(())
}
