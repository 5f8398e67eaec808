//! Processing time as keyed process functions see it: microseconds since the
//! Unix epoch, a plain `u64` a function can keep in its state, compare and
//! delete a timer by, and that travels unchanged in a snapshot (as Flink's
//! processing time is a `long` of epoch milliseconds, here finer). The wall
//! clock is read once per process; from then on time advances with the
//! monotonic clock, so it never goes back and every task of the process agrees
//! on it. The task loop waits for a timer as an `Instant`, converted here.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The wall clock and the monotonic clock, read together once.
struct Anchor {
    instant: Instant,
    epoch_us: u64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Anchor { instant: Instant::now(), epoch_us: since_epoch.as_micros().try_into().unwrap_or(u64::MAX) }
    })
}

/// The processing time now.
pub(crate) fn now_us() -> u64 {
    us_at(Instant::now())
}

/// The processing time at `at` (an instant before the process read its clocks
/// is the moment it read them).
pub(crate) fn us_at(at: Instant) -> u64 {
    let a = anchor();
    let since: u64 = at.saturating_duration_since(a.instant).as_micros().try_into().unwrap_or(u64::MAX);
    a.epoch_us.saturating_add(since)
}

/// The instant processing time `us` is reached: one already past is the
/// moment the process read its clocks (so a wait for it ends at once); `None`
/// beyond what an `Instant` holds (never, in effect).
pub(crate) fn instant_at(us: u64) -> Option<Instant> {
    let a = anchor();
    a.instant.checked_add(Duration::from_micros(us.saturating_sub(a.epoch_us)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_time_goes_to_an_instant_and_back_exactly_and_never_back() {
        let now = now_us();
        let at = now + 1_500_000;
        let instant = instant_at(at).expect("an instant");
        assert_eq!(us_at(instant), at, "a timer's instant is its time, to the microsecond");
        assert!(now_us() >= now, "monotonic");
        let past = instant_at(now.saturating_sub(20_000)).expect("an instant");
        assert!(past <= Instant::now(), "an overdue time is due at once");
        assert!(instant_at(0).is_some_and(|i| i <= Instant::now()), "so is the epoch");
        // A damaged snapshot's far future: no panic, and never in the past.
        assert!(instant_at(u64::MAX).is_none_or(|i| i > Instant::now()));
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970");
        let wall = since_epoch.as_micros() as u64;
        // Wall-clock time, give or take an adjustment of the clock since the anchor.
        assert!(now.abs_diff(wall) < 3_600_000_000, "{now} vs the wall clock's {wall}");
    }
}
