//! Per-shard segment pools: one anonymous, prefaulted region cut into fixed segments.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::rc::Rc;

use memmap2::{MmapMut, MmapOptions};

use crate::error::MemoryError;
use crate::free_list::FreeStack;
use crate::sync::Arc;

/// Default segment size: 32 KiB.
pub const DEFAULT_SEGMENT_BYTES: usize = 32 * 1024;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: usize = 4 * 1024;
/// Largest segment size accepted.
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024 * 1024;

/// Configuration of one shard's segment pool. `Send`: build it anywhere, then call
/// [`SegmentPoolBuilder::build`] on the shard's own thread so the pages are
/// faulted in (and NUMA-placed) by the thread that will use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPoolBuilder {
    shard: u32,
    segment_bytes: usize,
    segments: usize,
    populate: bool,
}

impl SegmentPoolBuilder {
    /// A pool for `shard` with `segments` segments of [`DEFAULT_SEGMENT_BYTES`].
    pub fn new(shard: u32, segments: usize) -> Self {
        SegmentPoolBuilder { shard, segment_bytes: DEFAULT_SEGMENT_BYTES, segments, populate: true }
    }

    /// Size of one segment. Default 32 KiB; a power of two from 4 KiB to 64 MiB.
    #[must_use]
    pub fn segment_bytes(mut self, bytes: usize) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Whether to prefault the whole region at build time (`MAP_POPULATE`).
    /// Default `true`; tests with many small pools may turn it off.
    #[must_use]
    pub fn populate(mut self, populate: bool) -> Self {
        self.populate = populate;
        self
    }

    /// Checks the configuration without mapping anything.
    pub fn validate(&self) -> Result<(), MemoryError> {
        if !self.segment_bytes.is_power_of_two()
            || !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes)
        {
            return Err(MemoryError::InvalidSegmentSize {
                segment_bytes: self.segment_bytes,
                min_bytes: MIN_SEGMENT_BYTES,
                max_bytes: MAX_SEGMENT_BYTES,
            });
        }
        let max = (u32::MAX - 1) as usize;
        if self.segments == 0 || self.segments > max {
            return Err(MemoryError::InvalidSegmentCount { segments: self.segments, max });
        }
        Ok(())
    }

    /// Bytes the region will occupy.
    pub fn region_bytes(&self) -> usize {
        self.segment_bytes.saturating_mul(self.segments)
    }

    /// Maps and (by default) prefaults the region. Call on the owning shard's thread.
    pub fn build(self) -> Result<SegmentPool, MemoryError> {
        self.validate()?;
        let bytes = self.region_bytes();
        let mut options = MmapOptions::new();
        options.len(bytes);
        if self.populate {
            options.populate();
        }
        let mut map = options.map_anon().map_err(|e| MemoryError::MapFailed { bytes, reason: e.to_string() })?;
        let base = NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| MemoryError::MapFailed { bytes, reason: "null mapping".into() })?;
        let shared = Arc::new(PoolShared {
            _map: map,
            base,
            shard: self.shard,
            segment_bytes: self.segment_bytes,
            segments: self.segments,
            free: FreeStack::full(self.segments as u32),
        });
        Ok(SegmentPool { shared, _not_send: PhantomData })
    }
}

/// State of a pool that segments point back to; shared with every segment.
struct PoolShared {
    /// Keeps the region mapped for as long as any segment lives.
    _map: MmapMut,
    base: NonNull<u8>,
    shard: u32,
    segment_bytes: usize,
    segments: usize,
    free: FreeStack,
}

// SAFETY: `base` points into `_map`, which lives as long as this struct. The pool
// hands each segment's byte range to exactly one `Segment` at a time (the free list
// gives out each index once until it is pushed back), so no two threads ever access
// the same bytes concurrently; the free list's release/acquire orders the hand-over.
unsafe impl Send for PoolShared {}
// SAFETY: as above; shared access only touches the atomic free list and plain fields.
unsafe impl Sync for PoolShared {}

/// One shard's segment pool. `!Send`: it belongs to the shard that built it. Segments
/// it hands out are `Send` and find their way home on drop, from any thread.
pub struct SegmentPool {
    shared: Arc<PoolShared>,
    _not_send: PhantomData<Rc<()>>,
}

impl SegmentPool {
    /// Takes a free segment, or `None` when all are in use.
    pub fn try_allocate(&self) -> Option<Segment> {
        let index = self.shared.free.pop()?;
        let offset = index as usize * self.shared.segment_bytes;
        // SAFETY: `index < segments`, so `offset + segment_bytes` lies within the region.
        let ptr = unsafe { NonNull::new_unchecked(self.shared.base.as_ptr().add(offset)) };
        Some(Segment { ptr, index, home: self.shared.clone() })
    }

    /// Takes a free segment, or a [`MemoryError::PoolExhausted`] naming the numbers.
    pub fn allocate(&self) -> Result<Segment, MemoryError> {
        self.try_allocate().ok_or(MemoryError::PoolExhausted {
            shard: self.shared.shard,
            segments: self.shared.segments,
            segment_bytes: self.shared.segment_bytes,
        })
    }

    /// Size of each segment.
    pub fn segment_bytes(&self) -> usize {
        self.shared.segment_bytes
    }

    /// A `Send` read-only view of this pool's occupancy, for reports and tests.
    pub fn monitor(&self) -> PoolMonitor {
        PoolMonitor { shared: self.shared.clone() }
    }
}

impl fmt::Debug for SegmentPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.monitor().fmt(f)
    }
}

/// Occupancy of a pool, readable from any thread.
#[derive(Clone)]
pub struct PoolMonitor {
    shared: Arc<PoolShared>,
}

impl PoolMonitor {
    /// Home shard of the pool.
    pub fn shard(&self) -> u32 {
        self.shared.shard
    }
    /// Total segments.
    pub fn segments(&self) -> usize {
        self.shared.segments
    }
    /// Segments currently free (exact when nothing is in flight).
    pub fn free_segments(&self) -> usize {
        self.shared.free.len()
    }
    /// Size of each segment.
    pub fn segment_bytes(&self) -> usize {
        self.shared.segment_bytes
    }
    /// Most segments in use at once since the pool was built or the peak was reset.
    pub fn peak_in_use(&self) -> usize {
        self.shared.segments - self.shared.free.low_water()
    }
    /// Restarts peak tracking from the current occupancy.
    pub fn reset_peak(&self) {
        self.shared.free.reset_low_water();
    }
}

impl fmt::Debug for PoolMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentPool")
            .field("shard", &self.shard())
            .field("segment_bytes", &self.segment_bytes())
            .field("segments", &self.segments())
            .field("free_segments", &self.free_segments())
            .finish()
    }
}

/// Exclusive ownership of one segment of a pool. Moving it to another shard moves
/// the handle, never the bytes; dropping it anywhere returns it to its home pool.
pub struct Segment {
    ptr: NonNull<u8>,
    index: u32,
    home: Arc<PoolShared>,
}

// SAFETY: a `Segment` is the unique owner of its byte range (see `PoolShared`), so
// moving it to another thread moves that exclusive access with it.
unsafe impl Send for Segment {}
// SAFETY: `&Segment` only allows reading the bytes; writes need `&mut Segment`.
unsafe impl Sync for Segment {}

impl Segment {
    /// The segment's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `segment_bytes` bytes for as long as `home` keeps
        // the map alive, and this handle is the only one to the range.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.home.segment_bytes) }
    }

    /// The segment's bytes, writable.
    #[inline]
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.home.segment_bytes) }
    }

    /// Capacity in bytes.
    #[inline]
    pub fn capacity_bytes(&self) -> usize {
        self.home.segment_bytes
    }

    /// Writes `value` at byte `offset` if it fits (one bounds check); `false` and
    /// nothing written if it does not. `offset` must be a multiple of `T`'s
    /// alignment (segments are page-aligned, so any multiple of `size_of::<T>()`
    /// is); a misaligned one writes nothing and returns `false`.
    #[inline(always)]
    pub fn write_pod<T: bytemuck::Pod>(&mut self, offset: usize, value: &T) -> bool {
        let size = std::mem::size_of::<T>();
        if offset > self.home.segment_bytes.saturating_sub(size) || offset % std::mem::align_of::<T>() != 0 {
            return false;
        }
        // SAFETY: `offset + size <= segment_bytes` (checked above), so the write stays
        // inside this segment's exclusive range (`&mut self`); the address is aligned
        // for `T` (page-aligned base, `offset` a multiple of its alignment), and
        // `T: Pod` has no invalid bit patterns or drop glue.
        unsafe { self.ptr.as_ptr().add(offset).cast::<T>().write(*value) };
        true
    }

    /// The shard whose pool this segment belongs to.
    pub fn home_shard(&self) -> u32 {
        self.home.shard
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.home.free.push(self.index);
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("home_shard", &self.home.shard)
            .field("index", &self.index)
            .field("bytes", &self.home.segment_bytes)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn pool(segments: usize) -> SegmentPool {
        SegmentPoolBuilder::new(0, segments).segment_bytes(4096).build().unwrap()
    }

    #[test]
    fn rejects_bad_sizes_with_the_numbers() {
        let err = SegmentPoolBuilder::new(0, 4).segment_bytes(5000).build().unwrap_err();
        assert_eq!(
            err,
            MemoryError::InvalidSegmentSize {
                segment_bytes: 5000,
                min_bytes: MIN_SEGMENT_BYTES,
                max_bytes: MAX_SEGMENT_BYTES
            }
        );
        assert!(matches!(
            SegmentPoolBuilder::new(0, 0).build(),
            Err(MemoryError::InvalidSegmentCount { segments: 0, .. })
        ));
    }

    #[test]
    fn allocates_distinct_aligned_segments_until_exhausted() {
        let p = pool(3);
        let mut segs: Vec<Segment> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert!(matches!(p.allocate(), Err(MemoryError::PoolExhausted { segments: 3, .. })));
        for (i, s) in segs.iter_mut().enumerate() {
            assert_eq!(s.as_bytes().as_ptr() as usize % 4096, 0);
            s.as_bytes_mut().fill(i as u8);
        }
        for (i, s) in segs.iter().enumerate() {
            assert!(s.as_bytes().iter().all(|&b| b == i as u8));
        }
        assert_eq!(p.monitor().free_segments(), 0);
        drop(segs);
        assert_eq!(p.monitor().free_segments(), 3);
        assert_eq!(p.monitor().peak_in_use(), 3);
        p.monitor().reset_peak();
        let one = p.allocate().unwrap();
        assert_eq!(p.monitor().peak_in_use(), 1);
        drop(one);
    }

    #[test]
    fn segment_released_on_another_thread_returns_home() {
        let p = pool(2);
        let monitor = p.monitor();
        let mut s = p.allocate().unwrap();
        s.as_bytes_mut()[0] = 7;
        let handle = std::thread::spawn(move || {
            assert_eq!(s.as_bytes()[0], 7);
            drop(s);
        });
        handle.join().unwrap();
        assert_eq!(monitor.free_segments(), 2);
        assert!(p.try_allocate().is_some());
    }

    #[test]
    fn segments_outlive_their_pool_handle() {
        let p = pool(1);
        let monitor = p.monitor();
        let mut s = p.allocate().unwrap();
        drop(p);
        s.as_bytes_mut()[4095] = 1;
        drop(s);
        assert_eq!(monitor.free_segments(), 1);
    }
}
