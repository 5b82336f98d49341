//! What the engine counts for a server's metrics: histograms of fixed buckets, and the clock
//! durations are taken with — given by the caller, since the engine reads no clock (STYLE:
//! time is an input; the simulator times nothing).

/// A monotonic clock in microseconds.
pub type Clock = fn() -> u64;

/// The clock of a caller that times nothing: every duration is 0.
pub fn no_clock() -> u64 {
    0
}

/// Upper bounds of duration buckets, in microseconds; a last bucket holds what is slower.
pub const DURATION_BOUNDS_US: [u64; 15] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 10_000_000];

/// Upper bounds of count buckets (entries per batch); a last bucket holds what is larger.
pub const COUNT_BOUNDS: [u64; 15] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];

/// How many values fell in each bucket of 15 upper bounds (and above the last), and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Values per bucket, not cumulative: `counts[i]` for those `<= bounds[i]` and above the
    /// bound before it; `counts[15]` for those above every bound.
    pub counts: [u64; 16],
    /// The values' sum.
    pub sum: u64,
}

impl Histogram {
    /// Counts `value` in its bucket of `bounds`.
    pub fn record(&mut self, bounds: &[u64; 15], value: u64) {
        let bucket = bounds.iter().position(|&b| value <= b).unwrap_or(bounds.len());
        if let Some(n) = self.counts.get_mut(bucket) {
            *n += 1;
        }
        self.sum = self.sum.saturating_add(value);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let mut h = Histogram::default();
        for v in [0, 1, 2, 3, 16_384, 16_385, u64::MAX] {
            h.record(&COUNT_BOUNDS, v);
        }
        assert_eq!(h.counts[0], 2, "0 and 1");
        assert_eq!(h.counts[1], 1, "2");
        assert_eq!(h.counts[2], 1, "3, in the bucket up to 4");
        assert_eq!(h.counts[14], 1, "16,384");
        assert_eq!(h.counts[15], 2, "above every bound");
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum, u64::MAX, "saturates");
    }
}
