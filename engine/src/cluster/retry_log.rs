//! Warnings of a loop that retries, without flooding the log: a worker whose
//! coordinator is gone for a night, a standby that cannot reach etcd. Each
//! failure is warned about the first time and whenever its reason changes; the
//! same reason again goes to debug, with a warning once a minute that counts
//! the repeats.

use std::time::{Duration, Instant};

/// How often a reason that keeps coming back is warned about again.
const REMIND: Duration = Duration::from_secs(60);

/// The failures of one retry loop.
#[derive(Debug, Default)]
pub(crate) struct RetryLog {
    last: Option<String>,
    /// Repeats of `last` since it was last warned about.
    repeats: u64,
    warned: Option<Instant>,
}

impl RetryLog {
    /// Notes failure `why` at `now`. `Some(note)`: warn, adding `note` (empty,
    /// or how often it came back since the last warning); `None`: the same as
    /// before, warned about within the minute — log it at debug.
    pub(crate) fn note(&mut self, now: Instant, why: &str) -> Option<String> {
        let same = self.last.as_deref() == Some(why);
        if same && self.warned.is_some_and(|w| now.duration_since(w) < REMIND) {
            self.repeats += 1;
            return None;
        }
        let note = match self.repeats {
            n if same && n > 0 => format!(" (again: {} more times since the last warning)", n + 1),
            _ => String::new(),
        };
        self.last = Some(why.to_string());
        self.repeats = 0;
        self.warned = Some(now);
        Some(note)
    }

    /// The loop succeeded: the next failure is news again.
    pub(crate) fn clear(&mut self) {
        *self = RetryLog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_that_keeps_coming_back_is_warned_about_once_a_minute_with_its_count() {
        let mut log = RetryLog::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.note(at(0), "connection refused").as_deref(), Some(""));
        for s in 1..30 {
            assert_eq!(log.note(at(s * 2), "connection refused"), None, "{s}");
        }
        // Past the minute: one warning that counts what went to debug.
        let again = log.note(at(61), "connection refused").expect("a reminder");
        assert_eq!(again, " (again: 30 more times since the last warning)");
        assert_eq!(log.note(at(62), "connection refused"), None);
        // Another reason is news at once; so is the old one after it.
        assert_eq!(log.note(at(63), "no leader").as_deref(), Some(""));
        assert_eq!(log.note(at(64), "connection refused").as_deref(), Some(""));
        // After a success, too.
        log.clear();
        assert_eq!(log.note(at(65), "connection refused").as_deref(), Some(""));
    }
}
