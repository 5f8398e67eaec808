//! The control-plane wire format: frames carrying rkyv archives.
//!
//! ```text
//! offset  0        4          6       8              16
//!         [len u32][version u16][kind u16][reserved 8 × 0][archive: len bytes]
//! ```
//!
//! All integers are little-endian. `len` counts the archive only. The header is 16
//! bytes so that an archive written right after it keeps rkyv's alignment; the
//! receiver reads the header first, checks version, kind, reserved bytes and `len`
//! against its maximum frame size *before* reading the body, then reads the body
//! into a 16-byte-aligned buffer and validates it with rkyv's checked access before
//! deserializing. Any failure is a [`FrameError`] (never a panic), and the receiver
//! closes that one connection after answering with an [`ErrorReply`].
//!
//! # Compatibility rule
//!
//! - A frame's `kind` names one payload type for ever. Kinds are never reused or
//!   renumbered; new messages take new kinds. A peer that gets a kind it does not
//!   know answers [`ErrorCode::UnknownKind`] and closes.
//! - Within one `version`, a payload's archived layout is frozen: the golden-bytes
//!   tests pin it. So is that of [`TaskInformation`], which travels archived inside
//!   [`DeployTask`]. Changing any payload's fields (or a type it contains) means a new
//!   kind for that message, or a new `version` for a change across many.
//! - Peers speak exactly one version; a worker and a coordinator of different
//!   versions refuse each other at the first frame ([`ErrorCode::UnsupportedVersion`]),
//!   so a cluster is upgraded by restarting all its processes.
//!
//! # Versions
//!
//! - 1: the first cluster protocol.
//! - 2: typed jobs: job edges carry a `RecordFormat`, jobs a maximum parallelism
//!   (key groups), and task information and deployment descriptors the key
//!   groups and the record format of each input and output edge.
//! - 3: an authenticated control plane and high availability: the connection
//!   set-up kinds 128–131 (`AuthHello`, `AuthChallenge`, `AuthResponse`,
//!   `AuthAccepted`), the error codes `Unauthenticated` and `NotLeader`, and a
//!   `ResourceOverview` that names the leader and its epoch.
//! - 4: a cancel carries its reason (`CancelTask::reason`), told to the task
//!   and on to its consumers.
//! - 5: a worker's dump lists each task as a `TaskDumpEntry`: job, attempt,
//!   vertex, state and its record counts so far; a worker's heartbeat carries
//!   its tasks' counts (`TaskProgress`), which a client reads per job
//!   (kinds 77–78, `RequestJobProgress`, `JobProgress`).
//! - 6: `TriggerCheckpoint::stop`: a job stopped with a snapshot
//!   (`StopWithSavepoint`, where the coordinator takes it) has its sources
//!   stop after the barrier. Kinds 79–80 (`RequestJobGraph`, `JobGraphReply`:
//!   a job's graph as submitted) came later within it; a peer without them
//!   answers [`ErrorCode::UnknownKind`].
//! - 7: back-pressure: a task's time waiting on a full output
//!   (`back_pressured_ms`) in its heartbeat counts (`TaskProgress`), a client's
//!   view of them (`SubtaskProgress`), a dump's `TaskDumpEntry` and a finished
//!   task's `TaskResultInfo`; and a dump's shards their thread's CPU time
//!   (`ShardDumpEntry::cpu_ms`).
//! - 8: where a task's time goes: those four carry `TaskTimes` (busy, idle
//!   and back-pressured ms) in place of `back_pressured_ms`.

/// Declares payload structs: rkyv-archivable, comparable, cloneable.
macro_rules! payloads {
    ($($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : $ty:ty),* $(,)? })*) => {$(
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
    )*};
}

mod messages;
mod parts;

use rkyv::rancor;
use rkyv::util::AlignedVec;

pub use messages::*;
pub use parts::*;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 8;
/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 16;
/// The highest version a shardflow peer could speak; a higher one means the peer
/// speaks another protocol.
const MAX_PLAUSIBLE_VERSION: u16 = 255;
/// Default maximum frame size (archive bytes).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes end before the frame does.
    #[error("truncated frame: {needed} more bytes needed")]
    Truncated {
        /// Bytes missing (at least).
        needed: usize,
    },
    /// The length prefix exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The version is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {got} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The frame's version.
        got: u16,
    },
    /// The bytes are not a shardflow frame at all: the peer speaks another
    /// protocol (its version field is none a shardflow build ever used).
    #[error("the peer does not speak the shardflow protocol (its first bytes: {first_bytes})")]
    NotShardflow {
        /// The peer's first bytes, printable.
        first_bytes: String,
    },
    /// No message has this kind.
    #[error("unknown message kind {kind}")]
    UnknownKind {
        /// The frame's kind.
        kind: u16,
    },
    /// The reserved header bytes are not zero.
    #[error("malformed frame header: reserved bytes are not zero")]
    BadHeader,
    /// The body is not a valid archive of the kind's payload.
    #[error("malformed {kind_name} frame: {reason}")]
    Malformed {
        /// The kind's name.
        kind_name: &'static str,
        /// What the validator found.
        reason: String,
    },
    /// Encoding failed (a value rkyv cannot write).
    #[error("cannot encode {kind_name}: {reason}")]
    Encode {
        /// The kind's name.
        kind_name: &'static str,
        /// What failed.
        reason: String,
    },
}

impl FrameError {
    /// The code a peer is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Truncated { .. } => ErrorCode::Truncated,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::UnsupportedVersion { .. } | FrameError::NotShardflow { .. } => ErrorCode::UnsupportedVersion,
            FrameError::UnknownKind { .. } => ErrorCode::UnknownKind,
            FrameError::BadHeader => ErrorCode::BadHeader,
            FrameError::Malformed { .. } => ErrorCode::Malformed,
            FrameError::Encode { .. } => ErrorCode::Internal,
        }
    }

    /// The error reply for this failure.
    pub fn reply(&self) -> Message {
        Message::error(self.code(), self.to_string())
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Archive bytes that follow.
    pub len: usize,
    /// The message kind (known to this build).
    pub kind: u16,
}

impl FrameHeader {
    /// Checks a received header: version, reserved bytes, kind, and `len` against
    /// `max_frame_bytes`.
    pub fn parse(bytes: &[u8; HEADER_BYTES], max_frame_bytes: usize) -> Result<Self, FrameError> {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let kind = u16::from_le_bytes([bytes[6], bytes[7]]);
        if version != PROTOCOL_VERSION {
            // Versions count up from 1 and stay small; anything else (an HTTP
            // reply reads as version 12591) is another protocol.
            if version == 0 || version > MAX_PLAUSIBLE_VERSION {
                let first_bytes = format!("{:?}", String::from_utf8_lossy(bytes));
                return Err(FrameError::NotShardflow { first_bytes });
            }
            return Err(FrameError::UnsupportedVersion { got: version });
        }
        if bytes[8..].iter().any(|&b| b != 0) {
            return Err(FrameError::BadHeader);
        }
        if kind_name(kind).is_none() {
            return Err(FrameError::UnknownKind { kind });
        }
        if len > max_frame_bytes {
            return Err(FrameError::TooLarge { len, max: max_frame_bytes });
        }
        Ok(FrameHeader { len, kind })
    }
}

/// Decodes the body of a frame with header `header`. `body` must start 16-byte
/// aligned (an [`AlignedVec`] does).
pub fn decode_body(header: FrameHeader, body: &[u8]) -> Result<Message, FrameError> {
    Message::decode(header.kind, body)
}

/// Decodes one frame from the front of `bytes` (copying the body into an aligned
/// buffer). Returns the message and the bytes consumed. Any input gives a message or
/// a [`FrameError`]; none panics.
pub fn decode(bytes: &[u8], max_frame_bytes: usize) -> Result<(Message, usize), FrameError> {
    let Some(head) = bytes.first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Truncated { needed: HEADER_BYTES - bytes.len() });
    };
    let header = FrameHeader::parse(head, max_frame_bytes)?;
    let body = &bytes[HEADER_BYTES..];
    if body.len() < header.len {
        return Err(FrameError::Truncated { needed: header.len - body.len() });
    }
    let mut aligned = AlignedVec::<16>::with_capacity(header.len);
    aligned.extend_from_slice(&body[..header.len]);
    Ok((decode_body(header, &aligned)?, HEADER_BYTES + header.len))
}

/// Encodes `msg` as one frame into `out`, which is cleared first. Reusing `out`
/// avoids an allocation per frame.
pub fn encode_into(msg: &Message, out: &mut AlignedVec<16>) -> Result<(), FrameError> {
    out.clear();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    let taken = std::mem::take(out);
    *out = msg.encode_after_header(taken)?;
    let len = (out.len() - HEADER_BYTES) as u32;
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&msg.kind().to_le_bytes());
    Ok(())
}

/// Encodes `msg` as one frame.
pub fn encode(msg: &Message) -> Result<AlignedVec<16>, FrameError> {
    let mut out = AlignedVec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

macro_rules! message_kinds {
    ($($kind:literal => $name:ident),* $(,)?) => {
        /// Every control-plane message; the variant decides the frame's kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message {
            $(
                #[doc = concat!("Kind ", stringify!($kind), ": [`", stringify!($name), "`].")]
                $name($name),
            )*
        }

        /// The name of kind `kind`, if this build knows it.
        pub fn kind_name(kind: u16) -> Option<&'static str> {
            match kind {
                $($kind => Some(stringify!($name)),)*
                _ => None,
            }
        }

        /// Every kind this build knows, in kind order.
        pub const KINDS: &[u16] = &[$($kind),*];

        impl Message {
            /// The frame kind of this message.
            pub fn kind(&self) -> u16 {
                match self {
                    $(Message::$name(_) => $kind,)*
                }
            }

            /// The name of this message's kind.
            pub fn kind_name(&self) -> &'static str {
                match self {
                    $(Message::$name(_) => stringify!($name),)*
                }
            }

            fn encode_after_header(&self, out: AlignedVec<16>) -> Result<AlignedVec<16>, FrameError> {
                let err = |e: rancor::BoxedError| FrameError::Encode { kind_name: self.kind_name(), reason: e.to_string() };
                match self {
                    $(Message::$name(m) => rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(m, out).map_err(err),)*
                }
            }

            fn decode(kind: u16, body: &[u8]) -> Result<Message, FrameError> {
                match kind {
                    $($kind => {
                        let malformed = |e: rancor::BoxedError| FrameError::Malformed {
                            kind_name: stringify!($name),
                            reason: e.to_string(),
                        };
                        let archived = rkyv::access::<rkyv::Archived<$name>, rancor::BoxedError>(body).map_err(malformed)?;
                        let value = rkyv::deserialize::<$name, rancor::BoxedError>(archived).map_err(malformed)?;
                        Ok(Message::$name(value))
                    })*
                    _ => Err(FrameError::UnknownKind { kind }),
                }
            }
        }
    };
}

message_kinds! {
    // TaskExecutor gateway
    1 => RequestSlot,
    2 => SlotRequestReply,
    3 => SubmitTask,
    4 => TaskRefused,
    5 => CancelTask,
    6 => FreeSlot,
    7 => UpdatePartitions,
    8 => ReleasePartitions,
    9 => TriggerCheckpoint,
    10 => ConfirmCheckpoint,
    11 => AbortCheckpoint,
    12 => HeartbeatFromCoordinator,
    13 => RequestSlotReport,
    14 => RequestShardDump,
    15 => ShardDump,
    16 => DisconnectResourceManager,
    17 => DeployTask,
    // ResourceManager gateway
    32 => RegisterWorker,
    33 => RegistrationAccepted,
    34 => RegisterJobMaster,
    35 => SlotReportMessage,
    36 => RequestSlots,
    37 => CancelSlotRequest,
    38 => NotifySlotAvailable,
    39 => HeartbeatFromWorker,
    40 => DisconnectWorker,
    41 => RequestResourceOverview,
    42 => ResourceOverview,
    43 => RequestWorkerInfo,
    44 => WorkerInfoList,
    45 => RequestWorkerDump,
    // Dispatcher gateway
    64 => SubmitJob,
    65 => JobSubmitted,
    66 => ListJobs,
    67 => JobList,
    68 => RequestJob,
    69 => JobDetails,
    70 => CancelJob,
    71 => Ack,
    72 => TriggerSavepoint,
    73 => StopWithSavepoint,
    74 => DisposeSavepoint,
    75 => WaitJob,
    76 => WaitForWorkers,
    77 => RequestJobProgress,
    78 => JobProgress,
    79 => RequestJobGraph,
    80 => JobGraphReply,
    // JobMaster gateway
    96 => UpdateTaskExecutionState,
    97 => AcknowledgeCheckpoint,
    // Either way
    127 => ErrorReply,
    // Connection set-up, before any other frame where the cluster has a secret
    128 => AuthHello,
    129 => AuthChallenge,
    130 => AuthResponse,
    131 => AuthAccepted,
}

impl TaskInformation {
    /// Archives it, for [`DeployTask::task_information`].
    pub fn archive(&self) -> Result<Vec<u8>, FrameError> {
        rkyv::to_bytes::<rancor::BoxedError>(self)
            .map(|b| b.to_vec())
            .map_err(|e| FrameError::Encode { kind_name: "TaskInformation", reason: e.to_string() })
    }

    /// Reads an archive made by [`TaskInformation::archive`] (copied into an
    /// aligned buffer, then checked access). Any bytes give a value or a
    /// [`FrameError::Malformed`]; none panics.
    pub fn from_archive(bytes: &[u8]) -> Result<Self, FrameError> {
        let malformed =
            |e: rancor::BoxedError| FrameError::Malformed { kind_name: "TaskInformation", reason: e.to_string() };
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let archived =
            rkyv::access::<rkyv::Archived<TaskInformation>, rancor::BoxedError>(&aligned).map_err(malformed)?;
        rkyv::deserialize::<TaskInformation, rancor::BoxedError>(archived).map_err(malformed)
    }
}

impl DeployTask {
    /// `d` as deployed: its vertex's information archived into it. (A coordinator
    /// deploying many subtasks of a vertex archives the information once.)
    pub fn from_descriptor(d: TaskDeploymentDescriptor) -> Result<Self, FrameError> {
        let info = TaskInformation {
            job_name: d.job_name,
            vertex_name: d.vertex_name,
            parallelism: d.parallelism,
            max_parallelism: d.max_parallelism,
            chain: d.chain,
            input_formats: d.input_formats,
            output_formats: d.output_formats,
        };
        Ok(DeployTask {
            job: d.job,
            job_master: d.job_master,
            allocation: d.allocation,
            slot: d.slot,
            attempt: d.attempt,
            task_information: info.archive()?,
            inputs: d.inputs,
            outputs: d.outputs,
        })
    }

    /// The task's whole descriptor, given its vertex's information.
    pub fn with_information(self, info: TaskInformation) -> TaskDeploymentDescriptor {
        TaskDeploymentDescriptor {
            job: self.job,
            job_name: info.job_name,
            job_master: self.job_master,
            allocation: self.allocation,
            slot: self.slot,
            attempt: self.attempt,
            vertex_name: info.vertex_name,
            parallelism: info.parallelism,
            max_parallelism: info.max_parallelism,
            chain: info.chain,
            input_formats: info.input_formats,
            output_formats: info.output_formats,
            inputs: self.inputs,
            outputs: self.outputs,
        }
    }

    /// The task's whole descriptor, reading its vertex's information.
    pub fn descriptor(self) -> Result<TaskDeploymentDescriptor, FrameError> {
        let info = TaskInformation::from_archive(&self.task_information)?;
        Ok(self.with_information(info))
    }
}

/// The decoder's contract, checked on any bytes (the body of the
/// `frame_decode` fuzz target, and of a test over its checked-in seeds): `data`
/// decodes to a message or a typed [`FrameError`], never a panic; a decoded
/// message encodes again and decodes to itself; a deployment's vertex
/// information, and any bytes read as vertex information, read or fail typed.
///
/// # Panics
/// If the contract is broken: that is what the fuzzer looks for.
pub fn check_decoder(data: &[u8]) {
    if let Ok((msg, used)) = decode(data, 1 << 20) {
        assert!(used <= data.len());
        let again = encode(&msg).expect("a decoded message encodes");
        let (back, _) = decode(&again, 1 << 20).expect("a re-encoded message decodes");
        assert_eq!(back, msg);
        if let Message::DeployTask(d) = msg {
            let _ = d.descriptor();
        }
    }
    if let Ok(info) = TaskInformation::from_archive(data) {
        let again = info.archive().expect("vertex information that was read archives again");
        assert_eq!(TaskInformation::from_archive(&again).expect("and reads back"), info);
    }
}

impl Message {
    /// An error reply, retryable as its code says ([`ErrorCode::is_retryable`]).
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Message::ErrorReply(ErrorReply { code, message: message.into(), retryable: code.is_retryable() })
    }
}

impl ErrorCode {
    /// Whether the same request may succeed later without being changed: slots
    /// and memory free up, a peer that was busy may answer, a new leader may be
    /// elected. A malformed frame, a stale token, a wrong secret or an invalid job
    /// stay what they are.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::NotEnoughSlots | ErrorCode::SlotOccupied | ErrorCode::Internal | ErrorCode::NotLeader)
    }
}

#[cfg(test)]
mod tests;
