//! What the embedded engine shares with its job handles: the in-process
//! coordinator and the clients that talk to it, the live registry, the result
//! board. Job handles outlive no engine state they need: they hold this, not the
//! engine.

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
    /// In-process clients not in use, kept for the next call: each connection
    /// costs the coordinator a reader thread, started and ended with it.
    idle: Mutex<Vec<ClusterClient>>,
    submissions: AtomicU64,
    stopping: AtomicBool,
}

/// The most idle clients kept; callers beyond them at once open connections of
/// their own, closed after the call.
const IDLE_CLIENTS: usize = 4;

impl EngineInner {
    /// The shared state of an engine whose coordinator is `server`.
    pub(crate) fn new(server: CoordinatorServer, live: Arc<LiveRegistry>, board: Arc<JobBoard>) -> Self {
        EngineInner {
            server: Mutex::new(Some(server)),
            live,
            board,
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
        server.as_ref().map(crate::cluster::pipe_to)
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
