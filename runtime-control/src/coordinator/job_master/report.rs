//! What a job master tells of its job: a listing's line, its details (every
//! subtask with its state, place and result), and each subtask's record counts
//! so far, kept from its worker's heartbeats.

use super::JobMaster;
use crate::ids::WorkerId;
use crate::protocol::*;
use crate::state::ExecutionState;

impl JobMaster {
    /// The job in a listing.
    pub(in crate::coordinator) fn summary(&self) -> JobSummary {
        let count = |st: ExecutionState| self.eg.subtasks.iter().filter(|s| s.state == st).count() as u32;
        JobSummary {
            job: self.id,
            name: self.graph.name.clone(),
            status: self.eg.status(),
            subtasks: self.eg.subtasks.len() as u32,
            running: count(ExecutionState::Running),
            finished: count(ExecutionState::Finished),
            restarts: self.restart.restarts(),
        }
    }

    /// A running subtask's record counts, from a heartbeat of `worker`: kept
    /// if they are of the subtask's current attempt, placed on that worker.
    pub(in crate::coordinator) fn on_progress(&mut self, worker: WorkerId, t: TaskProgress) {
        let id = t.attempt.execution_vertex;
        let current = self.eg.subtask(id).is_some_and(|s| s.attempt == t.attempt);
        let here = self.assignment.of(id).is_some_and(|p| p.slot.worker == worker);
        if current && here {
            self.progress.insert(id, t);
        }
    }

    /// Each subtask's record counts and times so far, of its current
    /// attempt: a finished one's result, a running one's last heartbeat.
    pub(in crate::coordinator) fn progress(&self) -> Vec<SubtaskProgress> {
        self.eg
            .subtasks
            .iter()
            .filter_map(|s| {
                let (records_in, records_out, times) = match self.results.get(&s.id()) {
                    Some(r) if s.state == ExecutionState::Finished => (r.records_in, r.records_out, r.times),
                    _ => {
                        let p = self.progress.get(&s.id()).filter(|p| p.attempt == s.attempt)?;
                        (p.records_in, p.records_out, p.times)
                    }
                };
                Some(SubtaskProgress {
                    vertex: self.graph.vertices[s.id().vertex.0 as usize].name.clone(),
                    subtask: s.id().subtask,
                    attempt: s.attempt.attempt,
                    records_in,
                    records_out,
                    times,
                })
            })
            .collect()
    }

    /// The job in detail: every subtask with its state, place and result.
    pub(in crate::coordinator) fn details(&self) -> JobDetails {
        let subtasks = self
            .eg
            .subtasks
            .iter()
            .map(|s| {
                let place = self.assignment.of(s.id());
                SubtaskDetails {
                    vertex: self.graph.vertices[s.id().vertex.0 as usize].name.clone(),
                    subtask: s.id().subtask,
                    attempt: s.attempt.attempt,
                    state: s.state,
                    slot: place.map(|p| p.slot),
                    core: place.map(|p| p.core as u32),
                    result: self.results.get(&s.id()).cloned(),
                    failure: s.failure.clone(),
                }
            })
            .collect();
        JobDetails {
            job: self.id,
            name: self.graph.name.clone(),
            status: self.eg.status(),
            restarts: self.restart.restarts(),
            failure: self.failure.clone(),
            submit_to_running_us: self.all_running.map(|d| d.as_micros() as u64),
            subtasks,
        }
    }
}
