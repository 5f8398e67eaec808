//! The registry as the coordinator sees it ([`OperatorCatalog`]), and the
//! engine's own check of a job against a registry before it is submitted.

use std::sync::Arc;

use shardflow_control::{validate_job, CatalogError, JobGraph, OperatorCatalog, OperatorSpec};

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
    fn check(&self, spec: &OperatorSpec) -> Result<(), CatalogError> {
        let (registry, resources) = self.live.snapshot();
        registry.build_head(&spec.name, &spec.config, &resources).map(|_| ()).map_err(|e| match e {
            EngineError::OperatorPanicked { operator, message } => CatalogError::Panicked { operator, message },
            other => CatalogError::InvalidConfig { reason: other.to_string() },
        })
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
        fn check(&self, _: &OperatorSpec) -> Result<(), CatalogError> {
            Ok(()) // built above
        }
    }
    validate_job(graph, &Local(registry))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_factory_that_panics_is_a_typed_catalog_error() {
        let mut registry = OperatorRegistry::empty();
        registry.register_operator("explodes", |_, _| panic!("factory bug"));
        let catalog = RegistryCatalog::new(Arc::new(LiveRegistry::new(registry)));
        assert_eq!(
            catalog.check(&OperatorSpec::new("explodes", vec![])),
            Err(CatalogError::Panicked { operator: "explodes".into(), message: "factory bug".into() })
        );
        assert!(matches!(
            catalog.check(&OperatorSpec::new("missing", vec![])),
            Err(CatalogError::InvalidConfig { reason }) if reason.contains("not registered")
        ));
    }
}
