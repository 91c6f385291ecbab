//! surge: a thread-per-core WebSocket server engine.
//!
//! Layers, bottom up (see docs/ARCHITECTURE.md):
//! - [`proto`]: the sans-IO RFC 6455 core (frames, assembly, close handshake), no sockets, no clock.
//! - [`handshake`]: the sans-IO HTTP/1.1 upgrade (server and client side).

#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod proto;
