//! The jobs of a process as the coordinator sees them ([`OperatorCatalog`]):
//! each vertex resolves to a typed plan, and each edge of a submitted graph must
//! carry the record format this process's plan reads and writes.

use std::sync::Arc;

use shardflow_control::{CatalogError, ControlError, JobGraph, OperatorCatalog, OperatorSpec};

use super::LiveRegistry;
use crate::error::EngineError;

/// The live registry of the process the coordinator runs in.
pub(crate) struct RegistryCatalog {
    live: Arc<LiveRegistry>,
}

impl RegistryCatalog {
    pub(crate) fn new(live: Arc<LiveRegistry>) -> Self {
        RegistryCatalog { live }
    }
}

fn catalog_error(e: EngineError) -> CatalogError {
    match e {
        EngineError::OperatorPanicked { operator, message } => CatalogError::Panicked { operator, message },
        other => CatalogError::InvalidConfig { reason: other.to_string() },
    }
}

impl OperatorCatalog for RegistryCatalog {
    fn contains(&self, name: &str) -> bool {
        self.live.knows(name)
    }

    fn is_source(&self, spec: &OperatorSpec) -> bool {
        self.live.resolve(spec).is_ok_and(|(job, v)| job.plan.vertices[v].is_source())
    }

    fn check(&self, spec: &OperatorSpec) -> Result<(), CatalogError> {
        self.live.resolve(spec).map(|_| ()).map_err(catalog_error)
    }

    fn check_graph(&self, graph: &JobGraph) -> Result<(), ControlError> {
        check_formats(graph, &self.live)
    }
}

/// Checks that `graph` is the graph this process builds for the job its
/// vertices name: the same vertices, and on every edge the same record format.
pub(crate) fn check_formats(graph: &JobGraph, live: &LiveRegistry) -> Result<(), ControlError> {
    let Some(spec) = graph.vertices.first().and_then(|v| v.chain.first()) else { return Ok(()) };
    let (job, _) = live
        .resolve(spec)
        .map_err(|e| ControlError::InvalidOperator { vertex: graph.vertices[0].name.clone(), reason: e.to_string() })?;
    let here = &job.graph;
    let shape = |reason: String| ControlError::InvalidOperator { vertex: graph.name.clone(), reason };
    if here.vertices.len() != graph.vertices.len() || here.edges.len() != graph.edges.len() {
        return Err(shape(format!(
            "this process builds the job with {} vertices and {} edges, the graph has {} and {}",
            here.vertices.len(),
            here.edges.len(),
            graph.vertices.len(),
            graph.edges.len()
        )));
    }
    for (submitted, mine) in graph.edges.iter().zip(&here.edges) {
        let edge = || {
            let name = |v: shardflow_control::VertexId| {
                graph.vertices.get(v.0 as usize).map_or_else(|| v.to_string(), |x| x.name.clone())
            };
            format!("{} -> {}", name(submitted.source), name(submitted.target))
        };
        if (submitted.source, submitted.target) != (mine.source, mine.target) {
            return Err(shape(format!("edge '{}' is not an edge of the job this process builds", edge())));
        }
        if submitted.format != mine.format {
            return Err(ControlError::FormatMismatch {
                edge: edge(),
                submitted: submitted.format.to_string(),
                here: mine.format.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{JobCatalog, JobParams};

    #[test]
    fn a_job_builder_that_panics_is_a_typed_catalog_error() {
        let mut jobs = JobCatalog::new();
        jobs.register("explodes", "a bug", |_| panic!("builder bug"));
        let catalog = RegistryCatalog::new(Arc::new(LiveRegistry::new(jobs)));
        let spec = OperatorSpec::new("job:explodes", b"vertex=0".to_vec());
        assert_eq!(
            catalog.check(&spec),
            Err(CatalogError::Panicked { operator: "job explodes".into(), message: "builder bug".into() })
        );
        assert!(matches!(
            catalog.check(&OperatorSpec::new("job:missing", b"vertex=0".to_vec())),
            Err(CatalogError::InvalidConfig { reason }) if reason.contains("no such job")
        ));
        assert!(!catalog.contains("generator"), "only typed jobs");
    }

    #[test]
    fn a_submitted_graph_is_built_again_into_its_plan_by_the_catalog_that_made_it() {
        // Numbers, doubled by a map of its own parallelism, then counted.
        let numbers = |map_parallelism: u32| {
            move |p: &JobParams| {
                let df = crate::Dataflow::new("numbers").parallelism(p.parallelism());
                let n = p.u64_or("n", 10)?;
                df.generate("numbers", n, |r| r).rebalance().map(|r: &u64| r * 2).parallelism(map_parallelism).count();
                df.build()
            }
        };
        let mut jobs = JobCatalog::new();
        jobs.register("numbers", "n=N", numbers(1));
        let params = [("n".to_string(), "100".to_string())].into();
        let job = jobs.build("numbers", &params, 2).unwrap();
        let again = jobs.rebuild(job.graph()).expect("the same catalog builds it again");
        assert_eq!(again.execution_plan(), job.execution_plan());
        assert_eq!(again.graph(), job.graph());

        // Another build whose job of that name makes another graph.
        let mut other = JobCatalog::new();
        other.register("numbers", "n=N", numbers(3));
        let e = other.rebuild(job.graph()).unwrap_err().to_string();
        assert!(e.contains("another graph"), "{e}");
        // A catalog without the job, and a graph of no vertex.
        let e = JobCatalog::new().rebuild(job.graph()).unwrap_err().to_string();
        assert!(e.contains("run 'job:numbers', not a job of this binary's catalog (it has none)"), "{e}");
        let e = jobs.rebuild(&shardflow_control::JobGraph::default()).unwrap_err().to_string();
        assert!(e.contains("no vertex"), "{e}");
    }
}
