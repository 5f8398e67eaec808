//! `shardflow dump`: a worker's shards and their tasks (our thread dump) —
//! what each has done so far, or, with `--over-s`, what each did over a
//! window between two dumps: a core's CPU share, a task's records per second
//! and the shares of its time it was busy, idle and back-pressured (as
//! Flink's task metrics give them per second).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use shardflow_engine::protocol::{ShardDump, TaskDumpEntry, TaskTimes};
use shardflow_engine::{AttemptId, JobId, WorkerId};

use super::client::times_cells;
use super::{ClientArgs, ConfigFile};
use crate::Exit;

/// `shardflow dump`.
#[derive(Debug, Args)]
pub(crate) struct DumpArgs {
    /// The worker: `worker-1`, `1`, or the resource id it registered with.
    worker: String,
    /// Seconds to wait for its answer at most.
    #[arg(long, default_value_t = 10)]
    timeout_s: u64,
    /// Dump twice, this many seconds apart (up to 3600), and show what
    /// happened between: each shard's CPU share, each task's records per
    /// second and how much of its time it was busy, idle and back-pressured.
    #[arg(long, value_name = "SECONDS")]
    over_s: Option<f64>,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn dump(a: &DumpArgs, cfg: &ConfigFile) -> Result<Exit> {
    let over = match a.over_s {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => bail!("--over-s {s}: give a number of seconds above 0 and at most 3600"),
    };
    let mut connection = a.client.connect(cfg)?;
    let client = connection.client();
    let digits = a.worker.strip_prefix("worker-").unwrap_or(&a.worker);
    let worker = match digits.parse() {
        Ok(n) => WorkerId(n),
        Err(_) => client
            .workers()?
            .iter()
            .find(|w| w.resource_id == a.worker)
            .map(|w| w.worker)
            .with_context(|| format!("no worker '{}' (give worker-N, N or a resource id)", a.worker))?,
    };
    let timeout = Duration::from_secs(a.timeout_s);
    let first = client.shard_dump(worker, timeout)?;
    let Some(over) = over else {
        print_totals(&first, a.client.json);
        return Ok(Exit::Done);
    };
    let start = Instant::now();
    std::thread::sleep(over);
    let second = client.shard_dump(worker, timeout)?;
    let window = Window::between(&first, &second, start.elapsed());
    print_window(&window, a.client.json);
    Ok(Exit::Done)
}

/// A task of a worker's dump, for `--json`.
fn task_json(t: &TaskDumpEntry) -> serde_json::Value {
    json!({"job": t.job.to_string(), "attempt": t.attempt.to_string(), "vertex": t.vertex,
           "state": t.state.to_string(), "records_in": t.records_in, "records_out": t.records_out,
           "busy_ms": t.times.busy_ms, "idle_ms": t.times.idle_ms,
           "back_pressured_ms": t.times.back_pressured_ms})
}

/// What each shard and task has done so far.
fn print_totals(d: &ShardDump, as_json: bool) {
    if as_json {
        let shards: Vec<_> = d
            .shards
            .iter()
            .map(|s| {
                let tasks: Vec<_> = s.tasks.iter().map(task_json).collect();
                json!({"shard": s.shard, "core": s.core, "cpu_ms": s.cpu_ms, "tasks": tasks})
            })
            .collect();
        println!("{}", json!({"worker": d.worker.to_string(), "shards": shards}));
        return;
    }
    println!("{}", d.worker);
    print_header("CPU S", ["RECORDS IN", "RECORDS OUT", "BUSY MS", "IDLE MS", "BACKPR MS"]);
    for s in &d.shards {
        let cpu = s.cpu_ms.map_or_else(|| "-".to_string(), |ms| format!("{:.2}", ms as f64 / 1e3));
        print_shard(
            s.shard,
            s.core,
            &cpu,
            s.tasks.iter().map(|t| {
                let [busy, idle, back_pressured] = times_cells(Some(t.times));
                (t, [t.records_in.to_string(), t.records_out.to_string(), busy, idle, back_pressured])
            }),
        );
    }
}

/// A task's job, attempt, vertex and state, as the tables show them.
fn task_cells(t: &TaskDumpEntry) -> [String; 4] {
    [t.job.to_string(), t.attempt.to_string(), t.vertex.clone(), t.state.to_string()]
}

/// One row of either table.
fn print_row(shard: &str, core: &str, cpu: &str, task: [String; 4], numbers: [String; 5]) {
    let [job, attempt, vertex, state] = task;
    let [a, b, c, d, e] = numbers;
    println!("{shard:<6} {core:>4} {cpu:>9}  {job:<8} {attempt:<12} {vertex:<16} {state:<12} {a:>14} {b:>14} {c:>10} {d:>10} {e:>10}");
}

/// The header of either table: its CPU column's name and its numbers'.
fn print_header(cpu: &str, numbers: [&str; 5]) {
    let task = ["JOB", "ATTEMPT", "VERTEX", "STATE"].map(String::from);
    print_row("SHARD", "CORE", cpu, task, numbers.map(String::from));
}

/// A shard's rows: one per task with its numbers, or a dash for none.
fn print_shard<'a>(
    shard: u32,
    core: u32,
    cpu: &str,
    tasks: impl ExactSizeIterator<Item = (&'a TaskDumpEntry, [String; 5])>,
) {
    if tasks.len() == 0 {
        println!("{shard:<6} {core:>4} {cpu:>9}  -");
    }
    for (t, numbers) in tasks {
        print_row(&shard.to_string(), &core.to_string(), cpu, task_cells(t), numbers);
    }
}

/// What a worker's shards and tasks did between two dumps.
struct Window {
    worker: WorkerId,
    seconds: f64,
    shards: Vec<ShardWindow>,
}

struct ShardWindow {
    shard: u32,
    core: u32,
    /// Its thread's CPU time over the window, per cent of the window.
    cpu_percent: Option<f64>,
    tasks: Vec<TaskWindow>,
}

struct TaskWindow {
    task: TaskDumpEntry,
    records_in_per_s: f64,
    records_out_per_s: f64,
    /// Busy, idle and back-pressured, per cent of its time in the window;
    /// none if it had none (it ended as the window began).
    shares: Option<[f64; 3]>,
}

impl Window {
    /// From `first` to `second`, `elapsed` apart. A task not in `first` began
    /// within the window: all it did counts.
    fn between(first: &ShardDump, second: &ShardDump, elapsed: Duration) -> Window {
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
                let tasks = s
                    .tasks
                    .iter()
                    .map(|t| {
                        let was = before.get(&(t.job, t.attempt));
                        let (records_in, records_out, times) =
                            was.map_or((0, 0, TaskTimes::default()), |w| (w.records_in, w.records_out, w.times));
                        let spent = [
                            t.times.busy_ms.saturating_sub(times.busy_ms),
                            t.times.idle_ms.saturating_sub(times.idle_ms),
                            t.times.back_pressured_ms.saturating_sub(times.back_pressured_ms),
                        ];
                        let all: u64 = spent.iter().sum();
                        TaskWindow {
                            task: t.clone(),
                            records_in_per_s: t.records_in.saturating_sub(records_in) as f64 / seconds,
                            records_out_per_s: t.records_out.saturating_sub(records_out) as f64 / seconds,
                            shares: (all > 0).then(|| spent.map(|ms| ms as f64 * 100.0 / all as f64)),
                        }
                    })
                    .collect();
                ShardWindow { shard: s.shard, core: s.core, cpu_percent, tasks }
            })
            .collect();
        Window { worker: second.worker, seconds, shards }
    }
}

/// What each shard and task did over the window.
fn print_window(w: &Window, as_json: bool) {
    if as_json {
        let shards: Vec<_> = w
            .shards
            .iter()
            .map(|s| {
                let tasks: Vec<_> = s
                    .tasks
                    .iter()
                    .map(|t| {
                        let share = |k: usize| t.shares.map(|p| p[k]);
                        json!({"job": t.task.job.to_string(), "attempt": t.task.attempt.to_string(),
                               "vertex": t.task.vertex, "state": t.task.state.to_string(),
                               "records_in_per_s": t.records_in_per_s, "records_out_per_s": t.records_out_per_s,
                               "busy_percent": share(0), "idle_percent": share(1),
                               "back_pressured_percent": share(2)})
                    })
                    .collect();
                json!({"shard": s.shard, "core": s.core, "cpu_percent": s.cpu_percent, "tasks": tasks})
            })
            .collect();
        println!("{}", json!({"worker": w.worker.to_string(), "over_s": w.seconds, "shards": shards}));
        return;
    }
    println!("{} over {:.2} s", w.worker, w.seconds);
    print_header("CPU %", ["RECORDS IN/S", "RECORDS OUT/S", "BUSY %", "IDLE %", "BACKPR %"]);
    for s in &w.shards {
        let cpu = s.cpu_percent.map_or_else(|| "-".to_string(), |p| format!("{p:.0}"));
        print_shard(
            s.shard,
            s.core,
            &cpu,
            s.tasks.iter().map(|t| {
                let [busy, idle, back_pressured] =
                    t.shares.map_or_else(|| ["-"; 3].map(String::from), |p| p.map(|x| format!("{x:.0}")));
                let rate = |r: f64| format!("{r:.0}");
                (&t.task, [rate(t.records_in_per_s), rate(t.records_out_per_s), busy, idle, back_pressured])
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use shardflow_engine::protocol::ShardDumpEntry;
    use shardflow_engine::{ExecutionState, ExecutionVertexId, VertexId};

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

    #[test]
    fn a_window_gives_rates_and_shares_of_what_happened_between_two_dumps() {
        // Over 2 s: the shard's thread used 500 ms; the task took 10 000
        // records, busy 1 500 ms, idle 400, back-pressured 100.
        let first = dump(Some(1_000), vec![task(0, 5_000, 900, 50, 50)]);
        let second = dump(Some(1_500), vec![task(0, 15_000, 2_400, 450, 150), task(1, 300, 10, 0, 0)]);
        let w = Window::between(&first, &second, Duration::from_secs(2));
        let s = &w.shards[0];
        assert_eq!((s.core, s.cpu_percent), (3, Some(25.0)));
        let t = &s.tasks[0];
        assert_eq!((t.records_in_per_s, t.records_out_per_s), (5_000.0, 5_000.0));
        assert_eq!(t.shares, Some([75.0, 20.0, 5.0]));
        // Begun within the window: all it did counts.
        assert_eq!((s.tasks[1].records_in_per_s, s.tasks[1].shares), (150.0, Some([100.0, 0.0, 0.0])));
        // No CPU time known, or no time spent: nothing made up.
        let w = Window::between(
            &dump(None, vec![task(0, 1, 5, 5, 0)]),
            &dump(Some(9), vec![task(0, 1, 5, 5, 0)]),
            Duration::from_secs(1),
        );
        assert_eq!((w.shards[0].cpu_percent, w.shards[0].tasks[0].shares), (None, None));
    }
}
