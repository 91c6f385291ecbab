//! Deferred upgrades: every upgrade is authenticated off the event loop before it is accepted.
//!
//! ```text
//! cargo run --release --example auth -- --port 9001 --workers 2 --auth-threads 4
//! # then connect to ws://127.0.0.1:9001/?token=alice-secret (or bob-secret); any other token: 401
//! ```
//! `on_upgrade` takes the token from the query string and defers (`Upgrade::defer`): the
//! `PendingUpgrade` goes to a small pool of threads that stand for a call to an authentication
//! service (a lookup plus 2 ms of "network"), which accept with the user's name as the
//! connection's data or reject with 401. The worker serves its other connections meanwhile; the
//! handshake timeout still applies to a decision that never comes. Messages are echoed prefixed
//! with the user's name.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surge::signal::ShutdownSignals;
use surge::{
    Accept, Conn, Handler, Message, PendingUpgrade, Rejection, Request, Server, ServerConfig,
    Upgrade,
};

/// One authentication to run: the token, and the upgrade waiting for its answer.
type Check = (String, PendingUpgrade<String>);

struct Authed {
    checks: mpsc::Sender<Check>,
}

impl Handler for Authed {
    /// The authenticated user's name.
    type Data = String;

    fn on_upgrade(&mut self, req: &Request) -> Upgrade<String> {
        let Some(token) = req.query_param("token") else {
            return Upgrade::Reject(Rejection::new(401, "a token is required: ?token=..."));
        };
        let token = token.into_owned();
        let checks = self.checks.clone();
        Upgrade::defer(move |pending| {
            // A full queue or a stopped pool drops `pending`: the client gets a 500.
            let _ = checks.send((token, pending));
        })
    }

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        let hello = format!("hello {}", conn.data());
        let _ = conn.send_text(&hello);
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, msg: Message<'_>) {
        let reply = format!(
            "{}: {}",
            conn.data(),
            String::from_utf8_lossy(msg.as_bytes())
        );
        let _ = conn.send_text(&reply);
    }
}

/// The "authentication service": token -> user, slow as a network call.
fn authenticate(users: &HashMap<&'static str, &'static str>, token: &str) -> Option<String> {
    std::thread::sleep(Duration::from_millis(2));
    users.get(token).map(|u| u.to_string())
}

fn main() -> std::io::Result<()> {
    let mut cfg = ServerConfig::default();
    let mut threads = 4usize;
    let mut port = 9001u16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().expect("a value after each flag");
        match flag.as_str() {
            "--port" => port = value.parse().expect("--port N"),
            "--workers" => cfg.workers = value.parse().expect("--workers N"),
            "--auth-threads" => threads = value.parse().expect("--auth-threads N"),
            _ => {
                eprintln!("usage: auth [--port 9001] [--workers N] [--auth-threads 4]");
                std::process::exit(2);
            }
        }
    }
    cfg.bind = vec![([127, 0, 0, 1], port).into()];

    let users: Arc<HashMap<&str, &str>> =
        Arc::new([("alice-secret", "alice"), ("bob-secret", "bob")].into());
    // Block SIGINT and SIGTERM in every thread started from here on, and take them below.
    let signals = ShutdownSignals::block();
    let (tx, rx) = mpsc::channel::<Check>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..threads.max(1) {
        let (rx, users) = (Arc::clone(&rx), Arc::clone(&users));
        std::thread::spawn(move || loop {
            let Ok((token, pending)) = rx.lock().unwrap().recv() else {
                return;
            };
            // Err: the client left or timed out meanwhile, or the server is stopping.
            let _ = match authenticate(&users, &token) {
                Some(user) => pending.accept(Accept::new(user)),
                None => pending.reject(Rejection::new(401, "unknown token")),
            };
        });
    }

    let server = Server::new(cfg).start(move |_| Authed { checks: tx.clone() })?;
    println!("listening on {}", server.local_addr());
    let trigger = server.trigger();
    signals.on_signal(move || trigger.shutdown());
    server.join()
}
