//! The scheduler's own tests: wake-ups from other threads, timers, time
//! slices, slots, stepping and `block_on`.

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

/// Arms a timer for `at` at its first poll and is ready once woken: woken by
/// the timer alone, so timers fire in their order however late the thread runs.
fn timer(sched: &Rc<Scheduler>, at: Instant) -> impl Future<Output = ()> {
    let (sched, mut armed) = (sched.clone(), false);
    poll_fn(move |cx| {
        if std::mem::replace(&mut armed, true) {
            return Poll::Ready(());
        }
        sched.wake_at(at, cx.waker());
        Poll::Pending
    })
}

/// A shard waits (as `idle` says; with a timer an hour off armed, or none)
/// for a signal another thread sets once the shard says it waits.
fn wakes_for_another_threads_wake_up(idle: IdlePolicy, far_timer: bool) {
    let signal = Arc::new(Signal::default());
    let (tx, rx) = mpsc::channel();
    let remote = signal.clone();
    let waker_thread = std::thread::spawn(move || {
        // Set only once the shard waits (it says so), so the wake-up finds it parked or spinning.
        rx.recv_timeout(Duration::from_secs(30)).expect("the shard never waited");
        remote.set();
    });
    let sched = Rc::new(Scheduler::new(idle));
    if far_timer {
        sched.spawn(timer(&sched, Instant::now() + Duration::from_secs(3600)));
    }
    let s = signal.clone();
    sched.block_on(async move {
        let _ = tx.send(());
        s.wait().await;
    });
    waker_thread.join().unwrap();
    assert!(signal.set.load(Ordering::Acquire), "{idle:?}");
}

#[test]
fn a_parked_shard_wakes_for_another_threads_wake_up() {
    on_own_thread(|| {
        for idle in [IdlePolicy::Park, IdlePolicy::Spin] {
            wakes_for_another_threads_wake_up(idle, false);
        }
        // Parked on a timer an hour off: only the other thread's unpark can
        // end the test within on_own_thread's minute.
        wakes_for_another_threads_wake_up(IdlePolicy::Park, true);
    });
}

#[test]
fn another_threads_wake_up_unparks_a_shard_unless_it_is_awake_or_its_timer_is_due_soon() {
    LazyLock::force(&EPOCH);
    let now = Instant::now();
    let at = |d: Duration| since_epoch(now + d);
    assert!(!needs_unpark(AWAKE, || now), "an awake shard takes its queue before it parks");
    assert!(needs_unpark(ASLEEP, || now), "a shard parked with no timer");
    assert!(!needs_unpark(at(Duration::ZERO), || now), "a timer due now");
    assert!(!needs_unpark(at(TIMER_GRACE / 2), || now), "a timer due within the grace");
    assert!(needs_unpark(at(TIMER_GRACE * 2), || now), "a timer due after the grace");
    assert!(needs_unpark(at(Duration::from_secs(1)), || now), "a timer a second off");
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
            let timer = timer(&sched, at);
            sched.spawn(async move {
                timer.await;
                assert!(Instant::now() >= at, "timer {k} fired early");
                order.borrow_mut().push(k);
            });
        }
        // Armed last and due last: it fires after the three, whatever the delays.
        sched.block_on(timer(&sched, start + Duration::from_millis(40)));
        assert_eq!(*order.borrow(), vec![1, 2, 0]);
    });
}

#[test]
fn timers_closer_than_the_spin_threshold_fire_in_order_too() {
    on_own_thread(|| {
        let sched = Rc::new(Scheduler::new(IdlePolicy::Park));
        let order = Rc::new(RefCell::new(Vec::new()));
        // All within SPIN_BELOW of each other: the shard spins between them.
        let (start, step) = (Instant::now() + SPIN_BELOW, SPIN_BELOW / 4);
        let host: Rc<RefCell<Option<Waker>>> = Rc::default();
        for (k, n) in [(0, 3u32), (1, 1), (2, 2)] {
            let (order, host, timer) = (order.clone(), host.clone(), timer(&sched, start + step * n));
            sched.spawn(async move {
                timer.await;
                order.borrow_mut().push(k);
                if let Some(w) = host.borrow_mut().take() {
                    w.wake();
                }
            });
        }
        let fired = order.clone();
        sched.block_on(poll_fn(move |cx| {
            *host.borrow_mut() = Some(cx.waker().clone());
            if fired.borrow().len() == 3 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        assert_eq!(*order.borrow(), vec![1, 2, 0]);
    });
}

#[test]
fn a_task_that_never_waits_yields_to_the_others() {
    on_own_thread(|| {
        let sched = Rc::new(Scheduler::new(IdlePolicy::Park));
        let stop = Rc::new(Cell::new(false));
        let (s, stop2) = (sched.clone(), stop.clone());
        // The other thread wakes this one's task only once the busy one runs:
        // then that wake-up can reach it only by the busy task yielding.
        let (busy_tx, busy_rx) = mpsc::channel();
        let mut started = Some(busy_tx);
        // Busy until told to stop; it only lets others in through `should_yield`.
        sched.spawn(async move {
            while !stop2.get() {
                if let Some(tx) = started.take() {
                    tx.send(()).unwrap();
                }
                if s.should_yield() {
                    yield_now().await;
                }
            }
        });
        let signal = Arc::new(Signal::default());
        let remote = signal.clone();
        let other = std::thread::spawn(move || {
            busy_rx.recv().expect("the busy task runs");
            remote.set();
        });
        let seen = signal.clone();
        sched.block_on(async move {
            // Another thread's wake-up reaches this task while the busy one runs.
            seen.wait().await;
            stop.set(true);
        });
        // Ending at all is the check: a busy task that never yielded would
        // keep the woken one out, and the test would fail on its timeout.
        other.join().unwrap();
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

/// A task on `sched` that counts its polls and waits for `signal`.
fn counting_task(sched: &Scheduler, signal: &Arc<Signal>) -> Rc<Cell<u32>> {
    let polls = Rc::new(Cell::new(0));
    let (p, s) = (polls.clone(), signal.clone());
    sched.spawn(async move {
        p.set(p.get() + 1);
        s.wait().await;
        p.set(p.get() + 1);
    });
    polls
}

#[test]
fn a_wake_up_from_the_shards_own_thread_is_not_lost_to_a_park() {
    on_own_thread(|| {
        let sched = Scheduler::hosted(IdlePolicy::Park);
        let signal = Arc::new(Signal::default());
        let polls = counting_task(&sched, &signal);
        assert!(sched.step());
        assert_eq!(polls.get(), 1, "the task waits for its signal");
        // Woken by the host's thread itself, between rounds: queued on the
        // thread, with no unpark token, so the park must see the queue (a lost
        // wake-up parks for good and the 60 s guard fails the test).
        signal.set();
        assert_eq!(LocalReady::len(&sched.ready), 1, "kept on the thread, not in the shared queue");
        assert!(sched.ready.ids.is_empty());
        sched.park(None);
        assert!(sched.step(), "the wake-up queued it");
        assert_eq!(polls.get(), 2, "it ran to its end");
    });
}

#[test]
fn a_second_scheduler_on_a_thread_leaves_the_firsts_wake_ups_with_it() {
    on_own_thread(|| {
        let first = Scheduler::hosted(IdlePolicy::Park);
        let (early, late) = (Arc::new(Signal::default()), Arc::new(Signal::default()));
        let early_polls = counting_task(&first, &early);
        let late_polls = counting_task(&first, &late);
        assert!(first.step());
        assert_eq!((early_polls.get(), late_polls.get()), (1, 1));
        // Queued on the thread for the first; then a second takes the thread
        // over: the first gets what was queued, and later wake-ups, through its
        // shared queue.
        early.set();
        let second = Scheduler::hosted(IdlePolicy::Park);
        late.set();
        assert_eq!(LocalReady::len(&second.ready), 0, "none of the second's");
        assert!(!second.step(), "the second has nothing to run");
        assert!(first.step());
        assert_eq!((early_polls.get(), late_polls.get()), (2, 2), "both of the first's tasks ran");
        // The second's own wake-ups stay on the thread; dropping it drops them.
        let mine = Arc::new(Signal::default());
        let my_polls = counting_task(&second, &mine);
        assert!(second.step());
        mine.set();
        assert_eq!(LocalReady::len(&second.ready), 1);
        assert!(second.step());
        assert_eq!(my_polls.get(), 2);
        drop(second);
        assert!(LOCAL_READY.with(|l| l.owner.borrow().upgrade().is_none() && l.ids.borrow().is_empty()), "released");
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
        assert_eq!(sched.block_on_timeout(never, Duration::from_millis(20)), None);
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

#[test]
fn block_on_keeps_one_waker_per_nesting_level_for_the_next_call() {
    on_own_thread(|| {
        let sched = Rc::new(Scheduler::hosted(IdlePolicy::Park));
        for round in 0..3 {
            assert_eq!(sched.block_on(async { round }), round);
        }
        assert_eq!(sched.host_wakers.borrow().len(), 1, "one waker, reused by every call");
        let s = sched.clone();
        let inner = sched.block_on(async move { s.block_on(async { 7 }) });
        assert_eq!(inner, 7);
        assert_eq!(sched.host_wakers.borrow().len(), 2, "a nested call has a waker of its own");
    });
}
