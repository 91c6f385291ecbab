//! A hashed timer wheel per worker: 1 ms ticks, 4096 slots (one turn is about 4 s; later deadlines
//! wait in their slot for later turns).
//!
//! It serves handshake deadlines, the protocol core's timeouts (close handshake, keepalive) and the
//! application's one-shot and periodic timers. Cancelling is lazy: the owner keeps the tick it armed
//! and ignores entries that no longer match, so arming and cancelling never search the wheel.
//! A bitmap of non-empty slots finds the next deadline for the poll timeout in a few word scans.

use std::time::{Duration, Instant};

/// Length of one tick.
pub(crate) const TICK: Duration = Duration::from_millis(1);
const SLOTS: usize = 4096;
const WORDS: usize = SLOTS / 64;

/// A timer wheel holding values of type `T`.
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    slots: Vec<Vec<(u64, T)>>,
    nonempty: [u64; WORDS],
    start: Instant,
    /// The next tick to process: every entry with a smaller tick has fired.
    current: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    pub(crate) fn new(start: Instant) -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            nonempty: [0; WORDS],
            start,
            current: 0,
            len: 0,
        }
    }

    /// Entries held (including stale ones not yet reached).
    #[cfg(test)]
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
        self.start + TICK * tick as u32
    }

    /// Arms `value` for `at`; returns the tick it will fire at (the owner's key for lazy cancel).
    pub(crate) fn insert(&mut self, at: Instant, value: T) -> u64 {
        let tick = self.tick_of(at).max(self.current);
        let slot = (tick % SLOTS as u64) as usize;
        self.slots[slot].push((tick, value));
        self.nonempty[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
        tick
    }

    /// Removes the entries of `tick`'s slot that `matches` selects (their slot is known, so this
    /// scans only the entries of that millisecond). Only the low 32 bits of `tick` are needed.
    pub(crate) fn cancel(&mut self, tick: u64, mut matches: impl FnMut(u64, &T) -> bool) {
        let slot = (tick % SLOTS as u64) as usize;
        let entries = &mut self.slots[slot];
        let before = entries.len();
        entries.retain(|(t, v)| !matches(*t, v));
        self.len -= before - entries.len();
        if entries.is_empty() {
            self.nonempty[slot / 64] &= !(1 << (slot % 64));
            *entries = Vec::new();
        }
    }

    /// Moves every entry due at `now` into `out`, with the tick it was armed for.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(u64, T)>) {
        // Ticks that have begun by `now`; an entry armed for tick T (rounded up) is due once T began.
        let now_tick = now.saturating_duration_since(self.start).as_millis() as u64;
        if now_tick < self.current {
            return;
        }
        let span = (now_tick - self.current + 1).min(SLOTS as u64);
        for t in self.current..self.current + span {
            let slot = (t % SLOTS as u64) as usize;
            if self.nonempty[slot / 64] & (1 << (slot % 64)) == 0 {
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
            if entries.is_empty() {
                self.nonempty[slot / 64] &= !(1 << (slot % 64));
                // An idle wheel holds no memory (per-connection accounting counts it).
                *entries = Vec::new();
            }
        }
        self.current = now_tick + 1;
    }

    /// How long until the next slot with entries comes up; `None` when the wheel is empty. May be
    /// early (the entry may be due on a later turn): then nothing fires and the wait is computed again.
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let base = (self.current % SLOTS as u64) as usize;
        let mut dist = None;
        // Scan the bitmap from `base` around the wheel.
        for step in 0..=WORDS {
            let w = (base / 64 + step) % WORDS;
            let mut bits = self.nonempty[w];
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
        let dist = dist? as u64;
        let mut due = self.current + dist;
        // The earliest entry in that slot may be on this turn or a later one.
        let slot = (due % SLOTS as u64) as usize;
        if let Some(min) = self.slots[slot].iter().map(|e| e.0).min() {
            due = due.max(min.min(due + SLOTS as u64));
        }
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
}
