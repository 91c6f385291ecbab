//! surge::blocking: gorilla/websocket's behaviours over blocking streams (see docs/GORILLA.md).
//! Server and client run in this process over loopback TCP (or Unix socket pairs); every read has a
//! deadline, so a broken connection fails a test instead of hanging it.

mod support;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::encode_frame;
use surge::blocking::{
    format_close_message, is_close_error, is_unexpected_close_error, CloseCode, CloseError, Conn,
    DeflateMode, Dialer, Error, Generic, MessageType, PreparedMessage, Upgrader,
};
use surge::handshake::HandshakeError;
use surge::{Accept, Handler, Message, Rejection, Request, Server, ServerConfig, Upgrade};

/// Upper bound for any single test step.
const LIMIT: Duration = Duration::from_secs(10);

fn soon() -> Option<Instant> {
    Some(Instant::now() + LIMIT)
}

/// An upgraded server connection and a dialed client connection, both with read deadlines.
fn pair_with(upgrader: Upgrader, dialer: Dialer) -> (Conn<TcpStream>, Conn<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        upgrader.upgrade(stream)
    });
    let (mut client, _response) = dialer.dial(&format!("ws://{addr}/chat")).unwrap();
    let mut server = server.join().unwrap().unwrap();
    server.set_read_deadline(soon()).unwrap();
    client.set_read_deadline(soon()).unwrap();
    (server, client)
}

fn pair() -> (Conn<TcpStream>, Conn<TcpStream>) {
    pair_with(Upgrader::default(), Dialer::default())
}

/// A deterministic payload of `len` bytes.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Runs `f` on a thread and fails the test if it takes longer than `LIMIT`.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT * 2).expect("test step timed out")
}

#[test]
fn echo_read_write_message() {
    bounded(|| {
        let (mut server, mut client) = pair();
        let echo = thread::spawn(move || loop {
            match server.read_message() {
                Ok((kind, data)) => server.write_message(kind, &data).unwrap(),
                Err(e) => return e,
            }
        });
        for len in [0, 1, 125, 126, 65535, 65536, 1 << 20] {
            let data = payload(len);
            client.write_message(MessageType::Binary, &data).unwrap();
            assert_eq!(client.read_message().unwrap(), (MessageType::Binary, data));
        }
        client.write_text("héllo").unwrap();
        assert_eq!(
            client.read_message().unwrap(),
            (MessageType::Text, "héllo".as_bytes().to_vec())
        );
        client.write_close(CloseCode::NORMAL, "done").unwrap();
        let end = client.read_message().unwrap_err();
        assert!(is_close_error(&end, &[CloseCode::NORMAL]), "{end}");
        let server_end = echo.join().unwrap();
        assert_eq!(
            server_end.close_error(),
            Some(&CloseError {
                code: CloseCode::NORMAL,
                text: "done".into()
            })
        );
        assert!(!is_unexpected_close_error(
            &server_end,
            &[CloseCode::NORMAL, CloseCode::GOING_AWAY]
        ));
        // The connection stays closed: later reads give the same error, writes are refused.
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::NORMAL]
        ));
        assert!(matches!(client.write_text("late"), Err(Error::CloseSent)));
    });
}

#[test]
fn echo_next_reader_next_writer_with_io_copy() {
    bounded(|| {
        let small = Upgrader {
            read_buffer_size: 1000,
            write_buffer_size: 3000,
            ..Upgrader::default()
        };
        let (mut server, client) = pair_with(small, Dialer::default());
        // The server echoes each message as it streams in, never holding it whole.
        let echo = thread::spawn(move || -> Result<(), Error> {
            loop {
                let writer = server.writer();
                let (kind, mut reader) = server.next_reader()?;
                let mut out = writer.next_writer(kind)?;
                io::copy(&mut reader, &mut out)?;
                out.close()?;
            }
        });
        // The client writes from one thread and reads from another: a streaming echo needs both.
        let (mut reader, writer) = client.split();
        let sizes = [0usize, 1, 999, 1000, 1001, 3000, 3001, 1 << 20, 3 << 20];
        let sender = thread::spawn(move || {
            for len in sizes {
                let mut w = writer.next_writer(MessageType::Binary).unwrap();
                let data = payload(len);
                // Pieces of odd sizes, so frames and writes do not line up.
                for piece in data.chunks(777) {
                    w.write_all(piece).unwrap();
                }
                w.close().unwrap();
            }
            let mut w = writer.next_writer(MessageType::Text).unwrap();
            w.write_all("Größe ".as_bytes()).unwrap();
            w.write_all("ümlaut".as_bytes()).unwrap();
            w.close().unwrap();
            writer
        });
        for len in sizes {
            let (kind, mut r) = reader.next_reader().unwrap();
            assert_eq!(kind, MessageType::Binary);
            let mut got = Vec::new();
            let mut chunk = [0u8; 4093];
            loop {
                let n = r.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got.len(), len);
            assert!(got == payload(len), "payload of {len} bytes differs");
        }
        let (kind, mut r) = reader.next_reader().unwrap();
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!((kind, text.as_str()), (MessageType::Text, "Größe ümlaut"));
        let writer = sender.join().unwrap();
        writer.write_close(CloseCode::GOING_AWAY, "").unwrap();
        assert!(is_close_error(
            &reader.read_message().unwrap_err(),
            &[CloseCode::GOING_AWAY]
        ));
        let end = echo.join().unwrap().unwrap_err();
        assert!(is_close_error(&end, &[CloseCode::GOING_AWAY]), "{end}");
    });
}

#[test]
fn next_reader_skips_the_unread_rest() {
    bounded(|| {
        let (mut server, client) = pair();
        client
            .write_message(MessageType::Binary, &payload(100_000))
            .unwrap();
        client.write_text("second").unwrap();
        {
            let (_, mut r) = server.next_reader().unwrap();
            let mut first = [0u8; 10];
            r.read_exact(&mut first).unwrap();
            assert_eq!(first[..], payload(10)[..]);
        }
        assert_eq!(
            server.read_message().unwrap(),
            (MessageType::Text, b"second".to_vec())
        );
    });
}

#[test]
fn default_ping_handler_answers_and_pong_handler_sees_payload() {
    bounded(|| {
        let (mut server, mut client) = pair();
        let pongs = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&pongs);
        client.set_pong_handler(move |_, data| {
            seen.lock().unwrap().push(data.to_vec());
            Ok(())
        });
        let echo = thread::spawn(move || {
            let (kind, data) = server.read_message().unwrap();
            server.write_message(kind, &data).unwrap();
            server
        });
        client
            .write_control(MessageType::Ping, b"are you there", soon())
            .unwrap();
        client.write_text("after the ping").unwrap();
        // The pong arrives before the echo, and the reader hands it to the handler on the way.
        assert_eq!(client.read_message().unwrap().1, b"after the ping");
        assert_eq!(*pongs.lock().unwrap(), vec![b"are you there".to_vec()]);
        echo.join().unwrap();
    });
}

#[test]
fn custom_ping_handler_replaces_the_default() {
    bounded(|| {
        let (mut server, mut client) = pair();
        let pings = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&pings);
        server.set_ping_handler(move |w, data| {
            count.fetch_add(1, Ordering::SeqCst);
            let mut answer = b"custom:".to_vec();
            answer.extend_from_slice(data);
            w.write_control(MessageType::Pong, &answer, soon())
        });
        let pongs = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&pongs);
        client.set_pong_handler(move |_, data| {
            seen.lock().unwrap().push(data.to_vec());
            Ok(())
        });
        let echo = thread::spawn(move || {
            let (kind, data) = server.read_message().unwrap();
            server.write_message(kind, &data).unwrap();
        });
        client
            .write_control(MessageType::Ping, b"1", soon())
            .unwrap();
        client.write_text("x").unwrap();
        client.read_message().unwrap();
        echo.join().unwrap();
        assert_eq!(pings.load(Ordering::SeqCst), 1);
        assert_eq!(*pongs.lock().unwrap(), vec![b"custom:1".to_vec()]);
    });
}

#[test]
fn close_handler_sees_code_and_default_echoes_it() {
    bounded(|| {
        let (mut server, mut client) = pair();
        let closes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&closes);
        server.set_close_handler(move |_, code, text| {
            seen.lock().unwrap().push((code, text.to_owned()));
            Ok(())
        });
        let reader = thread::spawn(move || server.read_message().unwrap_err());
        client
            .write_control(
                MessageType::Close,
                &format_close_message(CloseCode(4001), "bye"),
                soon(),
            )
            .unwrap();
        // The echo carries the code (gorilla's default close handler), without the text.
        let end = client.read_message().unwrap_err();
        assert_eq!(
            end.close_error(),
            Some(&CloseError {
                code: CloseCode(4001),
                text: String::new()
            })
        );
        assert!(is_unexpected_close_error(&end, &[CloseCode::NORMAL]));
        let server_end = reader.join().unwrap();
        assert!(is_close_error(&server_end, &[CloseCode(4001)]));
        assert_eq!(
            *closes.lock().unwrap(),
            vec![(CloseCode(4001), "bye".into())]
        );
    });
}

#[test]
fn close_without_status_is_1005_and_echoed_empty() {
    bounded(|| {
        let (mut server, mut client) = pair();
        let reader = thread::spawn(move || server.read_message().unwrap_err());
        client.write_control(MessageType::Close, &[], None).unwrap();
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::NO_STATUS]
        ));
        assert!(is_close_error(
            &reader.join().unwrap(),
            &[CloseCode::NO_STATUS]
        ));
    });
}

#[test]
fn read_limit_closes_with_1009() {
    bounded(|| {
        let (mut server, mut client) = pair();
        server.set_read_limit(1000);
        // The server reads on its own thread: after failing the connection it waits for the
        // client to end the stream (the client's read below sees the close and drops it).
        let reader = thread::spawn(move || {
            let first = server.read_message().map(|(_, data)| data.len());
            let second = server.read_message().unwrap_err();
            let third = server.read_message().unwrap_err();
            (first.unwrap(), second, third)
        });
        client
            .write_message(MessageType::Binary, &payload(1000))
            .unwrap();
        client
            .write_message(MessageType::Binary, &payload(1001))
            .unwrap();
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::TOO_BIG]
        ));
        drop(client);
        let (first, second, third) = reader.join().unwrap();
        assert_eq!(first, 1000);
        assert!(matches!(second, Error::ReadLimit), "{second}");
        assert!(matches!(third, Error::ReadLimit), "{third}");
    });
}

#[test]
fn read_limit_counts_fragments() {
    bounded(|| {
        let (mut server, mut client) = pair();
        server.set_read_limit(5000);
        let reader = thread::spawn(move || server.read_message().unwrap_err());
        let mut w = client.next_writer(MessageType::Binary).unwrap();
        for _ in 0..3 {
            // The server may fail the connection before the last piece is written.
            let _ = w.write_all(&payload(2000)).and_then(|()| w.flush());
        }
        let _ = w.close();
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::TOO_BIG]
        ));
        drop(client);
        assert!(matches!(reader.join().unwrap(), Error::ReadLimit));
    });
}

#[test]
fn fragment_limit_closes_with_1009() {
    bounded(|| {
        let mut upgrader = Upgrader::default();
        upgrader.proto.max_fragments = 50;
        let (mut server, mut client) = pair_with(upgrader, Dialer::default());
        let reader = thread::spawn(move || {
            let first = server.read_message().map(|(_, data)| data.len());
            (first.unwrap(), server.read_message().unwrap_err())
        });
        // Each flush sends what is buffered as a frame: 50 frames, then 51.
        for frames in [50, 51] {
            let mut w = client.next_writer(MessageType::Binary).unwrap();
            for _ in 0..frames - 1 {
                // The server may fail the connection before the last piece is written.
                let _ = w.write_all(b"x").and_then(|()| w.flush());
            }
            let _ = w.write_all(b"x");
            let _ = w.close();
        }
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::TOO_BIG]
        ));
        drop(client);
        let (first, second) = reader.join().unwrap();
        assert_eq!(first, 50);
        assert!(
            matches!(
                second,
                Error::Protocol(surge::proto::Error::TooManyFragments { max: 50 })
            ),
            "{second}"
        );
    });
}

#[test]
fn read_deadline_makes_the_connection_unusable() {
    bounded(|| {
        let (mut server, client) = pair();
        server
            .set_read_deadline(Some(Instant::now() + Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        assert!(matches!(server.read_message(), Err(Error::Timeout)));
        assert!(start.elapsed() >= Duration::from_millis(90));
        assert!(start.elapsed() < Duration::from_secs(5));
        // Even with data waiting and no deadline, the connection stays failed (gorilla).
        client.write_text("too late").unwrap();
        server.set_read_deadline(None).unwrap();
        assert!(matches!(server.read_message(), Err(Error::Timeout)));
    });
}

#[test]
fn write_deadline_in_the_past_fails_and_sticks() {
    bounded(|| {
        let (server, _client) = pair();
        server
            .set_write_deadline(Some(Instant::now() - Duration::from_millis(1)))
            .unwrap();
        assert!(matches!(server.write_text("x"), Err(Error::Timeout)));
        server.set_write_deadline(None).unwrap();
        assert!(matches!(server.write_text("x"), Err(Error::Timeout)));
    });
}

#[test]
fn write_deadline_passes_while_the_peer_does_not_read() {
    bounded(|| {
        let (server, _client) = pair();
        server
            .set_write_deadline(Some(Instant::now() + Duration::from_millis(200)))
            .unwrap();
        // The client never reads: socket buffers fill and the write times out.
        let big = payload(1 << 20);
        let err = loop {
            if let Err(e) = server.write_message(MessageType::Binary, &big) {
                break e;
            }
        };
        assert!(matches!(err, Error::Timeout), "{err}");
        assert!(server.write_text("x").is_err());
    });
}

#[test]
fn write_control_from_another_thread_during_a_large_message() {
    bounded(|| {
        let (server, mut client) = pair();
        let pings = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&pings);
        client.set_ping_handler(move |_, data| {
            assert_eq!(data, b"tick");
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let data = Arc::new(payload(8 << 20));
        let controls = server.writer();
        let ticker = thread::spawn(move || {
            for _ in 0..200 {
                controls
                    .write_control(MessageType::Ping, b"tick", soon())
                    .unwrap();
            }
        });
        let body = Arc::clone(&data);
        let writer = server.writer();
        let streamer = thread::spawn(move || {
            // A message in 1 KiB writes: control frames go out between its frames.
            let mut w = writer.next_writer(MessageType::Binary).unwrap();
            for piece in body.chunks(1024) {
                w.write_all(piece).unwrap();
            }
            w.close().unwrap();
            // And one large single-frame message: control frames wait for it, whole.
            writer.write_message(MessageType::Binary, &body).unwrap();
        });
        let (_, first) = client.read_message().unwrap();
        assert!(first == *data);
        let (_, second) = client.read_message().unwrap();
        assert!(second == *data);
        ticker.join().unwrap();
        streamer.join().unwrap();
        server.write_text("end").unwrap();
        assert_eq!(client.read_message().unwrap().1, b"end");
        assert_eq!(pings.load(Ordering::SeqCst), 200);
        drop(server);
    });
}

#[test]
fn close_from_another_thread_ends_a_blocked_read() {
    bounded(|| {
        let (mut server, _client) = pair();
        let writer = server.writer();
        let reader = thread::spawn(move || server.read_message().unwrap_err());
        thread::sleep(Duration::from_millis(50));
        writer.close().unwrap();
        let err = reader.join().unwrap();
        assert!(
            matches!(
                err,
                Error::Close(CloseError {
                    code: CloseCode::ABNORMAL,
                    ..
                }) | Error::Io(_)
            ),
            "{err}"
        );
        assert!(writer.write_text("x").is_err());
    });
}

#[test]
fn prepared_message_to_many_connections() {
    bounded(|| {
        let pm = PreparedMessage::new(MessageType::Text, b"broadcast").unwrap();
        let big = PreparedMessage::new(MessageType::Binary, &payload(200_000)).unwrap();
        for _ in 0..3 {
            let (mut server, mut client) = pair();
            server.write_prepared_message(&pm).unwrap();
            server.write_prepared_message(&big).unwrap();
            assert_eq!(
                client.read_message().unwrap(),
                (MessageType::Text, b"broadcast".to_vec())
            );
            assert!(client.read_message().unwrap().1 == payload(200_000));
            // A client masks each frame anew.
            client.write_prepared_message(&pm).unwrap();
            client.write_prepared_message(&pm).unwrap();
            for _ in 0..2 {
                assert_eq!(server.read_message().unwrap().1, b"broadcast");
            }
        }
        assert!(PreparedMessage::new(MessageType::Ping, &[0; 126]).is_err());
        // The engine's type: its own constructors work here too.
        let engine = PreparedMessage::binary(b"engine");
        assert_eq!(engine.message_type(), MessageType::Binary);
        assert_eq!(pm.message_type(), MessageType::Text);
        let (server, mut client) = pair();
        server.write_prepared_message(&engine).unwrap();
        assert_eq!(client.read_message().unwrap().1, b"engine");
    });
}

#[test]
fn prepared_control_messages() {
    bounded(|| {
        let (mut server, mut client) = pair();
        let ping = PreparedMessage::new(MessageType::Ping, b"are you there").unwrap();
        assert_eq!(ping.message_type(), MessageType::Ping);
        let pings = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&pings);
        client.set_ping_handler(move |_, data| {
            seen.lock().unwrap().push(data.to_vec());
            Ok(())
        });
        server.write_prepared_message(&ping).unwrap();
        client.write_prepared_message(&ping).unwrap();
        let close = format_close_message(CloseCode::NORMAL, "bye");
        let close = PreparedMessage::new(MessageType::Close, &close).unwrap();
        assert_eq!(close.message_type(), MessageType::Close);
        server.write_prepared_message(&close).unwrap();
        // A close sent: no data after it.
        assert!(matches!(
            server.write_prepared_message(&PreparedMessage::text("late")),
            Err(Error::CloseSent)
        ));
        // The server gets the client's ping (answered by its default handler), then the echo of
        // its close.
        let server = thread::spawn(move || server.read_message().unwrap_err());
        let err = client.read_message().unwrap_err();
        let c = err.close_error().expect("a close");
        assert_eq!((c.code, c.text.as_str()), (CloseCode::NORMAL, "bye"));
        assert_eq!(*pings.lock().unwrap(), [b"are you there".to_vec()]);
        let err = server.join().unwrap();
        assert_eq!(err.close_error().map(|c| c.code), Some(CloseCode::NORMAL));
    });
}

#[test]
fn subprotocol_and_addresses() {
    bounded(|| {
        let mut upgrader = Upgrader::default();
        upgrader.handshake.subprotocols = vec!["v2".into(), "v1".into()];
        let dialer = Dialer {
            subprotocols: vec!["v1".into(), "v2".into()],
            ..Dialer::default()
        };
        let (server, client) = pair_with(upgrader, dialer);
        assert_eq!(server.subprotocol(), Some("v2"));
        assert_eq!(client.subprotocol(), Some("v2"));
        assert_eq!(server.local_addr(), client.peer_addr());
        assert_eq!(server.peer_addr(), client.local_addr());
        assert_eq!(server.request().unwrap().path(), "/chat");
        assert!(client.request().is_none());
    });
}

#[test]
fn dialer_refused_with_403_reports_it() {
    bounded(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            Upgrader::default().upgrade(stream).unwrap_err()
        });
        let dialer = Dialer {
            headers: vec![("Origin".into(), "http://evil.example".into())],
            ..Dialer::default()
        };
        let err = dialer.dial(&format!("ws://{addr}/")).unwrap_err();
        assert_eq!(err.status(), Some(403), "{err}");
        let server_err = server.join().unwrap();
        assert!(matches!(
            server_err,
            Error::Handshake(HandshakeError::OriginRejected)
        ));
    });
}

#[test]
fn upgrade_with_lets_the_application_decide() {
    bounded(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                results.push(Upgrader::default().upgrade_with(stream, |req: &Request| {
                    if req.query() == Some("token=ok") {
                        let mut accept = Accept::new(());
                        accept.headers.push(("Set-Cookie".into(), "a=b".into()));
                        Upgrade::Accept(accept)
                    } else {
                        Upgrade::Reject(Rejection::new(401, "who are you?\n"))
                    }
                }));
            }
            results
        });
        let err = Dialer::default()
            .dial(&format!("ws://{addr}/?token=bad"))
            .unwrap_err();
        assert_eq!(err.status(), Some(401));
        let (_conn, response) = Dialer::default()
            .dial(&format!("ws://{addr}/?token=ok"))
            .unwrap();
        assert_eq!(response.header("set-cookie"), Some("a=b"));
        let results = server.join().unwrap();
        assert!(matches!(results[0], Err(Error::Rejected(401))));
        assert!(results[1].is_ok());
    });
}

/// Sends raw bytes to an upgrader and returns its response and result.
fn raw_upgrade(upgrader: Upgrader, request: &[u8]) -> (String, Result<Conn<TcpStream>, Error>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        upgrader.upgrade(stream)
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the response head (a 101 keeps the stream open).
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    // Closing our end lets a rejecting server stop waiting for it.
    drop(s);
    let result = server.join().unwrap();
    (String::from_utf8_lossy(&got).into_owned(), result)
}

fn request(extra: &str, method: &str, version: &str) -> Vec<u8> {
    format!(
        "{method} /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[test]
fn upgrader_answers_bad_requests_like_gorilla() {
    bounded(|| {
        let (resp, result) = raw_upgrade(Upgrader::default(), &request("", "POST", "13"));
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
        assert_eq!(result.unwrap_err().status(), Some(405));
        let (resp, result) = raw_upgrade(Upgrader::default(), &request("", "GET", "8"));
        assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
        assert!(resp.contains("Sec-WebSocket-Version: 13"), "{resp}");
        assert_eq!(result.unwrap_err().status(), Some(426));
        let (resp, _) = raw_upgrade(
            Upgrader::default(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n",
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        let (resp, _) = raw_upgrade(
            Upgrader::default(),
            &request("Origin: http://other.example\r\n", "GET", "13"),
        );
        assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
        let (resp, result) = raw_upgrade(
            Upgrader::default(),
            &request("Origin: http://example.com\r\n", "GET", "13"),
        );
        assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
        assert!(
            resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{resp}"
        );
        assert!(result.is_ok());
    });
}

#[test]
fn handshake_timeout_drops_a_silent_client() {
    bounded(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upgrader = Upgrader {
            handshake_timeout: Duration::from_millis(200),
            ..Upgrader::default()
        };
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let start = Instant::now();
            (upgrader.upgrade(stream).map(drop), start.elapsed())
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
        let (result, took) = server.join().unwrap();
        assert!(matches!(result, Err(Error::Timeout)));
        assert!(took < Duration::from_secs(5));
    });
}

#[test]
fn bytes_after_the_request_belong_to_the_connection() {
    bounded(|| {
        let mut bytes = request("", "GET", "13");
        bytes.extend(encode_frame(true, 0, 1, b"early"));
        let (resp, result) = raw_upgrade(Upgrader::default(), &bytes);
        assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
        let mut conn = result.unwrap();
        conn.set_read_deadline(soon()).unwrap();
        assert_eq!(
            conn.read_message().unwrap(),
            (MessageType::Text, b"early".to_vec())
        );
    });
}

#[test]
fn protocol_error_fails_with_its_close_code_and_ends_the_stream() {
    bounded(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut conn = Upgrader::default().upgrade(stream).unwrap();
            conn.set_read_deadline(soon()).unwrap();
            conn.read_message().unwrap_err()
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(&request("", "GET", "13")).unwrap();
        // An unmasked text frame from a client: 1002.
        s.write_all(b"\x81\x02hi").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&got[head_end..], b"\x88\x02\x03\xea");
        drop(s);
        let err = server.join().unwrap();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    });
}

#[test]
fn invalid_utf8_fails_with_1007() {
    bounded(|| {
        let (mut server, mut client) = pair();
        let reader = thread::spawn(move || server.read_message().unwrap_err());
        let mut w = client.next_writer(MessageType::Text).unwrap();
        w.write_all(b"ok \xff").unwrap();
        w.close().unwrap();
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::INVALID_PAYLOAD]
        ));
        drop(client);
        let err = reader.join().unwrap();
        assert!(
            matches!(err, Error::Protocol(surge::proto::Error::InvalidUtf8)),
            "{err}"
        );
    });
}

#[test]
fn any_read_write_stream_unix_and_generic() {
    bounded(|| {
        // A Unix socket pair: a stream with timeouts and try_clone.
        let (a, b) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            let mut conn = Upgrader::default().upgrade(a).unwrap();
            let (kind, data) = conn.read_message().unwrap();
            conn.write_message(kind, &data).unwrap();
            conn.read_message().unwrap_err()
        });
        let (mut client, _) = Dialer::default().dial_stream(b, "ws://localhost/").unwrap();
        client.set_read_deadline(soon()).unwrap();
        client.write_text("over unix").unwrap();
        assert_eq!(client.read_message().unwrap().1, b"over unix");
        client.write_close(CloseCode::NORMAL, "").unwrap();
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::NORMAL]
        ));
        assert!(is_close_error(
            &server.join().unwrap(),
            &[CloseCode::NORMAL]
        ));

        // The same through `Generic`: a plain Read + Write, no socket features.
        let (a, b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(LIMIT)).unwrap();
        b.set_read_timeout(Some(LIMIT)).unwrap();
        let server = thread::spawn(move || {
            let mut conn = Upgrader::default().upgrade(Generic(a)).unwrap();
            assert!(matches!(
                conn.set_read_deadline(soon()),
                Err(Error::Unsupported(_))
            ));
            let (kind, data) = conn.read_message().unwrap();
            conn.write_message(kind, &data).unwrap();
            conn.read_message().unwrap_err()
        });
        let (mut client, _) = Dialer::default()
            .dial_stream(Generic(b), "ws://localhost/")
            .unwrap();
        client
            .write_message(MessageType::Binary, &payload(300_000))
            .unwrap();
        assert!(client.read_message().unwrap().1 == payload(300_000));
        client.write_close(CloseCode::NORMAL, "").unwrap();
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::NORMAL]
        ));
        assert!(is_close_error(
            &server.join().unwrap(),
            &[CloseCode::NORMAL]
        ));
    });
}

struct EngineEcho;

impl Handler for EngineEcho {
    type Data = ();
    fn on_upgrade(&mut self, _req: &Request) -> Upgrade<()> {
        Upgrade::Accept(Accept::new(()))
    }
    fn on_message(&mut self, conn: &mut surge::Conn<'_, ()>, msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

#[test]
fn dialer_against_the_engine_server() {
    bounded(|| {
        let mut cfg = ServerConfig::bind("127.0.0.1:0".parse().unwrap());
        cfg.workers = 1;
        let handle = Server::new(cfg).start(|_| EngineEcho).unwrap();
        let (mut client, _) = Dialer::default()
            .dial(&format!("ws://{}/", handle.local_addr()))
            .unwrap();
        client.set_read_deadline(soon()).unwrap();
        for len in [0, 10, 70_000, 1 << 20] {
            client
                .write_message(MessageType::Binary, &payload(len))
                .unwrap();
            assert!(client.read_message().unwrap().1 == payload(len));
        }
        client.write_close(CloseCode::NORMAL, "bye").unwrap();
        assert!(is_close_error(
            &client.read_message().unwrap_err(),
            &[CloseCode::NORMAL]
        ));
        handle.shutdown();
        handle.join().unwrap();
    });
}

#[test]
fn eof_without_close_is_1006() {
    bounded(|| {
        let (mut server, client) = pair();
        drop(client);
        let err = server.read_message().unwrap_err();
        assert!(
            is_unexpected_close_error(&err, &[CloseCode::NORMAL]),
            "{err}"
        );
        assert!(is_close_error(&err, &[CloseCode::ABNORMAL]));
    });
}

#[test]
fn control_frame_rules() {
    bounded(|| {
        let (server, _client) = pair();
        assert!(matches!(
            server.write_control(MessageType::Ping, &[0; 126], None),
            Err(Error::Send(_))
        ));
        assert!(matches!(
            server.write_control(
                MessageType::Close,
                &format_close_message(CloseCode(1005), "x"),
                None
            ),
            Ok(())
        ));
        assert!(matches!(
            server.write_control(MessageType::Ping, b"", None),
            Err(Error::CloseSent)
        ));
    });
}

#[cfg(feature = "json")]
#[test]
fn json_round_trip() {
    bounded(|| {
        let (mut server, mut client) = pair();
        client
            .write_json(&serde_json::json!({"op": "join", "room": 7}))
            .unwrap();
        let v: serde_json::Value = server.read_json().unwrap();
        assert_eq!(v["room"], 7);
        server.write_json(&vec![1, 2, 3]).unwrap();
        let back: Vec<u32> = client.read_json().unwrap();
        assert_eq!(back, [1, 2, 3]);
    });
}

// ---- permessage-deflate ---------------------------------------------------------------------

const TAKEOVER: DeflateMode = DeflateMode::ContextTakeover {
    server_max_window_bits: 15,
    client_max_window_bits: 15,
};

fn deflate_pair(mode: DeflateMode) -> (Conn<TcpStream>, Conn<TcpStream>) {
    let mut upgrader = Upgrader::default();
    upgrader.deflate.mode = mode;
    let mut dialer = Dialer::default();
    dialer.deflate.mode = mode;
    pair_with(upgrader, dialer)
}

/// Chat-like JSON: similar messages, so that context takeover pays.
fn chat(i: usize) -> String {
    format!(
        r#"{{"type":"chat","room":"lobby","user":"player{}","text":"hello everyone, message {i} {}","ts":{}}}"#,
        i % 7,
        "é".repeat(i % 5),
        1_700_000_000 + i
    )
}

#[test]
fn compressed_echo_both_ways() {
    for mode in [DeflateMode::NoContextTakeover, TAKEOVER] {
        bounded(move || {
            let (mut server, mut client) = deflate_pair(mode);
            assert!(server.compression() && client.compression(), "{mode:?}");
            let echo = thread::spawn(move || {
                while let Ok((kind, data)) = server.read_message() {
                    server.write_message(kind, &data).unwrap();
                }
            });
            for i in 0..200 {
                let text = chat(i);
                client.write_text(&text).unwrap();
                assert_eq!(
                    client.read_message().unwrap(),
                    (MessageType::Text, text.clone().into_bytes())
                );
                let bin = text.repeat(3).into_bytes();
                client.write_message(MessageType::Binary, &bin).unwrap();
                assert_eq!(client.read_message().unwrap(), (MessageType::Binary, bin));
            }
            // Short, empty, incompressible and large messages; some uncompressed on purpose.
            for data in [
                Vec::new(),
                b"hi".to_vec(),
                payload(100_000),
                "the quick brown fox\n".repeat(50_000).into_bytes(),
            ] {
                client.write_message(MessageType::Binary, &data).unwrap();
                assert_eq!(client.read_message().unwrap().1, data);
                client
                    .write_message_uncompressed(MessageType::Binary, &data)
                    .unwrap();
                assert_eq!(client.read_message().unwrap().1, data);
            }
            client.set_compression_level(9).unwrap();
            client.write_text(&chat(1)).unwrap();
            assert_eq!(client.read_message().unwrap().1, chat(1).into_bytes());
            client.enable_write_compression(false);
            client.write_text(&chat(2)).unwrap();
            assert_eq!(client.read_message().unwrap().1, chat(2).into_bytes());
            assert!(client.set_compression_level(10).is_err());
            client.write_close(CloseCode::NORMAL, "").unwrap();
            let _ = client.read_message();
            echo.join().unwrap();
        });
    }
}

/// A stream that keeps a copy of everything written to it (to look at the frames on the wire).
struct Tee {
    inner: UnixStream,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl surge::blocking::Stream for Tee {}

/// A server and a client connection over a Unix socket pair, each keeping what it wrote.
#[allow(clippy::type_complexity)]
fn tee_pair(
    mode: DeflateMode,
) -> (
    Conn<Tee>,
    Conn<Tee>,
    Arc<Mutex<Vec<u8>>>,
    Arc<Mutex<Vec<u8>>>,
) {
    let (a, b) = UnixStream::pair().unwrap();
    let (server_out, client_out) = (Arc::default(), Arc::default());
    let server_stream = Tee {
        inner: a,
        written: Arc::clone(&server_out),
    };
    let server = thread::spawn(move || {
        let mut upgrader = Upgrader::default();
        upgrader.deflate.mode = mode;
        upgrader.upgrade(server_stream).unwrap()
    });
    let mut dialer = Dialer::default();
    dialer.deflate.mode = mode;
    let client_stream = Tee {
        inner: b,
        written: Arc::clone(&client_out),
    };
    let (client, _) = dialer
        .dial_stream(client_stream, "ws://localhost/chat")
        .unwrap();
    let server = server.join().unwrap();
    assert!(server.compression() && client.compression());
    (server, client, server_out, client_out)
}

/// The frames written after the HTTP head: (RSV1 set, opcode) of each.
fn frames_written(bytes: &Mutex<Vec<u8>>) -> Vec<(bool, u8)> {
    let bytes = bytes.lock().unwrap();
    let mut at = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut frames = Vec::new();
    while at < bytes.len() {
        let (b0, b1) = (bytes[at], bytes[at + 1]);
        let (len, mut pos) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                at + 4,
            ),
            127 => (
                u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
                at + 10,
            ),
            n => (usize::from(n), at + 2),
        };
        if b1 & 0x80 != 0 {
            pos += 4;
        }
        frames.push((b0 & 0x40 != 0, b0 & 0x0f));
        at = pos + len;
    }
    frames
}

/// Prepared messages go compressed where permessage-deflate was negotiated (as gorilla's): a
/// server sends the variant compressed once for its window, shared by every connection; a client
/// compresses for itself. Opted-out, short and (write compression off) all messages go as they are.
#[test]
fn prepared_messages_compressed_when_negotiated() {
    for mode in [DeflateMode::NoContextTakeover, TAKEOVER] {
        bounded(move || {
            let text = chat(1).repeat(4);
            let pm = PreparedMessage::new(MessageType::Text, text.as_bytes()).unwrap();
            let short = PreparedMessage::new(MessageType::Text, b"hi").unwrap();
            let opted_out =
                PreparedMessage::uncompressed(surge::MessageKind::Text, text.as_bytes());
            for _ in 0..3 {
                let (mut server, mut client, server_out, client_out) = tee_pair(mode);
                // Between messages compressed with the connection's own context (with context
                // takeover, the one after a prepared message must not refer to what came before).
                let sent = [
                    None,
                    Some(&pm),
                    None,
                    Some(&short),
                    Some(&opted_out),
                    Some(&pm),
                ];
                let mut want = Vec::new();
                for (i, m) in sent.into_iter().enumerate() {
                    match m {
                        Some(m) => {
                            server.write_prepared_message(m).unwrap();
                            want.push(m.payload().to_vec());
                        }
                        None => {
                            server.write_text(&chat(i + 10)).unwrap();
                            want.push(chat(i + 10).into_bytes());
                        }
                    }
                }
                server.enable_write_compression(false);
                server.write_prepared_message(&pm).unwrap();
                want.push(text.clone().into_bytes());
                for w in &want {
                    assert_eq!(&client.read_message().unwrap().1, w, "{mode:?}");
                }
                let frames = frames_written(&server_out);
                assert_eq!(frames.len(), 7);
                let rsv: Vec<bool> = [1, 3, 4, 5, 6].iter().map(|&i| frames[i].0).collect();
                assert_eq!(rsv, [true, false, false, true, false], "{mode:?}");
                assert!(frames.iter().all(|&(_, op)| op == 1));
                // A client frames and compresses for itself.
                client.write_prepared_message(&pm).unwrap();
                client.write_prepared_message(&opted_out).unwrap();
                client.write_prepared_message(&short).unwrap();
                for m in [&pm, &opted_out, &short] {
                    assert_eq!(server.read_message().unwrap().1, m.payload());
                }
                let frames = frames_written(&client_out);
                assert_eq!(frames, [(true, 1), (false, 1), (false, 1)], "{mode:?}");
            }
            // Every server sends with window 15: one variant, shared by the three connections.
            assert_eq!(pm.variant_count(), 1);
            assert_eq!(opted_out.variant_count() + short.variant_count(), 0);
        });
    }
}

#[test]
fn compression_is_off_unless_both_sides_want_it() {
    bounded(|| {
        let mut dialer = Dialer::default();
        dialer.deflate.mode = TAKEOVER;
        let (server, client) = pair_with(Upgrader::default(), dialer);
        assert!(!server.compression() && !client.compression());
        let mut upgrader = Upgrader::default();
        upgrader.deflate.mode = TAKEOVER;
        let (server, client) = pair_with(upgrader, Dialer::default());
        assert!(!server.compression() && !client.compression());
    });
}

#[test]
fn compressed_next_reader_next_writer_with_io_copy() {
    bounded(|| {
        let (mut server, client) = deflate_pair(TAKEOVER);
        let echo = thread::spawn(move || loop {
            let writer = server.writer();
            let Ok((kind, mut reader)) = server.next_reader() else {
                return;
            };
            let mut out = writer.next_writer(kind).unwrap();
            io::copy(&mut reader, &mut out).unwrap();
            out.close().unwrap();
        });
        // Small (compressed whole at close) and past COMPRESS_WHOLE_MAX (sent uncompressed in
        // frames); the reader runs on its own thread so that neither side blocks in a write.
        let big = "a line of text that repeats\n"
            .repeat(2 * surge::blocking::COMPRESS_WHOLE_MAX / 28)
            .into_bytes();
        let (mut r, w) = client.split();
        let expect = vec![chat(3).into_bytes(), big.clone(), chat(4).into_bytes()];
        let reader = thread::spawn(move || {
            (0..3)
                .map(|_| {
                    let (_, mut m) = r.next_reader().unwrap();
                    let mut got = Vec::new();
                    m.read_to_end(&mut got).unwrap();
                    got
                })
                .collect::<Vec<_>>()
        });
        for data in &expect {
            let mut m = w.next_writer(MessageType::Text).unwrap();
            for piece in data.chunks(7000) {
                m.write_all(piece).unwrap();
            }
            m.close().unwrap();
        }
        assert_eq!(reader.join().unwrap(), expect);
        w.close().unwrap();
        echo.join().unwrap();
    });
}

/// A stream that records what it reads, to look at the frames on the wire.
struct Tap {
    inner: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl surge::blocking::Stream for Tap {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
}

/// (RSV1, payload length) of each server frame in `wire` after the response head.
fn server_frames(wire: &[u8]) -> Vec<(bool, usize)> {
    let mut at = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut frames = Vec::new();
    while at + 2 <= wire.len() {
        let (b0, b1) = (wire[at], wire[at + 1]);
        let (len, head) = match b1 & 0x7f {
            126 => (u16::from_be_bytes([wire[at + 2], wire[at + 3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(wire[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((b0 & 0x40 != 0, len));
        at += head + len;
    }
    frames
}

#[test]
fn context_takeover_shrinks_repeated_messages_on_the_wire() {
    for (mode, takeover) in [(TAKEOVER, true), (DeflateMode::NoContextTakeover, false)] {
        bounded(move || {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let mut upgrader = Upgrader::default();
                upgrader.deflate.mode = mode;
                let conn = upgrader.upgrade(stream).unwrap();
                // Random-looking text that does not compress much alone, sent three times.
                let mut x = 0x2545_f491u32;
                let text: String = (0..3000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        (b'a' + (x % 26) as u8) as char
                    })
                    .collect();
                for _ in 0..3 {
                    conn.write_text(&text).unwrap();
                }
                conn.write_message_uncompressed(MessageType::Text, text.as_bytes())
                    .unwrap();
                (conn, text)
            });
            let seen = Arc::new(Mutex::new(Vec::new()));
            let tap = Tap {
                inner: TcpStream::connect(addr).unwrap(),
                seen: Arc::clone(&seen),
            };
            let mut dialer = Dialer::default();
            dialer.deflate.mode = mode;
            let (mut client, _) = dialer.dial_stream(tap, &format!("ws://{addr}/")).unwrap();
            client.set_read_deadline(soon()).unwrap();
            let (_server, text) = server.join().unwrap();
            for _ in 0..4 {
                assert_eq!(client.read_message().unwrap().1, text.as_bytes());
            }
            let frames = server_frames(&seen.lock().unwrap());
            assert_eq!(frames.len(), 4, "{frames:?}");
            assert!(frames[..3].iter().all(|f| f.0), "{frames:?}");
            assert_eq!(frames[3], (false, 3000));
            if takeover {
                // The repeats refer to the first message.
                assert!(frames[1].1 < 100 && frames[2].1 < 100, "{frames:?}");
            } else {
                assert!(
                    frames[1].1 == frames[0].1 && frames[0].1 > 1000,
                    "{frames:?}"
                );
            }
        });
    }
}

#[test]
fn decompression_bomb_closes_with_1009() {
    for mode in [DeflateMode::NoContextTakeover, TAKEOVER] {
        bounded(move || {
            let (mut server, mut client) = deflate_pair(mode);
            server.set_read_limit(64 * 1024);
            let reader = thread::spawn(move || {
                let first = server.read_message().map(|(_, d)| d.len());
                (first.unwrap(), server.read_message().unwrap_err())
            });
            // Exactly the limit inflated passes; 16 MiB of zeros (about 16 KiB compressed, under
            // the limit on the wire) does not.
            client
                .write_message(MessageType::Binary, &vec![0; 64 * 1024])
                .unwrap();
            client
                .write_message(MessageType::Binary, &vec![0; 16 << 20])
                .unwrap();
            assert!(is_close_error(
                &client.read_message().unwrap_err(),
                &[CloseCode::TOO_BIG]
            ));
            drop(client);
            let (first, err) = reader.join().unwrap();
            assert_eq!(first, 64 * 1024);
            assert!(matches!(err, Error::ReadLimit), "{err}");
        });
    }
}

#[test]
fn invalid_compressed_data_closes_with_1007() {
    bounded(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut upgrader = Upgrader::default();
            upgrader.deflate.mode = DeflateMode::NoContextTakeover;
            let mut conn = upgrader.upgrade(stream).unwrap();
            conn.set_read_deadline(soon()).unwrap();
            conn.read_message().unwrap_err()
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(&request(
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            "GET",
            "13",
        ))
        .unwrap();
        // RSV1 + text, payload not deflate (a reserved block type).
        let mut frame = encode_frame(true, 0, 1, b"\xff\xff\xff");
        frame[0] |= 0x40;
        s.write_all(&frame).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..head_end]);
        assert!(head.contains("permessage-deflate"), "{head}");
        assert_eq!(&got[head_end..], b"\x88\x02\x03\xef");
        drop(s);
        let err = server.join().unwrap();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    });
}

/// A compressed message in three frames, each inflating to well under the read limit: the limit
/// bounds the whole message (1009 and `ReadLimit` past it), not each piece.
#[test]
fn streamed_compressed_message_is_bounded_as_a_whole() {
    use surge::proto::{
        compress_variant, DeflateConfig, DeflateParams, DeflatePool, DeflateState, Role, Variant,
    };
    const READ_LIMIT: usize = 64 * 1024;
    // Frames of `data` compressed (no context takeover), RSV1 on the first of three.
    let frames = |data: &[u8]| {
        let mut pool = DeflatePool::new(6);
        let mut w = Vec::new();
        compress_variant(data, Variant { window_bits: 15 }, &mut pool, &mut w);
        let cuts = [0, w.len() / 3, 2 * w.len() / 3, w.len()];
        // Each piece inflates to less than the limit.
        let params = DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..DeflateParams::default()
        };
        let mut model = DeflateState::new(params, Role::Server);
        let mut piece = Vec::new();
        let mut wire = Vec::new();
        for i in 0..3 {
            piece.clear();
            let part = &w[cuts[i]..cuts[i + 1]];
            model
                .decompress(
                    part,
                    i == 0,
                    i == 2,
                    &DeflateConfig::default(),
                    &mut pool,
                    &mut piece,
                )
                .unwrap();
            assert!(piece.len() < READ_LIMIT, "piece {i}: {}", piece.len());
            let (rsv, opcode) = if i == 0 { (4, 2) } else { (0, 0) };
            wire.extend(encode_frame(i == 2, rsv, opcode, part));
        }
        wire
    };
    let fits: Vec<u8> = (0..READ_LIMIT).map(|i| (i / 100) as u8).collect();
    let over: Vec<u8> = (0..2 * READ_LIMIT).map(|i| (i / 100) as u8).collect();
    let (fits_wire, over_wire) = (frames(&fits), frames(&over));
    bounded(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut upgrader = Upgrader::default();
            upgrader.deflate.mode = DeflateMode::NoContextTakeover;
            let mut conn = upgrader.upgrade(stream).unwrap();
            conn.set_read_deadline(soon()).unwrap();
            conn.set_read_limit(READ_LIMIT as u64);
            let first = conn.read_message().map(|(_, d)| d);
            (first, conn.read_message().unwrap_err())
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(&request(
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            "GET",
            "13",
        ))
        .unwrap();
        s.write_all(&fits_wire).unwrap();
        s.write_all(&over_wire).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&got[head_end..], b"\x88\x02\x03\xf1", "a close with 1009");
        drop(s);
        let (first, err) = server.join().unwrap();
        assert_eq!(first.unwrap(), fits);
        assert!(matches!(err, Error::ReadLimit), "{err}");
    });
}

#[test]
fn dialer_fails_on_a_bad_deflate_response() {
    bounded(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&got).into_owned();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            let accept = surge::handshake::accept_key(key.as_bytes());
            let accept = String::from_utf8_lossy(&accept).into_owned();
            // Not asked for: client_max_window_bits without the client offering it.
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\
                 Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=10\r\n\r\n"
            );
            s.write_all(resp.as_bytes()).unwrap();
            text
        });
        let mut dialer = Dialer::default();
        dialer.deflate.mode = DeflateMode::NoContextTakeover;
        let err = dialer.dial(&format!("ws://{addr}/")).unwrap_err();
        let request = server.join().unwrap();
        assert!(
            request.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            "{request}"
        );
        assert!(matches!(err, Error::Compression(_)), "{err}");
    });
}

#[test]
fn python_websockets_compressed_against_the_upgrader() {
    let Some(python) = support::python_with_websockets(&["/tmp/kvenv/bin/python3", "python3"])
    else {
        println!("SKIPPED: python3 with the `websockets` package not found");
        return;
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/deflate_checks.py"
    );
    for mode in [TAKEOVER, DeflateMode::NoContextTakeover] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut upgrader = Upgrader::default();
            upgrader.deflate.mode = mode;
            let mut conn = upgrader.upgrade(stream).unwrap();
            assert!(conn.compression());
            conn.set_read_deadline(soon()).unwrap();
            while let Ok((kind, data)) = conn.read_message() {
                conn.write_message(kind, &data).unwrap();
            }
        });
        let out = std::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deflate_checks.py failed ({mode:?}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server.join().unwrap();
    }
}
