//! How records move inside a vertex: each operator is a [`Collector`] of its input
//! type that calls the next one directly. Plain-data records move in batches (one
//! call per batch, a tight loop inside); the others one at a time, read in place
//! where their type allows.
//!
//! Operators that hold state or results also have a [`Lifecycle`]: opened before
//! the first record, finished at the end of input (emitting what they hold down
//! the chain), asked for timers and snapshots, closed with their sink results.
//! A failure inside a record call is kept in the task's [`Failure`] slot, which
//! the task checks between batches.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use crate::data::Data;
use crate::error::OperatorError;
use crate::runtime::side::{OutputTag, SideOutputs};
use crate::runtime::state::OperatorSnapshot;

/// Receives the records of a stream: the next operator of a chain, a sink, or an
/// output partition.
pub(crate) trait Collector<T: Data> {
    /// One record.
    fn collect(&mut self, record: &T::Borrowed);

    /// A batch of owned records (plain data moves this way).
    fn collect_batch(&mut self, records: &[T]) {
        for r in records {
            self.collect(r.borrow());
        }
    }

    /// Whether [`Self::prefetch`] does anything: an input reading records one
    /// by one announces them only to a collector that uses the hint.
    fn prefetches(&self) -> bool {
        false
    }

    /// `record` comes soon: a hint to start loading what handling it will
    /// read (a keyed table's slot), so a run of records waits for memory once.
    /// Changes nothing but time; the default does nothing. Returns what
    /// [`Self::collect_prefetched`] may reuse rather than work out again (a
    /// keyed table's hash of the record's key).
    #[inline(always)]
    fn prefetch(&mut self, _record: &T::Borrowed) -> u64 {
        0
    }

    /// One record announced by [`Self::prefetch`], which returned `hint`.
    #[inline(always)]
    fn collect_prefetched(&mut self, record: &T::Borrowed, _hint: u64) {
        self.collect(record);
    }
}

/// Hands records to the next operator from inside a user function (`flat_map`,
/// `process`): owned values, or borrowed forms written as they are (a `&str` into a
/// stream of `String`s costs no allocation when the next stage encodes it). Side
/// outputs take records of other types, named by an [`OutputTag`].
pub struct Emitter<'a, T: Data> {
    next: &'a mut dyn Collector<T>,
    side: &'a mut SideOutputs,
    /// Where plain records gather, to go on as one batch, while the operator
    /// handles a batch ([`Emitter::batching`]).
    batch: Option<&'a mut Vec<T>>,
}

/// The most bytes of plain records an emitter gathers before it hands them on.
const EMIT_BATCH_BYTES: usize = 64 << 10;

impl<'a, T: Data> Emitter<'a, T> {
    /// An emitter onto `next` and the operator's side outputs.
    #[inline]
    pub(crate) fn with_side(next: &'a mut dyn Collector<T>, side: &'a mut SideOutputs) -> Self {
        Emitter { next, side, batch: None }
    }

    /// An emitter that gathers plain records in `batch` and hands them on to
    /// `next` as batches (a full one at once; the caller hands on the rest).
    #[inline]
    pub(crate) fn batching(next: &'a mut dyn Collector<T>, side: &'a mut SideOutputs, batch: &'a mut Vec<T>) -> Self {
        Emitter { next, side, batch: Some(batch) }
    }

    /// Emits `record`.
    #[inline]
    pub fn emit(&mut self, record: T) {
        match &mut self.batch {
            // Only plain data gathers: the check is compiled away for the rest.
            Some(batch) if T::POD => {
                batch.push(record);
                if batch.len() * std::mem::size_of::<T>() >= EMIT_BATCH_BYTES {
                    self.next.collect_batch(batch);
                    batch.clear();
                }
            }
            _ => self.next.collect(record.borrow()),
        }
    }

    /// Emits a record given in its borrowed form.
    #[inline]
    pub fn emit_ref(&mut self, record: &T::Borrowed) {
        match self.batch {
            Some(_) if T::POD => self.emit(T::to_owned_record(record)),
            _ => self.next.collect(record),
        }
    }

    /// Emits `record` to side output `tag`: to the stream
    /// [`crate::Stream::side_output`] made for it, or nowhere if the dataflow
    /// asked for none. A tag whose stream was asked for with another record
    /// type fails the job, naming both types.
    #[inline]
    pub fn emit_side<U: Data>(&mut self, tag: &OutputTag<U>, record: U) {
        self.emit_side_ref(tag, record.borrow());
    }

    /// Emits a record given in its borrowed form to side output `tag` (as
    /// [`Self::emit_side`]).
    #[inline]
    pub fn emit_side_ref<U: Data>(&mut self, tag: &OutputTag<U>, record: &U::Borrowed) {
        self.side.collect(tag, record);
    }
}

/// Where a task keeps the first failure of a record call, for the task to act on
/// between batches.
#[derive(Clone, Default)]
pub(crate) struct Failure(Rc<RefCell<Option<OperatorError>>>);

impl Failure {
    /// Keeps `e` unless a failure is already kept.
    pub(crate) fn set(&self, e: OperatorError) {
        let mut slot = self.0.borrow_mut();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// The failure, if any, once.
    #[inline]
    pub(crate) fn take(&self) -> Option<OperatorError> {
        self.0.borrow_mut().take()
    }
}

/// `e` with the operator it came from, where it is the operator's own error
/// (a chain's task is named after its first operator only).
pub(crate) fn named(operator: &str, e: OperatorError) -> OperatorError {
    match e {
        OperatorError::User(m) => OperatorError::User(format!("operator '{operator}': {m}")),
        other => other,
    }
}

/// The failure of a record that reached an operator before it was opened.
pub(crate) fn unopened() -> OperatorError {
    OperatorError::User("a record came before the operator opened".into())
}

/// Several consumers of one stream in a chain: each gets every record.
pub(crate) struct Tee<T: Data> {
    pub(crate) outs: Vec<Box<dyn Collector<T>>>,
}

impl<T: Data> Collector<T> for Tee<T> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        for o in &mut self.outs {
            o.collect(record);
        }
    }

    fn collect_batch(&mut self, records: &[T]) {
        for o in &mut self.outs {
            o.collect_batch(records);
        }
    }
}

/// What a task knows about itself, handed to operators when they open.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// Vertex name.
    pub vertex: String,
    /// This subtask's index.
    pub subtask: u32,
    /// The vertex's parallelism.
    pub parallelism: u32,
    /// The job's key groups.
    pub max_parallelism: u32,
    /// The job's start instant (of this attempt); record times count from here.
    pub job_start: Instant,
    /// Core this subtask's shard runs on.
    pub core: usize,
    /// The managed memory of this subtask's slot: keyed state is charged to it.
    pub managed_memory: shardflow_memory::Budget,
}

impl TaskInfo {
    /// The key groups this subtask owns: a contiguous range (Flink's
    /// `KeyGroupRangeAssignment`).
    pub fn key_groups(&self) -> std::ops::Range<u32> {
        crate::runtime::state::key_group_range(self.subtask, self.parallelism, self.max_parallelism)
    }
}

/// What a sink reports when its task finishes.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkOutput {
    /// Nothing to report.
    None,
    /// Records counted and the wrapping sum of a value taken from each.
    Count {
        /// Records seen.
        records: u64,
        /// Wrapping sum of their values.
        value_sum: u64,
    },
    /// A latency histogram in nanoseconds (`now − record time`).
    Latency(hdrhistogram::Histogram<u64>),
}

/// The lifecycle of an operator with state or results: `open → (records,
/// timers)* → snapshot(id)* → finish → close`, or `close_after_stop` once the
/// task is cancelled or fails after `open` was called.
pub(crate) trait Lifecycle {
    /// The operator's name (unique in the job: its state's id in snapshots).
    fn name(&self) -> &str;
    /// Before the first record.
    fn open(&mut self, _task: &TaskInfo) -> Result<(), OperatorError> {
        Ok(())
    }
    /// When its next processing-time timer is due.
    fn next_timer(&self) -> Option<Instant> {
        None
    }
    /// Fires the timers due at `now`.
    fn fire_timers(&mut self, _now: Instant) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Its state, per key group (and operator state), for checkpoint `id`.
    fn snapshot(&mut self, _id: u64) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        Ok(Vec::new())
    }
    /// Checkpoint `id` completed.
    fn notify_checkpoint_complete(&mut self, _id: u64) {}
    /// Checkpoint `id` was aborted.
    fn notify_checkpoint_aborted(&mut self, _id: u64) {}
    /// End of all input: emit what is held down the chain, in steps; `true` once
    /// done (the task waits for its outputs between steps).
    fn finish(&mut self) -> Result<bool, OperatorError> {
        Ok(true)
    }
    /// After finish (or instead, when stopping with a snapshot): the sink's result.
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        Ok(SinkOutput::None)
    }
    /// Instead of `close` when the task stops early (`stop` says why: failed
    /// with its cause, or cancelled): release what `open` acquired; a result
    /// is of no use then.
    fn close_after_stop(&mut self, _stop: &str) -> Result<(), OperatorError> {
        self.close().map(drop)
    }
    /// The task stopped before this operator was opened (`stop` says why):
    /// nothing to release, but a sink can still tell its reader why its
    /// results end.
    fn stopped_unopened(&mut self, _stop: &str) {}
}

/// An operator shared by its record path (a [`Collector`]) and its lifecycle.
pub(crate) type Shared<O> = Rc<RefCell<O>>;

/// The record path of a shared operator.
pub(crate) struct SharedCollector<O>(pub(crate) Shared<O>);

/// The first input's record path into a shared two-input operator.
pub(crate) struct FirstInput<O>(pub(crate) Shared<O>);
/// The second input's record path into a shared two-input operator.
pub(crate) struct SecondInput<O>(pub(crate) Shared<O>);

/// A shared operator's lifecycle, as the task calls it.
pub(crate) struct SharedLifecycle<O>(pub(crate) Shared<O>, pub(crate) String);

impl<O: Lifecycle> Lifecycle for SharedLifecycle<O> {
    fn name(&self) -> &str {
        &self.1
    }
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        self.0.borrow_mut().open(task)
    }
    fn next_timer(&self) -> Option<Instant> {
        RefCell::borrow(&self.0).next_timer()
    }
    fn fire_timers(&mut self, now: Instant) -> Result<(), OperatorError> {
        self.0.borrow_mut().fire_timers(now)
    }
    fn snapshot(&mut self, id: u64) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        self.0.borrow_mut().snapshot(id)
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.0.borrow_mut().notify_checkpoint_complete(id)
    }
    fn notify_checkpoint_aborted(&mut self, id: u64) {
        self.0.borrow_mut().notify_checkpoint_aborted(id)
    }
    fn finish(&mut self) -> Result<bool, OperatorError> {
        self.0.borrow_mut().finish()
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        self.0.borrow_mut().close()
    }
    fn close_after_stop(&mut self, stop: &str) -> Result<(), OperatorError> {
        self.0.borrow_mut().close_after_stop(stop)
    }
    fn stopped_unopened(&mut self, stop: &str) {
        self.0.borrow_mut().stopped_unopened(stop)
    }
}
