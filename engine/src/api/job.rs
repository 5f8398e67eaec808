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
    /// ask for, on a cluster whose shards run on `cores`: an explicit map,
    /// each hinted vertex on its cores, each other vertex spread over the
    /// least loaded of `cores` (a core holding fewer of the job's subtasks
    /// first; every core once before any twice). `None` if the job has no
    /// hints. [`crate::Engine::submit`] places by it; so does `shardflow
    /// submit` without `--placement`, over the cores of the cluster's workers.
    pub fn hinted_placement(&self, cores: &[usize]) -> Option<PlacementStrategy> {
        if self.hints.is_empty() || cores.is_empty() {
            return None;
        }
        let mut cores = cores.to_vec();
        cores.sort_unstable();
        cores.dedup();
        let mut load: BTreeMap<usize, u32> = cores.iter().map(|&c| (c, 0)).collect();
        for v in &self.graph.vertices {
            if let Some(hinted) = self.hints.get(&v.name) {
                for i in 0..v.parallelism as usize {
                    *load.entry(hinted[i % hinted.len()]).or_default() += 1;
                }
            }
        }
        let mut map = BTreeMap::new();
        for v in &self.graph.vertices {
            let chosen = match self.hints.get(&v.name) {
                Some(hinted) => hinted.clone(),
                None => {
                    // Subtask i runs on the i-th core listed: list the least
                    // loaded first, at most one per subtask.
                    let mut order = cores.clone();
                    order.sort_by_key(|c| load[c]);
                    order.truncate(v.parallelism as usize);
                    for i in 0..v.parallelism as usize {
                        if let Some(n) = load.get_mut(&order[i % order.len()]) {
                            *n += 1;
                        }
                    }
                    order
                }
            };
            map.insert(v.name.clone(), chosen);
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
