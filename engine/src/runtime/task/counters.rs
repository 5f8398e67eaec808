//! A running task's record counts and the time it has waited on a full output,
//! published as it runs for whoever asks how it does (a worker's heartbeat and
//! dump, [`crate::Engine::dump`]): the task's shard writes them, other threads
//! read them. A buffer's records count in when the task takes the buffer,
//! before any of them reaches an operator, so a result seen downstream of the
//! task was counted already.
//!
//! Back-pressure is Flink's `backPressuredTimeMs`: the time the task could not
//! go on because an output it writes to was full (its consumer slow, or a
//! bounded egress unread). A wait still going on counts up to the moment of
//! the read, so a task stuck behind a consumer that never reads shows it.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::StepClock;
use crate::runtime::clock;

/// Records into the task's chain head and out of its chain so far, and its
/// waits on a full output.
#[derive(Debug, Default)]
pub(crate) struct TaskCounters {
    records_in: AtomicU64,
    records_out: AtomicU64,
    /// Counts the changes to the two below, odd while one is being made (a
    /// sequence lock: one writer, the task; a reader retries across a change,
    /// so an ended wait is never counted twice, nor dropped, by a read).
    changes: AtomicU64,
    /// Microseconds of the waits on a full output that have ended.
    back_pressured_us: AtomicU64,
    /// When the wait going on began (processing time in µs), or 0: none.
    blocked_since_us: AtomicU64,
}

/// What [`TaskCounters`] hold, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskCounts {
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
    /// Milliseconds waited on a full output, the wait going on included.
    pub(crate) back_pressured_ms: u64,
}

impl TaskCounters {
    /// Records in so far.
    pub(crate) fn publish_in(&self, records_in: u64) {
        self.records_in.store(records_in, Ordering::Relaxed);
    }

    /// Records in and out so far.
    pub(crate) fn publish(&self, records_in: u64, records_out: u64) {
        self.records_in.store(records_in, Ordering::Relaxed);
        self.records_out.store(records_out, Ordering::Relaxed);
    }

    /// The task waits on a full output from `since_us` (processing time).
    pub(crate) fn blocked(&self, since_us: u64) {
        self.change(|| self.blocked_since_us.store(since_us.max(1), Ordering::Relaxed));
    }

    /// The wait has ended: `total_us` waited in all.
    pub(crate) fn unblocked(&self, total_us: u64) {
        self.change(|| {
            self.back_pressured_us.store(total_us, Ordering::Relaxed);
            self.blocked_since_us.store(0, Ordering::Relaxed);
        });
    }

    /// Makes a change to the waits under the sequence lock (the task's thread
    /// alone calls it).
    fn change(&self, f: impl FnOnce()) {
        let n = self.changes.load(Ordering::Relaxed);
        self.changes.store(n + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        f();
        self.changes.store(n + 2, Ordering::Release);
    }

    /// What was last published, a wait going on counted up to now.
    pub(crate) fn read(&self) -> TaskCounts {
        let (ended_us, since_us) = loop {
            let before = self.changes.load(Ordering::Acquire);
            let ended = self.back_pressured_us.load(Ordering::Relaxed);
            let since = self.blocked_since_us.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if before % 2 == 0 && self.changes.load(Ordering::Relaxed) == before {
                break (ended, since);
            }
            std::thread::yield_now(); // the task is mid-change: a few instructions
        };
        let ongoing_us = if since_us == 0 { 0 } else { clock::now_us().saturating_sub(since_us) };
        TaskCounts {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            back_pressured_ms: ended_us.saturating_add(ongoing_us) / 1_000,
        }
    }
}

/// A task's waits on a full output (its back-pressure), published through
/// its [`TaskCounters`]: the clock is read only as a wait begins and ends.
#[derive(Default)]
pub(super) struct BackPressure {
    since: Option<Instant>,
    total: Duration,
}

impl BackPressure {
    /// Whether an output is `blocked` (overdrawn) at this step: a wait begins
    /// now, goes on, or ends now.
    #[inline]
    pub(super) fn note(&mut self, blocked: bool, step: &mut StepClock, counters: &TaskCounters) {
        match (blocked, self.since) {
            (true, None) => {
                let now = step.now();
                self.since = Some(now);
                counters.blocked(clock::us_at(now));
            }
            (false, Some(since)) => {
                self.since = None;
                self.total += step.now().saturating_duration_since(since);
                counters.unblocked(self.total.as_micros().try_into().unwrap_or(u64::MAX));
            }
            _ => {}
        }
    }

    pub(super) fn total_ms(&self) -> u64 {
        self.total.as_millis().try_into().unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_counts_while_it_goes_on_and_once_it_has_ended() {
        let c = TaskCounters::default();
        assert_eq!(c.read(), TaskCounts::default());
        c.publish(7, 5);
        c.blocked(clock::now_us() - 3_000);
        let going_on = c.read();
        assert_eq!((going_on.records_in, going_on.records_out), (7, 5));
        assert!(going_on.back_pressured_ms >= 3, "a wait of 3 ms so far counts: {going_on:?}");
        c.unblocked(4_500);
        assert_eq!(c.read().back_pressured_ms, 4, "the ended waits alone, in whole ms");
        c.blocked(clock::now_us() - 2_000);
        assert!(c.read().back_pressured_ms >= 6, "the next wait adds to the total");
    }
}
