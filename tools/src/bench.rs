//! `shardflow bench`: the benchmark pipelines P1 `exchange`, P2 `keyed-sum` and P4
//! `latency` of `shared/BENCHMARKS.md`, on the embedded engine.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardflow_engine::{Cores, Engine, IdlePolicy, JobHandle, JobResult, PlacementStrategy};

use crate::cpu::process_cpu_time;
use shardflow_engine::jobs::{exchange, keyed_sum, latency, P2_KEYS};

/// The benchmark pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Pipeline {
    /// P1: (r·GOLDEN, r) → all-to-all exchange by hash(key) → count and sum values.
    Exchange,
    /// P2: ((r·2654435761) mod 100 000, 1) → exchange by hash(key) → keyed count in
    /// keyed state → each key's final count once at end of input.
    KeyedSum,
    /// P4: source paced to --rate for --duration, records stamped with their
    /// scheduled time → map value+1 → exchange by hash(key) → latency histogram.
    Latency,
}

/// Idle policy of the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Idle {
    /// Sleep in the kernel when idle (default; no CPU while idle).
    Park,
    /// Busy-poll: lowest latency, a full core per shard.
    Spin,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Pipeline to run.
    #[arg(value_enum)]
    pipeline: Pipeline,
    /// Records (exchange, keyed-sum). Default 100 000 000. Underscores allowed.
    #[arg(long, short = 'n', value_parser = parse_count)]
    records: Option<u64>,
    /// Shards, one per core, on the first S online cores. Default: 2, or all cores if fewer.
    #[arg(long, short = 's', conflicts_with = "cores")]
    shards: Option<usize>,
    /// Explicit cores for the shards, e.g. `0,1`.
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Parallelism of every vertex. Default: the number of shards.
    #[arg(long, short = 'p')]
    parallelism: Option<u32>,
    /// Latency: total source rate in records/s. Default 200 000.
    #[arg(long, default_value_t = 200_000, value_parser = parse_count)]
    rate: u64,
    /// Latency: how long the source runs, in seconds. Default 20.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Placement: spread, pack, colocate, or an explicit map `source=0,1;sink=1,0`.
    #[arg(long, default_value = "spread")]
    placement: String,
    /// What idle shards do.
    #[arg(long, value_enum, default_value_t = Idle::Park)]
    idle: Idle,
    /// Segment size in bytes (power of two, 4096..=67108864). Default 32768.
    #[arg(long)]
    segment_bytes: Option<usize>,
    /// Flush timeout for partial buffers, in ms (0 = none). Default 100.
    #[arg(long)]
    flush_timeout_ms: Option<u64>,
    /// Park mode: shortest timed wait of a source, in µs (records due sooner are
    /// emitted together). Default 100.
    #[arg(long)]
    min_park_us: Option<u64>,
    /// Print the placement table on stderr.
    #[arg(long)]
    show_placement: bool,
}

fn parse_count(s: &str) -> std::result::Result<u64, String> {
    s.replace('_', "").parse::<u64>().map_err(|e| format!("'{s}': {e}"))
}

/// Runs the pipeline; `Ok(false)` when verification failed.
pub(crate) fn run(a: &BenchArgs) -> Result<bool> {
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 86_400.0) {
        bail!("--duration {}: must be a number of seconds in (0, 86400]", a.duration);
    }
    if a.rate == 0 {
        bail!("--rate 0: must be at least 1 record/s");
    }
    let placement: PlacementStrategy = a.placement.parse().context("--placement")?;
    let cores = match (&a.cores, a.shards) {
        (Some(list), _) => Cores::List(list.clone()),
        (None, Some(n)) => Cores::Count(n),
        (None, None) => Cores::Count(shardflow_engine::online_cores().len().min(2)),
    };
    let mut builder = Engine::builder().cores(cores).idle(match a.idle {
        Idle::Park => IdlePolicy::Park,
        Idle::Spin => IdlePolicy::Spin,
    });
    if let Some(b) = a.segment_bytes {
        builder = builder.segment_bytes(b);
    }
    if let Some(us) = a.min_park_us {
        builder = builder.min_park(Duration::from_micros(us));
    }
    if let Some(ms) = a.flush_timeout_ms {
        builder = builder.flush_timeout((ms > 0).then(|| Duration::from_millis(ms)));
    }
    let t0 = Instant::now();
    let engine = builder.build()?;
    let startup_s = t0.elapsed().as_secs_f64();
    let p = a.parallelism.unwrap_or(engine.shards().len() as u32);
    let n = a.records.unwrap_or(100_000_000);
    let (job, expected_source_records) = match a.pipeline {
        Pipeline::Exchange => (exchange(n, p), n),
        Pipeline::KeyedSum => (keyed_sum(n, p), n),
        Pipeline::Latency => {
            let duration_ms = (a.duration * 1000.0).round() as u64;
            let total = (u128::from(a.rate) * u128::from(duration_ms) / 1000) as u64;
            (latency(a.rate, duration_ms, p), total)
        }
    };
    let cpu0 = process_cpu_time();
    let handle = engine.submit_with(job, placement)?;
    if a.show_placement {
        eprint!("{}", handle.placement());
    }
    let result = wait_with_progress(handle, expected_source_records)?;
    let cpu_s = match (cpu0, process_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => f64::NAN,
    };
    let wall_s = result.duration().as_secs_f64();
    let common = format!("startup_s={startup_s:.3} cpu_s={cpu_s:.2} shards={} parallelism={p}", engine.shards().len());
    let ok = match a.pipeline {
        Pipeline::Exchange => {
            let (count, sum) = result.count();
            let expect_sum = ((u128::from(n) * u128::from(n.saturating_sub(1))) / 2) as u64;
            let ok = count == n && sum == expect_sum;
            println!("count={count} sum={sum} expected_sum={expect_sum}");
            println!(
                "shardflow exchange N={n} records_per_s={:.0} wall_s={wall_s:.3} verify={} {common}",
                n as f64 / wall_s,
                verdict(ok)
            );
            ok
        }
        Pipeline::KeyedSum => {
            let (keys, total) = result.count();
            let ok = keys == n.min(P2_KEYS) && total == n;
            println!("keys={keys} sum_of_counts={total}");
            println!(
                "shardflow keyed-sum N={n} records_per_s={:.0} wall_s={wall_s:.3} verify={} {common}",
                n as f64 / wall_s,
                verdict(ok)
            );
            ok
        }
        Pipeline::Latency => {
            let hist = result.latency().context("the latency sink reported no histogram")?;
            let received = hist.len();
            let ok = received == expected_source_records;
            let us = |v: u64| v as f64 / 1000.0;
            println!("received={received} expected={expected_source_records} mean_us={:.1}", hist.mean() / 1000.0);
            println!(
                "shardflow latency N={received} records_per_s={:.0} wall_s={wall_s:.3} verify={} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} rate={} duration_s={} idle={} {common}",
                received as f64 / wall_s,
                verdict(ok),
                us(hist.value_at_quantile(0.5)),
                us(hist.value_at_quantile(0.99)),
                us(hist.value_at_quantile(0.999)),
                us(hist.max()),
                a.rate,
                a.duration,
                if a.idle == Idle::Spin { "spin" } else { "park" },
            );
            ok
        }
    };
    engine.shutdown();
    Ok(ok)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "FAIL"
    }
}

/// Waits for the job, showing a progress bar on stderr once it has run a second.
fn wait_with_progress(handle: JobHandle, expected: u64) -> Result<JobResult> {
    let start = Instant::now();
    let bar = ProgressBar::with_draw_target(Some(expected), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} source records ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_draw_target(ProgressDrawTarget::hidden());
    loop {
        match handle.wait_timeout(Duration::from_millis(100)) {
            Err(shardflow_engine::EngineError::Timeout(_)) => {
                if start.elapsed() >= Duration::from_secs(1) && bar.is_hidden() {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                }
                bar.set_position(handle.source_records());
            }
            other => {
                bar.finish_and_clear();
                return Ok(other?);
            }
        }
    }
}
