//! The metrics listener of its own ([`MetricsConfig::addr`](super::MetricsConfig::addr)): one
//! blocking thread, one request per connection, `GET /metrics` only. Requests are bounded (4 KiB,
//! a 2 s read timeout), so a slow or hostile client holds the thread 2 s at most. Shutdown sets
//! the server's stop flag and connects once to wake the accept ([`wake`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Metrics, CONTENT_TYPE};
use crate::server::Shared;

/// Largest request head read.
const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request (and to read the answer).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the listener (on the caller's thread, so that a bind error fails the server's start).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `listener` until the server stops.
pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("surge-metrics".into())
        .spawn(move || {
            let metrics = Metrics {
                shared: Arc::clone(&shared),
            };
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                if let Ok(stream) = stream {
                    let _ = answer(stream, &metrics);
                }
            }
        })
}

/// Wakes the listener's thread after the stop flag is set (its blocking accept returns).
pub(crate) fn wake(shared: &Shared) {
    if let Some(addr) = shared.metrics_addr {
        let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
    }
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let body = metrics.text();
            respond(&mut stream, "200 OK", CONTENT_TYPE, body.as_bytes())
        }
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}
