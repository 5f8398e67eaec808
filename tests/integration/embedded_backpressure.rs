//! Back-pressure: a deliberately slow consumer throttles its producers through
//! credits (inside the job) and bounded queues (at its edges), so memory stays
//! within what was reserved and no record is lost.

use std::time::Duration;

use shardflow_engine::jobs::{KeyValue, GOLDEN};
use shardflow_engine::{
    Dataflow, EgressHandle, Emitter, EngineError, IngressHandle, PushError, QueueBound, SOURCE_BATCH,
};

use crate::common::{endless_job, join_within, shard_count, small_engine, SMALL_SEGMENT_BYTES, TIMEOUT};

/// Burns `work` rounds of mixing on `x` (a slow operator).
fn slow(x: u64, work: u64) -> u64 {
    (0..work).fold(x, |x, _| std::hint::black_box(shardflow_engine::fmix64(x)))
}

#[test]
fn slow_sink_bounds_memory_and_loses_nothing() {
    let (exclusive, floating) = (2u32, 2u32);
    let engine = small_engine().exclusive_credits(exclusive).floating_credits(floating).build().expect("engine starts");
    let p = shard_count() as u32;
    // 300k records of 16 bytes = ~1170 buffers of 4 KiB: without flow control far
    // more than the bound below would pile up in front of the slow sink.
    let n = 300_000u64;
    let df = Dataflow::new("slow-sink").parallelism(p);
    df.generate("source", n, |r| KeyValue { key: r.wrapping_mul(GOLDEN), value: r })
        .key_by(|r: &KeyValue| r.key)
        .as_stream()
        .map(|r: &KeyValue| KeyValue { key: slow(r.key, 300), value: r.value })
        .count_and_sum(|r: &KeyValue| r.value);
    engine.reset_memory_peaks();
    let result = engine.submit(df.build().unwrap()).expect("submit").wait_timeout(TIMEOUT).expect("job finishes");

    let (count, sum) = result.count();
    assert_eq!(count, n, "every record reaches the sink");
    assert_eq!(sum, n * (n - 1) / 2);
    let sent: u64 = result.subtasks.iter().filter(|s| s.vertex == "source").map(|s| s.records_out).sum();
    assert_eq!(sent, n);

    // Per shard: one source subtask writing p subpartitions, each holding one
    // buffer being filled and at most exclusive + floating in flight (credits);
    // beyond those, buffers wait for credits: up to the partition's overdraft of
    // 4 when the task looks between source batches, plus what one batch fills
    // before it looks again (the batch's bytes in segments, and one more per
    // subpartition where the batch starts mid-buffer).
    let record = std::mem::size_of::<KeyValue>();
    let per_batch = SOURCE_BATCH * record / SMALL_SEGMENT_BYTES + p as usize;
    let bound = p as usize * (1 + exclusive + floating) as usize + 4 + per_batch;
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
    let buffers = n as usize * record / SMALL_SEGMENT_BYTES;
    assert!(buffers > 10 * bound, "the run is big enough to need back-pressure");
}

#[test]
fn ingress_and_egress_under_a_slow_reader_bound_memory_and_lose_nothing() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("service").parallelism(shard_count() as u32);
    let (requests, mut ingress) = df.ingress::<String>("requests", 8);
    let answers = requests.map(|r: &str| format!("{r}!")).egress(4);
    let handle = engine.submit(df.build().unwrap()).unwrap();

    let n = 5_000u64;
    let pusher = std::thread::spawn(move || {
        for i in 0..n {
            ingress.push(format!("request-{i}")).expect("the job takes every request");
        }
        // Dropping the handle ends the source.
    });
    // A slow reader: the queues in between stay within their capacity.
    let mut got = Vec::new();
    let mut most_queued = 0;
    while let Some(answer) = answers.recv() {
        most_queued = most_queued.max(answers.len());
        if got.len() % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        got.push(answer);
    }
    pusher.join().unwrap();
    assert!(most_queued <= 4, "the egress queue never holds more than its capacity: {most_queued}");
    handle.wait_timeout(TIMEOUT).expect("the job ends when the ingress handle is dropped");
    got.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("request-{i}!")).collect();
    want.sort();
    assert_eq!(got, want, "every request answered exactly once");
    assert_eq!(answers.stopped(), None, "the stream ended complete");
}

/// What a byte bound charges a `String` of `len` bytes.
fn string_charge(len: usize) -> usize {
    std::mem::size_of::<String>() + len
}

#[test]
fn an_ingress_bounded_by_bytes_takes_records_by_their_size_and_loses_none() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("ingress-by-bytes").parallelism(1);
    let bound = 10 * string_charge(1000);
    let (docs, mut ingress) = df.ingress_bounded::<String>("docs", QueueBound::bytes(bound));
    let lengths = docs.map(|d: &str| d.len() as u64).collect();
    let job = df.build().unwrap();

    // Before the job reads: ten documents of 1000 bytes fill the bytes, and
    // then not even a one-byte one fits (no count bound would stop it).
    for i in 0..10 {
        ingress.try_push("a".repeat(1000)).unwrap_or_else(|e| panic!("document {i} fits: {e}"));
    }
    assert_eq!((ingress.queued(), ingress.queued_bytes()), (10, bound));
    assert_eq!(ingress.try_push("b".to_string()), Err(PushError::Full("b".to_string())), "no byte left");
    let huge = "c".repeat(5 * bound);
    let huge = match ingress.try_push(huge) {
        Err(PushError::Full(back)) => back,
        other => panic!("a document larger than the bound waits for an empty queue: {other:?}"),
    };

    // Once the job reads, the waiting pushes go through: the huge one alone.
    let handle = engine.submit(job).unwrap();
    ingress.push("b".to_string()).expect("room comes");
    ingress.push(huge).expect("alone in the emptied queue");
    ingress.push("d".repeat(10)).expect("after it");
    drop(ingress);
    handle.wait_timeout(TIMEOUT).expect("the job ends when the ingress handle is dropped");
    let mut want = vec![1000u64; 10];
    want.extend([1, 5 * bound as u64, 10]);
    assert_eq!(lengths.take(), want, "every document, in order");
}

#[test]
fn an_egress_bounded_by_bytes_holds_no_more_and_delivers_everything() {
    let engine = small_engine().build().expect("engine starts");
    let p = shard_count();
    let df = Dataflow::new("egress-by-bytes").parallelism(p as u32);
    let (lengths, mut ingress) = df.ingress::<u64>("lengths", 2);
    let bound = 8 * string_charge(1000);
    // Bytes only: the queue holds any number of results within them.
    let answers = lengths.map(|n: &u64| "z".repeat(*n as usize)).egress_bounded(QueueBound::bytes(bound));
    let handle = engine.submit(df.build().unwrap()).unwrap();

    // Nobody reads: the egress fills its bytes, then the job stops taking input.
    // Beside the 8 results it holds, each subtask has at most one source batch
    // waiting for room and its ingress queue of 2.
    let most = 8 + p * (SOURCE_BATCH + 2);
    let mut pushed = 0usize;
    let refused = loop {
        match ingress.push_timeout(1000, Duration::from_millis(200)) {
            Ok(()) => pushed += 1,
            Err(e) => break e,
        }
        assert!(pushed <= most, "the byte bound stops the pusher: {pushed} pushed");
    };
    assert!(answers.queued_bytes() <= bound, "{} bytes queued, bound {bound}", answers.queued_bytes());
    assert!(answers.len() <= 8, "{} results queued", answers.len());

    // A reader drains it all; the queue never holds more than its bytes.
    let pusher = std::thread::spawn(move || {
        ingress.push(refused.into_inner()).expect("the job takes it once there is room");
        for _ in 0..2000 {
            ingress.push(1000).expect("the job takes every length");
        }
    });
    let mut got = 0usize;
    while let Some(answer) = answers.recv() {
        assert_eq!(answer.len(), 1000);
        assert!(answers.queued_bytes() <= bound, "{} bytes queued, bound {bound}", answers.queued_bytes());
        got += 1;
    }
    pusher.join().unwrap();
    handle.wait_timeout(TIMEOUT).expect("the job ends when the ingress handle is dropped");
    assert_eq!(got, pushed + 1 + 2000, "every result exactly once");
    assert_eq!((answers.stopped(), answers.queued_bytes()), (None, 0), "complete, and every charge given back");
}

#[test]
fn push_all_waits_for_room_mid_batch_loses_nothing_and_hands_back_what_a_gone_job_did_not_take() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("batches").parallelism(shard_count() as u32);
    // Queues of 4: a batch of 20 000 waits for room many times on the way.
    let (numbers, mut ingress) = df.ingress::<u64>("numbers", 4);
    let doubled = numbers.map(|n: &u64| n * 2).collect();
    let handle = engine.submit(df.build().unwrap()).unwrap();
    ingress.push_all(0..10_000u64).expect("the job takes the first batch");
    let mut second: Vec<u64> = (10_000..20_000).collect();
    ingress.push_all(second.drain(..)).expect("and the second");
    drop(ingress);
    handle.wait_timeout(TIMEOUT).expect("the job ends with its input");
    let mut got = doubled.take();
    got.sort_unstable();
    assert_eq!(got, (0..20_000u64).map(|n| n * 2).collect::<Vec<_>>(), "every record once");

    // A gone job: the first record it did not take comes back, the rest stay.
    let mut ingress = ingress_of_a_cancelled_job(&engine, "gone");
    let mut rest = 7..100u64;
    assert_eq!(ingress.push_all(&mut rest), Err(PushError::Closed(7)));
    assert_eq!(rest.next(), Some(8), "the records after it are the caller's");
}

/// The ingress of a job that was cancelled: every push finds it gone.
fn ingress_of_a_cancelled_job(engine: &shardflow_engine::Engine, name: &str) -> IngressHandle<u64> {
    let df = Dataflow::new(name);
    let (numbers, ingress) = df.ingress::<u64>("numbers", 4);
    numbers.count();
    let handle = engine.submit(df.build().unwrap()).unwrap();
    handle.cancel();
    assert!(matches!(handle.wait_timeout(TIMEOUT), Err(EngineError::JobCanceled(_))), "cancelled");
    ingress
}

/// Reads every result on a thread of its own, awaiting each
/// ([`EgressHandle::recv_async`]), and checks the stream ended complete.
fn read_async(mut answers: EgressHandle<u64>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        futures_lite::future::block_on(async move {
            let mut got = Vec::new();
            while let Some(a) = answers.recv_async().await {
                got.push(a);
            }
            assert_eq!(answers.stopped(), None, "the stream ended complete");
            got
        })
    })
}

#[test]
fn async_pushers_and_readers_await_room_and_results_across_threads() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("async-service").parallelism(shard_count() as u32);
    // Queues of two: the pusher and the reader wait for each other all along.
    let (requests, mut ingress) = df.ingress::<u64>("requests", 2);
    let answers = requests.key_by(|r: &u64| *r).as_stream().map(|r: &u64| r * 2).egress(2);
    let handle = engine.submit(df.build().unwrap()).unwrap();
    let n = 5_000u64;
    let pusher = std::thread::spawn(move || {
        futures_lite::future::block_on(async move {
            for r in 0..n {
                ingress.push_async(r).await.expect("the job takes every request");
            }
        })
    });
    let reader = read_async(answers);
    let mut got = join_within(reader, "every answer (a lost wake-up otherwise)");
    pusher.join().unwrap();
    handle.wait_timeout(TIMEOUT).expect("the job ends when the ingress handle is dropped");
    got.sort_unstable();
    assert_eq!(got, (0..n).map(|r| r * 2).collect::<Vec<_>>(), "every request answered exactly once");

    // A job that is gone hands an awaited push's record back.
    let mut ingress = ingress_of_a_cancelled_job(&engine, "async-gone");
    let pushed = futures_lite::future::block_on(ingress.push_async(7));
    assert!(matches!(pushed, Err(PushError::Closed(7))), "{pushed:?}");
}

#[test]
fn an_awaiting_reader_is_woken_for_results_that_arrive_in_batches() {
    let engine = small_engine().build().expect("engine starts");
    let p = shard_count() as u32;
    let n = 50_000u64;
    let df = Dataflow::new("batched-egress").parallelism(p);
    // Plain data across an exchange reaches the egress a buffer at a time: the
    // sink queues a batch, then wakes the reader once.
    let answers = df.generate("numbers", n, |r| r).rebalance().egress(16);
    let handle = engine.submit(df.build().unwrap()).unwrap();
    let mut got = join_within(read_async(answers), "every result (a lost wake-up otherwise)");
    handle.wait_timeout(TIMEOUT).expect("the job finishes");
    got.sort_unstable();
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every result exactly once");
}

#[test]
fn a_full_ingress_hands_the_record_back_and_a_gone_job_closes_it() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("blocked");
    let (s, mut ingress) = df.ingress::<u64>("numbers", 2);
    // The egress nobody reads fills, then the job stops taking input.
    let answers = s.egress(1);
    let handle = engine.submit(df.build().unwrap()).unwrap();
    let mut pushed = 0u64;
    let full = loop {
        match ingress.push_timeout(pushed, Duration::from_millis(200)) {
            Ok(()) => pushed += 1,
            Err(e) => break e,
        }
        assert!(pushed < 100_000, "back-pressure stops the pusher");
    };
    assert_eq!(full, PushError::Full(pushed), "the record comes back");
    handle.cancel();
    assert!(handle.wait_timeout(TIMEOUT).is_err(), "cancelled");
    assert!(matches!(ingress.try_push(7), Err(PushError::Closed(7))), "the job is gone");
    drop(answers);
}

/// Pushes from a thread of its own until the ingress stops taking records;
/// tells `blocked` when a push first found the queue full (it then waits in
/// `push`, or in `push_timeout` for an hour), and returns how the pushing
/// ended.
fn push_until_refused(
    mut ingress: IngressHandle<u64>,
    with_timeout: bool,
    blocked: crossbeam_channel::Sender<()>,
) -> std::thread::JoinHandle<PushError<u64>> {
    std::thread::spawn(move || {
        let mut next = 0u64;
        loop {
            let r = match ingress.try_push(next) {
                Ok(()) => Ok(()),
                Err(PushError::Full(r)) => {
                    let _ = blocked.try_send(());
                    if with_timeout {
                        ingress.push_timeout(r, Duration::from_secs(3600))
                    } else {
                        ingress.push(r)
                    }
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => next += 1,
                Err(e) => return e,
            }
        }
    })
}

#[test]
fn a_push_waiting_for_room_gets_its_record_back_as_soon_as_the_job_is_gone() {
    let engine = small_engine().build().expect("engine starts");
    for with_timeout in [false, true] {
        let df = Dataflow::new(&format!("gone-while-waiting-{with_timeout}"));
        let (s, ingress) = df.ingress::<u64>("numbers", 2);
        // The egress nobody reads fills, then the job stops taking input.
        let answers = s.egress(1);
        let handle = engine.submit(df.build().unwrap()).unwrap();
        let (tx, blocked) = crossbeam_channel::bounded(1);
        let pusher = push_until_refused(ingress, with_timeout, tx);
        blocked.recv_timeout(TIMEOUT).expect("the queue fills");
        handle.cancel();
        assert!(handle.wait_timeout(TIMEOUT).is_err(), "cancelled");
        // The waiting push learns of the end from the job, not from a timeout
        // (an hour) or a poll: a pusher still waiting would fail the join below.
        let end = join_within(pusher, "the waiting push returns once the job is gone");
        assert!(matches!(end, PushError::Closed(_)), "timeout {with_timeout}: {end:?}");
        drop(answers);
    }

    // A job dropped before it ever ran, with the dataflow it came from (which
    // could build it again): nothing will read its queue.
    let (job, ingress) = {
        let df = Dataflow::new("never-run");
        let (s, ingress) = df.ingress::<u64>("numbers", 1);
        s.count();
        (df.build().unwrap(), ingress)
    };
    let (tx, blocked) = crossbeam_channel::bounded(1);
    let pusher = push_until_refused(ingress, false, tx);
    blocked.recv_timeout(TIMEOUT).expect("a queue of one fills at once");
    drop(job);
    let end = join_within(pusher, "the waiting push returns once its job is dropped");
    assert!(matches!(end, PushError::Closed(_)), "{end:?}");
}

/// Tags each record with the subtask it reached.
#[derive(Clone)]
struct TagSubtask;

impl shardflow_engine::ProcessFunction<u64, (u64, u64)> for TagSubtask {
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut shardflow_engine::OperatorContext<'_>,
        out: &mut shardflow_engine::Emitter<'_, (u64, u64)>,
    ) -> Result<(), shardflow_engine::OperatorError> {
        out.emit((u64::from(ctx.task().subtask), *r));
        Ok(())
    }
}

#[test]
fn split_ingress_handles_feed_one_subtask_each_from_threads_of_their_own() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("split-ingress");
    let (requests, ingress) = df.ingress_with::<u64>("requests", QueueBound::records(4), 2);
    // Chained to the source: each record tagged with the source subtask it entered.
    let tagged = requests.process(TagSubtask).collect();
    let job = engine.submit(df.build().unwrap()).unwrap();
    let handles = ingress.split();
    drop(ingress);
    assert_eq!(handles.len(), 2);
    let threads: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(i, mut h)| {
            std::thread::spawn(move || {
                for n in 0..1_000u64 {
                    h.push(i as u64 * 1_000_000 + n).expect("the job reads its input");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a pushing thread");
    }
    // Every handle is gone: the input ends and so does the job.
    job.wait_timeout(TIMEOUT).expect("the job ends with its input");
    let mut got = tagged.take();
    got.sort_unstable();
    let want: Vec<(u64, u64)> = (0..2u64).flat_map(|i| (0..1_000).map(move |n| (i, i * 1_000_000 + n))).collect();
    assert_eq!(got, want, "handle i's records, all of them, entered subtask i");
}

/// The segment size of [`engine_of`].
const SEGMENT: usize = 32 << 10;

/// An engine of `segments` segments of [`SEGMENT`] bytes per shard, with
/// `exclusive` and `floating` credits.
fn engine_of(segments: usize, exclusive: u32, floating: u32) -> shardflow_engine::EngineBuilder {
    small_engine()
        .segment_bytes(SEGMENT)
        .network_memory_bytes(segments * SEGMENT)
        .exclusive_credits(exclusive)
        .floating_credits(floating)
}

/// A job whose subtasks each fan one record out, in one step, into `segments`
/// full buffers of [`SEGMENT`] bytes; its count sink gets `(records, sum)`.
fn burst(p: u32, segments: u64) -> (shardflow_engine::Job, u64, u64) {
    let per_record = segments * SEGMENT as u64 / 8;
    let df = Dataflow::new("burst").parallelism(p);
    df.from_iter("one", (0..u64::from(p)).collect::<Vec<_>>())
        .flat_map(move |r: &u64, out: &mut Emitter<'_, u64>| (0..per_record).for_each(|i| out.emit(r * per_record + i)))
        .key_by(|r: &u64| *r)
        .as_stream()
        .count_and_sum(|r: &u64| *r);
    let n = per_record * u64::from(p);
    (df.build().unwrap(), n, (0..n).sum())
}

#[test]
fn a_step_that_fans_out_past_the_network_memory_spills_and_spares_the_others() {
    // 48 segments of 32 KiB per shard. A source batch of 16-byte records
    // completes at most one buffer per subpartition, which a task's reservation
    // covers: the steady job never needs more than it reserved (12 segments a
    // shard with these credits), nor does the burst's until its step.
    let engine = engine_of(48, 1, 1).build().expect("engine starts");
    let p = shard_count() as u32;
    let (steady, seen) = endless_job("steady", p);
    let steady = engine.submit(steady).expect("submit");
    seen.recv_timeout(TIMEOUT).expect("the steady job's records flow");

    // One record fans out, in one step, into 100 buffers: more than the whole
    // pool. Past its reservation the burst takes what no task reserved, then
    // spills to its slot's managed memory; credits pace it all to the sink.
    let (job, n, sum) = burst(p, 100);
    let result = engine.submit(job).expect("submit").wait_timeout(TIMEOUT).expect("the burst completes");
    assert_eq!(result.count(), (n, sum), "every record of the burst, once");

    // The steady job kept its reserved segments: its records still flow.
    for _ in 0..3 {
        seen.recv_timeout(TIMEOUT).expect("the steady job still runs after the burst");
    }
    steady.cancel();
    match steady.wait_timeout(TIMEOUT) {
        Err(EngineError::JobCanceled(_)) => {}
        other => panic!("expected the steady job to end by the cancel, got {other:?}"),
    }
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments, "shard {}: every segment is home", pool.shard);
    }
}

#[test]
fn a_fan_out_past_the_network_and_the_managed_memory_fails_with_the_numbers() {
    // As above, with 256 KiB of managed memory per slot to spill to: 8 buffers.
    let engine = engine_of(48, 1, 1).managed_memory_per_slot_bytes(256 << 10).build().expect("engine starts");
    let (job, _, _) = burst(shard_count() as u32, 100);
    let cause = match engine.submit(job).expect("submit").wait_timeout(TIMEOUT) {
        Err(EngineError::JobFailed { cause, .. }) => cause,
        other => panic!("expected the burst to fail, got {other:?}"),
    };
    assert!(cause.contains("past the partition's overdraft"), "{cause}");
    assert!(cause.contains("managed memory budget exceeded: requested 32768 bytes"), "{cause}");
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments, "shard {}: every segment is home", pool.shard);
    }
    // The engine runs on: the next job completes.
    let (job, n, sum) = burst(shard_count() as u32, 2);
    let result = engine.submit(job).expect("submit").wait_timeout(TIMEOUT).expect("a small burst completes");
    assert_eq!(result.count(), (n, sum));
}

#[test]
fn records_larger_than_a_segment_in_flight_stay_within_managed_memory() {
    // 400 records of 100 KB (40 MB) through an exchange, each in a buffer of
    // its own charged to its producer's managed memory until read: with 3 MiB
    // per slot the job completes only if credits and the overdraft bound what
    // is in flight (at most ~22 buffers, 2.2 MB, per producer) and every
    // buffer gives its bytes back once read.
    let engine = small_engine().managed_memory_per_slot_bytes(3 << 20).build().expect("engine starts");
    let p = shard_count() as u32;
    let n = 400u64;
    let df = Dataflow::new("large-in-flight").parallelism(p);
    df.generate("large", n, |r| char::from(b'a' + (r % 26) as u8).to_string().repeat(100_000 + r as usize))
        .rebalance()
        .map(|s: &str| (s.len() as u64) * u64::from(s.bytes().all(|b| b == s.as_bytes()[0])))
        .count_and_sum(|l: &u64| *l);
    let result = engine.submit(df.build().unwrap()).expect("submit").wait_timeout(TIMEOUT).expect("job finishes");
    let want: u64 = (0..n).map(|r| 100_000 + r).sum();
    assert_eq!(result.count(), (n, want), "every record, whole");
}

#[test]
fn large_records_wait_for_credits_instead_of_filling_the_shard() {
    // A source of ~30 KB records, one to a 32 KiB segment, that could push a
    // thousand in one poll; and a relay that turns 500-byte records, 64 to a
    // step, into 30 KB ones. 3 MiB of network memory per shard is 96 segments:
    // either running on past back-pressure would need far more.
    let engine = engine_of(96, 4, 8).build().expect("engine starts");
    let p = shard_count() as u32;
    let n = 2_000u64;
    let len = |r: u64| 30_000 + (r % 7) as usize;
    let df = Dataflow::new("large-records").parallelism(p);
    let large = df.generate("large", n, move |r| "x".repeat(len(r)));
    let grown = df
        .generate("small", n, |r| "y".repeat(500 + (r % 3) as usize))
        .rebalance()
        .map(|s: &str| s.repeat(60))
        .name("relay");
    large.union(&grown).map(|s: &str| s.len() as u64).count_and_sum(|l: &u64| *l);
    engine.reset_memory_peaks();
    let result = engine.submit(df.build().unwrap()).expect("submit").wait_timeout(TIMEOUT).expect("job finishes");
    let want: u64 = (0..n).map(|r| len(r) as u64 + 60 * (500 + r % 3)).sum();
    assert_eq!(result.count(), (2 * n, want), "every record, whole");
    // Per shard three subtasks write p subpartitions each (the two sources and
    // the relay): a buffer being filled, 4 + 8 credits and one buffer past the
    // overdraft per subpartition, plus the overdraft of 4 — what each task
    // reserved. A poll or a step ends once its outputs wait, so nothing beyond
    // the reservations is needed.
    let reserved = 3 * (p as usize * (1 + 4 + 8 + 1) + 4);
    for pool in engine.memory() {
        assert!(
            pool.peak_in_use <= reserved,
            "shard {} used {} segments at peak, its tasks reserved {reserved}",
            pool.shard,
            pool.peak_in_use
        );
        assert_eq!(pool.free_segments, pool.segments, "every segment came home");
    }
}
