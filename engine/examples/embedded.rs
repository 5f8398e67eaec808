//! Embeds the engine in a program: start shards on chosen cores, run a keyed job
//! built with the fluent API, collect its results through a handle and print where
//! each subtask ran.
//!
//! Run with `cargo run --release -p shardflow-engine --example embedded`.

use shardflow_engine::{
    ops, CollectHandle, Cores, Engine, EngineError, JobBuilder, PartitionerKind, PlacementStrategy,
};

fn main() -> Result<(), EngineError> {
    let cores = shardflow_engine::online_cores();
    let engine = Engine::builder().cores(Cores::List(cores.iter().copied().take(2).collect())).build()?;
    let parallelism = engine.shards().len() as u32;

    let top = CollectHandle::new("per-key-totals");
    let job = JobBuilder::new("embedded-example")
        .source("numbers", ops::generator(1_000_000, ops::KeyGen::Index, ops::ValueGen::Index), parallelism)
        .filter("odd", |r| r.value % 2 == 1)
        .then(ops::key_by_value_mod(10))
        .connect(PartitionerKind::Hash, "sum-by-digit", parallelism)
        .then(ops::keyed_sum())
        .collect(&top)
        .build();

    let handle = engine.submit_with(job, PlacementStrategy::Spread)?;
    println!("placement:\n{}", handle.placement());
    let result = handle.wait()?;
    let mut totals = top.drain();
    totals.sort();
    for r in &totals {
        println!("last digit {}: sum {}", r.key, r.value);
    }
    println!("finished in {:?}", result.duration());
    Ok(())
}
