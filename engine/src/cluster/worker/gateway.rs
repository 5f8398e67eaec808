//! The TaskExecutor gateway as a sans-I/O state machine: frames from the
//! coordinator, reports from the shards and the time in; frames to send, shard
//! commands and the end of a session out ([`Action`]). The session loop
//! (`session.rs`) is its I/O edge; tests drive it by hand with paused time.
//!
//! ```text
//!  session loop                         Gateway
//!   connected ──────────connected(now)──────► [Send(RegisterWorker)]
//!   frame ──────────────on_message(now, m)──► Send(reply) | Shard(i, cmd) | End
//!   task report ────────on_task(report)─────► Send(UpdateTaskExecutionState)
//!   inbox drained ──────flush()─────────────► Shard(i, Deploy(batch))
//!   timer ──────────────on_tick(now)────────► End (coordinator silent)  next_deadline() says when
//!   connection lost ────disconnected(why)───► Shard(i, Cancel(job, why))
//! ```
//!
//! It serves slot requests (a slot held by another allocation answers
//! "occupied" with its owner), deployments (refused without the slot's
//! allocation, with another job master's token, or when malformed: parallelism
//! 0, a subtask beyond it, an output without consumers, an input without
//! producers), cancels, frees, heartbeats, slot reports and shard dumps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardflow_control::protocol::*;
use shardflow_control::{AttemptId, ExecutionState, JobId, JobMasterId, ResourceManagerId, ShardId, SlotId, WorkerId};
use shardflow_memory::{Budget, BudgetKind, Reservation};
use shardflow_netstack::CheckpointBarrier;

use super::board::JobBoard;
use super::wiring::JobHere;
use crate::config::EngineConfig;
use crate::registry::LiveRegistry;
use crate::runtime::collector::SinkOutput;
use crate::runtime::task::{TaskCounters, TaskDeployment, TaskOutput};
use crate::shard::{ShardCommand, TaskReport};

/// What the session loop must do.
pub(crate) enum Action {
    /// Send a frame to the coordinator.
    Send(Message),
    /// Post a command to shard `i`'s mailbox.
    Shard(usize, ShardCommand),
    /// The session is over (after the frames before): close the connection.
    /// `retry`: whether registering again can help.
    End {
        /// Why, for the log.
        reason: String,
        /// Whether to connect and register again.
        retry: bool,
    },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Send(m) => write!(f, "Send({})", m.kind_name()),
            Action::Shard(i, c) => write!(f, "Shard({i}, {c:?})"),
            Action::End { reason, retry } => write!(f, "End({reason:?}, retry {retry})"),
        }
    }
}

/// A shard as the gateway sees it: index, core and network budget.
pub(crate) struct ShardSlots {
    pub(crate) id: u32,
    pub(crate) core: usize,
    /// The thread that runs it, for its CPU time in a dump.
    pub(crate) thread_id: i32,
    pub(crate) network: Budget,
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
    /// Its record counts, as its task publishes them.
    counters: Arc<TaskCounters>,
}

/// Where the conversation with the coordinator stands.
enum Registration {
    /// Waiting for the answer to `RegisterWorker` until `deadline`.
    Pending { deadline: Instant },
    /// Registered; silent past `timeout` since `last_heard`, the coordinator is lost.
    Registered { last_heard: Instant, timeout: Duration },
    /// No session.
    Idle,
}

/// The worker's TaskExecutor gateway.
pub(crate) struct Gateway {
    config: EngineConfig,
    live: Arc<LiveRegistry>,
    board: Arc<JobBoard>,
    shards: Vec<ShardSlots>,
    resource_id: String,
    registration_timeout: Duration,
    registration: Registration,
    /// The token the coordinator of this session must register us under: the
    /// leadership's epoch, under high availability.
    expected_rm: Option<ResourceManagerId>,
    worker: WorkerId,
    rm: ResourceManagerId,
    slots: BTreeMap<SlotId, SlotState>,
    tasks: HashMap<(JobId, AttemptId), TaskEntry>,
    jobs: HashMap<JobId, JobHere>,
    /// Network memory of tasks cancelled when the coordinator was lost, held until
    /// each reports its end.
    draining: HashMap<(JobId, AttemptId), Reservation>,
    /// Deployments not yet handed to their shard, by shard: the tasks of one job
    /// that arrive together go to a shard in one message (one cross-thread wake,
    /// and they start together).
    batch: BTreeMap<usize, Vec<TaskDeployment>>,
}

/// A refusal of a deployment.
fn refuse(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply { code, message, retryable: code.is_retryable() }
}

impl Gateway {
    pub(crate) fn new(
        config: EngineConfig,
        live: Arc<LiveRegistry>,
        board: Arc<JobBoard>,
        shards: Vec<ShardSlots>,
        resource_id: String,
        registration_timeout: Duration,
    ) -> Self {
        let mut g = Gateway {
            config,
            live,
            board,
            shards,
            resource_id,
            registration_timeout,
            registration: Registration::Idle,
            expected_rm: None,
            worker: WorkerId(u32::MAX),
            rm: ResourceManagerId(0),
            slots: BTreeMap::new(),
            tasks: HashMap::new(),
            jobs: HashMap::new(),
            draining: HashMap::new(),
            batch: BTreeMap::new(),
        };
        g.reset_slots(WorkerId(u32::MAX));
        g
    }

    /// The name it registers under.
    pub(crate) fn resource_id(&self) -> &str {
        &self.resource_id
    }

    /// Whether a coordinator has accepted its registration in this session.
    pub(crate) fn is_registered(&self) -> bool {
        matches!(self.registration, Registration::Registered { .. })
    }

    /// When [`Self::on_tick`] must run at the latest.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.registration {
            Registration::Pending { deadline } => Some(deadline),
            Registration::Registered { last_heard, timeout } => Some(last_heard + timeout),
            Registration::Idle => None,
        }
    }

    /// A connection to a coordinator is open: register. Under high
    /// availability, `expected` is the epoch of the leader the connection was
    /// made to: a registration under any other token is refused (a deposed
    /// leader's).
    pub(crate) fn connected(&mut self, now: Instant, expected: Option<ResourceManagerId>) -> Vec<Action> {
        self.registration = Registration::Pending { deadline: now + self.registration_timeout };
        self.expected_rm = expected;
        vec![Action::Send(Message::RegisterWorker(RegisterWorker {
            resource_id: self.resource_id.clone(),
            address: format!("{} pid {}", hostname(), std::process::id()),
            resources: self.resources(),
            slots: self.report(),
        }))]
    }

    /// Time passed: a coordinator silent too long is lost.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let reason = match self.registration {
            Registration::Pending { deadline } if now >= deadline => format!(
                "the coordinator did not answer the registration within {} ms",
                self.registration_timeout.as_millis()
            ),
            Registration::Registered { last_heard, timeout } if now >= last_heard + timeout => {
                format!("no word from the coordinator for {} ms", timeout.as_millis())
            }
            _ => return Vec::new(),
        };
        vec![Action::End { reason, retry: true }]
    }

    /// The session is closed: every task is cancelled, `why` (the coordinator
    /// is gone, or the worker stops), and every allocation forgotten.
    pub(crate) fn disconnected(&mut self, why: &str) -> Vec<Action> {
        self.registration = Registration::Idle;
        let jobs: Vec<JobId> = self.tasks.keys().map(|(j, _)| *j).collect();
        let mut out = Vec::new();
        for shard in 0..self.shards.len() {
            out.extend(jobs.iter().map(|&job| Action::Shard(shard, ShardCommand::Cancel(job, why.into()))));
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
        out
    }

    /// The worker stops: it says goodbye if registered (the session loop then
    /// closes the connection).
    pub(crate) fn stop(&mut self) -> Vec<Action> {
        if !self.is_registered() {
            return Vec::new();
        }
        vec![Action::Send(Message::DisconnectWorker(DisconnectWorker {
            resource_manager: self.rm,
            worker: self.worker,
            cause: "worker shutting down".into(),
        }))]
    }

    /// The coordinator sent bytes that are not a frame.
    pub(crate) fn on_bad_frame(&mut self, e: &FrameError) -> Vec<Action> {
        vec![
            Action::Send(e.reply()),
            Action::End { reason: format!("bad frame from the coordinator: {e}"), retry: true },
        ]
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

    /// A frame from the coordinator.
    pub(crate) fn on_message(&mut self, now: Instant, msg: Message) -> Vec<Action> {
        match self.registration {
            Registration::Idle => Vec::new(),
            Registration::Pending { .. } => self.on_registration_answer(now, msg),
            Registration::Registered { timeout, .. } => {
                self.registration = Registration::Registered { last_heard: now, timeout };
                match self.serve(msg) {
                    Ok(out) => out,
                    Err((code, m)) => {
                        vec![Action::Send(Message::error(code, m.clone())), Action::End { reason: m, retry: true }]
                    }
                }
            }
        }
    }

    fn on_registration_answer(&mut self, now: Instant, msg: Message) -> Vec<Action> {
        match msg {
            Message::RegistrationAccepted(a) if self.expected_rm.is_some_and(|e| e != a.resource_manager) => {
                let m = format!(
                    "the coordinator accepted us under token {}, but the leader's epoch is {}: it does not lead",
                    a.resource_manager,
                    self.expected_rm.map_or(0, |e| e.0)
                );
                vec![
                    Action::Send(Message::error(ErrorCode::StaleToken, m.clone())),
                    Action::End { reason: m, retry: true },
                ]
            }
            Message::RegistrationAccepted(a) => {
                let timeout = Duration::from_millis(a.heartbeat_timeout_ms.max(1));
                self.registration = Registration::Registered { last_heard: now, timeout };
                self.rm = a.resource_manager;
                self.reset_slots(a.worker);
                tracing::info!(worker = %a.worker, "registered with the coordinator");
                Vec::new()
            }
            Message::ErrorReply(e) => {
                // Another live worker holds this name, or the coordinator wants a
                // secret we do not have: registering again cannot help.
                let retry = !matches!(e.code, ErrorCode::DuplicateRegistration | ErrorCode::Unauthenticated);
                vec![Action::End { reason: format!("registration refused: {}", e.message), retry }]
            }
            other => {
                let m = format!("expected RegistrationAccepted, got {}", other.kind_name());
                vec![
                    Action::Send(Message::error(ErrorCode::Unexpected, m.clone())),
                    Action::End { reason: m, retry: true },
                ]
            }
        }
    }

    /// Handles one message of a registered session; returns what to do.
    fn serve(&mut self, msg: Message) -> Result<Vec<Action>, (ErrorCode, String)> {
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
                out.push(Action::Send(Message::HeartbeatFromWorker(HeartbeatFromWorker {
                    resource_manager: self.rm,
                    worker: self.worker,
                    seq: m.seq,
                    report: self.report(),
                    tasks: self.progress(),
                })));
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
                out.push(Action::Send(Message::SlotRequestReply(SlotRequestReply {
                    slot: m.slot,
                    allocation: m.allocation,
                    outcome,
                })));
            }
            Message::SubmitTask(m) => {
                let (job, attempt) = (m.descriptor.job, m.descriptor.attempt);
                if let Err(error) = self.deploy(m.descriptor) {
                    out.push(self.refused(job, attempt, error));
                }
            }
            Message::DeployTask(m) => {
                let (job, attempt) = (m.job, m.attempt);
                if let Err(error) = self.information(&m).and_then(|info| self.deploy(m.with_information(info))) {
                    out.push(self.refused(job, attempt, error));
                }
            }
            Message::CancelTask(m) => {
                if let Some(shard) = self.shard_of(m.job, m.attempt, m.job_master)? {
                    out.push(Action::Shard(shard, ShardCommand::CancelAttempt(m.job, m.attempt, m.reason.clone())));
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
                        let why = "its slot was freed".to_string();
                        out.push(Action::Shard(
                            slot.shard.0 as usize,
                            ShardCommand::CancelAttempt(*job, *attempt, why),
                        ));
                    }
                }
                if let Some(job) = freed {
                    self.forget_if_idle(job);
                }
            }
            Message::RequestSlotReport(m) => {
                stale(m.resource_manager, self.rm)?;
                out.push(Action::Send(Message::SlotReportMessage(SlotReportMessage {
                    resource_manager: self.rm,
                    worker: self.worker,
                    report: self.report(),
                })));
            }
            Message::RequestShardDump(m) => {
                stale(m.resource_manager, self.rm)?;
                out.push(Action::Send(Message::ShardDump(self.dump())));
            }
            Message::DisconnectResourceManager(m) => {
                stale(m.resource_manager, self.rm)?;
                out.push(Action::End { reason: format!("coordinator disconnected us: {}", m.cause), retry: true });
            }
            Message::UpdatePartitions(_) | Message::ReleasePartitions(_) => {}
            Message::TriggerCheckpoint(m) if m.stop => {
                if let Some(shard) = self.shard_of(m.job, m.attempt, m.job_master)? {
                    let barrier =
                        CheckpointBarrier { checkpoint_id: m.checkpoint.0, timestamp_ms: m.timestamp_ms, stop: true };
                    out.push(Action::Shard(shard, ShardCommand::StopAttempt(m.job, m.attempt, barrier)));
                }
            }
            Message::TriggerCheckpoint(_) | Message::ConfirmCheckpoint(_) | Message::AbortCheckpoint(_) => {
                return Err((ErrorCode::Unsupported, "this worker takes no checkpoints yet".into()));
            }
            Message::ErrorReply(e) => return Err((e.code, format!("coordinator reported: {}", e.message))),
            other => {
                return Err((ErrorCode::Unexpected, format!("{} is not a message a worker accepts", other.kind_name())))
            }
        }
        Ok(out)
    }

    /// The shard running `attempt` of `job`, if it runs here; a message about
    /// it from a job master that does not own it is an error.
    fn shard_of(
        &self,
        job: JobId,
        attempt: AttemptId,
        job_master: JobMasterId,
    ) -> Result<Option<usize>, (ErrorCode, String)> {
        let Some(t) = self.tasks.get(&(job, attempt)) else { return Ok(None) };
        if t.job_master != job_master {
            return Err((ErrorCode::StaleToken, format!("job master token {job_master} does not own {attempt}")));
        }
        Ok(Some(t.slot.shard.0 as usize))
    }

    fn refused(&mut self, job: JobId, attempt: AttemptId, error: ErrorReply) -> Action {
        tracing::warn!(%job, %attempt, "task refused: {}", error.message);
        self.forget_if_idle(job);
        Action::Send(Message::TaskRefused(TaskRefused { job, attempt, error }))
    }

    /// Its tasks' record counts and times so far, as they published them.
    fn progress(&self) -> Vec<TaskProgress> {
        self.tasks
            .iter()
            .map(|(&(job, attempt), t)| {
                let c = t.counters.read();
                TaskProgress { job, attempt, records_in: c.records_in, records_out: c.records_out, times: c.times }
            })
            .collect()
    }

    fn dump(&self) -> ShardDump {
        let mut tasks: Vec<_> = self.tasks.iter().collect();
        tasks.sort_unstable_by_key(|(key, _)| **key);
        let shards = self
            .shards
            .iter()
            .map(|s| ShardDumpEntry {
                shard: s.id,
                core: s.core as u32,
                cpu_ms: crate::cpu::thread_cpu_time(s.thread_id).map(|t| t.as_millis() as u64),
                tasks: tasks
                    .iter()
                    .filter(|(_, t)| t.slot.shard.0 == s.id)
                    .map(|(&(job, attempt), t)| {
                        let c = t.counters.read();
                        TaskDumpEntry {
                            job,
                            attempt,
                            vertex: t.vertex.clone(),
                            state: t.state,
                            records_in: c.records_in,
                            records_out: c.records_out,
                            times: c.times,
                        }
                    })
                    .collect(),
            })
            .collect();
        ShardDump { worker: self.worker, shards }
    }

    /// No more frames right now: the batched deployments go to their shards.
    pub(crate) fn flush(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.batch)
            .into_iter()
            .map(|(shard, ds)| Action::Shard(shard, ShardCommand::Deploy(ds)))
            .collect()
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

    /// A task changed state: the update for its job master, if it is still ours
    /// and a coordinator is there to hear it.
    pub(crate) fn on_task(&mut self, r: TaskReport) -> Vec<Action> {
        let key = (r.job, r.attempt);
        if r.state.is_terminal() {
            self.draining.remove(&key);
        }
        let Some(entry) = self.tasks.get_mut(&key) else { return Vec::new() };
        entry.state = r.state;
        let job_master = entry.job_master;
        let result = r.output.as_ref().map(result_info);
        if let Some(o) = r.output {
            // Before the frame: once the job master hears of the end, the output is
            // there (moved: a snapshot in it holds all the task's state).
            self.board.put(r.job, r.attempt, o);
        }
        if r.state.is_terminal() {
            self.tasks.remove(&key);
            self.forget_if_idle(r.job);
        }
        if !self.is_registered() {
            return Vec::new();
        }
        vec![Action::Send(Message::UpdateTaskExecutionState(UpdateTaskExecutionState {
            job_master,
            job: r.job,
            attempt: r.attempt,
            state: r.state,
            failure: r.failure.map(|f| TaskFailureInfo { cause: f.cause, secondary: f.secondary }),
            result,
        }))]
    }
}

/// This machine's name, as the kernel knows it.
pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn result_info(o: &TaskOutput) -> TaskResultInfo {
    let sinks = o
        .sinks
        .iter()
        .filter_map(|s| match s {
            SinkOutput::None => None,
            &SinkOutput::Count { records, value_sum } => Some(SinkResult { records, value_sum, latency_ns: None }),
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
        })
        .collect();
    TaskResultInfo { records_in: o.records_in, records_out: o.records_out, times: o.times, sinks }
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

mod deploy;

#[cfg(test)]
mod tests;
