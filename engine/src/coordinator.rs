//! The coordinator of the embedded engine: Dispatcher, slot bookkeeping and one
//! JobMaster per job, on a thread of its own. It validates and places jobs, reserves
//! their network memory, creates their channels, deploys their subtasks to shards
//! and drives each job's execution graph from task reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use shardflow_control::{
    edge_channels, place, subpartitions, AttemptId, ExecutionGraph, ExecutionState, JobGraph, JobId, JobStatus,
    PlacementStrategy, ResultPartitionType, ShardId, SlotAssignment, SlotId, SlotOffer, VertexId, WorkerId,
};
use shardflow_memory::{Budget, BudgetKind, Reservation};
use shardflow_netstack::{channel, ChannelReceiver, ChannelSender};

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::job::{Job, JobResult, SubtaskReport};
use crate::operator::TaskInfo;
use crate::registry::OperatorRegistry;
use crate::shard::{ShardCommand, ShardHandle};
use crate::task::{partitioner, OutputDeployment, TaskDeployment, TaskFailure, TaskOutput};

/// How a job ended, sent to its handle.
pub(crate) type JobOutcome = Result<JobResult, EngineError>;

/// What a successful submission hands back.
pub(crate) struct Submitted {
    pub(crate) id: JobId,
    pub(crate) placement: SlotAssignment,
    pub(crate) outcome: Receiver<JobOutcome>,
    pub(crate) progress: Arc<AtomicU64>,
}

/// Messages to the coordinator thread.
pub(crate) enum CoordinatorMsg {
    Submit {
        job: Box<Job>,
        strategy: PlacementStrategy,
        reply: Sender<Result<Submitted, EngineError>>,
    },
    Cancel(JobId),
    TaskState {
        job: JobId,
        attempt: AttemptId,
        state: ExecutionState,
        failure: Option<TaskFailure>,
        output: Option<TaskOutput>,
    },
    Status {
        job: JobId,
        reply: Sender<Option<JobStatus>>,
    },
    FreeSlots(Sender<usize>),
    Shutdown,
}

struct JobMaster {
    graph: JobGraph,
    eg: ExecutionGraph,
    assignment: SlotAssignment,
    _reservations: Vec<Reservation>,
    outputs: BTreeMap<(VertexId, u32), TaskOutput>,
    root_cause: Option<String>,
    secondary_cause: Option<String>,
    outcome: Sender<JobOutcome>,
    submitted: Instant,
}

pub(crate) struct Coordinator {
    config: EngineConfig,
    registry: Arc<OperatorRegistry>,
    shards: Vec<ShardHandle>,
    budgets: Vec<Budget>,
    slots: Vec<(SlotOffer, Option<JobId>)>,
    /// Managed memory of each slot, by slot id.
    managed: HashMap<SlotId, Budget>,
    jobs: HashMap<JobId, JobMaster>,
    finished: HashMap<JobId, JobStatus>,
    next_job: u64,
}

impl Coordinator {
    pub(crate) fn new(config: EngineConfig, registry: Arc<OperatorRegistry>, shards: Vec<ShardHandle>) -> Self {
        let budgets = shards.iter().map(ShardHandle::network_budget).collect();
        let slots: Vec<(SlotOffer, Option<JobId>)> = shards
            .iter()
            .flat_map(|s| {
                (0..config.slots_per_shard).map(move |i| {
                    let slot = SlotId { worker: WorkerId(0), shard: ShardId(s.id), index: i };
                    (SlotOffer { slot, core: s.core }, None)
                })
            })
            .collect();
        let managed = slots
            .iter()
            .map(|(offer, _)| {
                (offer.slot, Budget::new(BudgetKind::ManagedMemory, config.managed_memory_per_slot_bytes))
            })
            .collect();
        Coordinator {
            config,
            registry,
            shards,
            budgets,
            slots,
            managed,
            jobs: HashMap::new(),
            finished: HashMap::new(),
            next_job: 1,
        }
    }

    /// Serves messages until shutdown; then stops the shards.
    pub(crate) fn run(mut self, inbox: Receiver<CoordinatorMsg>) {
        while let Ok(msg) = inbox.recv() {
            match msg {
                CoordinatorMsg::Submit { job, strategy, reply } => {
                    let _ = reply.send(self.submit(*job, &strategy));
                }
                CoordinatorMsg::Cancel(job) => self.cancel(job),
                CoordinatorMsg::TaskState { job, attempt, state, failure, output } => {
                    self.on_task_state(job, attempt, state, failure, output)
                }
                CoordinatorMsg::Status { job, reply } => {
                    let status =
                        self.jobs.get(&job).map(|j| j.eg.status()).or_else(|| self.finished.get(&job).copied());
                    let _ = reply.send(status);
                }
                CoordinatorMsg::FreeSlots(reply) => {
                    let _ = reply.send(self.slots.iter().filter(|s| s.1.is_none()).count());
                }
                CoordinatorMsg::Shutdown => break,
            }
        }
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            self.cancel(id);
        }
        for s in &mut self.shards {
            s.stop();
        }
        for (_, jm) in self.jobs.drain() {
            let _ = jm.outcome.send(Err(EngineError::Shutdown));
        }
    }

    fn submit(&mut self, job: Job, strategy: &PlacementStrategy) -> Result<Submitted, EngineError> {
        let Job { graph, resources, registry: extra } = job;
        let registry = if extra.is_empty() {
            self.registry.clone()
        } else {
            let mut r = (*self.registry).clone();
            r.merge(&extra);
            Arc::new(r)
        };
        let order = graph.validate(&|name| registry.contains(name))?;
        check_chains(&graph, &registry)?;
        let resources = Arc::new(resources);
        // Build every operator once here so bad configuration fails before anything runs.
        for v in &graph.vertices {
            for op in &v.chain {
                registry.build_head(&op.name, &op.config, &resources)?;
            }
        }
        let free: Vec<SlotOffer> = self.slots.iter().filter(|s| s.1.is_none()).map(|s| s.0).collect();
        let assignment = place(&graph, &order, &free, strategy)?;
        let reservations = self.reserve(&graph, &assignment)?;

        let job_id = JobId(self.next_job);
        let mut eg = ExecutionGraph::expand(job_id, &graph, &order);
        eg.start()?;
        for a in eg.subtasks.iter().map(|s| s.attempt).collect::<Vec<_>>() {
            for to in [ExecutionState::Scheduled, ExecutionState::Deploying] {
                eg.on_state(a, to, None)?;
            }
        }
        // Nothing below can fail: only now does the job take its id and slots.
        self.next_job += 1;
        for p in &assignment.placements {
            if let Some(s) = self.slots.iter_mut().find(|s| s.0.slot == p.slot) {
                s.1 = Some(job_id);
            }
        }
        let submitted = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let deployments =
            self.deployments(job_id, &graph, &eg, &assignment, registry, resources, submitted, progress.clone());
        let (outcome_tx, outcome_rx) = crossbeam_channel::bounded(1);
        self.jobs.insert(
            job_id,
            JobMaster {
                graph,
                eg,
                assignment: assignment.clone(),
                _reservations: reservations,
                outputs: BTreeMap::new(),
                root_cause: None,
                secondary_cause: None,
                outcome: outcome_tx,
                submitted,
            },
        );
        // One message per shard: a spinning shard reads its mailbox only between
        // time slices, so a job's tasks on one shard must arrive together.
        let mut per_shard: BTreeMap<u32, Vec<TaskDeployment>> = BTreeMap::new();
        for (shard, d) in deployments {
            per_shard.entry(shard).or_default().push(d);
        }
        for (shard, ds) in per_shard {
            if let Some(s) = self.shards.iter().find(|s| s.id == shard) {
                if s.mailbox.send(ShardCommand::Deploy(ds)).is_err() {
                    tracing::error!(shard, "shard mailbox closed while deploying");
                }
            }
        }
        tracing::debug!(%job_id, "job deployed");
        Ok(Submitted { id: job_id, placement: assignment, outcome: outcome_rx, progress })
    }

    /// Reserves each shard's network buffers for the job: per subpartition one
    /// buffer being filled plus the most that can be in flight on its channel.
    fn reserve(&self, graph: &JobGraph, assignment: &SlotAssignment) -> Result<Vec<Reservation>, EngineError> {
        let per_channel = 1 + u64::from(self.config.exclusive_credits) + u64::from(self.config.floating_credits);
        let mut segments: BTreeMap<u32, u64> = BTreeMap::new();
        for p in &assignment.placements {
            let v = p.subtask.vertex;
            let subs: u64 = graph.outputs(v).map(|(i, _)| u64::from(subpartitions(graph, i))).sum();
            *segments.entry(p.slot.shard.0).or_default() += subs * per_channel;
        }
        let seg_bytes = self.config.segment_bytes as u64;
        let mut out = Vec::new();
        for (shard, n) in segments {
            let budget = &self.budgets[shard as usize];
            let r = budget.reserve(n * seg_bytes).map_err(|cause| EngineError::OverBudget { shard, cause })?;
            out.push(r);
        }
        Ok(out)
    }

    #[expect(clippy::too_many_arguments, reason = "one call site; the parts of a deployment")]
    fn deployments(
        &self,
        job: JobId,
        graph: &JobGraph,
        eg: &ExecutionGraph,
        assignment: &SlotAssignment,
        registry: Arc<OperatorRegistry>,
        resources: Arc<crate::registry::JobResources>,
        job_start: Instant,
        progress: Arc<AtomicU64>,
    ) -> Vec<(u32, TaskDeployment)> {
        let cfg = &self.config;
        let max_in_flight = cfg.exclusive_credits + cfg.floating_credits;
        // Per (vertex, subtask): outputs[edge order] senders, inputs receivers.
        let mut senders: HashMap<(usize, u32), Vec<Option<ChannelSender>>> = HashMap::new();
        let mut receivers: HashMap<(VertexId, u32), BTreeMap<(usize, u32), ChannelReceiver>> = HashMap::new();
        for (e, edge) in graph.edges.iter().enumerate() {
            let subs = subpartitions(graph, e) as usize;
            for ch in edge_channels(graph, e) {
                let (tx, rx) = channel(cfg.exclusive_credits, max_in_flight, cfg.event_room);
                let slot = senders.entry((e, ch.producer)).or_insert_with(|| (0..subs).map(|_| None).collect());
                slot[ch.subpartition as usize] = Some(tx);
                receivers.entry((edge.target, ch.consumer)).or_default().insert((e, ch.input_channel), rx);
            }
        }
        let mut out = Vec::new();
        for sub in &eg.subtasks {
            let id = sub.id();
            let v = &graph.vertices[id.vertex.0 as usize];
            let Some(place) = assignment.of(id) else { continue };
            let outputs = graph
                .outputs(id.vertex)
                .map(|(e, edge)| OutputDeployment {
                    partitioner: partitioner(edge.partitioner),
                    senders: senders.remove(&(e, id.subtask)).unwrap_or_default().into_iter().flatten().collect(),
                })
                .collect();
            let inputs = receivers.remove(&(id.vertex, id.subtask)).unwrap_or_default().into_values().collect();
            out.push((
                place.slot.shard.0,
                TaskDeployment {
                    job,
                    attempt: sub.attempt,
                    info: TaskInfo {
                        vertex: v.name.clone(),
                        subtask: id.subtask,
                        parallelism: v.parallelism,
                        job_start,
                        core: place.core,
                        managed_memory: self.managed[&place.slot].clone(),
                    },
                    chain: v.chain.clone(),
                    inputs,
                    exclusive_credits: cfg.exclusive_credits,
                    floating_credits: cfg.floating_credits,
                    outputs,
                    registry: registry.clone(),
                    resources: resources.clone(),
                    flush_timeout: cfg.flush_timeout,
                    idle: cfg.idle,
                    min_park: cfg.min_park,
                    progress: progress.clone(),
                },
            ));
        }
        out
    }

    fn cancel(&mut self, job: JobId) {
        let Some(jm) = self.jobs.get_mut(&job) else { return };
        if jm.eg.cancel().is_err() {
            return;
        }
        Self::cancel_tasks(&self.shards, jm);
        self.settle(job);
    }

    fn cancel_tasks(shards: &[ShardHandle], jm: &mut JobMaster) {
        let to_cancel = jm.eg.begin_cancel();
        if to_cancel.is_empty() {
            return;
        }
        let hosts = |id: u32| jm.assignment.placements.iter().any(|p| p.slot.shard.0 == id);
        for s in shards.iter().filter(|s| hosts(s.id)) {
            let _ = s.mailbox.send(ShardCommand::Cancel(jm.eg.job_id));
        }
    }

    fn on_task_state(
        &mut self,
        job: JobId,
        attempt: AttemptId,
        mut state: ExecutionState,
        failure: Option<TaskFailure>,
        output: Option<TaskOutput>,
    ) {
        tracing::debug!(%job, %attempt, %state, failure = ?failure.as_ref().map(|f| &f.cause), "task state");
        let Some(jm) = self.jobs.get_mut(&job) else { return };
        let Some(current) = jm.eg.subtasks.iter().find(|s| s.attempt == attempt).map(|s| s.state) else {
            tracing::warn!(%job, %attempt, "report for an unknown attempt");
            return;
        };
        if current == ExecutionState::Canceling {
            match state {
                // Late progress reports of a task being cancelled.
                ExecutionState::Initializing | ExecutionState::Running => return,
                // It finished before the cancel reached it.
                ExecutionState::Finished => state = ExecutionState::Canceled,
                _ => {}
            }
        }
        if let Some(f) = &failure {
            let slot = if f.secondary { &mut jm.secondary_cause } else { &mut jm.root_cause };
            if slot.is_none() {
                let name = jm.eg.subtasks.iter().find(|s| s.attempt == attempt).map(|s| s.display_name.clone());
                *slot = Some(format!("{}: {}", name.unwrap_or_default(), f.cause));
            }
        }
        if let Some(o) = output {
            jm.outputs.insert((attempt.execution_vertex.vertex, attempt.execution_vertex.subtask), o);
        }
        let cause = failure.map(|f| f.cause);
        match jm.eg.on_state(attempt, state, cause) {
            Ok(JobStatus::Failing) => Self::cancel_tasks(&self.shards, jm),
            Ok(_) => {}
            Err(e) => tracing::warn!(%job, %attempt, "ignored task report: {e}"),
        }
        self.settle(job);
    }

    /// Completes a job that reached a terminal status: frees its slots and memory,
    /// and hands its outcome to its handle.
    fn settle(&mut self, job: JobId) {
        let Some(status) = self.jobs.get(&job).map(|j| j.eg.status()) else { return };
        if !status.is_globally_terminal() {
            return;
        }
        let Some(jm) = self.jobs.remove(&job) else { return };
        for s in &mut self.slots {
            if s.1 == Some(job) {
                s.1 = None;
            }
        }
        self.finished.insert(job, status);
        let outcome = match status {
            JobStatus::Finished => Ok(result(job, &jm)),
            JobStatus::Canceled => Err(EngineError::JobCanceled(job)),
            _ => Err(EngineError::JobFailed {
                job,
                cause: jm.root_cause.clone().or(jm.secondary_cause.clone()).unwrap_or_else(|| "unknown cause".into()),
            }),
        };
        let _ = jm.outcome.send(outcome);
    }
}

fn result(job: JobId, jm: &JobMaster) -> JobResult {
    let subtasks = jm
        .outputs
        .iter()
        .map(|(&(v, i), o)| SubtaskReport {
            vertex: jm.graph.vertices[v.0 as usize].name.clone(),
            subtask: i,
            records_in: o.records_in,
            records_out: o.records_out,
            sinks: o.sinks.clone(),
        })
        .collect();
    JobResult {
        job_id: job,
        name: jm.graph.name.clone(),
        status: jm.eg.status(),
        placement: jm.assignment.clone(),
        subtasks,
        submitted_at: jm.submitted,
        finished_at: Instant::now(),
    }
}

/// Engine-level checks of vertex chains: a source heads exactly the vertices
/// without inputs; blocking partitions are not run by this engine.
fn check_chains(graph: &JobGraph, registry: &OperatorRegistry) -> Result<(), EngineError> {
    for (i, v) in graph.vertices.iter().enumerate() {
        let has_inputs = graph.inputs(VertexId(i as u32)).next().is_some();
        let bad = |reason: &str| EngineError::InvalidChain { vertex: v.name.clone(), reason: reason.into() };
        let head_is_source = registry.is_source(&v.chain[0].name);
        if has_inputs && head_is_source {
            return Err(bad("a source cannot consume inputs"));
        }
        if !has_inputs && !head_is_source {
            return Err(bad("a vertex without inputs must start with a source"));
        }
        if v.chain.iter().skip(1).any(|op| registry.is_source(&op.name)) {
            return Err(bad("a source can only head a chain"));
        }
    }
    if let Some(e) = graph.edges.iter().find(|e| e.partition_type == ResultPartitionType::Blocking) {
        return Err(EngineError::Unsupported(format!(
            "blocking partition on edge {} -> {}: this engine runs pipelined partitions only",
            graph.vertices[e.source.0 as usize].name, graph.vertices[e.target.0 as usize].name
        )));
    }
    Ok(())
}
