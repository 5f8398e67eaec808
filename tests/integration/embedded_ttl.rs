//! Keyed state with a time-to-live: once expired it reads as none, is swept
//! from the end-of-input calls and from snapshots, and a restored state
//! expires when it would have; one that expires after access is kept by its
//! reads. No test waits on the clock: a processing-time
//! timer registered past a write's expiry is the event that says it expired
//! (a timer fires only once processing time reaches it), and a state that
//! must not expire has a time-to-live far beyond the test's timeout.

use std::time::Duration;

use shardflow_engine::{
    Dataflow, EgressHandle, Emitter, Engine, IngressHandle, JobSnapshot, KeyedContext, KeyedProcessFunction, ListState,
    OperatorError, StateDeclarations, ValueState,
};

use crate::common::{read_to_end, small_engine, TIMEOUT};

const SHORT: Duration = Duration::from_millis(20);
const LONG: Duration = Duration::from_secs(3_600);

/// Per key: a value and a list that expire after `SHORT`, a value that
/// expires after `LONG` and a count that never does; a timer just past the
/// short expiry reports what each reads then.
#[derive(Clone, Default)]
struct Sessions {
    last: ValueState<u64>,
    seen: ListState<u64>,
    kept: ValueState<u64>,
    count: ValueState<u64>,
}

/// What a key reads at its timer: (key, last, seen's length, kept, count).
type Report = (u64, Option<u64>, u64, Option<u64>, Option<u64>);

impl KeyedProcessFunction<u64, u64, Report> for Sessions {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        let (last, seen, kept) = (states.value_state("last")?, states.list_state("seen")?, states.value_state("kept")?);
        states.expire_after(&last, SHORT)?;
        states.expire_after(&seen, SHORT)?;
        states.expire_after(&kept, LONG)?;
        (self.last, self.seen, self.kept) = (last, seen, kept);
        self.count = states.value_state("count")?;
        Ok(())
    }
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, Report>,
    ) -> Result<(), OperatorError> {
        ctx.set_value(&self.last, *r)?;
        ctx.list_push(&self.seen, *r)?;
        ctx.set_value(&self.kept, *r)?;
        ctx.set_value(&self.count, 1)?;
        // Read after the writes: the timer is past their expiry.
        ctx.register_timer(ctx.processing_time() + SHORT.as_micros() as u64 + 1)
    }
    fn on_timer(
        &mut self,
        _: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, Report>,
    ) -> Result<(), OperatorError> {
        out.emit((
            *ctx.key(),
            ctx.value(&self.last)?.copied(),
            ctx.list(&self.seen)?.len() as u64,
            ctx.value(&self.kept)?.copied(),
            ctx.value(&self.count)?.copied(),
        ));
        Ok(())
    }
}

#[test]
fn expired_state_reads_as_none_and_is_gone_from_a_snapshot() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("sessions").parallelism(2);
    let (keys, mut push) = df.ingress::<u64>("keys", 16);
    let reports = keys.key_by(|k: &u64| *k).process(Sessions::default()).name("sessions").egress(16);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submit");
    for k in 0..50 {
        push.push(k).expect("the job takes the key");
    }
    let mut got: Vec<Report> =
        (0..50).map(|i| reports.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("report {i}: {e}"))).collect();
    got.sort_unstable();
    let want: Vec<Report> = (0..50).map(|k| (k, None, 0, Some(k), Some(1))).collect();
    assert_eq!(got, want, "the short-lived states expired, the long-lived and the plain one did not");

    job.stop_with_snapshot().expect("the job stops");
    let snapshot = job.wait_timeout(TIMEOUT).expect("the job ends").snapshot.expect("a snapshot");
    let held = snapshot.operators["sessions"].summary().expect("a readable snapshot").keyed_states;
    let held: Vec<(&str, u64)> = held.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(held, [("count", 50), ("kept", 50)], "expired state swept before the snapshot");
}

/// `TICK` registers a timer `SHORT` past every write before it; its firing
/// emits `(TICK, 0)`. Other records set the key's value, which expires after `ttl`
/// (if any). At the end of input, each key with state emits `(key, value)`.
#[derive(Clone)]
struct Remember {
    ttl: Option<Duration>,
    value: ValueState<u64>,
}

const TICK: u64 = u64::MAX;

impl KeyedProcessFunction<u64, u64, (u64, u64)> for Remember {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        let value = states.value_state("value")?;
        if let Some(ttl) = self.ttl {
            states.expire_after(&value, ttl)?;
        }
        self.value = value;
        Ok(())
    }
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        match *r {
            TICK => ctx.register_timer(ctx.processing_time() + SHORT.as_micros() as u64 + 1),
            r => ctx.set_value(&self.value, r),
        }
    }
    fn on_timer(
        &mut self,
        _: u64,
        _: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        out.emit((TICK, 0));
        Ok(())
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        if let Some(v) = ctx.value(&self.value)? {
            out.emit((*ctx.key(), *v));
        }
        Ok(())
    }
}

/// A job of `Remember` at parallelism 1 fed by an ingress (one subtask: the
/// tick comes after every record pushed before it), restoring `snapshot`.
fn remember(
    engine: &Engine,
    ttl: Option<Duration>,
    snapshot: Option<JobSnapshot>,
) -> (IngressHandle<u64>, EgressHandle<(u64, u64)>, shardflow_engine::JobHandle) {
    let mut df = Dataflow::new("remember");
    if let Some(s) = snapshot {
        df = df.restore(s);
    }
    let (keys, push) = df.ingress::<u64>("keys", 16);
    let out =
        keys.key_by(|k: &u64| *k).process(Remember { ttl, value: Default::default() }).name("remember").egress(16);
    (push, out, engine.submit(df.build().expect("a valid dataflow")).expect("submit"))
}

/// Pushes a tick, waits for it to fire, ends the input and returns what the
/// end of input emitted.
fn tick_then_end(
    mut push: IngressHandle<u64>,
    out: &EgressHandle<(u64, u64)>,
    job: shardflow_engine::JobHandle,
) -> Vec<(u64, u64)> {
    push.push(TICK).expect("the job takes the tick");
    assert_eq!(out.recv_timeout(TIMEOUT).expect("the tick fires"), (TICK, 0));
    drop(push);
    let mut rest = read_to_end(out);
    job.wait_timeout(TIMEOUT).expect("the job finishes");
    rest.sort_unstable();
    rest
}

#[test]
fn keys_whose_state_expired_get_no_end_of_input_call() {
    let engine = small_engine().build().expect("engine starts");
    for (ttl, want) in [(Some(SHORT), vec![]), (None, (0..20).map(|k| (k, k)).collect::<Vec<_>>())] {
        let (mut push, out, job) = remember(&engine, ttl, None);
        for k in 0..20 {
            push.push(k).expect("the job takes the key");
        }
        assert_eq!(tick_then_end(push, &out, job), want, "time-to-live {ttl:?}");
    }
}

#[test]
fn restored_state_expires_when_it_would_have_and_unstamped_state_starts_its_clock_at_the_restore() {
    let engine = small_engine().build().expect("engine starts");
    // Written with a time-to-live of an hour (and without one), then, once a
    // tick says 20 ms passed since, stopped with a snapshot.
    let snapshot = |ttl: Option<Duration>| {
        let (mut push, out, job) = remember(&engine, ttl, None);
        for k in 0..30 {
            push.push(k).expect("the job takes the key");
        }
        push.push(TICK).expect("the job takes the tick");
        assert_eq!(out.recv_timeout(TIMEOUT).expect("the tick fires"), (TICK, 0));
        job.stop_with_snapshot().expect("the job stops");
        let snapshot = job.wait_timeout(TIMEOUT).expect("the job ends").snapshot.expect("a snapshot");
        JobSnapshot::from_bytes(&snapshot.to_bytes().expect("to bytes")).expect("back")
    };
    let (with_ttl, without) = (snapshot(Some(LONG)), snapshot(None));
    let summary = |s: &JobSnapshot| s.operators["remember"].summary().expect("a readable snapshot");
    assert_eq!((summary(&with_ttl).keyed_states["value"], summary(&with_ttl).expiring), (30, 30));
    assert_eq!((summary(&without).keyed_states["value"], summary(&without).expiring), (30, 0));
    let all: Vec<(u64, u64)> = (0..30).map(|k| (k, k)).collect();

    // Restored with the same hour: nothing expired.
    let (push, out, job) = remember(&engine, Some(LONG), Some(with_ttl.clone()));
    assert_eq!(tick_then_end(push, &out, job), all, "restored write times an hour from expiring");
    // Restored with a time-to-live of 20 ms: the write times came along, over
    // 20 ms old, so the values expired before the first record.
    let (push, out, job) = remember(&engine, Some(SHORT), Some(with_ttl.clone()));
    drop(push);
    assert_eq!(read_to_end(&out), vec![], "restored write times are older than 20 ms");
    job.wait_timeout(TIMEOUT).expect("the job finishes");
    // Restored without a time-to-live: the values no longer expire.
    let (push, out, job) = remember(&engine, None, Some(with_ttl));
    assert_eq!(tick_then_end(push, &out, job), all, "no time-to-live, no expiry");
    // A snapshot without write times restored with a time-to-live: the
    // clocks start at the restore, and 20 ms later every value expired.
    let (push, out, job) = remember(&engine, Some(SHORT), Some(without));
    assert_eq!(tick_then_end(push, &out, job), vec![], "clocks started at the restore");
}

/// Per key, from a timer at `start`: a value whose reads restart its clock
/// (`expire_after_access`) and one whose reads do not (`expire_after`), both
/// of time-to-live `SHORT`, written at `start`, then read and reported by
/// timers at 0.6, 1.2 and 2.2 times `SHORT` after it. A timer sees state at
/// its own time, so how late it fires changes nothing.
#[derive(Clone, Default)]
struct Cached {
    used: ValueState<u64>,
    written: ValueState<u64>,
    /// (start, step), without a time-to-live.
    progress: ValueState<(u64, u64)>,
}

/// (key, step, the read-kept value, the write-kept value).
type Seen = (u64, u64, Option<u64>, Option<u64>);

/// Timers' offsets from `start`, in tenths of `SHORT`, by step.
const STEPS: [u64; 4] = [0, 6, 12, 22];

impl KeyedProcessFunction<u64, u64, Seen> for Cached {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        let (used, written) = (states.value_state("used")?, states.value_state("written")?);
        states.expire_after_access(&used, SHORT)?;
        states.expire_after(&written, SHORT)?;
        (self.used, self.written) = (used, written);
        self.progress = states.value_state("progress")?;
        Ok(())
    }
    fn process(
        &mut self,
        _: &u64,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, Seen>,
    ) -> Result<(), OperatorError> {
        let now = ctx.processing_time();
        ctx.set_value(&self.progress, (now, 0))?;
        ctx.register_timer(now)
    }
    fn on_timer(
        &mut self,
        at: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, Seen>,
    ) -> Result<(), OperatorError> {
        let (used, written, progress) = (&self.used, &self.written, &self.progress);
        let (start, step) = ctx.value(progress)?.copied().expect("set before the first timer");
        let key = *ctx.key();
        if step == 0 {
            ctx.set_value(used, key)?;
            ctx.set_value(written, key)?;
        } else {
            out.emit((key, step, ctx.value(used)?.copied(), ctx.value(written)?.copied()));
        }
        let start = if step == 0 { at } else { start };
        if let Some(next) = STEPS.get(step as usize + 1) {
            ctx.set_value(progress, (start, step + 1))?;
            ctx.register_timer(start + next * SHORT.as_micros() as u64 / 10)?;
        }
        Ok(())
    }
}

#[test]
fn state_expiring_after_access_is_kept_by_its_reads_and_state_expiring_after_write_is_not() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("cached").parallelism(2);
    let (keys, mut push) = df.ingress::<u64>("keys", 16);
    let seen = keys.key_by(|k: &u64| *k).process(Cached::default()).name("cached").egress(64);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submit");
    for k in 0..10 {
        push.push(k).expect("the job takes the key");
    }
    let mut got: Vec<Seen> =
        (0..30).map(|i| seen.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("report {i}: {e}"))).collect();
    drop(push);
    job.wait_timeout(TIMEOUT).expect("the job ends with its input");
    got.sort_unstable();
    let mut want: Vec<Seen> = Vec::new();
    for k in 0..10 {
        // 0.6: both live. 1.2: the read at 0.6 kept one, the other expired at
        // 1.0. 2.2: a whole time-to-live since the read at 1.2: both gone.
        want.extend([(k, 1, Some(k), Some(k)), (k, 2, Some(k), None), (k, 3, None, None)]);
    }
    assert_eq!(got, want);
}

#[test]
fn a_time_to_live_of_zero_is_refused() {
    #[derive(Clone)]
    struct Zero;
    impl KeyedProcessFunction<u64, u64, u64> for Zero {
        fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
            let v = states.value_state::<u64>("v")?;
            states.expire_after(&v, Duration::ZERO)
        }
        fn process(
            &mut self,
            _: &u64,
            _: &mut KeyedContext<'_, u64>,
            _: &mut Emitter<'_, u64>,
        ) -> Result<(), OperatorError> {
            Ok(())
        }
    }
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("zero");
    df.from_iter("n", 0..3u64).key_by(|n: &u64| *n).process(Zero).discard();
    let e = engine.run(df.build().expect("a valid dataflow")).expect_err("the job fails in open");
    assert!(e.to_string().contains("time-to-live must be at least a microsecond"), "{e}");
}
