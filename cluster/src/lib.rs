//! Topics across surge nodes: publish on any node, delivered to the topic's subscribers on every
//! node, through a broker you already run ([NATS](nats) or [Redis pub/sub](redis), sharded on a
//! Redis Cluster).
//!
//! ```no_run
//! use std::sync::Arc;
//! use surge::{Server, ServerConfig};
//! use surge_cluster::{Cluster, ClusterConfig};
//! # struct App;
//! # impl surge::Handler for App {
//! #     type Data = ();
//! #     fn on_upgrade(&mut self, _: &surge::Request) -> surge::Upgrade<()> {
//! #         surge::Upgrade::Accept(surge::Accept::new(()))
//! #     }
//! #     fn on_message(&mut self, _: &mut surge::Conn<'_, ()>, _: surge::Message<'_>) {}
//! # }
//!
//! let cluster = Cluster::start(ClusterConfig::new("nats://127.0.0.1:4222"))?;
//! let server = Server::new(ServerConfig::default())
//!     .with_bridge(cluster.bridge())
//!     .start(|_| App)?;
//! // conn.publish / WorkerCtx::publish / Publisher::publish now reach every node.
//! # server.shutdown(); cluster.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How it works (docs/CLUSTER.md has the whole story and what is and is not guaranteed):
//! - The engine tells the cluster's [`FanoutBridge`] every publish made on the node; the bridge
//!   queues it (bounded: [`ClusterConfig::max_queued`], then dropped and counted) for the broker
//!   thread. Local subscribers get it from the engine directly, never through the broker.
//! - The engine tells the bridge when a worker's topic gains its first or loses its last
//!   subscriber; the broker thread sums that over the workers and subscribes the node to the
//!   topic's subject on 0 -> 1 and unsubscribes on 1 -> 0, so a node without subscribers of a
//!   topic receives nothing for it.
//! - A message from the broker is decoded (see [`envelope`]), dropped if this node published it,
//!   framed once and handed to the workers with [`Publisher::publish_local`].
//! - The broker client runs on the cluster's own thread (a current-thread tokio runtime); the
//!   workers never wait on it. It reconnects with backoff and restores the subscriptions.

pub mod envelope;
pub mod nats;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use surge::{FanoutBridge, PreparedMessage, Publisher};
use tokio::sync::{mpsc, watch};

/// A cluster's settings; [`ClusterConfig::new`] takes the broker URL and sets the rest to the
/// defaults below.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// `nats://host:port`, `redis://host:port[/db]` (one Redis server, classic pub/sub) or
    /// `redis-cluster://host:port[,host:port...]` (a Redis Cluster's seed nodes, sharded pub/sub):
    /// the scheme picks the broker.
    pub url: String,
    /// Subjects and channels are `{prefix}.{topic}` (NATS, the topic escaped: see
    /// [`nats::subject`]) or `{prefix}:{topic}` (Redis). Nodes of one cluster share it; two
    /// clusters on one broker use two prefixes. Default `surge`.
    pub prefix: String,
    /// Publishes queued for the broker at most; more are dropped and counted
    /// ([`Stats::dropped_queue_full`]). Default 65,536.
    pub max_queued: usize,
    /// Payload bytes of one message at most, sent or received; larger ones are dropped and
    /// counted ([`Stats::dropped_oversized`]). Default 1 MiB (NATS servers refuse more than
    /// their `max_payload`, 1 MiB by default).
    pub max_message_size: usize,
    /// First reconnect delay; it doubles per failed attempt up to `reconnect_max`. Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default 5 s.
    pub reconnect_max: Duration,
    /// How long [`Cluster::shutdown`] waits for the broker client to finish (flushing what is
    /// queued) before it gives up on it. Default 1 s.
    pub shutdown_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults, with the broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClusterConfig {
            url: url.into(),
            prefix: "surge".into(),
            max_queued: 65_536,
            max_message_size: 1 << 20,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(1),
        }
    }

    /// The reconnect delay after `attempts` failed attempts (exponential, capped).
    pub fn backoff(&self, attempts: usize) -> Duration {
        let shift = attempts.min(20) as u32;
        self.reconnect_min
            .saturating_mul(1u32 << shift)
            .min(self.reconnect_max)
    }
}

/// Why a cluster could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The URL's scheme names no broker this crate speaks.
    UnknownScheme(String),
    /// The broker thread or its runtime could not start.
    Io(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::UnknownScheme(url) => write!(
                f,
                "unknown broker URL {url:?}: expected nats://host:port, redis://host:port or \
                 redis-cluster://host:port[,host:port...]"
            ),
            Error::Io(e) => write!(f, "cannot start the cluster thread: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// A snapshot of a node's cluster counters ([`Cluster::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Publishes handed to the broker client.
    pub sent: u64,
    /// Envelopes received from the broker (this node's own echoes included).
    pub received: u64,
    /// Received messages delivered to this node's subscribers (framed once each).
    pub delivered: u64,
    /// This node's own publications that came back from the broker and were skipped (Redis
    /// pub/sub echoes to the publisher's subscriptions; NATS is told not to).
    pub own_skipped: u64,
    /// Publishes dropped because the queue to the broker was full (or the cluster was shut down
    /// while the server runs on).
    pub dropped_queue_full: u64,
    /// Messages over `max_message_size`, dropped (sent or received).
    pub dropped_oversized: u64,
    /// Publishes dropped because the broker was unreachable or refused them: lost for the other
    /// nodes (local subscribers had them).
    pub lost_disconnected: u64,
    /// Received payloads that were not envelopes, dropped.
    pub malformed: u64,
    /// Times the broker connection was lost.
    pub disconnects: u64,
    /// Broker subscribe and unsubscribe commands issued (a topic's 0 -> 1 and 1 -> 0).
    pub subscribes: u64,
    pub unsubscribes: u64,
    /// Topics the node is subscribed to at the broker now.
    pub topics: u64,
    /// Whether the broker connection is up now.
    pub connected: bool,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    own_skipped: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_oversized: AtomicU64,
    lost_disconnected: AtomicU64,
    malformed: AtomicU64,
    disconnects: AtomicU64,
    subscribes: AtomicU64,
    unsubscribes: AtomicU64,
    topics: AtomicU64,
    connected: AtomicBool,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// At most one log line per second per kind of drop (with the count in between).
#[derive(Debug, Default)]
struct DropLog {
    last_second: AtomicU64,
}

impl DropLog {
    fn log(&self, started: Instant, what: &str, total: u64) {
        let now = started.elapsed().as_secs() + 1;
        let last = self.last_second.load(Ordering::Relaxed);
        if now != last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            eprintln!("surge-cluster: {what} ({total} so far)");
        }
    }
}

/// A publish on its way to the broker.
#[derive(Debug)]
pub struct Outgoing {
    /// The topic as published.
    pub topic: Arc<str>,
    /// The envelope ([`envelope::encode`]).
    pub envelope: bytes::Bytes,
}

/// The node's side of the cluster: what the engine calls (as its [`FanoutBridge`]) and what the
/// broker session calls back.
#[derive(Debug)]
struct Node {
    id: u64,
    cfg: ClusterConfig,
    started: Instant,
    publisher: OnceLock<Publisher>,
    out: mpsc::Sender<Outgoing>,
    interest: mpsc::UnboundedSender<(Arc<str>, bool)>,
    counters: Counters,
    full_log: DropLog,
    oversized_log: DropLog,
    lost_log: DropLog,
}

impl FanoutBridge for Node {
    fn attach(&self, publisher: Publisher) {
        if self.publisher.set(publisher).is_err() {
            eprintln!("surge-cluster: one Cluster serves one server; a second server's messages from other nodes are not delivered");
        }
    }

    fn published(&self, topic: &str, msg: &PreparedMessage) {
        let c = &self.counters;
        if msg.payload().len() > self.cfg.max_message_size {
            bump(&c.dropped_oversized);
            self.oversized_log.log(
                self.started,
                &format!(
                    "a publish to {topic:?} of {} B is over max_message_size ({} B): not sent to other nodes",
                    msg.payload().len(),
                    self.cfg.max_message_size
                ),
                c.dropped_oversized.load(Ordering::Relaxed),
            );
            return;
        }
        let item = Outgoing {
            topic: Arc::from(topic),
            envelope: envelope::encode(self.id, msg).into(),
        };
        if let Err(e) = self.out.try_send(item) {
            bump(&c.dropped_queue_full);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => {
                    "the queue to the broker is full (max_queued): publishes dropped for other nodes"
                }
                mpsc::error::TrySendError::Closed(_) => {
                    "the cluster has shut down: publishes go to this node's subscribers only"
                }
            };
            self.full_log.log(
                self.started,
                why,
                c.dropped_queue_full.load(Ordering::Relaxed),
            );
        }
    }

    fn interest(&self, _worker: usize, topic: &Arc<str>, subscribed: bool) {
        // Unbounded, but each entry is a change of a worker's topic set, not a message; the
        // broker thread drains it ahead of publishes.
        let _ = self.interest.send((Arc::clone(topic), subscribed));
    }
}

/// What a broker session does next ([`Link::next`]).
#[derive(Debug)]
pub enum Op {
    /// The node now has subscribers of this topic: subscribe to its subject.
    Subscribe(Arc<str>),
    /// The node has no subscriber of this topic left: unsubscribe.
    Unsubscribe(Arc<str>),
    /// Send this publish to the broker (or call [`Link::lost`] when that cannot be done).
    Publish(Outgoing),
}

/// A broker session's end of the node: the operations to carry out, in order, and the way back
/// in for messages. Handed to [`Broker::run`].
#[derive(Debug)]
pub struct Link {
    node: Arc<Node>,
    out: mpsc::Receiver<Outgoing>,
    interest: mpsc::UnboundedReceiver<(Arc<str>, bool)>,
    stop: watch::Receiver<bool>,
    /// Workers with subscribers, per topic.
    counts: HashMap<Arc<str>, usize>,
}

impl Link {
    /// The next operation: interest changes first (they are few and never dropped), then
    /// publishes in the order they were made. `None` once the cluster is shutting down and the
    /// queue is empty (a session then returns).
    pub async fn next(&mut self) -> Option<Op> {
        loop {
            if let Ok((topic, up)) = self.interest.try_recv() {
                if let Some(op) = self.count(topic, up) {
                    return Some(op);
                }
                continue;
            }
            if *self.stop.borrow() {
                return self.out.try_recv().ok().map(Op::Publish);
            }
            tokio::select! {
                biased;
                Some((topic, up)) = self.interest.recv() => {
                    if let Some(op) = self.count(topic, up) {
                        return Some(op);
                    }
                }
                Some(o) = self.out.recv() => return Some(Op::Publish(o)),
                _ = self.stop.changed() => {}
            }
        }
    }

    /// A publish already queued, without waiting (for a session that batches).
    pub fn try_next_publish(&mut self) -> Option<Outgoing> {
        if !self.interest.is_empty() {
            return None;
        }
        self.out.try_recv().ok()
    }

    fn count(&mut self, topic: Arc<str>, up: bool) -> Option<Op> {
        let c = &self.node.counters;
        if up {
            let n = self.counts.entry(Arc::clone(&topic)).or_insert(0);
            *n += 1;
            if *n == 1 {
                bump(&c.subscribes);
                c.topics.store(self.counts.len() as u64, Ordering::Relaxed);
                return Some(Op::Subscribe(topic));
            }
        } else if let Some(n) = self.counts.get_mut(&topic) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&topic);
                bump(&c.unsubscribes);
                c.topics.store(self.counts.len() as u64, Ordering::Relaxed);
                return Some(Op::Unsubscribe(topic));
            }
        }
        None
    }

    /// Topics the node is subscribed to now (a session that restores subscriptions itself after
    /// reconnecting walks these).
    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.counts.keys()
    }

    /// The way in for messages from the broker; `Clone + Send`, for tasks of the session.
    pub fn inbound(&self) -> Inbound {
        Inbound {
            node: Arc::clone(&self.node),
        }
    }

    /// The cluster's settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.node.cfg
    }

    /// Whether the cluster is shutting down.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// A receiver that changes to `true` when the cluster shuts down.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// `n` publishes went to the broker.
    pub fn sent(&self, n: u64) {
        self.node.counters.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` publishes could not go to the broker (it is unreachable or refused them).
    pub fn lost(&self, n: u64, why: &dyn std::fmt::Display) {
        let c = &self.node.counters;
        let total = c.lost_disconnected.fetch_add(n, Ordering::Relaxed) + n;
        self.node.lost_log.log(
            self.node.started,
            &format!("publishes lost for other nodes: {why}"),
            total,
        );
    }

    /// Whether the broker connection is up (as last set with [`set_connected`](Self::set_connected)).
    pub fn is_connected(&self) -> bool {
        self.node.counters.connected.load(Ordering::Relaxed)
    }

    /// The broker connection went up or down (logged on each change; down counts a disconnect).
    pub fn set_connected(&self, up: bool) {
        let c = &self.node.counters;
        let was = c.connected.swap(up, Ordering::Relaxed);
        if was == up {
            return;
        }
        if up {
            eprintln!(
                "surge-cluster: connected to {} ({} topics subscribed, {} publishes lost while away so far)",
                self.node.cfg.url,
                self.counts.len(),
                c.lost_disconnected.load(Ordering::Relaxed)
            );
        } else {
            bump(&c.disconnects);
            eprintln!(
                "surge-cluster: lost the broker at {}; local delivery goes on, reconnecting with backoff",
                self.node.cfg.url
            );
        }
    }
}

/// Delivers messages from the broker to this node's subscribers ([`Link::inbound`]).
#[derive(Debug, Clone)]
pub struct Inbound {
    node: Arc<Node>,
}

impl Inbound {
    /// An envelope arrived on `topic`'s subject: decoded, skipped if this node published it,
    /// framed once and delivered to the node's subscribers.
    pub fn deliver(&self, topic: &str, bytes: &[u8]) {
        let c = &self.node.counters;
        bump(&c.received);
        if bytes.len() > self.node.cfg.max_message_size + envelope::HEADER_LEN {
            bump(&c.dropped_oversized);
            return;
        }
        let Some(env) = envelope::decode(bytes) else {
            bump(&c.malformed);
            return;
        };
        if env.node == self.node.id {
            bump(&c.own_skipped);
            return;
        }
        let Some(publisher) = self.node.publisher.get() else {
            return;
        };
        if publisher.publish_local(topic, &env.prepare()).is_ok() {
            bump(&c.delivered);
        }
    }
}

/// A future a broker session runs as.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A broker: speaks to one through a well-kept client crate, carrying out a [`Link`]'s
/// operations in order and delivering what arrives through [`Link::inbound`].
///
/// `run` is the whole session: it connects (retrying with [`ClusterConfig::backoff`] while the
/// broker is down), restores the node's subscriptions after every reconnect, keeps
/// [`Link::set_connected`] true, and returns once [`Link::next`] gives `None`. It runs on the
/// cluster's thread; it may spawn tasks there.
pub trait Broker: Send + 'static {
    /// The session.
    fn run(self: Box<Self>, link: Link) -> BoxFuture;
}

/// The broker for `url`'s scheme.
pub fn broker_for(url: &str) -> Result<Box<dyn Broker>, Error> {
    if url.starts_with("nats://") {
        Ok(Box::new(nats::Nats))
    } else if url.starts_with("redis://") || url.starts_with("redis-cluster://") {
        Ok(Box::new(redis::Redis))
    } else {
        Err(Error::UnknownScheme(url.to_owned()))
    }
}

/// One node's membership in a cluster: the broker session on its own thread and the bridge the
/// server is started with ([`surge::Server::with_bridge`]). One `Cluster` per server.
#[derive(Debug)]
pub struct Cluster {
    node: Arc<Node>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Starts the broker session for `cfg.url` (the broker need not be up yet: the session
    /// retries) with a random node id.
    pub fn start(cfg: ClusterConfig) -> Result<Cluster, Error> {
        let broker = broker_for(&cfg.url)?;
        Self::with_broker(cfg, broker)
    }

    /// [`start`](Self::start) with a broker of your own.
    pub fn with_broker(cfg: ClusterConfig, broker: Box<dyn Broker>) -> Result<Cluster, Error> {
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id)
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        let (out_tx, out_rx) = mpsc::channel(cfg.max_queued.max(1));
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let shutdown_timeout = cfg.shutdown_timeout;
        let node = Arc::new(Node {
            id: u64::from_le_bytes(id),
            cfg,
            started: Instant::now(),
            publisher: OnceLock::new(),
            out: out_tx,
            interest: interest_tx,
            counters: Counters::default(),
            full_log: DropLog::default(),
            oversized_log: DropLog::default(),
            lost_log: DropLog::default(),
        });
        let link = Link {
            node: Arc::clone(&node),
            out: out_rx,
            interest: interest_rx,
            stop: stop_rx.clone(),
            counts: HashMap::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("surge-cluster".into())
            .spawn(move || {
                let mut stop = stop_rx;
                rt.block_on(async move {
                    let session = tokio::spawn(broker.run(link));
                    // Stop asked: the session has `shutdown_timeout` to flush and return.
                    let _ = stop.wait_for(|s| *s).await;
                    let _ = tokio::time::timeout(shutdown_timeout, session).await;
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(Cluster {
            node,
            stop: stop_tx,
            thread: Some(thread),
        })
    }

    /// `server` joined to the cluster at `url` when there is one (a `--cluster` flag), else
    /// `server` as it is: the server to start, and the cluster to shut down after it.
    pub fn join(
        server: surge::Server,
        url: Option<String>,
    ) -> Result<(surge::Server, Option<Cluster>), Error> {
        let Some(url) = url else {
            return Ok((server, None));
        };
        let cluster = Cluster::start(ClusterConfig::new(url))?;
        Ok((server.with_bridge(cluster.bridge()), Some(cluster)))
    }

    /// The bridge to start the server with ([`surge::Server::with_bridge`]).
    pub fn bridge(&self) -> Arc<dyn FanoutBridge> {
        Arc::clone(&self.node) as Arc<dyn FanoutBridge>
    }

    /// This node's id (random per start; in every envelope it publishes).
    pub fn node_id(&self) -> u64 {
        self.node.id
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.node.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            sent: l(&c.sent),
            received: l(&c.received),
            delivered: l(&c.delivered),
            own_skipped: l(&c.own_skipped),
            dropped_queue_full: l(&c.dropped_queue_full),
            dropped_oversized: l(&c.dropped_oversized),
            lost_disconnected: l(&c.lost_disconnected),
            malformed: l(&c.malformed),
            disconnects: l(&c.disconnects),
            subscribes: l(&c.subscribes),
            unsubscribes: l(&c.unsubscribes),
            topics: l(&c.topics),
            connected: c.connected.load(Ordering::Relaxed),
        }
    }

    /// Stops the broker session: what is queued is flushed for up to
    /// [`ClusterConfig::shutdown_timeout`], then the thread ends whatever the broker does.
    /// Publishes after this are dropped (counted as queue-full once the queue fills).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_now();
    }
}
