//! The embedded engine's result board: each job's source progress and the full
//! outputs of its finished subtasks, handed from the worker's thread to the
//! engine's job handles.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use shardflow_control::{AttemptId, JobId, VertexId};

use crate::runtime::task::TaskOutput;

/// Each job's source progress and, for an engine embedding the worker in its
/// process, each finished subtask's full output (histograms and all; the frames
/// carry a summary). A worker of its own keeps no outputs and forgets a job when
/// its last task here ends; an embedding engine's entries live until it takes
/// them, or, for a job nobody waits for any more, until its last task here ends.
#[derive(Debug, Default)]
pub(crate) struct JobBoard {
    keep_outputs: bool,
    progress: Mutex<HashMap<JobId, Arc<AtomicU64>>>,
    outputs: Mutex<HashMap<JobId, Outputs>>,
    abandoned: Mutex<HashSet<JobId>>,
}

/// The outputs of a job's finished subtasks, by vertex and subtask.
pub(crate) type Outputs = BTreeMap<(VertexId, u32), TaskOutput>;

impl JobBoard {
    /// The board of a worker embedded in an engine, which takes the outputs.
    pub(crate) fn embedded() -> Self {
        JobBoard { keep_outputs: true, ..JobBoard::default() }
    }

    /// The source progress counter of `job`.
    pub(crate) fn progress(&self, job: JobId) -> Arc<AtomicU64> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).entry(job).or_default().clone()
    }

    /// Takes the outputs of `job`'s subtasks and forgets the job.
    pub(crate) fn take(&self, job: JobId) -> Outputs {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).remove(&job);
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).remove(&job).unwrap_or_default()
    }

    /// Nobody will take `job`'s outputs: forget them, and keep none that come.
    pub(crate) fn abandon(&self, job: JobId) {
        self.abandoned.lock().unwrap_or_else(PoisonError::into_inner).insert(job);
        self.take(job);
    }

    pub(super) fn put(&self, job: JobId, attempt: AttemptId, output: TaskOutput) {
        if !self.keep_outputs || self.abandoned.lock().unwrap_or_else(PoisonError::into_inner).contains(&job) {
            return;
        }
        let at = (attempt.execution_vertex.vertex, attempt.execution_vertex.subtask);
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).entry(job).or_default().insert(at, output);
    }

    /// The last task of `job` on this worker ended.
    pub(super) fn ended_here(&self, job: JobId) {
        if !self.keep_outputs || self.abandoned.lock().unwrap_or_else(PoisonError::into_inner).remove(&job) {
            self.take(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use shardflow_control::{ExecutionVertexId, VertexId};

    use super::*;
    use crate::runtime::collector::SinkOutput;

    fn attempt(subtask: u32) -> AttemptId {
        AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(1), subtask }, attempt: 0 }
    }

    fn output(n: u64) -> TaskOutput {
        TaskOutput {
            sinks: vec![SinkOutput::Count { records: n, value_sum: n }],
            records_in: n,
            records_out: 0,
            times: Default::default(),
            snapshot: Vec::new(),
            stopped: false,
            position: None,
        }
    }

    #[test]
    fn the_board_keeps_outputs_until_taken() {
        let board = JobBoard::embedded();
        board.progress(JobId(1)).store(7, Ordering::Relaxed);
        assert_eq!(board.progress(JobId(1)).load(Ordering::Relaxed), 7, "one counter per job");
        board.put(JobId(1), attempt(0), output(3));
        board.put(JobId(1), attempt(1), output(4));
        let taken = board.take(JobId(1));
        assert_eq!(taken.values().map(|o| o.records_in).collect::<Vec<_>>(), vec![3, 4]);
        assert!(board.take(JobId(1)).is_empty(), "taken once");
        assert!(board.progress.lock().unwrap().is_empty());
    }

    #[test]
    fn an_abandoned_jobs_outputs_are_dropped_and_forgotten_when_it_ends() {
        let board = JobBoard::embedded();
        board.put(JobId(2), attempt(0), output(1));
        board.abandon(JobId(2));
        assert!(board.outputs.lock().unwrap().is_empty(), "what was there is dropped");
        board.put(JobId(2), attempt(1), output(2));
        assert!(board.outputs.lock().unwrap().is_empty(), "what comes later is not kept");
        board.ended_here(JobId(2));
        assert!(board.abandoned.lock().unwrap().is_empty(), "no marker outlives the job");
        assert!(board.progress.lock().unwrap().is_empty());
    }

    #[test]
    fn a_worker_of_its_own_keeps_no_outputs_and_forgets_a_job_when_it_ends() {
        let board = JobBoard::default();
        board.progress(JobId(3)).store(5, Ordering::Relaxed);
        board.put(JobId(3), attempt(0), output(1));
        assert!(board.outputs.lock().unwrap().is_empty());
        board.ended_here(JobId(3));
        assert!(board.progress.lock().unwrap().is_empty());
    }
}
