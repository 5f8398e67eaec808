//! Building a vertex's body on its task's shard: each operator of the job has a
//! factory (`Send + Sync`, shared by every subtask) that builds its `!Send`
//! collector there, attached to the collectors its stream feeds.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use crate::data::Data;
use crate::error::EngineError;
use crate::runtime::collector::{
    Collector, Failure, FirstInput, Lifecycle, SecondInput, Shared, SharedCollector, SharedLifecycle, TaskInfo, Tee,
};
use crate::runtime::output::{Output, Partition};
use crate::runtime::state::JobSnapshot;

/// What a vertex's operators are built with, on the task's shard.
pub(crate) struct BuildContext<'a> {
    /// The task.
    pub(crate) task: &'a TaskInfo,
    /// The vertex's result partitions, by job-graph edge.
    pub(crate) partitions: HashMap<usize, Partition>,
    /// Where record calls keep their first failure.
    pub(crate) failure: Failure,
    /// Operators with a lifecycle, in the order they were built (downstream first).
    pub(crate) lifecycles: Vec<Box<dyn Lifecycle>>,
    /// Outputs besides the partitions that the task waits on (bounded sinks).
    pub(crate) outputs: Vec<Box<dyn Output>>,
    /// The snapshot the job restores from, if any.
    pub(crate) restore: Option<Arc<JobSnapshot>>,
    /// The job's count of records its sources produced.
    pub(crate) progress: Arc<AtomicU64>,
}

impl BuildContext<'_> {
    /// The partition of outgoing edge `edge`.
    pub(crate) fn partition(&self, edge: usize) -> Result<Partition, EngineError> {
        self.partitions.get(&edge).cloned().ok_or_else(|| EngineError::InvalidDeployment {
            reason: format!("the deployment has no output for edge {edge}"),
        })
    }

    /// Every partition of the task (what a poll or a chunk of large records
    /// stays within).
    pub(crate) fn all_partitions(&self) -> Vec<Partition> {
        self.partitions.values().cloned().collect()
    }

    /// Registers `op`'s lifecycle and returns its record path.
    pub(crate) fn stateful<T: Data, O>(&mut self, name: &str, op: O) -> Box<dyn Collector<T>>
    where
        O: Lifecycle + 'static,
        SharedCollector<O>: Collector<T>,
    {
        let shared: Shared<O> = std::rc::Rc::new(std::cell::RefCell::new(op));
        self.lifecycles.push(Box::new(SharedLifecycle(shared.clone(), name.to_string())));
        Box::new(SharedCollector(shared))
    }

    /// As [`Self::stateful`] for a two-input operator: its lifecycle, and the
    /// record path of each input.
    pub(crate) fn stateful_two_inputs<A: Data, B: Data, O>(
        &mut self,
        name: &str,
        op: O,
    ) -> (Box<dyn Collector<A>>, Box<dyn Collector<B>>)
    where
        O: Lifecycle + 'static,
        FirstInput<O>: Collector<A>,
        SecondInput<O>: Collector<B>,
    {
        let shared: Shared<O> = std::rc::Rc::new(std::cell::RefCell::new(op));
        self.lifecycles.push(Box::new(SharedLifecycle(shared.clone(), name.to_string())));
        (Box::new(FirstInput(shared.clone())), Box::new(SecondInput(shared)))
    }
}

/// An operator's name: unique in its job, the id of its state in snapshots.
/// Shared between the job builder (which may rename the operator until the job
/// is built) and the factory.
#[derive(Clone, Debug, Default)]
pub(crate) struct Name(Arc<Mutex<String>>);

impl Name {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Name(Arc::new(Mutex::new(name.into())))
    }
    pub(crate) fn get(&self) -> String {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
    pub(crate) fn set(&self, name: &str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = name.to_string();
    }
}

/// Builds one operator's collector for a subtask.
pub(crate) trait NodeFactory<T: Data>: Send + Sync {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError>;
}

/// The consumers attached to a stream, filled in while the job is built.
pub(crate) type Port<T> = Arc<Mutex<Vec<Arc<dyn NodeFactory<T>>>>>;

/// A port with no consumer yet.
pub(crate) fn port<T: Data>() -> Port<T> {
    Arc::new(Mutex::new(Vec::new()))
}

/// Attaches `consumer` to `port`.
pub(crate) fn attach<T: Data>(port: &Port<T>, consumer: Arc<dyn NodeFactory<T>>) {
    port.lock().unwrap_or_else(PoisonError::into_inner).push(consumer);
}

/// How many consumers `port` has.
pub(crate) fn consumers<T: Data>(port: &Port<T>) -> usize {
    port.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// The collector that feeds every consumer of `port`.
pub(crate) fn build_port<T: Data>(
    port: &Port<T>,
    ctx: &mut BuildContext<'_>,
) -> Result<Box<dyn Collector<T>>, EngineError> {
    let consumers: Vec<Arc<dyn NodeFactory<T>>> = port.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match consumers.len() {
        0 => Err(EngineError::InvalidDeployment { reason: "a stream of the job has no consumer".into() }),
        1 => consumers[0].build(ctx),
        _ => {
            let outs = consumers.iter().map(|c| c.build(ctx)).collect::<Result<Vec<_>, _>>()?;
            Ok(Box::new(Tee { outs }))
        }
    }
}
