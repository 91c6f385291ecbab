//! The load generator: a child process (`surge-bench load ...`, hidden) that opens its share of the
//! connections with the surge engine's client and drives them, talking to the parent over
//! stdin/stdout lines:
//!
//! ```text
//! child  -> progress OPENED FAILED MSGS       (every 250 ms)
//! child  -> open OPENED FAILED RAMP_SECONDS   (every connection opened or failed)
//! parent -> go WARMUP_MS DURATION_MS          (echo: start sending; record after the warm-up)
//! child  -> result MSGS BYTES ERRORS CPU_SECONDS HISTOGRAM   (V2-serialized, base64)
//! parent -> quit                              (idle: hold until then)
//! ```
//!
//! `idle` holds the connections and may, instead of `go`, send any of these (each answered by one
//! line) before `quit`:
//!
//! ```text
//! parent -> stats                     child -> stats OPENED FAILED LOST CLOSED
//! parent -> sweep TIMEOUT_MS          child -> sweep ANSWERED ASKED SECONDS
//! parent -> bcast-wait TIMEOUT_MS     child -> bcast GOT EXPECTED LAST_MONO_NS
//! parent -> close TIMEOUT_MS          child -> closed CLOSED EXPECTED SECONDS
//! ```
//!
//! LOST: connections closed before `close` (by the server or the network). `sweep`: every open
//! connection sends one 16-byte binary message and waits for its echo. `bcast-wait`: waits until
//! every open connection has received the text message `bcast` (`surge-echo --subscribe-all on`,
//! published by the parent); LAST_MONO_NS is CLOCK_MONOTONIC at the last one to arrive, comparable
//! with the parent's clock (one machine). `close`: every connection sends a close frame (1000)
//! and the child waits for the closes to complete.
//!
//! Closed loop (uWebSockets' load_test): each connection keeps `inflight` messages out, sending the
//! next one when an echo returns; latency is from the send. Open loop (`rate` > 0): each worker
//! sends its share of `rate` messages per second round-robin over its connections, on a 1 ms tick,
//! and latency is measured from each message's scheduled time (a late send counts against it).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use surge::proto::DeflateMode;
use surge::{
    Backend, Client, CloseCode, CloseInfo, Conn, ConnId, ConnectError, ConnectRequest, Handler,
    Message, Rejection, Request, ServerConfig, Timer, Upgrade, WorkerCtx,
};

#[derive(Parser, Debug, Clone)]
pub struct LoadArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub connections: usize,
    #[arg(long, default_value_t = 20)]
    pub size: usize,
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Messages per second for this process (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Connect from 127.SOURCE.x.y (0: let the kernel choose).
    #[arg(long, default_value_t = 0)]
    pub source: u8,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 20_000.0)]
    pub ramp_rate: f64,
    #[arg(long, default_value = "epoll")]
    pub backend: Backend,
    /// permessage-deflate offered and used for every message: off, no-context, context.
    #[arg(long, default_value = "off")]
    pub deflate: String,
    /// `wss://`: the CA (PEM) to trust instead of the webpki roots. The connections of a process
    /// share one TLS configuration, hence its session cache (later connections resume).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// The `--deflate` names (shared with surge-echo's flag).
pub fn deflate_mode(name: &str) -> Result<DeflateMode, String> {
    match name {
        "off" => Ok(DeflateMode::Disabled),
        "no-context" => Ok(DeflateMode::NoContextTakeover),
        "context" => Ok(DeflateMode::ContextTakeover {
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }),
        other => Err(format!("--deflate off|no-context|context, not {other}")),
    }
}

const PHASE_RUN: u8 = 1;
const PHASE_RECORD: u8 = 2;
const PHASE_STOP: u8 = 3;

/// Latency histogram bounds: 1 us to 60 s, 3 significant digits (nanoseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

#[derive(Default)]
struct Shared {
    opened: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicUsize,
    msgs: AtomicU64,
    phase: AtomicU8,
    /// idle: sweeps asked (each worker runs one when it sees this move), echoes they got back.
    sweep_gen: AtomicU64,
    sweep_answered: AtomicUsize,
    /// idle: `bcast` messages received, and CLOCK_MONOTONIC (ns) at the latest.
    bcast_got: AtomicUsize,
    bcast_last_ns: AtomicU64,
    /// idle: the parent asked to close every connection; closes completed since.
    closing: AtomicBool,
    closed_after: AtomicUsize,
    /// Per worker: recorded messages, bytes and latencies, handed over at the stop.
    results: Mutex<Vec<(u64, u64, Histogram<u64>)>>,
}

struct Load {
    args: LoadArgs,
    shared: Arc<Shared>,
    payload: Vec<u8>,
    request: ConnectRequest,
    /// Connections this worker opens.
    quota: usize,
    started: usize,
    /// Ramp budget (connections) and when it was last topped up.
    budget: f64,
    last: Instant,
    conns: Vec<ConnId>,
    hist: Histogram<u64>,
    msgs: u64,
    bytes: u64,
    running: bool,
    reported: bool,
    /// Open loop: messages per second for this worker, the schedule's start, messages scheduled.
    rate: f64,
    sched_start: Option<Instant>,
    scheduled: u64,
    next_conn: usize,
    /// idle: the last sweep this worker ran; whether it closed its connections.
    sweep_seen: u64,
    close_seen: bool,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine.
pub fn mono_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec, a live local.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// The message each connection sends in a sweep.
const SWEEP_PAYLOAD: [u8; 16] = [0x5a; 16];

/// Send times (or scheduled times) of a connection's messages in flight.
type Data = VecDeque<Instant>;

/// Handshakes under way per worker at most, during the ramp.
const MAX_PENDING: usize = 2_000;

impl Load {
    fn record(&mut self, sent: Instant, len: usize) {
        if self.shared.phase.load(Ordering::Relaxed) == PHASE_RECORD {
            let ns = sent.elapsed().as_nanos() as u64;
            self.hist.saturating_record(ns);
            self.msgs += 1;
            self.bytes += len as u64;
        }
        self.shared.msgs.fetch_add(1, Ordering::Relaxed);
    }

    fn ramp(&mut self, worker: &mut WorkerCtx<Data>) {
        let now = Instant::now();
        self.budget = (self.budget
            + now.duration_since(self.last).as_secs_f64() * self.args.ramp_rate
                / self.args.workers as f64)
            .min(1000.0);
        self.last = now;
        while self.started < self.quota
            && self.budget >= 1.0
            && worker.pending_connects() < MAX_PENDING
        {
            self.budget -= 1.0;
            let mut req = self.request.clone();
            if self.args.source != 0 {
                // Spread over 200 addresses: each allows ~28k ports towards one server address.
                let n = self.started * self.args.workers + worker.index();
                req.source_addr = Some(IpAddr::V4(Ipv4Addr::new(
                    127,
                    self.args.source,
                    (n / 200 % 256) as u8,
                    1 + (n % 200) as u8,
                )));
            }
            self.started += 1;
            if let Err(e) = worker.connect(&req, VecDeque::new()) {
                eprintln!("connect: {e}");
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// idle: a sweep or the close the parent asked for, once per worker.
    fn idle_commands(&mut self, worker: &mut WorkerCtx<Data>) {
        let gen = self.shared.sweep_gen.load(Ordering::Relaxed);
        if gen != self.sweep_seen {
            self.sweep_seen = gen;
            let now = Instant::now();
            for &id in &self.conns {
                if let Some(mut c) = worker.conn(id) {
                    c.data_mut().push_back(now);
                    let _ = c.send_binary(&SWEEP_PAYLOAD);
                }
            }
        }
        if !self.close_seen && self.shared.closing.load(Ordering::Relaxed) {
            self.close_seen = true;
            for &id in &self.conns {
                if let Some(mut c) = worker.conn(id) {
                    let _ = c.close(CloseCode::NORMAL, "");
                }
            }
        }
    }

    fn start_sending(&mut self, worker: &mut WorkerCtx<Data>) {
        self.running = true;
        if self.rate > 0.0 {
            self.sched_start = Some(Instant::now());
            return;
        }
        for &id in &self.conns {
            if let Some(mut c) = worker.conn(id) {
                for _ in 0..self.args.inflight {
                    c.data_mut().push_back(Instant::now());
                    let _ = c.send_binary(&self.payload);
                }
            }
        }
    }

    /// Open loop: the messages due since the last tick, round-robin over the connections, each
    /// stamped with its scheduled time.
    fn send_due(&mut self, worker: &mut WorkerCtx<Data>) {
        let (Some(start), false) = (self.sched_start, self.conns.is_empty()) else {
            return;
        };
        let period = Duration::from_secs_f64(1.0 / self.rate);
        let due = (start.elapsed().as_secs_f64() * self.rate) as u64;
        while self.scheduled < due {
            let at = start + period.mul_f64(self.scheduled as f64);
            self.scheduled += 1;
            let id = self.conns[self.next_conn % self.conns.len()];
            self.next_conn += 1;
            if let Some(mut c) = worker.conn(id) {
                c.data_mut().push_back(at);
                let _ = c.send_binary(&self.payload);
            }
        }
    }
}

impl Handler for Load {
    type Data = Data;

    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<Data> {
        Upgrade::Reject(Rejection::new(404, "a load generator"))
    }

    fn on_start(&mut self, worker: &mut WorkerCtx<Data>) {
        self.last = Instant::now();
        worker.set_interval(Duration::from_millis(1), ());
        self.ramp(worker);
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Data>) {
        self.conns.push(conn.id());
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        if self.running && self.rate == 0.0 {
            for _ in 0..self.args.inflight {
                conn.data_mut().push_back(Instant::now());
                let _ = conn.send_binary(&self.payload);
            }
        }
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Data>, msg: Message<'_>) {
        if !self.running {
            // idle: a broadcast, or the echo of a sweep's message.
            match msg {
                Message::Text(t) if t.starts_with("bcast") => {
                    self.shared.bcast_got.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .bcast_last_ns
                        .fetch_max(mono_ns(), Ordering::Relaxed);
                }
                _ => {
                    if conn.data_mut().pop_front().is_some() {
                        self.shared.sweep_answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            return;
        }
        let len = match msg {
            Message::Binary(b) => b.len(),
            Message::Text(t) => t.len(),
        };
        let Some(sent) = conn.data_mut().pop_front() else {
            return;
        };
        self.record(sent, len);
        if self.rate == 0.0 && self.shared.phase.load(Ordering::Relaxed) != PHASE_STOP {
            conn.data_mut().push_back(Instant::now());
            let _ = conn.send_binary(&self.payload);
        }
    }

    fn on_close(&mut self, _worker: &mut WorkerCtx<Data>, _data: Data, _info: &CloseInfo<'_>) {
        if self.shared.closing.load(Ordering::Relaxed) {
            self.shared.closed_after.fetch_add(1, Ordering::Relaxed);
        } else if self.shared.phase.load(Ordering::Relaxed) != PHASE_STOP {
            self.shared.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_connect_error(
        &mut self,
        _worker: &mut WorkerCtx<Data>,
        _id: ConnId,
        _data: Data,
        error: &ConnectError,
    ) {
        if self.shared.failed.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("connect: {error}");
        }
    }

    fn on_timer(&mut self, worker: &mut WorkerCtx<Data>, timer: Timer<'_>) {
        if self.started < self.quota {
            self.ramp(worker);
        }
        match self.shared.phase.load(Ordering::Relaxed) {
            PHASE_RUN | PHASE_RECORD if !self.running => self.start_sending(worker),
            PHASE_STOP if !self.reported => {
                self.reported = true;
                let hist = std::mem::replace(&mut self.hist, new_histogram());
                self.shared
                    .results
                    .lock()
                    .expect("unpoisoned")
                    .push((self.msgs, self.bytes, hist));
                worker.cancel_timer(timer.id());
                return;
            }
            _ => {}
        }
        if !self.running {
            self.idle_commands(worker);
        }
        if self.running && self.rate > 0.0 {
            self.send_due(worker);
        }
    }
}

/// User plus system CPU seconds of process `pid` ("self" for this one), from /proc.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Raises the open-file limit to the hard limit.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write one rlimit, a live local.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The child process's main.
pub fn run(args: LoadArgs) -> std::io::Result<()> {
    raise_fd_limit();
    let shared = Arc::new(Shared::default());
    let workers = args.workers.max(1);
    let cfg = ServerConfig {
        workers,
        backend: args.backend,
        max_backpressure: 64 << 20,
        deflate: surge::proto::DeflateConfig {
            mode: deflate_mode(&args.deflate).map_err(std::io::Error::other)?,
            min_size: 0, // every message compressed, whatever its size
            ..Default::default()
        },
        handshake_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    };
    let mut request = ConnectRequest::new(args.url.clone());
    if let Some(ca) = &args.tls_ca {
        request = request.tls(surge::tls::ClientTlsConfig::with_ca_pem_file(ca)?);
    }
    let s = Arc::clone(&shared);
    let a = args.clone();
    let handle = Client::new(cfg).start(move |i| {
        let quota = a.connections / workers + usize::from(i < a.connections % workers);
        Load {
            payload: vec![0x5a; a.size],
            request: request.clone(),
            args: a.clone(),
            shared: Arc::clone(&s),
            quota,
            started: 0,
            budget: 1.0,
            last: Instant::now(),
            conns: Vec::with_capacity(quota),
            hist: new_histogram(),
            msgs: 0,
            bytes: 0,
            running: false,
            reported: false,
            rate: a.rate / workers as f64,
            sched_start: None,
            scheduled: 0,
            next_conn: 0,
            sweep_seen: 0,
            close_seen: false,
        }
    })?;
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let progress = |out: &mut std::io::StdoutLock<'_>| {
        let _ = writeln!(
            out,
            "progress {} {} {}",
            shared.opened.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
            shared.msgs.load(Ordering::Relaxed)
        );
        let _ = out.flush();
    };
    // Ramp until every connection opened or failed.
    loop {
        let done = shared.opened.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= args.connections {
            break;
        }
        progress(&mut out);
        std::thread::sleep(Duration::from_millis(250));
    }
    writeln!(
        out,
        "open {} {} {:.4}",
        shared.opened.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    )?;
    out.flush()?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    while let Some(cmd) = line.split_whitespace().next().filter(|w| *w != "go") {
        // idle: answer the parent's commands until `quit` (or the parent went away).
        let ms = line
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or(60_000);
        if !idle_command(cmd, Duration::from_millis(ms), &shared, &mut out)? {
            break;
        }
        line.clear();
        stdin.lock().read_line(&mut line)?;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() != Some(&"go") {
        // idle, or the parent went away: hold until then.
        handle.shutdown();
        std::process::exit(0);
    }
    let ms =
        |i: usize| Duration::from_millis(words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0));
    let (warmup, duration) = (ms(1), ms(2));
    shared.phase.store(PHASE_RUN, Ordering::Relaxed);
    sleep_with_progress(warmup, &mut out, &progress);
    let cpu0 = cpu_seconds("self").unwrap_or(0.0);
    shared.phase.store(PHASE_RECORD, Ordering::Relaxed);
    sleep_with_progress(duration, &mut out, &progress);
    shared.phase.store(PHASE_STOP, Ordering::Relaxed);
    let cpu = cpu_seconds("self").unwrap_or(0.0) - cpu0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.results.lock().expect("unpoisoned").len() < workers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut hist = new_histogram();
    let (mut msgs, mut bytes) = (0, 0);
    for (m, b, h) in shared.results.lock().expect("unpoisoned").iter() {
        msgs += m;
        bytes += b;
        hist.add(h).expect("same bounds");
    }
    let mut ser = Vec::new();
    V2Serializer::new()
        .serialize(&hist, &mut ser)
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let errors = shared.closed.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
    writeln!(
        out,
        "result {msgs} {bytes} {errors} {cpu:.4} {}",
        base64::engine::general_purpose::STANDARD.encode(&ser)
    )?;
    out.flush()?;
    // Exit without closing politely: the sockets go with the process.
    std::process::exit(0);
}

/// One of idle's commands (see the module's doc), answered on `out`; false for `quit` or one it
/// does not know.
fn idle_command(
    cmd: &str,
    timeout: Duration,
    shared: &Shared,
    out: &mut std::io::StdoutLock<'_>,
) -> std::io::Result<bool> {
    let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let start = Instant::now();
    let wait = |done: &dyn Fn() -> bool| {
        while !done() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Connections open now: opened, less those lost (a close already asked for is not a loss).
    let open = || get(&shared.opened) - get(&shared.closed) - get(&shared.closed_after);
    let lost_before = get(&shared.closed);
    let lost_since = || get(&shared.closed) - lost_before;
    match cmd {
        "stats" => writeln!(
            out,
            "stats {} {} {} {}",
            get(&shared.opened),
            get(&shared.failed),
            get(&shared.closed),
            get(&shared.closed_after)
        )?,
        "sweep" => {
            let asked = open();
            let base = get(&shared.sweep_answered);
            shared.sweep_gen.fetch_add(1, Ordering::Relaxed);
            // Until every connection answered or was lost (a lost one never answers).
            wait(&|| get(&shared.sweep_answered) - base + lost_since() >= asked);
            writeln!(
                out,
                "sweep {} {asked} {:.6}",
                get(&shared.sweep_answered) - base,
                start.elapsed().as_secs_f64()
            )?;
        }
        "bcast-wait" => {
            let expected = open();
            wait(&|| get(&shared.bcast_got) + lost_since() >= expected);
            writeln!(
                out,
                "bcast {} {expected} {}",
                get(&shared.bcast_got),
                shared.bcast_last_ns.load(Ordering::Relaxed)
            )?;
        }
        "close" => {
            let expected = open();
            shared.closing.store(true, Ordering::Relaxed);
            wait(&|| get(&shared.closed_after) >= expected);
            writeln!(
                out,
                "closed {} {expected} {:.6}",
                get(&shared.closed_after),
                start.elapsed().as_secs_f64()
            )?;
        }
        _ => return Ok(false),
    }
    out.flush()?;
    Ok(true)
}

fn sleep_with_progress(
    d: Duration,
    out: &mut std::io::StdoutLock<'_>,
    progress: &impl Fn(&mut std::io::StdoutLock<'_>),
) {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(250)));
        progress(out);
    }
}
