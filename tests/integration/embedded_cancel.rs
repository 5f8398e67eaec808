//! Cancel: a running job stops promptly, reports CANCELED, and frees every slot and
//! every segment.

use shardflow_engine::{ops, CollectHandle, EngineError, JobBuilder, JobStatus, PartitionerKind};

use crate::common::{shard_count, small_engine, TIMEOUT};

#[test]
fn cancel_of_a_running_job_is_prompt_and_frees_everything() {
    let engine = small_engine().build().expect("engine starts");
    let slots_before = engine.free_slots().unwrap();
    let p = shard_count() as u32;
    let seen = CollectHandle::new("seen");
    // Effectively endless: a trillion records.
    let job = JobBuilder::new("endless")
        .source("source", ops::generator(1_000_000_000_000, ops::KeyGen::Golden, ops::ValueGen::Index), p)
        .connect(PartitionerKind::Hash, "sink", p)
        .filter("every-millionth", |r| r.value % 1_000_000 == 0)
        .collect(&seen)
        .build();
    let handle = engine.submit(job).expect("submit");
    let id = handle.id();
    assert!(engine.free_slots().unwrap() < slots_before, "the job holds slots");

    // Wait for evidence that records flow, then cancel.
    let first = seen.recv_timeout(TIMEOUT).expect("records reach the sink while the job runs");
    assert!(!first.is_empty());
    assert_eq!(engine.job_status(id).unwrap(), JobStatus::Running);

    // A trillion records take hours: ending within the wait means the cancel did it.
    handle.cancel();
    match handle.wait_timeout(TIMEOUT) {
        Err(EngineError::JobCanceled(j)) => assert_eq!(j, id),
        other => panic!("expected a cancelled job, got {other:?}"),
    }
    assert_eq!(engine.job_status(id).unwrap(), JobStatus::Canceled);
    assert_eq!(engine.free_slots().unwrap(), slots_before, "every slot is free again");
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments, "shard {}: every segment is home", pool.shard);
    }
}

#[test]
fn cancelling_twice_or_after_the_end_is_harmless() {
    let engine = small_engine().build().expect("engine starts");
    let job = JobBuilder::new("short")
        .source("source", ops::generator(1000, ops::KeyGen::Index, ops::ValueGen::Index), 1)
        .connect(PartitionerKind::Rebalance, "sink", 1)
        .then(ops::count_sink())
        .build();
    let handle = engine.submit(job).expect("submit");
    let result = handle.wait_timeout(TIMEOUT).expect("finishes");
    assert_eq!(result.count().0, 1000);
    handle.cancel();
    handle.cancel();
    assert_eq!(engine.job_status(handle.id()).unwrap(), JobStatus::Finished);
}
