//! The coordinator as one sans-I/O state machine: the Dispatcher (jobs by id,
//! submit, list, details, cancel, waits), the ResourceManager (worker
//! registration, fencing, heartbeats, the [`SlotManager`]) and one [`JobMaster`]
//! per job (scheduling, deployment descriptors, execution states, restarts).
//!
//! ```text
//!  driver (sockets, timers)                 Coordinator
//!   frame from conn ──on_message(now, conn, msg)──► Vec<Output>: Send(conn, msg) | Close(conn)
//!   conn closed     ──on_disconnect(now, conn)────► …
//!   timer           ──on_tick(now)────────────────► …          next_deadline() says when
//! ```
//!
//! Time only enters as the `now` argument, so tests drive it by hand.
//!
//! A highly available leader keeps a job store ([`Coordinator::with_job_store`]):
//! it asks the driver to write a job's [`JobRecord`] ([`Output::StoreJob`])
//! before it acknowledges the submission (the driver answers with
//! [`Coordinator::on_job_stored`]), and again whenever the record changes (a
//! restart, the end); a new leader starts from the records it read and runs
//! every job that had not ended again.
//!
//! Connections have roles: the first message decides. `RegisterWorker` makes a
//! worker connection; client requests (submit, list, …) a client connection. A
//! request that fails gets an [`ErrorReply`] and its connection is closed; the
//! coordinator goes on serving every other connection.
//!
//! Files: [`config`] (settings), [`validation`] (the operator catalog and job
//! checks), `resource_manager.rs` (workers, heartbeats, dumps),
//! `dispatcher.rs` (jobs and the clients waiting on them) and
//! `job_master/` (one job's life; its deployments in `deploy.rs`).

mod config;
mod dispatcher;
mod job_master;
mod resource_manager;
mod validation;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

pub use config::CoordinatorConfig;
pub use validation::{panic_message, validate_job, CatalogError, OperatorCatalog};

use dispatcher::Waiter;
use job_master::{Gateways, JobMaster};

use crate::heartbeat::HeartbeatMonitor;
use crate::ids::{JobId, ResourceManagerId, WorkerId};
use crate::job_store::JobRecord;
use crate::protocol::*;
use crate::slot_manager::SlotManager;
use crate::state::JobStatus;

/// A connection, as the driver numbers them.
pub type ConnId = u64;

/// What the driver must do. (A message is moved once per frame: boxing it
/// would cost an allocation per frame for nothing.)
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Output {
    /// Send a message on a connection.
    Send(ConnId, Message),
    /// Close a connection (after sending what came before on it).
    Close(ConnId),
    /// Write a job's record to the job store (only with a job store). With
    /// `ack`, the driver reports the outcome through
    /// [`Coordinator::on_job_stored`], once; without, it keeps trying until the
    /// write succeeds or the leadership is lost (a later record of the same job
    /// replaces an earlier one not yet written).
    StoreJob {
        /// The record.
        record: Box<JobRecord>,
        /// Whether the coordinator waits for the outcome.
        ack: bool,
    },
    /// Remove a job's record from the job store (the job ended long ago and is
    /// forgotten: `retained_jobs`).
    RemoveJob(JobId),
    /// A job reached a terminal status (finished, failed or cancelled; or,
    /// recovered from the job store, had reached one), after its tasks all
    /// ended. It changes nothing in the cluster: for a driver that tells
    /// someone in its process (the embedded engine closes the job's ingresses).
    /// Comes before the answers to those waiting for the job's end.
    JobEnded(JobId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Worker(WorkerId),
    Client,
}

/// Dispatcher, ResourceManager and JobMasters of one cluster.
pub struct Coordinator {
    config: CoordinatorConfig,
    catalog: Box<dyn OperatorCatalog>,
    token: ResourceManagerId,
    slots: SlotManager,
    heartbeats: HeartbeatMonitor<WorkerId>,
    conns: HashMap<ConnId, Role>,
    /// Each open connection's peer, as the driver names it (an address).
    peers: HashMap<ConnId, String>,
    worker_conns: BTreeMap<WorkerId, ConnId>,
    jobs: BTreeMap<JobId, JobMaster>,
    /// Ended jobs, longest-ended first.
    ended: VecDeque<JobId>,
    waiters: Vec<Waiter>,
    next_job: u64,
    token_seed: u64,
    heartbeat_seq: u64,
    next_heartbeat: Instant,
    out: Vec<Output>,
    /// Whether jobs are written to a job store.
    job_store: bool,
    /// Submissions whose record is being written, by job: answered (and
    /// deployed) once the store has it.
    pending: BTreeMap<JobId, dispatcher::PendingSubmit>,
    /// Jobs that ended under an earlier leader, as the job store had them.
    history: BTreeMap<JobId, JobRecord>,
    /// Where this coordinator is reached, as the overview names the leader.
    address: String,
}

impl Coordinator {
    /// A coordinator whose ResourceManager leads with fencing token `token` (the
    /// driver picks a fresh random one per process start).
    pub fn new(
        config: CoordinatorConfig,
        catalog: Box<dyn OperatorCatalog>,
        token: ResourceManagerId,
        now: Instant,
    ) -> Self {
        let heartbeats = HeartbeatMonitor::new(config.heartbeat_timeout);
        let next_heartbeat = now + config.heartbeat_interval;
        Coordinator {
            config,
            catalog,
            token,
            slots: SlotManager::new(),
            heartbeats,
            conns: HashMap::new(),
            peers: HashMap::new(),
            worker_conns: BTreeMap::new(),
            jobs: BTreeMap::new(),
            ended: VecDeque::new(),
            waiters: Vec::new(),
            next_job: 1,
            token_seed: token.0 ^ 0x9e37_79b9_7f4a_7c15,
            heartbeat_seq: 0,
            next_heartbeat,
            out: Vec::new(),
            job_store: false,
            pending: BTreeMap::new(),
            history: BTreeMap::new(),
            address: String::new(),
        }
    }

    /// Names the address this coordinator is reached at (the overview's
    /// `leader`).
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Makes this coordinator a highly available leader with a job store that
    /// held `records` when it won the leadership (its fencing token is the
    /// leadership's epoch): jobs that had not ended are recovered, to be deployed
    /// from the start once enough workers have registered (within
    /// `slot_wait_timeout`) — once the workers each ran on have, or a
    /// `heartbeat_timeout` has passed without them — and ended ones are kept for
    /// `list` and `status`. Job
    /// ids continue after the highest recorded. A record whose graph this build
    /// cannot run fails its job with the reason.
    pub fn with_job_store(mut self, now: Instant, mut records: Vec<JobRecord>) -> Self {
        self.job_store = true;
        records.sort_by_key(|r| r.job);
        for r in records {
            self.next_job = self.next_job.max(r.job.0 + 1);
            self.recover(now, r);
        }
        // What recovering asked for (records to write) comes out with the next call.
        self
    }

    /// The leadership epoch the overview reports: the token of a leader with a
    /// job store, 0 for a standalone coordinator.
    fn epoch(&self) -> u64 {
        if self.job_store {
            self.token.0
        } else {
            0
        }
    }

    /// The ResourceManager's fencing token.
    pub fn token(&self) -> ResourceManagerId {
        self.token
    }

    /// The slot manager (for inspection).
    pub fn slot_manager(&self) -> &SlotManager {
        &self.slots
    }

    /// The status of a job.
    pub fn job_status(&self, job: JobId) -> Option<JobStatus> {
        self.jobs.get(&job).map(JobMaster::status)
    }

    /// When [`Self::on_tick`] must run next at the latest.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.next_heartbeat;
        if let Some(h) = self.heartbeats.next_deadline() {
            d = d.min(h);
        }
        for at in self.jobs.values().filter_map(JobMaster::next_deadline) {
            d = d.min(at);
        }
        for w in &self.waiters {
            d = d.min(w.deadline);
        }
        d
    }

    /// `conn` opened, from `peer` (its address, for people): a worker registering
    /// on it is listed with this address.
    pub fn on_connect(&mut self, conn: ConnId, peer: &str) {
        self.peers.insert(conn, peer.to_string());
    }

    /// A frame arrived on `conn`.
    pub fn on_message(&mut self, now: Instant, conn: ConnId, msg: Message) -> Vec<Output> {
        let role = self.conns.get(&conn).copied();
        if let Some(Role::Worker(w)) = role {
            self.heartbeats.heard(w, now);
        }
        match msg {
            // ResourceManager gateway
            Message::RegisterWorker(m) => self.register_worker(now, conn, role, m),
            Message::HeartbeatFromWorker(m) => {
                if self.check_worker(conn, role, m.resource_manager, m.worker) {
                    tracing::trace!(worker = %m.worker, seq = m.seq, "heartbeat");
                    for t in m.tasks {
                        if let Some(jm) = self.jobs.get_mut(&t.job) {
                            jm.on_progress(m.worker, t);
                        }
                    }
                }
            }
            Message::SlotReportMessage(m) => {
                self.check_worker(conn, role, m.resource_manager, m.worker);
            }
            Message::NotifySlotAvailable(m) => {
                self.check_worker(conn, role, m.resource_manager, m.worker);
            }
            Message::DisconnectWorker(m) => self.worker_disconnects(now, conn, role, m),
            Message::SlotRequestReply(m) => self.slot_request_reply(conn, role, m),
            Message::ShardDump(m) => match role {
                Some(Role::Worker(w)) if w == m.worker => self.forward_dump(m),
                _ => self.reject(conn, ErrorCode::NotRegistered, "shard dumps come from the worker they describe"),
            },
            Message::RequestResourceOverview(_) => self.client(conn, role, |c| {
                let o = c.overview();
                c.send(conn, o);
            }),
            Message::RequestWorkerInfo(_) => self.client(conn, role, |c| c.worker_info(now, conn)),
            Message::RequestWorkerDump(m) => self.client(conn, role, |c| c.request_dump(now, conn, m)),
            Message::WaitForWorkers(m) => self.client(conn, role, |c| c.wait_for_workers(now, conn, m)),
            // JobMaster gateway
            Message::UpdateTaskExecutionState(m) => self.task_update(now, conn, role, m),
            Message::TaskRefused(m) => self.task_refused(now, conn, role, m),
            Message::AcknowledgeCheckpoint(m) => {
                tracing::debug!(job = %m.job, checkpoint = %m.checkpoint, "checkpoint acknowledgement ignored: no checkpoint is pending");
            }
            // Dispatcher gateway
            Message::SubmitJob(m) => self.client(conn, role, |c| c.submit(now, conn, m)),
            Message::ListJobs(_) => self.client(conn, role, |c| {
                let mut jobs: Vec<JobSummary> = c.jobs.values().map(JobMaster::summary).collect();
                jobs.extend(c.history.values().map(JobRecord::summary));
                jobs.sort_by_key(|j| j.job);
                c.send(conn, Message::JobList(JobList { jobs }));
            }),
            Message::RequestJob(m) => self.client(conn, role, |c| match c.details(m.job) {
                Some(d) => c.send(conn, Message::JobDetails(d)),
                None => c.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job)),
            }),
            Message::RequestJobGraph(m) => self.client(conn, role, |c| match c.graph_of(m.job) {
                Some(graph) => c.send(conn, Message::JobGraphReply(JobGraphReply { job: m.job, graph })),
                None => c.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job)),
            }),
            Message::RequestJobProgress(m) => self.client(conn, role, |c| match c.progress(m.job) {
                Some(subtasks) => c.send(conn, Message::JobProgress(JobProgress { job: m.job, subtasks })),
                None => c.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job)),
            }),
            Message::WaitJob(m) => self.client(conn, role, |c| c.wait_job(now, conn, m)),
            Message::CancelJob(m) => self.client(conn, role, |c| c.cancel_job(now, conn, m)),
            Message::StopWithSavepoint(m) => self.client(conn, role, |c| c.stop_job(now, conn, m)),
            Message::TriggerSavepoint(_) | Message::DisposeSavepoint(_) => self.reject(
                conn,
                ErrorCode::Unsupported,
                "savepoints come with checkpointing, which this build does not run yet",
            ),
            Message::RegisterJobMaster(_) | Message::RequestSlots(_) | Message::CancelSlotRequest(_) => self.reject(
                conn,
                ErrorCode::Unsupported,
                "job masters run inside the coordinator; external job masters are not supported",
            ),
            Message::ErrorReply(e) => {
                tracing::warn!(conn, code = ?e.code, "peer reported: {}", e.message);
                self.out.push(Output::Close(conn));
            }
            other => self.reject(
                conn,
                ErrorCode::Unexpected,
                &format!("{} is not a message the coordinator accepts", other.kind_name()),
            ),
        }
        self.wake_waiters(now);
        std::mem::take(&mut self.out)
    }

    /// A frame on `conn` could not be decoded: the peer is told why and `conn` is
    /// closed.
    pub fn on_frame_error(&mut self, _now: Instant, conn: ConnId, err: &FrameError) -> Vec<Output> {
        tracing::warn!(conn, "bad frame: {err}");
        self.out.push(Output::Send(conn, err.reply()));
        self.out.push(Output::Close(conn));
        std::mem::take(&mut self.out)
    }

    /// `conn` closed (by the peer or after an error).
    pub fn on_disconnect(&mut self, now: Instant, conn: ConnId) -> Vec<Output> {
        self.peers.remove(&conn);
        if let Some(Role::Worker(w)) = self.conns.remove(&conn) {
            self.worker_lost(now, w, "its connection closed");
        }
        self.waiters.retain(|w| w.conn != conn);
        self.wake_waiters(now);
        std::mem::take(&mut self.out)
    }

    /// The job store answered the write of a submission's record (an
    /// [`Output::StoreJob`] with `ack`): the submission is acknowledged and the
    /// job deployed, or the client is told the store did not take it.
    pub fn on_job_stored(&mut self, now: Instant, job: JobId, outcome: Result<(), String>) -> Vec<Output> {
        self.stored(now, job, outcome);
        self.wake_waiters(now);
        std::mem::take(&mut self.out)
    }

    /// Time passed: heartbeats, lost workers, due restarts, timed-out waits.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Output> {
        self.heartbeat_tick(now);
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            self.settle(now, id);
        }
        self.wake_waiters(now);
        std::mem::take(&mut self.out)
    }

    // ------------------------------------------------------------ plumbing

    fn send(&mut self, conn: ConnId, msg: Message) {
        self.out.push(Output::Send(conn, msg));
    }

    fn reject(&mut self, conn: ConnId, code: ErrorCode, message: &str) {
        match code {
            // The client's own mistake, answered to it: not the cluster's trouble.
            ErrorCode::InvalidJob | ErrorCode::NotEnoughSlots | ErrorCode::UnknownJob => {
                tracing::info!(conn, ?code, "rejected: {message}")
            }
            _ => tracing::warn!(conn, ?code, "rejected: {message}"),
        }
        self.out.push(Output::Send(conn, Message::error(code, message)));
        self.out.push(Output::Close(conn));
        // The driver reports the close back through `on_disconnect`.
    }

    fn client(&mut self, conn: ConnId, role: Option<Role>, f: impl FnOnce(&mut Self)) {
        match role {
            Some(Role::Worker(_)) => {
                self.reject(conn, ErrorCode::Unexpected, "client requests come on client connections")
            }
            _ => {
                self.conns.insert(conn, Role::Client);
                f(self)
            }
        }
    }

    /// Runs `f` on job `id`'s master with the gateways it acts through, then
    /// settles the job; `None` if there is no such job.
    fn with_job<R>(
        &mut self,
        now: Instant,
        id: JobId,
        f: impl FnOnce(&mut JobMaster, &mut Gateways<'_>) -> R,
    ) -> Option<R> {
        let jm = self.jobs.get_mut(&id)?;
        let mut gw = Gateways {
            slots: &mut self.slots,
            workers: &self.worker_conns,
            out: &mut self.out,
            config: &self.config,
            rm: self.token,
        };
        let r = f(jm, &mut gw);
        let ended = jm.settle(&mut gw, now);
        if self.job_store && jm.store_due() {
            jm.stored();
            self.out.push(Output::StoreJob { record: Box::new(jm.record()), ack: false });
        }
        if ended {
            self.job_ended(id);
            // Its slots are free: jobs waiting for slots may fit now.
            let waiting: Vec<JobId> =
                self.jobs.iter().filter(|(_, jm)| jm.waits_for_slots()).map(|(&j, _)| j).collect();
            for job in waiting {
                self.settle(now, job);
            }
        }
        Some(r)
    }

    /// Moves job `id` on (see [`JobMaster::settle`]).
    fn settle(&mut self, now: Instant, id: JobId) {
        self.with_job(now, id, |_, _| ());
    }
}

#[cfg(test)]
mod tests;
