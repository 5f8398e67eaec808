//! The lifecycle user functions see: open → process → snapshot(checkpoint) →
//! notify complete → close when a job stops with a snapshot, open → process →
//! finish → close when it runs to its end; and a function that holds records in
//! its own fields moves them into its state when asked for a snapshot, so a
//! restored job loses none of them.

use std::sync::{Arc, Mutex};

use shardflow_engine::{
    Dataflow, Emitter, JobSnapshot, KeyedContext, KeyedProcessFunction, ListStateHandle, OperatorContext,
    OperatorError, ProcessFunction, StateDeclarations, ValueState,
};

use crate::common::small_engine;

type Log = Arc<Mutex<Vec<String>>>;

fn note(log: &Log, what: String) {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(what);
}

/// Holds records in a field until it is asked for a snapshot (or finishes),
/// logging each lifecycle call it gets.
#[derive(Clone, Default)]
struct Holder {
    held: Vec<u64>,
    state: Option<ListStateHandle<u64>>,
    subtask: u32,
    log: Log,
}

impl ProcessFunction<u64, u64> for Holder {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        self.state = Some(ctx.list_state::<u64>("held")?);
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
        ctx.list(self.state.as_ref().expect("opened"))?.extend(self.held.drain(..))
    }
    fn on_checkpoint_complete(&mut self, checkpoint: u64) {
        note(&self.log, format!("{}:complete {checkpoint}", self.subtask));
    }
    fn finish(&mut self, ctx: &mut OperatorContext<'_>, out: &mut Emitter<'_, u64>) -> Result<(), OperatorError> {
        note(&self.log, format!("{}:finish", self.subtask));
        let restored = ctx.list(self.state.as_ref().expect("opened"))?;
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

/// Counts per key; logs its checkpoint notifications and its close.
#[derive(Clone, Default)]
struct KeyedCounter {
    count: Option<ValueState<u64>>,
    log: Log,
}

impl KeyedProcessFunction<u64, u64, u64> for KeyedCounter {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.count = Some(states.value_state("count")?);
        note(&self.log, format!("{}:open", states.task().subtask));
        Ok(())
    }
    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let count = self.count.as_ref().expect("opened");
        let now = ctx.value(count)?.copied().unwrap_or(0) + 1;
        ctx.set_value(count, now)
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
}
