//! Placement is a visible result: each strategy puts subtasks where it says, a
//! dataflow's core hints are followed, the job computes the same answer
//! wherever its subtasks run, and the engine's dump shows each running task on
//! its shard's core with its record counts so far. A slot sharing group takes
//! slots of its own.

use shardflow_engine::jobs::{KeyValue, GOLDEN};
use std::collections::{BTreeMap, BTreeSet};

use shardflow_engine::protocol::ErrorCode;
use shardflow_engine::{Dataflow, EngineError, ExecutionState, Job, PlacementStrategy};

use crate::common::{shard_count, small_engine, TIMEOUT};

fn job(n: u64) -> Job {
    let df = Dataflow::new("placed").parallelism(2);
    df.generate("source", n, |r| KeyValue { key: r.wrapping_mul(GOLDEN), value: r })
        .key_by(|r: &KeyValue| r.key)
        .as_stream()
        .map(|r: &KeyValue| *r)
        .name("sink")
        .count_and_sum(|r: &KeyValue| r.value);
    df.build().unwrap()
}

#[test]
fn strategies_place_subtasks_as_documented_and_results_agree() {
    let engine = small_engine().build().expect("engine starts");
    let cores: Vec<usize> = engine.shards().iter().map(|s| s.core).collect();
    let n = 50_000u64;

    let spread = engine.submit_with(job(n), PlacementStrategy::Spread).unwrap();
    let shards_used: std::collections::BTreeSet<_> =
        spread.placement().placements.iter().map(|p| p.slot.shard).collect();
    assert_eq!(shards_used.len(), shard_count(), "spread uses every shard:\n{}", spread.placement());
    assert_eq!(spread.wait_timeout(TIMEOUT).unwrap().count().0, n);

    let pack = engine.submit_with(job(n), PlacementStrategy::Pack).unwrap();
    assert!(
        pack.placement().placements.iter().all(|p| p.core == cores[0]),
        "pack fills the first shard:\n{}",
        pack.placement()
    );
    assert_eq!(pack.wait_timeout(TIMEOUT).unwrap().count().0, n);

    let colocate = engine.submit_with(job(n), PlacementStrategy::Colocate).unwrap();
    for i in 0..2 {
        let slots: Vec<_> =
            colocate.placement().placements.iter().filter(|p| p.subtask.subtask == i).map(|p| p.slot).collect();
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "subtask {i} of every vertex in one slot");
    }
    assert_eq!(colocate.wait_timeout(TIMEOUT).unwrap().count().0, n);

    let last = *cores.last().unwrap();
    let map: PlacementStrategy = format!("source={};sink={}", cores[0], last).parse().unwrap();
    let explicit = engine.submit_with(job(n), map).unwrap();
    for p in &explicit.placement().placements {
        let want = if p.vertex_name == "source" { cores[0] } else { last };
        assert_eq!(p.core, want, "{}", explicit.placement());
    }
    let result = explicit.wait_timeout(TIMEOUT).unwrap();
    assert_eq!(result.count(), (n, n * (n - 1) / 2));
    assert_eq!(result.placement, *explicit.placement());
}

#[test]
fn a_slot_sharing_group_takes_slots_of_its_own_and_too_many_groups_are_refused() {
    // Four slots on one or two shards.
    let engine = small_engine().slots_per_shard((4 / shard_count()) as u32).build().expect("engine starts");
    assert_eq!(engine.free_slots().unwrap(), 4);

    // Two groups at parallelism 2: the source's slots and the heavy map's.
    let df = Dataflow::new("grouped").parallelism(2);
    df.generate("source", 1000, |r| r).rebalance().map(|r: &u64| *r).name("heavy").slot_sharing_group("heavy").count();
    let handle = engine.submit(df.build().unwrap()).unwrap();
    let slots_of = |vertex: &str| -> BTreeSet<_> {
        handle.placement().placements.iter().filter(|p| p.vertex_name == vertex).map(|p| p.slot).collect()
    };
    let (source, heavy) = (slots_of("source"), slots_of("heavy"));
    assert_eq!((source.len(), heavy.len()), (2, 2), "{}", handle.placement());
    assert!(source.is_disjoint(&heavy), "the groups share no slot:\n{}", handle.placement());
    assert_eq!(handle.wait_timeout(TIMEOUT).unwrap().count().0, 1000);

    // Three groups at parallelism 2 need six slots.
    let df = Dataflow::new("three-groups").parallelism(2);
    df.generate("source", 10, |r| r)
        .rebalance()
        .map(|r: &u64| *r)
        .slot_sharing_group("b")
        .rebalance()
        .map(|r: &u64| *r)
        .slot_sharing_group("c")
        .count();
    match engine.submit(df.build().unwrap()) {
        Err(EngineError::Remote { code: ErrorCode::NotEnoughSlots, message }) => {
            assert!(message.contains("needs 6 slots"), "{message}")
        }
        other => panic!("three groups of two do not fit four slots, got {other:?}"),
    }
    assert_eq!(engine.free_slots().unwrap(), 4, "nothing held by the refused job");
}

#[test]
fn core_hints_of_a_dataflow_place_its_vertex() {
    let engine = small_engine().build().expect("engine starts");
    let last = engine.shards().last().unwrap().core;
    let df = Dataflow::new("hinted").parallelism(2);
    df.generate("source", 1000, |r| r).rebalance().map(|r: &u64| *r).name("pinned").cores(&[last]).count();
    let handle = engine.submit(df.build().unwrap()).unwrap();
    let pinned: Vec<_> = handle.placement().placements.iter().filter(|p| p.vertex_name == "pinned").collect();
    assert_eq!(pinned.len(), 2);
    assert!(pinned.iter().all(|p| p.core == last), "{}", handle.placement());
    assert_eq!(handle.wait_timeout(TIMEOUT).unwrap().count().0, 1000);

    // A vertex without a hint and of fewer subtasks than shards goes where
    // the hinted ones left room (it was refused: its default map listed every
    // core, more than its subtasks).
    let first = engine.shards()[0].core;
    let df = Dataflow::new("hinted-and-not").parallelism(2);
    df.generate("source", 1000, |r| r).cores(&[first]).rebalance().map(|r: &u64| *r).name("one").parallelism(1).count();
    let handle = engine.submit(df.build().unwrap()).expect("an unhinted vertex of one subtask is placed");
    let one = handle.placement().placements.iter().find(|p| p.vertex_name == "one").expect("placed").core;
    if engine.shards().len() > 1 {
        assert_ne!(one, first, "the least loaded core: {}", handle.placement());
    }
    assert_eq!(handle.wait_timeout(TIMEOUT).unwrap().count().0, 1000);
}

#[test]
fn hints_become_an_explicit_map_with_the_other_vertices_on_the_least_loaded_cores() {
    let df = Dataflow::new("mapped").parallelism(4);
    let a = df.generate("a", 10, |r| r).cores(&[0]);
    let b = a.rebalance().map(|r: &u64| *r).name("b").parallelism(2);
    let c = b.rebalance().map(|r: &u64| *r).name("c");
    let d = c.rebalance().map(|r: &u64| *r).name("d").parallelism(1).cores(&[2]);
    d.count();
    let job = df.build().unwrap();
    let map = |m: &[(&str, &[usize])]| {
        PlacementStrategy::Explicit(m.iter().map(|(v, cs)| (v.to_string(), cs.to_vec())).collect())
    };
    // Hinted: a's 4 subtasks on core 0, d's on 2. Then b on the two least
    // loaded (1 and 3), c on all four, least loaded first (1, 2 and 3 hold
    // one each, 0 four), ties by core.
    // Five shards of four slots, two on core 1.
    let placed = job.hinted_placement(&[(3, 4), (2, 4), (1, 4), (0, 4), (1, 4)]).expect("the job has hints");
    let want = map(&[("a", &[0]), ("b", &[1, 3]), ("c", &[1, 2, 3, 0]), ("d", &[2])]);
    assert_eq!(placed, want, "{placed}");
    assert_eq!(job.hinted_placement(&[]), None, "no cores: nothing to place on");
    let df = Dataflow::new("free").parallelism(2);
    df.generate("a", 10, |r| r).count();
    assert_eq!(df.build().unwrap().hinted_placement(&[(0, 2), (1, 2)]), None, "no hints");
}

#[test]
fn hints_leave_each_core_no_more_subtasks_than_its_slots_hold() {
    let engine = small_engine().slots_per_shard(2).build().expect("engine starts");
    let cores: Vec<usize> = engine.shards().iter().map(|s| s.core).collect();
    let (first, last) = (cores[0], cores[cores.len() - 1]);
    // Two subtasks hinted on the first core fill its two slots; the two of
    // another slot-sharing group cannot share them, so both go to the last
    // core although it then holds more subtasks (counting subtasks alone put
    // one on the first core, and the job was refused: "core has no free slot").
    let build = || {
        let df = Dataflow::new("grouped").parallelism(2);
        let pinned = df.generate("pinned", 1000, |r| r).cores(&[first]);
        pinned.rebalance().map(|r: &u64| *r).name("other").slot_sharing_group("other").count();
        df.build().unwrap()
    };
    let shards: Vec<(usize, u32)> = cores.iter().map(|&c| (c, 2)).collect();
    let placed = build().hinted_placement(&shards).expect("the job has hints");
    let want: BTreeMap<String, Vec<usize>> =
        [("pinned".to_string(), vec![first]), ("other".to_string(), vec![last])].into();
    assert_eq!(placed, PlacementStrategy::Explicit(want), "{placed}");
    if cores.len() < 2 {
        return; // one shard: its two slots cannot hold both groups
    }
    let handle = engine.submit(build()).expect("the hinted job fits the slots");
    let on = |vertex: &str| -> Vec<usize> {
        handle.placement().placements.iter().filter(|p| p.vertex_name == vertex).map(|p| p.core).collect()
    };
    assert_eq!((on("pinned"), on("other")), (vec![first; 2], vec![last; 2]), "{}", handle.placement());
    assert_eq!(handle.wait_timeout(TIMEOUT).unwrap().count().0, 1000);
}

#[test]
fn the_dump_shows_each_running_task_on_its_core_with_its_records_so_far_and_each_shards_cpu() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("counted").parallelism(1);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 128);
    let answers = requests.rebalance().map(|r: &u64| r + 1).name("plus-one").egress(128);
    let job = engine.submit(df.build().unwrap()).unwrap();
    for r in 0..100 {
        ingress.push(r).unwrap();
    }
    for _ in 0..100 {
        answers.recv_timeout(TIMEOUT).expect("every answer");
    }
    let dump = engine.dump().expect("the engine's dump");
    assert_eq!(dump.shards.len(), shard_count());
    let tasks: Vec<_> = dump.shards.iter().flat_map(|s| s.tasks.iter().map(move |t| (s, t))).collect();
    assert_eq!(tasks.len(), 2, "the source and plus-one: {dump:?}");
    for (shard, task) in &tasks {
        assert_eq!((task.job, task.state), (job.id(), ExecutionState::Running), "{task:?}");
        let placed = job.placement().placements.iter().find(|p| p.subtask == task.attempt.execution_vertex);
        assert_eq!(placed.map(|p| p.core), Some(shard.core as usize), "the dump's core is the placement's: {task:?}");
    }
    let plus_one = tasks.iter().find(|(_, t)| t.vertex == "plus-one").expect("plus-one runs").1;
    // Counted as its input buffers are taken, before any answer leaves: all 100.
    assert_eq!((plus_one.records_in, plus_one.records_out), (100, 0), "chained to the egress: {plus_one:?}");
    let source = tasks.iter().find(|(_, t)| t.vertex == "requests").expect("the source runs").1;
    assert!(source.records_in <= 100 && source.records_out <= 100, "{source:?}");
    drop(ingress);
    job.wait_timeout(TIMEOUT).expect("the job ends with its input");
    assert!(engine.dump().unwrap().shards.iter().all(|s| s.tasks.is_empty()), "ended tasks leave the dump");
    // Each shard's thread's CPU time: a job's work shows in it (10 ms at
    // least: fifty million rounds of mixing take far more, even optimized).
    let cpu = || -> u64 { engine.dump().unwrap().shards.iter().map(|s| s.cpu_ms.expect("readable")).sum() };
    let before = cpu();
    let df = Dataflow::new("busy").parallelism(1);
    let mix = |r: &u64| (0..50).fold(*r, |x, _| std::hint::black_box(shardflow_engine::fmix64(x)));
    df.generate("numbers", 1_000_000, |r| r).map(mix).count();
    engine.run(df.build().unwrap()).expect("the busy job runs");
    assert!(cpu() >= before + 10, "the shards' CPU time grows with their work: {before} ms, then {} ms", cpu());
}

/// A job of every kind of vertex: a chain with a fan-out and a side output, a
/// keyed exchange into a stateful operator, an operator moved to a vertex of
/// its own by its parallelism, a union and a two-input operator. Of 0..1000
/// plus one, the odd go to `odds` (500), the multiples of 4 to `fours` (250),
/// the even are summed per last digit (500 running sums) and halved; `both`
/// gets those and `more` twice (506).
fn planned_job() -> (Job, shardflow_engine::CollectHandle<u64>) {
    use shardflow_engine::{Emitter, OutputTag};
    let df = Dataflow::new("planned").parallelism(2);
    let odd = OutputTag::<u64>::new("odd");
    let numbers = df.generate("numbers", 1000, |r| r);
    let evens = numbers.map(|r: &u64| r + 1).flat_map({
        let odd = odd.clone();
        move |r: &u64, out: &mut Emitter<'_, u64>| {
            if r % 2 == 0 {
                out.emit(*r);
            } else {
                out.emit_side(&odd, *r);
            }
        }
    });
    evens.side_output(&odd).name("odds").count();
    evens.filter(|r: &u64| r % 4 == 0).name("fours").count();
    let totals = evens.key_by(|r: &u64| r % 10).reduce(|a: &u64, b: &u64| a + b).name("totals");
    totals.count();
    let halved = totals.map(|r: &u64| r / 2).parallelism(1).name("halved");
    let more = df.from_iter("more", [1u64, 2, 3]);
    let both = halved.union(&more).connect(&more).map(|a: &u64| *a, |b: &u64| *b).name("both");
    let collected = both.collect();
    (df.build().expect("the job builds"), collected)
}

#[test]
fn the_execution_plan_shows_each_vertex_chain_and_edge_and_is_what_runs() {
    use std::collections::BTreeMap;

    use shardflow_engine::{PartitionerKind, SinkOutput};
    let (job, out) = planned_job();
    let plan = job.execution_plan().clone();
    let chains: Vec<(&str, u32, String)> =
        plan.vertices.iter().map(|v| (v.name.as_str(), v.parallelism, v.chain())).collect();
    let expected = [
        (
            "numbers",
            2,
            "numbers [source] -> map-1 -> flat_map-2 -> (odds [side_output] -> count-4, fours [filter] -> count-6)",
        ),
        ("totals", 2, "totals [reduce] (keyed state) -> count-8"),
        ("halved", 1, "halved [map]"),
        ("more", 2, "more [source]"),
        ("union-11", 2, "union-11"),
        ("both", 2, "both [co_flat_map] -> collect-13"),
    ];
    let expected: Vec<(&str, u32, String)> = expected.iter().map(|(n, p, c)| (*n, *p, c.to_string())).collect();
    assert_eq!(chains, expected, "the plan:\n{plan}");
    let edges: Vec<(&str, &str, &str, PartitionerKind)> = plan
        .edges
        .iter()
        .map(|e| {
            (
                plan.vertices[e.from].name.as_str(),
                e.from_operator.as_str(),
                plan.vertices[e.to].name.as_str(),
                e.partitioner,
            )
        })
        .collect();
    use PartitionerKind::{Forward, Hash, Rebalance};
    let expected = [
        ("numbers", "flat_map-2", "totals", Hash),
        ("totals", "totals", "halved", Rebalance),
        ("halved", "halved", "union-11", Rebalance),
        ("more", "more", "union-11", Forward),
        ("union-11", "union-11", "both", Forward),
        ("more", "more", "both", Forward),
    ];
    assert_eq!(edges, expected, "the plan:\n{plan}");
    assert!(plan.edges.iter().all(|e| e.format.type_name == "u64"), "the plan:\n{plan}");
    let stateful: Vec<&str> =
        plan.vertices.iter().flat_map(|v| &v.operators).filter(|o| o.keyed_state).map(|o| o.name.as_str()).collect();
    assert_eq!(stateful, ["totals"]);
    let text = plan.to_string();
    assert!(text.starts_with("job planned: 6 vertices, max parallelism 128\n"), "{text}");
    assert!(text.contains("\n  edge numbers (flat_map-2) -> totals: Hash, u64 (plain data, 8 bytes)\n"), "{text}");

    // What runs is what the plan says: each vertex's subtasks, and the sinks
    // of its chain counting in its subtasks.
    let engine = small_engine().build().expect("engine starts");
    let result = engine.submit(job).expect("submits").wait().expect("runs");
    let mut subtasks: BTreeMap<&str, u32> = BTreeMap::new();
    let mut counted: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &result.subtasks {
        *subtasks.entry(s.vertex.as_str()).or_default() += 1;
        for sink in &s.sinks {
            if let SinkOutput::Count { records, .. } = sink {
                *counted.entry(s.vertex.as_str()).or_default() += records;
            }
        }
    }
    let planned: BTreeMap<&str, u32> = plan.vertices.iter().map(|v| (v.name.as_str(), v.parallelism)).collect();
    assert_eq!(subtasks, planned);
    let placed = result.placement.placements.iter().fold(BTreeMap::new(), |mut m: BTreeMap<&str, u32>, p| {
        *m.entry(p.vertex_name.as_str()).or_default() += 1;
        m
    });
    assert_eq!(placed, planned);
    assert_eq!(counted, BTreeMap::from([("numbers", 750), ("totals", 500)]));
    assert_eq!(out.take().len(), 506);
}
