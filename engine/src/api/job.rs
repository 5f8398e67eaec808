//! [`Job`]: a built dataflow, ready to submit — its graph, its typed plan,
//! its execution plan and the placement its core hints ask for.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardflow_control::{JobGraph, PlacementStrategy};

use super::ExecutionPlan;
use crate::runtime::JobPlan;

/// A job ready to submit: its graph (what the coordinator validates and places)
/// and its typed plan (what each subtask builds its operators from). Made by
/// [`crate::Dataflow::build`] or a [`crate::JobCatalog`] entry.
#[derive(Debug, Clone)]
pub struct Job {
    pub(crate) graph: JobGraph,
    pub(crate) plan: Arc<JobPlan>,
    /// Vertex name → cores, from the dataflow's placement hints.
    pub(crate) hints: BTreeMap<String, Vec<usize>>,
    pub(super) execution: Arc<ExecutionPlan>,
}

impl Job {
    /// What the job will run: its vertices, the operators chained into each,
    /// and the edges between them (print it to see the chains).
    ///
    /// ```
    /// use shardflow_engine::{Dataflow, Emitter};
    ///
    /// let df = Dataflow::new("words").parallelism(2);
    /// df.from_iter("lines", ["a rose is a rose".to_string()])
    ///     .flat_map(|line: &str, out: &mut Emitter<'_, String>| line.split(' ').for_each(|w| out.emit_ref(w)))
    ///     .name("split")
    ///     .key_by_ref::<String, _>(|w: &str| w)
    ///     .count_final()
    ///     .collect();
    /// let job = df.build()?;
    /// assert_eq!(
    ///     job.execution_plan().to_string(),
    ///     "job words: 2 vertices, max parallelism 128
    ///   vertex 0 lines: parallelism 2, group default
    ///     lines [source] -> split [flat_map]
    ///   vertex 1 count-2: parallelism 2, group default
    ///     count-2 (keyed state) -> collect-3
    ///   edge lines (split) -> count-2: Hash, alloc::string::String (rkyv, archived root of 8 bytes)
    /// "
    /// );
    /// # Ok::<(), shardflow_engine::EngineError>(())
    /// ```
    pub fn execution_plan(&self) -> &ExecutionPlan {
        &self.execution
    }

    /// The dataflow's core hints ([`crate::Stream::cores`]): vertex name →
    /// cores.
    pub fn core_hints(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.hints
    }

    /// The placement the dataflow's core hints ([`crate::Stream::cores`])
    /// ask for, on shards given as `(core, slots)`, one pair per shard (two
    /// workers on one machine give a core twice): an explicit map, each hinted
    /// vertex on its cores, each subtask of another vertex on the core that
    /// still has a slot for it (one its slot-sharing group already holds
    /// there, or a free one) and, among those, holds the fewest subtasks of
    /// its vertex, then of the job (every core once before any twice; ties by
    /// core). `None` if the job has no hints or there are no shards.
    /// [`crate::Engine::submit`] places by it; so does `shardflow submit`
    /// without `--placement`, over the shards of the cluster's workers.
    pub fn hinted_placement(&self, shards: &[(usize, u32)]) -> Option<PlacementStrategy> {
        if self.hints.is_empty() || shards.is_empty() {
            return None;
        }
        let mut cores: BTreeMap<usize, CoreUse> = BTreeMap::new();
        for &(core, slots) in shards {
            let c = cores.entry(core).or_default();
            (c.shard, c.slots) = (true, c.slots + slots);
        }
        let vertices = &self.graph.vertices;
        let mut map = BTreeMap::new();
        for (v, vx) in vertices.iter().enumerate() {
            if let Some(hinted) = self.hints.get(&vx.name) {
                for i in 0..vx.parallelism as usize {
                    cores.entry(hinted[i % hinted.len()]).or_default().add(v, &vx.slot_sharing_group);
                }
                map.insert(vx.name.clone(), hinted.clone());
            }
        }
        for (v, vx) in vertices.iter().enumerate().filter(|(_, vx)| !self.hints.contains_key(&vx.name)) {
            let group = vx.slot_sharing_group.as_str();
            let mut chosen = Vec::with_capacity(vx.parallelism as usize);
            for _ in 0..vx.parallelism {
                let (&core, c) = cores
                    .iter_mut()
                    .filter(|(_, c)| c.shard)
                    .min_by_key(|(&core, c)| (!c.has_room(v, group), c.of(v, group), c.subtasks(), core))?;
                c.add(v, group);
                chosen.push(core);
            }
            // Subtask i runs on the i-th core, the list repeating: the shortest
            // list that says the same.
            let period = (1..=chosen.len())
                .find(|&k| chosen.len() % k == 0 && chosen.iter().enumerate().all(|(i, c)| *c == chosen[i % k]))
                .unwrap_or(chosen.len());
            chosen.truncate(period);
            map.insert(vx.name.clone(), chosen);
        }
        Some(PlacementStrategy::Explicit(map))
    }

    /// The job graph.
    pub fn graph(&self) -> &JobGraph {
        &self.graph
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.graph.name
    }
}

/// What one core holds of a job being placed by its hints.
#[derive(Default)]
struct CoreUse {
    /// Whether a shard runs on it (a hinted core may be one none does, and
    /// the placement then refuses the job, naming it).
    shard: bool,
    /// Its shards' slots (none left: the placement refuses the job, saying
    /// how many slots it needs).
    slots: u32,
    /// Per slot-sharing group, the subtasks of each of its vertices here: the
    /// group needs as many slots as its largest count (a slot holds one
    /// subtask of each vertex of its group).
    groups: BTreeMap<String, BTreeMap<usize, u32>>,
}

impl CoreUse {
    /// Subtasks of vertex `v`, of slot-sharing group `group`, on this core.
    fn of(&self, v: usize, group: &str) -> u32 {
        self.groups.get(group).and_then(|g| g.get(&v)).copied().unwrap_or(0)
    }

    /// The job's subtasks on this core.
    fn subtasks(&self) -> u32 {
        self.groups.values().flat_map(|g| g.values()).sum()
    }

    /// Slots group `group` holds here.
    fn held(&self, group: &str) -> u32 {
        self.groups.get(group).and_then(|g| g.values().copied().max()).unwrap_or(0)
    }

    /// Whether one more subtask of `v` (of `group`) fits: in a slot its group
    /// holds here without a subtask of `v`, or in a free one.
    fn has_room(&self, v: usize, group: &str) -> bool {
        let used: u32 = self.groups.keys().map(|g| self.held(g)).sum();
        self.of(v, group) < self.held(group) || used < self.slots
    }

    fn add(&mut self, v: usize, group: &str) {
        *self.groups.entry(group.to_string()).or_default().entry(v).or_default() += 1;
    }
}
