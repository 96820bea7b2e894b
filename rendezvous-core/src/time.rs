//! Time as the core sees it: a point on the caller's monotonic clock.
//!
//! The core never reads a clock. Adapters pick an origin (usually the
//! `std::time::Instant` at which they started) and pass the time elapsed since
//! then as a [`Timestamp`] to every call that needs one. Tests pass whatever
//! they like, so a simulated week takes microseconds.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: nanoseconds since an origin the caller chose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The last representable point, about 584 years after the origin; used
    /// for "never".
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// The point `since_origin` after the origin, saturating at [`Timestamp::MAX`].
    pub fn from_duration(since_origin: Duration) -> Self {
        Timestamp(u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The point `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000_000))
    }

    /// Time elapsed since the origin.
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturates at [`Timestamp::MAX`] rather than overflowing.
    fn add(self, rhs: Duration) -> Timestamp {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(nanos))
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;

    /// Saturates at zero.
    fn sub(self, rhs: Timestamp) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_huge_duration_saturates_instead_of_wrapping() {
        let t = Timestamp::from_secs(10) + Duration::from_secs(u64::MAX);
        assert_eq!(t, Timestamp::MAX);
    }

    #[test]
    fn subtracting_a_later_time_gives_zero() {
        assert_eq!(Timestamp::from_secs(1) - Timestamp::from_secs(5), Duration::ZERO);
        assert_eq!(Timestamp::from_secs(5) - Timestamp::from_secs(1), Duration::from_secs(4));
    }
}
