//! The config file (TOML): one table per role; flags win over it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use shardflow_engine::{Cores, Engine, EngineBuilder};

use super::roles::IdleArg;
use super::{HaSection, SecuritySection};

/// The config file (TOML): one table per role.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) coordinator: CoordinatorSection,
    #[serde(default)]
    pub(crate) worker: WorkerSection,
    #[serde(default)]
    pub(crate) client: ClientSection,
    #[serde(default)]
    pub(crate) submit: SubmitSection,
    #[serde(default)]
    pub(crate) ha: HaSection,
    #[serde(default)]
    pub(crate) security: SecuritySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CoordinatorSection {
    pub(crate) bind: Option<String>,
    pub(crate) advertise: Option<String>,
    pub(crate) heartbeat_interval_ms: Option<u64>,
    pub(crate) heartbeat_timeout_ms: Option<u64>,
    pub(crate) slot_wait_timeout_ms: Option<u64>,
    pub(crate) submit_slot_wait_ms: Option<u64>,
    pub(crate) placement: Option<String>,
    pub(crate) restart: Option<String>,
    pub(crate) retained_jobs: Option<usize>,
    pub(crate) max_frame_bytes: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) write_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerSection {
    pub(crate) coordinator: Option<String>,
    pub(crate) cores: Option<Vec<usize>>,
    pub(crate) slots_per_shard: Option<u32>,
    pub(crate) resource_id: Option<String>,
    pub(crate) segment_bytes: Option<usize>,
    pub(crate) network_memory_bytes: Option<usize>,
    pub(crate) managed_memory_per_slot_bytes: Option<u64>,
    pub(crate) exclusive_credits: Option<u32>,
    pub(crate) floating_credits: Option<u32>,
    pub(crate) idle: Option<IdleArg>,
    pub(crate) prefault: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSection {
    pub(crate) coordinator: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitSection {
    pub(crate) parallelism: Option<u32>,
    pub(crate) placement: Option<String>,
    pub(crate) restart: Option<String>,
    pub(crate) timeout_s: Option<u64>,
}

impl ConfigFile {
    /// Reads `path`, or `$SHARDFLOW_CONFIG`, or nothing.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        let path: Option<PathBuf> =
            path.map(Path::to_path_buf).or_else(|| std::env::var_os("SHARDFLOW_CONFIG").map(PathBuf::from));
        let Some(path) = path else { return Ok(ConfigFile::default()) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

impl WorkerSection {
    /// An engine as the file's `[worker]` table sets it (the keys of an engine:
    /// not `coordinator` or `resource_id`), for flags to refine.
    pub(crate) fn engine(&self) -> EngineBuilder {
        let mut engine = Engine::builder();
        if let Some(c) = self.cores.clone() {
            engine = engine.cores(Cores::List(c));
        }
        if let Some(k) = self.slots_per_shard {
            engine = engine.slots_per_shard(k);
        }
        if let Some(b) = self.network_memory_bytes {
            engine = engine.network_memory_bytes(b);
        }
        if let Some(b) = self.segment_bytes {
            engine = engine.segment_bytes(b);
        }
        if let Some(b) = self.managed_memory_per_slot_bytes {
            engine = engine.managed_memory_per_slot_bytes(b);
        }
        if let Some(n) = self.exclusive_credits {
            engine = engine.exclusive_credits(n);
        }
        if let Some(n) = self.floating_credits {
            engine = engine.floating_credits(n);
        }
        if let Some(p) = self.prefault {
            engine = engine.prefault(p);
        }
        if let Some(i) = self.idle {
            engine = engine.idle(i.policy());
        }
        engine
    }
}
