//! What the embedded engine shares with its job handles: the in-process
//! coordinator and the clients that talk to it, the live registry, the result
//! board. Job handles outlive no engine state they need: they hold this, not the
//! engine.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use shardflow_control::JobId;

use crate::cluster::{pipe_client, ClusterClient, CoordinatorServer, JobBoard};
use crate::error::EngineError;
use crate::registry::LiveRegistry;
use crate::runtime::sources::IngressCloser;

/// What the engine shares with its job handles.
pub(crate) struct EngineInner {
    server: Mutex<Option<CoordinatorServer>>,
    live: Arc<LiveRegistry>,
    pub(crate) board: Arc<JobBoard>,
    /// The ingresses of its jobs, closed when the coordinator says a job ended.
    pub(crate) job_ends: Arc<JobEnds>,
    /// In-process clients not in use, kept for the next call: each connection
    /// costs the coordinator's loop an open and a close, and the client a
    /// queue of its own.
    idle: Mutex<Vec<ClusterClient>>,
    submissions: AtomicU64,
    stopping: AtomicBool,
}

/// The most idle clients kept; callers beyond them at once open connections of
/// their own, closed after the call.
const IDLE_CLIENTS: usize = 4;

impl EngineInner {
    /// The shared state of an engine whose coordinator is `server`.
    pub(crate) fn new(
        server: CoordinatorServer,
        live: Arc<LiveRegistry>,
        board: Arc<JobBoard>,
        job_ends: Arc<JobEnds>,
    ) -> Self {
        EngineInner {
            server: Mutex::new(Some(server)),
            live,
            board,
            job_ends,
            idle: Mutex::new(Vec::new()),
            submissions: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// The process's live registry.
    pub(crate) fn live(&self) -> &LiveRegistry {
        &self.live
    }

    /// The process's live registry, shared.
    pub(crate) fn live_arc(&self) -> Arc<LiveRegistry> {
        self.live.clone()
    }

    /// A number unique to each submission of this engine, from 1.
    pub(crate) fn next_submission(&self) -> u64 {
        self.submissions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A fresh in-process connection's end, unless the engine has stopped (for
    /// the engine's own worker).
    pub(crate) fn pipe(&self) -> Option<crate::cluster::PipeEnd> {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.as_ref().map(CoordinatorServer::connect_in_process)
    }

    /// How many in-process connections its coordinator serves, once at most
    /// `n` do or `timeout` passed.
    #[cfg(test)]
    pub(crate) fn connections_after(&self, n: usize, timeout: std::time::Duration) -> usize {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.as_ref().map_or(0, |s| s.in_process_connections().wait_for_at_most(n, timeout))
    }

    /// How many connections its coordinator has been offered.
    #[cfg(test)]
    pub(crate) fn connections_offered(&self) -> u64 {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.as_ref().map_or(0, |s| s.connections_offered())
    }

    /// Marks the engine stopping, closes its idle clients and stops its
    /// coordinator.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        drop(std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner)));
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(server);
    }

    /// Runs `call` on an in-process client ([`Self::client`]) and keeps the
    /// client for the next call if it succeeded ([`Self::done_with`]).
    pub(crate) fn with_client<R>(
        &self,
        call: impl FnOnce(&mut ClusterClient) -> Result<R, EngineError>,
    ) -> Result<R, EngineError> {
        let mut client = self.client()?;
        let result = call(&mut client);
        if result.is_ok() {
            self.done_with(client);
        }
        result
    }

    /// An idle in-process client, else one on a fresh connection, unless the
    /// engine has stopped.
    pub(crate) fn client(&self) -> Result<ClusterClient, EngineError> {
        if let Some(client) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(client);
        }
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.as_ref().map(pipe_client).ok_or(EngineError::Shutdown)
    }

    /// Keeps `client`, whose last call succeeded, for the next caller (up to
    /// [`IDLE_CLIENTS`], and not once the engine stops). After an error reply
    /// the coordinator closes the connection: such a client is dropped, never
    /// handed back.
    pub(crate) fn done_with(&self, client: ClusterClient) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_CLIENTS && !self.stopping() {
            idle.push(client);
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for EngineInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineInner").finish_non_exhaustive()
    }
}

/// What one accepted submission leaves behind until its job ends: its plan in
/// the live registry (under the submission's tag) and its ingresses.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) tag: String,
    pub(crate) ingresses: Vec<IngressCloser>,
}

/// The submissions of an engine's running jobs, each ended when its coordinator
/// says the job ended — not when its handle is dropped: a job submitted and left
/// to run (fed by its ingress, read through its egress) keeps its plan for every
/// task deployed or restarted until its end. Then its ingresses are closed
/// (unless a source of it still reads, which closes it as it ends), so a pusher
/// waiting for room learns it even where no source of the job ever ran (a job
/// refused at deployment), and its plan leaves the live registry.
#[derive(Debug)]
pub(crate) struct JobEnds {
    live: Arc<LiveRegistry>,
    jobs: Mutex<Ends>,
}

#[derive(Debug, Default)]
struct Ends {
    /// Running jobs' submissions.
    watched: HashMap<JobId, Submission>,
    /// Jobs that ended before they were watched (between the coordinator's
    /// acceptance and [`JobEnds::watch`]).
    ended: HashSet<JobId>,
}

impl JobEnds {
    /// Ends of the jobs whose plans are in `live`.
    pub(crate) fn new(live: Arc<LiveRegistry>) -> Self {
        JobEnds { live, jobs: Mutex::default() }
    }

    /// Ends `submission` when job `id` ends (at once if it has).
    pub(crate) fn watch(&self, id: JobId, submission: Submission) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.ended.remove(&id) {
            drop(jobs);
            self.end(submission);
        } else {
            jobs.watched.insert(id, submission);
        }
    }

    /// Job `id` ended (the coordinator's thread calls this).
    pub(crate) fn ended(&self, id: JobId) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        match jobs.watched.remove(&id) {
            Some(submission) => {
                drop(jobs);
                self.end(submission);
            }
            None => {
                jobs.ended.insert(id);
            }
        }
    }

    fn end(&self, submission: Submission) {
        submission.ingresses.iter().for_each(IngressCloser::close);
        self.live.remove(&submission.tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JOB_OPERATOR;
    use crate::registry::JobCatalog;
    use crate::runtime::sources::ingress;
    use crate::{Dataflow, Job, PushError, QueueBound};

    fn plan(name: &str) -> Job {
        let df = Dataflow::new(name);
        df.from_iter("items", vec![1u64]).discard();
        df.build().expect("a one-vertex job")
    }

    fn known(live: &LiveRegistry, tag: &str) -> bool {
        live.knows(&format!("{JOB_OPERATOR}{tag}"))
    }

    #[test]
    fn a_jobs_end_closes_its_ingresses_and_forgets_its_plan_whether_before_or_after_the_watch() {
        let live = Arc::new(LiveRegistry::new(JobCatalog::new()));
        let ends = JobEnds::new(live.clone());
        let (mut early, early_sources) = ingress::<u64>("early", QueueBound::records(4), 1, None);
        let (mut late, late_sources) = ingress::<u64>("late", QueueBound::records(4), 1, None);
        let submission = |tag: &str, closer| {
            live.add(tag, Arc::new(plan(tag)));
            Submission { tag: tag.to_string(), ingresses: vec![closer] }
        };
        // Ends before it is watched (between acceptance and the watch).
        ends.ended(JobId(1));
        ends.watch(JobId(1), submission("early@1", early_sources.closer()));
        assert!(matches!(early.try_push(1), Err(PushError::Closed(1))));
        assert!(!known(&live, "early@1"), "an ended job's plan is forgotten");
        // Watched, then another job ends: still open, still known.
        ends.watch(JobId(2), submission("late@2", late_sources.closer()));
        ends.ended(JobId(3));
        assert!(late.try_push(2).is_ok());
        assert!(known(&live, "late@2"), "a running job's plan stays");
        ends.ended(JobId(2));
        assert!(matches!(late.try_push(3), Err(PushError::Closed(3))));
        assert!(!known(&live, "late@2"));
        let jobs = ends.jobs.lock().unwrap();
        assert!(jobs.watched.is_empty());
        assert_eq!(jobs.ended, HashSet::from([JobId(3)]), "only the unwatched end is kept");
    }
}
