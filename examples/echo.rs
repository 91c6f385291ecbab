//! The conformance target: echoes every text and binary message back unchanged.
//!
//! ```text
//! cargo run --release --example echo -- --port 9001 --workers 2 --backend auto --host 127.0.0.1 \
//!     --deflate off|no-context|context --uring-recv multishot|poll --backlog 4096 \
//!     --metrics /metrics --metrics-addr 127.0.0.1:9101 --tls-cert chain.pem --tls-key key.pem
//! ```
//! `--metrics PATH`: Prometheus metrics answered to a plain GET of PATH on the WebSocket port;
//! `--metrics-addr ADDR`: on a listener of their own at ADDR, path `/metrics` (docs/OPERATIONS.md).
//! `--tls-cert`/`--tls-key` (both or neither): the port speaks TLS (`wss://`) with that
//! certificate chain and key (PEM), instead of plain `ws://`.
//! `--uring-recv`: how io_uring connections receive (`ServerConfig::uring_recv`): a multishot
//! receive each (the default), or a readiness poll then single-shot receives (`poll`: less kernel
//! memory per idle connection).
//! `--deflate`: permessage-deflate off (the default), without context takeover, or with context
//! takeover (windows of 15 bits). `--deflate-min-size N`: messages under N bytes go uncompressed
//! (default 0 here: every message is compressed; kosoku's Autobahn cases 12.x and 13.x fail with an
//! internal error, "Strings must be encoded before hashing", when a text echo comes back
//! uncompressed, which RFC 7692 allows).
//! Prints `listening on ADDR (backend epoll|io_uring)` once ready (`SURGE_BACKEND` overrides
//! `--backend`); Ctrl-C (SIGINT) or SIGTERM closes every connection with
//! 1001 and exits.

#[path = "common/mod.rs"]
mod common;

use std::net::{IpAddr, SocketAddr};

use surge::signal::ShutdownSignals;
use surge::{Accept, Backend, Conn, Handler, Message, Request, Server, ServerConfig, Upgrade};

struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: echo [--port 9001] [--workers N] [--backend auto|epoll|io_uring] [--host 127.0.0.1] \
         [--deflate off|no-context|context] [--deflate-min-size 0] \
         [--uring-recv multishot|poll] [--backlog 4096] [--metrics /metrics] \
         [--metrics-addr 127.0.0.1:9101] [--tls-cert chain.pem --tls-key key.pem]"
    );
    std::process::exit(2)
}

fn main() -> std::io::Result<()> {
    let mut cfg = ServerConfig::default();
    cfg.deflate.min_size = 0;
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut port = 9001u16;
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => port = value.parse().unwrap_or_else(|_| usage()),
            "--workers" => cfg.workers = value.parse().unwrap_or_else(|_| usage()),
            "--backend" => cfg.backend = value.parse::<Backend>().unwrap_or_else(|_| usage()),
            "--host" => host = value.parse().unwrap_or_else(|_| usage()),
            "--deflate" => {
                cfg.deflate.mode = common::deflate_mode(&value).unwrap_or_else(|| usage())
            }
            "--uring-recv" => cfg.uring_recv = value.parse().unwrap_or_else(|_| usage()),
            "--backlog" => cfg.backlog = value.parse().unwrap_or_else(|_| usage()),
            "--metrics" => cfg.metrics.path = Some(value),
            "--metrics-addr" => cfg.metrics.addr = Some(value.parse().unwrap_or_else(|_| usage())),
            "--deflate-min-size" => {
                cfg.deflate.min_size = value.parse().unwrap_or_else(|_| usage())
            }
            "--tls-cert" => tls_cert = Some(value),
            "--tls-key" => tls_key = Some(value),
            _ => usage(),
        }
    }
    let addr = SocketAddr::new(host, port);
    match (tls_cert, tls_key) {
        (None, None) => cfg.bind = vec![addr],
        (Some(cert), Some(key)) => {
            cfg.tls = Some(surge::tls::TlsConfig::from_pem_files(cert, key)?);
            cfg.bind = Vec::new();
            cfg.tls_bind = vec![addr];
        }
        _ => usage(),
    }
    let tls = cfg.tls.is_some();
    // Autobahn's test pages are served from another origin.
    cfg.origin = surge::handshake::OriginPolicy::AllowAll;

    // Block SIGINT and SIGTERM in every thread (workers inherit the mask), and take them here.
    let signals = ShutdownSignals::block();
    let handle = Server::new(cfg).start(|_worker| Echo)?;
    println!(
        "listening on {} (backend {}{})",
        handle.local_addr(),
        handle.backend(),
        if tls { ", tls" } else { "" }
    );
    if let Some(addr) = handle.metrics_addr() {
        println!("metrics at http://{addr}/metrics");
    }
    let trigger = handle.trigger();
    signals.on_signal(move || {
        eprintln!("shutting down");
        trigger.shutdown();
    });
    handle.join()
}
