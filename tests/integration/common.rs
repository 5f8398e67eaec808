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

/// A user's source over a log of records: each subtask reads its share (every
/// p-th from its index) up to index `readable`, then waits for more that never
/// comes (an unbounded source, like a topic with nothing new), so only a stop
/// ends it — unless everything is readable. Its position: per run of its
/// share, the next index and the step (16 bytes), dealt out again on restore.
/// Once it has read what is readable it tells `waiting`
/// `(source, subtask, parallelism)`, if given.
pub(crate) struct LogSource<T> {
    pub(crate) log: std::sync::Arc<Vec<T>>,
    pub(crate) readable: usize,
    pub(crate) waiting: Option<crossbeam_channel::Sender<(String, u32, u32)>>,
    runs: Vec<[u64; 2]>,
    restored: bool,
    task: Option<shardflow_engine::TaskInfo>,
}

impl<T> LogSource<T> {
    pub(crate) fn new(
        log: std::sync::Arc<Vec<T>>,
        readable: usize,
        waiting: Option<crossbeam_channel::Sender<(String, u32, u32)>>,
    ) -> Self {
        LogSource { log, readable, waiting, runs: Vec::new(), restored: false, task: None }
    }
}

impl<T: shardflow_engine::Data> shardflow_engine::Source<T> for LogSource<T> {
    fn restore_state(&mut self, items: Vec<&[u8]>) -> Result<(), shardflow_engine::OperatorError> {
        self.restored = true;
        for item in items {
            let Ok(run) = <[u8; 16]>::try_from(item) else {
                return Err(shardflow_engine::OperatorError::User(format!(
                    "a position of {} bytes, not 16",
                    item.len()
                )));
            };
            let word = |at: usize| u64::from_le_bytes(run[at..at + 8].try_into().unwrap_or_default());
            match [word(0), word(8)] {
                [_, 0] => return Err(shardflow_engine::OperatorError::User("a position with a step of 0".into())),
                r => self.runs.push(r),
            }
        }
        Ok(())
    }

    fn open(&mut self, task: &shardflow_engine::TaskInfo) -> Result<(), shardflow_engine::OperatorError> {
        if !self.restored {
            self.runs.push([u64::from(task.subtask), u64::from(task.parallelism)]);
        }
        self.task = Some(task.clone());
        Ok(())
    }

    fn poll_next(
        &mut self,
        _: &mut std::task::Context<'_>,
        out: &mut shardflow_engine::SourceOutput<'_, T>,
    ) -> Result<shardflow_engine::SourceStatus, shardflow_engine::OperatorError> {
        use shardflow_engine::SourceStatus;
        let end = self.readable.min(self.log.len());
        for run in &mut self.runs {
            while !out.is_full() && (run[0] as usize) < end {
                out.push_ref(std::borrow::Borrow::borrow(&self.log[run[0] as usize]));
                run[0] += run[1];
            }
        }
        let done = self.runs.iter().all(|r| r[0] as usize >= self.log.len());
        Ok(match (out.is_empty(), done) {
            (false, _) => SourceStatus::Emitted,
            (true, true) => SourceStatus::Finished,
            // Nothing readable now, and nothing will wake it: only a stop ends it.
            (true, false) => {
                if let (Some(tell), Some(task)) = (self.waiting.take(), &self.task) {
                    let _ = tell.send((task.vertex.clone(), task.subtask, task.parallelism));
                }
                SourceStatus::Pending
            }
        })
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<Vec<u8>>>, shardflow_engine::OperatorError> {
        let live = self.runs.iter().filter(|r| (r[0] as usize) < self.log.len());
        Ok(Some(live.map(|r| r.iter().flat_map(|w| w.to_le_bytes()).collect()).collect()))
    }
}
