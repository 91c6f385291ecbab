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
    /// Entries inserted and entries expired so far (stale ones included; the metrics read them).
    pub(crate) armed: u64,
    pub(crate) fired: u64,
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
            armed: 0,
            fired: 0,
        }
    }

    /// Entries held (including stale ones not yet reached).
    #[cfg(any(test, fuzzing))]
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
        self.armed += 1;
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
                    self.fired += 1;
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

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
/// The worker's timer wheel against a reference model (a map of live timers and their deadlines).
/// Input: a sequence of operations (arm with a delay from sub-millisecond to about 24 days, cancel,
/// a loop step that sleeps as `next_timeout` says but at most a given time, a busy jump forward,
/// a jump to just before 2^32 ms). After every step: `next_timeout` is never later than the
/// earliest deadline and `None` only when nothing is armed; every timer fires at most once, never
/// before its deadline, and, when the loop slept as told, at most one tick after it; nothing due
/// is left unfired; `cancel` at the tick from `full_tick` removes exactly the timer.
pub fn fuzz_check_timer_wheel(data: &[u8]) {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    let t0 = Instant::now();
    let mut wheel = TimerWheel::new(t0);
    // id -> (deadline in µs since t0, tick)
    let mut live: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut next_id = 0u64;
    let mut now_us = 0u64;
    let mut out = Vec::new();
    let at = |us: u64| t0 + Duration::from_micros(us);
    let max_ahead_ms = MAX_LOW32_AHEAD.as_millis() as u64 - 1;

    let mut bytes = data.iter().copied();
    let num = |n: usize, bytes: &mut dyn Iterator<Item = u8>| -> u64 {
        (0..n).fold(0u64, |acc, _| {
            acc << 8 | u64::from(bytes.next().unwrap_or(0))
        })
    };
    while let Some(op) = bytes.next() {
        let mut slept_as_told = false;
        match op % 8 {
            0..=2 => {
                let r = num(4, &mut bytes);
                let delay_us = match (op >> 3) % 4 {
                    0 => r % 64_000,
                    1 => r % 9_000_000, // a few turns of the wheel ahead
                    2 => r % (4_096 * 1_100 * 1000), // a thousand turns ahead
                    _ => (r << 12) % (max_ahead_ms * 1000),
                };
                let deadline = now_us + delay_us;
                next_id += 1;
                let tick = wheel.insert(at(deadline), next_id);
                assert!(tick * 1000 >= deadline, "tick before the deadline");
                live.insert(next_id, (deadline, tick));
            }
            3 => {
                let pick = num(2, &mut bytes) as usize;
                let mut ids: Vec<u64> = live.keys().copied().collect();
                ids.sort_unstable();
                if let Some(&id) = ids.get(pick % ids.len().max(1)) {
                    let (_, tick) = live.remove(&id).expect("listed");
                    let full = wheel.full_tick(tick as u32);
                    assert_eq!(full, tick, "full_tick of a live timer");
                    let before = wheel.len();
                    wheel.cancel(full, |t, v| t == tick && *v == id);
                    assert_eq!(wheel.len(), before - 1, "cancel removed one entry");
                }
            }
            4 | 5 => {
                // A loop turn: sleep as next_timeout says, or less (an event came).
                let cap = num(3, &mut bytes) % 20_000_000;
                let wait = wheel
                    .next_timeout(at(now_us))
                    .map_or(u64::MAX, |d| d.as_micros() as u64);
                if wait <= cap {
                    slept_as_told = true;
                    now_us += wait;
                } else {
                    now_us += cap;
                }
            }
            6 => now_us += num(4, &mut bytes) << 10, // a busy or suspended worker: up to ~50 days
            _ => now_us = now_us.max(((1u64 << 32) - num(2, &mut bytes) % 10_000) * 1000),
        }
        out.clear();
        wheel.expire(at(now_us), &mut out);
        for &(tick, id) in &out {
            let (deadline, armed) = live.remove(&id).expect("fired once, not after cancel");
            assert_eq!(tick, armed, "fired with the tick it was armed for");
            assert!(deadline <= now_us, "fired early: {deadline} > {now_us}");
            if slept_as_told {
                assert!(
                    now_us - deadline <= 1000,
                    "late by {} µs",
                    now_us - deadline
                );
            }
        }
        let now_ms = now_us / 1000;
        for (&id, &(deadline, tick)) in &live {
            assert!(
                tick > now_ms,
                "timer {id} (deadline {deadline} µs) due at {now_us} µs"
            );
        }
        assert_eq!(wheel.len(), live.len());
        match (
            wheel.next_timeout(at(now_us)),
            live.values().map(|v| v.1).min(),
        ) {
            (None, None) => {}
            (Some(wait), Some(first)) => {
                let wake = now_us + wait.as_micros() as u64;
                assert!(
                    wake <= first * 1000,
                    "wakes at {wake} µs, first due {first} ms"
                );
            }
            (got, want) => panic!("next_timeout {got:?} with first tick {want:?}"),
        }
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

    /// Random operation sequences against a reference model (see `fuzz_check_timer_wheel`).
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
            super::fuzz_check_timer_wheel(&data);
        }
    }
}
