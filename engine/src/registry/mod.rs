//! The operator registry: operator name → factory. A job names its operators; every
//! process running the job resolves the names in its own registry, so one job
//! definition runs unchanged embedded and on a cluster.
//!
//! [`catalog`] shows a registry to the coordinator and checks jobs against it.

pub(crate) mod catalog;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::Sender;
use shardflow_control::panic_message;

use crate::error::EngineError;
use crate::operator::{ChainHead, FilterFn, FlatMapFn, MapFn, Operator, SourceOperator};
use crate::record::{OpConfig, Record};

/// Per-job resources a factory may hand to the operators it builds (the channels of
/// collect sinks).
#[derive(Debug, Clone, Default)]
pub struct JobResources {
    collectors: HashMap<String, Sender<Vec<Record>>>,
}

impl JobResources {
    /// Registers the sending end of a collector named `name`.
    pub fn add_collector(&mut self, name: &str, tx: Sender<Vec<Record>>) {
        self.collectors.insert(name.to_string(), tx);
    }
    /// The collector `name`, if the job has one.
    pub fn collector(&self, name: &str) -> Option<&Sender<Vec<Record>>> {
        self.collectors.get(name)
    }
    /// Removes the collector `name`.
    pub(crate) fn remove_collector(&mut self, name: &str) {
        self.collectors.remove(name);
    }
    /// The collectors' names.
    pub(crate) fn collector_names(&self) -> impl Iterator<Item = &str> {
        self.collectors.keys().map(String::as_str)
    }
}

/// The operators and resources a process resolves job graphs against, changeable
/// while it runs: the embedded engine adds a job's own operators and collectors
/// (under names unique to the submission) before submitting it and removes them
/// when it ends. Readers take a snapshot; a change never alters a snapshot taken.
#[derive(Debug, Default)]
pub(crate) struct LiveRegistry {
    inner: Mutex<(Arc<OperatorRegistry>, Arc<JobResources>)>,
}

impl LiveRegistry {
    pub(crate) fn new(registry: OperatorRegistry) -> Self {
        LiveRegistry { inner: Mutex::new((Arc::new(registry), Arc::new(JobResources::default()))) }
    }

    /// The operators and resources as they are now.
    pub(crate) fn snapshot(&self) -> (Arc<OperatorRegistry>, Arc<JobResources>) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Changes the operators and resources.
    pub(crate) fn update(&self, f: impl FnOnce(&mut OperatorRegistry, &mut JobResources)) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut registry, mut resources) = ((*g.0).clone(), (*g.1).clone());
        f(&mut registry, &mut resources);
        *g = (Arc::new(registry), Arc::new(resources));
    }
}

type SourceFactory = dyn Fn(&OpConfig, &JobResources) -> Result<Box<dyn SourceOperator>, EngineError> + Send + Sync;
type OperatorFactory = dyn Fn(&OpConfig, &JobResources) -> Result<Box<dyn Operator>, EngineError> + Send + Sync;

#[derive(Clone)]
enum Factory {
    Source(Arc<SourceFactory>),
    Operator(Arc<OperatorFactory>),
}

/// Name → factory. `Send + Sync`: shared by the coordinator (which validates) and
/// every shard (which builds the operators on its own thread).
#[derive(Clone, Default)]
pub struct OperatorRegistry {
    factories: HashMap<String, Factory>,
}

impl std::fmt::Debug for OperatorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.factories.keys().collect();
        names.sort();
        f.debug_struct("OperatorRegistry").field("operators", &names).finish()
    }
}

impl OperatorRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Registers a source factory under `name` (replacing any previous one).
    pub fn register_source<F>(&mut self, name: &str, factory: F)
    where
        F: Fn(&OpConfig, &JobResources) -> Result<Box<dyn SourceOperator>, EngineError> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_string(), Factory::Source(Arc::new(factory)));
    }

    /// Registers an operator factory under `name` (replacing any previous one).
    pub fn register_operator<F>(&mut self, name: &str, factory: F)
    where
        F: Fn(&OpConfig, &JobResources) -> Result<Box<dyn Operator>, EngineError> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_string(), Factory::Operator(Arc::new(factory)));
    }

    /// Registers a record-to-record function as operator `name`.
    pub fn register_map<F>(&mut self, name: &str, f: F)
    where
        F: Fn(Record) -> Record + Clone + Send + Sync + 'static,
    {
        self.register_operator(name, move |_, _| Ok(Box::new(MapFn(f.clone()))));
    }

    /// Registers a predicate as operator `name`: records for which it is false are dropped.
    pub fn register_filter<F>(&mut self, name: &str, f: F)
    where
        F: Fn(&Record) -> bool + Clone + Send + Sync + 'static,
    {
        self.register_operator(name, move |_, _| Ok(Box::new(FilterFn(f.clone()))));
    }

    /// Registers a one-to-many function as operator `name`.
    pub fn register_flat_map<F>(&mut self, name: &str, f: F)
    where
        F: Fn(&Record, &mut Vec<Record>) + Clone + Send + Sync + 'static,
    {
        self.register_operator(name, move |_, _| Ok(Box::new(FlatMapFn(f.clone()))));
    }

    /// Adds every entry of `other`, replacing same-named ones.
    pub fn merge(&mut self, other: &OperatorRegistry) {
        self.merge_renamed(other, str::to_string);
    }

    /// Adds every entry of `other`, each under `rename(name)`.
    pub(crate) fn merge_renamed(&mut self, other: &OperatorRegistry, rename: impl Fn(&str) -> String) {
        for (k, v) in &other.factories {
            self.factories.insert(rename(k), v.clone());
        }
    }

    /// Removes `name`.
    pub(crate) fn remove(&mut self, name: &str) {
        self.factories.remove(name);
    }

    /// The registered names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Whether `name` is a source.
    pub fn is_source(&self, name: &str) -> bool {
        matches!(self.factories.get(name), Some(Factory::Source(_)))
    }

    /// Builds operator `name` from its config bytes as a chain head. A factory
    /// that panics is an [`EngineError::OperatorPanicked`], not a dead thread.
    pub fn build_head(&self, name: &str, config: &[u8], res: &JobResources) -> Result<ChainHead, EngineError> {
        let cfg = OpConfig::parse(name, config)?;
        let built = catch_unwind(AssertUnwindSafe(|| match self.factories.get(name) {
            Some(Factory::Source(f)) => Ok(ChainHead::Source(f(&cfg, res)?)),
            Some(Factory::Operator(f)) => Ok(ChainHead::Operator(f(&cfg, res)?)),
            None => {
                Err(EngineError::InvalidOperatorConfig { operator: name.to_string(), reason: "not registered".into() })
            }
        }));
        built.unwrap_or_else(|payload| {
            Err(EngineError::OperatorPanicked { operator: name.to_string(), message: panic_message(&*payload) })
        })
    }

    /// Builds operator `name` as a chained (non-head) operator.
    pub fn build_operator(
        &self,
        name: &str,
        config: &[u8],
        res: &JobResources,
    ) -> Result<Box<dyn Operator>, EngineError> {
        match self.build_head(name, config, res)? {
            ChainHead::Operator(op) => Ok(op),
            ChainHead::Source(_) => Err(EngineError::InvalidOperatorConfig {
                operator: name.to_string(),
                reason: "a source can only head a vertex without inputs".into(),
            }),
        }
    }
}
