//! Back-pressure: a deliberately slow sink throttles the source through credits, so
//! network memory stays within what the deployment reserved, far below the pool,
//! and no record is lost.

use shardflow_engine::{ops, JobBuilder, PartitionerKind};

use crate::common::{shard_count, small_engine, TIMEOUT};

#[test]
fn slow_sink_bounds_memory_and_loses_nothing() {
    let (exclusive, floating) = (2u32, 2u32);
    let engine = small_engine().exclusive_credits(exclusive).floating_credits(floating).build().expect("engine starts");
    let p = shard_count() as u32;
    // 300k records of 24 bytes = ~1760 buffers of 4 KiB: without flow control far more
    // than the bound below would pile up in front of the slow sink.
    let n = 300_000u64;
    let job = JobBuilder::new("slow-sink")
        .source("source", ops::generator(n, ops::KeyGen::Golden, ops::ValueGen::Index), p)
        .connect(PartitionerKind::Hash, "slow", p)
        .then(ops::slow_sink(300))
        .build();
    engine.reset_memory_peaks();
    let result = engine.submit(job).expect("submit").wait_timeout(TIMEOUT).expect("job finishes");

    let (count, sum) = result.count();
    assert_eq!(count, n, "every record reaches the sink");
    assert_eq!(sum, n * (n - 1) / 2);
    let sent: u64 = result.subtasks.iter().filter(|s| s.vertex == "source").map(|s| s.records_out).sum();
    assert_eq!(sent, n);

    // Per shard: one source subtask, p subpartitions, each holding one buffer being
    // filled plus at most exclusive + floating in flight.
    let bound = p as usize * (1 + exclusive + floating) as usize;
    for pool in engine.memory() {
        assert!(
            pool.peak_in_use <= bound,
            "shard {} used {} segments at peak, credit bound is {bound} (pool has {})",
            pool.shard,
            pool.peak_in_use,
            pool.segments
        );
        assert!(pool.peak_in_use > 0, "the pool was used");
        assert_eq!(pool.free_segments, pool.segments, "every segment came home");
    }
    let buffers = n as usize * 24 / 4096;
    assert!(buffers > 10 * bound, "the run is big enough to need back-pressure");
}
