//! A keyed ingress: the service's pushes are partitioned by key at the handle,
//! so the keyed operators chain into the source subtasks (no exchange), each
//! key's state lives on the subtask that owns its key group, and anything that
//! would break that partitioning is a typed error.

use std::collections::HashMap;

use shardflow_engine::{
    key_hash, subtask_of_key_group, Dataflow, DataflowError, EngineError, QueueBound, DEFAULT_MAX_PARALLELISM,
};

use crate::common::{small_engine, TIMEOUT};

type Amount = (String, u64);

#[test]
fn a_keyed_ingress_routes_each_key_to_its_key_group_s_subtask_and_chains_the_keyed_operator() {
    let engine = small_engine().build().expect("engine starts");
    let p = 3u32;
    let df = Dataflow::new("keyed-ingress").parallelism(p);
    let (amounts, mut ingress) =
        df.ingress_keyed::<String, Amount, _>("amounts", QueueBound::records(16), |a: &Amount| a.0.clone());
    let totals = amounts.reduce(|t: &Amount, a: &Amount| (t.0.clone(), t.1 + a.1)).name("totals").collect();
    let handle = engine.submit(df.build().expect("a keyed ingress and its reduce")).unwrap();

    let users: Vec<String> = (0..40).map(|u| format!("user-{u}")).collect();
    let mut pushed: Vec<Amount> = Vec::new();
    for i in 0..3_000u64 {
        let a = (users[(i.wrapping_mul(7919) % 40) as usize].clone(), i % 13 + 1);
        // The subtask that owns the key's key group, as keyed state assigns it.
        let group = (key_hash(a.0.as_str()) % u64::from(DEFAULT_MAX_PARALLELISM)) as u32;
        assert_eq!(ingress.subtask_of(&a), subtask_of_key_group(group, p, DEFAULT_MAX_PARALLELISM) as usize);
        ingress.push(a.clone()).expect("the job takes every amount");
        pushed.push(a);
    }
    // Then in batches: each record to its key's subtask, in order.
    for batch in 0..30u64 {
        let amounts: Vec<Amount> =
            (0..100).map(|i| (users[((batch * 100 + i) % 40) as usize].clone(), (batch + i) % 5 + 1)).collect();
        pushed.extend(amounts.iter().cloned());
        ingress.push_all(amounts).expect("the job takes every batch");
    }
    drop(ingress);
    let result = handle.wait_timeout(TIMEOUT).expect("the job ends when the ingress handle is dropped");

    // One vertex: the reduce runs chained in the ingress's subtasks.
    let vertices: std::collections::BTreeSet<&str> = result.subtasks.iter().map(|s| s.vertex.as_str()).collect();
    assert_eq!(vertices.into_iter().collect::<Vec<_>>(), ["amounts"], "no exchange, no second vertex");
    assert_eq!(result.subtasks.iter().map(|s| s.records_out).sum::<u64>(), 0, "nothing crossed a partition");

    // Each key's running totals are the prefix sums of its amounts in push
    // order: all of a key's state on one subtask, its records in order.
    let mut want: HashMap<String, Vec<u64>> = HashMap::new();
    for (user, amount) in &pushed {
        let sums = want.entry(user.clone()).or_default();
        sums.push(sums.last().copied().unwrap_or(0) + amount);
    }
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for (user, total) in totals.take() {
        got.entry(user).or_default().push(total);
    }
    assert_eq!(got, want);
}

#[test]
fn what_would_break_a_keyed_ingress_s_partitioning_is_a_typed_error() {
    let amounts = |df: &Dataflow| {
        df.ingress_keyed::<u64, (u64, u64), _>("amounts", QueueBound::records(8), |a: &(u64, u64)| a.0).0
    };
    let add = |t: &(u64, u64), a: &(u64, u64)| (t.0, t.1 + a.1);

    // The keyed operator at another parallelism than the ingress's.
    let df = Dataflow::new("other-parallelism").parallelism(2);
    let _ = amounts(&df).reduce(add).parallelism(3).collect();
    assert!(matches!(df.build(), Err(EngineError::Dataflow(DataflowError::FixedParallelism { .. }))));

    // An operator of a vertex of its own reads it forward: equal parallelism.
    let df = Dataflow::new("union-elsewhere").parallelism(2);
    let keyed = amounts(&df).as_stream();
    let other = df.from_iter("more", [(1u64, 1u64)]);
    let _ = keyed.union(&other).parallelism(3).collect();
    assert!(matches!(df.build(), Err(EngineError::Dataflow(DataflowError::ForwardMismatch { .. }))));

    // Key groups changed after the handle learnt them.
    let df = Dataflow::new("late-max").parallelism(2);
    let _ = amounts(&df).reduce(add).collect();
    let df = df.max_parallelism(64);
    match df.build() {
        Err(EngineError::Dataflow(DataflowError::MaxParallelismAfterKeyedIngress { ingress, was, now })) => {
            assert_eq!((ingress.as_str(), was, now), ("amounts", DEFAULT_MAX_PARALLELISM, 64));
        }
        other => panic!("a late max_parallelism is refused: {other:?}"),
    }

    // Set before: fine.
    let df = Dataflow::new("early-max").parallelism(2).max_parallelism(64);
    let _ = amounts(&df).reduce(add).collect();
    df.build().expect("max_parallelism set before the keyed ingress");
}

#[test]
fn a_key_selector_that_panics_unwinds_into_the_pusher_and_the_job_takes_the_next_push() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("picky").parallelism(2);
    let (numbers, ingress) = df.ingress_keyed::<u64, u64, _>("numbers", QueueBound::records(8), |n: &u64| {
        assert!(*n != 13, "no key for thirteen");
        n % 4
    });
    let sums = numbers.reduce(|t: &u64, n: &u64| t + n).collect();
    let handle = engine.submit(df.build().unwrap()).unwrap();

    // The selector runs in the pushing thread: its panic is the caller's, the
    // record is not queued, and nothing of the job is touched.
    let mut pusher = ingress.clone();
    let panicked = std::thread::spawn(move || pusher.push(13)).join();
    let cause = panicked.expect_err("the push panics with the selector");
    assert_eq!(cause.downcast_ref::<&str>(), Some(&"no key for thirteen"));

    let mut ingress = ingress;
    for n in [1u64, 2, 5, 6] {
        ingress.push(n).expect("the job takes the next pushes");
    }
    drop(ingress);
    handle.wait_timeout(TIMEOUT).expect("the job ends complete");
    let mut got = sums.take();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 6, 8], "running sums of keys 1 (1, 1+5) and 2 (2, 2+6); 13 never went in");
}

/// A reader that looks for each answer without sleeping first gets every
/// answer, in order; with nothing to come it waits out its timeout, and it
/// learns of the end of the stream.
#[test]
fn a_spinning_reader_gets_every_answer_and_learns_of_the_end() {
    use std::time::Duration;
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("spinning-reader").parallelism(2);
    let (requests, mut ingress) = df.ingress_keyed::<u64, u64, _>("requests", QueueBound::records(8), |r| *r);
    let answers = requests.as_stream().map(|r: &u64| r + 1).name("answer").egress(8);
    let handle = engine.submit(df.build().expect("an ingress, a map and an egress")).unwrap();
    let spin = Duration::from_micros(50);
    for r in 0..2_000u64 {
        ingress.push(r).expect("the job takes every request");
        assert_eq!(answers.recv_spinning(spin, TIMEOUT), Ok(r + 1), "answer to {r}");
    }
    // Nothing was asked: nothing comes, after the spin and the wait.
    let wait = Duration::from_millis(20);
    assert_eq!(answers.recv_spinning(spin, wait), Err(crossbeam_channel::RecvTimeoutError::Timeout));
    drop(ingress);
    assert_eq!(answers.recv_spinning(spin, TIMEOUT), Err(crossbeam_channel::RecvTimeoutError::Disconnected));
    assert_eq!(answers.stopped(), None, "the stream ended complete");
    handle.wait_timeout(TIMEOUT).expect("the job ends when the ingress handle is dropped");
    engine.shutdown();
}
