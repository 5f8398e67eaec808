//! How a task ends without finishing: failed (with its cause, and the root
//! cause a failed producer passed on) or cancelled (with the reason), and what
//! its data-plane errors mean for that.

use std::rc::Rc;

use shardflow_netstack::{NetError, ProducerEnd};

use crate::error::{EngineError, OperatorError};

/// Why a task failed. `secondary` marks failures caused by a peer going away (the
/// root cause is reported by that peer).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskFailure {
    pub(crate) cause: String,
    pub(crate) secondary: bool,
    /// A failed producer's cause this failure follows from, if it said one.
    root: Option<String>,
}

impl TaskFailure {
    /// A failure of this task's own.
    pub(crate) fn new(cause: String) -> Self {
        TaskFailure { cause, secondary: false, root: None }
    }

    /// The failure of a task whose code panicked with `payload`.
    pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        Self::new(format!("operator panicked: {}", shardflow_control::panic_message(payload)))
    }

    /// What this task's consumers are told: the root cause, carried on from a
    /// producer that failed first, else this task's own — none for a failure
    /// that only follows a peer's going away (a consumer that closed says
    /// nothing about why).
    fn root(&self) -> Option<&str> {
        match &self.root {
            Some(root) => Some(root),
            None if self.secondary => None,
            None => Some(&self.cause),
        }
    }
}

impl From<OperatorError> for TaskFailure {
    fn from(e: OperatorError) -> Self {
        let secondary = matches!(e, OperatorError::Net(NetError::ConsumerGone { .. } | NetError::ProducerLost { .. }));
        let root = match &e {
            OperatorError::Net(NetError::ProducerLost { end: Some(ProducerEnd::Failed(cause)), .. }) => {
                Some(cause.clone())
            }
            _ => None,
        };
        TaskFailure { cause: e.to_string(), secondary, root }
    }
}

impl From<NetError> for TaskFailure {
    fn from(e: NetError) -> Self {
        OperatorError::Net(e).into()
    }
}

impl From<EngineError> for TaskFailure {
    fn from(e: EngineError) -> Self {
        TaskFailure::new(e.to_string())
    }
}

/// How a task ended without finishing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TaskStop {
    /// An operator failed or panicked, or a channel broke.
    Failed(TaskFailure),
    /// Its control lane said so, and why.
    Canceled(Rc<str>),
}

impl TaskStop {
    /// What this task's consumers are told as it stops: the root cause of a
    /// failure (none for one that only follows a peer's going away), or the
    /// cancel and its reason.
    pub(super) fn producer_end(&self) -> Option<ProducerEnd> {
        match self {
            TaskStop::Failed(failure) => failure.root().map(|root| ProducerEnd::Failed(root.to_string())),
            TaskStop::Canceled(why) => Some(ProducerEnd::Cancelled(why.to_string())),
        }
    }
}

impl std::fmt::Display for TaskStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskStop::Failed(e) => write!(f, "failed: {}", e.cause),
            TaskStop::Canceled(why) => write!(f, "was cancelled: {why}"),
        }
    }
}

impl From<TaskFailure> for TaskStop {
    fn from(e: TaskFailure) -> Self {
        TaskStop::Failed(e)
    }
}

impl From<OperatorError> for TaskStop {
    fn from(e: OperatorError) -> Self {
        match e {
            // A producer cancelled: this task is part of the same cancel.
            OperatorError::Net(NetError::ProducerLost { end: Some(ProducerEnd::Cancelled(why)), .. }) => {
                TaskStop::Canceled(why.into())
            }
            e => TaskStop::Failed(e.into()),
        }
    }
}

impl From<NetError> for TaskStop {
    fn from(e: NetError) -> Self {
        OperatorError::Net(e).into()
    }
}

impl From<EngineError> for TaskStop {
    fn from(e: EngineError) -> Self {
        TaskStop::Failed(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_that_follows_from_a_failed_producer_passes_the_root_cause_on() {
        // A → B → C: B's gate saw A fail; what B tells C is A's cause, not a
        // chain of "its producer failed" around it.
        let root = "operator panicked: record 7 is poison";
        let b = TaskFailure::from(NetError::ProducerLost { channel: 1, end: Some(ProducerEnd::Failed(root.into())) });
        assert!(b.secondary);
        assert_eq!(b.cause, format!("input channel 1: its producer failed: {root}"));
        assert_eq!(b.root(), Some(root));
        // Peers merely gone say nothing about why: nothing is passed on.
        let lost = TaskFailure::from(NetError::ProducerLost { channel: 0, end: None });
        assert_eq!(lost.root(), None);
        let closed = TaskFailure::from(NetError::ConsumerGone { subpartition: 0 });
        assert_eq!(closed.root(), None);
        let own = TaskFailure::new("operator 'x': bad".into());
        assert!(!own.secondary);
        assert_eq!(own.root(), Some("operator 'x': bad"));
    }

    #[test]
    fn a_task_whose_producer_was_cancelled_ends_as_part_of_that_cancel() {
        let why = "the job was cancelled";
        let stop = TaskStop::from(NetError::ProducerLost { channel: 0, end: Some(ProducerEnd::Cancelled(why.into())) });
        assert_eq!(stop, TaskStop::Canceled(why.into()));
        assert_eq!(stop.to_string(), "was cancelled: the job was cancelled");
        let stop = TaskStop::from(NetError::ProducerLost { channel: 0, end: None });
        assert!(matches!(stop, TaskStop::Failed(TaskFailure { secondary: true, .. })), "{stop:?}");
    }
}
