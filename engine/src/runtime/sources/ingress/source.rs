//! The job's side of an ingress: each source subtask takes its own queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
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

    /// The source of subtask `subtask`.
    pub(crate) fn source(&self, subtask: u32) -> Option<IngressSource<T>> {
        let i = subtask as usize;
        let source = IngressSource {
            queue: i,
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
        self.life.close();
        self.stopping = true;
        Ok(true)
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
