//! A broadcast chat room: every text message from any client goes to every client.
//!
//! ```text
//! cargo run --example chat -- --port 8080
//! ```
//! Then open http://127.0.0.1:8080/?nick=ann in two browser tabs: the page and the WebSocket endpoint
//! (ws://127.0.0.1:8080/ws?nick=NAME) share the port; the page comes from `Handler::on_http`.
//!
//! Two workers: every client subscribes to the topic `room`, and a line is published to it once
//! (`PreparedMessage`: encoded once, shared by every recipient); each worker writes it to its own
//! subscribers, whichever worker the sender is on.
//!
//! Across machines: `--cluster nats://127.0.0.1:4222` (or `redis://127.0.0.1:6379`) joins the
//! room to every other chat started with the same broker (surge-cluster): a line said on one node
//! reaches the room on all of them.
//!
//! ```text
//! cargo run --example chat -- --port 8080 --cluster nats://127.0.0.1:4222
//! cargo run --example chat -- --port 8081 --cluster nats://127.0.0.1:4222
//! ```
//!
//! Over TLS: `--tls-cert chain.pem --tls-key key.pem` serves the page on https:// and the chat on
//! wss:// (the page connects with the scheme it was loaded with). `tests/chromium.rs` opens it in
//! headless Chromium.
//!
//! `/?nick=ann&say=hello` also sends `hello` once connected (a smoke test for a browser).
//!
//! Prometheus metrics: `--metrics /metrics` answers them on the chat's port,
//! `--metrics-addr 127.0.0.1:9101` on a listener of their own (docs/OPERATIONS.md).
//!
//! Ctrl-C (SIGINT) or SIGTERM closes every connection with 1001 and exits.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use surge::signal::ShutdownSignals;
use surge::{
    Accept, CloseInfo, Conn, Handler, Message, PreparedMessage, Rejection, Request, Response,
    Server, ServerConfig, Upgrade, WorkerCtx,
};

/// The one room's topic.
const ROOM: &str = "room";

struct Chat {
    next_guest: u64,
    /// Chatters on this node, all workers, counted at once (`Publisher::connection_count` is
    /// as of each worker's last loop turn, so a greeting would miss the newcomer).
    present: Arc<AtomicUsize>,
}

impl Chat {
    fn broadcast(worker: &mut WorkerCtx<String>, text: &str) {
        // To every subscriber on every worker. A slow reader's messages are dropped past the
        // backpressure limit; the room goes on.
        worker.publish(ROOM, &PreparedMessage::text(text));
    }
}

impl Handler for Chat {
    /// The nickname.
    type Data = String;

    /// The page, for a plain GET of `/`; the same origin as the WebSocket, so the default origin
    /// policy (same host) accepts the page's connection.
    fn on_http(&mut self, _worker: &mut WorkerCtx<String>, req: &Request) -> Response {
        if req.method() != "GET" || req.path() != "/" {
            return Response::new(404, "not found: the page is at /, the chat at /ws\n");
        }
        Response::html(PAGE)
    }

    fn on_upgrade(&mut self, req: &Request) -> Upgrade<String> {
        if req.path() != "/ws" {
            return Upgrade::Reject(Rejection::new(404, "the chat is at /ws\n"));
        }
        let nick = req
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("nick="))
            .map(|n| n.chars().filter(|c| c.is_alphanumeric()).take(20).collect())
            .filter(|n: &String| !n.is_empty())
            .unwrap_or_else(|| {
                self.next_guest += 1;
                format!("guest{}", self.next_guest)
            });
        Upgrade::Accept(Accept::new(nick))
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        conn.subscribe(ROOM);
        let here = self.present.fetch_add(1, Ordering::Relaxed) + 1;
        let text = format!("* {} joined ({here} here)", conn.data());
        Self::broadcast(conn.worker(), &text);
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            return; // binary messages are ignored
        };
        let line = format!("{}: {}", conn.data(), text);
        Self::broadcast(conn.worker(), &line);
    }

    fn on_close(&mut self, worker: &mut WorkerCtx<String>, nick: String, _info: &CloseInfo<'_>) {
        self.present.fetch_sub(1, Ordering::Relaxed);
        // Its subscription has ended with it: the others hear it.
        Self::broadcast(worker, &format!("* {nick} left"));
    }
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>surge chat</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 2em auto; max-width: 40em; }
#log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; white-space: pre-wrap; }
form { display: flex; gap: .5em; margin-top: .5em; } #text { flex: 1; }
</style></head>
<body>
<h1>surge chat</h1>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="say something" autofocus>
<button>Send</button></form>
<script>
const nick = new URLSearchParams(location.search).get("nick") || ""; // e.g. /?nick=ann
const say = new URLSearchParams(location.search).get("say"); // sent once connected, if given
const scheme = location.protocol === "https:" ? "wss" : "ws";
const url = `${scheme}://${location.host}/ws?nick=${encodeURIComponent(nick)}`;
const log = document.getElementById("log");
const show = (t) => { const d = document.createElement("div"); d.textContent = t;
  log.appendChild(d); log.scrollTop = log.scrollHeight; };
const ws = new WebSocket(url);
ws.onopen = () => { show("* connected"); if (say) ws.send(say); };
ws.onmessage = (e) => show(e.data);
ws.onclose = (e) => show(`* disconnected (${e.code} ${e.reason})`);
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault(); const t = document.getElementById("text");
  if (t.value) { ws.send(t.value); t.value = ""; }
};
</script></body></html>
"#;

fn usage() -> ! {
    eprintln!(
        "usage: chat [--port 8080] [--host 127.0.0.1] [--cluster nats://HOST:PORT|redis://HOST:PORT] \
         [--metrics /metrics] [--metrics-addr 127.0.0.1:9101] \
         [--tls-cert chain.pem --tls-key key.pem]   (page at /, chat at /ws)"
    );
    std::process::exit(2)
}

fn main() -> std::io::Result<()> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut port = 8080u16;
    let mut cluster_url: Option<String> = None;
    let mut metrics = surge::MetricsConfig::default();
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => port = value.parse().unwrap_or_else(|_| usage()),
            "--host" => host = value.parse().unwrap_or_else(|_| usage()),
            "--cluster" => cluster_url = Some(value),
            "--metrics" => metrics.path = Some(value),
            "--metrics-addr" => metrics.addr = Some(value.parse().unwrap_or_else(|_| usage())),
            "--tls-cert" => tls_cert = Some(value),
            "--tls-key" => tls_key = Some(value),
            _ => usage(),
        }
    }
    let addr = SocketAddr::new(host, port);
    let mut cfg = ServerConfig::bind(addr);
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            cfg.tls = Some(surge::tls::TlsConfig::from_pem_files(cert, key)?);
            cfg.bind = Vec::new();
            cfg.tls_bind = vec![addr];
        }
        (None, None) => {}
        _ => usage(),
    }
    let tls = cfg.tls.is_some();
    cfg.workers = 2;
    cfg.proto.max_message_size = 4096;
    cfg.max_backpressure = 256 * 1024;
    let metrics_path = metrics.path.clone();
    cfg.metrics = metrics;

    // Block SIGINT and SIGTERM in every thread (workers inherit the mask), and take them here.
    let signals = ShutdownSignals::block();
    let (server, cluster) = surge_cluster::Cluster::join(Server::new(cfg), cluster_url)
        .map_err(std::io::Error::other)?;
    let present = Arc::new(AtomicUsize::new(0));
    let handle = server.start(move |_worker| Chat {
        next_guest: 0,
        present: Arc::clone(&present),
    })?;
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!(
        "chat on {http}://{0}/ (WebSocket at {ws}://{0}/ws)",
        handle.local_addr()
    );
    if let Some(path) = &metrics_path {
        println!("metrics at http://{}{path}", handle.local_addr());
    }
    if let Some(addr) = handle.metrics_addr() {
        println!("metrics at http://{addr}/metrics");
    }
    let trigger = handle.trigger();
    signals.on_signal(move || {
        eprintln!("shutting down");
        trigger.shutdown();
    });
    let done = handle.join();
    if let Some(c) = cluster {
        c.shutdown();
    }
    done
}
