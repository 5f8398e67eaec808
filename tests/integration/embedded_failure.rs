//! Failure: an operator that panics or errors fails its job with the cause; the
//! other subtasks are cancelled, nothing hangs, and the engine runs the next job.

use shardflow_engine::{ops, EngineError, JobBuilder, JobStatus, PartitionerKind};

use crate::common::{shard_count, small_engine, TIMEOUT};

#[test]
fn a_panicking_operator_fails_the_job_with_its_cause() {
    let engine = small_engine().build().expect("engine starts");
    let p = shard_count() as u32;
    let slots = engine.free_slots().unwrap();
    let job = JobBuilder::new("panics")
        .source("source", ops::generator(1_000_000, ops::KeyGen::Golden, ops::ValueGen::Index), p)
        .connect(PartitionerKind::Hash, "boom", p)
        .map("explode-at-4242", |r| {
            assert!(r.value != 4242, "record 4242 is poison");
            r
        })
        .then(ops::count_sink())
        .build();
    let handle = engine.submit(job).expect("submit");
    let id = handle.id();
    match handle.wait_timeout(TIMEOUT) {
        Err(EngineError::JobFailed { job, cause }) => {
            assert_eq!(job, id);
            assert!(cause.contains("boom ("), "names the subtask: {cause}");
            assert!(cause.contains("panicked") && cause.contains("record 4242 is poison"), "{cause}");
        }
        other => panic!("expected a failed job, got {other:?}"),
    }
    assert_eq!(engine.job_status(id).unwrap(), JobStatus::Failed);
    assert_eq!(engine.free_slots().unwrap(), slots);
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments);
    }

    // The engine is still healthy.
    let ok = JobBuilder::new("after")
        .source("source", ops::generator(10_000, ops::KeyGen::Index, ops::ValueGen::Index), p)
        .connect(PartitionerKind::Hash, "sink", p)
        .then(ops::count_sink())
        .build();
    assert_eq!(engine.submit(ok).unwrap().wait_timeout(TIMEOUT).unwrap().count().0, 10_000);
}

#[test]
fn a_collector_dropped_by_its_reader_fails_the_job_instead_of_hanging() {
    let engine = small_engine().build().expect("engine starts");
    let handle = shardflow_engine::CollectHandle::new("gone");
    let job = JobBuilder::new("reader-gone")
        .source("source", ops::generator(100_000, ops::KeyGen::Index, ops::ValueGen::Index), 1)
        .connect(PartitionerKind::Rebalance, "sink", 1)
        .collect(&handle)
        .build();
    drop(handle);
    match engine.submit(job).unwrap().wait_timeout(TIMEOUT) {
        Err(EngineError::JobFailed { cause, .. }) => assert!(cause.contains("collector 'gone'"), "{cause}"),
        other => panic!("expected a failed job, got {other:?}"),
    }
}
