//! Placement: which slot, so which core, each subtask gets. A first-class, readable
//! result ([`SlotAssignment`]), decided by a typed strategy.
//!
//! A slot hosts at most one subtask of each vertex, and only vertices of one
//! slot-sharing group (Flink's slot sharing). Strategies:
//! - `spread`: each subtask goes to the least-loaded shard (fewest subtasks so far),
//!   reusing a shared slot there before opening a new one;
//! - `pack`: the first slot that fits, in (worker, shard, index) order: fill a shard
//!   before the next;
//! - `colocate`: subtask i of every vertex in one slot, slots opened spread-wise;
//! - explicit: vertex name → cores; subtask i runs on `cores[i % cores.len()]`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::error::ControlError;
use crate::ids::{ExecutionVertexId, ShardId, SlotId, VertexId};
use crate::job_graph::JobGraph;

/// A free slot and the core its shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotOffer {
    /// The slot.
    pub slot: SlotId,
    /// Core of the slot's shard.
    pub core: usize,
}

/// How subtasks are spread over slots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlacementStrategy {
    /// Least-loaded shard first.
    #[default]
    Spread,
    /// Fill a shard before the next.
    Pack,
    /// Subtask i of every vertex in one slot.
    Colocate,
    /// Vertex name → cores.
    Explicit(BTreeMap<String, Vec<usize>>),
}

impl FromStr for PlacementStrategy {
    type Err = ControlError;

    /// `spread`, `pack`, `colocate`, or an explicit map `vertex=core,core;vertex=core`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "spread" => return Ok(Self::Spread),
            "pack" => return Ok(Self::Pack),
            "colocate" => return Ok(Self::Colocate),
            _ => {}
        }
        let bad = |reason: String| ControlError::InvalidPlacementMap { reason };
        let mut map = BTreeMap::new();
        for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (vertex, cores) = entry
                .split_once('=')
                .ok_or_else(|| bad(format!("'{entry}' is neither spread, pack, colocate nor vertex=core[,core...]")))?;
            let cores = cores
                .split(',')
                .map(|c| c.trim().parse::<usize>().map_err(|_| bad(format!("'{c}' is not a core number in '{entry}'"))))
                .collect::<Result<Vec<_>, _>>()?;
            let vertex = vertex.trim();
            if vertex.is_empty() {
                return Err(bad(format!("'{entry}' names no vertex before '='")));
            }
            if map.insert(vertex.to_string(), cores).is_some() {
                return Err(bad(format!("vertex '{vertex}' is listed twice: give its cores once")));
            }
        }
        if map.is_empty() {
            return Err(bad("empty placement map".into()));
        }
        Ok(Self::Explicit(map))
    }
}

impl fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spread => f.write_str("spread"),
            Self::Pack => f.write_str("pack"),
            Self::Colocate => f.write_str("colocate"),
            Self::Explicit(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(v, cs)| {
                        let cs: Vec<String> = cs.iter().map(ToString::to_string).collect();
                        format!("{v}={}", cs.join(","))
                    })
                    .collect();
                f.write_str(&parts.join(";"))
            }
        }
    }
}

/// Where one subtask runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskPlacement {
    /// The subtask.
    pub subtask: ExecutionVertexId,
    /// Its vertex's name.
    pub vertex_name: String,
    /// Its slot.
    pub slot: SlotId,
    /// The core its shard is pinned to.
    pub core: usize,
}

/// The placement of every subtask of a job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotAssignment {
    /// One entry per subtask, in topological vertex order.
    pub placements: Vec<SubtaskPlacement>,
}

impl SlotAssignment {
    /// Where `subtask` runs.
    pub fn of(&self, subtask: ExecutionVertexId) -> Option<&SubtaskPlacement> {
        self.placements.iter().find(|p| p.subtask == subtask)
    }
    /// Shard of `subtask`.
    pub fn shard_of(&self, subtask: ExecutionVertexId) -> Option<ShardId> {
        self.of(subtask).map(|p| p.slot.shard)
    }
    /// Distinct slots in use.
    pub fn slots_used(&self) -> usize {
        self.placements.iter().map(|p| p.slot).collect::<HashSet<_>>().len()
    }
}

impl fmt::Display for SlotAssignment {
    /// A table: subtask, slot, core.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.placements.iter().map(|p| p.vertex_name.len() + 8).max().unwrap_or(7).max(7);
        writeln!(f, "{:<w$}  {:<26}  core", "subtask", "slot")?;
        for p in &self.placements {
            let name = format!("{}[{}]", p.vertex_name, p.subtask.subtask);
            writeln!(f, "{name:<w$}  {:<26}  {}", p.slot.to_string(), p.core)?;
        }
        Ok(())
    }
}

struct SlotState {
    offer: SlotOffer,
    group: Option<String>,
    vertices: HashSet<VertexId>,
}

/// Places every subtask of `graph` (vertices in topological `order`) on `slots`.
pub fn place(
    graph: &JobGraph,
    order: &[VertexId],
    slots: &[SlotOffer],
    strategy: &PlacementStrategy,
) -> Result<SlotAssignment, ControlError> {
    let mut states: Vec<SlotState> =
        slots.iter().map(|&offer| SlotState { offer, group: None, vertices: HashSet::new() }).collect();
    states.sort_by_key(|s| s.offer.slot);
    let required = required_slots(graph, strategy);
    let not_enough = || ControlError::NotEnoughSlots { required, available: slots.len() };
    if let PlacementStrategy::Explicit(map) = strategy {
        check_explicit(graph, map, slots)?;
    }
    let mut shard_load: HashMap<(u32, u32), usize> = HashMap::new();
    let mut colocated: HashMap<u32, usize> = HashMap::new();
    let mut out = SlotAssignment::default();
    for &v in order {
        let vx = &graph.vertices[v.0 as usize];
        for i in 0..vx.parallelism {
            let fits = |s: &SlotState| {
                !s.vertices.contains(&v) && s.group.as_deref().is_none_or(|g| g == vx.slot_sharing_group)
            };
            // Least-loaded worker first, then least-loaded shard on it.
            let load = |s: &SlotState, shard_load: &HashMap<(u32, u32), usize>| {
                let w = s.offer.slot.worker.0;
                let worker: usize = shard_load.iter().filter(|((sw, _), _)| *sw == w).map(|(_, n)| n).sum();
                (worker, shard_load.get(&(w, s.offer.slot.shard.0)).copied().unwrap_or(0))
            };
            // Least-loaded shard; on that shard a slot already in use first.
            let spread_pick =
                |states: &[SlotState], shard_load: &HashMap<(u32, u32), usize>, only_core: Option<usize>| {
                    states
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| fits(s) && only_core.is_none_or(|c| s.offer.core == c))
                        .min_by_key(|(_, s)| (load(s, shard_load), s.group.is_none(), s.offer.slot))
                        .map(|(k, _)| k)
                };
            let chosen = match strategy {
                PlacementStrategy::Spread => spread_pick(&states, &shard_load, None),
                PlacementStrategy::Pack => states
                    .iter()
                    .position(|s| fits(s) && s.group.is_some())
                    .filter(|&k| {
                        // only reuse a slot on the first shard that still has room
                        let first_free = states.iter().position(fits);
                        first_free.is_none_or(|f| states[f].offer.slot.shard == states[k].offer.slot.shard)
                    })
                    .or_else(|| states.iter().position(fits)),
                PlacementStrategy::Colocate => match colocated.get(&i) {
                    Some(&k) if !states[k].vertices.contains(&v) => Some(k),
                    _ => states
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.group.is_none())
                        .min_by_key(|(_, s)| (load(s, &shard_load), s.offer.slot))
                        .map(|(k, _)| k),
                },
                PlacementStrategy::Explicit(map) => {
                    let cores = &map[&vx.name];
                    let core = cores[i as usize % cores.len()];
                    match spread_pick(&states, &shard_load, Some(core)) {
                        Some(k) => Some(k),
                        None => return Err(ControlError::CoreFull { vertex: vx.name.clone(), core }),
                    }
                }
            };
            let k = chosen.ok_or_else(not_enough)?;
            let s = &mut states[k];
            if matches!(strategy, PlacementStrategy::Colocate) {
                colocated.insert(i, k);
                s.group.get_or_insert_with(|| "colocate".into());
            } else {
                s.group.get_or_insert_with(|| vx.slot_sharing_group.clone());
            }
            s.vertices.insert(v);
            *shard_load.entry((s.offer.slot.worker.0, s.offer.slot.shard.0)).or_default() += 1;
            out.placements.push(SubtaskPlacement {
                subtask: ExecutionVertexId { vertex: v, subtask: i },
                vertex_name: vx.name.clone(),
                slot: s.offer.slot,
                core: s.offer.core,
            });
        }
    }
    Ok(out)
}

/// Slots the job needs: per slot-sharing group its largest parallelism (colocate:
/// the largest parallelism overall).
pub(crate) fn required_slots(graph: &JobGraph, strategy: &PlacementStrategy) -> usize {
    if matches!(strategy, PlacementStrategy::Colocate) {
        return graph.vertices.iter().map(|v| v.parallelism as usize).max().unwrap_or(0);
    }
    let mut per_group: HashMap<&str, usize> = HashMap::new();
    for v in &graph.vertices {
        let e = per_group.entry(v.slot_sharing_group.as_str()).or_default();
        *e = (*e).max(v.parallelism as usize);
    }
    per_group.values().sum()
}

fn check_explicit(
    graph: &JobGraph,
    map: &BTreeMap<String, Vec<usize>>,
    slots: &[SlotOffer],
) -> Result<(), ControlError> {
    let mut cores: Vec<usize> = slots.iter().map(|s| s.core).collect();
    cores.sort_unstable();
    cores.dedup();
    for name in map.keys() {
        if !graph.vertices.iter().any(|v| &v.name == name) {
            return Err(ControlError::InvalidPlacementMap { reason: format!("the job has no vertex named '{name}'") });
        }
    }
    for v in &graph.vertices {
        let Some(vc) = map.get(&v.name) else {
            return Err(ControlError::InvalidPlacementMap {
                reason: format!("vertex '{}' is not in the map (every vertex needs cores)", v.name),
            });
        };
        if vc.is_empty() {
            return Err(ControlError::InvalidPlacementMap {
                reason: format!("vertex '{}' has an empty core list", v.name),
            });
        }
        if vc.len() > v.parallelism as usize {
            return Err(ControlError::InvalidPlacementMap {
                reason: format!(
                    "vertex '{}' has {} subtasks but {} cores are listed ({vc:?}): subtask i runs on the i-th core, \
                     so the extra cores would be ignored",
                    v.name,
                    v.parallelism,
                    vc.len()
                ),
            });
        }
        if let Some(&core) = vc.iter().find(|c| !cores.contains(c)) {
            return Err(ControlError::UnknownCore { vertex: v.name.clone(), core, available: cores.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WorkerId;
    use crate::job_graph::{source_sink, PartitionerKind};

    fn slots(shards: u32, per_shard: u32) -> Vec<SlotOffer> {
        (0..shards)
            .flat_map(|s| {
                (0..per_shard).map(move |i| SlotOffer {
                    slot: SlotId { worker: WorkerId(0), shard: ShardId(s), index: i },
                    core: s as usize,
                })
            })
            .collect()
    }

    fn shards(a: &SlotAssignment) -> Vec<(String, u32, u32)> {
        a.placements.iter().map(|p| (p.vertex_name.clone(), p.subtask.subtask, p.slot.shard.0)).collect()
    }

    #[test]
    fn spread_balances_shards_and_shares_slots() {
        let (g, order) = source_sink(2, PartitionerKind::Hash);
        let a = place(&g, &order, &slots(2, 2), &PlacementStrategy::Spread).unwrap();
        assert_eq!(
            shards(&a),
            vec![("source".into(), 0, 0), ("source".into(), 1, 1), ("sink".into(), 0, 0), ("sink".into(), 1, 1)]
        );
        assert_eq!(a.slots_used(), 2);
    }

    #[test]
    fn pack_fills_one_shard_first() {
        let (g, order) = source_sink(2, PartitionerKind::Hash);
        let a = place(&g, &order, &slots(2, 2), &PlacementStrategy::Pack).unwrap();
        assert!(a.placements.iter().all(|p| p.slot.shard == ShardId(0)), "{a}");
    }

    #[test]
    fn colocate_puts_subtask_i_of_every_vertex_in_one_slot() {
        let (g, order) = source_sink(3, PartitionerKind::Hash);
        let a = place(&g, &order, &slots(2, 2), &PlacementStrategy::Colocate).unwrap();
        for i in 0..3 {
            let src = a.of(ExecutionVertexId { vertex: VertexId(0), subtask: i }).unwrap().slot;
            let snk = a.of(ExecutionVertexId { vertex: VertexId(1), subtask: i }).unwrap().slot;
            assert_eq!(src, snk);
        }
    }

    #[test]
    fn explicit_map_is_obeyed_and_checked() {
        let (g, order) = source_sink(2, PartitionerKind::Hash);
        let s: PlacementStrategy = "source=1;sink=0,1".parse().unwrap();
        let a = place(&g, &order, &slots(2, 2), &s).unwrap();
        assert_eq!(
            shards(&a),
            vec![("source".into(), 0, 1), ("source".into(), 1, 1), ("sink".into(), 0, 0), ("sink".into(), 1, 1)]
        );
        let s: PlacementStrategy = "source=7;sink=0".parse().unwrap();
        assert_eq!(
            place(&g, &order, &slots(2, 2), &s),
            Err(ControlError::UnknownCore { vertex: "source".into(), core: 7, available: vec![0, 1] })
        );
        let s: PlacementStrategy = "source=0".parse().unwrap();
        assert!(matches!(place(&g, &order, &slots(2, 2), &s), Err(ControlError::InvalidPlacementMap { .. })));
        let s: PlacementStrategy = "source=0,1,1;sink=0".parse().unwrap();
        match place(&g, &order, &slots(2, 2), &s) {
            Err(ControlError::InvalidPlacementMap { reason }) => {
                assert!(reason.contains("2 subtasks but 3 cores"), "{reason}")
            }
            other => panic!("extra cores are refused, not ignored: {other:?}"),
        }
        assert!("nonsense".parse::<PlacementStrategy>().is_err());
        // A vertex given twice is a typo, not "the last one wins".
        let e = "source=0;source=1,0;sink=0,1".parse::<PlacementStrategy>().unwrap_err().to_string();
        assert!(e.contains("vertex 'source' is listed twice"), "{e}");
        let e = " =0;sink=1".parse::<PlacementStrategy>().unwrap_err().to_string();
        assert!(e.contains("names no vertex"), "{e}");
    }

    #[test]
    fn too_few_slots_is_a_typed_error_with_numbers() {
        let (g, order) = source_sink(4, PartitionerKind::Hash);
        assert_eq!(
            place(&g, &order, &slots(1, 2), &PlacementStrategy::Spread),
            Err(ControlError::NotEnoughSlots { required: 4, available: 2 })
        );
    }
}
