//! What the embedded engine shares with its job handles: the in-process
//! coordinator, the live registry, the result board. Job handles outlive no
//! engine state they need: they hold this, not the engine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::cluster::{pipe_client, ClusterClient, CoordinatorServer, JobBoard};
use crate::error::EngineError;
use crate::registry::LiveRegistry;

/// What the engine shares with its job handles.
pub(crate) struct EngineInner {
    server: Mutex<Option<CoordinatorServer>>,
    live: Arc<LiveRegistry>,
    pub(crate) board: Arc<JobBoard>,
    submissions: AtomicU64,
    stopping: AtomicBool,
}

impl EngineInner {
    /// The shared state of an engine whose coordinator is `server`.
    pub(crate) fn new(server: CoordinatorServer, live: Arc<LiveRegistry>, board: Arc<JobBoard>) -> Self {
        EngineInner {
            server: Mutex::new(Some(server)),
            live,
            board,
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
        server.as_ref().map(crate::cluster::pipe_to)
    }

    /// How many in-process connections its coordinator serves, once at most
    /// `n` do or `timeout` passed.
    #[cfg(test)]
    pub(crate) fn connections_after(&self, n: usize, timeout: std::time::Duration) -> usize {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.as_ref().map_or(0, |s| s.in_process_connections().wait_for_at_most(n, timeout))
    }

    /// Marks the engine stopping and stops its coordinator.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(server);
    }

    /// A client on a fresh in-process connection, unless the engine has stopped.
    pub(crate) fn client(&self) -> Result<ClusterClient, EngineError> {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.as_ref().map(pipe_client).ok_or(EngineError::Shutdown)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Forgets the jobs a submission added.
    pub(crate) fn forget(&self, names: &SubmissionNames) {
        for n in &names.jobs {
            self.live.remove(n);
        }
    }
}

impl std::fmt::Debug for EngineInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineInner").finish_non_exhaustive()
    }
}

/// The live-registry names one submission added.
#[derive(Debug, Default)]
pub(crate) struct SubmissionNames {
    pub(crate) jobs: Vec<String>,
}
