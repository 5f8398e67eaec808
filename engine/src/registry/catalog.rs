//! The registry as the coordinator sees it ([`OperatorCatalog`]), and the
//! engine's own check of a job against a registry before it is submitted.

use std::sync::Arc;

use shardflow_control::{validate_job, JobGraph, OperatorCatalog, OperatorSpec};

use super::{JobResources, LiveRegistry, OperatorRegistry};
use crate::error::EngineError;

/// A registry as the coordinator sees it: the live one of the process it runs
/// in.
pub(crate) struct RegistryCatalog {
    live: Arc<LiveRegistry>,
}

impl RegistryCatalog {
    pub(crate) fn new(live: Arc<LiveRegistry>) -> Self {
        RegistryCatalog { live }
    }
}

impl OperatorCatalog for RegistryCatalog {
    fn contains(&self, name: &str) -> bool {
        self.live.snapshot().0.contains(name)
    }
    fn is_source(&self, name: &str) -> bool {
        self.live.snapshot().0.is_source(name)
    }
    fn check(&self, spec: &OperatorSpec) -> Result<(), String> {
        let (registry, resources) = self.live.snapshot();
        registry.build_head(&spec.name, &spec.config, &resources).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// [`validate_job`] against `registry` and `resources`, with the engine's errors:
/// the graph's shape and operator names first, then every operator built once (so
/// bad configuration is refused by operator), then the chains.
pub(crate) fn check_job(
    graph: &JobGraph,
    registry: &OperatorRegistry,
    resources: &JobResources,
) -> Result<(), EngineError> {
    graph.validate(&|name| registry.contains(name))?;
    for v in &graph.vertices {
        for op in &v.chain {
            registry.build_head(&op.name, &op.config, resources)?;
        }
    }
    struct Local<'a>(&'a OperatorRegistry);
    impl OperatorCatalog for Local<'_> {
        fn contains(&self, name: &str) -> bool {
            self.0.contains(name)
        }
        fn is_source(&self, name: &str) -> bool {
            self.0.is_source(name)
        }
        fn check(&self, _: &OperatorSpec) -> Result<(), String> {
            Ok(()) // built above
        }
    }
    validate_job(graph, &Local(registry))?;
    Ok(())
}
