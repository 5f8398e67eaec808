//! The shardflow engine: shards, the typed task runtime and the embedded engine
//! (coordinator and one worker in the caller's process).
//!
//! A [`Dataflow`] builds a job over streams of the user's own record types
//! ([`Data`]: plain fixed-size data copied once and read in place, or rkyv
//! archives read with checked access): sources, transforms, keyed state in key
//! groups, two-input operators and sinks. An [`Engine`] runs one shard per
//! chosen core: a glommio executor pinned to that core, owning a segment pool and
//! the tasks deployed into its slots, which it schedules itself (a ready queue,
//! timers, a futex park when idle). It is a one-worker cluster in the caller's
//! process: the coordinator state machine of `shardflow-control` and a
//! [`cluster::Worker`] owning the shards, joined by in-process connections that
//! carry the same frames as TCP. The coordinator validates the job's graph
//! (every edge carries its record format), places every subtask in a slot
//! ([`PlacementStrategy`]) and sends one deployment descriptor per subtask; the
//! worker reserves network memory, wires the channels and deploys to the shards,
//! where each task builds its typed operator chain and runs it in a mailbox loop.
//!
//! A service embeds it at one of three depths: [`Engine::run`] (submit, wait for
//! the result); a running job fed through an [`IngressHandle`] and read through an
//! [`EgressHandle`] (several at once through an [`EgressSelect`]) from the
//! service's threads; or, for a host that owns its loop,
//! shard 0 on the host's own thread ([`EngineBuilder::build_hosted`]), whose tasks
//! run only when the host steps its [`HostedShard`].
//!
//! ```text
//!  Dataflow::build ─► Job (graph + typed plan) ─► submit ─► coordinator: validate ─► place ─► DeployTask
//!                                                                                       │
//!        shard 0 (core a)                              shard 1 (core b)        worker: reserve, wire
//!   source[0] ─► chain ─► partition ─┬─local──► gate ─► chain ─► sink[0]               ▼
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
//! use shardflow_engine::{Dataflow, Emitter, Engine};
//!
//! let engine = Engine::builder().shards(2).build()?;
//! let df = Dataflow::new("wordcount").parallelism(2);
//! let counts = df
//!     .from_iter("lines", vec!["a rose is a rose".to_string()])
//!     .flat_map(|line: &str, out: &mut Emitter<'_, String>| line.split(' ').for_each(|w| out.emit_ref(w)))
//!     .key_by_ref::<String, _>(|w: &str| w)
//!     .count_final()
//!     .collect();
//! let result = engine.run(df.build()?)?;
//! println!("{:?} in {:?}\n{}", counts.take(), result.duration(), result.placement);
//! # Ok::<(), shardflow_engine::EngineError>(())
//! ```

#![forbid(unsafe_code)]

// The import graph runs one way, bottom to top (`tests/layers.rs` checks it):
// error, cpu, dump, params, data → runtime → api (the typed dataflow API and the built
// job) → registry → config → mailbox → shard → cluster → shared (the engine's
// inner state) → job (handles and results) → engine → jobs (the named benchmark
// jobs).
mod api;
pub mod cluster;
mod config;
#[doc(hidden)]
pub mod cpu;
#[doc(hidden)]
pub mod data;
mod dump;
mod engine;
mod error;
mod job;
pub mod jobs;
mod mailbox;
mod params;
mod registry;
mod runtime;
mod shard;
mod shared;

pub use api::{
    ConnectedStreams, Dataflow, ExecutionPlan, Job, KeyedBroadcastStreams, KeyedConnectedStreams, KeyedStream,
    PlannedEdge, PlannedOperator, PlannedVertex, Sink, Stream, DEFAULT_MAX_PARALLELISM,
};
pub use config::{online_cores, Cores, EngineBuilder, EngineConfig, IdlePolicy};
pub use data::{key_hash, Data, Key};
pub use dump::{DumpWindow, ShardWindow, TaskShares, TaskWindow};
/// What [`EgressHandle::recv_either`] returns: a result of the first egress
/// (`Left`) or of the second (`Right`).
pub use either::Either;
pub use engine::{Engine, PoolUsage, ShardInfo};
pub use error::{DataflowError, EngineError, OperatorError, OrFail, SnapshotError};
pub use job::{JobHandle, JobResult, SubtaskReport, SubtaskTable};
pub use params::Params;
pub use registry::{JobCatalog, JobParams};
pub use runtime::bound::QueueBound;
pub use runtime::collector::{Emitter, SinkOutput, TaskInfo};
pub use runtime::keyed::{
    AggregatingState, Aggregator, BroadcastContext, Count, KeyedBroadcastProcessFunction, KeyedCoProcessFunction,
    KeyedContext, KeyedProcessFunction, ListState, MapState, Reduce, ReducingState, StateDeclarations, ValueState,
};
pub use runtime::ops::{CoProcessFunction, ListRef, ListStateHandle, OperatorContext, ProcessFunction};
pub use runtime::output::{KeyBy, KeyByRef, KeySelector};
pub use runtime::side::OutputTag;
pub use runtime::sinks::{CollectHandle, EgressHandle, EgressSelect};
pub use runtime::sources::{
    IngressHandle, KeyedIngressHandle, PushError, Source, SourceOutput, SourceStatus, SOURCE_BATCH,
};
pub use runtime::state::{key_group_range, subtask_of_key_group, JobSnapshot, OperatorSnapshot, OperatorSummary};
pub use shard::HostedShard;
pub use shardflow_control::{protocol, CoordinatorConfig, ResourceManagerId, RestartStrategy};
pub use shardflow_control::{AllocationId, AttemptId, ExecutionVertexId, JobMasterId, ShardId, SlotId, WorkerId};
pub use shardflow_control::{
    ControlError, ExecutionState, JobGraph, JobId, JobStatus, JobVertex, OperatorSpec, PartitionerKind,
    PlacementStrategy, RecordEncoding, RecordFormat, SlotAssignment, VertexId,
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
        is_send::<CollectHandle<String>>();
        is_send::<IngressHandle<String>>();
        is_send::<KeyedIngressHandle<String>>();
        is_send::<EgressHandle<String>>();
        is_send::<EgressSelect<'static, String>>();
        is_sync::<JobCatalog>();
        is_send::<EngineBuilder>();
    }

    /// Implemented twice for a `Send` type: naming the item is then ambiguous
    /// and does not compile (the `assert_not_impl` trick).
    trait AmbiguousIfSend<A> {
        fn item() {}
    }
    impl<T: ?Sized> AmbiguousIfSend<()> for T {}
    impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

    #[test]
    fn shard_local_types_are_not_send() {
        // A hosted shard is its host thread's: it cannot be moved to another.
        <HostedShard as AmbiguousIfSend<_>>::item();
    }
}
