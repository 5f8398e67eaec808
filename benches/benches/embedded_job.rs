//! What an embedding service pays for the engine's calls around a job, on a
//! 2-shard embedded engine: asking a job's status, and a small job's whole turn
//! (submit a two-record source → map → collect at parallelism 1, wait for its
//! result). Both talk to the in-process coordinator the way a cluster's clients
//! do, in frames.

#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shardflow_engine::{Cores, Dataflow, Engine};

fn engine() -> Engine {
    Engine::builder()
        .cores(Cores::Count(2))
        .segment_bytes(4096)
        .network_memory_bytes(4 << 20)
        .prefault(false)
        .build()
        .expect("the engine starts")
}

fn small_job(engine: &Engine, i: u64) -> Vec<u64> {
    let df = Dataflow::new("small").parallelism(1);
    let out = df.from_iter("numbers", vec![i, i + 1]).map(|r: &u64| r * 2).collect();
    engine.submit(df.build().expect("a valid job")).expect("submitted").wait().expect("finished");
    out.take()
}

fn embedded_job(c: &mut Criterion) {
    let engine = engine();
    let mut g = c.benchmark_group("embedded_job");
    g.measurement_time(Duration::from_secs(5));
    let mut i = 0u64;
    g.bench_function("submit_and_wait_small_job", |b| {
        b.iter(|| {
            i += 1;
            assert_eq!(small_job(&engine, i), vec![2 * i, 2 * i + 2]);
        })
    });
    let df = Dataflow::new("status").parallelism(1);
    let (numbers, ingress) = df.ingress::<u64>("numbers", 16);
    numbers.count();
    let job = engine.submit(df.build().expect("a valid job")).expect("submitted");
    g.bench_function("job_status", |b| b.iter(|| engine.job_status(job.id()).expect("a status")));
    drop(ingress);
    job.wait().expect("finished");
    g.finish();
}

criterion_group!(benches, embedded_job);
criterion_main!(benches);
