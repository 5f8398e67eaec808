//! The shardflow engine: shards, the task runtime, operators and the embedded
//! engine (coordinator and one worker in the caller's process).
//!
//! An [`Engine`] runs one shard per chosen core: a glommio executor pinned to that
//! core, owning a segment pool and the tasks deployed into its slots. It is a
//! one-worker cluster in the caller's process: the coordinator state machine of
//! `shardflow-control` and a [`cluster::Worker`] owning the shards, joined by
//! in-process connections that carry the same frames as TCP. A [`Job`] (built with
//! [`JobBuilder`] or from a raw [`JobGraph`]) names its operators by registered name
//! plus config bytes; the engine checks it, the coordinator validates and places
//! every subtask in a slot ([`PlacementStrategy`]) and sends one deployment
//! descriptor per subtask; the worker reserves network memory, wires the channels
//! and deploys to the shards. Each task pulls buffers from its input gate, runs
//! records through its chain of operators by direct calls, and writes the result
//! into its partitions. Sinks hand their results back in the [`JobResult`].
//!
//! ```text
//!  submit(Job) ─► check ─► SubmitJob ─► coordinator: validate ─► place ─► RequestSlot, DeployTask
//!                                                                                │
//!        shard 0 (core a)                      shard 1 (core b)     worker: reserve, wire
//!   source[0] ─► chain ─► partition ─┬─local──► gate ─► chain ─► sink[0]        ▼
//!                                    └─SPSC ring (credits)──────► gate ─► sink[1] …
//!   task states (UpdateTaskExecutionState) ─► coordinator ─► JobHandle::wait (WaitJob)
//! ```
//!
//! Invariants: shard-local objects are `!Send` and created on their shard; types that
//! cross threads say so; nothing on the data path takes a lock or allocates a
//! segment beyond the budget reserved at deployment; a failing or panicking task is
//! a FAILED subtask with its cause, never a hang.
//!
//! ```no_run
//! use shardflow_engine::{ops, Engine, JobBuilder, PartitionerKind};
//!
//! let engine = Engine::builder().shards(2).build()?;
//! let job = JobBuilder::new("exchange")
//!     .source("source", ops::generator(1_000_000, ops::KeyGen::Golden, ops::ValueGen::Index), 2)
//!     .connect(PartitionerKind::Hash, "sink", 2)
//!     .then(ops::count_sink())
//!     .build();
//! let result = engine.run(job)?;
//! assert_eq!(result.count().0, 1_000_000);
//! println!("{}", result.placement);
//! # Ok::<(), shardflow_engine::EngineError>(())
//! ```

#![forbid(unsafe_code)]

// The import graph runs one way, bottom to top (`tests/layers.rs` checks it):
// error, record → operator → registry → ops → config → task, mailbox → shard →
// cluster → shared (the engine's inner state) → job → engine → jobs (the named
// benchmark jobs).
pub mod cluster;
mod config;
mod engine;
mod error;
mod job;
pub mod jobs;
mod mailbox;
mod operator;
pub mod ops;
mod record;
mod registry;
mod shard;
mod shared;
mod task;

pub use config::{online_cores, Cores, EngineBuilder, EngineConfig, IdlePolicy};
pub use engine::{Engine, PoolUsage, ShardInfo};
pub use error::{EngineError, OperatorError};
pub use job::{CollectHandle, Job, JobBuilder, JobHandle, JobResult, SubtaskReport};
pub use operator::{ChainHead, Operator, SinkOutput, SourceOperator, SourceStatus, TaskInfo};
pub use record::{OpConfig, Record};
pub use registry::{JobResources, OperatorRegistry};
pub use shardflow_control::{protocol, CoordinatorConfig, ResourceManagerId, RestartStrategy};
pub use shardflow_control::{AllocationId, AttemptId, ExecutionVertexId, JobMasterId, ShardId, SlotId, WorkerId};
pub use shardflow_control::{
    ControlError, ExecutionState, JobGraph, JobId, JobStatus, JobVertex, OperatorSpec, PartitionerKind,
    PlacementStrategy, SlotAssignment, VertexId,
};
pub use shardflow_netstack::fmix64;

#[cfg(test)]
mod auto_traits {
    use super::*;
    fn is_send<T: Send>() {}
    fn is_sync<T: Sync>() {}

    #[test]
    fn cross_thread_types_are_send() {
        is_send::<Engine>();
        is_sync::<Engine>();
        is_send::<JobHandle>();
        is_send::<Job>();
        is_send::<JobResult>();
        is_send::<CollectHandle>();
        is_sync::<OperatorRegistry>();
        is_send::<EngineBuilder>();
    }
}
