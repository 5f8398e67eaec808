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
//! Here a wake-up is a push onto the shard's ready queue and, only if the shard
//! sleeps, one futex wake (`Thread::unpark`); the loop takes the queue on every
//! round, so a busy shard sees another thread's wake-up within one task's time
//! slice (`SLICE`). Timers are a binary heap the loop reads before it parks.
//!
//! ```text
//!   block_on(f): f woken? poll f ─► step ─► nothing? park (spin: poll on, 1 s)
//!   step:        fire due timers ─► poll what is ready now (in wake order; what
//!                those polls wake waits for the next round)
//!   park:        until a wake-up, the earliest timer (or the host's timeout)
//!   wake (any thread): queued already? done : push id, unpark the shard's thread
//! ```
//!
//! A task is woken at most once until it is polled (`queued`), and cleared just
//! before it is polled, so a wake-up during its poll queues it again: none is lost.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// Steps a task takes between two looks at the clock.
const STEPS_PER_CLOCK_READ: u32 = 32;

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// The id of the future [`Scheduler::block_on`] polls: no task's.
const HOST: usize = usize::MAX;

/// What other threads reach: the ready queue and the thread to unpark. `Send + Sync`.
struct ReadyQueue {
    ids: SegQueue<usize>,
    thread: Thread,
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
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.ids.push(self.id);
            self.ready.thread.unpark();
        }
    }
}

struct Slot {
    /// `None` while it is being polled.
    future: Option<LocalFuture>,
    waker: Arc<TaskWaker>,
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
    /// When the round polling the current task began (its time slice is
    /// counted from there: one clock read per round, not per poll), and the
    /// task's steps since it was polled.
    slice_started: Cell<Instant>,
    steps: Cell<u32>,
    /// A task is being polled (a blocking call made inside one must not run
    /// the shard again: see `host::hosted_here`).
    polling: Cell<bool>,
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
        Scheduler {
            idle,
            ready: Arc::new(ReadyQueue { ids: SegQueue::new(), thread: std::thread::current() }),
            slots: RefCell::default(),
            free: RefCell::default(),
            timers: RefCell::default(),
            slice_started: Cell::new(Instant::now()),
            steps: Cell::new(0),
            polling: Cell::new(false),
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
        let waker = Arc::new(TaskWaker { id, queued: AtomicBool::new(true), ready: self.ready.clone() });
        self.slots.borrow_mut()[id] = Some(Slot { future: Some(Box::pin(future)), waker });
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
        steps % STEPS_PER_CLOCK_READ == 0 && self.slice_started.get().elapsed() >= SLICE
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

    /// [`Scheduler::block_on`] until `deadline`: `None` if `future` was not
    /// ready by then (it is dropped).
    pub(crate) fn block_on_until<F: Future>(&self, future: F, deadline: Option<Instant>) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        // The future is woken like a task, under an id no slot has.
        let host = Arc::new(TaskWaker { id: HOST, queued: AtomicBool::new(true), ready: self.ready.clone() });
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

    /// One round: wakes the timers due now and polls the tasks ready now (in
    /// wake order; what those polls wake waits for the next round, so a task
    /// that wakes itself cannot keep the timers or a park from their turn).
    /// Whether there was anything to do.
    pub(crate) fn step(&self) -> bool {
        let now = Instant::now();
        self.slice_started.set(now);
        let mut worked = self.fire_timers(now);
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
    /// whichever comes first (at once if a wake-up came since the last round).
    pub(crate) fn park(&self, timeout: Option<Duration>) {
        let now = Instant::now();
        let timer = self.timers.borrow().peek().map(|Reverse(d)| d.at);
        let until = match (timer, timeout.and_then(|t| now.checked_add(t))) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match until {
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(now)),
            None => std::thread::park(),
        }
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
            Some(Some(slot)) => slot.future.take().map(|f| (f, slot.waker.clone())),
            _ => None,
        };
        let Some((mut future, task)) = taken else { return };
        task.queued.store(false, Ordering::Release);
        self.steps.set(0);
        let waker = Waker::from(task);
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
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    /// A one-shot signal another thread sets.
    #[derive(Default)]
    struct Signal {
        set: AtomicBool,
        waker: atomic_waker::AtomicWaker,
    }

    impl Signal {
        fn set(&self) {
            self.set.store(true, Ordering::Release);
            self.waker.wake();
        }

        async fn wait(&self) {
            poll_fn(|cx| {
                self.waker.register(cx.waker());
                if self.set.load(Ordering::Acquire) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        }
    }

    /// Runs `test` on a thread of its own (the scheduler's), failing clearly if it
    /// does not end within 60 s instead of hanging the suite.
    fn on_own_thread(test: impl FnOnce() + Send + 'static) {
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            test();
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => thread.join().unwrap(),
            Err(mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(thread.join().unwrap_err()),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the scheduler did not finish within 60 s: a lost wake-up"),
        }
    }

    fn sleep(sched: &Rc<Scheduler>, at: Instant) -> impl Future<Output = ()> {
        let sched = sched.clone();
        poll_fn(move |cx| {
            if Instant::now() >= at {
                Poll::Ready(())
            } else {
                sched.wake_at(at, cx.waker());
                Poll::Pending
            }
        })
    }

    #[test]
    fn a_parked_shard_wakes_for_another_threads_wake_up() {
        on_own_thread(|| {
            for idle in [IdlePolicy::Park, IdlePolicy::Spin] {
                let signal = Arc::new(Signal::default());
                let (tx, rx) = mpsc::channel();
                let remote = signal.clone();
                let waker_thread = std::thread::spawn(move || {
                    // Set only once the shard waits (it says so), so the wake-up finds it parked or spinning.
                    rx.recv_timeout(Duration::from_secs(30)).expect("the shard never waited");
                    remote.set();
                });
                let sched = Rc::new(Scheduler::new(idle));
                let s = signal.clone();
                sched.block_on(async move {
                    let _ = tx.send(());
                    s.wait().await;
                });
                waker_thread.join().unwrap();
                assert!(signal.set.load(Ordering::Acquire), "{idle:?}");
            }
        });
    }

    #[test]
    fn a_wake_up_during_the_tasks_own_poll_is_kept() {
        on_own_thread(|| {
            // The task registers, finds nothing, and only then (still inside its
            // poll) lets another thread set the flag and wake it.
            let flag = Arc::new(Signal::default());
            let (checked_tx, checked_rx) = mpsc::channel::<()>();
            let (woken_tx, woken_rx) = mpsc::channel::<()>();
            let remote = flag.clone();
            let other = std::thread::spawn(move || {
                checked_rx.recv_timeout(Duration::from_secs(30)).expect("the task never polled");
                remote.set();
                woken_tx.send(()).unwrap();
            });
            let sched = Rc::new(Scheduler::new(IdlePolicy::Park));
            let f = flag.clone();
            let mut first = true;
            sched.block_on(poll_fn(move |cx| {
                f.waker.register(cx.waker());
                if f.set.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
                if std::mem::take(&mut first) {
                    checked_tx.send(()).unwrap();
                    woken_rx.recv_timeout(Duration::from_secs(30)).expect("the other thread never woke the task");
                }
                Poll::Pending
            }));
            other.join().unwrap();
        });
    }

    #[test]
    fn no_wake_up_is_lost_when_many_threads_wake_tasks_at_once() {
        on_own_thread(|| {
            const TASKS: usize = 4;
            const ROUNDS: usize = 20_000;
            // Thread k raises task k's counter round by round and waits for the
            // task's acknowledgement before the next: each round needs a wake-up
            // that reaches a shard parked (or on its way to park), from four
            // threads at once. One lost wake-up and the test stops.
            let sched = Rc::new(Scheduler::new(IdlePolicy::Park));
            let finished = Rc::new((Cell::new(0), RefCell::new(None::<Waker>)));
            let mut threads = Vec::new();
            for _ in 0..TASKS {
                let counter = Arc::new((AtomicUsize::new(0), atomic_waker::AtomicWaker::new()));
                let (ack_tx, ack_rx) = mpsc::channel::<usize>();
                let (c, finished) = (counter.clone(), finished.clone());
                sched.spawn(async move {
                    for round in 1..=ROUNDS {
                        poll_fn(|cx| {
                            c.1.register(cx.waker());
                            if c.0.load(Ordering::Acquire) >= round {
                                Poll::Ready(())
                            } else {
                                Poll::Pending
                            }
                        })
                        .await;
                        ack_tx.send(round).unwrap();
                    }
                    finished.0.set(finished.0.get() + 1);
                    if let Some(w) = finished.1.borrow_mut().take() {
                        w.wake();
                    }
                });
                threads.push(std::thread::spawn(move || {
                    for round in 1..=ROUNDS {
                        counter.0.store(round, Ordering::Release);
                        counter.1.wake();
                        let seen = ack_rx.recv_timeout(Duration::from_secs(30));
                        assert_eq!(seen, Ok(round), "round {round} was not taken: a lost wake-up");
                    }
                }));
            }
            let f = finished.clone();
            sched.block_on(poll_fn(move |cx| {
                if f.0.get() == TASKS {
                    Poll::Ready(())
                } else {
                    *f.1.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }));
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(finished.0.get(), TASKS);
        });
    }

    #[test]
    fn timers_fire_in_order_and_not_early() {
        on_own_thread(|| {
            let sched = Rc::new(Scheduler::new(IdlePolicy::Park));
            let order = Rc::new(RefCell::new(Vec::new()));
            let start = Instant::now();
            for (k, ms) in [(0, 30u64), (1, 10), (2, 20)] {
                let (order, at) = (order.clone(), start + Duration::from_millis(ms));
                let sleep = sleep(&sched, at);
                sched.spawn(async move {
                    sleep.await;
                    assert!(Instant::now() >= at, "timer {k} fired early");
                    order.borrow_mut().push(k);
                });
            }
            let s = sched.clone();
            let last = sleep(&s, start + Duration::from_millis(40));
            sched.block_on(last);
            assert_eq!(*order.borrow(), vec![1, 2, 0]);
        });
    }

    #[test]
    fn a_task_that_never_waits_yields_to_the_others() {
        on_own_thread(|| {
            let sched = Rc::new(Scheduler::new(IdlePolicy::Park));
            let stop = Rc::new(Cell::new(false));
            let spins = Rc::new(Cell::new(0u64));
            let (s, stop2, spins2) = (sched.clone(), stop.clone(), spins.clone());
            // Busy until told to stop; it only lets others in through `should_yield`.
            sched.spawn(async move {
                while !stop2.get() {
                    spins2.set(spins2.get() + 1);
                    if s.should_yield() {
                        yield_now().await;
                    }
                }
            });
            let signal = Arc::new(Signal::default());
            let remote = signal.clone();
            let other = std::thread::spawn(move || remote.set());
            let seen = signal.clone();
            sched.block_on(async move {
                // Another thread's wake-up reaches this task while the busy one runs.
                seen.wait().await;
                stop.set(true);
            });
            other.join().unwrap();
            assert!(spins.get() > 0);
        });
    }

    #[test]
    fn tasks_spawned_while_polling_run_and_slots_are_reused() {
        on_own_thread(|| {
            let sched = Rc::new(Scheduler::new(IdlePolicy::Park));
            let ran = Rc::new(AtomicUsize::new(0));
            let (s, r) = (sched.clone(), ran.clone());
            sched.block_on(async move {
                for round in 0..3 {
                    let signal = Rc::new(Cell::new(false));
                    for _ in 0..4 {
                        let (r, signal) = (r.clone(), signal.clone());
                        s.spawn(async move {
                            yield_now().await;
                            r.fetch_add(1, Ordering::Relaxed);
                            signal.set(true);
                        });
                    }
                    poll_fn(|cx| {
                        if r.load(Ordering::Relaxed) == 4 * (round + 1) {
                            Poll::Ready(())
                        } else {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    })
                    .await;
                    assert!(signal.get());
                }
            });
            assert_eq!(ran.load(Ordering::Relaxed), 12);
            // At most 4 tasks at once: ended tasks' slots were reused.
            assert!(sched.slots.borrow().iter().all(Option::is_none), "every task ended");
            assert!(sched.free.borrow().len() <= 4, "{} slots", sched.free.borrow().len());
            sched.drop_tasks();
            assert!(sched.slots.borrow().is_empty());
        });
    }

    #[test]
    fn a_step_runs_what_is_ready_and_never_waits() {
        on_own_thread(|| {
            let sched = Rc::new(Scheduler::hosted(IdlePolicy::Park));
            assert!(!sched.step(), "nothing to do");
            let polls = Rc::new(Cell::new(0));
            let p = polls.clone();
            let signal = Arc::new(Signal::default());
            let s = signal.clone();
            sched.spawn(async move {
                p.set(p.get() + 1);
                s.wait().await;
                p.set(p.get() + 1);
            });
            assert!(sched.step(), "the new task ran");
            assert_eq!(polls.get(), 1);
            assert!(!sched.step(), "the task waits: nothing to do, and no wait");
            signal.set();
            assert!(sched.step(), "the wake-up queued it");
            assert_eq!(polls.get(), 2, "it ran to its end");
            assert!(!sched.step());
        });
    }

    #[test]
    fn a_future_not_ready_by_its_deadline_is_given_up_and_the_tasks_stay() {
        on_own_thread(|| {
            let sched = Rc::new(Scheduler::hosted(IdlePolicy::Park));
            let signal = Arc::new(Signal::default());
            let s = signal.clone();
            let ran = Rc::new(Cell::new(false));
            let r = ran.clone();
            sched.spawn(async move {
                s.wait().await;
                r.set(true);
            });
            let deadline = Instant::now() + Duration::from_millis(20);
            let never = std::future::pending::<()>();
            assert_eq!(sched.block_on_until(never, Some(deadline)), None);
            assert!(Instant::now() >= deadline, "given up only at the deadline");
            assert!(!ran.get());
            // The task is still there: a later run finishes it.
            signal.set();
            let r = ran.clone();
            sched.block_on(poll_fn(move |cx| {
                if r.get() {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }));
            sched.drop_tasks();
        });
    }
}
