//! The embedded engine: a coordinator thread and one shard per chosen core, in the
//! caller's process.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use shardflow_control::{JobId, JobStatus, PlacementStrategy};
use shardflow_memory::PoolMonitor;

use crate::config::{Cores, EngineBuilder, EngineConfig};
use crate::coordinator::{Coordinator, CoordinatorMsg};
use crate::error::EngineError;
use crate::job::{Job, JobHandle, JobResult};
use crate::registry::OperatorRegistry;
use crate::shard::{start_shards, ReportSink, TaskReport};

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
    coordinator: Sender<CoordinatorMsg>,
    thread: Option<JoinHandle<()>>,
    shards: Vec<ShardInfo>,
    pools: Vec<PoolMonitor>,
    config: EngineConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("shards", &self.shards).field("config", &self.config).finish()
    }
}

/// Online CPUs, sorted.
pub fn online_cores() -> Vec<usize> {
    let mut cores: Vec<usize> = match glommio::CpuSet::online() {
        Ok(set) => set.iter().map(|l| l.cpu).collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    };
    cores.sort_unstable();
    cores.dedup();
    cores
}

pub(crate) fn resolve_cores(cores: &Cores) -> Result<Vec<usize>, EngineError> {
    let online = online_cores();
    match cores {
        Cores::All => Ok(online),
        Cores::Count(n) => {
            if *n > online.len() {
                return Err(EngineError::InvalidConfig {
                    field: "shards",
                    value: n.to_string(),
                    reason: format!("only {} cores are online ({online:?})", online.len()),
                });
            }
            Ok(online[..*n].to_vec())
        }
        Cores::List(list) => {
            for (i, &c) in list.iter().enumerate() {
                if !online.contains(&c) {
                    return Err(EngineError::UnknownCore { core: c, online: online.clone() });
                }
                if list[..i].contains(&c) {
                    return Err(EngineError::DuplicateCore { core: c });
                }
            }
            Ok(list.clone())
        }
    }
}

impl Engine {
    /// A builder with the default configuration.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    pub(crate) fn start(config: EngineConfig, registry: OperatorRegistry) -> Result<Self, EngineError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let coordinator = tx.clone();
        let reports: ReportSink = Arc::new(move |r: TaskReport| {
            let _ = coordinator.send(CoordinatorMsg::TaskState {
                job: r.job,
                attempt: r.attempt,
                state: r.state,
                failure: r.failure,
                output: r.output,
            });
        });
        let handles = start_shards(&config, reports)?;
        let shards = handles.iter().map(|h| ShardInfo { id: h.id, core: h.core }).collect();
        let pools = handles.iter().map(|h| h.pool.clone()).collect();
        let coordinator = Coordinator::new(config.clone(), Arc::new(registry), handles);
        let thread = std::thread::Builder::new()
            .name("shardflow-coordinator".into())
            .spawn(move || coordinator.run(rx))
            .map_err(|e| EngineError::ShardStart {
                shard: u32::MAX,
                core: 0,
                reason: format!("coordinator thread: {e}"),
            })?;
        Ok(Engine { coordinator: tx, thread: Some(thread), shards, pools, config })
    }

    /// Submits `job`, placed with the default strategy (`spread`).
    pub fn submit(&self, job: Job) -> Result<JobHandle, EngineError> {
        self.submit_with(job, PlacementStrategy::Spread)
    }

    /// Submits `job`, placed by `strategy`. Invalid graphs, unknown operators, bad
    /// operator configuration, placement and memory problems are refused here, before
    /// anything runs.
    pub fn submit_with(&self, job: Job, strategy: PlacementStrategy) -> Result<JobHandle, EngineError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        self.coordinator
            .send(CoordinatorMsg::Submit { job: Box::new(job), strategy, reply: reply_tx })
            .map_err(|_| EngineError::Shutdown)?;
        let s = reply_rx.recv().map_err(|_| EngineError::Shutdown)??;
        Ok(JobHandle {
            id: s.id,
            placement: s.placement,
            outcome: s.outcome,
            progress: s.progress,
            coordinator: self.coordinator.clone(),
        })
    }

    /// Submits `job` and waits for its result.
    pub fn run(&self, job: Job) -> Result<JobResult, EngineError> {
        self.submit(job)?.wait()
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
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.coordinator.send(CoordinatorMsg::FreeSlots(tx)).map_err(|_| EngineError::Shutdown)?;
        rx.recv_timeout(Duration::from_secs(30)).map_err(|_| EngineError::Shutdown)
    }

    /// The status of job `id`.
    pub fn job_status(&self, id: JobId) -> Result<JobStatus, EngineError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.coordinator.send(CoordinatorMsg::Status { job: id, reply: tx }).map_err(|_| EngineError::Shutdown)?;
        rx.recv_timeout(Duration::from_secs(30)).map_err(|_| EngineError::Shutdown)?.ok_or(EngineError::UnknownJob(id))
    }

    /// Cancels running jobs, stops every shard and waits for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.coordinator.send(CoordinatorMsg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
