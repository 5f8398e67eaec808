//! The embedded engine: the cluster's coordinator and one worker owning a shard per
//! chosen core, in the caller's process, joined by in-process connections that
//! carry the same frames as TCP. A job's typed plan is added to the process's
//! live registry under a name unique to the submission, so its graph travels in
//! frames like any other and its vertices resolve to the plan.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardflow_control::protocol::{ErrorCode, ShardDump};
use shardflow_control::{
    validate_job, CoordinatorConfig, ExecutionVertexId, JobId, JobStatus, PlacementStrategy, RestartStrategy,
    SlotAssignment, SubtaskPlacement, VertexId,
};
use shardflow_memory::PoolMonitor;

use crate::api::Job;
use crate::cluster::{CoordinatorServer, JobBoard, ServerOptions, Worker, WorkerOptions};
use crate::config::{EngineBuilder, EngineConfig};
use crate::error::EngineError;
use crate::job::{JobHandle, JobResult};
use crate::params::Params;
use crate::registry::catalog::RegistryCatalog;
use crate::registry::{stamp, JobCatalog, LiveRegistry};
use crate::shard::HostedShard;
use crate::shared::{EngineInner, JobEnds, Submission};

/// A shard as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardInfo {
    /// Shard index.
    pub id: u32,
    /// The core it is pinned to.
    pub core: usize,
}

/// Occupancy of one shard's segment pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Shard index.
    pub shard: u32,
    /// Segments in the pool.
    pub segments: usize,
    /// Segments free now.
    pub free_segments: usize,
    /// Segment size.
    pub segment_bytes: usize,
    /// Most segments in use at once since start-up or [`Engine::reset_memory_peaks`].
    pub peak_in_use: usize,
}

/// The embedded engine. Dropping it cancels running jobs and stops every shard.
pub struct Engine {
    inner: Arc<EngineInner>,
    worker: Option<Worker>,
    shards: Vec<ShardInfo>,
    pools: Vec<PoolMonitor>,
    config: EngineConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("shards", &self.shards).field("config", &self.config).finish()
    }
}

/// How long the embedded worker may wait for its coordinator's heartbeat: both
/// live in this process, so only a stall of the whole process delays one.
const EMBEDDED_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest [`Engine::dump`] waits for its worker's answer (in-process: it
/// comes at once unless the worker's thread stalls).
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

impl Engine {
    /// A builder with the default configuration.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Starts the engine; with `host`, shard 0 is the calling thread's (returned).
    pub(crate) fn start(
        config: EngineConfig,
        registry: JobCatalog,
        host: bool,
    ) -> Result<(Self, Option<HostedShard>), EngineError> {
        let live = Arc::new(LiveRegistry::new(registry));
        let coordinator = CoordinatorConfig {
            heartbeat_timeout: EMBEDDED_HEARTBEAT_TIMEOUT,
            default_placement: PlacementStrategy::Spread,
            default_restart: RestartStrategy::None,
            // One worker: a job that does not fit its free slots is refused at once.
            submit_slot_wait: Duration::ZERO,
            // Its one worker hands each task's snapshot to the job's handle.
            snapshots_in_process: true,
            ..CoordinatorConfig::default()
        };
        let job_ends = Arc::new(JobEnds::new(live.clone()));
        let ends = job_ends.clone();
        let on_job_end = Box::new(move |id| ends.ended(id));
        let server =
            CoordinatorServer::start_live(coordinator, live.clone(), ServerOptions::default(), Some(on_job_end))?;
        let inner = Arc::new(EngineInner::new(server, live.clone(), Arc::new(JobBoard::embedded()), job_ends));
        let weak = Arc::downgrade(&inner);
        let connector = crate::cluster::in_process_connector(move || weak.upgrade()?.pipe());
        let options = WorkerOptions { resource_id: Some("embedded".into()), ..WorkerOptions::default() };
        let (worker, hosted) = Worker::start_with(connector, config.clone(), live, inner.board.clone(), options, host)?;
        let shards = worker.shards().iter().map(|s| ShardInfo { id: s.id, core: s.core }).collect();
        let pools = worker.shards().iter().map(|s| s.pool.clone()).collect();
        let engine = Engine { inner, worker: Some(worker), shards, pools, config };
        let overview = engine.inner.with_client(|c| c.wait_for_workers(1, Duration::from_secs(60)))?;
        if overview.workers != 1 {
            return Err(EngineError::Io {
                what: "starting the embedded engine".into(),
                reason: "its worker did not register with its coordinator within 60 s".into(),
            });
        }
        Ok((engine, hosted))
    }

    /// Submits `job`, placed with the default strategy (`spread`).
    pub fn submit(&self, job: Job) -> Result<JobHandle, EngineError> {
        self.submit_with(job, PlacementStrategy::Spread)
    }

    /// Submits `job`, placed by `strategy`. Invalid graphs, unknown operators, bad
    /// operator configuration and too few slots are refused here, before anything
    /// runs; a task that does not fit its shard's network memory fails the job.
    pub fn submit_with(&self, job: Job, strategy: PlacementStrategy) -> Result<JobHandle, EngineError> {
        let mut job = job;
        // The job's plan, under a name unique to this submission.
        let tag = format!("{}@{}", job.graph.name, self.inner.next_submission());
        stamp(&mut job, &tag, &Params::new());
        let strategy = self.with_hints(&job, strategy);
        let job = Arc::new(job);
        self.inner.live().add(&tag, job.clone());
        if let Err(e) = validate_job(&job.graph, &RegistryCatalog::new(self.inner.live_arc())) {
            self.inner.live().remove(&tag);
            return Err(e.into());
        }
        let graph = job.graph.clone();
        let submitted_at = Instant::now();
        let vertex_names: Vec<String> = graph.vertices.iter().map(|v| v.name.clone()).collect();
        let name = graph.name.clone();
        let (id, details) = self.inner.with_client(|c| {
            let id = c.submit(graph, &strategy.to_string(), "").inspect_err(|_| self.inner.live().remove(&tag))?;
            // From here the job's end, not its handle, ends the submission.
            self.inner.job_ends.watch(id, Submission { tag, ingresses: job.plan.ingresses.clone() });
            Ok((id, c.job(id)?))
        })?;
        let mut placements: Vec<SubtaskPlacement> = details
            .subtasks
            .iter()
            .filter_map(|s| {
                let vertex = vertex_names.iter().position(|v| *v == s.vertex)?;
                Some(SubtaskPlacement {
                    subtask: ExecutionVertexId { vertex: VertexId(vertex as u32), subtask: s.subtask },
                    vertex_name: s.vertex.clone(),
                    slot: s.slot?,
                    core: s.core? as usize,
                })
            })
            .collect();
        placements.sort_by_key(|p| (p.subtask.vertex, p.subtask.subtask));
        Ok(JobHandle {
            id,
            name,
            vertex_names,
            placement: SlotAssignment { placements },
            progress: self.inner.board.progress(id),
            submitted_at,
            engine: self.inner.clone(),
            taken: AtomicBool::new(false),
        })
    }

    /// Submits `job` and waits for its result.
    pub fn run(&self, job: Job) -> Result<JobResult, EngineError> {
        self.submit(job)?.wait()
    }

    /// `strategy`, or where the job has placement hints and `strategy` is the
    /// default, the explicit map they ask for over the engine's shards
    /// ([`Job::hinted_placement`]).
    fn with_hints(&self, job: &Job, strategy: PlacementStrategy) -> PlacementStrategy {
        if strategy != PlacementStrategy::Spread {
            return strategy;
        }
        let slots = self.config.slots_per_shard;
        let shards: Vec<(usize, u32)> = self.shards.iter().map(|s| (s.core, slots)).collect();
        job.hinted_placement(&shards).unwrap_or(strategy)
    }

    /// The shards and their cores.
    pub fn shards(&self) -> &[ShardInfo] {
        &self.shards
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Occupancy of every shard's segment pool.
    pub fn memory(&self) -> Vec<PoolUsage> {
        self.pools
            .iter()
            .map(|p| PoolUsage {
                shard: p.shard(),
                segments: p.segments(),
                free_segments: p.free_segments(),
                segment_bytes: p.segment_bytes(),
                peak_in_use: p.peak_in_use(),
            })
            .collect()
    }

    /// Restarts the peak-occupancy tracking of every pool.
    pub fn reset_memory_peaks(&self) {
        for p in &self.pools {
            p.reset_peak();
        }
    }

    /// Task slots not allocated to any job.
    pub fn free_slots(&self) -> Result<usize, EngineError> {
        Ok(self.inner.with_client(|c| c.overview())?.free_slots as usize)
    }

    /// What each shard runs now: its core, its thread's CPU time and its
    /// tasks, each with its job, attempt, vertex, state, record counts and
    /// times (busy, idle, back-pressured) so far (as `shardflow dump` shows a
    /// cluster's worker): which subtask runs on which core, how far each has
    /// come and what it waits on. Two dumps apart give rates and shares over
    /// the time between.
    pub fn dump(&self) -> Result<ShardDump, EngineError> {
        self.inner.with_client(|c| {
            let unregistered = || EngineError::Io {
                what: "the engine's dump".into(),
                reason: "its worker is not registered with its coordinator".into(),
            };
            let worker = c.workers()?.first().map(|w| w.worker).ok_or_else(unregistered)?;
            c.shard_dump(worker, DUMP_TIMEOUT)
        })
    }

    /// The status of job `id`.
    pub fn job_status(&self, id: JobId) -> Result<JobStatus, EngineError> {
        match self.inner.with_client(|c| c.job(id)) {
            Ok(d) => Ok(d.status),
            Err(EngineError::Remote { code: ErrorCode::UnknownJob, .. }) => Err(EngineError::UnknownJob(id)),
            Err(e) => Err(e),
        }
    }

    /// Cancels running jobs, stops every shard and waits for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown();
        }
        self.inner.stop();
    }
}

impl EngineBuilder {
    /// Starts the engine: one shard per core, each on a thread of its own.
    pub fn build(self) -> Result<Engine, EngineError> {
        let (config, registry) = self.into_parts()?;
        Ok(Engine::start(config, registry, false)?.0)
    }

    /// Starts the engine with shard 0 hosted by the calling thread, for a host
    /// that owns its loop: the thread is pinned to the first configured core
    /// and runs the shard's tasks only when it steps the returned
    /// [`HostedShard`] (the other shards have threads of their own, as with
    /// [`EngineBuilder::build`]). Threads the caller starts afterwards inherit
    /// the pinning, as from any pinned thread; the helper thread of
    /// [`HostedShard::step_during`] (and of the engine's blocking calls made on
    /// the host's thread) runs where the thread could run before.
    ///
    /// ```no_run
    /// use shardflow_engine::{Dataflow, Engine};
    ///
    /// let (engine, mut shard) = Engine::builder().shards(1).build_hosted()?;
    /// let df = Dataflow::new("service").parallelism(1);
    /// let (requests, mut ingress) = df.ingress::<u64>("requests", 1024);
    /// let mut answers = requests.map(|r: &u64| r * 2).egress(1024);
    /// let job = engine.submit(df.build()?)?;
    /// ingress.push(21).expect("the job takes requests");
    /// // The host's thread runs the job until the answer is there.
    /// assert_eq!(shard.block_on(answers.recv_async()), Some(42));
    /// drop(ingress);
    /// job.wait()?; // on the host's thread: runs the shard while it waits
    /// # drop(shard);
    /// # Ok::<(), shardflow_engine::EngineError>(())
    /// ```
    pub fn build_hosted(self) -> Result<(Engine, HostedShard), EngineError> {
        let (config, registry) = self.into_parts()?;
        let (engine, hosted) = Engine::start(config, registry, true)?;
        let Some(hosted) = hosted else {
            return Err(EngineError::ShardStart { shard: 0, core: 0, reason: "no shard was hosted".into() });
        };
        pin_current_thread(hosted.core()).map_err(|reason| EngineError::ShardStart {
            shard: hosted.id(),
            core: hosted.core(),
            reason,
        })?;
        Ok((engine, hosted))
    }
}

/// Pins the calling thread to `core`.
fn pin_current_thread(core: usize) -> Result<(), String> {
    let mut set = rustix::thread::CpuSet::new();
    if core >= rustix::thread::CpuSet::MAX_CPU {
        return Err(format!("core {core} is beyond the {} a CPU set holds", rustix::thread::CpuSet::MAX_CPU));
    }
    set.set(core);
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| format!("pinning the host thread: {e}"))
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cores, Dataflow};

    fn small_engine() -> Engine {
        Engine::builder()
            .cores(Cores::Count(1))
            .segment_bytes(4096)
            .network_memory_bytes(4 << 20)
            .prefault(false)
            .build()
            .expect("engine starts")
    }

    #[test]
    fn job_after_job_reuses_one_client_connection_and_leaks_none() {
        let engine = small_engine();
        let wait = Duration::from_secs(60);
        // The worker's and the start-up client's (kept idle).
        assert_eq!(engine.inner.connections_after(2, wait), 2, "after start-up");
        let offered = engine.inner.connections_offered();
        for i in 0..20u64 {
            let df = Dataflow::new("small").parallelism(1);
            let out = df.from_iter("numbers", vec![i, i + 1]).map(|r: &u64| r * 2).collect();
            let job = engine.submit(df.build().unwrap()).unwrap();
            let status = engine.job_status(job.id()).expect("a submitted job's status");
            assert!(!matches!(status, JobStatus::Failed | JobStatus::Canceled), "{status:?}");
            job.wait_timeout(wait).unwrap();
            assert_eq!(out.take(), vec![2 * i, 2 * i + 2]);
        }
        assert_eq!(engine.inner.connections_offered(), offered, "20 jobs opened no connection of their own");
        assert_eq!(engine.inner.connections_after(2, wait), 2, "after 20 jobs");
    }

    #[test]
    fn a_client_answered_with_an_error_is_not_reused() {
        let engine = small_engine();
        let slots = engine.free_slots().expect("free slots");
        let offered = engine.inner.connections_offered();
        // The coordinator closes a connection after an error reply.
        assert!(matches!(engine.job_status(JobId(u64::MAX)), Err(EngineError::UnknownJob(_))));
        assert_eq!(engine.free_slots(), Ok(slots), "the next call gets a working client");
        assert_eq!(engine.inner.connections_offered(), offered + 1, "a fresh one, once");
        assert_eq!(engine.free_slots(), Ok(slots));
        assert_eq!(engine.inner.connections_offered(), offered + 1, "then reused");
    }

    #[test]
    fn a_dropped_handle_leaves_its_running_job_the_plan_its_tasks_are_built_from() {
        let engine = small_engine();
        let wait = Duration::from_secs(60);
        let df = Dataflow::new("let-go").parallelism(1);
        let (requests, mut ingress) = df.ingress::<u64>("requests", 4);
        let answers = requests.map(|r: &u64| r + 1).egress(4);
        let handle = engine.submit(df.build().unwrap()).unwrap();
        let plan = format!("{}let-go@1", crate::api::JOB_OPERATOR);
        ingress.push(1).unwrap();
        assert_eq!(answers.recv_timeout(wait), Ok(2), "the job runs");
        drop(handle);
        // A task deployed now (late, or restarted) still finds its plan.
        assert!(engine.inner.live().knows(&plan), "the plan stays while the job runs");
        ingress.push(2).unwrap();
        assert_eq!(answers.recv_timeout(wait), Ok(3), "and the job serves on");
    }
}
