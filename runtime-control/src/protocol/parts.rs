//! The parts control messages are made of: slots and their reports, channel
//! locations, deployment descriptors and task information, results, job and
//! subtask summaries. Their archived layout is frozen within a protocol version
//! like the messages' (see [`crate::protocol`]).

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{AllocationId, AttemptId, JobId, JobMasterId, SlotId, WorkerId};
use crate::job_graph::{OperatorSpec, PartitionerKind, RecordFormat};
use crate::state::{ExecutionState, JobStatus};

// ---------------------------------------------------------------- shared parts

/// What a slot is doing, as its worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SlotAllocation {
    /// The allocation.
    pub allocation: AllocationId,
    /// The job it belongs to.
    pub job: JobId,
}

/// Where a task's time has gone since it began, in ms (Flink's busy, idle and
/// back-pressured time): the three add up to its time so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct TaskTimes {
    /// Working: running its operators, or ready to and waiting for its core
    /// (which other tasks of its shard hold).
    pub busy_ms: u64,
    /// Waiting for input — nothing to read, a source with nothing to emit
    /// yet, a timer not due — until its shard polls it again.
    pub idle_ms: u64,
    /// Waiting on a full output (its back-pressure: a consumer downstream is
    /// slower, or a bounded egress is not read).
    pub back_pressured_ms: u64,
}

payloads! {
    /// One slot of a worker.
    pub struct SlotStatus {
        /// The slot.
        pub slot: SlotId,
        /// The core of the slot's shard.
        pub core: u32,
        /// Its allocation, if any.
        pub allocated: Option<SlotAllocation>,
    }

    /// Every slot of a worker.
    pub struct SlotReport {
        /// The slots, in slot order.
        pub slots: Vec<SlotStatus>,
    }

    /// What a worker brings: its shards and memory.
    pub struct WorkerResources {
        /// The cores its shards are pinned to, shard by shard.
        pub cores: Vec<u32>,
        /// Slots per shard.
        pub slots_per_shard: u32,
        /// Network memory per shard.
        pub network_memory_bytes: u64,
        /// Managed memory per slot.
        pub managed_memory_per_slot_bytes: u64,
    }

    /// Where one end of a data channel is: the peer subtask, the subpartition, the
    /// peer's worker.
    pub struct ChannelLocation {
        /// The subtask at the other end.
        pub peer_subtask: u32,
        /// The subpartition of the producer that feeds the channel.
        pub subpartition: u32,
        /// The worker of the other end.
        pub worker: WorkerId,
    }

    /// A result partition a task writes: one per outgoing edge.
    pub struct PartitionDeployment {
        /// The edge's index in the job graph.
        pub edge: u32,
        /// How records are routed to subpartitions.
        pub partitioner: PartitionerKind,
        /// Consumers, subpartition by subpartition.
        pub consumers: Vec<ChannelLocation>,
    }

    /// An input gate a task reads: one per incoming edge.
    pub struct GateDeployment {
        /// The edge's index in the job graph.
        pub edge: u32,
        /// Producers, input channel by input channel.
        pub producers: Vec<ChannelLocation>,
    }

    /// Everything a worker needs to run one subtask (Flink's
    /// TaskDeploymentDescriptor).
    pub struct TaskDeploymentDescriptor {
        /// The job.
        pub job: JobId,
        /// The job's name.
        pub job_name: String,
        /// Token of the job's master; the slot's allocation must carry the same.
        pub job_master: JobMasterId,
        /// The allocation the task runs in.
        pub allocation: AllocationId,
        /// The slot the task runs in.
        pub slot: SlotId,
        /// The attempt; `attempt.attempt` is the job's restart epoch.
        pub attempt: AttemptId,
        /// The vertex's name.
        pub vertex_name: String,
        /// The vertex's parallelism.
        pub parallelism: u32,
        /// The job's key groups.
        pub max_parallelism: u32,
        /// The operator chain, head first.
        pub chain: Vec<OperatorSpec>,
        /// The record format of each input edge, in gate order.
        pub input_formats: Vec<RecordFormat>,
        /// The record format of each output edge, in partition order.
        pub output_formats: Vec<RecordFormat>,
        /// Input gates.
        pub inputs: Vec<GateDeployment>,
        /// Result partitions.
        pub outputs: Vec<PartitionDeployment>,
    }

    /// What every subtask of one vertex shares (Flink's TaskInformation, with the
    /// job's name): archived once per vertex and deployment, and carried as bytes
    /// by each of its [`DeployTask`](super::DeployTask)s, so a descriptor costs a copy of it, not a
    /// serialization, and a worker validates it once per vertex.
    pub struct TaskInformation {
        /// The job's name.
        pub job_name: String,
        /// The vertex's name.
        pub vertex_name: String,
        /// The vertex's parallelism.
        pub parallelism: u32,
        /// The job's key groups.
        pub max_parallelism: u32,
        /// The operator chain, head first.
        pub chain: Vec<OperatorSpec>,
        /// The record format of each input edge, in gate order.
        pub input_formats: Vec<RecordFormat>,
        /// The record format of each output edge, in partition order.
        pub output_formats: Vec<RecordFormat>,
    }

    /// A task's failure as reported.
    pub struct TaskFailureInfo {
        /// What went wrong.
        pub cause: String,
        /// `true` if caused by a peer going away (the root cause is reported there).
        pub secondary: bool,
    }

    /// What a sink reports when its task finishes.
    pub struct SinkResult {
        /// Records seen.
        pub records: u64,
        /// Wrapping sum of their values.
        pub value_sum: u64,
        /// Latency percentiles in ns (p50, p99, p99.9, max), for latency sinks.
        pub latency_ns: Option<[u64; 4]>,
    }

    /// What a finished task reports.
    pub struct TaskResultInfo {
        /// Records into the chain head.
        pub records_in: u64,
        /// Records out of the chain.
        pub records_out: u64,
        /// Where its time went, from its start to its end.
        pub times: TaskTimes,
        /// One entry per sink of the chain.
        pub sinks: Vec<SinkResult>,
    }

    /// A shard and what runs on it (our thread dump).
    pub struct ShardDumpEntry {
        /// The shard's index.
        pub shard: u32,
        /// Its core.
        pub core: u32,
        /// CPU time its thread has used so far, in ms (from the kernel's
        /// scheduler statistics, or where it keeps none in ticks of 10 ms; a
        /// hosted shard's thread is its host's): how busy the core
        /// is, between two dumps. `None` where the worker cannot read it.
        pub cpu_ms: Option<u64>,
        /// Its tasks.
        pub tasks: Vec<TaskDumpEntry>,
    }

    /// A running task's record counts so far, as its worker last saw them.
    pub struct TaskProgress {
        /// Its job.
        pub job: JobId,
        /// The attempt it runs.
        pub attempt: AttemptId,
        /// Records into its chain head so far (a source's: produced).
        pub records_in: u64,
        /// Records out of its chain so far (into its result partitions).
        pub records_out: u64,
        /// Where its time has gone so far, a wait going on counted up to
        /// the moment it was read.
        pub times: TaskTimes,
    }

    /// A subtask's record counts so far, as a client reads them.
    pub struct SubtaskProgress {
        /// Its vertex's name.
        pub vertex: String,
        /// Its index.
        pub subtask: u32,
        /// The attempt counted.
        pub attempt: u32,
        /// Records into its chain head so far (a source's: produced).
        pub records_in: u64,
        /// Records out of its chain so far (into its result partitions).
        pub records_out: u64,
        /// Where its time has gone so far, a wait going on counted up to
        /// the moment it was read.
        pub times: TaskTimes,
    }

    /// One task of a shard as it runs.
    pub struct TaskDumpEntry {
        /// Its job.
        pub job: JobId,
        /// The attempt it runs.
        pub attempt: AttemptId,
        /// Its vertex's name.
        pub vertex: String,
        /// Its state.
        pub state: ExecutionState,
        /// Records into its chain head so far (a source's: produced).
        pub records_in: u64,
        /// Records out of its chain so far (into its result partitions).
        pub records_out: u64,
        /// Where its time has gone so far, a wait going on counted up to
        /// the moment it was read.
        pub times: TaskTimes,
    }

    /// One worker as the ResourceManager knows it.
    pub struct WorkerInfo {
        /// Its id.
        pub worker: WorkerId,
        /// The resource id it registered with.
        pub resource_id: String,
        /// The address it connected from.
        pub address: String,
        /// Its resources.
        pub resources: WorkerResources,
        /// Slots it offers.
        pub slots: u32,
        /// Slots not allocated.
        pub free_slots: u32,
        /// Milliseconds since its last heartbeat.
        pub last_heartbeat_ms: u64,
    }

    /// One job in a listing.
    pub struct JobSummary {
        /// The job.
        pub job: JobId,
        /// Its name.
        pub name: String,
        /// Its status.
        pub status: JobStatus,
        /// Its subtasks.
        pub subtasks: u32,
        /// Subtasks RUNNING now.
        pub running: u32,
        /// Subtasks FINISHED.
        pub finished: u32,
        /// Restarts so far.
        pub restarts: u32,
    }

    /// One subtask of a job: state and location.
    pub struct SubtaskDetails {
        /// Vertex name.
        pub vertex: String,
        /// Subtask index.
        pub subtask: u32,
        /// Current attempt number.
        pub attempt: u32,
        /// State of the current attempt.
        pub state: ExecutionState,
        /// Slot, if placed.
        pub slot: Option<SlotId>,
        /// Core of the slot's shard.
        pub core: Option<u32>,
        /// Its result, once finished.
        pub result: Option<TaskResultInfo>,
        /// Its failure, if it failed.
        pub failure: Option<String>,
    }
}
