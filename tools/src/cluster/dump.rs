//! `shardflow dump`: a worker's shards and their tasks (our thread dump) —
//! what each has done so far, or, with `--over-s`, what each did over a
//! window between two dumps ([`DumpWindow`]): a core's CPU share, a task's
//! records per second and the shares of its time it was busy, idle and
//! back-pressured (as Flink's task metrics give them per second).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use shardflow_engine::protocol::{ShardDump, TaskDumpEntry};
use shardflow_engine::{DumpWindow, TaskShares, WorkerId};

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
    let window = DumpWindow::between(&first, &second, start.elapsed());
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

/// What each shard and task did over the window.
fn print_window(w: &DumpWindow, as_json: bool) {
    if as_json {
        let shards: Vec<_> = w
            .shards
            .iter()
            .map(|s| {
                let tasks: Vec<_> = s
                    .tasks
                    .iter()
                    .map(|t| {
                        let share = |f: fn(&TaskShares) -> f64| t.shares.as_ref().map(f);
                        json!({"job": t.task.job.to_string(), "attempt": t.task.attempt.to_string(),
                               "vertex": t.task.vertex, "state": t.task.state.to_string(),
                               "records_in_per_s": t.records_in_per_s, "records_out_per_s": t.records_out_per_s,
                               "busy_percent": share(|s| s.busy_percent),
                               "idle_percent": share(|s| s.idle_percent),
                               "back_pressured_percent": share(|s| s.back_pressured_percent)})
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
                let [busy, idle, back_pressured] = t.shares.map_or_else(
                    || ["-"; 3].map(String::from),
                    |s| [s.busy_percent, s.idle_percent, s.back_pressured_percent].map(|x| format!("{x:.0}")),
                );
                let rate = |r: f64| format!("{r:.0}");
                (&t.task, [rate(t.records_in_per_s), rate(t.records_out_per_s), busy, idle, back_pressured])
            }),
        );
    }
}
