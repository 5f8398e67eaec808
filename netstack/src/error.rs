//! Errors of the data plane.

use shardflow_memory::MemoryError;
use thiserror::Error;

/// Errors raised while writing to a result partition or reading an input gate.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NetError {
    /// The consuming side of a channel is gone (its task ended or was cancelled).
    #[error("subpartition {subpartition}: the consumer closed the channel")]
    ConsumerGone {
        /// Subpartition whose channel closed.
        subpartition: usize,
    },
    /// The producing side went away without sending end-of-partition.
    #[error("input channel {channel}: {}", match end {
        Some(end) => end.to_string(),
        None => "the producer went away before end of partition".to_string(),
    })]
    ProducerLost {
        /// Input channel of the gate.
        channel: usize,
        /// Why the producer stopped, when it said so.
        end: Option<ProducerEnd>,
    },
    /// A record does not fit in an empty segment, and this partition has no
    /// memory to give it a buffer of its own (see
    /// [`crate::ResultPartition::spill_to`]).
    #[error(
        "a record of {record_bytes} bytes does not fit in a segment of {segment_bytes} bytes (a record crosses an \
         exchange whole: raise the segment size, `segment_bytes`, to a power of two at least its size)"
    )]
    RecordTooLarge {
        /// Encoded size (or a lower bound of it).
        record_bytes: usize,
        /// Segment size.
        segment_bytes: usize,
    },
    /// A record larger than a segment travels in a buffer of its own, charged
    /// to the writing task's managed memory, which cannot hold it.
    #[error(
        "a record of {record_bytes} bytes, larger than a segment, needs a buffer of its own that the task's \
         managed memory cannot hold: {source}"
    )]
    RecordOverBudget {
        /// Encoded size.
        record_bytes: usize,
        /// The managed memory's refusal, with its numbers.
        source: MemoryError,
    },
    /// A record is over the largest a buffer's framing holds (its length is
    /// a 32-bit field).
    #[error("a record of {record_bytes} bytes is over the largest a buffer holds, {limit_bytes} bytes")]
    RecordOverLimit {
        /// Encoded size.
        record_bytes: usize,
        /// The largest record.
        limit_bytes: usize,
    },
    /// A buffer's bytes are not a valid archive of the expected record type.
    #[error("malformed record at byte {offset} of a buffer: {reason}")]
    MalformedRecord {
        /// Where in the buffer.
        offset: usize,
        /// What the check said.
        reason: String,
    },
    /// A buffer's record count and byte count do not fit its segment or its
    /// record type.
    #[error("a buffer claims {records} records{} in {bytes} bytes of a {capacity}-byte segment", record_bytes.map(|b| format!(" of {b} bytes")).unwrap_or_default())]
    BadBuffer {
        /// Records it claims.
        records: usize,
        /// Size of the record type read, if known.
        record_bytes: Option<usize>,
        /// Bytes it claims (`usize::MAX` when the count overflows).
        bytes: usize,
        /// Its segment's size.
        capacity: usize,
    },
    /// The partition writer was finished, or an earlier send failed or was
    /// cancelled mid-way; it accepts no more records.
    #[error("the result partition is closed: it was finished or an earlier send did not complete")]
    PartitionClosed,
    /// A route picked a subpartition the partition does not have. A bug of the
    /// route, reported as an error so the task fails instead of the process.
    #[error("a record was routed to subpartition {subpartition} of a partition of {subpartitions}")]
    NoSuchSubpartition {
        /// The subpartition picked.
        subpartition: usize,
        /// How many there are.
        subpartitions: usize,
    },
    /// A step of a task wrote more full buffers than credits let out and the
    /// partition's overdraft holds (a `flat_map` fanning one record out into
    /// many, say), and neither the shard's network memory beyond what its
    /// tasks reserved nor the memory the partition spills to had room for
    /// another: the task fails, the others keep their memory.
    #[error(
        "{pending} full buffers wait for credits, past the partition's overdraft of {overdraft} \
         (one step wrote that much under back-pressure), and there is no memory left to hold \
         another: {source}"
    )]
    OverdraftExhausted {
        /// Full buffers waiting for credits.
        pending: usize,
        /// The partition's overdraft.
        overdraft: usize,
        /// The last refusal (of the spill budget where there is one, else of
        /// the network memory).
        source: MemoryError,
    },
    /// A memory error (pool exhausted, …).
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Flow control was violated: a sender pushed beyond its credits. A bug, reported
    /// as an error so the task fails instead of the process.
    #[error("flow control violated on a channel: ring of {capacity} slots full")]
    RingOverflow {
        /// Ring capacity.
        capacity: usize,
    },
}

/// Why a producer stopped without end of partition, as it told its channels
/// (see `ChannelSender::end`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProducerEnd {
    /// It failed: the root cause.
    #[error("its producer failed: {0}")]
    Failed(String),
    /// It was cancelled, for this reason.
    #[error("its producer was cancelled: {0}")]
    Cancelled(String),
}
