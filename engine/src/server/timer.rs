//! A hashed timer wheel per worker: 1 ms ticks, 4096 slots (one turn is about 4 s; later deadlines
//! wait in their slot for later turns).
//!
//! It serves handshake deadlines, the protocol core's timeouts (close handshake, keepalive) and the
//! application's one-shot and periodic timers. Cancelling is lazy: the owner keeps the tick it armed
//! and ignores entries that no longer match; [`TimerWheel::cancel`] removes one early, searching
//! only its slot (the entries of one millisecond), so arming and cancelling never search the wheel.
//!
//! Two bitmaps find the poll timeout in a few word scans: slots with entries, and slots with an
//! entry due in the current turn (tick below `current + 4096`). The poll timeout is the first slot
//! of the second kind: exact. (An earlier version took the first non-empty slot, so an entry for a
//! later turn hid every nearer one: a 30 Hz interval beside a 10 s timeout stalled for 4.1 s.)
//! With only later turns' entries, the wait is one turn: early, never late. The "due" bit of a
//! slot changes only when the current tick passes over it, and `expire` recomputes it then, from
//! the entries it looks at anyway. Ticks are `u64` milliseconds since the wheel's start: no wrap
//! in the life of a process.

use std::time::{Duration, Instant};

/// Length of one tick.
pub(crate) const TICK: Duration = Duration::from_millis(1);
const SLOTS: usize = 4096;
const WORDS: usize = SLOTS / 64;
/// The farthest ahead an owner that keeps only a tick's low 32 bits may arm (about 24.8 days);
/// see [`TimerWheel::full_tick`].
pub(crate) const MAX_LOW32_AHEAD: Duration = Duration::from_millis(1 << 31);

/// A timer wheel holding values of type `T`.
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// Slots with entries.
    nonempty: [u64; WORDS],
    /// Slots with an entry due in the current turn (tick < `current + SLOTS`).
    due: [u64; WORDS],
    start: Instant,
    /// The next tick to process: every entry with a smaller tick has fired.
    current: u64,
    len: usize,
}

fn set_bit(bits: &mut [u64; WORDS], i: usize, on: bool) {
    if on {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

fn bit(bits: &[u64; WORDS], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

impl<T> TimerWheel<T> {
    pub(crate) fn new(start: Instant) -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            nonempty: [0; WORDS],
            due: [0; WORDS],
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

    /// Re-derives a slot's bits from its entries (after they changed).
    fn settle(&mut self, slot: usize) {
        let horizon = self.current + SLOTS as u64;
        let entries = &mut self.slots[slot];
        if entries.is_empty() {
            // An idle wheel holds no memory (per-connection accounting counts it).
            *entries = Vec::new();
        }
        let due = entries.iter().any(|e| e.0 < horizon);
        let nonempty = !entries.is_empty();
        set_bit(&mut self.nonempty, slot, nonempty);
        set_bit(&mut self.due, slot, due);
    }

    /// Arms `value` for `at`; returns the tick it will fire at (the owner's key for cancel).
    pub(crate) fn insert(&mut self, at: Instant, value: T) -> u64 {
        let tick = self.tick_of(at).max(self.current);
        let slot = (tick % SLOTS as u64) as usize;
        self.slots[slot].push((tick, value));
        set_bit(&mut self.nonempty, slot, true);
        if tick < self.current + SLOTS as u64 {
            set_bit(&mut self.due, slot, true);
        }
        self.len += 1;
        tick
    }

    /// Removes the entries armed for `tick` that `matches` selects (only that tick's slot is
    /// searched).
    pub(crate) fn cancel(&mut self, tick: u64, mut matches: impl FnMut(u64, &T) -> bool) {
        let slot = (tick % SLOTS as u64) as usize;
        let entries = &mut self.slots[slot];
        let before = entries.len();
        entries.retain(|(t, v)| !(*t == tick && matches(*t, v)));
        let removed = before - entries.len();
        if removed > 0 {
            self.len -= removed;
            self.settle(slot);
        }
    }

    /// Moves every entry due at `now` into `out`, with the tick it was armed for.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(u64, T)>) {
        // Ticks that have begun by `now`; an entry armed for tick T (rounded up) is due once T began.
        let now_tick = now.saturating_duration_since(self.start).as_millis() as u64;
        if now_tick < self.current {
            return;
        }
        let from = self.current;
        let span = (now_tick - from + 1).min(SLOTS as u64);
        self.current = now_tick + 1;
        for t in from..from + span {
            let slot = (t % SLOTS as u64) as usize;
            if !bit(&self.nonempty, slot) {
                continue;
            }
            let entries = &mut self.slots[slot];
            let mut i = 0;
            while i < entries.len() {
                if entries[i].0 <= now_tick {
                    out.push(entries.swap_remove(i));
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
            // The current tick passed over this slot: its later entries are a turn nearer.
            self.settle(slot);
        }
    }

    /// How long until the next entry is due; `None` when the wheel is empty. Exact when an entry
    /// is due within the current turn; otherwise one turn (early, never late: nothing fires and
    /// the wait is computed again).
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let base = (self.current % SLOTS as u64) as usize;
        let mut dist = None;
        // Scan the due bitmap from `base` around the wheel.
        for step in 0..=WORDS {
            let w = (base / 64 + step) % WORDS;
            let mut bits = self.due[w];
            if step == 0 {
                bits &= !0u64 << (base % 64);
            } else if step == WORDS {
                bits &= !(!0u64 << (base % 64));
            }
            if bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as usize;
                dist = Some((slot + SLOTS - base) % SLOTS);
                break;
            }
        }
        let due = self.current + dist.unwrap_or(SLOTS) as u64;
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
        // Only the far one left: the wake-up is at most a turn away and never after it.
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
        assert_eq!(w.next_timeout(t0 + ms(base)), Some(ms(100)));
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
