//! Shards: one glommio executor pinned to one core, owning a segment pool and the
//! tasks deployed into its slots. The tasks run on the shard's own scheduler
//! (`runtime::scheduler`), inside the executor's one task.
//!
//! A shard is started from a `Send` description ([`ShardSpec`]); its pool, tasks and
//! gates are created on its own thread and never leave it. Its worker talks to
//! it through a mailbox ([`ShardCommand`]) and hears back through task reports.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use std::sync::Arc;

use futures_lite::FutureExt;
use glommio::{LocalExecutorBuilder, Placement};
use shardflow_control::{AttemptId, ExecutionState, JobId};
use shardflow_memory::{Budget, BudgetKind, MemoryError, PoolMonitor, SegmentPool, SegmentPoolBuilder};
use shardflow_netstack::CheckpointBarrier;

use crate::config::{EngineConfig, IdlePolicy};
use crate::error::EngineError;
use crate::mailbox::{mailbox, Mailbox, MailboxSender};
use crate::runtime::control::{ControlLane, TaskControl};
use crate::runtime::host::{host_here, unhost_here};
use crate::runtime::scheduler::Scheduler;
use crate::runtime::task::{run_task, TaskDeployment, TaskFailure, TaskOutput, TaskStop};

/// Commands a shard executes.
pub(crate) enum ShardCommand {
    /// Run these subtasks (all of one job on this shard, so they start together).
    Deploy(Vec<TaskDeployment>),
    /// Cancel every task of the job on this shard, telling them why.
    Cancel(JobId, String),
    /// Cancel one attempt of the job, telling it why.
    CancelAttempt(JobId, AttemptId, String),
    /// Stop one source attempt of the job after this barrier, with a snapshot.
    StopAttempt(JobId, AttemptId, CheckpointBarrier),
    /// Cancel everything and stop.
    Shutdown,
    /// Stop, failing every task with this cause (its host dropped a hosted
    /// shard under running jobs).
    Abandon(String),
}

impl std::fmt::Debug for ShardCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardCommand::Deploy(ds) => write!(f, "Deploy({} tasks)", ds.len()),
            ShardCommand::Cancel(job, why) => write!(f, "Cancel({job}: {why})"),
            ShardCommand::CancelAttempt(job, attempt, why) => write!(f, "CancelAttempt({job}, {attempt}: {why})"),
            ShardCommand::StopAttempt(job, attempt, b) => {
                write!(f, "StopAttempt({job}, {attempt}, checkpoint {})", b.checkpoint_id)
            }
            ShardCommand::Shutdown => f.write_str("Shutdown"),
            ShardCommand::Abandon(why) => write!(f, "Abandon({why})"),
        }
    }
}

/// A task's state change, as a shard reports it.
pub(crate) struct TaskReport {
    pub(crate) job: JobId,
    pub(crate) attempt: AttemptId,
    pub(crate) state: ExecutionState,
    pub(crate) failure: Option<TaskFailure>,
    pub(crate) output: Option<TaskOutput>,
}

/// Where a shard's task reports go (its worker).
pub(crate) type ReportSink = Arc<dyn Fn(TaskReport) + Send + Sync>;

/// What a shard is started with. `Send`.
pub(crate) struct ShardSpec {
    pub(crate) id: u32,
    pub(crate) core: usize,
    pub(crate) segment_bytes: usize,
    pub(crate) segments: usize,
    pub(crate) prefault: bool,
    pub(crate) idle: IdlePolicy,
}

impl ShardSpec {
    /// The shard's segment pool, mapped on the calling thread (the shard's).
    fn pool(&self) -> Result<SegmentPool, MemoryError> {
        SegmentPoolBuilder::new(self.id, self.segments)
            .segment_bytes(self.segment_bytes)
            .populate(self.prefault)
            .build()
    }
}

/// Starts one shard per configured core, each reporting to `reports`; with
/// `host`, shard 0 is hosted by the calling thread (returned, not started). On
/// error the shards started so far stop.
pub(crate) fn start_shards(
    config: &EngineConfig,
    reports: ReportSink,
    host: bool,
) -> Result<(Vec<ShardHandle>, Option<HostedShard>), EngineError> {
    let cores = config.cores.resolve()?;
    ensure_locked_memory(cores.len())?;
    if spin_takes_every_core(config.idle, &cores, &crate::config::online_cores(), host) {
        tracing::warn!(
            ?cores,
            "a spinning shard on every core: the process's other threads (one pushing into an ingress or \
             reading an egress, the worker's) get a core only when the kernel preempts a shard, up to its \
             tick (~4 ms) per wake; leave them a core, or host shard 0 on the service's thread"
        );
    }
    let segments = config.network_memory_bytes / config.segment_bytes;
    let mut handles = Vec::with_capacity(cores.len());
    let mut hosted = None;
    for (i, &core) in cores.iter().enumerate() {
        let spec = ShardSpec {
            id: i as u32,
            core,
            segment_bytes: config.segment_bytes,
            segments,
            prefault: config.prefault,
            idle: config.idle,
        };
        if host && i == 0 {
            let (handle, shard) = HostedShard::new(spec, reports.clone())?;
            handles.push(handle);
            hosted = Some(shard);
        } else {
            handles.push(ShardHandle::start(spec, reports.clone())?);
        }
    }
    Ok((handles, hosted))
}

/// Whether shards that spin (`idle`) on `cores` leave none of the process's
/// `online` cores to its other threads. A hosted shard's host is the thread
/// that waits on it: it runs the shard itself.
fn spin_takes_every_core(idle: IdlePolicy, cores: &[usize], online: &[usize], host: bool) -> bool {
    idle == IdlePolicy::Spin && !host && online.iter().all(|c| cores.contains(c))
}

/// Locked memory a shard's reactor takes: glommio refuses to start below 512 KiB
/// of `RLIMIT_MEMLOCK`, and registers the shard's 1 MiB of I/O memory as locked.
const LOCKED_BYTES_PER_SHARD: u64 = (1 << 20) + (256 << 10);

/// What to do about the locked-memory limit before starting `shards` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockedMemoryPlan {
    /// The soft limit suffices.
    Enough,
    /// Raise the soft limit to the hard one (any process may).
    RaiseSoft(u64),
    /// Raise both (only a privileged process may).
    RaiseBoth(u64),
}

fn locked_memory_plan(soft: u64, hard: u64, needed: u64) -> LockedMemoryPlan {
    if soft >= needed {
        LockedMemoryPlan::Enough
    } else if hard >= needed {
        LockedMemoryPlan::RaiseSoft(hard)
    } else {
        LockedMemoryPlan::RaiseBoth(needed)
    }
}

/// Raises the soft locked-memory limit (`ulimit -l`) where the hard limit
/// allows, so shards start under a common default of 64 KiB; where it does not,
/// says in one line what to run.
fn ensure_locked_memory(shards: usize) -> Result<(), EngineError> {
    use rlimit::Resource;
    let needed = (shards as u64).saturating_mul(LOCKED_BYTES_PER_SHARD).max(512 << 10);
    let Ok((soft, hard)) = Resource::MEMLOCK.get() else { return Ok(()) };
    let raised = match locked_memory_plan(soft, hard, needed) {
        LockedMemoryPlan::Enough => return Ok(()),
        LockedMemoryPlan::RaiseSoft(to) => Resource::MEMLOCK.set(to, hard).map(|()| to),
        LockedMemoryPlan::RaiseBoth(to) => Resource::MEMLOCK.set(to, to).map(|()| to),
    };
    match raised {
        Ok(to) => {
            tracing::info!(
                "raised the locked-memory limit from {} to {} KiB for {shards} shards",
                soft >> 10,
                to >> 10
            );
            Ok(())
        }
        Err(_) => Err(EngineError::LockedMemoryLimit { soft, hard, needed, shards }),
    }
}

/// The worker's handle on a running shard.
pub(crate) struct ShardHandle {
    pub(crate) id: u32,
    pub(crate) core: usize,
    /// The thread that runs it (its host's, for a hosted shard), for its CPU
    /// time ([`crate::cpu::thread_cpu_time`]).
    pub(crate) thread_id: i32,
    pub(crate) mailbox: MailboxSender<ShardCommand>,
    pub(crate) pool: PoolMonitor,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ShardHandle {
    /// Starts the shard's thread and waits until its pool is mapped.
    pub(crate) fn start(spec: ShardSpec, reports: ReportSink) -> Result<Self, EngineError> {
        let (tx, rx) = mailbox::<ShardCommand>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (id, core) = (spec.id, spec.core);
        let start_err = |reason: String| EngineError::ShardStart { shard: id, core, reason };
        let idle = spec.idle;
        let builder = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("shard-{id}"))
            .io_memory(1 << 20)
            // glommio's preempt timer stays at its default (100 ms): shorter ones
            // hang its reactor on this kernel (a sleeping executor misses wake-ups
            // once timers and foreign wakes mix; reproduced outside shardflow).
            .ring_depth(64);
        let thread = builder
            .spawn(move || async move {
                let pool = match spec.pool() {
                    Ok(p) => Rc::new(p),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((pool.monitor(), crate::cpu::current_thread_id())));
                // The shard's tasks run on its own scheduler (see
                // `runtime::scheduler`): glommio hosts the thread.
                let sched = Rc::new(Scheduler::new(idle));
                sched.block_on(shard_loop(pool, sched.clone(), rx, reports));
                sched.drop_tasks();
            })
            .map_err(|e| start_err(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok((pool, thread_id))) => {
                Ok(ShardHandle { id, core, thread_id, mailbox: tx, pool, thread: Some(thread) })
            }
            Ok(Err(e)) => Err(start_err(e.to_string())),
            Err(_) => {
                let reason = match thread.join() {
                    Err(e) => e.to_string(),
                    Ok(()) => "the shard thread exited during start-up".into(),
                };
                Err(start_err(reason))
            }
        }
    }

    /// A budget for the network memory of this shard's pool.
    pub(crate) fn network_budget(&self) -> Budget {
        Budget::new(BudgetKind::NetworkBuffers, (self.pool.segments() * self.pool.segment_bytes()) as u64)
    }

    /// Asks the shard to stop and waits for its thread (a hosted shard stops
    /// when its host next runs it).
    pub(crate) fn stop(&mut self) {
        let _ = self.mailbox.send(ShardCommand::Shutdown);
        if let Some(t) = self.thread.take() {
            if let Err(e) = t.join() {
                tracing::error!(shard = self.id, "shard thread ended abnormally: {e}");
            }
        }
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A shard-local value that can be waited on until it satisfies a condition
/// (the count of live tasks).
#[derive(Clone, Default)]
struct LocalWatch<T>(Rc<RefCell<(T, Option<Waker>)>>);

impl<T> LocalWatch<T> {
    /// Changes the value and wakes the waiter, if any.
    fn update(&self, f: impl FnOnce(&mut T)) {
        let mut s = self.0.borrow_mut();
        f(&mut s.0);
        if let Some(w) = s.1.take() {
            w.wake();
        }
    }

    /// Waits until `done` holds for the value.
    async fn until(&self, done: impl Fn(&T) -> bool) {
        poll_fn(|cx| {
            let mut s = self.0.borrow_mut();
            if done(&s.0) {
                Poll::Ready(())
            } else {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// How many tasks the shard runs, so shutdown can wait for the last one.
type Live = LocalWatch<usize>;

/// Why the shard was abandoned, if it was.
type Abandoned = Rc<RefCell<Option<String>>>;

/// The control lane of every running task, by job.
type Tasks = Rc<RefCell<HashMap<JobId, Vec<(AttemptId, ControlLane)>>>>;

/// Posts `message` to the task of `attempt` of `job`, if it runs here.
fn post_to_attempt(
    tasks: &HashMap<JobId, Vec<(AttemptId, ControlLane)>>,
    job: JobId,
    attempt: AttemptId,
    message: TaskControl,
) {
    let lanes = tasks.get(&job).into_iter().flatten();
    lanes.filter(|(a, _)| *a == attempt).for_each(|(_, lane)| lane.post(message.clone()));
}

async fn shard_loop(pool: Rc<SegmentPool>, sched: Rc<Scheduler>, commands: Mailbox<ShardCommand>, reports: ReportSink) {
    let tasks: Tasks = Rc::default();
    let live = Live::default();
    // Why the shard is abandoned, once it is: its cancelled tasks report FAILED.
    let abandoned: Abandoned = Rc::default();
    while let Some(cmd) = commands.recv().await {
        match cmd {
            ShardCommand::Deploy(deployments) => {
                for d in deployments {
                    let lane = ControlLane::default();
                    tasks.borrow_mut().entry(d.job).or_default().push((d.attempt, lane.clone()));
                    live.update(|n| *n += 1);
                    let (live, tasks, reports, pool) = (live.clone(), tasks.clone(), reports.clone(), pool.clone());
                    let (task_sched, abandoned) = (sched.clone(), abandoned.clone());
                    sched.spawn(async move {
                        supervise(d, pool, task_sched, lane, tasks, reports, abandoned).await;
                        live.update(|n| *n -= 1);
                    });
                }
            }
            ShardCommand::Cancel(job, why) => {
                let why: Rc<str> = why.into();
                for (_, lane) in tasks.borrow_mut().remove(&job).unwrap_or_default() {
                    lane.post(TaskControl::Cancel(why.clone()));
                }
            }
            ShardCommand::CancelAttempt(job, attempt, why) => {
                post_to_attempt(&tasks.borrow(), job, attempt, TaskControl::Cancel(why.into()));
            }
            ShardCommand::StopAttempt(job, attempt, barrier) => {
                post_to_attempt(&tasks.borrow(), job, attempt, TaskControl::Stop(barrier));
            }
            ShardCommand::Shutdown => break,
            ShardCommand::Abandon(why) => {
                *abandoned.borrow_mut() = Some(why);
                break;
            }
        }
    }
    let all: Vec<ControlLane> = tasks.borrow_mut().drain().flat_map(|(_, v)| v).map(|(_, lane)| lane).collect();
    let why: Rc<str> = "its shard stops".into();
    for lane in all {
        lane.post(TaskControl::Cancel(why.clone()));
    }
    live.until(|n| *n == 0).await;
}

/// A shard run by its host's thread: the host owns its loop and runs the
/// shard's tasks when it calls [`HostedShard::step`],
/// [`HostedShard::step_or_park`] or [`HostedShard::block_on`] (timely's
/// `Worker::step`). Made by [`crate::EngineBuilder::build_hosted`] on the
/// calling thread, which it pins to the shard's core; `!Send`. It is shard 0 of
/// its engine: it offers slots, takes deployments and reports like any other,
/// but nothing of it runs between the host's calls, so a job with a subtask on
/// it makes progress only while the host steps. The engine's blocking calls
/// made on the host's thread run the shard while they wait
/// ([`crate::JobHandle::wait`], [`crate::EgressHandle::recv`],
/// [`crate::IngressHandle::push`] and their timed forms, so
/// [`crate::Engine::run`] too), unless made inside one of the shard's own
/// tasks (there they block, as on a shard of its own thread); other blocking
/// calls go through [`HostedShard::step_during`]. A thread hosts one shard at
/// a time.
///
/// Its timers are kept to the thread's timer slack (the kernel's default is
/// 50 µs; a shard of its own thread sets 1.5 µs): a host that needs precise
/// timers sets its own (`prctl(PR_SET_TIMERSLACK)`).
///
/// Dropping it stops the tasks it runs, failing them with that cause (their
/// jobs fail, or restart as their restart strategy says), and waits for
/// them to end; jobs placed on it later fail with the shard stopped. Once its engine is gone it stops
/// at the next step ([`HostedShard::is_stopped`]).
pub struct HostedShard {
    id: u32,
    core: usize,
    sched: Rc<Scheduler>,
    stopped: LocalWatch<bool>,
    commands: MailboxSender<ShardCommand>,
}

impl std::fmt::Debug for HostedShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedShard").field("id", &self.id).field("core", &self.core).finish_non_exhaustive()
    }
}

impl HostedShard {
    /// The shard on this thread, and the worker's handle on it.
    fn new(spec: ShardSpec, reports: ReportSink) -> Result<(ShardHandle, HostedShard), EngineError> {
        let (id, core) = (spec.id, spec.core);
        let start_err = |reason: String| EngineError::ShardStart { shard: id, core, reason };
        let sched = Rc::new(Scheduler::hosted(spec.idle));
        if !host_here(&sched) {
            return Err(start_err("this thread hosts a shard already (one per thread)".into()));
        }
        let pool = spec.pool().map_err(|e| {
            unhost_here();
            start_err(e.to_string())
        })?;
        let pool = Rc::new(pool);
        let monitor = pool.monitor();
        let (tx, rx) = mailbox::<ShardCommand>();
        let stopped = LocalWatch::<bool>::default();
        let (s, done) = (sched.clone(), stopped.clone());
        sched.spawn(async move {
            shard_loop(pool, s, rx, reports).await;
            done.update(|d| *d = true);
        });
        let thread_id = crate::cpu::current_thread_id();
        let handle = ShardHandle { id, core, thread_id, mailbox: tx.clone(), pool: monitor, thread: None };
        Ok((handle, HostedShard { id, core, sched, stopped, commands: tx }))
    }

    /// Its index among its engine's shards (0).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The core it runs on: the host thread's.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Runs what is ready now: timers due, tasks woken (each for at most its
    /// time slice). Whether there was anything to do; never waits.
    pub fn step(&mut self) -> bool {
        self.sched.step()
    }

    /// [`HostedShard::step`]; with nothing to do, parks the thread until a
    /// task is woken, a timer is due or `timeout` passes (`None`: no limit).
    /// Whether there was anything to do.
    pub fn step_or_park(&mut self, timeout: Option<Duration>) -> bool {
        let worked = self.sched.step();
        if !worked {
            self.sched.park(timeout);
        }
        worked
    }

    /// Runs the shard until `future` is ready, polling it on this thread
    /// between rounds (it is woken like a task: an
    /// [`crate::EgressHandle::recv_async`] returns as soon as a result is
    /// there); idles by the engine's [`crate::IdlePolicy`].
    pub fn block_on<F: Future>(&mut self, future: F) -> F::Output {
        self.sched.block_on(future)
    }

    /// [`HostedShard::block_on`] for at most `timeout`: `None` if `future` was
    /// not ready by then (it is dropped; with a cancel-safe future such as
    /// [`crate::EgressHandle::recv_async`] nothing is lost).
    pub fn block_on_timeout<F: Future>(&mut self, future: F, timeout: Duration) -> Option<F::Output> {
        self.sched.block_on_timeout(future, timeout)
    }

    /// Runs `call` on a helper thread and this shard until it returns: for
    /// the blocking calls of the host's own, or of another library. The
    /// helper runs on the cores the host thread could run on before it was
    /// pinned, not on the shard's core. (The
    /// engine's blocking calls made on the host's thread run the shard while
    /// they wait by themselves: [`crate::JobHandle::wait`],
    /// [`crate::EgressHandle::recv`], [`crate::IngressHandle::push`] and their
    /// timed forms.)
    pub fn step_during<R: Send>(&mut self, call: impl FnOnce() -> R + Send) -> R {
        crate::runtime::host::step_during(&self.sched, call)
    }

    /// Whether it has stopped (its engine shut down, or it was told to).
    pub fn is_stopped(&self) -> bool {
        self.stopped.0.borrow().0
    }
}

impl Drop for HostedShard {
    fn drop(&mut self) {
        let why = format!("shard {} (hosted) was dropped by its host", self.id);
        let _ = self.commands.send(ShardCommand::Abandon(why));
        let stopped = self.stopped.clone();
        self.sched.block_on(stopped.until(|s| *s));
        self.sched.drop_tasks();
        unhost_here();
    }
}

/// Runs one task, reporting INITIALIZING, RUNNING and its terminal state; a panic
/// or error becomes FAILED with its cause, a cancel (posted to `lane`) CANCELED.
async fn supervise(
    d: TaskDeployment,
    pool: Rc<SegmentPool>,
    sched: Rc<Scheduler>,
    lane: ControlLane,
    tasks: Tasks,
    reports: ReportSink,
    abandoned: Abandoned,
) {
    let (job, attempt) = (d.job, d.attempt);
    let report = move |state: ExecutionState, failure: Option<TaskFailure>, output| {
        reports(TaskReport { job, attempt, state, failure, output })
    };
    report(ExecutionState::Initializing, None, None);
    let on_running = {
        let report = report.clone();
        move || report(ExecutionState::Running, None, None)
    };
    // Panics in the task's loop are caught inside it (so its operators are
    // closed); this catches the rest (building the task).
    let run = AssertUnwindSafe(run_task(d, pool, sched, lane, on_running)).catch_unwind();
    // `let` (not `match` on the await) so the task's gates, writers and buffers are
    // dropped, and its segments home, before the terminal state is reported.
    let outcome = run.await;
    match outcome {
        Ok(Err(TaskStop::Canceled(_))) => match abandoned.borrow().clone() {
            None => report(ExecutionState::Canceled, None, None),
            Some(cause) => report(ExecutionState::Failed, Some(TaskFailure::new(cause)), None),
        },
        Ok(Ok(output)) => report(ExecutionState::Finished, None, Some(output)),
        Ok(Err(TaskStop::Failed(failure))) => report(ExecutionState::Failed, Some(failure), None),
        Err(panic) => report(ExecutionState::Failed, Some(TaskFailure::panicked(&*panic)), None),
    }
    let mut tasks = tasks.borrow_mut();
    if let Some(v) = tasks.get_mut(&job) {
        v.retain(|(a, _)| *a != attempt);
        if v.is_empty() {
            tasks.remove(&job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_memory_limit_is_raised_where_it_can_be() {
        use LockedMemoryPlan::*;
        let kib = |n: u64| n << 10;
        assert_eq!(locked_memory_plan(kib(8192), kib(8192), kib(2560)), Enough);
        assert_eq!(locked_memory_plan(kib(64), kib(8192), kib(2560)), RaiseSoft(kib(8192)));
        assert_eq!(locked_memory_plan(kib(64), u64::MAX, kib(2560)), RaiseSoft(u64::MAX));
        assert_eq!(locked_memory_plan(kib(64), kib(64), kib(2560)), RaiseBoth(kib(2560)));
        let e = EngineError::LockedMemoryLimit { soft: kib(64), hard: kib(64), needed: kib(2560), shards: 2 };
        assert_eq!(
            e.to_string(),
            "the locked-memory limit (ulimit -l) is 64 KiB, hard limit 64 KiB, but 2 shards need 2560 KiB: \
             run `ulimit -l 2560` first (as root, or raise memlock in /etc/security/limits.conf)"
        );
    }

    #[test]
    fn spinning_shards_on_every_core_are_told_apart_from_ones_that_leave_a_core() {
        use IdlePolicy::{Park, Spin};
        let online = [0, 1];
        assert!(spin_takes_every_core(Spin, &[0, 1], &online, false), "no core left");
        assert!(!spin_takes_every_core(Spin, &[1], &online, false), "core 0 is left");
        assert!(!spin_takes_every_core(Park, &[0, 1], &online, false), "parked shards sleep");
        assert!(!spin_takes_every_core(Spin, &[0, 1], &online, true), "the service's thread hosts shard 0");
    }
}
