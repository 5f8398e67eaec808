//! [`ExecutionPlan`]: what a built job will run — its vertices, the operators
//! chained into each, and the edges between them (Flink's execution plan).

use std::fmt;

use shardflow_control::{PartitionerKind, RecordFormat};

use super::{Keeps, Plan};

/// A built job as it will run: each vertex (a task per subtask) with the
/// operators chained into it, and each edge with its partitioner and record
/// format. [`crate::Job::execution_plan`] makes it; its `Display` prints it
/// for people (`shardflow submit --plan` prints the named jobs' plans), its
/// fields are for tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionPlan {
    /// The job's name.
    pub job: String,
    /// Its key groups (the most subtasks a vertex may run).
    pub max_parallelism: u32,
    /// The vertices, in the order they were made (`vertices[i]` is vertex i).
    pub vertices: Vec<PlannedVertex>,
    /// The edges between vertices.
    pub edges: Vec<PlannedEdge>,
}

/// A vertex of an [`ExecutionPlan`]: a task per subtask, running its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVertex {
    /// Its name: its head operator's (what placement maps and the placement
    /// table name).
    pub name: String,
    /// Its subtasks.
    pub parallelism: u32,
    /// Its slot-sharing group.
    pub slot_sharing_group: String,
    /// The cores its placement hint names, if it has one.
    pub cores: Option<Vec<usize>>,
    /// Its operators, the head first, each after the operator it is chained to.
    pub operators: Vec<PlannedOperator>,
}

/// An operator of a [`PlannedVertex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOperator {
    /// Its name (unique in the job: its state's id in snapshots).
    pub name: String,
    /// What it is: `source`, `ingress`, `map`, `filter`, `flat_map`, `process`,
    /// `reduce`, `union`, `collect`, `egress`, …
    pub kind: String,
    /// The operator of the vertex it is chained after (an index into the
    /// vertex's `operators`); `None` for the head.
    pub chained_after: Option<usize>,
    /// Whether it keeps keyed state (in key groups).
    pub keyed_state: bool,
    /// Whether it keeps operator lists (a source's position, which only a job
    /// stopped with a snapshot keeps, is not counted).
    pub operator_state: bool,
    /// Whether it is a sink.
    pub sink: bool,
}

/// An edge of an [`ExecutionPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEdge {
    /// The producing vertex (an index into `vertices`).
    pub from: usize,
    /// The operator of that vertex whose records it carries.
    pub from_operator: String,
    /// The consuming vertex.
    pub to: usize,
    /// How records are routed.
    pub partitioner: PartitionerKind,
    /// The records it carries.
    pub format: RecordFormat,
}

impl ExecutionPlan {
    /// The plan of `p`, whose vertices and edges `graph` was built from.
    pub(crate) fn of(p: &Plan, graph: &shardflow_control::JobGraph) -> Self {
        let vertices = p
            .vertices
            .iter()
            .enumerate()
            .map(|(v, vertex)| {
                let ops: Vec<usize> = (0..p.ops.len()).filter(|&i| p.ops[i].vertex == v).collect();
                let operators = ops
                    .iter()
                    .map(|&i| {
                        let op = &p.ops[i];
                        PlannedOperator {
                            name: op.name.get(),
                            kind: op.kind.clone(),
                            chained_after: op.after.and_then(|a| ops.iter().position(|&o| o == a)),
                            keyed_state: matches!(op.keeps, Keeps::Keyed | Keeps::KeyedAndLists),
                            operator_state: matches!(op.keeps, Keeps::Lists | Keeps::KeyedAndLists),
                            sink: op.consumers.is_none(),
                        }
                    })
                    .collect();
                PlannedVertex {
                    name: vertex.name.get(),
                    parallelism: vertex.parallelism,
                    slot_sharing_group: vertex.slot_sharing_group.clone(),
                    cores: vertex.cores.clone(),
                    operators,
                }
            })
            .collect();
        // `graph`'s edges are `p`'s, in order.
        let edges = graph
            .edges
            .iter()
            .zip(&p.edges)
            .map(|(e, planned)| PlannedEdge {
                from: e.source.0 as usize,
                from_operator: p.ops[planned.source_op].name.get(),
                to: e.target.0 as usize,
                partitioner: e.partitioner,
                format: e.format.clone(),
            })
            .collect();
        ExecutionPlan { job: p.name.clone(), max_parallelism: p.max_parallelism, vertices, edges }
    }
}

impl PlannedVertex {
    /// Its operators as a chain, as Flink names one: `a -> b`, a fan-out in
    /// parentheses (`a -> (b -> c, d)`).
    pub fn chain(&self) -> String {
        let mut out = String::new();
        for (i, head) in self.operators.iter().enumerate().filter(|(_, op)| op.chained_after.is_none()) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            self.write_from(i, head, &mut out);
        }
        out
    }

    fn write_from(&self, i: usize, op: &PlannedOperator, out: &mut String) {
        out.push_str(&op.label());
        let next: Vec<_> = self.operators.iter().enumerate().filter(|(_, o)| o.chained_after == Some(i)).collect();
        match next.as_slice() {
            [] => {}
            [(j, one)] => {
                out.push_str(" -> ");
                self.write_from(*j, one, out);
            }
            many => {
                out.push_str(" -> (");
                for (n, (j, o)) in many.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    self.write_from(*j, o, out);
                }
                out.push(')');
            }
        }
    }
}

impl PlannedOperator {
    /// `name`, with its kind where the name does not already say it
    /// (`count`, `count-3`; `totals [reduce]`), and the state it keeps.
    fn label(&self) -> String {
        let says_kind = self.name.strip_prefix(self.kind.as_str()).is_some_and(|rest| {
            rest.is_empty()
                || rest.strip_prefix('-').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        let mut label = if says_kind { self.name.clone() } else { format!("{} [{}]", self.name, self.kind) };
        match (self.keyed_state, self.operator_state) {
            (false, false) => {}
            (true, false) => label.push_str(" (keyed state)"),
            (false, true) => label.push_str(" (operator lists)"),
            (true, true) => label.push_str(" (keyed state, operator lists)"),
        }
        label
    }
}

impl fmt::Display for ExecutionPlan {
    /// Two lines per vertex (its name, parallelism, group and hint; its
    /// chain), then one line per edge.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vertices = match self.vertices.len() {
            1 => "1 vertex".to_string(),
            n => format!("{n} vertices"),
        };
        writeln!(f, "job {}: {vertices}, max parallelism {}", self.job, self.max_parallelism)?;
        for (i, v) in self.vertices.iter().enumerate() {
            write!(f, "  vertex {i} {}: parallelism {}, group {}", v.name, v.parallelism, v.slot_sharing_group)?;
            if let Some(cores) = &v.cores {
                write!(f, ", cores {cores:?}")?;
            }
            writeln!(f, "\n    {}", v.chain())?;
        }
        for e in &self.edges {
            let name = |v: usize| self.vertices.get(v).map_or("?", |v| v.name.as_str());
            let from = match name(e.from) {
                vertex if vertex == e.from_operator => vertex.to_string(),
                vertex => format!("{vertex} ({})", e.from_operator),
            };
            writeln!(f, "  edge {from} -> {}: {:?}, {}", name(e.to), e.partitioner, e.format)?;
        }
        Ok(())
    }
}
