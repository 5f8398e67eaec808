//! A thread that hosts a shard (a [`crate::HostedShard`]): which scheduler it
//! hosts, and how a blocking call made on it runs that shard while it waits
//! instead of waiting for itself. And how a blocking call waits for an event
//! on any thread ([`wait`]).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use rustix::thread::CpuSet;

use crate::runtime::scheduler::Scheduler;

/// The shard a thread hosts.
struct Host {
    sched: Rc<Scheduler>,
    /// The cores the thread could run on when it began to host, before it
    /// was pinned to the shard's: where [`step_during`]'s helper runs.
    unpinned: Option<CpuSet>,
}

thread_local! {
    /// The shard the thread hosts, if it hosts one.
    static HOSTED: RefCell<Option<Host>> = const { RefCell::new(None) };
}

/// Makes `sched` the scheduler the calling thread hosts (noting the cores the
/// thread may run on now, before it is pinned); `false` if it hosts one
/// already.
pub(crate) fn host_here(sched: &Rc<Scheduler>) -> bool {
    HOSTED.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_some() {
            return false;
        }
        let unpinned = rustix::thread::sched_getaffinity(None).ok();
        *h = Some(Host { sched: sched.clone(), unpinned });
        true
    })
}

/// The calling thread hosts no shard any more.
pub(crate) fn unhost_here() {
    HOSTED.with(|h| h.borrow_mut().take());
}

/// The scheduler of the shard the calling thread hosts, for a blocking call
/// to run while it waits: `None` on other threads, and inside one of the
/// shard's tasks (a blocking call there blocks the shard, as on a shard of its
/// own thread, rather than running its tasks re-entrantly).
pub(crate) fn hosted_here() -> Option<Rc<Scheduler>> {
    HOSTED.with(|h| h.borrow().as_ref().map(|h| &h.sched).filter(|s| !s.is_polling()).cloned())
}

/// Runs `call` on a helper thread while the calling thread runs `sched`, until
/// `call` returns: a blocking call made on a host's thread. The helper runs on
/// the cores the host could run on before it was pinned ([`host_here`]). A
/// panic in `call` goes on unwinding on the calling thread.
pub(crate) fn step_during<R: Send>(sched: &Scheduler, call: impl FnOnce() -> R + Send) -> R {
    type Outcome<R> = std::sync::Mutex<Option<std::thread::Result<R>>>;
    let done: Arc<(Outcome<R>, atomic_waker::AtomicWaker)> = Arc::default();
    let unpinned = HOSTED.with(|h| h.borrow().as_ref().and_then(|h| h.unpinned));
    let outcome = std::thread::scope(|scope| {
        let d = done.clone();
        scope.spawn(move || {
            if let Some(cpus) = unpinned {
                if let Err(e) = rustix::thread::sched_setaffinity(None, &cpus) {
                    tracing::debug!("a host's helper thread stays on the host's core: {e}");
                }
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
            *d.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
            d.1.wake();
        });
        sched.block_on(poll_fn(|cx| {
            done.1.register(cx.waker());
            match done.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        }))
    });
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Waits for `future` on the calling thread: a host's runs its shard meanwhile
/// ([`hosted_here`]); any other thread (or a task's poll) sleeps until the
/// future's waker wakes it.
pub(crate) fn wait<F: Future>(future: F) -> F::Output {
    match hosted_here() {
        Some(sched) => sched.block_on(future),
        None => futures_lite::future::block_on(future),
    }
}

/// [`wait`] until `deadline`: `None` if `future` was not ready by then (it is
/// dropped).
pub(crate) fn wait_until<F: Future>(future: F, deadline: Instant) -> Option<F::Output> {
    match hosted_here() {
        Some(sched) => sched.block_on_until(future, Some(deadline)),
        None => park_until(future, deadline),
    }
}

/// Polls `future` on this thread, parking it between polls until its waker
/// wakes it or `deadline` passes (then `None`).
fn park_until<F: Future>(future: F, deadline: Instant) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let (parker, unparker) = parking::pair();
    let waker = Waker::from(unparker);
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        if !parker.park_deadline(deadline) {
            return None;
        }
    }
}

/// `call`, run while the shard the calling thread hosts runs (if it hosts
/// one; see [`hosted_here`]).
pub(crate) fn blocking<R: Send>(call: impl FnOnce() -> R + Send) -> R {
    match hosted_here() {
        Some(sched) => step_during(&sched, call),
        None => call(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::IdlePolicy;
    use std::cell::Cell;

    #[test]
    fn a_hosts_blocking_calls_run_its_shard_but_not_from_inside_a_task() {
        // On a thread of its own: it hosts a scheduler for the test's length.
        let host = std::thread::spawn(|| {
            let sched = Rc::new(Scheduler::hosted(IdlePolicy::Park));
            assert!(hosted_here().is_none(), "not a host yet");
            assert!(host_here(&sched));
            assert!(!host_here(&Rc::new(Scheduler::hosted(IdlePolicy::Park))), "one hosted shard per thread");
            // Inside a task a blocking call must block, not run the shard again.
            let inside = Rc::new(Cell::new(None));
            let i = inside.clone();
            sched.spawn(async move { i.set(Some(hosted_here().is_some())) });
            // A blocking call of the host's: its shard's task runs meanwhile.
            let answer = blocking(|| 42);
            assert_eq!(answer, 42);
            let ran = inside.clone();
            let s = hosted_here().expect("the thread hosts it");
            s.block_on(poll_fn(move |cx| {
                if ran.get().is_some() {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }));
            assert_eq!(inside.get(), Some(false), "no hosted scheduler inside a task's poll");
            unhost_here();
            assert!(hosted_here().is_none());
            sched.drop_tasks();
        });
        host.join().expect("the host thread's checks hold");
    }

    #[test]
    fn a_panic_in_a_call_made_while_stepping_reaches_the_host() {
        // On a thread of its own, so a wait without end fails the test in 60 s.
        let (tx, rx) = std::sync::mpsc::channel();
        let host = std::thread::spawn(move || {
            let sched = Scheduler::hosted(IdlePolicy::Park);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                step_during(&sched, || -> u32 { panic!("the blocking call failed") })
            }));
            let message = caught.err().map(|p| shardflow_control::panic_message(&*p));
            let _ = tx.send((message, step_during(&sched, || 7)));
        });
        let (message, next) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the call's panic reaches the host within 60 s, instead of a wait without end");
        assert_eq!(message.as_deref(), Some("the blocking call failed"));
        assert_eq!(next, 7, "and the next call runs");
        host.join().expect("the host thread ends");
    }

    #[test]
    fn a_wait_on_a_plain_thread_sleeps_until_its_waker_or_its_deadline() {
        // On a thread of its own, so a wait without end fails the test in 60 s.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            assert!(hosted_here().is_none(), "a plain thread");
            // Woken from another thread once its answer is there.
            let slot: Arc<(std::sync::Mutex<Option<u32>>, atomic_waker::AtomicWaker)> = Arc::default();
            let s = slot.clone();
            let helper = std::thread::spawn(move || {
                *s.0.lock().unwrap() = Some(5);
                s.1.wake();
            });
            let answer = wait(poll_fn(|cx| {
                slot.1.register(cx.waker());
                match slot.0.lock().unwrap().take() {
                    Some(a) => Poll::Ready(a),
                    None => Poll::Pending,
                }
            }));
            helper.join().expect("the helper ends");
            // Never woken: given up at its deadline, the future dropped.
            let deadline = Instant::now() + std::time::Duration::from_millis(5);
            let given_up = wait_until(std::future::pending::<u32>(), deadline);
            let _ = tx.send((answer, given_up, Instant::now() >= deadline));
        });
        let (answer, given_up, after) =
            rx.recv_timeout(std::time::Duration::from_secs(60)).expect("both waits end within 60 s");
        assert_eq!(answer, 5, "the wake-up ends the wait with the answer");
        assert_eq!(given_up, None, "nothing came by the deadline");
        assert!(after, "not given up before the deadline");
        waiter.join().expect("the waiting thread ends");
    }
}
