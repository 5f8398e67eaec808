//! A service that owns its loop: its thread is shard 0 of the engine and runs
//! the job's tasks itself, between requests. Each request goes in through an
//! ingress and its answer comes back through an egress without leaving the
//! thread; the loop prints the round-trip quantiles.
//!
//! `cargo run --release -p shardflow-engine --example hosted`

use std::time::{Duration, Instant};

use shardflow_engine::{Dataflow, Engine, EngineError};

fn main() -> Result<(), EngineError> {
    // This thread becomes shard 0 (pinned to the first core); shard 1, if the
    // machine has a second core, keeps a thread of its own.
    let (engine, mut shard) = Engine::builder().build_hosted()?;

    // Every vertex on the host's core: a price per quantity, computed in the job.
    let here = [shard.core()];
    let df = Dataflow::new("quotes").parallelism(1);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 64);
    let mut quotes = requests.cores(&here).map(|qty: &u64| qty * 125 / 100).name("quote").cores(&here).egress(64);
    let job = engine.submit(df.build()?)?;

    let n = 200_000u64;
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for qty in 0..n {
        let sent = Instant::now();
        if let Err(e) = ingress.try_push(qty) {
            // A queue of 64 holds one request at a time here: full means gone.
            eprintln!("the job stopped taking requests: {e}");
            break;
        }
        // Run the shard until the answer is there (or give up after a second).
        match shard.block_on_timeout(quotes.recv_async(), Duration::from_secs(1)) {
            Some(Some(quote)) => {
                latencies_ns.push(sent.elapsed().as_nanos() as u64);
                debug_assert_eq!(quote, qty * 125 / 100);
            }
            Some(None) => {
                eprintln!("the answers ended early: {:?}", quotes.stopped());
                break;
            }
            None => {
                eprintln!("no answer to request {qty} within a second");
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    drop(ingress);
    // The job ends once its input does; waiting on this thread runs its shard.
    job.wait()?;

    latencies_ns.sort_unstable();
    let at =
        |q: f64| latencies_ns.get(((latencies_ns.len() as f64 * q) as usize).min(latencies_ns.len().saturating_sub(1)));
    println!(
        "{} requests in {:.1} ms ({:.0} per second) on core {}; round trip p50 {:?} ns, p99 {:?} ns",
        latencies_ns.len(),
        elapsed.as_secs_f64() * 1e3,
        latencies_ns.len() as f64 / elapsed.as_secs_f64(),
        shard.core(),
        at(0.5).copied().unwrap_or_default(),
        at(0.99).copied().unwrap_or_default(),
    );
    drop(shard);
    engine.shutdown();
    Ok(())
}
