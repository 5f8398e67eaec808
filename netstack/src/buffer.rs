//! A filled segment on its way from a subpartition to an input channel.

use bytemuck::Pod;
use shardflow_memory::{Reservation, Segment};

use crate::error::NetError;
use crate::storage::Storage;

/// A segment (or, spilled, heap pages laid out as one) with `records` records in
/// its first `bytes` bytes. Moves by ownership; dropping it returns the segment to
/// its home pool and any charge to its budget. Built only through checking
/// constructors, so no count it carries can make a reader panic.
#[derive(Debug)]
pub struct Buffer {
    segment: Storage,
    records: usize,
    bytes: usize,
    /// What it is charged to beyond its task's own reservation (the shard's
    /// network memory, or the managed memory a spilled buffer takes), given
    /// back with it.
    charge: Option<Reservation>,
}

impl Buffer {
    /// Wraps a filled segment holding `records` records in its first `bytes`
    /// bytes; refused if `bytes` exceeds the segment.
    pub fn new(segment: Segment, records: usize, bytes: usize) -> Result<Self, NetError> {
        Self::of(Storage::Pool(segment), records, bytes)
    }

    /// Wraps `storage` holding `records` records in its first `bytes` bytes.
    pub(crate) fn of(segment: Storage, records: usize, bytes: usize) -> Result<Self, NetError> {
        if bytes > segment.capacity_bytes() {
            return Err(NetError::BadBuffer { records, record_bytes: None, bytes, capacity: segment.capacity_bytes() });
        }
        Ok(Buffer { segment, records, bytes, charge: None })
    }

    /// This buffer, holding `charge` until it is dropped.
    pub(crate) fn charged(mut self, charge: Option<Reservation>) -> Self {
        self.charge = charge;
        self
    }

    /// Wraps a segment holding `records` fixed-size records of type `T`; refused
    /// if they do not fit in it (checked arithmetic).
    pub fn of_pod<T: Pod>(segment: Segment, records: usize) -> Result<Self, NetError> {
        let size = std::mem::size_of::<T>();
        let capacity = segment.capacity_bytes();
        match records.checked_mul(size) {
            Some(bytes) if bytes <= capacity => {
                Ok(Buffer { segment: Storage::Pool(segment), records, bytes, charge: None })
            }
            _ => Err(NetError::BadBuffer { records, record_bytes: Some(size), bytes: usize::MAX, capacity }),
        }
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
    /// The records, read in place, for a buffer of fixed-size plain-data records
    /// of type `T`; a typed error if the buffer does not hold exactly its count of
    /// `T`s (another record type, or a bad count).
    #[inline]
    pub fn pod<T: Pod>(&self) -> Result<&[T], NetError> {
        let size = std::mem::size_of::<T>();
        let bad = || NetError::BadBuffer {
            records: self.records,
            record_bytes: Some(size),
            bytes: self.bytes,
            capacity: self.segment.capacity_bytes(),
        };
        if self.records.checked_mul(size) != Some(self.bytes) {
            return Err(bad());
        }
        self.segment.read_pod(self.records).ok_or_else(bad)
    }
    /// Whether its bytes were spilled to the heap (the shard's network memory
    /// had none to spare) rather than held in a segment.
    pub fn is_spilled(&self) -> bool {
        self.segment.is_heap()
    }
    /// The underlying segment (`None` for a spilled buffer; what it was
    /// charged to beyond its task's reservation is given back).
    pub fn into_segment(self) -> Option<Segment> {
        match self.segment {
            Storage::Pool(s) => Some(s),
            Storage::Heap(_) => None,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use shardflow_memory::SegmentPoolBuilder;

    #[test]
    fn no_count_can_make_a_reader_panic() {
        let pool = SegmentPoolBuilder::new(0, 4).segment_bytes(4096).build().unwrap();
        assert!(matches!(Buffer::new(pool.allocate().unwrap(), 1, 4097), Err(NetError::BadBuffer { .. })));
        assert!(matches!(Buffer::of_pod::<[u64; 3]>(pool.allocate().unwrap(), 171), Err(NetError::BadBuffer { .. })));
        assert!(matches!(
            Buffer::of_pod::<[u64; 3]>(pool.allocate().unwrap(), usize::MAX),
            Err(NetError::BadBuffer { .. })
        ));
        let full = Buffer::of_pod::<[u64; 3]>(pool.allocate().unwrap(), 170).unwrap();
        assert_eq!(full.pod::<[u64; 3]>().unwrap().len(), 170);
        assert!(full.pod::<[u64; 2]>().is_err(), "read as another record type: a typed error");
        let claims = Buffer::new(pool.allocate().unwrap(), usize::MAX, 4096).unwrap();
        assert!(matches!(claims.pod::<u64>(), Err(NetError::BadBuffer { records: usize::MAX, .. })));
    }
}
