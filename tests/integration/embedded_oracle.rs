//! Oracle test: random linear job shapes (parallelism 1..=4, every partitioner,
//! chains of stateless and keyed operators) run on the embedded engine must produce
//! exactly the multiset of records a naive single-threaded evaluation produces.

use shardflow_benches::SplitMix;
use shardflow_engine::{ops, CollectHandle, JobBuilder, OperatorSpec, PartitionerKind, Record};

use crate::common::{small_engine, TIMEOUT};

/// One operator of the random pipeline, with its naive meaning.
#[derive(Debug, Clone, Copy)]
enum Op {
    Add(u64),
    DropMod(u64, u64),
    Repeat(u64),
    KeyByMod(u64),
    KeyedCount,
    KeyedSum,
}

impl Op {
    fn spec(self) -> OperatorSpec {
        match self {
            Op::Add(c) => ops::map_add(c),
            Op::DropMod(m, d) => ops::filter_value_mod(m, d),
            Op::Repeat(t) => ops::flat_map_repeat(t),
            Op::KeyByMod(m) => ops::key_by_value_mod(m),
            Op::KeyedCount => ops::keyed_count(),
            Op::KeyedSum => ops::keyed_sum(),
        }
    }

    /// The naive, global evaluation.
    fn apply(self, data: Vec<Record>) -> Vec<Record> {
        match self {
            Op::Add(c) => data.into_iter().map(|r| Record { value: r.value.wrapping_add(c), ..r }).collect(),
            Op::DropMod(m, d) => data.into_iter().filter(|r| r.value % m != d).collect(),
            Op::Repeat(t) => data
                .into_iter()
                .flat_map(|r| (0..t).map(move |i| Record { value: r.value.wrapping_add(i), ..r }))
                .collect(),
            Op::KeyByMod(m) => data.into_iter().map(|r| Record { key: r.value % m, ..r }).collect(),
            Op::KeyedCount | Op::KeyedSum => {
                let mut per_key = std::collections::BTreeMap::<u64, u64>::new();
                for r in data {
                    let s = per_key.entry(r.key).or_insert(0);
                    *s = if matches!(self, Op::KeyedCount) { *s + 1 } else { s.wrapping_add(r.value) };
                }
                per_key.into_iter().map(|(k, v)| Record::new(k, v)).collect()
            }
        }
    }
}

#[derive(Debug)]
struct Stage {
    partitioner: PartitionerKind,
    parallelism: u32,
    ops: Vec<Op>,
}

#[derive(Debug)]
struct Shape {
    records: u64,
    source_parallelism: u32,
    source_ops: Vec<Op>,
    stages: Vec<Stage>,
}

fn stateless(rng: &mut SplitMix) -> Op {
    match rng.range(0, 3) {
        0 => Op::Add(rng.range(1, 1000)),
        1 => Op::DropMod(rng.range(2, 7), rng.range(0, 1)),
        2 => Op::Repeat(rng.range(1, 3)),
        _ => Op::KeyByMod(rng.range(1, 50)),
    }
}

fn random_shape(rng: &mut SplitMix) -> Shape {
    let source_parallelism = rng.range(1, 4) as u32;
    let source_ops = (0..rng.range(0, 2)).map(|_| stateless(rng)).collect();
    let mut prev = source_parallelism;
    let mut stages = Vec::new();
    for _ in 0..rng.range(1, 3) {
        let partitioner = match rng.range(0, 3) {
            0 => PartitionerKind::Forward,
            1 => PartitionerKind::Hash,
            2 => PartitionerKind::Rebalance,
            _ => PartitionerKind::Broadcast,
        };
        let parallelism = if partitioner == PartitionerKind::Forward { prev } else { rng.range(1, 4) as u32 };
        let mut ops = Vec::new();
        // Keyed operators only right after a hash exchange: each key at one subtask.
        if partitioner == PartitionerKind::Hash && rng.range(0, 1) == 0 {
            ops.push(if rng.range(0, 1) == 0 { Op::KeyedCount } else { Op::KeyedSum });
        }
        for _ in 0..rng.range(0, 2) {
            ops.push(stateless(rng));
        }
        stages.push(Stage { partitioner, parallelism, ops });
        prev = parallelism;
    }
    Shape { records: rng.range(1, 20_000), source_parallelism, source_ops, stages }
}

fn naive(shape: &Shape) -> Vec<Record> {
    let mut data: Vec<Record> = (0..shape.records).map(|r| Record::new(r, r)).collect();
    for op in &shape.source_ops {
        data = op.apply(data);
    }
    for st in &shape.stages {
        if st.partitioner == PartitionerKind::Broadcast {
            data = data.iter().flat_map(|r| std::iter::repeat_n(*r, st.parallelism as usize)).collect();
        }
        for op in &st.ops {
            data = op.apply(data);
        }
    }
    data.sort_unstable();
    data
}

#[test]
fn random_job_shapes_match_a_naive_evaluation() {
    let engine = small_engine().build().expect("engine starts");
    let mut rng = SplitMix::new(0x05ee_d0f0_ac1e);
    for case in 0..24 {
        let shape = random_shape(&mut rng);
        let collected = CollectHandle::new("out");
        let mut b = JobBuilder::new(&format!("oracle-{case}")).source(
            "source",
            ops::generator(shape.records, ops::KeyGen::Index, ops::ValueGen::Index),
            shape.source_parallelism,
        );
        for op in &shape.source_ops {
            b = b.then(op.spec());
        }
        for (i, st) in shape.stages.iter().enumerate() {
            b = b.connect(st.partitioner, &format!("stage-{i}"), st.parallelism);
            if st.ops.is_empty() {
                b = b.then(ops::map_add(0));
            }
            for op in &st.ops {
                b = b.then(op.spec());
            }
        }
        let job = b.collect(&collected).build();
        let handle = engine.submit(job).unwrap_or_else(|e| panic!("case {case} {shape:?}: submit: {e}"));
        handle.wait_timeout(TIMEOUT).unwrap_or_else(|e| panic!("case {case} {shape:?}: {e}"));
        let mut got = collected.drain();
        got.sort_unstable();
        let want = naive(&shape);
        assert_eq!(got.len(), want.len(), "case {case}: record count differs for {shape:?}");
        assert!(got == want, "case {case}: records differ for {shape:?}");
    }
}
