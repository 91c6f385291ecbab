//! io_uring completions.

use super::*;
use crate::driver::{IoEvent, RecvEnd};
use crate::handler::Handler;
use crate::proto::CloseCode;
use crate::server::registry::ConnId;

impl<H: Handler> Worker<H> {
    /// io_uring completions.
    pub(super) fn dispatch_completion(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Accepted { listener, socket } => {
                if listener < self.listeners.len() {
                    self.admit(socket, listener, None);
                } else {
                    self.ctx.driver.close(socket); // shutting down
                }
            }
            IoEvent::Received {
                token,
                mut buf,
                more,
            } => {
                let id = ConnId(token);
                if self.ctx.conns.get(id).is_some() {
                    self.process_input(id, &mut buf);
                }
                self.ctx.driver.recycle(buf);
                if !more {
                    self.rearm_recv(id);
                }
            }
            IoEvent::RecvEnd { token, end, more } => {
                let id = ConnId(token);
                if self.ctx.conns.get(id).is_none() {
                    return; // cancelled, or a stale completion
                }
                match end {
                    RecvEnd::Eof => self.on_eof(id),
                    // The ring is at its limit: wait for buffers with the bytes in the socket,
                    // behind the connections already waiting (re-armed a few per turn).
                    RecvEnd::Starved => self.starved.push_back(id),
                    RecvEnd::Failed => {
                        self.close_callback(id, CloseCode::ABNORMAL, "", false);
                        self.ctx.remove(id);
                    }
                    RecvEnd::Retry if !more => self.rearm_recv(id),
                    RecvEnd::Retry => {}
                }
            }
            IoEvent::Sent { token, res, orphan } => {
                if let Some(mut q) = orphan {
                    q.release(&mut self.ctx.chunks);
                }
                let id = ConnId(token);
                let ctx = &mut self.ctx;
                let Some(c) = ctx.conns.get_mut(id) else {
                    return;
                };
                if res < 0 {
                    c.queue.end_write();
                    self.close_callback(id, CloseCode::ABNORMAL, "", false);
                    self.ctx.remove(id);
                    return;
                }
                c.queue.advance(res as usize, &mut ctx.chunks);
                ctx.note_flush(id, res > 0);
                // The next send, or what follows an emptied queue (on_drain, FIN, removal).
                ctx.mark_dirty(id);
            }
            IoEvent::Readable { token } => {
                let id = ConnId(token);
                let Some(c) = self.ctx.conns.get(id) else {
                    return; // closed: its poll is cancelled
                };
                if c.has(Flag::PeerEof) {
                    return;
                }
                self.ctx.driver.read_more(&c.socket, token);
            }
            IoEvent::Connected { token, error } => self.dial_polled(ConnId(token), error),
            IoEvent::Peer { token, addr } => {
                let id = ConnId(token);
                let Some(c) = self.ctx.conns.get_mut(id) else {
                    return;
                };
                let Stage::Handshake(hs) = &mut c.stage else {
                    return;
                };
                hs.peer = addr;
                hs.peer_pending = false;
                let held = !hs.held.is_empty();
                if !self.count_client(id) {
                    return; // refused by a per-client limit
                }
                if held {
                    // Bytes came first after all (the link was split): parse them now.
                    self.replay_held(id);
                }
            }
            IoEvent::Ready { .. } | IoEvent::Wake => unreachable!("handled by dispatch"),
        }
    }

    /// io_uring: re-arms the receives of up to half the ring's buffers' worth of connections
    /// that found the ring empty at its limit, first come first served, before the next submit.
    /// (Re-arming them all at once would end most in `ENOBUFS` again, each turn.)
    pub(super) fn rearm_starved(&mut self) {
        let ctx = &mut self.ctx;
        let mut budget = ctx.driver.starved_budget();
        while budget > 0 {
            let Some(id) = self.starved.pop_front() else {
                break;
            };
            let Some(c) = ctx.conns.get(id) else {
                continue; // closed meanwhile
            };
            if c.has(Flag::PeerEof) {
                continue;
            }
            ctx.driver.rearm_starved(&c.socket, id.0);
            budget -= 1;
        }
    }

    /// io_uring: re-arms a connection's multishot receive unless its input has ended.
    pub(super) fn rearm_recv(&mut self, id: ConnId) {
        let Some(c) = self.ctx.conns.get(id) else {
            return;
        };
        if c.has(Flag::PeerEof) {
            return;
        }
        self.ctx.driver.rearm_recv(&c.socket, id.0);
    }
}
