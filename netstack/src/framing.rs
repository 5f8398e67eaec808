//! How variable-size records are framed in a buffer, one after another from
//! byte 0: `[len: u32 LE][pad to align][len bytes][pad to 4]`, where `align`
//! (a power of two, at least 4) is the record type's. The partition writes
//! frames ([`crate::ResultPartition::write_var`]: one to a buffer for a record
//! larger than a segment); a consumer
//! reads them with [`VarRecords`], which checks every length against the
//! buffer.

use crate::buffer::Buffer;
use crate::error::NetError;

/// Bytes of the length prefix of a variable-size record.
pub const VAR_HEADER: usize = 4;

#[inline(always)]
fn align_up(x: usize, align: usize) -> usize {
    (x + align - 1) & !(align - 1)
}

/// Where the bytes of a record framed at `at` start, for alignment `align`.
#[inline(always)]
pub(crate) fn record_start(at: usize, align: usize) -> usize {
    align_up(at + VAR_HEADER, align.max(VAR_HEADER))
}

/// Where the frame of a record of `len` bytes starting at `start` ends: the
/// next frame's `at`.
#[inline(always)]
pub(crate) fn frame_end(start: usize, len: usize) -> usize {
    align_up(start + len, VAR_HEADER)
}

/// Writes the length prefix of a record of `len` bytes framed at `at`.
#[inline(always)]
pub(crate) fn put_len(bytes: &mut [u8], at: usize, len: usize) {
    bytes[at..at + VAR_HEADER].copy_from_slice(&(len as u32).to_le_bytes());
}

/// The variable-size records of a buffer (written by
/// [`crate::ResultPartition::write_var`] with alignment `align`), as byte slices; a
/// length that runs past the buffer ends the iteration with
/// [`NetError::MalformedRecord`].
pub struct VarRecords<'b> {
    bytes: &'b [u8],
    pos: usize,
    align: usize,
}

impl<'b> VarRecords<'b> {
    /// The records of `buffer`, framed with alignment `align`.
    pub fn new(buffer: &'b Buffer, align: usize) -> Self {
        VarRecords { bytes: buffer.as_bytes(), pos: 0, align }
    }

    /// The records from byte `pos` on (a position [`Self::position`] returned).
    pub fn from_position(buffer: &'b Buffer, align: usize, pos: usize) -> Self {
        VarRecords { bytes: buffer.as_bytes(), pos, align }
    }

    /// Where the next record starts.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'b> Iterator for VarRecords<'b> {
    type Item = Result<&'b [u8], NetError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let at = self.pos;
        let header = self.bytes.get(at..at + VAR_HEADER).and_then(|h| h.first_chunk::<VAR_HEADER>());
        let start = record_start(at, self.align);
        let record = header
            .map(|h| u32::from_le_bytes(*h) as usize)
            .and_then(|len| start.checked_add(len).map(|end| (len, end)))
            .and_then(|(len, end)| self.bytes.get(start..end).map(|b| (len, b)));
        match record {
            Some((len, bytes)) => {
                self.pos = frame_end(start, len);
                Some(Ok(bytes))
            }
            None => {
                self.pos = self.bytes.len();
                Some(Err(NetError::MalformedRecord {
                    offset: at,
                    reason: "a record's length runs past the buffer".into(),
                }))
            }
        }
    }
}
