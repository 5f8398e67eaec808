//! Keyed state: by the real key (two keys with one hash keep separate state), in
//! key groups spread over subtasks by contiguous ranges, snapshotted per key
//! group and restored at another parallelism with the same results as an
//! uninterrupted run; and broadcast state, a whole copy per subtask. A restore
//! never drops state unnoticed: state no operator restores, other key groups, a
//! changed state type or a list no longer declared is a typed error. Reducing
//! and aggregating state, a user's aggregator, keys whose state empties (no
//! memory kept), and a snapshot saved to a file and loaded in another engine.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use bytemuck::{Pod, Zeroable};
use shardflow_benches::SplitMix;
use shardflow_engine::{
    key_group_range, subtask_of_key_group, AggregatingState, Aggregator, CoProcessFunction, CollectHandle, Dataflow,
    DataflowError, Emitter, Engine, EngineError, JobSnapshot, KeyedContext, KeyedProcessFunction, ListStateHandle,
    MapState, OperatorContext, OperatorError, ReducingState, SnapshotError, StateDeclarations,
};

use crate::common::{small_engine, TIMEOUT};

/// A key whose hash is the same for every value: every key lands in one key
/// group and one hash bucket.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
struct Colliding {
    id: u64,
}
shardflow_engine::pod_data!(Colliding);

impl Hash for Colliding {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(42);
    }
}

#[test]
fn two_keys_with_colliding_hashes_keep_separate_state() {
    let engine = small_engine().build().expect("engine starts");
    assert_eq!(shardflow_engine::key_hash(&Colliding { id: 1 }), shardflow_engine::key_hash(&Colliding { id: 2 }));
    let df = Dataflow::new("colliding").parallelism(2);
    let out = df
        .generate("keys", 3_000, |r| [r % 3, r])
        .key_by(|kv: &[u64; 2]| Colliding { id: kv[0] })
        .reduce_final(|acc: &[u64; 2], kv: &[u64; 2]| [acc[0], acc[1] + kv[1]])
        .collect();
    engine.run(df.build().unwrap()).unwrap();
    let got: BTreeMap<u64, u64> = out.take().into_iter().map(|[k, v]| (k, v)).collect();
    let mut want = BTreeMap::new();
    for r in 0..3_000u64 {
        *want.entry(r % 3).or_insert(0) += r;
    }
    assert_eq!(got, want, "three keys, three sums, though they share a hash");
}

#[test]
fn key_groups_are_contiguous_ranges_and_each_key_reaches_its_groups_owner() {
    let engine = small_engine().build().expect("engine starts");
    let (p, max) = (3u32, 128u32);
    let df = Dataflow::new("groups").parallelism(p).max_parallelism(max);
    let seen = df.generate("keys", 5_000, |r| r).key_by(|r: &u64| *r).as_stream().process(WhoAmI).collect();
    engine.run(df.build().unwrap()).unwrap();
    let router = |k: u64| {
        let group = (shardflow_engine::key_hash(&k) % u64::from(max)) as u32;
        subtask_of_key_group(group, p, max)
    };
    for (key, subtask) in seen.take() {
        assert_eq!(subtask, router(key), "key {key}");
        let group = (shardflow_engine::key_hash(&key) % u64::from(max)) as u32;
        assert!(key_group_range(subtask, p, max).contains(&group));
    }
}

/// Tags each record with the subtask it reached.
#[derive(Clone)]
struct WhoAmI;

impl shardflow_engine::ProcessFunction<u64, (u64, u32)> for WhoAmI {
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut shardflow_engine::OperatorContext<'_>,
        out: &mut shardflow_engine::Emitter<'_, (u64, u32)>,
    ) -> Result<(), shardflow_engine::OperatorError> {
        out.emit((*r, ctx.task().subtask));
        Ok(())
    }
}

/// Words with running counts per word: `(word, count so far)` on every record.
fn counting(
    engine: &Engine,
    words: &[String],
    parallelism: u32,
    snapshot: Option<JobSnapshot>,
    stop: bool,
) -> (Vec<(String, u64)>, Option<JobSnapshot>) {
    let mut df = Dataflow::new("counting").parallelism(parallelism);
    if let Some(s) = snapshot {
        df = df.restore(s);
    }
    if stop {
        df = df.stop_with_snapshot();
    }
    let out =
        df.from_iter("words", words.to_vec()).key_by_ref::<String, _>(|w: &str| w).count().name("per-word").collect();
    let result = engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job finishes");
    (out.take(), result.snapshot)
}

#[test]
fn state_snapshotted_at_parallelism_2_restores_into_3_with_the_results_of_one_run() {
    let engine = small_engine().build().expect("engine starts");
    let mut rng = SplitMix::new(7);
    let words: Vec<String> = (0..6_000).map(|_| format!("word-{}", rng.range(0, 300))).collect();
    let (first, second) = words.split_at(2_500);

    let (whole, _) = counting(&engine, &words, 2, None, false);
    let (before, snapshot) = counting(&engine, first, 2, None, true);
    let snapshot = snapshot.expect("a job stopping with a snapshot reports it");
    let state = &snapshot.operators["per-word"];
    assert!(state.key_groups.len() > 64, "state in many key groups: {}", state.key_groups.len());
    let (after, _) = counting(&engine, second, 3, Some(snapshot), false);

    // Every word's last count, and the multiset of every emitted count, agree.
    let last = |v: &[(String, u64)]| {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for (w, n) in v {
            let e = m.entry(w.clone()).or_default();
            *e = (*e).max(*n);
        }
        m
    };
    let mut split: Vec<(String, u64)> = before.iter().chain(&after).cloned().collect();
    let mut one_run = whole.clone();
    split.sort();
    one_run.sort();
    assert_eq!(split, one_run, "the two halves emit exactly what one run emits");
    assert_eq!(last(&after.iter().chain(&before).cloned().collect::<Vec<_>>()), last(&whole));
}

/// A rule: events at or above `min` are tagged `tag`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
struct Rule {
    min: u64,
    tag: u64,
}
shardflow_engine::pod_data!(Rule);

/// Every subtask's rules in broadcast state (the second input is broadcast);
/// events held in list state until the end, then matched against the rules.
/// Each subtask also says how many rules it holds, as `(u64::MAX, n)`.
#[derive(Clone, Default)]
struct Matcher {
    rules: ListStateHandle<Rule>,
    held: ListStateHandle<u64>,
}

impl CoProcessFunction<u64, Rule, (u64, u64)> for Matcher {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.rules = ctx.broadcast_state("rules")?;
        self.held = ctx.list_state("held")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        event: &u64,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.held)?.push(*event)
    }
    fn process_second(
        &mut self,
        rule: &Rule,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.rules)?.push(*rule)
    }
    fn finish(
        &mut self,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        let rules = ctx.list(&self.rules)?.to_vec();
        out.emit((u64::MAX, rules.len() as u64));
        for event in ctx.list(&self.held)?.iter() {
            rules.iter().filter(|r| *event >= r.min).for_each(|r| out.emit((*event, r.tag)));
        }
        Ok(())
    }
}

fn matching(
    engine: &Engine,
    events: Vec<u64>,
    rules: Vec<Rule>,
    parallelism: u32,
    snapshot: Option<JobSnapshot>,
    stop: bool,
) -> (Vec<(u64, u64)>, Option<JobSnapshot>) {
    let mut df = Dataflow::new("matching").parallelism(parallelism);
    if let Some(s) = snapshot {
        df = df.restore(s);
    }
    if stop {
        df = df.stop_with_snapshot();
    }
    let rules = df.from_iter("rules", rules).parallelism(1).broadcast();
    let out = df.from_iter("events", events).connect(&rules).process(Matcher::default()).name("matcher").collect();
    let result = engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job finishes");
    let mut out = out.take();
    out.sort_unstable();
    (out, result.snapshot)
}

#[test]
fn broadcast_rules_reach_every_subtask_of_a_co_process_function_and_survive_a_rescale() {
    let engine = small_engine().build().expect("engine starts");
    let rules = vec![Rule { min: 100, tag: 1 }, Rule { min: 900, tag: 2 }];
    let want: Vec<(u64, u64)> = {
        let mut w: Vec<(u64, u64)> =
            (0..1_000u64).flat_map(|e| rules.iter().filter(move |r| e >= r.min).map(move |r| (e, r.tag))).collect();
        w.sort_unstable();
        w
    };
    let told = |out: &[(u64, u64)]| out.iter().filter(|(e, _)| *e == u64::MAX).map(|(_, n)| *n).collect::<Vec<_>>();
    let matched = |out: &[(u64, u64)]| out.iter().filter(|(e, _)| *e != u64::MAX).copied().collect::<Vec<_>>();

    // One run at parallelism 3: every subtask holds both rules.
    let (out, _) = matching(&engine, (0..1_000).collect(), rules.clone(), 3, None, false);
    assert_eq!(told(&out), vec![2, 2, 2], "each subtask saw every rule");
    assert_eq!(matched(&out), want);

    // Stopped with a snapshot at 3 after half the events, restored at 2 with
    // the rest and no rules: each new subtask gets a whole copy of the rules
    // (list state would have dealt them out), and the held events come back.
    let (before, snapshot) = matching(&engine, (0..500).collect(), rules.clone(), 3, None, true);
    assert!(before.is_empty(), "stopped with a snapshot: nothing finished");
    let snapshot = snapshot.expect("a snapshot");
    assert_eq!(snapshot.operators["matcher/rules"].operator_state.len(), 3, "one copy per old subtask");
    let (after, _) = matching(&engine, (500..1_000).collect(), Vec::new(), 2, Some(snapshot), false);
    assert_eq!(told(&after), vec![2, 2], "each restored subtask holds both rules");
    assert_eq!(matched(&after), want, "the same matches as one run");
}

/// A job counting `words` on top of the keyed state in `snapshot`, with its
/// counting operator called `name`, in `max_parallelism` key groups.
fn recounting(
    words: &[&str],
    snapshot: &JobSnapshot,
    name: &str,
    max_parallelism: u32,
) -> (Dataflow, CollectHandle<(String, u64)>) {
    let df = Dataflow::new("counting").parallelism(2).max_parallelism(max_parallelism).restore(snapshot.clone());
    let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    let out = df.from_iter("words", words).key_by_ref::<String, _>(|w: &str| w).count().name(name).collect();
    (df, out)
}

#[test]
fn a_restore_that_would_drop_state_or_regroup_keys_is_refused_at_build() {
    let engine = small_engine().build().expect("engine starts");
    let words: Vec<String> = ["a", "b", "a"].iter().map(|w| w.to_string()).collect();
    let (_, snapshot) = counting(&engine, &words, 2, None, true);
    let snapshot = snapshot.expect("a snapshot");
    let run = |df: Dataflow, out: CollectHandle<(String, u64)>| {
        engine.submit(df.build().expect("builds")).unwrap().wait_timeout(TIMEOUT).expect("the job runs");
        out.take()
    };

    // The counting operator renamed: its state would be lost.
    match recounting(&["a"], &snapshot, "per-word-v2", 128).0.build() {
        Err(EngineError::Dataflow(DataflowError::UnownedState { job, state, unrestored })) => {
            assert_eq!((job.as_str(), state), ("counting", vec!["per-word".to_string()]));
            assert_eq!(unrestored, vec!["per-word-v2".to_string()], "where that state was meant to go");
        }
        other => panic!("a renamed stateful operator must be refused, got {other:?}"),
    }
    // The name kept by an operator that keeps no keyed state: nothing would restore it.
    let df = Dataflow::new("counting").parallelism(2).restore(snapshot.clone());
    let _words = df.from_iter("words", words.clone()).map(|w: &str| w.len() as u64).name("per-word").collect();
    match df.build() {
        Err(EngineError::Dataflow(DataflowError::UnownedState { state, .. })) => {
            assert_eq!(state, vec!["per-word".to_string()])
        }
        other => panic!("keyed state handed to a map must be refused, got {other:?}"),
    }
    // Other key groups: the state cannot be split the same way.
    match recounting(&["a"], &snapshot, "per-word", 64).0.build() {
        Err(EngineError::Dataflow(DataflowError::RestoreKeyGroups { operator, snapshot, job })) => {
            assert_eq!((operator.as_str(), snapshot, job), ("per-word", 128, 64));
        }
        other => panic!("other key groups must be refused, got {other:?}"),
    }
    // Keyed state of no key has nothing to redistribute: other key groups take it.
    let (_, empty) = counting(&engine, &[], 2, None, true);
    let empty = empty.expect("a snapshot, if of nothing");
    assert!(empty.operators["per-word"].key_groups.is_empty());
    let (df, out) = recounting(&["a"], &empty, "per-word", 64);
    assert_eq!(run(df, out), vec![("a".to_string(), 1)]);
    // The same name restores: "a" was counted twice before.
    let (df, out) = recounting(&["a"], &snapshot, "per-word", 128);
    assert_eq!(run(df, out), vec![("a".to_string(), 3)]);
    // Allowed to drop the state, the renamed operator starts afresh.
    let (df, out) = recounting(&["a"], &snapshot, "per-word-v2", 128);
    assert_eq!(run(df.allow_non_restored_state(), out), vec![("a".to_string(), 1)]);
}

#[test]
fn state_whose_type_changed_fails_the_job_naming_the_state_and_the_engine_goes_on() {
    // Words counted by their length, in an operator named as the word counter
    // was: its state's key type changed.
    let engine = small_engine().build().expect("engine starts");
    let words: Vec<String> = ["a", "bb", "a"].iter().map(|w| w.to_string()).collect();
    let (_, snapshot) = counting(&engine, &words, 2, None, true);
    let df = Dataflow::new("counting").parallelism(2).restore(snapshot.expect("a snapshot"));
    let _lengths =
        df.from_iter("words", words.clone()).key_by(|w: &str| w.len() as u64).count().name("per-word").collect();
    let failed = engine.submit(df.build().expect("builds")).unwrap().wait_timeout(TIMEOUT);
    let message = failed.expect_err("state of another key type cannot be restored").to_string();
    assert!(message.contains("per-word") && message.contains("does not decode"), "{message}");
    let (again, _) = counting(&engine, &words, 2, None, false);
    assert_eq!(again.len(), 3, "the engine still runs jobs");
}

/// [`Matcher`] without its list of held events.
#[derive(Clone, Default)]
struct RulesOnly {
    rules: ListStateHandle<Rule>,
}

impl CoProcessFunction<u64, Rule, (u64, u64)> for RulesOnly {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.rules = ctx.broadcast_state("rules")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        _: &u64,
        _: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    fn process_second(
        &mut self,
        _: &Rule,
        _: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
}

#[test]
fn operator_lists_are_not_handed_to_a_keyed_operator_of_the_same_name() {
    let engine = small_engine().build().expect("engine starts");
    let (_, snapshot) = matching(&engine, (0..10).collect(), vec![Rule { min: 1, tag: 1 }], 2, None, true);
    let df = Dataflow::new("matching").parallelism(2).restore(snapshot.expect("a snapshot"));
    let _counts = df.from_iter("events", vec![1u64]).key_by(|e: &u64| *e).count().name("matcher").collect();
    match df.build() {
        Err(EngineError::Dataflow(DataflowError::UnownedState { state, .. })) => {
            assert_eq!(state, vec!["matcher/held".to_string(), "matcher/rules".to_string()])
        }
        other => panic!("a process function's lists handed to a keyed count must be refused, got {other:?}"),
    }
}

#[test]
fn a_list_of_the_snapshot_the_operator_no_longer_declares_fails_the_job() {
    let engine = small_engine().build().expect("engine starts");
    let (_, snapshot) = matching(&engine, (0..100).collect(), vec![Rule { min: 1, tag: 1 }], 2, None, true);
    let df = Dataflow::new("matching").parallelism(2).restore(snapshot.expect("a snapshot"));
    let rules = df.from_iter("rules", Vec::<Rule>::new()).parallelism(1).broadcast();
    let _out =
        df.from_iter("events", vec![1u64]).connect(&rules).process(RulesOnly::default()).name("matcher").collect();
    let failed = engine.submit(df.build().expect("builds")).unwrap().wait_timeout(TIMEOUT);
    let message = failed.expect_err("the held events would be dropped").to_string();
    assert!(
        message.contains("matcher") && message.contains("'held'") && message.contains("no longer declares"),
        "{message}"
    );
}

/// The count and mean of each key's values: an aggregator from outside the
/// engine whose accumulator is not its output.
#[derive(Clone)]
struct Mean;

impl Aggregator<u64, (u64, u64)> for Mean {
    type Acc = (u64, u64);
    type Out = (u64, u64, u64);
    fn first(&self, r: &(u64, u64)) -> (u64, u64) {
        (r.1, 1)
    }
    fn add(&self, acc: &mut (u64, u64), r: &(u64, u64)) {
        *acc = (acc.0 + r.1, acc.1 + 1);
    }
    fn result(&self, key: &u64, acc: &(u64, u64)) -> (u64, u64, u64) {
        (*key, acc.1, acc.0 / acc.1)
    }
}

#[test]
fn a_users_aggregator_runs_per_key_emitting_as_it_goes_or_once_at_the_end() {
    let engine = small_engine().build().expect("engine starts");
    let records: Vec<(u64, u64)> = (0..3_000u64).map(|r| (r % 7, r)).collect();
    let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (k, v) in &records {
        let e = want.entry(*k).or_default();
        *e = (e.0 + 1, e.1 + v);
    }
    let want: Vec<(u64, u64, u64)> = want.into_iter().map(|(k, (n, sum))| (k, n, sum / n)).collect();

    let df = Dataflow::new("means").parallelism(2);
    let keyed = df.from_iter("records", records.clone()).key_by(|r: &(u64, u64)| r.0);
    let last = keyed.aggregate_final(Mean).name("final").collect();
    let running = keyed.aggregate(Mean).name("running").collect();
    engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job finishes");
    let mut last = last.take();
    last.sort_unstable();
    assert_eq!(last, want, "one result per key at the end");
    let running = running.take();
    assert_eq!(running.len(), records.len(), "a running aggregate emits on every record");
    let mut latest: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for r in running {
        let e = latest.entry(r.0).or_insert(r);
        if r.1 > e.1 {
            *e = r;
        }
    }
    assert_eq!(latest.into_values().collect::<Vec<_>>(), want, "each key's last running result is its final one");
}

/// Each key's largest value (reducing state, declared with a closure) and its
/// count and mean (aggregating state), emitted at the end of input.
#[derive(Clone, Default)]
struct Summary {
    largest: ReducingState<u64>,
    mean: AggregatingState<(u64, u64), Mean>,
}

impl KeyedProcessFunction<u64, (u64, u64), (u64, u64, u64, u64)> for Summary {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.largest = states.reducing_state("largest", |a: &u64, b: &u64| *a.max(b))?;
        self.mean = states.aggregating_state("mean", Mean)?;
        Ok(())
    }
    fn process(
        &mut self,
        r: &(u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, (u64, u64, u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.reducing_add(&self.largest, &r.1)?;
        ctx.aggregating_add(&self.mean, r)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64, u64, u64)>,
    ) -> Result<(), OperatorError> {
        let largest = ctx.reducing_get(&self.largest)?.copied();
        let mean = ctx.aggregating_get(&self.mean)?;
        if let (Some(largest), Some((key, n, mean))) = (largest, mean) {
            out.emit((key, n, mean, largest));
        }
        Ok(())
    }
}

#[test]
fn reducing_and_aggregating_state_serve_a_process_function_across_a_rescale() {
    let engine = small_engine().build().expect("engine starts");
    let records: Vec<(u64, u64)> = (0..2_000u64).map(|r| (r % 5, (r * 7919) % 1000)).collect();
    let summarize = |records: &[(u64, u64)], parallelism: u32, snapshot: Option<JobSnapshot>, stop: bool| {
        let mut df = Dataflow::new("summary").parallelism(parallelism);
        if let Some(s) = snapshot {
            df = df.restore(s);
        }
        if stop {
            df = df.stop_with_snapshot();
        }
        let out = df
            .from_iter("records", records.to_vec())
            .key_by(|r: &(u64, u64)| r.0)
            .process(Summary::default())
            .name("summary")
            .collect();
        let result = engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job finishes");
        let mut out = out.take();
        out.sort_unstable();
        (out, result.snapshot)
    };
    let mut want: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for (k, v) in &records {
        let e = want.entry(*k).or_default();
        *e = (e.0 + 1, e.1 + v, e.2.max(*v));
    }
    let want: Vec<_> = want.into_iter().map(|(k, (n, sum, max))| (k, n, sum / n, max)).collect();
    assert_eq!(summarize(&records, 2, None, false).0, want);
    let (first, rest) = records.split_at(700);
    let (before, snapshot) = summarize(first, 2, None, true);
    assert!(before.is_empty(), "stopped with a snapshot: nothing at the end");
    assert_eq!(summarize(rest, 3, snapshot, false).0, want, "restored at 3: the results of one run");
}

/// Pairs each key's two records: the first waits in map state, the second
/// empties the map and emits.
#[derive(Clone, Default)]
struct Pairs {
    waiting: MapState<u64, u64>,
}

impl KeyedProcessFunction<u64, u64, u64> for Pairs {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.waiting = states.map_state("waiting")?;
        Ok(())
    }
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let waiting = &self.waiting;
        // The map's seat for this record: how many records wait already.
        ctx.map_insert(waiting, ctx.map_len(waiting)? as u64, *r)?;
        if ctx.map_len(waiting)? == 2 {
            let seats: Vec<u64> = ctx.map_iter(waiting)?.map(|(seat, _)| *seat).collect();
            for seat in seats {
                ctx.map_remove(waiting, &seat)?;
            }
            out.emit(*r);
        }
        Ok(())
    }
}

#[test]
fn keys_whose_maps_are_emptied_hold_no_memory() {
    // 200 000 keys would hold far more than 1 MiB if each kept an empty map.
    let engine = small_engine().managed_memory_per_slot_bytes(1 << 20).build().expect("engine starts");
    let df = Dataflow::new("pairs").parallelism(2);
    df.generate("records", 400_000, |r| r).parallelism(1).key_by(|r: &u64| r / 2).process(Pairs::default()).count();
    let result = engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("fits in 1 MiB of state");
    assert_eq!(result.count().0, 200_000, "one output per pair");
}

/// A directory of its own under the system's temporary one, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shardflow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_snapshot_saved_to_a_file_restores_in_another_engine_and_a_failed_save_keeps_the_old_file() {
    let scratch = Scratch::new("savepoint");
    let path = scratch.0.join("counting.snapshot");
    let mut rng = SplitMix::new(11);
    let words: Vec<String> = (0..3_000).map(|_| format!("word-{}", rng.range(0, 200))).collect();
    let (first, second) = words.split_at(1_000);
    let whole = {
        let engine = small_engine().build().expect("engine starts");
        counting(&engine, &words, 2, None, false).0
    };
    {
        // One engine stops with a snapshot and saves it …
        let engine = small_engine().build().expect("engine starts");
        let (_, snapshot) = counting(&engine, first, 2, None, true);
        snapshot.expect("a snapshot").save(&path).expect("saved");
    }
    // … another, later, loads it and goes on at another parallelism.
    let engine = small_engine().build().expect("engine starts");
    let loaded = JobSnapshot::load(&path).expect("loaded");
    let (after, _) = counting(&engine, second, 3, Some(loaded.clone()), false);
    let last = |v: &[(String, u64)]| {
        v.iter().cloned().fold(BTreeMap::new(), |mut m: BTreeMap<String, u64>, (w, n)| {
            let e = m.entry(w).or_default();
            *e = (*e).max(n);
            m
        })
    };
    let mut expected = last(&whole);
    expected.retain(|w, _| second.contains(w));
    assert_eq!(last(&after), expected, "the counts go on from the saved state");

    // A save that cannot finish (here: its path is a directory) leaves what was there.
    let taken = scratch.0.join("taken");
    std::fs::create_dir(&taken).expect("a directory");
    std::fs::write(taken.join("keep"), b"kept").expect("a file in it");
    match loaded.save(&taken) {
        Err(SnapshotError::Io { what, .. }) => assert!(what.contains("taken"), "{what}"),
        other => panic!("saving over a directory must fail, got {other:?}"),
    }
    assert_eq!(std::fs::read(taken.join("keep")).expect("still there"), b"kept");
    let names: Vec<_> = std::fs::read_dir(&scratch.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "no partial file left behind: {names:?}");
    // Not a snapshot, or none at all: typed errors naming what went wrong.
    std::fs::write(scratch.0.join("notes.txt"), b"hello").expect("written");
    assert_eq!(JobSnapshot::load(&scratch.0.join("notes.txt")), Err(SnapshotError::NotASnapshot));
    match JobSnapshot::load(&scratch.0.join("missing")) {
        Err(SnapshotError::Io { what, .. }) => assert!(what.contains("missing"), "{what}"),
        other => panic!("a missing file must be an I/O error, got {other:?}"),
    }
}

/// A table past a core's cache has each chunk of its input read twice, the
/// first time to announce the keys' slots: the counts stay exact, running or
/// at the end of input.
#[test]
fn counts_over_more_keys_than_a_cache_holds_are_exact_running_and_final() {
    // 60 000 words over two subtasks: some 30 000 keys each, a table of 32 768
    // slots of 32 bytes, past the 640 KiB from which keys are announced ahead.
    const WORDS: u64 = 60_000;
    const LINES: u64 = 45_000;
    let word = |i: u64| format!("w{}", i.wrapping_mul(2_654_435_761) % WORDS);
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("many-words").parallelism(2);
    let words = df
        .generate("lines", LINES, move |r| (0..4).map(|j| word(4 * r + j)).collect::<Vec<_>>().join(" "))
        .flat_map(|line: &str, out: &mut Emitter<'_, String>| line.split(' ').for_each(|w| out.emit_ref(w)))
        .key_by_ref::<String, _>(|w: &str| w);
    let last = words.count_final().collect();
    let running = words.count().collect();
    engine.run(df.build().unwrap()).unwrap();

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..4 * LINES {
        *want.entry(word(i)).or_insert(0) += 1;
    }
    assert!(want.len() as u64 > 55_000, "most words occur: {}", want.len());
    // Named, not printed whole: 60 000 entries drown a failure.
    let differences = |got: &BTreeMap<String, u64>| {
        let wrong: Vec<_> =
            want.iter().filter(|&(w, n)| got.get(w) != Some(n)).map(|(w, n)| (w, n, got.get(w))).collect();
        format!(
            "{} words, {} wanted, {} wrong, e.g. (word, wanted, got) {:?}",
            got.len(),
            want.len(),
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        )
    };
    let last: BTreeMap<String, u64> = last.take().into_iter().collect();
    assert!(last == want, "each word's count once, at the end: {}", differences(&last));
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    let running = running.take();
    assert_eq!(running.len() as u64, 4 * LINES, "a running count per word read");
    for (w, n) in running {
        let h = highest.entry(w).or_insert(0);
        *h = (*h).max(n);
    }
    assert!(highest == want, "the running counts reach each word's count: {}", differences(&highest));
}
