//! How much a queue between a job and a service's threads (an ingress or an
//! egress) holds before it pushes back: a number of records, a number of
//! bytes, or both.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Sender, TrySendError};

use crate::data::Data;
use crate::runtime::RoomWaiters;

/// The bound of an ingress or egress queue: it takes no more once it holds
/// `records` records, or (if set) once what it holds is charged `bytes` bytes.
///
/// A record is charged its `size_of` plus what it holds on the heap
/// ([`Data::heap_bytes`]: a string's length, …), so a queue of strings of any
/// length stays within its bytes. A record larger than the whole byte bound is
/// taken when the queue is empty (alone), so it is delayed, never refused.
///
/// ```
/// use shardflow_engine::QueueBound;
/// // Up to 1024 requests, and no more than 1 MiB of them.
/// let bound = QueueBound::records(1024).and_bytes(1 << 20);
/// assert_eq!(bound.max_records(), Some(1024));
/// assert_eq!(bound.max_bytes(), Some(1 << 20));
/// // Bytes only: any number of small records within 64 KiB.
/// assert_eq!(QueueBound::bytes(64 << 10).max_records(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    records: Option<usize>,
    bytes: Option<usize>,
}

impl QueueBound {
    /// At most `n` records (at least 1).
    pub fn records(n: usize) -> Self {
        QueueBound { records: Some(n.max(1)), bytes: None }
    }

    /// At most `n` bytes of records, charged as the type's docs say (any number
    /// of records within them).
    pub fn bytes(n: usize) -> Self {
        QueueBound { records: None, bytes: Some(n) }
    }

    /// This bound, and at most `n` records too.
    pub fn and_records(self, n: usize) -> Self {
        QueueBound { records: Some(n.max(1)), ..self }
    }

    /// This bound, and at most `n` bytes of records too.
    pub fn and_bytes(self, n: usize) -> Self {
        QueueBound { bytes: Some(n), ..self }
    }

    /// The most records the queue holds, if bounded by count.
    pub fn max_records(&self) -> Option<usize> {
        self.records
    }

    /// The most bytes of records the queue holds, if bounded by bytes.
    pub fn max_bytes(&self) -> Option<usize> {
        self.bytes
    }

    /// A channel bounded by count if this bound has one (unbounded otherwise:
    /// its bytes bound it).
    pub(crate) fn channel<T>(&self) -> (Sender<Queued<T>>, crossbeam_channel::Receiver<Queued<T>>) {
        match self.records {
            Some(n) => crossbeam_channel::bounded(n),
            None => crossbeam_channel::unbounded(),
        }
    }

    /// The byte budget of one queue under this bound, if it has one.
    pub(crate) fn budget(&self) -> Option<ByteBudget> {
        self.bytes.map(|limit| ByteBudget { limit, used: AtomicUsize::new(0) })
    }
}

/// A queued record and the bytes it was charged (0 without a byte bound).
pub(crate) type Queued<T> = (T, usize);

/// What a record is charged: its `size_of` and its heap bytes.
#[inline]
fn charge_of<T: Data>(record: &T) -> usize {
    std::mem::size_of::<T>() + T::heap_bytes(record.borrow())
}

/// Queues `record` through `tx` if the queue has room: under a byte bound
/// (`budget`), its charge is taken first; a record that then does not go in
/// (the count bound, or the other end gone) gives it back and wakes `room`'s
/// waiters, one of which may have found no room for its bytes meanwhile.
#[inline]
pub(crate) fn try_send_charged<T: Data>(
    tx: &Sender<Queued<T>>,
    budget: Option<&ByteBudget>,
    room: &RoomWaiters,
    record: T,
) -> Result<(), TrySendError<T>> {
    let Some(budget) = budget else {
        return tx.try_send((record, 0)).map_err(unqueued);
    };
    let charge = charge_of(&record);
    if !budget.try_take(charge) {
        return Err(TrySendError::Full(record));
    }
    tx.try_send((record, charge)).map_err(|e| {
        budget.give_back(charge);
        room.wake_all();
        unqueued(e)
    })
}

/// The record of a send that did not queue it.
#[inline]
fn unqueued<T>(e: TrySendError<Queued<T>>) -> TrySendError<T> {
    match e {
        TrySendError::Full((r, _)) => TrySendError::Full(r),
        TrySendError::Disconnected((r, _)) => TrySendError::Disconnected(r),
    }
}

/// What a byte-bounded queue holds now: the sides that put records in take
/// their charge first ([`try_send_charged`]), the side that takes them out
/// gives it back ([`ByteBudget::give_back`]) and then wakes whoever waits for
/// room.
pub(crate) struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ByteBudget {
    /// Takes `charge` bytes if they fit within the limit, or if the queue holds
    /// nothing (a record larger than the limit goes alone). (A compare and
    /// swap: two putters never overshoot together.)
    #[inline]
    fn try_take(&self, charge: usize) -> bool {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used != 0 && used.saturating_add(charge) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(used, used.saturating_add(charge), Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Gives back `charge` bytes taken for records now out of the queue.
    #[inline]
    pub(crate) fn give_back(&self, charge: usize) {
        if charge != 0 {
            self.used.fetch_sub(charge, Ordering::SeqCst);
        }
    }

    /// The bytes the queue holds now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_takes_what_fits_and_a_larger_record_only_into_an_empty_queue() {
        let budget = QueueBound::bytes(100).budget().unwrap();
        let charge = charge_of(&"x".repeat(27));
        assert_eq!(charge, std::mem::size_of::<String>() + 27);
        assert!(budget.try_take(charge));
        assert!(!budget.try_take(charge), "{charge} more would pass 100");
        budget.give_back(charge);
        assert_eq!(budget.used(), 0);
        let huge = charge_of(&"y".repeat(1000));
        assert!(budget.try_take(huge), "alone in an empty queue");
        assert!(!budget.try_take(1), "nothing beside it");
        budget.give_back(huge);
        assert!(budget.try_take(charge) && budget.try_take(charge / 2));
        assert_eq!(budget.used(), charge + charge / 2);
    }

    #[test]
    fn a_send_that_finds_the_count_full_gives_its_charge_back() {
        let bound = QueueBound::records(1).and_bytes(1000);
        let (tx, rx) = bound.channel::<String>();
        let (budget, room) = (bound.budget().unwrap(), RoomWaiters::default());
        assert!(try_send_charged(&tx, Some(&budget), &room, "a".into()).is_ok());
        let charged = budget.used();
        assert_eq!(charged, charge_of(&"a".to_string()));
        let full = try_send_charged(&tx, Some(&budget), &room, "b".into());
        assert!(matches!(full, Err(TrySendError::Full(b)) if b == "b"), "the record comes back");
        assert_eq!(budget.used(), charged, "the refused record's charge was given back");
        let (a, charge) = rx.try_recv().unwrap();
        assert_eq!((a.as_str(), charge), ("a", charged), "the charge travels with the record");
    }

    #[test]
    fn bounds_combine_and_a_count_is_at_least_one() {
        assert_eq!(QueueBound::records(0), QueueBound::records(1));
        let both = QueueBound::bytes(10).and_records(3);
        assert_eq!((both.max_records(), both.max_bytes()), (Some(3), Some(10)));
        assert_eq!(QueueBound::records(5).max_bytes(), None);
        assert!(QueueBound::records(5).budget().is_none());
    }
}
