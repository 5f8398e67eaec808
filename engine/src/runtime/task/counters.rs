//! A running task's record counts and where its time goes, published as it
//! runs for whoever asks how it does (a worker's heartbeat and dump,
//! [`crate::Engine::dump`]): the task's shard writes them, other threads read
//! them. A buffer's records count in when the task takes the buffer, before
//! any of them reaches an operator, so a result seen downstream of the task
//! was counted already.
//!
//! Its time splits as Flink's does: back-pressured (`backPressuredTimeMs`: it
//! could not go on because an output it writes to was full — its consumer
//! slow, or a bounded egress unread), idle (`idleTimeMs`: it had nothing to
//! do — no input, a source with nothing to emit yet, no timer due) and busy,
//! the rest. A wait still going on counts up to the moment of the read, so a
//! task stuck behind a consumer that never reads shows it.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shardflow_control::protocol::TaskTimes;

use crate::runtime::clock;

/// What a task waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Input (it is idle).
    Input = 0,
    /// A full output (it is back-pressured).
    Output = 1,
}

/// Records into the task's chain head and out of its chain so far, and where
/// its time has gone.
#[derive(Debug, Default)]
pub(crate) struct TaskCounters {
    records_in: AtomicU64,
    records_out: AtomicU64,
    /// Counts the changes to the times below, odd while one is being made (a
    /// sequence lock: one writer, the task; a reader retries across a change,
    /// so an ended wait is never counted twice, nor dropped, by a read).
    changes: AtomicU64,
    /// When the task began and ended (processing time in µs), or 0: not yet.
    began_us: AtomicU64,
    ended_us: AtomicU64,
    /// By [`Wait`]: microseconds of the waits that have ended.
    waited_us: [AtomicU64; 2],
    /// By [`Wait`]: when the wait going on began (processing time in µs), or
    /// 0: none.
    waiting_since_us: [AtomicU64; 2],
}

/// What [`TaskCounters`] hold, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskCounts {
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
    /// Where its time has gone, the wait going on included.
    pub(crate) times: TaskTimes,
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

    /// The task began at `at_us` (processing time).
    pub(crate) fn began(&self, at_us: u64) {
        self.change(|| self.began_us.store(at_us.max(1), Ordering::Relaxed));
    }

    /// The task ended at `at_us`: its times stop there.
    pub(crate) fn ended(&self, at_us: u64) {
        self.change(|| self.ended_us.store(at_us.max(1), Ordering::Relaxed));
    }

    /// The task waits on `what` from `since_us`.
    pub(crate) fn wait_began(&self, what: Wait, since_us: u64) {
        self.change(|| self.waiting_since_us[what as usize].store(since_us.max(1), Ordering::Relaxed));
    }

    /// The wait on `what` has ended: `total_us` waited on it in all.
    pub(crate) fn wait_ended(&self, what: Wait, total_us: u64) {
        self.change(|| {
            self.waited_us[what as usize].store(total_us, Ordering::Relaxed);
            self.waiting_since_us[what as usize].store(0, Ordering::Relaxed);
        });
    }

    /// Makes a change to the times under the sequence lock (the task's thread
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
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (began, ended, waited, since) = loop {
            let before = self.changes.load(Ordering::Acquire);
            let read = (
                load(&self.began_us),
                load(&self.ended_us),
                self.waited_us.each_ref().map(load),
                self.waiting_since_us.each_ref().map(load),
            );
            fence(Ordering::Acquire);
            if before % 2 == 0 && self.changes.load(Ordering::Relaxed) == before {
                break read;
            }
            std::thread::yield_now(); // the task is mid-change: a few instructions
        };
        let times = if began == 0 {
            TaskTimes::default()
        } else {
            let now = if ended == 0 { clock::now_us() } else { ended };
            let ms = |w: Wait| {
                let ongoing = match since[w as usize] {
                    0 => 0,
                    s => now.saturating_sub(s),
                };
                waited[w as usize].saturating_add(ongoing) / 1_000
            };
            let (idle_ms, back_pressured_ms) = (ms(Wait::Input), ms(Wait::Output));
            let all_ms = now.saturating_sub(began) / 1_000;
            TaskTimes {
                busy_ms: all_ms.saturating_sub(idle_ms.saturating_add(back_pressured_ms)),
                idle_ms,
                back_pressured_ms,
            }
        };
        TaskCounts { records_in: load(&self.records_in), records_out: load(&self.records_out), times }
    }
}

/// The task's waits on one thing, published through its [`TaskCounters`]: the
/// clock is read only as a wait begins and ends.
pub(super) struct Waiting {
    what: Wait,
    since: Option<Instant>,
    /// Every ended wait, to the nanosecond: the counters get it whole in µs
    /// (adding each wait's µs there would drop up to one per wait, much
    /// where a task waits for each of 200 000 records a second).
    total: Duration,
}

impl Waiting {
    pub(super) fn on(what: Wait) -> Self {
        Waiting { what, since: None, total: Duration::ZERO }
    }

    /// Whether the task `waits` on it as of this step: a wait begins, goes
    /// on, or ends — at `now`, read only then.
    #[inline]
    pub(super) fn note(&mut self, waits: bool, now: impl FnOnce() -> Instant, counters: &TaskCounters) {
        match (waits, self.since) {
            (true, None) => {
                let now = now();
                self.since = Some(now);
                counters.wait_began(self.what, clock::us_at(now));
            }
            (false, Some(since)) => {
                self.since = None;
                self.total += now().saturating_duration_since(since);
                counters.wait_ended(self.what, self.total.as_micros().try_into().unwrap_or(u64::MAX));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_counts_while_it_goes_on_and_once_it_has_ended() {
        let c = TaskCounters::default();
        assert_eq!(c.read(), TaskCounts::default(), "nothing before the task begins");
        c.publish(7, 5);
        let t0 = clock::now_us() - 20_000;
        c.began(t0);
        c.wait_began(Wait::Output, clock::now_us() - 3_000);
        let going_on = c.read();
        assert_eq!((going_on.records_in, going_on.records_out), (7, 5));
        assert!(going_on.times.back_pressured_ms >= 3, "a wait of 3 ms so far counts: {going_on:?}");
        c.wait_ended(Wait::Output, 4_500);
        c.wait_began(Wait::Input, clock::now_us() - 2_000);
        let idle = c.read().times;
        assert_eq!(idle.back_pressured_ms, 4, "the ended waits alone, in whole ms: {idle:?}");
        assert!(idle.idle_ms >= 2, "the other wait counts apart: {idle:?}");
        c.wait_ended(Wait::Input, 2_500);
        c.wait_began(Wait::Output, clock::now_us() - 2_000);
        assert!(c.read().times.back_pressured_ms >= 6, "the next wait adds to the total");
        c.wait_ended(Wait::Output, 6_700);
        c.ended(t0 + 30_000);
        // 30 ms in all: 6 back-pressured, 2 idle, the rest busy — from then on.
        let end = TaskTimes { busy_ms: 22, idle_ms: 2, back_pressured_ms: 6 };
        assert_eq!(c.read().times, end);
        assert_eq!(c.read().times, end, "an ended task's times stay");
    }
}
