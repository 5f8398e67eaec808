//! Cancel: a running job stops promptly, reports CANCELED, and frees every slot and
//! every segment. Letting go is not cancelling: a job whose handle is dropped
//! runs on to its end.

use shardflow_engine::{Dataflow, EngineError, JobStatus};

use crate::common::{endless_job, shard_count, small_engine, TIMEOUT};

#[test]
fn cancel_of_a_running_job_is_prompt_and_frees_everything() {
    let engine = small_engine().build().expect("engine starts");
    let slots_before = engine.free_slots().unwrap();
    let p = shard_count() as u32;
    let (job, seen) = endless_job("endless", p);
    let handle = engine.submit(job).expect("submit");
    let id = handle.id();
    assert!(engine.free_slots().unwrap() < slots_before, "the job holds slots");

    // Wait for evidence that records flow, then cancel.
    seen.recv_timeout(TIMEOUT).expect("records reach the sink while the job runs");
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
    let df = Dataflow::new("short");
    df.generate("source", 1000, |r| r).rebalance().count();
    let handle = engine.submit(df.build().unwrap()).expect("submit");
    let result = handle.wait_timeout(TIMEOUT).expect("finishes");
    assert_eq!(result.count().0, 1000);
    handle.cancel();
    handle.cancel();
    assert_eq!(engine.job_status(handle.id()).unwrap(), JobStatus::Finished);
}

#[test]
fn an_egress_of_a_cancelled_job_says_it_was_cancelled() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("served").parallelism(shard_count() as u32);
    let (requests, ingress) = df.ingress::<u64>("requests", 16);
    let answers = requests.rebalance().map(|r: &u64| r + 1).egress(16);
    let handle = engine.submit(df.build().unwrap()).expect("submit");
    handle.cancel();
    // Nothing was pushed: the stream ends at once, cut short by the cancel.
    assert_eq!(answers.recv_timeout(TIMEOUT), Err(crossbeam_channel::RecvTimeoutError::Disconnected));
    let why = answers.stopped().expect("a stream cut short says why");
    assert!(why.ends_with("was cancelled: the job was cancelled"), "{why}");
    assert!(matches!(handle.wait_timeout(TIMEOUT), Err(EngineError::JobCanceled(_))));
    drop(ingress);
}

#[test]
fn a_job_whose_handle_is_dropped_runs_on_fed_and_read_by_the_service() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("let-go").parallelism(shard_count() as u32);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 8);
    let answers = requests.map(|r: &u64| r * 2).egress(1024);
    // Dropped at once, before its tasks have built their operators from the plan.
    drop(engine.submit(df.build().expect("valid")).expect("submit"));
    for r in 0..1000 {
        ingress.push(r).expect("the job takes every request");
    }
    drop(ingress);
    let mut got = Vec::new();
    while let Ok(a) = answers.recv_timeout(TIMEOUT) {
        got.push(a);
    }
    assert_eq!(answers.stopped(), None, "the job ran to its end");
    got.sort_unstable();
    assert_eq!(got, (0..1000).map(|r| r * 2).collect::<Vec<u64>>());
}

#[test]
fn an_engine_shut_down_under_a_running_job_ends_its_streams_saying_why() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("endless");
    let answers = df.generate("numbers", u64::MAX, |i| i).egress(16);
    let handle = engine.submit(df.build().expect("valid")).expect("submit");
    assert!(answers.recv_timeout(TIMEOUT).is_ok(), "the job runs");
    engine.shutdown();
    assert!(matches!(handle.wait_timeout(TIMEOUT), Err(EngineError::Shutdown)));
    while answers.recv_timeout(TIMEOUT).is_ok() {}
    let why = answers.stopped().expect("a stream cut short says so");
    assert!(why.contains("was cancelled: the worker shut down"), "{why}");
}
