//! Jobs as users submit and read them: a built job, job handles and results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shardflow_control::protocol::{ErrorCode, JobDetails, TaskTimes, WaitCondition};
use shardflow_control::{JobId, JobStatus, SlotAssignment};

use crate::error::EngineError;
use crate::runtime::collector::SinkOutput;
use crate::runtime::state::JobSnapshot;
use crate::shared::EngineInner;

/// What one subtask reported when it finished.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtaskReport {
    /// Vertex name.
    pub vertex: String,
    /// Subtask index.
    pub subtask: u32,
    /// Records read from its input gate (sources: records produced).
    pub records_in: u64,
    /// Records written to its partitions.
    pub records_out: u64,
    /// Where its time went, from its start to its end: busy, idle (waiting for
    /// input) and back-pressured (waiting on a full output: a consumer
    /// downstream slower than it), as Flink's `busyTimeMs`, `idleTimeMs` and
    /// `backPressuredTimeMs`.
    pub times: TaskTimes,
    /// Results of the sinks in its chain.
    pub sinks: Vec<SinkOutput>,
}

/// The result of a finished job.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The job.
    pub job_id: JobId,
    /// Its name.
    pub name: String,
    /// Its final status (FINISHED).
    pub status: JobStatus,
    /// Where each subtask ran.
    pub placement: SlotAssignment,
    /// Per-subtask reports.
    pub subtasks: Vec<SubtaskReport>,
    /// When it was submitted.
    pub submitted_at: Instant,
    /// When its last subtask finished.
    pub finished_at: Instant,
    /// The operators' state at the end of input, for a job that stopped with a
    /// snapshot ([`crate::Dataflow::stop_with_snapshot`]).
    pub snapshot: Option<JobSnapshot>,
}

impl JobResult {
    /// Submission to completion.
    pub fn duration(&self) -> Duration {
        self.finished_at.saturating_duration_since(self.submitted_at)
    }

    /// Sum over every count sink: (records, wrapping value sum).
    pub fn count(&self) -> (u64, u64) {
        self.sink_outputs().fold((0, 0), |(n, s), o| match o {
            SinkOutput::Count { records, value_sum } => (n + records, s.wrapping_add(*value_sum)),
            _ => (n, s),
        })
    }

    /// Every latency sink's histogram merged, if there is one.
    pub fn latency(&self) -> Option<Histogram<u64>> {
        let mut merged: Option<Histogram<u64>> = None;
        for o in self.sink_outputs() {
            if let SinkOutput::Latency(h) = o {
                match &mut merged {
                    None => merged = Some(h.clone()),
                    Some(m) => {
                        // Same bounds by construction.
                        let _ = m.add(h);
                    }
                }
            }
        }
        merged
    }

    fn sink_outputs(&self) -> impl Iterator<Item = &SinkOutput> {
        self.subtasks.iter().flat_map(|s| s.sinks.iter())
    }

    /// Its subtasks as a table to print: each one's core, records, and where
    /// its time went — busy, idle, back-pressured, and its busy share. The
    /// subtask that held the job up is the busy one its producers wait on.
    ///
    /// ```text
    /// subtask    core    records in   records out    busy ms    idle ms  backpr ms  busy %
    /// source[0]     0      50000000      50000000        118          0         96      55
    /// sink[0]       1      50000000             0        201         13          0      93
    /// ```
    pub fn subtask_table(&self) -> SubtaskTable<'_> {
        SubtaskTable(self)
    }
}

/// [`JobResult::subtask_table`]: one line per subtask, in the order of its
/// reports.
pub struct SubtaskTable<'a>(&'a JobResult);

impl std::fmt::Display for SubtaskTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0;
        let name = |s: &SubtaskReport| format!("{}[{}]", s.vertex, s.subtask);
        let w = r.subtasks.iter().map(|s| name(s).len()).max().unwrap_or(0).max(7);
        writeln!(
            f,
            "{:<w$}  {:>4}  {:>12}  {:>12}  {:>9}  {:>9}  {:>9}  {:>6}",
            "subtask", "core", "records in", "records out", "busy ms", "idle ms", "backpr ms", "busy %"
        )?;
        for s in &r.subtasks {
            let core =
                r.placement.placements.iter().find(|p| p.vertex_name == s.vertex && p.subtask.subtask == s.subtask);
            let core = core.map_or_else(|| "-".to_string(), |p| p.core.to_string());
            let t = s.times;
            let all = t.busy_ms.saturating_add(t.idle_ms).saturating_add(t.back_pressured_ms);
            let busy =
                t.busy_ms.saturating_mul(100).checked_div(all).map_or_else(|| "-".to_string(), |p| p.to_string());
            writeln!(
                f,
                "{:<w$}  {core:>4}  {:>12}  {:>12}  {:>9}  {:>9}  {:>9}  {busy:>6}",
                name(s),
                s.records_in,
                s.records_out,
                t.busy_ms,
                t.idle_ms,
                t.back_pressured_ms
            )?;
        }
        Ok(())
    }
}

/// A submitted job: its id and placement, and the way to wait for or cancel it.
/// Dropping it leaves the job running; its result is then no longer kept. The
/// coordinator remembers the last 1000 ended jobs
/// ([`crate::CoordinatorConfig::retained_jobs`]): a job waited for only after more
/// than that many others ended answers [`EngineError::UnknownJob`].
#[derive(Debug)]
pub struct JobHandle {
    pub(crate) id: JobId,
    pub(crate) name: String,
    pub(crate) vertex_names: Vec<String>,
    pub(crate) placement: SlotAssignment,
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) submitted_at: Instant,
    pub(crate) engine: Arc<EngineInner>,
    /// Whether its outcome has been handed out.
    pub(crate) taken: std::sync::atomic::AtomicBool,
}

/// The longest single wait asked of the coordinator; longer waits ask again.
const WAIT_STEP: Duration = Duration::from_secs(3600);

impl JobHandle {
    /// The job id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Which slot, shard and core each subtask runs on.
    pub fn placement(&self) -> &SlotAssignment {
        &self.placement
    }

    /// Records the job's sources have produced so far.
    pub fn source_records(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Requests cancellation; [`JobHandle::wait`] then returns [`EngineError::JobCanceled`].
    pub fn cancel(&self) {
        let _ = self.engine.with_client(|c| c.cancel(self.id));
    }

    /// Stops the job with a snapshot (Flink's stop-with-savepoint): its
    /// sources stop where they are, each emitting a barrier behind what it has
    /// emitted; every operator processes what came before the barrier and
    /// snapshots its state instead of finishing (no end-of-input results), and
    /// each source with a position records what it had left.
    /// [`JobHandle::wait`] then returns the snapshot in
    /// [`JobResult::snapshot`]; a job restored from it
    /// ([`crate::Dataflow::restore`], at another parallelism too) goes on from
    /// there. Works under back-pressure: what was emitted before the stop still
    /// has to leave, so sinks must be read to the end. A job whose sources all
    /// ended before the stop reached them finishes as usual (no snapshot).
    /// An ingress closes at the stop — a push from then on hands its record
    /// back in [`crate::PushError::Closed`] — and what was queued in it is
    /// processed before the snapshot, so a service knows exactly which records
    /// the snapshot holds: those its pushes were accepted. Asked while the job
    /// deploys or restarts, it stops once it runs. Refused with
    /// [`EngineError::CannotStop`] once the job has ended or is being
    /// cancelled.
    pub fn stop_with_snapshot(&self) -> Result<(), EngineError> {
        self.engine.with_client(|c| c.stop_with_snapshot(self.id)).map_err(|e| match e {
            EngineError::Remote { code: ErrorCode::UnknownJob, .. } => EngineError::UnknownJob(self.id),
            EngineError::Remote { code: ErrorCode::Unexpected, message } => {
                EngineError::CannotStop { job: self.id, reason: message }
            }
            other => other,
        })
    }

    /// Waits for the job to end (on the thread of a [`crate::HostedShard`],
    /// running the shard meanwhile).
    pub fn wait(self) -> Result<JobResult, EngineError> {
        self.outcome(None)
    }

    /// Waits up to `timeout`; the job keeps running after a timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<JobResult, EngineError> {
        self.outcome(Some(Instant::now() + timeout))
    }

    fn outcome(&self, deadline: Option<Instant>) -> Result<JobResult, EngineError> {
        let gone = |e: EngineError| match e {
            EngineError::Remote { code: ErrorCode::UnknownJob, .. } => EngineError::UnknownJob(self.id),
            // The in-process coordinator closed the connection: the engine stopped.
            EngineError::Io { .. } => EngineError::Shutdown,
            other => other,
        };
        let mut client = self.engine.client()?;
        let id = self.id;
        // On a host's thread, its shard runs while the coordinator is asked.
        let (details, client) = crate::runtime::host::blocking(move || loop {
            let step = deadline.map_or(WAIT_STEP, |d| d.saturating_duration_since(Instant::now()).min(WAIT_STEP));
            let d = client.wait(id, WaitCondition::Terminal, step).map_err(gone)?;
            if d.status.is_globally_terminal() {
                break Ok((d, client));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Err(EngineError::Timeout(id));
            }
        })?;
        self.engine.done_with(client);
        let finished_at = Instant::now();
        let outputs = self.engine.board.take(self.id);
        self.taken.store(true, Ordering::Release);
        if details.status != JobStatus::Finished && self.engine.stopping() {
            return Err(EngineError::Shutdown);
        }
        self.result(details, outputs, finished_at)
    }

    fn result(
        &self,
        details: JobDetails,
        mut outputs: crate::cluster::Outputs,
        finished_at: Instant,
    ) -> Result<JobResult, EngineError> {
        match details.status {
            JobStatus::Finished => Ok(JobResult {
                snapshot: snapshot_of(&mut outputs),
                job_id: self.id,
                name: self.name.clone(),
                status: details.status,
                placement: self.placement.clone(),
                subtasks: outputs
                    .into_iter()
                    .map(|((v, i), o)| SubtaskReport {
                        vertex: self.vertex_names.get(v.0 as usize).cloned().unwrap_or_default(),
                        subtask: i,
                        records_in: o.records_in,
                        records_out: o.records_out,
                        times: o.times,
                        sinks: o.sinks,
                    })
                    .collect(),
                submitted_at: self.submitted_at,
                finished_at,
            }),
            JobStatus::Canceled => Err(EngineError::JobCanceled(self.id)),
            _ => Err(EngineError::JobFailed {
                job: self.id,
                cause: details.failure.unwrap_or_else(|| "unknown cause".into()),
            }),
        }
    }
}

/// The snapshot a job's subtasks took at their end, if they took one: with the
/// position of every source subtask where the job was stopped (what each had
/// left, a source that had finished included), so a restore goes on from there.
/// The parts are moved out of the outputs, not copied: they hold all the state.
fn snapshot_of(outputs: &mut crate::cluster::Outputs) -> Option<JobSnapshot> {
    let stopped = outputs.values().any(|o| o.stopped);
    if !stopped && outputs.values().all(|o| o.snapshot.is_empty()) {
        return None;
    }
    let mut s = JobSnapshot::default();
    for o in outputs.values_mut() {
        std::mem::take(&mut o.snapshot).into_iter().for_each(|part| s.add(part));
        if let Some(position) = o.position.take().filter(|_| stopped) {
            s.add(position);
        }
    }
    Some(s)
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if !self.taken.load(Ordering::Acquire) {
            self.engine.board.abandon(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use shardflow_control::{ExecutionVertexId, ShardId, SlotId, SubtaskPlacement, VertexId, WorkerId};

    use super::*;

    #[test]
    fn the_subtask_table_gives_each_subtask_its_core_counts_and_times() {
        let at = Instant::now();
        let report = |vertex: &str, subtask, records_in, busy_ms, idle_ms, back_pressured_ms| SubtaskReport {
            vertex: vertex.into(),
            subtask,
            records_in,
            records_out: records_in / 2,
            times: TaskTimes { busy_ms, idle_ms, back_pressured_ms },
            sinks: vec![],
        };
        let placed = |vertex: u32, vertex_name: &str, core| SubtaskPlacement {
            subtask: ExecutionVertexId { vertex: VertexId(vertex), subtask: 0 },
            vertex_name: vertex_name.into(),
            slot: SlotId { worker: WorkerId(0), shard: ShardId(core as u32), index: 0 },
            core,
        };
        let result = JobResult {
            job_id: JobId(1),
            name: "j".into(),
            status: JobStatus::Finished,
            placement: SlotAssignment { placements: vec![placed(0, "source", 3), placed(1, "a-long-sink", 5)] },
            subtasks: vec![report("source", 0, 1000, 60, 0, 40), report("a-long-sink", 0, 1000, 25, 75, 0)],
            submitted_at: at,
            finished_at: at,
            snapshot: None,
        };
        let want = "\
subtask         core    records in   records out    busy ms    idle ms  backpr ms  busy %
source[0]          3          1000           500         60          0         40      60
a-long-sink[0]     5          1000           500         25         75          0      25
";
        assert_eq!(result.subtask_table().to_string(), want);
    }
}
