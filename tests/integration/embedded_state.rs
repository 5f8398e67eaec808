//! Keyed state: by the real key (two keys with one hash keep separate state), in
//! key groups spread over subtasks by contiguous ranges, snapshotted per key
//! group and restored at another parallelism with the same results as an
//! uninterrupted run.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use bytemuck::{Pod, Zeroable};
use shardflow_benches::SplitMix;
use shardflow_engine::{key_group_range, subtask_of_key_group, Dataflow, Engine, JobSnapshot};

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
