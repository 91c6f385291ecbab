//! `idle`: ramp to N idle connections, hold them, measure what they cost, then close them all and
//! check that none was lost. Built for one machine holding up to a million live connections
//! (issue 19): the server under test and the load generators run side by side, every connection is
//! loopback, so both of its ends are on this machine.
//!
//! What a run does, for each system:
//! 1. checks the machine's limits first and refuses with the limit named: `fs.file-max` against
//!    `fs.file-nr` (2 sockets per connection), `MemAvailable` against an estimate, local ports per
//!    source address, `RLIMIT_NOFILE` against `--per-proc`, `nf_conntrack_max` where conntrack is
//!    tracking;
//! 2. starts the server (its Prometheus metrics on a port of their own) and
//!    ceil(N / `--per-proc`) load generators (load.rs), each connecting from its own 127.S.x.y
//!    addresses (200 per process, so ports never run out);
//! 3. ramps at `--ramp-rate` connections/s with a progress line a second on stderr;
//! 4. holds `--hold` seconds, then reads the server's RSS and heap, the kernel's slab and TCP
//!    memory, and both sides' counts;
//! 5. `--sweep`: every connection sends one 16-byte message and waits for its echo;
//!    `--broadcast`: the server (`surge-echo --subscribe-all on`) publishes one message to the
//!    topic every connection subscribed to, and the run times the last delivery;
//! 6. closes every connection (close handshake from the client) and waits for the server's
//!    `surge_connections_open` to return to 0.
//!
//! Ctrl-C (SIGINT) or SIGTERM stops the run and kills every child; the children also die with the
//! harness (`PR_SET_PDEATHSIG`), and the whole run is bounded by `--time-limit`.
//!
//! The commands for 10k, 100k, 500k and 1M connections: benches/surge-bench/README.md.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::echo::{self, EchoArgs, Fleet, Said};
use crate::load::mono_ns;
use crate::{free_port, server_metrics, uws, ServerProc};

#[derive(Parser, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: EchoArgs,
    /// Seconds to hold the connections before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// Connections per load-generator process (each opens ordinary file descriptors, bound by its
    /// RLIMIT_NOFILE); processes = ceil(N / this) unless --client-procs says otherwise.
    #[arg(long, default_value_t = 19_000)]
    pub per_proc: usize,
    /// surge systems: the server's `max_connections_per_worker` (default: the engine's).
    #[arg(long)]
    pub max_conns_per_worker: Option<usize>,
    /// surge systems on io_uring: how connections receive, multishot or poll (default: the
    /// engine's, or SURGE_URING_RECV).
    #[arg(long)]
    pub recv_mode: Option<String>,
    /// Seconds the whole run may take (each system's ramp, hold, sweep, broadcast and close).
    #[arg(long, default_value_t = 600.0)]
    pub time_limit: f64,
    /// During the hold, every connection sends one 16-byte message and waits for its echo.
    #[arg(long)]
    pub sweep: bool,
    /// Every connection subscribes to one topic (`surge-echo --subscribe-all on`); during the
    /// hold the server publishes one message to it: time until the last connection has it.
    #[arg(long)]
    pub broadcast: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM set `STOP`, which every wait of the run polls.
fn catch_signals() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe); sigaction reads a live
    // local. No SA_RESTART: a blocking read returns (and is retried after the flag is seen).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// The run's bound and its signals.
struct Guard {
    deadline: Instant,
    limit: f64,
}

impl Guard {
    /// An error when the run must stop (a signal, or the time limit) during `phase`.
    fn check(&self, phase: &str) -> std::io::Result<()> {
        if STOP.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(format!(
                "interrupted during {phase}; children killed"
            )));
        }
        if Instant::now() >= self.deadline {
            return Err(std::io::Error::other(format!(
                "--time-limit {} s reached during {phase}; children killed",
                self.limit
            )));
        }
        Ok(())
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps `d`, or less when the run must stop.
    fn sleep(&self, d: Duration, phase: &str) -> std::io::Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.check(phase)?;
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
        }
        Ok(())
    }
}

/// A `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn read_u64s(path: &str) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(path).ok()?;
    s.split_whitespace().map(|w| w.parse().ok()).collect()
}

fn nofile_hard() -> u64 {
    // SAFETY: getrlimit writes one rlimit, a live local.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_max
        } else {
            1024
        }
    }
}

/// Kernel memory per loopback connection pair (both sockets, idle), user memory per client
/// connection, and per server connection: the estimates the memory check uses.
const KERNEL_PER_PAIR: u64 = 10 << 10;
const CLIENT_PER_CONN: u64 = 2 << 10;
const SERVER_PER_CONN: u64 = 1 << 10;

/// Addresses each load process connects from (load.rs: 127.S.(k/200 % 256).(1 + k % 200)).
const SOURCE_ADDRS: usize = 200 * 256;

/// Refuses, naming the limit, when this machine cannot hold `n` connections from `procs` load
/// processes of `share` connections each; warns where the server may not.
fn check_limits(args: &IdleArgs, n: usize, procs: usize, share: usize) -> Result<(), String> {
    let mut refuse = Vec::new();
    let slack = 10_000 + 100 * procs as u64;
    let n64 = n as u64;
    // File descriptors: one file per socket, two sockets per connection (client and server,
    // direct descriptors included: they are files too).
    match (
        read_u64s("/proc/sys/fs/file-max"),
        read_u64s("/proc/sys/fs/file-nr"),
    ) {
        (Some(max), Some(nr)) => {
            let (max, used) = (max[0], nr[0]);
            let need = 2 * n64 + slack;
            if used + need > max {
                refuse.push(format!(
                    "fs.file-max is {max} with {used} files open: {n} connections need {need} more \
                     (2 per connection + slack); raise it with sysctl -w fs.file-max={}",
                    (used + need).next_power_of_two()
                ));
            }
        }
        _ => eprintln!("(fs.file-max unreadable: not checked)"),
    }
    // Memory.
    let need = n64 * (KERNEL_PER_PAIR + CLIENT_PER_CONN + SERVER_PER_CONN)
        + procs as u64 * (8 << 20)
        + (64 << 20);
    match meminfo("MemAvailable:") {
        Some(avail) if need > avail => refuse.push(format!(
            "MemAvailable is {:.1} GB: {n} connections need about {:.1} GB ({} KB of kernel memory \
             per loopback connection pair, {} KB per client connection, {} KB per server \
             connection, 8 MB per load process)",
            avail as f64 / 1e9,
            need as f64 / 1e9,
            KERNEL_PER_PAIR >> 10,
            CLIENT_PER_CONN >> 10,
            SERVER_PER_CONN >> 10
        )),
        Some(_) => {}
        None => eprintln!("(MemAvailable unreadable: memory not checked)"),
    }
    // Local ports: each client socket binds its source address before connecting, which takes a
    // port of that address from the ephemeral range.
    let per_addr = if procs == 1 && n <= 5_000 {
        n // one process, the kernel's source address (load.rs --source 0)
    } else {
        share.div_ceil(share.clamp(1, SOURCE_ADDRS))
    };
    if let Some(r) = read_u64s("/proc/sys/net/ipv4/ip_local_port_range") {
        let ports = (r[1] + 1).saturating_sub(r[0]);
        if per_addr as u64 + 1_000 > ports {
            refuse.push(format!(
                "net.ipv4.ip_local_port_range {}-{} gives {ports} ports per source address: \
                 {per_addr} connections per address need more (lower --per-proc)",
                r[0], r[1]
            ));
        }
    }
    if procs > 254 {
        refuse.push(format!(
            "{procs} load processes: at most 254 (each has its own source 127.S.x.y); raise \
             --per-proc"
        ));
    }
    // Each load process: ordinary descriptors, `share` of them plus a few.
    let nofile = nofile_hard();
    if share as u64 + 100 > nofile {
        refuse.push(format!(
            "RLIMIT_NOFILE (hard) is {nofile}: a load process of {share} connections needs {} \
             (lower --per-proc to {} or less)",
            share + 100,
            nofile.saturating_sub(100)
        ));
    }
    // Connection tracking, where loaded, drops connections past its table.
    if let (Some(max), count) = (
        read_u64s("/proc/sys/net/netfilter/nf_conntrack_max"),
        read_u64s("/proc/sys/net/netfilter/nf_conntrack_count"),
    ) {
        // Loaded but tracking nothing (no rule in this namespace asks for it): loopback connections
        // are not tracked, as measured here (0 with 2,000 open).
        let used = count.map_or(0, |c| c[0]);
        if used > 0 && used + n64 > max[0] {
            refuse.push(format!(
                "net.netfilter.nf_conntrack_max is {} with {used} tracked: {n} connections need \
                 more (raise it, or skip tracking on lo: iptables -t raw -A PREROUTING -i lo -j \
                 NOTRACK, and OUTPUT -o lo)",
                max[0]
            ));
        }
    }
    // The server: warnings only (the engine's limits are its own business, and changing).
    let workers = args.common.server_workers.max(1);
    let per_worker = args
        .max_conns_per_worker
        .unwrap_or(surge::ServerConfig::default().max_connections_per_worker);
    if per_worker.saturating_mul(workers) < n {
        eprintln!(
            "warning: {workers} server workers x max_connections_per_worker {per_worker} < {n}: \
             the server will refuse the rest (--max-conns-per-worker, --server-workers)"
        );
    }
    for system in &args.common.systems {
        if system == "surge-epoll" && n as u64 + 100 > nofile {
            eprintln!(
                "warning: surge-epoll holds one descriptor per connection: RLIMIT_NOFILE {nofile} \
                 < {n}"
            );
        }
    }
    if refuse.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "refusing to start {n} connections:\n  {}",
            refuse.join("\n  ")
        ))
    }
}

/// One system's figures.
#[derive(Default)]
struct Row {
    system: String,
    connections: usize,
    procs: usize,
    opened: usize,
    failed: usize,
    ramp_s: f64,
    /// Client-side count before the close: connections lost (closed before we closed them) during
    /// the hold, the sweep or the broadcast.
    lost: usize,
    /// The server's `surge_connections_open` at the end of the hold.
    server_open: Option<u64>,
    rss: (Option<u64>, Option<u64>),
    heap: (Option<u64>, Option<u64>),
    slab: (Option<u64>, Option<u64>),
    sunreclaim: (Option<u64>, Option<u64>),
    tcp_mem: (Option<u64>, Option<u64>),
    client_rss: u64,
    /// Sweep: answered, asked, seconds.
    sweep: Option<(usize, usize, f64)>,
    /// Broadcast: received, expected, seconds from the publish to the last delivery.
    broadcast: Option<(usize, usize, f64)>,
    /// Close: closed, expected, seconds; the server's open connections after, and when.
    closed: Option<(usize, usize, f64)>,
    server_open_after: Option<u64>,
    server_zero_s: Option<f64>,
}

impl Row {
    fn per_conn(&self, v: (Option<u64>, Option<u64>)) -> Option<f64> {
        match v {
            (Some(a), Some(b)) if self.opened > 0 => {
                Some((b as f64 - a as f64) / self.opened as f64)
            }
            _ => None,
        }
    }
    fn connects_per_s(&self) -> f64 {
        self.opened as f64 / self.ramp_s.max(1e-9)
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.0}"))
}

pub fn run(mut args: IdleArgs) -> std::io::Result<()> {
    let n = args.common.connections;
    let per_proc = args.per_proc.max(1);
    if args.common.client_procs == 0 {
        args.common.client_procs = n.div_ceil(per_proc).max(1);
    }
    let procs = args.common.client_procs;
    let share = n.div_ceil(procs);
    if let Some(mode) = &args.recv_mode {
        if mode != "multishot" && mode != "poll" {
            return Err(std::io::Error::other("--recv-mode multishot|poll"));
        }
    }
    check_limits(&args, n, procs, share).map_err(std::io::Error::other)?;
    catch_signals();
    let guard = Guard {
        deadline: Instant::now() + Duration::from_secs_f64(args.time_limit),
        limit: args.time_limit,
    };
    eprintln!(
        "{n} connections from {procs} load processes ({share} each at most), {:.0} connects/s; \
         --time-limit {} s",
        args.common.ramp_rate, args.time_limit
    );
    let systems: Vec<String> = match &args.common.url {
        Some(u) => vec![u.clone()],
        None => args.common.systems.clone(),
    };
    println!(
        "{:<18} {:>7} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "system", "conns", "ramp s", "conn/s", "rss B/conn", "heap B/conn", "kernel B/conn"
    );
    let mut rows = Vec::new();
    for system in systems {
        if args.common.url.is_none() && crate::skip(&system) {
            continue;
        }
        let row = run_one(&system, &args, &guard)?;
        print_row(&row);
        rows.push(row);
        std::thread::sleep(Duration::from_millis(500));
    }
    if let Some(path) = &args.common.json {
        write_json(path, &args, &rows)?;
    }
    Ok(())
}

fn run_one(system: &str, args: &IdleArgs, guard: &Guard) -> std::io::Result<Row> {
    let common = &args.common;
    let n = common.connections;
    let ours = common.url.is_none() && system.starts_with("surge");
    let metrics_port = ours.then(free_port);
    let mut extra = Vec::new();
    if let Some(m) = args.max_conns_per_worker {
        extra.extend(["--max-conns-per-worker".to_owned(), m.to_string()]);
    }
    if let Some(mode) = &args.recv_mode {
        extra.extend(["--uring-recv".to_owned(), mode.clone()]);
    }
    if args.broadcast {
        extra.extend(["--subscribe-all".to_owned(), "on".to_owned()]);
    }
    let server = match &common.url {
        Some(_) => None,
        None => Some(echo::spawn_server_with(
            system,
            common,
            free_port(),
            metrics_port,
            &extra,
        )?),
    };
    if args.broadcast && server.as_ref().is_none_or(|s| s.ask("heap").is_none()) {
        return Err(std::io::Error::other(
            "--broadcast needs a surge system (surge-echo publishes)",
        ));
    }
    let url = match (&server, &common.url) {
        (Some(s), _) => format!("{}://{}/", echo::scheme(common), s.addr),
        (None, Some(u)) => u.clone(),
        _ => unreachable!(),
    };
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.as_ref().map(ServerProc::pid);
    let mut row = Row {
        system: system.to_owned(),
        connections: n,
        procs: common.client_procs,
        ..Row::default()
    };
    row.rss.0 = pid.and_then(echo::rss_bytes);
    row.heap.0 = server.as_ref().and_then(ServerProc::heap_bytes);
    row.slab.0 = meminfo("Slab:");
    row.sunreclaim.0 = meminfo("SUnreclaim:");
    row.tcp_mem.0 = echo::tcp_mem_pages();

    // Ramp.
    let mut fleet = Fleet::spawn(&url, n, common)?;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut last_t, mut last_open) = (started, 0usize);
    let mut last_change = (started, 0usize);
    let mut done = 0;
    while done < common.client_procs {
        guard.check("the ramp")?;
        match fleet.next(Duration::from_millis(250)) {
            Some((
                _,
                Said::Open {
                    opened,
                    failed,
                    secs,
                },
            )) => {
                done += 1;
                row.opened += opened;
                row.failed += failed;
                row.ramp_s = row.ramp_s.max(secs);
            }
            Some((_, Said::Gone)) => {
                return Err(std::io::Error::other(
                    "a load generator exited during the ramp",
                ))
            }
            _ => {}
        }
        let now = Instant::now();
        let open: usize = fleet.opened.iter().sum();
        if open != last_change.1 {
            last_change = (now, open);
        } else if now.duration_since(last_change.0) > Duration::from_secs(60) {
            return Err(std::io::Error::other(format!(
                "the ramp stalled at {open} connections for 60 s"
            )));
        }
        if now.duration_since(last_t) >= Duration::from_secs(1) {
            let rate =
                (open - last_open.min(open)) as f64 / now.duration_since(last_t).as_secs_f64();
            let mb =
                |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6));
            let line = format!(
                "[{}] {:6.1} s  open {open}/{n}  {rate:.0} conn/s  server rss {} heap {}",
                uws::label(system),
                now.duration_since(started).as_secs_f64(),
                mb(pid.and_then(echo::rss_bytes)),
                mb(server.as_ref().and_then(ServerProc::heap_bytes)),
            );
            if tty {
                eprint!("\r\x1b[K{line}");
            } else {
                eprintln!("{line}");
            }
            (last_t, last_open) = (now, open);
        }
    }
    if tty {
        eprintln!();
    }
    eprintln!(
        "[{}] {} open, {} failed in {:.2} s; holding {} s",
        uws::label(system),
        row.opened,
        row.failed,
        row.ramp_s,
        args.hold
    );

    // Hold, then measure.
    guard.sleep(Duration::from_secs_f64(args.hold), "the hold")?;
    row.rss.1 = pid.and_then(echo::rss_bytes);
    row.heap.1 = server.as_ref().and_then(ServerProc::heap_bytes);
    row.slab.1 = meminfo("Slab:");
    row.sunreclaim.1 = meminfo("SUnreclaim:");
    row.tcp_mem.1 = echo::tcp_mem_pages();
    row.client_rss = fleet.pids().into_iter().filter_map(echo::rss_bytes).sum();
    let timeout_ms = |g: &Guard| g.left().min(Duration::from_secs(300)).as_millis();
    for reply in ask_all(&mut fleet, "stats", guard, "stats")? {
        // stats OPENED FAILED LOST CLOSED
        row.lost += field(&reply, 3);
    }
    row.server_open = metrics_port
        .and_then(|p| server_metrics::value(p, "surge_connections_open"))
        .map(|v| v as u64);

    if args.sweep {
        let t0 = Instant::now();
        let (mut answered, mut asked) = (0, 0);
        let cmd = format!("sweep {}", timeout_ms(guard));
        for reply in ask_all(&mut fleet, &cmd, guard, "the sweep")? {
            answered += field(&reply, 1);
            asked += field(&reply, 2);
        }
        row.sweep = Some((answered, asked, t0.elapsed().as_secs_f64()));
    }
    if let (true, Some(server)) = (args.broadcast, &server) {
        let t0 = mono_ns();
        let published = server.ask("publish");
        if published.as_deref() != Some("published true") {
            return Err(std::io::Error::other(format!(
                "the server did not publish: {published:?}"
            )));
        }
        let (mut got, mut expected, mut last) = (0, 0, t0);
        let cmd = format!("bcast-wait {}", timeout_ms(guard));
        for reply in ask_all(&mut fleet, &cmd, guard, "the broadcast")? {
            got += field(&reply, 1);
            expected += field(&reply, 2);
            last = last.max(field(&reply, 3) as u64);
        }
        row.broadcast = Some((got, expected, (last - t0) as f64 / 1e9));
    }

    // Connections lost during the sweep or the broadcast count too (a lost one never answers).
    if args.sweep || args.broadcast {
        row.lost = 0;
        for reply in ask_all(&mut fleet, "stats", guard, "stats")? {
            row.lost += field(&reply, 3);
        }
    }

    // Close everything, then check that both sides are back to nothing.
    let t0 = Instant::now();
    let (mut closed, mut expected) = (0, 0);
    let cmd = format!("close {}", timeout_ms(guard).min(120_000));
    for reply in ask_all(&mut fleet, &cmd, guard, "the close")? {
        closed += field(&reply, 1);
        expected += field(&reply, 2);
    }
    row.closed = Some((closed, expected, t0.elapsed().as_secs_f64()));
    if let Some(port) = metrics_port {
        let end = Instant::now() + Duration::from_secs(30).min(guard.left());
        loop {
            let open = server_metrics::value(port, "surge_connections_open").map(|v| v as u64);
            row.server_open_after = open;
            if open == Some(0) {
                row.server_zero_s = Some(t0.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= end {
                break;
            }
            guard.check("the wait for the server's connections to close")?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fleet.send("quit");
    drop(fleet);
    drop(server);
    Ok(row)
}

/// Sends `cmd` to every load process and returns their answers (one line each).
fn ask_all(
    fleet: &mut Fleet,
    cmd: &str,
    guard: &Guard,
    phase: &str,
) -> std::io::Result<Vec<String>> {
    fleet.send(cmd);
    let mut replies = Vec::new();
    while replies.len() < fleet.pids().len() {
        guard.check(phase)?;
        match fleet.next(Duration::from_millis(250)) {
            Some((_, Said::Reply(line))) => replies.push(line),
            Some((_, Said::Gone)) => {
                return Err(std::io::Error::other(format!(
                    "a load generator exited during {phase}"
                )))
            }
            _ => {}
        }
    }
    Ok(replies)
}

/// The `i`th word of a reply as a number (0 when absent).
fn field(line: &str, i: usize) -> usize {
    line.split_whitespace()
        .nth(i)
        .and_then(|w| w.parse::<u64>().ok())
        .map_or(0, |v| v as usize)
}

fn print_row(r: &Row) {
    let page = page_size();
    println!(
        "{:<18} {:>7} {:>10.2} {:>12.0} {:>12} {:>12} {:>12}",
        uws::label(&r.system),
        r.opened,
        r.ramp_s,
        r.connects_per_s(),
        fmt(r.per_conn(r.rss)),
        fmt(r.per_conn(r.heap)),
        // Both ends of each connection are on this machine: half the pages are the server's.
        fmt(r.per_conn((
            r.tcp_mem.0.map(|m| m * page / 2),
            r.tcp_mem.1.map(|m| m * page / 2)
        ))),
    );
    let still = r.opened - r.lost.min(r.opened);
    println!(
        "  held {still} of {} ({} failed to open, {} lost before the close; server \
         surge_connections_open {} after the hold); {} load processes",
        r.connections,
        r.failed,
        r.lost,
        r.server_open.map_or("-".to_owned(), |v| v.to_string()),
        r.procs
    );
    println!(
        "  connects/s {:.0} (a TCP connect and its WebSocket upgrade count as one: handshakes/s \
         is the same figure)",
        r.connects_per_s()
    );
    let mb = |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6));
    println!(
        "  server: rss {} ({} B/conn), heap {} ({} B/conn); load processes rss {:.1} MB ({:.0} \
         B/conn)",
        mb(r.rss.1),
        fmt(r.per_conn(r.rss)),
        mb(r.heap.1),
        fmt(r.per_conn(r.heap)),
        r.client_rss as f64 / 1e6,
        r.client_rss as f64 / r.opened.max(1) as f64
    );
    let slab = r.per_conn(r.slab);
    println!(
        "  kernel (both ends of each loopback connection): slab {} B per connection pair ({} per \
         end), unreclaimable slab {} B per pair, sockstat TCP mem {} B per pair",
        fmt(slab),
        fmt(slab.map(|s| s / 2.0)),
        fmt(r.per_conn(r.sunreclaim)),
        fmt(r.per_conn((r.tcp_mem.0.map(|m| m * page), r.tcp_mem.1.map(|m| m * page)))),
    );
    if let Some((answered, asked, secs)) = r.sweep {
        println!("  sweep: {answered} of {asked} answered in {secs:.3} s (one 16 B echo each)");
    }
    if let Some((got, expected, secs)) = r.broadcast {
        println!(
            "  broadcast: {got} of {expected} received, the last {:.1} ms after the publish: \
             {:.0} deliveries/s",
            secs * 1e3,
            got as f64 / secs.max(1e-9)
        );
    }
    if let Some((closed, expected, secs)) = r.closed {
        println!(
            "  close: {closed} of {expected} closed in {secs:.2} s; server surge_connections_open \
             {}{}{}",
            r.server_open_after
                .map_or("-".to_owned(), |v| v.to_string()),
            r.server_zero_s
                .map_or(String::new(), |s| format!(" after {s:.2} s")),
            if closed == expected && r.server_open_after.unwrap_or(0) == 0 && r.lost == 0 {
                ": nothing lost"
            } else {
                ": CONNECTIONS LOST OR LEFT OPEN"
            }
        );
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    4096u64.max(unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64)
}

fn write_json(path: &PathBuf, args: &IdleArgs, rows: &[Row]) -> std::io::Result<()> {
    use serde_json::json;
    let page = page_size();
    let results: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let half = |v: (Option<u64>, Option<u64>)| {
                (v.0.map(|m| m * page / 2), v.1.map(|m| m * page / 2))
            };
            let pages = |v: (Option<u64>, Option<u64>)| (v.0.map(|m| m * page), v.1.map(|m| m * page));
            // Rounded to 0.1 B, as the text output.
            let round = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
            json!({
                // The first seven fields are the ones `idle --json` always had.
                "system": r.system,
                "connections": r.opened,
                "ramp_s": r.ramp_s,
                "connects_per_s": r.connects_per_s().round(),
                "rss_per_conn": fmt(r.per_conn(r.rss)),
                "heap_per_conn": fmt(r.per_conn(r.heap)),
                "kernel_per_conn": fmt(r.per_conn(half(r.tcp_mem))),
                "requested": r.connections,
                "load_procs": r.procs,
                "failed": r.failed,
                "lost": r.lost,
                "server_connections_open": r.server_open,
                "handshakes_per_s": r.connects_per_s().round(),
                "server_rss_bytes": r.rss.1,
                "server_heap_bytes": r.heap.1,
                "server_rss_per_conn": round(r.per_conn(r.rss)),
                "server_heap_per_conn": round(r.per_conn(r.heap)),
                "client_rss_bytes": r.client_rss,
                "slab_per_conn_pair": round(r.per_conn(r.slab)),
                "slab_per_conn_end": round(r.per_conn(r.slab).map(|s| s / 2.0)),
                "sunreclaim_per_conn_pair": round(r.per_conn(r.sunreclaim)),
                "tcp_mem_per_conn_pair": round(r.per_conn(pages(r.tcp_mem))),
                "sweep_answered": r.sweep.map(|s| s.0),
                "sweep_asked": r.sweep.map(|s| s.1),
                "sweep_s": r.sweep.map(|s| s.2),
                "broadcast_received": r.broadcast.map(|b| b.0),
                "broadcast_expected": r.broadcast.map(|b| b.1),
                "broadcast_s": r.broadcast.map(|b| b.2),
                "broadcast_deliveries_per_s": r.broadcast.map(|(g, _, s)| (g as f64 / s.max(1e-9)).round()),
                "closed": r.closed.map(|c| c.0),
                "close_expected": r.closed.map(|c| c.1),
                "close_s": r.closed.map(|c| c.2),
                "server_connections_open_after_close": r.server_open_after,
                "server_zero_after_s": r.server_zero_s,
            })
        })
        .collect();
    let doc = json!({
        "bench": "idle",
        "hold": args.hold,
        "per_proc": args.per_proc,
        "ramp_rate": args.common.ramp_rate,
        "sweep": args.sweep,
        "broadcast": args.broadcast,
        "recv_mode": args.recv_mode,
        "max_conns_per_worker": args.max_conns_per_worker,
        "results": results,
    });
    std::fs::write(path, format!("{doc}\n"))
}
