//! Errors of the memory crate.

use thiserror::Error;

/// What a budget accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    /// Network buffers of a shard (exclusive per channel plus floating per gate).
    NetworkBuffers,
    /// Managed memory of a slot (operator state, sort buffers).
    ManagedMemory,
}

impl std::fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BudgetKind::NetworkBuffers => "network buffers",
            BudgetKind::ManagedMemory => "managed memory",
        })
    }
}

/// Errors raised while building pools, allocating segments or reserving budget.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemoryError {
    /// The segment size is not a power of two inside the supported range.
    #[error(
        "segment size {segment_bytes} bytes is invalid: it must be a power of two between {min_bytes} and {max_bytes}"
    )]
    InvalidSegmentSize {
        /// The size asked for.
        segment_bytes: usize,
        /// Smallest allowed size.
        min_bytes: usize,
        /// Largest allowed size.
        max_bytes: usize,
    },
    /// A pool needs at least one segment and at most `u32::MAX - 1`.
    #[error("segment count {segments} is invalid: it must be between 1 and {max}")]
    InvalidSegmentCount {
        /// The count asked for.
        segments: usize,
        /// Largest allowed count.
        max: usize,
    },
    /// Mapping the pool's region failed (the OS refused the memory).
    #[error("mapping {bytes} bytes for a segment pool failed: {reason}")]
    MapFailed {
        /// Size of the region.
        bytes: usize,
        /// The OS error, as text.
        reason: String,
    },
    /// Every segment of the pool is in use.
    #[error("segment pool of shard {shard} is exhausted: all {segments} segments of {segment_bytes} bytes are in use")]
    PoolExhausted {
        /// Home shard of the pool.
        shard: u32,
        /// Total segments in the pool.
        segments: usize,
        /// Size of each.
        segment_bytes: usize,
    },
    /// A reservation asked for more than the budget has left.
    #[error("{kind} budget exceeded: requested {requested_bytes} bytes, {available_bytes} of {capacity_bytes} bytes available")]
    BudgetExceeded {
        /// Which budget.
        kind: BudgetKind,
        /// Bytes asked for.
        requested_bytes: u64,
        /// Bytes still free.
        available_bytes: u64,
        /// Size of the whole budget.
        capacity_bytes: u64,
    },
}
