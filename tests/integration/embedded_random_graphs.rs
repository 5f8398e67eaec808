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
//! Each graph runs twice over: on `Visit`, an rkyv record with strings (read in
//! place, keyed by a borrowed `&str`), and on `Hit`, the same visit as plain
//! data (its names interned as numbers), whose chains pass records in batches.
//!
//! Keyed operators emit once per key at the end of input and their functions are
//! commutative, so each stream's records, as a multiset, do not depend on the
//! order the engine delivers them in: the comparison is exact.
//!
//! The same graphs are also stopped with a snapshot half-way through their
//! input (sources that read half and wait) and restored at other
//! parallelisms: the records of the two runs together are again exactly what
//! naive evaluation predicts, whatever each operator held when it stopped.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use bytemuck::{Pod, Zeroable};

use crossbeam_channel::{Receiver, Sender};

use shardflow_benches::SplitMix;
use shardflow_engine::{
    CoProcessFunction, CollectHandle, Data, Dataflow, Emitter, Engine, JobSnapshot, Key, KeySelector,
    KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction, KeyedStream, ListStateHandle, MapState,
    OperatorContext, OperatorError, OutputTag, ProcessFunction, StateDeclarations, Stream, TaskInfo, ValueState,
};

use crate::common::{oracle_cases, shard_count, small_engine, LogSource, TIMEOUT};

/// What a random graph's streams carry, as the naive evaluation sees it; one
/// of the two record types (rkyv: strings).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Visit {
    user: String,
    page: String,
    amount: u64,
}
shardflow_engine::rkyv_data!(Visit);

/// A visit as plain data: user and page are numbers [`name`] interns.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
struct Hit {
    user: u64,
    page: u64,
    amount: u64,
}
shardflow_engine::pod_data!(Hit);

/// Interned names: number → name, and back.
#[derive(Default)]
struct Names {
    names: Vec<String>,
    numbers: HashMap<String, u64>,
}

static NAMES: LazyLock<Mutex<Names>> = LazyLock::new(Default::default);

/// The number of `name`, given on its first use.
fn number(name: &str) -> u64 {
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&n) = names.numbers.get(name) {
        return n;
    }
    let n = names.names.len() as u64;
    names.names.push(name.to_string());
    names.numbers.insert(name.to_string(), n);
    n
}

/// The name numbered `n`.
fn name(n: u64) -> String {
    let names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    names.names.get(n as usize).cloned().unwrap_or_else(|| panic!("no name numbered {n}"))
}

/// A record type a random graph runs on: each operation is written once, on
/// `Visit`s, and a stream of another type converts on the way in and out.
trait Row: Data<Borrowed = Self> + Debug {
    /// What its users and pages are keyed by.
    type Key: Key;
    fn of(v: &Visit) -> Self;
    fn visit(&self) -> Visit;
    fn by_user(s: &Stream<Self>) -> KeyedStream<Self::Key, Self, impl KeySelector<Self::Key, Self>>;
    fn by_page(s: &Stream<Self>) -> KeyedStream<Self::Key, Self, impl KeySelector<Self::Key, Self>>;
    /// The user or page name a key stands for.
    fn name(key: &<Self::Key as Data>::Borrowed) -> String;
}

impl Row for Visit {
    type Key = String;
    fn of(v: &Visit) -> Self {
        v.clone()
    }
    fn visit(&self) -> Visit {
        self.clone()
    }
    fn by_user(s: &Stream<Self>) -> KeyedStream<String, Self, impl KeySelector<String, Self>> {
        s.key_by_ref::<String, _>(|v: &Visit| &v.user)
    }
    fn by_page(s: &Stream<Self>) -> KeyedStream<String, Self, impl KeySelector<String, Self>> {
        s.key_by_ref::<String, _>(|v: &Visit| &v.page)
    }
    fn name(key: &str) -> String {
        key.to_string()
    }
}

impl Row for Hit {
    type Key = u64;
    fn of(v: &Visit) -> Self {
        Hit { user: number(&v.user), page: number(&v.page), amount: v.amount }
    }
    fn visit(&self) -> Visit {
        Visit { user: name(self.user), page: name(self.page), amount: self.amount }
    }
    fn by_user(s: &Stream<Self>) -> KeyedStream<u64, Self, impl KeySelector<u64, Self>> {
        s.key_by(|h: &Hit| h.user)
    }
    fn by_page(s: &Stream<Self>) -> KeyedStream<u64, Self, impl KeySelector<u64, Self>> {
        s.key_by(|h: &Hit| h.page)
    }
    fn name(key: &u64) -> String {
        name(*key)
    }
}

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
struct Node<R: Row> {
    stream: Stream<R>,
    want: Vec<Visit>,
    consumed: bool,
}

/// Keyed by user: the distinct pages (map state) and the visits, emitted once
/// per user at the end of input as `amount = distinct × 1000 + visits`.
struct DistinctPages<R: Row> {
    pages: MapState<String, u64>,
    _r: PhantomData<fn() -> R>,
}

impl<R: Row> DistinctPages<R> {
    fn new() -> Self {
        DistinctPages { pages: MapState::default(), _r: PhantomData }
    }
}

impl<R: Row> Clone for DistinctPages<R> {
    fn clone(&self) -> Self {
        DistinctPages { pages: self.pages.clone(), _r: PhantomData }
    }
}

impl<R: Row> KeyedProcessFunction<R::Key, R, R> for DistinctPages<R> {
    fn open(&mut self, states: &mut StateDeclarations<'_, R::Key>) -> Result<(), OperatorError> {
        self.pages = states.map_state("pages")?;
        Ok(())
    }
    fn process(
        &mut self,
        r: &R,
        ctx: &mut KeyedContext<'_, R::Key>,
        _: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        let (pages, v) = (&self.pages, r.visit());
        if ctx.map_update(pages, v.page.as_str(), |n| *n += 1)?.is_none() {
            ctx.map_insert(pages, v.page.clone(), 1)?;
        }
        Ok(())
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, R::Key>,
        out: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        let entries = ctx.map_entries(&self.pages)?;
        let visits: u64 = entries.iter().map(|(_, n)| n).sum();
        let user = R::name(ctx.key());
        out.emit(R::of(&Visit { user, page: "distinct".into(), amount: entries.len() as u64 * 1000 + visits }));
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
struct SumAndCount<R: Row> {
    sum: ValueState<u64>,
    count: ValueState<u64>,
    _r: PhantomData<fn() -> R>,
}

impl<R: Row> SumAndCount<R> {
    fn new() -> Self {
        SumAndCount { sum: ValueState::default(), count: ValueState::default(), _r: PhantomData }
    }

    fn add(ctx: &mut KeyedContext<'_, R::Key>, state: &ValueState<u64>, by: u64) -> Result<(), OperatorError> {
        let now = ctx.value(state)?.copied().unwrap_or(0) + by;
        ctx.set_value(state, now)
    }
}

impl<R: Row> Clone for SumAndCount<R> {
    fn clone(&self) -> Self {
        SumAndCount { sum: self.sum.clone(), count: self.count.clone(), _r: PhantomData }
    }
}

impl<R: Row> KeyedCoProcessFunction<R::Key, R, R, R> for SumAndCount<R> {
    fn open(&mut self, states: &mut StateDeclarations<'_, R::Key>) -> Result<(), OperatorError> {
        self.sum = states.value_state("sum")?;
        self.count = states.value_state("count")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        r: &R,
        ctx: &mut KeyedContext<'_, R::Key>,
        _: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        Self::add(ctx, &self.sum, r.visit().amount)
    }
    fn process_second(
        &mut self,
        _: &R,
        ctx: &mut KeyedContext<'_, R::Key>,
        _: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        Self::add(ctx, &self.count, 1)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, R::Key>,
        out: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        let sum = ctx.value(&self.sum)?.copied().unwrap_or(0);
        let count = ctx.value(&self.count)?.copied().unwrap_or(0);
        out.emit(R::of(&Visit { user: R::name(ctx.key()), page: "co".into(), amount: sum * 7 + count }));
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
struct HoldBoth<R: Row> {
    first: ListStateHandle<R>,
    second: ListStateHandle<R>,
}

impl<R: Row> HoldBoth<R> {
    fn new() -> Self {
        HoldBoth { first: ListStateHandle::default(), second: ListStateHandle::default() }
    }
}

impl<R: Row> Clone for HoldBoth<R> {
    fn clone(&self) -> Self {
        HoldBoth { first: self.first.clone(), second: self.second.clone() }
    }
}

impl<R: Row> CoProcessFunction<R, R, R> for HoldBoth<R> {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.first = ctx.list_state("first")?;
        self.second = ctx.list_state("second")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        r: &R,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.first)?.push(r.clone())
    }
    fn process_second(
        &mut self,
        r: &R,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.second)?.push(R::of(&bump(&r.visit())))
    }
    fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, R>) -> Result<(), OperatorError> {
        for held in [&self.first, &self.second] {
            ctx.list(held)?.take().into_iter().for_each(|v| out.emit(v));
        }
        Ok(())
    }
}

fn bump(v: &Visit) -> Visit {
    Visit { amount: v.amount + 7, ..v.clone() }
}

/// Keyed by user: each record counted in value state as it comes, the count
/// so far emitted at once (a user's n visits give amounts 1 to n, whatever
/// their order).
struct RunningCount<R: Row> {
    seen: ValueState<u64>,
    _r: PhantomData<fn() -> R>,
}

impl<R: Row> RunningCount<R> {
    fn new() -> Self {
        RunningCount { seen: ValueState::default(), _r: PhantomData }
    }
}

impl<R: Row> Clone for RunningCount<R> {
    fn clone(&self) -> Self {
        RunningCount { seen: self.seen.clone(), _r: PhantomData }
    }
}

impl<R: Row> KeyedProcessFunction<R::Key, R, R> for RunningCount<R> {
    fn open(&mut self, states: &mut StateDeclarations<'_, R::Key>) -> Result<(), OperatorError> {
        self.seen = states.value_state("seen")?;
        Ok(())
    }
    fn process(
        &mut self,
        _: &R,
        ctx: &mut KeyedContext<'_, R::Key>,
        out: &mut Emitter<'_, R>,
    ) -> Result<(), OperatorError> {
        let seen = ctx.value(&self.seen)?.copied().unwrap_or(0) + 1;
        ctx.set_value(&self.seen, seen)?;
        out.emit(R::of(&Visit { user: R::name(ctx.key()), page: "running".into(), amount: seen }));
        Ok(())
    }
}

fn running_counts(input: &[Visit]) -> Vec<Visit> {
    let mut per_user: BTreeMap<&str, u64> = BTreeMap::new();
    input.iter().for_each(|v| *per_user.entry(&v.user).or_default() += 1);
    let running = |user: &str, i| Visit { user: user.into(), page: "running".into(), amount: i };
    per_user.into_iter().flat_map(|(user, n)| (1..=n).map(move |i| running(user, i))).collect()
}

/// Not keyed: each record bumped as it comes (a process function with no
/// state to keep).
struct Bumped<R: Row>(PhantomData<fn() -> R>);

impl<R: Row> Clone for Bumped<R> {
    fn clone(&self) -> Self {
        Bumped(PhantomData)
    }
}

impl<R: Row> ProcessFunction<R, R> for Bumped<R> {
    fn process(&mut self, r: &R, _: &mut OperatorContext<'_>, out: &mut Emitter<'_, R>) -> Result<(), OperatorError> {
        out.emit(on(bump)(r));
        Ok(())
    }
}

/// Folds two visits of one user: amounts add, the greater page stays.
fn fold(acc: &Visit, v: &Visit) -> Visit {
    Visit { user: acc.user.clone(), page: acc.page.clone().max(v.page.clone()), amount: acc.amount + v.amount }
}

/// What the random graph is made of, one entry per kind of step.
const STEPS: usize = 15;

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
type MakeSource<'a, R> = &'a dyn Fn(&Dataflow, &str, Vec<R>) -> Stream<R>;

/// What counting keys of `R` gives: each key with its records.
type Counted<R> = (<R as Row>::Key, u64);

/// `f` over the visit `r` stands for.
fn on<R: Row>(f: impl Fn(&Visit) -> Visit) -> impl Fn(&R) -> R {
    move |r: &R| R::of(&f(&r.visit()))
}

/// Builds a random graph drawn by `draw` into `df`: returns its streams, each
/// with its expected records. `log` names the steps taken, for a failure's
/// message.
fn build<R: Row>(df: &Dataflow, draw: &mut Draw, source: MakeSource<'_, R>, log: &mut Vec<String>) -> Vec<Node<R>>
where
    Counted<R>: Data<Borrowed = Counted<R>>,
{
    let mut nodes: Vec<Node<R>> = Vec::new();
    for s in 0..draw.shape.range(1, 2) {
        let n = draw.shape.range(100, 600);
        let input = visits(&mut draw.shape, n);
        let p = draw.parallelism();
        log.push(format!("n{}: source of {} at p{p}", nodes.len(), input.len()));
        let stream = source(df, &format!("source-{s}"), input.iter().map(R::of).collect()).parallelism(p);
        nodes.push(Node { stream, want: input, consumed: false });
    }
    for _ in 0..draw.shape.range(3, 8) {
        let rng = &mut draw.shape;
        let a = rng.range(0, nodes.len() as u64 - 1) as usize;
        let b = rng.range(0, nodes.len() as u64 - 1) as usize;
        let mut step = rng.range(0, STEPS as u64 - 1);
        if step == 9 && !draw.broadcast {
            step = 12;
        }
        let p = draw.parallelism();
        if step == 11 {
            // Odd amounts to a side output, the others on: two streams.
            let odd = OutputTag::<R>::new("odd");
            let tag = odd.clone();
            let main = nodes[a]
                .stream
                .flat_map(move |r: &R, out: &mut Emitter<'_, R>| match r.visit().amount % 2 {
                    1 => out.emit_side_ref(&tag, r),
                    _ => out.emit_ref(r),
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
        let (stream, want, what): (Stream<R>, Vec<Visit>, String) = match step {
            0 => {
                let k = rng.range(2, 5);
                let want = wa.iter().filter(|v| v.amount % k != 0).cloned().collect();
                (sa.filter(move |r: &R| r.visit().amount % k != 0), want, format!("filter n{a}"))
            }
            1 => {
                let f =
                    |v: &Visit| Visit { page: format!("{}!", v.page), amount: v.amount % 1000 * 3 + 1, ..v.clone() };
                let want = wa.iter().map(f).collect();
                match rng.range(0, 1) {
                    0 => (sa.map(on(f)), want, format!("map n{a}")),
                    _ => (sa.try_map(move |r: &R| Ok(on(f)(r))), want, format!("try_map n{a}")),
                }
            }
            2 => {
                let parts = |v: &Visit| -> Vec<Visit> {
                    v.page.split('/').filter(|s| !s.is_empty()).map(|s| Visit { page: s.into(), ..v.clone() }).collect()
                };
                let stream = sa.flat_map(move |r: &R, out: &mut Emitter<'_, R>| {
                    parts(&r.visit()).iter().for_each(|v| out.emit(R::of(v)));
                });
                (stream, wa.iter().flat_map(parts).collect(), format!("flat_map n{a}"))
            }
            3 => {
                let want = wa.iter().chain(wb).cloned().collect();
                (sa.union(&nodes[b].stream), want, format!("union n{a} n{b}"))
            }
            4 => {
                let stream = R::by_user(sa).reduce_final(|acc: &R, r: &R| R::of(&fold(&acc.visit(), &r.visit())));
                let mut per_user: BTreeMap<&str, Visit> = BTreeMap::new();
                for v in wa {
                    per_user.entry(&v.user).and_modify(|acc| *acc = fold(acc, v)).or_insert_with(|| v.clone());
                }
                (stream, per_user.into_values().collect(), format!("key_by user, reduce n{a}"))
            }
            5 => {
                let stream = R::by_page(sa).count_final().map(|(page, n): &Counted<R>| {
                    R::of(&Visit { user: R::name(page.borrow()), page: "count".into(), amount: *n })
                });
                let mut per_page: BTreeMap<&str, u64> = BTreeMap::new();
                wa.iter().for_each(|v| *per_page.entry(&v.page).or_default() += 1);
                let want =
                    per_page.into_iter().map(|(pg, n)| Visit { user: pg.into(), page: "count".into(), amount: n });
                (stream, want.collect(), format!("key_by page, count n{a}"))
            }
            6 => {
                let stream = R::by_user(sa).process(DistinctPages::new());
                (stream, distinct_pages(wa), format!("key_by user, process with map state n{a}"))
            }
            7 => {
                let stream = R::by_user(sa).connect(&R::by_user(&nodes[b].stream)).process(SumAndCount::new());
                (stream, sum_and_count(wa, wb), format!("keyed connect n{a} n{b}"))
            }
            8 => {
                let connected = sa.connect(&nodes[b].stream);
                let want = wa.iter().cloned().chain(wb.iter().map(bump)).collect();
                match rng.range(0, 1) {
                    0 => (connected.map(R::clone, on(bump)), want, format!("connect, co-map n{a} n{b}")),
                    _ => {
                        let stream = connected.flat_map(
                            |r: &R, out: &mut Emitter<'_, R>| out.emit_ref(r),
                            |r: &R, out: &mut Emitter<'_, R>| out.emit(on(bump)(r)),
                        );
                        (stream, want, format!("connect, co-flat-map n{a} n{b}"))
                    }
                }
            }
            10 => {
                let stream = sa.connect(&nodes[b].stream).process(HoldBoth::new());
                let want = wa.iter().cloned().chain(wb.iter().map(bump)).collect();
                (stream, want, format!("connect, co-process holding both in list state n{a} n{b}"))
            }
            13 => {
                let stream = R::by_user(sa).process(RunningCount::new());
                (stream, running_counts(wa), format!("key_by user, process emitting a running count n{a}"))
            }
            14 => (sa.process(Bumped(PhantomData)), wa.iter().map(bump).collect(), format!("process n{a}")),
            9 => {
                // Every record to each of the next operator's p subtasks.
                let want = wa.iter().flat_map(|v| std::iter::repeat_n(v.clone(), p as usize)).collect();
                (sa.broadcast().map(R::clone), want, format!("broadcast n{a}"))
            }
            _ => {
                let stream = if rng.range(0, 1) == 0 {
                    sa.rebalance().map(R::clone)
                } else {
                    sa.partition_custom(|r: &R, n| r.visit().amount as usize % n).map(R::clone)
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
fn sinks<R: Row>(nodes: &[Node<R>]) -> Vec<(usize, CollectHandle<R>)> {
    nodes.iter().enumerate().filter(|(_, n)| !n.consumed).map(|(i, n)| (i, n.stream.collect())).collect()
}

/// Asserts that each sink of `nodes` holds exactly (as a multiset) the records
/// naive evaluation predicts for its stream.
fn check<R: Row>(seed: u64, nodes: &[Node<R>], got: Vec<(usize, Vec<R>)>, log: &[String]) {
    for (i, got) in got {
        let mut got: Vec<Visit> = got.iter().map(R::visit).collect();
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
    random_graphs::<Visit>(0);
}

#[test]
fn random_dataflow_graphs_of_plain_data_agree_with_a_naive_evaluation() {
    random_graphs::<Hit>(1000);
}

/// Random graphs of records `R` from seeds `from..` agree with the naive
/// evaluation.
fn random_graphs<R: Row>(from: u64)
where
    Counted<R>: Data<Borrowed = Counted<R>>,
{
    let engine: Engine = small_engine().build().expect("engine starts");
    let max_p = (2 * shard_count()).min(3) as u64;
    let from_iter: MakeSource<'_, R> = &|df, name, input| df.from_iter(name, input);
    let mut sided = 0;
    for seed in from..from + oracle_cases(40) {
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
fn half_then_wait<R: Row>(
    waiting: Option<Sender<(String, u32, u32)>>,
) -> impl Fn(&Dataflow, &str, Vec<R>) -> Stream<R> {
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
    stopped_and_restored::<Visit>(0);
}

#[test]
fn random_graphs_of_plain_data_stopped_and_restored_at_other_parallelisms_agree_with_a_naive_evaluation() {
    stopped_and_restored::<Hit>(1000);
}

/// Random graphs of records `R` from seeds `from..`, stopped with a snapshot
/// half-way and restored at other parallelisms, agree with the naive
/// evaluation.
fn stopped_and_restored<R: Row>(from: u64)
where
    Counted<R>: Data<Borrowed = Counted<R>>,
{
    let engine: Engine = small_engine().build().expect("engine starts");
    let max_p = (2 * shard_count()).min(3) as u64;
    let (mut rescaled, mut split) = (0, 0);
    for seed in from..from + oracle_cases(16) {
        // Half the input, then a stop: the snapshot holds what every operator
        // kept (keyed state, lists, the sources' positions).
        let (first, second) = (&mut Vec::new(), &mut Vec::new());
        let mut draw = Draw::new(seed, max_p, false);
        let df = Dataflow::new(&format!("stopped-{seed}")).parallelism(draw.parallelism());
        let (tell, waiting) = crossbeam_channel::unbounded();
        let nodes = build(&df, &mut draw, &half_then_wait::<R>(Some(tell)), first);
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
        let again = build(&df, &mut draw, &half_then_wait::<R>(None), second);
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
