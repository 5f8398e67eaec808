//! Records through rkyv: the bounds a type needs, the helpers the declaring
//! macros expand to, and tuples (in-place views of a user's own types are
//! [`super::view`]).

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::api::low::LowValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer as RkyvSlice;
use rkyv::util::AlignedVec;
use shardflow_control::{RecordEncoding, RecordFormat};
use shardflow_netstack::{Buffer, NetError, ResultPartition, VarRecords};

use super::Data;

/// The rkyv bounds a record type needs: archivable into a segment, checkable,
/// and deserializable back.
pub trait RkyvRecord:
    Sized
    + rkyv::Archive
    + for<'a, 'b> rkyv::Serialize<HighSerializer<RkyvSlice<'b>, ArenaHandle<'a>, rancor::BoxedError>>
    + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::BoxedError>>
    + for<'a> rkyv::Serialize<HighSerializer<ArchiveSize, ArenaHandle<'a>, rancor::BoxedError>>
where
    Self::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + rkyv::Deserialize<Self, HighDeserializer<rancor::BoxedError>>,
{
}

impl<T> RkyvRecord for T
where
    T: rkyv::Archive
        + for<'a, 'b> rkyv::Serialize<HighSerializer<RkyvSlice<'b>, ArenaHandle<'a>, rancor::BoxedError>>
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::BoxedError>>
        + for<'a> rkyv::Serialize<HighSerializer<ArchiveSize, ArenaHandle<'a>, rancor::BoxedError>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::BoxedError>>,
{
}

/// Alignment of an archive in a buffer: rkyv's archives need at most 16.
pub const RKYV_ALIGN: usize = 16;

/// The format of an rkyv type.
#[doc(hidden)]
pub fn rkyv_format<T: rkyv::Archive>(align: usize) -> RecordFormat {
    RecordFormat {
        type_name: std::any::type_name::<T>().to_string(),
        encoding: RecordEncoding::Rkyv {
            archived_size: std::mem::size_of::<T::Archived>() as u32,
            align: align as u32,
        },
    }
}

/// A writer that keeps no bytes, only how many were written: an archive's
/// size, measured by archiving into it at the cost of the serialization
/// alone.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct ArchiveSize(usize);

impl rkyv::ser::Positional for ArchiveSize {
    #[inline]
    fn pos(&self) -> usize {
        self.0
    }
}

impl<E> rkyv::ser::Writer<E> for ArchiveSize {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.0 += bytes.len();
        Ok(())
    }
}

/// Archives `value` into subpartition `sp` (a record too large for a segment
/// travels in a buffer of its own).
#[doc(hidden)]
pub fn write_rkyv<V>(value: &V, align: usize, out: &mut ResultPartition, sp: usize) -> Result<(), NetError>
where
    V: for<'a, 'b> rkyv::Serialize<HighSerializer<RkyvSlice<'b>, ArenaHandle<'a>, rancor::BoxedError>>
        + for<'a> rkyv::Serialize<HighSerializer<ArchiveSize, ArenaHandle<'a>, rancor::BoxedError>>,
{
    out.write_var(
        sp,
        align,
        |room| {
            rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, RkyvSlice::from(room)).ok().map(|w| w.len())
        },
        || archive_size(value),
    )
}

/// The size of `value`'s archive (`None` if it cannot be archived).
fn archive_size<V>(value: &V) -> Option<usize>
where
    V: for<'a> rkyv::Serialize<HighSerializer<ArchiveSize, ArenaHandle<'a>, rancor::BoxedError>>,
{
    rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, ArchiveSize::default()).ok().map(|w| w.0)
}

/// Each archived record of `buffer` from `*cursor`, checked, handed to `f`.
#[doc(hidden)]
pub fn each_archived<A>(
    buffer: &Buffer,
    align: usize,
    cursor: &mut usize,
    f: &mut dyn FnMut(&A) -> bool,
) -> Result<(), NetError>
where
    A: rkyv::Portable + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>,
{
    each_checked(buffer, align, cursor, access_high::<A>, f)
}

/// How the records of an archived type are checked: from a record's bytes to
/// its archive, or rkyv's account of why they are none.
#[doc(hidden)]
pub type Access<A> = for<'b> fn(&'b [u8]) -> Result<&'b A, String>;

/// Picks how the records of an archived type `A` are checked, by what `A`
/// allows: rkyv's low-level validator (no sharing map, a zero-sized error; a
/// malformed record is checked again for rkyv's account of it) where its
/// archive can hold no shared pointer (strings, byte vectors, most user
/// types), the high-level one where it can (an `Rc`, an `Arc`). The declaring
/// macros call `(&Checker::<A>::new()).access()` on their concrete type
/// ([`rkyv_access!`](crate::rkyv_access)), and
/// method resolution takes [`CheckUnshared`] where `A` qualifies before
/// [`CheckShared`], one reference further (autoref specialization, as
/// `anyhow!` tells its arguments apart).
#[doc(hidden)]
pub struct Checker<A>(std::marker::PhantomData<fn() -> A>);

impl<A> Checker<A> {
    #[doc(hidden)]
    #[allow(clippy::new_without_default, reason = "made only by the declaring macros")]
    pub fn new() -> Self {
        Checker(std::marker::PhantomData)
    }
}

/// [`Checker`]'s choice for archives without shared pointers.
#[doc(hidden)]
pub trait CheckUnshared<A> {
    fn access(&self) -> Access<A>;

    /// Which path it is.
    #[cfg(test)]
    fn path(&self) -> &'static str {
        "unshared"
    }
}

impl<A> CheckUnshared<A> for Checker<A>
where
    A: rkyv::Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + for<'a> CheckBytes<LowValidator<'a, rancor::Failure>>,
{
    fn access(&self) -> Access<A> {
        access_unshared::<A>
    }
}

/// [`Checker`]'s choice for any other archive.
#[doc(hidden)]
pub trait CheckShared<A> {
    fn access(&self) -> Access<A>;

    /// Which path it is.
    #[cfg(test)]
    fn path(&self) -> &'static str {
        "shared"
    }
}

impl<A> CheckShared<A> for &Checker<A>
where
    A: rkyv::Portable + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>,
{
    fn access(&self) -> Access<A> {
        access_high::<A>
    }
}

pub(crate) fn access_unshared<A>(bytes: &[u8]) -> Result<&A, String>
where
    A: rkyv::Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + for<'a> CheckBytes<LowValidator<'a, rancor::Failure>>,
{
    rkyv::api::low::access::<A, rancor::Failure>(bytes).or_else(|_| access_high::<A>(bytes))
}

fn access_high<A>(bytes: &[u8]) -> Result<&A, String>
where
    A: rkyv::Portable + for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>,
{
    rkyv::access::<A, rancor::BoxedError>(bytes).map_err(|e| e.to_string())
}

/// [`each_archived`] with the records checked by `access`.
#[doc(hidden)]
pub fn each_checked<A>(
    buffer: &Buffer,
    align: usize,
    cursor: &mut usize,
    access: Access<A>,
    f: &mut dyn FnMut(&A) -> bool,
) -> Result<(), NetError> {
    each_checked_at(buffer, align, cursor, access, |a, _| f(a))
}

/// [`each_checked`] for a reader that keeps the records: each borrowed for as
/// long as `buffer`, with the position after it (`Data::EACH_IN_PLACE`).
#[doc(hidden)]
pub fn each_checked_in_place<'b, A: 'b>(
    buffer: &'b Buffer,
    align: usize,
    cursor: &mut usize,
    access: Access<A>,
    f: &mut dyn FnMut(&'b A, usize) -> bool,
) -> Result<(), NetError> {
    each_checked_at(buffer, align, cursor, access, f)
}

#[inline(always)]
fn each_checked_at<'b, A: 'b>(
    buffer: &'b Buffer,
    align: usize,
    cursor: &mut usize,
    access: Access<A>,
    mut f: impl FnMut(&'b A, usize) -> bool,
) -> Result<(), NetError> {
    let mut records = VarRecords::from_position(buffer, align, *cursor);
    while let Some(bytes) = records.next() {
        let at = records.position();
        let bytes = bytes?;
        let archived = access(bytes).map_err(|reason| NetError::MalformedRecord { offset: *cursor, reason })?;
        *cursor = at;
        if !f(archived, at) {
            break;
        }
    }
    *cursor = records.position().max(*cursor);
    Ok(())
}

/// An estimate of what an owned `value` holds on the heap: the size of its
/// archive beyond the archived root (`inline` bytes), measured by archiving
/// it into an [`ArchiveSize`] (no bytes copied); 0 at no cost for a type that
/// needs no drop.
#[doc(hidden)]
pub fn rkyv_heap_bytes<V>(value: &V, inline: usize) -> usize
where
    V: for<'a> rkyv::Serialize<HighSerializer<ArchiveSize, ArenaHandle<'a>, rancor::BoxedError>>,
{
    // A type that needs no drop owns nothing on the heap (a known constant).
    if !std::mem::needs_drop::<V>() {
        return 0;
    }
    archive_size(value).unwrap_or(0).saturating_sub(inline)
}

/// `value` archived on its own (for snapshots).
#[doc(hidden)]
pub fn rkyv_to_bytes<V>(value: &V) -> Result<Vec<u8>, NetError>
where
    V: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::BoxedError>>,
{
    rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(value, AlignedVec::<16>::new())
        .map(|v| v.into_vec())
        .map_err(|e| NetError::MalformedRecord { offset: 0, reason: format!("cannot archive: {e}") })
}

/// A value from bytes [`rkyv_to_bytes`] wrote: copied into an aligned buffer,
/// checked, deserialized.
#[doc(hidden)]
pub fn rkyv_from_bytes<T: RkyvRecord>(bytes: &[u8]) -> Result<T, NetError>
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::BoxedError>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let malformed = |e: rancor::BoxedError| NetError::MalformedRecord { offset: 0, reason: e.to_string() };
    let archived = rkyv::access::<T::Archived, rancor::BoxedError>(&aligned).map_err(malformed)?;
    rkyv::deserialize::<T, rancor::BoxedError>(archived).map_err(malformed)
}

/// The [`Access`] of rkyv type `$t`'s archive, as [`Checker`] picks it: for
/// the declaring macros.
#[doc(hidden)]
#[macro_export]
macro_rules! rkyv_access {
    ($t:ty) => {{
        #[allow(unused_imports, reason = "one of the two is the checker's choice")]
        use $crate::data::{CheckShared as _, CheckUnshared as _};
        (&$crate::data::Checker::<<$t as $crate::data::rkyv::Archive>::Archived>::new()).access()
    }};
}

/// Declares rkyv record types (`#[derive(rkyv::Archive, rkyv::Serialize,
/// rkyv::Deserialize)]`, plus `Clone`): archived once into a segment and read
/// with checked access; operators see the deserialized value (an owned copy
/// per record after an exchange). To read them in place instead, declare a view
/// with [`rkyv_view!`](crate::rkyv_view).
///
/// ```
/// #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
/// struct Request { user: String, path: String, millis: u64 }
/// shardflow_engine::rkyv_data!(Request);
/// ```
#[macro_export]
macro_rules! rkyv_data {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::Data for $t {
            type Borrowed = $t;
            const POD: bool = false;
            fn format() -> $crate::RecordFormat {
                $crate::data::rkyv_format::<$t>($crate::data::RKYV_ALIGN)
            }
            fn to_owned_record(b: &$t) -> $t {
                ::std::clone::Clone::clone(b)
            }
            fn write(
                record: &$t,
                out: &mut $crate::data::ResultPartition,
                sp: usize,
            ) -> ::std::result::Result<(), $crate::data::NetError> {
                $crate::data::write_rkyv(record, $crate::data::RKYV_ALIGN, out, sp)
            }
            fn each(
                buffer: &$crate::data::Buffer,
                cursor: &mut usize,
                f: &mut dyn FnMut(&$t) -> bool,
            ) -> ::std::result::Result<(), $crate::data::NetError> {
                let mut failed = None;
                $crate::data::each_checked(
                    buffer,
                    $crate::data::RKYV_ALIGN,
                    cursor,
                    $crate::rkyv_access!($t),
                    &mut |a| match $crate::data::rkyv::deserialize::<$t, $crate::data::rkyv::rancor::BoxedError>(a) {
                        Ok(v) => f(&v),
                        Err(e) => {
                            failed = Some(e.to_string());
                            false
                        }
                    },
                )?;
                match failed {
                    None => Ok(()),
                    Some(reason) => Err($crate::data::NetError::MalformedRecord { offset: *cursor, reason }),
                }
            }
            fn to_bytes(record: &$t) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::data::NetError> {
                $crate::data::rkyv_to_bytes(record)
            }
            fn from_bytes(bytes: &[u8]) -> ::std::result::Result<$t, $crate::data::NetError> {
                $crate::data::rkyv_from_bytes::<$t>(bytes)
            }
            fn heap_bytes(record: &$t) -> usize {
                $crate::data::rkyv_heap_bytes(
                    record,
                    ::std::mem::size_of::<<$t as $crate::data::rkyv::Archive>::Archived>(),
                )
            }
        }
    )*};
}

/// Types made of rkyv-encodable parts `$name` (tuples, options) are records,
/// deserialized for operators; `$heap` is what a record `$record` holds on the
/// heap.
macro_rules! composite_data {
    ([$($name:ident),+] $t:ty, |$record:ident| $heap:expr) => {
        impl<$($name),+> Data for $t
        where
            $($name: Data + RkyvRecord,
              <$name as rkyv::Archive>::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
                + rkyv::Deserialize<$name, HighDeserializer<rancor::BoxedError>>,)+
            $t: RkyvRecord,
            <$t as rkyv::Archive>::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
                + rkyv::Deserialize<$t, HighDeserializer<rancor::BoxedError>>,
        {
            type Borrowed = Self;
            const POD: bool = false;
            fn format() -> RecordFormat {
                rkyv_format::<Self>(RKYV_ALIGN)
            }
            fn to_owned_record(b: &Self) -> Self {
                b.clone()
            }
            fn write(record: &Self, out: &mut ResultPartition, sp: usize) -> Result<(), NetError> {
                write_rkyv(record, RKYV_ALIGN, out, sp)
            }
            fn each(buffer: &Buffer, cursor: &mut usize, f: &mut dyn FnMut(&Self) -> bool) -> Result<(), NetError> {
                let mut failed = None;
                each_archived::<<Self as rkyv::Archive>::Archived>(buffer, RKYV_ALIGN, cursor, &mut |a| {
                    match rkyv::deserialize::<Self, rancor::BoxedError>(a) {
                        Ok(v) => f(&v),
                        Err(e) => {
                            failed = Some(e.to_string());
                            false
                        }
                    }
                })?;
                match failed {
                    None => Ok(()),
                    Some(reason) => Err(NetError::MalformedRecord { offset: *cursor, reason }),
                }
            }
            fn to_bytes(record: &Self) -> Result<Vec<u8>, NetError> {
                rkyv_to_bytes(record)
            }
            fn from_bytes(bytes: &[u8]) -> Result<Self, NetError> {
                rkyv_from_bytes::<Self>(bytes)
            }
            #[allow(non_snake_case, reason = "a tuple's parts are bound to their types' names")]
            #[inline]
            fn heap_bytes($record: &Self) -> usize {
                $heap
            }
        }
    };
}

/// Tuples of rkyv-encodable parts are records.
macro_rules! tuple_data {
    ($($name:ident),+) => {
        composite_data!([$($name),+] ($($name,)+), |record| {
            let ($($name,)+) = record;
            0 $(+ <$name as Data>::heap_bytes($name.borrow()))+
        });
    };
}

tuple_data!(A, B);
tuple_data!(A, B, C);
tuple_data!(A, B, C, D);
tuple_data!(A, B, C, D, E);
tuple_data!(A, B, C, D, E, F);
tuple_data!(A, B, C, D, E, F, G);
tuple_data!(A, B, C, D, E, F, G, H);
composite_data!([A] Option<A>, |record| record.as_ref().map_or(0, |a| <A as Data>::heap_bytes(a.borrow())));

// Primitives that are not plain data (not every bit pattern is one).
crate::rkyv_data!(bool, char);

// Vectors of numbers and of strings (`Vec<u8>` is read in place as `[u8]`).
crate::rkyv_data!(Vec<u16>, Vec<u32>, Vec<u64>, Vec<i16>, Vec<i32>, Vec<i64>, Vec<f32>, Vec<f64>, Vec<String>);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rkyv::api::high::HighSerializer;
    use rkyv::ser::allocator::ArenaHandle;
    use rkyv::util::AlignedVec;
    use shardflow_netstack::NetError;

    use super::{archive_size, CheckShared as _, CheckUnshared as _, Checker};
    use crate::data::testing::{buffer_of, next_record};
    use crate::Data;

    #[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    struct Plain {
        name: String,
        tags: Vec<u32>,
    }
    crate::rkyv_data!(Plain);

    /// A record whose archive holds a shared pointer.
    #[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    struct Shared {
        name: Arc<str>,
        n: u64,
    }
    crate::rkyv_data!(Shared);

    #[test]
    fn an_archive_is_measured_at_the_size_it_is_written() {
        let plain = Plain { name: "x".repeat(70_000), tags: (0..5000).collect() };
        let name: Arc<str> = Arc::from("shared");
        let shared = vec![Shared { name: name.clone(), n: 1 }, Shared { name, n: 2 }];
        assert_eq!(archive_size(&plain), Some(archive(&plain).len()));
        assert_eq!(archive_size(&shared), Some(archive(&shared).len()), "a shared pointer's target counted once");
        assert_eq!(archive_size(&String::new()), Some(archive(&String::new()).len()));
    }

    #[test]
    #[allow(clippy::needless_borrow, reason = "the borrow is what lets the shared path be found")]
    fn the_checker_takes_the_unshared_path_where_the_archive_allows_it() {
        assert_eq!((&Checker::<rkyv::string::ArchivedString>::new()).path(), "unshared");
        assert_eq!((&Checker::<ArchivedPlain>::new()).path(), "unshared");
        assert_eq!((&Checker::<ArchivedShared>::new()).path(), "shared", "an Arc needs the sharing map");
    }

    fn archive<T>(value: &T) -> Vec<u8>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rkyv::rancor::Error>>,
    {
        rkyv::to_bytes::<rkyv::rancor::Error>(value).expect("archived").to_vec()
    }

    /// Reads the records of `records` (archives) as `T`, up to the first error.
    fn read_all<T: Data<Borrowed = T>>(records: &[Vec<u8>]) -> (Vec<T>, usize, Result<(), NetError>) {
        let buffer = buffer_of(records, super::RKYV_ALIGN);
        let (mut seen, mut cursor) = (Vec::new(), 0);
        let read = T::each(&buffer, &mut cursor, &mut |r| {
            seen.push(r.clone());
            true
        });
        (seen, cursor, read)
    }

    #[test]
    fn records_with_and_without_shared_pointers_read_back_and_malformed_ones_are_typed() {
        let plain =
            [Plain { name: "ann".into(), tags: vec![1, 2] }, Plain { name: "a longer name".into(), tags: vec![] }];
        let (seen, _, read) = read_all::<Plain>(&plain.each_ref().map(archive));
        read.expect("well-formed");
        assert_eq!(seen, plain);
        let shared = Shared { name: "shared name, out of line".into(), n: 7 };
        let (seen, _, read) = read_all::<Shared>(&[archive(&shared), archive(&shared)]);
        read.expect("well-formed");
        assert_eq!(seen, [shared.clone(), shared]);

        // The name's length pointing far past the record: a typed error with
        // rkyv's account of it, at the record's offset, where reading stops.
        let good = archive(&plain[0]);
        let mut bad = archive(&plain[1]);
        let root = bad.len() - std::mem::size_of::<ArchivedPlain>();
        bad[root..root + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        let (seen, cursor, read) = read_all::<Plain>(&[good.clone(), bad, good.clone()]);
        assert_eq!(seen, [plain[0].clone()]);
        match read {
            Err(NetError::MalformedRecord { offset, reason }) => {
                let second = next_record(good.len(), super::RKYV_ALIGN);
                assert_eq!((offset, cursor), (second, second));
                assert!(!reason.contains("without error information"), "rkyv's account: {reason}");
            }
            other => panic!("not a malformed record: {other:?}"),
        }
    }
}
