//! TLS on the server's `tls_bind` listeners, through rustls's unbuffered (sans-IO) API.
//!
//! Received records are decrypted from the bytes the driver lent (the io_uring buffer or the
//! epoll read buffer) and their plaintext goes to the connection's stage as plain bytes would
//! (`Worker::stage_input`: the upgrade request, frames). Only a record split across reads is kept,
//! in a pooled chunk, until it is whole. Outgoing bytes are queued in plaintext as on a plain
//! connection and encrypted at flush time (`WriteQueue::seal`), all of a turn's frames in as few
//! records as fit, into pooled chunks: still one write per connection per turn. Handshake
//! records rustls emits go in front of plaintext not yet encrypted (`WriteQueue::push_sealed`).
//!
//! The state lives beside the slot (`TlsTable`, keyed by `ConnId`; the slot has only
//! `Flag::Tls`), so plain connections pay nothing and the slot does not grow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, WriteTraffic};

use super::*;
use crate::buf::{ChunkPool, WriteQueue};
use crate::handler::Handler;
use crate::proto::CloseCode;
use crate::ratelog::RateLog;
use crate::server::registry::ConnId;
use crate::tls::sni::{client_hello_sni, Hello};
use crate::tls::TlsInfo;

/// One connection's TLS state.
pub(super) struct TlsConn {
    conn: UnbufferedServerConnection,
    /// Bytes of a record not yet whole (a pooled chunk; none held between whole records).
    held: Vec<u8>,
    /// The ClientHello's server name, once its first record was seen.
    server_name: Option<String>,
    hello_seen: bool,
    close_notify_sent: bool,
    /// Already logged as failed (`tls_failed`).
    failed: bool,
}

/// A worker's TLS connections, log and decryption scratch.
#[derive(Default)]
pub(super) struct TlsTable {
    conns: HashMap<ConnId, Box<TlsConn>>,
    /// Plaintext of one read, handed to the stage (the worker's, not a connection's).
    plain: Vec<u8>,
    /// Rate-limited lines about failed TLS connections.
    pub(super) log: RateLog,
}

impl std::fmt::Debug for TlsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTable")
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl TlsTable {
    /// A connection is gone: its TLS state and any partial record go. One rate-limited line
    /// when it ended before its handshake completed (a handshake timeout, a peer gone) or inside
    /// a record (truncated), unless a TLS error already said why.
    pub(super) fn forget(&mut self, id: ConnId, pool: &mut ChunkPool, now: Instant, worker: usize) {
        let Some(t) = self.conns.remove(&id) else {
            return;
        };
        let why = if t.failed {
            None
        } else if t.conn.is_handshaking() {
            Some("before its TLS handshake completed (handshake timeout, or the peer left)")
        } else if !t.held.is_empty() {
            Some("inside a TLS record (truncated)")
        } else {
            None
        };
        if let Some(why) = why {
            if let Some(quiet) = self.log.ready(now, 1) {
                eprintln!(
                    "surge: worker {worker}: a connection ended {why}{}",
                    RateLog::more(quiet)
                );
            }
        }
        if t.held.capacity() > 0 {
            pool.put(t.held);
        }
    }

    /// What `Request::tls` tells (asked once, at the upgrade: the server name moves into the
    /// request, so an idle connection does not keep it).
    pub(super) fn info(&mut self, id: ConnId) -> Option<Box<TlsInfo>> {
        let t = self.conns.get_mut(&id)?;
        Some(Box::new(TlsInfo {
            server_name: t.server_name.take(),
            alpn: t.conn.alpn_protocol().map(<[u8]>::to_vec),
            version: t.conn.protocol_version(),
        }))
    }
}

/// Why a TLS connection failed.
enum Failure {
    Tls(rustls::Error),
    Encrypt(EncryptError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Tls(e) => write!(f, "{e}"),
            Failure::Encrypt(e) => write!(f, "{e}"),
        }
    }
}

impl<H: Handler> Worker<H> {
    /// A connection accepted on a TLS listener: its state, with the settings current now.
    /// Returns false if it was closed.
    pub(super) fn tls_admit(&mut self, id: ConnId) -> bool {
        let ctx = &mut self.ctx;
        let made = match self.shared.tls.get() {
            Some(cfg) => UnbufferedServerConnection::new(Arc::clone(&cfg)).map_err(Failure::Tls),
            None => Err(Failure::Tls(rustls::Error::General(
                "no TLS settings".into(),
            ))),
        };
        let conn = match made {
            Ok(c) => c,
            Err(e) => {
                if let Some(quiet) = ctx.tls.log.ready(ctx.now, 1) {
                    eprintln!(
                        "surge: worker {}: TLS connection refused ({e}){}",
                        ctx.index,
                        RateLog::more(quiet)
                    );
                }
                ctx.remove(id);
                return false;
            }
        };
        let Some(c) = ctx.conns.get_mut(id) else {
            return false;
        };
        c.set(Flag::Tls);
        ctx.tls.conns.insert(
            id,
            Box::new(TlsConn {
                conn,
                held: Vec::new(),
                server_name: None,
                hello_seen: false,
                close_notify_sent: false,
                failed: false,
            }),
        );
        true
    }

    /// Received bytes of a TLS connection (not draining): decrypted, then to the stage.
    pub(super) fn tls_input(&mut self, id: ConnId, input: &mut [u8]) {
        let ctx = &mut self.ctx;
        let Some(mut t) = ctx.tls.conns.remove(&id) else {
            return;
        };
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let mut plain = std::mem::take(&mut ctx.tls.plain);
        let mut held = std::mem::take(&mut t.held);
        let using_held = !held.is_empty();
        let buf: &mut [u8] = if !using_held {
            &mut *input
        } else {
            held.extend_from_slice(input);
            &mut held
        };
        if !t.hello_seen {
            match client_hello_sni(buf) {
                Hello::Partial => {}
                Hello::Done(name) => {
                    t.hello_seen = true;
                    t.server_name = name;
                }
            }
        }
        let mut start = 0;
        let mut peer_closed = false;
        let mut failed = None;
        let mut wrote = false;
        loop {
            let status = t.conn.process_tls_records(&mut buf[start..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(s) => s,
                Err(e) => {
                    failed = Some(Failure::Tls(e));
                    break;
                }
            };
            let mut done = false;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(rec) => plain.extend_from_slice(rec.payload),
                            Err(e) => {
                                failed = Some(Failure::Tls(e));
                                break;
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    if let Err(e) = encode(&mut e, &mut c.queue, &mut ctx.chunks) {
                        failed = Some(Failure::Tls(e));
                    }
                    wrote = true;
                }
                // Queued: the flush sends it, in order.
                ConnectionState::TransmitTlsData(tx) => tx.done(),
                ConnectionState::PeerClosed => peer_closed = true,
                ConnectionState::Closed => done = true,
                // Need more bytes (handshake or a partial record), or all were read.
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => done = true,
                // Early data is not enabled; anything newer: stop here.
                _ => done = true,
            }
            start += discard;
            if done || failed.is_some() {
                break;
            }
        }
        // Keep only a record not yet whole.
        let total = buf.len();
        if using_held {
            held.drain(..start.min(total));
        } else if start < total && failed.is_none() {
            held = ctx.chunks.get();
            held.extend_from_slice(&input[start..]);
        }
        if held.is_empty() && held.capacity() > 0 {
            ctx.chunks.put(std::mem::take(&mut held));
        }
        t.held = held;
        ctx.tls.conns.insert(id, t);
        if wrote {
            ctx.mark_dirty(id);
        }
        if !plain.is_empty() {
            self.stage_input(id, &mut plain);
        }
        plain.clear();
        self.ctx.tls.plain = plain;
        if let Some(e) = failed {
            self.tls_failed(id, &e);
        } else if peer_closed && self.ctx.conns.get(id).is_some() {
            // close_notify: the peer sends nothing more, as at EOF; ours goes out first.
            let open = !matches!(
                self.ctx.conns.get(id).map(|c| &c.stage),
                Some(Stage::Draining)
            );
            if let Some(quiet) = open
                .then(|| self.ctx.tls.log.ready(self.ctx.now, 1))
                .flatten()
            {
                {
                    eprintln!(
                        "surge: worker {}: a TLS peer sent close_notify without closing its \
                         WebSocket: closed{}",
                        self.ctx.index,
                        RateLog::more(quiet)
                    );
                }
            }
            self.tls_close_notify(id);
            self.on_eof(id);
        }
    }

    /// Before a write: encrypts the plaintext queued since the last one. Returns false if the
    /// connection failed (and was closed).
    pub(super) fn tls_seal(&mut self, id: ConnId) -> bool {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return false;
        };
        if !c.queue.has_unsealed() {
            return true;
        }
        let Some(t) = ctx.tls.conns.get_mut(&id) else {
            return true;
        };
        match seal(&mut t.conn, &mut c.queue, &mut ctx.chunks) {
            Ok(()) => true,
            Err(e) => {
                self.tls_failed(id, &e);
                false
            }
        }
    }

    /// Our side is done (the queue is empty and draining): queues a close_notify ahead of FIN.
    /// Returns whether one was queued (to be flushed first).
    pub(super) fn tls_close_notify(&mut self, id: ConnId) -> bool {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return false;
        };
        let Some(t) = ctx.tls.conns.get_mut(&id) else {
            return false;
        };
        if t.close_notify_sent {
            return false;
        }
        t.close_notify_sent = true;
        let status = t.conn.process_tls_records(&mut []);
        let Ok(ConnectionState::WriteTraffic(mut w)) = status.state else {
            return false; // no session (a failed handshake): nothing to close
        };
        let mut buf = ctx.chunks.get();
        buf.resize(64, 0);
        match w.queue_close_notify(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                c.queue.push_sealed(buf, &mut ctx.chunks);
                ctx.mark_dirty(id);
                true
            }
            Err(_) => {
                ctx.chunks.put(buf);
                false
            }
        }
    }

    /// A TLS error (a bad record, a failed handshake, an alert from the peer): a log line, the
    /// alert rustls wants to send, `on_close` (1006) if open, then draining.
    fn tls_failed(&mut self, id: ConnId, e: &Failure) {
        let ctx = &mut self.ctx;
        let handshake = matches!(
            ctx.conns.get(id).map(|c| &c.stage),
            Some(Stage::Handshake(_))
        );
        if let Some(quiet) = ctx.tls.log.ready(ctx.now, 1) {
            let peer = ctx
                .conns
                .get(id)
                .and_then(|c| c.socket.peer_addr().ok())
                .map_or(String::new(), |a| format!(" from {a}"));
            eprintln!(
                "surge: worker {}: TLS {} failed{peer}: {e}; closed{}",
                ctx.index,
                if handshake { "handshake" } else { "connection" },
                RateLog::more(quiet)
            );
        }
        // The alert rustls queued, if any.
        if let (Some(c), Some(t)) = (ctx.conns.get_mut(id), ctx.tls.conns.get_mut(&id)) {
            t.close_notify_sent = true;
            t.failed = true;
            for _ in 0..4 {
                let status = t.conn.process_tls_records(&mut []);
                match status.state {
                    Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                        if encode(&mut enc, &mut c.queue, &mut ctx.chunks).is_err() {
                            break;
                        }
                    }
                    Ok(ConnectionState::TransmitTlsData(tx)) => tx.done(),
                    _ => break,
                }
            }
            // Plaintext not yet encrypted cannot go out any more.
            if c.queue.has_unsealed() {
                let _ = c.queue.seal(&mut ctx.chunks, |_, _| Err::<(), ()>(()));
            }
        }
        self.close_callback(id, CloseCode::ABNORMAL, "", false);
        self.ctx.enter_draining(id);
    }
}

/// A handshake record rustls emits, into a pooled chunk ahead of the plaintext.
fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    queue: &mut WriteQueue,
    pool: &mut ChunkPool,
) -> Result<(), rustls::Error> {
    let mut buf = pool.get();
    let cap = buf.capacity();
    buf.resize(cap, 0);
    let n = match e.encode(&mut buf) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(s)) => {
            buf.resize(s.required_size, 0);
            e.encode(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    buf.truncate(n);
    queue.push_sealed(buf, pool);
    Ok(())
}

/// Encrypts the queue's plaintext (after any handshake records rustls has pending).
fn seal(
    conn: &mut UnbufferedServerConnection,
    queue: &mut WriteQueue,
    pool: &mut ChunkPool,
) -> Result<(), Failure> {
    loop {
        let status = conn.process_tls_records(&mut []);
        match status.state.map_err(Failure::Tls)? {
            ConnectionState::EncodeTlsData(mut e) => {
                encode(&mut e, queue, pool).map_err(Failure::Tls)?
            }
            ConnectionState::TransmitTlsData(tx) => tx.done(),
            ConnectionState::WriteTraffic(mut w) => {
                return queue
                    .seal(pool, |plain, out| encrypt(&mut w, plain, out))
                    .map_err(Failure::Encrypt);
            }
            // Not open for application data: no plaintext is queued before the handshake ends,
            // and none after both close_notify alerts; whatever is there is dropped, never
            // written in clear.
            _ => return queue.seal(pool, |_, _| Ok(())),
        }
    }
}

/// One piece of plaintext (at most one record's) into records at the end of `out`.
fn encrypt(
    w: &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncryptError> {
    let len = out.len();
    // A record adds at most 29 bytes (TLS 1.2 AES-GCM: header, explicit nonce, tag).
    out.resize(len + plain.len() + 64, 0);
    let n = match w.encrypt(plain, &mut out[len..]) {
        Ok(n) => n,
        Err(EncryptError::InsufficientSize(s)) => {
            out.resize(len + s.required_size, 0);
            w.encrypt(plain, &mut out[len..])?
        }
        Err(e) => {
            out.truncate(len);
            return Err(e);
        }
    };
    out.truncate(len + n);
    Ok(())
}
