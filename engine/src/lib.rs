//! surge: a thread-per-core WebSocket server engine.
//!
//! Layers, bottom up (see docs/ARCHITECTURE.md):
//! - [`proto`]: the sans-IO RFC 6455 core (frames, assembly, close handshake), no sockets, no clock.
//! - [`handshake`]: the sans-IO HTTP/1.1 upgrade (server and client side).
//! - [`buf`]: per-worker chunk pools and the per-connection write queue.
//! - [`server`]: thread-per-core workers (epoll through mio), the [`Handler`] callbacks, timers,
//!   topics and cross-thread handles; [`prepared`]: messages encoded once for many connections.

pub mod blocking;
pub mod buf;
pub(crate) mod driver;
/// The fuzz targets' checks (built for `cargo fuzz`, which sets `--cfg fuzzing`, and for tests).
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod prepared;
pub mod proto;
mod ratelog;
pub mod server;
pub use server::handler;
pub use server::metrics;
pub mod signal;
pub mod tls;

pub use handler::{Accept, CloseInfo, Handler, SendStatus, Upgrade};
pub use handshake::{Rejection, Request, Response};
pub use prepared::PreparedMessage;
pub use proto::{CloseCode, Message, MessageKind};
pub use server::metrics::{Metrics, MetricsConfig};
pub use server::{
    Backend, BackpressurePolicy, Client, ClientLimiter, ClientLimits, Command, Conn, ConnHandle,
    ConnId, ConnectError, ConnectRequest, FanoutBridge, HandleError, LimitAction, MessageWriter,
    PanicPolicy, PendingUpgrade, ProxyProtocol, Publisher, Server, ServerConfig, ServerHandle,
    ShutdownTrigger, Timer, TimerId, UringRecv, WorkerCtx,
};
