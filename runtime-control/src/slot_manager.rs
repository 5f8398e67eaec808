//! The ResourceManager's SlotManager, sans I/O: registered workers and their slots,
//! which allocation holds which slot, placement of a job's subtasks on free slots,
//! and the cluster's totals.

use std::collections::BTreeMap;

use crate::error::ControlError;
use crate::execution_graph::edge_channels;
use crate::ids::{AllocationId, JobId, ShardId, SlotId, VertexId, WorkerId};
use crate::job_graph::JobGraph;
use crate::placement::{place, required_slots, PlacementStrategy, SlotAssignment, SlotOffer};
use crate::protocol::{SlotAllocation, SlotReport, SlotStatus, WorkerResources};

/// A registered worker.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    /// The resource id it registered with.
    pub resource_id: String,
    /// Where it connected from.
    pub address: String,
    /// Its resources.
    pub resources: WorkerResources,
    /// Its slots and their allocations.
    pub slots: BTreeMap<SlotId, SlotStatus>,
}

impl WorkerEntry {
    /// Slots without an allocation.
    pub fn free_slots(&self) -> usize {
        self.slots.values().filter(|s| s.allocated.is_none()).count()
    }
}

/// Workers, slots and allocations.
#[derive(Debug, Default)]
pub struct SlotManager {
    workers: BTreeMap<WorkerId, WorkerEntry>,
    next_worker: u32,
    next_allocation: u64,
}

impl SlotManager {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a worker; its slots are `resources.cores × slots_per_shard`, all
    /// free. A resource id that is already registered is refused.
    pub fn register(
        &mut self,
        resource_id: &str,
        address: &str,
        resources: WorkerResources,
    ) -> Result<WorkerId, ControlError> {
        if self.workers.values().any(|w| w.resource_id == resource_id) {
            return Err(ControlError::DuplicateRegistration { resource_id: resource_id.to_string() });
        }
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let mut slots = BTreeMap::new();
        for (shard, &core) in resources.cores.iter().enumerate() {
            for index in 0..resources.slots_per_shard {
                let slot = SlotId { worker: id, shard: ShardId(shard as u32), index };
                slots.insert(slot, SlotStatus { slot, core, allocated: None });
            }
        }
        let entry =
            WorkerEntry { resource_id: resource_id.to_string(), address: address.to_string(), resources, slots };
        self.workers.insert(id, entry);
        Ok(id)
    }

    /// Removes a worker (lost or gone); returns it with its allocations.
    pub fn remove(&mut self, worker: WorkerId) -> Option<WorkerEntry> {
        self.workers.remove(&worker)
    }

    /// A registered worker.
    pub fn worker(&self, worker: WorkerId) -> Option<&WorkerEntry> {
        self.workers.get(&worker)
    }

    /// Every registered worker.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, &WorkerEntry)> {
        self.workers.iter().map(|(&k, v)| (k, v))
    }

    /// Every free slot, as a placement offer.
    pub fn free_offers(&self) -> Vec<SlotOffer> {
        self.workers
            .values()
            .flat_map(|w| w.slots.values())
            .filter(|s| s.allocated.is_none())
            .map(|s| SlotOffer { slot: s.slot, core: s.core as usize })
            .collect()
    }

    /// Slots in all and free.
    pub fn totals(&self) -> (usize, usize) {
        let total = self.workers.values().map(|w| w.slots.len()).sum();
        let free = self.workers.values().map(WorkerEntry::free_slots).sum();
        (total, free)
    }

    /// Places `graph` on free slots with `strategy`, keeping every data channel
    /// inside one worker: if the placement over all workers would need a channel
    /// between workers, it tries each worker alone.
    pub fn place(
        &self,
        graph: &JobGraph,
        order: &[VertexId],
        strategy: &PlacementStrategy,
    ) -> Result<SlotAssignment, ControlError> {
        if let PlacementStrategy::Explicit(map) = strategy {
            self.check_cores(map)?;
        }
        let offers = self.free_offers();
        let first = place(graph, order, &offers, strategy)?;
        let Some(edge) = crossing_edge(graph, &first) else { return Ok(first) };
        for w in self.workers.keys() {
            let mine: Vec<SlotOffer> = offers.iter().filter(|o| o.slot.worker == *w).copied().collect();
            if let Ok(a) = place(graph, order, &mine, strategy) {
                return Ok(a);
            }
        }
        Err(ControlError::RemoteChannels { edge, required: required_slots(graph, strategy) })
    }

    /// Whether every core of an explicit map runs a shard, and has a free slot.
    fn check_cores(&self, map: &BTreeMap<String, Vec<usize>>) -> Result<(), ControlError> {
        let slots = || self.workers.values().flat_map(|w| w.slots.values());
        let mut cores: Vec<usize> = slots().map(|s| s.core as usize).collect();
        cores.sort_unstable();
        cores.dedup();
        for (vertex, wanted) in map {
            for &core in wanted {
                if !cores.contains(&core) {
                    return Err(ControlError::UnknownCore { vertex: vertex.clone(), core, available: cores.clone() });
                }
                if !slots().any(|s| s.core as usize == core && s.allocated.is_none()) {
                    return Err(ControlError::CoreFull { vertex: vertex.clone(), core });
                }
            }
        }
        Ok(())
    }

    /// Allocates `slots` to `job`; returns each slot's new allocation. Slots already
    /// taken or unknown are skipped (the caller placed on free slots).
    pub fn allocate(&mut self, job: JobId, slots: &[SlotId]) -> Vec<(SlotId, AllocationId)> {
        let mut out = Vec::new();
        for slot in slots {
            let Some(s) = self.workers.get_mut(&slot.worker).and_then(|w| w.slots.get_mut(slot)) else { continue };
            if s.allocated.is_some() {
                continue;
            }
            self.next_allocation += 1;
            let allocation = AllocationId(self.next_allocation);
            s.allocated = Some(SlotAllocation { allocation, job });
            out.push((*slot, allocation));
        }
        out
    }

    /// Frees every slot of `job`; returns what was freed.
    pub fn free_job(&mut self, job: JobId) -> Vec<(SlotId, AllocationId)> {
        let mut out = Vec::new();
        for w in self.workers.values_mut() {
            for s in w.slots.values_mut() {
                if let Some(a) = s.allocated.filter(|a| a.job == job) {
                    s.allocated = None;
                    out.push((s.slot, a.allocation));
                }
            }
        }
        out
    }

    /// The worker's slots as the ResourceManager sees them.
    pub fn report(&self, worker: WorkerId) -> Option<SlotReport> {
        self.workers.get(&worker).map(|w| SlotReport { slots: w.slots.values().cloned().collect() })
    }
}

/// The first edge with a channel whose ends are on different workers.
fn crossing_edge(graph: &JobGraph, a: &SlotAssignment) -> Option<String> {
    for e in 0..graph.edges.len() {
        let edge = &graph.edges[e];
        for ch in edge_channels(graph, e) {
            let at = |v: VertexId, i: u32| {
                a.placements.iter().find(|p| p.subtask.vertex == v && p.subtask.subtask == i).map(|p| p.slot.worker)
            };
            if at(edge.source, ch.producer) != at(edge.target, ch.consumer) {
                let name = |v: VertexId| graph.vertices[v.0 as usize].name.clone();
                return Some(format!("{} -> {}", name(edge.source), name(edge.target)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_graph::{source_sink, PartitionerKind};

    fn resources(cores: Vec<u32>) -> WorkerResources {
        WorkerResources {
            cores,
            slots_per_shard: 2,
            network_memory_bytes: 1 << 20,
            managed_memory_per_slot_bytes: 1 << 20,
        }
    }

    #[test]
    fn registration_allocation_and_free() {
        let mut sm = SlotManager::new();
        let w0 = sm.register("a", "x", resources(vec![0, 1])).unwrap();
        let w1 = sm.register("b", "y", resources(vec![0])).unwrap();
        assert!(matches!(sm.register("a", "z", resources(vec![0])), Err(ControlError::DuplicateRegistration { .. })));
        assert_eq!(sm.totals(), (6, 6));
        let slots: Vec<SlotId> = sm.free_offers().iter().take(3).map(|o| o.slot).collect();
        let got = sm.allocate(JobId(1), &slots);
        assert_eq!(got.len(), 3);
        assert_eq!(sm.allocate(JobId(2), &slots), vec![], "taken slots are not allocated twice");
        assert_eq!(sm.totals(), (6, 3));
        assert_eq!(sm.free_job(JobId(1)).len(), 3);
        assert_eq!(sm.totals(), (6, 6));
        assert!(sm.remove(w0).is_some());
        assert_eq!(sm.totals(), (2, 2));
        assert_eq!(sm.worker(w1).unwrap().resource_id, "b");
    }

    #[test]
    fn an_explicit_core_whose_slots_are_all_busy_is_full_not_unknown() {
        let mut sm = SlotManager::new();
        sm.register("a", "x", resources(vec![0, 1])).unwrap();
        let core1: Vec<SlotId> = sm.free_offers().iter().filter(|o| o.core == 1).map(|o| o.slot).collect();
        assert_eq!(sm.allocate(JobId(1), &core1).len(), 2);
        let (g, order) = source_sink(1, PartitionerKind::Forward);
        let busy: PlacementStrategy = "source=1;sink=1".parse().unwrap();
        assert_eq!(
            sm.place(&g, &order, &busy),
            Err(ControlError::CoreFull { vertex: "sink".into(), core: 1 }),
            "core 1 runs a shard; its slots are taken"
        );
        let absent: PlacementStrategy = "source=5;sink=0".parse().unwrap();
        assert_eq!(
            sm.place(&g, &order, &absent),
            Err(ControlError::UnknownCore { vertex: "source".into(), core: 5, available: vec![0, 1] })
        );
        let free: PlacementStrategy = "source=0;sink=0".parse().unwrap();
        assert!(sm.place(&g, &order, &free).is_ok());
    }

    #[test]
    fn forward_jobs_spread_over_workers_and_all_to_all_jobs_stay_on_one() {
        let mut sm = SlotManager::new();
        sm.register("a", "x", resources(vec![0])).unwrap();
        sm.register("b", "y", resources(vec![1])).unwrap();
        let (g, order) = source_sink(2, PartitionerKind::Forward);
        let a = sm.place(&g, &order, &PlacementStrategy::Colocate).unwrap();
        let workers: std::collections::BTreeSet<u32> = a.placements.iter().map(|p| p.slot.worker.0).collect();
        assert_eq!(workers.len(), 2, "colocated forward pipelines use both workers:\n{a}");
        assert!(crossing_edge(&g, &a).is_none());

        let (g, order) = source_sink(2, PartitionerKind::Hash);
        let a = sm.place(&g, &order, &PlacementStrategy::Colocate).unwrap();
        let workers: std::collections::BTreeSet<u32> = a.placements.iter().map(|p| p.slot.worker.0).collect();
        assert_eq!(workers.len(), 1, "{a}");

        let (g, order) = source_sink(3, PartitionerKind::Hash);
        let e = sm.place(&g, &order, &PlacementStrategy::Colocate).unwrap_err();
        assert!(matches!(e, ControlError::RemoteChannels { required: 3, .. }), "{e}");
    }
}
