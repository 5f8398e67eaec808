//! Jobs as users build, submit and read them: a fluent builder over the JobGraph,
//! collect handles, job handles and results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use shardflow_control::protocol::{ErrorCode, JobDetails, WaitCondition};
use shardflow_control::{
    JobGraph, JobId, JobStatus, JobVertex, OperatorSpec, PartitionerKind, SlotAssignment, VertexId,
};

use crate::error::EngineError;
use crate::operator::SinkOutput;
use crate::ops;
use crate::record::Record;
use crate::registry::{JobResources, OperatorRegistry};
use crate::shared::{EngineInner, SubmissionNames};

/// A job ready to submit: its graph, the resources its operators use (collectors)
/// and any operators registered just for it.
#[derive(Debug, Clone)]
pub struct Job {
    pub(crate) graph: JobGraph,
    pub(crate) resources: JobResources,
    pub(crate) registry: OperatorRegistry,
}

impl Job {
    /// A job from a hand-built graph whose operators are all in the engine's registry.
    pub fn from_graph(graph: JobGraph) -> Self {
        Job { graph, resources: JobResources::default(), registry: OperatorRegistry::empty() }
    }

    /// The job graph.
    pub fn graph(&self) -> &JobGraph {
        &self.graph
    }
}

/// Receives the records of a `sink.collect` operator while and after the job runs.
#[derive(Debug, Clone)]
pub struct CollectHandle {
    name: String,
    tx: Sender<Vec<Record>>,
    rx: Receiver<Vec<Record>>,
}

impl CollectHandle {
    /// A new collector called `name` (unique within its job).
    pub fn new(name: &str) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        CollectHandle { name: name.to_string(), tx, rx }
    }

    /// Every record received so far, in arrival order per subtask.
    pub fn drain(&self) -> Vec<Record> {
        self.rx.try_iter().flatten().collect()
    }

    /// The next batch, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<Record>> {
        self.rx.recv_timeout(timeout).ok()
    }
}

/// Builds a job as a pipeline: each call acts on the current vertex, either chaining
/// an operator into it or starting a new vertex connected by a partitioner.
///
/// ```
/// use shardflow_engine::{ops, JobBuilder, PartitionerKind};
///
/// let job = JobBuilder::new("exchange")
///     .source("source", ops::generator(1000, ops::KeyGen::Golden, ops::ValueGen::Index), 2)
///     .connect(PartitionerKind::Hash, "sink", 2)
///     .then(ops::count_sink())
///     .build();
/// assert_eq!(job.graph().vertices.len(), 2);
/// ```
#[derive(Debug)]
pub struct JobBuilder {
    job: Job,
    current: Option<VertexId>,
}

impl JobBuilder {
    /// An empty job called `name`.
    pub fn new(name: &str) -> Self {
        JobBuilder { job: Job::from_graph(JobGraph::new(name)), current: None }
    }

    /// Starts a source vertex `name` with `parallelism` subtasks.
    #[must_use]
    pub fn source(mut self, name: &str, source: OperatorSpec, parallelism: u32) -> Self {
        let v = self.job.graph.add_vertex(JobVertex {
            name: name.to_string(),
            chain: vec![source],
            parallelism,
            slot_sharing_group: "default".into(),
        });
        self.current = Some(v);
        self
    }

    /// Chains `op` into the current vertex (direct calls, no buffer in between).
    #[must_use]
    pub fn then(mut self, op: OperatorSpec) -> Self {
        if let Some(v) = self.current {
            self.job.graph.vertices[v.0 as usize].chain.push(op);
        }
        self
    }

    /// Starts vertex `name` with `parallelism` subtasks, fed from the current vertex
    /// through `partitioner`. Its chain starts with the next [`JobBuilder::then`].
    #[must_use]
    pub fn connect(mut self, partitioner: PartitionerKind, name: &str, parallelism: u32) -> Self {
        let group = self
            .current
            .map(|v| self.job.graph.vertices[v.0 as usize].slot_sharing_group.clone())
            .unwrap_or_else(|| "default".into());
        let v = self.job.graph.add_vertex(JobVertex {
            name: name.to_string(),
            chain: Vec::new(),
            parallelism,
            slot_sharing_group: group,
        });
        if let Some(from) = self.current {
            self.job.graph.connect(from, v, partitioner);
        }
        self.current = Some(v);
        self
    }

    /// Puts the current vertex in slot-sharing group `group`.
    #[must_use]
    pub fn slot_sharing_group(mut self, group: &str) -> Self {
        if let Some(v) = self.current {
            self.job.graph.vertices[v.0 as usize].slot_sharing_group = group.to_string();
        }
        self
    }

    /// Chains a record-to-record function, registered for this job as `name`.
    #[must_use]
    pub fn map(mut self, name: &str, f: impl Fn(Record) -> Record + Clone + Send + Sync + 'static) -> Self {
        self.job.registry.register_map(name, f);
        self.then(OperatorSpec::new(name, Vec::new()))
    }

    /// Chains a predicate, registered for this job as `name`.
    #[must_use]
    pub fn filter(mut self, name: &str, f: impl Fn(&Record) -> bool + Clone + Send + Sync + 'static) -> Self {
        self.job.registry.register_filter(name, f);
        self.then(OperatorSpec::new(name, Vec::new()))
    }

    /// Chains a one-to-many function, registered for this job as `name`.
    #[must_use]
    pub fn flat_map(
        mut self,
        name: &str,
        f: impl Fn(&Record, &mut Vec<Record>) + Clone + Send + Sync + 'static,
    ) -> Self {
        self.job.registry.register_flat_map(name, f);
        self.then(OperatorSpec::new(name, Vec::new()))
    }

    /// Chains a collect sink feeding `handle`.
    #[must_use]
    pub fn collect(mut self, handle: &CollectHandle) -> Self {
        self.job.resources.add_collector(&handle.name, handle.tx.clone());
        self.then(ops::collect_sink(&handle.name))
    }

    /// The job.
    pub fn build(self) -> Job {
        self.job
    }
}

/// What one subtask reported when it finished.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtaskReport {
    /// Vertex name.
    pub vertex: String,
    /// Subtask index.
    pub subtask: u32,
    /// Records read from its input gate (sources: records produced).
    pub records_in: u64,
    /// Records written to its partitions.
    pub records_out: u64,
    /// Results of the sinks in its chain.
    pub sinks: Vec<SinkOutput>,
}

/// The result of a finished job.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The job.
    pub job_id: JobId,
    /// Its name.
    pub name: String,
    /// Its final status (FINISHED).
    pub status: JobStatus,
    /// Where each subtask ran.
    pub placement: SlotAssignment,
    /// Per-subtask reports.
    pub subtasks: Vec<SubtaskReport>,
    /// When it was submitted.
    pub submitted_at: Instant,
    /// When its last subtask finished.
    pub finished_at: Instant,
}

impl JobResult {
    /// Submission to completion.
    pub fn duration(&self) -> Duration {
        self.finished_at.saturating_duration_since(self.submitted_at)
    }

    /// Sum over every count sink: (records, wrapping value sum).
    pub fn count(&self) -> (u64, u64) {
        self.sink_outputs().fold((0, 0), |(n, s), o| match o {
            SinkOutput::Count { records, value_sum } => (n + records, s.wrapping_add(*value_sum)),
            _ => (n, s),
        })
    }

    /// Every latency sink's histogram merged, if there is one.
    pub fn latency(&self) -> Option<Histogram<u64>> {
        let mut merged: Option<Histogram<u64>> = None;
        for o in self.sink_outputs() {
            if let SinkOutput::Latency(h) = o {
                match &mut merged {
                    None => merged = Some(h.clone()),
                    Some(m) => {
                        // Same bounds by construction.
                        let _ = m.add(h);
                    }
                }
            }
        }
        merged
    }

    fn sink_outputs(&self) -> impl Iterator<Item = &SinkOutput> {
        self.subtasks.iter().flat_map(|s| s.sinks.iter())
    }
}

/// A submitted job: its id and placement, and the way to wait for or cancel it.
/// Dropping it leaves the job running; its result is then no longer kept. The
/// coordinator remembers the last 1000 ended jobs
/// ([`crate::CoordinatorConfig::retained_jobs`]): a job waited for only after more
/// than that many others ended answers [`EngineError::UnknownJob`].
#[derive(Debug)]
pub struct JobHandle {
    pub(crate) id: JobId,
    pub(crate) name: String,
    pub(crate) vertex_names: Vec<String>,
    pub(crate) placement: SlotAssignment,
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) submitted_at: Instant,
    pub(crate) names: SubmissionNames,
    pub(crate) engine: Arc<EngineInner>,
    /// Whether its outcome has been handed out.
    pub(crate) taken: std::sync::atomic::AtomicBool,
}

/// The longest single wait asked of the coordinator; longer waits ask again.
const WAIT_STEP: Duration = Duration::from_secs(3600);

impl JobHandle {
    /// The job id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Which slot, shard and core each subtask runs on.
    pub fn placement(&self) -> &SlotAssignment {
        &self.placement
    }

    /// Records the job's sources have produced so far.
    pub fn source_records(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Requests cancellation; [`JobHandle::wait`] then returns [`EngineError::JobCanceled`].
    pub fn cancel(&self) {
        if let Ok(mut c) = self.engine.client() {
            let _ = c.cancel(self.id);
        }
    }

    /// Waits for the job to end.
    pub fn wait(self) -> Result<JobResult, EngineError> {
        self.outcome(None)
    }

    /// Waits up to `timeout`; the job keeps running after a timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<JobResult, EngineError> {
        self.outcome(Some(Instant::now() + timeout))
    }

    fn outcome(&self, deadline: Option<Instant>) -> Result<JobResult, EngineError> {
        let gone = |e: EngineError| match e {
            EngineError::Remote { code: ErrorCode::UnknownJob, .. } => EngineError::UnknownJob(self.id),
            // The in-process coordinator closed the connection: the engine stopped.
            EngineError::Io { .. } => EngineError::Shutdown,
            other => other,
        };
        let mut client = self.engine.client()?;
        let details = loop {
            let step = deadline.map_or(WAIT_STEP, |d| d.saturating_duration_since(Instant::now()).min(WAIT_STEP));
            let d = client.wait(self.id, WaitCondition::Terminal, step).map_err(gone)?;
            if d.status.is_globally_terminal() {
                break d;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(EngineError::Timeout(self.id));
            }
        };
        let finished_at = Instant::now();
        let outputs = self.engine.board.take(self.id);
        self.taken.store(true, Ordering::Release);
        if details.status != JobStatus::Finished && self.engine.stopping() {
            return Err(EngineError::Shutdown);
        }
        self.result(details, outputs, finished_at)
    }

    fn result(
        &self,
        details: JobDetails,
        outputs: crate::cluster::Outputs,
        finished_at: Instant,
    ) -> Result<JobResult, EngineError> {
        match details.status {
            JobStatus::Finished => Ok(JobResult {
                job_id: self.id,
                name: self.name.clone(),
                status: details.status,
                placement: self.placement.clone(),
                subtasks: outputs
                    .into_iter()
                    .map(|((v, i), o)| SubtaskReport {
                        vertex: self.vertex_names.get(v.0 as usize).cloned().unwrap_or_default(),
                        subtask: i,
                        records_in: o.records_in,
                        records_out: o.records_out,
                        sinks: o.sinks,
                    })
                    .collect(),
                submitted_at: self.submitted_at,
                finished_at,
            }),
            JobStatus::Canceled => Err(EngineError::JobCanceled(self.id)),
            _ => Err(EngineError::JobFailed {
                job: self.id,
                cause: details.failure.unwrap_or_else(|| "unknown cause".into()),
            }),
        }
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.engine.forget(&self.names);
        if !self.taken.load(Ordering::Acquire) {
            self.engine.board.abandon(self.id);
        }
    }
}
