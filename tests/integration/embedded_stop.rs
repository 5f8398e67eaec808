//! A running job stopped with a snapshot (Flink's stop-with-savepoint): its
//! sources stop where they are, everything before the stop is processed, the
//! state and each source's position are snapshotted, and a job restored from
//! that snapshot at another parallelism goes on from there — the two runs emit
//! exactly what one uninterrupted run emits. Built-in generators, a user's
//! source with offsets of its own, and a service's ingress (it closes at the
//! stop; what it accepted is in the snapshot, what it refused goes to the
//! restored job; a keyed ingress's restored at another parallelism, where its
//! pushes meet their keys' state); keyed state, operator lists and broadcast state; under
//! back-pressure; refused once the job has ended.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardflow_engine::{
    CoProcessFunction, Dataflow, DataflowError, Emitter, Engine, EngineError, JobSnapshot, ListStateHandle,
    OperatorContext, OperatorError, PushError, QueueBound, Stream, TaskInfo,
};

use crate::common::{join_within, read_to_end, small_engine, LogSource, TIMEOUT};

const N: u64 = 1_000_000;

/// Running counts of `numbers` (`0..N`, keyed by `r % 7`): every record gives
/// `(key, its count so far)`. The first run ends in an egress of 16 records
/// nobody reads at first, so the job waits mid-way on its reader; a restored
/// run collects. Returns the records read and the snapshot (first run), or
/// the records collected (restored run).
fn counting(engine: &Engine, parallelism: u32, restore: Option<JobSnapshot>) -> (Vec<(u64, u64)>, Option<JobSnapshot>) {
    let mut df = Dataflow::new("counting").parallelism(parallelism);
    let restored = restore.is_some();
    if let Some(s) = restore {
        df = df.restore(s);
    }
    let counts = df.generate("numbers", N, |r| r).key_by(|r: &u64| r % 7).count().name("per-key");
    if restored {
        let out = counts.collect();
        engine.run(df.build().expect("a valid dataflow")).expect("the restored job finishes");
        return (out.take(), None);
    }
    let out = counts.egress(16);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submitted");
    // Records flow, and then wait on the egress: the sources are mid-way.
    let mut read = vec![out.recv_timeout(TIMEOUT).expect("a first count")];
    job.stop_with_snapshot().expect("a running job can be stopped");
    // What was emitted before the stop still leaves, through the egress, to its end.
    read.extend(read_to_end(&out));
    assert_eq!(out.stopped(), None, "a stop is an orderly end, not a cut");
    let result = job.wait_timeout(TIMEOUT).expect("a stopped job finishes");
    assert!(result.snapshot.is_some(), "a stopped job hands back its snapshot ({} records read)", read.len());
    (read, result.snapshot)
}

#[test]
fn a_running_job_stopped_with_a_snapshot_goes_on_from_there_at_another_parallelism() {
    let engine = small_engine().build().expect("engine starts");
    let (before, snapshot) = counting(&engine, 2, None);
    let snapshot = snapshot.expect("checked above");
    assert!(
        (before.len() as u64) < N / 2,
        "the back-pressured job was stopped mid-way, after {} records",
        before.len()
    );
    let position = &snapshot.operators["numbers/position"];
    assert_eq!(position.operator_state.len(), 2, "each source subtask's position: {position:?}");
    assert!(snapshot.operators.contains_key("per-key"), "the counts' state");

    // A restore that would drop a source's position is refused, unless allowed.
    let df = Dataflow::new("renamed").restore(snapshot.clone());
    df.generate("renamed", 10, |r| r).key_by(|r: &u64| r % 7).count().name("per-key").count();
    match df.build() {
        Err(EngineError::Dataflow(DataflowError::UnownedState { state, .. })) => {
            assert_eq!(state, vec!["numbers/position".to_string()])
        }
        other => panic!("a position nobody restores is refused: {other:?}"),
    }

    let (after, _) = counting(&engine, 3, Some(snapshot));
    let mut split: Vec<(u64, u64)> = before.into_iter().chain(after).collect();
    split.sort_unstable();
    let mut one_run: Vec<(u64, u64)> = Vec::new();
    let mut seen = [0u64; 7];
    for r in 0..N {
        seen[(r % 7) as usize] += 1;
        one_run.push((r % 7, seen[(r % 7) as usize]));
    }
    one_run.sort_unstable();
    assert_eq!(split.len(), one_run.len(), "no record lost, none counted twice");
    assert_eq!(split, one_run, "the two runs emit exactly what one run emits");
}

/// Running counts per word of the log, read up to `readable`.
fn words(
    engine: &Engine,
    log: &Arc<Vec<String>>,
    readable: usize,
    p: u32,
    restore: Option<JobSnapshot>,
) -> (Vec<(String, u64)>, Option<JobSnapshot>) {
    let mut df = Dataflow::new("words").parallelism(p);
    if let Some(s) = restore {
        df = df.restore(s);
    }
    let log = log.clone();
    let make = move |_: &TaskInfo| LogSource::new(log.clone(), readable, None);
    let out = df.source("log", make).key_by_ref::<String, _>(|w: &str| w).count().name("per-word").collect();
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submitted");
    if readable < usize::MAX {
        // It reads what is readable and waits for more: stop it wherever it is.
        job.stop_with_snapshot().expect("a running job can be stopped");
    }
    let result = job.wait_timeout(TIMEOUT).expect("the job finishes");
    (out.take(), result.snapshot)
}

#[test]
fn a_users_source_with_offsets_of_its_own_is_stopped_and_restored_where_it_was() {
    let engine = small_engine().build().expect("engine starts");
    let log: Arc<Vec<String>> =
        Arc::new((0..3_000u64).map(|i| format!("w{}", i.wrapping_mul(2_654_435_761) % 97)).collect());
    let (before, snapshot) = words(&engine, &log, 1_200, 2, None);
    let snapshot = snapshot.expect("a stopped job hands back its snapshot");
    assert!(before.len() <= 1_200, "no more than was readable: {}", before.len());
    let (after, none) = words(&engine, &log, usize::MAX, 3, Some(snapshot));
    assert!(none.is_none(), "a job that finishes by itself takes no snapshot");

    let mut split: Vec<(String, u64)> = before.into_iter().chain(after).collect();
    let mut one_run = Vec::new();
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for w in log.iter() {
        let n = seen.entry(w).or_default();
        *n += 1;
        one_run.push((w.clone(), *n));
    }
    split.sort();
    one_run.sort();
    assert_eq!(split, one_run, "the two runs emit exactly what one run over the whole log emits");
}

#[test]
fn a_job_that_has_ended_cannot_be_stopped() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("short");
    df.generate("numbers", 100, |r| r).count();
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submitted");
    let result = job.wait_timeout(TIMEOUT).expect("it finishes");
    assert!(result.snapshot.is_none());
    match job.stop_with_snapshot() {
        Err(EngineError::CannotStop { job: id, reason }) => {
            assert_eq!(id, job.id());
            assert!(reason.contains("has already ended (FINISHED)"), "{reason}");
        }
        other => panic!("an ended job cannot be stopped: {other:?}"),
    }
}

/// A service's job counting its requests per key (`r % keys`) at
/// `parallelism`, perhaps restored: the ingress round robin then `key_by`, or
/// a keyed ingress (the count chained into its subtasks); the running counts,
/// and a push into the ingress.
#[allow(clippy::type_complexity)]
fn counting_service(
    keyed: bool,
    parallelism: u32,
    keys: u64,
    restore: Option<JobSnapshot>,
) -> (Dataflow, Stream<(u64, u64)>, Box<dyn FnMut(u64) -> Result<(), PushError<u64>> + Send>) {
    let mut df = Dataflow::new("service").parallelism(parallelism);
    if let Some(s) = restore {
        df = df.restore(s);
    }
    if keyed {
        let (requests, mut ingress) =
            df.ingress_keyed::<u64, u64, _>("requests", QueueBound::records(64), move |r: &u64| r % keys);
        let counts = requests.count().name("per-key");
        (df, counts, Box::new(move |r| ingress.push(r)))
    } else {
        let (requests, mut ingress) = df.ingress::<u64>("requests", 64);
        let counts = requests.key_by(move |r: &u64| r % keys).count().name("per-key");
        (df, counts, Box::new(move |r| ingress.push(r)))
    }
}

#[test]
fn a_service_job_stops_with_exactly_the_records_its_ingress_accepted() {
    stop_a_service_and_go_on(false, (2, 2), 5);
}

#[test]
fn a_keyed_ingress_job_stopped_at_2_goes_on_at_3_with_each_key_s_state_where_its_pushes_go() {
    // A key's running count goes on only if the restored state and the
    // keyed ingress's pushes agree on the key's subtask at parallelism 3.
    stop_a_service_and_go_on(true, (2, 3), 11);
}

fn stop_a_service_and_go_on(keyed: bool, (before, after): (u32, u32), keys: u64) {
    let engine = small_engine().build().expect("engine starts");
    let (df, counts, mut push) = counting_service(keyed, before, keys, None);
    let out = counts.egress(16);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submitted");
    // A service pushes until the job takes no more: the first record refused comes back.
    let pusher = std::thread::spawn(move || {
        for r in 0..N {
            match push(r) {
                Ok(()) => {}
                Err(PushError::Closed(back)) => return back,
                Err(e) => panic!("a blocking push waits for room: {e}"),
            }
        }
        N
    });
    let mut read = vec![out.recv_timeout(TIMEOUT).expect("a first count")];
    job.stop_with_snapshot().expect("a service's job can be stopped");
    read.extend(read_to_end(&out));
    let refused = join_within(pusher, "the pusher learns the job takes no more");
    assert!(refused < N, "stopped mid-stream, at {refused}");
    assert_eq!(read.len() as u64, refused, "every record accepted before the stop is counted, no other");
    let snapshot = job.wait_timeout(TIMEOUT).expect("a stopped job finishes").snapshot.expect("its snapshot");

    // The new version gets the rest from the service.
    let (df, counts, mut push) = counting_service(keyed, after, keys, Some(snapshot));
    let rest = counts.collect();
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submitted");
    for r in refused..N {
        push(r).expect("the restored job takes it");
    }
    drop(push);
    job.wait_timeout(TIMEOUT).expect("the restored job finishes");
    let mut split: Vec<(u64, u64)> = read.into_iter().chain(rest.take()).collect();
    split.sort_unstable();
    let mut one_run: Vec<(u64, u64)> = Vec::new();
    let mut seen = vec![0u64; keys as usize];
    for r in 0..N {
        seen[(r % keys) as usize] += 1;
        one_run.push((r % keys, seen[(r % keys) as usize]));
    }
    one_run.sort_unstable();
    // The first difference, not a million counts, where they disagree.
    if let Some(i) = (0..split.len().max(one_run.len())).find(|&i| split.get(i) != one_run.get(i)) {
        panic!(
            "the two runs count exactly what one run counts: at {i}, {:?} against {:?} ({} counts against {})",
            split.get(i),
            one_run.get(i),
            split.len(),
            one_run.len()
        );
    }
}

/// Events held in operator list state, rules in broadcast state; at the end
/// every event is emitted with the number of rules dividing it (plus one). On
/// the way each event is also emitted as `(event, 0)`, so the first run's
/// egress shows progress.
#[derive(Clone, Default)]
struct Divisible {
    rules: ListStateHandle<u64>,
    held: ListStateHandle<u64>,
}

impl CoProcessFunction<u64, u64, (u64, u64)> for Divisible {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.rules = ctx.broadcast_state("rules")?;
        self.held = ctx.list_state("held")?;
        Ok(())
    }
    fn process_first(
        &mut self,
        event: &u64,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        out.emit((*event, 0));
        ctx.list(&self.held)?.push(*event)
    }
    fn process_second(
        &mut self,
        rule: &u64,
        ctx: &mut OperatorContext<'_>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.rules)?.push(*rule)
    }
    fn finish(
        &mut self,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        let rules = ctx.list(&self.rules)?.to_vec();
        for event in ctx.list(&self.held)?.iter() {
            out.emit((*event, 1 + rules.iter().filter(|r| event % **r == 0).count() as u64));
        }
        Ok(())
    }
}

fn divisible(df: &Dataflow) -> Stream<(u64, u64)> {
    let rules = df.from_iter("rules", vec![2u64, 3, 5]).broadcast();
    df.generate("events", N, |r| r).rebalance().connect(&rules).process(Divisible::default()).name("divisible")
}

#[test]
fn operator_lists_and_broadcast_state_stopped_at_3_restore_into_1() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("divisible").parallelism(3);
    let out = divisible(&df).egress(16);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submitted");
    let mut read = vec![out.recv_timeout(TIMEOUT).expect("a first event")];
    job.stop_with_snapshot().expect("a running job can be stopped");
    read.extend(read_to_end(&out));
    let snapshot = job.wait_timeout(TIMEOUT).expect("it finishes").snapshot.expect("its snapshot");
    assert!(read.iter().all(|r| r.1 == 0), "stopped, not finished: nothing emitted at the end");
    assert_eq!(snapshot.operators["divisible/rules"].operator_state.len(), 3, "each subtask's copy of the rules");

    let df = Dataflow::new("divisible").parallelism(1).restore(snapshot);
    let rest = divisible(&df).collect();
    engine.run(df.build().expect("a valid dataflow")).expect("the restored job finishes");
    let rest = rest.take();
    let mut passed: Vec<u64> = read.iter().chain(&rest).filter(|r| r.1 == 0).map(|r| r.0).collect();
    passed.sort_unstable();
    assert_eq!(passed, (0..N).collect::<Vec<_>>(), "every event passes once over the two runs");
    let mut at_end: Vec<(u64, u64)> = rest.into_iter().filter(|r| r.1 > 0).collect();
    at_end.sort_unstable();
    let want: Vec<(u64, u64)> =
        (0..N).map(|e| (e, 1 + [2u64, 3, 5].iter().filter(|r| e % **r == 0).count() as u64)).collect();
    assert_eq!(at_end, want, "the held events of three subtasks, matched by the one restored subtask");
}
