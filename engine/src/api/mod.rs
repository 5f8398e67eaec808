//! The typed dataflow API: a [`Dataflow`] builds a job from sources, transforms
//! and sinks over streams of the user's own record types.
//!
//! Operators connected without an exchange run in one vertex and call each other
//! directly (a chain, as Flink chains forward edges of equal parallelism); an
//! exchange (`key_by`, `rebalance`, `broadcast`, a custom partitioner, a
//! `forward()` that breaks the chain, a union or a connect) starts a new vertex
//! whose records arrive through the network stack.
//!
//! ```
//! use shardflow_engine::{Dataflow, Engine};
//!
//! let df = Dataflow::new("word-lengths").parallelism(2);
//! let lengths = df
//!     .from_iter("words", ["apple", "fig", "kiwi", "fig"].map(String::from))
//!     .key_by_ref::<String, _>(|w: &str| w)
//!     .count_final()
//!     .map(|(word, n): &(String, u64)| (word.len() as u64, *n))
//!     .collect();
//! let job = df.build()?;
//! # let engine = Engine::builder().shards(1).build()?;
//! engine.run(job)?;
//! let mut got = lengths.take();
//! got.sort();
//! assert_eq!(got, vec![(3, 2), (4, 1), (5, 1)]);
//! # Ok::<(), shardflow_engine::EngineError>(())
//! ```

mod execution_plan;
mod job;
mod keyed;
mod stream;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use shardflow_control::{JobGraph, JobVertex, OperatorSpec, PartitionerKind, RecordFormat, VertexId};

use crate::data::{key_hash, Data, Key};
use crate::error::{DataflowError, EngineError};
use crate::params::Params;
use crate::runtime::bound::QueueBound;
use crate::runtime::build::{attach, consumers, port, Name, NodeFactory, Port};
use crate::runtime::collector::TaskInfo;
use crate::runtime::output::{KeyBy, KeySelector, Routing, WriterFactory};
use crate::runtime::side::SidePorts;
use crate::runtime::sources::{
    self, FromItems, Generator, IngressHandle, KeyedIngressHandle, Runs, Source, SourceNode,
};
use crate::runtime::state::{JobSnapshot, KeyGroupRouter, OperatorSnapshot};
use crate::runtime::vertex::{EntryFactory, PortEntry, VertexPlan};
use crate::runtime::JobPlan;

pub use execution_plan::{ExecutionPlan, PlannedEdge, PlannedOperator, PlannedVertex};
pub use job::Job;
pub use keyed::{ConnectedStreams, KeyedBroadcastStreams, KeyedConnectedStreams, KeyedStream};
pub use stream::{Sink, Stream};

/// Default key groups of a job (its maximum parallelism).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// How an edge between two vertices routes records, decided when the job is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    /// Forward if the two vertices have equal parallelism, else round robin.
    Auto,
    /// Chained where it can be; as an edge, forward, and equal parallelism
    /// is required (a keyed ingress's stream: partitioned at its source).
    Pinned,
    /// Exactly this.
    Fixed(PartitionerKind),
}

struct PlanEdge {
    source: usize,
    /// The operator of `source` whose records it carries.
    source_op: usize,
    target: usize,
    kind: EdgeKind,
    format: RecordFormat,
}

struct PlanVertex {
    /// The head operator's name.
    name: Name,
    parallelism: u32,
    slot_sharing_group: String,
    cores: Option<Vec<usize>>,
    body: VertexPlan,
    /// An ingress's queues are made for its parallelism.
    fixed_parallelism: bool,
}

/// An operator as the builder tracks it.
struct PlanOp {
    name: Name,
    /// What it is (`map`, `process`, `collect`, …), for the execution plan.
    kind: String,
    vertex: usize,
    /// The operator it is chained after (`None`: it heads its vertex).
    after: Option<usize>,
    /// How many consumers its output has (`None`: a sink).
    consumers: Option<Box<dyn Fn() -> usize>>,
    /// Moves a chained operator into a vertex of its own (to give it another
    /// parallelism): returns the new vertex.
    rehome: Option<Rehome>,
    /// The state it keeps: what of a snapshot it restores.
    keeps: Keeps,
    /// The side outputs asked for, if it emits through an `Emitter`.
    sides: Option<SidePorts>,
    /// The operator whose side output this is, if it is one.
    side_of: Option<usize>,
}

/// The state an operator keeps, so a restore can tell whether every state of
/// the snapshot reaches an operator that restores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keeps {
    /// None: maps, filters, sinks.
    Nothing,
    /// Keyed state in key groups (aggregations, keyed process functions),
    /// snapshotted under the operator's name.
    Keyed,
    /// Operator lists (process functions of non-keyed streams), each
    /// snapshotted as `operator/list`.
    Lists,
    /// A source's position, an operator list (`source/position`) that only a
    /// job stopped while the source ran has.
    Position,
    /// Keyed state and an operator list (a keyed-broadcast operator's
    /// broadcast state, `operator/broadcast`).
    KeyedAndLists,
}

/// Moves a chained operator into a vertex of its own; returns the vertex.
pub(crate) type Rehome = Box<dyn Fn(&mut Plan) -> usize>;

/// The job being built.
pub(crate) struct Plan {
    name: String,
    parallelism: u32,
    max_parallelism: u32,
    vertices: Vec<PlanVertex>,
    edges: Vec<PlanEdge>,
    ops: Vec<PlanOp>,
    sinks: usize,
    errors: Vec<DataflowError>,
    restore: Option<Arc<JobSnapshot>>,
    /// Whether state in `restore` that no operator of the job owns is dropped
    /// (else it is an error).
    allow_non_restored_state: bool,
    snapshot_at_end: bool,
    /// The job's ingresses, to close when it ends.
    ingresses: Vec<sources::IngressCloser>,
    /// The keyed ingresses: their handles route by the max parallelism of
    /// their creation.
    keyed_ingresses: Vec<String>,
}

pub(crate) type PlanRef = Rc<RefCell<Plan>>;

impl Plan {
    fn error(&mut self, e: DataflowError) {
        self.errors.push(e);
    }

    fn add_vertex(&mut self, name: &Name, parallelism: u32, body: VertexPlan) -> usize {
        self.vertices.push(PlanVertex {
            name: name.clone(),
            parallelism,
            slot_sharing_group: "default".into(),
            cores: None,
            body,
            fixed_parallelism: false,
        });
        self.vertices.len() - 1
    }

    /// Adds an edge carrying the records of operator `from` (in vertex
    /// `source`) to vertex `target`.
    fn add_edge(
        &mut self,
        (source, from): (usize, usize),
        target: usize,
        kind: EdgeKind,
        format: RecordFormat,
    ) -> usize {
        self.edges.push(PlanEdge { source, source_op: from, target, kind, format });
        self.edges.len() - 1
    }

    /// Adds an input edge `edge` feeding `entry` to vertex `vertex`.
    fn add_entry(&mut self, vertex: usize, edge: usize, entry: Arc<dyn EntryFactory>) {
        if let VertexPlan::Inputs(entries) = &mut self.vertices[vertex].body {
            entries.push((edge, entry));
        }
    }

    fn op_name(&self, op: usize) -> String {
        self.ops[op].name.get()
    }

    /// A fresh default name: `kind-N`.
    fn default_name(&self, kind: &str) -> Name {
        Name::new(format!("{kind}-{}", self.ops.len()))
    }

    /// Sends the records of `port` (of operator `from.1` in vertex `from.0`)
    /// through a new edge to a new vertex of its own, routed by `routing`;
    /// returns the vertex and the port its records arrive at.
    fn exchange<T: Data>(
        &mut self,
        from: (usize, usize),
        port_in: &Port<T>,
        routing: Routing<T>,
        kind: EdgeKind,
        name: &Name,
    ) -> (usize, Port<T>) {
        let root = port::<T>();
        let vertex = self.add_vertex(name, self.parallelism, VertexPlan::Inputs(Vec::new()));
        let edge = self.add_edge(from, vertex, kind, T::format());
        attach(port_in, Arc::new(WriterFactory { edge, routing }));
        self.add_entry(vertex, edge, Arc::new(PortEntry { port: root.clone(), key: edge }));
        (vertex, root)
    }
}

/// Builds a job: sources, transforms and sinks over typed streams. Cheap handles
/// ([`Stream`]) refer to it; [`Dataflow::build`] checks it and makes the [`Job`].
pub struct Dataflow {
    plan: PlanRef,
}

impl std::fmt::Debug for Dataflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.plan.borrow();
        f.debug_struct("Dataflow").field("name", &p.name).field("vertices", &p.vertices.len()).finish()
    }
}

impl Dataflow {
    /// A dataflow called `name`, every operator at parallelism 1 unless set.
    pub fn new(name: &str) -> Self {
        Dataflow {
            plan: Rc::new(RefCell::new(Plan {
                name: name.to_string(),
                parallelism: 1,
                max_parallelism: DEFAULT_MAX_PARALLELISM,
                vertices: Vec::new(),
                edges: Vec::new(),
                ops: Vec::new(),
                sinks: 0,
                errors: Vec::new(),
                restore: None,
                allow_non_restored_state: false,
                snapshot_at_end: false,
                ingresses: Vec::new(),
                keyed_ingresses: Vec::new(),
            })),
        }
    }

    /// The parallelism of operators created from now on (each can set its own).
    #[must_use]
    pub fn parallelism(self, parallelism: u32) -> Self {
        {
            let mut p = self.plan.borrow_mut();
            if parallelism == 0 {
                let operator = p.name.clone();
                p.error(DataflowError::ZeroParallelism { operator });
            }
            p.parallelism = parallelism.max(1);
        }
        self
    }

    /// The job's key groups: the most subtasks any keyed operator may ever have,
    /// and the unit keyed state is redistributed in (default 128).
    #[must_use]
    pub fn max_parallelism(self, max: u32) -> Self {
        let mut p = self.plan.borrow_mut();
        if max != p.max_parallelism {
            let was = p.max_parallelism;
            for ingress in p.keyed_ingresses.clone() {
                p.error(DataflowError::MaxParallelismAfterKeyedIngress { ingress, was, now: max });
            }
        }
        p.max_parallelism = max;
        drop(p);
        self
    }

    /// Starts the job's state from `snapshot` (taken at any parallelism with the
    /// same maximum parallelism and operator names). State no operator of the
    /// job restores (its operator renamed, removed, or now keeping another kind
    /// of state) makes [`Dataflow::build`] fail, so none is dropped unnoticed;
    /// see [`Dataflow::allow_non_restored_state`].
    #[must_use]
    pub fn restore(self, snapshot: JobSnapshot) -> Self {
        self.plan.borrow_mut().restore = Some(Arc::new(snapshot));
        self
    }

    /// Restores what the job's operators own of the snapshot and drops the state
    /// no operator of the job restores (Flink's `--allowNonRestoredState`).
    #[must_use]
    pub fn allow_non_restored_state(self) -> Self {
        self.plan.borrow_mut().allow_non_restored_state = true;
        self
    }

    /// At the end of input, snapshots every operator's state instead of
    /// finishing (stop with a snapshot: no end-of-input results are emitted); the
    /// snapshot is in [`crate::JobResult::snapshot`].
    #[must_use]
    pub fn stop_with_snapshot(self) -> Self {
        self.plan.borrow_mut().snapshot_at_end = true;
        self
    }

    /// Starts a stream at a source vertex: `make` creates the source of each
    /// subtask, on its shard.
    pub fn source<T, S, F>(&self, name: &str, make: F) -> Stream<T>
    where
        T: Data,
        S: Source<T>,
        F: Fn(&TaskInfo) -> S + Send + Sync + 'static,
    {
        self.source_fallible(name, move |task: &TaskInfo| Ok(make(task)))
    }

    /// As [`Dataflow::source`], with a `make` that may fail (the task then fails).
    pub fn source_fallible<T, S, F>(&self, name: &str, make: F) -> Stream<T>
    where
        T: Data,
        S: Source<T>,
        F: Fn(&TaskInfo) -> Result<S, crate::OperatorError> + Send + Sync + 'static,
    {
        self.source_of_kind(name, "source", make)
    }

    /// A source vertex; `kind` says what it is in the execution plan.
    fn source_of_kind<T, S, F>(&self, name: &str, kind: &str, make: F) -> Stream<T>
    where
        T: Data,
        S: Source<T>,
        F: Fn(&TaskInfo) -> Result<S, crate::OperatorError> + Send + Sync + 'static,
    {
        let out = port::<T>();
        let name = Name::new(name);
        let node = SourceNode { name: name.clone(), make: Arc::new(make), port: out.clone(), _s: PhantomData };
        let mut p = self.plan.borrow_mut();
        let parallelism = p.parallelism;
        let vertex = p.add_vertex(&name, parallelism, VertexPlan::Source(Arc::new(node)));
        drop(p);
        // Its position is an operator list (`name/position`).
        Stream::head(&self.plan, name, kind, vertex, out).keeping(Keeps::Position)
    }

    /// A source emitting `f(r)` for r in `0..n`, each subtask its contiguous share.
    pub fn generate<T: Data>(&self, name: &str, n: u64, f: impl Fn(u64) -> T + Send + Sync + 'static) -> Stream<T> {
        let f = Arc::new(f);
        self.source(name, move |_: &TaskInfo| Generator { n, f: f.clone(), left: Runs::default(), _t: PhantomData })
    }

    /// A source emitting `items`: subtask i of p the items i, i+p, i+2p, …
    /// The items are collected here, when the dataflow is built (Flink's
    /// `fromCollection`): an endless iterator never returns; read one through
    /// [`Dataflow::source`] or [`Dataflow::generate`] instead.
    pub fn from_iter<T: Data>(&self, name: &str, items: impl IntoIterator<Item = T>) -> Stream<T> {
        let items: Arc<Vec<T>> = Arc::new(items.into_iter().collect());
        self.source(name, move |_: &TaskInfo| FromItems { items: items.clone(), left: Runs::default() })
    }

    /// A source a service pushes records into through the returned handle, with
    /// one queue of `capacity` records per source subtask (at the dataflow's
    /// parallelism). See [`IngressHandle`].
    pub fn ingress<T: Data>(&self, name: &str, capacity: usize) -> (Stream<T>, IngressHandle<T>) {
        self.ingress_bounded(name, QueueBound::records(capacity))
    }

    /// [`Dataflow::ingress`] with queues within `bound`: records of any size
    /// (strings, requests with bodies) bounded by bytes, count or both.
    ///
    /// ```
    /// # use shardflow_engine::{Dataflow, QueueBound};
    /// let df = Dataflow::new("service");
    /// // Each source subtask's queue holds at most 256 KiB of requests.
    /// let (requests, ingress) = df.ingress_bounded::<String>("requests", QueueBound::bytes(256 << 10));
    /// # drop((requests, ingress));
    /// ```
    pub fn ingress_bounded<T: Data>(&self, name: &str, bound: QueueBound) -> (Stream<T>, IngressHandle<T>) {
        let parallelism = self.plan.borrow().parallelism;
        self.ingress_with(name, bound, parallelism)
    }

    /// [`Dataflow::ingress_bounded`] with `parallelism` source subtasks.
    pub fn ingress_with<T: Data>(
        &self,
        name: &str,
        bound: QueueBound,
        parallelism: u32,
    ) -> (Stream<T>, IngressHandle<T>) {
        self.ingress_routed(name, bound, parallelism, None)
    }

    /// A source a service pushes records into, partitioned by `key` as they
    /// are pushed: each record goes to the queue of the source subtask that
    /// owns its key's key group, so the stream is keyed from its source on
    /// (as `key_by` would key it) and the keyed operators that follow chain
    /// into the source's subtasks: no exchange, no hop between cores for a
    /// request (Flink's `reinterpretAsKeyedStream` for a pre-partitioned
    /// source). Queues within `bound`, one per subtask at the dataflow's
    /// parallelism, which the keyed operators keep (another is a typed error
    /// at [`Dataflow::build`]; so is a `max_parallelism` set after this).
    /// `key` runs in the pushing thread: a panic there unwinds into the caller
    /// of `push`, with nothing queued and the job untouched.
    ///
    /// ```
    /// # use shardflow_engine::{Dataflow, QueueBound};
    /// let df = Dataflow::new("totals").parallelism(2);
    /// let (amounts, mut ingress) =
    ///     df.ingress_keyed::<u64, (u64, u64), _>("amounts", QueueBound::records(1024), |a: &(u64, u64)| a.0);
    /// let totals = amounts.reduce(|t: &(u64, u64), a: &(u64, u64)| (t.0, t.1 + a.1)).egress(1024);
    /// ingress.push((7, 100)).unwrap(); // to the subtask that owns key 7
    /// # drop((totals, ingress));
    /// ```
    pub fn ingress_keyed<K: Key, T: Data, F>(
        &self,
        name: &str,
        bound: QueueBound,
        key: F,
    ) -> (KeyedStream<K, T, KeyBy<F>>, KeyedIngressHandle<T>)
    where
        F: Fn(&T::Borrowed) -> K + Send + Sync + 'static,
    {
        let (parallelism, max) = {
            let p = self.plan.borrow();
            (p.parallelism, p.max_parallelism)
        };
        let selector = Arc::new(KeyBy(key));
        let router = KeyGroupRouter::new(parallelism, max);
        let by_key = selector.clone();
        let route: sources::IngressRoute<T> =
            Box::new(move |r: &T| router.subtask(KeySelector::<K, T>::with_key(&*by_key, r.borrow(), key_hash)));
        let (stream, handle) = self.ingress_routed(name, bound, parallelism, Some(route));
        self.plan.borrow_mut().keyed_ingresses.push(name.to_string());
        let keyed = KeyedStream { stream: stream.pinned(), selector, _k: PhantomData };
        (keyed, KeyedIngressHandle::new(handle))
    }

    fn ingress_routed<T: Data>(
        &self,
        name: &str,
        bound: QueueBound,
        parallelism: u32,
        route: Option<sources::IngressRoute<T>>,
    ) -> (Stream<T>, IngressHandle<T>) {
        let (handle, queues) = sources::ingress::<T>(name, bound, parallelism, route);
        self.plan.borrow_mut().ingresses.push(queues.closer());
        let queues = Arc::new(queues);
        let who = name.to_string();
        let stream = self.source_of_kind(name, "ingress", move |task: &TaskInfo| {
            queues.source(task.subtask, task.job_start).ok_or_else(|| {
                crate::OperatorError::User(format!("ingress '{who}' has no queue for subtask {}", task.subtask))
            })
        });
        {
            let mut p = self.plan.borrow_mut();
            let v = &mut p.vertices[stream.vertex];
            v.parallelism = parallelism.max(1);
            v.fixed_parallelism = true;
        }
        (stream, handle)
    }

    /// Checks the dataflow and makes the job: every stream consumed, at least
    /// one sink, unique operator names, forward edges between equal
    /// parallelisms.
    pub fn build(&self) -> Result<Job, EngineError> {
        let p = self.plan.borrow();
        if let Some(e) = p.errors.first() {
            return Err(e.clone().into());
        }
        let mut seen = HashSet::new();
        for op in &p.ops {
            let name = op.name.get();
            if name.contains('/') {
                return Err(DataflowError::SlashInName { name }.into());
            }
            if !seen.insert(name.clone()) {
                return Err(DataflowError::DuplicateName { name }.into());
            }
            if op.consumers.as_ref().is_some_and(|c| c() == 0) {
                return Err(DataflowError::Unconsumed { operator: name }.into());
            }
        }
        if p.sinks == 0 {
            return Err(DataflowError::NoSink { job: p.name.clone() }.into());
        }
        let restore = restored_state(&p)?;
        let mut graph = JobGraph::new(&p.name);
        graph.max_parallelism = p.max_parallelism;
        let mut hints = BTreeMap::new();
        for (i, v) in p.vertices.iter().enumerate() {
            let name = v.name.get();
            if let Some(cores) = &v.cores {
                hints.insert(name.clone(), cores.clone());
            }
            graph.add_vertex(JobVertex {
                name,
                chain: vec![OperatorSpec::new(JOB_OPERATOR, Params::new().with(VERTEX_PARAM, i).to_bytes())],
                parallelism: v.parallelism,
                slot_sharing_group: v.slot_sharing_group.clone(),
            });
        }
        for e in &p.edges {
            let (up, down) = (&p.vertices[e.source], &p.vertices[e.target]);
            let partitioner = match e.kind {
                EdgeKind::Auto if up.parallelism == down.parallelism => PartitionerKind::Forward,
                EdgeKind::Auto => PartitionerKind::Rebalance,
                EdgeKind::Fixed(PartitionerKind::Forward) | EdgeKind::Pinned if up.parallelism != down.parallelism => {
                    return Err(DataflowError::ForwardMismatch {
                        from: up.name.get(),
                        upstream: up.parallelism,
                        to: down.name.get(),
                        downstream: down.parallelism,
                    }
                    .into())
                }
                EdgeKind::Fixed(k) => k,
                EdgeKind::Pinned => PartitionerKind::Forward,
            };
            graph.connect_with(VertexId(e.source as u32), VertexId(e.target as u32), partitioner, e.format.clone());
        }
        let plan = JobPlan {
            vertices: p.vertices.iter().map(|v| v.body.clone()).collect(),
            restore,
            snapshot_at_end: p.snapshot_at_end,
            ingresses: p.ingresses.clone(),
        };
        let execution = Arc::new(ExecutionPlan::of(&p, &graph));
        Ok(Job { graph, plan: Arc::new(plan), hints, execution })
    }
}

/// Whether snapshot entry `entry` is operator `operator`'s: `Some("")` for
/// its keyed state, `Some("/list")` for one of its lists.
fn entry_of<'e>(entry: &'e str, operator: &str) -> Option<&'e str> {
    entry.strip_prefix(operator).filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The snapshot job `p` restores, checked against its operators: each state
/// of the snapshot must reach an operator that restores it — keyed state (in
/// key groups, the job's) an operator of that name keeping keyed state, an
/// operator list (`operator/list`) an operator of that name keeping lists.
/// State no operator restores is an error, or dropped where the dataflow
/// allows it.
fn restored_state(p: &Plan) -> Result<Option<Arc<JobSnapshot>>, DataflowError> {
    let Some(snapshot) = &p.restore else { return Ok(None) };
    let owner = |entry: &str, s: &OperatorSnapshot| {
        p.ops.iter().find(|op| match entry_of(entry, &op.name.get()) {
            Some("") => {
                matches!(op.keeps, Keeps::Keyed | Keeps::KeyedAndLists)
                    || s.key_groups.is_empty() && s.operator_state.is_empty()
            }
            Some(_) => matches!(op.keeps, Keeps::Lists | Keeps::Position | Keeps::KeyedAndLists),
            None => false,
        })
    };
    let mut unowned = Vec::new();
    for (entry, s) in &snapshot.operators {
        match owner(entry, s) {
            None => unowned.push(entry.clone()),
            Some(op) if !s.key_groups.is_empty() && s.max_parallelism != p.max_parallelism => {
                return Err(DataflowError::RestoreKeyGroups {
                    operator: op.name.get(),
                    snapshot: s.max_parallelism,
                    job: p.max_parallelism,
                })
            }
            Some(_) => {}
        }
    }
    if unowned.is_empty() {
        return Ok(Some(snapshot.clone()));
    }
    if !p.allow_non_restored_state {
        // Where the state was meant to go: stateful operators the snapshot has
        // nothing for (a generated name that moved, such as `count-1` now
        // `count-2`, shows here).
        let restores_nothing = |op: &&PlanOp| {
            let name = op.name.get();
            !snapshot.operators.keys().any(|e| entry_of(e, &name).is_some())
        };
        // A source's position is not state the job's logic keeps.
        let stateful = p.ops.iter().filter(|op| !matches!(op.keeps, Keeps::Nothing | Keeps::Position));
        let unrestored = stateful.filter(restores_nothing).map(|op| op.name.get()).collect();
        return Err(DataflowError::UnownedState { job: p.name.clone(), state: unowned, unrestored });
    }
    let mut kept = (**snapshot).clone();
    kept.operators.retain(|entry, _| !unowned.contains(entry));
    Ok(Some(Arc::new(kept)))
}

/// The operator name every vertex of a typed job carries in its graph: the
/// job's catalog name follows (`job:<name>`), its vertex index is a parameter.
pub(crate) const JOB_OPERATOR: &str = "job:";
/// The parameter naming a vertex of its job.
pub(crate) const VERTEX_PARAM: &str = "vertex";

/// Registers a new operator in the plan and returns its index.
pub(crate) fn add_op(
    plan: &mut Plan,
    name: Name,
    kind: &str,
    vertex: usize,
    after: Option<usize>,
    consumers: Option<Box<dyn Fn() -> usize>>,
    rehome: Option<Rehome>,
) -> usize {
    let kind = kind.to_string();
    plan.ops.push(PlanOp {
        name,
        kind,
        vertex,
        after,
        consumers,
        rehome,
        keeps: Keeps::Nothing,
        sides: None,
        side_of: None,
    });
    plan.ops.len() - 1
}

/// The consumer count of `port`, as a check for [`Dataflow::build`].
pub(crate) fn consumer_check<T: Data>(port: &Port<T>) -> Box<dyn Fn() -> usize> {
    let port = port.clone();
    Box::new(move || consumers(&port))
}

/// Detaches `factory` from `port`.
pub(crate) fn detach<T: Data>(port: &Port<T>, factory: &Arc<dyn NodeFactory<T>>) {
    let mut consumers = port.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    consumers.retain(|c| !Arc::ptr_eq(c, factory));
}
