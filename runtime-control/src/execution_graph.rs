//! The ExecutionGraph: a JobGraph expanded into subtasks (execution vertices with
//! attempts) and channels, with the execution-state and job-status machines driven
//! by state events.

use crate::error::ControlError;
use crate::ids::{AttemptId, ExecutionVertexId, JobId, VertexId};
use crate::job_graph::{DistributionPattern, JobGraph};
use crate::state::{ExecutionState, JobStatus};

/// One subtask and its current attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionVertex {
    /// The current attempt.
    pub attempt: AttemptId,
    /// Its state.
    pub state: ExecutionState,
    /// "name (i/p)", as Flink prints subtasks.
    pub display_name: String,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

impl ExecutionVertex {
    /// The subtask.
    pub fn id(&self) -> ExecutionVertexId {
        self.attempt.execution_vertex
    }
}

/// One channel of an expanded edge: producer subtask → consumer subtask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Index of the job edge.
    pub edge: usize,
    /// Producer subtask index.
    pub producer: u32,
    /// Consumer subtask index.
    pub consumer: u32,
    /// Subpartition of the producer's partition for this edge.
    pub subpartition: u32,
    /// Input channel of the consumer's gate for this edge.
    pub input_channel: u32,
}

/// The channels of edge `edge` of `graph` (which must be valid).
pub fn edge_channels(graph: &JobGraph, edge: usize) -> Vec<ChannelSpec> {
    let e = &graph.edges[edge];
    let p = graph.vertices[e.source.0 as usize].parallelism;
    let c = graph.vertices[e.target.0 as usize].parallelism;
    match e.distribution {
        DistributionPattern::Pointwise => {
            (0..p).map(|i| ChannelSpec { edge, producer: i, consumer: i, subpartition: 0, input_channel: 0 }).collect()
        }
        DistributionPattern::AllToAll => (0..p)
            .flat_map(|i| {
                (0..c).map(move |j| ChannelSpec { edge, producer: i, consumer: j, subpartition: j, input_channel: i })
            })
            .collect(),
    }
}

/// Number of subpartitions a producer subtask has for edge `edge`.
pub fn subpartitions(graph: &JobGraph, edge: usize) -> u32 {
    let e = &graph.edges[edge];
    match e.distribution {
        DistributionPattern::Pointwise => 1,
        DistributionPattern::AllToAll => graph.vertices[e.target.0 as usize].parallelism,
    }
}

/// Number of input channels a consumer subtask has for edge `edge`.
pub fn input_channels(graph: &JobGraph, edge: usize) -> u32 {
    let e = &graph.edges[edge];
    match e.distribution {
        DistributionPattern::Pointwise => 1,
        DistributionPattern::AllToAll => graph.vertices[e.source.0 as usize].parallelism,
    }
}

/// The expanded job with its state.
#[derive(Debug, Clone)]
pub struct ExecutionGraph {
    /// The job.
    pub job_id: JobId,
    /// Subtasks, vertex by vertex in topological order.
    pub subtasks: Vec<ExecutionVertex>,
    status: JobStatus,
}

impl ExecutionGraph {
    /// Expands `graph`, whose vertices in topological order are `order` (from
    /// [`JobGraph::validate`]). The job starts `CREATED`, every subtask `CREATED`.
    pub fn expand(job_id: JobId, graph: &JobGraph, order: &[VertexId]) -> Self {
        let mut subtasks = Vec::new();
        for &v in order {
            let vx = &graph.vertices[v.0 as usize];
            for i in 0..vx.parallelism {
                subtasks.push(ExecutionVertex {
                    attempt: AttemptId { execution_vertex: ExecutionVertexId { vertex: v, subtask: i }, attempt: 0 },
                    state: ExecutionState::Created,
                    display_name: format!("{} ({}/{})", vx.name, i + 1, vx.parallelism),
                    failure: None,
                });
            }
        }
        ExecutionGraph { job_id, subtasks, status: JobStatus::Created }
    }

    /// The job's status.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// The subtask `id`.
    pub fn subtask(&self, id: ExecutionVertexId) -> Option<&ExecutionVertex> {
        self.subtasks.iter().find(|s| s.id() == id)
    }

    /// Numbers every attempt of a CREATED job `epoch` (a job recovered by a new
    /// leader continues the attempt numbers of the old one, so none repeats).
    pub fn resume_at(&mut self, epoch: u32) -> Result<(), ControlError> {
        if self.status != JobStatus::Created {
            return Err(ControlError::IllegalJobTransition { from: self.status, to: JobStatus::Created });
        }
        for s in &mut self.subtasks {
            s.attempt.attempt = epoch;
        }
        Ok(())
    }

    /// The attempt number of the current deployment.
    pub fn epoch(&self) -> u32 {
        self.subtasks.first().map_or(0, |s| s.attempt.attempt)
    }

    /// Moves the job to RUNNING (its subtasks are being scheduled).
    pub fn start(&mut self) -> Result<(), ControlError> {
        self.status.transition(JobStatus::Running)
    }

    /// Requests cancellation: the job goes CANCELLING (or straight to CANCELED when
    /// nothing runs).
    pub fn cancel(&mut self) -> Result<(), ControlError> {
        if self.status.is_globally_terminal() || self.status == JobStatus::Cancelling {
            return Ok(());
        }
        self.status.transition(JobStatus::Cancelling)?;
        self.settle();
        Ok(())
    }

    /// Starts cancelling every subtask that is not terminal: those not yet deployed
    /// go straight to CANCELED, the others to CANCELING. Returns the attempts that
    /// need a cancel message.
    pub fn begin_cancel(&mut self) -> Vec<AttemptId> {
        let mut to_cancel = Vec::new();
        for s in &mut self.subtasks {
            match s.state {
                ExecutionState::Created | ExecutionState::Scheduled => {
                    let _ = s.state.transition(ExecutionState::Canceled);
                }
                ExecutionState::Deploying | ExecutionState::Initializing | ExecutionState::Running => {
                    let _ = s.state.transition(ExecutionState::Canceling);
                    to_cancel.push(s.attempt);
                }
                _ => {}
            }
        }
        self.settle();
        to_cancel
    }

    /// Starts a failover: the job goes RESTARTING and every subtask not terminal is
    /// cancelled as in [`Self::begin_cancel`]. Returns the attempts that need a
    /// cancel message. The job stays RESTARTING until [`Self::restart`].
    pub fn fail_over(&mut self) -> Result<Vec<AttemptId>, ControlError> {
        if self.status != JobStatus::Restarting {
            self.status.transition(JobStatus::Restarting)?;
        }
        Ok(self.begin_cancel())
    }

    /// Whether every subtask is terminal.
    pub fn all_terminal(&self) -> bool {
        self.subtasks.iter().all(|s| s.state.is_terminal())
    }

    /// Restarts a RESTARTING job whose subtasks are all terminal: every subtask gets
    /// a new attempt in CREATED and the job is RUNNING again. Returns the new epoch
    /// (attempt number).
    pub fn restart(&mut self) -> Result<u32, ControlError> {
        if self.status != JobStatus::Restarting || !self.all_terminal() {
            return Err(ControlError::IllegalJobTransition { from: self.status, to: JobStatus::Running });
        }
        let mut epoch = 0;
        for s in &mut self.subtasks {
            s.attempt.attempt += 1;
            epoch = s.attempt.attempt;
            s.state = ExecutionState::Created;
            s.failure = None;
        }
        self.status.transition(JobStatus::Running)?;
        Ok(epoch)
    }

    /// Fails a RESTARTING job for good (no restart possible); every subtask must be
    /// terminal.
    pub fn give_up(&mut self) -> Result<(), ControlError> {
        if !self.all_terminal() {
            return Err(ControlError::IllegalJobTransition { from: self.status, to: JobStatus::Failed });
        }
        self.status.transition(JobStatus::Failed)
    }

    /// Applies a state event of subtask `id`'s attempt and derives the job status.
    /// Returns the job status after the event.
    pub fn on_state(
        &mut self,
        attempt: AttemptId,
        to: ExecutionState,
        failure: Option<String>,
    ) -> Result<JobStatus, ControlError> {
        let sub = self
            .subtasks
            .iter_mut()
            .find(|s| s.attempt == attempt)
            .ok_or_else(|| ControlError::UnknownAttempt { attempt: attempt.to_string() })?;
        sub.state.transition(to)?;
        if to == ExecutionState::Failed {
            sub.failure = failure;
            if matches!(self.status, JobStatus::Running | JobStatus::Created) {
                self.status.transition(JobStatus::Failing)?;
            }
        }
        self.settle();
        Ok(self.status)
    }

    /// Moves the job to its terminal status once every subtask is terminal.
    fn settle(&mut self) {
        if !self.subtasks.iter().all(|s| s.state.is_terminal()) {
            return;
        }
        let next = match self.status {
            JobStatus::Running if self.subtasks.iter().all(|s| s.state == ExecutionState::Finished) => {
                JobStatus::Finished
            }
            JobStatus::Failing => JobStatus::Failed,
            JobStatus::Cancelling => JobStatus::Canceled,
            // A failover waits for `restart`.
            _ => return,
        };
        // The edges above are legal by construction.
        let _ = self.status.transition(next);
    }

    /// Fails the job at once (its master found an error in its own bookkeeping):
    /// every subtask not terminal is cancelled as in [`Self::begin_cancel`] and the
    /// job goes FAILED, a legal edge from every status that is not terminal but
    /// SUSPENDED (which stays). Returns the attempts that need a cancel message.
    pub fn abort(&mut self) -> Vec<AttemptId> {
        let to_cancel = self.begin_cancel();
        if self.status.can_transition(JobStatus::Failed) {
            self.status = JobStatus::Failed;
        }
        to_cancel
    }

    /// The first failure, as "subtask: cause".
    pub fn first_failure(&self) -> Option<String> {
        self.subtasks.iter().find_map(|s| s.failure.as_ref().map(|f| format!("{}: {f}", s.display_name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_graph::{JobVertex, OperatorSpec, PartitionerKind};

    fn graph() -> (JobGraph, Vec<VertexId>) {
        let mut g = JobGraph::new("j");
        let v = |name: &str, p| JobVertex {
            name: name.into(),
            chain: vec![OperatorSpec::new("x", vec![])],
            parallelism: p,
            slot_sharing_group: "default".into(),
        };
        let a = g.add_vertex(v("src", 2));
        let b = g.add_vertex(v("sink", 3));
        g.connect(a, b, PartitionerKind::Hash);
        let order = g.validate(&|_| true).unwrap();
        (g, order)
    }

    #[test]
    fn all_to_all_channels_cover_every_pair() {
        let (g, _) = graph();
        let ch = edge_channels(&g, 0);
        assert_eq!(ch.len(), 6);
        assert!(ch.iter().all(|c| c.subpartition == c.consumer && c.input_channel == c.producer));
        assert_eq!(subpartitions(&g, 0), 3);
        assert_eq!(input_channels(&g, 0), 2);
    }

    #[test]
    fn job_finishes_when_every_subtask_finishes() {
        use ExecutionState::*;
        let (g, order) = graph();
        let mut eg = ExecutionGraph::expand(JobId(1), &g, &order);
        assert_eq!(eg.subtasks.len(), 5);
        assert_eq!(eg.subtasks[2].display_name, "sink (1/3)");
        eg.start().unwrap();
        let attempts: Vec<_> = eg.subtasks.iter().map(|s| s.attempt).collect();
        for &a in &attempts {
            for to in [Scheduled, Deploying, Initializing, Running] {
                eg.on_state(a, to, None).unwrap();
            }
        }
        for (i, &a) in attempts.iter().enumerate() {
            let st = eg.on_state(a, Finished, None).unwrap();
            let expect = if i + 1 == attempts.len() { JobStatus::Finished } else { JobStatus::Running };
            assert_eq!(st, expect);
        }
    }

    #[test]
    fn abort_fails_the_job_from_any_live_status_and_lists_what_to_cancel() {
        use ExecutionState::*;
        let (g, order) = graph();
        let mut eg = ExecutionGraph::expand(JobId(1), &g, &order);
        eg.start().unwrap();
        let first = eg.subtasks[0].attempt;
        for to in [Scheduled, Deploying, Initializing, Running] {
            eg.on_state(first, to, None).unwrap();
        }
        assert_eq!(eg.abort(), vec![first], "only the deployed subtask needs a cancel message");
        assert_eq!(eg.status(), JobStatus::Failed);
        assert!(eg.subtasks[1..].iter().all(|s| s.state == Canceled));
        eg.on_state(first, Canceled, None).unwrap();
        assert_eq!(eg.status(), JobStatus::Failed, "stays failed");
    }

    #[test]
    fn a_failure_makes_the_job_fail_once_the_rest_is_cancelled() {
        use ExecutionState::*;
        let (g, order) = graph();
        let mut eg = ExecutionGraph::expand(JobId(1), &g, &order);
        eg.start().unwrap();
        let attempts: Vec<_> = eg.subtasks.iter().map(|s| s.attempt).collect();
        for &a in &attempts {
            for to in [Scheduled, Deploying, Initializing, Running] {
                eg.on_state(a, to, None).unwrap();
            }
        }
        assert_eq!(eg.on_state(attempts[0], Failed, Some("boom".into())).unwrap(), JobStatus::Failing);
        for &a in &attempts[1..] {
            eg.on_state(a, Canceling, None).unwrap();
            eg.on_state(a, Canceled, None).unwrap();
        }
        assert_eq!(eg.status(), JobStatus::Failed);
        assert_eq!(eg.first_failure().unwrap(), "src (1/2): boom");
        assert!(eg.on_state(attempts[0], Running, None).is_err());
    }
}
