//! The control model of shardflow, sans I/O: job graphs, their expansion into
//! execution graphs, the execution-state and job-status machines, and placement.
//!
//! A [`JobGraph`] names operators by registered name plus config bytes, so one
//! definition runs embedded and on a cluster. [`JobGraph::validate`] refuses bad
//! shapes with a [`ControlError`] naming the problem and returns a topological order;
//! [`ExecutionGraph::expand`] turns vertices into subtasks (attempts) whose states
//! follow [`ExecutionState`]'s legal edges while the job follows [`JobStatus`];
//! [`place`] maps subtasks to slots under a [`PlacementStrategy`].
//!
//! ```text
//!  JobGraph ──validate──► order ──expand──► ExecutionGraph ──on_state(events)──► JobStatus
//!      │                                         │
//!      └──────────── place(slots, strategy) ─────┴──► SlotAssignment (subtask → slot → core)
//! ```
//!
//! The control plane lives here too: [`protocol`] (rkyv frames and the gateway
//! messages), and the [`Coordinator`] state machine (Dispatcher, ResourceManager
//! with its [`SlotManager`], JobMasters, [`HeartbeatMonitor`], [`RestartTracker`]).
//!
//! Nothing here does I/O or reads a clock: events in, decisions out.
//!
//! ```
//! use shardflow_control::*;
//!
//! let mut g = JobGraph::new("wordcount");
//! let v = |name: &str| JobVertex {
//!     name: name.into(),
//!     chain: vec![OperatorSpec::new("map", vec![])],
//!     parallelism: 2,
//!     slot_sharing_group: "default".into(),
//! };
//! let src = g.add_vertex(v("source"));
//! let sink = g.add_vertex(v("sink"));
//! g.connect(src, sink, PartitionerKind::Hash);
//! let order = g.validate(&|_name| true)?;
//! let slots: Vec<SlotOffer> = (0..2)
//!     .map(|s| SlotOffer { slot: SlotId { worker: WorkerId(0), shard: ShardId(s), index: 0 }, core: s as usize })
//!     .collect();
//! let assignment = place(&g, &order, &slots, &PlacementStrategy::Spread)?;
//! assert_eq!(assignment.slots_used(), 2);
//! let eg = ExecutionGraph::expand(JobId(1), &g, &order);
//! assert_eq!(eg.status(), JobStatus::Created);
//! # Ok::<(), ControlError>(())
//! ```

#![forbid(unsafe_code)]

mod coordinator;
mod error;
mod execution_graph;
mod heartbeat;
mod ids;
mod job_graph;
mod job_store;
mod placement;
mod restart;
mod slot_manager;
mod state;

pub use coordinator::{
    panic_message, validate_job, CatalogError, ConnId, Coordinator, CoordinatorConfig, OperatorCatalog, Output,
};
pub use error::ControlError;
pub use execution_graph::{edge_channels, input_channels, subpartitions, ChannelSpec, ExecutionGraph, ExecutionVertex};
pub use heartbeat::HeartbeatMonitor;
pub use ids::{
    AllocationId, AttemptId, CheckpointId, ExecutionVertexId, JobId, JobMasterId, ResourceManagerId, ShardId, SlotId,
    VertexId, WorkerId,
};
pub use job_graph::{
    DistributionPattern, JobEdge, JobGraph, JobVertex, OperatorSpec, PartitionerKind, RecordEncoding, RecordFormat,
    ResultPartitionType, DEFAULT_MAX_PARALLELISM, MAX_KEY_GROUPS,
};
pub use job_store::{CompletedCheckpointPointer, JobRecord, JobRecordError, JOB_RECORD_VERSION};
pub use placement::{place, PlacementStrategy, SlotAssignment, SlotOffer, SubtaskPlacement};
pub use restart::{parse_duration, RestartDecision, RestartStrategy, RestartTracker};
pub use slot_manager::{SlotManager, WorkerEntry};
pub use state::{ExecutionState, JobStatus};

pub mod protocol;
