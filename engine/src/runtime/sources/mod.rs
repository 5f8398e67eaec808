//! Sources: the user's [`Source`] trait (bounded or unbounded, waker-based so an
//! idle source costs nothing), generators, collections, and the ingress handle a
//! service thread pushes records through.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Instant;

use crate::data::Data;
use crate::error::OperatorError;
use crate::runtime::collector::{Collector, TaskInfo};
use crate::runtime::output::{any_overdrawn, Partition};
use crate::runtime::state::OperatorSnapshot;

mod ingress;

pub(crate) use ingress::{ingress, IngressCloser, IngressRoute};
pub use ingress::{IngressHandle, KeyedIngressHandle, PushError};

/// Records a source hands on per poll at most.
pub const SOURCE_BATCH: usize = 1024;

/// What a source did on one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Records were pushed (or may be ready at once): poll again.
    Emitted,
    /// Nothing now; the waker of the poll's context is registered and will be
    /// woken when records arrive.
    Pending,
    /// Nothing is due before this instant; the task flushes and waits.
    IdleUntil(Instant),
    /// The source is exhausted.
    Finished,
}

/// Where a source pushes its records during one poll.
pub struct SourceOutput<'a, T: Data> {
    batch: &'a mut Vec<T>,
    next: &'a mut dyn Collector<T>,
    pushed: usize,
    /// The task's result partitions (records of rkyv types reach them as they
    /// are pushed).
    partitions: &'a [Partition],
}

impl<T: Data> SourceOutput<'_, T> {
    /// Pushes `record`.
    #[inline]
    pub fn push(&mut self, record: T) {
        self.pushed += 1;
        if T::POD {
            self.batch.push(record);
        } else {
            self.next.collect(record.borrow());
        }
    }

    /// Pushes a record given in its borrowed form (a `&str` for a stream of
    /// `String`s: no allocation).
    #[inline]
    pub fn push_ref(&mut self, record: &T::Borrowed) {
        self.pushed += 1;
        if T::POD {
            self.batch.push(T::to_owned_record(record));
        } else {
            self.next.collect(record);
        }
    }

    /// Records pushed in this poll.
    pub fn len(&self) -> usize {
        self.pushed
    }

    /// Whether nothing was pushed in this poll.
    pub fn is_empty(&self) -> bool {
        self.pushed == 0
    }

    /// Whether this poll has pushed its share: return
    /// [`SourceStatus::Emitted`] and go on at the next poll. The share is
    /// [`SOURCE_BATCH`] records, and for records of rkyv types, which go down
    /// the chain as they are pushed, no more than the task's outputs take
    /// before they wait for credits (large records: the poll ends early
    /// instead of writing past back-pressure).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.pushed >= SOURCE_BATCH || (!T::POD && any_overdrawn(self.partitions))
    }
}

/// A source of records of type `T`, one instance per source subtask, created on
/// its shard (so it need not be `Send`).
///
/// A bounded source returns [`SourceStatus::Finished`] at its end; an unbounded
/// one never does. A source waiting for outside input registers the context's
/// waker, returns [`SourceStatus::Pending`] and costs nothing until woken.
pub trait Source<T: Data>: 'static {
    /// Before the first poll.
    fn open(&mut self, _task: &TaskInfo) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Pushes records into `out` until [`SourceOutput::is_full`] (or it has no
    /// more now).
    fn poll_next(&mut self, cx: &mut Context<'_>, out: &mut SourceOutput<'_, T>)
        -> Result<SourceStatus, OperatorError>;
    /// Its position, for a snapshot of a job stopped while it runs
    /// ([`crate::JobHandle::stop_with_snapshot`]): what it has left to read
    /// (offsets, splits not yet read), as items a restore deals out among the
    /// new subtasks, at another parallelism too. Called when its input ends,
    /// by a stop or by itself (a source that finished has nothing left), so a
    /// stopped job's snapshot knows what every source subtask had left. `None`
    /// (the default): the source keeps no position and starts over when
    /// restored.
    fn snapshot_state(&mut self) -> Result<Option<Vec<Vec<u8>>>, OperatorError> {
        Ok(None)
    }
    /// The job is being stopped with a snapshot: take nothing new from
    /// outside. `false` (the default): the source stops where it is. `true`:
    /// it still holds records it took in (an ingress's queue) and emits them
    /// first — the task polls it on until it returns
    /// [`SourceStatus::Finished`], then stops.
    fn stop(&mut self) -> Result<bool, OperatorError> {
        Ok(false)
    }
    /// Before `open`, in a job restored from a snapshot that holds this
    /// source's position: this subtask's share of its items (dealt round robin;
    /// none for a subtask with nothing left to read).
    fn restore_state(&mut self, _items: Vec<&[u8]>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Last, on every path: after the source finished and everything it emitted
    /// left the task, or when the task is cancelled or fails (an error returned
    /// then is logged; the task's own cause stands). Release what `open`
    /// acquired.
    fn close(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// The snapshot entry of source `name`'s position.
pub(crate) fn position_entry(name: &str) -> String {
    format!("{name}/position")
}

/// A source task's record path, type-erased for the task loop.
pub(crate) trait SourceDriver {
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError>;
    /// Polls the source once, pushing what it emits down the chain.
    fn poll(&mut self, cx: &mut Context<'_>) -> Result<SourceStatus, OperatorError>;
    fn close(&mut self) -> Result<(), OperatorError>;
    /// Records produced so far.
    fn produced(&self) -> u64;
    /// The source's position as a snapshot entry, if it keeps one.
    fn position(&mut self, task: &TaskInfo) -> Result<Option<OperatorSnapshot>, OperatorError>;
    /// [`Source::stop`].
    fn stop(&mut self) -> Result<bool, OperatorError>;
}

/// A typed source and the chain it feeds.
pub(crate) struct SourceVertex<T: Data, S> {
    pub(crate) source: S,
    pub(crate) next: Box<dyn Collector<T>>,
    pub(crate) batch: Vec<T>,
    /// The task's result partitions, which a poll keeps within.
    pub(crate) partitions: Vec<Partition>,
    /// The job's count of records produced.
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) produced: u64,
    /// The source's name, for its position's snapshot entry.
    pub(crate) name: String,
}

impl<T: Data, S: Source<T>> SourceDriver for SourceVertex<T, S> {
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        self.source.open(task)
    }

    #[inline]
    fn poll(&mut self, cx: &mut Context<'_>) -> Result<SourceStatus, OperatorError> {
        self.batch.clear();
        let SourceVertex { source, next, batch, partitions, .. } = self;
        let mut out = SourceOutput { batch, next: &mut **next, pushed: 0, partitions };
        let status = source.poll_next(cx, &mut out)?;
        let pushed = out.pushed;
        if !self.batch.is_empty() {
            self.next.collect_batch(&self.batch);
        }
        if pushed > 0 {
            self.produced += pushed as u64;
            self.progress.fetch_add(pushed as u64, Ordering::Relaxed);
        }
        Ok(status)
    }

    fn close(&mut self) -> Result<(), OperatorError> {
        self.source.close()
    }

    fn produced(&self) -> u64 {
        self.produced
    }

    fn stop(&mut self) -> Result<bool, OperatorError> {
        self.source.stop()
    }

    fn position(&mut self, task: &TaskInfo) -> Result<Option<OperatorSnapshot>, OperatorError> {
        let entry = || position_entry(&self.name);
        Ok(self.source.snapshot_state()?.map(|items| OperatorSnapshot::of_list(entry(), task.max_parallelism, items)))
    }
}

/// This subtask's contiguous share of `0..n`.
pub(crate) fn share(n: u64, index: u32, parallelism: u32) -> (u64, u64) {
    let (i, p, n) = (u128::from(index), u128::from(parallelism.max(1)), u128::from(n));
    ((n * i / p) as u64, (n * (i + 1) / p) as u64)
}

/// What a built-in source has left to emit: runs of indices `next, next +
/// step, …` below `end`, in order. Its position in a snapshot is one item per
/// run, so a restore at another parallelism deals the runs out.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    runs: std::collections::VecDeque<[u64; 3]>,
    /// Restored from a snapshot: `open` does not assign the subtask its share.
    restored: bool,
}

impl Runs {
    /// This subtask's share (`run`), unless restored; a restored run must end
    /// within the source's `len` indices.
    fn open(&mut self, run: [u64; 3], len: u64) -> Result<(), OperatorError> {
        if !self.restored && run[0] < run[1] {
            self.runs.push_back(run);
        }
        match self.runs.iter().find(|r| r[1] > len) {
            Some(r) => Err(OperatorError::User(format!(
                "the restored position reaches index {}, past the source's {len} (did its input change?)",
                r[1] - 1
            ))),
            None => Ok(()),
        }
    }

    /// Up to `max` next indices, in order, as `(first, count, step)` (none:
    /// nothing is left).
    #[inline]
    fn take(&mut self, max: u64) -> Option<(u64, u64, u64)> {
        let run = self.runs.front_mut()?;
        let [next, end, step] = *run;
        let n = ((end - next).div_ceil(step)).min(max);
        // Every index taken is below `end`; the one after may not fit a u64.
        run[0] = next.saturating_add(n.saturating_mul(step));
        if run[0] >= end {
            self.runs.pop_front();
        }
        Some((next, n, step))
    }

    /// The next index (none: nothing is left).
    #[inline]
    fn take_one(&mut self) -> Option<u64> {
        self.take(1).map(|(next, _, _)| next)
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.runs.iter().map(|r| r.iter().flat_map(|x| x.to_le_bytes()).collect()).collect()
    }

    fn restore(&mut self, items: Vec<&[u8]>) -> Result<(), OperatorError> {
        self.restored = true;
        for item in items {
            let run: Option<[u64; 3]> = (item.len() == 24).then(|| {
                let word = |k: usize| u64::from_le_bytes(item[8 * k..8 * k + 8].try_into().unwrap_or_default());
                [word(0), word(1), word(2)]
            });
            match run {
                Some(r) if r[2] > 0 => {
                    if r[0] < r[1] {
                        self.runs.push_back(r)
                    }
                }
                Some(_) => return Err(OperatorError::User("malformed source position: a run with a step of 0".into())),
                None => {
                    return Err(OperatorError::User(format!(
                        "malformed source position: {} bytes where a run (next, end, step) is 24",
                        item.len()
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Emits `f(r)` for r in this subtask's contiguous share of `0..n`.
pub(crate) struct Generator<T, F> {
    pub(crate) n: u64,
    pub(crate) f: Arc<F>,
    pub(crate) left: Runs,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: Data, F: Fn(u64) -> T + Send + Sync + 'static> Source<T> for Generator<T, F> {
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        let (next, end) = share(self.n, task.subtask, task.parallelism);
        self.left.open([next, end, 1], self.n)
    }

    #[inline]
    fn poll_next(&mut self, _: &mut Context<'_>, out: &mut SourceOutput<'_, T>) -> Result<SourceStatus, OperatorError> {
        if T::POD {
            let Some((next, n, step)) = self.left.take(SOURCE_BATCH as u64) else {
                return Ok(SourceStatus::Finished);
            };
            if step == 1 {
                out.batch.extend((next..next + n).map(|r| (self.f)(r)));
            } else {
                out.batch.extend((0..n).map(|k| (self.f)(next + k * step)));
            }
            out.pushed += n as usize;
        } else {
            // Records of rkyv types go down the chain as they are pushed: one at a time, within the outputs' room.
            while !out.is_full() {
                let Some(r) = self.left.take_one() else { break };
                out.push((self.f)(r));
            }
            if out.is_empty() {
                return Ok(SourceStatus::Finished);
            }
        }
        Ok(SourceStatus::Emitted)
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<Vec<u8>>>, OperatorError> {
        Ok(Some(self.left.snapshot()))
    }

    fn restore_state(&mut self, items: Vec<&[u8]>) -> Result<(), OperatorError> {
        self.left.restore(items)
    }
}

/// Emits the items of a collection: subtask i of p the items i, i+p, i+2p, …
pub(crate) struct FromItems<T> {
    pub(crate) items: Arc<Vec<T>>,
    pub(crate) left: Runs,
}

impl<T: Data> Source<T> for FromItems<T> {
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        let (step, len) = (u64::from(task.parallelism.max(1)), self.items.len() as u64);
        self.left.open([u64::from(task.subtask), len, step], len)
    }

    fn poll_next(&mut self, _: &mut Context<'_>, out: &mut SourceOutput<'_, T>) -> Result<SourceStatus, OperatorError> {
        while !out.is_full() {
            let Some(i) = self.left.take_one() else { break };
            // `open` checked every index against the collection.
            if let Some(item) = usize::try_from(i).ok().and_then(|i| self.items.get(i)) {
                out.push_ref(item.borrow());
            }
        }
        Ok(if out.is_empty() { SourceStatus::Finished } else { SourceStatus::Emitted })
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<Vec<u8>>>, OperatorError> {
        Ok(Some(self.left.snapshot()))
    }

    fn restore_state(&mut self, items: Vec<&[u8]>) -> Result<(), OperatorError> {
        self.left.restore(items)
    }
}

/// Builds a source subtask: its chain, then the source itself.
pub(crate) struct SourceNode<T: Data, S, F> {
    pub(crate) name: crate::runtime::build::Name,
    pub(crate) make: Arc<F>,
    pub(crate) port: crate::runtime::build::Port<T>,
    pub(crate) _s: PhantomData<fn() -> S>,
}

impl<T, S, F> crate::runtime::vertex::SourceFactory for SourceNode<T, S, F>
where
    T: Data,
    S: Source<T>,
    F: Fn(&TaskInfo) -> Result<S, OperatorError> + Send + Sync + 'static,
{
    fn build(
        &self,
        ctx: &mut crate::runtime::build::BuildContext<'_>,
    ) -> Result<Box<dyn SourceDriver>, crate::error::EngineError> {
        let next = crate::runtime::build::build_port(&self.port, ctx)?;
        let failed = |what: &str, e: OperatorError| crate::error::EngineError::InvalidDeployment {
            reason: format!("{what} the source: {e}"),
        };
        let mut source = (self.make)(ctx.task).map_err(|e| failed("creating", e))?;
        let name = self.name.get();
        let entry = position_entry(&name);
        if let Some(snapshot) = ctx.restore.as_deref().filter(|s| s.operators.contains_key(&entry)) {
            let items = snapshot.operator_items_for(&entry, ctx.task.subtask, ctx.task.parallelism);
            source.restore_state(items).map_err(|e| failed("restoring", e))?;
        }
        let batch = Vec::with_capacity(if T::POD { SOURCE_BATCH } else { 0 });
        let partitions = ctx.all_partitions();
        let progress = ctx.progress.clone();
        Ok(Box::new(SourceVertex { source, next, batch, partitions, progress, produced: 0, name }))
    }
}

#[cfg(test)]
mod tests {
    use super::Runs;

    /// Every index `runs` gives, taking up to `max` at a time.
    fn drain(runs: &mut Runs, max: u64) -> Vec<u64> {
        let mut all = Vec::new();
        while let Some((next, n, step)) = runs.take(max) {
            all.extend((0..n).map(|k| next + k * step));
        }
        all
    }

    #[test]
    fn runs_give_their_indices_in_order_and_snapshot_what_is_left() {
        let mut runs = Runs::default();
        runs.open([1, 11, 3], 11).unwrap();
        assert_eq!(runs.take(2), Some((1, 2, 3)));
        let left = runs.snapshot();
        assert_eq!(left.len(), 1);
        let mut restored = Runs::default();
        restored.restore(left.iter().map(Vec::as_slice).collect()).unwrap();
        restored.open([0, 100, 1], 100).unwrap();
        assert_eq!(drain(&mut restored, 1024), vec![7, 10], "a restored run, not the subtask's fresh share");
        assert_eq!(drain(&mut runs, 1), vec![7, 10]);
        assert!(runs.snapshot().is_empty(), "nothing left");
    }

    #[test]
    fn a_malformed_or_extreme_position_is_an_error_or_ends_cleanly() {
        let mut runs = Runs::default();
        let err = runs.restore(vec![&[1, 2, 3][..]]).unwrap_err();
        assert!(err.to_string().contains("malformed source position: 3 bytes"), "{err}");
        let zero_step: Vec<u8> = [0u64, 5, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
        let err = Runs::default().restore(vec![&zero_step[..]]).unwrap_err();
        assert!(err.to_string().contains("a step of 0"), "a step of zero never ends: {err}");
        let huge: Vec<u8> = [u64::MAX - 2, u64::MAX, u64::MAX].iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut runs = Runs::default();
        runs.restore(vec![&huge[..]]).unwrap();
        let err = runs.open([0, 10, 1], 10).unwrap_err();
        assert!(err.to_string().contains("past the source's 10"), "a position past the input: {err}");
        runs.open([0, 0, 1], u64::MAX).unwrap();
        assert_eq!(drain(&mut runs, 1024), vec![u64::MAX - 2], "one index, and no overflow past it");
    }
}
