//! Steward's one clock vocabulary: Unix nanoseconds in an `i64`, as every
//! `*_ns` column and evidence time stores them, and their wire form.

use prost_types::Timestamp;
use steward_vocab::UnixNanos;
pub use steward_vocab::time::NANOS_PER_SECOND;

/// Unix nanoseconds now (the clock saturates in the year 2262).
pub fn now_ns() -> i64 {
    UnixNanos::now().0
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    UnixNanos::now().secs()
}

/// Unix nanoseconds as a wire timestamp (before 1970 too).
pub fn timestamp_of_ns(ns: i64) -> Timestamp {
    let t = UnixNanos(ns);
    Timestamp {
        seconds: t.secs(),
        nanos: t.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanoseconds_and_timestamps_round_trip_on_both_sides_of_the_epoch() {
        for ns in [0, 1, 1_500_000_000, -1, -1_500_000_000, i64::MAX, i64::MIN] {
            let ts = timestamp_of_ns(ns);
            assert!((0..1_000_000_000).contains(&ts.nanos), "{ts:?}");
            assert_eq!(
                i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos),
                i128::from(ns)
            );
        }
        assert_eq!(timestamp_of_ns(-1).seconds, -1);
        let now = now_ns();
        assert!(now > 1_700_000_000 * NANOS_PER_SECOND, "{now}");
        assert!((now_secs() - now / NANOS_PER_SECOND).abs() <= 1);
    }
}
