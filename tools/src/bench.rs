//! `shardflow bench`: the benchmark pipelines P1 `exchange`, P2 `keyed-sum`, P4
//! `latency` and P8 `wordcount` (defined in `docs/benchmarks.md`), and a
//! service's `roundtrip`, on the embedded engine.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardflow_engine::cpu::process_cpu_time;
use shardflow_engine::jobs::{exchange, keyed_sum, latency, wordcount, P2_KEYS, P8_WORDS, P8_WORDS_PER_LINE};
use shardflow_engine::{
    Cores, Dataflow, Engine, EngineError, IdlePolicy, JobHandle, JobResult, PlacementStrategy, QueueBound,
};

use crate::cluster::ConfigFile;
use crate::Exit;

/// The benchmark pipelines, by name or by their number in BENCHMARKS.md (`p1`, `p2`,
/// `p4`, `p8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Pipeline {
    /// P1: (r·GOLDEN, r) → all-to-all exchange by hash(key) → count and sum values.
    #[value(alias = "p1")]
    Exchange,
    /// P2: ((r·2654435761) mod 100 000, 1) → exchange by hash(key) → keyed count in
    /// keyed state → each key's final count once at end of input.
    #[value(alias = "p2")]
    KeyedSum,
    /// P4: source paced to --rate for --duration, records stamped with their
    /// scheduled time → map value+1 → exchange by hash(key) → latency histogram.
    #[value(alias = "p4")]
    Latency,
    /// P8: `String` lines of 8 words → split → key by the word itself → count per
    /// word → each word's count once at end of input. -n counts lines
    /// (default 10 000 000).
    #[value(alias = "p8")]
    Wordcount,
    /// A service's round trips: a thread pushes request r into an ingress handle
    /// and waits for its answer (exchange by hash(r), map +1) from an egress
    /// handle before the next; push → answer into a histogram. -n counts
    /// requests (default 100 000).
    Roundtrip,
}

/// Idle policy of the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Idle {
    /// Sleep in the kernel when idle (default; no CPU while idle).
    Park,
    /// Busy-poll: lowest latency, a full core per shard (leave a core for
    /// roundtrip's pushing thread: `-s 1` on two cores, or --hosted).
    Spin,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Pipeline to run: its name, or its number (p1, p2, p4, p8).
    #[arg(value_enum)]
    pipeline: Pipeline,
    /// Records (exchange, keyed-sum; lines for wordcount); underscores allowed.
    /// Default 100 000 000 (wordcount 10 000 000).
    #[arg(long, short = 'n', value_parser = parse_count)]
    records: Option<u64>,
    /// Shards, one per core, on the first S online cores. Default: the config
    /// file's `[worker] cores`, else 2 (or all cores if fewer) — for roundtrip
    /// with spinning shards, one fewer where they would take every core (the
    /// pushing thread needs one).
    #[arg(long, short = 's', conflicts_with = "cores")]
    shards: Option<usize>,
    /// Explicit cores for the shards, e.g. `0,1`.
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Parallelism of every vertex. Default: the number of shards.
    #[arg(long, short = 'p')]
    parallelism: Option<u32>,
    /// Latency: total source rate in records/s.
    #[arg(long, default_value_t = 200_000, value_parser = parse_count)]
    rate: u64,
    /// Latency: how long the source runs, in seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Placement: spread, pack, colocate, or an explicit map `source=0,1;sink=1,0`.
    /// Default: pack for latency (its paced rate is a small share of one
    /// shard, and packed its records cross no core: no cross-core wake-ups),
    /// spread for the others.
    #[arg(long)]
    placement: Option<String>,
    /// What idle shards do. Default: the config file's `[worker] idle`, else park.
    #[arg(long, value_enum)]
    idle: Option<Idle>,
    /// Segment size in bytes (power of two, 4096..=67108864). Default: the config
    /// file's, else 32768.
    #[arg(long)]
    segment_bytes: Option<usize>,
    /// Flush timeout for partial buffers, in ms (0 = none). Default 100.
    #[arg(long)]
    flush_timeout_ms: Option<u64>,
    /// Park mode: shortest timed wait of a source, in µs (records due sooner are
    /// emitted together: less CPU, more latency). Default 0 (exact).
    #[arg(long)]
    min_park_us: Option<u64>,
    /// Print the placement table on stderr.
    #[arg(long)]
    show_placement: bool,
    /// Print the job's execution plan (vertices, chains, edges) on stderr.
    #[arg(long)]
    show_plan: bool,
    /// Print, at the end, each subtask's core, records and where its time went
    /// (busy, idle, back-pressured) on stderr.
    #[arg(long)]
    show_tasks: bool,
    /// Host shard 0 on this thread (`EngineBuilder::build_hosted`): the bench's
    /// own thread runs it while it waits (roundtrip: while it waits for each
    /// answer), pinned to the first core.
    #[arg(long)]
    hosted: bool,
    /// Roundtrip: push each request to the subtask that owns its key
    /// (`Dataflow::ingress_keyed`) instead of round robin and then `key_by`:
    /// the keyed step chains into the source, and no request crosses a core.
    #[arg(long)]
    keyed_ingress: bool,
    /// Roundtrip: look for each answer without sleeping for up to this many
    /// µs before waiting (`EgressHandle::recv_spinning`): no wake-up of the
    /// bench's thread when the answer comes within it. Default 0.
    #[arg(long, default_value_t = 0)]
    reader_spin_us: u64,
}

/// Shards when neither flags nor the config file say: two (or every core, if
/// fewer); for a roundtrip whose shards spin, one fewer where they would take
/// every core — the thread that pushes the requests and reads the answers
/// would get a core only when the kernel preempts a shard (p50 4 ms on two
/// cores, against 1.5 µs with one left).
fn default_shards(online: usize, pipeline: Pipeline, idle: IdlePolicy, hosted: bool) -> usize {
    let n = online.min(2);
    let starves = pipeline == Pipeline::Roundtrip && idle == IdlePolicy::Spin && !hosted && n == online;
    if starves && n > 1 {
        n - 1
    } else {
        n
    }
}

fn parse_count(s: &str) -> std::result::Result<u64, String> {
    s.replace('_', "").parse::<u64>().map_err(|e| format!("'{s}': {e}"))
}

/// Runs the pipeline: [`Exit::Failed`] when verification failed,
/// [`Exit::Interrupted`] after Ctrl-C.
pub(crate) fn run(a: &BenchArgs, cfg: &ConfigFile) -> Result<Exit> {
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 86_400.0) {
        bail!("--duration {}: must be a number of seconds in (0, 86400]", a.duration);
    }
    if a.rate == 0 {
        bail!("--rate 0: must be at least 1 record/s");
    }
    if a.keyed_ingress && a.pipeline != Pipeline::Roundtrip {
        bail!("--keyed-ingress: only the roundtrip pipeline has an ingress");
    }
    if a.reader_spin_us > 0 && a.pipeline != Pipeline::Roundtrip {
        bail!("--reader-spin-us: only the roundtrip pipeline has a reader");
    }
    let default_placement = if a.pipeline == Pipeline::Latency { "pack" } else { "spread" };
    let placement_name = a.placement.as_deref().unwrap_or(default_placement);
    let placement: PlacementStrategy = placement_name.parse().context("--placement")?;
    // The config file's [worker] table sets the engine; flags win.
    let mut builder = cfg.worker.engine();
    match a.idle {
        Some(Idle::Park) => builder = builder.idle(IdlePolicy::Park),
        Some(Idle::Spin) => builder = builder.idle(IdlePolicy::Spin),
        None => {}
    }
    if let Some(b) = a.segment_bytes {
        builder = builder.segment_bytes(b);
    }
    if let Some(us) = a.min_park_us {
        builder = builder.min_park(Duration::from_micros(us));
    }
    if let Some(ms) = a.flush_timeout_ms {
        builder = builder.flush_timeout((ms > 0).then(|| Duration::from_millis(ms)));
    }
    // Last: the default shards depend on the idle policy the rest settled.
    match (&a.cores, a.shards, &cfg.worker.cores) {
        (Some(list), _, _) => builder = builder.cores(Cores::List(list.clone())),
        (None, Some(n), _) => builder = builder.cores(Cores::Count(n)),
        (None, None, Some(_)) => {}
        (None, None, None) => {
            let online = shardflow_engine::online_cores().len();
            let idle = builder.config()?.idle;
            let n = default_shards(online, a.pipeline, idle, a.hosted);
            if n < online.min(2) {
                eprintln!(
                    "{n} shard: spinning shards on all {online} cores would starve the thread that pushes the \
                     requests (-s or --cores to choose)"
                );
            }
            builder = builder.cores(Cores::Count(n));
        }
    }
    let t0 = Instant::now();
    let (engine, mut hosted) = if a.hosted {
        let (engine, shard) = builder.build_hosted()?;
        (engine, Some(shard))
    } else {
        (builder.build()?, None)
    };
    let startup_s = t0.elapsed().as_secs_f64();
    let p = a.parallelism.unwrap_or(engine.shards().len() as u32);
    let n = a.records.unwrap_or(match a.pipeline {
        Pipeline::Wordcount => 10_000_000,
        Pipeline::Roundtrip => 100_000,
        _ => 100_000_000,
    });
    let (job, expected_source_records) = match a.pipeline {
        Pipeline::Roundtrip => {
            // Driven from this thread, not waited for.
            let how = Roundtrip {
                hosted: hosted.is_some(),
                keyed_ingress: a.keyed_ingress,
                reader_spin: Duration::from_micros(a.reader_spin_us),
                show_plan: a.show_plan,
                show_tasks: a.show_tasks,
            };
            let ok = roundtrip(&engine, how, n, p, placement, startup_s)?;
            engine.shutdown();
            return Ok(if ok { Exit::Done } else { Exit::Failed });
        }
        Pipeline::Exchange => (exchange(n, p)?, n),
        Pipeline::KeyedSum => (keyed_sum(n, p)?, n),
        Pipeline::Wordcount => (wordcount(n, p)?, n),
        Pipeline::Latency => {
            let duration_ms = (a.duration * 1000.0).round() as u64;
            let total = (u128::from(a.rate) * u128::from(duration_ms) / 1000) as u64;
            (latency(a.rate, duration_ms, p)?, total)
        }
    };
    if a.show_plan {
        eprint!("{}", job.execution_plan());
    }
    let cpu0 = process_cpu_time();
    let handle = engine.submit_with(job, placement)?;
    if a.show_placement {
        eprint!("{}", handle.placement());
    }
    let waited = match hosted.as_mut() {
        Some(shard) => shard.step_during(|| wait_with_progress(handle, expected_source_records, a.pipeline))?,
        None => wait_with_progress(handle, expected_source_records, a.pipeline)?,
    };
    let result = match waited {
        Waited::Done(result) => result,
        Waited::Interrupted { after, source_records } => {
            let s = after.as_secs_f64();
            println!(
                "interrupted after {s:.3} s: the job was cancelled; its sources had produced {source_records} records \
                 ({:.0} records/s)",
                source_records as f64 / s.max(1e-9)
            );
            engine.shutdown();
            return Ok(Exit::Interrupted);
        }
    };
    let cpu_s = cpu_since(cpu0);
    let wall_s = result.duration().as_secs_f64();
    if a.show_tasks {
        eprint!("{}", result.subtask_table());
    }
    let common = format!(
        "startup_s={startup_s:.3} cpu_s={cpu_s:.2} shards={} parallelism={p}{}",
        engine.shards().len(),
        hosted_tag(hosted.is_some())
    );
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
        Pipeline::Wordcount => {
            let (words, total) = result.count();
            let expected_words = (n * P8_WORDS_PER_LINE).min(P8_WORDS);
            let ok = words == expected_words && total == n * P8_WORDS_PER_LINE;
            println!("distinct_words={words} words={total} expected_distinct={expected_words}");
            println!(
                "shardflow wordcount N={n} records_per_s={:.0} words_per_s={:.0} wall_s={wall_s:.3} verify={} {common}",
                n as f64 / wall_s,
                (n * P8_WORDS_PER_LINE) as f64 / wall_s,
                verdict(ok)
            );
            ok
        }
        Pipeline::Roundtrip => unreachable!("the roundtrip pipeline returns before its job is waited for"),
        Pipeline::Latency => {
            let hist = result.latency().context("the latency sink reported no histogram")?;
            let received = hist.len();
            let ok = received == expected_source_records;
            // The source is paced to the rate; if it could not keep up, every
            // record's lag behind its schedule counts as latency: say so.
            let source_s = received as f64 / a.rate as f64;
            if wall_s > source_s * 1.1 + 0.25 {
                eprintln!(
                    "warning: the source could not pace {} records/s: its {received} records took {wall_s:.1} s, \
                     not {source_s:.1} s ({:.0} records/s); the latencies include that lag",
                    a.rate,
                    received as f64 / wall_s
                );
            }
            println!("received={received} expected={expected_source_records} mean_us={:.1}", hist.mean() / 1000.0);
            println!(
                "shardflow latency N={received} records_per_s={:.0} wall_s={wall_s:.3} verify={} {} rate={} duration_s={} idle={} placement={} {common}",
                received as f64 / wall_s,
                verdict(ok),
                quantiles_us(&hist),
                a.rate,
                a.duration,
                idle_name(&engine),
                placement_name.replace(' ', ""),
            );
            ok
        }
    };
    engine.shutdown();
    Ok(if ok { Exit::Done } else { Exit::Failed })
}

/// How long a round trip may take before the bench gives up on it.
const ROUNDTRIP_TIMEOUT: Duration = Duration::from_secs(60);

/// How the `roundtrip` pipeline runs.
#[derive(Clone, Copy)]
struct Roundtrip {
    /// Shard 0 runs on this thread, while it waits for an answer.
    hosted: bool,
    /// Requests pushed to their key's subtask (no exchange).
    keyed_ingress: bool,
    /// How long the reader looks for an answer before it sleeps.
    reader_spin: Duration,
    /// Print the job's execution plan on stderr.
    show_plan: bool,
    /// Print its subtasks' times on stderr at the end.
    show_tasks: bool,
}

/// The `roundtrip` pipeline: `n` requests, one at a time, from this thread,
/// each keyed by itself. Returns whether every answer was right.
fn roundtrip(
    engine: &Engine,
    how: Roundtrip,
    n: u64,
    p: u32,
    placement: PlacementStrategy,
    startup_s: f64,
) -> Result<bool> {
    let df = Dataflow::new("roundtrip").parallelism(p);
    let answer = |r: &u64| r + 1;
    let (answers, mut push): (_, Box<dyn FnMut(u64) -> bool>) = if how.keyed_ingress {
        let (requests, mut ingress) = df.ingress_keyed::<u64, u64, _>("requests", QueueBound::records(1024), |r| *r);
        let answers = requests.as_stream().map(answer).name("answer").egress(1024);
        (answers, Box::new(move |r| ingress.push(r).is_ok()))
    } else {
        let (requests, mut ingress) = df.ingress::<u64>("requests", 1024);
        let answers = requests.key_by(|r: &u64| *r).as_stream().map(answer).name("answer").egress(1024);
        (answers, Box::new(move |r| ingress.push(r).is_ok()))
    };
    let job = df.build()?;
    if how.show_plan {
        eprint!("{}", job.execution_plan());
    }
    let cpu0 = process_cpu_time();
    let handle = engine.submit_with(job, placement)?;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)?;
    let mut right = 0u64;
    let start = Instant::now();
    for r in 0..n {
        let sent = Instant::now();
        if !push(r) {
            bail!("the job stopped taking requests at request {r}: {:?}", answers.stopped());
        }
        // On a hosted shard's thread the wait runs the shard.
        match answers.recv_spinning(how.reader_spin, ROUNDTRIP_TIMEOUT) {
            Ok(answer) => {
                hist.saturating_record(sent.elapsed().as_nanos() as u64);
                right += u64::from(answer == r + 1);
            }
            Err(e) => bail!("no answer to request {r} within {ROUNDTRIP_TIMEOUT:?} ({e}): {:?}", answers.stopped()),
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    drop(push);
    let result = handle.wait_timeout(ROUNDTRIP_TIMEOUT)?;
    let cpu_s = cpu_since(cpu0);
    if how.show_tasks {
        eprint!("{}", result.subtask_table());
    }
    let ok = right == n;
    println!("answered={n} right={right} mean_us={:.1}", hist.mean() / 1000.0);
    println!(
        "shardflow roundtrip N={n} requests_per_s={:.0} wall_s={wall_s:.3} verify={} {} idle={} \
         startup_s={startup_s:.3} cpu_s={cpu_s:.2} shards={} parallelism={p}{}{}{}",
        n as f64 / wall_s,
        verdict(ok),
        quantiles_us(&hist),
        idle_name(engine),
        engine.shards().len(),
        hosted_tag(how.hosted),
        if how.keyed_ingress { " keyed_ingress=true" } else { "" },
        match how.reader_spin.as_micros() {
            0 => String::new(),
            us => format!(" reader_spin_us={us}"),
        },
    );
    Ok(ok)
}

/// CPU seconds the process spent since `start` (NaN where unknown).
fn cpu_since(start: Option<Duration>) -> f64 {
    match (start, process_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => f64::NAN,
    }
}

/// `p50_us= p99_us= p999_us= max_us=` of a histogram in nanoseconds.
fn quantiles_us(hist: &hdrhistogram::Histogram<u64>) -> String {
    let us = |v: u64| v as f64 / 1000.0;
    format!(
        "p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
        us(hist.value_at_quantile(0.5)),
        us(hist.value_at_quantile(0.99)),
        us(hist.value_at_quantile(0.999)),
        us(hist.max())
    )
}

fn idle_name(engine: &Engine) -> &'static str {
    if engine.config().idle == IdlePolicy::Spin {
        "spin"
    } else {
        "park"
    }
}

/// ` hosted=true` where shard 0 ran on the bench's thread.
fn hosted_tag(hosted: bool) -> &'static str {
    if hosted {
        " hosted=true"
    } else {
        ""
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "FAIL"
    }
}

/// How waiting for a bench's job ended.
enum Waited {
    /// The job ended (its result, or why it failed).
    Done(JobResult),
    /// Ctrl-C: the job was cancelled after `after`, its sources having produced
    /// `source_records`.
    Interrupted { after: Duration, source_records: u64 },
}

/// How often a progress line is printed when stderr is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Waits for the job, showing progress on stderr once it has run a second (a
/// bar at a terminal, a line every 10 s otherwise). Ctrl-C cancels the job.
fn wait_with_progress(handle: JobHandle, expected: u64, pipeline: Pipeline) -> Result<Waited> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // A second Ctrl-C while cancelling falls through to the default: the process ends.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::AcqRel) {
            std::process::exit(130);
        }
    });
    let start = Instant::now();
    let at_terminal = std::io::stderr().is_terminal();
    if !at_terminal {
        let name = pipeline.to_possible_value().map_or_else(|| format!("{pipeline:?}"), |v| v.get_name().to_string());
        eprintln!("running {name}: {expected} source records; Ctrl-C cancels");
    }
    let bar = ProgressBar::with_draw_target(Some(expected), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} source records ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut next_line = PROGRESS_EVERY;
    loop {
        if interrupted.load(Ordering::Acquire) {
            bar.finish_and_clear();
            handle.cancel();
            let after = start.elapsed();
            let source_records = handle.source_records();
            return match handle.wait_timeout(Duration::from_secs(60)) {
                Err(EngineError::JobCanceled(_)) => Ok(Waited::Interrupted { after, source_records }),
                Ok(result) => Ok(Waited::Done(result)),
                Err(e) => Err(e.into()),
            };
        }
        match handle.wait_timeout(Duration::from_millis(100)) {
            Err(EngineError::Timeout(_)) => {
                let elapsed = start.elapsed();
                let done = handle.source_records();
                if at_terminal {
                    if elapsed >= Duration::from_secs(1) && bar.is_hidden() {
                        bar.set_draw_target(ProgressDrawTarget::stderr());
                    }
                    bar.set_position(done);
                } else if elapsed >= next_line {
                    next_line += PROGRESS_EVERY;
                    let per_s = done as f64 / elapsed.as_secs_f64();
                    eprintln!(
                        "progress: {:.0} s, {done} of {expected} source records ({per_s:.0}/s)",
                        elapsed.as_secs_f64()
                    );
                }
            }
            other => {
                bar.finish_and_clear();
                return Ok(Waited::Done(other?));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_roundtrip_leaves_a_core_to_its_pushing_thread_by_default() {
        let (spin, park) = (IdlePolicy::Spin, IdlePolicy::Park);
        assert_eq!(default_shards(2, Pipeline::Roundtrip, spin, false), 1);
        assert_eq!(default_shards(3, Pipeline::Roundtrip, spin, false), 2, "two shards leave a core of three");
        assert_eq!(default_shards(1, Pipeline::Roundtrip, spin, false), 1, "one core: nothing to leave");
        assert_eq!(default_shards(2, Pipeline::Roundtrip, spin, true), 2, "a hosted shard's host is the pusher");
        assert_eq!(default_shards(2, Pipeline::Roundtrip, park, false), 2);
        assert_eq!(default_shards(2, Pipeline::Latency, spin, false), 2, "no thread of the bench pushes");
        assert_eq!(default_shards(8, Pipeline::Exchange, park, false), 2);
    }
}
