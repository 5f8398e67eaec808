//! Typed access to segments holding fixed-size plain-data records: written once,
//! in place, and read in place as a slice.

use std::marker::PhantomData;

use bytemuck::Pod;

use crate::pool::Segment;

/// Appends `T`s to a segment without bounds checks on the hot path. Records are
/// copied once, as bytes; [`SegmentWriter::finish`] hands back the segment and the
/// number of records written.
pub struct SegmentWriter<T: Pod> {
    segment: Segment,
    base: *mut T,
    len: usize,
    capacity: usize,
    _t: PhantomData<T>,
}

// SAFETY: `base` points into `segment`, which the writer owns exclusively; moving the
// writer moves that ownership (`Segment: Send`), and `T: Pod` holds no references.
unsafe impl<T: Pod> Send for SegmentWriter<T> {}

impl<T: Pod> SegmentWriter<T> {
    /// A writer over `segment`, which must be aligned for `T` (pool segments are
    /// page-aligned, so any `T` with alignment ≤ 4096 is).
    pub fn new(mut segment: Segment) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let bytes = segment.as_bytes_mut();
        assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0, "segments are page-aligned");
        let capacity = bytes.len() / size;
        let base = bytes.as_mut_ptr().cast::<T>();
        SegmentWriter { segment, base, len: 0, capacity, _t: PhantomData }
    }

    /// Appends `value` if there is room; returns `false` (and writes nothing) when full.
    #[inline(always)]
    pub fn push(&mut self, value: T) -> bool {
        if self.len == self.capacity {
            return false;
        }
        // SAFETY: `len < capacity`, so slot `len` lies inside the segment; the pointer
        // is aligned (checked in `new`) and the writer owns the segment exclusively.
        unsafe { self.base.add(self.len).write(value) };
        self.len += 1;
        true
    }

    /// Records written so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing has been written.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether no further record fits.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }
    /// Records that fit in the segment.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// The segment and the number of records in it.
    pub fn finish(self) -> (Segment, usize) {
        (self.segment, self.len)
    }
}

/// The first `len` records of `segment`, read in place; `None` if `len` of them
/// do not fit in it (checked arithmetic: no count panics).
pub fn read_pod<T: Pod>(segment: &Segment, len: usize) -> Option<&[T]> {
    pod_prefix(segment.as_bytes(), len)
}

/// The first `len` records of type `T` in `bytes`, read in place; `None` if
/// `len` of them do not fit or `bytes` is misaligned for `T`.
pub fn pod_prefix<T: Pod>(bytes: &[u8], len: usize) -> Option<&[T]> {
    let bytes = bytes.get(..len.checked_mul(std::mem::size_of::<T>())?)?;
    bytemuck::try_cast_slice(bytes).ok()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::SegmentPoolBuilder;

    #[test]
    fn writes_until_full_and_reads_back_in_place() {
        let pool = SegmentPoolBuilder::new(0, 1).segment_bytes(4096).build().unwrap();
        let mut w = SegmentWriter::<[u64; 3]>::new(pool.allocate().unwrap());
        assert_eq!(w.capacity(), 4096 / 24);
        let mut i = 0u64;
        while w.push([i, i * 2, i * 3]) {
            i += 1;
        }
        assert!(w.is_full());
        assert_eq!(i as usize, w.capacity());
        let (seg, len) = w.finish();
        let recs = read_pod::<[u64; 3]>(&seg, len).unwrap();
        assert_eq!(recs.len(), 170);
        assert_eq!(recs[169], [169, 338, 507]);
        assert!(read_pod::<[u64; 3]>(&seg, 171).is_none(), "more than fit");
        assert!(read_pod::<[u64; 3]>(&seg, usize::MAX).is_none(), "no overflow");
    }
}
