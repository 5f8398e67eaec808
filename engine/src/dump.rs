//! What a worker's shards and tasks did between two dumps ([`crate::Engine::dump`],
//! `shardflow dump`): a dump gives totals since each task began; two of them
//! apart give each shard's CPU share of the time between and each task's
//! records per second and the shares of its time it was busy, idle and
//! back-pressured — the per-second view Flink's task metrics give.

use std::collections::HashMap;
use std::time::Duration;

use shardflow_control::protocol::{ShardDump, TaskDumpEntry, TaskTimes};
use shardflow_control::{AttemptId, JobId, WorkerId};

/// What a worker's shards and tasks did between two dumps.
///
/// ```no_run
/// # use std::time::{Duration, Instant};
/// # use shardflow_engine::{DumpWindow, Engine};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let engine = Engine::builder().build()?;
/// let first = engine.dump()?;
/// let at = Instant::now();
/// std::thread::sleep(Duration::from_secs(1));
/// let window = DumpWindow::between(&first, &engine.dump()?, at.elapsed());
/// for shard in &window.shards {
///     println!("core {}: {:?} % busy", shard.core, shard.cpu_percent);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DumpWindow {
    /// The worker.
    pub worker: WorkerId,
    /// Seconds between the dumps.
    pub seconds: f64,
    /// Its shards, as the later dump lists them.
    pub shards: Vec<ShardWindow>,
}

/// What one shard did over a [`DumpWindow`].
#[derive(Debug, Clone, PartialEq)]
pub struct ShardWindow {
    /// The shard's index.
    pub shard: u32,
    /// Its core.
    pub core: u32,
    /// Its thread's CPU time over the window, per cent of the window (in the
    /// kernel's ticks of 10 ms where it keeps no scheduler statistics);
    /// `None` where either dump lacks it.
    pub cpu_percent: Option<f64>,
    /// Its tasks, as the later dump lists them.
    pub tasks: Vec<TaskWindow>,
}

/// What one task did over a [`DumpWindow`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWindow {
    /// The task as the later dump shows it.
    pub task: TaskDumpEntry,
    /// Records into its chain head per second.
    pub records_in_per_s: f64,
    /// Records out of its chain per second.
    pub records_out_per_s: f64,
    /// How its time in the window split; `None` if it spent none there.
    pub shares: Option<TaskShares>,
}

/// How a task's time in a window split, per cent (adding up to 100).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskShares {
    /// Working, or ready to and waiting for its core.
    pub busy_percent: f64,
    /// Waiting for input.
    pub idle_percent: f64,
    /// Waiting on a full output.
    pub back_pressured_percent: f64,
}

impl DumpWindow {
    /// From `first` to `second`, dumps of one worker taken `elapsed` apart. A
    /// task not in `first` began within the window: all it did counts. Counts
    /// that went down (a dump from elsewhere) count as none.
    pub fn between(first: &ShardDump, second: &ShardDump, elapsed: Duration) -> DumpWindow {
        let seconds = elapsed.as_secs_f64().max(1e-3);
        let before: HashMap<(JobId, AttemptId), &TaskDumpEntry> =
            first.shards.iter().flat_map(|s| &s.tasks).map(|t| ((t.job, t.attempt), t)).collect();
        let cpu_before: HashMap<u32, Option<u64>> = first.shards.iter().map(|s| (s.shard, s.cpu_ms)).collect();
        let shards = second
            .shards
            .iter()
            .map(|s| {
                let cpu_percent = match (cpu_before.get(&s.shard).copied().flatten(), s.cpu_ms) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / (seconds * 10.0)),
                    _ => None,
                };
                let tasks =
                    s.tasks.iter().map(|t| task_window(t, before.get(&(t.job, t.attempt)).copied(), seconds)).collect();
                ShardWindow { shard: s.shard, core: s.core, cpu_percent, tasks }
            })
            .collect();
        DumpWindow { worker: second.worker, seconds, shards }
    }
}

/// Task `t` over a window of `seconds` that began with it as `was` (none: it
/// began within the window).
fn task_window(t: &TaskDumpEntry, was: Option<&TaskDumpEntry>, seconds: f64) -> TaskWindow {
    let (records_in, records_out, times) =
        was.map_or((0, 0, TaskTimes::default()), |w| (w.records_in, w.records_out, w.times));
    let spent = [
        t.times.busy_ms.saturating_sub(times.busy_ms),
        t.times.idle_ms.saturating_sub(times.idle_ms),
        t.times.back_pressured_ms.saturating_sub(times.back_pressured_ms),
    ];
    let all = spent.iter().fold(0u64, |a, &ms| a.saturating_add(ms));
    let share = |ms: u64| ms as f64 * 100.0 / all as f64;
    TaskWindow {
        task: t.clone(),
        records_in_per_s: t.records_in.saturating_sub(records_in) as f64 / seconds,
        records_out_per_s: t.records_out.saturating_sub(records_out) as f64 / seconds,
        shares: (all > 0).then(|| TaskShares {
            busy_percent: share(spent[0]),
            idle_percent: share(spent[1]),
            back_pressured_percent: share(spent[2]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use shardflow_control::protocol::ShardDumpEntry;
    use shardflow_control::{ExecutionState, ExecutionVertexId, VertexId};

    use super::*;

    fn task(attempt: u32, records_in: u64, busy_ms: u64, idle_ms: u64, back_pressured_ms: u64) -> TaskDumpEntry {
        TaskDumpEntry {
            job: JobId(1),
            attempt: AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(0), subtask: 0 }, attempt },
            vertex: "map".into(),
            state: ExecutionState::Running,
            records_in,
            records_out: records_in,
            times: TaskTimes { busy_ms, idle_ms, back_pressured_ms },
        }
    }

    fn dump(cpu_ms: Option<u64>, tasks: Vec<TaskDumpEntry>) -> ShardDump {
        ShardDump { worker: WorkerId(1), shards: vec![ShardDumpEntry { shard: 0, core: 3, cpu_ms, tasks }] }
    }

    fn shares(busy_percent: f64, idle_percent: f64, back_pressured_percent: f64) -> Option<TaskShares> {
        Some(TaskShares { busy_percent, idle_percent, back_pressured_percent })
    }

    #[test]
    fn a_window_gives_rates_and_shares_of_what_happened_between_two_dumps() {
        // Over 2 s: the shard's thread used 500 ms; the task took 10 000
        // records, busy 1 500 ms, idle 400, back-pressured 100.
        let first = dump(Some(1_000), vec![task(0, 5_000, 900, 50, 50)]);
        let second = dump(Some(1_500), vec![task(0, 15_000, 2_400, 450, 150), task(1, 300, 10, 0, 0)]);
        let w = DumpWindow::between(&first, &second, Duration::from_secs(2));
        let s = &w.shards[0];
        assert_eq!((w.worker, w.seconds, s.core, s.cpu_percent), (WorkerId(1), 2.0, 3, Some(25.0)));
        let t = &s.tasks[0];
        assert_eq!((t.records_in_per_s, t.records_out_per_s), (5_000.0, 5_000.0));
        assert_eq!(t.shares, shares(75.0, 20.0, 5.0));
        // Begun within the window: all it did counts.
        assert_eq!((s.tasks[1].records_in_per_s, s.tasks[1].shares), (150.0, shares(100.0, 0.0, 0.0)));
        // No CPU time known, or no time spent: nothing made up.
        let (a, b) = (dump(None, vec![task(0, 1, 5, 5, 0)]), dump(Some(9), vec![task(0, 1, 5, 5, 0)]));
        let w = DumpWindow::between(&a, &b, Duration::from_secs(1));
        assert_eq!((w.shards[0].cpu_percent, w.shards[0].tasks[0].shares), (None, None));
    }

    #[test]
    fn counts_from_elsewhere_that_go_down_or_overflow_make_no_panic() {
        let (a, b) = (dump(Some(9), vec![task(0, 100, 500, 5, 0)]), dump(Some(1), vec![task(0, 1, 5, 5, 0)]));
        let w = DumpWindow::between(&a, &b, Duration::ZERO);
        assert_eq!((w.shards[0].cpu_percent, w.shards[0].tasks[0].records_in_per_s), (Some(0.0), 0.0));
        assert_eq!(w.shards[0].tasks[0].shares, None, "no time spent");
        let huge = dump(None, vec![task(0, u64::MAX, u64::MAX, u64::MAX, u64::MAX)]);
        let w = DumpWindow::between(&dump(None, vec![]), &huge, Duration::from_secs(1));
        let s = w.shards[0].tasks[0].shares.expect("some time");
        assert!(s.busy_percent.is_finite() && s.idle_percent.is_finite(), "{s:?}");
    }
}
