//! Server settings. Every limit has a default, documented on its field.

use std::net::SocketAddr;
use std::time::Duration;

use crate::handshake::{HandshakeConfig, OriginPolicy, DEFAULT_MAX_HEAD_SIZE};
use crate::proto::{self, CloseCode};

pub use crate::driver::backend::{Backend, UringRecv};
pub use crate::server::limits::{ClientLimits, LimitAction};
pub use crate::server::metrics::MetricsConfig;
pub use crate::server::proxy::ProxyProtocol;

/// What happens when a connection's buffered (unsent) bytes would exceed
/// [`ServerConfig::max_backpressure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackpressurePolicy {
    /// Refuse further data messages: the send returns [`SendStatus::Dropped`](crate::SendStatus)
    /// and the connection's and the worker's dropped counters grow. Control frames (pong, close) are
    /// never dropped.
    Drop,
    /// Start the close handshake with this code (1008 policy violation or 1013 try again later).
    Close(CloseCode),
}

/// What the server does when a handler callback panics (see [`ServerConfig::panic_policy`]).
///
/// A callback runs inside the worker's event loop, in the middle of its connections' state: a
/// panic leaves that state unknown, so the worker is not resumed. Before, the worker's thread died
/// silently: its connections got EOF without a close frame, the other workers went on with less
/// capacity and nothing restarted it. Now one log line names the worker and the panic, and the
/// whole server follows the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PanicPolicy {
    /// Abort the process (as native uWebSockets does on an exception) so that a supervisor
    /// (systemd, Kubernetes) restarts it whole, at once.
    #[default]
    Abort,
    /// Shut the whole server down: every other worker closes its connections with 1001, as
    /// [`ServerHandle::shutdown`](crate::ServerHandle::shutdown) does; the panicking worker's own
    /// connections are dropped without a close frame (its state is not trusted any more).
    /// [`ServerHandle::join`](crate::ServerHandle::join) then returns an error naming the panic. For a program that
    /// embeds the server and restarts it itself, and for tests.
    Shutdown,
}

/// Server settings: pub fields, `Default` for everything.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Addresses to listen on (default `127.0.0.1:9001`). Every worker listens on each of them with
    /// its own `SO_REUSEPORT` socket; port 0 picks one port for all workers.
    pub bind: Vec<SocketAddr>,
    /// Addresses to listen on with TLS (`wss://`; default none), as `bind` does, beside the plain
    /// ones. Needs [`tls`](Self::tls).
    pub tls_bind: Vec<SocketAddr>,
    /// Certificates and TLS settings for the `tls_bind` listeners (default none; see
    /// [`TlsConfig`](crate::tls::TlsConfig)); swapped at run time by
    /// [`ServerHandle::reload_tls`](crate::ServerHandle::reload_tls).
    pub tls: Option<crate::tls::TlsConfig>,
    /// Worker threads, one event loop each (default: available parallelism).
    pub workers: usize,
    /// Whether connections start with a PROXY protocol header (v1 or v2) naming the client, as a
    /// load balancer in front writes it (HAProxy `send-proxy`/`send-proxy-v2`): for every
    /// listener in `bind` but those named in `proxy_protocol_listeners` (default
    /// [`ProxyProtocol::Off`]). With a header, [`Request::peer`](crate::Request::peer),
    /// [`Conn::peer_addr`](crate::Conn::peer_addr) and the per-client limits see the client's
    /// address and port instead of the balancer's (a v2 `LOCAL` header, or an `UNKNOWN`, unix or
    /// unspecified one, keeps the socket's). The header must arrive within
    /// `handshake_timeout`, with the request; a malformed one, one too large, or none where
    /// required closes the connection without a response, with a rate-limited log line.
    pub proxy_protocol: ProxyProtocol,
    /// Listeners whose PROXY protocol setting differs from `proxy_protocol`: each address as
    /// written in `bind` or `tls_bind` (port 0 included), with its setting (default none). E.g. a
    /// public port behind the balancer (`Required`) and an internal port clients reach directly
    /// (`Off`). An address in neither fails the start.
    pub proxy_protocol_listeners: Vec<(SocketAddr, ProxyProtocol)>,
    /// Largest PROXY protocol v2 header, its 16 fixed bytes, addresses and TLVs included
    /// (default 536, the size the protocol's specification lets a receiver read at once; at
    /// least 108). A v1 header is at most 107 bytes by the specification.
    pub max_proxy_header_size: usize,
    /// Per-client limits, across workers: concurrent connections and handshakes per second per
    /// client address (IPv6: per /64), and what a refused connection gets (default: no limit;
    /// see [`ClientLimits`]). The client is the PROXY protocol header's when there is one.
    pub client_limits: ClientLimits,
    /// Pin worker `i` to CPU `i % cpus` (default off).
    pub pin_cpus: bool,
    /// The kernel interface (default [`Backend::Auto`]). The `SURGE_BACKEND` environment variable
    /// (`epoll`, `io_uring`, `auto`) overrides it.
    pub backend: Backend,
    /// `listen(2)` backlog per worker socket: connections the kernel completes and queues until the
    /// worker accepts them (default 4096; Linux caps it at `net.core.somaxconn`, 4096 by default
    /// since 5.4). A connect arriving at a full queue is dropped and retried by the client's TCP
    /// only after 1 s, then 3 s, 7 s...: a burst of connects (a load generator, the reconnect
    /// storm after a deploy) larger than the queue waits seconds. With 1024, 5,000 connects at
    /// once at one epoll worker overflowed it by 1,200-2,600 (docs/BENCHMARKS.md, "Connect storm").
    pub backlog: i32,
    /// Connections per worker, handshakes included; more are accepted and closed at once
    /// (default 100_000).
    pub max_connections_per_worker: usize,
    /// Time for a client to send its complete upgrade request (default 10 s); on a TLS listener
    /// the TLS handshake counts in it.
    pub handshake_timeout: Duration,
    /// Largest upgrade request header block; beyond it, 431 (default 8 KiB).
    pub max_handshake_size: usize,
    /// Which `Origin` values are accepted (default: same host, as gorilla; 403 otherwise).
    pub origin: OriginPolicy,
    /// Subprotocols in preference order (default none). The first one the client offers is selected
    /// unless the handler picks another.
    pub subprotocols: Vec<String>,
    /// Most bytes buffered for sending per connection before the policy applies (default 1 MiB).
    /// A message is always accepted into an empty queue, so one message may exceed it. Counted
    /// as memory: the queued bytes (pings and pongs included; close frames are never refused)
    /// plus 32 bytes per entry of the queue's ring (a shared frame reference or a chunk).
    pub max_backpressure: usize,
    /// What happens beyond `max_backpressure` (default [`BackpressurePolicy::Drop`]).
    pub backpressure_policy: BackpressurePolicy,
    /// A connection whose write queue waits this long without a byte written (its peer reads
    /// nothing) is closed: `on_close` with 1008 at once, the socket closed without a close
    /// handshake, a rate-limited log line (default 30 s; `None`: never). The check costs nothing
    /// while queues drain: one wheel entry per waiting connection, re-armed on progress.
    pub write_stall_timeout: Option<Duration>,
    /// What a panic in a handler callback does (default [`PanicPolicy::Abort`], with a log line).
    pub panic_policy: PanicPolicy,
    /// Size of a pooled write chunk and of the message writer's buffer (default 16 KiB).
    pub write_chunk_size: usize,
    /// Size of the worker's one read buffer (default 64 KiB).
    pub read_buffer_size: usize,
    /// Free chunks a worker keeps in each pool at most (default 256, i.e. up to 4 MiB per pool);
    /// the buffer trim gives back what recent traffic did not need.
    pub pool_max_cached: usize,
    /// Every this long, each worker gives back the buffers it kept for reuse but did not need
    /// during the last interval (default 2 s; `None`: never): free chunks of its pools (the
    /// fewest that sat unused all interval), and on io_uring the provided receive buffers past
    /// twice the most one loop turn used (their pages dropped), then the allocator's free pages
    /// (`malloc_trim` on glibc). So memory follows the working set and goes back within two
    /// intervals after the load drops. A trim costs nothing per message; an idle worker holding
    /// nothing wakes for none.
    pub buffer_trim_interval: Option<Duration>,
    /// io_uring: the most provided receive buffers (16 KiB each) in a worker's buffer ring
    /// (default 64, i.e. 1 MiB; at most 4096). The ring starts with up to 64 and grows on
    /// `ENOBUFS` to this; past it, a connection whose receive found no buffer waits in a queue
    /// (its bytes stay in the socket, as with epoll) and a few such connections are re-armed
    /// each loop turn, as buffers come back. Bounds what one loop turn receives, hence the
    /// memory a worker holds under load (docs/BENCHMARKS.md, "Memory under load"). No effect on
    /// epoll. Where the kernel consumes provided buffers incrementally (6.12 and later) and this
    /// is at least 8, the same bytes are in an eighth as many 128 KiB buffers, each receive
    /// packed after the previous one, so that a 16 KiB message and its frame header arrive in one
    /// receive (`SURGE_URING_NO_INC=1` keeps 16 KiB buffers, to compare).
    pub uring_max_recv_buffers: usize,
    /// io_uring with direct descriptors: slots of each ring's descriptor table (default `None`:
    /// `RLIMIT_NOFILE`, the most the kernel allows one table, or fewer when
    /// `max_connections_per_worker` needs fewer). A worker whose connections fill its ring's table
    /// opens another ring with a table of its own (up to `max_connections_per_worker` in all, 256
    /// rings at most), so one process holds more connections than its fd limit times its workers
    /// (docs/ENGINE.md, "Rings"). Smaller tables mean more rings (each with its own queues,
    /// 256 KiB once used, and provided buffers); mostly for tests. No effect on epoll, which is bounded by the fd limit.
    pub uring_ring_slots: Option<u32>,
    /// Most bytes a worker's connections may hold together for messages partly received
    /// (default 256 MiB): a message trickling in is held until it is whole, up to
    /// `proto.max_message_size` each. Past it, the connections holding the most are failed with
    /// 1013 (try again later), a close frame and `on_close` as for a protocol error, until the
    /// total is back under it (one log line a second at most says so). Counted: assembly buffers
    /// (their capacity) and the inflater a compressed message streamed in pieces holds between
    /// reads. The default lets 16 messages of the default 16 MiB limit assemble at once per
    /// worker; `usize::MAX` turns it off.
    pub max_assembly_per_worker: usize,
    /// Set `TCP_NODELAY` on accepted sockets (default on). It is set on the listening sockets,
    /// which Linux copies to each accepted one: no syscall per connection.
    pub tcp_nodelay: bool,
    /// io_uring: accept into direct descriptors (slots of each worker ring's file table) where the
    /// kernel supports them (default on). Connections then use no process file descriptors, so one
    /// process holds more connections than its fd limit (each worker's table holds up to
    /// `min(max_connections_per_worker, RLIMIT_NOFILE)` slots). There is no `getpeername` without
    /// a process fd: the peer's address is asked through the ring right after the accept
    /// (`getsockopt(SOL_SOCKET, SO_PEERNAME)` as an `IORING_OP_URING_CMD`, kernel 6.7+), linked
    /// ahead of the first receive, so [`Request::peer`](crate::Request::peer) has it in
    /// `on_upgrade`/`on_http`. After the upgrade [`Conn::peer_addr`](crate::Conn::peer_addr)
    /// returns the same address: an IPv4 one is packed into 6 bytes of the connection's entry
    /// (which grew from 208 to 216 B), an IPv6 one kept in a per-worker side table. On a kernel
    /// without that command (the probe checks it on a loopback connection; one log line says why)
    /// both are `None` on direct descriptors. Off, or where the kernel refuses direct descriptors,
    /// connections use ordinary descriptors. No effect on epoll.
    pub uring_direct_descriptors: bool,
    /// io_uring: how connections receive (default [`UringRecv::Multishot`]; the `SURGE_URING_RECV`
    /// environment variable overrides it). `Multishot` keeps a multishot receive armed per
    /// connection: the fewest trips through the ring, the most kernel memory per idle connection.
    /// `PollThenRecv` keeps only a multishot poll armed and receives on readiness: kernel memory
    /// per idle connection close to epoll's, one more completion per arrival (see
    /// docs/BENCHMARKS.md, "io_uring vs epoll", for both measured). No effect on epoll.
    pub uring_recv: UringRecv,
    /// Spin with non-blocking polls for this long before blocking (default off). Trades a core for
    /// wake-up latency (a blocked loop takes tens of microseconds to wake).
    pub busy_poll: Option<Duration>,
    /// How long [`ServerHandle::shutdown`](crate::ServerHandle::shutdown) waits for close handshakes
    /// before dropping the remaining connections (default 5 s).
    pub shutdown_timeout: Duration,
    /// Protocol settings: maximum frame and message size (16 MiB each), frames per message
    /// (2^17), close-handshake timeout (5 s, also the time to wait for the peer's FIN after ours),
    /// idle timeout with automatic ping (off) and pong deadline (10 s), automatic pong (on),
    /// fragment streaming (off). The role is always server.
    pub proto: proto::Config,
    /// permessage-deflate (RFC 7692): the mode to negotiate (default `Disabled`), the minimum size
    /// below which messages go uncompressed (64 B) and the level (1). The largest inflated message is
    /// the smaller of `deflate.max_decompressed` and `proto.max_message_size`.
    pub deflate: proto::DeflateConfig,
    /// Prometheus metrics: where they are served (default: nowhere; see
    /// [`MetricsConfig`] and docs/OPERATIONS.md).
    pub metrics: MetricsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: vec![SocketAddr::from(([127, 0, 0, 1], 9001))],
            tls_bind: Vec::new(),
            tls: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            proxy_protocol: ProxyProtocol::Off,
            proxy_protocol_listeners: Vec::new(),
            max_proxy_header_size: 536,
            client_limits: ClientLimits::default(),
            pin_cpus: false,
            backend: Backend::Auto,
            backlog: 4096,
            max_connections_per_worker: 100_000,
            handshake_timeout: Duration::from_secs(10),
            max_handshake_size: DEFAULT_MAX_HEAD_SIZE,
            origin: OriginPolicy::SameHost,
            subprotocols: Vec::new(),
            max_backpressure: 1 << 20,
            backpressure_policy: BackpressurePolicy::Drop,
            write_stall_timeout: Some(Duration::from_secs(30)),
            panic_policy: PanicPolicy::Abort,
            write_chunk_size: 16 * 1024,
            read_buffer_size: 64 * 1024,
            pool_max_cached: 256,
            buffer_trim_interval: Some(Duration::from_secs(2)),
            uring_max_recv_buffers: 64,
            uring_ring_slots: None,
            max_assembly_per_worker: 256 << 20,
            tcp_nodelay: true,
            uring_direct_descriptors: true,
            uring_recv: UringRecv::Multishot,
            busy_poll: None,
            shutdown_timeout: Duration::from_secs(5),
            proto: proto::Config::server(),
            deflate: proto::DeflateConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Defaults, listening on `addr`.
    pub fn bind(addr: SocketAddr) -> Self {
        ServerConfig {
            bind: vec![addr],
            ..ServerConfig::default()
        }
    }

    /// The handshake part of the settings.
    pub(crate) fn handshake(&self) -> HandshakeConfig {
        HandshakeConfig {
            max_request_size: self.max_handshake_size,
            origin: self.origin.clone(),
            subprotocols: self.subprotocols.clone(),
        }
    }
}
