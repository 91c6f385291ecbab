//! `echo --server-metrics`: a few of the server's own totals (`surge-echo --metrics-addr`, the
//! Prometheus text of `surge::Metrics`) printed beside the harness's figures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What the server says it did: messages in and out, connections; or why it could not be read.
pub fn totals(port: u16) -> String {
    match fetch(port) {
        Ok(text) => {
            let get = |name: &str| sample(&text, name).unwrap_or("?").to_owned();
            format!(
                "messages in {} out {}, connections accepted {} open {}, backpressure drops {}",
                get("surge_messages_received_total"),
                get("surge_messages_sent_total"),
                get("surge_connections_accepted_total"),
                get("surge_connections_open"),
                get("surge_backpressure_drops_total"),
            )
        }
        Err(e) => format!("metrics unavailable ({e})"),
    }
}

/// One unlabelled sample of the server's metrics (`surge_connections_open`...), or `None` when
/// they cannot be read.
pub fn value(port: u16, name: &str) -> Option<f64> {
    sample(&fetch(port).ok()?, name)?.trim().parse().ok()
}

/// The text of unlabelled sample `name` in a Prometheus exposition.
fn sample<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
}

fn fetch(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other("no 200 answer")),
    }
}
