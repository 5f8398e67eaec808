//! What the stateless operators cost per record where they are chained, on a
//! 2-shard embedded engine: 50 M plain records (under `cargo bench`; 10 000
//! when CI runs it as a test) generated and counted in one vertex per
//! subtask, through `map`, `try_map`, `flat_map`, `try_flat_map` and a
//! `process` function. A map moves plain records in batches, and what the
//! others emit goes on in batches; the gap between a map and its fallible
//! form is what reporting an error costs when none comes.

#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardflow_engine::{Dataflow, Emitter, Engine, OperatorContext, OperatorError, ProcessFunction, Stream};

/// Records through each job.
fn records_of_this_run() -> u64 {
    match std::env::args().any(|a| a == "--bench") {
        true => 50_000_000,
        false => 10_000,
    }
}

/// Runs `0..records` through `op` into a count, and checks the count and the
/// sum of the doubled records.
fn run(engine: &Engine, records: u64, op: impl FnOnce(Stream<u64>) -> Stream<u64>) {
    let df = Dataflow::new("chained").parallelism(2);
    op(df.generate("numbers", records, |r| r)).count_and_sum(|r: &u64| *r);
    let result = engine.run(df.build().expect("a valid job")).expect("finished");
    assert_eq!(result.count(), (records, records * (records - 1)));
}

fn doubled(r: &u64) -> u64 {
    r * 2
}

fn checked(r: &u64) -> Result<u64, OperatorError> {
    r.checked_mul(2).ok_or_else(|| OperatorError::from(format!("{r} doubled overflows")))
}

/// Doubles each record, as a process function (which could keep operator
/// state).
#[derive(Clone)]
struct Doubling;

impl ProcessFunction<u64, u64> for Doubling {
    fn process(
        &mut self,
        r: &u64,
        _: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        out.emit(doubled(r));
        Ok(())
    }
}

fn chained_ops(c: &mut Criterion) {
    let records = records_of_this_run();
    let engine = Engine::builder().shards(2).build().expect("the engine starts");
    let mut g = c.benchmark_group("chained_ops");
    g.sample_size(20).measurement_time(Duration::from_secs(5)).throughput(Throughput::Elements(records));
    g.bench_function("map", |b| b.iter(|| run(&engine, records, |s| s.map(doubled))));
    g.bench_function("try_map", |b| b.iter(|| run(&engine, records, |s| s.try_map(checked))));
    g.bench_function("flat_map", |b| {
        b.iter(|| run(&engine, records, |s| s.flat_map(|r: &u64, out: &mut Emitter<'_, u64>| out.emit(doubled(r)))))
    });
    g.bench_function("try_flat_map", |b| {
        b.iter(|| {
            run(&engine, records, |s| {
                s.try_flat_map(|r: &u64, out: &mut Emitter<'_, u64>| {
                    out.emit(checked(r)?);
                    Ok(())
                })
            })
        })
    });
    g.bench_function("process", |b| b.iter(|| run(&engine, records, |s| s.process(Doubling))));
    g.finish();
}

criterion_group!(benches, chained_ops);
criterion_main!(benches);
