//! Keyed streams (reduce, aggregate, keyed process) and two-input operators
//! (co-map, co-flat-map, keyed co-process).

use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use super::{add_op, consumer_check, Keeps, Stream};
use crate::data::{Data, Key};
use crate::error::DataflowError;
use crate::runtime::build::{attach, port, Name};
use crate::runtime::collector::Emitter;
use crate::runtime::keyed::{
    AggregateFactory, Aggregator, Count, KeyedBroadcastFactory, KeyedBroadcastProcessFunction, KeyedCoProcessFactory,
    KeyedCoProcessFunction, KeyedProcessFactory, KeyedProcessFunction, Reduce, TwoInputFactory,
};
use crate::runtime::ops::{CoFlatMapFactory, CoProcessFactory, CoProcessFunction};
use crate::runtime::output::{KeySelector, WriterFactory};
use crate::runtime::side::OutPorts;
use crate::runtime::vertex::{SideEntry, VertexPlan};

/// A stream partitioned by key `K`: each key's records reach one subtask,
/// where the next operator keeps state per key (by the real key: two keys with
/// the same hash never share state).
pub struct KeyedStream<K: Key, T: Data, S> {
    pub(crate) stream: Stream<T>,
    pub(crate) selector: Arc<S>,
    pub(crate) _k: PhantomData<fn() -> K>,
}

impl<K: Key, T: Data, S> std::fmt::Debug for KeyedStream<K, T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream").field("stream", &self.stream).finish()
    }
}

impl<K: Key, T: Data, S: KeySelector<K, T>> KeyedStream<K, T, S> {
    fn aggregation<A: Aggregator<K, T>>(&self, kind: &str, agg: A, running: bool) -> Stream<A::Out> {
        let selector = self.selector.clone();
        self.stream
            .then(kind, |name, next| Arc::new(AggregateFactory { name, selector, agg, running, next, _t: PhantomData }))
            .keeping(Keeps::Keyed)
    }

    /// The records themselves, partitioned by key: the next operator (or sink)
    /// gets each key's records on one subtask, without keyed state.
    pub fn as_stream(&self) -> Stream<T> {
        self.stream.clone()
    }

    /// Each record folded into its key's running value by `f(value, record)`;
    /// every updated value is emitted.
    pub fn reduce(&self, f: impl Fn(&T, &T::Borrowed) -> T + Send + Sync + 'static) -> Stream<T> {
        self.aggregation("reduce", Reduce(Arc::new(f)), true)
    }

    /// As [`KeyedStream::reduce`], emitting each key's value once, at the end of
    /// input.
    pub fn reduce_final(&self, f: impl Fn(&T, &T::Borrowed) -> T + Send + Sync + 'static) -> Stream<T> {
        self.aggregation("reduce", Reduce(Arc::new(f)), false)
    }

    /// Each record folded into its key's accumulator by `agg`, incrementally;
    /// the result is emitted on every update.
    pub fn aggregate<A: Aggregator<K, T>>(&self, agg: A) -> Stream<A::Out> {
        self.aggregation("aggregate", agg, true)
    }

    /// As [`KeyedStream::aggregate`], emitting each key's result once, at the end
    /// of input.
    pub fn aggregate_final<A: Aggregator<K, T>>(&self, agg: A) -> Stream<A::Out> {
        self.aggregation("aggregate", agg, false)
    }

    /// `(key, records so far)` on every record.
    pub fn count(&self) -> Stream<(K, u64)>
    where
        (K, u64): Data,
    {
        self.aggregation("count", Count, true)
    }

    /// `(key, records)` once per key, at the end of input.
    pub fn count_final(&self) -> Stream<(K, u64)>
    where
        (K, u64): Data,
    {
        self.aggregation("count", Count, false)
    }

    /// A keyed process function over each record, with keyed state and
    /// processing-time timers.
    pub fn process<O: Data, P: KeyedProcessFunction<K, T, O>>(&self, f: P) -> Stream<O> {
        let selector = self.selector.clone();
        self.stream
            .then_emitting("process", |name, out| {
                Arc::new(KeyedProcessFactory { name, selector, f, out, _t: PhantomData })
            })
            .keeping(Keeps::Keyed)
    }

    /// This stream and `other`, keyed alike, as the two inputs of one keyed
    /// operator sharing its state.
    pub fn connect<B: Data, SB: KeySelector<K, B>>(
        &self,
        other: &KeyedStream<K, B, SB>,
    ) -> KeyedConnectedStreams<K, T, B, S, SB> {
        KeyedConnectedStreams {
            first: KeyedStream { stream: self.stream.clone(), selector: self.selector.clone(), _k: PhantomData },
            second: KeyedStream { stream: other.stream.clone(), selector: other.selector.clone(), _k: PhantomData },
        }
    }
}

impl<K: Key, T: Data, S: KeySelector<K, T>> KeyedStream<K, T, S> {
    /// This stream and `broadcast`, whose every record reaches every subtask,
    /// as the two inputs of one keyed operator: keyed state and timers for
    /// this stream's keys, and a broadcast state of `broadcast`'s records
    /// that every subtask holds (Flink's broadcast state pattern).
    pub fn connect_broadcast<B: Data>(&self, broadcast: &Stream<B>) -> KeyedBroadcastStreams<K, T, B, S> {
        KeyedBroadcastStreams {
            keyed: KeyedStream { stream: self.stream.clone(), selector: self.selector.clone(), _k: PhantomData },
            broadcast: broadcast.broadcast(),
        }
    }
}

/// Adds a two-input operator reading `first` and `second`, each through its own
/// edge (its pending exchange, or forward/round robin).
fn two_inputs<A: Data, B: Data, O: Data>(
    first: &Stream<A>,
    second: &Stream<B>,
    kind: &str,
    make: impl FnOnce(Name, OutPorts<O>) -> Arc<dyn TwoInputFactory<A, B>>,
) -> Stream<O> {
    let mut p = first.plan.borrow_mut();
    let name = p.default_name(kind);
    if !Rc::ptr_eq(&first.plan, &second.plan) {
        p.error(DataflowError::ForeignStream { operator: name.get() });
    }
    let out = OutPorts::new(port::<O>());
    let op = make(name.clone(), out.clone());
    let parallelism = p.parallelism;
    let vertex = p.add_vertex(&name, parallelism, VertexPlan::Inputs(Vec::new()));
    let key = p.edges.len();
    let (ra, ka) = first.edge();
    let edge = p.add_edge((first.vertex, first.op), vertex, ka, A::format());
    attach(&first.port, Arc::new(WriterFactory { edge, routing: ra }));
    p.add_entry(vertex, edge, Arc::new(SideEntry { op: op.clone(), key, first: true }));
    let (rb, kb) = second.edge();
    let edge = p.add_edge((second.vertex, second.op), vertex, kb, B::format());
    attach(&second.port, Arc::new(WriterFactory { edge, routing: rb }));
    p.add_entry(vertex, edge, Arc::new(SideEntry { op, key, first: false }));
    let op = add_op(&mut p, name, kind, vertex, None, Some(consumer_check(&out.main)), None);
    p.ops[op].sides = Some(out.sides);
    Stream { plan: first.plan.clone(), vertex, port: out.main, op, exchange: None }
}

/// Two streams as the inputs of one operator (co-map, co-flat-map).
pub struct ConnectedStreams<A: Data, B: Data> {
    pub(crate) first: Stream<A>,
    pub(crate) second: Stream<B>,
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    /// Each record of either input mapped into one output stream.
    pub fn map<O: Data>(
        &self,
        first: impl Fn(&A::Borrowed) -> O + Send + Sync + 'static,
        second: impl Fn(&B::Borrowed) -> O + Send + Sync + 'static,
    ) -> Stream<O> {
        self.flat_map(move |a, out| out.emit(first(a)), move |b, out| out.emit(second(b)))
    }

    /// A co-process function over both inputs, with operator state per
    /// subtask (Flink's `CoProcessFunction`). With `other.broadcast()` as the
    /// second input every subtask sees all of it: the broadcast-state pattern.
    pub fn process<O: Data, P: CoProcessFunction<A, B, O>>(&self, f: P) -> Stream<O> {
        two_inputs(&self.first, &self.second, "co_process", |name, out| {
            Arc::new(CoProcessFactory { name, f, out, _t: PhantomData })
        })
        .keeping(Keeps::Lists)
    }

    /// Zero or more output records per record of either input.
    pub fn flat_map<O: Data>(
        &self,
        first: impl Fn(&A::Borrowed, &mut Emitter<'_, O>) + Send + Sync + 'static,
        second: impl Fn(&B::Borrowed, &mut Emitter<'_, O>) + Send + Sync + 'static,
    ) -> Stream<O> {
        let (first, second) = (Arc::new(first), Arc::new(second));
        two_inputs(&self.first, &self.second, "co_flat_map", |_, out| {
            Arc::new(CoFlatMapFactory { first, second, out, _t: PhantomData })
        })
    }
}

/// Two streams keyed alike as the inputs of one keyed operator.
pub struct KeyedConnectedStreams<K: Key, A: Data, B: Data, SA, SB> {
    first: KeyedStream<K, A, SA>,
    second: KeyedStream<K, B, SB>,
}

impl<K: Key, A: Data, B: Data, SA: KeySelector<K, A>, SB: KeySelector<K, B>> KeyedConnectedStreams<K, A, B, SA, SB> {
    /// A keyed co-process function over both inputs, sharing keyed state and
    /// timers.
    pub fn process<O: Data, P: KeyedCoProcessFunction<K, A, B, O>>(&self, f: P) -> Stream<O> {
        let (sa, sb) = (self.first.selector.clone(), self.second.selector.clone());
        two_inputs(&self.first.stream, &self.second.stream, "co_process", |name, out| {
            Arc::new(KeyedCoProcessFactory { name, first: sa, second: sb, f, out, _t: PhantomData })
        })
        .keeping(Keeps::Keyed)
    }
}

/// A keyed stream and a broadcast stream as the inputs of one keyed operator.
pub struct KeyedBroadcastStreams<K: Key, A: Data, B: Data, SA> {
    keyed: KeyedStream<K, A, SA>,
    broadcast: Stream<B>,
}

impl<K: Key, A: Data, B: Data, SA: KeySelector<K, A>> KeyedBroadcastStreams<K, A, B, SA> {
    /// A keyed-broadcast process function over both inputs (Flink's
    /// `KeyedBroadcastProcessFunction`).
    pub fn process<O: Data, P: KeyedBroadcastProcessFunction<K, A, B, O>>(&self, f: P) -> Stream<O> {
        let selector = self.keyed.selector.clone();
        two_inputs(&self.keyed.stream, &self.broadcast, "broadcast_process", |name, out| {
            Arc::new(KeyedBroadcastFactory { name, selector, f, out, _t: PhantomData })
        })
        .keeping(Keeps::KeyedAndLists)
    }
}
