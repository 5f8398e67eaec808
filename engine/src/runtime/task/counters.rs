//! A running task's record counts, published as it runs for whoever asks how
//! it does (a worker's dump, [`crate::Engine::dump`]): the task's shard writes
//! them, other threads read them. A buffer's records count in when the task
//! takes the buffer, before any of them reaches an operator, so a result seen
//! downstream of the task was counted already.

use std::sync::atomic::{AtomicU64, Ordering};

/// Records into the task's chain head and out of its chain so far.
#[derive(Debug, Default)]
pub(crate) struct TaskCounters {
    records_in: AtomicU64,
    records_out: AtomicU64,
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

    /// Records in and out as last published.
    pub(crate) fn read(&self) -> (u64, u64) {
        (self.records_in.load(Ordering::Relaxed), self.records_out.load(Ordering::Relaxed))
    }
}
