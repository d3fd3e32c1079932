//! Admission control: token buckets on injected time.
//!
//! Written here rather than taken from a crate (`governor` and friends read
//! a clock of their own): the sans-IO core must be driven by the caller's
//! `now`, so that the simulator and the real driver see the same decisions.

use crate::time::Instant;

/// A token bucket: `rate_per_s` tokens flow in per second up to `burst`.
/// Tokens are kept in thousandths so slow rates do not round to zero.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    milli_tokens: u64,
    rate_per_s: u64,
    burst: u64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            milli_tokens: burst * 1000,
            rate_per_s,
            burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ms = now.since_ms(self.updated);
        if elapsed_ms == 0 {
            return;
        }
        self.updated = now;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed_ms.saturating_mul(self.rate_per_s))
            .min(self.burst * 1000);
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.milli_tokens / 1000
    }

    /// Takes `cost` tokens if at least `cost + reserve` are there (the
    /// reserve keeps room for more valuable work).
    pub fn try_take(&mut self, now: Instant, cost: u64, reserve: u64) -> bool {
        self.refill(now);
        if self.milli_tokens >= (cost + reserve) * 1000 {
            self.milli_tokens -= cost * 1000;
            true
        } else {
            false
        }
    }

    /// How long until `cost + reserve` tokens are there.
    pub fn wait_ms(&mut self, now: Instant, cost: u64, reserve: u64) -> u64 {
        self.refill(now);
        let needed = (cost + reserve) * 1000;
        if self.milli_tokens >= needed || self.rate_per_s == 0 {
            return 0;
        }
        (needed - self.milli_tokens).div_ceil(self.rate_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant(0);
        let mut bucket = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(bucket.try_take(t0, 1, 0));
        }
        assert!(!bucket.try_take(t0, 1, 0), "burst spent");
        assert_eq!(bucket.wait_ms(t0, 1, 0), 100);
        assert!(!bucket.try_take(t0.add_ms(99), 1, 0));
        assert!(
            bucket.try_take(t0.add_ms(100), 1, 0),
            "one token per 100 ms"
        );
        // Idle time refills only up to the burst.
        assert_eq!(bucket.available(t0.add_ms(60_000)), 5);
    }

    #[test]
    fn reserve_is_kept_for_other_work() {
        let t0 = Instant(0);
        let mut bucket = TokenBucket::new(1, 4, t0);
        assert!(bucket.try_take(t0, 1, 2));
        assert!(bucket.try_take(t0, 1, 2));
        assert!(
            !bucket.try_take(t0, 1, 2),
            "two tokens left are the reserve"
        );
        assert!(
            bucket.try_take(t0, 1, 0),
            "work without a reserve may use them"
        );
        assert_eq!(bucket.wait_ms(t0, 1, 2), 2_000);
    }

    #[test]
    fn slow_rates_do_not_round_to_zero() {
        let t0 = Instant(0);
        let mut bucket = TokenBucket::new(1, 1, t0);
        assert!(bucket.try_take(t0, 1, 0));
        for step in 1..10 {
            assert!(!bucket.try_take(t0.add_ms(step * 100), 1, 0));
        }
        assert!(bucket.try_take(t0.add_ms(1_000), 1, 0));
    }
}
