//! Random dataflow graphs: from a seed, sources, transforms, exchanges, unions,
//! connects (co-map, a co-process function holding both inputs in list state)
//! and keyed operators (reduce, count, process with map state, keyed
//! co-process) are stacked onto random earlier streams, each at a random
//! parallelism; every stream left unconsumed ends in a collect sink. The same
//! operations run over plain vectors, one record at a time, on one thread, and
//! every sink must hold exactly the records that naive evaluation predicts.
//!
//! Keyed operators emit once per key at the end of input and their functions are
//! commutative, so each stream's records, as a multiset, do not depend on the
//! order the engine delivers them in: the comparison is exact.

use std::collections::{BTreeMap, BTreeSet};

use shardflow_benches::SplitMix;
use shardflow_engine::{
    CoProcessFunction, CollectHandle, Dataflow, Emitter, Engine, KeyedCoProcessFunction, KeyedContext,
    KeyedProcessFunction, ListStateHandle, MapState, OperatorContext, OperatorError, StateDeclarations, Stream,
    ValueState,
};

use crate::common::{oracle_cases, shard_count, small_engine, TIMEOUT};

/// The user record every stream of a random graph carries (rkyv: strings).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Visit {
    user: String,
    page: String,
    amount: u64,
}
shardflow_engine::rkyv_data!(Visit);

fn visits(rng: &mut SplitMix, n: u64) -> Vec<Visit> {
    let users = rng.range(1, 25);
    (0..n)
        .map(|_| Visit {
            user: format!("u{}", rng.range(0, users)),
            page: format!("/{}/{}", ["news", "shop", "help"][rng.range(0, 2) as usize], rng.range(0, 6)),
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
    pages: Option<MapState<String, u64>>,
}

impl KeyedProcessFunction<String, Visit, Visit> for DistinctPages {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.pages = Some(states.map_state("pages")?);
        Ok(())
    }
    fn process(
        &mut self,
        v: &Visit,
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        let pages = self.pages.as_ref().expect("opened");
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
        let entries = ctx.map_entries(self.pages.as_ref().expect("opened"))?;
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
    sum: Option<ValueState<u64>>,
    count: Option<ValueState<u64>>,
}

impl SumAndCount {
    fn add(ctx: &mut KeyedContext<'_, String>, state: &Option<ValueState<u64>>, by: u64) -> Result<(), OperatorError> {
        let state = state.as_ref().expect("opened");
        let now = ctx.value(state)?.copied().unwrap_or(0) + by;
        ctx.set_value(state, now)
    }
}

impl KeyedCoProcessFunction<String, Visit, Visit, Visit> for SumAndCount {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.sum = Some(states.value_state("sum")?);
        self.count = Some(states.value_state("count")?);
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
        let sum = ctx.value(self.sum.as_ref().expect("opened"))?.copied().unwrap_or(0);
        let count = ctx.value(self.count.as_ref().expect("opened"))?.copied().unwrap_or(0);
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
    first: Option<ListStateHandle<Visit>>,
    second: Option<ListStateHandle<Visit>>,
}

impl CoProcessFunction<Visit, Visit, Visit> for HoldBoth {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.first = Some(ctx.list_state("first")?);
        self.second = Some(ctx.list_state("second")?);
        Ok(())
    }
    fn process_first(
        &mut self,
        v: &Visit,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        ctx.list(self.first.as_ref().expect("opened"))?.push(v.clone())
    }
    fn process_second(
        &mut self,
        v: &Visit,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, Visit>,
    ) -> Result<(), OperatorError> {
        ctx.list(self.second.as_ref().expect("opened"))?.push(bump(v))
    }
    fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, Visit>) -> Result<(), OperatorError> {
        for held in [&self.first, &self.second] {
            ctx.list(held.as_ref().expect("opened"))?.take().into_iter().for_each(|v| out.emit(v));
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
const STEPS: usize = 12;

/// Builds a random graph from `rng` into `df`: returns its streams, each with its
/// expected records. `log` names the steps taken, for a failure's message.
fn build(df: &Dataflow, rng: &mut SplitMix, max_p: u64, log: &mut Vec<String>) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for s in 0..rng.range(1, 2) {
        let n = rng.range(100, 600);
        let input = visits(rng, n);
        let p = rng.range(1, max_p) as u32;
        log.push(format!("n{}: source of {} at p{p}", nodes.len(), input.len()));
        let stream = df.from_iter(&format!("source-{s}"), input.clone()).parallelism(p);
        nodes.push(Node { stream, want: input, consumed: false });
    }
    for _ in 0..rng.range(3, 8) {
        let a = rng.range(0, nodes.len() as u64 - 1) as usize;
        let b = rng.range(0, nodes.len() as u64 - 1) as usize;
        let p = rng.range(1, max_p) as u32;
        let step = rng.range(0, STEPS as u64 - 1);
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

#[test]
fn random_dataflow_graphs_agree_with_a_naive_evaluation() {
    let engine: Engine = small_engine().build().expect("engine starts");
    let max_p = (2 * shard_count()).min(3) as u64;
    for seed in 0..oracle_cases(40) {
        let mut rng = SplitMix::new(0x5EED_0000 + seed);
        let df = Dataflow::new(&format!("random-{seed}")).parallelism(rng.range(1, max_p) as u32);
        let mut log = Vec::new();
        let nodes = build(&df, &mut rng, max_p, &mut log);
        let sinks: Vec<(usize, CollectHandle<Visit>)> =
            nodes.iter().enumerate().filter(|(_, n)| !n.consumed).map(|(i, n)| (i, n.stream.collect())).collect();
        let job = df.build().unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", log.join("\n")));
        engine
            .submit(job)
            .expect("submit")
            .wait_timeout(TIMEOUT)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", log.join("\n")));
        for (i, handle) in sinks {
            let mut got = handle.take();
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
}
