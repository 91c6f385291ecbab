//! Due timers: connection deadlines, write-stall checks, the application's timers.

use std::time::Duration;

use super::*;
use crate::buf::QueueOutput;
use crate::handler::Handler;
use crate::proto::{self, CloseCode, State};
use crate::server::registry::ConnId;

impl<H: Handler> Worker<H> {
    pub(super) fn fire_timers(&mut self) {
        let mut expired = std::mem::take(&mut self.expired);
        self.ctx.wheel.expire(self.ctx.now, &mut expired);
        for (tick, entry) in expired.drain(..) {
            match entry {
                TimerEntry::Conn(id) => self.conn_timer(id, tick),
                TimerEntry::Stall(id) => self.stall_check(id),
                TimerEntry::App(id) => {
                    let handler = &mut self.handler;
                    self.ctx
                        .with_due_timer(id, |ctx, timer| handler.on_timer(ctx, timer));
                }
            }
        }
        self.expired = expired;
    }

    /// A connection's write-stall check: closes it (1008, at once: a peer that reads nothing would
    /// not read a close frame either) when its queue has waited with no progress for the
    /// configured time, else checks again when that time would be up.
    pub(super) fn stall_check(&mut self, id: ConnId) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        c.clear(Flag::StallArmed);
        let Some(timeout) = ctx.cfg.write_stall_timeout else {
            return;
        };
        if c.stall == 0 {
            return; // drained since
        }
        let now = ctx.wheel.tick_of(ctx.now) as u32;
        let waited = Duration::from_millis(u64::from(now.wrapping_sub(c.stall)));
        if waited < timeout {
            c.set(Flag::StallArmed);
            let at = ctx.now + (timeout - waited);
            ctx.wheel.insert(at, TimerEntry::Stall(id));
            return;
        }
        let queued = c.queue.len();
        if let Some(quiet) = ctx.stall_log.ready(ctx.now, 1) {
            eprintln!(
                "surge: closing a connection whose peer read nothing for {} ms ({queued} bytes \
                 queued; write_stall_timeout){}",
                waited.as_millis(),
                crate::ratelog::RateLog::more(quiet)
            );
        }
        self.close_callback(id, CloseCode::POLICY, "write stall", false);
        self.ctx.remove(id);
    }

    pub(super) fn conn_timer(&mut self, id: ConnId, tick: u64) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if c.timer != (tick as u32).wrapping_add(1) {
            return; // re-armed or disarmed since
        }
        c.timer = 0;
        match &mut c.stage {
            Stage::Handshake(_) | Stage::Deferred(_) | Stage::Draining => ctx.remove(id),
            Stage::Dial(_) => self.dial_failed(id, ConnectError::Timeout),
            Stage::Open(core) => {
                let was_closing = core.state() == State::CloseSent;
                let mut out = QueueOutput {
                    queue: &mut c.queue,
                    pool: &mut ctx.chunks,
                };
                match core.handle_timeout(ctx.now, &ctx.cfg.proto, &mut out) {
                    proto::TimeoutAction::None => ctx.sync_timer(id),
                    proto::TimeoutAction::PingSent => {
                        ctx.mark_dirty(id);
                        ctx.sync_timer(id);
                    }
                    proto::TimeoutAction::Closed => {
                        self.close_callback(id, CloseCode::ABNORMAL, "", false);
                        if was_closing {
                            // The peer never answered our close: nothing more to wait for.
                            self.ctx.remove(id);
                        } else {
                            // Keepalive gave up: the core queued a 1001 close; flush it if we can.
                            self.ctx.enter_draining(id);
                        }
                    }
                }
            }
        }
    }
}
