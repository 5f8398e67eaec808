//! A job master's deployments: the assignment's slots allocated and requested,
//! and one `DeployTask` per subtask, carrying its vertex's information archived
//! once per vertex and the location of every channel's other end.

use std::collections::HashMap;
use std::time::Instant;

use super::{Gateways, JobMaster, Phase};
use crate::error::ControlError;
use crate::execution_graph::{edge_channels, ChannelSpec};
use crate::ids::{AllocationId, AttemptId, ExecutionVertexId, ShardId, SlotId, VertexId, WorkerId};
use crate::placement::SlotAssignment;
use crate::protocol::*;
use crate::state::ExecutionState;

impl JobMaster {
    /// Allocates the assignment's slots and sends slot requests and deployment
    /// descriptors.
    pub(in crate::coordinator) fn deploy(&mut self, gw: &mut Gateways<'_>, now: Instant, assignment: SlotAssignment) {
        if let Err(e) = self.try_deploy(gw, now, assignment) {
            self.abort(gw, &e);
        }
    }

    fn try_deploy(
        &mut self,
        gw: &mut Gateways<'_>,
        now: Instant,
        assignment: SlotAssignment,
    ) -> Result<(), ControlError> {
        let mut slots: Vec<SlotId> = assignment.placements.iter().map(|p| p.slot).collect();
        slots.sort();
        slots.dedup();
        let allocated = gw.slots.allocate(self.id, &slots);
        self.allocations = allocated.iter().copied().collect();
        let mut workers: Vec<String> =
            slots.iter().filter_map(|s| gw.slots.worker(s.worker)).map(|w| w.resource_id.clone()).collect();
        workers.sort();
        workers.dedup();
        self.workers = workers;
        self.assignment = assignment;
        self.set_phase(Phase::Running)?;
        self.deployed_at = now;
        for &(slot, allocation) in &allocated {
            let request =
                RequestSlot { resource_manager: gw.rm, slot, allocation, job: self.id, job_master: self.token };
            gw.send_to_worker(slot.worker, Message::RequestSlot(request));
        }
        let attempts: Vec<AttemptId> = self.eg.subtasks.iter().map(|s| s.attempt).collect();
        // Each vertex's information is archived once, and each edge's channels are
        // listed once; the descriptors carry the bytes and their own channels.
        let mut information: HashMap<VertexId, Vec<u8>> = HashMap::new();
        let channels: Vec<Vec<ChannelSpec>> =
            (0..self.graph.edges.len()).map(|e| edge_channels(&self.graph, e)).collect();
        for a in attempts {
            for to in [ExecutionState::Scheduled, ExecutionState::Deploying] {
                self.eg.on_state(a, to, None)?;
            }
            let place = self.assignment.of(a.execution_vertex).ok_or_else(|| {
                ControlError::Unsupported(format!("internal: {} has no place in the assignment", a.execution_vertex))
            })?;
            let vertex = a.execution_vertex.vertex;
            let info = match information.entry(vertex) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    self.task_information(vertex)
                        .archive()
                        .map_err(|err| ControlError::Unsupported(format!("internal: {err}")))?,
                ),
            };
            let deploy = self.deploy_task(&channels, a, info.clone());
            gw.send_to_worker(place.slot.worker, Message::DeployTask(deploy));
        }
        Ok(())
    }

    /// What every subtask of `vertex` shares.
    fn task_information(&self, vertex: VertexId) -> TaskInformation {
        let v = &self.graph.vertices[vertex.0 as usize];
        TaskInformation {
            job_name: self.graph.name.clone(),
            vertex_name: v.name.clone(),
            parallelism: v.parallelism,
            max_parallelism: self.graph.max_parallelism,
            chain: v.chain.clone(),
            input_formats: self.graph.inputs(vertex).map(|(_, e)| e.format.clone()).collect(),
            output_formats: self.graph.outputs(vertex).map(|(_, e)| e.format.clone()).collect(),
        }
    }

    /// The deployment of `attempt`, carrying its vertex's archived information.
    fn deploy_task(&self, channels: &[Vec<ChannelSpec>], attempt: AttemptId, task_information: Vec<u8>) -> DeployTask {
        let ev = attempt.execution_vertex;
        let g = &self.graph;
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
                    let peer = self.assignment.of(ExecutionVertexId { vertex: peer_vertex, subtask: peer_subtask });
                    ChannelLocation {
                        peer_subtask,
                        subpartition: c.subpartition,
                        worker: peer.map_or(WorkerId(u32::MAX), |p| p.slot.worker),
                    }
                })
                .collect()
        };
        let inputs = g
            .inputs(ev.vertex)
            .map(|(e, edge)| GateDeployment { edge: e as u32, producers: ends(e, edge.source, true) });
        let outputs = g.outputs(ev.vertex).map(|(e, edge)| PartitionDeployment {
            edge: e as u32,
            partitioner: edge.partitioner,
            consumers: ends(e, edge.target, false),
        });
        let slot = self
            .assignment
            .of(ev)
            .map_or(SlotId { worker: WorkerId(u32::MAX), shard: ShardId(0), index: 0 }, |p| p.slot);
        DeployTask {
            job: self.id,
            job_master: self.token,
            allocation: self.allocations.get(&slot).copied().unwrap_or(AllocationId(0)),
            slot,
            attempt,
            task_information,
            inputs: inputs.collect(),
            outputs: outputs.collect(),
        }
    }
}
