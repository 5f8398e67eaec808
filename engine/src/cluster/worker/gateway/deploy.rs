//! Deployments: a task's descriptor checked (its own shape, the slot's
//! allocation and token, the worker's reach), its network memory reserved, its
//! channels claimed from the job's wiring, and the task batched for its shard.

use std::sync::Arc;
use std::time::Instant;

use shardflow_control::protocol::*;
use shardflow_control::ExecutionState;
use shardflow_netstack::ResultPartition;

use super::{refuse, Gateway, TaskEntry};
use crate::runtime::collector::TaskInfo;
use crate::runtime::task::{TaskCounters, TaskDeployment, OVERDRAFT};

impl Gateway {
    /// The vertex information of `m`, read and validated once per vertex and
    /// attempt epoch.
    pub(super) fn information(&mut self, m: &DeployTask) -> Result<TaskInformation, ErrorReply> {
        let key = (m.attempt.execution_vertex.vertex, m.attempt.attempt);
        let known = &mut self.jobs.entry(m.job).or_default().information;
        if let Some((bytes, info)) = known.get(&key) {
            if *bytes == m.task_information {
                return Ok(info.clone());
            }
        }
        let info = TaskInformation::from_archive(&m.task_information).map_err(|e| refuse(e.code(), e.to_string()))?;
        known.insert(key, (m.task_information.clone(), info.clone()));
        Ok(info)
    }

    /// Checks a deployment's own consistency: what a task could not run with.
    fn check_shape(d: &TaskDeploymentDescriptor) -> Result<(), ErrorReply> {
        let malformed = |m: String| Err(refuse(ErrorCode::Malformed, format!("{} of {}: {m}", d.attempt, d.job)));
        let subtask = d.attempt.execution_vertex.subtask;
        if d.parallelism == 0 {
            return malformed("parallelism 0 (must be at least 1)".into());
        }
        if subtask >= d.parallelism {
            return malformed(format!("subtask {subtask} of a vertex with parallelism {}", d.parallelism));
        }
        if d.chain.is_empty() {
            return malformed("an empty operator chain".into());
        }
        if let Some(p) = d.outputs.iter().find(|p| p.consumers.is_empty()) {
            return malformed(format!("output on edge {} has no consumers", p.edge));
        }
        if let Some(g) = d.inputs.iter().find(|g| g.producers.is_empty()) {
            return malformed(format!("input on edge {} has no producers", g.edge));
        }
        Ok(())
    }

    /// Checks that the descriptor's edges carry the record formats this
    /// process's plan of the job reads and writes.
    fn check_formats(d: &TaskDeploymentDescriptor, graph: &shardflow_control::JobGraph) -> Result<(), ErrorReply> {
        let edges = d.inputs.iter().map(|g| g.edge).zip(&d.input_formats);
        let edges = edges.chain(d.outputs.iter().map(|p| p.edge).zip(&d.output_formats));
        for (edge, format) in edges {
            let Some(mine) = graph.edges.get(edge as usize) else {
                return Err(refuse(
                    ErrorCode::InvalidJob,
                    format!("{} of {}: no edge {edge} in the job", d.attempt, d.job),
                ));
            };
            if mine.format != *format {
                return Err(refuse(
                    ErrorCode::InvalidJob,
                    format!(
                        "{} of {}: edge {edge} carries {format}, but this worker's build uses {}",
                        d.attempt, d.job, mine.format
                    ),
                ));
            }
        }
        if d.input_formats.len() != d.inputs.len() || d.output_formats.len() != d.outputs.len() {
            return Err(refuse(
                ErrorCode::Malformed,
                format!("{} of {}: formats do not match the edges", d.attempt, d.job),
            ));
        }
        Ok(())
    }

    pub(super) fn deploy(&mut self, d: TaskDeploymentDescriptor) -> Result<(), ErrorReply> {
        Self::check_shape(&d)?;
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
        let (job, vertex) = self.live.resolve(&d.chain[0]).map_err(|e| refuse(ErrorCode::InvalidJob, e.to_string()))?;
        Self::check_formats(&d, &job.graph)?;
        let shard = d.slot.shard.0 as usize;
        let cfg = &self.config;
        let credits = cfg.exclusive_credits.saturating_add(cfg.floating_credits);
        let segments: u64 =
            d.outputs.iter().map(|p| ResultPartition::reserved_segments(p.consumers.len(), credits, OVERDRAFT)).sum();
        let bytes = segments.saturating_mul(cfg.segment_bytes as u64);
        let network = self.shards[shard]
            .network
            .reserve(bytes)
            .map_err(|e| refuse(ErrorCode::Internal, format!("network memory of shard {shard}: {e}")))?;
        let epoch = d.attempt.attempt;
        let subtask = d.attempt.execution_vertex.subtask;
        let here = self.jobs.entry(d.job).or_default();
        let inputs = d
            .inputs
            .iter()
            .map(|g| {
                let channels = g
                    .producers
                    .iter()
                    .map(|p| here.claim((epoch, g.edge, p.peer_subtask, p.subpartition), cfg))
                    .collect();
                (g.edge as usize, channels)
            })
            .collect();
        let outputs = d
            .outputs
            .iter()
            .map(|p| {
                let senders =
                    p.consumers.iter().map(|c| here.claim((epoch, p.edge, subtask, c.subpartition), cfg)).collect();
                (p.edge as usize, senders)
            })
            .collect();
        let job_start = *here.starts.entry(epoch).or_insert_with(Instant::now);
        let progress = self.board.progress(d.job);
        let counters = Arc::new(TaskCounters::default());
        let info = TaskInfo {
            vertex: d.vertex_name.clone(),
            subtask,
            parallelism: d.parallelism,
            max_parallelism: d.max_parallelism,
            job_start,
            core: self.shards[shard].core,
            managed_memory: slot.managed.clone(),
        };
        let deployment = TaskDeployment {
            job: d.job,
            attempt: d.attempt,
            info,
            plan: job.plan.clone(),
            vertex,
            inputs,
            exclusive_credits: cfg.exclusive_credits,
            floating_credits: cfg.floating_credits,
            outputs,
            flush_timeout: cfg.flush_timeout,
            network: self.shards[shard].network.clone(),
            idle: cfg.idle,
            min_park: cfg.min_park,
            progress,
            counters: counters.clone(),
        };
        self.tasks.insert(
            (d.job, d.attempt),
            TaskEntry {
                slot: d.slot,
                job_master: d.job_master,
                vertex: d.vertex_name,
                state: ExecutionState::Deploying,
                network,
                counters,
            },
        );
        self.batch.entry(shard).or_default().push(deployment);
        Ok(())
    }
}
