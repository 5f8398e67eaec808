//! What keyed state costs per record, on a 2-shard embedded engine: 20 M records
//! (under `cargo bench`; one per key when CI runs it as a test) over 100 000 keys through a key-group exchange into a count per key — the
//! built-in `count_final`, and the same count kept by a keyed process function
//! in a `ValueState` and in a `ReducingState`, and in a `ValueState` with a
//! time-to-live. The gap between the first and the others is what the state
//! API costs a function over the engine's own aggregation; the last, what
//! keeping each key's write time adds. Then the same counts keyed by words
//! (`String`s, 4 M records over 100 000 of them, P8's vocabulary): tables
//! past a core's cache, which the built-in count reads a chunk of records
//! ahead (a function's state is read when it asks: announcing its records
//! measured no faster, within this machine's noise).

#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardflow_engine::{
    Data, Dataflow, Emitter, Engine, Key, KeySelector, KeyedContext, KeyedProcessFunction, KeyedStream, OperatorError,
    ReducingState, StateDeclarations, Stream, ValueState,
};

const KEYS: u64 = 100_000;

/// Records through the jobs: numbers and words.
#[derive(Clone, Copy)]
struct Sizes {
    records: u64,
    words: u64,
}

impl Sizes {
    /// Under `cargo bench` (criterion is given `--bench`) 20 M numbers and 4 M
    /// words; run as a test (`cargo test --benches` runs each function once,
    /// in a debug build) one of each key, so CI checks the same jobs and
    /// results in a second, not in forty.
    fn of_this_run() -> Self {
        match std::env::args().any(|a| a == "--bench") {
            true => Sizes { records: 20_000_000, words: 4_000_000 },
            false => Sizes { records: KEYS, words: KEYS },
        }
    }
}

/// A count per key in a value — a number or a word — (with a time-to-live, if
/// given: one the job never reaches, so every count survives and only the
/// bookkeeping costs).
#[derive(Clone, Default)]
struct ValueCount {
    count: ValueState<u64>,
    ttl: Option<Duration>,
}

impl<K: Key> KeyedProcessFunction<K, K, (K, u64)> for ValueCount
where
    (K, u64): Data,
{
    fn open(&mut self, states: &mut StateDeclarations<'_, K>) -> Result<(), OperatorError> {
        let count = states.value_state("count")?;
        if let Some(ttl) = self.ttl {
            states.expire_after(&count, ttl)?;
        }
        self.count = count;
        Ok(())
    }

    fn process(
        &mut self,
        _: &K::Borrowed,
        ctx: &mut KeyedContext<'_, K>,
        _: &mut Emitter<'_, (K, u64)>,
    ) -> Result<(), OperatorError> {
        let count = &self.count;
        if ctx.update_value(count, |n| *n += 1)?.is_none() {
            ctx.set_value(count, 1)?;
        }
        Ok(())
    }

    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, (K, u64)>,
    ) -> Result<(), OperatorError> {
        let count = &self.count;
        let n = ctx.value(count)?.copied().unwrap_or(0);
        out.emit((K::to_owned_record(ctx.key()), n));
        Ok(())
    }
}

/// A count per key in a reducing state.
#[derive(Clone, Default)]
struct ReducingCount {
    count: ReducingState<u64>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for ReducingCount {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.count = states.reducing_state("count", |a: &u64, b: &u64| a + b)?;
        Ok(())
    }

    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.reducing_add(&self.count, &1)
    }

    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        let count = &self.count;
        let n = ctx.reducing_get(count)?.copied().unwrap_or(0);
        out.emit((*ctx.key(), n));
        Ok(())
    }
}

/// The records, keyed.
fn keyed(df: &Dataflow, records: u64) -> KeyedStream<u64, u64, impl KeySelector<u64, u64>> {
    df.generate("numbers", records, |i| i.wrapping_mul(2_654_435_761) % KEYS).key_by(|k: &u64| *k)
}

/// Words `w0` … `w99999` (P8's vocabulary), keyed by the word itself.
fn keyed_words(df: &Dataflow, words: u64) -> KeyedStream<String, String, impl KeySelector<String, String>> {
    df.generate("words", words, |i| format!("w{}", i.wrapping_mul(2_654_435_761) % KEYS))
        .key_by_ref::<String, _>(|w: &str| w)
}

/// Runs the job that `count` counts each word of, and checks its result.
fn run_words(engine: &Engine, words: u64, count: impl FnOnce(&Dataflow, u64) -> Stream<(String, u64)>) {
    let df = Dataflow::new("keyed-words").parallelism(2);
    count(&df, words).count_and_sum(|r: &(String, u64)| r.1);
    let result = engine.run(df.build().expect("a valid job")).expect("finished");
    assert_eq!(result.count(), (KEYS, words));
}

/// Runs the job that `count` counts each key of, and checks its result.
fn run(engine: &Engine, records: u64, count: impl FnOnce(&Dataflow, u64) -> Stream<(u64, u64)>) {
    let df = Dataflow::new("keyed-state").parallelism(2);
    count(&df, records).count_and_sum(|r: &(u64, u64)| r.1);
    let result = engine.run(df.build().expect("a valid job")).expect("finished");
    assert_eq!(result.count(), (KEYS, records));
}

fn keyed_state(c: &mut Criterion) {
    let Sizes { records, words } = Sizes::of_this_run();
    let engine = Engine::builder().shards(2).build().expect("the engine starts");
    let mut g = c.benchmark_group("keyed_state");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Elements(records));
    g.bench_function("count_final", |b| b.iter(|| run(&engine, records, |df, n| keyed(df, n).count_final())));
    g.bench_function("process_value_state", |b| {
        b.iter(|| run(&engine, records, |df, n| keyed(df, n).process(ValueCount::default())))
    });
    g.bench_function("process_reducing_state", |b| {
        b.iter(|| run(&engine, records, |df, n| keyed(df, n).process(ReducingCount::default())))
    });
    let hour = ValueCount { count: Default::default(), ttl: Some(Duration::from_secs(3_600)) };
    g.bench_function("process_value_state_ttl", |b| {
        b.iter(|| run(&engine, records, |df, n| keyed(df, n).process(hour.clone())))
    });
    g.finish();
    let mut g = c.benchmark_group("keyed_state_words");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).throughput(Throughput::Elements(words));
    g.bench_function("count_final", |b| b.iter(|| run_words(&engine, words, |df, n| keyed_words(df, n).count_final())));
    g.bench_function("process_value_state", |b| {
        b.iter(|| run_words(&engine, words, |df, n| keyed_words(df, n).process(ValueCount::default())))
    });
    g.finish();
}

criterion_group!(benches, keyed_state);
criterion_main!(benches);
