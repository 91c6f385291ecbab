//! The client conformance target: runs every case of an Autobahn fuzzing server (kosoku
//! `-m fuzzingserver`) with the engine's client, echoing every message back.
//!
//! ```text
//! kosoku -m fuzzingserver -o reports 127.0.0.1:9001 &
//! cargo run --release --example autobahn_client -- --url ws://127.0.0.1:9001 --backend epoll
//! ```
//! The usual flow: `GET /getCaseCount`, then `/runCase?case=N&agent=AGENT` for each case, one
//! after another, then `/updateReports?agent=AGENT`. Prints one line per failed connect and a
//! summary; exits once the report is written. permessage-deflate (context takeover) is offered, so
//! groups 12 and 13 run too. Over TLS: `--url wss://localhost:9443 --tls-ca ca.pem` (the server's
//! CA; default the webpki roots), e.g. with socat terminating TLS in front of kosoku
//! (`.ci/conformance-client-tls.sh`).

use std::sync::mpsc;
use std::time::Duration;

use surge::{
    proto::{DeflateConfig, DeflateMode},
    Backend, Client, CloseInfo, Conn, ConnId, ConnectError, ConnectRequest, Handler, Message,
    Rejection, Request, ServerConfig, Timer, Upgrade, WorkerCtx,
};

/// What a connection is for.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Count,
    Case(u32),
    Report,
}

struct Runner {
    base: String,
    /// `wss://`: how the server is verified (`None`: the webpki roots).
    tls: Option<surge::tls::ClientTlsConfig>,
    agent: String,
    count: Option<u32>,
    next: u32,
    /// A connection is under way (cases run one at a time).
    busy: bool,
    reported: bool,
    failures: u32,
    done: mpsc::Sender<u32>,
}

impl Runner {
    fn open(&mut self, worker: &mut WorkerCtx<Phase>, path: String, phase: Phase) {
        // The fuzzing server asks for client_no_context_takeover or a client window (13.2, 13.5,
        // 13.6) only of a client that offered client_no_context_takeover; the server's side keeps
        // context takeover either way.
        let mut req =
            ConnectRequest::new(format!("{}{path}", self.base)).client_no_context_takeover();
        if let Some(tls) = &self.tls {
            req = req.tls(tls.clone());
        }
        match worker.connect(&req, phase) {
            Ok(_) => self.busy = true,
            Err(e) => {
                eprintln!("{phase:?}: {e}");
                self.failures += 1;
            }
        }
    }
}

impl Handler for Runner {
    type Data = Phase;

    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<Phase> {
        Upgrade::Reject(Rejection::new(404, "a client"))
    }

    fn on_start(&mut self, worker: &mut WorkerCtx<Phase>) {
        self.open(worker, "/getCaseCount".into(), Phase::Count);
        worker.set_interval(Duration::from_millis(1), ());
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Phase>, msg: Message<'_>) {
        match *conn.data() {
            Phase::Count => {
                if let Message::Text(t) = msg {
                    self.count = t.trim().parse().ok();
                }
            }
            Phase::Case(_) => {
                let _ = conn.send(msg);
            }
            Phase::Report => {}
        }
    }

    fn on_close(&mut self, _worker: &mut WorkerCtx<Phase>, _phase: Phase, _info: &CloseInfo<'_>) {
        self.busy = false;
    }

    fn on_connect_error(
        &mut self,
        _worker: &mut WorkerCtx<Phase>,
        _id: ConnId,
        phase: Phase,
        error: &ConnectError,
    ) {
        match phase {
            Phase::Case(n) => eprintln!("case {n}: {error}"),
            other => eprintln!("{other:?}: {error}"),
        }
        self.failures += 1;
        self.busy = false;
    }

    fn on_timer(&mut self, worker: &mut WorkerCtx<Phase>, timer: Timer<'_>) {
        if self.busy {
            return;
        }
        let Some(count) = self.count else {
            eprintln!("no case count from {}", self.base);
            let _ = self.done.send(1);
            worker.cancel_timer(timer.id());
            return;
        };
        if self.next < count {
            self.next += 1;
            let path = format!("/runCase?case={}&agent={}", self.next, self.agent);
            self.open(worker, path, Phase::Case(self.next));
        } else if !self.reported {
            self.reported = true;
            let path = format!("/updateReports?agent={}", self.agent);
            self.open(worker, path, Phase::Report);
        } else {
            println!("ran {count} cases, {} failed connects", self.failures);
            worker.cancel_timer(timer.id());
            let _ = self.done.send(self.failures);
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: autobahn_client [--url ws://127.0.0.1:9001] [--agent surge] \
         [--backend auto|epoll|io_uring] [--tls-ca ca.pem]"
    );
    std::process::exit(2)
}

fn main() -> std::io::Result<()> {
    let mut base = "ws://127.0.0.1:9001".to_owned();
    let mut tls = None;
    let mut agent = "surge".to_owned();
    let mut cfg = ServerConfig {
        workers: 1,
        // Echo cases send many messages quickly: never drop one.
        max_backpressure: 1 << 30,
        // permessage-deflate with context takeover, so that groups 12 and 13 run.
        deflate: DeflateConfig {
            mode: DeflateMode::ContextTakeover {
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            },
            // Every message compressed: kosoku's fuzzing server fails the first case of each
            // compression group ("Strings must be encoded before hashing") on an uncompressed
            // text echo of its 16-byte message.
            min_size: 0,
            ..DeflateConfig::default()
        },
        ..ServerConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => base = value.trim_end_matches('/').to_owned(),
            "--agent" => agent = value,
            "--tls-ca" => tls = Some(surge::tls::ClientTlsConfig::with_ca_pem_file(value)?),
            "--backend" => cfg.backend = value.parse::<Backend>().unwrap_or_else(|_| usage()),
            // For CI: exit 0 if the backend can run here, else print why and exit 1.
            "--probe" => {
                if value.parse::<Backend>().unwrap_or_else(|_| usage()) == Backend::IoUring {
                    if let Err(why) = Backend::io_uring_support() {
                        println!("io_uring unavailable: {why}");
                        std::process::exit(1);
                    }
                }
                std::process::exit(0);
            }
            _ => usage(),
        }
    }
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let handle = Client::new(cfg).start(move |_| Runner {
        base: base.clone(),
        tls: tls.clone(),
        agent: agent.clone(),
        count: None,
        next: 0,
        busy: false,
        reported: false,
        failures: 0,
        done: tx.lock().expect("unpoisoned").clone(),
    })?;
    println!("client running (backend {})", handle.backend());
    let failures = rx.recv().unwrap_or(1);
    handle.shutdown();
    handle.join()?;
    std::process::exit(if failures == 0 { 0 } else { 1 })
}
