//! Errors of the engine: configuration, submission, deployment and task failures.

use shardflow_control::protocol::{ErrorCode, FrameError};
use shardflow_control::{ControlError, JobId};
use shardflow_memory::MemoryError;
use shardflow_netstack::NetError;
use thiserror::Error;

/// Everything the engine refuses or reports, each naming the problem.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// A configured core does not exist on this machine.
    #[error("core {core} does not exist on this machine (online cores: {online:?})")]
    UnknownCore {
        /// The core asked for.
        core: usize,
        /// Cores that are online.
        online: Vec<usize>,
    },
    /// The same core was listed twice.
    #[error("core {core} is listed twice; each shard needs its own core")]
    DuplicateCore {
        /// The core.
        core: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid engine configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// The allowed range or rule.
        reason: String,
    },
    /// An operator's configuration bytes are wrong.
    #[error("operator '{operator}': invalid configuration: {reason}")]
    InvalidOperatorConfig {
        /// Operator name.
        operator: String,
        /// What is wrong.
        reason: String,
    },
    /// An operator's factory panicked while building it (a bug in the factory).
    #[error("operator '{operator}': building it panicked: {message}")]
    OperatorPanicked {
        /// Operator name.
        operator: String,
        /// The panic's message.
        message: String,
    },
    /// A feature the job graph asks for that this engine does not run.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The job graph or placement is invalid.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A memory error.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A data-plane error.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A shard could not be started.
    #[error("shard {shard} on core {core} failed to start: {reason}")]
    ShardStart {
        /// Shard index.
        shard: u32,
        /// Its core.
        core: usize,
        /// Why.
        reason: String,
    },
    /// The locked-memory limit is too low for the shards and cannot be raised.
    #[error(
        "the locked-memory limit (ulimit -l) is {} KiB, hard limit {} KiB, but {shards} shards need {} KiB: \
         run `ulimit -l {}` first (as root, or raise memlock in /etc/security/limits.conf)",
        soft >> 10, hard >> 10, needed >> 10, needed >> 10
    )]
    LockedMemoryLimit {
        /// The soft limit, bytes.
        soft: u64,
        /// The hard limit, bytes.
        hard: u64,
        /// What the shards need, bytes.
        needed: u64,
        /// The shards.
        shards: usize,
    },
    /// The engine has shut down (or a shard died).
    #[error("the engine is shut down")]
    Shutdown,
    /// No such job.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// The job failed; the first failing subtask and its cause.
    #[error("job {job} failed: {cause}")]
    JobFailed {
        /// The job.
        job: JobId,
        /// "subtask: cause".
        cause: String,
    },
    /// The job was cancelled.
    #[error("job {0} was cancelled")]
    JobCanceled(JobId),
    /// The job cannot be stopped with a snapshot: it has ended, or is being
    /// cancelled (the reason says which).
    #[error("job {job} cannot be stopped with a snapshot: {reason}")]
    CannotStop {
        /// The job.
        job: JobId,
        /// Why.
        reason: String,
    },
    /// Waiting for the job timed out (the job keeps running).
    #[error("timed out waiting for job {0}")]
    Timeout(JobId),
    /// An I/O operation of the cluster edge failed.
    #[error("{what}: {reason}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS's reason.
        reason: String,
    },
    /// A control connection could not be set up: TLS failed, or one side did not
    /// prove it holds the cluster's secret. Retrying with the same settings
    /// cannot help.
    #[error("the connection to {peer} was refused: {reason}")]
    ConnectionRefused {
        /// The other side.
        peer: String,
        /// Why (a TLS error, "wrong cluster secret", …).
        reason: String,
    },
    /// A coordinator refused this worker for good (another live worker holds its
    /// resource id); the worker has stopped.
    #[error("{reason}")]
    RegistrationRefused {
        /// The coordinator's reason.
        reason: String,
    },
    /// The peer answered with an error.
    #[error("{message} [{code:?}]")]
    Remote {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The peer answered with a message that does not answer the request.
    #[error("unexpected reply: expected {expected}, got {got}")]
    UnexpectedReply {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// A frame could not be decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A deployment does not fit the job's plan (a bug, or two builds that
    /// disagree about the job).
    #[error("invalid deployment: {reason}")]
    InvalidDeployment {
        /// What does not fit.
        reason: String,
    },
    /// A dataflow that cannot be built.
    #[error(transparent)]
    Dataflow(#[from] DataflowError),
    /// A job snapshot that cannot be written or read back.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A named job does not exist or got a bad parameter.
    #[error("job '{job}': {reason}")]
    NamedJob {
        /// The job's name.
        job: String,
        /// What is wrong.
        reason: String,
    },
}

/// A job snapshot that cannot be written or read back.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes do not start as a snapshot's do.
    #[error("not a shardflow job snapshot (its first bytes are not a snapshot's header)")]
    NotASnapshot,
    /// A snapshot of another format version.
    #[error("a job snapshot of format version {found}; this build reads version {supported}")]
    Version {
        /// The snapshot's version.
        found: u32,
        /// The one this build reads.
        supported: u32,
    },
    /// The bytes after the header are not a snapshot (truncated, or damaged).
    #[error("a malformed job snapshot: {0}")]
    Malformed(String),
    /// Writing or reading its file failed.
    #[error("{what}: {reason}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS's reason.
        reason: String,
    },
}

/// Why an operator failed while running; the task reports it as its failure cause.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OperatorError {
    /// The operator's own error.
    #[error("{0}")]
    User(String),
    /// A data-plane error.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The operator's memory exceeds its slot's managed memory budget.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

impl From<String> for OperatorError {
    /// The function's own reason: `return Err(format!("record {r} refused").into())`.
    fn from(reason: String) -> Self {
        OperatorError::User(reason)
    }
}

impl From<&str> for OperatorError {
    /// The function's own reason: `return Err("the model file is missing".into())`.
    fn from(reason: &str) -> Self {
        OperatorError::User(reason.to_string())
    }
}

/// Turns what a function's own code fails with (a parse, a file, a lookup)
/// into an [`OperatorError`] for `?`, saying what was being done, as
/// `anyhow`'s `context` and `with_context` do: the job fails with that reason
/// as its cause. A reason worth formatting goes through `or_fail_with`, which
/// formats it only on failure.
///
/// ```
/// use shardflow_engine::{Dataflow, Engine, EngineError, OrFail};
///
/// let df = Dataflow::new("amounts");
/// let lines = ["12", "7", "twelve"].map(String::from);
/// df.from_iter("lines", lines)
///     .try_map(|line: &str| line.parse::<u64>().or_fail_with(|| format!("the amount {line:?}")))
///     .count();
/// let engine = Engine::builder().shards(1).build()?;
/// let Err(EngineError::JobFailed { cause, .. }) = engine.run(df.build()?) else { panic!("it fails") };
/// assert!(cause.contains("the amount \"twelve\": invalid digit found in string"), "{cause}");
/// # Ok::<(), EngineError>(())
/// ```
pub trait OrFail<T>: Sized {
    /// `self`'s value, or an [`OperatorError`] whose reason is `what` (and,
    /// for a `Result`, what the error says).
    fn or_fail(self, what: impl std::fmt::Display) -> Result<T, OperatorError> {
        self.or_fail_with(|| what)
    }

    /// As [`OrFail::or_fail`], with the reason made only on failure.
    fn or_fail_with<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, OperatorError>;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail_with<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, OperatorError> {
        self.map_err(|e| OperatorError::User(format!("{}: {e}", what())))
    }
}

impl<T> OrFail<T> for Option<T> {
    fn or_fail_with<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, OperatorError> {
        self.ok_or_else(|| OperatorError::User(what().to_string()))
    }
}

/// A dataflow that cannot be built, each naming the operator at fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DataflowError {
    /// Nothing consumes the job's results.
    #[error("dataflow '{job}' has no sink, so its results would go nowhere: end a stream with count(), collect(), egress(), for_each(), latency() or discard()")]
    NoSink {
        /// The job.
        job: String,
    },
    /// A stream was created and never used.
    #[error("the output of '{operator}' is never consumed: end it with a sink or remove it")]
    Unconsumed {
        /// The operator whose output nobody reads.
        operator: String,
    },
    /// Two operators share a name (names identify state in snapshots).
    #[error("two operators are named '{name}': operator names identify state in snapshots and must be unique")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A side output asked of an operator that emits none.
    #[error(
        "'{operator}' has no side outputs: only flat_map and the process functions emit them (Emitter::emit_side)"
    )]
    NoSideOutputs {
        /// The operator.
        operator: String,
    },
    /// One side output asked for with two record types.
    #[error("side output '{tag}' of '{operator}' was asked for as {first} and as {then}: a tag has one record type")]
    SideOutputType {
        /// The operator.
        operator: String,
        /// The tag's id.
        tag: String,
        /// The record type it was first asked for with.
        first: String,
        /// The other record type.
        then: String,
    },
    /// A parallelism given to a side output.
    #[error("'{operator}' is a side output of '{producer}' and runs with it: set the parallelism of '{producer}', or of what reads the side output")]
    SideOutputParallelism {
        /// The side output's name.
        operator: String,
        /// The operator producing it.
        producer: String,
    },
    /// An operator name with a `/`, which separates an operator's name from its
    /// lists' in snapshots (`operator/list`).
    #[error("operator name '{name}' contains '/', which separates an operator from its state in snapshots")]
    SlashInName {
        /// The name.
        name: String,
    },
    /// The snapshot a dataflow restores holds state no operator of it restores
    /// (none of that name, or one keeping another kind of state).
    #[error(
        "dataflow '{job}' would drop state of its snapshot that none of its operators restores: {} (an \
         operator renamed, removed, or now of another kind?){}: keep the operators' names and kinds — name \
         stateful operators (`.name(…)`) so that their state outlives changes to the graph — or \
         allow_non_restored_state() to drop it",
        quoted(state),
        unrestored_hint(unrestored)
    )]
    UnownedState {
        /// The job.
        job: String,
        /// The snapshot's entries without an operator (`operator` or `operator/list`).
        state: Vec<String>,
        /// The job's stateful operators the snapshot holds nothing for: where
        /// that state was perhaps meant to go.
        unrestored: Vec<String>,
    },
    /// The snapshot a dataflow restores has other key groups than the job.
    #[error(
        "'{operator}': its snapshot has {snapshot} key groups, the job {job}: keyed state cannot be \
         redistributed across different maximum parallelisms (set Dataflow::max_parallelism({snapshot}))"
    )]
    RestoreKeyGroups {
        /// The operator.
        operator: String,
        /// The snapshot's maximum parallelism.
        snapshot: u32,
        /// The job's.
        job: u32,
    },
    /// A parallelism of 0.
    #[error("'{operator}': parallelism must be at least 1")]
    ZeroParallelism {
        /// The operator.
        operator: String,
    },
    /// The parallelism of an operator whose output is already used elsewhere.
    #[error("'{operator}': set its parallelism before anything consumes its output")]
    ParallelismAfterUse {
        /// The operator.
        operator: String,
    },
    /// The parallelism of an ingress (fixed with its queues).
    #[error("'{operator}': an ingress's parallelism is fixed when it is created (Dataflow::ingress_with)")]
    FixedParallelism {
        /// The operator.
        operator: String,
    },
    /// The job's maximum parallelism changed after a keyed ingress was made
    /// (its handle routes by the key groups of the one before).
    #[error(
        "keyed ingress '{ingress}' routes by {was} key groups: set max_parallelism before creating it (now {now})"
    )]
    MaxParallelismAfterKeyedIngress {
        /// The ingress.
        ingress: String,
        /// The maximum parallelism it routes by.
        was: u32,
        /// The one set afterwards.
        now: u32,
    },
    /// A forward edge between vertices of different parallelism.
    #[error(
        "'{from}' ({upstream} subtasks) -> '{to}' ({downstream}): forward() needs equal parallelism; use rebalance()"
    )]
    ForwardMismatch {
        /// The upstream vertex.
        from: String,
        /// Its parallelism.
        upstream: u32,
        /// The downstream vertex.
        to: String,
        /// Its parallelism.
        downstream: u32,
    },
    /// A placement hint of no core.
    #[error("'{operator}': cores(&[]) names no core: give at least one, or no hint")]
    NoCores {
        /// The operator.
        operator: String,
    },
    /// Streams of two different dataflows were combined.
    #[error("'{operator}': its inputs come from different dataflows")]
    ForeignStream {
        /// The operator.
        operator: String,
    },
}

/// Names, each in quotes, joined by commas.
fn quoted(names: &[String]) -> String {
    names.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
}

/// Where refused state was perhaps meant to go, if anywhere.
fn unrestored_hint(unrestored: &[String]) -> String {
    match unrestored {
        [] => String::new(),
        names => format!("; its stateful operators with nothing in the snapshot: {}", quoted(names)),
    }
}
