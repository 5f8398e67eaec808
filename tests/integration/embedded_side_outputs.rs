//! Side outputs: what `flat_map` and the process functions emit to a tag
//! reaches that tag's own stream — chained where the operator runs, or
//! through an exchange — against a naive evaluation; every two-input operator
//! emits them too, at the end of input as well (an operator chained after the
//! side output finishes after its producer); a record of another type than its tag's stream fails the
//! job naming both; a tag never asked for drops its records; and the mistakes
//! of building them are dataflow errors.

use std::collections::BTreeMap;

use shardflow_benches::SplitMix;
use shardflow_engine::{
    BroadcastContext, CoProcessFunction, Dataflow, DataflowError, Emitter, EngineError, KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction, OperatorContext, OperatorError, OutputTag,
    ProcessFunction, StateDeclarations, ValueState,
};

use crate::common::small_engine;

type Payment = (String, u64);

/// Per user, the sum of the amounts; each amount over 900 also goes to side
/// output `large`, and each user's sum over 10 000 to `rich` at the end.
#[derive(Clone)]
struct Totals {
    sum: ValueState<u64>,
    large: OutputTag<Payment>,
    rich: OutputTag<String>,
}

impl KeyedProcessFunction<String, Payment, Payment> for Totals {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.sum = states.value_state("sum")?;
        Ok(())
    }
    fn process(
        &mut self,
        p: &Payment,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, Payment>,
    ) -> Result<(), OperatorError> {
        if p.1 > 900 {
            out.emit_side(&self.large, p.clone());
        }
        let sum = &self.sum;
        let now = ctx.value(sum)?.copied().unwrap_or(0) + p.1;
        ctx.set_value(sum, now)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, Payment>,
    ) -> Result<(), OperatorError> {
        let sum = ctx.value(&self.sum)?.copied().unwrap_or(0);
        if sum > 10_000 {
            out.emit_side_ref(&self.rich, ctx.key());
        }
        out.emit((ctx.key().to_string(), sum));
        Ok(())
    }
}

fn payments(rng: &mut SplitMix, n: usize) -> Vec<Payment> {
    // Some amounts are 0, some over 900, some users over 10 000 in all.
    (0..n).map(|_| (format!("user-{}", rng.range(0, 30)), rng.range(0, 1_000) * rng.range(0, 2))).collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn flat_map_and_keyed_process_send_records_to_their_side_outputs() {
    let engine = small_engine().build().expect("engine starts");
    let mut rng = SplitMix::new(0x51DE);
    let input = payments(&mut rng, 4_000);
    let zero = OutputTag::<String>::new("zero");
    let large = OutputTag::<Payment>::new("large");
    let rich = OutputTag::<String>::new("rich");

    let df = Dataflow::new("side-outputs").parallelism(2);
    let nonzero = df.from_iter("payments", input.clone()).flat_map({
        let zero = zero.clone();
        move |p: &Payment, out: &mut Emitter<'_, Payment>| match p.1 {
            0 => out.emit_side_ref(&zero, p.0.as_str()),
            _ => out.emit(p.clone()),
        }
    });
    // Chained where the flat_map runs.
    let zeros = nonzero.side_output(&zero).collect();
    let totals = nonzero
        .key_by_ref::<String, _>(|p: &Payment| p.0.as_str())
        .process(Totals { sum: Default::default(), large: large.clone(), rich: rich.clone() })
        .name("totals");
    let sums = totals.collect();
    // Through an exchange: the large payments counted per user.
    let large_per_user = totals.side_output(&large).key_by_ref::<String, _>(|p: &Payment| p.0.as_str()).count_final();
    let large_per_user = large_per_user.collect();
    // Asked for twice, one stream: this sink sees every large payment too.
    totals.side_output(&large).count_and_sum(|p: &Payment| p.1);
    let rich_users = totals.side_output(&rich).collect();
    let result = engine.run(df.build().expect("a valid dataflow")).expect("the job finishes");

    let mut sum: BTreeMap<String, u64> = BTreeMap::new();
    let mut large_n: BTreeMap<String, u64> = BTreeMap::new();
    let mut zero_users = Vec::new();
    let (mut large_count, mut large_sum) = (0, 0);
    for (user, amount) in &input {
        if *amount == 0 {
            zero_users.push(user.clone());
            continue;
        }
        *sum.entry(user.clone()).or_default() += amount;
        if *amount > 900 {
            *large_n.entry(user.clone()).or_default() += 1;
            (large_count, large_sum) = (large_count + 1, large_sum + amount);
        }
    }
    let rich: Vec<String> = sum.iter().filter(|(_, s)| **s > 10_000).map(|(u, _)| u.clone()).collect();
    assert!(!zero_users.is_empty() && large_count > 0 && !rich.is_empty(), "the input exercises every side output");
    assert_eq!(sorted(zeros.take()), sorted(zero_users), "zero amounts, by the flat_map's side output");
    assert_eq!(sorted(sums.take()), sum.into_iter().collect::<Vec<_>>(), "the main stream");
    assert_eq!(sorted(large_per_user.take()), large_n.into_iter().collect::<Vec<_>>(), "large ones, exchanged");
    assert_eq!(result.count(), (large_count, large_sum), "the second stream of one tag sees every record");
    assert_eq!(sorted(rich_users.take()), rich, "emitted at the end of input");
}

/// Each input's records, and to side output `seen` how many the subtask
/// read of each at the end.
#[derive(Clone)]
struct Tally {
    seen: OutputTag<(u64, u64)>,
    counts: (u64, u64),
}

impl CoProcessFunction<u64, String, u64> for Tally {
    fn process_first(
        &mut self,
        r: &u64,
        _: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        self.counts.0 += 1;
        out.emit(*r);
        Ok(())
    }
    fn process_second(
        &mut self,
        _: &str,
        _: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        self.counts.1 += 1;
        Ok(())
    }
    fn finish(&mut self, _: &mut OperatorContext<'_>, out: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
        out.emit_side(&self.seen, self.counts);
        Ok(())
    }
}

/// The tallies it reads, summed and emitted at the end: chained after the
/// side output a `Tally` emits to at its own end, it finishes after it.
#[derive(Clone, Default)]
struct SumTallies {
    sum: (u64, u64),
}

impl ProcessFunction<(u64, u64), (u64, u64)> for SumTallies {
    fn process(
        &mut self,
        t: &(u64, u64),
        _: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        self.sum = (self.sum.0 + t.0, self.sum.1 + t.1);
        Ok(())
    }
    fn finish(&mut self, _: &mut OperatorContext<'_>, out: &mut Emitter<'_, (u64, u64)>) -> Result<(), OperatorError> {
        out.emit(self.sum);
        Ok(())
    }
}

/// Per key, the first input's records; the second input's go to side output
/// `orphans` when their key had none before.
#[derive(Clone)]
struct Join {
    any: ValueState<u64>,
    orphans: OutputTag<u64>,
}

impl KeyedCoProcessFunction<u64, u64, u64, u64> for Join {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.any = states.value_state("any")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        r: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        ctx.set_value(&self.any, *r)
    }
    fn process_second(
        &mut self,
        r: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        match ctx.value(&self.any)? {
            Some(_) => out.emit(*r),
            None => out.emit_side(&self.orphans, *r),
        }
        Ok(())
    }
}

/// Keyed records pass; each broadcast record is echoed to side output `rules`.
#[derive(Clone)]
struct Echo {
    rules: OutputTag<String>,
}

impl KeyedBroadcastProcessFunction<u64, u64, u64, u64> for Echo {
    fn process_element(
        &mut self,
        r: &u64,
        _: &[u64],
        _: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        out.emit(*r);
        Ok(())
    }
    fn process_broadcast(
        &mut self,
        rule: &u64,
        _: &mut BroadcastContext<'_, u64, u64>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        out.emit_side(&self.rules, format!("rule {rule}"));
        Ok(())
    }
}

/// What a `flat_map` of plain data emits for `r`: `r`, and for every
/// 5 000th record a run of 10 000 more (past what one batch gathers); odd
/// records also to side output `odd`.
fn exploded(r: u64) -> Vec<u64> {
    let run = if r % 5_000 == 0 { 10_000 } else { 0 };
    std::iter::once(r).chain((0..run).map(|i| 1_000_000_000 + r * 100_000 + i)).collect()
}

#[test]
fn a_flat_map_of_plain_data_hands_on_every_record_in_order_and_its_side_outputs() {
    let engine = small_engine().build().expect("engine starts");
    let odd = OutputTag::<u64>::new("odd");
    let n = 20_000u64;
    let df = Dataflow::new("exploded").parallelism(1);
    let tag = odd.clone();
    let out = df.generate("numbers", n, |r| r).flat_map(move |r: &u64, out: &mut Emitter<'_, u64>| {
        for (i, x) in exploded(*r).into_iter().enumerate() {
            // Owned and borrowed forms alike.
            if i % 2 == 0 {
                out.emit(x);
            } else {
                out.emit_ref(&x);
            }
        }
        if r % 2 == 1 {
            out.emit_side(&tag, *r);
        }
    });
    let main = out.collect();
    let odds = out.side_output(&odd).collect();
    engine.run(df.build().unwrap()).expect("finishes");
    let want: Vec<u64> = (0..n).flat_map(exploded).collect();
    let got = main.take();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the first difference at {:?}", got.iter().zip(&want).position(|(a, b)| a != b));
    assert_eq!(odds.take(), (0..n).filter(|r| r % 2 == 1).collect::<Vec<_>>());
}

#[test]
fn every_two_input_operator_emits_side_outputs() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("two-input-sides").parallelism(2);
    let numbers = df.from_iter("numbers", 0..100u64);
    let words = df.from_iter("words", (0..30).map(|i| format!("w{i}")));

    // co_flat_map: odd numbers and words with a 1 to the side.
    let odd = OutputTag::<u64>::new("odd");
    let mixed = numbers.connect(&words).flat_map(
        {
            let odd = odd.clone();
            move |n: &u64, out: &mut Emitter<'_, u64>| match n % 2 {
                1 => out.emit_side(&odd, *n),
                _ => out.emit(*n),
            }
        },
        |w: &str, out: &mut Emitter<'_, u64>| out.emit(w.len() as u64),
    );
    let mixed_main = mixed.collect();
    let odds = mixed.side_output(&odd).collect();

    // co-process: counts per subtask, at the end.
    let seen = OutputTag::<(u64, u64)>::new("seen");
    let tallied = numbers.connect(&words).process(Tally { seen: seen.clone(), counts: (0, 0) });
    tallied.discard();
    let tallies = tallied.side_output(&seen).process(SumTallies::default()).collect();

    // Keyed co-process: second-input records whose key the first never had.
    let orphans = OutputTag::<u64>::new("orphans");
    let evens = numbers.filter(|n: &u64| n % 2 == 0).key_by(|n: &u64| n % 50);
    let joined = evens
        .connect(&df.from_iter("probes", 0..60u64).key_by(|n: &u64| n % 50))
        .process(Join { any: Default::default(), orphans: orphans.clone() });
    let matched = joined.collect();
    let unmatched = joined.side_output(&orphans).collect();

    // Keyed-broadcast: the rules echoed by every subtask.
    let rules = OutputTag::<String>::new("rules");
    let echoed = numbers
        .key_by(|n: &u64| *n)
        .connect_broadcast(&df.from_iter("rules", [7u64, 9]).parallelism(1))
        .process(Echo { rules: rules.clone() });
    echoed.discard();
    let rule_echoes = echoed.side_output(&rules).collect();

    engine.run(df.build().expect("a valid dataflow")).expect("the job finishes");

    let mut expect_main: Vec<u64> = (0..100).filter(|n| n % 2 == 0).collect();
    expect_main.extend((0..30).map(|i| format!("w{i}").len() as u64));
    assert_eq!(sorted(mixed_main.take()), sorted(expect_main));
    assert_eq!(sorted(odds.take()), (0..100).filter(|n| n % 2 == 1).collect::<Vec<_>>());
    let tallies = tallies.take();
    assert_eq!(tallies.len(), 2, "one sum of tallies per co-process subtask: {tallies:?}");
    assert_eq!(tallies.iter().fold((0, 0), |a, t| (a.0 + t.0, a.1 + t.1)), (100, 30));
    // Keys 0..50 with an even first-input record: the even ones. The probes of
    // odd keys are orphans, unless (how the inputs interleave is not fixed) a
    // probe of an even key came before its key's first record.
    let (matched, unmatched) = (sorted(matched.take()), sorted(unmatched.take()));
    assert_eq!(sorted([matched.clone(), unmatched.clone()].concat()), (0..60).collect::<Vec<_>>());
    assert!(matched.iter().all(|p| (p % 50) % 2 == 0), "only even keys match: {matched:?}");
    assert!((0..60).filter(|p| (p % 50) % 2 == 1).all(|p| unmatched.contains(&p)), "odd keys are orphans");
    assert_eq!(sorted(rule_echoes.take()), ["rule 7", "rule 7", "rule 9", "rule 9"], "each of 2 subtasks");
}

#[test]
fn a_record_of_another_type_than_its_side_output_fails_the_job_naming_both() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("wrong-side-type");
    let as_number = OutputTag::<u64>::new("x");
    let as_text = OutputTag::<String>::new("x");
    let main = df.from_iter("n", 0..10u64).flat_map(move |n: &u64, out: &mut Emitter<'_, u64>| {
        out.emit(*n);
        out.emit_side(&as_number, *n);
    });
    main.discard();
    main.side_output(&as_text).discard();
    let e = engine.run(df.build().expect("a valid dataflow")).expect_err("the job fails");
    let text = e.to_string();
    assert!(text.contains("side output 'x' carries alloc::string::String"), "{text}");
    assert!(text.contains("emitted u64"), "{text}");
    // The engine runs on.
    let df = Dataflow::new("after");
    let out = df.from_iter("n", 0..3u64).collect();
    engine.run(df.build().expect("a valid dataflow")).expect("the next job finishes");
    assert_eq!(out.take(), [0, 1, 2]);
}

#[test]
fn records_to_a_tag_no_stream_was_asked_for_are_dropped() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("unasked");
    let late = OutputTag::<u64>::new("late");
    let out = df
        .from_iter("n", 0..10u64)
        .flat_map(move |n: &u64, out: &mut Emitter<'_, u64>| match n % 3 {
            0 => out.emit_side(&late, *n),
            _ => out.emit(*n),
        })
        .collect();
    engine.run(df.build().expect("a valid dataflow")).expect("the job finishes");
    assert_eq!(out.take(), [1, 2, 4, 5, 7, 8]);
}

fn build_error(df: &Dataflow) -> DataflowError {
    match df.build() {
        Err(EngineError::Dataflow(e)) => e,
        other => panic!("expected a dataflow error, got {other:?}"),
    }
}

#[test]
fn mistakes_with_side_outputs_are_dataflow_errors() {
    let tag = OutputTag::<u64>::new("t");

    let df = Dataflow::new("of-a-map");
    let mapped = df.from_iter("n", 0..3u64).map(|n: &u64| n + 1).name("plus-one");
    mapped.discard();
    mapped.side_output(&tag).discard();
    assert_eq!(build_error(&df), DataflowError::NoSideOutputs { operator: "plus-one".into() });

    let df = Dataflow::new("two-types");
    let fm = df.from_iter("n", 0..3u64).flat_map(|n: &u64, out: &mut Emitter<'_, u64>| out.emit(*n)).name("fm");
    fm.discard();
    fm.side_output(&tag).discard();
    fm.side_output(&OutputTag::<String>::new("t")).discard();
    match build_error(&df) {
        DataflowError::SideOutputType { operator, tag, first, then } => {
            assert_eq!((operator.as_str(), tag.as_str(), first.as_str()), ("fm", "t", "u64"));
            assert!(then.ends_with("String"), "{then}");
        }
        other => panic!("expected SideOutputType, got {other:?}"),
    }

    let df = Dataflow::new("side-parallelism");
    let fm = df.from_iter("n", 0..3u64).flat_map(|n: &u64, out: &mut Emitter<'_, u64>| out.emit(*n)).name("fm");
    fm.discard();
    fm.side_output(&tag).name("side").parallelism(3).discard();
    let e = build_error(&df);
    assert_eq!(e, DataflowError::SideOutputParallelism { operator: "side".into(), producer: "fm".into() });

    // A side stream asked for and never read is unconsumed, as any stream.
    let df = Dataflow::new("unread");
    let fm = df.from_iter("n", 0..3u64).flat_map(|n: &u64, out: &mut Emitter<'_, u64>| out.emit(*n));
    fm.discard();
    let _ = fm.side_output(&tag).name("unread-side");
    assert_eq!(build_error(&df), DataflowError::Unconsumed { operator: "unread-side".into() });

    // Reading a side output is using the operator's output: its parallelism
    // is set before.
    let df = Dataflow::new("late-parallelism");
    let fm = df.from_iter("n", 0..3u64).flat_map(|n: &u64, out: &mut Emitter<'_, u64>| out.emit(*n)).name("fm");
    fm.side_output(&tag).discard();
    fm.parallelism(2).discard();
    assert_eq!(build_error(&df), DataflowError::ParallelismAfterUse { operator: "fm".into() });
}
