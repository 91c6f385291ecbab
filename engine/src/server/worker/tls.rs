//! TLS on the server's `tls_bind` listeners and on `wss://` outgoing connections, through
//! rustls's unbuffered (sans-IO) API: one code path for both sides (`Side`), which differ only in
//! how a connection starts (an accepted one waits for the ClientHello; an outgoing one queues its
//! ClientHello at `connect` and its upgrade request once the handshake is done, see `dial.rs`).
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
//!
//! A TLS 1.3 server connection whose handshake is done is handed over to `tls::record`
//! (`Side::Kernel`): rustls's kTLS seam gives its traffic keys, and the worker seals and opens
//! records itself, keeping ~0.7 KB per connection instead of rustls's whole connection object.
//! TLS 1.2 and outgoing connections stay with rustls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};

use super::*;
use crate::buf::{ChunkPool, WriteQueue};
use crate::handler::Handler;
use crate::proto::CloseCode;
use crate::ratelog::RateLog;
use crate::server::registry::ConnId;
use crate::tls::record::{self, Session};
use crate::tls::sni::{client_hello_sni, Hello};
use crate::tls::TlsInfo;

/// rustls's two unbuffered connection types, behind one interface (their `process_tls_records`
/// are separate inherent methods).
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &rustls::CommonState;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
}

impl<T: Unbuffered> Unbuffered for Box<T> {
    type Data = T::Data;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        (**self).process(buf)
    }
    fn common(&self) -> &rustls::CommonState {
        (**self).common()
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn common(&self) -> &rustls::CommonState {
        self
    }
}

/// Which end of the TLS connection we are, and who keeps its state.
enum Side {
    /// Accepted on a `tls_bind` listener, with rustls (the handshake; TLS 1.2 throughout).
    Server(Box<UnbufferedServerConnection>),
    /// An outgoing `wss://` connection (`dial.rs`).
    Client(Box<UnbufferedClientConnection>),
    /// Accepted, TLS 1.3 and past its handshake: the record layer is ours (`tls::record`).
    Kernel(Box<Session>),
    /// No state left: the hand-over to `Kernel` failed and the connection is closing.
    Gone,
}

/// Runs `$body` with `$c` bound to the rustls connection of either side, `$kernel` with `$k`
/// bound to a handed-over session, or `$gone`.
macro_rules! on_side {
    ($side:expr, $c:ident => $body:expr, $k:ident => $kernel:expr, _ => $gone:expr) => {
        match $side {
            Side::Server($c) => $body,
            Side::Client($c) => $body,
            Side::Kernel($k) => $kernel,
            Side::Gone => $gone,
        }
    };
}

impl Side {
    fn is_handshaking(&self) -> bool {
        on_side!(self, c => c.common().is_handshaking(), _k => false, _ => false)
    }
}

/// One connection's TLS state.
pub(super) struct TlsConn {
    conn: Side,
    /// Bytes of a record not yet whole (a pooled chunk; none held between whole records).
    held: Vec<u8>,
    /// The ClientHello's server name, once its first record was seen.
    server_name: Option<String>,
    /// What `Request::tls` tells, kept at the hand-over to `Kernel` until the upgrade asks.
    info: Option<Box<TlsInfo>>,
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
        // An outgoing connection's handler hears why it never opened (`on_connect_error`).
        let client = matches!(t.conn, Side::Client(_));
        let why = if t.failed {
            None
        } else if t.conn.is_handshaking() {
            (!client).then_some(
                "before its TLS handshake completed (handshake timeout, or the peer left)",
            )
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
        if t.info.is_some() {
            return t.info.take();
        }
        let common = on_side!(&t.conn, c => c.common(), _k => return None, _ => return None);
        Some(tls_info(common, t.server_name.take()))
    }
}

/// What `Request::tls` tells of a connection.
fn tls_info(common: &rustls::CommonState, server_name: Option<String>) -> Box<TlsInfo> {
    Box::new(TlsInfo {
        server_name,
        alpn: common.alpn_protocol().map(<[u8]>::to_vec),
        version: common.protocol_version(),
        resumed: common.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    })
}

impl TlsConn {
    fn new(conn: Side, hello_seen: bool) -> Box<TlsConn> {
        Box::new(TlsConn {
            conn,
            held: Vec::new(),
            server_name: None,
            info: None,
            hello_seen,
            close_notify_sent: false,
            failed: false,
        })
    }

    /// A TLS 1.3 server connection whose handshake is done and whose handshake records are all
    /// queued: handed over to our record layer (`Side::Kernel`), rustls's connection dropped.
    fn hand_over(&mut self) -> Result<(), Failure> {
        let Side::Server(conn) = &self.conn else {
            return Ok(());
        };
        if !Session::ready(conn) {
            return Ok(());
        }
        self.info = Some(tls_info(conn.common(), self.server_name.take()));
        let Side::Server(conn) = std::mem::replace(&mut self.conn, Side::Gone) else {
            unreachable!("checked above");
        };
        self.conn = Side::Kernel(Box::new(Session::new(*conn).map_err(Failure::Tls)?));
        Ok(())
    }
}

/// Why a TLS connection failed.
enum Failure {
    Tls(rustls::Error),
    Encrypt(EncryptError),
    /// On a handed-over session (`tls::record`).
    Record(record::Fatal),
}

impl Failure {
    /// As a rustls error (what `ConnectError::Tls` carries).
    fn to_rustls(&self) -> rustls::Error {
        match self {
            Failure::Tls(e) => e.clone(),
            Failure::Encrypt(e) => rustls::Error::General(e.to_string()),
            Failure::Record(f) => f.error.clone(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Tls(e) => write!(f, "{e}"),
            Failure::Encrypt(e) => write!(f, "{e}"),
            Failure::Record(r) => write!(f, "{}", r.error),
        }
    }
}

impl TlsTable {
    /// An outgoing `wss://` connection (`WorkerCtx::connect`): its state, and its ClientHello
    /// queued (sealed) for the flush after the TCP connect.
    pub(super) fn start_client(
        &mut self,
        id: ConnId,
        mut conn: UnbufferedClientConnection,
        queue: &mut WriteQueue,
        pool: &mut ChunkPool,
    ) -> Result<(), rustls::Error> {
        seal(&mut conn, queue, pool).map_err(|e| e.to_rustls())?;
        self.conns
            .insert(id, TlsConn::new(Side::Client(Box::new(conn)), true));
        Ok(())
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
        ctx.tls
            .conns
            .insert(id, TlsConn::new(Side::Server(Box::new(conn)), false));
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
        let handshaking = t.conn.is_handshaking();
        let Read {
            consumed: start,
            peer_closed,
            wrote,
            mut failed,
        } = on_side!(&mut t.conn,
            conn => read_records(conn, buf, &mut plain, &mut c.queue, &mut ctx.chunks),
            k => open_records(k, buf, &mut plain, &mut c.queue, &mut ctx.chunks),
            _ => Read::default());
        if failed.is_none() && !peer_closed {
            if let Err(e) = t.hand_over() {
                failed = Some(e);
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
        // An outgoing connection's handshake just completed: its upgrade request goes out now.
        let mut wrote = wrote;
        if handshaking && failed.is_none() && !t.conn.is_handshaking() {
            if let Stage::Dial(d) = &mut c.stage {
                if let Some(request) = d.tls_request.take() {
                    c.queue.push_chunk(request, &mut ctx.chunks);
                    wrote = true;
                }
            }
        }
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
        let sealed = on_side!(&mut t.conn,
            conn => seal(conn, &mut c.queue, &mut ctx.chunks),
            k => seal_records(k, t.close_notify_sent, &mut c.queue, &mut ctx.chunks),
            _ => c.queue.seal(&mut ctx.chunks, |_, _| Ok(())));
        match sealed {
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
        let queued = on_side!(&mut t.conn,
            conn => close_notify(conn, &mut c.queue, &mut ctx.chunks),
            k => {
                queue_record(&mut c.queue, &mut ctx.chunks, |out| {
                    k.alert(rustls::AlertDescription::CloseNotify, out)
                });
                true
            },
            _ => false);
        if queued {
            ctx.mark_dirty(id);
        }
        queued
    }

    /// A TLS error (a bad record, a failed handshake, an alert from the peer): a log line, the
    /// alert rustls wants to send, `on_close` (1006) if open, then draining.
    ///
    /// An outgoing connection whose handshake fails (the server's certificate refused, an alert,
    /// not TLS at all) gets `on_connect_error` with `ConnectError::Tls` instead of `on_close`.
    fn tls_failed(&mut self, id: ConnId, e: &Failure) {
        let ctx = &mut self.ctx;
        let stage = ctx.conns.get(id).map(|c| &c.stage);
        let handshake = matches!(stage, Some(Stage::Handshake(_)));
        let dialing = matches!(stage, Some(Stage::Dial(_)));
        if let Some(quiet) = ctx.tls.log.ready(ctx.now, 1) {
            let addr = ctx.conns.get(id).and_then(|c| c.socket.peer_addr().ok());
            let what = match (dialing, addr) {
                (true, Some(a)) => format!("handshake with {a}"),
                (true, None) => "handshake".to_owned(),
                (false, Some(a)) if handshake => format!("handshake from {a}"),
                (false, _) if handshake => "handshake".to_owned(),
                (false, Some(a)) => format!("connection from {a}"),
                (false, None) => "connection".to_owned(),
            };
            eprintln!(
                "surge: worker {}: TLS {what} failed: {e}; closed{}",
                ctx.index,
                RateLog::more(quiet)
            );
        }
        // The alert rustls queued, if any.
        if let (Some(c), Some(t)) = (ctx.conns.get_mut(id), ctx.tls.conns.get_mut(&id)) {
            t.close_notify_sent = true;
            t.failed = true;
            let alert = match e {
                Failure::Record(f) => f.alert,
                _ => None,
            };
            on_side!(&mut t.conn,
                conn => pending_alert(conn, &mut c.queue, &mut ctx.chunks),
                k => if let Some(a) = alert {
                    queue_record(&mut c.queue, &mut ctx.chunks, |out| k.alert(a, out));
                },
                _ => {});
            // Plaintext not yet encrypted cannot go out any more.
            if c.queue.has_unsealed() {
                let _ = c.queue.seal(&mut ctx.chunks, |_, _| Err::<(), ()>(()));
            }
        }
        if dialing {
            self.dial_failed_tls(id, e.to_rustls());
            return;
        }
        self.close_callback(id, CloseCode::ABNORMAL, "", false);
        self.ctx.enter_draining(id);
    }
}

/// Queues a close_notify, once the session is established. Returns whether one was queued.
fn close_notify<C: Unbuffered>(conn: &mut C, queue: &mut WriteQueue, pool: &mut ChunkPool) -> bool {
    let status = conn.process(&mut []);
    let Ok(ConnectionState::WriteTraffic(mut w)) = status.state else {
        return false; // no session (a failed handshake): nothing to close
    };
    let mut buf = pool.get();
    buf.resize(64, 0);
    match w.queue_close_notify(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            queue.push_sealed(buf, pool);
            true
        }
        Err(_) => {
            pool.put(buf);
            false
        }
    }
}

/// After an error: queues the alert rustls has for the peer, if any. Only what rustls has
/// ready to send is taken (`wants_write`): a call that went on to read would look at received
/// bytes it still refers to (handshake messages are ranges of the caller's buffer, gone by now)
/// or fail again on the same bad record.
fn pending_alert<C: Unbuffered>(conn: &mut C, queue: &mut WriteQueue, pool: &mut ChunkPool) {
    for _ in 0..4 {
        if !conn.common().wants_write() {
            break;
        }
        match conn.process(&mut []).state {
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                if encode(&mut enc, queue, pool).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
}

/// A handshake record rustls emits, into a pooled chunk ahead of the plaintext.
fn encode<D>(
    e: &mut EncodeTlsData<'_, D>,
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
fn seal<C: Unbuffered>(
    conn: &mut C,
    queue: &mut WriteQueue,
    pool: &mut ChunkPool,
) -> Result<(), Failure> {
    loop {
        let status = conn.process(&mut []);
        match status.state.map_err(Failure::Tls)? {
            ConnectionState::EncodeTlsData(mut e) => {
                encode(&mut e, queue, pool).map_err(Failure::Tls)?;
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
fn encrypt<D>(
    w: &mut WriteTraffic<'_, D>,
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

/// What [`read_records`] did with a buffer of received records.
#[derive(Default)]
struct Read {
    /// Bytes of whole records consumed (the rest is a record not yet whole).
    consumed: usize,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// Handshake records were queued.
    wrote: bool,
    failed: Option<Failure>,
}

/// Decrypts the whole records at the front of `buf` (in place) and appends their plaintext to
/// `plain`; handshake records rustls answers with go into `queue` (sealed, ahead of plaintext).
fn read_records<C: Unbuffered>(
    conn: &mut C,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    queue: &mut WriteQueue,
    pool: &mut ChunkPool,
) -> Read {
    let mut read = Read {
        consumed: 0,
        peer_closed: false,
        wrote: false,
        failed: None,
    };
    loop {
        let status = conn.process(&mut buf[read.consumed..]);
        let discard = status.discard;
        let state = match status.state {
            Ok(s) => s,
            Err(e) => {
                read.failed = Some(Failure::Tls(e));
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
                            read.failed = Some(Failure::Tls(e));
                            break;
                        }
                    }
                }
            }
            ConnectionState::EncodeTlsData(mut e) => {
                if let Err(e) = encode(&mut e, queue, pool) {
                    read.failed = Some(Failure::Tls(e));
                }
                read.wrote = true;
            }
            // Queued: the flush sends it, in order.
            ConnectionState::TransmitTlsData(tx) => tx.done(),
            ConnectionState::PeerClosed => read.peer_closed = true,
            ConnectionState::Closed => done = true,
            // Need more bytes (handshake or a partial record), or all were read.
            ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => done = true,
            // Early data is not enabled; anything newer: stop here.
            _ => done = true,
        }
        read.consumed += discard;
        if done || read.failed.is_some() {
            break;
        }
    }
    read
}

/// [`read_records`] on a handed-over session: opened by `tls::record`; a KeyUpdate it answers
/// goes out ahead of plaintext not yet sealed (which is sealed under the new key).
fn open_records(
    session: &mut Session,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    queue: &mut WriteQueue,
    pool: &mut ChunkPool,
) -> Read {
    let mut reply = Vec::new();
    let opened = session.open(buf, plain, &mut reply);
    let wrote = !reply.is_empty();
    if wrote {
        queue_record(queue, pool, |out| out.extend_from_slice(&reply));
    }
    Read {
        consumed: opened.consumed,
        peer_closed: opened.peer_closed,
        wrote,
        failed: opened.failed.map(Failure::Record),
    }
}

/// [`seal`] on a handed-over session: the queue's plaintext into records, one key expansion for
/// all of it; past the key's record budget, our KeyUpdate behind them. After our close_notify
/// nothing more is sealed (the plaintext is dropped, never written in clear).
fn seal_records(
    session: &mut Session,
    closed: bool,
    queue: &mut WriteQueue,
    pool: &mut ChunkPool,
) -> Result<(), Failure> {
    if closed {
        return queue.seal(pool, |_, _| Ok(()));
    }
    let mut sealer = session.sealer();
    queue.seal(pool, |plain, out| {
        sealer.seal(record::APPLICATION_DATA, plain, out);
        Ok::<(), Failure>(())
    })?;
    if session.key_update_due() {
        let mut update = Ok(());
        queue_record(queue, pool, |out| update = session.update_tx(out));
        update.map_err(Failure::Tls)?;
    }
    Ok(())
}

/// Records `write` appends to a pooled chunk (an alert, a KeyUpdate), queued ahead of plaintext
/// not yet sealed; nothing is queued if it wrote nothing.
fn queue_record(queue: &mut WriteQueue, pool: &mut ChunkPool, write: impl FnOnce(&mut Vec<u8>)) {
    let mut chunk = pool.get();
    write(&mut chunk);
    queue.push_sealed(chunk, pool);
}
