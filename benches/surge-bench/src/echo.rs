//! `echo`, `compare` and `idle`: the parent side. It starts the server under test (a child process,
//! unless `--url`), spreads the connections over load-generator child processes (`load.rs`, the
//! surge engine's client; several processes and 127.x.y.z source addresses past 5,000
//! connections), drives their phases, and aggregates their histograms.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use crate::load::new_histogram;
use crate::{free_port, server_metrics, uws, uws_cpp, ServerProc};

#[derive(Parser, Debug, Clone)]
pub struct EchoArgs {
    /// A server to measure (`ws://host:port/path` or `wss://`) instead of starting the systems.
    #[arg(long)]
    pub url: Option<String>,
    /// TLS: the systems serve `wss://` with a test CA's certificate made for the run (surge-echo
    /// and the tokio-tungstenite peer, which uses tokio-rustls with surge's rustls configuration);
    /// the load generators trust that CA. `echo --tls` alone runs surge and tokio-tungstenite.
    #[arg(long)]
    pub tls: bool,
    /// The CA (PEM) the load generators trust for `wss://` (default: the run's test CA with
    /// `--tls`, else the webpki roots).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Systems, one after another: surge (auto backend), surge-epoll, surge-io_uring,
    /// surge-io_uring-poll (`--uring-recv poll`), tokio-tungstenite, fastwebsockets, uws-cpp
    /// (native uWebSockets, one thread; skipped unless built with benches/peers/uws-cpp/build.sh),
    /// uws (uWebSockets.js under node, one thread; skipped unless installed with
    /// benches/peers/uws/setup.sh).
    #[arg(long, value_delimiter = ',', default_value = "surge")]
    pub systems: Vec<String>,
    /// Connections.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub connections: usize,
    /// Payload bytes per message (binary).
    #[arg(short, long, default_value_t = 20)]
    pub size: usize,
    /// Messages in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Open loop: total messages per second (0: closed loop, uWebSockets' load_test method).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds measured per system (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of warm-up per system, not recorded.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Worker threads of the server under test.
    #[arg(long, default_value_t = 1)]
    pub server_workers: usize,
    /// Load-generator processes (0: one per 5,000 connections).
    #[arg(long, default_value_t = 0)]
    pub client_procs: usize,
    /// Worker threads per load-generator process.
    #[arg(long, default_value_t = 1)]
    pub client_workers: usize,
    /// The load generator's backend (epoll, io_uring).
    #[arg(long, default_value = "epoll")]
    pub client_backend: String,
    /// New connections per second, all processes together.
    #[arg(long, default_value_t = 20_000.0)]
    pub ramp_rate: f64,
    /// permessage-deflate: off, no-context or context (window 15). The load generator offers it and
    /// compresses every message; the servers accept it and answer uncompressed (surge-echo, uws-cpp;
    /// uWebSockets.js and the Rust peers only run with off).
    #[arg(long, default_value = "off")]
    pub deflate: String,
    /// Pin the server to CPU 0 and the load generators to CPU 1 (the figures in docs/BENCHMARKS.md
    /// are taken so: one core each).
    #[arg(long)]
    pub pin: bool,
    /// Rounds: the systems run one after another, the whole list this many times (interleaved),
    /// then the medians of each system's rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw throughput and latency percentiles per system into this SVG file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// surge systems: serve the server's Prometheus metrics on a port of their own
    /// (`surge-echo --metrics-addr`) and print a few of its totals after each run.
    #[arg(long)]
    pub server_metrics: bool,
}

/// One system's figures.
#[derive(Debug)]
pub struct EchoResult {
    pub system: String,
    pub opened: usize,
    pub msgs: u64,
    pub bytes: u64,
    pub errors: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
    pub client_cpu: f64,
    pub server_cpu: Option<f64>,
    /// The server's largest resident set seen during the measured window (bytes).
    pub rss: Option<u64>,
}

impl EchoResult {
    pub fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.seconds
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
    /// Server CPU microseconds per echoed message (user + system, all its threads).
    pub fn server_us_per_msg(&self) -> Option<f64> {
        self.server_cpu
            .filter(|_| self.msgs > 0)
            .map(|c| c * 1e6 / self.msgs as f64)
    }
    pub fn us(&self, q: f64) -> f64 {
        let v = if q >= 1.0 {
            self.hist.max()
        } else {
            self.hist.value_at_quantile(q)
        };
        v as f64 / 1000.0
    }
}

/// Starts the server of a system (a child process printing `listening on ADDR`), on CPU 0 with
/// `--pin`.
fn spawn_server(
    system: &str,
    args: &EchoArgs,
    port: u16,
    metrics_port: Option<u16>,
) -> std::io::Result<ServerProc> {
    spawn_server_with(system, args, port, metrics_port, &[])
}

/// As `spawn_server`, with `extra` flags for the server (surge systems only: `idle`'s
/// `--max-conns-per-worker`, `--recv-mode`, `--broadcast`).
pub(crate) fn spawn_server_with(
    system: &str,
    args: &EchoArgs,
    port: u16,
    metrics_port: Option<u16>,
    extra: &[String],
) -> std::io::Result<ServerProc> {
    if !extra.is_empty() && !system.starts_with("surge") {
        return Err(std::io::Error::other(format!(
            "{system}: {} apply to surge systems only",
            extra.join(" ")
        )));
    }
    let workers = args.server_workers;
    let cpu = args.pin.then_some(0);
    let deflate = args.deflate.as_str();
    let tls = args.tls;
    let mut args = vec![
        "--port".to_owned(),
        port.to_string(),
        "--workers".to_owned(),
        workers.to_string(),
    ];
    if deflate != "off" {
        if !(system.starts_with("surge") || system == uws_cpp::SYSTEM) {
            return Err(std::io::Error::other(format!(
                "{system} runs without permessage-deflate only (--deflate {deflate})"
            )));
        }
        args.extend(["--deflate".to_owned(), deflate.to_owned()]);
    }
    if let Some(p) = metrics_port {
        args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{p}")]);
    }
    if tls {
        if !crate::tls::supports(system) {
            return Err(std::io::Error::other(format!(
                "{system} runs without TLS only (--tls)"
            )));
        }
        args.extend(crate::tls::server_flags()?);
    }
    let binary = match system {
        "surge" => "surge-echo",
        "surge-epoll" | "surge-io_uring" => {
            args.extend(["--backend".to_owned(), system["surge-".len()..].to_owned()]);
            "surge-echo"
        }
        // io_uring with a readiness poll and single-shot receives (`UringRecv::PollThenRecv`).
        "surge-io_uring-poll" => {
            args.extend(["--backend", "io_uring", "--uring-recv", "poll"].map(str::to_owned));
            "surge-echo"
        }
        "tokio-tungstenite" => "peer-tokio-tungstenite",
        "fastwebsockets" => "peer-fastwebsockets",
        uws::SYSTEM => {
            if workers != 1 {
                eprintln!(
                    "[{system}] one thread (uWebSockets.js); --server-workers {workers} ignored"
                );
            }
            let mut cmd = uws::spawn_command("echo.js", &args);
            crate::pin(&mut cmd, cpu);
            return ServerProc::spawn_command(cmd, system, false);
        }
        uws_cpp::SYSTEM => {
            let mut cmd = uws_cpp::command("echo", &args);
            crate::pin(&mut cmd, cpu);
            return ServerProc::spawn_command(cmd, system, false);
        }
        other => return Err(std::io::Error::other(format!("unknown system {other}"))),
    };
    args.extend(extra.iter().cloned());
    ServerProc::spawn_pinned(binary, &args, cpu)
}

/// A load-generator child process.
struct LoadProc {
    child: Child,
    stdin: ChildStdin,
}

impl Drop for LoadProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the children said.
pub(crate) enum Said {
    Progress {
        opened: usize,
        msgs: u64,
    },
    Open {
        opened: usize,
        failed: usize,
        secs: f64,
    },
    Result(Box<(u64, u64, u64, f64, Histogram<u64>)>),
    /// An answer to one of idle's commands (load.rs): the whole line.
    Reply(String),
    Gone,
}

fn parse_line(line: &str) -> Option<Said> {
    let w: Vec<&str> = line.split_whitespace().collect();
    match *w.first()? {
        "progress" => Some(Said::Progress {
            opened: w.get(1)?.parse().ok()?,
            msgs: w.get(3)?.parse().ok()?,
        }),
        "open" => Some(Said::Open {
            opened: w.get(1)?.parse().ok()?,
            failed: w.get(2)?.parse().ok()?,
            secs: w.get(3)?.parse().ok()?,
        }),
        "result" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(w.get(5)?)
                .ok()?;
            let hist: Histogram<u64> = Deserializer::new()
                .deserialize(&mut std::io::Cursor::new(bytes))
                .ok()?;
            Some(Said::Result(Box::new((
                w.get(1)?.parse().ok()?,
                w.get(2)?.parse().ok()?,
                w.get(3)?.parse().ok()?,
                w.get(4)?.parse().ok()?,
                hist,
            ))))
        }
        "stats" | "sweep" | "bcast" | "closed" => Some(Said::Reply(line.to_owned())),
        _ => None,
    }
}

/// The load generators of one run.
pub struct Fleet {
    procs: Vec<LoadProc>,
    rx: mpsc::Receiver<(usize, Said)>,
    /// Per process: last progress.
    pub(crate) opened: Vec<usize>,
    msgs: Vec<u64>,
}

impl Fleet {
    /// Starts the load generators for `n` connections to `url`.
    pub fn spawn(url: &str, n: usize, args: &EchoArgs) -> std::io::Result<Fleet> {
        let procs = if args.client_procs > 0 {
            args.client_procs
        } else {
            n.div_ceil(5_000).max(1)
        };
        let spread = procs > 1 || n > 5_000;
        let exe = std::env::current_exe()?;
        let tls_ca = match (&args.tls_ca, args.tls) {
            (Some(ca), _) => Some(ca.clone()),
            (None, true) => Some(crate::tls::files()?.ca.clone()),
            (None, false) => None,
        };
        let (tx, rx) = mpsc::channel();
        let mut list = Vec::new();
        for i in 0..procs {
            let share = n / procs + usize::from(i < n % procs);
            let mut cmd = Command::new(&exe);
            crate::pin(&mut cmd, args.pin.then_some(1));
            crate::die_with_parent(&mut cmd);
            let mut child = cmd
                .arg("load")
                .args(["--url", url])
                .args(["--connections", &share.to_string()])
                .args(["--size", &args.size.to_string()])
                .args(["--inflight", &args.inflight.to_string()])
                .args(["--rate", &(args.rate / procs as f64).to_string()])
                .args(["--source", &if spread { i + 1 } else { 0 }.to_string()])
                .args(["--workers", &args.client_workers.to_string()])
                .args(["--ramp-rate", &(args.ramp_rate / procs as f64).to_string()])
                .args(["--backend", &args.client_backend])
                .args(["--deflate", &args.deflate])
                .args(
                    tls_ca
                        .iter()
                        .flat_map(|ca| ["--tls-ca".as_ref(), ca.as_os_str()]),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let stdout = child.stdout.take().expect("piped");
            let stdin = child.stdin.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(said) = parse_line(&line) {
                        if tx.send((i, said)).is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send((i, Said::Gone));
            });
            list.push(LoadProc { child, stdin });
        }
        Ok(Fleet {
            opened: vec![0; procs],
            msgs: vec![0; procs],
            procs: list,
            rx,
        })
    }

    pub(crate) fn next(&mut self, timeout: Duration) -> Option<(usize, Said)> {
        let got = self.rx.recv_timeout(timeout).ok()?;
        match &got.1 {
            Said::Progress { opened, msgs } => {
                self.opened[got.0] = *opened;
                self.msgs[got.0] = *msgs;
            }
            Said::Open { opened, .. } => self.opened[got.0] = *opened,
            _ => {}
        }
        Some(got)
    }

    /// Waits until every process has opened (or failed) its connections; returns opened, failed
    /// and the slowest ramp's seconds.
    pub fn wait_open(&mut self, label: &str, n: usize) -> std::io::Result<(usize, usize, f64)> {
        let mut done = 0;
        let (mut opened, mut failed, mut secs) = (0, 0, 0f64);
        while done < self.procs.len() {
            match self.next(Duration::from_secs(60)) {
                Some((
                    _,
                    Said::Open {
                        opened: o,
                        failed: f,
                        secs: s,
                    },
                )) => {
                    done += 1;
                    opened += o;
                    failed += f;
                    secs = secs.max(s);
                }
                Some((_, Said::Gone)) => {
                    return Err(std::io::Error::other("a load generator exited early"))
                }
                Some(_) => {}
                None => return Err(std::io::Error::other("load generators stalled")),
            }
            let sum: usize = self.opened.iter().sum();
            eprint!("\r\x1b[K[{label}] connecting {sum}/{n}");
        }
        eprint!("\r\x1b[K");
        Ok((opened, failed, secs))
    }

    pub(crate) fn send(&mut self, line: &str) {
        for p in &mut self.procs {
            let _ = writeln!(p.stdin, "{line}");
            let _ = p.stdin.flush();
        }
    }

    /// Process ids of the load generators.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }
}

/// Runs the echo workload against `url`; `server` (if ours) is sampled for CPU time.
pub fn measure(
    label: &str,
    url: &str,
    server: Option<&ServerProc>,
    args: &EchoArgs,
) -> std::io::Result<EchoResult> {
    let mut fleet = Fleet::spawn(url, args.connections, args)?;
    let (opened, failed, ramp) = fleet.wait_open(label, args.connections)?;
    if failed > 0 {
        eprintln!("[{label}] {failed} connections failed to open");
    }
    eprintln!(
        "[{label}] {opened} connections open in {ramp:.2} s; {} x {} B, {}",
        args.inflight,
        args.size,
        if args.rate > 0.0 {
            format!("open loop at {} msg/s", args.rate)
        } else {
            "closed loop".to_owned()
        }
    );
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    fleet.send(&format!(
        "go {} {}",
        warmup.as_millis(),
        duration.as_millis()
    ));
    let start = Instant::now();
    let record_at = start + warmup;
    let end = record_at + duration;
    let mut server_cpu0 = None;
    let mut rss: Option<u64> = None;
    let mut last = (Instant::now(), 0u64);
    let mut results = Vec::new();
    while results.len() < fleet.procs.len() {
        let now = Instant::now();
        if server_cpu0.is_none() && now >= record_at {
            server_cpu0 = server.and_then(ServerProc::cpu_seconds);
        }
        if server_cpu0.is_some() && now < end {
            if let Some(r) = server.and_then(|s| rss_bytes(s.pid())) {
                rss = Some(rss.map_or(r, |m| m.max(r)));
            }
        }
        match fleet.next(Duration::from_millis(50)) {
            Some((_, Said::Result(r))) => results.push(*r),
            Some((_, Said::Gone)) => {
                return Err(std::io::Error::other("a load generator exited early"))
            }
            Some((_, Said::Progress { .. })) => {
                let total: u64 = fleet.msgs.iter().sum();
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64();
                if dt >= 0.5 {
                    let phase = if now < record_at {
                        "warm-up"
                    } else {
                        "measuring"
                    };
                    eprint!(
                        "\r\x1b[K[{label}] {phase} {:.1} s  {:.0} msg/s",
                        now.duration_since(start).as_secs_f64(),
                        (total - last.1) as f64 / dt
                    );
                    last = (now, total);
                }
            }
            _ => {}
        }
        if Instant::now() > end + Duration::from_secs(30) {
            return Err(std::io::Error::other("no result from the load generators"));
        }
    }
    let server_cpu = match (server_cpu0, server.and_then(ServerProc::cpu_seconds)) {
        // The children report right after the measured window: close enough to its end.
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    eprint!("\r\x1b[K");
    let mut hist = new_histogram();
    let (mut msgs, mut bytes, mut errors, mut client_cpu) = (0, 0, 0, 0.0);
    for (m, b, e, c, h) in &results {
        msgs += m;
        bytes += b;
        errors += e;
        client_cpu += c;
        hist.add(h).expect("same bounds");
    }
    Ok(EchoResult {
        system: label.to_owned(),
        opened,
        msgs,
        bytes,
        errors,
        seconds: duration.as_secs_f64(),
        hist,
        client_cpu,
        server_cpu,
        rss,
    })
}

/// `wss` with `--tls`.
pub fn scheme(args: &EchoArgs) -> &'static str {
    if args.tls {
        "wss"
    } else {
        "ws"
    }
}

/// Runs every system (or `--url`) one after another.
pub fn run_all(args: &EchoArgs) -> std::io::Result<Vec<EchoResult>> {
    let mut results = Vec::new();
    if let Some(url) = &args.url {
        results.push(measure(url, url, None, args)?);
        return Ok(results);
    }
    let systems: Vec<&String> = args.systems.iter().filter(|s| !crate::skip(s)).collect();
    if systems.iter().any(|s| *s == uws_cpp::SYSTEM) {
        eprintln!(
            "[{}] {}",
            uws_cpp::SYSTEM,
            uws_cpp::version().unwrap_or_else(|| "version unknown".to_owned())
        );
    }
    for round in 1..=args.rounds.max(1) {
        if args.rounds > 1 {
            eprintln!("round {round} of {}", args.rounds);
        }
        for system in &systems {
            let port = free_port();
            let metrics_port = (args.server_metrics && system.starts_with("surge")).then(free_port);
            let server = spawn_server(system, args, port, metrics_port)?;
            let r = measure(
                system,
                &format!("{}://{}/", scheme(args), server.addr),
                Some(&server),
                args,
            )?;
            let counters = metrics_port.map(server_metrics::totals);
            drop(server);
            print_row_header_once(&results);
            print_row(&r);
            if let Some(line) = counters {
                println!("  server: {line}");
            }
            results.push(r);
            // Let the sockets of the last run go (TIME_WAIT is per address pair; the next run uses
            // another port).
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Ok(results)
}

/// One system's medians over its rounds.
#[derive(Debug)]
pub struct Median {
    pub system: String,
    pub rounds: usize,
    pub msgs_per_s: f64,
    pub us_per_msg: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rss: Option<u64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Each system's medians, in the order systems first appear.
pub fn medians(results: &[EchoResult]) -> Vec<Median> {
    let mut order: Vec<&str> = Vec::new();
    for r in results {
        if !order.contains(&r.system.as_str()) {
            order.push(&r.system);
        }
    }
    order
        .into_iter()
        .map(|system| {
            let rs: Vec<&EchoResult> = results.iter().filter(|r| r.system == system).collect();
            let of = |f: &dyn Fn(&EchoResult) -> Option<f64>| {
                median(rs.iter().filter_map(|r| f(r)).collect())
            };
            Median {
                system: system.to_owned(),
                rounds: rs.len(),
                msgs_per_s: of(&|r| Some(r.msgs_per_s())).unwrap_or(0.0),
                us_per_msg: of(&|r| r.server_us_per_msg()),
                p50_us: of(&|r| Some(r.us(0.5))).unwrap_or(0.0),
                p99_us: of(&|r| Some(r.us(0.99))).unwrap_or(0.0),
                rss: of(&|r| r.rss.map(|b| b as f64)).map(|b| b as u64),
            }
        })
        .collect()
}

fn mb(b: Option<u64>) -> String {
    b.map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6))
}

fn print_medians(ms: &[Median]) {
    println!(
        "\nmedians of {} rounds:\n{:<18} {:>12} {:>10} {:>9} {:>9} {:>8}",
        ms.first().map_or(0, |m| m.rounds),
        "system",
        "msg/s",
        "srv us/msg",
        "p50 us",
        "p99 us",
        "rss MB"
    );
    for m in ms {
        println!(
            "{:<18} {:>12.0} {:>10} {:>9.1} {:>9.1} {:>8}",
            uws::label(&m.system),
            m.msgs_per_s,
            m.us_per_msg.map_or("-".to_owned(), |u| format!("{u:.2}")),
            m.p50_us,
            m.p99_us,
            mb(m.rss)
        );
    }
}

fn print_row_header_once(done: &[EchoResult]) {
    if done.is_empty() {
        print_header();
    }
}

fn print_header() {
    println!(
        "{:<18} {:>7} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>7} {:>6}",
        "system",
        "conns",
        "msg/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "cli cpu",
        "srv cpu",
        "srv us/msg",
        "rss MB",
        "errors"
    );
}

fn print_row(r: &EchoResult) {
    println!(
        "{:<18} {:>7} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>8} {:>10} {:>7} {:>6}",
        uws::label(&r.system),
        r.opened,
        r.msgs_per_s(),
        r.mb_per_s(),
        r.us(0.5),
        r.us(0.99),
        r.us(0.999),
        r.us(1.0),
        r.client_cpu / r.seconds,
        r.server_cpu
            .map_or("-".to_owned(), |c| format!("{:.2}", c / r.seconds)),
        r.server_us_per_msg()
            .map_or("-".to_owned(), |u| format!("{u:.2}")),
        mb(r.rss),
        r.errors
    );
}

/// Ratios of every surge system to every peer (medians over the rounds).
pub fn print_ratios(ms: &[Median]) {
    let peers: Vec<&Median> = ms
        .iter()
        .filter(|m| !m.system.starts_with("surge"))
        .collect();
    for s in ms.iter().filter(|m| m.system.starts_with("surge")) {
        for p in &peers {
            let cpu = match (s.us_per_msg, p.us_per_msg) {
                (Some(a), Some(b)) if b > 0.0 => format!(", server CPU/msg {:.2}x", a / b),
                _ => String::new(),
            };
            let rss = match (s.rss, p.rss) {
                (Some(a), Some(b)) if b > 0 => format!(", RSS {:.2}x", a as f64 / b as f64),
                _ => String::new(),
            };
            println!(
                "{} vs {}: {:.2}x msg/s, p99 {:.2}x ({}){cpu}{rss}",
                uws::label(&s.system),
                uws::label(&p.system),
                s.msgs_per_s / p.msgs_per_s.max(1e-9),
                s.p99_us / p.p99_us.max(1e-9),
                if s.p99_us <= p.p99_us {
                    "no worse"
                } else {
                    "worse"
                }
            );
        }
    }
}

pub fn write_json(
    path: &PathBuf,
    bench: &str,
    args: &EchoArgs,
    results: &[EchoResult],
) -> std::io::Result<()> {
    let rows: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{{\"system\":\"{}\",\"connections\":{},\"msgs_per_s\":{:.1},\"mb_per_s\":{:.2},\
                 \"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"max_us\":{:.2},\
                 \"client_cpu\":{:.3},\"server_cpu\":{},\"server_us_per_msg\":{},\"rss_bytes\":{},\
                 \"errors\":{}}}",
                r.system,
                r.opened,
                r.msgs_per_s(),
                r.mb_per_s(),
                r.us(0.5),
                r.us(0.99),
                r.us(0.999),
                r.us(1.0),
                r.client_cpu / r.seconds,
                r.server_cpu
                    .map_or("null".to_owned(), |c| format!("{:.3}", c / r.seconds)),
                r.server_us_per_msg()
                    .map_or("null".to_owned(), |u| format!("{u:.3}")),
                r.rss.map_or("null".to_owned(), |b| b.to_string()),
                r.errors
            )
        })
        .collect();
    let meds: Vec<String> = medians(results)
        .iter()
        .map(|m| {
            format!(
                "{{\"system\":\"{}\",\"rounds\":{},\"msgs_per_s\":{:.1},\"server_us_per_msg\":{},\
                 \"p50_us\":{:.2},\"p99_us\":{:.2},\"rss_bytes\":{}}}",
                m.system,
                m.rounds,
                m.msgs_per_s,
                m.us_per_msg
                    .map_or("null".to_owned(), |u| format!("{u:.3}")),
                m.p50_us,
                m.p99_us,
                m.rss.map_or("null".to_owned(), |b| b.to_string())
            )
        })
        .collect();
    std::fs::write(
        path,
        format!(
            "{{\"bench\":\"{bench}\",\"connections\":{},\"size\":{},\"inflight\":{},\"rate\":{},\
             \"duration\":{},\"deflate\":\"{}\",\"tls\":{},\"pinned\":{},\"results\":[{}],\"medians\":[{}]}}\n",
            args.connections,
            args.size,
            args.inflight,
            args.rate,
            args.duration,
            args.deflate,
            args.tls || args.url.as_deref().is_some_and(|u| u.starts_with("wss://")),
            args.pin,
            rows.join(","),
            meds.join(",")
        ),
    )
}

pub fn echo(args: EchoArgs) -> std::io::Result<()> {
    let results = run_all(&args)?;
    if args.url.is_some() {
        print_header();
        for r in &results {
            print_row(r);
        }
    }
    let ms = medians(&results);
    if args.rounds > 1 {
        print_medians(&ms);
    }
    if ms.len() > 1 {
        print_ratios(&ms);
    }
    if let Some(path) = &args.json {
        write_json(path, "echo", &args, &results)?;
    }
    if let Some(path) = &args.svg {
        let size = if args.size.is_multiple_of(1024) {
            format!("{} KiB", args.size / 1024)
        } else {
            format!("{} B", args.size)
        };
        let title = format!(
            "echo: {} connections x {size}, {} in flight, {}",
            args.connections,
            args.inflight,
            if args.rate > 0.0 {
                format!("open loop at {} msg/s", args.rate)
            } else {
                "closed loop".to_owned()
            }
        );
        crate::chart::draw(path, &title, &results)?;
    }
    Ok(())
}

/// Kernel TCP memory in pages (/proc/net/sockstat "TCP: ... mem N").
pub(crate) fn tcp_mem_pages() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let i = w.iter().position(|x| *x == "mem")?;
    w.get(i + 1)?.parse().ok()
}

pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
