//! The core's time from real clocks: its monotonic [`Instant`] is tokio's
//! monotonic clock in microseconds since the driver started, and the wall
//! clock of [`Now`] is the system clock (used by the core only for record
//! expiry, where it tolerates minutes of skew).

use peerline_core::{Instant, Now};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Farthest a wake-up is scheduled; a node that wants none sleeps this long
/// between looks (tokio timers do not take arbitrary durations).
const SLEEP_MAX: Duration = Duration::from_secs(24 * 3_600);

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock whose core time starts at zero now.
    pub fn start() -> Clock {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Now {
        Now {
            instant: self.instant_at(tokio::time::Instant::now()),
            unix_s: wall_clock_s(),
        }
    }

    /// The core instant of a tokio instant (zero before the origin).
    pub fn instant_at(&self, at: tokio::time::Instant) -> Instant {
        let micros = at.saturating_duration_since(self.origin).as_micros();
        Instant(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// When to wake for a core deadline (`None`: no deadline), capped at
    /// [`SLEEP_MAX`] from now.
    pub fn wake_at(&self, deadline: Option<Instant>) -> tokio::time::Instant {
        let latest = tokio::time::Instant::now() + SLEEP_MAX;
        deadline
            .and_then(|at| self.origin.checked_add(Duration::from_micros(at.0)))
            .map_or(latest, |at| at.min(latest))
    }
}

/// Seconds since the Unix epoch (zero if the system clock is before it).
pub fn wall_clock_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn core_instants_count_microseconds_from_the_start() {
        let clock = Clock::start();
        assert_eq!(clock.now().instant, Instant::ZERO);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now().instant, Instant::from_ms(1_500));
        // A deadline maps back to the tokio instant it names.
        let wake = clock.wake_at(Some(Instant::from_ms(2_000)));
        assert_eq!(clock.instant_at(wake), Instant::from_ms(2_000));
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_and_never_sleep_a_bounded_time() {
        let clock = Clock::start();
        let day = tokio::time::Instant::now() + SLEEP_MAX;
        assert_eq!(clock.wake_at(None), day);
        assert_eq!(clock.wake_at(Some(Instant::NEVER)), day);
    }

    #[test]
    fn the_wall_clock_is_after_2020() {
        assert!(wall_clock_s() > 1_577_836_800);
    }
}
