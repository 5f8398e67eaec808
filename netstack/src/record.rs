//! Record encoding into segments. Fixed-size plain-data records (`bytemuck::Pod`)
//! are copied once as bytes and read in place as a slice (see
//! [`shardflow_memory::SegmentWriter`] and [`crate::Buffer::pod`]). Every other record
//! type goes through rkyv: each record is archived straight into the segment and read
//! in place with checked access.
//!
//! rkyv layout of a buffer, every field 16-byte aligned:
//!
//! ```text
//! [len: u32][pad: 12][archive: len bytes][pad to 16] [len: u32]...
//! ```

use std::marker::PhantomData;

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer as RkyvSlice;
use rkyv::{Portable, Serialize};
use shardflow_memory::Segment;

use crate::buffer::Buffer;
use crate::error::NetError;

const HEADER: usize = 16;
const ALIGN: usize = 16;

fn align_up(x: usize) -> usize {
    (x + ALIGN - 1) & !(ALIGN - 1)
}

/// Archives records of type `T` one after the other into a segment.
pub struct RkyvWriter<T> {
    segment: Segment,
    pos: usize,
    records: usize,
    _t: PhantomData<fn(&T)>,
}

impl<T> RkyvWriter<T>
where
    T: for<'a, 'b> Serialize<HighSerializer<RkyvSlice<'b>, ArenaHandle<'a>, rancor::BoxedError>>,
{
    /// A writer over an empty segment.
    pub fn new(segment: Segment) -> Self {
        RkyvWriter { segment, pos: 0, records: 0, _t: PhantomData }
    }

    /// Archives `value` into the segment: `Ok(true)` if written, `Ok(false)` if it
    /// does not fit in the room left (send this buffer and retry in a fresh one), and
    /// [`NetError::RecordTooLarge`] if it would not fit even in an empty segment.
    pub fn try_push(&mut self, value: &T) -> Result<bool, NetError> {
        let cap = self.segment.capacity_bytes();
        let start = self.pos + HEADER;
        if start >= cap {
            return self.too_large_or_full(cap - self.pos.min(cap));
        }
        let out = &mut self.segment.as_bytes_mut()[start..];
        let room = out.len();
        match rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, RkyvSlice::from(out)) {
            Ok(written) => {
                let len = written.len();
                let header = &mut self.segment.as_bytes_mut()[self.pos..self.pos + HEADER];
                header[..4].copy_from_slice(&(len as u32).to_le_bytes());
                self.pos = align_up(start + len);
                self.records += 1;
                Ok(true)
            }
            Err(_) => self.too_large_or_full(room + 1),
        }
    }

    fn too_large_or_full(&self, at_least: usize) -> Result<bool, NetError> {
        if self.records == 0 {
            Err(NetError::RecordTooLarge { record_bytes: at_least, segment_bytes: self.segment.capacity_bytes() })
        } else {
            Ok(false)
        }
    }

    /// Records written.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The filled buffer.
    pub fn finish(self) -> Result<Buffer, NetError> {
        let bytes = self.pos.min(self.segment.capacity_bytes());
        Buffer::new(self.segment, self.records, bytes)
    }
}

/// Reads the archived records of a buffer in place, checking each one.
pub fn rkyv_records<A>(buffer: &Buffer) -> RkyvRecords<'_, A>
where
    A: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>,
{
    RkyvRecords { bytes: buffer.as_bytes(), pos: 0, _a: PhantomData }
}

/// Iterator over the archived records of a buffer; a malformed record ends the
/// iteration with a [`NetError::MalformedRecord`].
pub struct RkyvRecords<'b, A> {
    bytes: &'b [u8],
    pos: usize,
    _a: PhantomData<fn() -> A>,
}

impl<'b, A> Iterator for RkyvRecords<'b, A>
where
    A: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>> + 'b,
{
    type Item = Result<&'b A, NetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let malformed = |offset, reason: String| Some(Err(NetError::MalformedRecord { offset, reason }));
        let Some(header) = self.bytes.get(self.pos..self.pos + 4) else {
            let at = self.pos;
            self.pos = self.bytes.len();
            return malformed(at, "truncated header".into());
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = self.pos + HEADER;
        let Some(body) = start.checked_add(len).and_then(|end| self.bytes.get(start..end)) else {
            let at = self.pos;
            self.pos = self.bytes.len();
            return malformed(at, format!("record length {len} runs past the buffer"));
        };
        let at = self.pos;
        self.pos = align_up(start + len);
        match rkyv::access::<A, rancor::BoxedError>(body) {
            Ok(a) => Some(Ok(a)),
            Err(e) => {
                self.pos = self.bytes.len();
                malformed(at, e.to_string())
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use rkyv::Archive;
    use shardflow_memory::SegmentPoolBuilder;

    #[derive(Archive, Serialize, Debug, PartialEq)]
    struct Click {
        user: u64,
        url: String,
    }

    #[test]
    fn archives_until_full_and_reads_back_checked() {
        let pool = SegmentPoolBuilder::new(0, 1).segment_bytes(4096).build().unwrap();
        let mut w = RkyvWriter::<Click>::new(pool.allocate().unwrap());
        let mut n = 0u64;
        while w.try_push(&Click { user: n, url: format!("/page/{n}") }).unwrap() {
            n += 1;
        }
        assert!(n > 50, "{n} records fit");
        let buf = w.finish().unwrap();
        assert_eq!(buf.records() as u64, n);
        let read: Vec<_> = rkyv_records::<ArchivedClick>(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(read.len() as u64, n);
        assert_eq!(read[7].user, 7);
        assert_eq!(read[7].url.as_str(), "/page/7");
    }

    #[test]
    fn a_record_larger_than_a_segment_is_a_typed_error() {
        let pool = SegmentPoolBuilder::new(0, 1).segment_bytes(4096).build().unwrap();
        let mut w = RkyvWriter::<Click>::new(pool.allocate().unwrap());
        let big = Click { user: 1, url: "x".repeat(10_000) };
        assert!(matches!(w.try_push(&big), Err(NetError::RecordTooLarge { segment_bytes: 4096, .. })));
    }

    #[test]
    fn corrupted_bytes_are_reported_not_trusted() {
        let pool = SegmentPoolBuilder::new(0, 1).segment_bytes(4096).build().unwrap();
        let mut seg = pool.allocate().unwrap();
        seg.as_bytes_mut()[..4].copy_from_slice(&5000u32.to_le_bytes());
        let buf = Buffer::new(seg, 1, 64).unwrap();
        let mut it = rkyv_records::<ArchivedClick>(&buf);
        assert!(matches!(it.next(), Some(Err(NetError::MalformedRecord { offset: 0, .. }))));
        assert!(it.next().is_none());
    }
}
