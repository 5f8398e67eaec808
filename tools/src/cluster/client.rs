//! The client commands: submit, list, status, cancel, cluster (dump: `dump.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use shardflow_engine::protocol::{JobDetails, SubtaskDetails, SubtaskProgress, TaskTimes, WaitCondition};
use shardflow_engine::{ExecutionPlan, ExecutionState, JobStatus};

use super::access::Connection;
use super::{parse_job_id, ClientArgs, ConfigFile, FOLLOW_LEADER};
use crate::Exit;

/// When `submit` or `status` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WaitArg {
    /// Until every subtask runs.
    Running,
    /// Until the job ends.
    Finished,
}

impl WaitArg {
    fn condition(self) -> WaitCondition {
        match self {
            WaitArg::Running => WaitCondition::AllRunning,
            WaitArg::Finished => WaitCondition::Terminal,
        }
    }

    /// How a wait that returned `d` ended: met, failed (the job failed or was
    /// cancelled), or timed out (said on stderr).
    fn outcome(self, d: &JobDetails, timeout_s: u64) -> Exit {
        let all_running =
            d.subtasks.iter().all(|s| matches!(s.state, ExecutionState::Running | ExecutionState::Finished));
        match d.status {
            JobStatus::Finished => Exit::Done,
            JobStatus::Failed | JobStatus::Canceled => Exit::Failed,
            JobStatus::Running if self == WaitArg::Running && all_running => Exit::Done,
            status => {
                let what = if self == WaitArg::Running { "run" } else { "end" };
                eprintln!("timed out after {timeout_s} s waiting for {} to {what}: it is {status}", d.job);
                Exit::TimedOut
            }
        }
    }
}

/// `shardflow submit`.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// A named job (see `--list-jobs`).
    job: Option<String>,
    /// Job parameter `key=value`, repeatable.
    #[arg(long = "param", value_name = "K=V")]
    params: Vec<String>,
    /// Parallelism of every vertex. Default: the config file's `[submit]
    /// parallelism`, else 2.
    #[arg(long, short = 'p')]
    parallelism: Option<u32>,
    /// spread, pack, colocate, `vertex=cores;...`, or a file holding the latter.
    /// Default: the config file's, else the job's core hints if it has some
    /// (hinted vertices on their cores, the others on the least loaded of the
    /// workers' cores), else the cluster's (colocate).
    #[arg(long)]
    placement: Option<String>,
    /// Restart strategy. Default: the config file's, else the cluster's.
    #[arg(long)]
    restart: Option<String>,
    /// Wait until the job runs or ends, and print its status.
    #[arg(long, value_enum)]
    wait: Option<WaitArg>,
    /// Seconds to wait at most. Default: the config file's, else 300.
    #[arg(long)]
    timeout_s: Option<u64>,
    /// List the named jobs and their parameters.
    #[arg(long)]
    list_jobs: bool,
    /// Print the job's execution plan (its vertices, the operators chained
    /// into each, the edges between them) instead of submitting it.
    #[arg(long)]
    plan: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn submit(a: &SubmitArgs, cfg: &ConfigFile) -> Result<Exit> {
    if a.list_jobs {
        if a.client.json {
            let jobs: Vec<_> =
                crate::jobs().jobs().map(|(name, help)| json!({"name": name, "parameters": help})).collect();
            println!("{}", serde_json::Value::Array(jobs));
        } else {
            for (name, help) in crate::jobs().jobs() {
                println!("{name:<14} {help}");
            }
        }
        return Ok(Exit::Done);
    }
    let name = a.job.as_deref().context("name a job to submit (see --list-jobs)")?;
    let mut params = BTreeMap::new();
    for p in &a.params {
        let (k, v) = p.split_once('=').with_context(|| format!("--param '{p}' is not key=value"))?;
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        if let Some(first) = params.get(&k) {
            bail!("--param {k} is given twice ({k}={first} and {k}={v}): give it once");
        }
        params.insert(k, v);
    }
    let defaults = &cfg.submit;
    let job = crate::jobs().build(name, &params, a.parallelism.or(defaults.parallelism).unwrap_or(2))?;
    if a.plan {
        let plan = job.execution_plan();
        if a.client.json {
            println!("{}", plan_json(plan));
        } else {
            print!("{plan}");
        }
        return Ok(Exit::Done);
    }
    let placement = match a.placement.as_ref().or(defaults.placement.as_ref()) {
        Some(p) if Path::new(p).is_file() => {
            std::fs::read_to_string(p).with_context(|| format!("reading placement file {p}"))?.trim().to_string()
        }
        Some(p) => p.clone(),
        None => String::new(),
    };
    let mut client = a.client.connect(cfg)?;
    // Without a placement asked for, the job's own core hints place it, over
    // the cores the cluster's workers run shards on.
    let placement = match placement.is_empty() && !job.core_hints().is_empty() {
        true => {
            let workers = client.following(FOLLOW_LEADER, |c, _| c.workers())?;
            let shards: Vec<(usize, u32)> = workers
                .iter()
                .flat_map(|w| w.resources.cores.iter().map(|&c| (c as usize, w.resources.slots_per_shard)))
                .collect();
            // With no worker yet the hints would be dropped for the default:
            // say so instead.
            let Some(hinted) = job.hinted_placement(&shards) else {
                let hinted: Vec<&str> = job.core_hints().keys().map(String::as_str).collect();
                bail!(
                    "job '{name}' has core hints ({}) but no worker has registered to place it over: start the \
                     workers first (`shardflow cluster --wait-workers N` waits for them), or give --placement",
                    hinted.join(", ")
                );
            };
            hinted.to_string()
        }
        false => placement,
    };
    let restart = a.restart.as_deref().or(defaults.restart.as_deref()).unwrap_or("");
    let id = client.once(|c| c.submit(job.graph().clone(), &placement, restart))?;
    let Some(wait) = a.wait else {
        // A job that found too few free slots waits for them, CREATED: say so.
        // The job is submitted whatever this asking says.
        let status = client.following(FOLLOW_LEADER, |c, _| c.job(id)).ok().map(|d| d.status);
        if a.client.json {
            println!("{}", json!({ "job": id.to_string(), "status": status.map(|s| s.to_string()) }));
        } else if status == Some(JobStatus::Created) {
            println!("submitted {id}: CREATED, waiting for free slots");
        } else {
            println!("submitted {id}");
        }
        return Ok(Exit::Done);
    };
    let timeout_s = a.timeout_s.or(defaults.timeout_s).unwrap_or(300);
    // The job is kept by every leader: a wait follows a change of leader.
    let d = client.following(Duration::from_secs(timeout_s), |c, left| c.wait(id, wait.condition(), left))?;
    print_details(&d, &progress(&mut client, &d), a.client.json);
    Ok(wait.outcome(&d, timeout_s))
}

/// An execution plan as JSON: the job, its vertices (each with its chain's
/// operators) and its edges, vertices named by index.
fn plan_json(plan: &ExecutionPlan) -> serde_json::Value {
    let vertices: Vec<_> = plan
        .vertices
        .iter()
        .map(|v| {
            let operators: Vec<_> = v
                .operators
                .iter()
                .map(|o| {
                    json!({"name": o.name, "kind": o.kind, "chained_after": o.chained_after,
                           "keyed_state": o.keyed_state, "operator_state": o.operator_state, "sink": o.sink})
                })
                .collect();
            json!({"name": v.name, "parallelism": v.parallelism, "slot_sharing_group": v.slot_sharing_group,
                   "cores": v.cores, "chain": v.chain(), "operators": operators})
        })
        .collect();
    let edges: Vec<_> = plan
        .edges
        .iter()
        .map(|e| {
            json!({"from": e.from, "from_operator": e.from_operator, "to": e.to,
                   "partitioner": format!("{:?}", e.partitioner), "format": e.format.to_string()})
        })
        .collect();
    json!({"job": plan.job, "max_parallelism": plan.max_parallelism, "vertices": vertices, "edges": edges})
}

/// `shardflow list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn list(a: &ListArgs, cfg: &ConfigFile) -> Result<Exit> {
    let jobs = a.client.connect(cfg)?.following(FOLLOW_LEADER, |c, _| c.list())?;
    if a.client.json {
        let v: Vec<_> = jobs
            .iter()
            .map(|j| {
                json!({"job": j.job.to_string(), "name": j.name, "status": j.status.to_string(),
                       "subtasks": j.subtasks, "running": j.running, "finished": j.finished, "restarts": j.restarts})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(Exit::Done);
    }
    println!(
        "{:<8} {:<16} {:<12} {:>8} {:>8} {:>8} {:>8}",
        "JOB", "NAME", "STATUS", "SUBTASKS", "RUNNING", "FINISHED", "RESTARTS"
    );
    for j in jobs {
        println!(
            "{:<8} {:<16} {:<12} {:>8} {:>8} {:>8} {:>8}",
            j.job.to_string(),
            j.name,
            j.status.to_string(),
            j.subtasks,
            j.running,
            j.finished,
            j.restarts
        );
    }
    Ok(Exit::Done)
}

/// `shardflow status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The job (`job-3` or `3`).
    job: String,
    /// Wait until the job runs or ends first.
    #[arg(long, value_enum)]
    wait: Option<WaitArg>,
    /// Seconds to wait at most.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Print the job's execution plan first (its vertices, the operators
    /// chained into each, the edges), built again from this binary's jobs as
    /// a worker builds it; with --json, as `{"plan": …, "status": …}`.
    #[arg(long)]
    plan: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn status(a: &StatusArgs, cfg: &ConfigFile) -> Result<Exit> {
    let id = parse_job_id(&a.job)?;
    let mut client = a.client.connect(cfg)?;
    let plan = match a.plan {
        true => {
            let graph = client.following(FOLLOW_LEADER, |c, _| c.job_graph(id))?;
            let job = crate::jobs().rebuild(&graph).with_context(|| format!("the plan of {id}"))?;
            Some(job.execution_plan().clone())
        }
        false => None,
    };
    let (d, exit) = match a.wait {
        None => (client.following(FOLLOW_LEADER, |c, _| c.job(id))?, Exit::Done),
        Some(wait) => {
            let d = client.following(Duration::from_secs(a.timeout_s), |c, left| c.wait(id, wait.condition(), left))?;
            let exit = wait.outcome(&d, a.timeout_s);
            (d, exit)
        }
    };
    let progress = progress(&mut client, &d);
    match plan {
        Some(plan) if a.client.json => {
            println!("{}", json!({"plan": plan_json(&plan), "status": details_json(&d, &progress)}));
        }
        Some(plan) => {
            print!("{plan}");
            print_details(&d, &progress, false);
        }
        None => print_details(&d, &progress, a.client.json),
    }
    Ok(exit)
}

/// A subtask's sink results as JSON: records, value sum and, for latency
/// sinks, percentiles in µs.
fn sinks_json(s: &SubtaskDetails) -> serde_json::Value {
    let sinks: Vec<_> = s
        .result
        .iter()
        .flat_map(|r| r.sinks.iter())
        .map(|x| {
            let latency = x.latency_ns.map(|[p50, p99, p999, max]| {
                let us = |ns: u64| ns as f64 / 1000.0;
                json!({"p50_us": us(p50), "p99_us": us(p99), "p999_us": us(p999), "max_us": us(max)})
            });
            json!({"records": x.records, "value_sum": x.value_sum, "latency": latency})
        })
        .collect();
    serde_json::Value::Array(sinks)
}

/// A subtask's sink results for a table cell: `records sum=…` or
/// `records p50=…us p99=…us`.
fn sinks_cell(s: &SubtaskDetails) -> String {
    let Some(r) = s.result.as_ref().filter(|r| !r.sinks.is_empty()) else { return "-".into() };
    let cells: Vec<String> = r
        .sinks
        .iter()
        .map(|x| match x.latency_ns {
            Some([p50, p99, ..]) => {
                format!("{} p50={:.1}us p99={:.1}us", x.records, p50 as f64 / 1e3, p99 as f64 / 1e3)
            }
            None => format!("{} sum={}", x.records, x.value_sum),
        })
        .collect();
    cells.join("; ")
}

/// The record counts of a job that has not ended, subtask by subtask (an
/// ended one's are its results); none if the asking fails: the details print
/// without them.
fn progress(client: &mut Connection, d: &JobDetails) -> Vec<SubtaskProgress> {
    if d.status.is_globally_terminal() {
        return Vec::new();
    }
    client.following(FOLLOW_LEADER, |c, _| c.job_progress(d.job)).map(|p| p.subtasks).unwrap_or_default()
}

/// A subtask's records in and out and where its time went so far: its
/// progress while it runs, its result once finished.
fn counts(s: &SubtaskDetails, progress: &[SubtaskProgress]) -> Option<(u64, u64, TaskTimes)> {
    progress
        .iter()
        .find(|p| p.vertex == s.vertex && p.subtask == s.subtask && p.attempt == s.attempt)
        .map(|p| (p.records_in, p.records_out, p.times))
        .or_else(|| s.result.as_ref().map(|r| (r.records_in, r.records_out, r.times)))
}

/// A task's times as the columns `BUSY MS`, `IDLE MS`, `BACKPR MS` show them.
pub(super) fn times_cells(t: Option<TaskTimes>) -> [String; 3] {
    t.map_or_else(|| ["-"; 3].map(String::from), |t| [t.busy_ms, t.idle_ms, t.back_pressured_ms].map(|n| n.to_string()))
}

/// A job's details and its subtasks' counts as JSON.
fn details_json(d: &JobDetails, progress: &[SubtaskProgress]) -> serde_json::Value {
    let records = |s: &SubtaskDetails| s.result.as_ref().map(|r| r.sinks.iter().map(|x| x.records).sum::<u64>());
    let value_sum =
        |s: &SubtaskDetails| s.result.as_ref().map(|r| r.sinks.iter().fold(0u64, |a, x| a.wrapping_add(x.value_sum)));
    let subtasks: Vec<_> = d
        .subtasks
        .iter()
        .map(|s| {
            let counts = counts(s, progress);
            json!({"vertex": s.vertex, "subtask": s.subtask, "attempt": s.attempt, "state": s.state.to_string(),
                   "worker": s.slot.map(|x| x.worker.0), "shard": s.slot.map(|x| x.shard.0),
                   "slot": s.slot.map(|x| x.to_string()), "core": s.core,
                   "records_in": counts.map(|c| c.0),
                   "records_out": counts.map(|c| c.1),
                   "busy_ms": counts.map(|c| c.2.busy_ms),
                   "idle_ms": counts.map(|c| c.2.idle_ms),
                   "back_pressured_ms": counts.map(|c| c.2.back_pressured_ms),
                   "sink_records": records(s), "sink_value_sum": value_sum(s), "sinks": sinks_json(s),
                   "failure": s.failure})
        })
        .collect();
    json!({"job": d.job.to_string(), "name": d.name, "status": d.status.to_string(),
           "restarts": d.restarts, "failure": d.failure,
           "submit_to_running_us": d.submit_to_running_us, "subtasks": subtasks})
}

/// A job's details and its subtasks' counts: as JSON, or as a table.
fn print_details(d: &JobDetails, progress: &[SubtaskProgress], as_json: bool) {
    if as_json {
        println!("{}", details_json(d, progress));
        return;
    }
    println!("{} {} {} (restarts {})", d.job, d.name, d.status, d.restarts);
    if let Some(f) = &d.failure {
        println!("failure: {f}");
    }
    println!(
        "{:<16} {:>4} {:>4} {:<13} {:<10} {:<8} {:>4} {:>12} {:>12} {:>10} {:>10} {:>10}  SINKS",
        "VERTEX",
        "SUB",
        "ATT",
        "STATE",
        "WORKER",
        "SHARD",
        "CORE",
        "RECORDS IN",
        "RECORDS OUT",
        "BUSY MS",
        "IDLE MS",
        "BACKPR MS"
    );
    for s in &d.subtasks {
        let dash = || "-".to_string();
        let counts = counts(s, progress);
        let [records_in, records_out] =
            counts.map_or_else(|| [dash(), dash()], |(i, o, _)| [i, o].map(|n| n.to_string()));
        let [busy, idle, back_pressured] = times_cells(counts.map(|c| c.2));
        println!(
            "{:<16} {:>4} {:>4} {:<13} {:<10} {:<8} {:>4} {:>12} {:>12} {:>10} {:>10} {:>10}  {}",
            s.vertex,
            s.subtask,
            s.attempt,
            s.state.to_string(),
            s.slot.map_or_else(dash, |x| x.worker.to_string()),
            s.slot.map_or_else(dash, |x| x.shard.to_string()),
            s.core.map_or_else(dash, |c| c.to_string()),
            records_in,
            records_out,
            busy,
            idle,
            back_pressured,
            sinks_cell(s),
        );
    }
}

/// `shardflow cancel`.
#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The job (`job-3` or `3`).
    job: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn cancel(a: &CancelArgs, cfg: &ConfigFile) -> Result<Exit> {
    let id = parse_job_id(&a.job)?;
    a.client.connect(cfg)?.once(|c| c.cancel(id))?;
    if a.client.json {
        println!("{}", json!({"job": id.to_string(), "cancel": "requested"}));
    } else {
        println!("cancelling {id}");
    }
    Ok(Exit::Done)
}

/// `shardflow cluster`.
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// Wait until this many workers are registered first (and, until then, for
    /// the coordinator to listen).
    #[arg(long)]
    wait_workers: Option<u32>,
    /// Seconds to wait at most.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn cluster(a: &ClusterArgs, cfg: &ConfigFile) -> Result<Exit> {
    let (o, mut client) = match a.wait_workers {
        Some(n) => {
            // A script starts a cluster and then waits for it: the coordinator
            // may not listen yet either.
            let deadline = Instant::now() + Duration::from_secs(a.timeout_s);
            let mut client = a.client.connect_within(cfg, Duration::from_secs(a.timeout_s))?;
            let left = deadline.saturating_duration_since(Instant::now());
            (client.following(left, |c, left| c.wait_for_workers(n, left))?, client)
        }
        None => {
            let mut client = a.client.connect(cfg)?;
            (client.following(FOLLOW_LEADER, |c, _| c.overview())?, client)
        }
    };
    let workers = client.following(FOLLOW_LEADER, |c, _| c.workers())?;
    // The answering coordinator names itself: the leader.
    let leader = json!({"address": o.leader, "epoch": o.leader_epoch, "high_availability": client.leader.is_some()});
    let util = if o.total_slots == 0 {
        0.0
    } else {
        100.0 * f64::from(o.total_slots - o.free_slots) / f64::from(o.total_slots)
    };
    if a.client.json {
        let ws: Vec<_> = workers
            .iter()
            .map(|w| {
                json!({"worker": w.worker.to_string(), "resource_id": w.resource_id, "address": w.address,
                       "cores": w.resources.cores, "slots": w.slots, "free_slots": w.free_slots,
                       "last_heartbeat_ms": w.last_heartbeat_ms})
            })
            .collect();
        println!(
            "{}",
            json!({"workers": o.workers, "total_slots": o.total_slots, "free_slots": o.free_slots,
                   "utilization_pct": util, "running_jobs": o.running_jobs, "leader": leader, "worker_list": ws})
        );
    } else {
        match client.leader {
            Some(_) => println!("leader {} (epoch {})", o.leader, o.leader_epoch),
            None => println!("coordinator {}", o.leader),
        }
        println!(
            "workers {}  slots {}  free {}  utilization {util:.0}%  running jobs {}",
            o.workers, o.total_slots, o.free_slots, o.running_jobs
        );
        println!(
            "{:<10} {:<32} {:<10} {:>6} {:>6} {:>10}",
            "WORKER", "RESOURCE ID", "CORES", "SLOTS", "FREE", "HEARTBEAT"
        );
        for w in &workers {
            let cores: Vec<String> = w.resources.cores.iter().map(u32::to_string).collect();
            println!(
                "{:<10} {:<32} {:<10} {:>6} {:>6} {:>8}ms",
                w.worker.to_string(),
                w.resource_id,
                cores.join(","),
                w.slots,
                w.free_slots,
                w.last_heartbeat_ms
            );
        }
    }
    match a.wait_workers {
        Some(n) if o.workers < n => {
            eprintln!("timed out after {} s waiting for {n} workers: {} registered", a.timeout_s, o.workers);
            Ok(Exit::TimedOut)
        }
        _ => Ok(Exit::Done),
    }
}
