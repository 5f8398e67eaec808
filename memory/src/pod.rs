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

/// Free room in up to `W` places at once (a slice of `T` each: the free part of
/// a segment per subpartition) for records routed among them one by one. A
/// place is a cursor and an end, so a record costs a compare and its copy: no
/// count to scale, no slice to rebuild. Borrows the rooms for its life;
/// [`PodRooms::written`] tells how many records went into each.
pub struct PodRooms<'a, T: Pod, const W: usize> {
    start: [*mut T; W],
    next: [*mut T; W],
    end: [*mut T; W],
    /// The rooms given (the others are empty).
    given: usize,
    _rooms: PhantomData<&'a mut [T]>,
}

impl<'a, T: Pod, const W: usize> PodRooms<'a, T, W> {
    /// Room `i` is the `i`th of `rooms`; past the last (up to `W`) a room is
    /// empty. A zero-sized `T` has no room anywhere (it has nothing to copy).
    ///
    /// # Panics
    /// If `rooms` yields more than `W`.
    pub fn new(rooms: impl IntoIterator<Item = &'a mut [T]>) -> Self {
        let mut start = [std::ptr::null_mut(); W];
        let mut end = [std::ptr::null_mut(); W];
        let mut rooms = rooms.into_iter();
        let mut given = 0;
        for room in rooms.by_ref().take(W) {
            if std::mem::size_of::<T>() != 0 {
                let span = room.as_mut_ptr_range();
                (start[given], end[given]) = (span.start, span.end);
            }
            given += 1;
        }
        assert!(rooms.next().is_none(), "more rooms than {W}");
        PodRooms { start, next: start, end, given, _rooms: PhantomData }
    }

    /// Copies `value` into room `room` if it has space; `false` (nothing
    /// written) if it is full or there is no such room.
    #[inline(always)]
    pub fn push(&mut self, room: usize, value: &T) -> bool {
        let (Some(next), Some(&end)) = (self.next.get_mut(room), self.end.get(room)) else { return false };
        if *next == end {
            return false;
        }
        // SAFETY: `next` lies in `start[room]..end[room]`, one room's span of a
        // slice this borrows exclusively for `'a`, and is below `end`: the slot
        // is inside it, aligned for `T` (the slice's). `T` is not zero-sized
        // (else `next == end`, both null), so the step lands at most on `end`.
        unsafe {
            next.write(*value);
            *next = next.add(1);
        }
        true
    }

    /// Copies `value` into every room given if each has space; `false`
    /// (nothing written) if one is full.
    #[inline]
    pub fn push_each(&mut self, value: &T) -> bool {
        let given = ..self.given;
        if self.next[given].iter().zip(&self.end[given]).any(|(next, end)| next == end) {
            return false;
        }
        (0..self.given).all(|room| self.push(room, value))
    }

    /// How many records went into each room.
    pub fn written(&self) -> [usize; W] {
        // A cursor never passes its end: each count is within its room.
        std::array::from_fn(|i| (self.next[i] as usize - self.start[i] as usize) / std::mem::size_of::<T>().max(1))
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

    #[test]
    fn rooms_take_records_until_each_is_full() {
        let (mut a, mut b) = ([[0u64; 2]; 3], [[0u64; 2]; 1]);
        let mut rooms = PodRooms::<[u64; 2], 4>::new([&mut a[..], &mut b[..]]);
        let routed = [(1, [1, 1]), (0, [2, 2]), (1, [3, 3]), (0, [4, 4]), (2, [5, 5]), (9, [6, 6])];
        let took = routed.map(|(room, r)| rooms.push(room, &r));
        assert_eq!(took, [true, true, false, true, false, false], "b holds one; room 2 is empty, 9 is none");
        assert!(!rooms.push_each(&[7, 7]), "b is full: nothing written");
        assert!(rooms.push(0, &[8, 8]));
        assert!(!rooms.push(0, &[9, 9]), "a is full");
        assert_eq!(rooms.written(), [3, 1, 0, 0]);
        assert_eq!((a, b), ([[2, 2], [4, 4], [8, 8]], [[1, 1]]));
    }

    #[test]
    fn a_record_for_each_room_goes_into_every_room_given() {
        let (mut a, mut b) = ([0u32; 2], [0u32; 1]);
        let mut rooms = PodRooms::<u32, 8>::new([&mut a[..], &mut b[..]]);
        assert!(rooms.push_each(&5), "the six rooms not given do not count");
        assert!(!rooms.push_each(&6), "b is full");
        assert_eq!(rooms.written()[..3], [1, 1, 0]);
        assert_eq!((a, b), ([5, 0], [5]));
    }

    #[test]
    fn zero_sized_records_have_no_room() {
        let mut units = [(); 4];
        let mut rooms = PodRooms::<(), 1>::new([&mut units[..]]);
        assert!(!rooms.push(0, &()));
        assert_eq!(rooms.written(), [0]);
    }

    #[test]
    #[should_panic(expected = "more rooms than 1")]
    fn more_rooms_than_places_is_refused() {
        let (mut a, mut b) = ([0u32; 1], [0u32; 1]);
        PodRooms::<u32, 1>::new([&mut a[..], &mut b[..]]);
    }
}
