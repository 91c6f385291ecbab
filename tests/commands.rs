//! Application commands between workers (`WorkerCtx::post`, `ServerHandle::post`,
//! `Handler::on_command`), once per driver: a room with a home worker receives every player's
//! input whichever worker the player landed on, and answers through the player's `ConnHandle`.

#[macro_use]
mod support;

use std::sync::mpsc;

use support::{RawClient, READ_TIMEOUT};
use surge::{
    Accept, Command, Conn, ConnHandle, Handler, Message, Request, Server, ServerConfig, Upgrade,
    WorkerCtx,
};

/// A player's input, for the room's home worker.
struct Input {
    from: ConnHandle,
    text: String,
}

/// From the test thread: which worker ran it.
struct Probe(mpsc::Sender<usize>);

struct Rooms;

impl Handler for Rooms {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, msg: Message<'_>) {
        let input = Input {
            from: conn.handle(),
            text: String::from_utf8_lossy(msg.as_bytes()).into_owned(),
        };
        let worker = conn.worker();
        let home = worker.home_of("room");
        worker.post(home, input).expect("the server runs");
    }
    fn on_command(&mut self, worker: &mut WorkerCtx<()>, cmd: Command) {
        let cmd = match cmd.downcast::<Input>() {
            Ok(input) => {
                let reply = format!("home {} got {}", worker.index(), input.text);
                let _ = input.from.send_text(&reply);
                return;
            }
            Err(cmd) => cmd,
        };
        if let Ok(Probe(tx)) = cmd.downcast::<Probe>() {
            let _ = tx.send(worker.index());
        }
    }
}

fn inputs_reach_the_rooms_home_worker() {
    let server = Server::new(ServerConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        backend: support::backend(),
        uring_recv: support::uring_recv(),
        ..ServerConfig::default()
    })
    .start(|_| Rooms)
    .expect("server starts");
    let addr = server.local_addr();
    let home = server.home_of("room");
    assert!(home < 2);
    let mut players: Vec<RawClient> = (0..8).map(|_| RawClient::connect(addr, "/")).collect();
    for round in 0..3 {
        for (i, p) in players.iter_mut().enumerate() {
            p.send(true, 1, format!("r{round} p{i}").as_bytes());
        }
        for (i, p) in players.iter_mut().enumerate() {
            let reply = p.expect_frame();
            assert_eq!(
                String::from_utf8(reply.payload).unwrap(),
                format!("home {home} got r{round} p{i}")
            );
        }
    }
    // From any thread, to each worker.
    for w in 0..server.worker_count() {
        let (tx, rx) = mpsc::channel();
        server.post(w, Probe(tx)).unwrap();
        assert_eq!(rx.recv_timeout(READ_TIMEOUT).unwrap(), w);
    }
    drop(players);
    server.shutdown();
    server.join().unwrap();
}

per_driver!(inputs_reach_the_rooms_home_worker);
