//! The coordinator as one sans-I/O state machine: Dispatcher (jobs by id, submit,
//! list, details, cancel, wait), ResourceManager (worker registration, fencing,
//! heartbeats, the [`SlotManager`]) and one JobMaster per job (scheduling,
//! deployment descriptors, execution states, restarts).
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
//! Connections have roles: the first message decides. `RegisterWorker` makes a
//! worker connection; client requests (submit, list, …) a client connection. A
//! request that fails gets an [`ErrorReply`] and its connection is closed; the
//! coordinator goes on serving every other connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::error::ControlError;
use crate::execution_graph::{edge_channels, ChannelSpec, ExecutionGraph};
use crate::heartbeat::HeartbeatMonitor;
use crate::ids::{
    AllocationId, AttemptId, ExecutionVertexId, JobId, JobMasterId, ResourceManagerId, VertexId, WorkerId,
};
use crate::job_graph::{JobGraph, OperatorSpec, ResultPartitionType};
use crate::placement::{PlacementStrategy, SlotAssignment};
use crate::protocol::*;
use crate::restart::{RestartDecision, RestartStrategy, RestartTracker};
use crate::slot_manager::SlotManager;
use crate::state::{ExecutionState, JobStatus};

/// A connection, as the driver numbers them.
pub type ConnId = u64;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a message on a connection.
    Send(ConnId, Message),
    /// Close a connection (after sending what came before on it).
    Close(ConnId),
}

/// What the coordinator knows about operators: the registry of the process.
pub trait OperatorCatalog: Send {
    /// Whether `name` is registered.
    fn contains(&self, name: &str) -> bool;
    /// Whether `name` is a source.
    fn is_source(&self, name: &str) -> bool;
    /// Builds the operator once to check its configuration.
    fn check(&self, spec: &OperatorSpec) -> Result<(), String>;
}

/// Validates `graph` against `catalog`: shape, operator names and configurations,
/// sources exactly at the vertices without inputs, pipelined edges only. Returns a
/// topological order.
pub fn validate_job(graph: &JobGraph, catalog: &dyn OperatorCatalog) -> Result<Vec<VertexId>, ControlError> {
    let order = graph.validate(&|name| catalog.contains(name))?;
    for (i, v) in graph.vertices.iter().enumerate() {
        let has_inputs = graph.inputs(VertexId(i as u32)).next().is_some();
        let bad = |reason: &str| ControlError::InvalidOperator { vertex: v.name.clone(), reason: reason.into() };
        let head_is_source = catalog.is_source(&v.chain[0].name);
        if has_inputs && head_is_source {
            return Err(bad("a source cannot consume inputs"));
        }
        if !has_inputs && !head_is_source {
            return Err(bad("a vertex without inputs must start with a source"));
        }
        if v.chain.iter().skip(1).any(|op| catalog.is_source(&op.name)) {
            return Err(bad("a source can only head a chain"));
        }
        for op in &v.chain {
            catalog.check(op).map_err(|reason| ControlError::InvalidOperator { vertex: v.name.clone(), reason })?;
        }
    }
    if let Some(e) = graph.edges.iter().find(|e| e.partition_type == ResultPartitionType::Blocking) {
        return Err(ControlError::Unsupported(format!(
            "blocking partition on edge {} -> {}: only pipelined partitions run",
            graph.vertices[e.source.0 as usize].name, graph.vertices[e.target.0 as usize].name
        )));
    }
    Ok(order)
}

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How often workers get a heartbeat. Default 1 s.
    pub heartbeat_interval: Duration,
    /// A worker silent this long is lost. Default 5 s.
    pub heartbeat_timeout: Duration,
    /// How long a restarting job waits for enough free slots. Default 10 s.
    pub slot_wait_timeout: Duration,
    /// Placement when a submission names none. Default `colocate` (Flink's slot
    /// sharing: subtask i of every vertex in one slot).
    pub default_placement: PlacementStrategy,
    /// Restart strategy when a submission names none. Default `fixed-delay`, 3
    /// attempts, 1 s apart.
    pub default_restart: RestartStrategy,
    /// Ended jobs kept for status queries (Flink's job store capacity); beyond
    /// this the longest-ended are forgotten and answer `UnknownJob`. At least 1.
    /// Default 1000.
    pub retained_jobs: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            slot_wait_timeout: Duration::from_secs(10),
            default_placement: PlacementStrategy::Colocate,
            default_restart: RestartStrategy::default(),
            retained_jobs: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Worker(WorkerId),
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Deployed (or being deployed); states flow.
    Running,
    /// Failed over; restart once every subtask is terminal and `at` has come.
    RestartPending { at: Instant },
    /// Restart due, waiting for free slots until `deadline`.
    WaitingForSlots { deadline: Instant },
    /// Globally terminal.
    Done,
}

struct JobMaster {
    token: JobMasterId,
    graph: JobGraph,
    order: Vec<VertexId>,
    eg: ExecutionGraph,
    placement: PlacementStrategy,
    restart: RestartTracker,
    assignment: SlotAssignment,
    allocations: BTreeMap<crate::ids::SlotId, AllocationId>,
    phase: Phase,
    results: BTreeMap<ExecutionVertexId, TaskResultInfo>,
    failure: Option<String>,
    /// The recorded failure was caused by a peer going away: a root cause that
    /// reports later replaces it.
    failure_secondary: bool,
    deployed_at: Instant,
    all_running: Option<Duration>,
}

enum WaitFor {
    Job(JobId, WaitCondition),
    Workers(u32),
    /// The worker's answer to a [`RequestShardDump`].
    Dump(WorkerId),
}

struct Waiter {
    conn: ConnId,
    what: WaitFor,
    deadline: Instant,
}

/// Dispatcher, ResourceManager and JobMasters of one cluster.
pub struct Coordinator {
    config: CoordinatorConfig,
    catalog: Box<dyn OperatorCatalog>,
    token: ResourceManagerId,
    slots: SlotManager,
    heartbeats: HeartbeatMonitor<WorkerId>,
    conns: HashMap<ConnId, Role>,
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
            worker_conns: BTreeMap::new(),
            jobs: BTreeMap::new(),
            ended: VecDeque::new(),
            waiters: Vec::new(),
            next_job: 1,
            token_seed: token.0 ^ 0x9e37_79b9_7f4a_7c15,
            heartbeat_seq: 0,
            next_heartbeat,
            out: Vec::new(),
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
        self.jobs.get(&job).map(|j| j.eg.status())
    }

    /// When [`Self::on_tick`] must run next at the latest.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.next_heartbeat;
        if let Some(h) = self.heartbeats.next_deadline() {
            d = d.min(h);
        }
        for jm in self.jobs.values() {
            match jm.phase {
                Phase::RestartPending { at } => d = d.min(at),
                Phase::WaitingForSlots { deadline } => d = d.min(deadline),
                _ => {}
            }
        }
        for w in &self.waiters {
            d = d.min(w.deadline);
        }
        d
    }

    /// A frame arrived on `conn`.
    pub fn on_message(&mut self, now: Instant, conn: ConnId, msg: Message) -> Vec<Output> {
        let role = self.conns.get(&conn).copied();
        if let Some(Role::Worker(w)) = role {
            self.heartbeats.heard(w, now);
        }
        match msg {
            Message::RegisterWorker(m) => self.register_worker(now, conn, role, m),
            Message::HeartbeatFromWorker(m) => {
                if self.check_worker(conn, role, m.resource_manager, m.worker) {
                    tracing::trace!(worker = %m.worker, seq = m.seq, "heartbeat");
                }
            }
            Message::SlotReportMessage(m) => {
                self.check_worker(conn, role, m.resource_manager, m.worker);
            }
            Message::NotifySlotAvailable(m) => {
                self.check_worker(conn, role, m.resource_manager, m.worker);
            }
            Message::DisconnectWorker(m) => {
                if self.check_worker(conn, role, m.resource_manager, m.worker) {
                    tracing::info!(worker = %m.worker, "worker disconnects: {}", m.cause);
                    self.worker_lost(now, m.worker, &format!("it disconnected: {}", m.cause));
                    self.out.push(Output::Close(conn));
                    self.conns.remove(&conn);
                }
            }
            Message::SlotRequestReply(m) => {
                if let Some(Role::Worker(_)) = role {
                    if m.outcome != SlotRequestOutcome::Allocated {
                        tracing::warn!(slot = %m.slot, allocation = %m.allocation, outcome = ?m.outcome, "slot request refused");
                    }
                } else {
                    self.reject(conn, ErrorCode::NotRegistered, "slot replies come from registered workers");
                }
            }
            Message::UpdateTaskExecutionState(m) => self.task_update(now, conn, role, m),
            Message::TaskRefused(m) => {
                if matches!(role, Some(Role::Worker(_))) {
                    let token = self.jobs.get(&m.job).map(|j| j.token);
                    if let Some(token) = token {
                        let failure = TaskFailureInfo {
                            cause: format!("submission refused: {}", m.error.message),
                            secondary: false,
                        };
                        self.apply_state(now, m.job, token, m.attempt, ExecutionState::Failed, Some(failure), None);
                    }
                } else {
                    self.reject(conn, ErrorCode::NotRegistered, "task replies come from registered workers");
                }
            }
            Message::AcknowledgeCheckpoint(m) => {
                tracing::debug!(job = %m.job, checkpoint = %m.checkpoint, "checkpoint acknowledgement ignored: no checkpoint is pending");
            }
            Message::ShardDump(m) => match role {
                Some(Role::Worker(w)) if w == m.worker => self.forward_dump(m),
                _ => self.reject(conn, ErrorCode::NotRegistered, "shard dumps come from the worker they describe"),
            },
            Message::SubmitJob(m) => self.client(conn, role, |c| c.submit(now, conn, m)),
            Message::ListJobs(_) => self.client(conn, role, |c| {
                let jobs = c.jobs.iter().map(|(&id, jm)| summary(id, jm)).collect();
                c.send(conn, Message::JobList(JobList { jobs }));
            }),
            Message::RequestJob(m) => self.client(conn, role, |c| match c.details(m.job) {
                Some(d) => c.send(conn, Message::JobDetails(d)),
                None => c.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job)),
            }),
            Message::WaitJob(m) => self.client(conn, role, |c| {
                if !c.jobs.contains_key(&m.job) {
                    return c.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job));
                }
                let deadline = now + Duration::from_millis(m.timeout_ms);
                c.waiters.push(Waiter { conn, what: WaitFor::Job(m.job, m.until), deadline });
                c.wake_waiters(now);
            }),
            Message::WaitForWorkers(m) => self.client(conn, role, |c| {
                let deadline = now + Duration::from_millis(m.timeout_ms);
                c.waiters.push(Waiter { conn, what: WaitFor::Workers(m.workers), deadline });
            }),
            Message::CancelJob(m) => self.client(conn, role, |c| {
                if c.jobs.contains_key(&m.job) {
                    c.cancel(now, m.job);
                    c.send(conn, Message::Ack(Ack {}));
                } else {
                    c.reject(conn, ErrorCode::UnknownJob, &format!("no job {}", m.job));
                }
            }),
            Message::RequestResourceOverview(_) => self.client(conn, role, |c| {
                let o = c.overview();
                c.send(conn, o);
            }),
            Message::RequestWorkerInfo(_) => self.client(conn, role, |c| {
                let workers = c
                    .slots
                    .workers()
                    .map(|(id, w)| WorkerInfo {
                        worker: id,
                        resource_id: w.resource_id.clone(),
                        address: w.address.clone(),
                        resources: w.resources.clone(),
                        slots: w.slots.len() as u32,
                        free_slots: w.free_slots() as u32,
                        last_heartbeat_ms: c.heartbeats.silence(id, now).map_or(0, |d| d.as_millis() as u64),
                    })
                    .collect();
                c.send(conn, Message::WorkerInfoList(WorkerInfoList { workers }));
            }),
            Message::RequestWorkerDump(m) => self.client(conn, role, |c| {
                let Some(&worker_conn) = c.worker_conns.get(&m.worker) else {
                    return c.reject(conn, ErrorCode::UnknownWorker, &format!("no worker {}", m.worker));
                };
                // One request to the worker serves every client waiting for its dump.
                if !c.waiters.iter().any(|w| matches!(w.what, WaitFor::Dump(x) if x == m.worker)) {
                    let request = RequestShardDump { resource_manager: c.token };
                    c.send(worker_conn, Message::RequestShardDump(request));
                }
                let deadline = now + Duration::from_millis(m.timeout_ms);
                c.waiters.push(Waiter { conn, what: WaitFor::Dump(m.worker), deadline });
            }),
            Message::TriggerSavepoint(_) | Message::StopWithSavepoint(_) | Message::DisposeSavepoint(_) => self.reject(
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
                self.close(now, conn);
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
    pub fn on_frame_error(&mut self, now: Instant, conn: ConnId, err: &FrameError) -> Vec<Output> {
        tracing::warn!(conn, "bad frame: {err}");
        self.out.push(Output::Send(conn, err.reply()));
        self.close(now, conn);
        std::mem::take(&mut self.out)
    }

    /// `conn` closed (by the peer or after an error).
    pub fn on_disconnect(&mut self, now: Instant, conn: ConnId) -> Vec<Output> {
        if let Some(Role::Worker(w)) = self.conns.remove(&conn) {
            self.worker_lost(now, w, "its connection closed");
        }
        self.waiters.retain(|w| w.conn != conn);
        self.wake_waiters(now);
        std::mem::take(&mut self.out)
    }

    /// Time passed: heartbeats, lost workers, due restarts, timed-out waits.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Output> {
        if now >= self.next_heartbeat {
            self.heartbeat_seq += 1;
            let hb = HeartbeatFromCoordinator { resource_manager: self.token, seq: self.heartbeat_seq };
            for &conn in self.worker_conns.values() {
                self.out.push(Output::Send(conn, Message::HeartbeatFromCoordinator(hb.clone())));
            }
            self.next_heartbeat = now + self.config.heartbeat_interval;
        }
        for w in self.heartbeats.expire(now) {
            let timeout = self.config.heartbeat_timeout;
            self.worker_lost(now, w, &format!("no heartbeat for {} ms", timeout.as_millis()));
        }
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

    fn close(&mut self, _now: Instant, conn: ConnId) {
        self.out.push(Output::Close(conn));
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

    fn check_worker(&mut self, conn: ConnId, role: Option<Role>, token: ResourceManagerId, worker: WorkerId) -> bool {
        if role != Some(Role::Worker(worker)) {
            self.reject(conn, ErrorCode::NotRegistered, &format!("{worker} is not registered on this connection"));
            return false;
        }
        if token != self.token {
            self.reject(conn, ErrorCode::StaleToken, &format!("fencing token {token} is not the leader's"));
            return false;
        }
        true
    }

    fn fresh_token(&mut self) -> JobMasterId {
        // splitmix64 over a seed from the ResourceManager's random token.
        self.token_seed = self.token_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.token_seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        JobMasterId(z ^ (z >> 31))
    }

    // --------------------------------------------------- ResourceManager

    fn register_worker(&mut self, now: Instant, conn: ConnId, role: Option<Role>, m: RegisterWorker) {
        if role.is_some() {
            return self.reject(conn, ErrorCode::Unexpected, "this connection has already registered or made requests");
        }
        match self.slots.register(&m.resource_id, &m.address, m.resources) {
            Ok(worker) => {
                tracing::info!(%worker, resource_id = %m.resource_id, address = %m.address, "worker registered");
                self.conns.insert(conn, Role::Worker(worker));
                self.worker_conns.insert(worker, conn);
                self.heartbeats.heard(worker, now);
                self.send(
                    conn,
                    Message::RegistrationAccepted(RegistrationAccepted {
                        worker,
                        resource_manager: self.token,
                        heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
                        heartbeat_timeout_ms: self.config.heartbeat_timeout.as_millis() as u64,
                    }),
                );
                let ids: Vec<JobId> = self.jobs.keys().copied().collect();
                for id in ids {
                    self.settle(now, id);
                }
            }
            Err(e) => self.reject(conn, ErrorCode::DuplicateRegistration, &e.to_string()),
        }
    }

    fn worker_lost(&mut self, now: Instant, worker: WorkerId, why: &str) {
        let Some(entry) = self.slots.remove(worker) else { return };
        if self.jobs.values().any(|j| !j.eg.status().is_globally_terminal()) {
            tracing::warn!(%worker, resource_id = %entry.resource_id, "worker lost: {why}");
        } else {
            tracing::info!(%worker, resource_id = %entry.resource_id, "worker lost: {why}");
        }
        self.heartbeats.forget(worker);
        if let Some(conn) = self.worker_conns.remove(&worker) {
            self.conns.remove(&conn);
            self.out.push(Output::Close(conn));
        }
        let cause = format!("{worker} ({}) lost: {why}", entry.resource_id);
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let Some(jm) = self.jobs.get_mut(&id) else { continue };
            jm.allocations.retain(|slot, _| slot.worker != worker);
            let on_worker: Vec<(AttemptId, ExecutionState)> = jm
                .eg
                .subtasks
                .iter()
                .filter(|s| !s.state.is_terminal())
                .filter(|s| jm.assignment.of(s.id()).is_some_and(|p| p.slot.worker == worker))
                .map(|s| (s.attempt, s.state))
                .collect();
            if on_worker.is_empty() {
                continue;
            }
            let token = jm.token;
            for (attempt, state) in on_worker {
                let to =
                    if state == ExecutionState::Canceling { ExecutionState::Canceled } else { ExecutionState::Failed };
                let failure = TaskFailureInfo { cause: cause.clone(), secondary: false };
                self.apply_state(now, id, token, attempt, to, Some(failure), None);
            }
        }
    }

    // --------------------------------------------------------- Dispatcher

    fn submit(&mut self, now: Instant, conn: ConnId, m: SubmitJob) {
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
        let eg = ExecutionGraph::expand(id, &m.graph, &order);
        let mut jm = JobMaster {
            token,
            graph: m.graph,
            order,
            eg,
            placement,
            restart: RestartTracker::new(restart),
            assignment: SlotAssignment::default(),
            allocations: BTreeMap::new(),
            phase: Phase::Running,
            results: BTreeMap::new(),
            failure: None,
            failure_secondary: false,
            deployed_at: now,
            all_running: None,
        };
        let assignment = match self.slots.place(&jm.graph, &jm.order, &jm.placement) {
            Ok(a) => a,
            Err(e) => {
                let code = match e {
                    ControlError::NotEnoughSlots { .. } | ControlError::RemoteChannels { .. } => {
                        ErrorCode::NotEnoughSlots
                    }
                    _ => ErrorCode::InvalidJob,
                };
                return self.reject(conn, code, &e.to_string());
            }
        };
        if let Err(e) = jm.eg.start() {
            return self.reject(conn, ErrorCode::Internal, &e.to_string());
        }
        self.next_job += 1;
        tracing::info!(job = %id, name = %jm.graph.name, "job submitted");
        self.jobs.insert(id, jm);
        self.send(conn, Message::JobSubmitted(JobSubmitted { job: id }));
        self.deploy(now, id, assignment);
    }

    fn details(&self, id: JobId) -> Option<JobDetails> {
        let jm = self.jobs.get(&id)?;
        let subtasks = jm
            .eg
            .subtasks
            .iter()
            .map(|s| {
                let place = jm.assignment.of(s.id());
                SubtaskDetails {
                    vertex: jm.graph.vertices[s.id().vertex.0 as usize].name.clone(),
                    subtask: s.id().subtask,
                    attempt: s.attempt.attempt,
                    state: s.state,
                    slot: place.map(|p| p.slot),
                    core: place.map(|p| p.core as u32),
                    result: jm.results.get(&s.id()).cloned(),
                    failure: s.failure.clone(),
                }
            })
            .collect();
        Some(JobDetails {
            job: id,
            name: jm.graph.name.clone(),
            status: jm.eg.status(),
            restarts: jm.restart.restarts(),
            failure: jm.failure.clone(),
            submit_to_running_us: jm.all_running.map(|d| d.as_micros() as u64),
            subtasks,
        })
    }

    fn overview(&self) -> Message {
        let (total, free) = self.slots.totals();
        let running = self.jobs.values().filter(|j| !j.eg.status().is_globally_terminal()).count();
        Message::ResourceOverview(ResourceOverview {
            workers: self.worker_conns.len() as u32,
            total_slots: total as u32,
            free_slots: free as u32,
            running_jobs: running as u32,
        })
    }

    fn wake_waiters(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            let (job, until) = match w.what {
                WaitFor::Workers(n) => {
                    if self.worker_conns.len() as u32 >= n || now >= w.deadline {
                        let w = self.waiters.swap_remove(i);
                        let o = self.overview();
                        self.send(w.conn, o);
                    } else {
                        i += 1;
                    }
                    continue;
                }
                WaitFor::Dump(worker) => {
                    let lost = !self.worker_conns.contains_key(&worker);
                    if lost || now >= w.deadline {
                        let w = self.waiters.swap_remove(i);
                        let (code, why) = if lost {
                            (ErrorCode::UnknownWorker, format!("{worker} was lost before it answered"))
                        } else {
                            (ErrorCode::Internal, format!("{worker} did not answer in time"))
                        };
                        self.reject(w.conn, code, &why);
                    } else {
                        i += 1;
                    }
                    continue;
                }
                WaitFor::Job(job, until) => (job, until),
            };
            let met = match self.jobs.get(&job) {
                None => true,
                Some(jm) => match until {
                    WaitCondition::Terminal => jm.eg.status().is_globally_terminal(),
                    WaitCondition::AllRunning => {
                        jm.eg.status().is_globally_terminal()
                            || (jm.phase == Phase::Running
                                && jm
                                    .eg
                                    .subtasks
                                    .iter()
                                    .all(|s| matches!(s.state, ExecutionState::Running | ExecutionState::Finished)))
                    }
                },
            };
            if met || now >= w.deadline {
                let w = self.waiters.swap_remove(i);
                match self.details(job) {
                    Some(d) => self.send(w.conn, Message::JobDetails(d)),
                    None => self.reject(w.conn, ErrorCode::UnknownJob, &format!("no job {job}")),
                }
            } else {
                i += 1;
            }
        }
    }

    /// Hands a worker's dump to every client waiting for it.
    fn forward_dump(&mut self, dump: ShardDump) {
        let (waiting, rest): (Vec<Waiter>, _) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| matches!(w.what, WaitFor::Dump(x) if x == dump.worker));
        self.waiters = rest;
        for w in waiting {
            self.send(w.conn, Message::ShardDump(dump.clone()));
        }
    }

    fn cancel(&mut self, now: Instant, id: JobId) {
        let Some(jm) = self.jobs.get_mut(&id) else { return };
        if jm.eg.cancel().is_err() {
            return;
        }
        let to_cancel = jm.eg.begin_cancel();
        self.send_cancels(id, &to_cancel);
        self.settle(now, id);
    }

    // ---------------------------------------------------------- JobMaster

    /// Allocates the assignment's slots and sends slot requests and deployment
    /// descriptors.
    fn deploy(&mut self, now: Instant, id: JobId, assignment: SlotAssignment) {
        let mut slots: Vec<crate::ids::SlotId> = assignment.placements.iter().map(|p| p.slot).collect();
        slots.sort();
        slots.dedup();
        let allocated = self.slots.allocate(id, &slots);
        let Some(jm) = self.jobs.get_mut(&id) else { return };
        jm.allocations = allocated.iter().copied().collect();
        jm.assignment = assignment;
        jm.phase = Phase::Running;
        jm.deployed_at = now;
        let mut out = Vec::new();
        for &(slot, allocation) in &allocated {
            if let Some(&conn) = self.worker_conns.get(&slot.worker) {
                out.push(Output::Send(
                    conn,
                    Message::RequestSlot(RequestSlot {
                        resource_manager: self.token,
                        slot,
                        allocation,
                        job: id,
                        job_master: jm.token,
                    }),
                ));
            }
        }
        let attempts: Vec<AttemptId> = jm.eg.subtasks.iter().map(|s| s.attempt).collect();
        // Each vertex's information is archived once, and each edge's channels are
        // listed once; the descriptors carry the bytes and their own channels.
        let mut information: HashMap<VertexId, Vec<u8>> = HashMap::new();
        let channels: Vec<Vec<ChannelSpec>> = (0..jm.graph.edges.len()).map(|e| edge_channels(&jm.graph, e)).collect();
        for a in attempts {
            for to in [ExecutionState::Scheduled, ExecutionState::Deploying] {
                if let Err(e) = jm.eg.on_state(a, to, None) {
                    tracing::error!(job = %id, attempt = %a, "deploy: {e}");
                }
            }
            let Some(place) = jm.assignment.of(a.execution_vertex) else { continue };
            let Some(&conn) = self.worker_conns.get(&place.slot.worker) else { continue };
            let vertex = a.execution_vertex.vertex;
            let info = match information.entry(vertex) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match task_information(jm, vertex).archive() {
                    Ok(bytes) => e.insert(bytes),
                    Err(err) => {
                        tracing::error!(job = %id, %vertex, "deploy: {err}");
                        continue;
                    }
                },
            };
            out.push(Output::Send(conn, Message::DeployTask(deploy_task(id, jm, &channels, a, info.clone()))));
        }
        self.out.extend(out);
    }

    fn send_cancels(&mut self, id: JobId, attempts: &[AttemptId]) {
        let Some(jm) = self.jobs.get(&id) else { return };
        for &attempt in attempts {
            let Some(place) = jm.assignment.of(attempt.execution_vertex) else { continue };
            if let Some(&conn) = self.worker_conns.get(&place.slot.worker) {
                self.out.push(Output::Send(
                    conn,
                    Message::CancelTask(CancelTask { job_master: jm.token, job: id, attempt }),
                ));
            }
        }
    }

    fn task_update(&mut self, now: Instant, conn: ConnId, role: Option<Role>, m: UpdateTaskExecutionState) {
        if !matches!(role, Some(Role::Worker(_))) {
            return self.reject(conn, ErrorCode::NotRegistered, "task updates come from registered workers");
        }
        let Some(jm) = self.jobs.get(&m.job) else {
            tracing::debug!(job = %m.job, "update for a job that is gone");
            return;
        };
        if jm.token != m.job_master {
            return self.reject(
                conn,
                ErrorCode::StaleToken,
                &format!("job master token {} is not {}'s current one", m.job_master, m.job),
            );
        }
        self.apply_state(now, m.job, m.job_master, m.attempt, m.state, m.failure, m.result);
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of a task update")]
    fn apply_state(
        &mut self,
        now: Instant,
        id: JobId,
        token: JobMasterId,
        attempt: AttemptId,
        mut state: ExecutionState,
        failure: Option<TaskFailureInfo>,
        result: Option<TaskResultInfo>,
    ) {
        let Some(jm) = self.jobs.get_mut(&id) else { return };
        if jm.token != token {
            return;
        }
        let Some(current) = jm.eg.subtasks.iter().find(|s| s.attempt == attempt).map(|s| s.state) else {
            tracing::debug!(job = %id, %attempt, "update for an old attempt");
            return;
        };
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
            jm.results.insert(attempt.execution_vertex, r);
        }
        let status_before = jm.eg.status();
        let cause = failure.as_ref().map(|f| f.cause.clone());
        let cancelled_by_user = matches!(status_before, JobStatus::Cancelling | JobStatus::Canceled);
        if let (Some(f), ExecutionState::Failed, false) = (&failure, reported, cancelled_by_user) {
            let name = jm.eg.subtasks.iter().find(|s| s.attempt == attempt).map(|s| s.display_name.clone());
            let replaces =
                jm.failure.is_none() || (!f.secondary && (status_before == JobStatus::Running || jm.failure_secondary));
            if replaces {
                jm.failure = Some(format!("{}: {}", name.unwrap_or_default(), f.cause));
                jm.failure_secondary = f.secondary;
            }
        }
        match jm.eg.on_state(attempt, state, cause) {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(job = %id, %attempt, "ignored task update: {e}");
                return;
            }
        }
        if jm.all_running.is_none()
            && jm.eg.subtasks.iter().all(|s| matches!(s.state, ExecutionState::Running | ExecutionState::Finished))
        {
            jm.all_running = Some(now.saturating_duration_since(jm.deployed_at));
        }
        if jm.eg.status() == JobStatus::Failing && status_before != JobStatus::Failing {
            match jm.restart.on_failure(now) {
                RestartDecision::RestartAt(at) => {
                    tracing::info!(job = %id, restarts = jm.restart.restarts(), "job fails over; restart in {:?}", at - now);
                    let to_cancel = jm.eg.fail_over().unwrap_or_default();
                    jm.phase = Phase::RestartPending { at };
                    self.send_cancels(id, &to_cancel);
                }
                RestartDecision::GiveUp => {
                    tracing::info!(job = %id, "job fails: the restart strategy allows no more restarts");
                    let to_cancel = jm.eg.begin_cancel();
                    self.send_cancels(id, &to_cancel);
                }
            }
        }
        self.settle(now, id);
    }

    /// Moves a job on: frees the slots of a terminal job, restarts a failed-over job
    /// when its time has come and slots are free, gives up waiting for slots.
    fn settle(&mut self, now: Instant, id: JobId) {
        let Some(jm) = self.jobs.get_mut(&id) else { return };
        let status = jm.eg.status();
        match jm.phase {
            Phase::Done => {}
            _ if status.is_globally_terminal() => {
                jm.phase = Phase::Done;
                tracing::info!(job = %id, %status, "job ended");
                self.free_slots(id, &format!("job {status}"));
                self.ended.push_back(id);
                while self.ended.len() > self.config.retained_jobs.max(1) {
                    if let Some(old) = self.ended.pop_front() {
                        self.jobs.remove(&old);
                    }
                }
            }
            Phase::Running => {}
            Phase::RestartPending { at } => {
                if jm.eg.all_terminal() {
                    self.free_slots(id, "job restarts");
                    if now >= at {
                        let deadline = now + self.config.slot_wait_timeout;
                        if let Some(jm) = self.jobs.get_mut(&id) {
                            jm.phase = Phase::WaitingForSlots { deadline };
                        }
                        self.try_restart(now, id);
                    }
                }
            }
            Phase::WaitingForSlots { .. } => self.try_restart(now, id),
        }
    }

    fn try_restart(&mut self, now: Instant, id: JobId) {
        let Some(jm) = self.jobs.get_mut(&id) else { return };
        let Phase::WaitingForSlots { deadline } = jm.phase else { return };
        match self.slots.place(&jm.graph, &jm.order, &jm.placement) {
            Ok(assignment) => {
                let epoch = jm.eg.restart();
                tracing::info!(job = %id, epoch = ?epoch, "job restarts");
                self.deploy(now, id, assignment);
            }
            Err(e) if now >= deadline => {
                let waited = self.config.slot_wait_timeout;
                jm.failure = Some(format!(
                    "cannot restart: {e} (waited {} ms); first failure: {}",
                    waited.as_millis(),
                    jm.failure.clone().unwrap_or_default()
                ));
                let _ = jm.eg.give_up();
                jm.phase = Phase::Done;
                tracing::warn!(job = %id, "job failed: {}", jm.failure.as_deref().unwrap_or(""));
            }
            Err(_) => {}
        }
    }

    fn free_slots(&mut self, id: JobId, cause: &str) {
        let freed = self.slots.free_job(id);
        let Some(jm) = self.jobs.get_mut(&id) else { return };
        jm.allocations.clear();
        for (slot, allocation) in freed {
            if let Some(&conn) = self.worker_conns.get(&slot.worker) {
                self.out.push(Output::Send(
                    conn,
                    Message::FreeSlot(FreeSlot { job_master: jm.token, allocation, cause: cause.to_string() }),
                ));
            }
        }
    }
}

fn summary(id: JobId, jm: &JobMaster) -> JobSummary {
    let count = |st: ExecutionState| jm.eg.subtasks.iter().filter(|s| s.state == st).count() as u32;
    JobSummary {
        job: id,
        name: jm.graph.name.clone(),
        status: jm.eg.status(),
        subtasks: jm.eg.subtasks.len() as u32,
        running: count(ExecutionState::Running),
        finished: count(ExecutionState::Finished),
        restarts: jm.restart.restarts(),
    }
}

/// The deployment descriptor of `attempt`.
/// What every subtask of `vertex` shares.
fn task_information(jm: &JobMaster, vertex: VertexId) -> TaskInformation {
    let v = &jm.graph.vertices[vertex.0 as usize];
    TaskInformation {
        job_name: jm.graph.name.clone(),
        vertex_name: v.name.clone(),
        parallelism: v.parallelism,
        chain: v.chain.clone(),
    }
}

/// The deployment of `attempt`, carrying its vertex's archived information.
fn deploy_task(
    id: JobId,
    jm: &JobMaster,
    channels: &[Vec<ChannelSpec>],
    attempt: AttemptId,
    task_information: Vec<u8>,
) -> DeployTask {
    let ev = attempt.execution_vertex;
    let g = &jm.graph;
    // The far ends of this subtask's channels on edge `e`, in gate (consuming) or
    // subpartition (producing) order, with the worker of the peer subtask.
    let ends = |e: usize, peer_vertex: VertexId, consuming: bool| -> Vec<ChannelLocation> {
        let mut chans: Vec<&ChannelSpec> =
            channels[e].iter().filter(|c| ev.subtask == if consuming { c.consumer } else { c.producer }).collect();
        chans.sort_by_key(|c| if consuming { c.input_channel } else { c.subpartition });
        chans
            .iter()
            .map(|c| {
                let peer_subtask = if consuming { c.producer } else { c.consumer };
                let peer = jm.assignment.of(ExecutionVertexId { vertex: peer_vertex, subtask: peer_subtask });
                ChannelLocation {
                    peer_subtask,
                    subpartition: c.subpartition,
                    worker: peer.map_or(WorkerId(u32::MAX), |p| p.slot.worker),
                }
            })
            .collect()
    };
    let inputs =
        g.inputs(ev.vertex).map(|(e, edge)| GateDeployment { edge: e as u32, producers: ends(e, edge.source, true) });
    let outputs = g.outputs(ev.vertex).map(|(e, edge)| PartitionDeployment {
        edge: e as u32,
        partitioner: edge.partitioner,
        consumers: ends(e, edge.target, false),
    });
    let place = jm.assignment.of(ev);
    let slot = place
        .map_or(crate::ids::SlotId { worker: WorkerId(u32::MAX), shard: crate::ids::ShardId(0), index: 0 }, |p| p.slot);
    DeployTask {
        job: id,
        job_master: jm.token,
        allocation: jm.allocations.get(&slot).copied().unwrap_or(AllocationId(0)),
        slot,
        attempt,
        task_information,
        inputs: inputs.collect(),
        outputs: outputs.collect(),
    }
}

#[cfg(test)]
mod tests;
