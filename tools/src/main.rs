//! `shardflow`: the command-line tool with the built-in benchmark jobs.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    shardflow_tools::main_with(shardflow_engine::jobs::catalog())
}
