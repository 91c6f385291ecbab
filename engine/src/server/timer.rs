//! A hierarchical timer wheel per worker, 1 ms ticks.
//!
//! - Level 0: 4096 slots, one per tick of the current *block* (4096 aligned ticks, about 4 s).
//!   Every entry in a slot is due at exactly that slot's tick, so the next deadline is the first
//!   non-empty slot at or after the current tick: exact, found in a few bitmap word scans.
//! - Level 1: 1024 slots, one per later block (about 70 minutes ahead). When the current tick
//!   enters a block, that block's slot cascades into level 0.
//! - Beyond: an ordered map, moved into level 1 as blocks come within its reach.
//!
//! An earlier single-level wheel kept later turns' entries in the same slots and answered the
//! poll timeout with the nearest non-empty slot: an entry for a later turn hid every nearer one,
//! and a 30 Hz interval beside a 10 s timeout stalled for 4.1 s. Here each level holds only what
//! it can order, so [`TimerWheel::next_timeout`] is never later than the earliest deadline (with
//! only level 1 or beyond armed it may be early, at the start of the block to cascade).
//!
//! It serves handshake deadlines, the protocol core's timeouts (close handshake, keepalive) and the
//! application's one-shot and periodic timers. Cancelling is lazy: the owner keeps the tick it armed
//! and ignores entries that no longer match; [`TimerWheel::cancel`] removes one early (the owner
//! knows its tick, so only that slot is searched). Ticks are counted in `u64` from the wheel's
//! start: no wrap in the life of a process.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Length of one tick.
pub(crate) const TICK: Duration = Duration::from_millis(1);
/// Ticks per block: level 0's slots.
const BLOCK: u64 = 4096;
const L0_WORDS: usize = BLOCK as usize / 64;
/// Blocks level 1 reaches ahead of the current one (its slots).
const L1_SLOTS: u64 = 1024;
const L1_WORDS: usize = L1_SLOTS as usize / 64;
/// The farthest ahead an owner that keeps only a tick's low 32 bits may arm (about 24.8 days);
/// see [`TimerWheel::full_tick`].
pub(crate) const MAX_LOW32_AHEAD: Duration = Duration::from_millis(1 << 31);

/// A timer wheel holding values of type `T`.
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    /// Level 0: the current block's ticks.
    l0: Vec<Vec<T>>,
    l0_bits: [u64; L0_WORDS],
    /// Level 1: the next `L1_SLOTS - 1` blocks, each slot holding one block's entries.
    l1: Vec<Vec<(u64, T)>>,
    l1_bits: [u64; L1_WORDS],
    /// Entries of blocks beyond level 1's reach, by tick (and an arrival number: equal ticks).
    far: BTreeMap<(u64, u64), T>,
    far_seq: u64,
    start: Instant,
    /// The next tick to process: every entry with a smaller tick has fired. Its block is level 0's.
    current: u64,
    len: usize,
}

/// The first set bit of `bits` at index `from` or after, up to `end` (exclusive) without wrapping.
fn first_set(bits: &[u64], from: usize, end: usize) -> Option<usize> {
    let mut w = from / 64;
    let mut word = bits.get(w)? & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            let i = w * 64 + word.trailing_zeros() as usize;
            return (i < end).then_some(i);
        }
        w += 1;
        if w * 64 >= end {
            return None;
        }
        word = bits[w];
    }
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

impl<T> TimerWheel<T> {
    pub(crate) fn new(start: Instant) -> Self {
        TimerWheel {
            l0: (0..BLOCK).map(|_| Vec::new()).collect(),
            l0_bits: [0; L0_WORDS],
            l1: (0..L1_SLOTS).map(|_| Vec::new()).collect(),
            l1_bits: [0; L1_WORDS],
            far: BTreeMap::new(),
            far_seq: 0,
            start,
            current: 0,
            len: 0,
        }
    }

    /// Entries held (including stale ones not yet reached).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The tick at or after `at` (timers never fire early).
    pub(crate) fn tick_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start);
        let ms = d.as_millis() as u64;
        if d > Duration::from_millis(ms) {
            ms + 1
        } else {
            ms
        }
    }

    /// The instant a tick begins.
    pub(crate) fn instant_of(&self, tick: u64) -> Instant {
        self.start + Duration::from_millis(tick)
    }

    /// The whole tick whose low 32 bits are `low`, for an owner that keeps only those and armed it
    /// at most [`MAX_LOW32_AHEAD`] ahead: the one in `[current - 2^31, current + 2^31)`, so an entry
    /// that has fired already maps to a tick in the past and is found nowhere.
    pub(crate) fn full_tick(&self, low: u32) -> u64 {
        let delta = low.wrapping_sub(self.current as u32) as i32;
        self.current.wrapping_add_signed(i64::from(delta))
    }

    fn block_of(tick: u64) -> u64 {
        tick / BLOCK
    }

    fn cur_block(&self) -> u64 {
        Self::block_of(self.current)
    }

    /// Files an entry for `tick` (at or after `current`) at the level that covers its block.
    fn place(&mut self, tick: u64, value: T) {
        let block = Self::block_of(tick);
        let ahead = block - self.cur_block();
        if ahead == 0 {
            let slot = (tick % BLOCK) as usize;
            self.l0[slot].push(value);
            set_bit(&mut self.l0_bits, slot);
        } else if ahead < L1_SLOTS {
            let slot = (block % L1_SLOTS) as usize;
            self.l1[slot].push((tick, value));
            set_bit(&mut self.l1_bits, slot);
        } else {
            self.far_seq += 1;
            self.far.insert((tick, self.far_seq), value);
        }
    }

    /// Arms `value` for `at`; returns the tick it will fire at (the owner's key for cancel).
    pub(crate) fn insert(&mut self, at: Instant, value: T) -> u64 {
        let tick = self.tick_of(at).max(self.current);
        self.place(tick, value);
        self.len += 1;
        tick
    }

    /// Removes the entries armed for `tick` that `matches` selects (only that tick's slot is
    /// searched).
    pub(crate) fn cancel(&mut self, tick: u64, mut matches: impl FnMut(u64, &T) -> bool) {
        if tick < self.current {
            return; // fired already
        }
        let block = Self::block_of(tick);
        let ahead = block - self.cur_block();
        let removed = if ahead == 0 {
            let slot = (tick % BLOCK) as usize;
            let entries = &mut self.l0[slot];
            let before = entries.len();
            entries.retain(|v| !matches(tick, v));
            if entries.is_empty() {
                clear_bit(&mut self.l0_bits, slot);
                *entries = Vec::new(); // an idle wheel holds no memory
            }
            before - entries.len()
        } else if ahead < L1_SLOTS {
            let slot = (block % L1_SLOTS) as usize;
            let entries = &mut self.l1[slot];
            let before = entries.len();
            entries.retain(|(t, v)| !(*t == tick && matches(*t, v)));
            if entries.is_empty() {
                clear_bit(&mut self.l1_bits, slot);
                *entries = Vec::new();
            }
            before - entries.len()
        } else {
            let keys: Vec<(u64, u64)> = self
                .far
                .range((tick, 0)..=(tick, u64::MAX))
                .filter(|(k, v)| matches(k.0, v))
                .map(|(k, _)| *k)
                .collect();
            for k in &keys {
                self.far.remove(k);
            }
            keys.len()
        };
        self.len -= removed;
    }

    /// Moves every entry due at `now` into `out`, with the tick it was armed for.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(u64, T)>) {
        // Ticks that have begun by `now`; an entry armed for tick T (rounded up) is due once T began.
        let now_tick = now.saturating_duration_since(self.start).as_millis() as u64;
        while self.current <= now_tick {
            let block = self.cur_block();
            let block_end = (block + 1) * BLOCK; // first tick of the next block
            let upto = now_tick.min(block_end - 1);
            // Level 0: each slot holds exactly its tick's entries.
            let from = (self.current % BLOCK) as usize;
            let end = (upto % BLOCK) as usize + 1;
            let mut at = from;
            while let Some(slot) = first_set(&self.l0_bits, at, end) {
                let tick = block * BLOCK + slot as u64;
                let entries = std::mem::take(&mut self.l0[slot]);
                clear_bit(&mut self.l0_bits, slot);
                self.len -= entries.len();
                out.extend(entries.into_iter().map(|v| (tick, v)));
                at = slot + 1;
            }
            self.current = upto + 1;
            if self.current == block_end {
                self.enter_next_block(now_tick);
            }
        }
    }

    /// The current tick has just reached a block's start: moves to the first block at or after it
    /// that holds entries or contains `now_tick` (skipping empty ones: a long gap costs one step per
    /// armed block, not per block), then cascades that block's entries into level 0 and brings far
    /// entries within level 1's reach.
    fn enter_next_block(&mut self, now_tick: u64) {
        let next = self.cur_block();
        let mut target = Self::block_of(now_tick).max(next);
        if let Some(armed) = self.first_l1_block(next) {
            target = target.min(armed);
        }
        if let Some(&(tick, _)) = self.far.keys().next() {
            target = target.min(Self::block_of(tick));
        }
        let target = target.max(next);
        if target > next {
            self.current = target * BLOCK;
        }
        // Cascade the block now current.
        let slot = (target % L1_SLOTS) as usize;
        if self.l1_bits[slot / 64] & (1 << (slot % 64)) != 0 {
            let entries = std::mem::take(&mut self.l1[slot]);
            clear_bit(&mut self.l1_bits, slot);
            for (tick, v) in entries {
                debug_assert_eq!(Self::block_of(tick), target);
                let s = (tick % BLOCK) as usize;
                self.l0[s].push(v);
                set_bit(&mut self.l0_bits, s);
            }
        }
        // Far entries that level 0 or 1 now reaches.
        let limit = (target + L1_SLOTS) * BLOCK;
        while let Some(entry) = self.far.first_entry() {
            if entry.key().0 >= limit {
                break;
            }
            let ((tick, _), v) = entry.remove_entry();
            self.place(tick, v);
        }
    }

    /// The first block at or after `from` with entries in level 1 (which holds blocks `from` to
    /// `from + L1_SLOTS - 2` when `from` follows the current block).
    fn first_l1_block(&self, from: u64) -> Option<u64> {
        let slot = (from % L1_SLOTS) as usize;
        let d = match first_set(&self.l1_bits, slot, L1_SLOTS as usize) {
            Some(s) => s - slot,
            None => first_set(&self.l1_bits, 0, slot)? + L1_SLOTS as usize - slot,
        };
        Some(from + d as u64)
    }

    /// How long until the next entry is due; `None` when the wheel is empty. Exact while level 0
    /// holds entries; otherwise it may be early (the start of the next armed block, which then
    /// cascades), never late.
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let block = self.cur_block();
        let from = (self.current % BLOCK) as usize;
        let due = if let Some(slot) = first_set(&self.l0_bits, from, BLOCK as usize) {
            block * BLOCK + slot as u64
        } else {
            // Nothing left in this block: the start of the next armed block (its cascade), or the
            // first far entry when level 1 is empty.
            match self.first_l1_block(block + 1) {
                Some(armed) => armed * BLOCK,
                None => self.far.keys().next()?.0,
            }
        };
        Some(self.instant_of(due).saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_in_order_never_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(t0 + ms(5), 'a');
        w.insert(t0 + ms(3) + Duration::from_micros(10), 'b');
        w.insert(t0 + ms(10_000), 'c'); // several turns away
        assert_eq!(w.next_timeout(t0), Some(ms(4)));
        let mut out = Vec::new();
        w.expire(t0 + ms(3), &mut out);
        assert!(out.is_empty(), "3.01 ms is not due at 3 ms");
        w.expire(t0 + ms(4), &mut out);
        assert_eq!(out.iter().map(|e| e.1).collect::<Vec<_>>(), vec!['b']);
        out.clear();
        w.expire(t0 + ms(5), &mut out);
        assert_eq!(out.iter().map(|e| e.1).collect::<Vec<_>>(), vec!['a']);
        out.clear();
        assert_eq!(w.len(), 1);
        let wait = w.next_timeout(t0 + ms(5)).unwrap();
        assert!(wait > ms(0) && wait <= ms(10_000));
        w.expire(t0 + ms(9_999), &mut out);
        assert!(out.is_empty(), "a later turn's entry waits");
        w.expire(t0 + ms(10_000), &mut out);
        assert_eq!(out.iter().map(|e| e.1).collect::<Vec<_>>(), vec!['c']);
        assert_eq!(w.next_timeout(t0), None);
        let tick = w.insert(t0 + ms(20_000), 'd');
        w.insert(t0 + ms(20_000), 'e');
        w.cancel(tick, |_, v| *v == 'd');
        assert_eq!(w.len(), 1);
        w.expire(t0 + ms(20_000), &mut out);
        assert_eq!(out.last().map(|e| e.1), Some('e'));
    }

    /// The case: a near periodic timer beside one several turns of the old wheel ahead
    /// whose slot comes first.
    #[test]
    fn far_entry_does_not_hide_a_near_one() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(t0 + ms(2 * 4096 + 5), "far");
        w.insert(t0 + ms(33), "near");
        assert_eq!(w.next_timeout(t0), Some(ms(33)));
        let mut out = Vec::new();
        w.expire(t0 + ms(33), &mut out);
        assert_eq!(out, vec![(33, "near")]);
        // Only the far one left: the wake-up is at most a block away and never after it.
        let wait = w.next_timeout(t0 + ms(33)).unwrap();
        assert!(wait <= ms(2 * 4096 + 5 - 33));
    }

    #[test]
    fn long_gap_visits_every_slot_once() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        for i in 0..10_000u64 {
            w.insert(t0 + ms(i * 3), i);
        }
        let mut out = Vec::new();
        w.expire(t0 + ms(100_000), &mut out);
        assert_eq!(out.len(), 10_000);
        assert_eq!(w.len(), 0);
        // Past deadlines fire at the next expiry.
        w.insert(t0, 7);
        w.expire(t0 + ms(100_001), &mut out);
        assert_eq!(out.len(), 10_001);
    }

    #[test]
    fn past_2_pow_32_ms() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let base = (1u64 << 32) - 50;
        let mut out = Vec::new();
        w.expire(t0 + ms(base), &mut out);
        let tick = w.insert(t0 + ms(base + 100), 1);
        assert_eq!(w.full_tick(tick as u32), tick);
        // 2^32 begins a block: the wake-up at its start cascades, then the wait is exact.
        assert_eq!(w.next_timeout(t0 + ms(base)), Some(ms(50)));
        w.expire(t0 + ms(base + 50), &mut out);
        assert!(out.is_empty());
        assert_eq!(w.next_timeout(t0 + ms(base + 50)), Some(ms(50)));
        w.expire(t0 + ms(base + 99), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + ms(base + 100), &mut out);
        assert_eq!(out, vec![(base + 100, 1)]);
        assert_eq!(w.next_timeout(t0 + ms(base + 100)), None);
    }

    /// Random operation sequences against a reference model (see `fuzzing::fuzz_check_timer_wheel`).
    #[test]
    fn model_random_sequences() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..300 {
            let mut data = vec![0u8; 600];
            for b in &mut data {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            crate::fuzzing::fuzz_check_timer_wheel(&data);
        }
    }
}
