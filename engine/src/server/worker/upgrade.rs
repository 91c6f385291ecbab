//! The server side of the upgrade: the request's bytes, the handler's decision, the 101.

use super::*;
use crate::driver::Socket;
use std::sync::Arc;

use crate::handler::{Accept, Defer, Handler, Upgrade};
use crate::handshake::{
    check_origin, parse_request, write_accept_response, write_rejection, HeadBuffer, ParseStatus,
    Rejection, Request,
};
use crate::proto::{self, Role};
use crate::server::pending::Decision;
use crate::server::registry::ConnId;
use crate::server::PendingUpgrade;

impl<H: Handler> Worker<H> {
    /// Bytes of the upgrade request (and maybe the first frames behind it).
    pub(super) fn handshake_bytes(&mut self, id: ConnId, new: &mut [u8]) {
        // The PROXY protocol header first, where one is expected (proxy.rs).
        let Some(new) = self.proxy_header(id, new) else {
            return;
        };
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let Stage::Handshake(hs) = &mut c.stage else {
            return;
        };
        let mut head = HeadBuffer::from(std::mem::take(&mut hs.held));
        let peer = hs.peer;
        if hs.peer_pending {
            // The peer's address first (on_upgrade and on_http see it): keep the bytes.
            head.hold(new, || ctx.chunks.get());
            hs.held = head.into_buffer();
            return;
        }
        let status = head.feed(new, || ctx.chunks.get(), |b| parse_request(b, &ctx.hs_cfg));
        let (mut request, consumed) = match status {
            Ok(ParseStatus::Partial) => {
                c.stage = Stage::Handshake(Handshake {
                    held: head.into_buffer(),
                    peer,
                    ..Handshake::default()
                });
                return;
            }
            Ok(ParseStatus::Complete { request, consumed }) => (request, consumed),
            Ok(ParseStatus::Http { mut request, .. }) => {
                head.release(|b| ctx.chunks.put(b));
                request.peer = peer.or_else(|| c.socket.peer_addr().ok());
                request.tls = ctx.tls.info(id);
                let response = self
                    .metrics_page(&request)
                    .unwrap_or_else(|| self.handler.on_http(&mut self.ctx, &request));
                self.reject(id, &response);
                return;
            }
            Err(e) => {
                head.release(|b| ctx.chunks.put(b));
                self.reject(id, &e.to_rejection());
                return;
            }
        };
        request.peer = peer.or_else(|| c.socket.peer_addr().ok());
        request.tls = ctx.tls.info(id);
        if let Err(e) = check_origin(&request, &ctx.hs_cfg) {
            head.release(|b| ctx.chunks.put(b));
            self.reject(id, &e.to_rejection());
            return;
        }
        let accept = match self.handler.on_upgrade(&request) {
            Upgrade::Accept(a) => a,
            Upgrade::Reject(r) => {
                head.release(|b| self.ctx.chunks.put(b));
                self.reject(id, &r);
                return;
            }
            Upgrade::Defer(Defer(decide)) => {
                self.defer(id, request, head.rest(new, consumed), decide);
                head.release(|b| self.ctx.chunks.put(b));
                return;
            }
        };
        // Frames the client sent right behind its request.
        self.open(id, request, accept, head.rest(new, consumed));
        head.release(|b| self.ctx.chunks.put(b));
    }

    /// Accepts: queues the 101, opens the protocol core, calls `on_open`, then reads `rest` (the
    /// frames that came behind the request).
    fn open(&mut self, id: ConnId, request: Request, accept: Accept<H::Data>, rest: &mut [u8]) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let peer = request.peer;
        let chosen = match &accept.subprotocol {
            Some(p) => Some(p.as_str()),
            None => request.select_subprotocol(&ctx.cfg.subprotocols),
        };
        let tag = chosen.map_or(0, |p| ctx.protocols.intern(id, p));
        let deflate = ctx.compression.negotiate(&request);
        let mut resp = ctx.chunks.get();
        let ext = deflate.as_ref().map(|(_, ext)| ext.as_str());
        write_accept_response(&mut resp, request.key(), chosen, ext, &accept.headers);
        drop(request);
        c.queue.push_chunk(resp, &mut ctx.chunks);
        let mut core = proto::Session::new(Role::Server, 0);
        if let Some((state, _)) = deflate {
            core.enable_compression();
            c.deflate = Some(state);
        }
        core.start(ctx.now, &ctx.cfg.proto);
        c.stage = Stage::Open(core);
        c.subprotocol = tag;
        let direct = matches!(c.socket, Socket::Direct(_));
        c.data = Some(accept.data);
        ctx.open += 1;
        // A direct descriptor has no fd for `getpeername`: its address is kept in the slot.
        if let (true, Some(addr)) = (direct, peer) {
            ctx.keep_peer(id, addr);
        }
        ctx.mark_dirty(id);
        ctx.sync_timer(id);
        ctx.metrics.handshake();
        self.handler.on_open(&mut Conn {
            ctx: &mut self.ctx,
            id,
        });
        if !rest.is_empty() {
            self.ws_bytes(id, rest);
        }
    }

    /// The application decides later: the request (and any bytes behind it) wait in the slot,
    /// under the handshake timer already armed; `decide` gets the handle.
    fn defer(
        &mut self,
        id: ConnId,
        request: Request,
        rest: &[u8],
        decide: Box<dyn FnOnce(PendingUpgrade<H::Data>)>,
    ) {
        let ctx = &mut self.ctx;
        let (pending, state) = PendingUpgrade::new(Arc::clone(ctx.fanout.shared()), ctx.index, id);
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let mut held = Vec::new();
        if !rest.is_empty() {
            held = ctx.chunks.get();
            held.extend_from_slice(rest);
        }
        c.stage = Stage::Deferred(Box::new(Deferred {
            request,
            held,
            state,
        }));
        if rest.len() > ctx.cfg.max_handshake_size {
            self.deferred_overflow(id);
        }
        decide(pending);
    }

    /// Bytes from a client whose upgrade waits for the application's decision: held, up to
    /// `max_handshake_size`; beyond, the connection is closed.
    pub(super) fn deferred_bytes(&mut self, id: ConnId, input: &[u8]) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let Stage::Deferred(d) = &mut c.stage else {
            return;
        };
        if d.held.len() + input.len() > ctx.cfg.max_handshake_size {
            self.deferred_overflow(id);
            return;
        }
        if d.held.capacity() == 0 {
            d.held = ctx.chunks.get();
        }
        d.held.extend_from_slice(input);
    }

    /// A client sent more than `max_handshake_size` while its upgrade was deferred: closed.
    fn deferred_overflow(&mut self, id: ConnId) {
        let ctx = &mut self.ctx;
        if let Some(quiet) = ctx.deferred_log.ready(ctx.now, 1) {
            eprintln!(
                "surge: worker {}: a client sent more than max_handshake_size ({} bytes) while \
                 its upgrade was deferred: closed{}",
                ctx.index,
                ctx.cfg.max_handshake_size,
                crate::ratelog::RateLog::more(quiet)
            );
        }
        ctx.remove(id);
    }

    /// The application's decision on a deferred upgrade arrived (through the mailbox).
    pub(super) fn decided(&mut self, id: ConnId, decision: Decision) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return; // the connection ended meanwhile (a newer one under the id fails the check)
        };
        if !matches!(c.stage, Stage::Deferred(_)) {
            return;
        }
        let Stage::Deferred(d) =
            std::mem::replace(&mut c.stage, Stage::Handshake(Handshake::default()))
        else {
            unreachable!("checked above");
        };
        let Deferred {
            request,
            mut held,
            state: _,
        } = *d;
        match decision {
            Decision::Accept(any) => match any.downcast::<Accept<H::Data>>() {
                Ok(accept) => self.open(id, request, *accept, &mut held),
                Err(_) => unreachable!("a PendingUpgrade<D> is made for the handler's Data"),
            },
            Decision::Reject(r) => self.reject(id, &r),
            Decision::Dropped => {
                let ctx = &mut self.ctx;
                if let Some(quiet) = ctx.deferred_log.ready(ctx.now, 1) {
                    eprintln!(
                        "surge: worker {}: a PendingUpgrade was dropped without a decision: \
                         answered 500{}",
                        ctx.index,
                        crate::ratelog::RateLog::more(quiet)
                    );
                }
                self.reject(
                    id,
                    &Rejection::new(500, "the upgrade was dropped without a decision"),
                );
            }
        }
        if held.capacity() > 0 {
            self.ctx.chunks.put(held);
        }
    }

    /// Answers with an HTTP error, then drains and closes.
    pub(super) fn reject(&mut self, id: ConnId, rejection: &Rejection) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        ctx.metrics.rejected(rejection.status);
        let mut resp = ctx.chunks.get();
        write_rejection(&mut resp, rejection);
        c.queue.push_chunk(resp, &mut ctx.chunks);
        c.stage = Stage::Draining;
        let deadline = ctx.now + ctx.cfg.proto.close_timeout;
        ctx.arm(id, Some(deadline));
        ctx.mark_dirty(id);
    }
}
