//! One reader of several egresses: a thread (blocking, awaiting, or hosting
//! the shard that computes the results) reads a stream and its side outputs
//! through queues too small to drain one egress first — every result once, each
//! from its egress — and reads on past an egress that has ended.

use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use shardflow_engine::{
    Dataflow, EgressHandle, EgressSelect, Either, Emitter, Engine, JobHandle, JobStatus, OutputTag,
};

use crate::common::{join_within, shard_count, small_engine, TIMEOUT};

/// A result of [`split_job`], whichever egress it came from.
#[derive(Debug, PartialEq)]
enum Out {
    Number(u64),
    Text(String),
    Small(u32),
}

/// What [`split_job`] routes number `r` of a split `ways` ways to.
fn split(r: u64, ways: u64) -> Out {
    match r % ways {
        0 => Out::Number(r),
        1 => Out::Text(format!("text-{r}")),
        _ => Out::Small(r as u32),
    }
}

/// The egresses of [`split_job`]: the stream's, side output `text`'s and, for
/// a three-way split, side output `small`'s.
struct Egresses {
    numbers: EgressHandle<u64>,
    texts: EgressHandle<String>,
    smalls: Option<EgressHandle<u32>>,
}

impl Egresses {
    /// Why each stream was cut short, if it was.
    fn stops(&self) -> [Option<String>; 3] {
        [self.numbers.stopped(), self.texts.stopped(), self.smalls.as_ref().and_then(|s| s.stopped())]
    }
}

/// Numbers `0..n`, rebalanced over every shard and split `ways` (2 or 3) ways
/// by [`split`] into the egresses of [`Egresses`]. Two results queued each: a
/// reader that drained one egress before another would wait forever on a job
/// waiting for room in the other.
fn split_job(engine: &Engine, n: u64, ways: u64) -> (JobHandle, Egresses) {
    let (text, small) = (OutputTag::<String>::new("text"), OutputTag::<u32>::new("small"));
    let df = Dataflow::new("split").parallelism(shard_count() as u32);
    let numbers = df.generate("numbers", n, |r| r).rebalance().flat_map({
        let (text, small) = (text.clone(), small.clone());
        move |r: &u64, out: &mut Emitter<'_, u64>| match split(*r, ways) {
            Out::Number(r) => out.emit(r),
            Out::Text(s) => out.emit_side(&text, s),
            Out::Small(s) => out.emit_side(&small, s),
        }
    });
    let texts = numbers.side_output(&text).egress(2);
    let smalls = (ways == 3).then(|| numbers.side_output(&small).egress(2));
    let numbers = numbers.egress(2);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("the job is accepted");
    (job, Egresses { numbers, texts, smalls })
}

/// What a reader of [`split_job`] got, in order of arrival per egress.
#[derive(Default)]
struct Got(Vec<Out>);

impl Got {
    /// Every number of `0..n` once, each from the egress [`split`] sends it
    /// to; every stream ended complete, and the job finished.
    fn check(mut self, n: u64, ways: u64, job: JobHandle, egresses: &Egresses) {
        let key = |o: &Out| match o {
            Out::Number(r) => *r,
            Out::Text(s) => s["text-".len()..].parse().expect("a text result names its number"),
            Out::Small(r) => u64::from(*r),
        };
        self.0.sort_by_key(key);
        let want: Vec<Out> = (0..n).map(|r| split(r, ways)).collect();
        assert_eq!(self.0.len(), want.len(), "one result per number");
        assert!(self.0 == want, "every number once, each from its egress");
        assert_eq!(egresses.stops(), [None, None, None], "every stream ended complete");
        let result = job.wait_timeout(TIMEOUT).expect("the job finishes");
        assert_eq!(result.status, JobStatus::Finished);
    }
}

/// `egresses` as one select of [`Out`]s.
fn select(egresses: &mut Egresses) -> EgressSelect<'_, Out> {
    let Egresses { numbers, texts, smalls } = egresses;
    let select = EgressSelect::new().with(numbers, Out::Number).with(texts, Out::Text);
    match smalls {
        Some(smalls) => select.with(smalls, Out::Small),
        None => select,
    }
}

/// Runs [`split_job`] over `n` numbers split `ways` ways on a small engine,
/// reads it with `read` and checks what that got.
fn read_split(n: u64, ways: u64, read: impl FnOnce(Egresses) -> (Got, Egresses)) {
    let engine = small_engine().build().expect("engine starts");
    let (job, egresses) = split_job(&engine, n, ways);
    let (got, egresses) = read(egresses);
    got.check(n, ways, job, &egresses);
    engine.shutdown();
}

/// Every result `next` gives until the end, failing the test if it neither
/// gives one nor ends within its timeout.
fn read_blocking(mut next: impl FnMut() -> Result<Out, RecvTimeoutError>) -> Got {
    let mut got = Got::default();
    loop {
        match next() {
            Ok(out) => got.0.push(out),
            Err(RecvTimeoutError::Disconnected) => return got,
            Err(RecvTimeoutError::Timeout) => panic!("no egress delivered nor ended: {} read", got.0.len()),
        }
    }
}

/// `read` awaited on a thread that hosts no shard (the sinks wake its
/// waker), failing the test if it does not end within [`TIMEOUT`].
fn read_awaiting<F>(egresses: Egresses, read: impl FnOnce(Egresses) -> F + Send + 'static) -> (Got, Egresses)
where
    F: std::future::Future<Output = (Got, Egresses)>,
{
    let reader = std::thread::spawn(move || futures_lite::future::block_on(read(egresses)));
    join_within(reader, "every result of every egress (a lost wake-up otherwise)")
}

#[test]
fn one_thread_reads_a_stream_and_its_side_output_through_queues_of_two() {
    read_split(5_000, 2, |mut egresses| {
        let Egresses { numbers, texts, .. } = &mut egresses;
        let got = read_blocking(|| {
            let next = numbers.recv_either_timeout(texts, TIMEOUT)?;
            Ok(next.either(Out::Number, Out::Text))
        });
        (got, egresses)
    });
}

#[test]
fn an_awaiting_reader_of_two_egresses_is_woken_by_either() {
    read_split(5_000, 2, |egresses| {
        read_awaiting(egresses, |mut egresses| async move {
            let mut got = Got::default();
            let Egresses { numbers, texts, .. } = &mut egresses;
            while let Some(next) = numbers.recv_either_async(texts).await {
                got.0.push(next.either(Out::Number, Out::Text));
            }
            (got, egresses)
        })
    });
}

#[test]
fn one_thread_reads_three_egresses_through_a_select() {
    read_split(6_000, 3, |mut egresses| {
        let mut all = select(&mut egresses);
        let got = read_blocking(|| all.recv_timeout(TIMEOUT));
        assert_eq!(all.try_recv(), Err(TryRecvError::Disconnected), "all have ended");
        drop(all);
        (got, egresses)
    });
}

#[test]
fn one_thread_reads_three_egresses_through_a_spinning_select() {
    read_split(6_000, 3, |mut egresses| {
        let mut all = select(&mut egresses);
        let got = read_blocking(|| all.recv_spinning(Duration::from_micros(50), TIMEOUT));
        assert_eq!(all.try_recv(), Err(TryRecvError::Disconnected), "all have ended");
        drop(all);
        (got, egresses)
    });
}

#[test]
fn an_awaiting_reader_of_three_egresses_is_woken_by_each() {
    read_split(6_000, 3, |egresses| {
        read_awaiting(egresses, |mut egresses| async move {
            let mut got = Got::default();
            let mut all = select(&mut egresses);
            while let Some(out) = all.recv_async().await {
                got.0.push(out);
            }
            drop(all);
            (got, egresses)
        })
    });
}

#[test]
fn a_select_reads_on_past_an_egress_that_has_ended() {
    let engine = small_engine().build().expect("engine starts");
    let short = Dataflow::new("short");
    let mut ten = short.from_iter("ten", 0..10u64).egress(2);
    let long = Dataflow::new("long").parallelism(1);
    let (requests, mut ingress) = long.ingress::<u64>("requests", 4);
    let mut answers = requests.map(|r: &u64| format!("answer-{r}")).egress(2);
    let short = engine.submit(short.build().expect("a valid dataflow")).expect("the job is accepted");
    let long = engine.submit(long.build().expect("a valid dataflow")).expect("the job is accepted");

    let mut both = EgressSelect::new().with(&mut ten, Either::Left).with(&mut answers, Either::Right);
    let mut firsts = (0..10).map(|_| both.recv_timeout(TIMEOUT)).collect::<Result<Vec<_>, _>>().expect("ten results");
    firsts.sort_by_key(|r| r.as_ref().left().copied());
    assert_eq!(firsts, (0..10u64).map(Either::Left).collect::<Vec<_>>(), "the short job's results");
    assert_eq!(short.wait_timeout(TIMEOUT).expect("the short job finishes").status, JobStatus::Finished);

    // The short job's egress has ended; the select waits on the other.
    assert_eq!(both.try_recv(), Err(TryRecvError::Empty), "one egress is still open");
    for r in 0..5u64 {
        ingress.push(r).expect("the job takes every request");
        assert_eq!(both.recv_timeout(TIMEOUT), Ok(Either::Right(format!("answer-{r}"))), "the answer to {r}");
    }
    drop(ingress);
    assert_eq!(both.recv_timeout(TIMEOUT), Err(RecvTimeoutError::Disconnected), "both have ended");
    assert_eq!(both.recv(), None);
    drop(both);
    assert_eq!((ten.stopped(), answers.stopped()), (None, None), "both ended complete");
    assert_eq!(long.wait_timeout(TIMEOUT).expect("the long job finishes").status, JobStatus::Finished);
    engine.shutdown();
}

#[test]
fn a_host_thread_reads_three_egresses_through_a_select_while_its_shard_runs() {
    let (engine, shard) = small_engine().build_hosted().expect("a hosted engine starts");
    let core = shard.core();
    let (text, small) = (OutputTag::<String>::new("text"), OutputTag::<u32>::new("small"));
    let df = Dataflow::new("hosted-select").parallelism(1);
    let (requests, mut ingress) = df.ingress::<u64>("requests", 8);
    let numbers = requests
        .cores(&[core])
        .flat_map({
            let (text, small) = (text.clone(), small.clone());
            move |r: &u64, out: &mut Emitter<'_, u64>| match split(*r, 3) {
                Out::Number(r) => out.emit(r),
                Out::Text(s) => out.emit_side(&text, s),
                Out::Small(s) => out.emit_side(&small, s),
            }
        })
        .cores(&[core]);
    let mut egresses = Egresses {
        texts: numbers.side_output(&text).egress(1),
        smalls: Some(numbers.side_output(&small).egress(1)),
        numbers: numbers.egress(1),
    };
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("the job is accepted");
    assert!(job.placement().placements.iter().all(|s| s.core == core), "{}", job.placement());

    let mut all = select(&mut egresses);
    // Nothing pushed, nothing comes: the wait ends at its timeout.
    assert_eq!(all.recv_timeout(Duration::from_millis(20)), Err(RecvTimeoutError::Timeout));
    // Each answer read on this thread, which runs the shard that computes it.
    for r in 0..300u64 {
        ingress.push(r).expect("the job takes every request");
        assert_eq!(all.recv_timeout(TIMEOUT), Ok(split(r, 3)), "the answer to request {r}");
    }
    // A spinning read here runs the shard too: no answer could come while it spun.
    ingress.push(300).expect("the job takes every request");
    assert_eq!(all.recv_spinning(Duration::from_secs(3600), TIMEOUT), Ok(split(300, 3)));
    drop(ingress);
    assert_eq!(all.recv_timeout(TIMEOUT), Err(RecvTimeoutError::Disconnected), "all end");
    drop(all);
    let result = job.wait_timeout(TIMEOUT).expect("the job finishes");
    assert_eq!(result.status, JobStatus::Finished);
    assert_eq!(egresses.stops(), [None, None, None], "every stream ended complete");
    drop((job, shard));
    engine.shutdown();
}

#[test]
fn a_select_of_no_egress_has_ended() {
    let mut none = EgressSelect::<u64>::new();
    assert_eq!(none.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(none.recv_timeout(TIMEOUT), Err(RecvTimeoutError::Disconnected));
    assert_eq!(none.recv(), None);
    assert_eq!(futures_lite::future::block_on(none.recv_async()), None);
}
