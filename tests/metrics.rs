//! Prometheus metrics over real sockets, on every driver (`per_driver!`): known traffic from
//! tungstenite clients, a rejection and two close codes, then the exact counts scraped from the
//! separate listener, from the WebSocket port's path and from `ServerHandle::metrics`; the text
//! is checked by `promtool check metrics` (Debian's `prometheus` package; skipped with a reason
//! when it is missing, except under `CI=true`).

#[macro_use]
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{http_exchange, upgrade_request, wait_until};
use surge::{
    Accept, Conn, Handler, Message, MetricsConfig, Rejection, Request, Server, ServerConfig,
    ServerHandle, Upgrade,
};
use tungstenite::protocol::frame::coding::CloseCode as TCloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message as TMessage;

struct Echo;

impl Handler for Echo {
    type Data = ();
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<()> {
        if req.path() == "/deny" {
            return Upgrade::Reject(Rejection::new(403, "no\n"));
        }
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn start() -> ServerHandle {
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        metrics: MetricsConfig {
            path: Some("/metrics".into()),
            addr: Some("127.0.0.1:0".parse().unwrap()),
            loop_turns: false,
        },
        ..ServerConfig::default()
    };
    Server::new(cfg).start(|_| Echo).unwrap()
}

/// A GET of `path` at `addr`: the status line, the headers and the body.
fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let resp = http_exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    let (head, body) = resp.split_once("\r\n\r\n").expect("a complete response");
    (head.to_string(), body.to_string())
}

/// The value of the sample `series` (a name with its labels, as written) in `text`.
fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

/// `promtool check metrics` on `text`, where promtool is installed.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool is required under CI=true (Debian's prometheus package): {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED the promtool check: no promtool on PATH ({e}); apt install prometheus"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(support::READ_TIMEOUT))
        .unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
    ws
}

fn close(mut ws: tungstenite::WebSocket<TcpStream>, code: TCloseCode) {
    ws.close(Some(CloseFrame {
        code,
        reason: "".into(),
    }))
    .unwrap();
    // Until the server's close arrives and the connection ends.
    while ws.read().is_ok() {}
}

fn counts_exactly() {
    let server = start();
    let addr = server.local_addr();
    let maddr = server.metrics_addr().expect("a metrics listener");

    // Two connections, two echoed messages of 5 and 3 bytes on the first.
    let mut a = client(addr);
    let b = client(addr);
    a.send(TMessage::text("hello")).unwrap();
    assert_eq!(a.read().unwrap(), TMessage::text("hello"));
    a.send(TMessage::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(a.read().unwrap(), TMessage::binary(vec![1, 2, 3]));
    let (head, text) = scrape(maddr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(value(&text, "surge_connections_open"), 2, "{text}");
    assert_eq!(value(&text, "surge_mailbox_depth"), 0, "{text}");
    assert_eq!(value(&text, "surge_handshakes_completed_total"), 2);

    // A rejection, then two closes with their codes.
    let resp = http_exchange(addr, upgrade_request(addr, "/deny", "").as_bytes());
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    close(a, TCloseCode::Normal);
    close(b, TCloseCode::Away);
    let closes = |t: &str| {
        value(t, "surge_closes_total{code=\"1000\"}")
            + value(t, "surge_closes_total{code=\"1001\"}")
    };
    assert!(
        wait_until(Duration::from_secs(5), || closes(
            &scrape(maddr, "/metrics").1
        ) == 2),
        "both closes counted"
    );

    let (_, text) = scrape(maddr, "/metrics");
    let expect = [
        ("surge_connections_open", 0),
        ("surge_connections_accepted_total", 3),
        ("surge_handshakes_completed_total", 2),
        ("surge_connections_dialed_total", 0),
        ("surge_rejections_total{status=\"403\"}", 1),
        ("surge_rejections_total{status=\"other\"}", 0),
        ("surge_closes_total{code=\"1000\"}", 1),
        ("surge_closes_total{code=\"1001\"}", 1),
        ("surge_closes_total{code=\"1006\"}", 0),
        ("surge_messages_received_total", 2),
        ("surge_received_payload_bytes_total", 8),
        ("surge_messages_sent_total", 2),
        ("surge_sent_payload_bytes_total", 8),
        ("surge_backpressure_drops_total", 0),
        ("surge_backpressure_closes_total", 0),
        (
            "surge_deflate_bytes_total{direction=\"out\",form=\"plain\"}",
            0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(value(&text, series), want, "{series} in\n{text}");
    }
    assert!(value(&text, "surge_timers_armed_total") > 0, "{text}");
    promtool_check(&text);

    // The same on the WebSocket port, which counts the scrape's own connection as accepted.
    let (head, text) = scrape(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(
        value(&text, "surge_connections_accepted_total"),
        4,
        "{text}"
    );
    assert_eq!(value(&text, "surge_messages_received_total"), 2);
    assert_eq!(value(&text, "surge_rejections_total{status=\"403\"}"), 1);
    // Other paths still go to on_http (the default answers 400, counted).
    let resp = http_exchange(addr, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // The separate listener serves /metrics only.
    assert!(scrape(maddr, "/nothing").0.starts_with("HTTP/1.1 404"));

    // The application's own copy.
    let text = server.metrics().text();
    assert_eq!(
        value(&text, "surge_rejections_total{status=\"400\"}"),
        1,
        "{text}"
    );
    assert!(value(&text, "surge_loop_turn_seconds_count") > 0, "{text}");
    promtool_check(&text);

    server.shutdown();
    server.join().unwrap();
    // The listener stopped with the server.
    assert!(
        TcpStream::connect(maddr).is_err(),
        "metrics listener still up"
    );
}

/// Off by default: no listener, the path goes to `on_http`.
fn off_by_default() {
    let cfg = ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    };
    let server = Server::new(cfg).start(|_| Echo).unwrap();
    assert_eq!(server.metrics_addr(), None);
    let resp = http_exchange(
        server.local_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let text = server.metrics().text();
    assert_eq!(value(&text, "surge_loop_turn_seconds_count"), 0, "{text}");
    server.shutdown();
    server.join().unwrap();
}

per_driver!(counts_exactly, off_by_default);
