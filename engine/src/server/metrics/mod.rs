//! Prometheus metrics: each worker's counters, summed at scrape time.
//!
//! Every worker owns one `WorkerMetrics` (cache-line padded, in an `Arc` the scraper reads too).
//! Only that worker writes it, so a count is a relaxed load and a relaxed store of the worker's
//! own cache line: no lock, no read-modify-write instruction, no metrics library on the hot path.
//! Figures that other parts of the worker keep themselves (the timer wheel, the driver, the
//! deflate pool, the mailbox's connection and drop counts) are copied in once per loop turn.
//! A scrape ([`Metrics::encode`]) reads every worker's block and writes the Prometheus text
//! format (0.0.4) through the `prometheus-client` crate's [`Collector`].
//!
//! Serving (see [`MetricsConfig`]): a GET of `path` on the WebSocket port, answered by the worker
//! that holds the connection; or a small listener thread of its own (`serve.rs`); or the
//! application's own server, with [`ServerHandle::metrics`](crate::ServerHandle::metrics).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Shared;
use crate::proto::CloseCode;

pub(crate) mod serve;

/// The `Content-Type` of [`Metrics::encode`]'s text: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Where the metrics are served ([`ServerConfig::metrics`](crate::ServerConfig::metrics)). Off by
/// default: then nothing is served and the loop-turn histogram is not recorded (the counters
/// still count, a relaxed add each, and [`ServerHandle::metrics`](crate::ServerHandle::metrics)
/// reads them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Answer a plain HTTP `GET` of this path (e.g. `"/metrics"`) on the WebSocket port(s) with
    /// the metrics, before [`Handler::on_http`](crate::Handler::on_http) is asked.
    pub path: Option<String>,
    /// Serve `GET /metrics` on a listener of its own at this address (port 0: any; see
    /// [`ServerHandle::metrics_addr`](crate::ServerHandle::metrics_addr)), from one thread, one
    /// request per connection; stopped with the server.
    pub addr: Option<SocketAddr>,
    /// Record the loop-turn histogram without `path` or `addr` (for an application that serves
    /// [`ServerHandle::metrics`](crate::ServerHandle::metrics) itself): one more clock read per
    /// loop turn.
    pub loop_turns: bool,
}

impl MetricsConfig {
    /// Whether the per-turn figures are recorded.
    pub(crate) fn is_on(&self) -> bool {
        self.loop_turns || self.path.is_some() || self.addr.is_some()
    }
}

/// HTTP statuses counted apart in `surge_rejections_total`; others are `other`.
const STATUSES: [u16; 8] = [400, 403, 404, 426, 429, 431, 500, 503];
/// Close codes counted apart in `surge_closes_total`; others are `other`.
const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011];
/// Loop-turn buckets: bucket `i < TURN_BUCKETS - 1` holds turns shorter than 2^i microseconds
/// (1 µs .. about 1 s); the last one the rest.
const TURN_BUCKETS: usize = 22;

/// One worker's counters. Written by that worker only (`add`), read by scrapers. `repr(C)`: the
/// per-message counters come first, in the block's first cache line.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct WorkerMetrics {
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    accepted: AtomicU64,
    handshakes: AtomicU64,
    dialed: AtomicU64,
    rejected: [AtomicU64; STATUSES.len() + 1],
    closed: [AtomicU64; CLOSE_CODES.len() + 1],
    backpressure_closes: AtomicU64,
    mailbox_commands: AtomicU64,
    // Copied once per loop turn from where the worker keeps them.
    connections_held: AtomicU64,
    backpressure_drops: AtomicU64,
    timers_armed: AtomicU64,
    timers_fired: AtomicU64,
    recv_enobufs: AtomicU64,
    cq_overflow: AtomicU64,
    deflate: [AtomicU64; 4],
    turns: [AtomicU64; TURN_BUCKETS],
    turn_micros: AtomicU64,
}

/// A count by the counter's only writer: a relaxed load and store, no locked instruction.
#[inline]
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn set(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// What one loop turn copies in (see [`WorkerMetrics::publish`]).
pub(crate) struct TurnFigures {
    pub(crate) connections_held: usize,
    pub(crate) backpressure_drops: u64,
    pub(crate) timers_armed: u64,
    pub(crate) timers_fired: u64,
    pub(crate) driver: crate::driver::DriverStats,
    pub(crate) deflate: crate::proto::DeflateStats,
    /// The turn's work (from the end of its poll); `None` when not recorded.
    pub(crate) took: Option<Duration>,
}

impl WorkerMetrics {
    pub(crate) fn accepted(&self) {
        add(&self.accepted, 1);
    }

    /// A server-side upgrade completed (the connection is open).
    pub(crate) fn handshake(&self) {
        add(&self.handshakes, 1);
    }

    /// An outgoing connection opened.
    pub(crate) fn dialed(&self) {
        add(&self.dialed, 1);
    }

    /// An HTTP answer other than the 101: counted when its status is an error (400 and up).
    pub(crate) fn rejected(&self, status: u16) {
        if status >= 400 {
            let i = STATUSES.iter().position(|&s| s == status);
            add(&self.rejected[i.unwrap_or(STATUSES.len())], 1);
        }
    }

    /// An open connection closed (`on_close`), with this code.
    pub(crate) fn closed(&self, code: CloseCode) {
        let i = CLOSE_CODES.iter().position(|&c| c == code.0);
        add(&self.closed[i.unwrap_or(CLOSE_CODES.len())], 1);
    }

    /// An event of the protocol core: a message (or a fragment's bytes) delivered to the handler.
    pub(crate) fn received(&self, event: &crate::proto::Event<'_>) {
        use crate::proto::Event;
        match event {
            Event::Message(m) => {
                add(&self.messages_in, 1);
                add(&self.bytes_in, m.as_bytes().len() as u64);
            }
            Event::Fragment { data, last, .. } => {
                add(&self.messages_in, u64::from(*last));
                add(&self.bytes_in, data.len() as u64);
            }
            _ => {}
        }
    }

    /// A data message queued whole, with `len` payload bytes.
    pub(crate) fn sent(&self, len: usize) {
        add(&self.messages_out, 1);
        add(&self.bytes_out, len as u64);
    }

    /// A frame queued: counted when it carries data (`fin`: it ends its message).
    pub(crate) fn frame_sent(&self, op: crate::proto::OpCode, fin: bool, len: usize) {
        use crate::proto::OpCode;
        if matches!(op, OpCode::Text | OpCode::Binary | OpCode::Continuation) {
            add(&self.messages_out, u64::from(fin));
            add(&self.bytes_out, len as u64);
        }
    }

    /// The backpressure policy closed a connection.
    pub(crate) fn backpressure_close(&self) {
        add(&self.backpressure_closes, 1);
    }

    /// A command taken from the worker's mailbox.
    pub(crate) fn mailbox_command(&self) {
        add(&self.mailbox_commands, 1);
    }

    /// Once per loop turn: the figures kept elsewhere, and the turn's duration.
    pub(crate) fn publish(&self, f: TurnFigures) {
        set(&self.connections_held, f.connections_held as u64);
        set(&self.backpressure_drops, f.backpressure_drops);
        set(&self.timers_armed, f.timers_armed);
        set(&self.timers_fired, f.timers_fired);
        set(&self.recv_enobufs, f.driver.recv_enobufs);
        set(&self.cq_overflow, f.driver.cq_overflow);
        let d = f.deflate;
        for (c, v) in
            self.deflate
                .iter()
                .zip([d.out_plain, d.out_compressed, d.in_compressed, d.in_plain])
        {
            set(c, v);
        }
        if let Some(took) = f.took {
            let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
            let bucket = (64 - us.leading_zeros() as usize).min(TURN_BUCKETS - 1);
            add(&self.turns[bucket], 1);
            add(&self.turn_micros, us);
        }
    }
}

/// The metrics of a running server: every worker's counters, read when encoded. Cheap to clone;
/// from [`ServerHandle::metrics`](crate::ServerHandle::metrics).
#[derive(Clone)]
pub struct Metrics {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("workers", &self.shared.metrics.len())
            .finish()
    }
}

impl Metrics {
    /// Appends the metrics in the Prometheus text format (version 0.0.4; [`CONTENT_TYPE`]).
    pub fn encode(&self, out: &mut String) {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(WorkersCollector {
            shared: Arc::clone(&self.shared),
        }));
        prometheus_client::encoding::prometheus_text::encode(out, &registry)
            .expect("writing to a String does not fail");
    }

    /// The metrics as text (see [`encode`](Self::encode)).
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.encode(&mut out);
        out
    }
}

/// The counters without labels: name (without `_total`) and help, in the order of
/// [`WorkerMetrics::plain`].
const PLAIN: [(&str, &str); 11] = [
    (
        "surge_messages_received",
        "Messages delivered to the handler",
    ),
    (
        "surge_received_payload_bytes",
        "Payload bytes of the messages delivered to the handler (inflated)",
    ),
    ("surge_messages_sent", "Data messages queued for sending"),
    (
        "surge_sent_payload_bytes",
        "Payload bytes of the data messages queued for sending (see docs/OPERATIONS.md)",
    ),
    (
        "surge_backpressure_drops",
        "Messages dropped over the backpressure limit",
    ),
    (
        "surge_backpressure_closes",
        "Close handshakes started by the backpressure policy",
    ),
    (
        "surge_mailbox_commands",
        "Commands taken from the workers' mailboxes (cross-thread sends, publishes, closes)",
    ),
    ("surge_timers_armed", "Timer wheel entries armed"),
    (
        "surge_timers_fired",
        "Timer wheel entries expired (stale ones included)",
    ),
    (
        "surge_uring_recv_enobufs",
        "io_uring receives that found no provided buffer",
    ),
    (
        "surge_uring_cq_overflow",
        "io_uring completions the kernel could not post at once (CQ ring overflow)",
    ),
];

impl WorkerMetrics {
    /// The counters of [`PLAIN`], in its order.
    fn plain(&self) -> [&AtomicU64; PLAIN.len()] {
        [
            &self.messages_in,
            &self.bytes_in,
            &self.messages_out,
            &self.bytes_out,
            &self.backpressure_drops,
            &self.backpressure_closes,
            &self.mailbox_commands,
            &self.timers_armed,
            &self.timers_fired,
            &self.recv_enobufs,
            &self.cq_overflow,
        ]
    }
}

/// `surge_deflate_bytes_total{direction, form}`.
fn deflate(e: &mut DescriptorEncoder, s: &Shared) -> std::fmt::Result {
    let mut family = e.encode_descriptor(
        "surge_deflate_bytes",
        "permessage-deflate bytes through the compressors and inflaters, by direction and form",
        None,
        MetricType::Counter,
    )?;
    let forms = [
        ("out", "plain"),
        ("out", "compressed"),
        ("in", "compressed"),
        ("in", "plain"),
    ];
    for (i, (direction, form)) in forms.into_iter().enumerate() {
        let labels = [("direction", direction), ("form", form)];
        let n = sum(s, |w| &w.deflate[i]);
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Reads the workers' counters at each scrape.
#[derive(Debug)]
struct WorkersCollector {
    shared: Arc<Shared>,
}

/// The sum over workers of one counter.
fn sum(shared: &Shared, f: impl Fn(&WorkerMetrics) -> &AtomicU64) -> u64 {
    shared.metrics.iter().map(|w| get(f(w))).sum()
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = ConstCounter::new(v);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = ConstGauge::new(v as i64);
    m.encode(enc.encode_descriptor(name, help, None, m.metric_type())?)
}

/// A counter with one label, one sample per value of it.
fn labelled(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(String, u64)],
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in samples {
        let labels = [(label, value.as_str())];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Samples of a labelled counter array: the listed values, then `other`.
fn by_value(
    shared: &Shared,
    values: &[u16],
    f: impl Fn(&WorkerMetrics) -> &[AtomicU64],
) -> Vec<(String, u64)> {
    (0..=values.len())
        .map(|i| {
            let name = values.get(i).map_or("other".to_string(), u16::to_string);
            (name, sum(shared, |w| &f(w)[i]))
        })
        .collect()
}

impl Collector for WorkersCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &*self.shared;
        let e = &mut enc;
        // Closes before opens: a close counted between the two reads cannot make the gauge of
        // open connections negative.
        let closes = by_value(s, &CLOSE_CODES, |w| &w.closed);
        let opened = sum(s, |w| &w.handshakes) + sum(s, |w| &w.dialed);
        let closed: u64 = closes.iter().map(|(_, n)| n).sum();
        gauge(
            e,
            "surge_connections_open",
            "Open WebSocket connections (upgraded or dialed, not yet closed)",
            opened.saturating_sub(closed),
        )?;
        gauge(
            e,
            "surge_connections_held",
            "Connections the workers hold, handshakes and closing ones included",
            sum(s, |w| &w.connections_held),
        )?;
        gauge(
            e,
            "surge_mailbox_depth",
            "Commands waiting in the workers' mailboxes (sends, closes, publishes from other threads)",
            s.mailboxes.iter().map(|m| m.depth() as u64).sum(),
        )?;
        counter(
            e,
            "surge_connections_accepted",
            "TCP connections accepted",
            sum(s, |w| &w.accepted),
        )?;
        counter(
            e,
            "surge_handshakes_completed",
            "WebSocket upgrades completed (101 sent)",
            sum(s, |w| &w.handshakes),
        )?;
        counter(
            e,
            "surge_connections_dialed",
            "Outgoing WebSocket connections opened",
            sum(s, |w| &w.dialed),
        )?;
        labelled(
            e,
            "surge_rejections",
            "HTTP requests answered with an error status instead of an upgrade, by status",
            "status",
            &by_value(s, &STATUSES, |w| &w.rejected),
        )?;
        labelled(
            e,
            "surge_closes",
            "WebSocket connections closed, by close code (1006: without a close frame)",
            "code",
            &closes,
        )?;
        // Counted where they happen (shared atomics, touched only on a refusal).
        let (over_conns, over_rate) = s.limiter.as_ref().map_or((0, 0), |l| {
            (
                l.refused_connections.load(Ordering::Relaxed),
                l.refused_handshake_rate.load(Ordering::Relaxed),
            )
        });
        labelled(
            e,
            "surge_client_limit_refusals",
            "Connections refused by a per-client limit (ServerConfig::client_limits), by limit",
            "limit",
            &[
                ("connections".to_string(), over_conns),
                ("handshake_rate".to_string(), over_rate),
            ],
        )?;
        counter(
            e,
            "surge_proxy_header_refusals",
            "Connections closed for a malformed, oversized or missing PROXY protocol header",
            s.proxy_refused.load(Ordering::Relaxed),
        )?;
        for (i, (name, help)) in PLAIN.iter().enumerate() {
            counter(e, name, help, sum(s, |w| w.plain()[i]))?;
        }
        deflate(e, s)?;
        let buckets: Vec<(f64, u64)> = (0..TURN_BUCKETS)
            .map(|i| {
                let upper = if i + 1 == TURN_BUCKETS {
                    f64::INFINITY
                } else {
                    (1u64 << i) as f64 / 1e6
                };
                (upper, sum(s, |w| &w.turns[i]))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let seconds = sum(s, |w| &w.turn_micros) as f64 / 1e6;
        let mut turns = e.encode_descriptor(
            "surge_loop_turn_seconds",
            "Work of one event-loop turn, from the end of its poll to the end of its flush",
            None,
            MetricType::Histogram,
        )?;
        turns.encode_histogram::<NoLabelSet>(seconds, count, &buckets, None)
    }
}
