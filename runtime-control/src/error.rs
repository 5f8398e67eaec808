//! Errors of the control model: invalid job graphs, illegal transitions, placement.

use thiserror::Error;

use crate::state::{ExecutionState, JobStatus};

/// Everything the control model refuses, each naming the problem.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The graph has no vertex.
    #[error("invalid job graph: it has no vertices")]
    EmptyGraph,
    /// A vertex has parallelism 0.
    #[error("invalid job graph: vertex '{vertex}' has parallelism 0 (must be at least 1)")]
    ZeroParallelism {
        /// Vertex name.
        vertex: String,
    },
    /// A vertex runs more subtasks than the job has key groups.
    #[error("invalid job graph: vertex '{vertex}' has parallelism {parallelism}, above the job's maximum parallelism (key groups) of {max_parallelism}")]
    ParallelismAboveMax {
        /// Vertex name.
        vertex: String,
        /// Its parallelism.
        parallelism: u32,
        /// The job's key groups.
        max_parallelism: u32,
    },
    /// The job's maximum parallelism is out of range.
    #[error("invalid job graph: maximum parallelism {max_parallelism} is not within 1..=32768")]
    InvalidMaxParallelism {
        /// The value given.
        max_parallelism: u32,
    },
    /// An edge's record format differs from what the process's operators read or
    /// write (two builds disagree about a type).
    #[error("invalid job graph: edge '{edge}' carries {submitted}, but this process's operators use {here}")]
    FormatMismatch {
        /// The edge, as "source -> target".
        edge: String,
        /// The format in the submitted graph.
        submitted: String,
        /// The format this process derives.
        here: String,
    },
    /// Two vertices share a name.
    #[error("invalid job graph: two vertices are named '{vertex}'")]
    DuplicateVertexName {
        /// The name.
        vertex: String,
    },
    /// A vertex has no operator.
    #[error("invalid job graph: vertex '{vertex}' has an empty operator chain")]
    EmptyChain {
        /// Vertex name.
        vertex: String,
    },
    /// An operator name is not in the registry.
    #[error("invalid job graph: vertex '{vertex}' uses unknown operator '{operator}'")]
    UnknownOperator {
        /// Vertex name.
        vertex: String,
        /// The unknown name.
        operator: String,
    },
    /// An edge points at a vertex that does not exist.
    #[error("invalid job graph: edge {edge} refers to missing vertex v{missing}")]
    EdgeToMissingVertex {
        /// Index of the edge.
        edge: usize,
        /// The missing vertex index.
        missing: u32,
    },
    /// The edges form a cycle.
    #[error("invalid job graph: cycle through vertices {vertices:?}")]
    Cycle {
        /// Names of the vertices on cycles.
        vertices: Vec<String>,
    },
    /// A pointwise edge joins vertices of different parallelism.
    #[error("invalid job graph: pointwise edge '{source_vertex}' -> '{target}' needs equal parallelism, got {source_parallelism} and {target_parallelism}")]
    PointwiseParallelismMismatch {
        /// Producer vertex.
        source_vertex: String,
        /// Consumer vertex.
        target: String,
        /// Producer parallelism.
        source_parallelism: u32,
        /// Consumer parallelism.
        target_parallelism: u32,
    },
    /// A forward partitioner on an all-to-all edge, or vice versa.
    #[error("invalid job graph: edge '{source_vertex}' -> '{target}': {reason}")]
    InvalidEdge {
        /// Producer vertex.
        source_vertex: String,
        /// Consumer vertex.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// An execution state change that is not a legal edge.
    #[error("illegal execution state transition {from} -> {to}")]
    IllegalExecutionTransition {
        /// Current state.
        from: ExecutionState,
        /// Requested state.
        to: ExecutionState,
    },
    /// A job status change that is not a legal edge.
    #[error("illegal job status transition {from} -> {to}")]
    IllegalJobTransition {
        /// Current status.
        from: JobStatus,
        /// Requested status.
        to: JobStatus,
    },
    /// A job master phase change that is not a legal edge.
    #[error("illegal job master phase transition {from} -> {to}")]
    IllegalPhaseTransition {
        /// Current phase.
        from: String,
        /// Requested phase.
        to: String,
    },
    /// A state event names an attempt the graph does not have (a stale attempt).
    #[error("unknown execution attempt {attempt}")]
    UnknownAttempt {
        /// The attempt, as text.
        attempt: String,
    },
    /// A restart strategy could not be parsed.
    #[error("invalid restart strategy '{spec}': {reason}")]
    InvalidRestartStrategy {
        /// The text given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A worker registered under a resource id that is already registered.
    #[error("a worker with resource id '{resource_id}' is already registered")]
    DuplicateRegistration {
        /// The resource id.
        resource_id: String,
    },
    /// The job needs data channels between workers, which this build cannot run yet.
    #[error("edge '{edge}' would need data channels between workers, and remote channels are not built yet; no single worker has {required} free slots for the whole job")]
    RemoteChannels {
        /// The edge, as "source -> target".
        edge: String,
        /// Slots the job needs.
        required: usize,
    },
    /// An operator's configuration is invalid.
    #[error("invalid job graph: vertex '{vertex}': {reason}")]
    InvalidOperator {
        /// Vertex name.
        vertex: String,
        /// What is wrong.
        reason: String,
    },
    /// The operator catalog panicked while checking the job (a bug in an
    /// operator factory of the process).
    #[error("invalid job graph: checking its operators panicked: {message}")]
    CatalogPanicked {
        /// The panic's message.
        message: String,
    },
    /// Not supported by this build.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Not enough free slots for the job.
    #[error("not enough task slots: the job needs {required} slots, {available} are free")]
    NotEnoughSlots {
        /// Slots the job needs under the chosen strategy.
        required: usize,
        /// Free slots.
        available: usize,
    },
    /// An explicit placement names a core that has no slot.
    #[error("explicit placement puts vertex '{vertex}' on core {core}, but no shard runs on that core (cores with slots: {available:?})")]
    UnknownCore {
        /// Vertex name.
        vertex: String,
        /// The core asked for.
        core: usize,
        /// Cores that do have slots.
        available: Vec<usize>,
    },
    /// An explicit placement leaves a vertex out or names an unknown one.
    #[error("explicit placement: {reason}")]
    InvalidPlacementMap {
        /// What is wrong.
        reason: String,
    },
    /// An explicit map's core has no slot left for this vertex.
    #[error("explicit placement: core {core} has no free slot left for vertex '{vertex}'")]
    CoreFull {
        /// Vertex name.
        vertex: String,
        /// The core.
        core: usize,
    },
}
