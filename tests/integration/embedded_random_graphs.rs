//! Random dataflow graphs: from a seed, sources, transforms, side outputs,
//! exchanges, unions, connects (co-map, a co-process function holding both
//! inputs in list state) and keyed operators (reduce, count, process with map
//! state, keyed co-process) are stacked onto random earlier streams, each at a random
//! parallelism; every stream left unconsumed ends in a collect sink. The same
//! operations run over plain vectors, one record at a time, on one thread, and
//! every sink must hold exactly the records that naive evaluation predicts.
//! About one record in 64 is larger than the tests' segments and crosses each
//! exchange in a buffer of its own.
//!
//! Keyed operators emit once per key at the end of input and their functions are
//! commutative, so each stream's records, as a multiset, do not depend on the
//! order the engine delivers them in: the comparison is exact.
//!
//! The same graphs are also stopped with a snapshot half-way through their
//! input (sources that read half and wait) and restored at other
//! parallelisms: the records of the two runs together are again exactly what
//! naive evaluation predicts, whatever each operator held when it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use shardflow_benches::SplitMix;
use shardflow_engine::{
    CoProcessFunction, CollectHandle, Dataflow, Emitter, Engine, JobSnapshot, KeyedCoProcessFunction, KeyedContext,
    KeyedProcessFunction, ListStateHandle, MapState, OperatorContext, OperatorError, OutputTag, StateDeclarations,
    Stream, TaskInfo, ValueState,
};

use crate::common::{oracle_cases, shard_count, small_engine, LogSource, TIMEOUT};

/// The user record every stream of a random graph carries (rkyv: strings).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Visit {
    user: String,
    page: String,
    amount: u64,
}
shardflow_engine::rkyv_data!(Visit);

/// Random visits; about one in 64 to a page with a long name, whose record
/// is larger than the tests' 4 KiB segments (a buffer of its own).
fn visits(rng: &mut SplitMix, n: u64) -> Vec<Visit> {
    let users = rng.range(1, 25);
    (0..n)
        .map(|_| Visit {
            user: format!("u{}", rng.range(0, users)),
            page: match rng.range(0, 63) {
                0 => format!("/long/{}", "x".repeat(rng.range(4_000, 9_000) as usize)),
                _ => format!("/{}/{}", ["news", "shop", "help"][rng.range(0, 2) as usize], rng.range(0, 6)),
            },
            amount: rng.range(0, 999),
        })
        .collect()
}

/// A stream of the graph being built, with what the naive evaluation says it
/// carries.
struct Node {
    stream: Stream<Visit>,
    want: Vec<Visit>,
    consumed: bool,
}

/// Keyed by user: the distinct pages (map state) and the visits, emitted once
/// per user at the end of input as `amount = distinct × 1000 + visits`.
#[derive(Clone, Default)]
struct DistinctPages {
    pages: MapState<String, u64>,
}

impl KeyedProcessFunction<String, Visit, Visit> for DistinctPages {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.pages = states.map_state("pages")?;
        Ok(())
    }
    fn process(
        &mut self,
        v: &Visit,
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        let pages = &self.pages;
        if ctx.map_update(pages, v.page.as_str(), |n| *n += 1)?.is_none() {
            ctx.map_insert(pages, v.page.clone(), 1)?;
        }
        Ok(())
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        let entries = ctx.map_entries(&self.pages)?;
        let visits: u64 = entries.iter().map(|(_, n)| n).sum();
        let user = ctx.key().to_string();
        out.emit(Visit { user, page: "distinct".into(), amount: entries.len() as u64 * 1000 + visits });
        Ok(())
    }
}

fn distinct_pages(input: &[Visit]) -> Vec<Visit> {
    let mut per_user: BTreeMap<&str, (BTreeSet<&str>, u64)> = BTreeMap::new();
    for v in input {
        let e = per_user.entry(&v.user).or_default();
        e.0.insert(&v.page);
        e.1 += 1;
    }
    let amount = |(pages, n): (BTreeSet<&str>, u64)| pages.len() as u64 * 1000 + n;
    per_user.into_iter().map(|(u, e)| Visit { user: u.into(), page: "distinct".into(), amount: amount(e) }).collect()
}

/// Keyed by user over two inputs: the sum of the first's amounts and the
/// count of the second's records, emitted once per user at the end.
#[derive(Clone, Default)]
struct SumAndCount {
    sum: ValueState<u64>,
    count: ValueState<u64>,
}

impl SumAndCount {
    fn add(ctx: &mut KeyedContext<'_, String>, state: &ValueState<u64>, by: u64) -> Result<(), OperatorError> {
        let now = ctx.value(state)?.copied().unwrap_or(0) + by;
        ctx.set_value(state, now)
    }
}

impl KeyedCoProcessFunction<String, Visit, Visit, Visit> for SumAndCount {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.sum = states.value_state("sum")?;
        self.count = states.value_state("count")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        v: &Visit,
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        Self::add(ctx, &self.sum, v.amount)
    }
    fn process_second(
        &mut self,
        _: &Visit,
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        Self::add(ctx, &self.count, 1)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        let sum = ctx.value(&self.sum)?.copied().unwrap_or(0);
        let count = ctx.value(&self.count)?.copied().unwrap_or(0);
        out.emit(Visit { user: ctx.key().to_string(), page: "co".into(), amount: sum * 7 + count });
        Ok(())
    }
}

fn sum_and_count(first: &[Visit], second: &[Visit]) -> Vec<Visit> {
    let mut per_user: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    first.iter().for_each(|v| per_user.entry(&v.user).or_default().0 += v.amount);
    second.iter().for_each(|v| per_user.entry(&v.user).or_default().1 += 1);
    per_user
        .into_iter()
        .map(|(u, (sum, count))| Visit { user: u.into(), page: "co".into(), amount: sum * 7 + count })
        .collect()
}

/// Not keyed, over two inputs: holds every record of both in list state and
/// emits them at the end, the second's with `amount + 7` (what a co-map does,
/// through operator state).
#[derive(Clone, Default)]
struct HoldBoth {
    first: ListStateHandle<Visit>,
    second: ListStateHandle<Visit>,
}

impl CoProcessFunction<Visit, Visit, Visit> for HoldBoth {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.first = ctx.list_state("first")?;
        self.second = ctx.list_state("second")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        v: &Visit,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.first)?.push(v.clone())
    }
    fn process_second(
        &mut self,
        v: &Visit,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.second)?.push(bump(v))
    }
    fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, Visit>) -> Result<(), OperatorError> {
        for held in [&self.first, &self.second] {
            ctx.list(held)?.take().into_iter().for_each(|v| out.emit(v));
        }
        Ok(())
    }
}

fn bump(v: &Visit) -> Visit {
    Visit { amount: v.amount + 7, ..v.clone() }
}

/// Folds two visits of one user: amounts add, the greater page stays.
fn fold(acc: &Visit, v: &Visit) -> Visit {
    Visit { user: acc.user.clone(), page: acc.page.clone().max(v.page.clone()), amount: acc.amount + v.amount }
}

/// What the random graph is made of, one entry per kind of step.
const STEPS: usize = 13;

/// How a random graph is drawn: its shape (operators, their inputs and
/// functions) from one generator and every parallelism from another, so the
/// same shape can be built again at other parallelisms.
struct Draw {
    shape: SplitMix,
    parallelism: SplitMix,
    max_p: u64,
    /// Whether `broadcast` may be drawn: its records multiply by the next
    /// operator's parallelism, which a restore at another parallelism changes.
    broadcast: bool,
}

impl Draw {
    fn new(seed: u64, max_p: u64, broadcast: bool) -> Self {
        let parallelism = SplitMix::new(0xFA11_0000 + seed);
        Draw { shape: SplitMix::new(0x5EED_0000 + seed), parallelism, max_p, broadcast }
    }

    fn parallelism(&mut self) -> u32 {
        self.parallelism.range(1, self.max_p) as u32
    }
}

/// How a graph's sources are made from their names and records.
type MakeSource<'a> = &'a dyn Fn(&Dataflow, &str, Vec<Visit>) -> Stream<Visit>;

/// Builds a random graph drawn by `draw` into `df`: returns its streams, each
/// with its expected records. `log` names the steps taken, for a failure's
/// message.
fn build(df: &Dataflow, draw: &mut Draw, source: MakeSource<'_>, log: &mut Vec<String>) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for s in 0..draw.shape.range(1, 2) {
        let n = draw.shape.range(100, 600);
        let input = visits(&mut draw.shape, n);
        let p = draw.parallelism();
        log.push(format!("n{}: source of {} at p{p}", nodes.len(), input.len()));
        let stream = source(df, &format!("source-{s}"), input.clone()).parallelism(p);
        nodes.push(Node { stream, want: input, consumed: false });
    }
    for _ in 0..draw.shape.range(3, 8) {
        let rng = &mut draw.shape;
        let a = rng.range(0, nodes.len() as u64 - 1) as usize;
        let b = rng.range(0, nodes.len() as u64 - 1) as usize;
        let mut step = rng.range(0, STEPS as u64 - 1);
        if step == 9 && !draw.broadcast {
            step = STEPS as u64 - 1;
        }
        let p = draw.parallelism();
        if step == 11 {
            // Odd amounts to a side output, the others on: two streams.
            let odd = OutputTag::<Visit>::new("odd");
            let tag = odd.clone();
            let main = nodes[a]
                .stream
                .flat_map(move |v: &Visit, out: &mut Emitter<'_, Visit>| match v.amount % 2 {
                    1 => out.emit_side_ref(&tag, v),
                    _ => out.emit_ref(v),
                })
                .parallelism(p);
            let side = main.side_output(&odd);
            let (odds, evens) = nodes[a].want.iter().cloned().partition(|v| v.amount % 2 == 1);
            nodes[a].consumed = true;
            log.push(format!(
                "n{}: flat_map n{a} at p{p}, odd amounts to a side output n{}",
                nodes.len(),
                nodes.len() + 1
            ));
            nodes.push(Node { stream: main, want: evens, consumed: false });
            nodes.push(Node { stream: side, want: odds, consumed: false });
            continue;
        }
        let rng = &mut draw.shape;
        let (sa, wa, wb) = (&nodes[a].stream, &nodes[a].want, &nodes[b].want);
        let (stream, want, what): (Stream<Visit>, Vec<Visit>, String) = match step {
            0 => {
                let k = rng.range(2, 5);
                let want = wa.iter().filter(|v| v.amount % k != 0).cloned().collect();
                (sa.filter(move |v: &Visit| v.amount % k != 0), want, format!("filter n{a}"))
            }
            1 => {
                let f =
                    |v: &Visit| Visit { page: format!("{}!", v.page), amount: v.amount % 1000 * 3 + 1, ..v.clone() };
                (sa.map(f), wa.iter().map(f).collect(), format!("map n{a}"))
            }
            2 => {
                let parts = |v: &Visit| -> Vec<Visit> {
                    v.page.split('/').filter(|s| !s.is_empty()).map(|s| Visit { page: s.into(), ..v.clone() }).collect()
                };
                let stream = sa.flat_map(move |v: &Visit, out: &mut Emitter<'_, Visit>| {
                    parts(v).into_iter().for_each(|v| out.emit(v));
                });
                (stream, wa.iter().flat_map(parts).collect(), format!("flat_map n{a}"))
            }
            3 => {
                let want = wa.iter().chain(wb).cloned().collect();
                (sa.union(&nodes[b].stream), want, format!("union n{a} n{b}"))
            }
            4 => {
                let stream = sa.key_by_ref::<String, _>(|v: &Visit| &v.user).reduce_final(fold);
                let mut per_user: BTreeMap<&str, Visit> = BTreeMap::new();
                for v in wa {
                    per_user.entry(&v.user).and_modify(|acc| *acc = fold(acc, v)).or_insert_with(|| v.clone());
                }
                (stream, per_user.into_values().collect(), format!("key_by user, reduce n{a}"))
            }
            5 => {
                let stream = sa
                    .key_by_ref::<String, _>(|v: &Visit| &v.page)
                    .count_final()
                    .map(|(page, n): &(String, u64)| Visit { user: page.clone(), page: "count".into(), amount: *n });
                let mut per_page: BTreeMap<&str, u64> = BTreeMap::new();
                wa.iter().for_each(|v| *per_page.entry(&v.page).or_default() += 1);
                let want =
                    per_page.into_iter().map(|(pg, n)| Visit { user: pg.into(), page: "count".into(), amount: n });
                (stream, want.collect(), format!("key_by page, count n{a}"))
            }
            6 => {
                let stream = sa.key_by_ref::<String, _>(|v: &Visit| &v.user).process(DistinctPages::default());
                (stream, distinct_pages(wa), format!("key_by user, process with map state n{a}"))
            }
            7 => {
                let (ka, kb) = (
                    sa.key_by_ref::<String, _>(|v: &Visit| &v.user),
                    nodes[b].stream.key_by_ref::<String, _>(|v: &Visit| &v.user),
                );
                let stream = ka.connect(&kb).process(SumAndCount::default());
                (stream, sum_and_count(wa, wb), format!("keyed connect n{a} n{b}"))
            }
            8 => {
                let stream = sa.connect(&nodes[b].stream).map(Visit::clone, bump);
                let want = wa.iter().cloned().chain(wb.iter().map(bump)).collect();
                (stream, want, format!("connect, co-map n{a} n{b}"))
            }
            10 => {
                let stream = sa.connect(&nodes[b].stream).process(HoldBoth::default());
                let want = wa.iter().cloned().chain(wb.iter().map(bump)).collect();
                (stream, want, format!("connect, co-process holding both in list state n{a} n{b}"))
            }
            9 => {
                // Every record to each of the next operator's p subtasks.
                let want = wa.iter().flat_map(|v| std::iter::repeat_n(v.clone(), p as usize)).collect();
                (sa.broadcast().map(Visit::clone), want, format!("broadcast n{a}"))
            }
            _ => {
                let stream = if rng.range(0, 1) == 0 {
                    sa.rebalance().map(Visit::clone)
                } else {
                    sa.partition_custom(|v: &Visit, n| v.amount as usize % n).map(Visit::clone)
                };
                (stream, wa.clone(), format!("rebalance or custom n{a}"))
            }
        };
        nodes[a].consumed = true;
        if matches!(step, 3 | 7 | 8 | 10) {
            nodes[b].consumed = true;
        }
        log.push(format!("n{}: {what} at p{p}", nodes.len()));
        nodes.push(Node { stream: stream.parallelism(p), want, consumed: false });
    }
    nodes
}

/// The collect sinks of every stream of `nodes` nothing consumed.
fn sinks(nodes: &[Node]) -> Vec<(usize, CollectHandle<Visit>)> {
    nodes.iter().enumerate().filter(|(_, n)| !n.consumed).map(|(i, n)| (i, n.stream.collect())).collect()
}

/// Asserts that each sink of `nodes` holds exactly (as a multiset) the records
/// naive evaluation predicts for its stream.
fn check(seed: u64, nodes: &[Node], got: Vec<(usize, Vec<Visit>)>, log: &[String]) {
    for (i, mut got) in got {
        got.sort_unstable();
        let mut want = nodes[i].want.clone();
        want.sort_unstable();
        assert!(
            got == want,
            "seed {seed}, sink of n{i}: {} records, {} expected\n{}",
            got.len(),
            want.len(),
            log.join("\n")
        );
    }
}

#[test]
fn random_dataflow_graphs_agree_with_a_naive_evaluation() {
    let engine: Engine = small_engine().build().expect("engine starts");
    let max_p = (2 * shard_count()).min(3) as u64;
    let from_iter: MakeSource<'_> = &|df, name, input| df.from_iter(name, input);
    let mut sided = 0;
    for seed in 0..oracle_cases(40) {
        let mut draw = Draw::new(seed, max_p, true);
        let df = Dataflow::new(&format!("random-{seed}")).parallelism(draw.parallelism());
        let mut log = Vec::new();
        let nodes = build(&df, &mut draw, from_iter, &mut log);
        sided += usize::from(log.iter().any(|step| step.contains("to a side output")));
        let sinks = sinks(&nodes);
        let job = df.build().unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", log.join("\n")));
        engine
            .submit(job)
            .expect("submit")
            .wait_timeout(TIMEOUT)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", log.join("\n")));
        check(seed, &nodes, sinks.into_iter().map(|(i, h)| (i, h.take())).collect(), &log);
    }
    assert!(sided > 0, "no graph had a side output");
}

/// A source of `records` that reads them all, or (with `waiting`) the first
/// half, then tells `waiting` and waits.
fn half_then_wait(
    waiting: Option<Sender<(String, u32, u32)>>,
) -> impl Fn(&Dataflow, &str, Vec<Visit>) -> Stream<Visit> {
    move |df, name, records| {
        let readable = if waiting.is_some() { records.len() / 2 } else { usize::MAX };
        let (records, waiting) = (Arc::new(records), waiting.clone());
        df.source(name, move |_: &TaskInfo| LogSource::new(records.clone(), readable, waiting.clone()))
    }
}

/// Waits until every subtask of `sources` sources has told `waiting` it waits.
fn all_waiting(waiting: &Receiver<(String, u32, u32)>, sources: usize) {
    let mut told: BTreeMap<String, (BTreeSet<u32>, u32)> = BTreeMap::new();
    while told.len() < sources || told.values().any(|(seen, p)| seen.len() < *p as usize) {
        let (source, subtask, p) = waiting.recv_timeout(TIMEOUT).expect("every source subtask reads its half");
        let entry = told.entry(source).or_default();
        entry.0.insert(subtask);
        entry.1 = p;
    }
}

#[test]
fn random_dataflow_graphs_stopped_half_way_and_restored_at_other_parallelisms_agree_with_a_naive_evaluation() {
    let engine: Engine = small_engine().build().expect("engine starts");
    let max_p = (2 * shard_count()).min(3) as u64;
    let (mut rescaled, mut split) = (0, 0);
    for seed in 0..oracle_cases(16) {
        // Half the input, then a stop: the snapshot holds what every operator
        // kept (keyed state, lists, the sources' positions).
        let (first, second) = (&mut Vec::new(), &mut Vec::new());
        let mut draw = Draw::new(seed, max_p, false);
        let df = Dataflow::new(&format!("stopped-{seed}")).parallelism(draw.parallelism());
        let (tell, waiting) = crossbeam_channel::unbounded();
        let nodes = build(&df, &mut draw, &half_then_wait(Some(tell)), first);
        let before = sinks(&nodes);
        let job = engine.submit(df.build().unwrap_or_else(|e| panic!("seed {seed}: {e}"))).expect("submit");
        all_waiting(&waiting, first.iter().filter(|step| step.contains("source of")).count());
        job.stop_with_snapshot().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let result = job.wait_timeout(TIMEOUT).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", first.join("\n")));
        let snapshot = result.snapshot.unwrap_or_else(|| panic!("seed {seed}: a stopped job hands back its snapshot"));
        let snapshot = JobSnapshot::from_bytes(&snapshot.to_bytes().expect("to bytes")).expect("back from bytes");

        // The same shape at parallelisms drawn anew, restored, reading on to
        // the end.
        let mut draw = Draw::new(seed, max_p, false);
        draw.parallelism = SplitMix::new(0xAF7E_0000 + seed);
        let df = Dataflow::new(&format!("stopped-{seed}")).parallelism(draw.parallelism()).restore(snapshot);
        let again = build(&df, &mut draw, &half_then_wait(None), second);
        let log = [&first[..], &["restored at:".to_string()], &second[..]].concat();
        rescaled += usize::from(first != second);
        let after = sinks(&again);
        engine
            .run(df.build().unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", log.join("\n"))))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", log.join("\n")));

        let (before, after): (Vec<_>, Vec<_>) =
            before.into_iter().zip(after).map(|((i, b), (_, a))| ((i, b.take()), a.take())).unzip();
        split += usize::from(before.iter().any(|(_, b)| !b.is_empty()) && after.iter().any(|a| !a.is_empty()));
        let got = before.into_iter().zip(after).map(|((i, b), a)| (i, b.into_iter().chain(a).collect()));
        check(seed, &nodes, got.collect(), &log);
    }
    assert!(rescaled > 0, "some graph was restored at other parallelisms");
    assert!(split > 0, "some graph had results in both runs");
}
