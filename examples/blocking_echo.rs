//! The conformance target for `surge::blocking`: a thread-per-connection echo server in gorilla's
//! style (`Upgrader::upgrade`, then `read_message` / `write_message` in a loop).
//!
//! ```text
//! cargo run --release --example blocking_echo -- --port 9002 [--host 127.0.0.1] [--stream]
//!     [--deflate off|no-context|context]
//! ```
//! `--deflate`: permessage-deflate off (the default), without context takeover, or with context
//! takeover (windows of 15 bits); every message is compressed (`min_size` 0).
//! Prints `listening on ADDR` once ready. `--stream` echoes each message as it arrives, with
//! `next_reader` / `next_writer` and `io::copy`, never holding it whole. That needs a peer that
//! reads while it writes: a client that sends a whole large message before reading anything (as the
//! Autobahn fuzzer does) and a server that echoes as it reads both end up blocked in a write.

#[path = "common/mod.rs"]
mod common;

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use surge::blocking::{Conn, DeflateMode, Error, Upgrader};
use surge::handshake::OriginPolicy;

fn usage() -> ! {
    eprintln!(
        "usage: blocking_echo [--port 9002] [--host 127.0.0.1] [--stream] \
         [--deflate off|no-context|context]"
    );
    std::process::exit(2)
}

/// Echoes each message as it streams in: frames go back out as the writer's buffer fills.
fn echo_streaming(conn: &mut Conn<TcpStream>) -> Result<(), Error> {
    loop {
        let writer = conn.writer();
        let (kind, mut reader) = conn.next_reader()?;
        let mut out = writer.next_writer(kind)?;
        io::copy(&mut reader, &mut out)?;
        out.close()?;
    }
}

fn echo_whole(conn: &mut Conn<TcpStream>) -> Result<(), Error> {
    loop {
        let (kind, data) = conn.read_message()?;
        conn.write_message(kind, &data)?;
    }
}

fn main() -> io::Result<()> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut port = 9002u16;
    let mut stream_echo = false;
    let mut deflate = DeflateMode::Disabled;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--host" => {
                host = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--stream" => stream_echo = true,
            "--deflate" => {
                deflate = args
                    .next()
                    .and_then(|v| common::deflate_mode(&v))
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let listener = TcpListener::bind(SocketAddr::new(host, port))?;
    println!("listening on {}", listener.local_addr()?);
    let mut upgrader = Upgrader::default();
    // Autobahn's test pages are served from another origin.
    upgrader.handshake.origin = OriginPolicy::AllowAll;
    upgrader.deflate.mode = deflate;
    upgrader.deflate.min_size = 0;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let upgrader = upgrader.clone();
        std::thread::spawn(move || {
            let Ok(mut conn) = upgrader.upgrade(stream) else {
                return;
            };
            // Ends with the peer's close (already answered), a protocol error (already failed with
            // its close code) or a broken stream.
            let _ = if stream_echo {
                echo_streaming(&mut conn)
            } else {
                echo_whole(&mut conn)
            };
        });
    }
    Ok(())
}
