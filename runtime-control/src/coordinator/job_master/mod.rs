//! One job's master (Flink's JobMaster): its execution graph, placement and
//! allocations, deployments, the states its subtasks report, failover and
//! restarts, and its results. It acts on the cluster only through
//! [`Gateways`]: the slot manager, the workers' connections and the outputs.
//!
//! The master's own lifecycle is [`Phase`], with its legal edges written out:
//!
//! ```text
//!  Created ──placed, deploy──► Running ──failure, restart allowed──► RestartPending
//!   (submitted or recovered;    ▲  │                                   │ all terminal, delay over
//!    waits for slots)           │  └──── terminal (finished, failed,   ▼
//!     │                 deploy  └─────── cancelled) ─► Done ◄── WaitingForSlots
//!     └── gives up after the wait, cancelled ─────────► Done     (gives up after the wait)
//! ```
//!
//! An error of the execution graph's state machine here is a bug, never
//! swallowed: the job fails with it as its cause ([`JobMaster::abort`]).
//! How an attempt becomes slot requests and deployment frames is in
//! `deploy.rs`; what the master tells of its job (listing, details, record
//! counts) in `report.rs`.

mod deploy;
mod report;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::config::CoordinatorConfig;
use super::{ConnId, Output};
use crate::error::ControlError;
use crate::execution_graph::ExecutionGraph;
use crate::ids::{
    AllocationId, AttemptId, CheckpointId, ExecutionVertexId, JobId, JobMasterId, ResourceManagerId, SlotId, VertexId,
    WorkerId,
};
use crate::job_graph::JobGraph;
use crate::job_store::JobRecord;
use crate::placement::{PlacementStrategy, SlotAssignment};
use crate::protocol::*;
use crate::restart::{RestartDecision, RestartTracker};
use crate::slot_manager::SlotManager;
use crate::state::{ExecutionState, JobStatus};

/// Where a job master is in its life (beside its job's [`JobStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// CREATED, never deployed: waiting until `deadline` for the slots to place
    /// it in (a submission that found too few free, the cluster's workers still
    /// registering or other jobs holding them; or a job a new leader recovered,
    /// which first waits for the workers it ran on), then deployed from the
    /// start.
    Created {
        /// When it gives up.
        deadline: Instant,
    },
    /// Deployed (or being deployed); states flow.
    Running,
    /// Failed over; restart once every subtask is terminal and `at` has come.
    RestartPending {
        /// When the restart strategy allows the restart.
        at: Instant,
    },
    /// Restart due, waiting for free slots until `deadline`.
    WaitingForSlots {
        /// When it gives up.
        deadline: Instant,
    },
    /// Globally terminal: nothing more happens.
    Done,
}

impl Phase {
    /// Whether `self → to` is a legal edge (the diagram in the module docs).
    pub(super) fn can_transition(self, to: Phase) -> bool {
        use Phase::*;
        matches!(
            (self, to),
            (Created { .. }, Running | Done)
                | (Running, RestartPending { .. } | Done)
                | (RestartPending { .. }, WaitingForSlots { .. } | Done)
                | (WaitingForSlots { .. }, Running | Done)
        )
    }
}

/// What a job master may use of the rest of the coordinator while it acts.
pub(super) struct Gateways<'a> {
    /// The ResourceManager's slots.
    pub(super) slots: &'a mut SlotManager,
    /// Each registered worker's connection.
    pub(super) workers: &'a BTreeMap<WorkerId, ConnId>,
    /// What the driver must do.
    pub(super) out: &'a mut Vec<Output>,
    /// The coordinator's settings.
    pub(super) config: &'a CoordinatorConfig,
    /// The ResourceManager's fencing token (slot requests carry it).
    pub(super) rm: ResourceManagerId,
}

impl Gateways<'_> {
    fn send_to_worker(&mut self, worker: WorkerId, msg: Message) {
        if let Some(&conn) = self.workers.get(&worker) {
            self.out.push(Output::Send(conn, msg));
        }
    }
}

/// The master of one job.
pub(super) struct JobMaster {
    id: JobId,
    token: JobMasterId,
    graph: JobGraph,
    order: Vec<VertexId>,
    eg: ExecutionGraph,
    placement: PlacementStrategy,
    restart: RestartTracker,
    assignment: SlotAssignment,
    allocations: BTreeMap<SlotId, AllocationId>,
    phase: Phase,
    results: BTreeMap<ExecutionVertexId, TaskResultInfo>,
    /// Each running subtask's record counts as its worker's last heartbeat
    /// said (of the attempt it names).
    progress: BTreeMap<ExecutionVertexId, TaskProgress>,
    failure: Option<String>,
    /// The recorded failure was caused by a peer going away: a root cause that
    /// reports later replaces it.
    failure_secondary: bool,
    deployed_at: Instant,
    all_running: Option<Duration>,
    /// What the job store holds of it, where a job store is kept; `None` before
    /// the first write.
    stored: Option<StoredState>,
    /// The resource ids of the workers its latest deployment ran on.
    workers: Vec<String>,
    /// A recovered job's workers of old, and until when it waits for them to
    /// register before it is placed on whatever is there.
    awaiting: Option<(Vec<String>, Instant)>,
    /// Whether a new leader recovered it from the job store (else it was
    /// submitted to this one).
    recovered: bool,
    /// The last checkpoint id handed out (a stop with a snapshot takes one).
    checkpoints: u64,
    /// The user asked to stop the job with a snapshot.
    stop_requested: bool,
    /// The attempt (epoch) whose sources were told to stop.
    stop_sent: Option<u32>,
}

/// What a job store write records that can change: epoch, restarts, whether it
/// ended, and its workers.
type StoredState = (u32, u32, bool, Vec<String>);

impl JobMaster {
    /// The master of a validated job (`order` from its validation), CREATED and
    /// waiting until `deadline` for slots ([`Self::place`], then
    /// [`Self::start_deploy`]).
    #[allow(clippy::too_many_arguments, reason = "one constructor, called once, with named fields")]
    pub(super) fn submitted(
        id: JobId,
        token: JobMasterId,
        graph: JobGraph,
        order: Vec<VertexId>,
        placement: PlacementStrategy,
        restart: RestartTracker,
        now: Instant,
        deadline: Instant,
    ) -> Self {
        let eg = ExecutionGraph::expand(id, &graph, &order);
        Self::fresh(id, token, graph, order, eg, placement, restart, Phase::Created { deadline }, now)
    }

    /// The master of a job a new leader read from its job store (`record`, whose
    /// graph validated to `order`): CREATED, its attempts numbered on from the
    /// record's epoch, waiting until `deadline` for slots to deploy it from the
    /// start, and until `settle` (at most) for the workers it ran on to register.
    #[allow(clippy::too_many_arguments, reason = "one constructor, called once, with named fields")]
    pub(super) fn recover(
        record: &JobRecord,
        token: JobMasterId,
        order: Vec<VertexId>,
        placement: PlacementStrategy,
        restart: RestartTracker,
        now: Instant,
        deadline: Instant,
        settle: Instant,
    ) -> Result<Self, ControlError> {
        let mut eg = ExecutionGraph::expand(record.job, &record.graph, &order);
        eg.resume_at(record.epoch.saturating_add(1))?;
        let phase = Phase::Created { deadline };
        let mut jm = Self::fresh(record.job, token, record.graph.clone(), order, eg, placement, restart, phase, now);
        jm.recovered = true;
        jm.stored = Some((record.epoch, record.restarts, record.has_ended(), record.workers.clone()));
        jm.workers = record.workers.clone();
        jm.awaiting = (!record.workers.is_empty()).then(|| (record.workers.clone(), settle.min(deadline)));
        Ok(jm)
    }

    /// A master in `phase` that has placed, deployed and stored nothing yet.
    #[allow(clippy::too_many_arguments, reason = "private; the two constructors above name every field")]
    fn fresh(
        id: JobId,
        token: JobMasterId,
        graph: JobGraph,
        order: Vec<VertexId>,
        eg: ExecutionGraph,
        placement: PlacementStrategy,
        restart: RestartTracker,
        phase: Phase,
        now: Instant,
    ) -> Self {
        JobMaster {
            id,
            token,
            graph,
            order,
            eg,
            placement,
            restart,
            assignment: SlotAssignment::default(),
            allocations: BTreeMap::new(),
            phase,
            results: BTreeMap::new(),
            progress: BTreeMap::new(),
            failure: None,
            failure_secondary: false,
            deployed_at: now,
            all_running: None,
            stored: None,
            workers: Vec::new(),
            awaiting: None,
            recovered: false,
            checkpoints: 0,
            stop_requested: false,
            stop_sent: None,
        }
    }

    /// The job as the job store keeps it now.
    pub(super) fn record(&self) -> JobRecord {
        let status = self.eg.status();
        JobRecord {
            job: self.id,
            graph: self.graph.clone(),
            placement: self.placement.to_string(),
            restart: self.restart.strategy().to_string(),
            epoch: self.eg.epoch(),
            restarts: self.restart.restarts(),
            status,
            details: status.is_globally_terminal().then(|| self.details()),
            latest_checkpoint: None,
            workers: self.workers.clone(),
        }
    }

    /// Whether the job store's record of it is out of date (its epoch, its
    /// restarts, whether it has ended or its workers changed since the last
    /// write).
    pub(super) fn store_due(&self) -> bool {
        self.stored != Some(self.stored_state())
    }

    /// The job store now holds [`Self::record`].
    pub(super) fn stored(&mut self) {
        self.stored = Some(self.stored_state());
    }

    fn stored_state(&self) -> StoredState {
        (self.eg.epoch(), self.restart.restarts(), self.eg.status().is_globally_terminal(), self.workers.clone())
    }

    /// Its job's id.
    pub(super) fn id(&self) -> JobId {
        self.id
    }

    /// Its fencing token.
    pub(super) fn token(&self) -> JobMasterId {
        self.token
    }

    /// Its job graph.
    pub(super) fn graph(&self) -> &JobGraph {
        &self.graph
    }

    /// The job's status.
    pub(super) fn status(&self) -> JobStatus {
        self.eg.status()
    }

    /// Where the job would be placed now.
    pub(super) fn place(&self, slots: &SlotManager) -> Result<SlotAssignment, ControlError> {
        slots.place(&self.graph, &self.order, &self.placement)
    }

    fn set_phase(&mut self, to: Phase) -> Result<(), ControlError> {
        if !self.phase.can_transition(to) {
            return Err(ControlError::IllegalPhaseTransition {
                from: format!("{:?}", self.phase),
                to: format!("{to:?}"),
            });
        }
        self.phase = to;
        Ok(())
    }

    /// When it must be looked at again at the latest.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::RestartPending { at } => Some(at),
            Phase::WaitingForSlots { deadline } => Some(deadline),
            Phase::Created { deadline } => {
                Some(self.awaiting.as_ref().map_or(deadline, |(_, settle)| deadline.min(*settle)))
            }
            _ => None,
        }
    }

    /// Whether every subtask of the current attempt runs (or has finished) and
    /// the job is not restarting.
    pub(super) fn all_running(&self) -> bool {
        self.phase == Phase::Running
            && self.eg.subtasks.iter().all(|s| matches!(s.state, ExecutionState::Running | ExecutionState::Finished))
    }

    /// Cancels `attempts`, telling their tasks `reason`.
    fn send_cancels(&self, gw: &mut Gateways<'_>, attempts: &[AttemptId], reason: &str) {
        for &attempt in attempts {
            let Some(place) = self.assignment.of(attempt.execution_vertex) else { continue };
            let cancel = CancelTask { job_master: self.token, job: self.id, attempt, reason: reason.to_string() };
            gw.send_to_worker(place.slot.worker, Message::CancelTask(cancel));
        }
    }

    /// The job's failure as the tasks cancelled for it are told.
    fn failure_reason(&self, what: &str) -> String {
        format!("{what}: {}", self.failure.as_deref().unwrap_or("a subtask failed"))
    }

    /// The user cancels the job: every subtask not terminal is cancelled.
    pub(super) fn cancel(&mut self, gw: &mut Gateways<'_>) {
        if let Err(e) = self.eg.cancel() {
            return self.abort(gw, &e);
        }
        let to_cancel = self.eg.begin_cancel();
        self.send_cancels(gw, &to_cancel, "the job was cancelled");
    }

    /// The user stops the job with a snapshot: once every subtask runs (at
    /// once, or when its deployment or a restart is done), each running source
    /// subtask is told to snapshot and stop after a barrier, and the rest of
    /// the job follows it to the end of its input, snapshotting instead of
    /// finishing. `Err` says why the job cannot be stopped (it is being
    /// cancelled).
    pub(super) fn stop_with_snapshot(&mut self, gw: &mut Gateways<'_>) -> Result<(), String> {
        let status = self.status();
        if matches!(status, JobStatus::Cancelling | JobStatus::Canceled) {
            return Err(format!("{} is being cancelled ({status}): nothing to stop", self.id));
        }
        self.stop_requested = true;
        self.trigger_stop_if_due(gw);
        Ok(())
    }

    /// Tells the sources of the running attempt to stop, if a stop was asked
    /// and they have not been told yet.
    fn trigger_stop_if_due(&mut self, gw: &mut Gateways<'_>) {
        let epoch = self.eg.epoch();
        if !self.stop_requested || !self.all_running() || self.stop_sent == Some(epoch) {
            return;
        }
        self.stop_sent = Some(epoch);
        self.checkpoints += 1;
        let checkpoint = CheckpointId(self.checkpoints);
        let sources: Vec<VertexId> =
            self.order.iter().copied().filter(|v| self.graph.edges.iter().all(|e| e.target != *v)).collect();
        for s in self.eg.subtasks.iter().filter(|s| s.state == ExecutionState::Running) {
            let attempt = s.attempt;
            if !sources.contains(&attempt.execution_vertex.vertex) {
                continue;
            }
            let Some(place) = self.assignment.of(attempt.execution_vertex) else { continue };
            // No wall clock in the coordinator (time enters as `now`): the stop's barrier is untimed.
            let trigger = TriggerCheckpoint {
                job_master: self.token,
                job: self.id,
                attempt,
                checkpoint,
                timestamp_ms: 0,
                stop: true,
            };
            gw.send_to_worker(place.slot.worker, Message::TriggerCheckpoint(trigger));
        }
        tracing::info!(job = %self.id, checkpoint = checkpoint.0, "sources told to stop with a snapshot");
    }

    /// Fails the job for an error of its own bookkeeping (a bug): logged, recorded
    /// as the job's failure, every subtask cancelled, the job FAILED.
    pub(super) fn abort(&mut self, gw: &mut Gateways<'_>, error: &ControlError) {
        tracing::error!(job = %self.id, "job master error, failing the job: {error}");
        self.failure = Some(format!("internal error of the job master: {error}"));
        self.failure_secondary = false;
        let to_cancel = self.eg.abort();
        self.send_cancels(gw, &to_cancel, &self.failure_reason("the job failed"));
    }

    /// A state change of `attempt`, reported by its worker (or concluded by the
    /// coordinator, as when a worker is lost).
    pub(super) fn on_task_state(
        &mut self,
        gw: &mut Gateways<'_>,
        now: Instant,
        attempt: AttemptId,
        mut state: ExecutionState,
        mut failure: Option<TaskFailureInfo>,
        result: Option<TaskResultInfo>,
    ) {
        let Some(current) = self.eg.subtasks.iter().find(|s| s.attempt == attempt).map(|s| s.state) else {
            tracing::debug!(job = %self.id, %attempt, "update for an old attempt");
            return;
        };
        // Cancelled on its worker without this master asking (its shard stopped,
        // or a producer its worker cancelled took it along): the attempt is lost,
        // a failure that moves the job on — not a report to ignore while the job
        // waits for it.
        if state == ExecutionState::Canceled && current != ExecutionState::Canceling && !current.is_terminal() {
            state = ExecutionState::Failed;
            let cause = "the task was cancelled on its worker, not by its job master".to_string();
            failure = Some(failure.unwrap_or(TaskFailureInfo { cause, secondary: true }));
        }
        // A task that failed while being cancelled still names the job's root cause.
        let reported = state;
        if current == ExecutionState::Canceling {
            match state {
                ExecutionState::Initializing | ExecutionState::Running => return,
                ExecutionState::Finished | ExecutionState::Failed => state = ExecutionState::Canceled,
                _ => {}
            }
        }
        if let Some(r) = result {
            self.results.insert(attempt.execution_vertex, r);
        }
        let status_before = self.eg.status();
        let cause = failure.as_ref().map(|f| f.cause.clone());
        let cancelled_by_user = matches!(status_before, JobStatus::Cancelling | JobStatus::Canceled);
        if let (Some(f), ExecutionState::Failed, false) = (&failure, reported, cancelled_by_user) {
            let name = self.eg.subtasks.iter().find(|s| s.attempt == attempt).map(|s| s.display_name.clone());
            let replaces = self.failure.is_none()
                || (!f.secondary && (status_before == JobStatus::Running || self.failure_secondary));
            if replaces {
                self.failure = Some(format!("{}: {}", name.unwrap_or_default(), f.cause));
                self.failure_secondary = f.secondary;
            }
        }
        if let Err(e) = self.eg.on_state(attempt, state, cause) {
            // A late or repeated report (a worker's view lags the master's): not a bug.
            tracing::debug!(job = %self.id, %attempt, "ignored task update: {e}");
            return;
        }
        if self.all_running.is_none()
            && self.eg.subtasks.iter().all(|s| matches!(s.state, ExecutionState::Running | ExecutionState::Finished))
        {
            self.all_running = Some(now.saturating_duration_since(self.deployed_at));
        }
        if self.eg.status() == JobStatus::Failing && status_before != JobStatus::Failing {
            match self.restart.on_failure(now) {
                RestartDecision::RestartAt(at) => {
                    tracing::info!(job = %self.id, restarts = self.restart.restarts(), "job fails over; restart in {:?}", at - now);
                    let fail_over = self.eg.fail_over().and_then(|to_cancel| {
                        self.set_phase(Phase::RestartPending { at })?;
                        Ok(to_cancel)
                    });
                    match fail_over {
                        Ok(to_cancel) => self.send_cancels(gw, &to_cancel, &self.failure_reason("the job restarts")),
                        Err(e) => self.abort(gw, &e),
                    }
                }
                RestartDecision::GiveUp => {
                    tracing::info!(job = %self.id, "job fails: the restart strategy allows no more restarts");
                    let to_cancel = self.eg.begin_cancel();
                    self.send_cancels(gw, &to_cancel, &self.failure_reason("the job failed"));
                }
            }
        }
        self.trigger_stop_if_due(gw);
    }

    /// `worker` is gone: its subtasks failed (or, being cancelled, are cancelled).
    pub(super) fn worker_lost(&mut self, gw: &mut Gateways<'_>, now: Instant, worker: WorkerId, cause: &str) {
        self.allocations.retain(|slot, _| slot.worker != worker);
        let on_worker: Vec<(AttemptId, ExecutionState)> = self
            .eg
            .subtasks
            .iter()
            .filter(|s| !s.state.is_terminal())
            .filter(|s| self.assignment.of(s.id()).is_some_and(|p| p.slot.worker == worker))
            .map(|s| (s.attempt, s.state))
            .collect();
        for (attempt, state) in on_worker {
            let to = if state == ExecutionState::Canceling { ExecutionState::Canceled } else { ExecutionState::Failed };
            let failure = TaskFailureInfo { cause: cause.to_string(), secondary: false };
            self.on_task_state(gw, now, attempt, to, Some(failure), None);
        }
    }

    /// Moves the job on: frees the slots of a terminal job, restarts a failed-over
    /// job when its time has come and slots are free, gives up waiting for slots.
    /// Returns `true` when the job has just ended.
    pub(super) fn settle(&mut self, gw: &mut Gateways<'_>, now: Instant) -> bool {
        let status = self.eg.status();
        match self.phase {
            Phase::Done => false,
            _ if status.is_globally_terminal() => {
                self.phase = Phase::Done;
                tracing::info!(job = %self.id, %status, "job ended");
                self.free_slots(gw, &format!("job {status}"));
                true
            }
            Phase::Running => false,
            Phase::RestartPending { at } => {
                if self.eg.all_terminal() {
                    self.free_slots(gw, "job restarts");
                    if now >= at {
                        let deadline = now + gw.config.slot_wait_timeout;
                        if let Err(e) = self.set_phase(Phase::WaitingForSlots { deadline }) {
                            self.abort(gw, &e);
                            return self.settle(gw, now);
                        }
                        return self.try_restart(gw, now);
                    }
                }
                false
            }
            Phase::WaitingForSlots { .. } => self.try_restart(gw, now),
            Phase::Created { deadline } => self.try_first_deploy(gw, now, deadline),
        }
    }

    /// Deploys a job never deployed if enough slots are free, or fails it once
    /// the wait is over. Returns `true` when the job has just ended.
    fn try_first_deploy(&mut self, gw: &mut Gateways<'_>, now: Instant, deadline: Instant) -> bool {
        if let Some((workers, settle)) = &self.awaiting {
            let registered = |id: &String| gw.slots.workers().any(|(_, w)| &w.resource_id == id);
            if now < *settle && !workers.iter().all(registered) {
                return false;
            }
            self.awaiting = None;
        }
        match self.place(gw.slots) {
            Ok(assignment) => {
                if self.recovered {
                    tracing::info!(job = %self.id, epoch = self.eg.epoch(), "recovered job deploys");
                }
                self.start_deploy(gw, now, assignment);
                self.settle(gw, now)
            }
            Err(e) if now >= deadline => {
                self.failure = Some(if self.recovered {
                    format!(
                        "cannot recover the job after a change of leader: {e} (waited {} ms)",
                        gw.config.slot_wait_timeout.as_millis()
                    )
                } else {
                    format!("{e}, and none freed up within the {} ms it waited", gw.config.submit_slot_wait.as_millis())
                });
                let _ = self.eg.abort();
                tracing::warn!(job = %self.id, "job failed: {}", self.failure.as_deref().unwrap_or(""));
                self.settle(gw, now)
            }
            Err(_) => false,
        }
    }

    /// Starts a job never deployed (CREATED → RUNNING) and deploys it by
    /// `assignment`.
    pub(super) fn start_deploy(&mut self, gw: &mut Gateways<'_>, now: Instant, assignment: SlotAssignment) {
        match self.eg.start() {
            Ok(()) => self.deploy(gw, now, assignment),
            Err(e) => self.abort(gw, &e),
        }
    }

    /// Whether it waits for slots to be deployed or restarted.
    pub(super) fn waits_for_slots(&self) -> bool {
        matches!(self.phase, Phase::Created { .. } | Phase::WaitingForSlots { .. })
    }

    /// Restarts the job if enough slots are free, or fails it once the wait is
    /// over. Returns `true` when the job has just ended.
    fn try_restart(&mut self, gw: &mut Gateways<'_>, now: Instant) -> bool {
        let Phase::WaitingForSlots { deadline } = self.phase else { return false };
        match self.place(gw.slots) {
            Ok(assignment) => match self.eg.restart() {
                Ok(epoch) => {
                    tracing::info!(job = %self.id, epoch, "job restarts");
                    self.deploy(gw, now, assignment);
                    self.settle(gw, now)
                }
                Err(e) => {
                    self.abort(gw, &e);
                    self.settle(gw, now)
                }
            },
            Err(e) if now >= deadline => {
                let waited = gw.config.slot_wait_timeout;
                self.failure = Some(format!(
                    "cannot restart: {e} (waited {} ms); first failure: {}",
                    waited.as_millis(),
                    self.failure.clone().unwrap_or_default()
                ));
                if let Err(e) = self.eg.give_up() {
                    self.abort(gw, &e);
                }
                tracing::warn!(job = %self.id, "job failed: {}", self.failure.as_deref().unwrap_or(""));
                self.settle(gw, now)
            }
            Err(_) => false,
        }
    }

    fn free_slots(&mut self, gw: &mut Gateways<'_>, cause: &str) {
        let freed = gw.slots.free_job(self.id);
        self.allocations.clear();
        for (slot, allocation) in freed {
            let free = FreeSlot { job_master: self.token, allocation, cause: cause.to_string() };
            gw.send_to_worker(slot.worker, Message::FreeSlot(free));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_table_allows_exactly_the_drawn_edges() {
        let t = Instant::now();
        let all = [
            Phase::Created { deadline: t },
            Phase::Running,
            Phase::RestartPending { at: t },
            Phase::WaitingForSlots { deadline: t },
            Phase::Done,
        ];
        let legal: Vec<(usize, usize)> = all
            .iter()
            .enumerate()
            .flat_map(|(i, a)| all.iter().enumerate().filter(|(_, b)| a.can_transition(**b)).map(move |(j, _)| (i, j)))
            .collect();
        assert_eq!(legal, vec![(0, 1), (0, 4), (1, 2), (1, 4), (2, 3), (2, 4), (3, 1), (3, 4)]);
    }
}
