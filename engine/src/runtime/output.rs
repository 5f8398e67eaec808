//! Where a vertex's records leave it: result partitions, routed by the edge's
//! partitioner (forward, key groups, rebalance, broadcast, a user function), and
//! the readiness of every output the task waits on.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use shardflow_netstack::ResultPartition;

use crate::data::{key_hash, write_to, Data, Key};
use crate::error::OperatorError;
use crate::runtime::build::{BuildContext, NodeFactory};
use crate::runtime::collector::{Collector, Failure};
use crate::runtime::state::KeyGroupRouter;

/// An output the task waits on before taking more input: a result partition, or
/// a sink with a bounded queue (egress).
pub(crate) trait Output {
    /// Whether more waits than allowed: stop taking input until ready.
    fn overdrawn(&self) -> bool;
    /// Sends what waits as far as possible; `Ready` once nothing waits.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OperatorError>>;
    /// Whether nothing waits.
    fn is_idle(&self) -> bool;
    /// End of output (end of partition queued).
    fn finish(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// A result partition, shared by the writers that route into it and the task.
pub(crate) type Partition = Rc<RefCell<ResultPartition>>;

/// Whether one of `partitions` waits for credits: a poll or a step writing
/// records as they come ends there.
#[inline]
pub(crate) fn any_overdrawn(partitions: &[Partition]) -> bool {
    partitions.iter().any(|p| p.borrow().overdrawn())
}

impl Output for Partition {
    #[inline]
    fn overdrawn(&self) -> bool {
        self.borrow().overdrawn()
    }
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OperatorError>> {
        self.borrow_mut().poll_ready(cx).map_err(OperatorError::from)
    }
    fn is_idle(&self) -> bool {
        self.borrow().is_idle()
    }
    fn finish(&mut self) -> Result<(), OperatorError> {
        self.borrow_mut().finish().map_err(OperatorError::from)
    }
}

/// How a writer picks a record's subpartition.
pub(crate) trait Route<T: Data>: 'static {
    /// The subpartition of `record` among `n`; `None`: every subpartition.
    fn pick(&mut self, record: &T::Borrowed, n: usize) -> Option<usize>;
}

/// Forward: the one subpartition.
pub(crate) struct ToFirst;

impl<T: Data> Route<T> for ToFirst {
    #[inline(always)]
    fn pick(&mut self, _: &T::Borrowed, _: usize) -> Option<usize> {
        Some(0)
    }
}

/// Round robin, record by record.
pub(crate) struct RoundRobin(usize);

impl<T: Data> Route<T> for RoundRobin {
    #[inline(always)]
    fn pick(&mut self, _: &T::Borrowed, n: usize) -> Option<usize> {
        let sp = self.0;
        self.0 = if sp + 1 >= n { 0 } else { sp + 1 };
        Some(sp)
    }
}

/// To every subpartition.
pub(crate) struct ToAll;

impl<T: Data> Route<T> for ToAll {
    #[inline(always)]
    fn pick(&mut self, _: &T::Borrowed, _: usize) -> Option<usize> {
        None
    }
}

/// Picks the key of a record, in its borrowed form: an owned key computed from the
/// record ([`KeyBy`]) or one borrowed from it ([`KeyByRef`]).
pub trait KeySelector<K: Key, T: Data>: Send + Sync + 'static {
    /// Calls `f` with `record`'s key.
    fn with_key<R>(&self, record: &T::Borrowed, f: impl FnOnce(&K::Borrowed) -> R) -> R;

    /// Whether a key costs so little to pick (borrowed, or plain data) that
    /// picking it twice per record, to announce the record ahead, pays.
    const CHEAP: bool = false;
}

/// A key computed from the record.
pub struct KeyBy<F>(pub(crate) F);

impl<K: Key, T: Data, F> KeySelector<K, T> for KeyBy<F>
where
    F: Fn(&T::Borrowed) -> K + Send + Sync + 'static,
{
    #[inline(always)]
    fn with_key<R>(&self, record: &T::Borrowed, f: impl FnOnce(&K::Borrowed) -> R) -> R {
        let k = (self.0)(record);
        f(k.borrow())
    }

    /// A computed key that owns heap memory (a `String` made per record) is
    /// not computed twice.
    const CHEAP: bool = K::POD;
}

/// A key borrowed from the record (no allocation for a `String` key).
pub struct KeyByRef<F>(pub(crate) F);

impl<K: Key, T: Data, F> KeySelector<K, T> for KeyByRef<F>
where
    F: for<'a> Fn(&'a T::Borrowed) -> &'a K::Borrowed + Send + Sync + 'static,
{
    #[inline(always)]
    fn with_key<R>(&self, record: &T::Borrowed, f: impl FnOnce(&K::Borrowed) -> R) -> R {
        f((self.0)(record))
    }

    const CHEAP: bool = true;
}

/// By key group: the subtask that owns the key's group.
pub(crate) struct ByKeyGroup<K, S> {
    selector: Arc<S>,
    router: KeyGroupRouter,
    _k: PhantomData<fn() -> K>,
}

impl<K: Key, T: Data, S: KeySelector<K, T>> Route<T> for ByKeyGroup<K, S> {
    #[inline(always)]
    fn pick(&mut self, record: &T::Borrowed, _: usize) -> Option<usize> {
        let h = self.selector.with_key(record, key_hash::<K::Borrowed>);
        Some(self.router.subtask(h))
    }
}

/// By a user function of the record and the number of subpartitions.
pub(crate) struct ByFunction<T: Data>(CustomRoute<T>);

/// A user's partitioner: subpartition of a record among `n`.
pub(crate) type CustomRoute<T> = Arc<dyn Fn(&<T as Data>::Borrowed, usize) -> usize + Send + Sync>;

impl<T: Data> Route<T> for ByFunction<T> {
    #[inline]
    fn pick(&mut self, record: &T::Borrowed, n: usize) -> Option<usize> {
        Some((self.0)(record, n) % n.max(1))
    }
}

/// Writes routed records into a partition; a failure is kept for the task.
pub(crate) struct PartitionWriter<T: Data, R> {
    partition: Partition,
    route: R,
    subpartitions: usize,
    failure: Failure,
    _t: PhantomData<fn(&T)>,
}

impl<T: Data, R: Route<T>> PartitionWriter<T, R> {
    /// A writer routing by `route` into `partition`'s `subpartitions`.
    fn boxed(partition: Partition, route: R, subpartitions: usize, failure: Failure) -> Box<dyn Collector<T>> {
        Box::new(PartitionWriter { partition, route, subpartitions, failure, _t: PhantomData })
    }
}

impl<T: Data, R: Route<T>> Collector<T> for PartitionWriter<T, R> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        let PartitionWriter { partition, route, subpartitions, failure, .. } = self;
        let to = route.pick(record, *subpartitions);
        if let Err(e) = write_to::<T>(record, &mut partition.borrow_mut(), to) {
            failure.set(e.into());
        }
    }

    fn collect_batch(&mut self, records: &[T]) {
        let PartitionWriter { partition, route, subpartitions, failure, .. } = self;
        let n = *subpartitions;
        if let Err(e) = T::write_routed(records, &mut partition.borrow_mut(), |r| route.pick(r, n)) {
            failure.set(e.into());
        }
    }
}

/// How an edge's records are routed, as the job builder records it.
pub(crate) enum Routing<T: Data> {
    Forward,
    Rebalance,
    Broadcast,
    KeyGroups(Arc<dyn KeyGroupRoute<T>>),
    Custom(CustomRoute<T>),
}

/// Builds a key-group writer for a typed key selector (type-erased in [`Routing`]).
pub(crate) trait KeyGroupRoute<T: Data>: Send + Sync {
    fn writer(
        &self,
        partition: Partition,
        subpartitions: usize,
        max_parallelism: u32,
        failure: Failure,
    ) -> Box<dyn Collector<T>>;
}

/// A key selector as a key-group route.
pub(crate) struct SelectorRoute<K, S>(pub(crate) Arc<S>, pub(crate) PhantomData<fn() -> K>);

impl<K: Key, T: Data, S: KeySelector<K, T>> KeyGroupRoute<T> for SelectorRoute<K, S> {
    fn writer(
        &self,
        partition: Partition,
        subpartitions: usize,
        max_parallelism: u32,
        failure: Failure,
    ) -> Box<dyn Collector<T>> {
        let route = ByKeyGroup {
            selector: self.0.clone(),
            router: KeyGroupRouter::new(subpartitions as u32, max_parallelism),
            _k: PhantomData,
        };
        PartitionWriter::boxed(partition, route, subpartitions, failure)
    }
}

/// The writer of one outgoing edge of a vertex.
pub(crate) struct WriterFactory<T: Data> {
    pub(crate) edge: usize,
    pub(crate) routing: Routing<T>,
}

impl<T: Data> NodeFactory<T> for WriterFactory<T> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, crate::EngineError> {
        let partition = ctx.partition(self.edge)?;
        let n = partition.borrow().num_subpartitions();
        let failure = ctx.failure.clone();
        let boxed = match &self.routing {
            Routing::Forward => PartitionWriter::boxed(partition, ToFirst, n, failure),
            // Start where the subtask's index says, so subtasks spread at once.
            Routing::Rebalance => {
                PartitionWriter::boxed(partition, RoundRobin(ctx.task.subtask as usize % n.max(1)), n, failure)
            }
            Routing::Broadcast => PartitionWriter::boxed(partition, ToAll, n, failure),
            Routing::KeyGroups(r) => r.writer(partition, n, ctx.task.max_parallelism, failure),
            Routing::Custom(f) => PartitionWriter::boxed(partition, ByFunction(f.clone()), n, failure),
        };
        Ok(boxed)
    }
}

impl<T: Data> Clone for Routing<T> {
    fn clone(&self) -> Self {
        match self {
            Routing::Forward => Routing::Forward,
            Routing::Rebalance => Routing::Rebalance,
            Routing::Broadcast => Routing::Broadcast,
            Routing::KeyGroups(r) => Routing::KeyGroups(r.clone()),
            Routing::Custom(f) => Routing::Custom(f.clone()),
        }
    }
}
