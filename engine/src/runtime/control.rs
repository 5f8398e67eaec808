//! A task's control lane: the messages its shard posts to one running task
//! (cancel, and a source's stop with a snapshot; the checkpoint protocol adds
//! triggers and notifications),
//! which the task's loop serves before it takes any input.
//!
//! The lane lives on the task's shard (the shard's own mailbox carries commands
//! across threads), so posting is a queue push and a wake of the task's waker.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Waker};

use shardflow_netstack::CheckpointBarrier;

/// A message to a running task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskControl {
    /// Stop: take no more input, close the operators, end as CANCELED; why
    /// (the job was cancelled, or failed with its cause), for its sinks'
    /// readers.
    Cancel(Rc<str>),
    /// A source's stop with a snapshot: emit this barrier, snapshot, and end
    /// as if the input had ended (the job was stopped with a snapshot).
    Stop(CheckpointBarrier),
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<TaskControl>,
    waker: Option<Waker>,
}

/// Both ends of a task's control lane (the shard keeps a clone to post to).
#[derive(Clone, Default)]
pub(crate) struct ControlLane(Rc<RefCell<Lane>>);

impl ControlLane {
    /// Posts `message` and wakes the task.
    pub(crate) fn post(&self, message: TaskControl) {
        let waker = {
            let mut lane = self.0.borrow_mut();
            lane.queue.push_back(message);
            lane.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The next message, or `None` with the context's waker registered, so a
    /// message posted later wakes the task.
    #[inline]
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Option<TaskControl> {
        let mut lane = self.0.borrow_mut();
        if let Some(m) = lane.queue.pop_front() {
            return Some(m);
        }
        if !lane.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            lane.waker = Some(cx.waker().clone());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CountingWaker;

    #[test]
    fn a_posted_message_wakes_the_registered_task_once_and_is_taken_in_order() {
        let (waker, counter) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let lane = ControlLane::default();
        assert_eq!(lane.poll_next(&mut cx), None, "nothing posted yet");
        assert_eq!(lane.poll_next(&mut cx), None, "registering again keeps one waker");
        let poster = lane.clone();
        poster.post(TaskControl::Cancel("asked".into()));
        poster.post(TaskControl::Cancel("asked".into()));
        assert_eq!(counter.count(), 1, "the first post wakes; the waker is then spent");
        assert_eq!(lane.poll_next(&mut cx), Some(TaskControl::Cancel("asked".into())));
        assert_eq!(lane.poll_next(&mut cx), Some(TaskControl::Cancel("asked".into())));
        assert_eq!(lane.poll_next(&mut cx), None);
    }
}
