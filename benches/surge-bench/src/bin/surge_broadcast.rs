//! The surge side of `surge-bench fanout`: connections to `/sub` subscribe to one topic; each
//! binary message received on `/pub` is published to it (encoded once, shared by every
//! subscriber on every worker). `surge-broadcast --port P --workers N [--backend B]`.

#[path = "../server_args.rs"]
mod server_args;

use std::net::SocketAddr;

use surge::{
    Accept, Backend, Conn, Handler, Message, PreparedMessage, Request, Server, ServerConfig,
    Upgrade,
};

const TOPIC: &str = "all";

struct Broadcast;

impl Handler for Broadcast {
    /// Whether the connection is the publisher.
    type Data = bool;
    fn on_upgrade(&mut self, req: &Request) -> Upgrade<bool> {
        Upgrade::Accept(Accept::new(req.path() == "/pub"))
    }
    fn on_open(&mut self, conn: &mut Conn<'_, bool>) {
        if !*conn.data() {
            conn.subscribe(TOPIC);
        }
    }
    fn on_message(&mut self, conn: &mut Conn<'_, bool>, msg: Message<'_>) {
        if let (true, Message::Binary(b)) = (*conn.data(), msg) {
            conn.publish(TOPIC, &PreparedMessage::binary(b));
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut cfg = ServerConfig::default();
    let (port, workers) = server_args::parse(cfg.workers, |flag, value| match flag {
        "--backend" => {
            cfg.backend = value.parse::<Backend>().expect("backend");
            true
        }
        _ => false,
    });
    cfg.workers = workers;
    cfg.bind = vec![SocketAddr::from(([0, 0, 0, 0], port))];
    cfg.origin = surge::handshake::OriginPolicy::AllowAll;
    cfg.backlog = 4096;
    let handle = Server::new(cfg).start(|_| Broadcast)?;
    println!("listening on {}", handle.local_addr());
    handle.join()
}
