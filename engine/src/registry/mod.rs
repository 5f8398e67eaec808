//! The jobs a process can run: named jobs built from parameters (the
//! [`JobCatalog`]: the benchmark pipelines, or a user's own jobs in their own
//! binary), and the jobs an embedded engine was handed. A job graph names each
//! vertex as `job:<name>` with its parameters and vertex index; every process
//! running it resolves that name to the same typed plan, so one job definition
//! runs unchanged embedded and on a cluster.
//!
//! [`catalog`] shows the jobs to the coordinator and checks graphs against them.

pub(crate) mod catalog;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use shardflow_control::{panic_message, JobGraph, OperatorSpec};

use crate::api::Job;
use crate::api::{JOB_OPERATOR, VERTEX_PARAM};
use crate::error::EngineError;
use crate::params::Params;

/// The parameters a named job is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobParams {
    job: String,
    params: BTreeMap<String, String>,
    parallelism: u32,
}

impl JobParams {
    /// `params` for job `job` at `parallelism`.
    pub fn new(job: &str, params: BTreeMap<String, String>, parallelism: u32) -> Self {
        JobParams { job: job.to_string(), params, parallelism }
    }

    /// The parallelism asked for (at least 1).
    pub fn parallelism(&self) -> u32 {
        self.parallelism.max(1)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Whether `key` was given.
    pub fn has(&self, key: &str) -> bool {
        self.params.contains_key(key)
    }

    /// `key` as an unsigned integer (`_` separators allowed), or `default`.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, EngineError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.replace('_', "").parse().map_err(|e| self.error(format!("parameter {key}='{v}': {e}"))),
        }
    }

    /// Refuses any parameter not in `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), EngineError> {
        match self.params.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(self.error(format!("unknown parameter '{k}' (known: {})", known.join(", ")))),
            None => Ok(()),
        }
    }

    /// A typed error about these parameters.
    pub fn error(&self, reason: String) -> EngineError {
        EngineError::NamedJob { job: self.job.clone(), reason }
    }
}

type BuildJob = dyn Fn(&JobParams) -> Result<Job, EngineError> + Send + Sync;

#[derive(Clone)]
struct CatalogEntry {
    help: String,
    build: Arc<BuildJob>,
}

/// Named jobs built from parameters: what `shardflow submit <name>` and
/// `shardflow bench` run. A user ships their own jobs by registering them in a
/// catalog and handing it to the CLI's library entry point.
#[derive(Clone, Default)]
pub struct JobCatalog {
    entries: BTreeMap<String, CatalogEntry>,
}

impl std::fmt::Debug for JobCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCatalog").field("jobs", &self.entries.keys().collect::<Vec<_>>()).finish()
    }
}

impl JobCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `build` as job `name` (replacing one of that name); `help` says
    /// what it runs and its parameters.
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        build: impl Fn(&JobParams) -> Result<Job, EngineError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.entries.insert(name.to_string(), CatalogEntry { help: help.to_string(), build: Arc::new(build) });
        self
    }

    /// Adds every job of `other`.
    pub fn merge(&mut self, other: &JobCatalog) {
        self.entries.extend(other.entries.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Every job: name and help.
    pub fn jobs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.help.as_str()))
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The job `graph` stands for, built again from the name and parameters
    /// its vertices carry (as a worker does to run it): a submitted job's
    /// execution plan, seen from a client. An error if the graph was not
    /// built from this catalog, or this catalog now builds another graph from
    /// the same name and parameters (another build of the jobs).
    pub fn rebuild(&self, graph: &JobGraph) -> Result<Job, EngineError> {
        let Some(spec) = graph.vertices.first().and_then(|v| v.chain.first()) else {
            return Err(EngineError::NamedJob { job: graph.name.clone(), reason: "the graph has no vertex".into() });
        };
        if !self.knows(spec) {
            let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
            let known = match known.is_empty() {
                true => "it has none".to_string(),
                false => format!("it has {}", known.join(", ")),
            };
            return Err(EngineError::NamedJob {
                job: graph.name.clone(),
                reason: format!("its vertices run '{}', not a job of this binary's catalog ({known})", spec.name),
            });
        }
        let (job, _) = LiveRegistry::new(self.clone()).resolve(spec)?;
        if job.graph != *graph {
            return Err(EngineError::NamedJob {
                job: graph.name.clone(),
                reason: format!(
                    "'{}' with its parameters builds another graph here than the one submitted: \
                     another build of the job",
                    spec.name
                ),
            });
        }
        Ok(Job::clone(&job))
    }

    /// Whether `spec` names a job of this catalog.
    fn knows(&self, spec: &OperatorSpec) -> bool {
        spec.name.strip_prefix(JOB_OPERATOR).is_some_and(|name| self.contains(name))
    }

    /// Builds job `name` from `params`; its graph names each vertex
    /// `job:<name>` with the parameters, so any process with this catalog
    /// builds the same plan. A builder that panics is a typed error.
    pub fn build(&self, name: &str, params: &BTreeMap<String, String>, parallelism: u32) -> Result<Job, EngineError> {
        let Some(entry) = self.entries.get(name) else {
            let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
            return Err(EngineError::NamedJob {
                job: name.to_string(),
                reason: format!("no such job (known: {})", known.join(", ")),
            });
        };
        if parallelism == 0 {
            return Err(EngineError::NamedJob {
                job: name.to_string(),
                reason: "parallelism must be at least 1".into(),
            });
        }
        if params.contains_key(VERTEX_PARAM) || params.contains_key(PARALLELISM_PARAM) {
            return Err(EngineError::NamedJob {
                job: name.to_string(),
                reason: format!("'{VERTEX_PARAM}' and '{PARALLELISM_PARAM}' are not parameters of a job"),
            });
        }
        let job_params = JobParams::new(name, params.clone(), parallelism);
        let mut job = catch_unwind(AssertUnwindSafe(|| (entry.build)(&job_params))).unwrap_or_else(|p| {
            Err(EngineError::OperatorPanicked { operator: format!("job {name}"), message: panic_message(&*p) })
        })?;
        let mut base = Params::from_map(params);
        base = base.with(PARALLELISM_PARAM, parallelism);
        stamp(&mut job, name, &base);
        Ok(job)
    }
}

/// The parameter carrying the parallelism a named job was built at.
const PARALLELISM_PARAM: &str = "parallelism";

/// Names every vertex of `job` as `job:<name>` with `params` and its index.
pub(crate) fn stamp(job: &mut Job, name: &str, params: &Params) {
    for (i, v) in job.graph.vertices.iter_mut().enumerate() {
        let config = params.clone().with(VERTEX_PARAM, i).to_bytes();
        v.chain = vec![OperatorSpec::new(format!("{JOB_OPERATOR}{name}"), config)];
    }
}

/// A named job built: its name and parameters.
type BuiltKey = (String, Vec<u8>);

/// Named jobs built lately, kept so each subtask of a deployment does not build
/// its job again.
const CACHED_JOBS: usize = 32;

/// The jobs of a process: its catalog, the jobs its embedded engine was handed
/// (by the name unique to each submission), and a cache of named jobs built.
pub(crate) struct LiveRegistry {
    catalog: JobCatalog,
    submitted: Mutex<HashMap<String, Arc<Job>>>,
    built: Mutex<VecDeque<(BuiltKey, Arc<Job>)>>,
}

impl std::fmt::Debug for LiveRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRegistry").field("catalog", &self.catalog).finish_non_exhaustive()
    }
}

impl LiveRegistry {
    pub(crate) fn new(catalog: JobCatalog) -> Self {
        LiveRegistry { catalog, submitted: Mutex::default(), built: Mutex::default() }
    }

    /// Adds a submitted job under `name`.
    pub(crate) fn add(&self, name: &str, job: Arc<Job>) {
        self.submitted.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), job);
    }

    /// Forgets a submitted job.
    pub(crate) fn remove(&self, name: &str) {
        self.submitted.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    /// Whether `spec` names a job this process knows.
    pub(crate) fn knows(&self, name: &str) -> bool {
        match name.strip_prefix(JOB_OPERATOR) {
            Some(job) => {
                self.catalog.contains(job)
                    || self.submitted.lock().unwrap_or_else(PoisonError::into_inner).contains_key(job)
            }
            None => false,
        }
    }

    /// The job a vertex spec belongs to, and the vertex's index in it.
    pub(crate) fn resolve(&self, spec: &OperatorSpec) -> Result<(Arc<Job>, usize), EngineError> {
        let bad = |reason: String| EngineError::InvalidOperatorConfig { operator: spec.name.clone(), reason };
        let Some(name) = spec.name.strip_prefix(JOB_OPERATOR) else {
            return Err(bad(format!("not a vertex of a typed job (expected '{JOB_OPERATOR}<name>')")));
        };
        let mut params = Params::parse(&spec.name, &spec.config)?;
        let vertex = params.remove(VERTEX_PARAM).ok_or_else(|| bad(format!("no '{VERTEX_PARAM}' parameter")))?;
        let vertex: usize = vertex.parse().map_err(|_| bad(format!("{VERTEX_PARAM}='{vertex}' is not an index")))?;
        let submitted = self.submitted.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
        let job = match submitted {
            Some(job) => job,
            None => self.named(name, params)?,
        };
        if vertex >= job.plan.vertices.len() {
            return Err(bad(format!("the job has {} vertices, not {}", job.plan.vertices.len(), vertex + 1)));
        }
        Ok((job, vertex))
    }

    /// Named job `name` built from `params` (cached).
    fn named(&self, name: &str, mut params: Params) -> Result<Arc<Job>, EngineError> {
        let key = (name.to_string(), params.to_bytes());
        if let Some((_, job)) =
            self.built.lock().unwrap_or_else(PoisonError::into_inner).iter().find(|(k, _)| *k == key)
        {
            return Ok(job.clone());
        }
        let parallelism = match params.remove(PARALLELISM_PARAM) {
            Some(p) => p.parse().map_err(|_| EngineError::NamedJob {
                job: name.to_string(),
                reason: format!("{PARALLELISM_PARAM}='{p}' is not a number"),
            })?,
            None => 1,
        };
        let map: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let job = Arc::new(self.catalog.build(name, &map, parallelism)?);
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if built.len() >= CACHED_JOBS {
            built.pop_front();
        }
        built.push_back((key, job.clone()));
        Ok(job)
    }
}
