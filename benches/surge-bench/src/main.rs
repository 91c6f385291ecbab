//! surge-bench: measures surge and its peers under the same client, one system after another in one
//! run, and prints ratios.
//!
//! Subcommands:
//! - `latency`: one connection, a fixed message rate (open loop, latency measured from each message's
//!   scheduled send time so that a slow reply is not hidden by the next send waiting for it), round
//!   trip p50/p99/p99.9/max, per system. Systems: `surge` (blocking loop), `surge-busy` (busy-poll),
//!   `tokio-tungstenite`, each a child process built from this crate, and `uws` (uWebSockets.js under
//!   node, when installed: `uws.rs`); or `--url` for any server.
//! - `echo`, `compare`, `idle`: see echo.rs (`--tls`: the same over `wss://`).
//! - `handshake`: new `wss://` connections per second, full and resumed TLS handshakes, and the
//!   server's CPU per connection (handshake.rs).

mod chart;
mod commands;
mod echo;
mod fanout;
mod handshake;
mod idle;
mod load;
mod server_metrics;
mod tls;
mod tls_floor;
mod uws;
mod uws_cpp;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use tungstenite::Message;

#[derive(Parser, Debug)]
#[command(name = "surge-bench", about = "Load harness for surge and its peers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Round-trip latency of one connection at a fixed rate.
    Latency(LatencyArgs),
    /// One publisher, many subscribers: deliveries/s and publish-to-receive latency (fanout.rs).
    Fanout(fanout::FanoutArgs),
    /// Echo throughput and latency: N connections from the surge engine's client (closed loop, or
    /// open loop with --rate), against surge (or --url, or --systems).
    Echo(echo::EchoArgs),
    /// The echo workload against surge (each driver) and the peers, one after another, with ratios.
    Compare(echo::EchoArgs),
    /// Ramp to N idle connections, hold: server and kernel memory per connection, the connect
    /// rate; optionally a sweep (one echo per connection) and a broadcast to all, then close all
    /// and check nothing was lost (idle.rs; up to a million connections on one machine).
    Idle(idle::IdleArgs),
    /// CPU time per application command (`post` -> `on_command`), worker and poster (commands.rs).
    Commands(commands::CommandArgs),
    /// New wss:// connections per second (TLS handshake, upgrade, close), full and resumed
    /// handshakes, and the server's CPU per connection (handshake.rs).
    Handshake(handshake::HandshakeArgs),
    /// rustls's own server-side handshake cost in memory, the floor under `handshake`
    /// (tls_floor.rs).
    TlsFloor(tls_floor::TlsFloorArgs),
    /// A load-generator process (started by echo, compare and idle).
    #[command(hide = true)]
    Load(load::LoadArgs),
}

#[derive(Parser, Debug)]
struct LatencyArgs {
    /// A server to measure (`ws://host:port/path`) instead of the built-in systems.
    #[arg(long)]
    url: Option<String>,
    /// Systems to run, in order: surge, surge-busy, tokio-tungstenite, uws (uWebSockets.js, when
    /// installed: benches/peers/uws/setup.sh).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "surge,surge-busy,tokio-tungstenite"
    )]
    systems: Vec<String>,
    /// Messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Payload bytes per message (binary).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds measured per system (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up per system, not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Busy-poll spin for `surge-busy`, microseconds.
    #[arg(long, default_value_t = 1000)]
    busy_poll_us: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A server child process, killed on drop.
struct ServerProc {
    child: Child,
    addr: String,
    /// surge-echo only: its stdin and stdout, to ask for its heap bytes.
    io: std::sync::Mutex<
        Option<(
            std::process::ChildStdin,
            BufReader<std::process::ChildStdout>,
        )>,
    >,
}

/// The path of one of this crate's other binaries (the servers), next to this one. Under `cargo run`
/// (which builds only the harness), a missing one is built first with the same cargo and profile, so
/// `cargo run --release -p surge-bench -- echo` works on a fresh checkout.
pub(crate) fn sibling(binary: &str) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(binary);
    if path.exists() {
        return Ok(path);
    }
    let Ok(cargo) = std::env::var("CARGO") else {
        return Ok(path); // the spawn reports it missing
    };
    let release = exe
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|d| d == "release");
    eprintln!("building the harness's server binaries ({binary} is missing)");
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "surge-bench", "--bins"]);
    if release {
        build.arg("--release");
    }
    let status = build.status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "building {binary} failed: {status}"
        )));
    }
    Ok(path)
}

impl ServerProc {
    fn spawn(binary: &str, args: &[String]) -> std::io::Result<ServerProc> {
        ServerProc::spawn_pinned(binary, args, None)
    }

    /// As `spawn`, on CPU `cpu` only.
    fn spawn_pinned(
        binary: &str,
        args: &[String],
        cpu: Option<usize>,
    ) -> std::io::Result<ServerProc> {
        let path = sibling(binary)?;
        let mut cmd = Command::new(&path);
        cmd.args(args);
        pin(&mut cmd, cpu);
        die_with_parent(&mut cmd);
        ServerProc::spawn_command(cmd, binary, binary == "surge-echo")
    }

    /// Starts `cmd` (a server that prints `listening on ADDR` first); `ours`: surge-echo, which
    /// answers `heap` on stdin.
    fn spawn_command(mut cmd: Command, name: &str, ours: bool) -> std::io::Result<ServerProc> {
        let program = cmd.get_program().to_owned();
        let mut child = cmd
            .stdin(if ours { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{}: {e} (build it with cargo build --release -p surge-bench)",
                        program.display()
                    ),
                )
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|s| s.split_whitespace().next())
            .ok_or_else(|| std::io::Error::other(format!("{name} did not start: {line:?}")))?
            .to_owned();
        let io = match child.stdin.take() {
            Some(stdin) if ours => Some((stdin, stdout)),
            _ => None,
        };
        Ok(ServerProc {
            child,
            addr,
            io: std::sync::Mutex::new(io),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Heap bytes in use (surge-echo counts its allocations; `None` for peers).
    fn heap_bytes(&self) -> Option<u64> {
        self.ask("heap")?.strip_prefix("heap ")?.parse().ok()
    }

    /// surge-echo: sends `line` on its stdin and returns its one-line answer (`None` for peers).
    fn ask(&self, line: &str) -> Option<String> {
        use std::io::Write;
        let mut io = self.io.lock().ok()?;
        let (stdin, stdout) = io.as_mut()?;
        writeln!(stdin, "{line}").ok()?;
        stdin.flush().ok()?;
        let mut answer = String::new();
        stdout.read_line(&mut answer).ok()?;
        Some(answer.trim().to_owned())
    }

    /// User plus system CPU seconds the process has used (from /proc).
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(ticks / hz)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True (after saying why) when `system` is a peer that is not installed or built here.
pub(crate) fn skip(system: &str) -> bool {
    uws::skip(system) || uws_cpp::skip(system)
}

/// Runs the child on CPU `cpu` only (`None`: wherever the kernel likes), as `taskset -c` would.
pub(crate) fn pin(cmd: &mut Command, cpu: Option<usize>) {
    use std::os::unix::process::CommandExt;
    let Some(cpu) = cpu else { return };
    // SAFETY: sched_setaffinity is async-signal-safe and only reads the local set.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child is killed (SIGKILL) when the thread that started it ends, the harness included (its
/// own `Drop` does not run when it is killed): no server or load generator outlives a run.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Runs the calling thread (and the threads it starts from now on) on CPU `cpu` only.
pub(crate) fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity only reads the local.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9311)
}

/// Waits until `due`: sleeps while it is far, then spins, so that sends leave on time.
fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(300) {
            std::thread::sleep(left - Duration::from_micros(200));
        } else {
            std::hint::spin_loop();
        }
    }
}

struct LatencyResult {
    system: String,
    hist: Histogram<u64>,
    server_cpu: Option<f64>,
}

fn measure_latency(url: &str, args: &LatencyArgs) -> std::io::Result<Histogram<u64>> {
    let hostport = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let stream = TcpStream::connect(&hostport)?;
    stream.set_nodelay(true)?;
    let (mut ws, _) =
        tungstenite::client(url, stream).map_err(|e| std::io::Error::other(e.to_string()))?;
    let payload = vec![0x5au8; args.size];
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let start = Instant::now() + Duration::from_millis(10);
    let record_from = start + Duration::from_secs_f64(args.warmup);
    let end = record_from + Duration::from_secs_f64(args.duration);
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds");
    let mut i: u32 = 0;
    loop {
        let due = start + period * i;
        if due >= end {
            break;
        }
        wait_until(due);
        ws.send(Message::binary(payload.clone()))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        loop {
            match ws
                .read()
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                Message::Binary(_) => break,
                _ => continue,
            }
        }
        if due >= record_from {
            let rtt = Instant::now() - due;
            hist.saturating_record(rtt.as_nanos() as u64);
        }
        i += 1;
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(hist)
}

fn latency(args: LatencyArgs) -> std::io::Result<()> {
    let mut results = Vec::new();
    if let Some(url) = &args.url {
        let hist = measure_latency(url, &args)?;
        results.push(LatencyResult {
            system: url.clone(),
            hist,
            server_cpu: None,
        });
    } else {
        for system in &args.systems {
            if skip(system) {
                continue;
            }
            let port = free_port().to_string();
            let mut sargs = vec![
                "--port".to_owned(),
                port,
                "--workers".to_owned(),
                "1".to_owned(),
            ];
            let binary = match system.as_str() {
                "surge" => "surge-echo",
                "surge-busy" => {
                    sargs.extend(["--busy-poll-us".to_owned(), args.busy_poll_us.to_string()]);
                    "surge-echo"
                }
                "tokio-tungstenite" => "peer-tokio-tungstenite",
                uws::SYSTEM => "",
                other => return Err(std::io::Error::other(format!("unknown system {other}"))),
            };
            let server = if system == uws::SYSTEM {
                ServerProc::spawn_command(uws::spawn_command("echo.js", &sargs), system, false)?
            } else {
                ServerProc::spawn(binary, &sargs)?
            };
            eprintln!(
                "{system}: {} msg/s x {} B for {} s on {}",
                args.rate, args.size, args.duration, server.addr
            );
            let cpu0 = server.cpu_seconds();
            let hist = measure_latency(&format!("ws://{}/", server.addr), &args)?;
            let cpu = match (cpu0, server.cpu_seconds()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            results.push(LatencyResult {
                system: system.clone(),
                hist,
                server_cpu: cpu,
            });
        }
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        "\n{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "system", "samples", "p50 us", "p99 us", "p99.9 us", "max us", "server cpu"
    );
    for r in &results {
        println!(
            "{:<20} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10}",
            uws::label(&r.system),
            r.hist.len(),
            us(r.hist.value_at_quantile(0.5)),
            us(r.hist.value_at_quantile(0.99)),
            us(r.hist.value_at_quantile(0.999)),
            us(r.hist.max()),
            r.server_cpu.map_or("-".to_owned(), |c| format!("{c:.2} s")),
        );
    }
    if let Some(base) = results.iter().find(|r| r.system == "tokio-tungstenite") {
        for r in results.iter().filter(|r| r.system != base.system) {
            println!(
                "{} vs {}: p50 {:.2}x, p99 {:.2}x lower",
                r.system,
                base.system,
                base.hist.value_at_quantile(0.5) as f64
                    / r.hist.value_at_quantile(0.5).max(1) as f64,
                base.hist.value_at_quantile(0.99) as f64
                    / r.hist.value_at_quantile(0.99).max(1) as f64,
            );
        }
    }
    if let Some(path) = &args.json {
        let rows: Vec<String> = results
            .iter()
            .map(|r| {
                format!(
                    "{{\"system\":\"{}\",\"samples\":{},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"max_us\":{:.2}}}",
                    r.system,
                    r.hist.len(),
                    us(r.hist.value_at_quantile(0.5)),
                    us(r.hist.value_at_quantile(0.99)),
                    us(r.hist.value_at_quantile(0.999)),
                    us(r.hist.max())
                )
            })
            .collect();
        std::fs::write(
            path,
            format!(
                "{{\"bench\":\"latency\",\"rate\":{},\"size\":{},\"results\":[{}]}}\n",
                args.rate,
                args.size,
                rows.join(",")
            ),
        )?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    match Cli::parse().cmd {
        Cmd::Latency(args) => latency(args),
        Cmd::Fanout(args) => fanout::run(args),
        Cmd::Echo(mut args) => {
            if args.tls && args.systems == ["surge"] {
                // surge over TLS against tokio-tungstenite + tokio-rustls, in one run.
                args.systems = ["surge", "tokio-tungstenite"].map(String::from).to_vec();
            }
            echo::echo(args)
        }
        Cmd::Compare(mut args) => {
            if args.tls && args.systems == ["surge"] {
                args.systems = ["surge-epoll", "surge-io_uring", "tokio-tungstenite"]
                    .map(String::from)
                    .to_vec();
            } else if args.systems == ["surge"] {
                args.systems = [
                    "surge-epoll",
                    "surge-io_uring",
                    "tokio-tungstenite",
                    "fastwebsockets",
                    uws_cpp::SYSTEM,
                    uws::SYSTEM,
                ]
                .map(String::from)
                .to_vec();
            }
            echo::echo(args)
        }
        Cmd::Idle(args) => idle::run(args).map_err(|e| {
            // The limit refused, the signal or the time limit, as a sentence (not Debug).
            eprintln!("surge-bench idle: {e}");
            std::process::exit(1)
        }),
        Cmd::Handshake(args) => handshake::run(args),
        Cmd::Load(args) => load::run(args),
        Cmd::Commands(args) => commands::run(args),
        Cmd::TlsFloor(args) => tls_floor::run(args),
    }
}
