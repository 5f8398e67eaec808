//! Non-keyed process functions, one- and two-input ([`ProcessFunction`],
//! [`CoProcessFunction`]), and the operator state they keep: a list per
//! subtask, snapshotted and dealt out again at another parallelism (or, as
//! broadcast state, handed whole to every new subtask).

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::data::Data;
use crate::error::{EngineError, OperatorError};
use crate::runtime::build::{BuildContext, Name, NodeFactory};
use crate::runtime::collector::{
    named, unopened, Collector, Emitter, Failure, FirstInput, Lifecycle, SecondInput, SharedCollector, SinkOutput,
    TaskInfo,
};
use crate::runtime::keyed::TwoInputFactory;
use crate::runtime::side::{OutPorts, Outputs};
use crate::runtime::state::{list_bytes, undecodable, JobSnapshot, OperatorSnapshot, StateMemory};

/// A list of items kept per subtask, snapshotted item by item and dealt round
/// robin to the subtasks of a restored job (Flink's operator list state). As
/// with keyed state handles, a function's field may hold the [`Default`]
/// handle until `open` assigns it the declared one.
pub struct ListStateHandle<V> {
    /// The operator's name and the state's (empty: not declared yet).
    name: String,
    _v: PhantomData<fn() -> V>,
}

impl<V> Clone for ListStateHandle<V> {
    fn clone(&self) -> Self {
        ListStateHandle { name: self.name.clone(), _v: PhantomData }
    }
}

impl<V> Default for ListStateHandle<V> {
    fn default() -> Self {
        ListStateHandle { name: String::new(), _v: PhantomData }
    }
}

impl<V> std::fmt::Debug for ListStateHandle<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name.as_str() {
            "" => f.write_str("ListStateHandle(undeclared)"),
            name => f.debug_tuple("ListStateHandle").field(&name).finish(),
        }
    }
}

trait ErasedList: Any {
    fn items(&self) -> Result<Vec<Vec<u8>>, OperatorError>;
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<V: Data> ErasedList for Vec<V> {
    fn items(&self) -> Result<Vec<Vec<u8>>, OperatorError> {
        list_items(self)
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// An operator list's items as a snapshot holds them.
pub(crate) fn list_items<V: Data>(list: &[V]) -> Result<Vec<Vec<u8>>, OperatorError> {
    list.iter().map(|v| V::to_bytes(v.borrow()).map_err(OperatorError::from)).collect()
}

/// The list of state `state` restored from a snapshot's `items`, charged to
/// `memory`.
pub(crate) fn restored_list<V: Data>(
    items: Vec<&[u8]>,
    state: &str,
    memory: &mut StateMemory,
) -> Result<Vec<V>, OperatorError> {
    let list: Vec<V> =
        items.into_iter().map(|b| V::from_bytes(b).map_err(|e| undecodable(state, e))).collect::<Result<_, _>>()?;
    memory.grow(list_bytes(&list))?;
    Ok(list)
}

/// What a process function sees of its subtask and its operator state.
pub struct OperatorContext<'a> {
    task: &'a TaskInfo,
    name: &'a str,
    lists: &'a mut BTreeMap<String, Box<dyn ErasedListBox>>,
    memory: &'a mut StateMemory,
    restore: Option<&'a JobSnapshot>,
}

/// Operator list state as a function uses it: read as a slice, changed through
/// methods that charge what it holds (items and their heap) to the slot's
/// managed memory, so a list that outgrows the budget fails the job with the
/// numbers.
pub struct ListRef<'a, V> {
    items: &'a mut Vec<V>,
    memory: &'a mut StateMemory,
}

impl<V> std::ops::Deref for ListRef<'_, V> {
    type Target = [V];
    fn deref(&self) -> &[V] {
        self.items
    }
}

impl<'a, V: Data> ListRef<'a, V> {
    /// `items`, changed under `memory`'s charge.
    pub(crate) fn new(items: &'a mut Vec<V>, memory: &'a mut StateMemory) -> Self {
        ListRef { items, memory }
    }

    /// Appends `item`.
    pub fn push(&mut self, item: V) -> Result<(), OperatorError> {
        self.memory.grow(list_bytes(std::slice::from_ref(&item)))?;
        self.items.push(item);
        Ok(())
    }

    /// Appends every item of `items`.
    pub fn extend(&mut self, items: impl IntoIterator<Item = V>) -> Result<(), OperatorError> {
        items.into_iter().try_for_each(|item| self.push(item))
    }

    /// Removes and returns every item.
    pub fn take(&mut self) -> Vec<V> {
        self.memory.shrink(list_bytes(self.items));
        std::mem::take(self.items)
    }

    /// Keeps the items `keep` says to keep.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let before = list_bytes(self.items);
        self.items.retain(|item| keep(item));
        self.memory.shrink(before - list_bytes(self.items));
    }

    /// Removes every item.
    pub fn clear(&mut self) {
        self.take();
    }
}

/// A type-erased operator-state list.
#[doc(hidden)]
pub(crate) trait ErasedListBox {
    #[doc(hidden)]
    fn items(&self) -> Result<Vec<Vec<u8>>, OperatorError>;
    #[doc(hidden)]
    fn any(&mut self) -> &mut dyn Any;
}

impl<L: ErasedList> ErasedListBox for L {
    fn items(&self) -> Result<Vec<Vec<u8>>, OperatorError> {
        ErasedList::items(self)
    }
    fn any(&mut self) -> &mut dyn Any {
        self.as_any()
    }
}

impl OperatorContext<'_> {
    /// The subtask.
    pub fn task(&self) -> &TaskInfo {
        self.task
    }

    /// The processing time now, as keyed functions read it
    /// ([`crate::KeyedContext::processing_time`]): microseconds since the Unix
    /// epoch, never going back.
    pub fn processing_time(&self) -> u64 {
        crate::runtime::clock::now_us()
    }

    /// Declares operator list state `name` (in `open`), restored from the job's
    /// snapshot if it has one: the items of every old subtask, dealt round
    /// robin to the new ones.
    pub fn list_state<V: Data>(&mut self, name: &str) -> Result<ListStateHandle<V>, OperatorError> {
        self.declare(name, |s, key, task| s.operator_items_for(key, task.subtask, task.parallelism))
    }

    /// Declares broadcast state `name` (in `open`): a list every subtask holds
    /// a whole copy of, because each saw the whole broadcast input (rules, a
    /// model). Restored from the job's snapshot, at any parallelism, every new
    /// subtask gets one old subtask's copy (Flink's broadcast state), where
    /// [`Self::list_state`] would deal the items out.
    pub fn broadcast_state<V: Data>(&mut self, name: &str) -> Result<ListStateHandle<V>, OperatorError> {
        self.declare(name, |s, key, task| s.operator_copy_for(key, task.subtask))
    }

    fn declare<V: Data>(
        &mut self,
        name: &str,
        restored: impl for<'s> Fn(&'s JobSnapshot, &str, &TaskInfo) -> Vec<&'s [u8]>,
    ) -> Result<ListStateHandle<V>, OperatorError> {
        let key = format!("{}/{name}", self.name);
        if !self.lists.contains_key(&key) {
            let items: Vec<V> = match self.restore {
                Some(s) => restored_list(restored(s, &key, self.task), name, self.memory)?,
                None => Vec::new(),
            };
            self.lists.insert(key.clone(), Box::new(items));
        }
        Ok(ListStateHandle { name: key, _v: PhantomData })
    }

    /// The items of list state `handle`.
    pub fn list<V: Data>(&mut self, handle: &ListStateHandle<V>) -> Result<ListRef<'_, V>, OperatorError> {
        let items = self
            .lists
            .get_mut(&handle.name)
            .and_then(|l| l.any().downcast_mut::<Vec<V>>())
            .ok_or_else(|| foreign_list(&handle.name))?;
        Ok(ListRef { items, memory: self.memory })
    }
}

/// Why the list of a handle named `name` is not here: the handle names no
/// list yet (no declared list has an empty name), or another operator's.
#[cold]
fn foreign_list(name: &str) -> OperatorError {
    OperatorError::User(match name {
        "" => "a list state handle was used before `open` declared it (assign it the handle `list_state` or \
               `broadcast_state` gives)"
            .into(),
        _ => format!("list state '{name}' is not this operator's"),
    })
}

/// A function over each record of a non-keyed stream, with operator state.
pub trait ProcessFunction<T: Data, O: Data>: Clone + Send + Sync + 'static {
    /// Before the first record: declare state here.
    fn open(&mut self, _ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// One record.
    fn process(
        &mut self,
        record: &T::Borrowed,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// End of input: emit what is held.
    fn finish(&mut self, _ctx: &mut OperatorContext<'_>, _out: &mut Emitter<'_, O>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Just before the operator's list states are written for checkpoint
    /// `checkpoint`: move into them what the function holds elsewhere (Flink's
    /// `CheckpointedFunction::snapshotState`).
    fn snapshot(&mut self, _checkpoint: u64, _ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Checkpoint `checkpoint` completed: commit what waited for it.
    fn on_checkpoint_complete(&mut self, _checkpoint: u64) {}
    /// Checkpoint `checkpoint` was aborted: roll back what waited for it.
    fn on_checkpoint_aborted(&mut self, _checkpoint: u64) {}
    /// Last, on every path (as Flink's `close`): after the end of input (or the
    /// final snapshot of a job that stops with one), or when the task is
    /// cancelled or fails — then an error returned here is logged and the
    /// task's own cause stands. Release what `open` acquired.
    fn close(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// A function over the two inputs of connected non-keyed streams, with
/// operator state (Flink's `CoProcessFunction`). Each subtask has its own copy
/// of the function: with a broadcast second input (`other.broadcast()`) every
/// copy sees all of that input — the broadcast-state pattern (rules or a model
/// read by every subtask of the first input).
///
/// ```
/// use shardflow_engine::{CoProcessFunction, Dataflow, Emitter, Engine, ListStateHandle, OperatorContext, OperatorError};
///
/// /// The events at or above the lowest threshold, decided at the end (a
/// /// threshold may come after an event).
/// #[derive(Clone, Default)]
/// struct Above {
///     thresholds: ListStateHandle<u64>,
///     events: ListStateHandle<u64>,
/// }
///
/// impl CoProcessFunction<u64, u64, u64> for Above {
///     fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
///         self.thresholds = ctx.broadcast_state("thresholds")?;
///         self.events = ctx.list_state("events")?;
///         Ok(())
///     }
///     fn process_first(&mut self, e: &u64, ctx: &mut OperatorContext<'_>, _: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
///         ctx.list(&self.events)?.push(*e)
///     }
///     fn process_second(&mut self, t: &u64, ctx: &mut OperatorContext<'_>, _: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
///         ctx.list(&self.thresholds)?.push(*t)
///     }
///     fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
///         let min = ctx.list(&self.thresholds)?.iter().copied().min().unwrap_or(u64::MAX);
///         ctx.list(&self.events)?.iter().filter(|e| **e >= min).for_each(|e| out.emit(*e));
///         Ok(())
///     }
/// }
///
/// let df = Dataflow::new("above").parallelism(2);
/// // Every subtask of the co-process function gets every threshold.
/// let thresholds = df.from_iter("thresholds", vec![7u64, 9]).parallelism(1).broadcast();
/// let above = df.from_iter("events", 0..10u64).connect(&thresholds).process(Above::default()).collect();
/// let engine = Engine::builder().shards(1).build()?;
/// engine.run(df.build()?)?;
/// let mut got = above.take();
/// got.sort();
/// assert_eq!(got, vec![7, 8, 9]);
/// # Ok::<(), shardflow_engine::EngineError>(())
/// ```
pub trait CoProcessFunction<A: Data, B: Data, O: Data>: Clone + Send + Sync + 'static {
    /// Before the first record: declare state here.
    fn open(&mut self, _ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// One record of the first input.
    fn process_first(
        &mut self,
        record: &A::Borrowed,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// One record of the second input.
    fn process_second(
        &mut self,
        record: &B::Borrowed,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// End of both inputs: emit what is held.
    fn finish(&mut self, _ctx: &mut OperatorContext<'_>, _out: &mut Emitter<'_, O>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// As [`ProcessFunction::snapshot`].
    fn snapshot(&mut self, _checkpoint: u64, _ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Checkpoint `checkpoint` completed: commit what waited for it.
    fn on_checkpoint_complete(&mut self, _checkpoint: u64) {}
    /// Checkpoint `checkpoint` was aborted: roll back what waited for it.
    fn on_checkpoint_aborted(&mut self, _checkpoint: u64) {}
    /// As [`ProcessFunction::close`].
    fn close(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// What a stateful non-keyed operator calls besides its record path: the
/// one-input [`ProcessFunction`] and the two-input [`CoProcessFunction`] alike.
pub(crate) trait OperatorCallbacks<O: Data> {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError>;
    fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, O>) -> Result<(), OperatorError>;
    fn snapshot(&mut self, checkpoint: u64, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError>;
    fn on_checkpoint_complete(&mut self, checkpoint: u64);
    fn on_checkpoint_aborted(&mut self, checkpoint: u64);
    fn close(&mut self) -> Result<(), OperatorError>;
}

/// A one-input function as its operator holds it.
pub(crate) struct OneInput<T, P>(P, PhantomData<fn(&T)>);
/// A two-input function as its operator holds it.
pub(crate) struct CoInputs<A, B, P>(P, PhantomData<fn(&A, &B)>);

/// Implements [`OperatorCallbacks`] for a holder of a function that has the
/// same callbacks under the same names.
macro_rules! callbacks_of {
    ($holder:ty, [$($t:ident),*], $bound:path) => {
        impl<$($t: Data,)* O: Data, P: $bound> OperatorCallbacks<O> for $holder {
            fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
                self.0.open(ctx)
            }
            fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, O>) -> Result<(), OperatorError> {
                self.0.finish(ctx, out)
            }
            fn snapshot(&mut self, checkpoint: u64, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
                self.0.snapshot(checkpoint, ctx)
            }
            fn on_checkpoint_complete(&mut self, checkpoint: u64) {
                self.0.on_checkpoint_complete(checkpoint)
            }
            fn on_checkpoint_aborted(&mut self, checkpoint: u64) {
                self.0.on_checkpoint_aborted(checkpoint)
            }
            fn close(&mut self) -> Result<(), OperatorError> {
                self.0.close()
            }
        }
    };
}
callbacks_of!(OneInput<T, P>, [T], ProcessFunction<T, O>);
callbacks_of!(CoInputs<A, B, P>, [A, B], CoProcessFunction<A, B, O>);

/// A non-keyed operator with operator state, over function holder `C`.
pub(crate) struct ProcessOp<O: Data, C> {
    name: String,
    f: C,
    out: Outputs<O>,
    lists: BTreeMap<String, Box<dyn ErasedListBox>>,
    /// What the lists hold, charged to the slot's managed memory.
    memory: StateMemory,
    task: Option<TaskInfo>,
    restore: Option<Arc<JobSnapshot>>,
    failure: Failure,
}

impl<O: Data, C> ProcessOp<O, C> {
    fn new(name: String, f: C, out: Outputs<O>, ctx: &BuildContext<'_>) -> Self {
        ProcessOp {
            name,
            f,
            out,
            lists: BTreeMap::new(),
            memory: StateMemory::new(),
            task: None,
            restore: ctx.restore.clone(),
            failure: ctx.failure.clone(),
        }
    }

    fn with_context<R>(
        &mut self,
        f: impl FnOnce(&mut C, &mut OperatorContext<'_>, &mut Emitter<'_, O>) -> R,
    ) -> Option<R> {
        let task = self.task.as_ref()?;
        let mut ctx = OperatorContext {
            task,
            name: &self.name,
            lists: &mut self.lists,
            memory: &mut self.memory,
            restore: self.restore.as_deref(),
        };
        Some(f(&mut self.f, &mut ctx, &mut self.out.emitter()))
    }

    /// Hands one record to the function through `f`; an error fails the task.
    fn record(
        &mut self,
        f: impl FnOnce(&mut C, &mut OperatorContext<'_>, &mut Emitter<'_, O>) -> Result<(), OperatorError>,
    ) {
        match self.with_context(f) {
            Some(Ok(())) => {}
            Some(Err(e)) => self.failure.set(named(&self.name, e)),
            None => self.failure.set(unopened()),
        }
    }

    /// Hands each of `records` to the function through `f`, the plain records
    /// it emits handed on in batches.
    fn batch<T: Data>(
        &mut self,
        records: &[T],
        f: impl Fn(&mut C, &T::Borrowed, &mut OperatorContext<'_>, &mut Emitter<'_, O>) -> Result<(), OperatorError>,
    ) {
        self.out.gather();
        records.iter().for_each(|r| self.record(|c, ctx, out| f(c, r.borrow(), ctx, out)));
        self.out.hand_on();
    }
}

impl<T: Data, O: Data, P: ProcessFunction<T, O>> Collector<T> for SharedCollector<ProcessOp<O, OneInput<T, P>>> {
    fn collect(&mut self, record: &T::Borrowed) {
        self.0.borrow_mut().record(|f, ctx, out| f.0.process(record, ctx, out));
    }

    fn collect_batch(&mut self, records: &[T]) {
        self.0.borrow_mut().batch(records, |f, r, ctx, out| f.0.process(r, ctx, out));
    }
}

impl<A: Data, B: Data, O: Data, P: CoProcessFunction<A, B, O>> Collector<A>
    for FirstInput<ProcessOp<O, CoInputs<A, B, P>>>
{
    fn collect(&mut self, record: &A::Borrowed) {
        self.0.borrow_mut().record(|f, ctx, out| f.0.process_first(record, ctx, out));
    }

    fn collect_batch(&mut self, records: &[A]) {
        self.0.borrow_mut().batch(records, |f, r, ctx, out| f.0.process_first(r, ctx, out));
    }
}

impl<A: Data, B: Data, O: Data, P: CoProcessFunction<A, B, O>> Collector<B>
    for SecondInput<ProcessOp<O, CoInputs<A, B, P>>>
{
    fn collect(&mut self, record: &B::Borrowed) {
        self.0.borrow_mut().record(|f, ctx, out| f.0.process_second(record, ctx, out));
    }

    fn collect_batch(&mut self, records: &[B]) {
        self.0.borrow_mut().batch(records, |f, r, ctx, out| f.0.process_second(r, ctx, out));
    }
}

impl<O: Data, C: OperatorCallbacks<O>> Lifecycle for ProcessOp<O, C> {
    fn name(&self) -> &str {
        &self.name
    }
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        self.memory.account_to(task.managed_memory.clone())?;
        self.task = Some(task.clone());
        self.with_context(|f, ctx, _| f.open(ctx)).unwrap_or(Ok(()))?;
        // Every list of the snapshot must be declared again: none is dropped unnoticed.
        let Some(snapshot) = self.restore.as_deref() else { return Ok(()) };
        let prefix = format!("{}/", self.name);
        let undeclared = snapshot.operators.iter().find(|(entry, s)| {
            s.key_groups.is_empty() && entry.starts_with(&prefix) && !self.lists.contains_key(entry.as_str())
        });
        match undeclared {
            Some((entry, _)) => Err(OperatorError::User(format!(
                "the snapshot has list state '{}', which the operator no longer declares",
                &entry[prefix.len()..]
            ))),
            None => Ok(()),
        }
    }
    fn finish(&mut self) -> Result<bool, OperatorError> {
        self.with_context(|f, ctx, out| f.finish(ctx, out)).unwrap_or(Ok(())).map(|()| true)
    }
    fn snapshot(&mut self, id: u64) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        self.with_context(|f, ctx, _| f.snapshot(id, ctx)).unwrap_or(Ok(()))?;
        // Each list is its own entry, named `operator/list`, restored by that name.
        self.lists
            .iter()
            .map(|(name, list)| {
                let max_parallelism = self.task.as_ref().map_or(0, |t| t.max_parallelism);
                Ok(OperatorSnapshot::of_list(name.clone(), max_parallelism, list.items()?))
            })
            .collect()
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.f.on_checkpoint_complete(id);
    }
    fn notify_checkpoint_aborted(&mut self, id: u64) {
        self.f.on_checkpoint_aborted(id);
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        self.f.close().map(|()| SinkOutput::None)
    }
}

pub(crate) struct ProcessFactory<T, O: Data, P> {
    pub(crate) name: Name,
    pub(crate) f: P,
    pub(crate) out: OutPorts<O>,
    pub(crate) _t: PhantomData<fn(&T)>,
}

impl<T: Data, O: Data, P: ProcessFunction<T, O>> NodeFactory<T> for ProcessFactory<T, O, P> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let out = self.out.build(ctx)?;
        let name = self.name.get();
        let op = ProcessOp::new(name.clone(), OneInput(self.f.clone(), PhantomData), out, ctx);
        Ok(ctx.stateful(&name, op))
    }
}

pub(crate) struct CoProcessFactory<A, B, O: Data, P> {
    pub(crate) name: Name,
    pub(crate) f: P,
    pub(crate) out: OutPorts<O>,
    pub(crate) _t: PhantomData<fn(&A, &B)>,
}

impl<A: Data, B: Data, O: Data, P: CoProcessFunction<A, B, O>> TwoInputFactory<A, B> for CoProcessFactory<A, B, O, P> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<(Box<dyn Collector<A>>, Box<dyn Collector<B>>), EngineError> {
        let out = self.out.build(ctx)?;
        let name = self.name.get();
        let op = ProcessOp::new(name.clone(), CoInputs(self.f.clone(), PhantomData), out, ctx);
        Ok(ctx.stateful_two_inputs(&name, op))
    }
}
