//! `shardflow`: the command-line tool. `shardflow bench <pipeline>` runs a benchmark
//! pipeline of `shared/BENCHMARKS.md` on the embedded engine and prints, last, one
//! machine-readable line.

#![forbid(unsafe_code)]

mod bench;
mod cluster;
mod cpu;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shardflow: a thread-per-core dataflow engine.
#[derive(Debug, Parser)]
#[command(name = "shardflow", version, about, long_about = None)]
struct Cli {
    /// Config file (TOML) with `[coordinator]`, `[worker]`, `[client]` and `[submit]` tables;
    /// default `$SHARDFLOW_CONFIG`. Flags override it.
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a benchmark pipeline on the embedded engine.
    ///
    /// The last line of stdout is machine-readable:
    /// `shardflow <pipeline> N=<records> records_per_s=<float> wall_s=<float> verify=OK|FAIL [key=value ...]`.
    /// wall_s runs from job submission to job completion; engine start-up is
    /// reported separately as startup_s, and cpu_s is the process's user+system CPU
    /// time during the job. Exit status 1 if verification fails, 2 on bad input.
    Bench(bench::BenchArgs),
    /// Run a coordinator (Dispatcher, ResourceManager, JobMasters) until killed.
    Coordinator(cluster::CoordinatorArgs),
    /// Run a worker (TaskExecutor) with one shard per core until killed.
    Worker(cluster::WorkerArgs),
    /// Submit a named job to the cluster.
    Submit(cluster::SubmitArgs),
    /// List the cluster's jobs.
    List(cluster::ListArgs),
    /// Show a job: status and, per subtask, state, worker, shard and core.
    Status(cluster::StatusArgs),
    /// Cancel a job.
    Cancel(cluster::CancelArgs),
    /// Show the cluster: workers, slots, free slots, utilization.
    Cluster(cluster::ClusterArgs),
    /// Show what a worker runs, shard by shard (core, tasks and their states).
    Dump(cluster::DumpArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHARDFLOW_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colours for people at a terminal, plain text for files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let outcome = cluster::ConfigFile::load(cli.config.as_deref()).and_then(|cfg| match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::Coordinator(a) => cluster::coordinator(&a, &cfg).map(|()| true),
        Command::Worker(a) => cluster::worker(&a, &cfg).map(|()| true),
        Command::Submit(a) => cluster::submit(&a, &cfg),
        Command::List(a) => cluster::list(&a, &cfg).map(|()| true),
        Command::Status(a) => cluster::status(&a, &cfg).map(|()| true),
        Command::Cancel(a) => cluster::cancel(&a, &cfg).map(|()| true),
        Command::Cluster(a) => cluster::cluster(&a, &cfg),
        Command::Dump(a) => cluster::dump(&a, &cfg).map(|()| true),
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
