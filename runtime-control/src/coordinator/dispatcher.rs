//! The Dispatcher's part of the coordinator: submissions (each creates a
//! [`JobMaster`]), cancels, the jobs kept after they end, task reports routed to
//! their job's master, and the clients waiting for a job, for workers or for a
//! worker's dump.

use std::time::{Duration, Instant};

use super::job_master::JobMaster;
use super::validation::validate_job;
use super::{ConnId, Coordinator, Output, Role};
use crate::error::ControlError;
use crate::ids::{JobId, JobMasterId, WorkerId};
use crate::job_graph::JobGraph;
use crate::job_store::JobRecord;
use crate::placement::{PlacementStrategy, SlotAssignment};
use crate::protocol::*;
use crate::restart::{RestartStrategy, RestartTracker};
use crate::state::{ExecutionState, JobStatus};

/// The error code of a placement that failed.
fn placement_code(e: &ControlError) -> ErrorCode {
    match e {
        ControlError::NotEnoughSlots { .. } | ControlError::RemoteChannels { .. } => ErrorCode::NotEnoughSlots,
        _ => ErrorCode::InvalidJob,
    }
}

/// What a waiting client waits for.
pub(super) enum WaitFor {
    /// A job's condition.
    Job(JobId, WaitCondition),
    /// At least this many registered workers.
    Workers(u32),
    /// The worker's answer to a [`RequestShardDump`].
    Dump(WorkerId),
}

/// A submission whose record the job store is writing.
pub(super) struct PendingSubmit {
    /// The submitting client.
    conn: ConnId,
    /// The job's master, not yet deployed.
    jm: JobMaster,
}

/// A client waiting for something, until `deadline` at the latest.
pub(super) struct Waiter {
    pub(super) conn: ConnId,
    pub(super) what: WaitFor,
    pub(super) deadline: Instant,
}

impl Coordinator {
    pub(super) fn submit(&mut self, now: Instant, conn: ConnId, m: SubmitJob) {
        let placement = if m.placement.is_empty() {
            Ok(self.config.default_placement.clone())
        } else {
            m.placement.parse::<PlacementStrategy>()
        };
        let restart = if m.restart.is_empty() {
            Ok(self.config.default_restart.clone())
        } else {
            m.restart.parse::<RestartStrategy>()
        };
        let checked = placement
            .and_then(|p| restart.map(|r| (p, r)))
            .and_then(|(p, r)| validate_job(&m.graph, self.catalog.as_ref()).map(|order| (p, r, order)));
        let (placement, restart, order) = match checked {
            Ok(x) => x,
            Err(e) => return self.reject(conn, ErrorCode::InvalidJob, &e.to_string()),
        };
        let id = JobId(self.next_job);
        let token = self.fresh_token();
        let deadline = now + self.config.submit_slot_wait;
        let restart = RestartTracker::new(restart);
        let jm = JobMaster::submitted(id, token, m.graph, order, placement, restart, now, deadline);
        let assignment = match self.placed_or_waits(&jm) {
            Ok(a) => a,
            Err(e) => return self.reject(conn, placement_code(&e), &e.to_string()),
        };
        self.next_job += 1;
        if self.job_store {
            // Acknowledged and deployed once the job store has it (`stored`).
            let record = Box::new(jm.record());
            self.pending.insert(id, PendingSubmit { conn, jm });
            self.out.push(Output::StoreJob { record, ack: true });
            return;
        }
        self.accept_job(now, conn, jm, assignment);
    }

    /// Where a submitted job is placed now; `None` if too few slots are free
    /// and submissions wait for them ([`CoordinatorConfig::submit_slot_wait`]);
    /// the placement's error if they do not, or if waiting cannot help.
    ///
    /// [`CoordinatorConfig::submit_slot_wait`]: super::CoordinatorConfig::submit_slot_wait
    fn placed_or_waits(&self, jm: &JobMaster) -> Result<Option<SlotAssignment>, ControlError> {
        match jm.place(&self.slots) {
            Ok(a) => Ok(Some(a)),
            Err(e) if !self.config.submit_slot_wait.is_zero() && placement_code(&e) == ErrorCode::NotEnoughSlots => {
                tracing::info!(
                    job = %jm.id(),
                    "{e}: the job waits up to {} ms for slots",
                    self.config.submit_slot_wait.as_millis()
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Registers a submitted job, answers its client and deploys it by
    /// `assignment` (or leaves it waiting for slots).
    fn accept_job(&mut self, now: Instant, conn: ConnId, jm: JobMaster, assignment: Option<SlotAssignment>) {
        let id = jm.id();
        tracing::info!(job = %id, name = %jm.graph().name, "job submitted");
        self.jobs.insert(id, jm);
        self.send(conn, Message::JobSubmitted(JobSubmitted { job: id }));
        self.with_job(now, id, |jm, gw| {
            if let Some(assignment) = assignment {
                jm.start_deploy(gw, now, assignment);
            }
        });
    }

    /// The job store's answer to a submission's record.
    pub(super) fn stored(&mut self, now: Instant, job: JobId, outcome: Result<(), String>) {
        let Some(PendingSubmit { conn, mut jm }) = self.pending.remove(&job) else {
            tracing::debug!(%job, "job store answer for no pending submission");
            return;
        };
        if let Err(why) = outcome {
            let why = format!("the job store did not take the job: {why}");
            return self.reject(conn, ErrorCode::Internal, &why);
        }
        jm.stored();
        // Slots may have gone to others while the record was written.
        match self.placed_or_waits(&jm) {
            Ok(assignment) => self.accept_job(now, conn, jm, assignment),
            Err(e) => {
                self.out.push(Output::RemoveJob(job));
                self.reject(conn, placement_code(&e), &e.to_string());
            }
        }
    }

    /// Takes over a job the job store held when this leader was elected.
    pub(super) fn recover(&mut self, now: Instant, r: JobRecord) {
        let id = r.job;
        if r.has_ended() {
            self.history.insert(id, r);
            self.job_ended(id);
            return;
        }
        let placement = r.placement.parse::<PlacementStrategy>();
        let restart = r.restart.parse::<RestartStrategy>();
        let checked = placement
            .and_then(|p| restart.map(|rs| (p, rs)))
            .and_then(|(p, rs)| validate_job(&r.graph, self.catalog.as_ref()).map(|order| (p, rs, order)));
        let token = self.fresh_token();
        let deadline = now + self.config.slot_wait_timeout;
        // The workers it ran on re-register within moments of a change of leader
        // (they follow the leader key); one that does not within a heartbeat
        // timeout is taken for lost.
        let settle = now + self.config.heartbeat_timeout;
        let recovered = checked.and_then(|(placement, restart, order)| {
            let tracker = RestartTracker::resumed(restart, r.restarts);
            JobMaster::recover(&r, token, order, placement, tracker, now, deadline, settle)
        });
        match recovered {
            Ok(jm) => {
                tracing::info!(job = %id, name = %r.graph.name, epoch = r.epoch, "job recovered from the job store");
                self.jobs.insert(id, jm);
            }
            Err(e) => {
                tracing::warn!(job = %id, "cannot recover the job from the job store: {e}");
                let mut failed = r;
                failed.status = JobStatus::Failed;
                let mut details = failed.details();
                details.status = JobStatus::Failed;
                details.failure = Some(format!("cannot recover the job after a change of leader: {e}"));
                failed.details = Some(details);
                self.out.push(Output::StoreJob { record: Box::new(failed.clone()), ack: false });
                self.history.insert(id, failed);
                self.job_ended(id);
            }
        }
    }

    /// A job's details, running or ended (here or under an earlier leader).
    pub(super) fn details(&self, job: JobId) -> Option<JobDetails> {
        match self.jobs.get(&job) {
            Some(jm) => Some(jm.details()),
            None => self.history.get(&job).map(JobRecord::details),
        }
    }

    /// A job's graph as submitted, running or ended.
    pub(super) fn graph_of(&self, job: JobId) -> Option<JobGraph> {
        match self.jobs.get(&job) {
            Some(jm) => Some(jm.graph().clone()),
            None => self.history.get(&job).map(|r| r.graph.clone()),
        }
    }

    /// A job's record counts so far, subtask by subtask; none listed for an
    /// ended job, whose counts are its results, in its details.
    pub(super) fn progress(&self, job: JobId) -> Option<Vec<SubtaskProgress>> {
        match self.jobs.get(&job) {
            Some(jm) => Some(jm.progress()),
            None => self.history.get(&job).map(|_| Vec::new()),
        }
    }

    pub(super) fn cancel_job(&mut self, now: Instant, conn: ConnId, m: CancelJob) {
        if !self.live_or_reject(conn, m.job, "cancel") {
            return;
        }
        tracing::info!(job = %m.job, "cancel requested");
        self.with_job(now, m.job, |jm, gw| jm.cancel(gw));
        self.send(conn, Message::Ack(Ack {}));
    }

    /// Stops a running job with a snapshot, where the coordinator's workers
    /// hand snapshots to a client in their own process (the embedded engine):
    /// a cluster's savepoints, written to storage, come with checkpointing.
    pub(super) fn stop_job(&mut self, now: Instant, conn: ConnId, m: StopWithSavepoint) {
        if !self.config.snapshots_in_process {
            let why = "savepoints come with checkpointing, which this build does not run yet";
            return self.reject(conn, ErrorCode::Unsupported, why);
        }
        if !self.live_or_reject(conn, m.job, "stop") {
            return;
        }
        match self.with_job(now, m.job, |jm, gw| jm.stop_with_snapshot(gw)) {
            Some(Ok(())) => {
                tracing::info!(job = %m.job, "stop with a snapshot requested");
                self.send(conn, Message::Ack(Ack {}));
            }
            Some(Err(why)) => self.reject(conn, ErrorCode::Unexpected, &why),
            // A job that has not ended has its master: never acknowledged without one.
            None => self.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job)),
        }
    }

    /// Whether `job` is known and has not ended; else the request on `conn`
    /// (to `what` it) is refused saying which.
    fn live_or_reject(&mut self, conn: ConnId, job: JobId, what: &str) -> bool {
        let status = self.jobs.get(&job).map(JobMaster::status).or(self.history.get(&job).map(|r| r.status));
        let why = match status {
            None => (ErrorCode::UnknownJob, format!("no job {job}")),
            Some(s) if s.is_globally_terminal() => {
                (ErrorCode::Unexpected, format!("{job} has already ended ({s}): nothing to {what}"))
            }
            Some(_) => return true,
        };
        self.reject(conn, why.0, &why.1);
        false
    }

    /// Job `id` has ended: it is kept for status queries until
    /// `retained_jobs` others have ended after it.
    pub(super) fn job_ended(&mut self, id: JobId) {
        self.out.push(Output::JobEnded(id));
        self.ended.push_back(id);
        while self.ended.len() > self.config.retained_jobs.max(1) {
            if let Some(old) = self.ended.pop_front() {
                self.jobs.remove(&old);
                self.history.remove(&old);
                if self.job_store {
                    self.out.push(Output::RemoveJob(old));
                }
            }
        }
    }

    pub(super) fn fresh_token(&mut self) -> JobMasterId {
        // splitmix64 over a seed from the ResourceManager's random token.
        self.token_seed = self.token_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.token_seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        JobMasterId(z ^ (z >> 31))
    }

    // ---------------------------------------- JobMaster gateway, routed

    pub(super) fn task_update(&mut self, now: Instant, conn: ConnId, role: Option<Role>, m: UpdateTaskExecutionState) {
        if !matches!(role, Some(Role::Worker(_))) {
            return self.reject(conn, ErrorCode::NotRegistered, "task updates come from registered workers");
        }
        let Some(jm) = self.jobs.get(&m.job) else {
            tracing::debug!(job = %m.job, "update for a job that is gone");
            return;
        };
        if jm.token() != m.job_master {
            return self.reject(
                conn,
                ErrorCode::StaleToken,
                &format!("job master token {} is not {}'s current one", m.job_master, m.job),
            );
        }
        self.with_job(now, m.job, |jm, gw| jm.on_task_state(gw, now, m.attempt, m.state, m.failure, m.result));
    }

    pub(super) fn task_refused(&mut self, now: Instant, conn: ConnId, role: Option<Role>, m: TaskRefused) {
        if !matches!(role, Some(Role::Worker(_))) {
            return self.reject(conn, ErrorCode::NotRegistered, "task replies come from registered workers");
        }
        let failure = TaskFailureInfo { cause: format!("submission refused: {}", m.error.message), secondary: false };
        self.with_job(now, m.job, |jm, gw| {
            jm.on_task_state(gw, now, m.attempt, ExecutionState::Failed, Some(failure), None)
        });
    }

    // ------------------------------------------------------------ waiters

    pub(super) fn wait_job(&mut self, now: Instant, conn: ConnId, m: WaitJob) {
        if !self.jobs.contains_key(&m.job) && !self.history.contains_key(&m.job) {
            return self.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job));
        }
        let deadline = now + Duration::from_millis(m.timeout_ms);
        self.waiters.push(Waiter { conn, what: WaitFor::Job(m.job, m.until), deadline });
    }

    pub(super) fn wait_for_workers(&mut self, now: Instant, conn: ConnId, m: WaitForWorkers) {
        let deadline = now + Duration::from_millis(m.timeout_ms);
        self.waiters.push(Waiter { conn, what: WaitFor::Workers(m.workers), deadline });
    }

    /// Answers every waiter whose condition is met or whose deadline has come.
    pub(super) fn wake_waiters(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            let expired = now >= w.deadline;
            let answer: Option<Result<Message, (ErrorCode, String)>> = match w.what {
                WaitFor::Workers(n) => (self.worker_conns.len() as u32 >= n || expired).then(|| Ok(self.overview())),
                WaitFor::Dump(worker) => {
                    if !self.worker_conns.contains_key(&worker) {
                        Some(Err((ErrorCode::UnknownWorker, format!("{worker} was lost before it answered"))))
                    } else {
                        expired.then(|| Err((ErrorCode::Internal, format!("{worker} did not answer in time"))))
                    }
                }
                WaitFor::Job(job, until) => match self.jobs.get(&job) {
                    None => Some(
                        self.history
                            .get(&job)
                            .map(|r| Message::JobDetails(r.details()))
                            .ok_or_else(|| (ErrorCode::UnknownJob, format!("no job {job}"))),
                    ),
                    Some(jm) => {
                        let met = match until {
                            WaitCondition::Terminal => jm.status().is_globally_terminal(),
                            WaitCondition::AllRunning => jm.status().is_globally_terminal() || jm.all_running(),
                        };
                        (met || expired).then(|| Ok(Message::JobDetails(jm.details())))
                    }
                },
            };
            match answer {
                None => i += 1,
                Some(reply) => {
                    let w = self.waiters.swap_remove(i);
                    match reply {
                        Ok(msg) => self.send(w.conn, msg),
                        Err((code, why)) => self.reject(w.conn, code, &why),
                    }
                }
            }
        }
    }
}
