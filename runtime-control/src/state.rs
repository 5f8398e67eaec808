//! The lifecycle machines of DESIGN.md §4, with their legal edges written out.
//! An illegal transition is an error value, never a silent overwrite.

use std::fmt;

use crate::error::ControlError;

/// The state of one execution attempt (Flink's ExecutionState).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ExecutionState {
    /// Exists in the execution graph.
    Created,
    /// A slot has been requested.
    Scheduled,
    /// Being sent to its slot.
    Deploying,
    /// Deployed; opening operators and restoring state.
    Initializing,
    /// Processing records.
    Running,
    /// Completed normally.
    Finished,
    /// Cancellation requested, not yet complete.
    Canceling,
    /// Cancelled.
    Canceled,
    /// Failed with a cause.
    Failed,
}

impl ExecutionState {
    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Canceled | Self::Failed)
    }

    /// Whether `self → to` is a legal edge.
    pub fn can_transition(self, to: Self) -> bool {
        use ExecutionState::*;
        matches!(
            (self, to),
            (Created, Scheduled | Canceled | Failed)
                | (Scheduled, Deploying | Canceled | Failed)
                | (Deploying, Initializing | Canceling | Failed)
                | (Initializing, Running | Canceling | Failed)
                | (Running, Finished | Canceling | Failed)
                | (Canceling, Canceled | Failed)
        )
    }

    /// Moves to `to`, or reports the illegal edge.
    pub fn transition(&mut self, to: Self) -> Result<(), ControlError> {
        if self.can_transition(to) {
            *self = to;
            Ok(())
        } else {
            Err(ControlError::IllegalExecutionTransition { from: *self, to })
        }
    }
}

impl fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "CREATED",
            Self::Scheduled => "SCHEDULED",
            Self::Deploying => "DEPLOYING",
            Self::Initializing => "INITIALIZING",
            Self::Running => "RUNNING",
            Self::Finished => "FINISHED",
            Self::Canceling => "CANCELING",
            Self::Canceled => "CANCELED",
            Self::Failed => "FAILED",
        })
    }
}

/// The status of a job (Flink's JobStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum JobStatus {
    /// Submitted, being set up.
    Initializing,
    /// Execution graph built, nothing scheduled yet.
    Created,
    /// Subtasks scheduled or running.
    Running,
    /// A subtask failed; the rest are being cancelled.
    Failing,
    /// Failed for good.
    Failed,
    /// Cancellation requested.
    Cancelling,
    /// Cancelled.
    Canceled,
    /// Every subtask finished.
    Finished,
    /// Restarting after a failure.
    Restarting,
    /// Stopped without a terminal outcome (coordinator lost leadership).
    Suspended,
}

impl JobStatus {
    /// Whether the job has reached a globally terminal state.
    pub fn is_globally_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Canceled | Self::Finished)
    }

    /// Whether `self → to` is a legal edge.
    pub fn can_transition(self, to: Self) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Initializing, Created | Failed | Suspended)
                | (Created, Running | Cancelling | Failed | Suspended)
                | (Running, Finished | Failing | Cancelling | Restarting | Failed | Suspended)
                | (Failing, Failed | Restarting | Cancelling | Suspended)
                | (Restarting, Created | Running | Cancelling | Failed | Suspended)
                | (Cancelling, Canceled | Failed | Suspended)
        )
    }

    /// Moves to `to`, or reports the illegal edge.
    pub fn transition(&mut self, to: Self) -> Result<(), ControlError> {
        if self.can_transition(to) {
            *self = to;
            Ok(())
        } else {
            Err(ControlError::IllegalJobTransition { from: *self, to })
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initializing => "INITIALIZING",
            Self::Created => "CREATED",
            Self::Running => "RUNNING",
            Self::Failing => "FAILING",
            Self::Failed => "FAILED",
            Self::Cancelling => "CANCELLING",
            Self::Canceled => "CANCELED",
            Self::Finished => "FINISHED",
            Self::Restarting => "RESTARTING",
            Self::Suspended => "SUSPENDED",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_EXEC: [ExecutionState; 9] = [
        ExecutionState::Created,
        ExecutionState::Scheduled,
        ExecutionState::Deploying,
        ExecutionState::Initializing,
        ExecutionState::Running,
        ExecutionState::Finished,
        ExecutionState::Canceling,
        ExecutionState::Canceled,
        ExecutionState::Failed,
    ];

    #[test]
    fn happy_path_and_cancel_path_are_legal() {
        use ExecutionState::*;
        let mut s = Created;
        for to in [Scheduled, Deploying, Initializing, Running, Finished] {
            s.transition(to).unwrap();
        }
        let mut c = Running;
        c.transition(Canceling).unwrap();
        c.transition(Canceled).unwrap();
    }

    #[test]
    fn terminal_states_have_no_exit_and_skips_are_rejected() {
        for from in ALL_EXEC.into_iter().filter(|s| s.is_terminal()) {
            for to in ALL_EXEC {
                assert!(!from.can_transition(to), "{from} -> {to}");
            }
        }
        let mut s = ExecutionState::Created;
        assert_eq!(
            s.transition(ExecutionState::Running),
            Err(ControlError::IllegalExecutionTransition {
                from: ExecutionState::Created,
                to: ExecutionState::Running
            })
        );
        assert_eq!(s, ExecutionState::Created, "unchanged after an illegal edge");
    }

    #[test]
    fn job_status_edges() {
        use JobStatus::*;
        let mut j = Initializing;
        for to in [Created, Running, Failing, Restarting, Running, Cancelling, Canceled] {
            j.transition(to).unwrap();
        }
        assert!(j.is_globally_terminal());
        assert!(Finished.transition(Running).is_err());
        assert!(!Created.can_transition(Finished));
    }
}
