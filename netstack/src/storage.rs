//! Where a buffer's bytes live: a segment of the shard's pool, or — for what a
//! partition writes past its reservation once the shard's network memory has
//! none left — pages of the heap, charged to the task's managed memory
//! ([`crate::ResultPartition::spill_to`]). Both are page-aligned and read and
//! written alike, so a record's layout does not depend on where it went.

use bytemuck::{Pod, Zeroable};
use shardflow_memory::{pod_prefix, Segment};

/// One page of a spilled buffer: aligned as a pool segment is.
#[derive(Clone, Copy, Zeroable, Pod)]
#[repr(C, align(4096))]
pub(crate) struct Page([u8; PAGE]);

const PAGE: usize = 4096;

/// The bytes of one buffer.
pub(crate) enum Storage {
    /// A segment of the shard's pool.
    Pool(Segment),
    /// Heap pages, in place of a segment the pool could not spare.
    Heap(Box<[Page]>),
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Pool(s) => s.fmt(f),
            Storage::Heap(pages) => f.debug_struct("Heap").field("bytes", &(pages.len() * PAGE)).finish(),
        }
    }
}

impl Storage {
    /// Zeroed heap pages for `bytes` (a segment's size: a multiple of a page).
    pub(crate) fn heap(bytes: usize) -> Self {
        Storage::Heap(vec![Page::zeroed(); bytes.div_ceil(PAGE)].into_boxed_slice())
    }

    /// Whether this is heap, not a segment.
    pub(crate) fn is_heap(&self) -> bool {
        matches!(self, Storage::Heap(_))
    }

    #[inline]
    pub(crate) fn capacity_bytes(&self) -> usize {
        match self {
            Storage::Pool(s) => s.capacity_bytes(),
            Storage::Heap(pages) => pages.len() * PAGE,
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Storage::Pool(s) => s.as_bytes(),
            Storage::Heap(pages) => bytemuck::cast_slice(pages),
        }
    }

    #[inline]
    pub(crate) fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Storage::Pool(s) => s.as_bytes_mut(),
            Storage::Heap(pages) => bytemuck::cast_slice_mut(pages),
        }
    }

    /// Writes `value` at byte `offset` if it fits there, aligned; `false` and
    /// nothing written if not.
    #[inline(always)]
    pub(crate) fn write_pod<T: Pod>(&mut self, offset: usize, value: &T) -> bool {
        match self {
            Storage::Pool(s) => s.write_pod(offset, value),
            Storage::Heap(pages) => {
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(pages);
                let slot = offset.checked_add(std::mem::size_of::<T>()).and_then(|end| bytes.get_mut(offset..end));
                match slot.map(bytemuck::try_from_bytes_mut::<T>) {
                    Some(Ok(slot)) => {
                        *slot = *value;
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// The first `len` records of type `T`, read in place; `None` if they do
    /// not fit.
    #[inline]
    pub(crate) fn read_pod<T: Pod>(&self, len: usize) -> Option<&[T]> {
        pod_prefix(self.as_bytes(), len)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use shardflow_memory::SegmentPoolBuilder;

    #[test]
    fn heap_pages_are_written_and_read_as_a_segment_is() {
        let pool = SegmentPoolBuilder::new(0, 1).segment_bytes(8192).build().unwrap();
        for mut s in [Storage::Pool(pool.allocate().unwrap()), Storage::heap(8192)] {
            assert_eq!(s.capacity_bytes(), 8192);
            assert_eq!(s.as_bytes().as_ptr() as usize % PAGE, 0, "page-aligned");
            assert!(s.write_pod(16, &[7u64, 8]));
            assert!(!s.write_pod(8190, &1u64), "past the end: nothing written");
            assert!(!s.write_pod(3, &1u64), "misaligned: nothing written");
            assert_eq!(s.read_pod::<[u64; 2]>(2).unwrap()[1], [7, 8]);
            assert!(s.read_pod::<u64>(1025).is_none(), "more than fits");
        }
    }
}
