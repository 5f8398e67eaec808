//! The ingress handle: a service thread pushes records into a job's source
//! subtasks through bounded queues (by count, bytes or both: [`QueueBound`]),
//! with back-pressure (`push` waits or hands the record back), and learns when
//! the job reads no more.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::data::Data;
use crate::runtime::bound::{try_send_charged, ByteBudget, QueueBound, Queued};
use crate::runtime::host::{wait, wait_until};
use crate::runtime::{ParkedWaker, RoomWaiters};

mod keyed;
mod source;

pub use keyed::KeyedIngressHandle;
pub(crate) use source::IngressSources;

/// How soon a stopping source looks again for a push that was between its
/// look at the closed flag and the queue.
const PUSH_RECHECK: Duration = Duration::from_micros(50);

/// Whether an ingress's job still reads it: closed once every source subtask
/// that started has ended (the job finished, failed or was cancelled), or when
/// none can start any more (the job was dropped or refused).
struct IngressLife {
    live: AtomicUsize,
    closed: AtomicBool,
    /// Pushes between their look at `closed` and the queue: a source that
    /// closes the ingress to stop drains the queues once none is left.
    pushing: AtomicUsize,
    /// By queue: pushers waiting for room (or the end).
    rooms: Vec<RoomWaiters>,
    /// The attempt (by its start) a source of which was told to stop: every
    /// source of that attempt will be, so none of them ends as if its input
    /// were over when the pushers, refused, drop their handles.
    stopping: Mutex<Option<Instant>>,
}

impl IngressLife {
    /// The job reads no more: pushers waiting for room find it gone.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for room in &self.rooms {
            room.wake_all();
        }
    }

    /// No source starts any more: with none running, nothing reads the queues,
    /// so [`Self::close`]; a source still running closes them when it ends.
    fn close_unless_read(&self) {
        if self.live.load(Ordering::Acquire) == 0 {
            self.close();
        }
    }
}

/// Closes an ingress once its job has ended, also where no source of it ever
/// ran to close it (a job refused at deployment, or whose shard went away
/// before a deployment reached it): pushers waiting for room find it gone.
#[derive(Clone)]
pub(crate) struct IngressCloser(Arc<IngressLife>);

impl IngressCloser {
    /// Closes the ingress unless a source of it runs (a job submitted from a
    /// clone of the same plan reads the same queues).
    pub(crate) fn close(&self) {
        self.0.close_unless_read();
    }
}

impl std::fmt::Debug for IngressCloser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressCloser").field("closed", &self.0.closed.load(Ordering::Relaxed)).finish()
    }
}

/// Which queue a record of a keyed ingress goes to: the source subtask that
/// owns its key's key group.
pub(crate) type IngressRoute<T> = Box<dyn Fn(&T) -> usize + Send + Sync>;

/// The queues of an ingress, one per source subtask.
struct IngressQueues<T> {
    name: String,
    senders: Vec<Sender<Queued<T>>>,
    /// A keyed ingress's: each record to its key's subtask.
    route: Option<IngressRoute<T>>,
    /// By queue, with a byte bound: what it holds.
    budgets: Arc<[ByteBudget]>,
    wakes: Vec<Arc<ParkedWaker>>,
    life: Arc<IngressLife>,
}

impl<T> Drop for IngressQueues<T> {
    fn drop(&mut self) {
        // The last handle is gone: the sources see the end once they drain.
        self.senders.clear();
        for w in &self.wakes {
            w.wake_always();
        }
    }
}

/// Why a push did not take its record; the record comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The queue is full (only from [`IngressHandle::try_push`] and
    /// [`IngressHandle::push_timeout`]).
    Full(T),
    /// The job takes no more (it ended, failed or was cancelled, or was
    /// stopped with a snapshot: what was pushed before is in the snapshot).
    Closed(T),
}

impl<T> PushError<T> {
    /// The record that was not taken.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(t) | PushError::Closed(t) => t,
        }
    }
}

impl<T> std::fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Full(_) => f.write_str("the ingress queue is full"),
            PushError::Closed(_) => f.write_str("the ingress's job takes no more (it ended or was stopped)"),
        }
    }
}

impl<T: std::fmt::Debug> std::error::Error for PushError<T> {}

/// Pushes records into a running job from any thread: one bounded queue per
/// source subtask, filled round robin (or [`IngressHandle::push_to`] one
/// subtask, or a handle of [`IngressHandle::split`] per subtask), each bounded
/// by a number of records, of bytes or both ([`QueueBound`]). A full queue
/// makes [`IngressHandle::push`] wait (back-pressure) and
/// [`IngressHandle::try_push`] hand the record back. The job's ingress source
/// ends once every clone of the handle is dropped and its queue is drained.
pub struct IngressHandle<T> {
    queues: Arc<IngressQueues<T>>,
    next: usize,
    /// The one subtask this handle feeds ([`IngressHandle::split`]).
    pinned: Option<usize>,
}

impl<T> Clone for IngressHandle<T> {
    fn clone(&self) -> Self {
        IngressHandle { queues: self.queues.clone(), next: self.next, pinned: self.pinned }
    }
}

impl<T> std::fmt::Debug for IngressHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressHandle")
            .field("name", &self.queues.name)
            .field("subtasks", &self.queues.senders.len())
            .finish()
    }
}

impl<T: Data> IngressHandle<T> {
    /// The number of source subtasks (queues).
    pub fn subtasks(&self) -> usize {
        self.queues.senders.len()
    }

    /// The records queued now, in every queue (pushed, not yet read by the job).
    pub fn queued(&self) -> usize {
        self.queues.senders.iter().map(Sender::len).sum()
    }

    /// The bytes queued now, in every queue, as a byte bound charges them (0
    /// without one: see [`QueueBound`]).
    pub fn queued_bytes(&self) -> usize {
        self.queues.budgets.iter().map(ByteBudget::used).sum()
    }

    /// One handle per source subtask, each feeding only its own subtask's
    /// queue (a service thread per subtask, records of one handle in order).
    /// The job's input ends once every handle, these and the original, is
    /// dropped.
    pub fn split(&self) -> Vec<IngressHandle<T>> {
        (0..self.subtasks()).map(|i| IngressHandle { queues: self.queues.clone(), next: i, pinned: Some(i) }).collect()
    }

    #[inline]
    fn pick(&mut self, record: &T) -> usize {
        if let Some(i) = self.pinned {
            return i;
        }
        if let Some(route) = &self.queues.route {
            return route(record);
        }
        let i = self.next;
        self.next = (i + 1) % self.queues.senders.len().max(1);
        i
    }

    /// Pushes `record`, waiting while the queue is full (on the thread of a
    /// [`crate::HostedShard`], running the shard meanwhile). Once the job is
    /// gone — also while the push waits — the record comes back in
    /// [`PushError::Closed`].
    pub fn push(&mut self, record: T) -> Result<(), PushError<T>> {
        let i = self.pick(&record);
        self.push_to(i, record)
    }

    /// Pushes `record` to source subtask `subtask`'s queue, waiting while it is
    /// full. A subtask out of range is taken modulo the number of subtasks.
    pub fn push_to(&self, subtask: usize, record: T) -> Result<(), PushError<T>> {
        let i = subtask % self.queues.senders.len().max(1);
        match self.try_push_to(i, record) {
            // Waits for room or the job's end, whichever comes first (on a
            // host's thread running its shard meanwhile).
            Err(PushError::Full(r)) => wait(self.push_when_room(i, &mut Some(r))),
            done => done,
        }
    }

    /// Pushes `record`, awaiting room while the queue is full: for a pusher in
    /// an async runtime, or in a future a [`crate::HostedShard`] runs
    /// (`shard.block_on(…)`), whose shard drains the queue while it awaits.
    ///
    /// # Cancel safety
    /// Not cancel-safe: a push cancelled while it waits drops its record.
    pub async fn push_async(&mut self, record: T) -> Result<(), PushError<T>> {
        let i = self.pick(&record);
        let mut slot = Some(record);
        self.push_when_room(i, &mut slot).await
    }

    /// Pushes the record in `slot` to queue `i` once it has room; while it
    /// waits the record stays in `slot` (so a caller that gives up has it).
    fn push_when_room<'a>(
        &'a self,
        i: usize,
        slot: &'a mut Option<T>,
    ) -> impl Future<Output = Result<(), PushError<T>>> + 'a {
        std::future::poll_fn(move |cx| {
            // Always `Some` here: the future ends when it hands the record on.
            let Some(mut r) = slot.take() else { return Poll::Pending };
            for attempt in 0..2 {
                match self.try_push_to(i, r) {
                    Err(PushError::Full(back)) => r = back,
                    done => return Poll::Ready(done),
                }
                // Wait for room, then look once more (`RoomWaiters`).
                if attempt == 0 {
                    self.queues.life.rooms[i].register(cx.waker());
                }
            }
            *slot = Some(r);
            Poll::Pending
        })
    }

    /// Pushes every record of `records`, in order, each to the queue
    /// [`Self::push`] would pick, waiting while one is full; wakes each source
    /// subtask once for what it queued instead of once per record. For a
    /// service with several records at hand (a socket read's worth): where the
    /// job keeps up with the pushes, a push wakes a parked shard, and the
    /// wake-ups, not the records, bound what one thread can push. Once the job
    /// is gone, [`PushError::Closed`] with the first record it did not take
    /// (the records before it were taken; to keep those after it, pass
    /// `&mut iter`).
    pub fn push_all(&mut self, records: impl IntoIterator<Item = T>) -> Result<(), PushError<T>> {
        let mut touched = Touched::new(self.queues.senders.len());
        let result = records.into_iter().try_for_each(|record| {
            let i = self.pick(&record);
            match self.try_push_quietly(i, record) {
                Ok(()) => {
                    touched.add(i);
                    Ok(())
                }
                Err(PushError::Full(r)) => {
                    // The sources drain what this call queued, then room comes.
                    touched.wake(&self.queues.wakes);
                    self.push_to(i, r)
                }
                Err(closed) => Err(closed),
            }
        });
        touched.wake(&self.queues.wakes);
        result
    }

    /// Pushes `record` if its queue has room now.
    pub fn try_push(&mut self, record: T) -> Result<(), PushError<T>> {
        let i = self.pick(&record);
        self.try_push_to(i, record)
    }

    /// Pushes `record` to queue `i` if it has room now, and wakes its source.
    #[inline]
    fn try_push_to(&self, i: usize, record: T) -> Result<(), PushError<T>> {
        let pushed = self.try_push_quietly(i, record);
        if pushed.is_ok() {
            self.queues.wakes[i].wake();
        }
        pushed
    }

    /// [`Self::try_push_to`] without waking the source: the caller wakes it.
    /// (`SeqCst`: a pusher that registered for room looks again, and must see
    /// a close made before its registration.)
    #[inline]
    fn try_push_quietly(&self, i: usize, record: T) -> Result<(), PushError<T>> {
        let life = &self.queues.life;
        // Counted from before the look at `closed` until the record is queued,
        // so a source stopping (it closes, then drains) misses no record.
        life.pushing.fetch_add(1, Ordering::SeqCst);
        let pushed =
            if life.closed.load(Ordering::SeqCst) { Err(PushError::Closed(record)) } else { self.queue(i, record) };
        life.pushing.fetch_sub(1, Ordering::SeqCst);
        pushed
    }

    /// Queues `record` in queue `i` if it has room: room for its charge under a
    /// byte bound, then a place under the count bound.
    #[inline]
    fn queue(&self, i: usize, record: T) -> Result<(), PushError<T>> {
        let q = &self.queues;
        try_send_charged(&q.senders[i], q.budgets.get(i), &q.life.rooms[i], record).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(r) => PushError::Full(r),
            crossbeam_channel::TrySendError::Disconnected(r) => PushError::Closed(r),
        })
    }

    /// Pushes `record`, waiting up to `timeout` for room: [`PushError::Full`]
    /// if none came, [`PushError::Closed`] as soon as the job is gone.
    pub fn push_timeout(&mut self, record: T, timeout: Duration) -> Result<(), PushError<T>> {
        let i = self.pick(&record);
        let record = match self.try_push_to(i, record) {
            Err(PushError::Full(r)) => r,
            done => return done,
        };
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            // Beyond any clock: no deadline.
            return wait(self.push_when_room(i, &mut Some(record)));
        };
        let mut slot = Some(record);
        let pushed = wait_until(self.push_when_room(i, &mut slot), deadline);
        match (pushed, slot.take()) {
            (Some(done), _) => done,
            (None, Some(r)) => Err(PushError::Full(r)),
            (None, None) => Ok(()),
        }
    }
}

/// The queues a batch of pushes put records in, to wake each once.
struct Touched {
    /// Up to 64 queues (the common case, no allocation).
    low: u64,
    /// Beyond: one flag per queue.
    high: Vec<bool>,
}

impl Touched {
    fn new(queues: usize) -> Self {
        Touched { low: 0, high: vec![false; queues.saturating_sub(64)] }
    }

    #[inline]
    fn add(&mut self, i: usize) {
        match i.checked_sub(64) {
            None => self.low |= 1 << i,
            Some(j) => self.high[j] = true,
        }
    }

    /// Wakes the sources of the queues touched since the last wake.
    fn wake(&mut self, wakes: &[Arc<ParkedWaker>]) {
        while self.low != 0 {
            let i = self.low.trailing_zeros() as usize;
            self.low &= self.low - 1;
            wakes[i].wake();
        }
        for (j, touched) in self.high.iter_mut().enumerate().filter(|(_, t)| **t) {
            *touched = false;
            wakes[64 + j].wake();
        }
    }
}

/// An ingress of `parallelism` queues, each within `bound`; a keyed one's
/// `route` picks each record's queue.
pub(crate) fn ingress<T: Data>(
    name: &str,
    bound: QueueBound,
    parallelism: u32,
    route: Option<IngressRoute<T>>,
) -> (IngressHandle<T>, IngressSources<T>) {
    let (mut senders, mut receivers, mut wakes, mut budgets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..parallelism.max(1) {
        let (tx, rx) = bound.channel();
        senders.push(tx);
        receivers.push(rx);
        wakes.push(Arc::new(ParkedWaker::default()));
        budgets.extend(bound.budget());
    }
    let budgets: Arc<[ByteBudget]> = budgets.into();
    let rooms = (0..senders.len()).map(|_| RoomWaiters::default()).collect();
    let life = Arc::new(IngressLife {
        live: Default::default(),
        closed: AtomicBool::new(false),
        pushing: Default::default(),
        rooms,
        stopping: Default::default(),
    });
    let queues = Arc::new(IngressQueues {
        name: name.to_string(),
        senders,
        route,
        budgets: budgets.clone(),
        wakes: wakes.clone(),
        life: life.clone(),
    });
    (IngressHandle { queues, next: 0, pinned: None }, IngressSources { receivers, budgets, wakes, life })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CountingWaker;

    #[test]
    fn a_batch_wakes_each_queue_it_touched_once_below_and_beyond_64() {
        let wakes: Vec<Arc<ParkedWaker>> = (0..80).map(|_| Arc::new(ParkedWaker::default())).collect();
        let counters: Vec<_> = wakes
            .iter()
            .map(|w| {
                let (waker, counter) = CountingWaker::new();
                w.park(&waker);
                (waker, counter)
            })
            .collect();
        let mut touched = Touched::new(80);
        for i in [0, 5, 5, 63, 64, 70, 70, 79] {
            touched.add(i);
        }
        touched.wake(&wakes);
        let woken: Vec<usize> = (0..80).filter(|&i| counters[i].1.count() > 0).collect();
        assert_eq!(woken, [0, 5, 63, 64, 70, 79]);
        assert!(counters.iter().all(|(_, c)| c.count() <= 1), "once each");
        for (w, (waker, _)) in wakes.iter().zip(&counters) {
            w.park(waker);
        }
        touched.wake(&wakes);
        assert_eq!(counters[5].1.count(), 1, "a wake forgets what it woke");
    }
}
