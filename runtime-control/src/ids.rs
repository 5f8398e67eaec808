//! Identifier newtypes. Each names one kind of thing; none converts silently into another.

use std::fmt;

macro_rules! id {
    ($(#[$m:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        pub struct $name(pub $inner);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id!(
    /// A submitted job.
    JobId(u64),
    "job-"
);
id!(
    /// A vertex of a job graph (its index in the graph).
    VertexId(u32),
    "v"
);
id!(
    /// A worker process (TaskExecutor).
    WorkerId(u32),
    "worker-"
);
id!(
    /// A shard of a worker (one core).
    ShardId(u32),
    "shard-"
);
id!(
    /// Fencing token of the ResourceManager leader: messages acting for it carry it,
    /// and receivers reject any other (a stale leader's) value.
    ResourceManagerId(u64),
    "rm-"
);
id!(
    /// Fencing token of a job's JobMaster: deployments, cancels and state updates
    /// of the job carry it.
    JobMasterId(u64),
    "jm-"
);
id!(
    /// One allocation of a slot to a job.
    AllocationId(u64),
    "alloc-"
);
id!(
    /// A checkpoint.
    CheckpointId(u64),
    "chk-"
);

/// One subtask of a vertex: `(vertex, subtask index)` — Flink's ExecutionVertexID.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ExecutionVertexId {
    /// The job vertex.
    pub vertex: VertexId,
    /// Subtask index, `0..parallelism`.
    pub subtask: u32,
}

impl fmt::Display for ExecutionVertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.vertex, self.subtask)
    }
}

/// One attempt to run a subtask — Flink's ExecutionAttemptID.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct AttemptId {
    /// The subtask.
    pub execution_vertex: ExecutionVertexId,
    /// 0 for the first attempt, +1 per restart.
    pub attempt: u32,
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.execution_vertex, self.attempt)
    }
}

/// A task slot: worker, shard, index within the shard.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct SlotId {
    /// The worker offering it.
    pub worker: WorkerId,
    /// The shard it belongs to.
    pub shard: ShardId,
    /// Index among the shard's slots.
    pub index: u32,
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/slot-{}", self.worker, self.shard, self.index)
    }
}
