//! A filled segment on its way from a subpartition to an input channel.

use bytemuck::Pod;
use shardflow_memory::{read_pod, Segment};

/// A segment with `records` records in its first `bytes` bytes. Moves by ownership;
/// dropping it returns the segment to its home pool.
#[derive(Debug)]
pub struct Buffer {
    segment: Segment,
    records: usize,
    bytes: usize,
}

impl Buffer {
    /// Wraps a filled segment.
    pub fn new(segment: Segment, records: usize, bytes: usize) -> Self {
        debug_assert!(bytes <= segment.capacity_bytes());
        Buffer { segment, records, bytes }
    }
    /// Number of records.
    pub fn records(&self) -> usize {
        self.records
    }
    /// Bytes used.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The used bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.segment.as_bytes()[..self.bytes]
    }
    /// The records, read in place, for a buffer of fixed-size plain-data records.
    pub fn pod<T: Pod>(&self) -> &[T] {
        read_pod(&self.segment, self.records)
    }
    /// The underlying segment.
    pub fn into_segment(self) -> Segment {
        self.segment
    }
}
