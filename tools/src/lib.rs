//! `shardflow`: the command-line tool, as a library. `shardflow bench <pipeline>`
//! runs a benchmark pipeline (defined in `docs/benchmarks.md`) on the embedded
//! engine and prints, last, one machine-readable line; the other commands run and
//! drive a cluster.
//!
//! A user ships their own jobs the way a Flink user ships a jar: a binary of
//! their own registers them in a [`JobCatalog`] and hands it to [`main_with`],
//! which is the whole CLI (coordinator, worker, submit, …) running those jobs:
//!
//! ```no_run
//! use shardflow_engine::{Dataflow, JobCatalog};
//!
//! fn main() -> std::process::ExitCode {
//!     let mut jobs = JobCatalog::new();
//!     jobs.register("doubled", "numbers 0..n doubled and counted; n=N", |p| {
//!         let df = Dataflow::new("doubled").parallelism(p.parallelism());
//!         df.generate("numbers", p.u64_or("n", 1000)?, |r| r).map(|r: &u64| r * 2).count();
//!         df.build()
//!     });
//!     shardflow_tools::main_with(jobs)
//! }
//! ```

#![forbid(unsafe_code)]

mod bench;
mod cluster;
mod snapshot;

use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{Parser, Subcommand};
pub use shardflow_engine::JobCatalog;

/// The named jobs this process runs and submits.
static JOBS: OnceLock<JobCatalog> = OnceLock::new();

/// The catalog [`main_with`] was given.
pub(crate) fn jobs() -> &'static JobCatalog {
    JOBS.get_or_init(JobCatalog::new)
}

/// Exit statuses, for scripts (also in `--help` and README).
const EXIT_STATUSES: &str = "\
Exit status:
  0    done (a wait was met; a bench verified)
  1    a bench failed verification, or the job waited for failed or was cancelled
  2    bad input or an error (the reason is printed on stderr)
  3    a wait timed out (the job is still running or restarting)
  130  interrupted (Ctrl-C): a bench cancels its job and prints what was done";

/// shardflow: a thread-per-core dataflow engine.
#[derive(Debug, Parser)]
#[command(name = "shardflow", version, about, long_about = None, after_help = EXIT_STATUSES)]
struct Cli {
    /// Config file (TOML) with `[coordinator]`, `[worker]`, `[client]`, `[submit]`, `[ha]` and
    /// `[security]` tables; default `$SHARDFLOW_CONFIG`. Flags override it.
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
    /// time during the job. The config file's `[worker]` table sets the engine
    /// (cores, slots, memory, idle policy); flags win.
    #[command(after_help = EXIT_STATUSES)]
    Bench(bench::BenchArgs),
    /// Run a coordinator (Dispatcher, ResourceManager, JobMasters) until stopped.
    ///
    /// SIGTERM or Ctrl-C stops it cleanly: a leader of a highly available
    /// cluster resigns first (a standby leads at once), every connection is
    /// closed, and the exit status is 0.
    Coordinator(cluster::CoordinatorArgs),
    /// Run a worker (TaskExecutor) with one shard per core until stopped.
    ///
    /// SIGTERM or Ctrl-C stops it cleanly: it tells its coordinator it leaves
    /// (whose jobs then fail over at once), cancels its tasks, closing every
    /// operator, and exits with status 0.
    Worker(cluster::WorkerArgs),
    /// Submit a named job to the cluster.
    #[command(after_help = EXIT_STATUSES)]
    Submit(cluster::SubmitArgs),
    /// List the cluster's jobs.
    List(cluster::ListArgs),
    /// Show a job: status and, per subtask, state, place and sink results.
    #[command(after_help = EXIT_STATUSES)]
    Status(cluster::StatusArgs),
    /// Cancel a running job.
    Cancel(cluster::CancelArgs),
    /// Show the cluster: workers, slots, free slots, utilization.
    #[command(after_help = EXIT_STATUSES)]
    Cluster(cluster::ClusterArgs),
    /// Show what a worker runs, shard by shard (core, tasks and their states).
    Dump(cluster::DumpArgs),
    /// Make a test CA and a certificate it signed, for a cluster's TLS
    /// (`--tls-cert node.pem --tls-key node.key --tls-ca ca.pem`).
    MakeCerts(cluster::MakeCertsArgs),
    /// Show what a job snapshot file holds, operator by operator: key groups,
    /// keyed states and their entries, keys with pending timers, operator lists
    /// (a source's position among them).
    Snapshot(snapshot::SnapshotArgs),
}

/// How a command ended, as its exit status tells a script ([`EXIT_STATUSES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Done; a wait was met.
    Done,
    /// Verification failed, or the job failed or was cancelled.
    Failed,
    /// A wait timed out.
    TimedOut,
    /// Interrupted by Ctrl-C.
    Interrupted,
}

/// The whole `shardflow` CLI, running and submitting the named jobs of `jobs`
/// (the shipped binary passes the benchmark pipelines,
/// `shardflow_engine::jobs::catalog()`).
pub fn main_with(jobs: JobCatalog) -> ExitCode {
    let _ = JOBS.set(jobs);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHARDFLOW_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colours for people at a terminal, plain text for files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let outcome = cluster::ConfigFile::load(cli.config.as_deref()).and_then(|cfg| match cli.command {
        Command::Bench(args) => bench::run(&args, &cfg),
        Command::Coordinator(a) => cluster::coordinator(&a, &cfg),
        Command::Worker(a) => cluster::worker(&a, &cfg),
        Command::Submit(a) => cluster::submit(&a, &cfg),
        Command::List(a) => cluster::list(&a, &cfg),
        Command::Status(a) => cluster::status(&a, &cfg),
        Command::Cancel(a) => cluster::cancel(&a, &cfg),
        Command::Cluster(a) => cluster::cluster(&a, &cfg),
        Command::Dump(a) => cluster::dump(&a, &cfg),
        Command::MakeCerts(a) => cluster::make_certs(&a),
        Command::Snapshot(a) => snapshot::show(&a),
    });
    match outcome {
        Ok(Exit::Done) => ExitCode::SUCCESS,
        Ok(Exit::Failed) => ExitCode::from(1),
        Ok(Exit::TimedOut) => ExitCode::from(3),
        Ok(Exit::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
