//! The processing-time timer service of keyed process functions: per time
//! (microseconds since the Unix epoch, [`crate::runtime::clock`]), the set of
//! keys with a timer then (each once, however often registered), charged to the
//! operator's state memory like any other keyed state.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::runtime::clock;

/// The keys with a timer at one time, each once, in the order they registered
/// (a delete moves the last into its place; a set: many keys often share a
/// time, such as a window's end).
pub(super) type TimerKeys<K> = indexmap::IndexSet<K, BuildHasherDefault<FxHasher>>;

/// What one pending timer is charged beyond its key: its hash and index slot
/// in its instant's set.
const TIMER_SLOT_BYTES: u64 = 16;
/// What a time with timers is charged: its entry in the time-ordered map and
/// its set's table.
pub(super) const TIMER_TIME_BYTES: u64 = 96;

/// The managed memory one pending timer of `key` takes.
pub(super) fn timer_bytes<K: Key>(key: &K) -> u64 {
    std::mem::size_of::<K>() as u64 + TIMER_SLOT_BYTES + heap_of(key)
}

/// Adds `key`'s timer at `at` unless it has one then, charging it to `memory`.
pub(super) fn add_timer<K: Key>(
    timers: &mut BTreeMap<u64, TimerKeys<K>>,
    memory: &mut StateMemory,
    at: u64,
    key: &K::Borrowed,
) -> Result<(), OperatorError> {
    let keys = match timers.entry(at) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            memory.grow(TIMER_TIME_BYTES)?;
            e.insert(TimerKeys::default())
        }
    };
    if keys.contains(key) {
        return Ok(());
    }
    let key = K::to_owned_record(key);
    memory.grow(timer_bytes(&key))?;
    keys.insert(key);
    Ok(())
}

impl<K: Key> KeyedBackend<K> {
    /// Removes and returns the timers due at `now`, earliest first.
    pub(super) fn take_due_timers(&mut self, now: u64) -> Vec<(u64, K)> {
        let mut due = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (at, keys) = entry.remove_entry();
            self.memory.shrink(TIMER_TIME_BYTES);
            for key in keys {
                self.memory.shrink(timer_bytes(&key));
                due.push((at, key));
            }
        }
        due
    }
}

impl<K: Key> KeyedContext<'_, K> {
    /// The processing time now: microseconds since the Unix epoch, on a clock
    /// that never goes back (the wall clock read once per process, then the
    /// monotonic clock). Keep it in state, add to it, register a timer at it.
    pub fn processing_time(&self) -> u64 {
        clock::now_us()
    }

    /// Calls `on_timer` for the current key once processing time reaches `at`
    /// (microseconds since the Unix epoch: [`Self::processing_time`] plus a
    /// delay; a time already past fires at once); one timer per key and time,
    /// however often it is registered. Pending timers are keyed state: charged
    /// to the slot's managed memory (an error once it is exhausted) and written
    /// to snapshots, where their times travel unchanged (a function that keeps
    /// a timer's time in its state deletes it after a restore too). Once the
    /// input has ended, pending timers do not fire and the task does not wait
    /// for them (as Flink's processing-time timers): what a timer would emit at
    /// the end, emit in `on_end_of_input`.
    pub fn register_timer(&mut self, at: u64) -> Result<(), OperatorError> {
        let KeyedBackend { timers, memory, .. } = &mut *self.backend;
        add_timer(timers, memory, at, self.key)
    }

    /// Deletes the current key's timer at `at`, if it has one.
    pub fn delete_timer(&mut self, at: u64) {
        let KeyedBackend { timers, memory, .. } = &mut *self.backend;
        if let Some(keys) = timers.get_mut(&at) {
            if let Some(key) = keys.swap_take(self.key) {
                memory.shrink(timer_bytes(&key));
            }
            if keys.is_empty() {
                timers.remove(&at);
                memory.shrink(TIMER_TIME_BYTES);
            }
        }
    }
}
