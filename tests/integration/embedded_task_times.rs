//! Where a task's time goes: busy, idle (waiting for input) and back-pressured
//! (waiting on a full output), as the engine's dump shows it while the task
//! runs and its report once it has finished.

use std::time::{Duration, Instant};

use shardflow_engine::protocol::{ShardDump, TaskDumpEntry};
use shardflow_engine::{Dataflow, DumpWindow, Engine, JobResult, PlacementStrategy, SubtaskReport};

use crate::common::{shard_count, small_engine, TIMEOUT};

/// The first dump in which `vertex`'s task satisfies `until`: the task.
fn dump_until(engine: &Engine, vertex: &str, what: &str, until: impl Fn(&TaskDumpEntry) -> bool) -> TaskDumpEntry {
    whole_dump_until(engine, vertex, what, until).1
}

/// The first dump in which `vertex`'s task satisfies `until`, and the task.
fn whole_dump_until(
    engine: &Engine,
    vertex: &str,
    what: &str,
    until: impl Fn(&TaskDumpEntry) -> bool,
) -> (ShardDump, TaskDumpEntry) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let dump = engine.dump().expect("the engine's dump");
        let task = dump.shards.iter().flat_map(|s| &s.tasks).find(|t| t.vertex == vertex).cloned();
        if let Some(t) = task.filter(|t| until(t)) {
            return (dump, t);
        }
        assert!(Instant::now() < deadline, "{vertex} never showed {what}: {dump:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `vertex`'s report in `result`.
fn report(result: &JobResult, vertex: &str) -> SubtaskReport {
    result.subtasks.iter().find(|s| s.vertex == vertex).expect(vertex).clone()
}

/// A finished task's times add up to no more than the job's run.
fn within_the_run(result: &JobResult) {
    for s in &result.subtasks {
        let t = s.times;
        let spent = t.busy_ms + t.idle_ms + t.back_pressured_ms;
        assert!(spent <= result.duration().as_millis() as u64, "{spent} ms in a job of {:?}: {s:?}", result.duration());
    }
}

#[test]
fn a_task_with_nothing_to_read_is_idle_and_one_always_at_work_is_busy() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("idle-and-busy").parallelism(1);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 64);
    requests.count();
    // 20 M records: more than a millisecond's work on any machine.
    let n = 20_000_000;
    df.generate("work", n, |r| r).name("work").count();
    let job = engine.submit(df.build().unwrap()).unwrap();
    // Nobody pushes: the ingress's task waits for input, and the dump counts
    // the wait as it goes on.
    let idle_ms = 30;
    let (first, seen) = whole_dump_until(&engine, "requests", "its idle time", |t| t.times.idle_ms >= idle_ms);
    let at = Instant::now();
    assert_eq!((seen.records_in, seen.times.back_pressured_ms), (0, 0), "waiting for input alone: {seen:?}");
    // Over a window of 30 ms more: nothing in, nearly all its time idle (its
    // busy time is what is left of its time in whole ms: 1 ms at most).
    let more = |t: &TaskDumpEntry| t.times.idle_ms >= seen.times.idle_ms + 30;
    let (second, _) = whole_dump_until(&engine, "requests", "30 ms more idle time", more);
    let window = DumpWindow::between(&first, &second, at.elapsed());
    let task = window.shards.iter().flat_map(|s| &s.tasks).find(|t| t.task.vertex == "requests").expect("the task");
    let shares = task.shares.expect("time spent");
    assert!(task.records_in_per_s == 0.0 && shares.idle_percent >= 90.0, "{task:?}");
    ingress.push_all(0..1000).expect("the job takes them");
    drop(ingress);
    let result = job.wait_timeout(TIMEOUT).expect("the job ends with its input");
    assert_eq!(result.count().0, n + 1000, "every record");
    let requests = report(&result, "requests");
    assert!(requests.times.idle_ms >= idle_ms, "the wait stays in its report: {requests:?}");
    // Never without work, never waiting on an output (its count is chained:
    // it has none): all its time is busy.
    let work = report(&result, "work");
    assert_eq!((work.times.idle_ms, work.times.back_pressured_ms), (0, 0), "{work:?}");
    assert!(work.times.busy_ms >= 1, "{work:?}");
    within_the_run(&result);
}

#[test]
fn a_task_waiting_on_an_unread_egress_shows_its_back_pressure_while_it_waits_and_in_its_report() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("unread").parallelism(1);
    let n = 10_000u64;
    // One task: the source and its egress, chained; the egress takes 4.
    let answers = df.generate("numbers", n, |r| r).name("numbers").egress(4);
    df.generate("others", n, |r| r).name("others").count();
    let job = engine.submit(df.build().unwrap()).unwrap();
    // Nothing is read: the task waits on its full egress, and the dump counts
    // the wait as it goes on.
    let wait_ms = 30;
    let seen = dump_until(&engine, "numbers", "its back-pressure", |t| t.times.back_pressured_ms >= wait_ms);
    assert!(seen.records_out == 0 && seen.records_in < n, "stuck part-way, nothing to a partition: {seen:?}");
    let mut got = Vec::new();
    while let Some(r) = answers.recv() {
        got.push(r);
    }
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every record, once, in order");
    let result = job.wait_timeout(TIMEOUT).expect("the job ends once read");
    let report = |vertex: &str| report(&result, vertex);
    assert!(report("numbers").times.back_pressured_ms >= wait_ms, "{:?}", report("numbers"));
    // A task with no bounded output (its count chained: no partition either)
    // never waits on one.
    assert_eq!(
        (report("others").records_out, report("others").times.back_pressured_ms),
        (0, 0),
        "{:?}",
        report("others")
    );
    assert_eq!(result.count().0, n, "the count saw every record of its own");
    within_the_run(&result);
}

#[test]
fn a_task_whose_last_buffers_wait_for_their_consumer_is_back_pressured_until_they_leave() {
    if shard_count() < 2 {
        eprintln!("skipped: the held consumer needs a shard of its own");
        return;
    }
    // Two credits per channel, none floating: the consumer takes two buffers.
    let engine = small_engine().exclusive_credits(2).floating_credits(0).build().expect("engine starts");
    let cores: Vec<usize> = engine.shards().iter().map(|s| s.core).collect();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let df = Dataflow::new("last-buffers").parallelism(1);
    // About five buffers of 4 KiB: more than the consumer's credits, fewer than
    // those and the overdraft, so the producer's input ends without its
    // output ever being overdrawn — and then its last buffers wait.
    let n = 2_500u64;
    df.generate("numbers", n, |r| r)
        .name("numbers")
        .rebalance()
        .map(move |r: &u64| {
            // Held at its first record until the test lets go.
            let _ = gate.lock().map(|g| g.recv());
            *r
        })
        .name("held")
        .count();
    let map: PlacementStrategy = format!("numbers={};held={}", cores[0], cores[1]).parse().unwrap();
    let job = engine.submit_with(df.build().unwrap(), map).unwrap();
    let wait_ms = 30;
    let seen = dump_until(&engine, "numbers", "its end's wait on its consumer", |t| {
        t.records_in == n && t.times.back_pressured_ms >= wait_ms
    });
    drop(release);
    let result = job.wait_timeout(TIMEOUT).expect("the job ends once its consumer goes on");
    assert_eq!(result.count().0, n, "every record");
    let numbers = report(&result, "numbers");
    assert!(numbers.times.back_pressured_ms >= seen.times.back_pressured_ms, "{numbers:?}");
    within_the_run(&result);
}
