//! One time type for what services store and compare: Unix nanoseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds in one second.
pub const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// A point in time as Unix nanoseconds: what the `*_ns` columns hold.
/// Before 1970 is negative; beyond year 2262 does not fit and saturates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct UnixNanos(pub i64);

impl UnixNanos {
    pub fn now() -> Self {
        let nanos = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        };
        Self(nanos)
    }

    pub fn from_secs(seconds: i64) -> Self {
        Self(seconds.saturating_mul(NANOS_PER_SECOND))
    }

    /// Whole seconds, rounded toward the past.
    pub fn secs(self) -> i64 {
        self.0.div_euclid(NANOS_PER_SECOND)
    }

    /// The nanoseconds within the second, `0..1_000_000_000`.
    pub fn subsec_nanos(self) -> i32 {
        i32::try_from(self.0.rem_euclid(NANOS_PER_SECOND)).unwrap_or(0)
    }

    /// This time plus `seconds`, saturating.
    pub fn plus_secs(self, seconds: i64) -> Self {
        Self(
            self.0
                .saturating_add(seconds.saturating_mul(NANOS_PER_SECOND)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_nanoseconds_split_on_both_sides_of_the_epoch() {
        let t = UnixNanos(1_500_000_000);
        assert_eq!((t.secs(), t.subsec_nanos()), (1, 500_000_000));
        let before = UnixNanos(-1);
        assert_eq!((before.secs(), before.subsec_nanos()), (-1, 999_999_999));
        assert_eq!(
            UnixNanos::from_secs(3).plus_secs(2),
            UnixNanos::from_secs(5)
        );
        assert_eq!(UnixNanos(i64::MAX).plus_secs(1), UnixNanos(i64::MAX));
        assert!(UnixNanos::now() > UnixNanos::from_secs(1_700_000_000));
    }
}
