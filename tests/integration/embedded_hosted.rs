//! A shard hosted by the caller's thread: the host owns its loop and the
//! shard's tasks run only inside its calls.

use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use shardflow_engine::{Dataflow, EgressHandle, Either, Emitter, Engine, EngineError, HostedShard, IngressHandle};
use shardflow_engine::{JobHandle, JobStatus, OutputTag, PushError};

use crate::common::{join_within, shard_count, small_engine, TIMEOUT};

/// The next answer, the host's thread running its shard meanwhile; fails the
/// test after [`TIMEOUT`].
fn next_answer(shard: &mut HostedShard, answers: &mut EgressHandle<u64>, what: &str) -> Option<u64> {
    match shard.block_on_timeout(answers.recv_async(), TIMEOUT) {
        Some(answer) => answer,
        None => panic!("no answer to {what} within {TIMEOUT:?}: {:?}", answers.stopped()),
    }
}

/// An engine whose shard 0 is this thread's, and a job of one subtask per
/// vertex on it: requests in, each answered with itself + 1.
struct HostedJob {
    engine: Engine,
    shard: HostedShard,
    ingress: IngressHandle<u64>,
    answers: EgressHandle<u64>,
    job: JobHandle,
}

impl HostedJob {
    /// Ends the input: the stream ends complete, the job finishes (while this
    /// thread runs its shard), the engine stops.
    fn finish(self) {
        let HostedJob { engine, mut shard, ingress, mut answers, job } = self;
        drop(ingress);
        assert_eq!(next_answer(&mut shard, &mut answers, "the end of input"), None, "the stream ends");
        assert_eq!(answers.stopped(), None, "a complete stream");
        // A wait on the host's thread runs its shard meanwhile.
        let result = job.wait_timeout(TIMEOUT).expect("the job finishes");
        assert_eq!(result.status, JobStatus::Finished);
        drop(job);
        drop(shard);
        engine.shutdown();
    }
}

fn hosted_job(name: &str) -> HostedJob {
    let (engine, shard) = small_engine().build_hosted().expect("a hosted engine starts");
    let core = shard.core();
    let df = Dataflow::new(name).parallelism(1);
    let (requests, ingress) = df.ingress::<u64>("requests", 8);
    let answers = requests.cores(&[core]).map(|r: &u64| r + 1).cores(&[core]).egress(8);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("the job is accepted");
    HostedJob { engine, shard, ingress, answers, job }
}

#[test]
fn a_host_thread_runs_its_shard_and_answers_cross_every_shard() {
    let (engine, mut shard) = small_engine().build_hosted().expect("a hosted engine starts");
    assert_eq!(engine.shards()[0].core, shard.core(), "the hosted shard is shard 0, on the first core");
    let p = shard_count() as u32;
    let df = Dataflow::new("hosted-service").parallelism(p);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 64);
    // Keyed by the request: with two shards, half the requests are answered on
    // the other shard's thread, half on this one.
    let mut answers = requests.key_by(|r: &u64| *r).as_stream().map(|r: &u64| r * 3).egress(64);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("the job is accepted");
    let here = job.placement().placements.iter().filter(|s| s.core == shard.core()).count();
    assert_eq!(here, 2, "one ingress and one answering subtask on the hosted shard:\n{}", job.placement());
    for r in 0..2_000u64 {
        ingress.push(r).expect("the job takes every request");
        assert_eq!(next_answer(&mut shard, &mut answers, &format!("request {r}")), Some(r * 3));
    }
    HostedJob { engine, shard, ingress, answers, job }.finish();
}

#[test]
fn nothing_runs_on_a_hosted_shard_until_its_host_steps() {
    let HostedJob { engine, mut shard, mut ingress, mut answers, job } = hosted_job("hosted-only");
    let core = shard.core();
    assert!(job.placement().placements.iter().all(|s| s.core == core), "{}", job.placement());
    // The deployment waits in the shard's mailbox, the request in its queue:
    // no thread but this one can answer it.
    ingress.push(41).expect("the queue has room");
    assert_eq!(answers.try_recv().ok(), None, "no answer before the host steps");
    assert_eq!(next_answer(&mut shard, &mut answers, "request 41"), Some(42));
    // A host with its own loop: step until the answer is there.
    ingress.push(1).expect("the queue has room");
    let mut steps = 0u64;
    let answer = loop {
        if let Ok(a) = answers.try_recv() {
            break a;
        }
        shard.step();
        steps += 1;
        assert!(steps < 100_000_000, "no answer after {steps} steps");
    };
    assert_eq!(answer, 2);
    HostedJob { engine, shard, ingress, answers, job }.finish();
}

#[test]
fn a_host_awaits_room_in_an_ingress_its_own_shard_drains() {
    let (engine, mut shard) = small_engine().build_hosted().expect("a hosted engine starts");
    let core = shard.core();
    let df = Dataflow::new("hosted-push").parallelism(1);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 2);
    let got = requests.cores(&[core]).map(|r: &u64| r + 1).cores(&[core]).collect();
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("the job is accepted");
    // The queue holds two; only this thread drains it. A blocking push would
    // wait for itself: the awaited one lets the shard run meanwhile.
    let n = 10_000u64;
    let pushed = shard.block_on_timeout(
        async {
            for r in 0..n {
                ingress.push_async(r).await?;
            }
            Ok::<(), PushError<u64>>(())
        },
        TIMEOUT,
    );
    assert_eq!(pushed, Some(Ok(())), "every record pushed within {TIMEOUT:?}");
    drop(ingress);
    let finished = shard.step_during(|| job.wait_timeout(TIMEOUT)).expect("the job finishes");
    assert_eq!(finished.status, JobStatus::Finished);
    assert_eq!(got.take(), (1..=n).collect::<Vec<_>>(), "every record, in order");
    drop(job);
    drop(shard);
    engine.shutdown();
}

#[test]
fn the_engines_blocking_calls_on_the_host_thread_run_its_shard() {
    let HostedJob { engine, shard, ingress, answers, job } = hosted_job("blocking-calls");
    let core = shard.core();
    // A queue of 8 that only this thread drains: blocking pushes past it, and
    // blocking reads of answers only this thread computes.
    for r in 0..1_000u64 {
        ingress.push_to(0, r).expect("the job takes every request");
        assert_eq!(answers.recv_timeout(TIMEOUT), Ok(r + 1), "answer to {r}");
    }
    // A spinning read on the host's thread runs the shard too (the answer
    // could never come while it spun).
    ingress.push_to(0, 1_000).expect("the job takes every request");
    assert_eq!(answers.recv_spinning(std::time::Duration::from_secs(3600), TIMEOUT), Ok(1_001));
    // 12 pushes into a queue of 8 nothing else drains: the 9th waits for the
    // shard to run (12 fit once the egress, 8 too, takes answers).
    let mut ingress = ingress;
    for r in 0..12u64 {
        ingress.push(r).expect("the job takes every request");
    }
    assert_eq!((0..12).map(|_| answers.recv()).collect::<Vec<_>>(), (1..=12).map(Some).collect::<Vec<_>>());
    HostedJob { engine, shard, ingress, answers, job }.finish();
    // Engine::run of a job whose every subtask is on the host's shard.
    let (engine, shard) = small_engine().build_hosted().expect("a hosted engine starts");
    let df = Dataflow::new("run-here").parallelism(1);
    let counted = df.generate("numbers", 10_000, |r| r).cores(&[core]).map(|r: &u64| r * 2).cores(&[core]).collect();
    let result = engine.run(df.build().expect("a valid dataflow")).expect("the job runs on this thread");
    assert_eq!(result.status, JobStatus::Finished);
    assert_eq!(counted.take().len(), 10_000);
    // One hosted shard per thread.
    match small_engine().build_hosted() {
        Err(EngineError::ShardStart { reason, .. }) => assert!(reason.contains("hosts a shard already"), "{reason}"),
        other => panic!("a second hosted shard on one thread is refused: {other:?}"),
    }
    drop(shard);
    engine.shutdown();
}

#[test]
fn a_dropped_hosted_shard_fails_its_tasks_and_refuses_new_ones() {
    let HostedJob { engine, mut shard, mut ingress, mut answers, job } = hosted_job("hosted-then-dropped");
    let core = shard.core();
    ingress.push(1).expect("the queue has room");
    assert_eq!(next_answer(&mut shard, &mut answers, "request 1"), Some(2), "the job runs");
    drop(shard);
    // Its tasks failed as it went, with the reason: the job ends instead of hanging.
    match job.wait_timeout(TIMEOUT) {
        Err(EngineError::JobFailed { cause, .. }) => assert!(cause.contains("dropped by its host"), "{cause}"),
        other => panic!("the job must fail without its shard: {other:?}"),
    }
    assert!(answers.recv_timeout(TIMEOUT).is_err(), "the stream ended");
    assert!(answers.stopped().is_some(), "cut short: {:?}", answers.stopped());
    assert!(matches!(ingress.try_push(2), Err(PushError::Closed(2))), "the ingress is closed");
    // A job placed on the stopped shard fails, typed, with the reason.
    let df = Dataflow::new("after-the-shard").parallelism(1);
    let _ = df.generate("numbers", 10, |r| r).cores(&[core]).count();
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("the job is accepted");
    match job.wait_timeout(TIMEOUT) {
        Err(EngineError::JobFailed { cause, .. }) => assert!(cause.contains("stopped"), "{cause}"),
        other => panic!("a job on a stopped shard fails: {other:?}"),
    }
    engine.shutdown();
}

#[test]
fn a_push_waiting_on_another_thread_learns_at_once_that_the_hosted_job_is_gone() {
    let HostedJob { engine, shard, ingress, answers, job } = hosted_job("hosted-waiting-pusher");
    // Nothing drains the queue of 8 while the host does not step: the pusher
    // fills it, then waits for room for an hour.
    let (tx, full) = crossbeam_channel::bounded(1);
    let pusher = std::thread::spawn(move || {
        let mut ingress = ingress;
        for r in 0..8 {
            ingress.try_push(r).expect("room for 8 before the shard runs");
        }
        assert!(matches!(ingress.try_push(8), Err(PushError::Full(8))), "nothing drains the queue");
        let _ = tx.send(());
        ingress.push_timeout(8, std::time::Duration::from_secs(3600))
    });
    full.recv_timeout(TIMEOUT).expect("the pusher fills the queue");
    drop(shard);
    assert!(job.wait_timeout(TIMEOUT).is_err(), "the job fails without its shard");
    let end = join_within(pusher, "the waiting push returns once the job is gone, not in an hour");
    assert!(matches!(end, Err(PushError::Closed(8))), "{end:?}");
    drop(answers);
    engine.shutdown();
}

/// The cores in `set`.
fn cores_of(set: &rustix::thread::CpuSet) -> Vec<usize> {
    (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

#[test]
fn a_call_handed_to_a_helper_runs_where_the_host_could_before_it_was_pinned() {
    // On a thread of its own: hosting pins the calling thread.
    let host = std::thread::spawn(|| {
        let before = rustix::thread::sched_getaffinity(None).expect("the thread's cores");
        let (engine, mut shard) = small_engine().build_hosted().expect("a hosted engine starts");
        let pinned = rustix::thread::sched_getaffinity(None).expect("the host's cores");
        let helper = shard.step_during(|| rustix::thread::sched_getaffinity(None).expect("the helper's cores"));
        let core = shard.core();
        drop(shard);
        engine.shutdown();
        (cores_of(&before), cores_of(&pinned), cores_of(&helper), core)
    });
    let (before, pinned, helper, core) = join_within(host, "the host's checks");
    assert_eq!(pinned, vec![core], "the host thread runs on its shard's core only");
    assert_eq!(helper, before, "the helper is not held to the host's core");
}

#[test]
fn a_hosted_shard_stops_once_its_engine_is_gone() {
    let HostedJob { engine, mut shard, mut ingress, mut answers, job: _job } = hosted_job("engine-goes");
    ingress.push(1).expect("the queue has room");
    assert_eq!(next_answer(&mut shard, &mut answers, "request 1"), Some(2));
    assert!(!shard.is_stopped());
    engine.shutdown();
    // The shutdown reached the shard's mailbox: the next steps cancel its task
    // and end it; the egress then ends, cut short.
    assert_eq!(next_answer(&mut shard, &mut answers, "the shutdown"), None);
    assert!(answers.stopped().is_some(), "cut short by the cancel");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !shard.is_stopped() {
        assert!(std::time::Instant::now() < deadline, "the hosted shard did not stop within {TIMEOUT:?}");
        shard.step_or_park(Some(std::time::Duration::from_millis(10)));
    }
}

#[test]
fn a_host_thread_reads_two_egresses_while_its_shard_runs() {
    let (engine, shard) = small_engine().build_hosted().expect("a hosted engine starts");
    let core = shard.core();
    let odd = OutputTag::<u64>::new("odd");
    let df = Dataflow::new("hosted-two-egresses").parallelism(1);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 8);
    let evens = requests
        .cores(&[core])
        .flat_map({
            let odd = odd.clone();
            move |r: &u64, out: &mut Emitter<'_, u64>| match r % 2 {
                1 => out.emit_side(&odd, r * 10),
                _ => out.emit(*r),
            }
        })
        .cores(&[core]);
    let mut odds = evens.side_output(&odd).egress(1);
    let mut evens = evens.egress(1);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("the job is accepted");
    assert!(job.placement().placements.iter().all(|s| s.core == core), "{}", job.placement());

    // Nothing pushed, nothing comes: the wait ends at its timeout.
    let nothing = evens.recv_either_timeout(&mut odds, Duration::from_millis(20));
    assert_eq!(nothing, Err(RecvTimeoutError::Timeout));
    // Each answer read on this thread, which runs the shard that computes it.
    for r in 0..200u64 {
        ingress.push(r).expect("the job takes every request");
        let want = if r % 2 == 1 { Either::Right(r * 10) } else { Either::Left(r) };
        assert_eq!(evens.recv_either_timeout(&mut odds, TIMEOUT), Ok(want), "the answer to request {r}");
    }
    drop(ingress);
    assert_eq!(evens.recv_either_timeout(&mut odds, TIMEOUT), Err(RecvTimeoutError::Disconnected), "both end");
    assert_eq!((evens.stopped(), odds.stopped()), (None, None), "both streams ended complete");
    let result = job.wait_timeout(TIMEOUT).expect("the job finishes");
    assert_eq!(result.status, JobStatus::Finished);
    drop(job);
    drop(shard);
    engine.shutdown();
}
