//! The worker's metrics through the harness: what each hook counts, on the fake clock.

use std::time::Duration;

use super::*;
use crate::server::metrics::{Metrics, MetricsConfig};

/// The value of the sample `series` (name and labels as written) in the harness's metrics.
fn value(h: &Harness, series: &str) -> u64 {
    let text = Metrics {
        shared: Arc::clone(&h.shared),
    }
    .text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn hooks_count_upgrades_messages_rejections_and_closes() {
    let mut h = Harness::new(ServerConfig {
        metrics: MetricsConfig {
            loop_turns: true,
            ..MetricsConfig::default()
        },
        ..ServerConfig::default()
    });
    let p = h.open();
    h.send(p, &frame(0x1, b"hello", true));
    // A message in two fragments: one message, its bytes.
    h.send(p, &frame(0x2, b"ab", false));
    h.send(p, &frame(0x0, b"cde", true));
    assert_eq!(h.frames(p).len(), 2);
    assert_eq!(value(&h, "surge_connections_open"), 1);
    assert_eq!(value(&h, "surge_messages_received_total"), 2);
    assert_eq!(value(&h, "surge_received_payload_bytes_total"), 10);
    assert_eq!(value(&h, "surge_messages_sent_total"), 2);
    assert_eq!(value(&h, "surge_sent_payload_bytes_total"), 10);

    let q = h.accept();
    let deny = String::from_utf8_lossy(REQUEST).replacen("GET / ", "GET /deny ", 1);
    h.send(q, deny.as_bytes());
    h.send(p, &close_frame(1000, ""));
    h.turn();
    assert_eq!(value(&h, "surge_connections_accepted_total"), 2);
    assert_eq!(value(&h, "surge_handshakes_completed_total"), 1);
    assert_eq!(value(&h, "surge_rejections_total{status=\"403\"}"), 1);
    assert_eq!(value(&h, "surge_closes_total{code=\"1000\"}"), 1);
    assert_eq!(value(&h, "surge_connections_open"), 0);
    assert!(
        value(&h, "surge_timers_armed_total") >= 2,
        "handshake deadlines"
    );
    // The fake clock stands still within a turn: every turn is in the first bucket.
    let turns = value(&h, "surge_loop_turn_seconds_count");
    assert!(turns > 0);
    assert_eq!(
        value(&h, "surge_loop_turn_seconds_bucket{le=\"1e-06\"}"),
        turns
    );
}

#[test]
fn backpressure_close_and_drop_are_counted() {
    let mut h = Harness::new(ServerConfig {
        max_backpressure: 4096,
        backpressure_policy: BackpressurePolicy::Close(CloseCode::POLICY),
        ..ServerConfig::default()
    });
    let p = h.open();
    h.pipe(p, |pipe| pipe.room = Some(0));
    let id = h.id(p);
    let mut conn = h.worker.ctx.conn(id).unwrap();
    assert_eq!(conn.send_binary(&[1; 5000]), SendStatus::Backpressure);
    h.turn();
    assert_eq!(value(&h, "surge_backpressure_closes_total"), 1);
    assert_eq!(value(&h, "surge_backpressure_drops_total"), 0);
    // Off: no loop-turn histogram.
    assert_eq!(value(&h, "surge_loop_turn_seconds_count"), 0);

    let mut h = Harness::new(ServerConfig {
        max_backpressure: 4096,
        ..ServerConfig::default()
    });
    let p = h.open();
    h.pipe(p, |pipe| pipe.room = Some(0));
    let id = h.id(p);
    let mut conn = h.worker.ctx.conn(id).unwrap();
    assert_eq!(conn.send_binary(&[1; 1000]), SendStatus::Sent);
    assert_eq!(conn.send_binary(&[2; 3500]), SendStatus::Dropped);
    h.advance(Duration::from_millis(1));
    assert_eq!(value(&h, "surge_backpressure_drops_total"), 1);
}

#[test]
fn deferred_upgrades_are_counted_when_decided() {
    let mut h = Harness::new(ServerConfig::default());
    let p = h.accept();
    h.send(p, DEFERRED_REQUEST);
    assert_eq!(value(&h, "surge_handshakes_completed_total"), 0);
    h.pending().accept(Accept::new(9)).unwrap();
    h.wake();
    assert!(h.output(p).starts_with(b"HTTP/1.1 101 "));
    assert_eq!(value(&h, "surge_handshakes_completed_total"), 1);
    assert_eq!(value(&h, "surge_connections_open"), 1);

    let q = h.accept();
    h.send(q, DEFERRED_REQUEST);
    h.pending()
        .reject(crate::Rejection::new(429, "slow down"))
        .unwrap();
    h.wake();
    assert_eq!(value(&h, "surge_rejections_total{status=\"429\"}"), 1);
    assert_eq!(value(&h, "surge_connections_accepted_total"), 2);
}
