//! Input: reads, EOF, the close callback, and frames into the protocol core.

use std::io;

use super::*;
use crate::buf::QueueOutput;
use crate::handler::{CloseInfo, Handler};
use crate::proto::{CloseCode, DeflateState, Event};
use crate::server::registry::ConnId;

impl<H: Handler> Worker<H> {
    /// Reads what the socket has (bounded per turn) and processes it by stage.
    /// `hup`: the peer's EOF is known to be queued, so a short read does not mean "empty".
    /// epoll: reads what connection `id` has, hands it to the protocol core, then sends what
    /// handling it queued on this connection at once, before the next connection is read (as
    /// uWebSockets uncorks after each socket's data): a chunk written goes straight back to the
    /// pool for the next connection, so a turn that echoes hundreds of messages holds one or two
    /// chunks, not one per message until the end of the turn. Sends to other connections still
    /// wait for the turn's end (one `writev` each, however many messages).
    pub(super) fn on_readable(&mut self, id: ConnId, hup: bool) {
        self.read_input(id, hup);
        if self.ctx.conns.get(id).is_some_and(|c| c.has(Flag::Dirty)) {
            self.flush_conn(id);
        }
    }

    pub(super) fn read_input(&mut self, id: ConnId, hup: bool) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(c) = self.ctx.conns.get_mut(id) else {
                return;
            };
            if matches!(c.stage, Stage::Draining) && c.has(Flag::PeerEof) {
                return;
            }
            let n = match self.ctx.driver.read(&mut c.socket, &mut self.read_buf) {
                Ok(0) => {
                    self.on_eof(id);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_callback(id, CloseCode::ABNORMAL, "", false);
                    self.ctx.remove(id);
                    return;
                }
            };
            let mut input = std::mem::take(&mut self.read_buf);
            self.process_input(id, &mut input[..n]);
            let short = n < input.len();
            self.read_buf = input;
            // Linux reports every arrival on an edge-triggered socket, so a short read means the
            // socket is empty for now: skip the read that would only say WouldBlock. Not when the
            // same edge reported the peer's FIN: data and FIN arriving together make one edge,
            // and the EOF would never be read (the connection would leak).
            if short && !hup {
                return;
            }
        }
        self.pending_reads.push(id);
    }

    /// Received bytes: TLS records first decrypted (`tls.rs`), then by stage.
    pub(super) fn process_input(&mut self, id: ConnId, input: &mut [u8]) {
        let Some(c) = self.ctx.conns.get(id) else {
            return;
        };
        if c.has(Flag::Tls) && !matches!(c.stage, Stage::Draining) {
            match &c.stage {
                // A PROXY header comes before the TLS handshake, in clear.
                Stage::Handshake(hs) if hs.proxy != crate::server::ProxyProtocol::Off => {
                    self.proxy_then_tls(id, input)
                }
                _ => self.tls_input(id, input),
            }
        } else {
            self.stage_input(id, input);
        }
    }

    /// A TLS connection's first bytes on a PROXY listener: the header (proxy.rs), then the TLS
    /// records behind it. While the driver still asks for the socket's peer the raw bytes wait
    /// in `held` (`replay_held` feeds them again once it answers).
    fn proxy_then_tls(&mut self, id: ConnId, input: &mut [u8]) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let Stage::Handshake(hs) = &mut c.stage else {
            return;
        };
        if hs.peer_pending {
            if hs.held.capacity() == 0 {
                hs.held = ctx.chunks.get();
                hs.held.clear();
            }
            hs.held.extend_from_slice(input);
            return;
        }
        let Some(rest) = self.proxy_header(id, input) else {
            return; // partial (held), or refused
        };
        // What came behind a header that arrived in pieces is in `held`: records too.
        let mut behind = match self.ctx.conns.get_mut(id).map(|c| &mut c.stage) {
            Some(Stage::Handshake(hs)) => std::mem::take(&mut hs.held),
            _ => Vec::new(),
        };
        if !behind.is_empty() {
            self.tls_input(id, &mut behind);
        }
        if behind.capacity() > 0 {
            self.ctx.chunks.put(behind);
        }
        if !rest.is_empty() {
            self.tls_input(id, rest);
        }
    }

    /// The driver answered the peer query (io_uring): bytes held meanwhile are read now.
    pub(super) fn replay_held(&mut self, id: ConnId) {
        let Some(c) = self.ctx.conns.get_mut(id) else {
            return;
        };
        let raw = c.has(Flag::Tls)
            && matches!(&c.stage, Stage::Handshake(hs) if hs.proxy != crate::server::ProxyProtocol::Off);
        if !raw {
            // Plain bytes (or TLS plaintext) of the request: parsed from `held`.
            self.handshake_bytes(id, &mut []);
            return;
        }
        let Stage::Handshake(hs) = &mut c.stage else {
            return;
        };
        let mut held = std::mem::take(&mut hs.held);
        self.proxy_then_tls(id, &mut held);
        if held.capacity() > 0 {
            self.ctx.chunks.put(held);
        }
    }

    /// Received (plain) bytes, by stage: the upgrade request, frames, or (draining) discarded.
    pub(super) fn stage_input(&mut self, id: ConnId, input: &mut [u8]) {
        let Some(c) = self.ctx.conns.get(id) else {
            return;
        };
        match c.stage {
            Stage::Handshake(_) => self.handshake_bytes(id, input),
            Stage::Open(_) => self.ws_bytes(id, input),
            Stage::Dial(_) => self.dial_bytes(id, input),
            Stage::Deferred(_) => self.deferred_bytes(id, input),
            Stage::Draining => {}
        }
    }

    pub(super) fn on_eof(&mut self, id: ConnId) {
        let Some(c) = self.ctx.conns.get_mut(id) else {
            return;
        };
        c.set(Flag::PeerEof);
        if c.queue.is_empty() {
            self.close_callback(id, CloseCode::ABNORMAL, "", false);
            self.ctx.remove(id);
            return;
        }
        // The peer only half-closed, maybe right after its request or a message: what is queued
        // for it (a 101, an echo, a close frame) is flushed first, as in the draining stage; then
        // the connection goes (flush_dirty), or at the close timeout.
        if !matches!(c.stage, Stage::Draining) {
            self.close_callback(id, CloseCode::ABNORMAL, "", false);
            self.ctx.enter_draining(id);
        }
        self.ctx.mark_dirty(id);
    }

    /// Calls `on_close` if the connection was open and has not had it yet.
    pub(super) fn close_callback(
        &mut self,
        id: ConnId,
        code: CloseCode,
        reason: &str,
        by_peer: bool,
    ) {
        self.ctx.unlink(id);
        if self.is_dialing(id) {
            self.dial_failed(id, ConnectError::Closed);
            return;
        }
        let Some(c) = self.ctx.conns.get_mut(id) else {
            return;
        };
        if let Some(data) = c.data.take() {
            self.ctx.open -= 1;
            self.ctx.metrics.closed(code);
            let info = CloseInfo {
                id,
                code,
                reason,
                by_peer,
            };
            self.handler.on_close(&mut self.ctx, data, &info);
        }
    }
    /// Feeds received bytes to the protocol core and delivers its events, strictly in order. The
    /// core's reader is out on the stack meanwhile (the events borrow its buffers); its writer stays
    /// in the slot, so what the handler sends or closes goes straight through it. On a connection
    /// with permessage-deflate the core inflates compressed messages itself, into the worker's
    /// buffer (out on the stack too, as the events borrow it), with the connection's state and the
    /// worker's pool lent for each read.
    pub(super) fn ws_bytes(&mut self, id: ConnId, input: &mut [u8]) {
        let held_before = self.ctx.conns.get(id).map_or(0, Connection::assembly_held);
        let Some(c) = self.ctx.conns.get_mut(id) else {
            unreachable!("ws_bytes is called in the open stage");
        };
        let Stage::Open(core) = &mut c.stage else {
            unreachable!("ws_bytes is called in the open stage");
        };
        let mut reader = std::mem::take(&mut core.reader);
        let deflate = c.deflate.is_some();
        let mut inflated = if deflate {
            self.ctx.compression.take_inflated()
        } else {
            Vec::new()
        };
        let mut pos = 0;
        while pos < input.len() {
            let ctx = &mut self.ctx;
            let c = ctx
                .conns
                .get_mut(id)
                .expect("handlers cannot remove connections");
            let Stage::Open(core) = &mut c.stage else {
                unreachable!("only ws_bytes leaves the open stage of a connection it reads");
            };
            let mut out = QueueOutput {
                queue: &mut c.queue,
                pool: &mut ctx.chunks,
            };
            let had = out.queue.len();
            let proto_cfg = if c.flags.has(Flag::Client) {
                &ctx.client.proto
            } else {
                &ctx.rx_proto
            };
            // Context takeover: whether this read may attach a live inflater to the connection.
            let mut attaching = false;
            let inflate = match c.deflate.as_deref_mut() {
                Some(st) => {
                    attaching = st.wants_inflater();
                    Some(ctx.compression.inflate(st, &mut inflated))
                }
                None => None,
            };
            let result = reader.read(
                &mut core.writer,
                &mut input[pos..],
                proto_cfg,
                &mut out,
                &mut ctx.assembly,
                inflate,
            );
            let wrote = out.queue.len() != had;
            let attached = attaching
                && c.deflate
                    .as_deref()
                    .is_some_and(DeflateState::holds_inflater);
            if wrote {
                ctx.mark_dirty(id);
            }
            if attached {
                ctx.inflater_attached(id);
            }
            let (n, event) = match result {
                Ok(found) => found,
                Err(e) => {
                    // The core queued a close with the error's code (a compressed message that
                    // does not inflate, or is too big, included); bytes after the bad frame are
                    // not looked at.
                    self.close_callback(id, e.close_code(), "", false);
                    break;
                }
            };
            pos += n;
            let Some(event) = event else {
                continue;
            };
            self.ctx.metrics.received(&event);
            let mut conn = Conn {
                ctx: &mut self.ctx,
                id,
            };
            match event {
                Event::Message(m) => self.handler.on_message(&mut conn, m),
                Event::Fragment {
                    kind,
                    data,
                    first,
                    last,
                } => self.handler.on_fragment(&mut conn, kind, data, first, last),
                Event::Ping(d) => {
                    if conn.ctx.cfg.proto.auto_pong {
                        let _ = conn.ctx.send_pong(id, d);
                    }
                    self.handler.on_ping(&mut conn, d)
                }
                Event::Pong(d) => self.handler.on_pong(&mut conn, d),
                Event::Close { code, reason } => {
                    self.close_callback(id, code, reason, true);
                    break;
                }
            }
        }
        if deflate {
            self.ctx.compression.keep_inflated(inflated);
        }
        let ctx = &mut self.ctx;
        reader.recycle(&mut ctx.assembly);
        let Some(Stage::Open(core)) = ctx.conns.get_mut(id).map(|c| &mut c.stage) else {
            unreachable!("handlers cannot remove connections");
        };
        core.reader = reader;
        let closed = core.writer.is_closed();
        ctx.assembly_settled(id, held_before);
        if closed {
            ctx.enter_draining(id);
        } else {
            ctx.sync_timer(id);
        }
        self.enforce_assembly_budget();
    }
}
