//! Helpers shared by the integration tests.

use std::time::Duration;

use shardflow_engine::jobs::{KeyValue, GOLDEN};
use shardflow_engine::{Cores, Dataflow, EgressHandle, Engine, EngineBuilder, Job};

/// Generous upper bound for any single wait in a test.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// Joins `thread`, failing the test after [`TIMEOUT`] (with `what` did not
/// happen) instead of waiting without end; a panic of the thread goes on here.
pub(crate) fn join_within<T: Send + 'static>(thread: std::thread::JoinHandle<T>, what: &str) -> T {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(thread.join());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("not within {TIMEOUT:?}: {what}"),
    }
}

/// How many random cases an oracle test runs: `default`, or for a soak run
/// `SHARDFLOW_ORACLE_SCALE` times as many (README: `SHARDFLOW_ORACLE_SCALE=500
/// cargo test --release -p shardflow-tests -- oracle random_dataflow`).
pub(crate) fn oracle_cases(default: u64) -> u64 {
    let scale = std::env::var("SHARDFLOW_ORACLE_SCALE").ok().map(|s| {
        s.parse::<u64>().unwrap_or_else(|e| panic!("SHARDFLOW_ORACLE_SCALE={s:?} is not a whole number: {e}"))
    });
    default * scale.unwrap_or(1).max(1)
}

/// The segment size of [`small_engine`].
pub(crate) const SMALL_SEGMENT_BYTES: usize = 4096;

/// Up to two shards on the first online cores, small segments, no prefaulting (fast
/// start-up), so many engines can start in one test run.
pub(crate) fn small_engine() -> EngineBuilder {
    let shards = shardflow_engine::online_cores().len().min(2);
    Engine::builder()
        .cores(Cores::Count(shards))
        .segment_bytes(SMALL_SEGMENT_BYTES)
        .network_memory_bytes(16 << 20)
        .prefault(false)
}

/// Number of shards `small_engine` starts.
pub(crate) fn shard_count() -> usize {
    shardflow_engine::online_cores().len().min(2)
}

/// An effectively endless job (a trillion records, exchanged by key) whose
/// egress sees every millionth record: evidence that records flow.
pub(crate) fn endless_job(name: &str, parallelism: u32) -> (Job, EgressHandle<KeyValue>) {
    let df = Dataflow::new(name).parallelism(parallelism);
    let seen = df
        .generate("source", 1_000_000_000_000, |r| KeyValue { key: r.wrapping_mul(GOLDEN), value: r })
        .key_by(|r: &KeyValue| r.key)
        .as_stream()
        .filter(|r: &KeyValue| r.value % 1_000_000 == 0)
        .egress(16);
    (df.build().expect("a valid dataflow"), seen)
}

/// Every record `out` still delivers, to its end, failing the test if it
/// neither delivers nor ends within [`TIMEOUT`].
pub(crate) fn read_to_end<T>(out: &EgressHandle<T>) -> Vec<T> {
    let mut read = Vec::new();
    loop {
        match out.recv_timeout(TIMEOUT) {
            Ok(r) => read.push(r),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return read,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => panic!("the egress neither delivered nor ended"),
        }
    }
}
