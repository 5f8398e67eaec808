//! Wake-ups across a bounded queue between a shard and a thread outside it: an
//! ingress's pushers and its source tasks, an egress's sinks and its reader.
//! The queue itself is the caller's (any queue whose puts and takes are
//! atomic); these are the two sides' ways to wait for each other without a
//! lost wake-up and without a wake per record where nobody waits.
//!
//! Both follow one rule: the side that waits registers its waker, says so, and
//! then looks at the queue once more; the side that changes the queue changes
//! it first and then looks whether anyone waits. The "says so" and the "looks"
//! are read-modify-writes of one flag, so the two are ordered whatever the
//! queue's own orderings: either the changer's look sees the waiter, or the
//! waiter's second look comes after the change (`loom_tests` check both).

use std::sync::PoisonError;
use std::task::Waker;

use crate::sync::{AtomicBool, AtomicWaker, Mutex, Ordering};

/// One side waiting for the other to put into a queue: a source parked on an
/// empty ingress queue, an egress reader on an empty result queue. The waiter
/// [`park`](Self::park)s, then looks at the queue once more; the putter puts,
/// then [`wake`](Self::wake)s. A waiter that never waits costs the putter one
/// atomic swap per put.
#[derive(Debug)]
pub struct ParkedWaker {
    waker: AtomicWaker,
    parked: AtomicBool,
}

impl Default for ParkedWaker {
    fn default() -> Self {
        ParkedWaker { waker: AtomicWaker::new(), parked: AtomicBool::new(false) }
    }
}

impl ParkedWaker {
    /// Waits with `waker`: the next [`ParkedWaker::wake`] wakes it. The caller
    /// looks at the queue once more after this.
    pub fn park(&self, waker: &Waker) {
        self.waker.register(waker);
        // A swap, not a store: if a putter's wake came first, this reads what
        // it wrote, so the caller's second look sees what it put.
        self.parked.swap(true, Ordering::SeqCst);
    }

    /// Wakes the waiting side, if it waits. Call it after the put.
    pub fn wake(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Wakes the last registered waker whether it waits or not (the queue ends).
    pub fn wake_always(&self) {
        self.parked.swap(false, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// Whoever waits for room in a bounded queue (egress sinks, ingress pushers
/// that await), any number of them: each [`register`](Self::register)s, then
/// looks at the queue once more; the side that takes from the queue takes,
/// then [`wake_all`](Self::wake_all)s. Where nobody waits a take costs one
/// atomic swap.
#[derive(Debug)]
pub struct RoomWaiters {
    any: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Default for RoomWaiters {
    fn default() -> Self {
        RoomWaiters { any: AtomicBool::new(false), wakers: Mutex::new(Vec::new()) }
    }
}

impl RoomWaiters {
    /// Waits with `waker`: the next [`RoomWaiters::wake_all`] wakes it. The
    /// caller looks at the queue once more after this. A waiter polled again
    /// before a wake-up (its task woken for something else) is kept once, so
    /// a queue that stays full holds one waker per waiter, not one per poll.
    pub fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        drop(wakers);
        // A swap, as in `ParkedWaker::park`.
        self.any.swap(true, Ordering::SeqCst);
    }

    /// Wakes every waiter, if any waits. Call it after the take.
    pub fn wake_all(&self) {
        if self.any.swap(false, Ordering::SeqCst) {
            let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
            for w in wakers {
                w.wake();
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Waker, Arc<Count>) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Waker::from(count.clone()), count)
    }

    /// A waiter polled many times while the queue stays full is held once
    /// and woken once; every distinct waiter is woken.
    #[test]
    fn a_waiter_registered_again_is_held_once() {
        let room = RoomWaiters::default();
        let ((a, a_woken), (b, b_woken)) = (counting(), counting());
        for _ in 0..1000 {
            room.register(&a);
        }
        room.register(&b);
        assert_eq!(room.wakers.lock().unwrap().len(), 2, "one waker per waiter, not per poll");
        room.wake_all();
        assert_eq!((a_woken.0.load(Ordering::SeqCst), b_woken.0.load(Ordering::SeqCst)), (1, 1));
        room.wake_all();
        assert_eq!(a_woken.0.load(Ordering::SeqCst), 1, "nobody waits any more");
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;
    use loom::future::block_on;
    use loom::sync::atomic::AtomicUsize;
    use std::collections::VecDeque;
    use std::future::poll_fn;
    use std::task::Poll;

    /// A bounded queue with what matters here of a lock-free one's: a put that
    /// finds it full and a take that finds it empty only load (they write
    /// nothing another thread could order itself after).
    struct Queue {
        items: Mutex<VecDeque<u32>>,
        len: AtomicUsize,
        capacity: usize,
        ended: AtomicBool,
    }

    impl Queue {
        fn new(capacity: usize) -> Self {
            Queue {
                items: Mutex::new(VecDeque::new()),
                len: AtomicUsize::new(0),
                capacity,
                ended: AtomicBool::new(false),
            }
        }

        fn try_put(&self, item: u32) -> Result<(), u32> {
            if self.len.load(Ordering::Acquire) >= self.capacity {
                return Err(item);
            }
            let mut items = self.items.lock().unwrap();
            if items.len() >= self.capacity {
                return Err(item);
            }
            items.push_back(item);
            self.len.store(items.len(), Ordering::Release);
            Ok(())
        }

        /// The next item; `Err(true)` once the queue has ended and is empty.
        fn try_take(&self) -> Result<u32, bool> {
            let ended = self.ended.load(Ordering::Acquire);
            if self.len.load(Ordering::Acquire) == 0 {
                return Err(ended);
            }
            let mut items = self.items.lock().unwrap();
            let item = items.pop_front();
            self.len.store(items.len(), Ordering::Release);
            item.ok_or(ended)
        }
    }

    /// The reader's side: the next item, parking on `reader` when there is
    /// none; `None` at the end.
    fn take(queue: &Queue, reader: &ParkedWaker) -> Option<u32> {
        block_on(poll_fn(|cx| {
            for attempt in 0..2 {
                match queue.try_take() {
                    Ok(item) => return Poll::Ready(Some(item)),
                    Err(true) => return Poll::Ready(None),
                    Err(false) if attempt == 0 => reader.park(cx.waker()),
                    Err(false) => {}
                }
            }
            Poll::Pending
        }))
    }

    /// A putter's side: puts `item`, waiting on `room` while the queue is
    /// full, then wakes the reader.
    fn put(queue: &Queue, room: &RoomWaiters, reader: &ParkedWaker, item: u32) {
        block_on(poll_fn(|cx| {
            for attempt in 0..2 {
                if queue.try_put(item).is_ok() {
                    return Poll::Ready(());
                }
                if attempt == 0 {
                    room.register(cx.waker());
                }
            }
            Poll::Pending
        }));
        reader.wake();
    }

    /// A putter puts an item while the reader waits for one: whatever the
    /// interleaving, the reader gets it (a lost wake-up would leave
    /// `block_on` waiting for ever, which loom reports).
    #[test]
    fn a_parked_reader_sees_a_put() {
        loom::model(|| {
            let queue = Arc::new(Queue::new(1));
            let reader = Arc::new(ParkedWaker::default());
            let putter = {
                let (queue, reader) = (queue.clone(), reader.clone());
                loom::thread::spawn(move || put(&queue, &RoomWaiters::default(), &reader, 7))
            };
            assert_eq!(take(&queue, &reader), Some(7));
            putter.join().unwrap();
        });
    }

    /// The queue ends while the reader waits: the reader sees the end.
    #[test]
    fn a_parked_reader_sees_the_end() {
        loom::model(|| {
            let queue = Arc::new(Queue::new(1));
            let reader = Arc::new(ParkedWaker::default());
            let putter = {
                let (queue, reader) = (queue.clone(), reader.clone());
                loom::thread::spawn(move || {
                    queue.ended.store(true, Ordering::Release);
                    reader.wake_always();
                })
            };
            assert_eq!(take(&queue, &reader), None);
            putter.join().unwrap();
        });
    }

    /// A putter waits for room in a full queue of one while the reader takes
    /// and wakes whoever waits: the putter is not left waiting, and the reader
    /// gets both items in order.
    #[test]
    fn a_putter_waiting_for_room_is_woken_by_a_take() {
        loom::model(|| {
            let queue = Arc::new(Queue::new(1));
            queue.try_put(1).unwrap();
            let reader = Arc::new(ParkedWaker::default());
            let room = Arc::new(RoomWaiters::default());
            let putter = {
                let (queue, reader, room) = (queue.clone(), reader.clone(), room.clone());
                loom::thread::spawn(move || put(&queue, &room, &reader, 2))
            };
            let mut got = Vec::new();
            while got.len() < 2 {
                got.extend(take(&queue, &reader));
                room.wake_all();
            }
            assert_eq!(got, [1, 2]);
            putter.join().unwrap();
        });
    }
}
