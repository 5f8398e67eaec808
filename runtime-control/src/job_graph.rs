//! The JobGraph: vertices (operator chains with parallelism and a slot-sharing
//! group) joined by edges (distribution pattern, partition type, partitioner).
//! Operators are named (a registered name plus config bytes), so the same graph runs
//! embedded or on a cluster.

use std::collections::{HashMap, HashSet};

use crate::error::ControlError;
use crate::ids::VertexId;

/// One operator of a chain: a registered name plus its serialized configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OperatorSpec {
    /// Name under which the operator factory is registered.
    pub name: String,
    /// Configuration bytes the factory understands.
    pub config: Vec<u8>,
}

impl OperatorSpec {
    /// An operator `name` with `config`.
    pub fn new(name: impl Into<String>, config: Vec<u8>) -> Self {
        OperatorSpec { name: name.into(), config }
    }
}

/// A vertex: a chain of operators run by each of `parallelism` subtasks.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobVertex {
    /// Unique name within the job.
    pub name: String,
    /// The chain, first operator first; records pass by direct calls.
    pub chain: Vec<OperatorSpec>,
    /// Number of subtasks.
    pub parallelism: u32,
    /// Vertices of one group may share slots.
    pub slot_sharing_group: String,
}

/// How producer subtasks connect to consumer subtasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum DistributionPattern {
    /// Subtask i → subtask i (equal parallelism).
    Pointwise,
    /// Every producer subtask → every consumer subtask.
    AllToAll,
}

/// When the consumer may read a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ResultPartitionType {
    /// While the producer runs (streaming).
    Pipelined,
    /// After the producer finished (batch).
    Blocking,
}

/// Which subpartition a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum PartitionerKind {
    /// Same subtask index (pointwise only).
    Forward,
    /// By the key group of the record's key (hash mod max parallelism), each
    /// consumer owning a contiguous range of key groups.
    Hash,
    /// Round robin.
    Rebalance,
    /// To every consumer.
    Broadcast,
    /// Chosen by a user function.
    Custom,
}

/// How a record type is encoded in buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum RecordEncoding {
    /// Fixed-size plain data, packed and read in place.
    Pod {
        /// Bytes per record.
        size: u32,
        /// Alignment.
        align: u32,
    },
    /// rkyv archives, framed per record and read with checked access.
    Rkyv {
        /// Bytes of the archived root.
        archived_size: u32,
        /// Alignment of each archive in the buffer.
        align: u32,
    },
}

/// The record type an edge carries: its name and encoding. Two processes that
/// disagree about an edge's format refuse the job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RecordFormat {
    /// The Rust type's name.
    pub type_name: String,
    /// Its encoding.
    pub encoding: RecordEncoding,
}

impl RecordFormat {
    /// A format for edges whose records are not described (tests, tools).
    pub fn untyped() -> Self {
        RecordFormat { type_name: String::new(), encoding: RecordEncoding::Pod { size: 0, align: 1 } }
    }
}

impl std::fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.encoding {
            RecordEncoding::Pod { size, .. } => write!(f, "{} (plain data, {size} bytes)", self.type_name),
            RecordEncoding::Rkyv { archived_size, .. } => {
                write!(f, "{} (rkyv, archived root of {archived_size} bytes)", self.type_name)
            }
        }
    }
}

/// An edge of the job graph.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobEdge {
    /// Producer vertex.
    pub source: VertexId,
    /// Consumer vertex.
    pub target: VertexId,
    /// Connection pattern.
    pub distribution: DistributionPattern,
    /// Pipelined or blocking.
    pub partition_type: ResultPartitionType,
    /// Record routing.
    pub partitioner: PartitionerKind,
    /// The records it carries.
    pub format: RecordFormat,
}

/// A job: named vertices and the edges between them.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobGraph {
    /// Job name, for people.
    pub name: String,
    /// Vertices; `VertexId(i)` is `vertices[i]`.
    pub vertices: Vec<JobVertex>,
    /// Edges.
    pub edges: Vec<JobEdge>,
    /// Key groups of the job's keyed state (Flink's maximum parallelism): no
    /// vertex may run more subtasks. Default 128.
    pub max_parallelism: u32,
}

/// The most key groups a job may have (Flink's bound too).
pub const MAX_KEY_GROUPS: u32 = 32_768;

/// The default number of key groups.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

impl Default for JobGraph {
    fn default() -> Self {
        JobGraph {
            name: String::new(),
            vertices: Vec::new(),
            edges: Vec::new(),
            max_parallelism: DEFAULT_MAX_PARALLELISM,
        }
    }
}

impl JobGraph {
    /// An empty graph called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        JobGraph { name: name.into(), ..Default::default() }
    }

    /// Adds a vertex and returns its id.
    pub fn add_vertex(&mut self, vertex: JobVertex) -> VertexId {
        self.vertices.push(vertex);
        VertexId(self.vertices.len() as u32 - 1)
    }

    /// Adds an edge of records of `format`; the distribution pattern follows from
    /// the partitioner.
    pub fn connect_with(
        &mut self,
        source: VertexId,
        target: VertexId,
        partitioner: PartitionerKind,
        format: RecordFormat,
    ) {
        let distribution = match partitioner {
            PartitionerKind::Forward => DistributionPattern::Pointwise,
            _ => DistributionPattern::AllToAll,
        };
        self.edges.push(JobEdge {
            source,
            target,
            distribution,
            partition_type: ResultPartitionType::Pipelined,
            partitioner,
            format,
        });
    }

    /// Adds an edge whose record format is not described.
    pub fn connect(&mut self, source: VertexId, target: VertexId, partitioner: PartitionerKind) {
        self.connect_with(source, target, partitioner, RecordFormat::untyped());
    }

    /// The vertex `id`, if it exists.
    pub fn vertex(&self, id: VertexId) -> Option<&JobVertex> {
        self.vertices.get(id.0 as usize)
    }

    /// Edges into `id`, in edge order.
    pub fn inputs(&self, id: VertexId) -> impl Iterator<Item = (usize, &JobEdge)> {
        self.edges.iter().enumerate().filter(move |(_, e)| e.target == id)
    }

    /// Edges out of `id`, in edge order.
    pub fn outputs(&self, id: VertexId) -> impl Iterator<Item = (usize, &JobEdge)> {
        self.edges.iter().enumerate().filter(move |(_, e)| e.source == id)
    }

    /// Checks the graph; `is_registered` says whether an operator name is known.
    /// Returns the vertices in topological order.
    pub fn validate(&self, is_registered: &dyn Fn(&str) -> bool) -> Result<Vec<VertexId>, ControlError> {
        if self.vertices.is_empty() {
            return Err(ControlError::EmptyGraph);
        }
        if !(1..=MAX_KEY_GROUPS).contains(&self.max_parallelism) {
            return Err(ControlError::InvalidMaxParallelism { max_parallelism: self.max_parallelism });
        }
        let mut names = HashSet::new();
        for v in &self.vertices {
            if !names.insert(v.name.as_str()) {
                return Err(ControlError::DuplicateVertexName { vertex: v.name.clone() });
            }
            if v.parallelism == 0 {
                return Err(ControlError::ZeroParallelism { vertex: v.name.clone() });
            }
            if v.parallelism > self.max_parallelism {
                return Err(ControlError::ParallelismAboveMax {
                    vertex: v.name.clone(),
                    parallelism: v.parallelism,
                    max_parallelism: self.max_parallelism,
                });
            }
            if v.chain.is_empty() {
                return Err(ControlError::EmptyChain { vertex: v.name.clone() });
            }
            if let Some(op) = v.chain.iter().find(|op| !is_registered(&op.name)) {
                return Err(ControlError::UnknownOperator { vertex: v.name.clone(), operator: op.name.clone() });
            }
        }
        let n = self.vertices.len() as u32;
        for (i, e) in self.edges.iter().enumerate() {
            for end in [e.source, e.target] {
                if end.0 >= n {
                    return Err(ControlError::EdgeToMissingVertex { edge: i, missing: end.0 });
                }
            }
            let (s, t) = (&self.vertices[e.source.0 as usize], &self.vertices[e.target.0 as usize]);
            let bad = |reason: &str| ControlError::InvalidEdge {
                source_vertex: s.name.clone(),
                target: t.name.clone(),
                reason: reason.into(),
            };
            match (e.distribution, e.partitioner) {
                (DistributionPattern::Pointwise, PartitionerKind::Forward) => {
                    if s.parallelism != t.parallelism {
                        return Err(ControlError::PointwiseParallelismMismatch {
                            source_vertex: s.name.clone(),
                            target: t.name.clone(),
                            source_parallelism: s.parallelism,
                            target_parallelism: t.parallelism,
                        });
                    }
                }
                (DistributionPattern::Pointwise, _) => {
                    return Err(bad("a pointwise edge must use the forward partitioner"))
                }
                (DistributionPattern::AllToAll, PartitionerKind::Forward) => {
                    return Err(bad("the forward partitioner needs a pointwise edge"))
                }
                (DistributionPattern::AllToAll, _) => {}
            }
        }
        self.topological_order()
    }

    /// Kahn's algorithm; a leftover vertex means a cycle.
    fn topological_order(&self) -> Result<Vec<VertexId>, ControlError> {
        let n = self.vertices.len();
        let mut indegree = vec![0usize; n];
        let mut out: HashMap<usize, Vec<usize>> = HashMap::new();
        for e in &self.edges {
            indegree[e.target.0 as usize] += 1;
            out.entry(e.source.0 as usize).or_default().push(e.target.0 as usize);
        }
        let mut ready: Vec<usize> = (0..n).filter(|&v| indegree[v] == 0).rev().collect();
        let mut order = Vec::with_capacity(n);
        while let Some(v) = ready.pop() {
            order.push(VertexId(v as u32));
            for &t in out.get(&v).map(Vec::as_slice).unwrap_or(&[]) {
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(t);
                }
            }
        }
        if order.len() < n {
            let vertices = (0..n).filter(|&v| indegree[v] > 0).map(|v| self.vertices[v].name.clone()).collect();
            return Err(ControlError::Cycle { vertices });
        }
        Ok(order)
    }
}

/// A `source` → `sink` graph of parallelism `p` (operator `x` in each), and its
/// topological order: the shape the placement tests place.
#[cfg(test)]
pub(crate) fn source_sink(p: u32, partitioner: PartitionerKind) -> (JobGraph, Vec<VertexId>) {
    let mut g = JobGraph::new("j");
    let v = |name: &str| JobVertex {
        name: name.into(),
        chain: vec![OperatorSpec::new("x", vec![])],
        parallelism: p,
        slot_sharing_group: "default".into(),
    };
    let a = g.add_vertex(v("source"));
    let b = g.add_vertex(v("sink"));
    g.connect(a, b, partitioner);
    let order = g.validate(&|_| true).expect("a valid graph");
    (g, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex(name: &str, p: u32) -> JobVertex {
        JobVertex {
            name: name.into(),
            chain: vec![OperatorSpec::new("map", vec![])],
            parallelism: p,
            slot_sharing_group: "default".into(),
        }
    }

    fn known(_: &str) -> bool {
        true
    }

    #[test]
    fn orders_a_diamond() {
        let mut g = JobGraph::new("j");
        let a = g.add_vertex(vertex("a", 2));
        let b = g.add_vertex(vertex("b", 2));
        let c = g.add_vertex(vertex("c", 3));
        let d = g.add_vertex(vertex("d", 1));
        g.connect(a, b, PartitionerKind::Forward);
        g.connect(a, c, PartitionerKind::Hash);
        g.connect(b, d, PartitionerKind::Rebalance);
        g.connect(c, d, PartitionerKind::Broadcast);
        let order = g.validate(&known).unwrap();
        let pos = |v: VertexId| order.iter().position(|&x| x == v).unwrap();
        assert!(pos(a) < pos(b) && pos(b) < pos(d) && pos(c) < pos(d));
    }

    #[test]
    fn refuses_each_invalid_shape_by_name() {
        let mut g = JobGraph::new("j");
        let a = g.add_vertex(vertex("a", 1));
        let b = g.add_vertex(vertex("b", 1));
        g.connect(a, b, PartitionerKind::Hash);
        g.connect(b, a, PartitionerKind::Hash);
        assert_eq!(g.validate(&known), Err(ControlError::Cycle { vertices: vec!["a".into(), "b".into()] }));

        let mut g = JobGraph::new("j");
        g.add_vertex(vertex("a", 0));
        assert_eq!(g.validate(&known), Err(ControlError::ZeroParallelism { vertex: "a".into() }));

        let mut g = JobGraph::new("j");
        let a = g.add_vertex(vertex("a", 1));
        g.connect(a, VertexId(9), PartitionerKind::Hash);
        assert_eq!(g.validate(&known), Err(ControlError::EdgeToMissingVertex { edge: 0, missing: 9 }));

        let mut g = JobGraph::new("j");
        g.add_vertex(vertex("a", 1));
        assert_eq!(
            g.validate(&|n: &str| n != "map"),
            Err(ControlError::UnknownOperator { vertex: "a".into(), operator: "map".into() })
        );

        let mut g = JobGraph::new("j");
        let a = g.add_vertex(vertex("a", 1));
        let b = g.add_vertex(vertex("b", 2));
        g.connect(a, b, PartitionerKind::Forward);
        assert!(matches!(g.validate(&known), Err(ControlError::PointwiseParallelismMismatch { .. })));

        assert_eq!(JobGraph::new("e").validate(&known), Err(ControlError::EmptyGraph));
    }
}
