//! The worker's behaviour through the harness, one scenario per test.

use std::time::Duration;

use super::*;

#[test]
fn upgrade_then_echo() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    assert_eq!(h.log(), ["open 7"]);
    h.send(p, &frame(0x1, b"hello", true));
    assert_eq!(h.frames(p), [(0x1, b"hello".to_vec())]);
    assert_eq!(h.log(), ["message 5"]);
}

#[test]
fn a_request_in_one_byte_pieces_upgrades() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.accept();
    for b in REQUEST {
        assert!(h.output(p).is_empty());
        h.send(p, &[*b]);
    }
    assert!(h.output(p).starts_with(b"HTTP/1.1 101 "));
    // Frames right behind the request in the same read are handled too.
    let q = h.accept();
    let mut bytes = REQUEST.to_vec();
    bytes.extend(frame(0x2, b"xy", true));
    h.send(q, &bytes);
    let out = h.output(q);
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(frames(&out[at..]), [(0x2, b"xy".to_vec())]);
}

#[test]
fn a_rejected_upgrade_answers_then_closes_after_draining() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.accept();
    let deny = String::from_utf8_lossy(REQUEST).replacen("GET / ", "GET /deny ", 1);
    h.send(p, deny.as_bytes());
    assert!(h.output(p).starts_with(b"HTTP/1.1 403 "));
    assert!(h.pipe(p, |pipe| pipe.fin), "FIN after the answer");
    assert!(!h.closed(p));
    h.eof(p);
    assert!(h.closed(p), "closed at the peer's EOF");
    assert!(h.log().is_empty(), "no on_open, no on_close");
}

#[test]
fn a_bad_request_gets_400_and_the_close_timeout_ends_it() {
    let cfg = ServerConfig::default();
    let close_timeout = cfg.proto.close_timeout;
    let mut h = Harness::new(cfg);
    let p = h.accept();
    h.send(p, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(h.output(p).starts_with(b"HTTP/1.1 400 "));
    h.advance(close_timeout - Duration::from_millis(50));
    assert!(!h.closed(p));
    h.advance(Duration::from_millis(100));
    assert!(
        h.closed(p),
        "the peer never sent EOF: closed at the close timeout"
    );
}

#[test]
fn the_handshake_timeout_closes_a_silent_connection() {
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_secs(3),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let p = h.accept();
    h.send(p, &REQUEST[..20]);
    h.advance(Duration::from_millis(2900));
    assert!(!h.closed(p));
    h.advance(Duration::from_millis(200));
    assert!(h.closed(p));
    assert!(h.output(p).is_empty());
    assert_eq!(h.worker.ctx.socket_count(), 0);
}

#[test]
fn eof_during_the_handshake_frees_the_connection_without_callbacks() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.accept();
    h.send(p, &REQUEST[..10]);
    h.eof(p);
    assert!(h.closed(p));
    assert!(h.log().is_empty());
    assert_eq!(h.worker.ctx.socket_count(), 0);
}

#[test]
fn a_ping_gets_a_pong_and_on_ping() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    h.log();
    h.send(p, &frame(0x9, b"abc", true));
    assert_eq!(h.frames(p), [(0xA, b"abc".to_vec())]);
    assert_eq!(h.log(), ["ping 3"]);
}

#[test]
fn the_peers_close_is_answered_then_fin_then_closed_at_eof() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    h.log();
    h.send(p, &close_frame(1000, "bye"));
    let f = h.frames(p);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, 0x8);
    assert_eq!(&f[0].1[..2], &1000u16.to_be_bytes());
    assert_eq!(h.log(), ["close 7 1000 true"]);
    assert!(h.pipe(p, |pipe| pipe.fin));
    assert!(!h.closed(p), "draining: waits for the peer's EOF");
    h.eof(p);
    assert!(h.closed(p));
}

#[test]
fn connection_count_is_open_websockets_and_socket_count_everything_held() {
    let mut h = Harness::new(ServerConfig::default());
    let http = h.accept();
    h.send(http, &REQUEST[..20]); // a request under way (a page, a handshake)
    let p = h.open();
    h.log();
    h.turn();
    assert_eq!(h.worker.ctx.connection_count(), 1);
    assert_eq!(h.worker.ctx.socket_count(), 2);
    h.send(p, &close_frame(1000, "bye"));
    h.turn();
    assert_eq!(
        h.worker.ctx.connection_count(),
        0,
        "closed for the application"
    );
    assert_eq!(h.worker.ctx.socket_count(), 2, "still draining");
    h.eof(p);
    h.eof(http);
    assert_eq!(h.worker.ctx.socket_count(), 0);
    assert_eq!(h.worker.ctx.connection_count(), 0);
}

#[test]
fn with_data_lends_the_data_beside_a_working_connection() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    let q = h.open();
    h.log();
    let (id, other) = (h.id(p), h.id(q));
    let before = *h.worker.ctx.conn(id).unwrap().data();
    let got = h.worker.ctx.conn(id).unwrap().with_data(|data, conn| {
        *data += 1;
        assert!(conn.worker().conn(id).is_none(), "not listed while lent");
        assert_eq!(conn.worker().conn_ids(), [other]);
        assert!(conn.subscribe("room"), "its own subscriptions work");
        let _ = conn.send_text("mine");
        let _ = conn.worker().conn(other).unwrap().send_text("yours");
        *data
    });
    assert_eq!(got, before + 1);
    assert_eq!(
        *h.worker.ctx.conn(id).unwrap().data(),
        before + 1,
        "given back"
    );
    assert_eq!(h.worker.ctx.conn_ids().len(), 2);
    assert_eq!(h.worker.ctx.subscriber_count("room"), 1);
    h.turn();
    assert_eq!(h.frames(p), [(0x1, b"mine".to_vec())]);
    assert_eq!(h.frames(q), [(0x1, b"yours".to_vec())]);
}

#[test]
fn our_close_times_out_with_1006_when_the_peer_never_answers() {
    let cfg = ServerConfig::default();
    let close_timeout = cfg.proto.close_timeout;
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.log();
    let id = h.id(p);
    let status = h
        .worker
        .ctx
        .conn(id)
        .unwrap()
        .close(CloseCode::NORMAL, "done");
    assert_eq!(status, SendStatus::Sent);
    h.turn();
    assert_eq!(h.frames(p)[0].0, 0x8);
    assert!(h.log().is_empty(), "on_close waits for the peer's answer");
    h.advance(close_timeout + Duration::from_millis(10));
    assert_eq!(h.log(), ["close 7 1006 false"]);
    assert!(h.closed(p));
}

#[test]
fn a_close_answered_in_time_reports_the_peers_code() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    h.log();
    let id = h.id(p);
    let _ = h.worker.ctx.conn(id).unwrap().close(CloseCode::NORMAL, "");
    h.turn();
    h.output(p);
    h.send(p, &close_frame(1000, ""));
    assert_eq!(h.log(), ["close 7 1000 true"]);
    assert!(h.frames(p).is_empty(), "our close was already sent");
}

#[test]
fn backpressure_drop_refuses_then_drain_reports() {
    let cfg = ServerConfig {
        max_backpressure: 4096,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.log();
    h.pipe(p, |pipe| pipe.room = Some(0));
    let id = h.id(p);
    let mut conn = h.worker.ctx.conn(id).unwrap();
    assert_eq!(conn.send_binary(&[1; 1000]), SendStatus::Sent);
    // A message that would take a non-empty queue past the limit is refused.
    assert_eq!(conn.send_binary(&[2; 3500]), SendStatus::Dropped);
    assert_eq!(conn.send_binary(&[3; 2000]), SendStatus::Sent);
    assert_eq!(conn.dropped_count(), 1);
    h.turn();
    assert!(h.output(p).is_empty(), "the socket takes nothing");
    // The socket drains: a writable edge, and everything goes out, then on_drain.
    h.pipe(p, |pipe| pipe.room = None);
    h.ready(p, false, true, false);
    h.turn();
    assert_eq!(h.frames(p).len(), 2);
    assert_eq!(h.log(), ["drain"], "a refusal marks it over the limit");
    // Over the limit: a message bigger than the limit on an empty queue is accepted and reported.
    h.pipe(p, |pipe| pipe.room = Some(0));
    let mut conn = h.worker.ctx.conn(id).unwrap();
    assert_eq!(conn.send_binary(&[5; 5000]), SendStatus::Backpressure);
    assert_eq!(conn.send_binary(&[6; 10]), SendStatus::Dropped);
    h.turn();
    h.pipe(p, |pipe| pipe.room = None);
    h.ready(p, false, true, false);
    h.turn();
    assert_eq!(h.frames(p).len(), 1);
    assert_eq!(h.log(), ["drain"]);
    assert_eq!(h.worker.ctx.dropped_count(), 2);
}

#[test]
fn backpressure_close_policy_starts_the_close() {
    let cfg = ServerConfig {
        max_backpressure: 4096,
        backpressure_policy: BackpressurePolicy::Close(CloseCode::POLICY),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.pipe(p, |pipe| pipe.room = Some(0));
    let id = h.id(p);
    let mut conn = h.worker.ctx.conn(id).unwrap();
    assert_eq!(conn.send_binary(&[1; 5000]), SendStatus::Backpressure);
    assert!(!conn.is_open(), "the close has started");
    assert_eq!(conn.send_binary(b"late"), SendStatus::Closed);
}

#[test]
fn a_peer_that_reads_nothing_is_closed_by_the_write_stall_timeout() {
    let cfg = ServerConfig {
        write_stall_timeout: Some(Duration::from_secs(2)),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.log();
    h.pipe(p, |pipe| pipe.room = Some(0));
    let id = h.id(p);
    let _ = h.worker.ctx.conn(id).unwrap().send_text("stuck");
    h.turn();
    h.advance(Duration::from_millis(1500));
    assert!(!h.closed(p));
    h.advance(Duration::from_millis(600));
    assert!(h.closed(p));
    assert_eq!(h.log(), ["close 7 1008 false"]);
}

#[test]
fn progress_restarts_the_stall_clock() {
    let cfg = ServerConfig {
        write_stall_timeout: Some(Duration::from_secs(2)),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.pipe(p, |pipe| pipe.room = Some(0));
    let id = h.id(p);
    let _ = h.worker.ctx.conn(id).unwrap().send_binary(&[1; 1000]);
    h.turn();
    for _ in 0..4 {
        // A trickle: 100 bytes a second; never 2 s without progress.
        h.advance(Duration::from_secs(1));
        h.pipe(p, |pipe| pipe.room = Some(100));
        h.ready(p, false, true, false);
        h.turn();
    }
    assert!(!h.closed(p));
}

#[test]
fn a_timeout_fires_once_at_its_time() {
    let mut h = Harness::new(ServerConfig::default());
    h.worker.ctx.set_timeout(Duration::from_millis(500), 3u64);
    assert_eq!(h.worker.ctx.timer_count(), 1);
    h.advance(Duration::from_millis(400));
    assert!(h.log().is_empty());
    h.advance(Duration::from_millis(200));
    assert_eq!(h.log(), ["timer 3"]);
    assert_eq!(h.worker.ctx.timer_count(), 0);
    h.advance(Duration::from_secs(5));
    assert!(h.log().is_empty());
}

#[test]
fn an_interval_keeps_its_period_and_value_and_cancel_stops_it() {
    let mut h = Harness::new(ServerConfig::default());
    let id = h.worker.ctx.set_interval(Duration::from_millis(100), 0u64);
    let mut log = Vec::new();
    for _ in 0..10 {
        h.advance(Duration::from_millis(100));
        log.extend(h.log());
    }
    let want: Vec<String> = (0..10).map(|i| format!("timer {i}")).collect();
    assert_eq!(
        log, want,
        "one per period, no drift, the value kept between ticks"
    );
    assert!(h.worker.ctx.cancel_timer(id));
    h.advance(Duration::from_secs(1));
    assert!(h.log().is_empty());
    assert!(!h.worker.ctx.cancel_timer(id));
}

#[test]
fn timers_with_equal_values_are_distinct_and_cancel_only_their_own() {
    let mut h = Harness::new(ServerConfig::default());
    let a = h.worker.ctx.set_timeout(Duration::from_millis(100), 5u64);
    let b = h.worker.ctx.set_timeout(Duration::from_millis(300), 5u64);
    assert_ne!(a, b);
    assert!(h.worker.ctx.cancel_timer(a));
    h.advance(Duration::from_millis(200));
    assert!(h.log().is_empty(), "the cancelled one does not fire");
    h.advance(Duration::from_millis(200));
    assert_eq!(h.log(), ["timer 5"]);
    h.worker.ctx.set_timeout(Duration::from_millis(10), "text");
    h.advance(Duration::from_millis(20));
    assert_eq!(h.log(), ["timer of another type"]);
}

#[test]
fn an_interval_cancelled_from_its_own_callback_stops_and_drops_its_value() {
    let mut h = Harness::new(ServerConfig::default());
    h.worker.handler.cancel_own_timer = true;
    let value = Rc::new(());
    h.worker
        .ctx
        .set_interval(Duration::from_millis(10), Rc::clone(&value));
    h.advance(Duration::from_millis(20));
    assert_eq!(h.log(), ["timer of another type"]);
    h.advance(Duration::from_millis(100));
    assert!(h.log().is_empty());
    assert_eq!(Rc::strong_count(&value), 1, "the value went with the timer");
    assert_eq!(h.worker.ctx.timer_count(), 0);
}

#[test]
fn an_interval_armed_from_its_own_callback_runs() {
    let mut h = Harness::new(ServerConfig::default());
    h.worker.handler.rearm = Some(Duration::from_millis(50));
    h.worker.ctx.set_timeout(Duration::from_millis(10), 7u64);
    h.advance(Duration::from_millis(20));
    assert_eq!(h.log(), ["timer 7"]);
    h.advance(Duration::from_millis(50));
    h.advance(Duration::from_millis(50));
    assert_eq!(h.log(), ["timer 7", "timer 8"]);
}

#[test]
fn the_mailbox_delivers_handle_sends_in_order() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    let id = h.id(p);
    let handle = h.worker.ctx.conn(id).unwrap().handle();
    // From "another thread": posted to the mailbox; delivered when the worker is woken.
    handle.send_text("one").unwrap();
    handle.send_text("two").unwrap();
    h.turn();
    assert!(h.output(p).is_empty(), "not before the wake-up");
    h.net.borrow_mut().events.push_back(IoEvent::Wake);
    h.turn();
    assert_eq!(
        h.frames(p),
        [(0x1, b"one".to_vec()), (0x1, b"two".to_vec())]
    );
    // After the connection is gone, a handle's send is discarded.
    h.send(p, &close_frame(1000, ""));
    h.eof(p);
    let _ = handle.send_text("late");
    h.net.borrow_mut().events.push_back(IoEvent::Wake);
    h.turn();
    assert!(h.closed(p));
}

#[test]
fn a_send_completion_after_its_connection_closed_frees_the_queue() {
    let mut h = Harness::new(ServerConfig::default());
    h.net.borrow_mut().completion = true;
    let p = h.open_completion();
    let id = h.id(p);
    let _ = h.worker.ctx.conn(id).unwrap().send_text("in flight");
    h.turn();
    assert_eq!(h.net.borrow().in_flight.last().unwrap().0, p.token);
    // The peer resets the connection while the write is in flight.
    h.pipe(p, |pipe| pipe.reset = true);
    h.ready(p, true, false, true);
    h.turn();
    assert!(h.closed(p));
    assert_eq!(h.log(), ["close 7 1006 false"]);
    assert!(
        h.net.borrow().orphans.contains_key(&p.token),
        "kept for the kernel"
    );
    // The completion arrives: the queue comes back and is released.
    let orphan = h.net.borrow_mut().orphans.remove(&p.token).map(|mut q| {
        q.end_write(); // as the driver does at the completion
        q
    });
    h.net.borrow_mut().events.push_back(IoEvent::Sent {
        token: p.token,
        res: -libc::ECANCELED,
        orphan,
    });
    h.turn();
    assert_eq!(h.worker.ctx.socket_count(), 0);
}

#[test]
fn a_completed_write_advances_the_queue_and_the_next_one_starts() {
    let mut h = Harness::new(ServerConfig::default());
    h.net.borrow_mut().completion = true;
    let p = h.open_completion();
    let id = h.id(p);
    let _ = h.worker.ctx.conn(id).unwrap().send_text("first");
    h.turn();
    let _ = h.worker.ctx.conn(id).unwrap().send_text("second");
    h.turn();
    assert_eq!(
        h.net.borrow().in_flight.len(),
        1,
        "one write in flight at a time"
    );
    let (_, len) = h.net.borrow().in_flight[0];
    h.net.borrow_mut().events.push_back(IoEvent::Sent {
        token: p.token,
        res: len as i32,
        orphan: None,
    });
    h.turn();
    let flights = h.net.borrow().in_flight.clone();
    assert_eq!(flights.len(), 2, "the completion starts the next write");
    assert_eq!(flights[1].1, 8, "the rest: 'second' framed");
    assert_eq!(h.worker.ctx.conn(id).unwrap().buffered_amount(), 8);
}

#[test]
fn a_reused_slot_ignores_the_old_connections_events() {
    let mut h = Harness::new(ServerConfig::default());
    let a = h.open();
    h.send(a, &close_frame(1000, ""));
    h.eof(a);
    assert!(h.closed(a));
    let b = h.open();
    assert_ne!(a.token, b.token, "a new generation");
    h.log();
    // A late event for the old token, with bytes that would be a message.
    h.pipe(b, |pipe| pipe.input.extend(frame(0x1, b"zz", true)));
    h.ready(a, true, false, false);
    h.turn();
    assert!(h.log().is_empty(), "the stale token reads nothing");
    h.ready(b, true, false, false);
    h.turn();
    assert_eq!(h.log(), ["message 2"]);
    assert_eq!(h.frames(b), [(0x1, b"zz".to_vec())]);
}

#[test]
fn a_half_close_after_a_message_flushes_the_reply_first() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    h.log();
    h.pipe(p, |pipe| pipe.room = Some(0));
    h.send(p, &frame(0x1, b"last words", true));
    h.pipe(p, |pipe| {
        pipe.room = None;
        pipe.eof = true;
    });
    h.ready(p, true, true, true);
    h.turn();
    assert_eq!(h.frames(p), [(0x1, b"last words".to_vec())]);
    assert!(h.closed(p));
    assert_eq!(h.log(), ["message 10", "close 7 1006 false"]);
}

#[test]
fn connections_past_the_limit_are_closed_at_once() {
    let cfg = ServerConfig {
        max_connections_per_worker: 2,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let a = h.accept();
    let b = h.accept();
    let c = h.accept();
    assert!(!h.closed(a) && !h.closed(b));
    assert!(h.closed(c));
    assert_eq!(h.worker.ctx.socket_count(), 2);
}

#[test]
fn a_message_over_the_limit_closes_with_1009() {
    let mut cfg = ServerConfig::default();
    cfg.proto.max_message_size = 100;
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.log();
    h.send(p, &frame(0x2, &[0; 200], true));
    let f = h.frames(p);
    assert_eq!(f[0].0, 0x8);
    assert_eq!(&f[0].1[..2], &1009u16.to_be_bytes());
    assert_eq!(h.log(), ["close 7 1009 false"]);
}

#[test]
fn keepalive_pings_an_idle_peer_and_gives_up_with_1006() {
    let mut cfg = ServerConfig::default();
    cfg.proto.idle_timeout = Some(Duration::from_secs(10));
    cfg.proto.pong_timeout = Duration::from_secs(5);
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.log();
    h.advance(Duration::from_secs(11));
    assert_eq!(
        h.frames(p).first().map(|f| f.0),
        Some(0x9),
        "a keepalive ping"
    );
    h.advance(Duration::from_secs(6));
    assert_eq!(h.log(), ["close 7 1006 false"]);
}

#[test]
fn shutdown_closes_open_connections_with_1001_and_drops_handshakes() {
    let mut h = Harness::new(ServerConfig::default());
    let open = h.open();
    let half = h.accept();
    h.log();
    h.shared
        .stop
        .store(true, std::sync::atomic::Ordering::Release);
    h.net.borrow_mut().events.push_back(IoEvent::Wake);
    assert!(h.turn());
    assert!(h.closed(half), "a handshake in progress just goes");
    let f = h.frames(open);
    assert_eq!(f[0].0, 0x8);
    assert_eq!(&f[0].1[..2], &1001u16.to_be_bytes());
    h.send(open, &close_frame(1001, ""));
    h.eof(open);
    assert!(h.closed(open));
    assert!(!h.turn(), "the worker stops once its connections are gone");
}

#[test]
fn a_pong_past_the_limit_waits_and_only_the_latest_goes() {
    let cfg = ServerConfig {
        max_backpressure: 4096,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let p = h.open();
    h.pipe(p, |pipe| pipe.room = Some(0));
    let id = h.id(p);
    let _ = h.worker.ctx.conn(id).unwrap().send_binary(&[0; 5000]);
    h.turn();
    h.send(p, &frame(0x9, b"one", true));
    h.send(p, &frame(0x9, b"two", true));
    h.pipe(p, |pipe| pipe.room = None);
    h.ready(p, false, true, false);
    h.turn();
    let pongs: Vec<_> = h.frames(p).into_iter().filter(|f| f.0 == 0xA).collect();
    assert_eq!(pongs, [(0xA, b"two".to_vec())]);
}

#[test]
fn the_poll_timeout_follows_the_next_timer() {
    let mut h = Harness::new(ServerConfig {
        buffer_trim_interval: None,
        ..ServerConfig::default()
    });
    h.worker.ctx.set_timeout(Duration::from_millis(250), ());
    h.turn();
    let t = h.net.borrow().timeouts.last().copied().flatten().unwrap();
    assert!(
        t <= Duration::from_millis(250) && t >= Duration::from_millis(240),
        "{t:?}"
    );
}

#[test]
fn handler_sends_to_other_connections_go_out_in_the_same_turn() {
    let mut h = Harness::with(
        ServerConfig::default(),
        Some(Box::new(|conn: &mut Conn<'_, u32>, msg: Message<'_>| {
            let text = msg.as_bytes().to_vec();
            let me = conn.id();
            let worker = conn.worker();
            for id in worker.conn_ids() {
                if id != me {
                    let _ = worker.conn(id).unwrap().send_binary(&text);
                }
            }
        })),
    );
    let a = h.open();
    let b = h.open();
    let c = h.open();
    h.send(a, &frame(0x2, b"hi all", true));
    assert!(h.frames(a).is_empty());
    assert_eq!(h.frames(b), [(0x2, b"hi all".to_vec())]);
    assert_eq!(h.frames(c), [(0x2, b"hi all".to_vec())]);
}

#[test]
fn the_waker_token_drains_the_mailbox_like_a_wake() {
    // epoll reports the waker as a readiness token rather than `Wake`.
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    let id = h.id(p);
    let handle = h.worker.ctx.conn(id).unwrap().handle();
    handle.send_binary(b"w").unwrap();
    h.net.borrow_mut().events.push_back(IoEvent::Ready {
        token: Token::Waker,
        readable: true,
        writable: false,
        hup: false,
    });
    h.turn();
    assert_eq!(h.frames(p), [(0x2, b"w".to_vec())]);
}

#[test]
fn a_deferred_upgrade_holds_early_frames_until_accepted() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.accept();
    let mut bytes = DEFERRED_REQUEST.to_vec();
    bytes.extend(frame(0x1, b"early", true));
    h.send(p, &bytes);
    h.send(p, &frame(0x1, b"later", true));
    assert!(h.output(p).is_empty(), "no answer before the decision");
    assert!(h.log().is_empty());
    let pending = h.pending();
    assert!(pending.is_pending());
    pending.accept(Accept::new(9)).unwrap();
    h.turn();
    assert!(h.output(p).is_empty(), "not before the wake-up");
    h.wake();
    let out = h.output(p);
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(out.starts_with(b"HTTP/1.1 101 "));
    assert_eq!(
        frames(&out[head_end..]),
        [(0x1, b"early".to_vec()), (0x1, b"later".to_vec())]
    );
    assert_eq!(h.log(), ["open 9", "message 5", "message 5"]);
}

#[test]
fn a_deferred_rejection_answers_then_drains() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.accept();
    h.send(p, DEFERRED_REQUEST);
    h.pending()
        .reject(crate::Rejection::new(401, "who are you"))
        .unwrap();
    h.wake();
    let out = String::from_utf8(h.output(p)).unwrap();
    assert!(out.starts_with("HTTP/1.1 401 "), "{out}");
    assert!(out.ends_with("who are you"));
    h.eof(p);
    assert!(h.closed(p));
    assert!(h.log().is_empty(), "never opened");
}

#[test]
fn a_deferred_upgrade_times_out_and_a_late_accept_fails() {
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let mut h = Harness::new(cfg);
    let p = h.accept();
    h.send(p, DEFERRED_REQUEST);
    let pending = h.pending();
    h.advance(Duration::from_millis(150));
    assert!(h.closed(p));
    assert!(!pending.is_pending());
    assert_eq!(
        pending.accept(Accept::new(1)),
        Err(crate::HandleError::Closed)
    );
    assert!(h.output(p).is_empty());
}

#[test]
fn a_decision_for_a_connection_gone_meanwhile_spares_the_slots_next_owner() {
    let mut h = Harness::new(ServerConfig::default());
    let a = h.accept();
    h.send(a, DEFERRED_REQUEST);
    // Decided (posted) first, then the client leaves before the worker runs the decision.
    h.pending().accept(Accept::new(5)).unwrap();
    h.pipe(a, |pipe| pipe.eof = true);
    h.ready(a, true, false, true);
    h.turn();
    assert!(h.closed(a));
    // A new connection takes the slot (a new generation) before the wake-up.
    let b = h.open();
    assert_ne!(a.token, b.token);
    assert_eq!(a.token as u32, b.token as u32, "the same slot");
    h.log();
    h.wake();
    assert!(h.log().is_empty(), "the stale decision opened nothing");
    assert!(h.output(b).is_empty());
    h.send(b, &frame(0x1, b"ok", true));
    assert_eq!(h.frames(b), [(0x1, b"ok".to_vec())]);
}

#[test]
fn a_pending_upgrade_dropped_undecided_answers_500() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.accept();
    h.send(p, DEFERRED_REQUEST);
    drop(h.pending());
    h.wake();
    let out = String::from_utf8(h.output(p)).unwrap();
    assert!(out.starts_with("HTTP/1.1 500 "), "{out}");
}

#[test]
fn publish_others_skips_the_sender_only() {
    let mut h = Harness::with(
        ServerConfig::default(),
        Some(Box::new(|conn: &mut Conn<'_, u32>, msg: Message<'_>| {
            if msg.as_bytes() == b"sub" {
                conn.subscribe("room");
            } else if msg.as_bytes() == b"all" {
                conn.publish("room", &crate::PreparedMessage::text("all"));
            } else {
                let m = crate::PreparedMessage::binary(msg.as_bytes());
                conn.publish_others("room", &m);
            }
        })),
    );
    let a = h.open();
    let b = h.open();
    let c = h.open();
    h.send(a, &frame(0x1, b"sub", true));
    h.send(b, &frame(0x1, b"sub", true));
    h.send(a, &frame(0x2, b"moved", true));
    assert!(h.frames(a).is_empty(), "not to the sender");
    assert_eq!(h.frames(b), [(0x2, b"moved".to_vec())]);
    assert!(h.frames(c).is_empty(), "not subscribed");
    h.send(a, &frame(0x1, b"all", true));
    assert_eq!(
        h.frames(a),
        [(0x1, b"all".to_vec())],
        "publish includes the sender"
    );
    assert_eq!(h.frames(b), [(0x1, b"all".to_vec())]);
}

#[test]
fn application_commands_arrive_in_order_with_handle_sends() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.open();
    h.log();
    let id = h.id(p);
    let handle = h.worker.ctx.conn(id).unwrap().handle();
    let publisher = h.worker.ctx.publisher();
    handle.send_text("1").unwrap();
    publisher.post(0, (id, "2")).unwrap();
    handle.send_text("3").unwrap();
    // From a callback's context too, to this same worker: never run inside the caller.
    h.worker.ctx.post(0, (id, "4")).unwrap();
    h.worker.ctx.post(0, 7u64).unwrap();
    assert!(h.log().is_empty(), "not before the wake-up");
    h.wake();
    assert_eq!(
        h.frames(p),
        [
            (0x1, b"1".to_vec()),
            (0x1, b"2".to_vec()),
            (0x1, b"3".to_vec()),
            (0x1, b"4".to_vec())
        ]
    );
    assert_eq!(
        h.log(),
        ["command 2", "command 4", "command of another type: true"]
    );
    assert_eq!(h.worker.ctx.worker_count(), 1);
    assert_eq!(h.worker.ctx.home_of("room"), 0);
    h.shared
        .stop
        .store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(publisher.post(0, 1u64), Err(crate::HandleError::Stopped));
}
