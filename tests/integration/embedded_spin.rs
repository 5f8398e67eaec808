//! The spin idle policy: idle shards busy-poll instead of parking; results,
//! paced sources, a service's requests through an ingress and cancellation
//! behave as under park.

use shardflow_engine::{EngineError, IdlePolicy};

use crate::common::{endless_job, shard_count, small_engine, TIMEOUT};

#[test]
fn spinning_shards_compute_the_same_results_and_cancel() {
    let engine = small_engine().idle(IdlePolicy::Spin).build().expect("engine starts");
    let p = shard_count() as u32;

    let n = 200_000u64;
    let job = shardflow_engine::jobs::exchange(n, p).unwrap();
    assert_eq!(engine.submit(job).unwrap().wait_timeout(TIMEOUT).unwrap().count(), (n, n * (n - 1) / 2));

    // A paced source: 2 000 records over 100 ms, every one accounted for.
    let paced = shardflow_engine::jobs::latency(20_000, 100, p).unwrap();
    let result = engine.submit(paced).unwrap().wait_timeout(TIMEOUT).unwrap();
    assert_eq!(result.latency().expect("histogram").len(), 2_000);

    let (job, seen) = endless_job("spin-endless", p);
    let handle = engine.submit(job).unwrap();
    seen.recv_timeout(TIMEOUT).expect("records flow");
    handle.cancel();
    assert!(matches!(handle.wait_timeout(TIMEOUT), Err(EngineError::JobCanceled(_))));
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments);
    }
}

#[test]
fn a_spinning_engine_answers_a_services_requests_one_by_one() {
    // Each answer must come back before the next request goes in: every request
    // crosses from this thread into a shard and back, through an exchange.
    let engine = small_engine().idle(IdlePolicy::Spin).build().expect("engine starts");
    let df = shardflow_engine::Dataflow::new("spin-service").parallelism(shard_count() as u32);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 4);
    let answers = requests.key_by(|r: &u64| *r).as_stream().map(|r: &u64| r * 2).egress(4);
    let job = engine.submit(df.build().unwrap()).unwrap();
    for r in 0..200u64 {
        ingress.push(r).expect("the job takes the request");
        assert_eq!(answers.recv_timeout(TIMEOUT), Ok(r * 2), "request {r} answered");
    }
    drop(ingress);
    job.wait_timeout(TIMEOUT).expect("the job ends with its input");
    assert_eq!(answers.stopped(), None);
}
