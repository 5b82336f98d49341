//! Log lines about bad input, rate-limited: a flood of bad connections costs a line a
//! second, not a line each (and the line says how many it stands for).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// At most one event per `every` goes through; the others are counted.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimit {
    /// At most one per `every`.
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit { every, last: Cell::new(None), suppressed: Cell::new(0) }
    }

    /// `Some(suppressed since the last one)` when this event may be logged, else `None`.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        if self.last.get().is_some_and(|at| now.duration_since(at) < self.every) {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_period_goes_through_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(900)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(limit.allow(t0 + Duration::from_millis(2500)), Some(0));
    }
}
