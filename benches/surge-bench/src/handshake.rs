//! `handshake`: new `wss://` connections per second against a server, each one a TCP connect, a
//! TLS handshake, the upgrade and the close handshake, from the surge engine's client in this
//! process (`concurrency` connections at a time, each replaced as soon as it closes). Two kinds:
//! `full` (a client configuration with session resumption off: every handshake is a full one) and
//! `resumed` (one shared configuration with rustls's session cache: after the first, handshakes
//! resume, by TLS 1.3 ticket). Against a system this harness starts, its CPU time per connection
//! is reported too (the server's share of a handshake, the figure to compare per core).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use surge::tls::ClientTlsConfig;
use surge::{
    Client, CloseCode, CloseInfo, Conn, ConnId, ConnectError, ConnectRequest, Handler, Rejection,
    Request, ServerConfig, Upgrade, WorkerCtx,
};

use crate::{free_port, ServerProc};

#[derive(Parser, Debug, Clone)]
pub struct HandshakeArgs {
    /// A server to measure (`wss://host:port/path`) instead of starting the systems.
    #[arg(long)]
    pub url: Option<String>,
    /// The CA (PEM) to trust for `--url` (default: the webpki roots).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Systems started with a test certificate, one after another: surge, surge-epoll,
    /// surge-io_uring, tokio-tungstenite.
    #[arg(long, value_delimiter = ',', default_value = "surge,tokio-tungstenite")]
    pub systems: Vec<String>,
    /// Kinds of handshake, each measured on its own: full, resumed.
    #[arg(long, value_delimiter = ',', default_value = "full,resumed")]
    pub kinds: Vec<String>,
    /// Connections being set up at a time.
    #[arg(short, long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds measured per system and kind (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Worker threads of the server under test.
    #[arg(long, default_value_t = 1)]
    pub server_workers: usize,
    /// Pin the server to CPU 0 and this process's client to CPU 1.
    #[arg(long)]
    pub pin: bool,
}

#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// Opens `concurrency` connections; each one that opens is closed at once and replaced.
struct Churn {
    request: ConnectRequest,
    concurrency: usize,
    counts: Arc<Counts>,
}

impl Churn {
    fn again(&self, worker: &mut WorkerCtx<()>) {
        if self.counts.stop.load(Ordering::Relaxed) {
            return;
        }
        if worker.connect(&self.request, ()).is_err() {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Handler for Churn {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Reject(Rejection::new(404, "client only"))
    }
    fn on_start(&mut self, worker: &mut WorkerCtx<()>) {
        for _ in 0..self.concurrency {
            self.again(worker);
        }
    }
    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        self.counts.opened.fetch_add(1, Ordering::Relaxed);
        let _ = conn.close(CloseCode::NORMAL, "");
    }
    fn on_message(&mut self, _conn: &mut Conn<'_, ()>, _msg: surge::Message<'_>) {}
    fn on_close(&mut self, worker: &mut WorkerCtx<()>, _: (), _: &CloseInfo<'_>) {
        self.again(worker);
    }
    fn on_connect_error(
        &mut self,
        worker: &mut WorkerCtx<()>,
        _id: ConnId,
        _: (),
        error: &ConnectError,
    ) {
        if matches!(error, ConnectError::Shutdown) {
            return;
        }
        if self.counts.failed.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("handshake: {error}");
        }
        self.again(worker);
    }
}

/// One run's figures.
struct Row {
    opened: u64,
    failed: u64,
    seconds: f64,
    server_cpu: Option<f64>,
}

fn run_one(
    url: &str,
    tls: ClientTlsConfig,
    server: Option<&ServerProc>,
    args: &HandshakeArgs,
) -> std::io::Result<Row> {
    let counts = Arc::new(Counts::default());
    let c = Arc::clone(&counts);
    let request = ConnectRequest::new(url).tls(tls);
    let concurrency = args.concurrency.max(1);
    let cfg = ServerConfig {
        workers: 1,
        backend: surge::Backend::Epoll,
        handshake_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    };
    if args.pin {
        crate::pin_self(1);
    }
    let client = Client::new(cfg).start(move |_| Churn {
        request: request.clone(),
        concurrency,
        counts: Arc::clone(&c),
    })?;
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let (o0, f0) = (
        counts.opened.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    let cpu0 = server.and_then(ServerProc::cpu_seconds);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let seconds = start.elapsed().as_secs_f64();
    let (o1, f1) = (
        counts.opened.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    let cpu1 = server.and_then(ServerProc::cpu_seconds);
    counts.stop.store(true, Ordering::Relaxed);
    client.shutdown();
    client.join()?;
    Ok(Row {
        opened: o1 - o0,
        failed: f1 - f0,
        seconds,
        server_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
    })
}

fn client_tls(kind: &str, ca: Option<&std::path::Path>) -> std::io::Result<ClientTlsConfig> {
    let tls = match ca {
        Some(ca) => ClientTlsConfig::with_ca_pem_file(ca)?,
        None => ClientTlsConfig::webpki_roots(),
    };
    // A configuration of its own per run: a resumed run starts with an empty session cache.
    let tls = ClientTlsConfig::from_rustls(Arc::new((**tls.rustls_config()).clone()));
    match kind {
        "full" => Ok(tls.without_resumption()),
        "resumed" => {
            let mut cfg = (**tls.rustls_config()).clone();
            cfg.resumption = surge::tls::rustls::client::Resumption::in_memory_sessions(256);
            Ok(ClientTlsConfig::from_rustls(Arc::new(cfg)))
        }
        other => Err(std::io::Error::other(format!(
            "--kinds full,resumed, not {other}"
        ))),
    }
}

pub fn run(args: HandshakeArgs) -> std::io::Result<()> {
    println!(
        "{:<18} {:<8} {:>10} {:>8} {:>9} {:>14}",
        "system", "kind", "conn/s", "failed", "srv cpu", "srv us/conn"
    );
    let targets: Vec<String> = match &args.url {
        Some(u) => vec![u.clone()],
        None => args.systems.clone(),
    };
    for target in &targets {
        for kind in &args.kinds {
            let (server, url, ca) = match &args.url {
                Some(u) => (None, u.clone(), args.tls_ca.clone()),
                None => {
                    if !crate::tls::supports(target) {
                        return Err(std::io::Error::other(format!("{target}: no TLS")));
                    }
                    let s = spawn(target, &args)?;
                    let url = format!("wss://{}/", s.addr);
                    (Some(s), url, Some(crate::tls::files()?.ca.clone()))
                }
            };
            let row = run_one(
                &url,
                client_tls(kind, ca.as_deref())?,
                server.as_ref(),
                &args,
            )?;
            drop(server);
            let per_s = row.opened as f64 / row.seconds;
            let us = row
                .server_cpu
                .filter(|_| row.opened > 0)
                .map_or("-".to_owned(), |c| {
                    format!("{:.1}", c * 1e6 / row.opened as f64)
                });
            println!(
                "{:<18} {:<8} {:>10.0} {:>8} {:>9} {:>14}",
                target,
                kind,
                per_s,
                row.failed,
                row.server_cpu.map_or("-".to_owned(), |c| format!("{c:.2}")),
                us
            );
            // TIME_WAIT is per address pair: the next run uses another port.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Ok(())
}

fn spawn(system: &str, args: &HandshakeArgs) -> std::io::Result<ServerProc> {
    let mut flags = vec![
        "--port".to_owned(),
        free_port().to_string(),
        "--workers".to_owned(),
        args.server_workers.to_string(),
    ];
    flags.extend(crate::tls::server_flags()?);
    let binary = match system {
        "surge" => "surge-echo",
        "surge-epoll" | "surge-io_uring" => {
            flags.extend(["--backend".to_owned(), system["surge-".len()..].to_owned()]);
            "surge-echo"
        }
        "tokio-tungstenite" => "peer-tokio-tungstenite",
        other => return Err(std::io::Error::other(format!("unknown system {other}"))),
    };
    ServerProc::spawn_pinned(binary, &flags, args.pin.then_some(0))
}
