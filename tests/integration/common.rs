//! Helpers shared by the integration tests.

use std::time::Duration;

use shardflow_engine::{Cores, Engine, EngineBuilder};

/// Generous upper bound for any single wait in a test.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// Up to two shards on the first online cores, small segments, no prefaulting (fast
/// start-up), so many engines can start in one test run.
pub(crate) fn small_engine() -> EngineBuilder {
    let shards = shardflow_engine::online_cores().len().min(2);
    Engine::builder().cores(Cores::Count(shards)).segment_bytes(4096).network_memory_bytes(16 << 20).prefault(false)
}

/// Number of shards `small_engine` starts.
pub(crate) fn shard_count() -> usize {
    shardflow_engine::online_cores().len().min(2)
}
