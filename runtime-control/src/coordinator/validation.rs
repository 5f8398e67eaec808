//! Checking a submitted job against what the process can run: the
//! [`OperatorCatalog`] (the registry of the process the coordinator runs in) and
//! [`validate_job`].

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::ControlError;
use crate::ids::VertexId;
use crate::job_graph::{JobGraph, OperatorSpec, ResultPartitionType};

/// Why a catalog refuses an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The operator's configuration is invalid (what its factory said).
    #[error("{reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// Building the operator panicked: a bug in its factory, refused here
    /// instead of taking the process down.
    #[error("building operator '{operator}' panicked: {message}")]
    Panicked {
        /// The operator's name.
        operator: String,
        /// The panic's message.
        message: String,
    },
}

/// What the coordinator knows about operators: the registry of the process.
pub trait OperatorCatalog: Send {
    /// Whether `name` is registered.
    fn contains(&self, name: &str) -> bool;
    /// Whether the operator `spec` names is a source.
    fn is_source(&self, spec: &OperatorSpec) -> bool;
    /// Builds the operator once to check its configuration.
    fn check(&self, spec: &OperatorSpec) -> Result<(), CatalogError>;
    /// Checks the whole graph against what this process builds from it (each
    /// edge's record format); by default nothing more.
    fn check_graph(&self, _graph: &JobGraph) -> Result<(), ControlError> {
        Ok(())
    }
}

/// The message of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Validates `graph` against `catalog`: shape, operator names and configurations,
/// sources exactly at the vertices without inputs, pipelined edges only. Returns a
/// topological order. A catalog that panics is a typed refusal
/// ([`ControlError::CatalogPanicked`]), never a dead coordinator.
pub fn validate_job(graph: &JobGraph, catalog: &dyn OperatorCatalog) -> Result<Vec<VertexId>, ControlError> {
    catch_unwind(AssertUnwindSafe(|| validate_unguarded(graph, catalog)))
        .unwrap_or_else(|payload| Err(ControlError::CatalogPanicked { message: panic_message(&*payload) }))
}

fn validate_unguarded(graph: &JobGraph, catalog: &dyn OperatorCatalog) -> Result<Vec<VertexId>, ControlError> {
    let order = graph.validate(&|name| catalog.contains(name))?;
    for (i, v) in graph.vertices.iter().enumerate() {
        let has_inputs = graph.inputs(VertexId(i as u32)).next().is_some();
        let bad = |reason: &str| ControlError::InvalidOperator { vertex: v.name.clone(), reason: reason.into() };
        let head_is_source = catalog.is_source(&v.chain[0]);
        if has_inputs && head_is_source {
            return Err(bad("a source cannot consume inputs"));
        }
        if !has_inputs && !head_is_source {
            return Err(bad("a vertex without inputs must start with a source"));
        }
        if v.chain.iter().skip(1).any(|op| catalog.is_source(op)) {
            return Err(bad("a source can only head a chain"));
        }
        for op in &v.chain {
            catalog
                .check(op)
                .map_err(|e| ControlError::InvalidOperator { vertex: v.name.clone(), reason: e.to_string() })?;
        }
    }
    catalog.check_graph(graph)?;
    if let Some(e) = graph.edges.iter().find(|e| e.partition_type == ResultPartitionType::Blocking) {
        return Err(ControlError::Unsupported(format!(
            "blocking partition on edge {} -> {}: only pipelined partitions run",
            graph.vertices[e.source.0 as usize].name, graph.vertices[e.target.0 as usize].name
        )));
    }
    Ok(order)
}
