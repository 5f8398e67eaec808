//! The egress handle: a job's sink subtasks fill one bounded queue (by count,
//! bytes or both: [`QueueBound`]) a service reads results from, from any
//! thread; while it is full the sinks take no input (back-pressure through the
//! whole job), and the reader learns whether the stream ended complete or was
//! cut short.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use either::Either;

use crate::data::Data;
use crate::error::{EngineError, OperatorError};
use crate::runtime::bound::{try_send_charged, ByteBudget, QueueBound, Queued};
use crate::runtime::build::{BuildContext, Name, NodeFactory};
use crate::runtime::collector::{Collector, Lifecycle, SharedCollector, SinkOutput};
use crate::runtime::host::hosted_here;
use crate::runtime::output::Output;
use crate::runtime::{ParkedWaker, RoomWaiters};

use super::select::{self, Input, Mapped};

/// Why an egress's sinks stopped early: the first one's reason.
#[derive(Default)]
struct EgressStop(Mutex<Option<String>>);

/// Reads a job's results from any thread: a queue the job's egress sinks fill,
/// bounded by a number of records, of bytes or both ([`QueueBound`]). While it
/// is full the sinks stop taking input (back-pressure through the whole job);
/// memory stays bounded by its bound. Ends (`None`) once every
/// sink subtask has ended and everything was read; [`EgressHandle::stopped`]
/// then tells a complete stream from one cut short by a failure or a cancel.
pub struct EgressHandle<T> {
    rx: Receiver<Queued<T>>,
    /// With a byte bound: what the queue holds.
    budget: Option<Arc<ByteBudget>>,
    waiters: Arc<RoomWaiters>,
    stop: Arc<EgressStop>,
    reader: Arc<ParkedWaker>,
}

impl<T> std::fmt::Debug for EgressHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressHandle").field("queued", &self.rx.len()).finish()
    }
}

impl<T> EgressHandle<T> {
    /// The next result, waiting for one; `None` once the job's sinks have all
    /// finished and the queue is empty. On the thread of a
    /// [`crate::HostedShard`] the shard runs meanwhile.
    pub fn recv(&self) -> Option<T> {
        if let Some(sched) = hosted_here() {
            return sched.block_on(self.next_result());
        }
        self.rx.recv().ok().map(|q| self.taken(q))
    }

    /// The next result, waiting up to `timeout` (on a host's thread, running
    /// its shard meanwhile).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        if let Some(sched) = hosted_here() {
            return select::hosted_timeout(&sched, self.next_result(), timeout);
        }
        self.rx.recv_timeout(timeout).map(|q| self.taken(q))
    }

    /// The next result, looking for one without sleeping for up to `spin`,
    /// then waiting as [`EgressHandle::recv_timeout`] does for the rest of
    /// `timeout`. A reader with a core of its own (a shard's answer is often
    /// microseconds away) then takes it without being woken — a wake-up costs
    /// 20–30 µs on some machines — at the price of that core while it spins.
    /// On the thread of a [`crate::HostedShard`] there is nothing to spin for:
    /// the wait runs the shard.
    pub fn recv_spinning(&self, spin: Duration, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let mut handle = self;
        spin_then_wait(&mut handle, spin, timeout, |h: &mut &Self| h.try_recv(), |h, left| h.recv_timeout(left))
    }

    /// The next result if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv().map(|q| self.taken(q))
    }

    /// A result taken from the queue: its charge given back, then the sinks
    /// waiting for room woken.
    #[inline]
    fn taken(&self, (result, charge): Queued<T>) -> T {
        if let Some(budget) = &self.budget {
            budget.give_back(charge);
        }
        self.waiters.wake_all();
        result
    }

    /// The next result, awaited: `None` once the job's sinks have all finished
    /// and the queue is empty. For a reader in an async runtime, or on a
    /// [`crate::HostedShard`] (`shard.block_on(egress.recv_async())`).
    ///
    /// # Cancel safety
    /// Cancel-safe: a result is taken only when the future completes.
    pub async fn recv_async(&mut self) -> Option<T> {
        self.next_result().await
    }

    /// The next result, awaited through the reader's waker (one reader at a
    /// time: [`EgressHandle::recv_async`] takes `&mut`; the blocking calls use
    /// it only on a host's thread).
    fn next_result(&self) -> impl std::future::Future<Output = Option<T>> + '_ {
        std::future::poll_fn(|cx| {
            for attempt in 0..2 {
                match self.rx.try_recv() {
                    Ok(q) => return Poll::Ready(Some(self.taken(q))),
                    Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                    // Park, then look once more (`ParkedWaker`).
                    Err(TryRecvError::Empty) if attempt == 0 => self.reader.park(cx.waker()),
                    Err(TryRecvError::Empty) => {}
                }
            }
            Poll::Pending
        })
    }

    /// The next result of this egress or of `other`, whichever has one,
    /// waiting for one (on the thread of a [`crate::HostedShard`] the shard
    /// runs meanwhile): one thread reads two egresses, say a job's output and
    /// a side output, without draining one while the job waits for room in the
    /// other. Once one stream has ended, results come from the other; `None`
    /// once both have ended and everything was read. Where both have results
    /// queued, the fuller queue's comes first.
    ///
    /// ```
    /// use shardflow_engine::{Dataflow, Either, Emitter, Engine, OutputTag};
    ///
    /// let rejected = OutputTag::<String>::new("rejected");
    /// let df = Dataflow::new("parse");
    /// let parsed = df.from_iter("lines", (0..1000u64).map(|i| format!("{i:x}"))).flat_map({
    ///     let rejected = rejected.clone();
    ///     move |line: &str, out: &mut Emitter<'_, u64>| match line.parse() {
    ///         Ok(n) => out.emit(n),
    ///         Err(_) => out.emit_side_ref(&rejected, line),
    ///     }
    /// });
    /// // Queues of 8: neither stream can be drained first.
    /// let mut bad = parsed.side_output(&rejected).egress(8);
    /// let mut numbers = parsed.egress(8);
    /// let engine = Engine::builder().shards(1).build()?;
    /// let job = engine.submit(df.build()?)?;
    /// let (mut n, mut not_decimal) = (0, 0);
    /// while let Some(next) = numbers.recv_either(&mut bad) {
    ///     match next {
    ///         Either::Left(_) => n += 1,
    ///         Either::Right(_) => not_decimal += 1,
    ///     }
    /// }
    /// job.wait()?;
    /// assert_eq!((n, not_decimal), (400, 600));
    /// # Ok::<(), shardflow_engine::EngineError>(())
    /// ```
    pub fn recv_either<U>(&mut self, other: &mut EgressHandle<U>) -> Option<Either<T, U>> {
        let (left, right) = either(self, other);
        select::recv(&[&left as &dyn Input<_>, &right], &mut [false; 2])
    }

    /// [`EgressHandle::recv_either`], waiting up to `timeout`: `Disconnected`
    /// once both streams have ended and everything was read.
    pub fn recv_either_timeout<U>(
        &mut self,
        other: &mut EgressHandle<U>,
        timeout: Duration,
    ) -> Result<Either<T, U>, RecvTimeoutError> {
        let (left, right) = either(self, other);
        select::recv_timeout(&[&left as &dyn Input<_>, &right], &mut [false; 2], timeout)
    }

    /// [`EgressHandle::recv_either`], awaited (for a reader in an async
    /// runtime, or on a [`crate::HostedShard`]).
    ///
    /// # Cancel safety
    /// Cancel-safe: a result is taken only when the future completes.
    pub async fn recv_either_async<U>(&mut self, other: &mut EgressHandle<U>) -> Option<Either<T, U>> {
        let (left, right) = either(self, other);
        select::next_async(&[&left as &dyn Input<_>, &right], &mut [false; 2]).await
    }

    /// Waited on by `select` too (a select's blocking wait).
    pub(super) fn register<'s>(&'s self, select: &mut crossbeam_channel::Select<'s>) {
        select.recv(&self.rx);
    }

    /// `waker` is woken when a result comes or the stream ends (a select's
    /// awaited wait).
    pub(super) fn park(&self, waker: &std::task::Waker) {
        self.reader.park(waker);
    }

    /// Results queued now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// The bytes queued now, as a byte bound charges them (0 without one: see
    /// [`QueueBound`]).
    pub fn queued_bytes(&self) -> usize {
        self.budget.as_ref().map_or(0, |b| b.used())
    }

    /// Whether no result is queued now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Every result until the end.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.recv())
    }

    /// Why the stream was cut short, if it was: set (before the stream ends)
    /// when a sink subtask's task failed — with the cause it saw — or was
    /// cancelled; `None` while the job runs and after a complete end. Once the
    /// stream ends (`None` from [`EgressHandle::recv`]) this is final.
    pub fn stopped(&self) -> Option<String> {
        self.stop.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Looks for a result of `reader` with `try_take` without sleeping for up to
/// `spin` (within `timeout`), then waits with `wait` for what is left of
/// `timeout`; on a hosted shard's thread only waits (the wait runs the shard).
pub(super) fn spin_then_wait<R, T>(
    reader: &mut R,
    spin: Duration,
    timeout: Duration,
    mut try_take: impl FnMut(&mut R) -> Result<T, TryRecvError>,
    wait: impl FnOnce(&mut R, Duration) -> Result<T, RecvTimeoutError>,
) -> Result<T, RecvTimeoutError> {
    if hosted_here().is_some() {
        return wait(reader, timeout);
    }
    let start = std::time::Instant::now();
    let until = spin.min(timeout);
    loop {
        match try_take(reader) {
            Ok(result) => return Ok(result),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        if start.elapsed() >= until {
            return wait(reader, timeout.saturating_sub(start.elapsed()));
        }
        std::hint::spin_loop();
    }
}

/// `a` and `b` as a select reads them: `a`'s results on the left.
fn either<'h, T, U>(
    a: &'h EgressHandle<T>,
    b: &'h EgressHandle<U>,
) -> (impl Input<Either<T, U>> + 'h, impl Input<Either<T, U>> + 'h) {
    (Mapped { handle: a, map: Either::Left }, Mapped { handle: b, map: Either::Right })
}

/// One sink subtask's end of an egress: records that found the queue full wait
/// in `stash`; the task takes no input until they are gone.
pub(crate) struct EgressSink<T> {
    name: String,
    tx: Option<EgressSender<T>>,
    stash: VecDeque<T>,
    waiters: Arc<RoomWaiters>,
    stop: Arc<EgressStop>,
    gone: bool,
}

/// A sink subtask's sender: the sink wakes the handle's reader after a result
/// or a batch of them (only a reader that waits costs a wake-up), and the
/// sender when it goes (the stream may have ended).
struct EgressSender<T> {
    /// `Some` until it is dropped.
    tx: Option<Sender<Queued<T>>>,
    budget: Option<Arc<ByteBudget>>,
    waiters: Arc<RoomWaiters>,
    reader: Arc<ParkedWaker>,
}

impl<T: Data> EgressSender<T> {
    /// Queues `record` without waking the reader: the caller wakes it once
    /// for what it queued ([`EgressSender::wake_reader`]). Full where its
    /// charge finds no room under a byte bound, or the count bound is reached.
    #[inline]
    fn try_send(&self, record: T) -> Result<(), TrySendError<T>> {
        let Some(tx) = &self.tx else { return Err(TrySendError::Disconnected(record)) };
        try_send_charged(tx, self.budget.as_deref(), &self.waiters, record)
    }
}

impl<T> EgressSender<T> {
    #[inline]
    fn wake_reader(&self) {
        self.reader.wake();
    }
}

impl<T> Drop for EgressSender<T> {
    fn drop(&mut self) {
        // The sender first, then the wake-up: the reader must find the end.
        drop(self.tx.take());
        self.reader.wake_always();
    }
}

impl<T: Data> EgressSink<T> {
    #[inline]
    fn send(&mut self, record: T) {
        if self.send_quiet(record) {
            self.wake_reader();
        }
    }

    /// [`EgressSink::send`] without waking the reader (a batch wakes it once):
    /// whether the record went into the queue (rather than the stash).
    #[inline]
    fn send_quiet(&mut self, record: T) -> bool {
        if !self.stash.is_empty() {
            self.stash.push_back(record);
            return false;
        }
        match self.tx.as_ref().map(|tx| tx.try_send(record)) {
            Some(Ok(())) => return true,
            None => {}
            Some(Err(TrySendError::Full(r))) => self.stash.push_back(r),
            Some(Err(TrySendError::Disconnected(r))) => {
                self.gone = true;
                self.stash.push_back(r);
            }
        }
        false
    }

    fn wake_reader(&self) {
        if let Some(tx) = &self.tx {
            tx.wake_reader();
        }
    }

    /// Moves stashed records into the queue while it has room, then wakes the
    /// reader once.
    fn drain(&mut self) -> Result<(), OperatorError> {
        let Some(tx) = &self.tx else { return Ok(()) };
        let mut sent = false;
        while let Some(r) = self.stash.pop_front() {
            match tx.try_send(r) {
                Ok(()) => sent = true,
                Err(TrySendError::Full(r)) => {
                    self.stash.push_front(r);
                    break;
                }
                Err(TrySendError::Disconnected(r)) => {
                    self.stash.push_front(r);
                    self.gone = true;
                    break;
                }
            }
        }
        if sent {
            tx.wake_reader();
        }
        if self.gone {
            return Err(OperatorError::User(format!(
                "egress '{}': the handle was dropped with {} results undelivered",
                self.name,
                self.stash.len()
            )));
        }
        Ok(())
    }
}

impl<T: Data> Collector<T> for SharedCollector<EgressSink<T>> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        self.0.borrow_mut().send(T::to_owned_record(record));
    }
    fn collect_batch(&mut self, records: &[T]) {
        let mut s = self.0.borrow_mut();
        let mut sent = false;
        for r in records {
            sent |= s.send_quiet(r.clone());
        }
        // One wake-up for the batch: the reader takes what is queued.
        if sent {
            s.wake_reader();
        }
    }
}

impl<T: Data> Output for SharedCollector<EgressSink<T>> {
    fn overdrawn(&self) -> bool {
        !std::cell::RefCell::borrow(&self.0).stash.is_empty()
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OperatorError>> {
        let mut s = self.0.borrow_mut();
        s.drain()?;
        if s.stash.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // Register, then try once more: a read between the try and the
        // registration sees the flag and wakes us.
        s.waiters.register(cx.waker());
        s.drain()?;
        if s.stash.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn is_idle(&self) -> bool {
        std::cell::RefCell::borrow(&self.0).stash.is_empty()
    }
}

impl<T: Data> Lifecycle for EgressSink<T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        // Dropping the sender: the handle ends once every subtask's is gone.
        self.tx = None;
        Ok(SinkOutput::None)
    }
    fn close_after_stop(&mut self, stop: &str) -> Result<(), OperatorError> {
        self.end_early(stop);
        Ok(())
    }
    fn stopped_unopened(&mut self, stop: &str) {
        self.end_early(stop);
    }
}

impl<T> EgressSink<T> {
    /// Records why the stream ends early, then ends this subtask's part: the
    /// reason first, so a reader that sees the end sees it too.
    fn end_early(&mut self, why: &str) {
        let mut first = self.stop.0.lock().unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert_with(|| format!("egress '{}': its task {why}", self.name));
        drop(first);
        self.tx = None;
    }
}

impl<T> Drop for EgressSink<T> {
    fn drop(&mut self) {
        // Neither closed nor stopped: the task ended before it opened.
        if self.tx.is_some() {
            self.end_early("ended before it opened");
        }
    }
}

/// Hands each sink subtask a sender; the template is dropped once the vertex's
/// subtasks all have theirs, so the handle ends when they finish.
pub(crate) struct EgressFactory<T> {
    pub(crate) name: Name,
    template: Mutex<Option<Sender<Queued<T>>>>,
    budget: Option<Arc<ByteBudget>>,
    reader: Arc<ParkedWaker>,
    taken: AtomicU32,
    waiters: Arc<RoomWaiters>,
    stop: Arc<EgressStop>,
}

impl<T> Drop for EgressFactory<T> {
    fn drop(&mut self) {
        // The template first, then the wake-up: the reader must find the end.
        drop(self.template.get_mut().unwrap_or_else(PoisonError::into_inner).take());
        self.reader.wake_always();
    }
}

/// An egress queue within `bound`.
pub(crate) fn egress<T: Data>(name: Name, bound: QueueBound) -> (EgressFactory<T>, EgressHandle<T>) {
    let (tx, rx) = bound.channel();
    let budget = bound.budget().map(Arc::new);
    let waiters = Arc::new(RoomWaiters::default());
    let stop = Arc::new(EgressStop::default());
    let reader = Arc::new(ParkedWaker::default());
    let factory = EgressFactory {
        name,
        template: Mutex::new(Some(tx)),
        budget: budget.clone(),
        reader: reader.clone(),
        taken: AtomicU32::new(0),
        waiters: waiters.clone(),
        stop: stop.clone(),
    };
    (factory, EgressHandle { rx, budget, waiters, stop, reader })
}

impl<T: Data> NodeFactory<T> for EgressFactory<T> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let name = self.name.get();
        let tx = {
            let mut template = self.template.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = template.as_ref().cloned().ok_or_else(|| EngineError::InvalidDeployment {
                reason: format!("egress '{name}' serves one run of its job; its handle has ended"),
            })?;
            if self.taken.fetch_add(1, Ordering::AcqRel) + 1 >= ctx.task.parallelism {
                *template = None;
                // The stream may have ended with it.
                self.reader.wake_always();
            }
            EgressSender {
                tx: Some(tx),
                budget: self.budget.clone(),
                waiters: self.waiters.clone(),
                reader: self.reader.clone(),
            }
        };
        let sink = EgressSink {
            name: name.clone(),
            tx: Some(tx),
            stash: VecDeque::new(),
            waiters: self.waiters.clone(),
            stop: self.stop.clone(),
            gone: false,
        };
        let shared = std::rc::Rc::new(std::cell::RefCell::new(sink));
        ctx.lifecycles.push(Box::new(crate::runtime::collector::SharedLifecycle(shared.clone(), name)));
        ctx.outputs.push(Box::new(SharedCollector(shared.clone())));
        Ok(Box::new(SharedCollector(shared)))
    }
}
