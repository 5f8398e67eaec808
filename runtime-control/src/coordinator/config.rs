//! The coordinator's settings.

use std::time::Duration;

use crate::placement::PlacementStrategy;
use crate::restart::RestartStrategy;

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How often workers get a heartbeat. Default 1 s.
    pub heartbeat_interval: Duration,
    /// A worker silent this long is lost. Default 5 s.
    pub heartbeat_timeout: Duration,
    /// How long a restarting job, or one a new leader recovered, waits for
    /// enough free slots. Default 10 s.
    pub slot_wait_timeout: Duration,
    /// How long a submitted job waits for enough free slots (workers still
    /// registering, other jobs' slots) before it fails saying so; it is CREATED
    /// meanwhile. Zero refuses such a submission at once (`NotEnoughSlots`, as
    /// the embedded engine does: its one worker's slots are all it will have).
    /// Default 60 s.
    pub submit_slot_wait: Duration,
    /// Placement when a submission names none. Default `colocate` (Flink's slot
    /// sharing: subtask i of every vertex in one slot).
    pub default_placement: PlacementStrategy,
    /// Restart strategy when a submission names none. Default `fixed-delay`, 3
    /// attempts, 1 s apart.
    pub default_restart: RestartStrategy,
    /// Ended jobs kept for status queries (Flink's job store capacity); beyond
    /// this the longest-ended are forgotten and answer `UnknownJob`. At least 1.
    /// Default 1000.
    pub retained_jobs: usize,
    /// Whether a running job may be stopped with a snapshot
    /// (`StopWithSavepoint`): where the workers hand snapshots to a client in
    /// their own process, as the embedded engine's does. A cluster's
    /// savepoints, written to storage, come with checkpointing. Default false.
    pub snapshots_in_process: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            slot_wait_timeout: Duration::from_secs(10),
            submit_slot_wait: Duration::from_secs(60),
            default_placement: PlacementStrategy::Colocate,
            default_restart: RestartStrategy::default(),
            retained_jobs: 1000,
            snapshots_in_process: false,
        }
    }
}
