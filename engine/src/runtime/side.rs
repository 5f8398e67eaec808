//! Side outputs (Flink's `OutputTag`): besides its main stream, an operator
//! that emits through an [`Emitter`] (`flat_map`, the process functions) can
//! emit records of other types to streams named by tags — records a function
//! rejects, late data, alerts. The dataflow asks for a tag's stream with
//! [`crate::Stream::side_output`]; records emitted to a tag no stream was
//! asked for are dropped, as Flink drops them.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use crate::data::Data;
use crate::error::{EngineError, OperatorError};
use crate::runtime::build::{build_port, BuildContext, Port};
use crate::runtime::collector::{Collector, Emitter, Failure};

/// Names a side output and the type `U` of its records.
///
/// ```
/// use shardflow_engine::{Dataflow, Emitter, Engine, OutputTag};
///
/// let rejected = OutputTag::<String>::new("rejected");
/// let df = Dataflow::new("parse");
/// let parsed = df.from_iter("lines", ["1", "two", "3"].map(String::from)).flat_map({
///     let rejected = rejected.clone();
///     move |line: &str, out: &mut Emitter<'_, u64>| match line.parse() {
///         Ok(n) => out.emit(n),
///         Err(_) => out.emit_side_ref(&rejected, line),
///     }
/// });
/// let numbers = parsed.collect();
/// let bad = parsed.side_output(&rejected).collect();
/// let engine = Engine::builder().shards(1).build()?;
/// engine.run(df.build()?)?;
/// assert_eq!(numbers.take(), [1, 3]);
/// assert_eq!(bad.take(), ["two"]);
/// # Ok::<(), shardflow_engine::EngineError>(())
/// ```
pub struct OutputTag<U> {
    id: Arc<str>,
    _u: PhantomData<fn() -> U>,
}

impl<U> Clone for OutputTag<U> {
    fn clone(&self) -> Self {
        OutputTag { id: self.id.clone(), _u: PhantomData }
    }
}

impl<U> std::fmt::Debug for OutputTag<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OutputTag").field(&self.id).field(&std::any::type_name::<U>()).finish()
    }
}

impl<U: Data> OutputTag<U> {
    /// The tag `id` (unique among one operator's side outputs).
    pub fn new(id: &str) -> Self {
        OutputTag { id: id.into(), _u: PhantomData }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Builds a side port's collector for a subtask: [`build_side`] for its type.
type BuildSide = fn(&(dyn Any + Send), &mut BuildContext<'_>) -> Result<Box<dyn Any>, EngineError>;

/// A side output the dataflow asked for: its tag, record type and port.
struct SidePort {
    id: Arc<str>,
    type_name: &'static str,
    /// The `Port<U>` its consumers attach to.
    port: Box<dyn Any + Send>,
    build: BuildSide,
}

/// Builds the collector of side port `port` (a `Port<U>`) as a
/// `Box<dyn Collector<U>>` in an `Any`.
fn build_side<U: Data>(port: &(dyn Any + Send), ctx: &mut BuildContext<'_>) -> Result<Box<dyn Any>, EngineError> {
    let port = port.downcast_ref::<Port<U>>().ok_or_else(|| EngineError::InvalidDeployment {
        reason: "a side output's port does not hold its record type".into(),
    })?;
    let collector: Box<dyn Collector<U>> = build_port(port, ctx)?;
    Ok(Box::new(collector))
}

/// An operator's outputs as the job is built: its main stream's port and the
/// side outputs asked for (filled in until the job is built).
pub(crate) struct OutPorts<O: Data> {
    pub(crate) main: Port<O>,
    pub(crate) sides: SidePorts,
}

impl<O: Data> Clone for OutPorts<O> {
    fn clone(&self) -> Self {
        OutPorts { main: self.main.clone(), sides: self.sides.clone() }
    }
}

/// The side outputs of one operator asked for so far.
#[derive(Clone, Default)]
pub(crate) struct SidePorts(Arc<Mutex<Vec<SidePort>>>);

impl SidePorts {
    /// The port of side output `tag`: the one asked for before, or a new one;
    /// or, if the tag was asked for before with another record type, that
    /// type's name.
    pub(crate) fn port<U: Data>(&self, tag: &OutputTag<U>) -> Result<Port<U>, &'static str> {
        let mut sides = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(side) = sides.iter().find(|s| s.id == tag.id) {
            return match side.port.downcast_ref::<Port<U>>() {
                Some(port) => Ok(port.clone()),
                None => Err(side.type_name),
            };
        }
        let port = crate::runtime::build::port::<U>();
        sides.push(SidePort {
            id: tag.id.clone(),
            type_name: std::any::type_name::<U>(),
            port: Box::new(port.clone()),
            build: build_side::<U>,
        });
        Ok(port)
    }

    /// Whether any side output was asked for.
    pub(crate) fn any(&self) -> bool {
        !self.0.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<SideOutputs, EngineError> {
        let sides = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let outs = sides
            .iter()
            .map(|s| Ok(SideOut { id: s.id.clone(), type_name: s.type_name, collector: (s.build)(&*s.port, ctx)? }))
            .collect::<Result<_, EngineError>>()?;
        Ok(SideOutputs { outs, failure: ctx.failure.clone() })
    }
}

impl<O: Data> OutPorts<O> {
    /// Outputs with no side output asked for yet.
    pub(crate) fn new(main: Port<O>) -> Self {
        OutPorts { main, sides: SidePorts::default() }
    }

    /// The collectors of the main stream and of every side output, for a subtask.
    pub(crate) fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Outputs<O>, EngineError> {
        let main = build_port(&self.main, ctx)?;
        let side = self.sides.build(ctx)?;
        Ok(Outputs { main, side, batch: Vec::new(), gathering: false })
    }
}

/// One side output of a subtask: its tag and collector.
struct SideOut {
    id: Arc<str>,
    type_name: &'static str,
    /// A `Box<dyn Collector<U>>`.
    collector: Box<dyn Any>,
}

/// The side outputs of an operator's subtask.
pub(crate) struct SideOutputs {
    outs: Vec<SideOut>,
    failure: Failure,
}

impl SideOutputs {
    /// Hands `record` to side output `tag`, if the dataflow asked for it; a
    /// record of another type than the one asked for fails the task.
    pub(crate) fn collect<U: Data>(&mut self, tag: &OutputTag<U>, record: &U::Borrowed) {
        let Some(side) = self.outs.iter_mut().find(|s| Arc::ptr_eq(&s.id, &tag.id) || s.id == tag.id) else {
            return;
        };
        match side.collector.downcast_mut::<Box<dyn Collector<U>>>() {
            Some(c) => c.collect(record),
            None => self.failure.set(OperatorError::User(format!(
                "side output '{}' carries {}, and a function emitted {} to it",
                side.id,
                side.type_name,
                std::any::type_name::<U>()
            ))),
        }
    }
}

/// An operator's outputs on its subtask: the main stream and the side outputs.
pub(crate) struct Outputs<O: Data> {
    pub(crate) main: Box<dyn Collector<O>>,
    pub(crate) side: SideOutputs,
    /// Plain records emitted while the operator handles a batch, handed on as
    /// batches.
    batch: Vec<O>,
    /// Between [`Self::gather`] and [`Self::hand_on`], for plain records.
    gathering: bool,
}

impl<O: Data> Outputs<O> {
    /// An emitter onto these outputs (one that gathers, while they gather).
    #[inline]
    pub(crate) fn emitter(&mut self) -> Emitter<'_, O> {
        match self.gathering {
            true => Emitter::batching(&mut *self.main, &mut self.side, &mut self.batch),
            false => Emitter::with_side(&mut *self.main, &mut self.side),
        }
    }

    /// The operator handles a batch: until [`Self::hand_on`], the plain
    /// records its emitters are given gather, and go on as batches (a full one
    /// at once). Order on each output stays; a side output's records may go on
    /// before main records emitted ahead of them.
    #[inline]
    pub(crate) fn gather(&mut self) {
        self.gathering = O::POD;
    }

    /// Hands on what gathered, and gathers no more.
    #[inline]
    pub(crate) fn hand_on(&mut self) {
        self.gathering = false;
        if !self.batch.is_empty() {
            self.main.collect_batch(&self.batch);
            self.batch.clear();
        }
    }
}
