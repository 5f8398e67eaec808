//! [`Stream`]: a typed stream of records and what can be done with it.

use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use shardflow_control::PartitionerKind;

use super::{add_op, consumer_check, detach, ConnectedStreams, EdgeKind, Keeps, KeyedStream, Plan, PlanRef};
use crate::data::{Data, Key};
use crate::error::{DataflowError, OperatorError};
use crate::runtime::bound::QueueBound;
use crate::runtime::build::{attach, port, Name, NodeFactory, Port};
use crate::runtime::collector::Emitter;
use crate::runtime::ops::{
    infallible, FilterFactory, FlatMapFactory, MapFactory, ProcessFactory, ProcessFunction, TryMapFactory,
};
use crate::runtime::output::{KeyBy, KeyByRef, KeySelector, Routing, SelectorRoute, WriterFactory};
use crate::runtime::side::{OutPorts, OutputTag, SidePorts};
use crate::runtime::sinks::{
    self, CollectFactory, CollectHandle, CountFactory, Discard, EgressHandle, ForEachFactory, LatencyFactory,
};
use crate::runtime::vertex::{PortEntry, VertexPlan};

/// A stream of records of type `T`, produced by one operator of a
/// [`super::Dataflow`]. Transforms return new streams; a stream may feed
/// several consumers (each gets every record). Settings (`name`,
/// `parallelism`, …) apply to the operator that produces the stream.
pub struct Stream<T: Data> {
    pub(crate) plan: PlanRef,
    pub(crate) vertex: usize,
    pub(crate) port: Port<T>,
    pub(crate) op: usize,
    /// An exchange the next operator's records go through (else it is chained).
    pub(crate) exchange: Option<(Routing<T>, EdgeKind)>,
}

impl<T: Data> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Stream {
            plan: self.plan.clone(),
            vertex: self.vertex,
            port: self.port.clone(),
            op: self.op,
            exchange: self.exchange.clone(),
        }
    }
}

impl<T: Data> std::fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.plan.borrow();
        f.debug_struct("Stream").field("operator", &p.op_name(self.op)).field("vertex", &self.vertex).finish()
    }
}

impl<T: Data> Stream<T> {
    /// The stream of an operator heading vertex `vertex`.
    pub(crate) fn head(plan: &PlanRef, name: Name, kind: &str, vertex: usize, out: Port<T>) -> Self {
        let op = add_op(&mut plan.borrow_mut(), name, kind, vertex, None, Some(consumer_check(&out)), None);
        Stream { plan: plan.clone(), vertex, port: out, op, exchange: None }
    }

    /// Where an operator consuming this stream runs: chained into this vertex, or
    /// at the head of a new vertex behind the pending exchange. Returns the vertex,
    /// the port the operator reads, and whether it heads its vertex.
    fn place(&self, p: &mut Plan, name: &Name) -> (usize, Port<T>, bool) {
        match &self.exchange {
            None | Some((_, EdgeKind::Pinned)) => (self.vertex, self.port.clone(), false),
            Some((routing, kind)) => {
                let (v, root) = p.exchange((self.vertex, self.op), &self.port, routing.clone(), *kind, name);
                (v, root, true)
            }
        }
    }

    /// Adds an operator reading this stream, built by `make` from its name and
    /// output port.
    pub(crate) fn then<U: Data>(
        &self,
        kind: &str,
        make: impl FnOnce(Name, Port<U>) -> Arc<dyn NodeFactory<T>>,
    ) -> Stream<U> {
        self.add(kind, |name, out| make(name, out.main), false)
    }

    /// As [`Self::then`] for an operator that emits through an `Emitter`, so
    /// its stream can have side outputs.
    pub(crate) fn then_emitting<U: Data>(
        &self,
        kind: &str,
        make: impl FnOnce(Name, OutPorts<U>) -> Arc<dyn NodeFactory<T>>,
    ) -> Stream<U> {
        self.add(kind, make, true)
    }

    fn add<U: Data>(
        &self,
        kind: &str,
        make: impl FnOnce(Name, OutPorts<U>) -> Arc<dyn NodeFactory<T>>,
        emitting: bool,
    ) -> Stream<U> {
        let mut p = self.plan.borrow_mut();
        let name = p.default_name(kind);
        let out = OutPorts::new(port::<U>());
        let factory = make(name.clone(), out.clone());
        let (vertex, input, head) = self.place(&mut p, &name);
        attach(&input, factory.clone());
        let rehome: Option<super::Rehome> = if head {
            None
        } else {
            let (from, name) = ((vertex, self.op), name.clone());
            let (routing, kind) = self.edge();
            Some(Box::new(move |p: &mut Plan| {
                detach(&input, &factory);
                let (v, root) = p.exchange(from, &input, routing.clone(), kind, &name);
                attach(&root, factory.clone());
                v
            }))
        };
        let after = (!head).then_some(self.op);
        let op = add_op(&mut p, name, kind, vertex, after, Some(consumer_check(&out.main)), rehome);
        if emitting {
            p.ops[op].sides = Some(out.sides);
        }
        Stream { plan: self.plan.clone(), vertex, port: out.main, op, exchange: None }
    }

    /// Marks the operator producing this stream as keeping `state`.
    pub(crate) fn keeping(self, state: Keeps) -> Self {
        self.plan.borrow_mut().ops[self.op].keeps = state;
        self
    }

    /// Ends this stream in a sink built by `make` from its name.
    fn sink(&self, kind: &str, make: impl FnOnce(Name) -> Arc<dyn NodeFactory<T>>) -> Sink {
        let mut p = self.plan.borrow_mut();
        let name = p.default_name(kind);
        let factory = make(name.clone());
        let (vertex, input, head) = self.place(&mut p, &name);
        attach(&input, factory);
        add_op(&mut p, name.clone(), kind, vertex, (!head).then_some(self.op), None, None);
        p.sinks += 1;
        Sink { name }
    }

    fn with_exchange(&self, routing: Routing<T>, kind: PartitionerKind) -> Stream<T> {
        Stream { exchange: Some((routing, EdgeKind::Fixed(kind))), ..self.clone() }
    }

    /// This stream, partitioned where it is produced (a keyed ingress's): the
    /// next operator chains into its vertex, and where it cannot (an operator
    /// of two inputs, a union) the edge is forward, at equal parallelism.
    pub(crate) fn pinned(&self) -> Stream<T> {
        Stream { exchange: Some((Routing::Forward, EdgeKind::Pinned)), ..self.clone() }
    }

    /// How this stream reaches an operator of a vertex of its own: through its
    /// pending exchange, forward if pinned, else round robin (forward where the
    /// parallelisms are equal).
    pub(crate) fn edge(&self) -> (Routing<T>, EdgeKind) {
        self.exchange.clone().unwrap_or((Routing::Rebalance, EdgeKind::Auto))
    }

    // ------------------------------------------------------------ settings

    /// Names the operator producing this stream (unique in the job: its state's
    /// id in snapshots; also the vertex name if it heads one).
    #[must_use]
    pub fn name(self, name: &str) -> Self {
        self.plan.borrow().ops[self.op].name.set(name);
        self
    }

    /// Runs the operator producing this stream with `parallelism` subtasks. A
    /// chained operator given another parallelism than its vertex moves to a
    /// vertex of its own (records reach it round robin).
    #[must_use]
    pub fn parallelism(mut self, parallelism: u32) -> Self {
        let mut p = self.plan.borrow_mut();
        let operator = p.op_name(self.op);
        let op = &p.ops[self.op];
        let vertex = op.vertex;
        if parallelism == 0 {
            p.error(DataflowError::ZeroParallelism { operator });
        } else if let Some(producer) = op.side_of {
            let producer = p.op_name(producer);
            p.error(DataflowError::SideOutputParallelism { operator, producer });
        } else if op.consumers.as_ref().is_some_and(|c| c() > 0) || op.sides.as_ref().is_some_and(SidePorts::any) {
            p.error(DataflowError::ParallelismAfterUse { operator });
        } else if p.vertices[vertex].parallelism == parallelism {
        } else if p.vertices[vertex].fixed_parallelism {
            p.error(DataflowError::FixedParallelism { operator });
        } else if op.after.is_none() {
            p.vertices[vertex].parallelism = parallelism;
        } else if let Some(rehome) = p.ops[self.op].rehome.take() {
            let v = rehome(&mut p);
            p.vertices[v].parallelism = parallelism;
            let op = &mut p.ops[self.op];
            op.vertex = v;
            op.after = None;
            self.vertex = v;
        }
        drop(p);
        self
    }

    /// Puts the vertex of the operator producing this stream in slot-sharing
    /// group `group` (vertices of one group may share a slot).
    #[must_use]
    pub fn slot_sharing_group(self, group: &str) -> Self {
        self.plan.borrow_mut().vertices[self.vertex].slot_sharing_group = group.to_string();
        self
    }

    /// Places the subtasks of this stream's vertex on `cores` (subtask i on
    /// `cores[i % len]`); vertices without a hint spread over the shards,
    /// each subtask to the least loaded core with a slot for it
    /// ([`crate::Job::hinted_placement`]).
    #[must_use]
    pub fn cores(self, cores: &[usize]) -> Self {
        let mut p = self.plan.borrow_mut();
        if cores.is_empty() {
            let operator = p.op_name(self.op);
            p.error(DataflowError::NoCores { operator });
        } else {
            p.vertices[self.vertex].cores = Some(cores.to_vec());
        }
        drop(p);
        self
    }

    // ---------------------------------------------------------- transforms

    /// Each record mapped by `f`.
    pub fn map<U: Data>(&self, f: impl Fn(&T::Borrowed) -> U + Send + Sync + 'static) -> Stream<U> {
        let f = Arc::new(f);
        self.then("map", |_, next| Arc::new(MapFactory { f, next, _t: PhantomData }))
    }

    /// The records for which `f` is true.
    pub fn filter(&self, f: impl Fn(&T::Borrowed) -> bool + Send + Sync + 'static) -> Stream<T> {
        let f = Arc::new(f);
        self.then("filter", |_, next| Arc::new(FilterFactory { f, next }))
    }

    /// Zero or more records per record: `f` emits them.
    pub fn flat_map<U: Data>(
        &self,
        f: impl Fn(&T::Borrowed, &mut Emitter<'_, U>) + Send + Sync + 'static,
    ) -> Stream<U> {
        let f = Arc::new(infallible::<T, U>(f));
        self.then_emitting("flat_map", |name, out| Arc::new(FlatMapFactory { name, f, out, _t: PhantomData }))
    }

    /// Each record mapped by `f`, which may fail: an error fails the job with
    /// its reason, and the operator's name, as the cause (a panic would too,
    /// with less to say). [`crate::OrFail`] turns what the user's own calls
    /// fail with into that error, saying what was being done:
    /// `.try_map(|line: &str| line.parse::<u64>().or_fail("an amount"))`.
    pub fn try_map<U: Data>(
        &self,
        f: impl Fn(&T::Borrowed) -> Result<U, OperatorError> + Send + Sync + 'static,
    ) -> Stream<U> {
        let f = Arc::new(f);
        self.then("try_map", |name, next| Arc::new(TryMapFactory { name, f, next, _t: PhantomData }))
    }

    /// Zero or more records per record, emitted by `f`, which may fail: an
    /// error fails the job with its reason as the cause, as [`Self::try_map`].
    pub fn try_flat_map<U: Data>(
        &self,
        f: impl Fn(&T::Borrowed, &mut Emitter<'_, U>) -> Result<(), OperatorError> + Send + Sync + 'static,
    ) -> Stream<U> {
        let f = Arc::new(f);
        self.then_emitting("try_flat_map", |name, out| Arc::new(FlatMapFactory { name, f, out, _t: PhantomData }))
    }

    /// A process function over each record, with operator state.
    pub fn process<O: Data, P: ProcessFunction<T, O>>(&self, f: P) -> Stream<O> {
        self.then_emitting("process", |name, out| Arc::new(ProcessFactory { name, f, out, _t: PhantomData }))
            .keeping(Keeps::Lists)
    }

    /// Partitions by a key computed from each record: each key's records reach
    /// one subtask (by key group), where keyed operators keep state per key.
    /// The selector must give a record the same key every time it is asked:
    /// it may run more than once per record — where the record is routed,
    /// where its state is kept, and a second time there for an aggregation
    /// whose table has outgrown the cache, to load the key's slot ahead (for
    /// plain-data keys only: a computed `String` is not made twice).
    pub fn key_by<K: Key, F>(&self, f: F) -> KeyedStream<K, T, KeyBy<F>>
    where
        F: Fn(&T::Borrowed) -> K + Send + Sync + 'static,
    {
        self.keyed(KeyBy(f))
    }

    /// Partitions by a key borrowed from each record (a `&str` of a `String`
    /// field: no allocation per record). As for [`Stream::key_by`], the
    /// selector runs more than once per record.
    pub fn key_by_ref<K: Key, F>(&self, f: F) -> KeyedStream<K, T, KeyByRef<F>>
    where
        F: for<'a> Fn(&'a T::Borrowed) -> &'a K::Borrowed + Send + Sync + 'static,
    {
        self.keyed(KeyByRef(f))
    }

    fn keyed<K: Key, S: KeySelector<K, T>>(&self, selector: S) -> KeyedStream<K, T, S> {
        let selector = Arc::new(selector);
        let route = Arc::new(SelectorRoute::<K, S>(selector.clone(), PhantomData));
        KeyedStream {
            stream: self.with_exchange(Routing::KeyGroups(route), PartitionerKind::Hash),
            selector,
            _k: PhantomData,
        }
    }

    /// Sends the records round robin to the next operator's subtasks.
    pub fn rebalance(&self) -> Stream<T> {
        self.with_exchange(Routing::Rebalance, PartitionerKind::Rebalance)
    }

    /// Sends every record to every subtask of the next operator.
    pub fn broadcast(&self) -> Stream<T> {
        self.with_exchange(Routing::Broadcast, PartitionerKind::Broadcast)
    }

    /// Breaks the chain: the next operator starts a vertex of its own, subtask i
    /// fed by subtask i of this one (equal parallelism).
    pub fn forward(&self) -> Stream<T> {
        self.with_exchange(Routing::Forward, PartitionerKind::Forward)
    }

    /// Routes each record to the subtask `f(record, subtasks)` (modulo subtasks).
    pub fn partition_custom(&self, f: impl Fn(&T::Borrowed, usize) -> usize + Send + Sync + 'static) -> Stream<T> {
        self.with_exchange(Routing::Custom(Arc::new(f)), PartitionerKind::Custom)
    }

    /// The records of this stream and `other` as one stream.
    pub fn union(&self, other: &Stream<T>) -> Stream<T> {
        let mut p = self.plan.borrow_mut();
        let name = p.default_name("union");
        if !Rc::ptr_eq(&self.plan, &other.plan) {
            p.error(DataflowError::ForeignStream { operator: name.get() });
        }
        let root = port::<T>();
        let parallelism = p.parallelism;
        let vertex = p.add_vertex(&name, parallelism, VertexPlan::Inputs(Vec::new()));
        let key = p.edges.len();
        for s in [self, other] {
            let (routing, kind) = s.edge();
            let edge = p.add_edge((s.vertex, s.op), vertex, kind, T::format());
            attach(&s.port, Arc::new(WriterFactory { edge, routing }));
            p.add_entry(vertex, edge, Arc::new(PortEntry { port: root.clone(), key }));
        }
        let op = add_op(&mut p, name, "union", vertex, None, Some(consumer_check(&root)), None);
        Stream { plan: self.plan.clone(), vertex, port: root, op, exchange: None }
    }

    /// This stream and `other` as the two inputs of one operator.
    pub fn connect<B: Data>(&self, other: &Stream<B>) -> ConnectedStreams<T, B> {
        ConnectedStreams { first: self.clone(), second: other.clone() }
    }

    /// The records the function of the operator producing this stream emitted
    /// to side output `tag` ([`crate::Emitter::emit_side`]): a stream of its
    /// own, starting where that operator runs. Only `flat_map` and the process
    /// functions emit side outputs; asked of another operator, or for a tag
    /// asked for before with another record type, `build` fails with a
    /// [`DataflowError`]. Asked twice, the two streams are one.
    pub fn side_output<U: Data>(&self, tag: &OutputTag<U>) -> Stream<U> {
        let mut p = self.plan.borrow_mut();
        let name = p.default_name("side_output");
        let operator = p.op_name(self.op);
        let port = match p.ops[self.op].sides.as_ref().map(|s| s.port(tag)) {
            Some(Ok(port)) => port,
            None => {
                p.error(DataflowError::NoSideOutputs { operator });
                port::<U>()
            }
            Some(Err(first)) => {
                let (tag, then) = (tag.id().to_string(), std::any::type_name::<U>().to_string());
                p.error(DataflowError::SideOutputType { operator, tag, first: first.to_string(), then });
                port::<U>()
            }
        };
        let op = add_op(&mut p, name, "side_output", self.vertex, Some(self.op), Some(consumer_check(&port)), None);
        p.ops[op].side_of = Some(self.op);
        Stream { plan: self.plan.clone(), vertex: self.vertex, port, op, exchange: None }
    }

    // --------------------------------------------------------------- sinks

    /// Counts the records; the job's [`crate::JobResult::count`] sums the counts.
    pub fn count(&self) -> Sink {
        self.sink("count", |name| Arc::new(CountFactory::<fn(&T::Borrowed) -> u64> { name, value: None }))
    }

    /// Counts the records and sums `value` of each (wrapping), for
    /// [`crate::JobResult::count`].
    pub fn count_and_sum(&self, value: impl Fn(&T::Borrowed) -> u64 + Send + Sync + 'static) -> Sink {
        let value = Some(Arc::new(value));
        self.sink("count", |name| Arc::new(CountFactory { name, value }))
    }

    /// Drops the records.
    pub fn discard(&self) -> Sink {
        self.sink("discard", |_| Arc::new(Discard))
    }

    /// Calls `f` with each record (on the sink's shard).
    pub fn for_each(&self, f: impl Fn(&T::Borrowed) + Send + Sync + 'static) -> Sink {
        let f = Arc::new(f);
        self.sink("for_each", |_| Arc::new(ForEachFactory(f)))
    }

    /// Gathers every record in memory, readable from the handle once the job has
    /// finished (for tests and small results).
    pub fn collect(&self) -> CollectHandle<T> {
        let handle = CollectHandle::new();
        let h = handle.clone();
        self.sink("collect", |name| Arc::new(CollectFactory { name, handle: h }));
        handle
    }

    /// Records `now − time_ns(record)` in a histogram ([`crate::JobResult::latency`]),
    /// `time_ns` being the record's time in ns since the job's start instant.
    pub fn latency(&self, time_ns: impl Fn(&T::Borrowed) -> u64 + Send + Sync + 'static) -> Sink {
        let time_ns = Arc::new(time_ns);
        self.sink("latency", |name| Arc::new(LatencyFactory { name, time_ns }))
    }

    /// Hands the records to a service thread through a bounded queue of
    /// `capacity` records: see [`EgressHandle`].
    pub fn egress(&self, capacity: usize) -> EgressHandle<T> {
        self.egress_bounded(QueueBound::records(capacity))
    }

    /// [`Stream::egress`] through a queue within `bound`: results of any size
    /// bounded by bytes, count or both.
    pub fn egress_bounded(&self, bound: QueueBound) -> EgressHandle<T> {
        let (mut factory, handle) = sinks::egress::<T>(Name::default(), bound);
        self.sink("egress", |name| {
            factory.name = name;
            Arc::new(factory)
        });
        handle
    }
}

/// A sink of a dataflow: its name can be set (the vertex's name if the sink
/// heads one).
#[derive(Debug)]
pub struct Sink {
    name: Name,
}

impl Sink {
    /// Names the sink (unique in the job).
    pub fn name(self, name: &str) -> Self {
        self.name.set(name);
        self
    }
}
