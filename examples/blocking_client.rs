//! The client conformance target for `surge::blocking`: the Autobahn client flow against a fuzzing
//! server (kosoku `-m fuzzingserver`), echoing every message of every case through a `Dialer`
//! connection.
//!
//! ```text
//! kosoku -m fuzzingserver -o reports 127.0.0.1:9001 &
//! cargo run --release --example blocking_client -- --server ws://127.0.0.1:9001 --agent surge-blocking \
//!     [--deflate off|no-context|context]
//! ```
//! `--deflate`: offer permessage-deflate (off by default), without or with context takeover;
//! every message is compressed when it is accepted (`min_size` 0).
//! Asks `/getCaseCount`, runs `/runCase?case=N&agent=AGENT` for each case, then
//! `/updateReports?agent=AGENT` so the server writes its report.

#[path = "common/mod.rs"]
mod common;

use std::net::TcpStream;
use std::time::Duration;

use surge::blocking::{Conn, DeflateMode, Dialer, Error};

fn usage() -> ! {
    eprintln!(
        "usage: blocking_client [--server ws://127.0.0.1:9001] [--agent surge-blocking] \
         [--deflate off|no-context|context]"
    );
    std::process::exit(2)
}

/// Echoes every message until the server closes (or fails) the connection.
fn echo(conn: &mut Conn<TcpStream>) -> Error {
    loop {
        let (kind, data) = match conn.read_message() {
            Ok(msg) => msg,
            Err(e) => return e,
        };
        if let Err(e) = conn.write_message(kind, &data) {
            return e;
        }
    }
}

/// Dials, retrying briefly while the fuzzing server starts.
fn dial(dialer: &Dialer, url: &str) -> Result<Conn<TcpStream>, Error> {
    let mut tries = 0;
    loop {
        match dialer.dial(url) {
            Ok((conn, _response)) => return Ok(conn),
            Err(Error::Io(e))
                if tries < 50 && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() {
    let mut server = "ws://127.0.0.1:9001".to_owned();
    let mut agent = "surge-blocking".to_owned();
    let mut deflate = DeflateMode::Disabled;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--server" => server = value,
            "--agent" => agent = value,
            "--deflate" => deflate = common::deflate_mode(&value).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let server = server.trim_end_matches('/');
    let mut dialer = Dialer {
        handshake_timeout: Duration::from_secs(10),
        ..Dialer::default()
    };
    dialer.deflate.mode = deflate;
    dialer.deflate.min_size = 0;

    let count = dial(&dialer, &format!("{server}/getCaseCount"))
        .and_then(|mut conn| conn.read_message())
        .map(|(_, data)| String::from_utf8_lossy(&data).trim().parse::<u32>());
    let count = match count {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            eprintln!("getCaseCount: not a number: {e}");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("getCaseCount: {e}");
            std::process::exit(1)
        }
    };
    println!("{count} cases");

    for case in 1..=count {
        let url = format!("{server}/runCase?case={case}&agent={agent}");
        match dial(&dialer, &url) {
            Ok(mut conn) => {
                let end = echo(&mut conn);
                if !matches!(end, Error::Close(_)) {
                    println!("case {case}: {end}");
                }
            }
            Err(e) => println!("case {case}: dial: {e}"),
        }
    }

    let url = format!("{server}/updateReports?agent={agent}");
    match dial(&dialer, &url) {
        Ok(mut conn) => {
            // The server closes once the report is written.
            let _ = echo(&mut conn);
        }
        Err(e) => {
            eprintln!("updateReports: {e}");
            std::process::exit(1)
        }
    }
    println!("done");
}
