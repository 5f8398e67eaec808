//! `shardflow`: the command-line tool. `shardflow bench <pipeline>` runs a benchmark
//! pipeline of `shared/BENCHMARKS.md` on the embedded engine and prints, last, one
//! machine-readable line.

#![forbid(unsafe_code)]

mod bench;
mod cpu;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// shardflow: a thread-per-core dataflow engine.
#[derive(Debug, Parser)]
#[command(name = "shardflow", version, about, long_about = None)]
struct Cli {
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHARDFLOW_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Bench(args) => bench::run(&args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
