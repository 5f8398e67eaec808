//! The spin idle policy: shards busy-poll their gates and credits instead of
//! parking; results, paced sources and cancellation behave as under park.

use shardflow_engine::{ops, CollectHandle, EngineError, IdlePolicy, JobBuilder, PartitionerKind};

use crate::common::{shard_count, small_engine, TIMEOUT};

#[test]
fn spinning_shards_compute_the_same_results_and_cancel() {
    let engine = small_engine().idle(IdlePolicy::Spin).build().expect("engine starts");
    let p = shard_count() as u32;

    let n = 200_000u64;
    let exchange = JobBuilder::new("spin-exchange")
        .source("source", ops::generator(n, ops::KeyGen::Golden, ops::ValueGen::Index), p)
        .connect(PartitionerKind::Hash, "sink", p)
        .then(ops::count_sink())
        .build();
    assert_eq!(engine.submit(exchange).unwrap().wait_timeout(TIMEOUT).unwrap().count(), (n, n * (n - 1) / 2));

    // A paced source: 2 000 records over 100 ms, every one accounted for.
    let paced = JobBuilder::new("spin-paced")
        .source("source", ops::paced_generator(20_000, 100), p)
        .then(ops::map_add(1))
        .connect(PartitionerKind::Hash, "sink", p)
        .then(ops::latency_sink())
        .build();
    let result = engine.submit(paced).unwrap().wait_timeout(TIMEOUT).unwrap();
    assert_eq!(result.latency().expect("histogram").len(), 2_000);

    let seen = CollectHandle::new("seen");
    let endless = JobBuilder::new("spin-endless")
        .source("source", ops::generator(1_000_000_000_000, ops::KeyGen::Golden, ops::ValueGen::Index), p)
        .connect(PartitionerKind::Hash, "sink", p)
        .filter("sample", |r| r.value % 1_000_000 == 0)
        .collect(&seen)
        .build();
    let handle = engine.submit(endless).unwrap();
    seen.recv_timeout(TIMEOUT).expect("records flow");
    handle.cancel();
    assert!(matches!(handle.wait_timeout(TIMEOUT), Err(EngineError::JobCanceled(_))));
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments);
    }
}
