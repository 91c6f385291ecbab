//! Redis pub/sub, over the [`redis`](::redis) crate.
//!
//! - One connection per node: a `ConnectionManager` speaking RESP3, so that publishes, the
//!   subscribe commands and the messages pushed to the node share it; it reconnects (with the
//!   cluster's backoff) and re-issues the node's subscriptions itself. A health check (PING)
//!   every second notices a dead server even on a node that only listens, and drives the
//!   reconnection.
//! - Channel `{prefix}:{topic}` per topic, subscribed while the node has local subscribers.
//! - Publishes already queued are sent as one pipeline (one round trip for many), in order.
//! - Redis sends a publisher's message to its own subscriptions too: the node drops its own
//!   (the envelope carries the node id; counted in [`Stats::own_skipped`](crate::Stats)).
//! - Sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`) is what spreads channels over the shards of a
//!   Redis Cluster; on one server it is the same as `SUBSCRIBE`/`PUBLISH`, and the `redis` crate
//!   speaks it only on cluster connections. This broker targets one Redis server (or a
//!   replicated primary), so it uses classic pub/sub; docs/CLUSTER.md says so.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::{BoxFuture, Broker, Link, Op};

/// Redis pub/sub through the `redis` crate; chosen by a `redis://` URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct Redis;

impl Broker for Redis {
    fn run(self: Box<Self>, link: Link) -> BoxFuture {
        Box::pin(session(link))
    }
}

/// Publishes sent in one pipeline at most.
const BATCH: usize = 256;
/// How long one command (or pipeline) may take before the server counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(1);

/// `url` with RESP3 asked for (pushed messages share the connection with commands).
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// The channel of `topic`.
pub fn channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:{topic}")
}

async fn session(mut link: Link) {
    let cfg = link.config().clone();
    let client = match ::redis::Client::open(resp3(&cfg.url)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("surge-cluster: cannot use {}: {e}", cfg.url);
            return;
        }
    };
    let prefix = format!("{}:", cfg.prefix);
    let inbound = link.inbound();
    // Pushed messages are delivered from the connection's own task; a lost connection is
    // reported to the session.
    let (down_tx, mut down_rx) = mpsc::unbounded_channel::<()>();
    let push = move |p: PushInfo| -> Result<(), ()> {
        match p.kind {
            PushKind::Message => {
                if let [Value::BulkString(ch), Value::BulkString(payload)] = &p.data[..] {
                    if let Some(topic) = ch.strip_prefix(prefix.as_bytes()) {
                        if let Ok(topic) = std::str::from_utf8(topic) {
                            inbound.deliver(topic, payload);
                        }
                    }
                }
            }
            PushKind::Disconnection => {
                let _ = down_tx.send(());
            }
            _ => {}
        }
        Ok(())
    };
    let manager_cfg = ConnectionManagerConfig::new()
        .set_push_sender(push)
        .set_automatic_resubscription()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(cfg.reconnect_min)
        .set_max_delay(cfg.reconnect_max);

    // The first connection: retried with backoff; meanwhile publishes are lost (counted) and
    // interest changes are only counted (the subscriptions are made once connected).
    let mut attempts = 0;
    let mut con = loop {
        let made = tokio::time::timeout(
            TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), manager_cfg.clone()),
        )
        .await;
        match made {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) if attempts == 0 => {
                eprintln!(
                    "surge-cluster: redis at {} unreachable ({e}); retrying",
                    cfg.url
                )
            }
            _ => {}
        }
        let pause = tokio::time::sleep(cfg.backoff(attempts));
        attempts += 1;
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                op = link.next() => match op {
                    None => return,
                    Some(Op::Publish(_)) => link.lost(1, &"the Redis server is not connected"),
                    Some(_) => {}
                },
            }
        }
    };
    let topics: Vec<String> = link.topics().map(|t| channel(&cfg.prefix, t)).collect();
    let mut up = true;
    if !topics.is_empty() {
        up = run(con.subscribe(topics)).await.is_ok();
    }
    link.set_connected(up);
    // A subscribe failed: the manager restores only the subscriptions the server confirmed, so
    // the session subscribes to every topic of the node once the server answers again.
    let mut resubscribe = !up;
    let mut health = tokio::time::interval(Duration::from_secs(1));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let op = tokio::select! {
            biased;
            Some(()) = down_rx.recv() => {
                link.set_connected(false);
                continue;
            }
            _ = health.tick() => {
                // Also what makes the manager reconnect (and resubscribe) on a node that sends
                // nothing else.
                let mut ok = run(::redis::cmd("PING").exec_async(&mut con)).await.is_ok();
                if ok && resubscribe {
                    let all: Vec<String> = link.topics().map(|t| channel(&cfg.prefix, t)).collect();
                    ok = all.is_empty() || run(con.subscribe(all)).await.is_ok();
                    resubscribe = !ok;
                }
                link.set_connected(ok);
                continue;
            }
            op = link.next() => op,
        };
        let Some(op) = op else { break };
        match op {
            Op::Subscribe(topic) => {
                if let Err(e) = run(con.subscribe(channel(&cfg.prefix, &topic))).await {
                    // The manager tracks only confirmed subscriptions: this one is made again
                    // with the others after the reconnect (from the link's topic set).
                    eprintln!("surge-cluster: redis subscribe to {topic:?} failed: {e}");
                    link.set_connected(false);
                    resubscribe = true;
                }
            }
            Op::Unsubscribe(topic) => {
                let _ = run(con.unsubscribe(channel(&cfg.prefix, &topic))).await;
            }
            Op::Publish(first) => {
                let mut pipe = ::redis::pipe();
                pipe.cmd("PUBLISH")
                    .arg(channel(&cfg.prefix, &first.topic))
                    .arg(&first.envelope[..])
                    .ignore();
                let mut n = 1u64;
                while n < BATCH as u64 {
                    let Some(o) = link.try_next_publish() else {
                        break;
                    };
                    pipe.cmd("PUBLISH")
                        .arg(channel(&cfg.prefix, &o.topic))
                        .arg(&o.envelope[..])
                        .ignore();
                    n += 1;
                }
                if !link.is_connected() {
                    link.lost(n, &"the Redis server is not connected");
                    continue;
                }
                match run(pipe.exec_async(&mut con)).await {
                    Ok(()) => link.sent(n),
                    Err(e) => {
                        link.lost(n, &e);
                        link.set_connected(false);
                    }
                }
            }
        }
    }
}

/// Runs one command with the session's timeout.
async fn run<T>(
    f: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
