//! Per-client limits at the worker (the shared table is `server/limits.rs`'s): a connection is
//! counted once its client's address is known (at accept, when the driver has asked for the
//! peer, or after its PROXY header), refused over a limit, and released when it is removed.

use std::sync::Arc;

use super::*;
use crate::handler::Handler;
use crate::handshake::Rejection;
use crate::ratelog::RateLog;
use crate::server::limits::{ClientLimiter, LimitAction, Refusal};
use crate::server::proxy::ProxyProtocol;
use crate::server::registry::ConnId;
use crate::server::Shared;

/// A worker's part of admission: the shared per-client table, and the rate limits of the log
/// lines about refused connections.
#[derive(Debug)]
pub(super) struct Admission {
    pub(super) limiter: Option<Arc<ClientLimiter>>,
    /// The server's counters (`Shared::proxy_refused`: connections closed for a bad or missing
    /// PROXY header, all workers').
    pub(super) shared: Arc<Shared>,
    pub(super) proxy_log: RateLog,
    pub(super) limit_log: RateLog,
}

impl Admission {
    pub(super) fn new(shared: &Arc<Shared>) -> Admission {
        Admission {
            limiter: shared.limiter.clone(),
            shared: Arc::clone(shared),
            proxy_log: RateLog::default(),
            limit_log: RateLog::default(),
        }
    }
}

impl<H: Handler> Worker<H> {
    /// Counts a connection in the handshake stage against the per-client limits once its
    /// client's address is known: the PROXY header's, else the socket's peer (the driver's, or
    /// `getpeername`). Not yet (a PROXY header or the driver's peer query is still awaited),
    /// already counted, no limit set, or no address to count (a direct descriptor on a kernel
    /// without the peer query): `true`. Returns `false` when the connection was refused: closed,
    /// or answered 429 and draining.
    pub(super) fn count_client(&mut self, id: ConnId) -> bool {
        let ctx = &mut self.ctx;
        if ctx.admission.limiter.is_none() {
            return true;
        }
        let Some(c) = ctx.conns.get(id) else {
            return false;
        };
        let Stage::Handshake(hs) = &c.stage else {
            return true;
        };
        if c.has(Flag::Counted) || hs.proxy != ProxyProtocol::Off || hs.peer_pending {
            return true;
        }
        let Some(addr) = hs.peer.or_else(|| c.socket.peer_addr().ok()) else {
            return true;
        };
        let Some(limiter) = ctx.admission.limiter.as_deref() else {
            return true;
        };
        let refusal = match limiter.admit(addr, ctx.now) {
            Ok(()) => {
                ctx.keep_peer(id, addr);
                if let Some(c) = ctx.conns.get_mut(id) {
                    c.set(Flag::Counted);
                }
                return true;
            }
            Err(r) => r,
        };
        let limits = &ctx.cfg.client_limits;
        if let Some(quiet) = ctx.admission.limit_log.ready(ctx.now, 1) {
            let why = match refusal {
                Refusal::Connections => format!(
                    "the client has {} connections open (client_limits.max_connections)",
                    limits.max_connections.unwrap_or(0)
                ),
                Refusal::HandshakeRate => format!(
                    "the client started {} connections in the last second \
                     (client_limits.max_handshakes_per_sec)",
                    limits.max_handshakes_per_sec.unwrap_or(0)
                ),
            };
            eprintln!(
                "surge: refused a connection from {addr}: {why}{}",
                RateLog::more(quiet)
            );
        }
        match limits.action {
            LimitAction::Close => ctx.remove(id),
            LimitAction::Reject { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let body = match refusal {
                    Refusal::Connections => "too many connections from this address\n",
                    Refusal::HandshakeRate => "too many new connections from this address\n",
                };
                let rejection = Rejection {
                    status: 429,
                    headers: vec![("Retry-After".into(), secs.max(1).to_string())],
                    body: body.into(),
                };
                self.reject(id, &rejection);
            }
        }
        false
    }
}

impl<D> WorkerCtx<D> {
    /// A connection being removed: releases its count, if it was counted (before its kept
    /// address goes).
    pub(super) fn release_client(&self, id: ConnId) {
        let Some(limiter) = self.admission.limiter.as_deref() else {
            return;
        };
        if !self.conns.get(id).is_some_and(|c| c.has(Flag::Counted)) {
            return;
        }
        if let Some(addr) = self.kept_peer(id) {
            limiter.release(addr);
        }
    }
}
