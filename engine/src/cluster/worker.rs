//! The worker (Flink's TaskExecutor): one process's shards, offered as slots to a
//! coordinator. It registers, then serves the TaskExecutor gateway: slot requests
//! (a slot held by another allocation answers "occupied" with its owner), task
//! submissions (refused without the slot's allocation or with another job
//! master's token), cancels, frees, heartbeats, slot reports and shard dumps. Task
//! state changes flow back as they happen.
//!
//! If the coordinator goes away (connection closed, or silent past the heartbeat
//! timeout) the worker cancels its tasks, frees its slots and registers again,
//! backing off between attempts.
//!
//! Data channels are wired here: a task's input and output channels meet in a
//! per-job table keyed by (epoch, edge, producer, subpartition), whichever of the
//! two tasks is deployed first creates the channel. Channels between workers need
//! the TCP data plane, which is not built yet; the coordinator keeps jobs whose
//! edges would need them inside one worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use shardflow_control::protocol::*;
use shardflow_control::{
    AttemptId, ExecutionState, JobId, JobMasterId, ResourceManagerId, ShardId, SlotId, VertexId, WorkerId,
};
use shardflow_memory::{Budget, BudgetKind, PoolMonitor, Reservation};
use shardflow_netstack::{channel, ChannelReceiver, ChannelSender};

use super::link::{self, send_message, FrameSink, PipeEnd, Received, TcpSink};
use crate::config::{EngineBuilder, EngineConfig};
use crate::error::EngineError;
use crate::operator::{SinkOutput, TaskInfo};
use crate::registry::LiveRegistry;
use crate::shard::{start_shards, ReportSink, ShardCommand, ShardHandle, TaskReport};
use crate::task::{partitioner, OutputDeployment, TaskDeployment, TaskOutput};

/// How a worker reaches its coordinator.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Over TCP.
    Tcp(SocketAddr),
    /// In-process: each call yields a fresh pipe whose other end the coordinator
    /// serves.
    InProcess(Arc<dyn Fn() -> Option<PipeEnd> + Send + Sync>),
}

/// Settings of the worker beyond its engine configuration.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The name it registers under; default: host-pid-start time.
    pub resource_id: Option<String>,
    /// First wait before reconnecting. Default 50 ms.
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting. Default 2 s.
    pub reconnect_max: Duration,
    /// Largest frame accepted. Default 16 MiB.
    pub max_frame_bytes: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            resource_id: None,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

enum Event {
    Frame(u64, Message),
    Bad(u64, FrameError),
    Closed(u64),
    Task(TaskReport),
    Stop,
}

/// Each job's source progress and, for an engine embedding the worker in its
/// process, each finished subtask's full output (histograms and all; the frames
/// carry a summary). A worker of its own keeps no outputs and forgets a job when
/// its last task here ends; an embedding engine's entries live until it takes
/// them, or, for a job nobody waits for any more, until its last task here ends.
#[derive(Debug, Default)]
pub(crate) struct JobBoard {
    keep_outputs: bool,
    progress: Mutex<HashMap<JobId, Arc<AtomicU64>>>,
    outputs: Mutex<HashMap<JobId, Outputs>>,
    abandoned: Mutex<HashSet<JobId>>,
}

/// The outputs of a job's finished subtasks, by vertex and subtask.
pub(crate) type Outputs = BTreeMap<(VertexId, u32), TaskOutput>;

impl JobBoard {
    /// The board of a worker embedded in an engine, which takes the outputs.
    pub(crate) fn embedded() -> Self {
        JobBoard { keep_outputs: true, ..JobBoard::default() }
    }

    /// The source progress counter of `job`.
    pub(crate) fn progress(&self, job: JobId) -> Arc<AtomicU64> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).entry(job).or_default().clone()
    }

    /// Takes the outputs of `job`'s subtasks and forgets the job.
    pub(crate) fn take(&self, job: JobId) -> Outputs {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).remove(&job);
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).remove(&job).unwrap_or_default()
    }

    /// Nobody will take `job`'s outputs: forget them, and keep none that come.
    pub(crate) fn abandon(&self, job: JobId) {
        self.abandoned.lock().unwrap_or_else(PoisonError::into_inner).insert(job);
        self.take(job);
    }

    fn put(&self, job: JobId, attempt: AttemptId, output: &TaskOutput) {
        if !self.keep_outputs || self.abandoned.lock().unwrap_or_else(PoisonError::into_inner).contains(&job) {
            return;
        }
        let at = (attempt.execution_vertex.vertex, attempt.execution_vertex.subtask);
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).entry(job).or_default().insert(at, output.clone());
    }

    /// The last task of `job` on this worker ended.
    fn ended_here(&self, job: JobId) {
        if !self.keep_outputs || self.abandoned.lock().unwrap_or_else(PoisonError::into_inner).remove(&job) {
            self.take(job);
        }
    }
}

/// A shard of a worker: its index, core and segment pool.
#[derive(Debug, Clone)]
pub(crate) struct WorkerShard {
    pub(crate) id: u32,
    pub(crate) core: usize,
    pub(crate) pool: PoolMonitor,
}

/// A running worker. Dropping it cancels its tasks and stops its shards.
pub struct Worker {
    shards: Vec<WorkerShard>,
    events: Sender<Event>,
    stopping: Arc<AtomicBool>,
    registered: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the shards of `engine` and a worker serving the coordinator at
    /// `coordinator` (registering, and re-registering after losing it).
    pub fn start(coordinator: SocketAddr, engine: EngineBuilder, options: WorkerOptions) -> Result<Self, EngineError> {
        let (config, registry) = engine.into_parts()?;
        let live = Arc::new(LiveRegistry::new(registry));
        Self::start_with(Connector::Tcp(coordinator), config, live, Arc::default(), options)
    }

    pub(crate) fn start_with(
        connector: Connector,
        config: EngineConfig,
        live: Arc<LiveRegistry>,
        board: Arc<JobBoard>,
        options: WorkerOptions,
    ) -> Result<Self, EngineError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let events = tx.clone();
        let reports: ReportSink = Arc::new(move |r| {
            let _ = events.send(Event::Task(r));
        });
        let shards = start_shards(&config, reports)?;
        let shard_list = shards.iter().map(|s| WorkerShard { id: s.id, core: s.core, pool: s.pool.clone() }).collect();
        let resource_id = options.resource_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let started =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
            format!("{}-{}-{started}", host.trim(), std::process::id())
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(AtomicU64::new(0));
        let state = WorkerState::new(config, live, board, shards, resource_id);
        let (stop2, reg2, events2) = (stopping.clone(), registered.clone(), tx.clone());
        let thread = std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || run(state, connector, options, rx, events2, stop2, reg2))
            .map_err(|e| EngineError::Io { what: "starting the worker thread".into(), reason: e.to_string() })?;
        Ok(Worker { shards: shard_list, events: tx, stopping, registered, thread: Some(thread) })
    }

    /// Its shards.
    pub(crate) fn shards(&self) -> &[WorkerShard] {
        &self.shards
    }

    /// How many times it has registered with a coordinator so far.
    pub fn registrations(&self) -> u64 {
        self.registered.load(Ordering::Acquire)
    }

    /// Cancels its tasks, stops its shards and waits.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.events.send(Event::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

struct SlotState {
    status: SlotStatus,
    /// The allocation's job master token.
    job_master: Option<JobMasterId>,
    managed: Budget,
}

struct TaskEntry {
    slot: SlotId,
    job_master: JobMasterId,
    vertex: String,
    state: ExecutionState,
    network: Reservation,
}

/// One end of a channel waiting for the task at the other end.
enum Pending {
    Sender(ChannelSender),
    Receiver(ChannelReceiver),
}

/// A task's end of a channel: which [`Pending`] it is, and how a new channel splits
/// into it and the end left for the peer.
trait ChannelEnd: Sized {
    fn from_pending(p: Pending) -> Result<Self, Pending>;
    fn split(tx: ChannelSender, rx: ChannelReceiver) -> (Self, Pending);
}

impl ChannelEnd for ChannelSender {
    fn from_pending(p: Pending) -> Result<Self, Pending> {
        match p {
            Pending::Sender(tx) => Ok(tx),
            other => Err(other),
        }
    }
    fn split(tx: ChannelSender, rx: ChannelReceiver) -> (Self, Pending) {
        (tx, Pending::Receiver(rx))
    }
}

impl ChannelEnd for ChannelReceiver {
    fn from_pending(p: Pending) -> Result<Self, Pending> {
        match p {
            Pending::Receiver(rx) => Ok(rx),
            other => Err(other),
        }
    }
    fn split(tx: ChannelSender, rx: ChannelReceiver) -> (Self, Pending) {
        (rx, Pending::Sender(tx))
    }
}

/// What the worker keeps for a job while it has tasks here.
#[derive(Default)]
struct JobHere {
    /// Channel ends waiting for the task at the other end, by attempt epoch, edge,
    /// producer subtask and subpartition: whichever task comes first creates the
    /// channel.
    wiring: HashMap<(u32, u32, u32, u32), Pending>,
    /// Vertex information as received (archived) and read, by vertex and epoch.
    information: HashMap<(VertexId, u32), (Vec<u8>, TaskInformation)>,
    /// The clock origin shared by the tasks of one attempt epoch here: record
    /// timestamps count from it.
    starts: HashMap<u32, Instant>,
}

impl JobHere {
    /// This task's end of channel `key`: the end its peer left waiting, or one end
    /// of a new channel whose other end now waits for the peer.
    fn claim<E: ChannelEnd>(&mut self, key: (u32, u32, u32, u32), cfg: &EngineConfig) -> E {
        match self.wiring.remove(&key).map(E::from_pending) {
            Some(Ok(end)) => end,
            left => {
                let max_in_flight = cfg.exclusive_credits + cfg.floating_credits;
                let (tx, rx) = channel(cfg.exclusive_credits, max_in_flight, cfg.event_room);
                let (mine, theirs) = E::split(tx, rx);
                if left.is_none() {
                    self.wiring.insert(key, theirs);
                }
                mine
            }
        }
    }
}

struct WorkerState {
    config: EngineConfig,
    live: Arc<LiveRegistry>,
    board: Arc<JobBoard>,
    shards: Vec<ShardHandle>,
    budgets: Vec<Budget>,
    resource_id: String,
    worker: WorkerId,
    rm: ResourceManagerId,
    slots: BTreeMap<SlotId, SlotState>,
    tasks: HashMap<(JobId, AttemptId), TaskEntry>,
    jobs: HashMap<JobId, JobHere>,
    /// Network memory of tasks cancelled when the coordinator was lost, held until
    /// each reports its end.
    draining: HashMap<(JobId, AttemptId), Reservation>,
    /// Deployments not yet handed to their shard, by shard: the tasks of one job
    /// that arrive together go to a shard in one message, since a spinning shard
    /// reads its mailbox only between time slices.
    batch: BTreeMap<usize, Vec<TaskDeployment>>,
}

impl WorkerState {
    fn new(
        config: EngineConfig,
        live: Arc<LiveRegistry>,
        board: Arc<JobBoard>,
        shards: Vec<ShardHandle>,
        resource_id: String,
    ) -> Self {
        let budgets = shards.iter().map(ShardHandle::network_budget).collect();
        let mut w = WorkerState {
            config,
            live,
            board,
            shards,
            budgets,
            resource_id,
            worker: WorkerId(u32::MAX),
            rm: ResourceManagerId(0),
            slots: BTreeMap::new(),
            tasks: HashMap::new(),
            jobs: HashMap::new(),
            draining: HashMap::new(),
            batch: BTreeMap::new(),
        };
        w.reset_slots(WorkerId(u32::MAX));
        w
    }

    /// Every slot free, named for `worker`. A slot keeps its managed-memory budget
    /// across registrations: a task cancelled with the old session still holds
    /// its share until its shard reports it ended.
    fn reset_slots(&mut self, worker: WorkerId) {
        let shards: Vec<(u32, u32)> = self.shards.iter().map(|s| (s.id, s.core as u32)).collect();
        self.slots = slot_table(
            worker,
            &shards,
            self.config.slots_per_shard,
            self.config.managed_memory_per_slot_bytes,
            std::mem::take(&mut self.slots),
        );
        self.worker = worker;
    }

    fn resources(&self) -> WorkerResources {
        WorkerResources {
            cores: self.shards.iter().map(|s| s.core as u32).collect(),
            slots_per_shard: self.config.slots_per_shard,
            network_memory_bytes: self.config.network_memory_bytes as u64,
            managed_memory_per_slot_bytes: self.config.managed_memory_per_slot_bytes,
        }
    }

    fn report(&self) -> SlotReport {
        SlotReport { slots: self.slots.values().map(|s| s.status.clone()).collect() }
    }

    /// Cancels everything and forgets every allocation (the coordinator is gone).
    fn release_all(&mut self) {
        let jobs: Vec<JobId> = self.tasks.keys().map(|(j, _)| *j).collect();
        for s in &self.shards {
            for &job in &jobs {
                let _ = s.mailbox.send(ShardCommand::Cancel(job));
            }
        }
        // Batched tasks never reached a shard: their memory is free at once.
        for d in std::mem::take(&mut self.batch).into_values().flatten() {
            self.tasks.remove(&(d.job, d.attempt));
        }
        // A cancelled task keeps its network memory until its shard reports it ended.
        self.draining.extend(self.tasks.drain().map(|(k, t)| (k, t.network)));
        for (job, _) in self.jobs.drain() {
            self.board.ended_here(job);
        }
        let worker = self.worker;
        self.reset_slots(worker);
    }

    /// Handles one message from the coordinator; returns the replies.
    fn on_message(&mut self, msg: Message) -> Result<Vec<Message>, (ErrorCode, String)> {
        let stale = |token: ResourceManagerId, rm: ResourceManagerId| {
            if token == rm {
                Ok(())
            } else {
                Err((ErrorCode::StaleToken, format!("fencing token {token} is not the leader's ({rm})")))
            }
        };
        let mut out = Vec::new();
        match msg {
            Message::HeartbeatFromCoordinator(m) => {
                stale(m.resource_manager, self.rm)?;
                out.push(Message::HeartbeatFromWorker(HeartbeatFromWorker {
                    resource_manager: self.rm,
                    worker: self.worker,
                    seq: m.seq,
                    report: self.report(),
                }));
            }
            Message::RequestSlot(m) => {
                stale(m.resource_manager, self.rm)?;
                let outcome = match self.slots.get_mut(&m.slot) {
                    None => SlotRequestOutcome::UnknownSlot,
                    Some(s) => match s.status.allocated {
                        Some(owner) if owner.allocation != m.allocation => SlotRequestOutcome::Occupied(owner),
                        _ => {
                            s.status.allocated = Some(SlotAllocation { allocation: m.allocation, job: m.job });
                            s.job_master = Some(m.job_master);
                            SlotRequestOutcome::Allocated
                        }
                    },
                };
                out.push(Message::SlotRequestReply(SlotRequestReply {
                    slot: m.slot,
                    allocation: m.allocation,
                    outcome,
                }));
            }
            Message::SubmitTask(m) => {
                let (job, attempt) = (m.descriptor.job, m.descriptor.attempt);
                if let Err(error) = self.submit(m.descriptor) {
                    tracing::warn!(%job, %attempt, "task refused: {}", error.message);
                    out.push(Message::TaskRefused(TaskRefused { job, attempt, error }));
                }
            }
            Message::DeployTask(m) => {
                let (job, attempt) = (m.job, m.attempt);
                if let Err(error) = self.information(&m).and_then(|info| self.submit(m.with_information(info))) {
                    tracing::warn!(%job, %attempt, "task refused: {}", error.message);
                    out.push(Message::TaskRefused(TaskRefused { job, attempt, error }));
                    self.forget_if_idle(job);
                }
            }
            Message::CancelTask(m) => {
                if let Some(t) = self.tasks.get(&(m.job, m.attempt)) {
                    if t.job_master != m.job_master {
                        return Err((
                            ErrorCode::StaleToken,
                            format!("job master token {} does not own {}", m.job_master, m.attempt),
                        ));
                    }
                    let shard = t.slot.shard.0 as usize;
                    let _ = self.shards[shard].mailbox.send(ShardCommand::CancelAttempt(m.job, m.attempt));
                }
            }
            Message::FreeSlot(m) => {
                let Some((&slot, s)) = self
                    .slots
                    .iter_mut()
                    .find(|(_, s)| s.status.allocated.is_some_and(|a| a.allocation == m.allocation))
                else {
                    return Ok(out);
                };
                if s.job_master != Some(m.job_master) {
                    return Err((
                        ErrorCode::StaleToken,
                        format!("job master token {} does not own {}", m.job_master, m.allocation),
                    ));
                }
                let freed = s.status.allocated.take().map(|a| a.job);
                s.job_master = None;
                for ((job, attempt), t) in &self.tasks {
                    if t.slot == slot {
                        let _ = self.shards[slot.shard.0 as usize]
                            .mailbox
                            .send(ShardCommand::CancelAttempt(*job, *attempt));
                    }
                }
                if let Some(job) = freed {
                    self.forget_if_idle(job);
                }
            }
            Message::RequestSlotReport(m) => {
                stale(m.resource_manager, self.rm)?;
                out.push(Message::SlotReportMessage(SlotReportMessage {
                    resource_manager: self.rm,
                    worker: self.worker,
                    report: self.report(),
                }));
            }
            Message::RequestShardDump(m) => {
                stale(m.resource_manager, self.rm)?;
                let mut tasks: Vec<_> = self.tasks.iter().collect();
                tasks.sort_unstable_by_key(|(key, _)| **key);
                let shards = self
                    .shards
                    .iter()
                    .map(|s| ShardDumpEntry {
                        shard: s.id,
                        core: s.core as u32,
                        tasks: tasks
                            .iter()
                            .filter(|(_, t)| t.slot.shard.0 == s.id)
                            .map(|((job, attempt), t)| format!("{job} {attempt} {} {}", t.vertex, t.state))
                            .collect(),
                    })
                    .collect();
                out.push(Message::ShardDump(ShardDump { worker: self.worker, shards }));
            }
            Message::DisconnectResourceManager(m) => {
                stale(m.resource_manager, self.rm)?;
                return Err((ErrorCode::Unexpected, format!("coordinator disconnected us: {}", m.cause)));
            }
            Message::UpdatePartitions(_) | Message::ReleasePartitions(_) => {}
            Message::TriggerCheckpoint(m) => out.push(Message::AcknowledgeCheckpoint(AcknowledgeCheckpoint {
                job_master: m.job_master,
                job: m.job,
                attempt: m.attempt,
                checkpoint: m.checkpoint,
                state_bytes: 0,
            })),
            Message::ConfirmCheckpoint(_) | Message::AbortCheckpoint(_) => {}
            Message::ErrorReply(e) => return Err((e.code, format!("coordinator reported: {}", e.message))),
            other => {
                return Err((ErrorCode::Unexpected, format!("{} is not a message a worker accepts", other.kind_name())))
            }
        }
        Ok(out)
    }

    /// The vertex information of `m`, read and validated once per vertex and
    /// attempt epoch.
    fn information(&mut self, m: &DeployTask) -> Result<TaskInformation, ErrorReply> {
        let key = (m.attempt.execution_vertex.vertex, m.attempt.attempt);
        let known = &mut self.jobs.entry(m.job).or_default().information;
        if let Some((bytes, info)) = known.get(&key) {
            if *bytes == m.task_information {
                return Ok(info.clone());
            }
        }
        let info = TaskInformation::from_archive(&m.task_information).map_err(|e| ErrorReply {
            code: e.code(),
            message: e.to_string(),
            retryable: false,
        })?;
        known.insert(key, (m.task_information.clone(), info.clone()));
        Ok(info)
    }

    fn submit(&mut self, d: TaskDeploymentDescriptor) -> Result<(), ErrorReply> {
        let refuse = |code, message: String| ErrorReply { code, message, retryable: false };
        if self.tasks.contains_key(&(d.job, d.attempt)) {
            return Err(refuse(ErrorCode::Unexpected, format!("{} of {} is already deployed here", d.attempt, d.job)));
        }
        let slot = self
            .slots
            .get(&d.slot)
            .ok_or_else(|| refuse(ErrorCode::NoSlotAllocated, format!("{} is not a slot of this worker", d.slot)))?;
        match slot.status.allocated {
            Some(a) if a.allocation == d.allocation && a.job == d.job => {}
            _ => {
                return Err(refuse(
                    ErrorCode::NoSlotAllocated,
                    format!("{} is not allocated to {} of {}", d.slot, d.allocation, d.job),
                ))
            }
        }
        if slot.job_master != Some(d.job_master) {
            return Err(refuse(
                ErrorCode::StaleToken,
                format!("job master token {} does not own {}", d.job_master, d.slot),
            ));
        }
        let remote = d
            .inputs
            .iter()
            .flat_map(|g| g.producers.iter())
            .chain(d.outputs.iter().flat_map(|p| p.consumers.iter()))
            .find(|c| c.worker != self.worker);
        if let Some(c) = remote {
            return Err(refuse(
                ErrorCode::Unsupported,
                format!("a channel to {} needs the TCP data plane, which is not built yet", c.worker),
            ));
        }
        let shard = d.slot.shard.0 as usize;
        let cfg = &self.config;
        let per_channel = 1 + u64::from(cfg.exclusive_credits) + u64::from(cfg.floating_credits);
        let subs: u64 = d.outputs.iter().map(|p| p.consumers.len() as u64).sum();
        let network = self.budgets[shard]
            .reserve(subs * per_channel * cfg.segment_bytes as u64)
            .map_err(|e| refuse(ErrorCode::Internal, format!("network memory of shard {shard}: {e}")))?;
        let epoch = d.attempt.attempt;
        let subtask = d.attempt.execution_vertex.subtask;
        let job = self.jobs.entry(d.job).or_default();
        let inputs = d
            .inputs
            .iter()
            .flat_map(|g| g.producers.iter().map(move |p| (epoch, g.edge, p.peer_subtask, p.subpartition)))
            .map(|key| job.claim(key, cfg))
            .collect();
        let outputs = d
            .outputs
            .iter()
            .map(|p| OutputDeployment {
                partitioner: partitioner(p.partitioner),
                senders: p.consumers.iter().map(|c| job.claim((epoch, p.edge, subtask, c.subpartition), cfg)).collect(),
            })
            .collect();
        let job_start = *job.starts.entry(epoch).or_insert_with(Instant::now);
        let progress = self.board.progress(d.job);
        let (registry, resources) = self.live.snapshot();
        let info = TaskInfo {
            vertex: d.vertex_name.clone(),
            subtask,
            parallelism: d.parallelism,
            job_start,
            core: self.shards[shard].core,
            managed_memory: slot.managed.clone(),
        };
        let deployment = TaskDeployment {
            job: d.job,
            attempt: d.attempt,
            info,
            chain: d.chain,
            inputs,
            exclusive_credits: cfg.exclusive_credits,
            floating_credits: cfg.floating_credits,
            outputs,
            registry,
            resources,
            flush_timeout: cfg.flush_timeout,
            idle: cfg.idle,
            min_park: cfg.min_park,
            progress,
        };
        self.tasks.insert(
            (d.job, d.attempt),
            TaskEntry {
                slot: d.slot,
                job_master: d.job_master,
                vertex: d.vertex_name,
                state: ExecutionState::Deploying,
                network,
            },
        );
        self.batch.entry(shard).or_default().push(deployment);
        Ok(())
    }

    /// Hands the batched deployments to their shards; a task whose shard has
    /// stopped is reported failed.
    fn flush(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        for (shard, ds) in std::mem::take(&mut self.batch) {
            let attempts: Vec<(JobId, AttemptId)> = ds.iter().map(|d| (d.job, d.attempt)).collect();
            if self.shards[shard].mailbox.send(ShardCommand::Deploy(ds)).is_err() {
                for (job, attempt) in attempts {
                    let Some(t) = self.tasks.remove(&(job, attempt)) else { continue };
                    out.push(Message::UpdateTaskExecutionState(UpdateTaskExecutionState {
                        job_master: t.job_master,
                        job,
                        attempt,
                        state: ExecutionState::Failed,
                        failure: Some(TaskFailureInfo {
                            cause: format!("shard {shard} has stopped"),
                            secondary: false,
                        }),
                        result: None,
                    }));
                }
            }
        }
        out
    }

    /// Forgets `job` once it holds no slot and runs no task here. Not sooner: a
    /// producer may end before its consumer is deployed, and the channel end it
    /// left must wait for that consumer.
    fn forget_if_idle(&mut self, job: JobId) {
        let holds_slot = self.slots.values().any(|s| s.status.allocated.is_some_and(|a| a.job == job));
        if !holds_slot && !self.tasks.keys().any(|(j, _)| *j == job) && self.jobs.remove(&job).is_some() {
            self.board.ended_here(job);
        }
    }

    /// A task changed state: the update for its job master, if it is still ours.
    fn on_task(&mut self, r: TaskReport) -> Option<Message> {
        let key = (r.job, r.attempt);
        if r.state.is_terminal() {
            self.draining.remove(&key);
        }
        let entry = self.tasks.get_mut(&key)?;
        entry.state = r.state;
        let job_master = entry.job_master;
        if let Some(o) = &r.output {
            // Before the frame: once the job master hears of the end, the output is there.
            self.board.put(r.job, r.attempt, o);
        }
        if r.state.is_terminal() {
            self.tasks.remove(&key);
            self.forget_if_idle(r.job);
        }
        Some(Message::UpdateTaskExecutionState(UpdateTaskExecutionState {
            job_master,
            job: r.job,
            attempt: r.attempt,
            state: r.state,
            failure: r.failure.map(|f| TaskFailureInfo { cause: f.cause, secondary: f.secondary }),
            result: r.output.map(result_info),
        }))
    }
}

fn result_info(o: TaskOutput) -> TaskResultInfo {
    let sinks = o
        .sinks
        .into_iter()
        .filter_map(|s| match s {
            SinkOutput::None => None,
            SinkOutput::Count { records, value_sum } => Some(SinkResult { records, value_sum, latency_ns: None }),
            SinkOutput::Latency(h) => Some(SinkResult {
                records: h.len(),
                value_sum: 0,
                latency_ns: Some([
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    h.max(),
                ]),
            }),
            SinkOutput::Records(r) => Some(SinkResult {
                records: r.len() as u64,
                value_sum: r.iter().fold(0u64, |a, x| a.wrapping_add(x.value)),
                latency_ns: None,
            }),
        })
        .collect();
    TaskResultInfo { records_in: o.records_in, records_out: o.records_out, sinks }
}

enum SessionEnd {
    Stop,
    Lost(String),
}

fn connect(connector: &Connector, events: &Sender<Event>, session: u64, max: usize) -> Option<Box<dyn FrameSink>> {
    match connector {
        Connector::Tcp(addr) => {
            let stream = TcpStream::connect_timeout(addr, Duration::from_secs(2)).ok()?;
            let reader = stream.try_clone().ok()?;
            let sink = TcpSink::new(stream).ok()?;
            spawn_reader(session, reader, events.clone(), max).ok()?;
            Some(Box::new(sink))
        }
        Connector::InProcess(f) => {
            let PipeEnd { sink, reader } = f()?;
            spawn_reader(session, reader, events.clone(), max).ok()?;
            Some(Box::new(sink))
        }
    }
}

fn spawn_reader(session: u64, r: impl Read + Send + 'static, events: Sender<Event>, max: usize) -> std::io::Result<()> {
    link::spawn_reader("worker-conn".into(), r, max, move |received| {
        let event = match received {
            Received::Message(m) => Event::Frame(session, m),
            Received::Bad(e) => Event::Bad(session, e),
            Received::Closed | Received::TimedOut => Event::Closed(session),
        };
        events.send(event).is_ok()
    })
}

fn run(
    mut state: WorkerState,
    connector: Connector,
    options: WorkerOptions,
    rx: Receiver<Event>,
    events: Sender<Event>,
    stopping: Arc<AtomicBool>,
    registered: Arc<AtomicU64>,
) {
    let mut backoff = options.reconnect_min;
    let mut session = 0u64;
    while !stopping.load(Ordering::Acquire) {
        session += 1;
        let end = match connect(&connector, &events, session, options.max_frame_bytes) {
            Some(sink) => serve(&mut state, sink, session, &rx, &registered, &mut backoff, &options),
            None => SessionEnd::Lost("cannot connect".into()),
        };
        state.release_all();
        match end {
            SessionEnd::Stop => break,
            SessionEnd::Lost(why) => {
                tracing::warn!(resource_id = %state.resource_id, "coordinator lost: {why}; retrying in {backoff:?}");
                // Wait out the backoff, still draining task reports and honouring stop.
                let until = Instant::now() + backoff;
                loop {
                    match rx.recv_deadline(until) {
                        Ok(Event::Stop) => return shutdown(state),
                        Ok(Event::Task(r)) => {
                            // No coordinator to tell; this releases what the task held.
                            let _ = state.on_task(r);
                        }
                        Ok(_) => {}
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return shutdown(state),
                    }
                }
                backoff = (backoff * 2).min(options.reconnect_max);
            }
        }
    }
    shutdown(state);
}

fn shutdown(mut state: WorkerState) {
    state.release_all();
    for s in &mut state.shards {
        s.stop();
    }
}

fn serve(
    state: &mut WorkerState,
    mut sink: Box<dyn FrameSink>,
    session: u64,
    rx: &Receiver<Event>,
    registered: &AtomicU64,
    backoff: &mut Duration,
    options: &WorkerOptions,
) -> SessionEnd {
    let register = Message::RegisterWorker(RegisterWorker {
        resource_id: state.resource_id.clone(),
        address: format!("pid {}", std::process::id()),
        resources: state.resources(),
        slots: state.report(),
    });
    if send_message(sink.as_mut(), &register).is_err() {
        return SessionEnd::Lost("the connection broke while registering".into());
    }
    let mut timeout = Duration::from_secs(10);
    let mut last_heard = Instant::now();
    let mut is_registered = false;
    loop {
        let event = match rx.recv_deadline(last_heard + timeout) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                sink.close();
                return SessionEnd::Lost(format!("no word from the coordinator for {} ms", timeout.as_millis()));
            }
            Err(RecvTimeoutError::Disconnected) => return SessionEnd::Stop,
        };
        // Deployments wait in the batch only while more of them follow right away.
        let submit = matches!(&event, Event::Frame(_, Message::SubmitTask(_) | Message::DeployTask(_)));
        let mut replies = if submit { Vec::new() } else { state.flush() };
        replies.extend(match event {
            Event::Stop => {
                if is_registered {
                    let bye = Message::DisconnectWorker(DisconnectWorker {
                        resource_manager: state.rm,
                        worker: state.worker,
                        cause: "worker shutting down".into(),
                    });
                    let _ = send_message(sink.as_mut(), &bye);
                }
                sink.close();
                return SessionEnd::Stop;
            }
            Event::Frame(s, _) | Event::Bad(s, _) | Event::Closed(s) if s != session => continue,
            Event::Closed(_) => {
                sink.close();
                return SessionEnd::Lost("the connection closed".into());
            }
            Event::Bad(_, e) => {
                let _ = send_message(sink.as_mut(), &e.reply());
                sink.close();
                return SessionEnd::Lost(format!("bad frame from the coordinator: {e}"));
            }
            Event::Task(r) => state.on_task(r).into_iter().collect(),
            Event::Frame(_, msg) => {
                last_heard = Instant::now();
                if !is_registered {
                    match msg {
                        Message::RegistrationAccepted(a) => {
                            is_registered = true;
                            state.rm = a.resource_manager;
                            state.reset_slots(a.worker);
                            timeout = Duration::from_millis(a.heartbeat_timeout_ms.max(1));
                            *backoff = options.reconnect_min;
                            registered.fetch_add(1, Ordering::AcqRel);
                            tracing::info!(worker = %a.worker, "registered with the coordinator");
                            Vec::new()
                        }
                        Message::ErrorReply(e) => {
                            sink.close();
                            return SessionEnd::Lost(format!("registration refused: {:?}: {}", e.code, e.message));
                        }
                        other => {
                            let m = format!("expected RegistrationAccepted, got {}", other.kind_name());
                            let _ = send_message(sink.as_mut(), &Message::error(ErrorCode::Unexpected, m.clone()));
                            sink.close();
                            return SessionEnd::Lost(m);
                        }
                    }
                } else {
                    match state.on_message(msg) {
                        Ok(r) => r,
                        Err((code, m)) => {
                            let _ = send_message(sink.as_mut(), &Message::error(code, m.clone()));
                            sink.close();
                            return SessionEnd::Lost(m);
                        }
                    }
                }
            }
        });
        if rx.is_empty() {
            replies.extend(state.flush());
        }
        for r in replies {
            if send_message(sink.as_mut(), &r).is_err() {
                sink.close();
                return SessionEnd::Lost("the connection broke".into());
            }
        }
    }
}

/// The slot table of a worker with `shards` (id, core), every slot free; each
/// slot's managed-memory budget is taken over from `previous` where that held the
/// same shard and index.
fn slot_table(
    worker: WorkerId,
    shards: &[(u32, u32)],
    slots_per_shard: u32,
    managed_bytes: u64,
    previous: BTreeMap<SlotId, SlotState>,
) -> BTreeMap<SlotId, SlotState> {
    let mut budgets: HashMap<(ShardId, u32), Budget> =
        previous.into_iter().map(|(slot, s)| ((slot.shard, slot.index), s.managed)).collect();
    let mut slots = BTreeMap::new();
    for &(shard, core) in shards {
        for index in 0..slots_per_shard {
            let slot = SlotId { worker, shard: ShardId(shard), index };
            let managed = budgets
                .remove(&(slot.shard, index))
                .unwrap_or_else(|| Budget::new(BudgetKind::ManagedMemory, managed_bytes));
            slots.insert(
                slot,
                SlotState { status: SlotStatus { slot, core, allocated: None }, job_master: None, managed },
            );
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardflow_control::ExecutionVertexId;

    fn attempt(subtask: u32) -> AttemptId {
        AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(1), subtask }, attempt: 0 }
    }

    fn output(n: u64) -> TaskOutput {
        TaskOutput { sinks: vec![SinkOutput::Count { records: n, value_sum: n }], records_in: n, records_out: 0 }
    }

    #[test]
    fn a_slot_keeps_its_managed_memory_budget_when_the_worker_registers_again() {
        let first = slot_table(WorkerId(1), &[(0, 3), (1, 5)], 2, 1000, BTreeMap::new());
        assert_eq!(first.len(), 4);
        let slot = SlotId { worker: WorkerId(1), shard: ShardId(1), index: 1 };
        let held = first[&slot].managed.reserve(600).unwrap();

        let second = slot_table(WorkerId(2), &[(0, 3), (1, 5)], 2, 1000, first);
        let again = SlotId { worker: WorkerId(2), shard: ShardId(1), index: 1 };
        assert_eq!(second[&again].status.core, 5);
        assert!(second.values().all(|s| s.status.allocated.is_none() && s.job_master.is_none()));
        assert_eq!(second[&again].managed.available_bytes(), 400, "the cancelled task still holds its share");
        assert!(second[&again].managed.reserve(500).is_err());
        drop(held);
        assert_eq!(second[&again].managed.available_bytes(), 1000);
        let other = SlotId { worker: WorkerId(2), shard: ShardId(0), index: 0 };
        assert_eq!(second[&other].managed.available_bytes(), 1000);
    }

    #[test]
    fn the_board_keeps_outputs_until_taken() {
        let board = JobBoard::embedded();
        board.progress(JobId(1)).store(7, Ordering::Relaxed);
        assert_eq!(board.progress(JobId(1)).load(Ordering::Relaxed), 7, "one counter per job");
        board.put(JobId(1), attempt(0), &output(3));
        board.put(JobId(1), attempt(1), &output(4));
        let taken = board.take(JobId(1));
        assert_eq!(taken.values().map(|o| o.records_in).collect::<Vec<_>>(), vec![3, 4]);
        assert!(board.take(JobId(1)).is_empty(), "taken once");
        assert!(board.progress.lock().unwrap().is_empty());
    }

    #[test]
    fn an_abandoned_jobs_outputs_are_dropped_and_forgotten_when_it_ends() {
        let board = JobBoard::embedded();
        board.put(JobId(2), attempt(0), &output(1));
        board.abandon(JobId(2));
        assert!(board.outputs.lock().unwrap().is_empty(), "what was there is dropped");
        board.put(JobId(2), attempt(1), &output(2));
        assert!(board.outputs.lock().unwrap().is_empty(), "what comes later is not kept");
        board.ended_here(JobId(2));
        assert!(board.abandoned.lock().unwrap().is_empty(), "no marker outlives the job");
        assert!(board.progress.lock().unwrap().is_empty());
    }

    #[test]
    fn a_worker_of_its_own_keeps_no_outputs_and_forgets_a_job_when_it_ends() {
        let board = JobBoard::default();
        board.progress(JobId(3)).store(5, Ordering::Relaxed);
        board.put(JobId(3), attempt(0), &output(1));
        assert!(board.outputs.lock().unwrap().is_empty());
        board.ended_here(JobId(3));
        assert!(board.progress.lock().unwrap().is_empty());
    }
}
