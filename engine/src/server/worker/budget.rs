//! The worker's budget for partly received messages ([`ServerConfig::max_assembly_per_worker`]).
//!
//! A peer that trickles a message in makes its connection hold the message so far, up to
//! `max_message_size`; many such peers together could hold any amount. The worker keeps a running
//! total of what its connections hold for messages in progress: each read's change is added in
//! `ws_bytes` (the reader's held bytes before and after, two loads per read, no per-connection
//! field), and a connection's share is taken off when its core is recycled (`remove`,
//! `enter_draining`). Past the budget, the connections holding the most are failed with 1013 (try
//! again later) until the total is back under it: a scan of the worker's connections, only when
//! over budget.
//!
//! What counts: the reader's assembly buffer (its capacity: a message or a control frame partly
//! received, compressed messages as received), and an inflater held between the pieces of a
//! compressed message streamed over several reads. Inflated whole messages are not held across
//! reads (the core inflates them at once into the worker's one buffer, bounded by
//! `max_decompressed`).
//!
//! [`ServerConfig::max_assembly_per_worker`]: crate::ServerConfig::max_assembly_per_worker

use super::{Connection, Stage, Worker, WorkerCtx};
use crate::buf::QueueOutput;
use crate::handler::Handler;
use crate::proto::CloseCode;
use crate::ConnId;

/// What an inflater held between pieces costs (zlib-rs: 47 KiB; docs/ENGINE.md, "Memory").
const INFLATER_BYTES: usize = 47 << 10;

/// The code a connection shed for the budget is closed with: 1013, "try again later". The message
/// was within `max_message_size`, so 1009 would say the wrong thing; what ran out is the server's
/// memory for all messages in progress, which may be there again later.
pub(super) const SHED_CODE: CloseCode = CloseCode::TRY_AGAIN;
/// The reason sent with [`SHED_CODE`].
pub(super) const SHED_REASON: &str = "server busy: message assembly budget";

/// A worker's running total of bytes held by messages in progress, and its log state.
#[derive(Debug, Default)]
pub(super) struct AssemblyBudget {
    /// Bytes held for messages in progress by this worker's open connections.
    held: usize,
    /// Log lines about sheds (the count is of connections).
    log: crate::ratelog::RateLog,
}

impl AssemblyBudget {
    /// A connection's core leaves (removed, or draining): what it held is no longer counted.
    pub(super) fn release(&mut self, held: usize) {
        self.held = self.held.saturating_sub(held);
    }
}

impl<D> Connection<D> {
    /// Heap bytes this connection holds for a message in progress (0 outside the open stage, and
    /// while `ws_bytes` has the reader out).
    pub(super) fn assembly_held(&self) -> usize {
        let Stage::Open(core) = &self.stage else {
            return 0;
        };
        let inflater = match self.deflate.as_deref() {
            Some(st) if st.inflater_held() => INFLATER_BYTES,
            _ => 0,
        };
        core.reader.held_bytes() + inflater
    }
}

impl<D> WorkerCtx<D> {
    /// `id`'s reader is back after a read: its held bytes went from `before` to what it holds now.
    pub(super) fn assembly_settled(&mut self, id: ConnId, before: usize) {
        let now = self.conns.get(id).map_or(0, Connection::assembly_held);
        self.budget.held = (self.budget.held + now).saturating_sub(before);
    }

    /// A connection's core leaves (removed, or draining): what it held is no longer counted.
    pub(super) fn assembly_released(&mut self, held: usize) {
        self.budget.release(held);
    }

    /// Bytes held by messages in progress on this worker's connections (what
    /// [`ServerConfig::max_assembly_per_worker`](crate::ServerConfig::max_assembly_per_worker)
    /// bounds).
    pub fn assembly_bytes(&self) -> usize {
        self.budget.held
    }
}

impl<H: Handler> Worker<H> {
    /// Past the budget, fails the connections holding the most (with [`SHED_CODE`]: a close frame,
    /// `on_close`, then draining) until the total is back under it. Nothing to do, and no scan, while
    /// under it.
    pub(super) fn enforce_assembly_budget(&mut self) {
        let limit = self.ctx.cfg.max_assembly_per_worker;
        if self.ctx.budget.held <= limit {
            return;
        }
        let before = self.ctx.budget.held;
        let mut holders: Vec<(usize, ConnId)> = self
            .ctx
            .conns
            .ids()
            .filter_map(|id| {
                let held = self.ctx.conns.get(id)?.assembly_held();
                (held > 0).then_some((held, id))
            })
            .collect();
        debug_assert_eq!(
            holders.iter().map(|h| h.0).sum::<usize>(),
            before,
            "the running total matches the connections"
        );
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let mut shed = 0u64;
        for (_, id) in holders {
            if self.ctx.budget.held <= limit {
                break;
            }
            self.shed(id);
            shed += 1;
        }
        let ctx = &mut self.ctx;
        let Some(earlier) = ctx.budget.log.ready(ctx.now, shed) else {
            return;
        };
        let more = crate::ratelog::RateLog::more(earlier);
        eprintln!(
            "surge: worker {}: messages in progress held {before} bytes, over \
             max_assembly_per_worker ({limit}): closed the {shed} connection(s) holding the most \
             with {}{more}",
            ctx.index, SHED_CODE
        );
    }

    /// Fails `id` as for a protocol error: the core queues a close with [`SHED_CODE`], `on_close`
    /// runs, and the connection drains (its assembly buffer is freed now).
    fn shed(&mut self, id: ConnId) {
        let ctx = &mut self.ctx;
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        let Stage::Open(core) = &mut c.stage else {
            return;
        };
        let mut out = QueueOutput {
            queue: &mut c.queue,
            pool: &mut ctx.chunks,
        };
        core.writer.fail_with(&mut out, SHED_CODE, SHED_REASON);
        ctx.mark_dirty(id);
        self.close_callback(id, SHED_CODE, SHED_REASON, false);
        self.ctx.enter_draining(id);
    }
}
