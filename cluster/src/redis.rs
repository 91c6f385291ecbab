//! Redis pub/sub, over the [`redis`] crate, in two modes picked by the URL:
//!
//! - `redis://host:port[/db]`: one Redis server (or a replicated primary), classic pub/sub
//!   (`SUBSCRIBE`/`PUBLISH`) through a `ConnectionManager`. Sharded pub/sub exists to spread
//!   channels over the shards of a Redis Cluster; on one server it is the same thing, and the
//!   crate's single-server connections cannot track `SSUBSCRIBE` confirmations.
//! - `redis-cluster://host:port[,host:port...]` (seed nodes): a Redis Cluster, **sharded pub/sub**
//!   (`SSUBSCRIBE`/`SPUBLISH`) through the crate's cluster client: each channel lives on the shard
//!   that owns its slot, so a publish crosses only that shard instead of every node of the
//!   cluster.
//!
//! Both speak RESP3, so publishes, subscribe commands and the pushed messages share the
//! connection(s); both reconnect with the cluster's backoff and re-issue the confirmed
//! subscriptions themselves. On top of that the session:
//! - sends a PING every second, which notices a dead server even on a node that only listens and
//!   drives the reconnection; after a failed subscribe it subscribes to all the node's topics again
//!   once the server answers;
//! - sends the publishes already queued as one pipeline (one round trip for many), in order
//!   (cluster mode: one command each, in order);
//! - drops this node's own messages, which Redis echoes to the publisher's subscriptions (the
//!   envelope carries the node id; counted in [`Stats::own_skipped`](crate::Stats)).

use std::future::Future;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncCommands, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use crate::{BoxFuture, Broker, Inbound, Link, Op, Outgoing};

/// Redis pub/sub through the `redis` crate; chosen by a `redis://` (one server, classic pub/sub)
/// or `redis-cluster://` (Redis Cluster, sharded pub/sub) URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct Redis;

impl Broker for Redis {
    fn run(self: Box<Self>, link: Link) -> BoxFuture {
        Box::pin(async move {
            if link.config().url.starts_with("redis-cluster://") {
                session::<ClusterConnection>(link).await
            } else {
                session::<ConnectionManager>(link).await
            }
        })
    }
}

/// Publishes sent in one pipeline at most.
const BATCH: usize = 256;
/// How long one command (or pipeline) may take before the server counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The channel of `topic`.
pub fn channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:{topic}")
}

/// What the session needs of a connection, single-server or cluster.
trait Conn: Sized + Send + 'static {
    /// Connects (one attempt; the connection reconnects by itself afterwards). `push` gets the
    /// pushed messages and disconnections.
    fn connect(
        link: &Link,
        push: impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    ) -> impl Future<Output = RedisResult<Self>> + Send;
    fn subscribe(&mut self, channels: Vec<String>) -> impl Future<Output = RedisResult<()>> + Send;
    fn unsubscribe(&mut self, channel: String) -> impl Future<Output = RedisResult<()>> + Send;
    /// Publishes `batch` in order, counting in `done` those the server confirmed (on an error
    /// the rest are not known to have arrived; the one in flight may have).
    fn publish(
        &mut self,
        prefix: &str,
        batch: &[Outgoing],
        done: &mut u64,
    ) -> impl Future<Output = RedisResult<()>> + Send;
    fn ping(&mut self) -> impl Future<Output = RedisResult<()>> + Send;
}

/// `url` with RESP3 asked for.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

impl Conn for ConnectionManager {
    async fn connect(
        link: &Link,
        push: impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    ) -> RedisResult<Self> {
        let cfg = link.config();
        let client = ::redis::Client::open(resp3(&cfg.url))?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_push_sender(push)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(cfg.reconnect_min)
            .set_max_delay(cfg.reconnect_max);
        ConnectionManager::new_with_config(client, manager_cfg).await
    }

    async fn subscribe(&mut self, channels: Vec<String>) -> RedisResult<()> {
        ConnectionManager::subscribe(self, channels).await
    }

    async fn unsubscribe(&mut self, channel: String) -> RedisResult<()> {
        ConnectionManager::unsubscribe(self, channel).await
    }

    async fn publish(
        &mut self,
        prefix: &str,
        batch: &[Outgoing],
        done: &mut u64,
    ) -> RedisResult<()> {
        let mut pipe = ::redis::pipe();
        for o in batch {
            pipe.cmd("PUBLISH")
                .arg(channel(prefix, &o.topic))
                .arg(&o.envelope[..])
                .ignore();
        }
        pipe.exec_async(self).await?;
        *done = batch.len() as u64;
        Ok(())
    }

    async fn ping(&mut self) -> RedisResult<()> {
        ::redis::cmd("PING").exec_async(self).await
    }
}

impl Conn for ClusterConnection {
    async fn connect(
        link: &Link,
        push: impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    ) -> RedisResult<Self> {
        let cfg = link.config();
        let seeds: Vec<String> = cfg
            .url
            .trim_start_matches("redis-cluster://")
            .split(',')
            .map(|hp| format!("redis://{hp}"))
            .collect();
        let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        ClusterClientBuilder::new(seeds)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(push)
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            .retries(1)
            .min_retry_wait(millis(cfg.reconnect_min))
            .max_retry_wait(millis(cfg.reconnect_max))
            .build()?
            .get_async_connection()
            .await
    }

    async fn subscribe(&mut self, channels: Vec<String>) -> RedisResult<()> {
        // One SSUBSCRIBE per channel: a cluster routes each by its slot.
        for ch in channels {
            self.ssubscribe(ch).await?;
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: String) -> RedisResult<()> {
        self.sunsubscribe(channel).await
    }

    async fn publish(
        &mut self,
        prefix: &str,
        batch: &[Outgoing],
        done: &mut u64,
    ) -> RedisResult<()> {
        // Each to the shard of its channel, in order.
        for o in batch {
            let _: Value = self
                .spublish(channel(prefix, &o.topic), &o.envelope[..])
                .await?;
            *done += 1;
        }
        Ok(())
    }

    async fn ping(&mut self) -> RedisResult<()> {
        ::redis::cmd("PING").exec_async(self).await
    }
}

/// Hands pushed messages (`message` or `smessage`: channel, payload) to the node, and reports a
/// lost connection on `down`.
fn pusher(
    prefix: String,
    inbound: Inbound,
    down: mpsc::UnboundedSender<()>,
) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    move |p: PushInfo| {
        match p.kind {
            PushKind::Message | PushKind::SMessage => {
                if let [Value::BulkString(ch), Value::BulkString(payload)] = &p.data[..] {
                    if let Some(topic) = ch.strip_prefix(prefix.as_bytes()) {
                        if let Ok(topic) = std::str::from_utf8(topic) {
                            inbound.deliver(topic, payload);
                        }
                    }
                }
            }
            PushKind::Disconnection => {
                let _ = down.send(());
            }
            _ => {}
        }
        Ok(())
    }
}

async fn session<C: Conn>(mut link: Link) {
    let cfg = link.config().clone();
    let (down_tx, mut down_rx) = mpsc::unbounded_channel::<()>();
    let inbound = link.inbound();
    let push = || pusher(format!("{}:", cfg.prefix), inbound.clone(), down_tx.clone());

    // The first connection: retried with backoff; meanwhile publishes are lost (counted) and
    // interest changes are only counted (the subscriptions are made once connected).
    let mut attempts = 0;
    let mut con = loop {
        match tokio::time::timeout(TIMEOUT * 2, C::connect(&link, push())).await {
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
    let all =
        |link: &Link| -> Vec<String> { link.topics().map(|t| channel(&cfg.prefix, t)).collect() };
    let first = all(&link);
    let up = first.is_empty() || run(con.subscribe(first)).await.is_ok();
    link.set_connected(up);
    // A subscribe failed: the connection restores only the subscriptions the server confirmed,
    // so the session subscribes to every topic of the node once the server answers again.
    let mut resubscribe = !up;
    let mut health = tokio::time::interval(Duration::from_secs(1));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let op = tokio::select! {
            biased;
            Some(()) = down_rx.recv() => {
                link.set_connected(false);
                continue;
            }
            _ = health.tick() => {
                // Also what makes the connection reconnect (and resubscribe) on a node that
                // sends nothing else.
                let mut ok = run(con.ping()).await.is_ok();
                if ok && resubscribe {
                    let topics = all(&link);
                    ok = topics.is_empty() || run(con.subscribe(topics)).await.is_ok();
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
                if let Err(e) = run(con.subscribe(vec![channel(&cfg.prefix, &topic)])).await {
                    eprintln!("surge-cluster: redis subscribe to {topic:?} failed: {e}");
                    link.set_connected(false);
                    resubscribe = true;
                }
            }
            Op::Unsubscribe(topic) => {
                let _ = run(con.unsubscribe(channel(&cfg.prefix, &topic))).await;
            }
            Op::Publish(first) => {
                batch.clear();
                batch.push(first);
                while batch.len() < BATCH {
                    let Some(o) = link.try_next_publish() else {
                        break;
                    };
                    batch.push(o);
                }
                let n = batch.len() as u64;
                if !link.is_connected() {
                    link.lost(n, &"the Redis server is not connected");
                    continue;
                }
                let mut done = 0;
                match run(con.publish(&cfg.prefix, &batch, &mut done)).await {
                    Ok(()) => link.sent(n),
                    Err(e) => {
                        // Those confirmed before the error went out; the rest count as lost.
                        link.sent(done);
                        link.lost(n - done, &e);
                        link.set_connected(false);
                    }
                }
            }
        }
    }
}

/// Runs one command with the session's timeout.
async fn run<T>(f: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
