//! The send path: frames into write queues, the backpressure policy, pongs, the stall clock.

use super::*;
use crate::buf::QueueOutput;
use crate::handler::SendStatus;
use crate::proto::{CloseCode, MessageKind, OpCode};
use crate::server::config::BackpressurePolicy;
use crate::server::registry::ConnId;

impl<D> WorkerCtx<D> {
    /// Starts our close handshake (also while the connection's events are delivered: the core's
    /// writer is in the slot).
    pub(super) fn start_close(&mut self, id: ConnId, code: CloseCode, reason: &str) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        let Stage::Open(p) = &mut c.stage else {
            return SendStatus::Closed;
        };
        if !p.writer.can_send() {
            return SendStatus::Closed;
        }
        if !code.is_valid_on_wire() {
            return SendStatus::Invalid;
        }
        let mut out = QueueOutput {
            queue: &mut c.queue,
            pool: &mut self.chunks,
        };
        let _ = p
            .writer
            .close(&mut out, Some(code), reason, self.now, &self.cfg.proto);
        self.mark_dirty(id);
        self.sync_timer(id);
        SendStatus::Sent
    }

    /// Queues one data message or control frame, applying the backpressure policy to data
    /// (`exempt`: not to this frame). `rsv`: RSV bits on a whole message's first frame (RSV1:
    /// compressed; 0 otherwise).
    pub(super) fn send_frame(
        &mut self,
        id: ConnId,
        op: OpCode,
        payload: &[u8],
        fin: bool,
        exempt: bool,
        rsv: u8,
    ) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        if !c.can_send() {
            return SendStatus::Closed;
        }
        if !exempt && c.would_pass(payload.len(), self.cfg.max_backpressure) {
            return self.refuse_over_limit(id);
        }
        let Stage::Open(p) = &mut c.stage else {
            return SendStatus::Closed;
        };
        let mut out = QueueOutput {
            queue: &mut c.queue,
            pool: &mut self.chunks,
        };
        // The connection's own writer: it masks for a client connection and refuses data once
        // the close handshake has begun.
        let writer = &mut p.writer;
        let result = match op {
            OpCode::Ping => writer.ping(&mut out, payload),
            OpCode::Pong => writer.pong(&mut out, payload),
            OpCode::Text | OpCode::Binary if fin => {
                let kind = if op == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                writer.send(&mut out, kind, payload, &self.cfg.proto, rsv)
            }
            _ => writer.frame(&mut out, op, fin, payload),
        };
        if result.is_err() {
            return SendStatus::Invalid;
        }
        self.metrics.frame_sent(op, fin, payload.len());
        self.queued(id)
    }

    /// The backpressure policy for a message that `id`'s write queue refuses (see
    /// `Connection::would_pass`): marks the connection over the limit, then drops the message
    /// (counted) or starts the close, as the policy says.
    pub(super) fn refuse_over_limit(&mut self, id: ConnId) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        c.set(Flag::Over);
        match self.cfg.backpressure_policy {
            BackpressurePolicy::Drop => {
                c.dropped = c.dropped.saturating_add(1);
                self.dropped += 1;
                SendStatus::Dropped
            }
            BackpressurePolicy::Close(code) => {
                self.metrics.backpressure_close();
                let _ = self.start_close(id, code, "backpressure limit");
                SendStatus::Closed
            }
        }
    }

    /// Queues a pong (the automatic answer to a ping, or the handler's), counted toward the
    /// backpressure limit like data: a peer that sends pings and reads nothing cannot make the
    /// queue grow without bound. Past the limit, under the `Drop` policy, only the latest pong
    /// waits (sent once the queue falls back under: `Backpressure`); under `Close`, the close starts.
    pub(super) fn send_pong(&mut self, id: ConnId, payload: &[u8]) -> SendStatus {
        let Some(c) = self.conns.get_mut(id) else {
            return SendStatus::Closed;
        };
        if !c.can_send() {
            return SendStatus::Closed;
        }
        if payload.len() > 125 {
            return SendStatus::Invalid;
        }
        if c.would_pass(payload.len() + 6, self.cfg.max_backpressure) {
            c.set(Flag::Over);
            if let BackpressurePolicy::Close(code) = self.cfg.backpressure_policy {
                self.metrics.backpressure_close();
                let _ = self.start_close(id, code, "backpressure limit");
                return SendStatus::Closed;
            }
            let pending = self.pending_pongs.entry(id).or_default();
            pending.clear();
            pending.extend_from_slice(payload);
            return SendStatus::Backpressure;
        }
        self.send_frame(id, OpCode::Pong, payload, true, true, 0)
    }

    /// A connection's write queue fell back under the limit: the pong that waited goes out.
    pub(super) fn send_pending_pong(&mut self, id: ConnId) {
        if self.pending_pongs.is_empty() {
            return;
        }
        if let Some(p) = self.pending_pongs.remove(&id) {
            let _ = self.send_frame(id, OpCode::Pong, &p, true, true, 0);
        }
    }

    /// Records a flush's outcome for the write-stall check: `wrote` whether any byte left. A
    /// queue that starts waiting (or makes progress) restarts the stall clock; the first wait arms
    /// the connection's one check in the wheel.
    pub(super) fn note_flush(&mut self, id: ConnId, wrote: bool) {
        let Some(timeout) = self.cfg.write_stall_timeout else {
            return;
        };
        let now = self.wheel.tick_of(self.now) as u32 | 1;
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.queue.is_empty() {
            c.stall = 0;
            return;
        }
        if wrote || c.stall == 0 {
            c.stall = now;
        }
        if !c.has(Flag::StallArmed) {
            c.set(Flag::StallArmed);
            self.wheel.insert(self.now + timeout, TimerEntry::Stall(id));
        }
    }

    /// Ends a send that queued bytes on `id`: marks it for flushing and, when its write queue is
    /// now past the limit, marks it over and applies the `Close` policy (`Drop` only refuses
    /// later messages). `Backpressure` when over the limit, else `Sent`.
    pub(super) fn queued(&mut self, id: ConnId) -> SendStatus {
        let over = match self.conns.get_mut(id) {
            Some(c) if c.queue.cost() > self.cfg.max_backpressure => {
                c.set(Flag::Over);
                true
            }
            _ => false,
        };
        self.mark_dirty(id);
        if over {
            if let BackpressurePolicy::Close(code) = self.cfg.backpressure_policy {
                self.metrics.backpressure_close();
                let _ = self.start_close(id, code, "backpressure limit");
            }
            SendStatus::Backpressure
        } else {
            SendStatus::Sent
        }
    }
}
