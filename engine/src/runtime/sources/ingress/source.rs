//! The job's side of an ingress: each source subtask takes its own queue.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::Context;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::{IngressCloser, IngressLife, PUSH_RECHECK};
use crate::data::Data;
use crate::error::OperatorError;
use crate::runtime::bound::{ByteBudget, Queued};
use crate::runtime::sources::{Source, SourceOutput, SourceStatus};
use crate::runtime::ParkedWaker;

/// The source side of an ingress: each subtask takes its queue.
pub(crate) struct IngressSources<T> {
    pub(super) receivers: Vec<Receiver<Queued<T>>>,
    pub(super) budgets: Arc<[ByteBudget]>,
    pub(super) wakes: Vec<Arc<ParkedWaker>>,
    pub(super) life: Arc<IngressLife>,
}

impl<T> Drop for IngressSources<T> {
    fn drop(&mut self) {
        // The job was dropped, refused or is over.
        self.life.close_unless_read();
    }
}

impl<T> IngressSources<T> {
    /// What closes the ingress from outside the job (the engine, when the job
    /// has ended).
    pub(crate) fn closer(&self) -> IngressCloser {
        IngressCloser(self.life.clone())
    }

    /// The source of subtask `subtask` of the attempt that started at `attempt`.
    pub(crate) fn source(&self, subtask: u32, attempt: Instant) -> Option<IngressSource<T>> {
        let i = subtask as usize;
        let source = IngressSource {
            queue: i,
            attempt,
            rx: self.receivers.get(i)?.clone(),
            budgets: self.budgets.clone(),
            wake: self.wakes.get(i)?.clone(),
            life: self.life.clone(),
            stopping: false,
        };
        self.life.live.fetch_add(1, Ordering::AcqRel);
        Some(source)
    }
}

/// One subtask's end of an ingress.
pub(crate) struct IngressSource<T> {
    queue: usize,
    /// The start of its job's attempt, which names the attempt.
    attempt: Instant,
    rx: Receiver<Queued<T>>,
    /// With a byte bound, one per queue: this source gives back the charge of
    /// what it takes from its own.
    budgets: Arc<[ByteBudget]>,
    wake: Arc<ParkedWaker>,
    life: Arc<IngressLife>,
    /// The job is being stopped: the ingress is closed, and what is queued
    /// goes out before the source ends.
    stopping: bool,
}

impl<T> Drop for IngressSource<T> {
    fn drop(&mut self) {
        if self.life.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.life.close();
        }
    }
}

impl<T: Data> Source<T> for IngressSource<T> {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut SourceOutput<'_, T>,
    ) -> Result<SourceStatus, OperatorError> {
        let mut freed = 0;
        let status = self.take(cx, out, &mut freed);
        if let Some(budget) = self.budgets.get(self.queue) {
            budget.give_back(freed);
        }
        if !out.is_empty() {
            // Room in the queue for pushers that await it.
            self.life.rooms[self.queue].wake_all();
        }
        if self.stopping && status == SourceStatus::Pending {
            // Closed and drained: done once no push is between its look and the
            // queue. The count first: a push it saw may have queued since.
            let in_flight = self.life.pushing.load(Ordering::SeqCst);
            return Ok(match (self.rx.is_empty(), in_flight) {
                (false, _) => SourceStatus::Emitted,
                (true, 0) => SourceStatus::Finished,
                // A pusher inside its few instructions, perhaps descheduled
                // there: look again shortly instead of spinning on it.
                (true, _) => SourceStatus::IdleUntil(Instant::now() + PUSH_RECHECK),
            });
        }
        Ok(status)
    }

    /// Closes the ingress (pushers get their records back from now on) and
    /// drains what was queued before.
    fn stop(&mut self) -> Result<bool, OperatorError> {
        // Before the close: a pusher refused by it may drop its handle at once.
        *self.life.stopping.lock().unwrap_or_else(PoisonError::into_inner) = Some(self.attempt);
        self.life.close();
        self.stopping = true;
        Ok(true)
    }
}

impl<T> IngressSource<T> {
    /// Whether another source of this attempt was told to stop.
    #[cold]
    fn sibling_stopped(&self) -> bool {
        *self.life.stopping.lock().unwrap_or_else(PoisonError::into_inner) == Some(self.attempt)
    }
}

impl<T: Data> IngressSource<T> {
    /// Takes what is queued into `out` (adding what it was charged to
    /// `freed`), or parks on the empty queue.
    fn take(&mut self, cx: &mut Context<'_>, out: &mut SourceOutput<'_, T>, freed: &mut usize) -> SourceStatus {
        let mut registered = false;
        loop {
            match self.rx.try_recv() {
                Ok((r, charge)) => {
                    *freed += charge;
                    out.push(r);
                    if out.is_full() {
                        return SourceStatus::Emitted;
                    }
                }
                // Its input is over, unless the job is being stopped and this
                // source has not been told yet: it then waits for its stop,
                // which wakes the task, to end with a snapshot as the others do.
                Err(TryRecvError::Disconnected) if out.is_empty() && !self.stopping && self.sibling_stopped() => {
                    return SourceStatus::Pending
                }
                Err(TryRecvError::Disconnected) if out.is_empty() => return SourceStatus::Finished,
                Err(TryRecvError::Disconnected) => return SourceStatus::Emitted,
                Err(TryRecvError::Empty) if !out.is_empty() => return SourceStatus::Emitted,
                Err(TryRecvError::Empty) if registered => return SourceStatus::Pending,
                Err(TryRecvError::Empty) => {
                    // Park, then look once more: a push between the look and the
                    // park sees the flag and wakes us.
                    self.wake.park(cx.waker());
                    registered = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};
    use std::time::Instant;

    use super::*;
    use crate::runtime::bound::QueueBound;
    use crate::runtime::collector::Collector;
    use crate::runtime::sources::ingress::{ingress, PushError};
    use crate::runtime::sources::SourceOutput;

    /// Plain records go to the poll's batch; nothing reaches this.
    struct Nowhere;
    impl Collector<u64> for Nowhere {
        fn collect(&mut self, _: &u64) {}
    }

    /// One poll of `source`: its status and the records it took.
    fn poll(source: &mut IngressSource<u64>) -> (SourceStatus, Vec<u64>) {
        let mut batch = Vec::new();
        let mut out = SourceOutput { batch: &mut batch, next: &mut Nowhere, pushed: 0, partitions: &[] };
        let status = source.poll_next(&mut Context::from_waker(Waker::noop()), &mut out).expect("no error");
        (status, batch)
    }

    #[test]
    fn a_source_whose_sibling_stopped_waits_for_its_own_stop_when_the_pushers_leave() {
        let (mut handle, sources) = ingress::<u64>("requests", QueueBound::records(8), 2, None);
        let attempt = Instant::now();
        let (mut first, mut second) = (sources.source(0, attempt).unwrap(), sources.source(1, attempt).unwrap());
        // A source of another attempt reading the same queue (a job submitted
        // twice from one plan): no stop of this attempt is coming to it.
        let mut other = sources.source(1, attempt + std::time::Duration::from_secs(1)).unwrap();
        handle.push(1).unwrap();
        handle.push(2).unwrap();
        // The first is told to stop: pushes are refused, and the pusher leaves.
        assert!(first.stop().unwrap());
        assert!(matches!(handle.push(3), Err(PushError::Closed(3))));
        drop(handle);
        assert_eq!(poll(&mut second), (SourceStatus::Emitted, vec![2]));
        // Its input is over, but its stop is on its way: it waits for it
        // rather than end as if the job had run out of input (its operators
        // would finish, and their state be missing from the snapshot).
        assert_eq!(poll(&mut second), (SourceStatus::Pending, vec![]));
        assert_eq!(poll(&mut other), (SourceStatus::Finished, vec![]), "another attempt's input is over");
        assert!(second.stop().unwrap());
        assert_eq!(poll(&mut second), (SourceStatus::Finished, vec![]));
        assert_eq!(poll(&mut first), (SourceStatus::Emitted, vec![1]));
        assert_eq!(poll(&mut first), (SourceStatus::Finished, vec![]));
    }
}
