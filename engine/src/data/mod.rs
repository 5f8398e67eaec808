//! The records a stream carries: any type the user defines, in one of two
//! encodings chosen by the type.
//!
//! - **Plain fixed-size data** (`bytemuck::Pod`): copied once into the segment,
//!   read in place as a slice, and passed through chains in batches. The fast path
//!   of the benchmark pipelines. Declare with [`pod_data!`](crate::pod_data).
//! - **rkyv** (strings, vectors, enums, nested structs): archived once into the
//!   segment and read with checked access. Declare with
//!   [`rkyv_view!`](crate::rkyv_view) to read records in place through a view
//!   trait of yours, or with [`rkyv_data!`](crate::rkyv_data) to have each
//!   deserialized (no view to write, an allocation per string field); `String`,
//!   `Vec<u8>`, tuples (of 2 to 8 parts) and `Option`s of rkyv types, and
//!   vectors of numbers or strings are built in.
//!
//! Operators see a record as `&T::Borrowed`: the record itself (plain data,
//! `rkyv_data!`, tuples); for `String` (`str`) and `Vec<u8>` (`[u8]`) the borrowed
//! form read in place from the buffer, so a stream of words is read without an
//! allocation per word; for an `rkyv_view!` type `&dyn View`, the archive in the
//! buffer after an exchange and the owned value within a chain. A
//! stream's [`RecordFormat`] travels with each edge of the job graph, so two
//! processes that disagree on a type refuse the job instead of reading garbage.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use shardflow_control::{RecordEncoding, RecordFormat};
use shardflow_netstack::fmix64;

mod archived;
mod text;
mod view;

#[doc(hidden)]
pub use archived::{
    each_archived, each_checked, each_checked_in_place, rkyv_format, rkyv_from_bytes, rkyv_heap_bytes, rkyv_to_bytes,
    write_rkyv, Access, CheckShared, CheckUnshared, Checker,
};
pub use archived::{RkyvRecord, RKYV_ALIGN};
pub use view::{RecordRef, RecordView};

/// [`Data::EACH_IN_PLACE`]: from byte `*cursor` of a buffer on, each record
/// with the position after it, until the callback returns `false` or the
/// buffer ends; `*cursor` then points past what was read.
pub type EachInPlace<T> = for<'b> fn(
    &'b Buffer,
    &mut usize,
    &mut dyn FnMut(&'b <T as Data>::Borrowed, usize) -> bool,
) -> Result<(), NetError>;

/// A record type a stream can carry. Implement it with [`pod_data!`](crate::pod_data),
/// [`rkyv_view!`](crate::rkyv_view) or [`rkyv_data!`](crate::rkyv_data); primitives,
/// `String`, `Vec<u8>`, tuples (of 2 to 8 parts) and `Option`s of rkyv types,
/// and vectors of numbers or strings have it. A stream of any other type is
/// refused when the job is compiled, with a note that says how to declare it:
///
/// ```compile_fail
/// #[derive(Clone)]
/// struct Plain { x: u64 }   // neither rkyv nor plain data declared
///
/// let df = shardflow_engine::Dataflow::new("refused");
/// df.from_iter("numbers", [1u64, 2]).map(|x: &u64| Plain { x: *x }).discard();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a record type a stream can carry",
    label = "not a shardflow record type",
    note = "derive rkyv's `Archive`, `Serialize` and `Deserialize` for it and write `shardflow_engine::rkyv_data!({Self});`",
    note = "plain fixed-size data (`#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]`, `#[repr(C)]`): `shardflow_engine::pod_data!({Self});`"
)]
pub trait Data: Clone + Send + Sync + 'static + Borrow<Self::Borrowed> {
    /// What operators see of a record: the type itself, or a form borrowed from
    /// the buffer it is read from (`str` for `String`).
    type Borrowed: ?Sized + 'static;

    /// Whether records are fixed-size plain data, packed and read in place as a
    /// slice (and batched through chains).
    const POD: bool;

    /// For types whose records are read in place, with no copy made per
    /// record (strings, byte vectors, views): [`Self::each`] with each record
    /// borrowed for as long as the buffer, so a reader may hold a run of them
    /// (an input announces a chunk to a keyed table, then hands the same
    /// records over without reading them again). `None` (the default) for
    /// types deserialized per record.
    const EACH_IN_PLACE: Option<EachInPlace<Self>> = None;

    /// The type's format, recorded on every edge that carries it.
    fn format() -> RecordFormat;

    /// An owned record from its borrowed form.
    fn to_owned_record(borrowed: &Self::Borrowed) -> Self;

    /// Writes `record` into subpartition `sp` of `out`.
    fn write(record: &Self::Borrowed, out: &mut ResultPartition, sp: usize) -> Result<(), NetError>;

    /// Writes each of `records`, in order, into the subpartition `pick` chooses
    /// for it (`None`: every subpartition). Plain data copies them in one loop
    /// over the segments being filled.
    #[inline]
    fn write_routed(
        records: &[Self],
        out: &mut ResultPartition,
        mut pick: impl FnMut(&Self::Borrowed) -> Option<usize>,
    ) -> Result<(), NetError> {
        records.iter().try_for_each(|r| write_to::<Self>(r.borrow(), out, pick(r.borrow())))
    }

    /// The records of a buffer of fixed-size data, in place (`None`, the
    /// default, for rkyv types).
    fn slice(_buffer: &Buffer) -> Result<Option<&[Self]>, NetError> {
        Ok(None)
    }

    /// Calls `f` with each record of `buffer` from byte `*cursor` on, until `f`
    /// returns `false` (after handling that record) or the buffer ends; `*cursor`
    /// then points at the next record. For rkyv types (fixed-size data uses
    /// [`Self::slice`]).
    fn each(buffer: &Buffer, cursor: &mut usize, f: &mut dyn FnMut(&Self::Borrowed) -> bool) -> Result<(), NetError>;

    /// `record` as bytes (for snapshots).
    fn to_bytes(record: &Self::Borrowed) -> Result<Vec<u8>, NetError>;

    /// A record from bytes [`Self::to_bytes`] wrote; checked, never trusted.
    fn from_bytes(bytes: &[u8]) -> Result<Self, NetError>;

    /// What an owned copy of `record` holds on the heap beyond its own
    /// `size_of`, in bytes: what keyed state charges to the slot's managed
    /// memory for it besides the table entry. 0 for plain data; a string's or
    /// byte vector's length; the parts' sum for tuples; for other rkyv types the
    /// size of the archive beyond the archived root (measured by archiving it
    /// into a reused buffer).
    #[inline(always)]
    fn heap_bytes(_record: &Self::Borrowed) -> usize {
        0
    }
}

/// Writes `record` into subpartition `to` of `out`, or into every one for `None`.
#[inline(always)]
pub(crate) fn write_to<T: Data>(
    record: &T::Borrowed,
    out: &mut ResultPartition,
    to: Option<usize>,
) -> Result<(), NetError> {
    match to {
        Some(sp) => T::write(record, out, sp),
        None => (0..out.num_subpartitions()).try_for_each(|sp| T::write(record, out, sp)),
    }
}

/// A key of a keyed stream: hashable, comparable, and routable the same way in
/// every process (its routing hash is [`key_hash`] of its borrowed form).
/// Floating-point numbers are not `Eq`, so they key nothing; their bits do:
///
/// ```compile_fail
/// let df = shardflow_engine::Dataflow::new("refused");
/// df.from_iter("prices", [1.5f64, 2.5]).key_by(|p: &f64| *p).count_final().discard();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot key a stream",
    label = "not a key",
    note = "a key is a record type (`Data`) that is `Hash + Eq`, and so is its borrowed form; floating-point numbers are not: key by their bits (`f64::to_bits`) or by an integer"
)]
pub trait Key: Data<Borrowed: Hash + Eq> + Hash + Eq {}

impl<K: Data<Borrowed: Hash + Eq> + Hash + Eq> Key for K {}

/// The routing hash of a key (in its borrowed form): stable across processes of
/// one build, never the raw key bits, and murmur3's fmix64 last, so the low bits
/// (the key group) depend on every bit of the key. A key that hashes as one
/// integer (`u64`, `u32`, …) is fmix64 of that integer: two multiplies, as the
/// timely peer routes; anything else (strings, tuples, structs) is fmix64 of
/// its FxHash.
#[inline(always)]
pub fn key_hash<Q: Hash + ?Sized>(key: &Q) -> u64 {
    let mut h = RouteHasher::Empty;
    key.hash(&mut h);
    h.finish()
}

/// The hasher of [`key_hash`]: a key's first integer is held as it is; a
/// second write, or bytes, go through FxHash; fmix64 finishes either.
enum RouteHasher {
    /// Nothing written yet.
    Empty,
    /// One integer written.
    One(u64),
    /// More than one integer, or bytes.
    Fx(rustc_hash::FxHasher),
}

impl RouteHasher {
    /// Feeds `write` to the FxHash state (a held integer goes in first).
    #[inline(always)]
    fn with_fx(&mut self, write: impl FnOnce(&mut rustc_hash::FxHasher)) {
        let mut fx = match std::mem::replace(self, RouteHasher::Empty) {
            RouteHasher::Fx(fx) => fx,
            RouteHasher::One(held) => {
                let mut fx = rustc_hash::FxHasher::default();
                fx.write_u64(held);
                fx
            }
            RouteHasher::Empty => rustc_hash::FxHasher::default(),
        };
        write(&mut fx);
        *self = RouteHasher::Fx(fx);
    }
}

impl Hasher for RouteHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        match self {
            RouteHasher::Empty => fmix64(0),
            RouteHasher::One(x) => fmix64(*x),
            RouteHasher::Fx(fx) => fmix64(fx.finish()),
        }
    }

    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        self.with_fx(|fx| fx.write(bytes));
    }

    #[inline(always)]
    fn write_u64(&mut self, x: u64) {
        match self {
            RouteHasher::Empty => *self = RouteHasher::One(x),
            _ => self.with_fx(|fx| fx.write_u64(x)),
        }
    }

    #[inline(always)]
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    #[inline(always)]
    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }

    #[inline(always)]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    #[inline(always)]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

// ------------------------------------------------------------------ plain data

/// Declares fixed-size plain-data record types: each must be
/// `bytemuck::Pod + Send + Sync` (`#[repr(C)]`, `#[derive(Clone, Copy, Pod,
/// Zeroable)]`).
///
/// ```
/// use bytemuck::{Pod, Zeroable};
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, Pod, Zeroable)]
/// struct Click { user: u64, page: u64 }
/// shardflow_engine::pod_data!(Click);
/// ```
#[macro_export]
macro_rules! pod_data {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::Data for $t {
            type Borrowed = $t;
            const POD: bool = true;
            fn format() -> $crate::RecordFormat {
                $crate::data::pod_format::<$t>()
            }
            #[inline(always)]
            fn to_owned_record(b: &$t) -> $t {
                *b
            }
            #[inline(always)]
            fn write(
                record: &$t,
                out: &mut $crate::data::ResultPartition,
                sp: usize,
            ) -> ::std::result::Result<(), $crate::data::NetError> {
                out.write_pod(sp, record)
            }
            #[inline]
            fn write_routed(
                records: &[$t],
                out: &mut $crate::data::ResultPartition,
                pick: impl FnMut(&$t) -> ::std::option::Option<usize>,
            ) -> ::std::result::Result<(), $crate::data::NetError> {
                out.write_pod_routed(records, pick)
            }
            #[inline]
            fn slice(
                buffer: &$crate::data::Buffer,
            ) -> ::std::result::Result<::std::option::Option<&[$t]>, $crate::data::NetError> {
                buffer.pod::<$t>().map(::std::option::Option::Some)
            }
            fn each(
                buffer: &$crate::data::Buffer,
                cursor: &mut usize,
                f: &mut dyn FnMut(&$t) -> bool,
            ) -> ::std::result::Result<(), $crate::data::NetError> {
                let records = buffer.pod::<$t>()?;
                while let Some(r) = records.get(*cursor) {
                    *cursor += 1;
                    if !f(r) {
                        break;
                    }
                }
                Ok(())
            }
            fn to_bytes(record: &$t) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::data::NetError> {
                Ok($crate::data::bytes_of(record).to_vec())
            }
            fn from_bytes(bytes: &[u8]) -> ::std::result::Result<$t, $crate::data::NetError> {
                $crate::data::pod_from_bytes::<$t>(bytes)
            }
        }
    )*};
}

pub use bytemuck::bytes_of;
#[doc(hidden)]
pub use rkyv;
#[doc(hidden)]
pub use shardflow_netstack::{Buffer, NetError, ResultPartition};

/// The format of a plain-data type.
#[doc(hidden)]
pub fn pod_format<T: bytemuck::Pod>() -> RecordFormat {
    RecordFormat {
        type_name: std::any::type_name::<T>().to_string(),
        encoding: RecordEncoding::Pod {
            size: std::mem::size_of::<T>() as u32,
            align: std::mem::align_of::<T>() as u32,
        },
    }
}

/// A plain-data record from exactly its bytes.
#[doc(hidden)]
pub fn pod_from_bytes<T: bytemuck::Pod>(bytes: &[u8]) -> Result<T, NetError> {
    bytemuck::try_pod_read_unaligned(bytes).map_err(|e| NetError::MalformedRecord {
        offset: 0,
        reason: format!("{} bytes are not a {}: {e}", bytes.len(), std::any::type_name::<T>()),
    })
}

pod_data!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);
pod_data!([u64; 2], [u64; 3], [u64; 4], [u32; 2], [u32; 4]);

/// Buffers for the data tests.
#[cfg(test)]
pub(crate) mod testing {
    use shardflow_memory::SegmentPoolBuilder;
    use shardflow_netstack::Buffer;

    /// A buffer of variable-size records as a partition frames them:
    /// `[len: u32][pad to align][bytes][pad to 4]` each, from offset 0.
    pub(crate) fn buffer_of(records: &[Vec<u8>], align: usize) -> Buffer {
        let pool = SegmentPoolBuilder::new(0, 1).segment_bytes(4096).populate(false).build().expect("pool");
        let mut segment = pool.allocate().expect("a segment");
        let bytes = segment.as_bytes_mut();
        let mut at = 0;
        for r in records {
            bytes[at..at + 4].copy_from_slice(&(r.len() as u32).to_le_bytes());
            let start = (at + 4).next_multiple_of(align);
            bytes[start..start + r.len()].copy_from_slice(r);
            at = (start + r.len()).next_multiple_of(4);
        }
        Buffer::new(segment, records.len(), at).expect("a buffer")
    }

    /// Where a record of `bytes` starting at 0 in a buffer of [`buffer_of`]
    /// leaves the next one.
    pub(crate) fn next_record(bytes: usize, align: usize) -> usize {
        (4usize.next_multiple_of(align) + bytes).next_multiple_of(4)
    }
}

#[cfg(test)]
mod tests {
    use super::key_hash;

    /// Records per key group of `hashes` over 128 groups: (fewest, most).
    fn spread(hashes: impl Iterator<Item = u64>) -> (u64, u64) {
        let mut groups = [0u64; 128];
        for h in hashes {
            groups[(h % 128) as usize] += 1;
        }
        (*groups.iter().min().unwrap(), *groups.iter().max().unwrap())
    }

    #[test]
    fn structured_keys_spread_evenly_over_key_groups() {
        let n = 1u64 << 17; // 1024 keys per group
        let sets: [(&str, Vec<u64>); 5] = [
            ("sequential", (0..n).collect()),
            ("low bits zero", (0..n).map(|i| i << 12).collect()),
            ("only high bits", (0..n).map(|i| i << 47).collect()),
            ("golden multiples", (0..n).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect()),
            ("dense small range", (0..n).map(|i| i % 100_000).collect()),
        ];
        for (name, keys) in sets {
            let (min, max) = spread(keys.iter().map(key_hash));
            // A uniform hash puts 1024 ± 32 (one σ) in each group; ±15 % is far out.
            assert!(min > 870 && max < 1180, "{name}: {min}..{max} per group");
        }
        let words: Vec<String> = (0..n).map(|w| format!("w{w}")).collect();
        let (min, max) = spread(words.iter().map(|w| key_hash(w.as_str())));
        assert!(min > 870 && max < 1180, "words: {min}..{max} per group");
        let pairs: Vec<(u32, u32)> = (0..n as u32).map(|i| (i >> 9, i & 511)).collect();
        let (min, max) = spread(pairs.iter().map(key_hash));
        assert!(min > 870 && max < 1180, "pairs: {min}..{max} per group");
    }

    /// Reads `records` (archives framed at `align`) with `T::EACH_IN_PLACE`,
    /// holding every record past the read, and checks them against `each`
    /// one record at a time: the same records (as `read` sees them), each
    /// ending where `each` leaves its cursor. How many it read.
    fn held_as_each_reads<T: super::Data, R: PartialEq + std::fmt::Debug>(
        records: &[Vec<u8>],
        align: usize,
        read: impl Fn(&T::Borrowed) -> R,
    ) -> usize {
        let buffer = super::testing::buffer_of(records, align);
        let each_in_place = T::EACH_IN_PLACE.expect("a type read in place");
        let (mut held, mut cursor) = (Vec::new(), 0);
        each_in_place(&buffer, &mut cursor, &mut |r, end| {
            held.push((r, end));
            true
        })
        .expect("well-formed records");
        assert_eq!(cursor, buffer.bytes(), "read to the end");
        let mut at = 0;
        for (r, end) in &held {
            let mut seen = None;
            T::each(&buffer, &mut at, &mut |e| {
                seen = Some(read(e));
                false
            })
            .expect("well-formed records");
            assert_eq!(seen, Some(read(r)));
            assert_eq!(at, *end, "the position after the record");
        }
        held.len()
    }

    #[test]
    fn records_read_in_place_are_held_past_the_read_as_each_reads_them() {
        use super::Data;
        let words = ["a", "rose", "is", "a rose longer than eight bytes"];
        let strings: Vec<_> =
            words.iter().map(|w| rkyv::to_bytes::<rkyv::rancor::Error>(&w.to_string()).unwrap().to_vec()).collect();
        assert_eq!(held_as_each_reads::<String, _>(&strings, 4, |s: &str| s.to_owned()), 4);
        let bytes: Vec<_> = words
            .iter()
            .map(|w| rkyv::to_bytes::<rkyv::rancor::Error>(&w.as_bytes().to_vec()).unwrap().to_vec())
            .collect();
        assert_eq!(held_as_each_reads::<Vec<u8>, _>(&bytes, 4, |b: &[u8]| b.to_vec()), 4);

        #[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        struct Visit {
            user: String,
            millis: u64,
        }
        trait VisitView: super::RecordView<Visit> {
            fn user(&self) -> &str;
            fn millis(&self) -> u64;
        }
        impl VisitView for Visit {
            fn user(&self) -> &str {
                &self.user
            }
            fn millis(&self) -> u64 {
                self.millis
            }
        }
        impl VisitView for ArchivedVisit {
            fn user(&self) -> &str {
                &self.user
            }
            fn millis(&self) -> u64 {
                self.millis.to_native()
            }
        }
        crate::rkyv_view!(Visit as dyn VisitView);
        let visits: Vec<_> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let visit = Visit { user: w.to_string(), millis: i as u64 };
                rkyv::to_bytes::<rkyv::rancor::Error>(&visit).unwrap().to_vec()
            })
            .collect();
        let read = |v: &dyn VisitView| (v.user().to_owned(), v.millis());
        assert_eq!(held_as_each_reads::<Visit, _>(&visits, super::RKYV_ALIGN, read), 4);
        assert!(<(String, u64)>::EACH_IN_PLACE.is_none(), "a tuple is deserialized per record");
    }

    #[test]
    fn heap_bytes_count_what_an_owned_record_holds_beyond_itself() {
        use super::Data;
        #[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
        struct Named {
            id: u64,
            name: String,
        }
        crate::rkyv_data!(Named);
        assert_eq!(u64::heap_bytes(&7), 0);
        assert_eq!(bool::heap_bytes(&true), 0, "needs no drop: not even archived");
        assert_eq!(String::heap_bytes("twelve bytes"), 12);
        assert_eq!(<Vec<u8>>::heap_bytes(&[0; 5][..]), 5);
        assert_eq!(<(String, u64)>::heap_bytes(&("abc".to_string(), 1)), 3);
        let short = Named::heap_bytes(&Named { id: 1, name: "x".into() });
        let long = Named::heap_bytes(&Named { id: 1, name: "x".repeat(1000) });
        assert!(long >= 1000 && long - short >= 990, "the archive's string bytes: {short}, {long}");
    }

    #[test]
    fn an_integer_key_hashes_as_fmix64_of_itself_and_other_keys_as_fmix64_of_fxhash() {
        use shardflow_netstack::fmix64;
        use std::hash::{Hash, Hasher};
        let fx = |k: &dyn Fn(&mut rustc_hash::FxHasher)| {
            let mut h = rustc_hash::FxHasher::default();
            k(&mut h);
            fmix64(h.finish())
        };
        assert_eq!(key_hash(&42u64), fmix64(42));
        assert_eq!(key_hash(&42u32), fmix64(42), "any one integer");
        assert_eq!(key_hash(&-1i64), fmix64(u64::MAX));
        assert_eq!(key_hash("w7"), fx(&|h| "w7".hash(h)));
        // Two integers: both through FxHash, in order.
        assert_eq!(
            key_hash(&(1u64, 2u64)),
            fx(&|h| {
                h.write_u64(1);
                h.write_u64(2)
            })
        );
        assert_ne!(key_hash(&(1u64, 2u64)), key_hash(&(2u64, 1u64)));
    }
}
