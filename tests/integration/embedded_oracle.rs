//! Oracles for five job shapes (union, connect, flat map, key by, reduce,
//! running count, process with map state, keyed co-process, a keyed ingress
//! pushed from a thread) at random parallelisms over random user records with
//! strings, each checked against a naive single-threaded evaluation. Random
//! shapes: `embedded_random_graphs`.

use std::collections::{BTreeMap, BTreeSet};

use shardflow_benches::SplitMix;
use shardflow_engine::{
    Dataflow, Emitter, Engine, KeyedCoProcessFunction, KeyedContext, KeyedProcessFunction, MapState, OperatorError,
    QueueBound, StateDeclarations, ValueState,
};

use crate::common::{oracle_cases, shard_count, small_engine, TIMEOUT};

/// A user's record: strings and a number, encoded with rkyv.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Click {
    user: String,
    page: String,
    amount: u64,
}
shardflow_engine::rkyv_data!(Click);

fn clicks(rng: &mut SplitMix, n: usize) -> Vec<Click> {
    let users = rng.range(1, 40);
    (0..n)
        .map(|_| Click {
            user: format!("user-{}", rng.range(0, users)),
            page: format!("/{}/{}", ["news", "shop", "help"][rng.range(0, 2) as usize], rng.range(0, 9)),
            amount: rng.range(0, 1000),
        })
        .collect()
}

fn run<T>(engine: &Engine, df: &Dataflow, handle: &shardflow_engine::CollectHandle<T>) -> Vec<T> {
    let job = df.build().expect("the dataflow is valid");
    engine.submit(job).expect("submit").wait_timeout(TIMEOUT).expect("the job finishes");
    handle.take()
}

/// Union of two sources, filter, map, key by user, reduce to each user's total.
fn union_filter_map_reduce(engine: &Engine, rng: &mut SplitMix, max_p: u64) {
    let (a, b) = (clicks(rng, 1500), clicks(rng, 700));
    let k = rng.range(2, 5);
    let df = Dataflow::new("union-reduce").parallelism(rng.range(1, max_p) as u32);
    let left = df.from_iter("left", a.clone()).parallelism(rng.range(1, max_p) as u32);
    let right = df.from_iter("right", b.clone()).parallelism(rng.range(1, max_p) as u32);
    let totals = left
        .union(&right)
        .filter(move |c: &Click| c.amount % k != 0)
        .map(|c: &Click| Click { amount: c.amount * 2, ..c.clone() })
        .key_by_ref::<String, _>(|c: &Click| &c.user)
        .reduce_final(|acc: &Click, c: &Click| Click { amount: acc.amount + c.amount, ..acc.clone() })
        .parallelism(rng.range(1, max_p) as u32)
        .map(|c: &Click| (c.user.clone(), c.amount))
        .collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for c in a.iter().chain(&b).filter(|c| c.amount % k != 0) {
        *want.entry(c.user.clone()).or_default() += c.amount * 2;
    }
    let got: BTreeMap<String, u64> = run(engine, &df, &totals).into_iter().collect();
    assert_eq!(got, want, "union → filter → map → reduce");
}

/// Per user: the distinct pages (map state) and the clicks, emitted at the end.
#[derive(Clone)]
struct PagesPerUser {
    pages: MapState<String, u64>,
}

impl KeyedProcessFunction<String, Click, (String, u64, u64)> for PagesPerUser {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.pages = states.map_state("pages")?;
        Ok(())
    }
    fn process(
        &mut self,
        c: &Click,
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, (String, u64, u64)>,
    ) -> Result<(), OperatorError> {
        let pages = &self.pages;
        if ctx.map_update(pages, c.page.as_str(), |n| *n += 1)?.is_none() {
            ctx.map_insert(pages, c.page.clone(), 1)?;
        }
        Ok(())
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, u64, u64)>,
    ) -> Result<(), OperatorError> {
        let entries = ctx.map_entries(&self.pages)?;
        let clicks = entries.iter().map(|(_, n)| n).sum();
        out.emit((ctx.key().to_string(), entries.len() as u64, clicks));
        Ok(())
    }
}

/// Per user: the distinct pages and the clicks, as `PagesPerUser` emits them.
fn pages_per_user(input: &[Click]) -> BTreeSet<(String, u64, u64)> {
    let mut pages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for c in input {
        pages.entry(c.user.clone()).or_default().insert(c.page.clone());
        *counts.entry(c.user.clone()).or_default() += 1;
    }
    pages.into_iter().map(|(u, p)| (u.clone(), p.len() as u64, counts[&u])).collect()
}

/// Per user: tier times the amounts spent, as `TierTotals` emits them.
fn tier_totals(users: &[(String, u64)], input: &[Click]) -> BTreeMap<String, u64> {
    let tier: BTreeMap<&str, u64> = users.iter().map(|(u, t)| (u.as_str(), *t)).collect();
    let mut want: BTreeMap<String, u64> = users.iter().map(|(u, _)| (u.clone(), 0)).collect();
    for c in input {
        *want.entry(c.user.clone()).or_default() += tier.get(c.user.as_str()).copied().unwrap_or(0) * c.amount;
    }
    want
}

fn keyed_process_with_map_state(engine: &Engine, rng: &mut SplitMix, max_p: u64) {
    let input = clicks(rng, 2000);
    let df = Dataflow::new("pages").parallelism(rng.range(1, max_p) as u32);
    let out = df
        .from_iter("clicks", input.clone())
        .key_by(|c: &Click| c.user.clone())
        .process(PagesPerUser { pages: Default::default() })
        .parallelism(rng.range(1, max_p) as u32)
        .collect();
    let got: BTreeSet<(String, u64, u64)> = run(engine, &df, &out).into_iter().collect();
    assert_eq!(got, pages_per_user(&input), "keyed process with map state");
}

/// Users' tiers joined with their clicks by a keyed co-process.
#[derive(Clone, Default)]
struct TierTotals {
    tier: ValueState<u64>,
    total: ValueState<u64>,
}

impl KeyedCoProcessFunction<String, (String, u64), Click, (String, u64)> for TierTotals {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.tier = states.value_state("tier")?;
        self.total = states.value_state("total")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        user: &(String, u64),
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.set_value(&self.tier, user.1)
    }
    fn process_second(
        &mut self,
        c: &Click,
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        let total = &self.total;
        let now = ctx.value(total)?.copied().unwrap_or(0) + c.amount;
        ctx.set_value(total, now)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        let tier = ctx.value(&self.tier)?.copied().unwrap_or(0);
        let total = ctx.value(&self.total)?.copied().unwrap_or(0);
        out.emit((ctx.key().to_string(), tier * total));
        Ok(())
    }
}

fn connect_keyed_co_process(engine: &Engine, rng: &mut SplitMix, max_p: u64) {
    let input = clicks(rng, 1500);
    let users: Vec<(String, u64)> = (0..30).map(|u| (format!("user-{u}"), rng.range(1, 3))).collect();
    let df = Dataflow::new("tiers").parallelism(rng.range(1, max_p) as u32);
    let tiers = df.from_iter("users", users.clone()).key_by_ref::<String, _>(|u: &(String, u64)| &u.0);
    let spend = df.from_iter("clicks", input.clone()).key_by_ref::<String, _>(|c: &Click| &c.user);
    let out = tiers.connect(&spend).process(TierTotals::default()).collect();
    let got: BTreeMap<String, u64> = run(engine, &df, &out).into_iter().collect();
    assert_eq!(got, tier_totals(&users, &input), "connect → keyed co-process");
}

/// Clicks pushed from a thread into a keyed ingress (bounded by count and
/// bytes): its keyed stream feeds a chained process with map state and,
/// forward, the second input of a keyed co-process.
fn keyed_ingress_into_process_and_co_process(engine: &Engine, rng: &mut SplitMix, max_p: u64) {
    let input = clicks(rng, 1500);
    let users: Vec<(String, u64)> = (0..30).map(|u| (format!("user-{u}"), rng.range(1, 3))).collect();
    let df = Dataflow::new("keyed-ingress").parallelism(rng.range(1, max_p) as u32);
    let bound = QueueBound::records(rng.range(1, 64) as usize).and_bytes(rng.range(64, 4096) as usize);
    let (spend, mut ingress) = df.ingress_keyed::<String, Click, _>("clicks", bound, |c: &Click| c.user.clone());
    let pages = spend.process(PagesPerUser { pages: Default::default() }).collect();
    let tiers = df.from_iter("users", users.clone()).key_by_ref::<String, _>(|u: &(String, u64)| &u.0);
    let totals = tiers.connect(&spend).process(TierTotals::default()).collect();
    let handle = engine.submit(df.build().expect("the dataflow is valid")).expect("submit");
    let pushed = input.clone();
    let pusher = std::thread::spawn(move || {
        for c in pushed {
            ingress.push(c).expect("the job takes every click");
        }
    });
    crate::common::join_within(pusher, "every click pushed");
    handle.wait_timeout(TIMEOUT).expect("the job ends when the ingress handle is dropped");

    let got: BTreeSet<(String, u64, u64)> = pages.take().into_iter().collect();
    assert_eq!(got, pages_per_user(&input), "keyed ingress → process with map state");
    let got: BTreeMap<String, u64> = totals.take().into_iter().collect();
    assert_eq!(got, tier_totals(&users, &input), "keyed ingress → keyed co-process");
}

/// Page segments by flat map, counted per segment (running counts: the last
/// count of each segment is its total), plus a co-map of two streams.
fn flat_map_running_count_and_co_map(engine: &Engine, rng: &mut SplitMix, max_p: u64) {
    let input = clicks(rng, 1000);
    let df = Dataflow::new("segments").parallelism(rng.range(1, max_p) as u32);
    let s = df.from_iter("clicks", input.clone());
    let counts = s
        .flat_map(|c: &Click, out: &mut Emitter<'_, String>| {
            for part in c.page.split('/').filter(|p| !p.is_empty()) {
                out.emit_ref(part);
            }
        })
        .key_by_ref::<String, _>(|w: &str| w)
        .count()
        .collect();
    let amounts = df.generate("numbers", 500, |r| r).parallelism(rng.range(1, max_p) as u32);
    let mixed = s.connect(&amounts).map(|c: &Click| c.amount, |n: &u64| n * 1000).collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for c in &input {
        for part in c.page.split('/').filter(|p| !p.is_empty()) {
            *want.entry(part.to_string()).or_default() += 1;
        }
    }
    let job = df.build().unwrap();
    engine.submit(job).unwrap().wait_timeout(TIMEOUT).unwrap();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (w, n) in counts.take() {
        let e = last.entry(w).or_default();
        *e = (*e).max(n);
    }
    assert_eq!(last, want, "flat map → running count");
    let mut got = mixed.take();
    got.sort_unstable();
    let mut expected: Vec<u64> = input.iter().map(|c| c.amount).chain((0..500).map(|n| n * 1000)).collect();
    expected.sort_unstable();
    assert_eq!(got, expected, "co-map of two streams");
}

#[test]
fn five_job_shapes_at_random_parallelisms_agree_with_a_naive_evaluation() {
    let engine = small_engine().build().expect("engine starts");
    let max_p = (2 * shard_count()).min(3) as u64;
    for seed in 0..oracle_cases(3) {
        let mut rng = SplitMix::new(0xC0FFEE + seed);
        union_filter_map_reduce(&engine, &mut rng, max_p);
        keyed_process_with_map_state(&engine, &mut rng, max_p);
        connect_keyed_co_process(&engine, &mut rng, max_p);
        flat_map_running_count_and_co_map(&engine, &mut rng, max_p);
        keyed_ingress_into_process_and_co_process(&engine, &mut rng, max_p);
    }
}
