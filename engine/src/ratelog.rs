//! At most one log line per second about one kind of event, with the count of those left unlogged
//! in between: accept errors (both drivers), write stalls, assembly-budget sheds.

use std::time::{Duration, Instant};

/// The rate limit of one kind of log line.
#[derive(Debug, Default)]
pub(crate) struct RateLog {
    last: Option<Instant>,
    quiet: u64,
}

impl RateLog {
    /// `events` happened at `now`: `Some(n)` when a line may be written (`n`: events left unlogged
    /// since the last line), `None` when they are counted for the next one.
    pub(crate) fn ready(&mut self, now: Instant, events: u64) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            self.quiet += events;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.quiet))
    }

    /// `" (N more since the last line)"`, or nothing when none went unlogged.
    pub(crate) fn more(quiet: u64) -> String {
        if quiet > 0 {
            format!(" ({quiet} more since the last line)")
        } else {
            String::new()
        }
    }
}
