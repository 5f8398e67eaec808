//! The messages of the control plane, one payload type per frame kind, grouped by
//! the gateway that receives them (Flink's TaskExecutorGateway,
//! ResourceManagerGateway, DispatcherGateway and JobMasterGateway).
//!
//! Kind numbers are part of the wire format: they are never reused or renumbered
//! (see the compatibility rule in [`crate::protocol`]).

use rkyv::{Archive, Deserialize, Serialize};

use crate::ids::{AllocationId, AttemptId, CheckpointId, JobId, JobMasterId, ResourceManagerId, SlotId, WorkerId};
use crate::job_graph::JobGraph;
use crate::state::{ExecutionState, JobStatus};

use super::*;

payloads! {
    // ------------------------------------------------ TaskExecutor gateway

    /// ResourceManager → worker: allocate `slot` to `job` (Flink's requestSlot).
    pub struct RequestSlot {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
        /// The slot.
        pub slot: SlotId,
        /// The new allocation.
        pub allocation: AllocationId,
        /// The job.
        pub job: JobId,
        /// Token of the job's master, required by later submissions into the slot.
        pub job_master: JobMasterId,
    }

    /// Worker → ResourceManager: the answer to [`RequestSlot`].
    pub struct SlotRequestReply {
        /// The slot.
        pub slot: SlotId,
        /// The allocation asked for.
        pub allocation: AllocationId,
        /// The outcome.
        pub outcome: SlotRequestOutcome,
    }

    /// JobMaster → worker: run a task (Flink's submitTask).
    pub struct SubmitTask {
        /// The descriptor; it carries the job master's token.
        pub descriptor: TaskDeploymentDescriptor,
    }

    /// JobMaster → worker: run a task (Flink's submitTask with its
    /// TaskDeploymentDescriptor). The vertex's [`TaskInformation`] travels archived
    /// as bytes; [`DeployTask::descriptor`] gives the whole descriptor.
    pub struct DeployTask {
        /// The job.
        pub job: JobId,
        /// Token of the job's master; the slot's allocation must carry the same.
        pub job_master: JobMasterId,
        /// The allocation the task runs in.
        pub allocation: AllocationId,
        /// The slot the task runs in.
        pub slot: SlotId,
        /// The attempt; `attempt.attempt` is the job's restart epoch.
        pub attempt: AttemptId,
        /// The vertex's [`TaskInformation`], archived ([`TaskInformation::archive`]).
        pub task_information: Vec<u8>,
        /// Input gates.
        pub inputs: Vec<GateDeployment>,
        /// Result partitions.
        pub outputs: Vec<PartitionDeployment>,
    }

    /// Worker → JobMaster: a submission was refused; nothing runs.
    pub struct TaskRefused {
        /// The job.
        pub job: JobId,
        /// The attempt.
        pub attempt: AttemptId,
        /// Why.
        pub error: ErrorReply,
    }

    /// JobMaster → worker: cancel an attempt.
    pub struct CancelTask {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// The attempt.
        pub attempt: AttemptId,
        /// Why, for the task's end and its sinks' readers: the job was
        /// cancelled, or it failed or fails over, with the cause.
        pub reason: String,
    }

    /// JobMaster → worker: free a slot (its tasks are cancelled).
    pub struct FreeSlot {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The allocation to free.
        pub allocation: AllocationId,
        /// Why.
        pub cause: String,
    }

    /// JobMaster → worker: where producers of a consumer's inputs run.
    pub struct UpdatePartitions {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// The consuming attempt.
        pub attempt: AttemptId,
        /// The updated gates.
        pub gates: Vec<GateDeployment>,
    }

    /// JobMaster → worker: release the partitions of a job's edges.
    pub struct ReleasePartitions {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// Edge indices whose partitions go.
        pub edges: Vec<u32>,
    }

    /// CheckpointCoordinator → worker: inject a barrier at the sources.
    pub struct TriggerCheckpoint {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// The source attempt.
        pub attempt: AttemptId,
        /// The checkpoint.
        pub checkpoint: CheckpointId,
        /// Trigger time, ms since the Unix epoch.
        pub timestamp_ms: u64,
        /// The source stops after the barrier (stop with a snapshot, Flink's
        /// stop-with-savepoint): its task snapshots and ends instead of
        /// reading on, and so does every task downstream.
        pub stop: bool,
    }

    /// CheckpointCoordinator → worker: a checkpoint completed.
    pub struct ConfirmCheckpoint {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// The attempt.
        pub attempt: AttemptId,
        /// The checkpoint.
        pub checkpoint: CheckpointId,
    }

    /// CheckpointCoordinator → worker: a checkpoint was aborted.
    pub struct AbortCheckpoint {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// The attempt.
        pub attempt: AttemptId,
        /// The checkpoint.
        pub checkpoint: CheckpointId,
        /// Why.
        pub cause: String,
    }

    /// ResourceManager → worker: are you there?
    pub struct HeartbeatFromCoordinator {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
        /// Sequence number, echoed in the answer.
        pub seq: u64,
    }

    /// ResourceManager → worker: send a [`SlotReportMessage`].
    pub struct RequestSlotReport {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
    }

    /// Anyone → worker: send a [`ShardDump`].
    pub struct RequestShardDump {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
    }

    /// Worker → requester: its shards and their tasks.
    pub struct ShardDump {
        /// The worker.
        pub worker: WorkerId,
        /// Shard by shard.
        pub shards: Vec<ShardDumpEntry>,
    }

    /// ResourceManager → worker: you are disconnected (the worker cancels its
    /// tasks, frees its slots and registers again).
    pub struct DisconnectResourceManager {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
        /// Why.
        pub cause: String,
    }

    // --------------------------------------------- ResourceManager gateway

    /// Worker → ResourceManager: first message of a worker connection.
    pub struct RegisterWorker {
        /// A name unique among live workers (host, process, start time).
        pub resource_id: String,
        /// Where it runs, for people.
        pub address: String,
        /// Its resources.
        pub resources: WorkerResources,
        /// Its slots now.
        pub slots: SlotReport,
    }

    /// ResourceManager → worker: welcome.
    pub struct RegistrationAccepted {
        /// The worker's id in this cluster.
        pub worker: WorkerId,
        /// Fencing token of the ResourceManager; every later message carries it.
        pub resource_manager: ResourceManagerId,
        /// How often the coordinator sends heartbeats.
        pub heartbeat_interval_ms: u64,
        /// After how long without traffic either side gives the other up.
        pub heartbeat_timeout_ms: u64,
    }

    /// JobMaster → ResourceManager: a job's master starts.
    pub struct RegisterJobMaster {
        /// The job.
        pub job: JobId,
        /// Its master's token.
        pub job_master: JobMasterId,
    }

    /// Worker → ResourceManager: its slots now.
    pub struct SlotReportMessage {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
        /// The worker.
        pub worker: WorkerId,
        /// Its slots.
        pub report: SlotReport,
    }

    /// JobMaster → ResourceManager: slots for a job.
    pub struct RequestSlots {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// How many.
        pub slots: u32,
    }

    /// JobMaster → ResourceManager: withdraw a pending slot request.
    pub struct CancelSlotRequest {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
    }

    /// Worker → ResourceManager: a slot became free.
    pub struct NotifySlotAvailable {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
        /// The worker.
        pub worker: WorkerId,
        /// The slot.
        pub slot: SlotId,
        /// The allocation that ended.
        pub allocation: AllocationId,
    }

    /// Worker → ResourceManager: alive, with its slots.
    pub struct HeartbeatFromWorker {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
        /// The worker.
        pub worker: WorkerId,
        /// The sequence number answered (0 if unsolicited).
        pub seq: u64,
        /// Its slots.
        pub report: SlotReport,
        /// Its running tasks' record counts so far.
        pub tasks: Vec<TaskProgress>,
    }

    /// Worker → ResourceManager: leaving.
    pub struct DisconnectWorker {
        /// Fencing token of the ResourceManager.
        pub resource_manager: ResourceManagerId,
        /// The worker.
        pub worker: WorkerId,
        /// Why.
        pub cause: String,
    }

    /// Client → ResourceManager: totals, please.
    pub struct RequestResourceOverview {}

    /// ResourceManager → client: the cluster's totals, and who leads.
    pub struct ResourceOverview {
        /// Registered workers.
        pub workers: u32,
        /// Their slots.
        pub total_slots: u32,
        /// Slots not allocated.
        pub free_slots: u32,
        /// Running jobs.
        pub running_jobs: u32,
        /// The address the answering coordinator, the leader, is reached at.
        pub leader: String,
        /// Its leadership epoch (its fencing token) under high availability; 0 for
        /// a standalone coordinator.
        pub leader_epoch: u64,
    }

    /// Client → ResourceManager: every worker, please.
    pub struct RequestWorkerInfo {}

    /// ResourceManager → client: every worker.
    pub struct WorkerInfoList {
        /// The workers, by id.
        pub workers: Vec<WorkerInfo>,
    }

    /// Client → ResourceManager: ask `worker` for its [`ShardDump`] (the
    /// ResourceManager sends it [`RequestShardDump`] and forwards the answer), or
    /// answer an error if it is unknown, lost, or silent for `timeout_ms`.
    pub struct RequestWorkerDump {
        /// The worker.
        pub worker: WorkerId,
        /// Give up after this long.
        pub timeout_ms: u64,
    }

    // -------------------------------------------------- Dispatcher gateway

    /// Client → Dispatcher: run this job.
    pub struct SubmitJob {
        /// The job graph.
        pub graph: JobGraph,
        /// Placement strategy: `spread`, `pack`, `colocate` or an explicit map
        /// (`vertex=cores;...`); empty for the cluster's default.
        pub placement: String,
        /// Restart strategy (`none`, `fixed-delay:...`, `exponential-delay:...`);
        /// empty for the cluster's default.
        pub restart: String,
    }

    /// Dispatcher → client: accepted.
    pub struct JobSubmitted {
        /// The new job's id.
        pub job: JobId,
    }

    /// Client → Dispatcher: every job, please.
    pub struct ListJobs {}

    /// Dispatcher → client: every job.
    pub struct JobList {
        /// Jobs by id.
        pub jobs: Vec<JobSummary>,
    }

    /// Client → Dispatcher: one job's details, please.
    pub struct RequestJob {
        /// The job.
        pub job: JobId,
    }

    /// Client → Dispatcher: one job's graph as it was submitted, please
    /// (running or ended).
    pub struct RequestJobGraph {
        /// The job.
        pub job: JobId,
    }

    /// Dispatcher → client: a job's graph as it was submitted.
    pub struct JobGraphReply {
        /// The job.
        pub job: JobId,
        /// Its graph.
        pub graph: JobGraph,
    }

    /// Client → Dispatcher: one job's record counts so far, please.
    pub struct RequestJobProgress {
        /// The job.
        pub job: JobId,
    }

    /// Dispatcher → client: each subtask's record counts so far, of its current
    /// attempt: while it runs, as its worker's last heartbeat said (at most a
    /// heartbeat interval old); once finished, its result's.
    pub struct JobProgress {
        /// The job.
        pub job: JobId,
        /// Subtasks with counts known.
        pub subtasks: Vec<SubtaskProgress>,
    }

    /// Client → Dispatcher: answer with [`JobDetails`] once the job reaches
    /// `until` or `timeout_ms` passes, whichever is first.
    pub struct WaitJob {
        /// The job.
        pub job: JobId,
        /// The condition.
        pub until: WaitCondition,
        /// Give up after this long (the reply then shows the job as it is).
        pub timeout_ms: u64,
    }

    /// Dispatcher → client: one job.
    pub struct JobDetails {
        /// The job.
        pub job: JobId,
        /// Its name.
        pub name: String,
        /// Its status.
        pub status: JobStatus,
        /// Restarts so far.
        pub restarts: u32,
        /// Why it failed or restarted last, if it did.
        pub failure: Option<String>,
        /// Microseconds from submission until every subtask first ran.
        pub submit_to_running_us: Option<u64>,
        /// Every subtask.
        pub subtasks: Vec<SubtaskDetails>,
    }

    /// Client → ResourceManager: answer with [`ResourceOverview`] once at least
    /// `workers` workers are registered or `timeout_ms` passes.
    pub struct WaitForWorkers {
        /// Workers to wait for.
        pub workers: u32,
        /// Give up after this long (the reply then shows the cluster as it is).
        pub timeout_ms: u64,
    }

    /// Client → Dispatcher: cancel a job.
    pub struct CancelJob {
        /// The job.
        pub job: JobId,
    }

    /// Either way: done.
    pub struct Ack {}

    /// Client → Dispatcher: take a savepoint (behaviour comes with checkpoints).
    pub struct TriggerSavepoint {
        /// The job.
        pub job: JobId,
        /// Target directory; empty for the default.
        pub directory: String,
    }

    /// Client → Dispatcher: take a savepoint and stop (behaviour comes with
    /// checkpoints).
    pub struct StopWithSavepoint {
        /// The job.
        pub job: JobId,
        /// Target directory; empty for the default.
        pub directory: String,
    }

    /// Client → Dispatcher: delete a savepoint.
    pub struct DisposeSavepoint {
        /// The savepoint's path.
        pub path: String,
    }

    // --------------------------------------------------- JobMaster gateway

    /// Worker → JobMaster: an attempt changed state.
    pub struct UpdateTaskExecutionState {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// The attempt.
        pub attempt: AttemptId,
        /// The new state.
        pub state: ExecutionState,
        /// Why, if FAILED.
        pub failure: Option<TaskFailureInfo>,
        /// Its result, if FINISHED.
        pub result: Option<TaskResultInfo>,
    }

    /// Worker → CheckpointCoordinator: an attempt's snapshot for a checkpoint is done.
    pub struct AcknowledgeCheckpoint {
        /// Token of the job's master.
        pub job_master: JobMasterId,
        /// The job.
        pub job: JobId,
        /// The attempt.
        pub attempt: AttemptId,
        /// The checkpoint.
        pub checkpoint: CheckpointId,
        /// Bytes of state written.
        pub state_bytes: u64,
    }

    // ------------------------------------------------ connection set-up

    /// Client (worker, client) → coordinator, first frame of a connection to a
    /// cluster with a secret: a fresh random nonce.
    pub struct AuthHello {
        /// The client's nonce.
        pub client_nonce: [u8; 32],
        /// What connects (`worker`, `client`), for the coordinator's log.
        pub role: String,
    }

    /// Coordinator → client: its own nonce, and its proof that it holds the
    /// secret (an HMAC over both nonces; see `shardflow_engine`'s link layer).
    pub struct AuthChallenge {
        /// The coordinator's nonce.
        pub server_nonce: [u8; 32],
        /// HMAC-SHA256 of the secret over the server label and both nonces.
        pub server_proof: [u8; 32],
    }

    /// Client → coordinator: its proof that it holds the secret.
    pub struct AuthResponse {
        /// HMAC-SHA256 of the secret over the client label and both nonces.
        pub client_proof: [u8; 32],
    }

    /// Coordinator → client: the proof holds; frames may flow.
    pub struct AuthAccepted {}

    /// Either way: the request failed. The sender closes the connection after it.
    pub struct ErrorReply {
        /// What kind of failure.
        pub code: ErrorCode,
        /// For people.
        pub message: String,
        /// Whether the same request may succeed later.
        pub retryable: bool,
    }
}

/// The outcome of a slot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum SlotRequestOutcome {
    /// The slot is now the job's.
    Allocated,
    /// The slot belongs to another allocation (the owner).
    Occupied(SlotAllocation),
    /// The worker has no such slot.
    UnknownSlot,
}

/// What [`WaitJob`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum WaitCondition {
    /// Every subtask of the current attempt is RUNNING (or already FINISHED).
    AllRunning,
    /// The job reached a globally terminal status.
    Terminal,
}

/// The typed failures a peer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame's body is not a valid archive of its kind.
    Malformed,
    /// The connection ended inside a frame.
    Truncated,
    /// The length prefix exceeds the maximum frame size.
    FrameTooLarge,
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion,
    /// The frame's kind is not known here.
    UnknownKind,
    /// The header's reserved bytes are not zero.
    BadHeader,
    /// A fencing token does not match the current leader's.
    StaleToken,
    /// A worker with this resource id is already registered.
    DuplicateRegistration,
    /// A message that needs a registered worker came before registration.
    NotRegistered,
    /// No such job.
    UnknownJob,
    /// No such worker.
    UnknownWorker,
    /// The slot belongs to another job.
    SlotOccupied,
    /// A task came for a slot not allocated to it.
    NoSlotAllocated,
    /// The job graph or its configuration is invalid.
    InvalidJob,
    /// Not enough free slots.
    NotEnoughSlots,
    /// Not supported (yet).
    Unsupported,
    /// The message is not valid at this point of the conversation.
    Unexpected,
    /// Something failed inside the peer.
    Internal,
    /// The peer did not prove it holds the cluster's secret (or the two sides
    /// disagree on whether there is one).
    Unauthenticated,
    /// The coordinator is not the leader (a standby, or a leader that lost its
    /// leadership); the message names the leader where one is known.
    NotLeader,
}
