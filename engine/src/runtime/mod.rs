//! The typed task runtime: how a vertex's operators are built on their shard and
//! call each other ([`collector`], [`build`], [`vertex`]), the operators
//! themselves ([`ops`], [`keyed`], [`sources`], [`sinks`]), where records leave a
//! vertex ([`output`]), keyed state in key groups ([`state`]), processing time
//! ([`clock`]), the mailbox
//! loop that runs a task ([`task`]), the shard's scheduler ([`scheduler`]) and a
//! host thread's ([`host`]).

pub(crate) mod bound;
pub(crate) mod build;
pub(crate) mod clock;
pub(crate) mod collector;
pub(crate) mod control;
pub(crate) mod host;
pub(crate) mod keyed;
pub(crate) mod ops;
pub(crate) mod output;
pub(crate) mod progress;
pub(crate) mod scheduler;
pub(crate) mod side;
pub(crate) mod sinks;
pub(crate) mod sources;
pub(crate) mod state;
pub(crate) mod task;
pub(crate) mod vertex;

use std::sync::Arc;

/// The wake-up protocols of the queues between a shard and a service's
/// threads (ingress and egress handles): model-checked where they live.
pub(crate) use shardflow_netstack::{ParkedWaker, RoomWaiters};

/// A waker that counts its wake-ups, for the tests of wake-up protocols.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct CountingWaker(std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl CountingWaker {
    /// A waker for it, and it.
    pub(crate) fn new() -> (std::task::Waker, Arc<Self>) {
        let counter = Arc::new(CountingWaker::default());
        (std::task::Waker::from(counter.clone()), counter)
    }

    /// The wake-ups so far.
    pub(crate) fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What an idle shard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdlePolicy {
    /// Sleep in the kernel until an event or timer (no CPU while idle). Default.
    #[default]
    Park,
    /// Busy-poll when idle: the shard polls its timers and wake-ups from other
    /// threads instead of sleeping (parking after a second without work);
    /// lowest latency, one full core per shard. Leave a core to the threads
    /// that push into an ingress or read an egress (or host shard 0 on one):
    /// behind shards spinning on every core they wait for the kernel's tick,
    /// milliseconds (the engine warns at start).
    Spin,
}

use crate::runtime::state::JobSnapshot;
use crate::runtime::vertex::VertexPlan;

/// A job's typed plan: each vertex's body, and how the job starts and ends.
/// Shared by every subtask of the job (`Send + Sync`).
pub(crate) struct JobPlan {
    /// By job-graph vertex.
    pub(crate) vertices: Vec<VertexPlan>,
    /// The snapshot the job's state starts from.
    pub(crate) restore: Option<Arc<JobSnapshot>>,
    /// At the end of input, snapshot the operators' state instead of finishing
    /// them (stop with a snapshot).
    pub(crate) snapshot_at_end: bool,
    /// Its ingresses: closed when the job ends.
    pub(crate) ingresses: Vec<sources::IngressCloser>,
}

impl std::fmt::Debug for JobPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobPlan")
            .field("vertices", &self.vertices.len())
            .field("restore", &self.restore.is_some())
            .field("snapshot_at_end", &self.snapshot_at_end)
            .finish()
    }
}
