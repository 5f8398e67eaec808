//! Failure: a user function or key selector that panics or errors fails its job
//! with the cause; the other subtasks are cancelled, nothing hangs, and the engine
//! runs the next job.

use shardflow_engine::jobs::{KeyValue, GOLDEN};
use shardflow_engine::{Dataflow, Emitter, EngineError, JobStatus, OperatorError, OrFail};

use crate::common::{read_to_end, shard_count, small_engine, TIMEOUT};

fn expect_failure(result: Result<shardflow_engine::JobResult, EngineError>, needles: &[&str]) {
    match result {
        Err(EngineError::JobFailed { cause, .. }) => {
            for n in needles {
                assert!(cause.contains(n), "'{n}' in: {cause}");
            }
        }
        other => panic!("expected a failed job, got {other:?}"),
    }
}

#[test]
fn a_panicking_function_fails_the_job_with_its_cause_and_the_engine_goes_on() {
    let engine = small_engine().build().expect("engine starts");
    let p = shard_count() as u32;
    let slots = engine.free_slots().unwrap();
    let df = Dataflow::new("panics").parallelism(p);
    df.generate("source", 1_000_000, |r| KeyValue { key: r.wrapping_mul(GOLDEN), value: r })
        .key_by(|r: &KeyValue| r.key)
        .as_stream()
        .map(|r: &KeyValue| {
            assert!(r.value != 4242, "record 4242 is poison");
            *r
        })
        .name("boom")
        .count();
    let handle = engine.submit(df.build().unwrap()).expect("submit");
    let id = handle.id();
    expect_failure(handle.wait_timeout(TIMEOUT), &["boom (", "panicked", "record 4242 is poison"]);
    assert_eq!(engine.job_status(id).unwrap(), JobStatus::Failed);
    assert_eq!(engine.free_slots().unwrap(), slots);
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments);
    }

    // The engine is still healthy.
    let ok = Dataflow::new("after").parallelism(p);
    ok.generate("source", 10_000, |r| r).rebalance().count();
    assert_eq!(engine.run(ok.build().unwrap()).unwrap().count().0, 10_000);
}

#[test]
fn a_panicking_key_selector_fails_the_job_with_its_cause() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("bad-key").parallelism(shard_count() as u32);
    df.from_iter("words", ["a", "b", "poison", "c"].map(String::from))
        .key_by(|w: &str| {
            assert!(w != "poison", "no key for '{w}'");
            w.to_string()
        })
        .count_final()
        .count();
    expect_failure(engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT), &["no key for 'poison'"]);
}

#[test]
fn an_egress_dropped_by_its_reader_fails_the_job_instead_of_hanging() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("reader-gone");
    let handle = df.generate("source", 100_000, |r| r).rebalance().egress(8);
    drop(handle);
    expect_failure(engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT), &["egress", "dropped"]);
}

#[test]
fn an_egress_cut_short_by_a_failure_says_so_after_its_last_result() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("fails-while-serving").parallelism(shard_count() as u32);
    let answers = df
        .generate("source", 1_000_000, |r| r)
        .map(|r: &u64| {
            assert!(*r != 300_000, "record 300000 is poison");
            *r
        })
        .name("boom")
        .rebalance()
        .egress(64);
    let handle = engine.submit(df.build().unwrap()).expect("submit");
    assert_eq!(answers.stopped(), None, "nothing stopped yet");
    // Read to the end: the stream ends (it does not hang) short of its million.
    let read = read_to_end(&answers).len();
    assert!(read < 1_000_000, "the stream was cut short: {read}");
    let why = answers.stopped().expect("the end says it was cut short");
    assert!(why.starts_with("egress '"), "{why}");
    // The root cause, whichever reached the egress's task first: its producer
    // telling why it failed, or the job's cancel telling why the job failed.
    assert!(why.contains("record 300000 is poison"), "{why}");
    expect_failure(handle.wait_timeout(TIMEOUT), &["record 300000 is poison"]);
}

#[test]
fn an_egress_whose_task_fails_before_it_opens_names_the_cause() {
    #[derive(Clone)]
    struct Refuses;
    impl shardflow_engine::ProcessFunction<u64, u64> for Refuses {
        fn open(&mut self, _ctx: &mut shardflow_engine::OperatorContext<'_>) -> Result<(), OperatorError> {
            Err("the model file is missing".into())
        }
        fn process(
            &mut self,
            r: &u64,
            _ctx: &mut shardflow_engine::OperatorContext<'_>,
            out: &mut Emitter<'_, u64>,
        ) -> Result<(), OperatorError> {
            out.emit(*r);
            Ok(())
        }
    }
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("cannot-open").parallelism(1);
    // The egress shares the failing operator's task, and opens after it.
    let answers = df.generate("source", 10, |r| r).rebalance().process(Refuses).name("scorer").egress(4);
    let handle = engine.submit(df.build().unwrap()).expect("submit");
    assert_eq!(answers.recv_timeout(TIMEOUT), Err(crossbeam_channel::RecvTimeoutError::Disconnected));
    let why = answers.stopped().expect("the end says it was cut short");
    assert!(why.contains("scorer") && why.contains("the model file is missing"), "{why}");
    expect_failure(handle.wait_timeout(TIMEOUT), &["the model file is missing"]);
}

#[test]
fn a_fallible_map_or_flat_map_that_fails_fails_the_job_with_its_reason_and_the_engine_runs_on() {
    let engine = small_engine().build().expect("engine starts");
    let lines =
        |bad: Option<u64>| (0..10_000u64).map(move |i| if Some(i) == bad { "x7".into() } else { i.to_string() });
    // A parse that fails on one line of ten thousand.
    let parsed = |bad: Option<u64>| {
        let df = Dataflow::new("parse").parallelism(2);
        let amounts = df
            .from_iter("lines", lines(bad))
            .try_map(|l: &str| l.parse::<u64>().or_fail_with(|| format!("amount {l:?}")));
        amounts.name("amounts").count_and_sum(|a: &u64| *a);
        engine.run(df.build().unwrap())
    };
    // The cause names the task (the source's, which the try_map runs chained
    // in) and the operator.
    let cause = ["lines (", "operator 'amounts': amount \"x7\": invalid digit found in string"];
    expect_failure(parsed(Some(4_321)), &cause);
    // A lookup that finds nothing, through `Option`s.
    let df = Dataflow::new("lookup").parallelism(2);
    let names = ["zero", "one", "two"];
    df.from_iter("indexes", [0u64, 1, 2, 3, 1])
        .try_flat_map(move |i: &u64, out: &mut Emitter<'_, String>| {
            out.emit_ref(names.get(*i as usize).or_fail_with(|| format!("no name for {i}"))?);
            Ok(())
        })
        .name("names")
        .count();
    expect_failure(engine.run(df.build().unwrap()), &["indexes (", "operator 'names': no name for 3"]);
    // The engine runs on: the same jobs on good input finish, every record through.
    let result = parsed(None).expect("every line parses");
    assert_eq!(result.count(), (10_000, (0..10_000).sum()));
    // Plain data, mapped in batches: a failure amid a batch fails the job the
    // same way; without one, every record is through.
    let checked = |limit: u64| {
        let df = Dataflow::new("checked").parallelism(2);
        df.generate("numbers", 100_000, |r| r)
            .try_map(move |r: &u64| if *r < limit { Ok(r * 2) } else { Err(format!("{r} is over {limit}").into()) })
            .name("doubled")
            .count_and_sum(|r: &u64| *r);
        engine.run(df.build().unwrap())
    };
    expect_failure(checked(54_321), &["numbers (", "operator 'doubled': 54321 is over 54321"]);
    let df = Dataflow::new("spread").parallelism(2);
    df.generate("numbers", 100_000, |r| r)
        .try_flat_map(|r: &u64, out: &mut Emitter<'_, u64>| {
            out.emit(*r);
            if *r == 76_543 {
                return Err("no more after 76543".into());
            }
            out.emit(r + 1);
            Ok(())
        })
        .name("pairs")
        .count();
    expect_failure(engine.run(df.build().unwrap()), &["numbers (", "operator 'pairs': no more after 76543"]);
    let result = checked(u64::MAX).expect("every number is under the limit");
    assert_eq!(result.count(), (100_000, (0..100_000u64).map(|r| r * 2).sum()));
}
