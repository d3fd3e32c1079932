//! Time as the drivers hand it in. The core never reads a clock.

/// A monotonic instant in microseconds since an arbitrary origin (the
/// simulator's start, or the process start in the real driver).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    pub const NEVER: Instant = Instant(u64::MAX);

    pub fn from_ms(ms: u64) -> Instant {
        Instant(ms.saturating_mul(1_000))
    }

    pub fn from_s(s: u64) -> Instant {
        Instant(s.saturating_mul(1_000_000))
    }

    pub fn add_ms(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms.saturating_mul(1_000)))
    }

    pub fn add_us(self, us: u64) -> Instant {
        Instant(self.0.saturating_add(us))
    }

    pub fn as_ms(self) -> u64 {
        self.0 / 1_000
    }

    pub fn as_s(self) -> u64 {
        self.0 / 1_000_000
    }

    /// Microseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since_us(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn since_ms(self, earlier: Instant) -> u64 {
        self.since_us(earlier) / 1_000
    }
}

/// What a node knows of time at one input: its monotonic clock and its
/// (possibly skewed) wall clock, used only for record expiry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Now {
    pub instant: Instant,
    pub unix_s: u64,
}
