//! The game example (examples/game.rs) under load, as a user runs it: 200 players in 4 rooms on 2
//! workers for a few seconds. Every player gets every snapshot of its room from its first to its
//! last (no gap, no repeat, in order), every room's snapshot lists all its players once they have
//! joined, inputs sent on any worker move their player on the room's home worker, a `say` reaches
//! the others and not its author, `/health` counts the players, and SIGTERM closes everyone with
//! 1001 and exits 0. Bounded: every wait has a limit.
//!
//! Runs the example binary that `cargo test` builds (target/<profile>/examples/game, or
//! `SURGE_GAME_EXAMPLE`); when it is missing the test skips with a reason, except under `CI=true`.

mod support;

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::{http_exchange, wait_until};
use tungstenite::Message;

const PLAYERS: usize = 200;
const ROOMS: usize = 4;
const HZ: u32 = 30;
/// How long every player stays once all have joined.
const WINDOW: Duration = Duration::from_secs(3);
/// Inputs a player sends, one every 50 ms from the start of the window.
const INPUT_EVERY: Duration = Duration::from_millis(50);

fn example() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SURGE_GAME_EXAMPLE") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/game-<hash> -> target/<profile>/examples/game
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("examples").join("game");
    p.exists().then_some(p)
}

/// The example, started on a free port; killed if the test fails before its shutdown.
struct Game {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the example's stdout is a pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Game {
    fn start(bin: &PathBuf, backend: &str) -> Game {
        let mut child = Command::new(bin)
            .args(["--port", "0", "--workers", "2", "--token", "t0k"])
            .args(["--backend", backend])
            .args(["--hz", &HZ.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the game example");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // "game on ws://127.0.0.1:PORT/play (...)"
        let addr = line
            .split("ws://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Game {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// SIGTERM, then the exit status within `limit`.
    fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        sigterm(self.child.id());
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// `kill -TERM pid`, through the system's `kill` (no `unsafe` in tests).
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -TERM {pid}: {status}");
}

impl Drop for Game {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one player saw.
#[derive(Default)]
struct Seen {
    room: usize,
    id: u64,
    frames: Vec<u64>,
    /// Most players listed in one snapshot, and this player's x in the last snapshot it was in.
    most_listed: usize,
    last_x: Option<i64>,
    says_from_others: usize,
    says_from_self: usize,
}

fn field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The player's entry `[id,x,y]` in a snapshot: its x.
fn x_of(snap: &str, id: u64) -> Option<i64> {
    let start = snap.find(&format!("[{id},"))? + format!("[{id},").len();
    snap[start..].split(',').next()?.parse().ok()
}

struct Run {
    joined: AtomicUsize,
    /// Set once every player has joined and the window has run: players stop sending and close.
    stop: AtomicBool,
}

fn player(addr: SocketAddr, i: usize, run: &Run, all_in: &Barrier) -> Seen {
    let room = i % ROOMS;
    let url = format!("ws://{addr}/play?room=r{room}&name=p{i}&token=t0k");
    let (mut ws, _) = tungstenite::connect(url).expect("connect");
    let mut seen = Seen {
        room,
        ..Seen::default()
    };
    match ws.read().expect("welcome") {
        Message::Text(t) => {
            assert!(t.contains(r#""type":"welcome""#), "{t}");
            seen.id = field(&t, "you").unwrap().parse().unwrap();
        }
        other => panic!("welcome expected: {other:?}"),
    }
    run.joined.fetch_add(1, Ordering::SeqCst);
    all_in.wait();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    }
    let mut next_input = Instant::now();
    let mut inputs = 0;
    let mut closing = false;
    let deadline = Instant::now() + WINDOW + Duration::from_secs(20);
    if i.is_multiple_of(50) {
        ws.send(Message::text(format!("say hello from p{i}")))
            .unwrap();
    }
    loop {
        assert!(Instant::now() < deadline, "player {i}: no end");
        if run.stop.load(Ordering::SeqCst) {
            if !closing {
                closing = true;
                let _ = ws.close(None);
            }
        } else if Instant::now() >= next_input {
            ws.send(Message::text("m 1 0")).unwrap();
            inputs += 1;
            next_input += INPUT_EVERY;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                if t.contains(r#""type":"snap""#) {
                    seen.frames
                        .push(field(&t, "frame").unwrap().parse().unwrap());
                    seen.most_listed = seen.most_listed.max(t.matches('[').count() - 1);
                    seen.last_x = x_of(&t, seen.id).or(seen.last_x);
                } else if t.contains(r#""type":"say""#) {
                    let from: u64 = field(&t, "from").unwrap().parse().unwrap();
                    if from == seen.id {
                        seen.says_from_self += 1;
                    } else {
                        seen.says_from_others += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(e) => panic!("player {i}: {e}"),
        }
    }
    assert!(inputs > 0);
    seen
}

#[test]
fn two_hundred_players_in_four_rooms_on_two_workers_epoll() {
    two_hundred_players("epoll");
}

#[test]
fn two_hundred_players_in_four_rooms_on_two_workers_io_uring() {
    two_hundred_players("io_uring");
}

fn two_hundred_players(backend: &str) {
    let Some(bin) = example() else {
        let why = "the game example is not built (cargo test builds it; or set SURGE_GAME_EXAMPLE)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    };
    let t0 = Instant::now();
    let mut game = Game::start(&bin, backend);
    let addr = game.addr;

    // Refusals first: a bad token, a bad room, an unknown path.
    for (path, status) in [
        ("/play?room=r0&token=nope", "401"),
        ("/play?room=a%20b&token=t0k", "400"),
        ("/elsewhere?token=t0k", "404"),
    ] {
        let req = support::upgrade_request(addr, path, "");
        let resp = http_exchange(addr, req.as_bytes());
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {resp}"
        );
    }

    let run = Arc::new(Run {
        joined: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let all_in = Arc::new(Barrier::new(PLAYERS + 1));
    let threads: Vec<_> = (0..PLAYERS)
        .map(|i| {
            let (run, all_in) = (Arc::clone(&run), Arc::clone(&all_in));
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || player(addr, i, &run, &all_in))
                .unwrap()
        })
        .collect();
    all_in.wait();
    assert_eq!(run.joined.load(Ordering::SeqCst), PLAYERS);

    // /health on the same port, while they play.
    let health = || {
        let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        http_exchange(addr, req.as_bytes())
    };
    assert!(
        wait_until(Duration::from_secs(5), || health()
            .contains(&format!(r#""players":{PLAYERS},"rooms":{ROOMS}"#))),
        "{}",
        health()
    );
    std::thread::sleep(WINDOW);
    run.stop.store(true, Ordering::SeqCst);
    let seen: Vec<Seen> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let expected = (WINDOW.as_secs_f64() * f64::from(HZ) * 0.6) as u64;
    for room in 0..ROOMS {
        let players: Vec<&Seen> = seen.iter().filter(|s| s.room == room).collect();
        assert_eq!(players.len(), PLAYERS / ROOMS);
        for s in &players {
            assert!(!s.frames.is_empty(), "player {} got no snapshot", s.id);
            for w in s.frames.windows(2) {
                assert_eq!(
                    w[1],
                    w[0] + 1,
                    "player {} (room {room}): a gap or a repeat",
                    s.id
                );
            }
        }
        // The frames every player of the room saw.
        let first = players.iter().map(|s| s.frames[0]).max().unwrap();
        let last = players
            .iter()
            .map(|s| *s.frames.last().unwrap())
            .min()
            .unwrap();
        assert!(
            last >= first + expected,
            "room {room}: all players saw frames {first}..={last}, want at least {expected}"
        );
        for s in &players {
            assert_eq!(
                s.most_listed,
                PLAYERS / ROOMS,
                "room {room}: snapshots list all"
            );
            // Inputs went from the player's worker to the room's home and moved it.
            assert!(
                s.last_x.is_some_and(|x| x > 0),
                "player {} did not move",
                s.id
            );
            assert_eq!(s.says_from_self, 0, "a say is not echoed to its author");
        }
        // One speaker per 50 players, spread over the rooms: p0, p50, p100, p150 are in rooms 0,
        // 2, 0, 2; everyone else in those rooms hears them.
        let speakers = (0..PLAYERS)
            .step_by(50)
            .filter(|i| i % ROOMS == room)
            .count();
        let heard: usize = players.iter().map(|s| s.says_from_others).sum();
        assert_eq!(
            heard,
            speakers * (PLAYERS / ROOMS - 1),
            "room {room}: says heard"
        );
    }
    println!(
        "{backend}: {PLAYERS} players, {ROOMS} rooms: {} snapshots received in all",
        seen.iter().map(|s| s.frames.len()).sum::<usize>()
    );

    // Rooms empty out and stop ticking.
    assert!(
        wait_until(Duration::from_secs(5), || health()
            .contains(r#""players":0,"rooms":0"#)),
        "{}",
        health()
    );

    // Graceful shutdown: a connected player gets 1001, the process exits 0.
    let url = format!("ws://{addr}/play?room=last&token=t0k");
    let (mut ws, _) = tungstenite::connect(url).expect("connect");
    let _welcome = ws.read().unwrap();
    let reader = std::thread::spawn(move || {
        let mut code = None;
        while let Ok(m) = ws.read() {
            if let Message::Close(f) = m {
                code = f.map(|f| u16::from(f.code));
            }
        }
        code
    });
    let status = game
        .terminate(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(reader.join().unwrap(), Some(1001));
    assert!(
        t0.elapsed() < WINDOW + Duration::from_secs(4),
        "the shutdown waited for its timeout: {:?}",
        t0.elapsed()
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after exit"
    );
}
