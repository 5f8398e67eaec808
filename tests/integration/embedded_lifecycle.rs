//! The lifecycle user functions see: open → process → snapshot(checkpoint) →
//! notify complete → close when a job stops with a snapshot, open → process →
//! finish → close when it runs to its end, open → process → close when it is
//! cancelled or fails; and a function that holds records in its own fields
//! moves them into its state when asked for a snapshot, so a restored job loses
//! none of them.

use std::sync::{Arc, Mutex};
use std::task::Context;

use shardflow_engine::{
    Dataflow, Emitter, EngineError, JobSnapshot, KeyedContext, KeyedProcessFunction, ListStateHandle, OperatorContext,
    OperatorError, ProcessFunction, Source, SourceOutput, SourceStatus, StateDeclarations, TaskInfo, ValueState,
};

use crate::common::{small_engine, TIMEOUT};

type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, what: String) {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(what);
}

/// Holds records in a field until it is asked for a snapshot (or finishes),
/// logging each lifecycle call it gets.
#[derive(Clone, Default)]
struct Holder {
    held: Vec<u64>,
    state: ListStateHandle<u64>,
    subtask: u32,
    log: Log,
}

impl ProcessFunction<u64, u64> for Holder {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.state = ctx.list_state::<u64>("held")?;
        self.subtask = ctx.task().subtask;
        note(&self.log, format!("{}:open", self.subtask));
        Ok(())
    }
    fn process(&mut self, r: &u64, _: &mut OperatorContext<'_>, _: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
        self.held.push(*r);
        Ok(())
    }
    fn snapshot(&mut self, checkpoint: u64, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        note(&self.log, format!("{}:snapshot {checkpoint} of {}", self.subtask, self.held.len()));
        ctx.list(&self.state)?.extend(self.held.drain(..))
    }
    fn on_checkpoint_complete(&mut self, checkpoint: u64) {
        note(&self.log, format!("{}:complete {checkpoint}", self.subtask));
    }
    fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
        note(&self.log, format!("{}:finish", self.subtask));
        let restored = ctx.list(&self.state)?;
        restored.iter().chain(&self.held).for_each(|r| out.emit(*r));
        Ok(())
    }
    fn close(&mut self) -> Result<(), OperatorError> {
        note(&self.log, format!("{}:close", self.subtask));
        Ok(())
    }
}

/// The calls one subtask's function got, in order.
fn calls_of(log: &Log, subtask: u32) -> Vec<String> {
    let prefix = format!("{subtask}:");
    let log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    log.iter().filter_map(|l| l.strip_prefix(&prefix).map(String::from)).collect()
}

#[test]
fn a_function_is_told_of_its_snapshot_and_moves_what_it_holds_into_state() {
    let engine = small_engine().build().expect("engine starts");
    let run = |p: u32, items: Vec<u64>, restore: Option<JobSnapshot>, log: &Log| {
        let mut df = Dataflow::new("holder").parallelism(p);
        df = match restore {
            Some(s) => df.restore(s),
            None => df.stop_with_snapshot(),
        };
        let holder = Holder { log: log.clone(), ..Holder::default() };
        let out = df.from_iter("items", items).process(holder).name("holder").collect();
        let result = engine.run(df.build().expect("valid")).expect("the job finishes");
        (out.take(), result.snapshot)
    };

    let log = Log::default();
    let (out, snapshot) = run(2, (0..100).collect(), None, &log);
    assert!(out.is_empty(), "stopped with a snapshot: nothing finished, nothing emitted");
    for subtask in 0..2 {
        let calls = calls_of(&log, subtask);
        assert_eq!(calls.len(), 4, "subtask {subtask}: {calls:?}");
        assert_eq!(calls[0], "open");
        assert_eq!(calls[1], "snapshot 0 of 50", "from_iter deals the items round robin");
        assert_eq!(calls[2..], ["complete 0", "close"], "subtask {subtask}: {calls:?}");
    }
    let snapshot = snapshot.expect("a snapshot");
    let lists = &snapshot.operators["holder/held"].operator_state;
    assert_eq!(lists.iter().map(Vec::len).sum::<usize>(), 100, "what the fields held is in the snapshot");

    // Restored at parallelism 3: every held record comes out again, once.
    let log = Log::default();
    let (mut out, _) = run(3, Vec::new(), Some(snapshot), &log);
    out.sort_unstable();
    assert_eq!(out, (0..100).collect::<Vec<u64>>());
    for subtask in 0..3 {
        assert_eq!(calls_of(&log, subtask), ["open", "finish", "close"], "subtask {subtask}");
    }
}

/// Counts per key and emits each key's count at the end of input; logs its
/// open, checkpoint notifications and close.
#[derive(Clone, Default)]
struct KeyedCounter {
    count: ValueState<u64>,
    log: Log,
}

impl KeyedProcessFunction<u64, u64, u64> for KeyedCounter {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.count = states.value_state("count")?;
        note(&self.log, format!("{}:open", states.task().subtask));
        Ok(())
    }
    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let count = &self.count;
        let now = ctx.value(count)?.copied().unwrap_or(0) + 1;
        ctx.set_value(count, now)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        out.emit(ctx.value(&self.count)?.copied().unwrap_or(0));
        Ok(())
    }
    fn on_checkpoint_complete(&mut self, checkpoint: u64) {
        note(&self.log, format!("0:complete {checkpoint}"));
    }
    fn close(&mut self) -> Result<(), OperatorError> {
        note(&self.log, "0:close".into());
        Ok(())
    }
}

#[test]
fn a_keyed_function_is_told_its_snapshot_completed_and_is_closed() {
    let engine = small_engine().build().expect("engine starts");
    let log = Log::default();
    let df = Dataflow::new("keyed-counter").stop_with_snapshot();
    let counter = KeyedCounter { log: log.clone(), ..KeyedCounter::default() };
    df.generate("numbers", 1000, |r| r).key_by(|r: &u64| r % 10).process(counter).name("counter").discard();
    let result = engine.run(df.build().expect("valid")).expect("the job finishes");
    assert_eq!(calls_of(&log, 0), ["open", "complete 0", "close"]);
    let snapshot = result.snapshot.expect("a snapshot");
    let groups = &snapshot.operators["counter"].key_groups;
    assert!(!groups.is_empty(), "the ten keys' counts are in the snapshot");
}

/// Passes records on; cannot release what it opened.
#[derive(Clone)]
struct FailsToClose;

impl ProcessFunction<u64, u64> for FailsToClose {
    fn process(
        &mut self,
        r: &u64,
        _: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        out.emit(*r);
        Ok(())
    }
    fn close(&mut self) -> Result<(), OperatorError> {
        Err(OperatorError::User("the connection would not close".into()))
    }
}

#[test]
fn a_close_that_fails_fails_the_job_naming_its_operator() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("fails-to-close");
    df.generate("numbers", 100, |r| r).process(FailsToClose).name("closer").count();
    match engine.run(df.build().expect("valid")) {
        Err(shardflow_engine::EngineError::JobFailed { cause, .. }) => {
            assert!(cause.contains("operator 'closer'") && cause.contains("would not close"), "{cause}");
        }
        other => panic!("expected a failed job, got {other:?}"),
    }

    // A source's close that fails at the end names its vertex too.
    let df = Dataflow::new("source-fails-to-close");
    let log = Log::default();
    df.source("reader", move |_| Counting { next: 0, limit: Some(100), log: log.clone(), close_fails: true }).count();
    match engine.run(df.build().expect("valid")) {
        Err(shardflow_engine::EngineError::JobFailed { cause, .. }) => {
            assert!(cause.contains("operator 'reader'") && cause.contains("would not close"), "{cause}");
        }
        other => panic!("expected a failed job, got {other:?}"),
    }
}

/// Counts up from 0 (to `limit`, or forever), logging its open and close.
struct Counting {
    next: u64,
    limit: Option<u64>,
    log: Log,
    close_fails: bool,
}

impl Source<u64> for Counting {
    fn open(&mut self, _: &TaskInfo) -> Result<(), OperatorError> {
        note(&self.log, "source:open".into());
        Ok(())
    }
    fn poll_next(
        &mut self,
        _: &mut Context<'_>,
        out: &mut SourceOutput<'_, u64>,
    ) -> Result<SourceStatus, OperatorError> {
        while !out.is_full() {
            if self.limit.is_some_and(|l| self.next >= l) {
                return Ok(SourceStatus::Finished);
            }
            out.push(self.next);
            self.next += 1;
        }
        Ok(SourceStatus::Emitted)
    }
    fn close(&mut self) -> Result<(), OperatorError> {
        note(&self.log, "source:close".into());
        if self.close_fails {
            return Err(OperatorError::User("the input file would not close".into()));
        }
        Ok(())
    }
}

/// What a [`Relay`] does at record [`FAIL_AT`].
#[derive(Clone, Copy, PartialEq)]
enum AtFailAt {
    PassOn,
    Fail,
    Panic,
}

const FAIL_AT: u64 = 5000;

/// Passes records on, logging its open and close; at record [`FAIL_AT`] it may
/// fail or panic, and its close may fail too.
#[derive(Clone)]
struct Relay {
    name: &'static str,
    at_fail_at: AtFailAt,
    close_fails: bool,
    log: Log,
}

impl ProcessFunction<u64, u64> for Relay {
    fn open(&mut self, _: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        note(&self.log, format!("{}:open", self.name));
        Ok(())
    }
    fn process(
        &mut self,
        r: &u64,
        _: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        if *r == FAIL_AT {
            match self.at_fail_at {
                AtFailAt::PassOn => {}
                AtFailAt::Fail => return Err(OperatorError::User(format!("{} refused record {r}", self.name))),
                AtFailAt::Panic => panic!("{} cannot take record {r}", self.name),
            }
        }
        out.emit(*r);
        Ok(())
    }
    fn close(&mut self) -> Result<(), OperatorError> {
        note(&self.log, format!("{}:close", self.name));
        if self.close_fails {
            return Err(OperatorError::User(format!("{} could not release its connection", self.name)));
        }
        Ok(())
    }
}

fn sorted(log: &Log) -> Vec<String> {
    let mut calls = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    calls.sort_unstable();
    calls
}

#[test]
fn a_cancelled_job_closes_its_source_and_operators() {
    let engine = small_engine().build().expect("engine starts");
    let log = Log::default();
    let df = Dataflow::new("cancelled");
    let source_log = log.clone();
    let relay = Relay { name: "relay", at_fail_at: AtFailAt::PassOn, close_fails: false, log: log.clone() };
    // One task: the source, the relay and the egress are chained. The egress is
    // read once and then left full, so the task ends up held back by it.
    let egress = df
        .source("counting", move |_| Counting { next: 0, limit: None, log: source_log.clone(), close_fails: false })
        .process(relay)
        .name("relay")
        .egress(1);
    let handle = engine.submit(df.build().expect("valid")).expect("submit");
    assert_eq!(egress.recv_timeout(TIMEOUT), Ok(0), "the job runs");
    assert_eq!(sorted(&log), ["relay:open", "source:open"], "nothing is closed while it runs");
    handle.cancel();
    match handle.wait_timeout(TIMEOUT) {
        Err(EngineError::JobCanceled(_)) => {}
        other => panic!("expected a cancelled job, got {other:?}"),
    }
    assert_eq!(sorted(&log), ["relay:close", "relay:open", "source:close", "source:open"]);
    // The egress ends, and says why it ended early.
    while egress.recv_timeout(TIMEOUT).is_ok() {}
    let why = egress.stopped().expect("a cancelled stream says so");
    assert!(why.contains("was cancelled"), "{why}");
}

#[test]
fn every_operator_opened_is_closed_once_whether_its_task_finishes_fails_or_panics() {
    let engine = small_engine().build().expect("engine starts");
    for at_fail_at in [AtFailAt::PassOn, AtFailAt::Fail, AtFailAt::Panic] {
        let log = Log::default();
        let df = Dataflow::new("fails-midway");
        let source_log = log.clone();
        // After a failure, a close that fails too is only logged.
        let close_fails = at_fail_at != AtFailAt::PassOn;
        let first = Relay { name: "first", at_fail_at: AtFailAt::PassOn, close_fails, log: log.clone() };
        let second = Relay { name: "second", at_fail_at, close_fails: false, log: log.clone() };
        df.source("counting", move |_| Counting {
            next: 0,
            limit: Some(2 * FAIL_AT),
            log: source_log.clone(),
            close_fails: false,
        })
        .process(first)
        .name("first")
        .process(second)
        .name("second")
        .count();
        let outcome = engine.run(df.build().expect("valid"));
        match (at_fail_at, outcome) {
            (AtFailAt::PassOn, Ok(result)) => assert_eq!(result.count().0, 2 * FAIL_AT),
            (AtFailAt::Fail, Err(EngineError::JobFailed { cause, .. })) => {
                assert!(cause.contains("second refused record 5000"), "the first cause stands: {cause}");
            }
            (AtFailAt::Panic, Err(EngineError::JobFailed { cause, .. })) => {
                assert!(cause.contains("second cannot take record 5000"), "the first cause stands: {cause}");
            }
            (_, other) => panic!("unexpected outcome {other:?}"),
        }
        assert_eq!(
            sorted(&log),
            ["first:close", "first:open", "second:close", "second:open", "source:close", "source:open"],
            "every operator opened is closed once"
        );
    }
    // The engine runs on.
    let df = Dataflow::new("after");
    df.generate("numbers", 100, |r| r).count();
    assert_eq!(engine.run(df.build().expect("valid")).expect("runs").count().0, 100);
}

#[test]
fn a_task_held_back_while_it_finishes_still_takes_its_cancel() {
    let engine = small_engine().build().expect("engine starts");
    let log = Log::default();
    let df = Dataflow::new("finishing");
    // 10 000 keys: their counts leave only at the end of input, in steps, into
    // an egress read once — the task waits for it between finishing steps.
    let counter = KeyedCounter { log: log.clone(), ..KeyedCounter::default() };
    let counts = df.generate("numbers", 10_000, |r| r).key_by(|r: &u64| *r).process(counter).name("count").egress(1);
    let handle = engine.submit(df.build().expect("valid")).expect("submit");
    assert_eq!(counts.recv_timeout(TIMEOUT), Ok(1), "the operator is finishing");
    handle.cancel();
    match handle.wait_timeout(TIMEOUT) {
        Err(EngineError::JobCanceled(_)) => {}
        other => panic!("expected a cancelled job, got {other:?}"),
    }
    assert_eq!(calls_of(&log, 0), ["open", "close"], "closed once, after the cancel");
    let mut read = 1;
    while counts.recv_timeout(TIMEOUT).is_ok() {
        read += 1;
    }
    assert!(read < 10_000, "the cancel cut the results short: {read}");
    assert!(counts.stopped().is_some_and(|why| why.contains("was cancelled")));
}
