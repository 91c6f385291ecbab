//! Flushing write queues, and the periodic buffer trim.

use super::*;
use crate::handler::Handler;
use crate::proto::CloseCode;
use crate::server::registry::ConnId;

impl<H: Handler> Worker<H> {
    /// One `writev` (or a few, until the socket is full) per connection with something queued.
    pub(super) fn flush_dirty(&mut self) {
        while let Some(id) = self.ctx.dirty.pop() {
            self.flush_conn(id);
        }
    }

    /// Sends what connection `id` has queued (if it is marked dirty; an entry of `dirty` whose
    /// connection was flushed early is skipped).
    pub(super) fn flush_conn(&mut self, id: ConnId) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if !c.has(Flag::Dirty) {
            return;
        }
        c.clear(Flag::Dirty);
        if c.queue.in_flight() {
            return; // its completion marks it dirty again
        }
        if c.has(Flag::Tls) && !self.tls_seal(id) {
            return;
        }
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let written = ctx
            .driver
            .write(&mut c.socket, id.0, &mut c.queue, &mut ctx.chunks);
        let empty = match written {
            Ok(Written::InFlight) => {
                // The queue is in flight (its chunks stay put) until the completion.
                if c.stall == 0 && c.has(Flag::Over) {
                    // A queue past the limit starts the stall clock even if this write never
                    // completes; otherwise completions do (a partial one leaves bytes), so
                    // the writes of idle connections arm nothing.
                    ctx.note_flush(id, false);
                }
                false
            }
            Ok(Written::Done { empty, wrote }) => {
                if !empty || c.stall != 0 {
                    ctx.note_flush(id, wrote);
                }
                empty
            }
            Err(_) => {
                self.close_callback(id, CloseCode::ABNORMAL, "", false);
                self.ctx.remove(id);
                return;
            }
        };
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if c.has(Flag::Over) && c.queue.cost() < ctx.cfg.max_backpressure {
            c.clear(Flag::Over);
            ctx.send_pending_pong(id);
            let Some(c) = self.ctx.conns.get_mut(id) else {
                return;
            };
            if c.data.is_some() && c.can_send() {
                self.handler.on_drain(&mut Conn {
                    ctx: &mut self.ctx,
                    id,
                });
            }
        }
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if empty && matches!(c.stage, Stage::Draining) {
            if c.has(Flag::PeerEof) {
                ctx.remove(id);
            } else if !c.has(Flag::FinSent) {
                if c.has(Flag::Tls) && self.tls_close_notify(id) {
                    return; // flushed first (marked dirty), then FIN
                }
                let ctx = &mut self.ctx;
                let Some(c) = ctx.conns.get_mut(id) else {
                    return;
                };
                c.set(Flag::FinSent);
                if ctx.driver.shutdown_write(&c.socket).is_err() {
                    ctx.remove(id);
                }
            }
        }
    }
    /// The periodic buffer trim (`ServerConfig::buffer_trim_interval`): when due, the pools and
    /// the io_uring buffer ring give back what the last interval did not need, then the
    /// allocator its free pages. Armed only while something is held, so an idle worker holding
    /// nothing is never woken for it. Per turn: a clock comparison and a few loads.
    pub(super) fn trim_buffers(&mut self) {
        let Some(interval) = self.ctx.cfg.buffer_trim_interval else {
            return;
        };
        if self.trim_at.is_some_and(|at| self.ctx.now >= at) {
            self.trim_at = None;
            let freed = self.ctx.chunks.trim() + self.ctx.assembly.trim();
            crate::buf::pool::release_to_system(freed);
            self.ctx.driver.trim();
        }
        let driver_spare = self.ctx.driver.holds_spare();
        if self.trim_at.is_none()
            && (driver_spare || self.ctx.chunks.cached() > 0 || self.ctx.assembly.cached() > 0)
        {
            self.trim_at = Some(self.ctx.now + interval);
        }
    }
}
