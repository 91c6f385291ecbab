//! A 30 Hz multiplayer game server: rooms of up to 64 players, token auth in the query string,
//! inputs in, state snapshots out, `/health` on the same port, graceful shutdown.
//!
//! ```text
//! cargo run --release --example game -- --port 8080 --token secret
//! ```
//! A player connects to `ws://127.0.0.1:8080/play?room=NAME&name=NICK&token=secret`, gets
//! `{"type":"welcome","you":ID,"room":"NAME"}`, then sends inputs as text (`m DX DY`, each -1, 0 or 1;
//! `say TEXT` speaks to the room) and gets the room's snapshot every tick:
//! `{"type":"snap","frame":N,"players":[[ID,X,Y],...]}`. `GET /health` answers
//! `{"status":"ok","players":N,"rooms":N}`.
//!
//! How it is built (docs/ENGINE.md, "State across workers"): the kernel picks a player's worker
//! before its request is read, so the players of one room are on every worker. Each room has a
//! **home** worker (`worker.home_of(room)`), the only one that holds its state: no lock. A player's
//! own worker forwards its join, inputs and departure to the home as commands
//! (`WorkerCtx::post`, `Handler::on_command`); the home ticks the room with a typed interval
//! timer and publishes each snapshot once to the room's topic, which every worker writes to its own
//! subscribers. A `say` goes to the others in the room (`Conn::publish_others`), not back to its
//! author. Ctrl-C or SIGTERM closes every connection with 1001 ("going away") and exits.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use surge::signal::ShutdownSignals;
use surge::{
    Accept, CloseCode, CloseInfo, Command, Conn, ConnHandle, Handler, Message, PreparedMessage,
    Rejection, Request, Response, Server, ServerConfig, Timer, TimerId, Upgrade, WorkerCtx,
};

/// Most players in a room.
const ROOM_CAPACITY: usize = 64;
/// How far a player may be from the centre, in each axis.
const BOUND: i32 = 1000;

/// A player's connection data, on the worker the kernel gave it.
struct Player {
    id: u64,
    room: Arc<str>,
    /// The room's home worker.
    home: usize,
}

/// What a player's worker tells the room's home worker.
enum ToHome {
    Join {
        room: Arc<str>,
        player: u64,
        /// To refuse the player when the room is full (it may be on another worker).
        conn: ConnHandle,
    },
    Input {
        room: Arc<str>,
        player: u64,
        dx: i8,
        dy: i8,
    },
    Leave {
        room: Arc<str>,
        player: u64,
    },
}

/// What a home worker's timers are for.
enum Due {
    /// A room's tick.
    Tick(Arc<str>),
}

/// A room, on its home worker only.
struct Room {
    frame: u64,
    /// By player id: the snapshot lists them in a stable order.
    players: BTreeMap<u64, (i32, i32)>,
    tick: TimerId,
}

/// Figures every worker shares (for `/health`).
#[derive(Default)]
struct Totals {
    next_player: AtomicU64,
    rooms: AtomicUsize,
}

/// One per worker.
struct Game {
    token: Arc<str>,
    tick: Duration,
    totals: Arc<Totals>,
    /// The rooms whose home is this worker.
    rooms: HashMap<Arc<str>, Room>,
    /// The snapshot being written (kept to reuse its buffer).
    snapshot: String,
}

fn topic(room: &str) -> String {
    format!("room/{room}")
}

fn valid_room(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Game {
    fn join(
        &mut self,
        worker: &mut WorkerCtx<Player>,
        room: Arc<str>,
        player: u64,
        conn: ConnHandle,
    ) {
        let every = self.tick;
        let rooms = &self.totals.rooms;
        let r = self.rooms.entry(Arc::clone(&room)).or_insert_with(|| {
            rooms.fetch_add(1, Ordering::Relaxed);
            Room {
                frame: 0,
                players: BTreeMap::new(),
                tick: worker.set_interval(every, Due::Tick(Arc::clone(&room))),
            }
        });
        if r.players.len() >= ROOM_CAPACITY {
            // 1013: try again later. Its worker then sends us its Leave, which finds nothing.
            let _ = conn.close(CloseCode::TRY_AGAIN, "room full");
            return;
        }
        r.players.insert(player, (0, 0));
    }

    fn input(&mut self, room: &str, player: u64, dx: i8, dy: i8) {
        if let Some(pos) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.players.get_mut(&player))
        {
            pos.0 = (pos.0 + i32::from(dx)).clamp(-BOUND, BOUND);
            pos.1 = (pos.1 + i32::from(dy)).clamp(-BOUND, BOUND);
        }
    }

    fn leave(&mut self, room: &str, player: u64) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.players.remove(&player);
        }
    }

    /// A room's tick: its snapshot, published once to every player on every worker. An empty
    /// room stops ticking and is dropped.
    fn tick(&mut self, worker: &mut WorkerCtx<Player>, room: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.players.is_empty() {
            worker.cancel_timer(r.tick);
            self.rooms.remove(room);
            self.totals.rooms.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        r.frame += 1;
        let s = &mut self.snapshot;
        s.clear();
        let _ = write!(s, r#"{{"type":"snap","frame":{},"players":["#, r.frame);
        for (i, (id, (x, y))) in r.players.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            let _ = write!(s, "{comma}[{id},{x},{y}]");
        }
        s.push_str("]}");
        worker.publish(&topic(room), &PreparedMessage::text(s));
    }

    fn post(worker: &mut WorkerCtx<Player>, home: usize, cmd: ToHome) {
        // Err only once the server is shutting down: nothing left to tell.
        let _ = worker.post(home, cmd);
    }
}

impl Handler for Game {
    type Data = Player;

    fn on_http(&mut self, worker: &mut WorkerCtx<Player>, req: &Request) -> Response {
        match req.path() {
            "/health" => Response::ok(format!(
                r#"{{"status":"ok","players":{},"rooms":{}}}"#,
                worker.publisher().connection_count(),
                self.totals.rooms.load(Ordering::Relaxed)
            ))
            .header("Content-Type", "application/json"),
            _ => Response::new(404, "the game is at /play, the health check at /health\n"),
        }
    }

    fn on_upgrade(&mut self, req: &Request) -> Upgrade<Player> {
        if req.path() != "/play" {
            return Upgrade::Reject(Rejection::new(404, "the game is at /play\n"));
        }
        // A real game checks a signed token here (or on a thread pool: see examples/auth.rs).
        if req.query_param("token").as_deref() != Some(&*self.token) {
            return Upgrade::Reject(Rejection::new(401, "bad token\n"));
        }
        let room = req.query_param("room").unwrap_or_default();
        if !valid_room(&room) {
            return Upgrade::Reject(Rejection::new(400, "room: 1-32 of [A-Za-z0-9_-]\n"));
        }
        let room: Arc<str> = room.into();
        Upgrade::Accept(Accept::new(Player {
            id: self.totals.next_player.fetch_add(1, Ordering::Relaxed) + 1,
            home: 0, // set in on_open, where the worker is at hand
            room,
        }))
    }

    fn on_open(&mut self, conn: &mut Conn<'_, Player>) {
        let handle = conn.handle();
        let (id, room) = (conn.data().id, Arc::clone(&conn.data().room));
        let home = conn.worker().home_of(&*room);
        conn.data_mut().home = home;
        // Subscribed before the join is posted: every snapshot with this player in it reaches it.
        conn.subscribe(&topic(&room));
        let welcome = format!(r#"{{"type":"welcome","you":{id},"room":"{room}"}}"#);
        let _ = conn.send_text(&welcome);
        let join = ToHome::Join {
            room,
            player: id,
            conn: handle,
        };
        Game::post(conn.worker(), home, join);
    }

    fn on_message(&mut self, conn: &mut Conn<'_, Player>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            return; // binary messages are ignored
        };
        if let Some(said) = text.strip_prefix("say ") {
            let line = format!(
                r#"{{"type":"say","from":{},"text":{}}}"#,
                conn.data().id,
                json_string(said)
            );
            let room = topic(&conn.data().room);
            conn.publish_others(&room, &PreparedMessage::text(&line));
            return;
        }
        let mut parts = text.strip_prefix("m ").unwrap_or("").split(' ');
        let mut axis = || {
            parts
                .next()
                .and_then(|v| v.parse::<i8>().ok())
                .map(|v| v.signum())
        };
        let (Some(dx), Some(dy)) = (axis(), axis()) else {
            return; // not an input: ignored
        };
        conn.with_data(|p, conn| {
            let cmd = ToHome::Input {
                room: Arc::clone(&p.room),
                player: p.id,
                dx,
                dy,
            };
            Game::post(conn.worker(), p.home, cmd);
        });
    }

    fn on_close(&mut self, worker: &mut WorkerCtx<Player>, p: Player, _info: &CloseInfo<'_>) {
        let leave = ToHome::Leave {
            room: p.room,
            player: p.id,
        };
        Game::post(worker, p.home, leave);
    }

    fn on_command(&mut self, worker: &mut WorkerCtx<Player>, cmd: Command) {
        let Ok(cmd) = cmd.downcast::<ToHome>() else {
            return;
        };
        match cmd {
            ToHome::Join { room, player, conn } => self.join(worker, room, player, conn),
            ToHome::Input {
                room,
                player,
                dx,
                dy,
            } => self.input(&room, player, dx, dy),
            ToHome::Leave { room, player } => self.leave(&room, player),
        }
    }

    fn on_timer(&mut self, worker: &mut WorkerCtx<Player>, mut timer: Timer<'_>) {
        if let Some(Due::Tick(room)) = timer.get::<Due>() {
            let room = Arc::clone(room);
            self.tick(worker, &room);
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn usage() -> ! {
    eprintln!(
        "usage: game [--port 8080] [--host 127.0.0.1] [--workers 2] [--hz 30] [--token demo] \
         [--backend auto|epoll|io_uring]\n\
         (players at ws://HOST:PORT/play?room=NAME&name=NICK&token=TOKEN, health at /health)"
    );
    std::process::exit(2)
}

fn main() -> std::io::Result<()> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut port = 8080u16;
    let mut workers = 2usize;
    let mut hz = 30u32;
    let mut backend = surge::Backend::Auto;
    let mut token = std::env::var("GAME_TOKEN").unwrap_or_else(|_| "demo".into());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--port" => port = value.parse().unwrap_or_else(|_| usage()),
            "--host" => host = value.parse().unwrap_or_else(|_| usage()),
            "--workers" => workers = value.parse().unwrap_or_else(|_| usage()),
            "--hz" => hz = value.parse().unwrap_or_else(|_| usage()),
            "--token" => token = value,
            "--backend" => {
                backend = match value.as_str() {
                    "auto" => surge::Backend::Auto,
                    "epoll" => surge::Backend::Epoll,
                    "io_uring" => surge::Backend::IoUring,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    if hz == 0 || hz > 1000 || workers == 0 {
        usage();
    }
    let mut cfg = ServerConfig::bind(SocketAddr::new(host, port));
    cfg.workers = workers;
    cfg.backend = backend;
    cfg.proto.max_message_size = 1024; // inputs are tiny
    cfg.max_backpressure = 512 * 1024; // a few seconds of snapshots for a slow player
    cfg.proto.idle_timeout = Some(Duration::from_secs(15)); // pinged when quiet, closed if silent

    let signals = ShutdownSignals::block();
    let token: Arc<str> = token.into();
    let totals = Arc::new(Totals::default());
    let tick = Duration::from_secs(1) / hz;
    let handle = Server::new(cfg).start(move |_worker| Game {
        token: Arc::clone(&token),
        tick,
        totals: Arc::clone(&totals),
        rooms: HashMap::new(),
        snapshot: String::new(),
    })?;
    println!(
        "game on ws://{0}/play ({workers} workers, {hz} Hz), health at http://{0}/health",
        handle.local_addr()
    );
    let trigger = handle.trigger();
    signals.on_signal(move || {
        eprintln!("shutting down");
        trigger.shutdown();
    });
    handle.join()
}
