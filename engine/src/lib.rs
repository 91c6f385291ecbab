#![doc = include_str!("../../README.md")]
//!
//! ## The crate's layers
//!
//! Bottom up (docs/ARCHITECTURE.md):
//! - [`proto`]: the sans-IO RFC 6455 core (frames, assembly, close handshake), no sockets, no clock.
//! - [`handshake`]: the sans-IO HTTP/1.1 upgrade (server and client side).
//! - [`server`]: thread-per-core workers over io_uring or epoll, the [`Handler`] callbacks,
//!   [`WorkerCtx`] (timers, commands, topics), [`ConnHandle`] and [`Publisher`] for other threads;
//!   [`prepared`]: messages encoded once for many connections; [`tls`]: `wss://` settings.
//! - [`blocking`]: gorilla's blocking model over any `Read + Write` stream.

pub mod blocking;
pub(crate) mod buf;
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
