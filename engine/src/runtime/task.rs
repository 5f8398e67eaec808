//! The mailbox task runtime: one subtask on its shard, waiting on one thing at a
//! time — its control lane (cancel, a source's stop with a snapshot, and later
//! checkpoint triggers and notifications) and its timers, whether its outputs
//! can take more, and its inputs (a source, or one gate per incoming edge) — and
//! doing one step of work when something is ready.
//!
//! A step is one chunk of a buffer (or one source poll, one event, the due
//! timers). Between steps the task looks at its outputs: while one is overdrawn
//! (its consumers granted no credit) it takes no input, so it never blocks inside
//! a batch and a task under back-pressure still serves its control lane. A
//! buffer leaves when full, when the task has drained its input (so latency is
//! low at no throughput cost), before an event, or after the flush timeout.
//!
//! ```text
//!   loop: control lane? ─► failure? ─► due timers? ─► outputs overdrawn? (wait: back-pressured)
//!         ─► current buffer: feed a chunk ─► source: poll │ gates: next item (round robin)
//!         ─► nothing: flush, arm timer, wait (idle)
//!   end of input ─► finish operators upstream first (in steps) ─► end of partition ─► drain ─► close
//!   stop (a source told to; a task whose inputs all brought the stop barrier) ─► barrier downstream
//!         ─► at the end of input: snapshot instead of finish (a source: its position too) ─► …
//!   cancel, failure or panic ─► close every operator opened and not yet closed ─► CANCELED │ FAILED
//! ```

use std::future::poll_fn;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use shardflow_control::protocol::TaskTimes;
use shardflow_control::{AttemptId, JobId};
use shardflow_memory::{Budget, SegmentPool};
use shardflow_netstack::{
    ChannelReceiver, ChannelSender, CheckpointBarrier, CreditLedger, Event, GateItem, InputBuffer, InputGate,
    ResultPartition,
};

use crate::error::OperatorError;
use crate::runtime::build::BuildContext;
use crate::runtime::clock;
use crate::runtime::collector::{named, Failure, Lifecycle, SinkOutput, TaskInfo};
use crate::runtime::control::{ControlLane, TaskControl};
use crate::runtime::output::{Output, Partition};
use crate::runtime::progress::ChannelProgress;
use crate::runtime::scheduler::{yield_now, Scheduler};
use crate::runtime::sources::{SourceDriver, SourceStatus};
use crate::runtime::state::OperatorSnapshot;
use crate::runtime::vertex::{InputEntry, VertexBody};
use crate::runtime::IdlePolicy;
use crate::runtime::JobPlan;

mod counters;
mod stop;

use counters::Waiting;
pub(crate) use counters::{TaskCounters, Wait};
pub(crate) use stop::{TaskFailure, TaskStop};

/// Buffers a partition may hold beyond what credits let out before the task
/// stops taking input.
pub(crate) const OVERDRAFT: usize = 4;

/// Everything a shard needs to run one subtask (a task deployment descriptor).
/// `Send`: built by the worker, moved to the shard, turned into `!Send`
/// operators and gates there.
pub(crate) struct TaskDeployment {
    pub(crate) job: JobId,
    pub(crate) attempt: AttemptId,
    pub(crate) info: TaskInfo,
    /// The job's typed plan and this task's vertex in it.
    pub(crate) plan: Arc<JobPlan>,
    pub(crate) vertex: usize,
    /// Input channels per incoming edge, in gate order.
    pub(crate) inputs: Vec<(usize, Vec<ChannelReceiver>)>,
    pub(crate) exclusive_credits: u32,
    pub(crate) floating_credits: u32,
    /// Output channels per outgoing edge, subpartition by subpartition.
    pub(crate) outputs: Vec<(usize, Vec<ChannelSender>)>,
    pub(crate) flush_timeout: Option<Duration>,
    /// The shard's network memory: what the task's outputs write beyond its
    /// reservation is charged here.
    pub(crate) network: Budget,
    pub(crate) idle: IdlePolicy,
    pub(crate) min_park: Duration,
    /// Records produced by the job's sources so far (shared by the job's tasks).
    pub(crate) progress: Arc<AtomicU64>,
    /// This task's record counts, published as it runs.
    pub(crate) counters: Arc<TaskCounters>,
}

/// What a finished task reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskOutput {
    pub(crate) sinks: Vec<SinkOutput>,
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
    /// Where its time went.
    pub(crate) times: TaskTimes,
    /// The operators' state at the end of input, when the job stops with a
    /// snapshot.
    pub(crate) snapshot: Vec<OperatorSnapshot>,
    /// It ended at a stop with a snapshot (not at the end of its input).
    pub(crate) stopped: bool,
    /// A source's position at its end (what it had left), where it keeps one:
    /// part of the snapshot of a job that was stopped.
    pub(crate) position: Option<OperatorSnapshot>,
}

/// The inputs of a task that reads gates: one gate and one entry per edge.
struct Inputs {
    gates: Vec<InputGate>,
    entries: Vec<Box<dyn InputEntry>>,
    /// The first channel of each gate in `progress`'s numbering.
    offsets: Vec<usize>,
    progress: ChannelProgress,
    next_gate: usize,
    /// A buffer being read: its gate, the buffer, where the next record starts.
    current: Option<(usize, InputBuffer, usize)>,
}

enum Body {
    Source { driver: Box<dyn SourceDriver>, idle_until: Option<Instant> },
    Inputs(Box<Inputs>),
}

/// The id of the snapshot a job stopping with a snapshot takes at its end.
const END_SNAPSHOT: u64 = 0;

/// Emits a stop barrier on every partition (nothing follows it but their end);
/// the task's end snapshot and that it stopped, for the task to keep.
fn stop_after(
    partitions: &[Partition],
    barrier: CheckpointBarrier,
) -> Result<(Option<u64>, bool), shardflow_netstack::NetError> {
    partitions.iter().try_for_each(|p| p.borrow_mut().broadcast_event(Event::Barrier(barrier)))?;
    Ok((Some(barrier.checkpoint_id), true))
}

/// What one step did.
enum Step {
    Worked,
    EndOfInput,
}

/// The clock of one step, read at most once: the first look at it (timers, a
/// timed flush, an idle source, arming the timer) reads it; the step's later
/// looks share that reading. A step is short (one chunk, one poll), so they
/// see it at most that much early.
#[derive(Default)]
struct StepClock(Option<Instant>);

impl StepClock {
    #[inline]
    fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// A task being run.
struct Task {
    info: TaskInfo,
    body: Body,
    partitions: Vec<Partition>,
    /// Partitions and bounded sinks: what the task waits on before taking input.
    outputs: Vec<Box<dyn Output>>,
    /// Downstream first (the order they were built).
    lifecycles: Vec<Box<dyn Lifecycle>>,
    /// Operators whose `open` was called: the last `opened` of `lifecycles`
    /// (opened upstream first), and the source, if `source_opened`.
    opened: usize,
    source_opened: bool,
    /// Operators whose `close` was called: the first `closed` of `lifecycles`.
    closed: usize,
    control: ControlLane,
    failure: Failure,
    /// At the end of input the operators snapshot (this id) instead of
    /// finishing: the job stops with a snapshot at its end, or was stopped.
    end_snapshot: Option<u64>,
    /// The stop barrier a source was told to emit, until it does.
    stop: Option<CheckpointBarrier>,
    /// The stop barrier a source emits once it has emitted what it holds.
    draining: Option<CheckpointBarrier>,
    /// A stop barrier came through (from the source itself, or on every input).
    stopped: bool,
    /// The shard's scheduler: time slices and timers.
    sched: Rc<Scheduler>,
    /// The instant the armed timer waits for, and when it was set to fire
    /// (at least `min_park` after it was armed).
    timer: Option<(Instant, Instant)>,
    idle: IdlePolicy,
    min_park: Duration,
    timed_flush: bool,
    records_in: u64,
    counters: Arc<TaskCounters>,
    back_pressure: Waiting,
    input_wait: Waiting,
}

/// Runs one subtask to its end, serving `control`. `on_running` is called once
/// its operators are open. However it ends, every operator opened is closed.
pub(crate) async fn run_task(
    d: TaskDeployment,
    pool: Rc<SegmentPool>,
    sched: Rc<Scheduler>,
    control: ControlLane,
    on_running: impl FnOnce(),
) -> Result<TaskOutput, TaskStop> {
    let mut task = Task::build(d, &pool, sched, control)?;
    let run = AssertUnwindSafe(task.run(on_running)).catch_unwind().await;
    let stop = match run {
        Ok(Ok(output)) => return Ok(output),
        Ok(Err(stop)) => stop,
        Err(panic) => TaskStop::Failed(TaskFailure::panicked(&*panic)),
    };
    // Before the partitions go: the consumers learn why (the root cause, or
    // the cancel and its reason) instead of a producer that merely went away.
    if let Some(end) = stop.producer_end() {
        for p in &task.partitions {
            p.borrow().end(&end);
        }
    }
    task.close_after(&stop);
    task.counters.ended(clock::now_us());
    Err(stop)
}

impl Task {
    fn build(
        mut d: TaskDeployment,
        pool: &Rc<SegmentPool>,
        sched: Rc<Scheduler>,
        control: ControlLane,
    ) -> Result<Task, TaskFailure> {
        let mut partitions = std::collections::HashMap::new();
        let mut ordered = Vec::new();
        for (edge, senders) in d.outputs.drain(..) {
            let mut p = ResultPartition::new(pool.clone(), senders, OVERDRAFT);
            p.set_flush_timeout(d.flush_timeout);
            p.charge_overdraft_to(d.network.clone());
            p.spill_to(d.info.managed_memory.clone());
            let p: Partition = Rc::new(std::cell::RefCell::new(p));
            partitions.insert(edge, p.clone());
            ordered.push(p);
        }
        let failure = Failure::default();
        let mut ctx = BuildContext {
            task: &d.info,
            partitions,
            failure: failure.clone(),
            lifecycles: Vec::new(),
            outputs: Vec::new(),
            restore: d.plan.restore.clone(),
            progress: d.progress.clone(),
        };
        let plan = d
            .plan
            .vertices
            .get(d.vertex)
            .ok_or_else(|| TaskFailure::new(format!("the job has no vertex {}", d.vertex)))?;
        let edges: Vec<usize> = d.inputs.iter().map(|(e, _)| *e).collect();
        let body = match plan.build(&mut ctx, &edges)? {
            VertexBody::Source(driver) => Body::Source { driver, idle_until: None },
            VertexBody::Inputs(entries) => {
                let (mut gates, mut offsets, mut channels) = (Vec::new(), Vec::new(), 0);
                for (_, receivers) in d.inputs.drain(..) {
                    offsets.push(channels);
                    channels += receivers.len();
                    let ledger = CreditLedger::new(receivers.len(), d.exclusive_credits, d.floating_credits);
                    gates.push(InputGate::new(receivers, ledger));
                }
                Body::Inputs(Box::new(Inputs {
                    gates,
                    entries,
                    offsets,
                    progress: ChannelProgress::new(channels),
                    next_gate: 0,
                    current: None,
                }))
            }
        };
        let BuildContext { lifecycles, outputs: extra, .. } = ctx;
        let mut outputs: Vec<Box<dyn Output>> =
            ordered.iter().map(|p| Box::new(p.clone()) as Box<dyn Output>).collect();
        outputs.extend(extra);
        Ok(Task {
            info: d.info,
            body,
            partitions: ordered,
            outputs,
            lifecycles,
            opened: 0,
            source_opened: false,
            closed: 0,
            control,
            failure,
            end_snapshot: d.plan.snapshot_at_end.then_some(END_SNAPSHOT),
            stop: None,
            draining: None,
            stopped: false,
            sched,
            timer: None,
            idle: d.idle,
            min_park: d.min_park,
            timed_flush: d.flush_timeout.is_some(),
            records_in: 0,
            counters: d.counters,
            back_pressure: Waiting::on(Wait::Output),
            input_wait: Waiting::on(Wait::Input),
        })
    }

    /// Opens the operators, runs the loop to the end of input and ends.
    async fn run(&mut self, on_running: impl FnOnce()) -> Result<TaskOutput, TaskStop> {
        self.counters.began(clock::now_us());
        for k in (0..self.lifecycles.len()).rev() {
            self.opened += 1;
            let l = &mut self.lifecycles[k];
            l.open(&self.info).map_err(|e| named(l.name(), e))?;
        }
        if let Body::Source { driver, .. } = &mut self.body {
            self.source_opened = true;
            driver.open(&self.info).map_err(|e| named(&self.info.vertex, e))?;
        }
        on_running();
        while let Step::Worked = poll_fn(|cx| self.poll_step(cx)).await? {
            let (records_in, records_out) = self.counts();
            self.counters.publish(records_in, records_out);
            if self.sched.should_yield() {
                yield_now().await;
            }
        }
        self.end().await
    }

    /// After a cancel, a failure or a panic: closes every operator opened and
    /// not closed yet, so each releases what it acquired. What a close returns
    /// or raises then is logged; the task's own cause stands.
    fn close_after(&mut self, stop: &TaskStop) {
        let vertex = &self.info.vertex;
        let subtask = self.info.subtask;
        let log = |operator: &str, outcome: std::thread::Result<Result<(), OperatorError>>| {
            let problem = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("panicked: {}", shardflow_control::panic_message(&*panic)),
            };
            tracing::warn!(%vertex, subtask, operator, "closing after the task {stop}: {problem}");
        };
        if std::mem::take(&mut self.source_opened) {
            if let Body::Source { driver, .. } = &mut self.body {
                log(vertex, catch_unwind(AssertUnwindSafe(|| driver.close())));
            }
        }
        let n = self.lifecycles.len();
        let why = stop.to_string();
        for l in &mut self.lifecycles[..n - self.opened] {
            l.stopped_unopened(&why);
        }
        for k in self.closed.max(n - self.opened)..n {
            let l = &mut self.lifecycles[k];
            let outcome = catch_unwind(AssertUnwindSafe(|| l.close_after_stop(&why)));
            log(l.name(), outcome);
        }
        self.closed = n;
    }

    /// Serves the control lane: `Err` once the task is to stop.
    #[inline]
    fn serve_control(&mut self, cx: &mut Context<'_>) -> Result<(), TaskStop> {
        loop {
            match self.control.poll_next(cx) {
                Some(TaskControl::Cancel(why)) => return Err(TaskStop::Canceled(why)),
                // Only a source stops by itself; the rest of the job follows its barrier.
                Some(TaskControl::Stop(barrier)) if matches!(self.body, Body::Source { .. }) => {
                    self.stop = Some(barrier)
                }
                Some(TaskControl::Stop(_)) => {}
                None => return Ok(()),
            }
        }
    }

    fn check_failure(&self) -> Result<(), TaskFailure> {
        match self.failure.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.lifecycles.iter().filter_map(|l| l.next_timer()).min()
    }

    /// Sends what waits on every output; `Ready(true)` if one is still overdrawn.
    fn poll_outputs(&mut self, cx: &mut Context<'_>) -> Result<bool, TaskStop> {
        let mut blocked = false;
        for o in &mut self.outputs {
            if o.is_idle() {
                continue;
            }
            match o.poll_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => blocked |= o.overdrawn(),
            }
        }
        Ok(blocked)
    }

    /// Arms the task's timer for the earliest of `wake_at` and its operators'
    /// timers. A parking shard coalesces waits to at least `min_park`; a
    /// spinning one polls its timers while it spins, so it waits exactly.
    fn arm_timer(&mut self, cx: &mut Context<'_>, wake_at: Option<Instant>, clock: &mut StepClock) {
        let due = match (self.next_timer(), wake_at) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(d) => d,
                None => return,
            },
        };
        let now = clock.now();
        // A timer armed for another instant, or one that has fired, is armed anew
        // (one for an earlier instant fires later and wakes the task for nothing).
        if self.timer.is_none_or(|(at, fire)| at != due || fire <= now) {
            let floor = if self.idle == IdlePolicy::Spin { Duration::ZERO } else { self.min_park };
            let fire = due.max(now + floor);
            self.sched.wake_at(fire, cx.waker());
            self.timer = Some((due, fire));
        }
    }

    /// One step of work, or `Pending` with every waker registered.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Step, TaskStop>> {
        match self.try_step(cx) {
            Ok(Some(step)) => Poll::Ready(Ok(step)),
            Ok(None) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn try_step(&mut self, cx: &mut Context<'_>) -> Result<Option<Step>, TaskStop> {
        // Woken: whatever this step finds, its wait for it has ended (by the
        // round's clock, which its timers or an earlier task may have read).
        let sched = &self.sched;
        self.input_wait.note(false, || sched.round_now(), &self.counters);
        self.serve_control(cx)?;
        self.check_failure()?;
        let mut clock = StepClock::default();
        if let Some(due) = self.next_timer() {
            let now = clock.now();
            if due <= now {
                for l in &mut self.lifecycles {
                    l.fire_timers(now)?;
                }
                return Ok(Some(Step::Worked));
            }
        }
        if self.timed_flush {
            for p in &self.partitions {
                let mut p = p.borrow_mut();
                if p.awaits_flush() {
                    p.flush_if_due(clock.now());
                }
            }
        }
        let blocked = self.poll_outputs(cx)?;
        self.back_pressure.note(blocked, || clock.now(), &self.counters);
        if blocked {
            self.arm_timer(cx, None, &mut clock);
            return Ok(None);
        }
        let mut wake_at = None;
        match &mut self.body {
            Body::Source { driver, idle_until } => {
                if let Some(barrier) = self.stop.take() {
                    // A source holding records it took in (an ingress) emits them first.
                    if driver.stop().map_err(|e| named(&self.info.vertex, e))? {
                        self.draining = Some(barrier);
                    } else {
                        (self.end_snapshot, self.stopped) = stop_after(&self.partitions, barrier)?;
                        return Ok(Some(Step::EndOfInput));
                    }
                }
                if idle_until.is_some_and(|t| t > clock.now()) {
                    wake_at = *idle_until;
                } else {
                    *idle_until = None;
                    match driver.poll(cx)? {
                        SourceStatus::Emitted => return Ok(Some(Step::Worked)),
                        SourceStatus::Finished => {
                            if let Some(barrier) = self.draining.take() {
                                (self.end_snapshot, self.stopped) = stop_after(&self.partitions, barrier)?;
                            }
                            return Ok(Some(Step::EndOfInput));
                        }
                        SourceStatus::Pending => {}
                        SourceStatus::IdleUntil(t) => {
                            *idle_until = Some(t);
                            wake_at = Some(t);
                        }
                    }
                }
            }
            Body::Inputs(inputs) => {
                if let Some((gate, buffer, cursor)) = &mut inputs.current {
                    if inputs.entries[*gate].feed(buffer, cursor)? {
                        inputs.current = None;
                    }
                    return Ok(Some(Step::Worked));
                }
                let n = inputs.gates.len();
                let mut live = false;
                let mut found = None;
                // With several gates, look at all of them before registering a
                // waker on any: an empty side is not a reason to wait.
                let passes: &[bool] = if n > 1 { &[false, true] } else { &[true] };
                'passes: for &register in passes {
                    for k in 0..n {
                        let g = (inputs.next_gate + k) % n;
                        if inputs.gates[g].is_finished() {
                            continue;
                        }
                        live = true;
                        let item = if register {
                            match inputs.gates[g].poll_next(cx) {
                                Poll::Pending => None,
                                Poll::Ready(r) => r?,
                            }
                        } else {
                            inputs.gates[g].try_next()?
                        };
                        if let Some(item) = item {
                            found = Some((g, item));
                            break 'passes;
                        }
                    }
                }
                if let Some((g, (channel, item))) = found {
                    inputs.next_gate = g + 1;
                    match item {
                        GateItem::Data(buffer) => {
                            // Counted before any of its records reaches an operator.
                            self.records_in += buffer.records() as u64;
                            self.counters.publish_in(self.records_in);
                            inputs.current = Some((g, buffer, 0));
                        }
                        GateItem::Event(event) => {
                            let at = inputs.offsets[g] + channel;
                            let (watermark, barrier) = inputs.progress.on_event(at, event);
                            // Every input brought the stop barrier: its producers have stopped.
                            if let Some(b) = barrier.filter(|b| b.stop) {
                                self.end_snapshot = Some(b.checkpoint_id);
                                self.stopped = true;
                            }
                            for p in &self.partitions {
                                let mut p = p.borrow_mut();
                                if let Some(w) = watermark {
                                    p.broadcast_event(Event::Watermark(w))?;
                                }
                                if let Some(b) = barrier {
                                    p.broadcast_event(Event::Barrier(b))?;
                                }
                            }
                        }
                    }
                    return Ok(Some(Step::Worked));
                }
                if !live {
                    return Ok(Some(Step::EndOfInput));
                }
            }
        }
        // Nothing to do: the input is drained, so partial buffers leave now.
        for p in &self.partitions {
            p.borrow_mut().flush();
        }
        self.poll_outputs(cx)?;
        self.arm_timer(cx, wake_at, &mut clock);
        self.input_wait.note(true, || clock.now(), &self.counters);
        Ok(None)
    }

    /// Waits until no output is overdrawn (`all`: until every output is idle).
    async fn drain_outputs(&mut self, all: bool) -> Result<(), TaskStop> {
        poll_fn(|cx| {
            if let Err(stop) = self.serve_control(cx) {
                return Poll::Ready(Err(stop));
            }
            let blocked = match self.poll_outputs(cx) {
                Ok(b) => b,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let waiting = if all { self.outputs.iter().any(|o| !o.is_idle()) } else { blocked };
            // At the end too the task waits on its consumers: back-pressure.
            self.back_pressure.note(waiting, Instant::now, &self.counters);
            if waiting {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        })
        .await
    }

    /// End of input: finish (or snapshot) the operators, end the partitions, wait
    /// until everything has left, close.
    async fn end(&mut self) -> Result<TaskOutput, TaskStop> {
        let mut snapshot = Vec::new();
        let position = match &mut self.body {
            Body::Source { driver, .. } => driver.position(&self.info).map_err(|e| named(&self.info.vertex, e))?,
            Body::Inputs(_) => None,
        };
        if let Some(id) = self.end_snapshot {
            let taken: Result<(), OperatorError> = self.lifecycles.iter_mut().try_for_each(|l| {
                snapshot.extend(l.snapshot(id).map_err(|e| named(l.name(), e))?);
                Ok(())
            });
            for l in &mut self.lifecycles {
                match &taken {
                    Ok(()) => l.notify_checkpoint_complete(id),
                    Err(_) => l.notify_checkpoint_aborted(id),
                }
            }
            taken?;
        } else {
            // Upstream first, so what one emits reaches the next before it finishes.
            for k in (0..self.lifecycles.len()).rev() {
                loop {
                    let l = &mut self.lifecycles[k];
                    let done = l.finish().map_err(|e| named(l.name(), e))?;
                    self.check_failure()?;
                    self.drain_outputs(false).await?;
                    if done {
                        break;
                    }
                }
            }
        }
        for o in &mut self.outputs {
            o.finish()?;
        }
        self.drain_outputs(true).await?;
        self.check_failure()?;
        if std::mem::take(&mut self.source_opened) {
            if let Body::Source { driver, .. } = &mut self.body {
                driver.close().map_err(|e| named(&self.info.vertex, e))?;
            }
        }
        let mut sinks = Vec::new();
        for l in &mut self.lifecycles {
            self.closed += 1;
            let out = l.close().map_err(|e| named(l.name(), e))?;
            if out != SinkOutput::None {
                sinks.push(out);
            }
        }
        let (records_in, records_out) = self.counts();
        self.counters.publish(records_in, records_out);
        self.counters.ended(clock::now_us());
        let times = self.counters.read().times;
        Ok(TaskOutput { sinks, records_in, records_out, times, snapshot, stopped: self.stopped, position })
    }

    /// Records into the chain head (a source's: produced) and out of the chain
    /// so far.
    fn counts(&self) -> (u64, u64) {
        let records_in = match &self.body {
            Body::Source { driver, .. } => driver.produced(),
            Body::Inputs(_) => self.records_in,
        };
        let records_out = self.partitions.iter().map(|p| p.borrow().records_out()).sum();
        (records_in, records_out)
    }
}
