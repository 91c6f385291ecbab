//! `surge-bench fanout`: one publisher, N subscribers, rising publish rates; deliveries per second
//! and publish-to-receive latency (the publish's scheduled time is in the payload: open loop), for
//! surge (`surge-broadcast`, topics), the usual tokio-tungstenite broadcast
//! (`peer-tokio-tungstenite-broadcast`, a task and channel per subscriber) and, when installed,
//! uWebSockets.js's own pub/sub (`benches/peers/uws/broadcast.js`, one thread) in the same run.
//!
//! Subscribers live in child processes of this binary (`--client`, hidden), at most
//! `--per-process` each, each process connecting from its own 127.0.1.x source address (the
//! machine allows 20,000 descriptors per process, and one source address has ~28k ports).
//! They read with one epoll loop each and report their counts and latency histograms per step.
//!
//! Across machines (surge-cluster): `--nodes N --broker nats|redis` runs N surge nodes on one
//! broker (started here on a free port from Debian's `nats-server`/`redis-server`, or
//! `--broker-url`), the subscriber processes spread over the nodes, the publisher on node 0. Per
//! step it adds: p99 of the subscribers on node 0 (local: no broker hop) and on the other nodes
//! (remote), the broker's messages per publish in (publishes sent to it) and out (envelopes it
//! delivered to the nodes), the nodes' CPU together and the broker's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
pub struct FanoutArgs {
    /// Subscriber counts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "10000,19000")]
    subscribers: Vec<usize>,
    /// Messages published per second, one step each.
    #[arg(long, value_delimiter = ',', default_value = "50,200,500,1000")]
    rates: Vec<u32>,
    /// Systems: surge, tokio-tungstenite, uws-cpp (native uWebSockets pub/sub, one thread; skipped
    /// unless built with benches/peers/uws-cpp/build.sh), uws (uWebSockets.js pub/sub under node,
    /// one thread; skipped unless installed with benches/peers/uws/setup.sh).
    #[arg(long, value_delimiter = ',', default_value = "surge,tokio-tungstenite")]
    systems: Vec<String>,
    /// Payload bytes (at least 16: timestamp and sequence number).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds published per step.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Server worker threads (surge workers, tokio worker threads).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// surge's backend: auto, epoll, io_uring.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Subscribers per client process.
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// First server port; 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// surge nodes (surge only): more than one needs --broker.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The broker joining the nodes: nats or redis (surge-cluster).
    #[arg(long)]
    broker: Option<String>,
    /// A running broker to use instead of starting one (nats://... or redis://...).
    #[arg(long)]
    broker_url: Option<String>,
    /// Child mode: `ADDR,COUNT,SOURCE_IP`.
    #[arg(long, hide = true)]
    client: Option<String>,
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid one we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

pub fn run(args: FanoutArgs) -> std::io::Result<()> {
    if let Some(spec) = &args.client {
        return client(spec);
    }
    assert!(args.size >= 16, "--size must be at least 16");
    println!(
        "fanout: {} B payload, {} s per step, {} server workers, subscribers {:?}, rates {:?} msg/s",
        args.size, args.duration, args.workers, args.subscribers, args.rates
    );
    if args.nodes > 1 && args.broker.is_none() && args.broker_url.is_none() {
        return Err(std::io::Error::other(
            "--nodes > 1 needs --broker nats|redis",
        ));
    }
    let cluster = args.broker.is_some() || args.broker_url.is_some();
    print!(
        "{:<18} {:>6} {:>6} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "system",
        "subs",
        "rate",
        "offered/s",
        "delivered/s",
        "lost%",
        "p50 us",
        "p99 us",
        "max us",
        "srv us/dlv"
    );
    if cluster {
        print!(
            " {:>9} {:>9} {:>7} {:>7} {:>10}",
            "loc p99", "rem p99", "brk in", "brk out", "brk us/pub"
        );
    }
    println!();
    for &n in &args.subscribers {
        for system in &args.systems {
            if crate::skip(system) {
                continue;
            }
            if cluster && system != "surge" {
                eprintln!("{system}: skipped (--nodes/--broker are surge-cluster's)");
                continue;
            }
            run_system(&args, system, n)?;
        }
    }
    Ok(())
}

/// A child process, killed on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: Command) -> std::io::Result<Proc> {
        Self::spawn_with(cmd, Stdio::inherit())
    }

    fn spawn_with(mut cmd: Command, stderr: Stdio) -> std::io::Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            stdin,
            lines,
        })
    }

    fn wait_for(&self, prefix: &str, limit: Duration) -> std::io::Result<String> {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(_) => return Err(std::io::Error::other(format!("no `{prefix}` line"))),
            }
        }
    }

    fn say(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A broker of the run's own (or none with --broker-url), killed on drop.
struct BrokerProc {
    url: String,
    proc: Option<Proc>,
}

fn start_broker(args: &FanoutArgs) -> std::io::Result<Option<BrokerProc>> {
    if let Some(url) = &args.broker_url {
        return Ok(Some(BrokerProc {
            url: url.clone(),
            proc: None,
        }));
    }
    let Some(kind) = args.broker.as_deref() else {
        return Ok(None);
    };
    let port = free_port()?;
    let (cmd, url) = match kind {
        "nats" => {
            let mut c = Command::new("nats-server");
            c.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            (c, format!("nats://127.0.0.1:{port}"))
        }
        "redis" => {
            let mut c = Command::new("redis-server");
            c.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            (c, format!("redis://127.0.0.1:{port}"))
        }
        other => {
            return Err(std::io::Error::other(format!(
                "--broker {other}: expected nats or redis"
            )))
        }
    };
    let proc = Proc::spawn_with(cmd, Stdio::null()).map_err(|e| {
        std::io::Error::other(format!(
            "cannot start {kind}'s server ({e}): install Debian's nats-server / redis-server, \
             or pass --broker-url"
        ))
    })?;
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end {
            return Err(std::io::Error::other(format!("{kind} did not come up")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(BrokerProc {
        url,
        proc: Some(proc),
    }))
}

/// A node's cluster counters (`stats` on its stdin): (sent, received).
fn node_stats(node: &mut Proc) -> std::io::Result<(u64, u64)> {
    node.say("stats");
    let line = node.wait_for("cluster ", Duration::from_secs(5))?;
    let field = |name: &str| -> u64 {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("sent="), field("received=")))
}

fn run_system(args: &FanoutArgs, system: &str, n: usize) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let broker = start_broker(args)?;
    let nodes = args.nodes.max(1);
    let mut servers = Vec::with_capacity(nodes);
    let mut addrs = Vec::with_capacity(nodes);
    for i in 0..nodes {
        // surge binds port 0 and says which port it got (no race with other sockets); the peers
        // get a port that was free a moment ago.
        let port = match args.port {
            0 if system == "surge" => 0,
            0 => free_port()?,
            p => p + i as u16,
        };
        let mut sargs = vec![
            "--port".to_owned(),
            port.to_string(),
            "--workers".to_owned(),
            args.workers.to_string(),
            "--backend".to_owned(),
            args.backend.clone(),
        ];
        if let Some(b) = &broker {
            sargs.extend(["--cluster".to_owned(), b.url.clone()]);
        }
        let mut cmd = match system {
            "surge" => Command::new(crate::sibling("surge-broadcast")?),
            "tokio-tungstenite" => {
                Command::new(crate::sibling("peer-tokio-tungstenite-broadcast")?)
            }
            // One thread whatever --workers says (uWS pub/sub is per App, an App per thread).
            crate::uws::SYSTEM => crate::uws::spawn_command("broadcast.js", &[]),
            crate::uws_cpp::SYSTEM => crate::uws_cpp::command("pubsub", &[]),
            other => return Err(std::io::Error::other(format!("unknown system {other}"))),
        };
        cmd.args(&sargs);
        let server = Proc::spawn(cmd)?;
        let line = server.wait_for("listening on", Duration::from_secs(10))?;
        let bound = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map_or(port, |a| a.port());
        servers.push(server);
        addrs.push(SocketAddr::from(([127, 0, 0, 1], bound)));
    }
    let pids: Vec<String> = servers.iter().map(|s| s.child.id().to_string()).collect();
    let broker_pid = broker
        .as_ref()
        .and_then(|b| b.proc.as_ref())
        .map(|p| p.child.id().to_string());
    let mut clients = Vec::new();
    // The node each client process is on.
    let mut client_node = Vec::new();
    let mut left = n;
    let mut k = 0;
    // At least one process per node, so that every node has subscribers.
    let per_process = args.per_process.min(n.div_ceil(nodes)).max(1);
    while left > 0 {
        let count = left.min(per_process);
        left -= count;
        k += 1;
        let node = (k - 1) % nodes;
        let mut cmd = Command::new(&exe);
        cmd.args([
            "fanout",
            "--client",
            &format!("{},{count},127.0.1.{k}", addrs[node]),
        ]);
        clients.push(Proc::spawn(cmd)?);
        client_node.push(node);
    }
    for c in &clients {
        c.wait_for("opened", Duration::from_secs(120))?;
    }
    let (mut publisher, _) =
        tungstenite::connect(format!("ws://{}/pub", addrs[0])).map_err(std::io::Error::other)?;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = publisher.get_mut() {
        s.set_nodelay(true)?;
    }
    // Time for the nodes' broker subscriptions to settle.
    std::thread::sleep(Duration::from_millis(if broker.is_some() {
        1500
    } else {
        500
    }));
    let label = match (&args.broker, &args.broker_url) {
        (Some(b), _) => format!("surge x{nodes} {b}"),
        (None, Some(_)) => format!("surge x{nodes} url"),
        _ => crate::uws::label(system).to_string(),
    };
    for &rate in &args.rates {
        for c in &mut clients {
            c.say("start");
        }
        let before: Vec<(u64, u64)> = if broker.is_some() {
            servers
                .iter_mut()
                .map(node_stats)
                .collect::<std::io::Result<_>>()?
        } else {
            Vec::new()
        };
        std::thread::sleep(Duration::from_millis(100));
        let period_ns = 1_000_000_000 / u64::from(rate.max(1));
        let total = (args.duration * f64::from(rate)) as u64;
        let cpu_of = |ps: &[String]| -> Option<f64> {
            ps.iter()
                .map(|p| crate::load::cpu_seconds(p))
                .sum::<Option<f64>>()
        };
        let cpu0 = cpu_of(&pids);
        let bcpu0 = broker_pid.as_deref().and_then(crate::load::cpu_seconds);
        let start = mono_ns() + 1_000_000;
        let mut payload = vec![0u8; args.size];
        for i in 0..total {
            let due = start + i * period_ns;
            loop {
                let now = mono_ns();
                if now >= due {
                    break;
                }
                let wait = due - now;
                if wait > 200_000 {
                    std::thread::sleep(Duration::from_nanos(wait - 100_000));
                } else {
                    std::hint::spin_loop();
                }
            }
            payload[..8].copy_from_slice(&due.to_le_bytes());
            payload[8..16].copy_from_slice(&i.to_le_bytes());
            publisher
                .send(tungstenite::Message::Binary(payload.clone()))
                .map_err(std::io::Error::other)?;
        }
        // Let the tail arrive.
        std::thread::sleep(Duration::from_millis(1500));
        let cpu = match (cpu0, cpu_of(&pids)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let bcpu = match (
            bcpu0,
            broker_pid.as_deref().and_then(crate::load::cpu_seconds),
        ) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let mut hist = new_hist();
        let mut local = new_hist();
        let mut remote = new_hist();
        let mut delivered = 0u64;
        for c in &mut clients {
            c.say("stop");
        }
        for (c, &node) in clients.iter().zip(&client_node) {
            let line = c.wait_for("result", Duration::from_secs(30))?;
            let mut parts = line.split(' ');
            parts.next();
            delivered += parts.next().unwrap_or("0").parse::<u64>().unwrap_or(0);
            for pair in parts
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let (v, c) = pair.split_once(':').expect("value:count");
                let (v, c) = (v.parse().expect("value"), c.parse().expect("count"));
                let _ = hist.record_n(v, c);
                let _ = if node == 0 { &mut local } else { &mut remote }.record_n(v, c);
            }
        }
        let offered = total * n as u64;
        let secs = args.duration;
        print!(
            "{:<18} {:>6} {:>6} {:>12.0} {:>12.0} {:>9.2} {:>9} {:>9} {:>9} {:>10}",
            label,
            n,
            rate,
            offered as f64 / secs,
            delivered as f64 / secs,
            100.0 * (offered.saturating_sub(delivered)) as f64 / offered.max(1) as f64,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.max(),
            // Server CPU over the step and its tail, per message delivered.
            cpu.filter(|_| delivered > 0)
                .map_or("-".to_owned(), |c| format!(
                    "{:.3}",
                    c * 1e6 / delivered as f64
                ))
        );
        if broker.is_some() {
            let after: Vec<(u64, u64)> = servers
                .iter_mut()
                .map(node_stats)
                .collect::<std::io::Result<_>>()?;
            let (sent, received) = before
                .iter()
                .zip(&after)
                .fold((0, 0), |(s, r), (b, a)| (s + a.0 - b.0, r + a.1 - b.1));
            let q = |h: &Histogram<u64>| {
                if h.is_empty() {
                    "-".to_owned()
                } else {
                    h.value_at_quantile(0.99).to_string()
                }
            };
            print!(
                " {:>9} {:>9} {:>7.2} {:>7.2} {:>10}",
                q(&local),
                q(&remote),
                sent as f64 / total.max(1) as f64,
                received as f64 / total.max(1) as f64,
                bcpu.map_or("-".to_owned(), |c| format!(
                    "{:.1}",
                    c * 1e6 / total.max(1) as f64
                ))
            );
        }
        println!();
    }
    let _ = publisher.close(None);
    for c in &mut clients {
        c.say("quit");
    }
    drop(clients);
    drop(servers);
    drop(broker);
    Ok(())
}

/// Child mode: connect COUNT subscribers from SOURCE_IP, then count and time what arrives between
/// `start` and `stop`, reporting `result COUNT value:count,...` (latency in microseconds).
fn client(spec: &str) -> std::io::Result<()> {
    let mut it = spec.split(',');
    let addr: SocketAddr = it.next().expect("addr").parse().expect("addr");
    let count: usize = it.next().expect("count").parse().expect("count");
    let source: IpAddr = it.next().expect("source").parse().expect("source");
    let request = format!(
        "GET /sub HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut streams: Vec<TcpStream> = Vec::with_capacity(count);
    const BATCH: usize = 500;
    while streams.len() < count {
        let start = streams.len();
        let end = (start + BATCH).min(count);
        for _ in start..end {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::new(source, 0).into())?;
            s.connect(&addr.into())?;
            let s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            streams.push(s);
        }
        for s in &mut streams[start..end] {
            s.write_all(request.as_bytes())?;
        }
        for s in &mut streams[start..end] {
            // Nothing follows the 101 until a publish: read the head byte by byte to its end.
            let mut head = Vec::with_capacity(160);
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b)? == 0 {
                    return Err(std::io::Error::other("closed during the handshake"));
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other("not upgraded"));
            }
        }
    }
    let mut poll = mio::Poll::new()?;
    let mut socks: Vec<mio::net::TcpStream> = Vec::with_capacity(count);
    for (i, s) in streams.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        let mut m = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut m, mio::Token(i), mio::Interest::READABLE)?;
        socks.push(m);
    }
    println!("opened {count}");
    std::io::stdout().flush()?;

    let (tx, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut partial: Vec<Vec<u8>> = vec![Vec::new(); count];
    let mut events = mio::Events::with_capacity(4096);
    let mut buf = vec![0u8; 256 * 1024];
    let mut hist = new_hist();
    let mut delivered = 0u64;
    let mut recording = false;
    loop {
        match commands.try_recv() {
            Ok(c) if c == "start" => {
                hist.reset();
                delivered = 0;
                recording = true;
            }
            Ok(c) if c == "stop" => {
                recording = false;
                let pairs: Vec<String> = hist
                    .iter_recorded()
                    .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
                    .collect();
                println!("result {delivered} {}", pairs.join(","));
                std::io::stdout().flush()?;
            }
            Ok(_) | Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            loop {
                let n = match socks[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let now = mono_ns();
                let mut tally = |payload: &[u8]| {
                    if recording && payload.len() >= 8 {
                        let stamp = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                        let _ = hist.record((now.saturating_sub(stamp) / 1000).max(1));
                        delivered += 1;
                    }
                };
                let p = &mut partial[i];
                if p.is_empty() {
                    let used = parse_frames(&buf[..n], &mut tally);
                    p.extend_from_slice(&buf[used..n]);
                } else {
                    p.extend_from_slice(&buf[..n]);
                    let used = parse_frames(p, &mut tally);
                    p.drain(..used);
                }
            }
        }
    }
}

/// Calls `f` with each whole frame's payload at the front of `buf`; returns the bytes used.
fn parse_frames(buf: &[u8], f: &mut impl FnMut(&[u8])) -> usize {
    let mut pos = 0;
    loop {
        let b = &buf[pos..];
        if b.len() < 2 {
            return pos;
        }
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => return pos,
            n => (usize::from(n), 2),
        };
        if b.len() < head + len {
            return pos;
        }
        if b[0] & 0x0f == 2 {
            f(&b[head..head + len]);
        }
        pos += head + len;
    }
}
