//! Bad input is refused with a typed error naming the problem: by the dataflow
//! builder, by the engine before anything runs, or by the task that meets it
//! (the job then fails with the numbers). Nothing hangs, nothing is left held.

use shardflow_engine::protocol::ErrorCode;
use shardflow_engine::{Cores, Dataflow, DataflowError, Engine, EngineError, OperatorError, PushError};

use crate::common::{join_within, small_engine, TIMEOUT};

fn failure(r: Result<shardflow_engine::JobResult, EngineError>) -> String {
    match r {
        Err(EngineError::JobFailed { cause, .. }) => cause,
        other => panic!("expected a failed job, got {other:?}"),
    }
}

#[test]
fn dataflows_a_new_user_trips_over_are_typed_errors() {
    // No sink: the results would go nowhere.
    assert_eq!(
        Dataflow::new("empty").build().unwrap_err(),
        EngineError::Dataflow(DataflowError::NoSink { job: "empty".into() })
    );
    let df = Dataflow::new("no-sink");
    let _ = df.generate("numbers", 10, |r| r).map(|r: &u64| r + 1).name("dangling");
    assert_eq!(
        df.build().unwrap_err(),
        EngineError::Dataflow(DataflowError::Unconsumed { operator: "dangling".into() }),
        "an operator whose output nobody reads"
    );
    let df = Dataflow::new("nothing");
    df.generate("numbers", 10, |r| r).filter(|_: &u64| true).discard();
    assert!(df.build().is_ok(), "a discarding sink is a sink");
    let df = Dataflow::new("sinkless");
    let _unused = df.generate("numbers", 10, |r| r);
    assert!(matches!(df.build(), Err(EngineError::Dataflow(DataflowError::Unconsumed { .. }))));

    // Two operators of one name (names identify state).
    let df = Dataflow::new("twins");
    let s = df.generate("numbers", 10, |r| r);
    s.map(|r: &u64| *r).name("same").count();
    s.map(|r: &u64| *r).name("same").count();
    assert_eq!(df.build().unwrap_err(), EngineError::Dataflow(DataflowError::DuplicateName { name: "same".into() }));
    // A name that would make snapshot entries ambiguous (`operator/list`).
    let df = Dataflow::new("slashed");
    df.generate("numbers", 10, |r| r).map(|r: &u64| *r).name("a/b").count();
    assert_eq!(df.build().unwrap_err(), EngineError::Dataflow(DataflowError::SlashInName { name: "a/b".into() }));

    // Two collect sinks are two handles: each gets its own records.
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("two-collects");
    let s = df.generate("numbers", 100, |r| r);
    let (a, b) = (s.collect(), s.filter(|r: &u64| r % 2 == 0).collect());
    engine.run(df.build().unwrap()).unwrap();
    assert_eq!((a.take().len(), b.take().len()), (100, 50));

    // A forward edge between different parallelisms; parallelism 0.
    let df = Dataflow::new("forward").parallelism(2);
    df.generate("numbers", 10, |r| r).forward().map(|r: &u64| *r).name("narrow").parallelism(1).count();
    assert!(matches!(df.build(), Err(EngineError::Dataflow(DataflowError::ForwardMismatch { .. }))));
    let df = Dataflow::new("zero");
    df.generate("numbers", 10, |r| r).parallelism(0).count();
    assert!(matches!(df.build(), Err(EngineError::Dataflow(DataflowError::ZeroParallelism { .. }))));
    // A placement hint of no core (it read as a malformed placement map).
    let df = Dataflow::new("nowhere");
    df.generate("numbers", 10, |r| r).rebalance().map(|r: &u64| *r).name("pinned").cores(&[]).count();
    match df.build() {
        Err(EngineError::Dataflow(DataflowError::NoCores { operator })) => assert_eq!(operator, "pinned"),
        other => panic!("expected NoCores, got {other:?}"),
    }
}

#[test]
fn more_parallelism_than_slots_is_refused_with_the_numbers_and_nothing_is_held() {
    let engine = small_engine().build().expect("engine starts");
    let slots = engine.free_slots().unwrap();
    let df = Dataflow::new("too-wide");
    df.generate("src", 10, |r| r).parallelism(64).rebalance().count();
    match engine.submit(df.build().unwrap()) {
        Err(EngineError::Remote { code: ErrorCode::NotEnoughSlots, message }) => {
            assert!(message.contains("64"), "the refusal says how many slots it needs: {message}")
        }
        other => panic!("expected a not-enough-slots refusal, got {other:?}"),
    }
    assert_eq!(engine.free_slots().unwrap(), slots);
    let ok = Dataflow::new("fine");
    ok.generate("src", 10, |r| r).rebalance().count();
    assert_eq!(engine.submit(ok.build().unwrap()).unwrap().wait_timeout(TIMEOUT).unwrap().count().0, 10);
}

#[test]
fn a_core_that_does_not_exist_is_refused() {
    let err = Engine::builder().cores(Cores::List(vec![100_000])).build().unwrap_err();
    assert!(matches!(err, EngineError::UnknownCore { core: 100_000, .. }), "{err}");
    let online = shardflow_engine::online_cores();
    let err = Engine::builder().cores(Cores::List(vec![online[0], online[0]])).build().unwrap_err();
    assert_eq!(err, EngineError::DuplicateCore { core: online[0] });
    let err = Engine::builder().segment_bytes(3000).build().unwrap_err();
    assert!(matches!(err, EngineError::InvalidConfig { field: "segment_bytes", .. }), "{err}");
}

#[test]
fn a_task_too_big_for_its_shards_network_budget_is_refused_and_fails_the_job_with_the_numbers() {
    // 16 segments of 4 KiB per shard; a 4 x 4 all-to-all job needs far more.
    let engine = small_engine().network_memory_bytes(16 * 4096).build().expect("engine starts");
    let slots = engine.free_slots().unwrap();
    let df = Dataflow::new("greedy").parallelism(4);
    df.generate("src", 10, |r| r).key_by(|r: &u64| *r).as_stream().count();
    let cause = failure(engine.submit(df.build().unwrap()).expect("the graph is valid").wait_timeout(TIMEOUT));
    assert!(cause.contains("network buffers budget exceeded: requested"), "{cause}");
    assert!(cause.contains("of 65536 bytes available"), "{cause}");
    assert_eq!(engine.free_slots().unwrap(), slots, "a refused job holds no slot");
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments);
    }
}

#[test]
fn an_egress_of_a_job_refused_at_deployment_ends_and_says_why() {
    // As above: the job's source tasks are refused; its egress sinks, which
    // fit, are stopped.
    let engine = small_engine().network_memory_bytes(16 * 4096).build().expect("engine starts");
    let df = Dataflow::new("greedy-service").parallelism(4);
    let answers = df.generate("src", 10, |r| r).key_by(|r: &u64| *r).as_stream().egress(8);
    let job = engine.submit(df.build().unwrap()).expect("the graph is valid");
    // Read first, as a service's reader thread would: the stream ends.
    match answers.recv_timeout(TIMEOUT) {
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
        other => panic!("expected the stream to end, got {other:?}"),
    }
    let why = answers.stopped().expect("a stream cut short says why");
    assert!(why.contains("was cancelled") || why.contains("failed"), "{why}");
    let cause = failure(job.wait_timeout(TIMEOUT));
    assert!(cause.contains("network buffers budget exceeded"), "{cause}");
}

#[test]
fn a_push_waiting_on_a_job_refused_at_deployment_learns_it_is_gone() {
    // As above: the job's tasks are refused, so no ingress source ever runs;
    // a pusher waiting for room must learn it from the job's end, not from a
    // wait on the handle or its drop (a service may push before it waits).
    let engine = small_engine().network_memory_bytes(16 * 4096).build().expect("engine starts");
    let df = Dataflow::new("greedy-ingress").parallelism(4);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 1);
    requests.key_by(|r: &u64| *r).as_stream().count();
    let job = engine.submit(df.build().unwrap()).expect("the graph is valid");
    let pusher = std::thread::spawn(move || {
        let mut last = Ok(());
        for r in 0..64 {
            last = ingress.push_timeout(r, std::time::Duration::from_secs(3600));
            if last.is_err() {
                break;
            }
        }
        last
    });
    // Nobody waits on the job before the pusher is back.
    let end = join_within(pusher, "a push into the failed job returns, not in an hour");
    assert!(matches!(end, Err(PushError::Closed(_))), "{end:?}");
    let cause = failure(job.wait_timeout(TIMEOUT));
    assert!(cause.contains("network buffers budget exceeded"), "{cause}");
}

#[test]
fn keyed_state_beyond_the_slot_budget_fails_the_job_with_the_numbers() {
    let engine = small_engine().managed_memory_per_slot_bytes(256 << 10).build().expect("engine starts");
    let keyed = |keys: u64| {
        let df = Dataflow::new("keyed");
        df.generate("src", 200_000, move |r| format!("key-{}", r.wrapping_mul(2_654_435_761) % keys))
            .key_by_ref::<String, _>(|k: &str| k)
            .count_final()
            .count_and_sum(|(_, n): &(String, u64)| *n);
        df.build().unwrap()
    };
    // 100 000 string keys need megabytes: far over a 256 KiB slot.
    let cause = failure(engine.submit(keyed(100_000)).unwrap().wait_timeout(TIMEOUT));
    assert!(cause.contains("managed memory budget exceeded: requested"), "{cause}");
    assert!(cause.contains("of 262144 bytes available"), "{cause}");
    // The failed job's reservations are gone: a job that fits runs in the same slot.
    let result = engine.submit(keyed(1_000)).unwrap().wait_timeout(TIMEOUT).expect("fits the budget");
    assert_eq!(result.count(), (1_000, 200_000));
}

/// Keeps every record of its key in list state.
#[derive(Clone, Default)]
struct KeepAll {
    kept: shardflow_engine::ListState<String>,
}

impl shardflow_engine::KeyedProcessFunction<u64, String, String> for KeepAll {
    fn open(&mut self, states: &mut shardflow_engine::StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.kept = states.list_state("kept")?;
        Ok(())
    }
    fn process(
        &mut self,
        line: &str,
        ctx: &mut shardflow_engine::KeyedContext<'_, u64>,
        _: &mut shardflow_engine::Emitter<'_, String>,
    ) -> Result<(), OperatorError> {
        ctx.list_push(&self.kept, line.to_string())
    }
}

#[test]
fn what_state_values_hold_on_the_heap_counts_against_the_slot_budget() {
    let engine = small_engine().managed_memory_per_slot_bytes(256 << 10).build().expect("engine starts");
    // Four keys, few table entries, but 1 000 lines of 1 KiB each kept: 1 MiB.
    let kept = |lines: u64| {
        let df = Dataflow::new("kept-lines");
        df.generate("lines", lines, |r| format!("{r:>1024}"))
            .key_by(|l: &str| l.trim_start().parse::<u64>().unwrap_or(0) % 4)
            .process(KeepAll::default())
            .discard();
        df.build().unwrap()
    };
    let cause = failure(engine.submit(kept(1_000)).unwrap().wait_timeout(TIMEOUT));
    assert!(cause.contains("managed memory budget exceeded") && cause.contains("of 262144 bytes available"), "{cause}");
    engine.submit(kept(100)).unwrap().wait_timeout(TIMEOUT).expect("100 KiB of lines fit");

    // One key whose reduced string grows to 1 MiB.
    let df = Dataflow::new("growing-value");
    df.generate("parts", 1_000, |_| "x".repeat(1024))
        .key_by(|_: &str| 0u64)
        .reduce_final(|acc: &String, s: &str| acc.clone() + s)
        .discard();
    let cause = failure(engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT));
    assert!(cause.contains("managed memory budget exceeded"), "{cause}");
}

/// Appends every line of its key to one string in value state, in place.
#[derive(Clone, Default)]
struct AppendInPlace {
    text: shardflow_engine::ValueState<String>,
    pages: shardflow_engine::MapState<u64, String>,
    /// Grow the map entry instead of the value.
    in_map: bool,
}

impl shardflow_engine::KeyedProcessFunction<u64, String, String> for AppendInPlace {
    fn open(&mut self, states: &mut shardflow_engine::StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.text = states.value_state("text")?;
        self.pages = states.map_state("pages")?;
        Ok(())
    }
    fn process(
        &mut self,
        line: &str,
        ctx: &mut shardflow_engine::KeyedContext<'_, u64>,
        _: &mut shardflow_engine::Emitter<'_, String>,
    ) -> Result<(), OperatorError> {
        let grown = if self.in_map {
            ctx.map_update(&self.pages, &0, |s| s.push_str(line))?
        } else {
            ctx.update_value(&self.text, |s| s.push_str(line))?
        };
        if grown.is_none() {
            if self.in_map {
                ctx.map_insert(&self.pages, 0, line.to_string())?;
            } else {
                ctx.set_value(&self.text, line.to_string())?;
            }
        }
        Ok(())
    }
}

#[test]
fn a_value_grown_in_place_is_charged_to_the_slot_budget() {
    let engine = small_engine().managed_memory_per_slot_bytes(256 << 10).build().expect("engine starts");
    let grow = |lines: u64, in_map: bool| {
        let df = Dataflow::new("grown-in-place");
        df.generate("lines", lines, |_| "x".repeat(1024))
            .key_by(|_: &str| 0u64)
            .process(AppendInPlace { in_map, ..AppendInPlace::default() })
            .discard();
        df.build().unwrap()
    };
    for in_map in [false, true] {
        // One key's string grows to 1 MiB through update_value / map_update.
        let cause = failure(engine.submit(grow(1_000, in_map)).unwrap().wait_timeout(TIMEOUT));
        assert!(
            cause.contains("managed memory budget exceeded") && cause.contains("of 262144 bytes available"),
            "in_map {in_map}: {cause}"
        );
        engine.submit(grow(100, in_map)).unwrap().wait_timeout(TIMEOUT).expect("100 KiB fits");
    }
}

/// Keeps every line in operator list state (which it forgets to declare in
/// `open` if `undeclared`).
#[derive(Clone, Default)]
struct KeepLines {
    lines: shardflow_engine::ListStateHandle<String>,
    undeclared: bool,
}

impl shardflow_engine::ProcessFunction<String, String> for KeepLines {
    fn open(&mut self, ctx: &mut shardflow_engine::OperatorContext<'_>) -> Result<(), OperatorError> {
        if !self.undeclared {
            self.lines = ctx.list_state("lines")?;
        }
        Ok(())
    }
    fn process(
        &mut self,
        line: &str,
        ctx: &mut shardflow_engine::OperatorContext<'_>,
        _: &mut shardflow_engine::Emitter<'_, String>,
    ) -> Result<(), OperatorError> {
        ctx.list(&self.lines)?.push(line.to_string())
    }
}

/// Counts each key's records in a value it forgot to declare in `open`.
#[derive(Clone, Default)]
struct Undeclared(shardflow_engine::ValueState<u64>);

impl shardflow_engine::KeyedProcessFunction<u64, u64, u64> for Undeclared {
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut shardflow_engine::KeyedContext<'_, u64>,
        out: &mut shardflow_engine::Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        let n = ctx.value(&self.0)?.copied().unwrap_or(0) + 1;
        ctx.set_value(&self.0, n)?;
        out.emit(*r);
        Ok(())
    }
}

#[test]
fn a_state_handle_used_before_open_declared_it_fails_the_job_saying_so() {
    assert_eq!(format!("{:?}", Undeclared::default().0), "StateHandle(undeclared)");
    assert_eq!(format!("{:?}", KeepLines::default().lines), "ListStateHandle(undeclared)");
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("undeclared-keyed");
    df.generate("numbers", 100, |r| r).key_by(|r: &u64| r % 7).process(Undeclared::default()).discard();
    let cause = failure(engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT));
    assert!(cause.contains("a state handle was used before `open` declared it"), "{cause}");
    let lines = |f: &dyn Fn(&shardflow_engine::Stream<String>) -> shardflow_engine::Sink| {
        let df = Dataflow::new("undeclared-list");
        f(&df.generate("lines", 100, |r| r.to_string()));
        engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT)
    };
    let cause = failure(lines(&|s| s.process(KeepLines { undeclared: true, ..KeepLines::default() }).discard()));
    assert!(cause.contains("a list state handle was used before `open` declared it"), "{cause}");
    // The engine runs on; declared, the same state works.
    lines(&|s| s.process(KeepLines::default()).discard()).expect("declared in open, the list state is there");
}

#[test]
fn operator_list_state_beyond_the_slot_budget_fails_the_job_with_the_numbers() {
    let engine = small_engine().managed_memory_per_slot_bytes(256 << 10).build().expect("engine starts");
    let kept = |lines: u64| {
        let df = Dataflow::new("kept-in-operator-state");
        df.generate("lines", lines, |r| format!("{r:>1024}")).process(KeepLines::default()).discard();
        df.build().unwrap()
    };
    let cause = failure(engine.submit(kept(1_000)).unwrap().wait_timeout(TIMEOUT));
    assert!(cause.contains("managed memory budget exceeded") && cause.contains("of 262144 bytes available"), "{cause}");
    engine.submit(kept(100)).unwrap().wait_timeout(TIMEOUT).expect("100 KiB of lines fit");
}

#[test]
fn a_record_beyond_the_slot_s_managed_memory_fails_the_job_naming_its_size() {
    // A record larger than a segment travels in a buffer of its own, charged to
    // its task's managed memory: one larger than that is refused.
    let engine = small_engine().managed_memory_per_slot_bytes(256 << 10).build().expect("engine starts");
    let huge = |len: usize| {
        let df = Dataflow::new("huge");
        df.from_iter("text", ["small".to_string(), "x".repeat(len)]).rebalance().count();
        df.build().unwrap()
    };
    let cause = failure(engine.submit(huge(1_000_000)).unwrap().wait_timeout(TIMEOUT));
    assert!(cause.contains("a record of 1000008 bytes"), "names the record's size: {cause}");
    assert!(cause.contains("managed memory") && cause.contains("of 262144 bytes available"), "and the budget: {cause}");
    let result = engine.submit(huge(100_000)).unwrap().wait_timeout(TIMEOUT).expect("100 KB fit in 256 KiB");
    assert_eq!(result.count().0, 2, "both records arrive");
}

#[test]
fn a_source_that_cannot_be_created_fails_the_job_with_its_cause() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("no-source");
    df.source_fallible("broken", |_: &shardflow_engine::TaskInfo| -> Result<Nothing, _> {
        Err(shardflow_engine::OperatorError::User("the input file is missing".into()))
    })
    .count();
    let cause = failure(engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT));
    assert!(cause.contains("the input file is missing"), "{cause}");
}

/// A source that is never created.
struct Nothing;

impl shardflow_engine::Source<u64> for Nothing {
    fn poll_next(
        &mut self,
        _: &mut std::task::Context<'_>,
        _: &mut shardflow_engine::SourceOutput<'_, u64>,
    ) -> Result<shardflow_engine::SourceStatus, shardflow_engine::OperatorError> {
        Ok(shardflow_engine::SourceStatus::Finished)
    }
}
