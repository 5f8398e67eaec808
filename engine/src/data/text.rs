//! Strings and byte vectors: archived as rkyv's `String` and `Vec<u8>`, read in
//! place as `&str` and `&[u8]`, written from a borrowed form without an owned
//! copy.

use rkyv::rancor;
use rkyv::ser::writer::Buffer as RkyvSlice;
use shardflow_control::RecordFormat;
use shardflow_netstack::{Buffer, NetError, ResultPartition};

use super::archived::{access_unshared, each_checked, each_checked_in_place, rkyv_format, write_rkyv, ArchiveSize};
use super::Data;

/// A `&str` archived as a `String`, so a borrowed word is written without an
/// owned copy.
struct StrAsString<'a>(&'a str);

impl rkyv::Archive for StrAsString<'_> {
    type Archived = rkyv::string::ArchivedString;
    type Resolver = rkyv::string::StringResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::string::ArchivedString::resolve_from_str(self.0, resolver, out);
    }
}

impl<S: rancor::Fallible + rkyv::ser::Writer + ?Sized> rkyv::Serialize<S> for StrAsString<'_>
where
    S::Error: rancor::Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::string::ArchivedString::serialize_from_str(self.0, serializer)
    }
}

/// The bytes of `value`'s archive written into `writer` (`None`: it did not fit).
fn archive_into(value: &StrAsString<'_>, mut writer: impl rkyv::ser::Writer<rancor::Failure>) -> Option<usize> {
    rkyv::api::serialize_using::<_, rancor::Failure>(value, &mut writer).ok()?;
    Some(writer.pos())
}

/// Alignment of an archived `String` or byte vector: a relative pointer and a
/// length of 32 bits, bytes of alignment 1.
const STRING_ALIGN: usize = 4;

impl Data for String {
    type Borrowed = str;
    const POD: bool = false;
    const EACH_IN_PLACE: Option<super::EachInPlace<Self>> = Some(|buffer, cursor, f| {
        each_checked_in_place(
            buffer,
            STRING_ALIGN,
            cursor,
            access_unshared::<rkyv::string::ArchivedString>,
            &mut |a, at| f(a.as_str(), at),
        )
    });

    fn format() -> RecordFormat {
        rkyv_format::<String>(STRING_ALIGN)
    }

    #[inline]
    fn heap_bytes(record: &str) -> usize {
        record.len()
    }

    fn to_owned_record(b: &str) -> String {
        b.to_owned()
    }

    /// A string's archive needs a writer alone: serialized straight into the
    /// segment, without the arena and sharing map of rkyv's general path.
    #[inline]
    fn write(record: &str, out: &mut ResultPartition, sp: usize) -> Result<(), NetError> {
        let value = StrAsString(record);
        out.write_var(
            sp,
            STRING_ALIGN,
            |room| archive_into(&value, RkyvSlice::from(room)),
            || archive_into(&value, ArchiveSize::default()),
        )
    }

    fn each(buffer: &Buffer, cursor: &mut usize, f: &mut dyn FnMut(&str) -> bool) -> Result<(), NetError> {
        each_checked(buffer, STRING_ALIGN, cursor, access_unshared::<rkyv::string::ArchivedString>, &mut |a| {
            f(a.as_str())
        })
    }

    fn to_bytes(record: &str) -> Result<Vec<u8>, NetError> {
        Ok(record.as_bytes().to_vec())
    }

    fn from_bytes(bytes: &[u8]) -> Result<String, NetError> {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| NetError::MalformedRecord { offset: 0, reason: format!("not UTF-8: {e}") })
    }
}

/// A `&[u8]` archived as a `Vec<u8>`.
struct BytesAsVec<'a>(&'a [u8]);

impl rkyv::Archive for BytesAsVec<'_> {
    type Archived = rkyv::vec::ArchivedVec<u8>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<S: rancor::Fallible + rkyv::ser::Writer + rkyv::ser::Allocator + ?Sized> rkyv::Serialize<S> for BytesAsVec<'_>
where
    S::Error: rancor::Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::vec::ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

impl Data for Vec<u8> {
    type Borrowed = [u8];
    const POD: bool = false;
    const EACH_IN_PLACE: Option<super::EachInPlace<Self>> = Some(|buffer, cursor, f| {
        each_checked_in_place(
            buffer,
            STRING_ALIGN,
            cursor,
            access_unshared::<rkyv::vec::ArchivedVec<u8>>,
            &mut |a, at| f(a.as_slice(), at),
        )
    });

    fn format() -> RecordFormat {
        rkyv_format::<Vec<u8>>(STRING_ALIGN)
    }

    #[inline]
    fn heap_bytes(record: &[u8]) -> usize {
        record.len()
    }

    fn to_owned_record(b: &[u8]) -> Vec<u8> {
        b.to_vec()
    }

    fn write(record: &[u8], out: &mut ResultPartition, sp: usize) -> Result<(), NetError> {
        write_rkyv(&BytesAsVec(record), STRING_ALIGN, out, sp)
    }

    fn each(buffer: &Buffer, cursor: &mut usize, f: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), NetError> {
        each_checked(buffer, STRING_ALIGN, cursor, access_unshared::<rkyv::vec::ArchivedVec<u8>>, &mut |a| {
            f(a.as_slice())
        })
    }

    fn to_bytes(record: &[u8]) -> Result<Vec<u8>, NetError> {
        Ok(record.to_vec())
    }

    fn from_bytes(bytes: &[u8]) -> Result<Vec<u8>, NetError> {
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use shardflow_netstack::NetError;

    use crate::data::testing::{buffer_of, next_record};
    use crate::Data;

    fn archive(s: &str) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(&s.to_string()).expect("archived").to_vec()
    }

    #[test]
    fn a_malformed_string_is_a_typed_error_with_rkyvs_account_and_its_offset() {
        let good = archive("hello");
        let mut bad = archive("a word longer than eight bytes");
        bad[2] = 0xff; // the text's third byte: no longer UTF-8
        let buffer = buffer_of(&[good.clone(), bad, good], super::STRING_ALIGN);
        let (mut seen, mut cursor) = (Vec::new(), 0);
        let err = String::each(&buffer, &mut cursor, &mut |w| {
            seen.push(w.to_string());
            true
        })
        .expect_err("the second record is not a string");
        assert_eq!(seen, ["hello"], "the record before it was read");
        let second = next_record(archive("hello").len(), super::STRING_ALIGN);
        match err {
            NetError::MalformedRecord { offset, reason } => {
                assert_eq!(offset, second, "names where the bad record starts");
                assert_eq!(cursor, second, "and stops there: nothing after it is skipped");
                assert!(reason.to_lowercase().contains("utf"), "rkyv's account, not a bare failure: {reason}");
            }
            other => panic!("not a malformed record: {other}"),
        }
    }

    #[test]
    fn strings_and_byte_vectors_read_back_in_place() {
        let words = ["", "a", "eight by", "longer than eight bytes"];
        let buffer = buffer_of(&words.map(archive), super::STRING_ALIGN);
        let (mut seen, mut cursor) = (Vec::new(), 0);
        String::each(&buffer, &mut cursor, &mut |w| {
            seen.push(w.to_string());
            true
        })
        .expect("all well-formed");
        assert_eq!(seen, words);
        let blobs: Vec<Vec<u8>> = vec![vec![], vec![0xff; 3], (0..=255).collect()];
        let archived: Vec<Vec<u8>> =
            blobs.iter().map(|b| rkyv::to_bytes::<rkyv::rancor::Error>(b).expect("archived").to_vec()).collect();
        let buffer = buffer_of(&archived, super::STRING_ALIGN);
        let (mut seen, mut cursor) = (Vec::new(), 0);
        Vec::<u8>::each(&buffer, &mut cursor, &mut |b| {
            seen.push(b.to_vec());
            true
        })
        .expect("all well-formed");
        assert_eq!(seen, blobs);
    }
}
