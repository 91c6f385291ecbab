//! What both halves of a blocking connection share: the protocol state and the write stream, each
//! behind its lock, and what goes with them.
//!
//! Two locks, never held across each other's I/O: `proto` guards the protocol state (decoder,
//! encoder, close handshake) and is held only to decode or encode, never while blocked on the
//! stream; `out` guards the write stream and is held while a frame is written. A writer takes `out`
//! then `proto`, encodes, drops `proto` and writes. The reader takes `proto` alone to decode, and
//! `out` only to send what decoding produced (the close echo, the close that fails the
//! connection). So a reader is never stuck behind a writer that is blocked on a slow peer, unless
//! it has something to send itself, and frames are always written whole.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::send::OutSide;
use super::Error;
use crate::proto::{self, DeflateConfig, DeflateParams, Role};

/// permessage-deflate as negotiated for a connection (fixed after the handshake).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Negotiated {
    pub(crate) params: DeflateParams,
    /// `min_size`, `level` (the initial one), `libdeflate`; `max_decompressed` caps the read limit.
    pub(crate) cfg: DeflateConfig,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a handler must not make the other half unusable: the state stays consistent
    // because every critical section finishes its update before anything can panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The protocol state, behind the `proto` lock.
pub(super) struct ProtoSide {
    pub(super) conn: proto::Session,
    /// Send-side settings (role, frame size 0: a message is one frame unless written in pieces).
    pub(super) cfg: proto::Config,
}

pub(super) struct Shared<S> {
    pub(super) proto: Mutex<ProtoSide>,
    pub(super) out: Mutex<OutSide<S>>,
    pub(super) role: Role,
    pub(super) subprotocol: Option<String>,
    pub(super) local: Option<SocketAddr>,
    pub(super) peer: Option<SocketAddr>,
    pub(super) write_buffer_size: usize,
    /// permessage-deflate, when negotiated.
    pub(super) deflate: Option<Negotiated>,
}

/// Sets the stream's timeout for an operation that must end by `deadline`. Streams without timeouts
/// ignore deadlines (`set_*_deadline` refuses them up front).
pub(super) fn apply_deadline(
    deadline: Option<Instant>,
    timeout_set: &mut bool,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> Result<(), Error> {
    let timeout = match deadline {
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            Some(left)
        }
        None if *timeout_set => None,
        None => return Ok(()),
    };
    match set(timeout) {
        Ok(()) => {
            *timeout_set = timeout.is_some();
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
        Err(e) => Err(Error::Io(e)),
    }
}
