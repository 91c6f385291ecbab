//! The surge echo server as the harness runs it: a child process like every peer, so that each system
//! is measured the same way. `surge-echo --port P --workers N [--busy-poll-us US] [--backend B]`.

use std::net::SocketAddr;
use std::time::Duration;

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

fn main() -> std::io::Result<()> {
    let mut cfg = ServerConfig::default();
    let mut port = 9001u16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().expect("flag value");
        match flag.as_str() {
            "--port" => port = value.parse().expect("port"),
            "--workers" => cfg.workers = value.parse().expect("workers"),
            "--busy-poll-us" => {
                cfg.busy_poll = Some(Duration::from_micros(value.parse().expect("us")))
            }
            "--backend" => cfg.backend = value.parse::<Backend>().expect("backend"),
            other => panic!("unknown flag {other}"),
        }
    }
    cfg.bind = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    cfg.origin = surge::handshake::OriginPolicy::AllowAll;
    let handle = Server::new(cfg).start(|_| Echo)?;
    println!("listening on {}", handle.local_addr());
    handle.join()
}
