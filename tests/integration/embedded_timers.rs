//! The task's control lane: processing-time timers of a keyed process function
//! fire while the task waits for input and while its output is full (so does a
//! cancel), wake a hosted shard parked between its host's calls, neither fire
//! nor hold the job once its input has ended, and pending ones travel in a
//! snapshot and fire after a restore at another parallelism;
//! operator list state (a list per subtask) is snapshotted and dealt out again
//! at another parallelism. Every function reads the same processing time.

use std::time::Instant;

use shardflow_engine::{
    Dataflow, Emitter, KeyedContext, KeyedProcessFunction, ListStateHandle, OperatorContext, OperatorError,
    ProcessFunction, StateDeclarations, ValueState,
};

use crate::common::{small_engine, TIMEOUT};
use shardflow_engine::EngineError;

/// Counts each key's records; 5 ms after a key's first record a timer emits
/// `(key, count so far)`.
#[derive(Clone, Default)]
struct CountThenReport {
    count: ValueState<u64>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for CountThenReport {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.count = states.value_state("count")?;
        Ok(())
    }
    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        let count = &self.count;
        let n = ctx.value(count)?.copied().unwrap_or(0);
        if n == 0 {
            ctx.register_timer(ctx.processing_time() + 5_000)?;
        }
        ctx.set_value(count, n + 1)
    }
    fn on_timer(
        &mut self,
        _: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        let n = ctx.value(&self.count)?.copied().unwrap_or(0);
        out.emit((*ctx.key(), n));
        Ok(())
    }
}

#[test]
fn processing_time_timers_fire_while_the_task_waits_for_input() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("timers").parallelism(2);
    let (numbers, mut ingress) = df.ingress::<u64>("numbers", 64);
    let reports = numbers.key_by(|n: &u64| n % 3).process(CountThenReport::default()).egress(16);
    let job = engine.submit(df.build().unwrap()).unwrap();
    for n in 0..30u64 {
        ingress.push(n).unwrap();
    }
    // The input stops here but stays open: only the timers can produce output.
    let mut got: Vec<(u64, u64)> =
        (0..3).map(|_| reports.recv_timeout(TIMEOUT).expect("each key's timer fires")).collect();
    got.sort_unstable();
    assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![0, 1, 2], "one report per key");
    assert!(got.iter().all(|(_, n)| (1..=10).contains(n)), "{got:?}");
    drop(ingress);
    job.wait_timeout(TIMEOUT).expect("the job ends with its input");
}

/// Arms a timer an hour ahead for each record's key (and another at the end
/// of input); a timer that fires emits `(key, 1)`, the end of input `(key, 0)`.
#[derive(Clone, Default)]
struct AnHourAhead {
    seen: ValueState<bool>,
}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for AnHourAhead {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.seen = states.value_state("seen")?;
        Ok(())
    }
    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.set_value(&self.seen, true)?;
        ctx.register_timer(ctx.processing_time() + 3_600_000_000)
    }
    fn on_timer(
        &mut self,
        _: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        out.emit((*ctx.key(), 1));
        Ok(())
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.register_timer(ctx.processing_time() + 3_600_000_000)?;
        out.emit((*ctx.key(), 0));
        Ok(())
    }
}

#[test]
fn timers_pending_at_the_end_of_input_neither_fire_nor_hold_the_job() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("an-hour-ahead").parallelism(2);
    let got = df.from_iter("numbers", 0..30u64).key_by(|n: &u64| n % 3).process(AnHourAhead::default()).collect();
    let job = engine.submit(df.build().unwrap()).unwrap();
    // An hour's timers: a job that waited for them would not end within the wait.
    job.wait_timeout(TIMEOUT).expect("the job ends with its input, its timers pending");
    let mut got = got.take();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 0), (1, 0), (2, 0)], "each key's end of input, and no timer");
}

#[test]
fn processing_time_timers_wake_a_hosted_shard_parked_between_the_hosts_calls() {
    let (engine, mut shard) = small_engine().build_hosted().expect("a hosted engine starts");
    let here = [shard.core()];
    let df = Dataflow::new("hosted-timers").parallelism(1);
    let (numbers, mut ingress) = df.ingress::<u64>("numbers", 64);
    let reports =
        numbers.cores(&here).key_by(|n: &u64| n % 3).process(CountThenReport::default()).cores(&here).egress(16);
    let job = engine.submit(df.build().unwrap()).unwrap();
    assert!(job.placement().placements.iter().all(|p| p.core == here[0]), "{}", job.placement());
    for n in 0..30u64 {
        ingress.try_push(n).expect("the queue has room");
    }
    // A host's own loop: step, and park when there is nothing to do. Only the
    // timers produce output, and only a timer wakes the parked thread.
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    loop {
        while let Ok(r) = reports.try_recv() {
            got.push(r);
        }
        // Look before parking: with the reports in, nothing wakes the shard
        // again, and a park would last until the deadline.
        if got.len() == 3 {
            break;
        }
        let now = Instant::now();
        assert!(now < deadline, "the timers did not fire within {TIMEOUT:?}: {got:?}");
        shard.step_or_park(Some(deadline - now));
    }
    got.sort_unstable();
    // Each key's count when its timer fired: all 10 records unless the machine
    // stalled past 5 ms mid-input.
    assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![0, 1, 2], "one report per key");
    assert!(got.iter().all(|(_, n)| (1..=10).contains(n)), "{got:?}");
    drop(ingress);
    job.wait_timeout(TIMEOUT).expect("the job ends with its input (the wait runs the shard)");
    drop(shard);
    engine.shutdown();
}

/// Keeps every record it sees in operator list state.
#[derive(Clone, Default)]
struct Remember {
    seen: ListStateHandle<u64>,
}

impl ProcessFunction<u64, u64> for Remember {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.seen = ctx.list_state::<u64>("seen")?;
        Ok(())
    }
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.seen)?.push(*r)?;
        out.emit(*r);
        Ok(())
    }
    fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
        // At the end, report how many items this subtask holds (restored + new).
        let held = ctx.list(&self.seen)?.len() as u64;
        out.emit(1_000_000 + held);
        Ok(())
    }
}

#[test]
fn operator_list_state_is_dealt_out_again_at_another_parallelism() {
    let engine = small_engine().build().expect("engine starts");
    let run = |p: u32, items: Vec<u64>, restore: Option<shardflow_engine::JobSnapshot>, stop: bool| {
        let mut df = Dataflow::new("remember").parallelism(p);
        if let Some(s) = restore {
            df = df.restore(s);
        }
        if stop {
            df = df.stop_with_snapshot();
        }
        let out = df.from_iter("items", items).process(Remember::default()).name("remember").collect();
        let result = engine.run(df.build().unwrap()).expect("the job finishes");
        (out.take(), result.snapshot)
    };
    let (_, snapshot) = run(2, (0..100).collect(), None, true);
    let snapshot = snapshot.expect("a snapshot");
    let lists = &snapshot.operators["remember/seen"].operator_state;
    assert_eq!(lists.len(), 2, "one list per subtask");
    assert_eq!(lists.iter().map(Vec::len).sum::<usize>(), 100);
    // Restored into 3 subtasks with no new input: the 100 items are dealt round
    // robin, and every one is held by exactly one subtask.
    let (out, _) = run(3, Vec::new(), Some(snapshot), false);
    let mut held: Vec<u64> = out.into_iter().filter(|x| *x >= 1_000_000).map(|x| x - 1_000_000).collect();
    held.sort_unstable();
    assert_eq!(held, vec![33, 33, 34]);
}

/// Passes every record on; a timer per key, re-armed every millisecond, tells
/// `fired` each time it fires.
#[derive(Clone)]
struct Ticker {
    fired: crossbeam_channel::Sender<()>,
    armed: ValueState<bool>,
}

impl KeyedProcessFunction<u64, u64, u64> for Ticker {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.armed = states.value_state("armed")?;
        Ok(())
    }
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let armed = &self.armed;
        if ctx.value(armed)?.is_none() {
            ctx.set_value(armed, true)?;
            ctx.register_timer(ctx.processing_time() + 1_000)?;
        }
        out.emit(*r);
        Ok(())
    }
    fn on_timer(
        &mut self,
        at: u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let _ = self.fired.try_send(());
        ctx.register_timer(at + 1_000)?;
        Ok(())
    }
}

#[test]
fn a_task_whose_output_is_full_still_fires_its_timers_and_is_cancelled_promptly() {
    let engine = small_engine().build().expect("engine starts");
    let (fired, fires) = crossbeam_channel::bounded(1024);
    let df = Dataflow::new("back-pressured-timers");
    // An endless source into a keyed operator whose egress nobody reads: once
    // the egress is full, the operator's task takes no more input.
    let out = df
        .generate("numbers", u64::MAX, |r| r)
        .key_by(|r: &u64| r % 4)
        .process(Ticker { fired, armed: Default::default() })
        .egress(8);
    let job = engine.submit(df.build().expect("valid")).expect("submit");
    // Timers that fire while the egress is full (it never drains: nobody reads).
    let mut while_full = 0;
    while while_full < 20 {
        fires.recv_timeout(TIMEOUT).expect("the timers fire while the task is back-pressured");
        if out.len() == 8 {
            while_full += 1;
        }
    }
    let before = job.source_records();
    job.cancel();
    match job.wait_timeout(TIMEOUT) {
        Err(EngineError::JobCanceled(_)) => {}
        other => panic!("the back-pressured job ends cancelled, not {other:?}"),
    }
    // Held back by credits: what the source made fits in the engine's 16 MiB of
    // network buffers (2 Mi records of 8 bytes), a source batch and the egress.
    assert!(before <= (16 << 20) / 8 + 1024 + 8, "the source was held back: {before} records");
}

/// Counts each key's records; at its first record registers a timer 200 ms
/// ahead, whose firing reports `(key, count)` on `fired`.
#[derive(Clone)]
struct ReportLater {
    count: ValueState<u64>,
    fired: crossbeam_channel::Sender<(u64, u64)>,
}

impl KeyedProcessFunction<u64, u64, u64> for ReportLater {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.count = states.value_state("count")?;
        Ok(())
    }
    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let count = &self.count;
        let n = ctx.value(count)?.copied().unwrap_or(0);
        if n == 0 {
            ctx.register_timer(ctx.processing_time() + 200_000)?;
        }
        ctx.set_value(count, n + 1)
    }
    fn on_timer(
        &mut self,
        _: u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let n = ctx.value(&self.count)?.copied().unwrap_or(0);
        let _ = self.fired.send((*ctx.key(), n));
        Ok(())
    }
}

#[test]
fn pending_timers_are_in_the_snapshot_and_fire_after_a_restore_at_another_parallelism() {
    let engine = small_engine().build().expect("engine starts");
    let (fired, reports) = crossbeam_channel::unbounded();
    // Ten keys, 3 records each, at parallelism 2, stopped with a snapshot.
    let df = Dataflow::new("report-later").parallelism(2).stop_with_snapshot();
    df.from_iter("numbers", 0..30u64)
        .key_by(|n: &u64| n % 10)
        .process(ReportLater { count: Default::default(), fired: fired.clone() })
        .name("reporter")
        .discard();
    let snapshot = engine.run(df.build().unwrap()).expect("the job stops").snapshot.expect("a snapshot");
    // A timer that fired before the stop reported already; the others must
    // fire after the restore, each once, with the count the snapshot kept.
    let mut seen: Vec<(u64, u64)> = reports.try_iter().collect();

    let df = Dataflow::new("report-later").parallelism(3).restore(snapshot);
    let (numbers, ingress) = df.ingress::<u64>("numbers", 16);
    numbers
        .key_by(|n: &u64| n % 10)
        .process(ReportLater { count: Default::default(), fired })
        .name("reporter")
        .discard();
    let job = engine.submit(df.build().unwrap()).unwrap();
    while seen.len() < 10 {
        seen.push(reports.recv_timeout(TIMEOUT).expect("every key's timer fires after the restore"));
    }
    drop(ingress);
    job.wait_timeout(TIMEOUT).expect("the restored job ends with its input");
    seen.sort_unstable();
    assert_eq!(seen, (0..10).map(|k| (k, 3)).collect::<Vec<_>>(), "one report per key, none twice");
    assert!(reports.try_recv().is_err(), "no timer fired twice");
}

/// Stamps each record with the subtask and the processing time it saw it at.
#[derive(Clone)]
struct Stamp;

impl ProcessFunction<u64, (u32, u64, u64)> for Stamp {
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, (u32, u64, u64)>,
    ) -> Result<(), OperatorError> {
        out.emit((ctx.task().subtask, *r, ctx.processing_time()));
        Ok(())
    }
}

#[test]
fn a_process_function_reads_processing_time_which_never_goes_back() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("stamped").parallelism(2);
    let stamped = df.generate("numbers", 20_000, |r| r).process(Stamp).collect();
    engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job finishes");
    let stamped = stamped.take();
    assert_eq!(stamped.len(), 20_000);
    let wall_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    // Microseconds since the Unix epoch (the wall clock, read once per process).
    let minute = 60_000_000;
    assert!(stamped.iter().all(|&(_, _, t)| t.abs_diff(wall_us) < minute), "{:?}", stamped.first());
    for subtask in [0, 1] {
        // A generator subtask emits its records in order, the chained function sees them so.
        let mut times: Vec<(u64, u64)> = stamped.iter().filter(|s| s.0 == subtask).map(|&(_, r, t)| (r, t)).collect();
        times.sort_unstable();
        assert!(times.windows(2).all(|w| w[0].1 <= w[1].1), "processing time went back in subtask {subtask}");
    }
}

/// Keeps nothing but a timer an hour ahead per key: what it would emit then,
/// it emits at the end of input.
#[derive(Clone)]
struct Reminder;

impl KeyedProcessFunction<u64, u64, u64> for Reminder {
    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        ctx.register_timer(ctx.processing_time() + 3_600_000_000)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        out.emit(*ctx.key());
        Ok(())
    }
}

#[test]
fn a_key_with_only_a_pending_timer_gets_its_end_of_input_call() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("reminders").parallelism(2);
    let got = df.from_iter("numbers", 0..40u64).key_by(|n: &u64| n % 4).process(Reminder).collect();
    engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job ends, its timers pending");
    let mut got = got.take();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3], "each key with a timer, once");
}
