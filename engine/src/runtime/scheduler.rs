//! A shard's scheduler: it polls the shard's futures (its mailbox loop and one
//! per subtask) on the shard's thread, keeps their timers, and parks the thread
//! on a futex when nothing is ready. A shard of its own thread runs it to the
//! end (`block_on` its mailbox loop); a hosted shard is run by its host's
//! thread, a round at a time (`step`, `park`) or around the host's own future
//! (`block_on`): see [`crate::HostedShard`].
//!
//! glommio hosts the shard: it pins the thread to its core and owns the io_uring
//! the remote data plane will drive. But a shard's tasks do no I/O of glommio's:
//! they wait on channels, credits, mailboxes, ingress handles and timers, all of
//! which wake through `std::task::Waker`. Leaving the idle wait to glommio's
//! reactor cost, per sleep, a heavy memory barrier (`membarrier`, an IPI to every
//! core of the process), io_uring timeout set-up and cancel, and an eventfd write
//! per wake-up from another thread: on these VMs about three times a futex park,
//! so a parked shard could afford a timed wake-up only every ~100 µs (P4's
//! median). And a shard that never ran out of work took other threads' wake-ups
//! only when glommio's 100 ms preempt timer fired.
//!
//! Here a wake-up from another thread is a push onto the shard's ready queue
//! and, only if the shard sleeps, one futex wake (`Thread::unpark`); the loop
//! takes the queue on every round, so a busy shard sees another thread's
//! wake-up within one task's time slice (`SLICE`). A wake-up made on the
//! shard's own thread (a task waking another, a host pushing a request) goes
//! onto a queue of the thread's, with no atomic queue and no unpark. Timers
//! are a binary heap the loop reads before it parks.
//!
//! A shard says whether it sleeps, and until when (`ReadyQueue::sleep`): it
//! publishes that before it parks and looks at its queue once more after, and
//! a waker looks at it after its push (both behind a full fence, so one of the
//! two sees the other). A shard that is awake is not unparked: it takes the
//! queue before it sleeps. Nor is one whose own timer wakes it within
//! `TIMER_GRACE`: the unpark would cost the waker a system call, and the woken
//! the timer it armed (cancelled) and a new one at its next park, each ~20 µs
//! of CPU on these VMs in a slow phase (a VM exit programs the timer), while a
//! timed wake-up due soon comes anyway. A shard paced by its timers (P4's
//! sources) then takes the other shards' records on its own rounds.
//!
//! ```text
//!   block_on(f): f woken? poll f ─► step ─► nothing? park (spin: poll on, 1 s)
//!   step:        fire due timers ─► poll what is ready now (the thread's own
//!                wake-ups, then other threads', each in wake order; what those
//!                polls wake waits for the next round)
//!   park:        until a wake-up, the earliest timer (or the host's timeout);
//!                at once if the thread's own queue holds one; a wait shorter
//!                than SPIN_BELOW spins on the clock and the queue instead
//!   wake:        queued already? done : on the shard's thread? push id onto its
//!                own queue : push id onto the shared one, unpark the shard's
//!                thread if it sleeps with no timer due within TIMER_GRACE
//! ```
//!
//! A task is woken at most once until it is polled (`queued`), and cleared just
//! before it is polled, so a wake-up during its poll queues it again: none is lost.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use crate::runtime::IdlePolicy;

/// How long a task runs before it lets the shard's other tasks (its mailbox
/// among them) in.
const SLICE: Duration = Duration::from_millis(1);

/// Under [`IdlePolicy::Spin`], how long an idle shard polls before it parks.
const SPIN_BEFORE_PARK: Duration = Duration::from_secs(1);

/// How late the kernel may wake a parked shard for its timer. 1.5 µs: P4 at
/// p50 ≈ 9.5 µs on ~1.42 cores; 1 µs bought 0.2 µs of median for 0.1 core, 2 µs
/// saved 0.07 core and put the median at 10 µs (`docs/benchmarks.md`).
const TIMER_SLACK: Duration = Duration::from_nanos(1_500);

/// A timed wait shorter than this spins (on the clock and the ready queue)
/// instead of parking: on these VMs arming a kernel timer costs the sleeper
/// 5–20 µs of CPU (the VM exit that programs the timer) and wakes it that late
/// or later, so a shorter park buys nothing and costs more than the spin. P4
/// in a slow-timer phase: 3 µs took p50 from 26.3 to 23.8 µs and CPU by 11%,
/// 6 µs to 22.3 µs and by 16%; 10 µs (P4's own pace per shard) spun for ever,
/// at two full cores (`docs/benchmarks.md`, 2026-12-06).
const SPIN_BELOW: Duration = Duration::from_micros(5);

/// Steps a task takes between two looks at the clock.
const STEPS_PER_CLOCK_READ: u32 = 32;

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// The id of the future [`Scheduler::block_on`] polls: no task's.
const HOST: usize = usize::MAX;

/// A wake-up from another thread leaves a sleeping shard to its own timer if
/// that is due within this (see the module's documentation).
const TIMER_GRACE: Duration = Duration::from_micros(15);

/// What other threads reach: the ready queue, the thread to unpark and whether
/// it sleeps. `Send + Sync`.
struct ReadyQueue {
    ids: SegQueue<usize>,
    thread: Thread,
    /// [`AWAKE`], [`ASLEEP`] (until a wake-up), or the instant its timer wakes
    /// it (nanoseconds since [`EPOCH`], at least 1).
    sleep: AtomicU64,
}

/// [`ReadyQueue::sleep`]: the thread runs (it takes the queue before it parks).
const AWAKE: u64 = 0;
/// [`ReadyQueue::sleep`]: the thread parks with no timer.
const ASLEEP: u64 = u64::MAX;

/// The origin of [`ReadyQueue::sleep`]'s instants.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `at` in nanoseconds since [`EPOCH`], at least 1 (never [`AWAKE`]).
fn since_epoch(at: Instant) -> u64 {
    (at.saturating_duration_since(*EPOCH).as_nanos() as u64).clamp(1, ASLEEP - 1)
}

impl ReadyQueue {
    fn new() -> Self {
        LazyLock::force(&EPOCH);
        ReadyQueue { ids: SegQueue::new(), thread: std::thread::current(), sleep: AtomicU64::new(AWAKE) }
    }

    /// Queues `id` from another thread, and unparks the thread unless it is
    /// awake or its own timer wakes it within [`TIMER_GRACE`].
    fn push_and_wake(&self, id: usize) {
        self.ids.push(id);
        // Pairs with the fence in `Scheduler::park`: the push is seen there,
        // or its `sleep` here.
        fence(Ordering::SeqCst);
        if needs_unpark(self.sleep.load(Ordering::Relaxed), Instant::now) {
            self.thread.unpark();
        }
    }
}

/// Whether a thread whose [`ReadyQueue::sleep`] is `sleep` must be unparked
/// for a wake-up now: it sleeps with no timer, or with one due later than
/// [`TIMER_GRACE`] from now (the clock is read only then).
fn needs_unpark(sleep: u64, now: impl FnOnce() -> Instant) -> bool {
    match sleep {
        AWAKE => false,
        ASLEEP => true,
        until => until > since_epoch(now()).saturating_add(TIMER_GRACE.as_nanos() as u64),
    }
}

/// One task's waker.
struct TaskWaker {
    id: usize,
    /// In the ready queue and not yet polled.
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) && !LocalReady::push(&self.ready, self.id) {
            self.ready.push_and_wake(self.id);
        }
    }
}

/// The wake-ups a scheduler's own thread makes for its tasks (a task waking
/// another, a host's push waking a source): kept on the thread, with no atomic
/// queue and no unpark, as the thread making them is awake. The scheduler
/// created last on a thread owns its queue.
struct LocalReady {
    /// The owner's shared queue: who it is (while this holds it, its address
    /// is no other's), and where what is left goes if another takes over.
    owner: RefCell<std::sync::Weak<ReadyQueue>>,
    ids: RefCell<VecDeque<usize>>,
}

thread_local! {
    static LOCAL_READY: LocalReady =
        const { LocalReady { owner: RefCell::new(std::sync::Weak::new()), ids: RefCell::new(VecDeque::new()) } };
}

impl LocalReady {
    fn owned_by(&self, ready: &Arc<ReadyQueue>) -> bool {
        std::ptr::eq(self.owner.borrow().as_ptr(), Arc::as_ptr(ready))
    }

    /// Queues `id` on this thread if it runs `ready`'s scheduler; whether it did.
    #[inline]
    fn push(ready: &Arc<ReadyQueue>, id: usize) -> bool {
        LOCAL_READY
            .try_with(|local| {
                let mine = local.owned_by(ready);
                if mine {
                    local.ids.borrow_mut().push_back(id);
                }
                mine
            })
            .unwrap_or(false)
    }

    /// `ready`'s scheduler runs on this thread from now on: what another left
    /// queued here goes to its shared queue.
    fn claim(ready: &Arc<ReadyQueue>) {
        LOCAL_READY.with(|local| {
            let left: Vec<usize> = local.ids.borrow_mut().drain(..).collect();
            let previous = local.owner.replace(Arc::downgrade(ready));
            if let Some(previous) = previous.upgrade() {
                // Its thread is this one, awake: the token only makes its next
                // park look at the shared queue first.
                left.into_iter().for_each(|id| previous.ids.push(id));
                previous.thread.unpark();
            }
        });
    }

    /// `ready`'s scheduler is gone: its queue here goes with it.
    fn release(ready: &Arc<ReadyQueue>) {
        let _ = LOCAL_READY.try_with(|local| {
            if local.owned_by(ready) {
                local.owner.replace(std::sync::Weak::new());
                local.ids.borrow_mut().clear();
            }
        });
    }

    /// How many are queued here for `ready`'s scheduler.
    fn len(ready: &Arc<ReadyQueue>) -> usize {
        LOCAL_READY.with(|local| if local.owned_by(ready) { local.ids.borrow().len() } else { 0 })
    }

    fn pop() -> Option<usize> {
        LOCAL_READY.with(|local| local.ids.borrow_mut().pop_front())
    }
}

struct Slot {
    /// `None` while it is being polled.
    future: Option<LocalFuture>,
    task: Arc<TaskWaker>,
    /// `task` as a `Waker`, made once: a poll clones the `Rc`, not the `Arc`.
    waker: Rc<Waker>,
}

/// A timer: wake `waker` at `at`. Ordered by `at` alone: the timers due by a
/// round all fire in it, in whatever order.
struct Deadline {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.at.cmp(&other.at)
    }
}

/// The scheduler of the shard whose thread creates it. `!Send`: shared by the
/// shard's tasks as `Rc<Scheduler>`.
pub(crate) struct Scheduler {
    idle: IdlePolicy,
    ready: Arc<ReadyQueue>,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    timers: RefCell<BinaryHeap<Reverse<Deadline>>>,
    /// When the round polling the current task began, as first read in the
    /// round (by its due timers, a task ending a wait by
    /// [`Scheduler::round_now`], or the first [`Scheduler::should_yield`] that
    /// reads the clock): time slices count from there, and a round with no
    /// timers and short polls reads no clock. And the task's steps since it
    /// was polled.
    slice_started: Cell<Option<Instant>>,
    steps: Cell<u32>,
    /// A task is being polled (a blocking call made inside one must not run
    /// the shard again: see `host::hosted_here`).
    polling: Cell<bool>,
    /// Wakers of `block_on` futures, kept for the next call (a host waiting
    /// for each answer would otherwise allocate one per answer); one per
    /// nesting level.
    host_wakers: RefCell<Vec<Arc<TaskWaker>>>,
}

impl Scheduler {
    /// A scheduler for the calling thread, a shard's own. Under
    /// [`IdlePolicy::Park`] it sets the thread's timer slack to [`TIMER_SLACK`]:
    /// the kernel's default (50 µs) would let a parked shard's timed wake-up run
    /// up to 50 µs late.
    pub(crate) fn new(idle: IdlePolicy) -> Scheduler {
        if idle == IdlePolicy::Park {
            let slack = std::num::NonZeroU64::new(TIMER_SLACK.as_nanos() as u64);
            if let Err(e) = rustix::thread::set_current_timer_slack(slack) {
                tracing::debug!("timer slack stays at the kernel's default: {e}");
            }
        }
        Scheduler::hosted(idle)
    }

    /// A scheduler for the calling thread, a host's: its timer slack is the
    /// host's to set.
    pub(crate) fn hosted(idle: IdlePolicy) -> Scheduler {
        let ready = Arc::new(ReadyQueue::new());
        LocalReady::claim(&ready);
        Scheduler {
            idle,
            ready,
            slots: RefCell::default(),
            free: RefCell::default(),
            timers: RefCell::default(),
            slice_started: Cell::new(None),
            steps: Cell::new(0),
            polling: Cell::new(false),
            host_wakers: RefCell::default(),
        }
    }

    /// Runs `future` on this shard, from the scheduler's next round on.
    pub(crate) fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        let id = self.free.borrow_mut().pop();
        let id = id.unwrap_or_else(|| {
            let mut slots = self.slots.borrow_mut();
            slots.push(None);
            slots.len() - 1
        });
        let task = Arc::new(TaskWaker { id, queued: AtomicBool::new(true), ready: self.ready.clone() });
        let waker = Rc::new(Waker::from(task.clone()));
        self.slots.borrow_mut()[id] = Some(Slot { future: Some(Box::pin(future)), task, waker });
        self.ready.ids.push(id);
    }

    /// Wakes `waker` at `at`, or as soon after as the thread runs again.
    pub(crate) fn wake_at(&self, at: Instant, waker: &Waker) {
        self.timers.borrow_mut().push(Reverse(Deadline { at, waker: waker.clone() }));
    }

    /// Whether one of its tasks is being polled now.
    pub(crate) fn is_polling(&self) -> bool {
        self.polling.get()
    }

    /// Whether the task being polled has had its time slice and should
    /// [`yield_now`]. Reads the clock every few calls only.
    #[inline]
    pub(crate) fn should_yield(&self) -> bool {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        steps % STEPS_PER_CLOCK_READ == 0 && self.slice_spent()
    }

    /// The clock as the current round first read it, reading it now if it
    /// has not: the tasks a round polls share one reading (a task woken from
    /// a wait notes its end by it, at most the round's earlier polls early).
    #[inline]
    pub(crate) fn round_now(&self) -> Instant {
        match self.slice_started.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.slice_started.set(Some(now));
                now
            }
        }
    }

    #[cold]
    fn slice_spent(&self) -> bool {
        let now = Instant::now();
        match self.slice_started.get() {
            Some(started) => now.saturating_duration_since(started) >= SLICE,
            None => {
                self.slice_started.set(Some(now));
                false
            }
        }
    }

    /// Polls `future` on this thread, running the shard's tasks between its
    /// polls, until it is ready; an idle shard spins (under
    /// [`IdlePolicy::Spin`], for [`SPIN_BEFORE_PARK`]) or parks. The tasks stay:
    /// [`Scheduler::drop_tasks`] ends them.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        loop {
            if let Some(out) = self.block_on_until(future.as_mut(), None) {
                return out;
            }
        }
    }

    /// [`Scheduler::block_on`] for at most `timeout`: `None` if `future` was
    /// not ready by then (it is dropped).
    pub(crate) fn block_on_timeout<F: Future>(&self, future: F, timeout: Duration) -> Option<F::Output> {
        self.block_on_until(future, Instant::now().checked_add(timeout))
    }

    /// [`Scheduler::block_on`] until `deadline`: `None` if `future` was not
    /// ready by then (it is dropped).
    pub(crate) fn block_on_until<F: Future>(&self, future: F, deadline: Option<Instant>) -> Option<F::Output> {
        // The future is woken like a task, under an id no slot has; a waker a
        // finished call left behind only costs a spurious poll.
        let reused = self.host_wakers.borrow_mut().pop();
        let host = reused.unwrap_or_else(|| {
            Arc::new(TaskWaker { id: HOST, queued: AtomicBool::new(true), ready: self.ready.clone() })
        });
        host.queued.store(true, Ordering::Release);
        let out = self.poll_host(future, &host, deadline);
        self.host_wakers.borrow_mut().push(host);
        out
    }

    fn poll_host<F: Future>(&self, future: F, host: &Arc<TaskWaker>, deadline: Option<Instant>) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        let waker = Waker::from(host.clone());
        let mut idle_since: Option<Instant> = None;
        loop {
            if host.queued.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(out) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
                    return Some(out);
                }
            }
            if self.step() {
                idle_since = None;
                continue;
            }
            if deadline.is_none() && self.idle == IdlePolicy::Park {
                self.park(None);
                continue;
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if now >= d => return None,
                Some(d) => Some(d - now),
                None => None,
            };
            if self.idle == IdlePolicy::Spin && now - *idle_since.get_or_insert(now) < SPIN_BEFORE_PARK {
                std::hint::spin_loop();
                continue;
            }
            self.park(left);
        }
    }

    /// One round: wakes the timers due now and polls the tasks ready now (the
    /// thread's own wake-ups, then other threads', each in wake order; what
    /// those polls wake waits for the next round, so a task that wakes itself
    /// cannot keep the timers or a park from their turn).
    /// Whether there was anything to do.
    pub(crate) fn step(&self) -> bool {
        let mut worked = false;
        self.slice_started.set(None);
        if !self.timers.borrow().is_empty() {
            let now = Instant::now();
            self.slice_started.set(Some(now));
            worked = self.fire_timers(now);
        }
        for _ in 0..LocalReady::len(&self.ready) {
            match LocalReady::pop() {
                Some(id) => {
                    self.poll(id);
                    worked = true;
                }
                None => break,
            }
        }
        for _ in 0..self.ready.ids.len() {
            match self.ready.ids.pop() {
                Some(id) => {
                    self.poll(id);
                    worked = true;
                }
                None => break,
            }
        }
        worked
    }

    /// Parks the thread until a wake-up, the earliest timer or `timeout`,
    /// whichever comes first (at once if a wake-up came since the last round;
    /// spinning instead if that is less than [`SPIN_BELOW`] away).
    pub(crate) fn park(&self, timeout: Option<Duration>) {
        // Its own wake-ups leave no unpark token behind.
        if LocalReady::len(&self.ready) > 0 {
            return;
        }
        let timer = self.timers.borrow().peek().map(|Reverse(d)| d.at);
        let wait = if timer.is_none() && timeout.is_none() {
            None
        } else {
            let now = Instant::now();
            let at = timer.into_iter().chain(timeout.and_then(|t| now.checked_add(t))).min();
            at.map(|at| (at, at.saturating_duration_since(now)))
        };
        match wait {
            Some((at, left)) if left < SPIN_BELOW => self.spin_until(at),
            _ => self.sleep(wait),
        }
    }

    /// Spins until `at` or another thread's wake-up (the thread is awake all
    /// along: the wake-up lands in the queue, with no unpark).
    fn spin_until(&self, at: Instant) {
        while self.ready.ids.is_empty() && Instant::now() < at {
            std::hint::spin_loop();
        }
    }

    /// Parks until a wake-up or, with `wait` (the instant and the time until
    /// it), its instant. Says it sleeps and until when, then looks at the
    /// queue once more: a waker that pushed before it saw `AWAKE` (or a timer
    /// due soon) and left the unpark to this look.
    fn sleep(&self, wait: Option<(Instant, Duration)>) {
        self.ready.sleep.store(wait.map_or(ASLEEP, |(at, _)| since_epoch(at)), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.ready.ids.is_empty() {
            match wait {
                Some((_, left)) => std::thread::park_timeout(left),
                None => std::thread::park(),
            }
        }
        self.ready.sleep.store(AWAKE, Ordering::Relaxed);
    }

    /// Drops every task and timer. Tasks hold their scheduler, so a shard that
    /// ends calls this to free them (a task's drop may wake or spawn: done
    /// outside the borrows).
    pub(crate) fn drop_tasks(&self) {
        self.free.borrow_mut().clear();
        let left = std::mem::take(&mut *self.slots.borrow_mut());
        drop(left);
        let timers = std::mem::take(&mut *self.timers.borrow_mut());
        drop(timers);
    }

    /// Wakes the timers due at `now`; whether there were any.
    fn fire_timers(&self, now: Instant) -> bool {
        let mut fired = false;
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.peek() {
                    Some(Reverse(d)) if d.at <= now => timers.pop().map(|Reverse(d)| d.waker),
                    _ => None,
                }
            };
            match due {
                Some(waker) => {
                    waker.wake();
                    fired = true;
                }
                None => return fired,
            }
        }
    }

    fn poll(&self, id: usize) {
        // A stale wake-up (a timer or waker the ended task left behind) finds the
        // slot empty, or polls the task now in it once for nothing.
        let taken = match self.slots.borrow_mut().get_mut(id) {
            Some(Some(slot)) => slot.future.take().map(|f| {
                slot.task.queued.store(false, Ordering::Release);
                (f, slot.waker.clone())
            }),
            _ => None,
        };
        let Some((mut future, waker)) = taken else { return };
        self.steps.set(0);
        self.polling.set(true);
        let ended = future.as_mut().poll(&mut Context::from_waker(&waker)).is_ready();
        self.polling.set(false);
        if ended {
            self.slots.borrow_mut()[id] = None;
            self.free.borrow_mut().push(id);
            drop(future);
        } else if let Some(Some(slot)) = self.slots.borrow_mut().get_mut(id) {
            slot.future = Some(future);
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        LocalReady::release(&self.ready);
    }
}

/// Lets the shard's other ready tasks run before this one goes on.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests;
