//! In-place views of a user's own rkyv types ([`RecordView`], declared with
//! [`rkyv_view!`](crate::rkyv_view)): operators take `&dyn View`, which reads
//! either the owned value made in this chain or the archive in a network
//! buffer after an exchange, with no allocation per record.

use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;

use super::RkyvRecord;

/// A record of a type declared with [`rkyv_view!`](crate::rkyv_view), as its
/// view sees it: the owned value, where an operator of this chain made it, or
/// its archive read in place from a network buffer, after an exchange.
pub enum RecordRef<'a, T: rkyv::Archive> {
    /// Made in this chain.
    Owned(&'a T),
    /// Read in place from a buffer (checked when it was read).
    Archived(&'a T::Archived),
}

impl<T: rkyv::Archive> Clone for RecordRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: rkyv::Archive> Copy for RecordRef<'_, T> {}

impl<T: RkyvRecord + Clone> RecordRef<'_, T>
where
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::BoxedError>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::BoxedError>>,
{
    /// The record as an owned value: a clone, or deserialized from its archive.
    ///
    /// # Panics
    /// If a checked archive does not deserialize, which rkyv's derived types
    /// never do (a hand-written `Deserialize` that fails would).
    pub fn to_owned_record(self) -> T {
        match self {
            RecordRef::Owned(t) => t.clone(),
            RecordRef::Archived(a) => rkyv::deserialize::<T, rancor::BoxedError>(a).unwrap_or_else(|e| {
                panic!("a checked {} archive does not deserialize: {e}", std::any::type_name::<T>())
            }),
        }
    }

    /// Calls `f` with the owned record: this one, or (from an archive) a
    /// deserialized copy.
    #[inline]
    pub fn with_owned<R>(self, f: impl FnOnce(&T) -> R) -> R {
        match self {
            RecordRef::Owned(t) => f(t),
            RecordRef::Archived(_) => f(&self.to_owned_record()),
        }
    }
}

/// The supertrait of a view trait declared with [`rkyv_view!`](crate::rkyv_view):
/// which form of the record a view is (the macro implements it).
pub trait RecordView<T: rkyv::Archive>: 'static {
    /// The record behind this view.
    fn record(&self) -> RecordRef<'_, T>;
}

/// Declares rkyv record types that operators read **in place**, through a view
/// trait of the user's: after an exchange an operator gets the archive in the
/// network buffer (checked, never deserialized: a string field is a `&str` into
/// the buffer, no allocation per record), within a chain the owned value — both
/// as `&dyn View`.
///
/// The view trait has [`RecordView<T>`] as a supertrait and is implemented for
/// the type and for its archived form (`Archived<Name>`, rkyv's derive makes
/// it); the macro implements the rest. Operators then take `&dyn View`:
///
/// ```
/// use shardflow_engine::data::{RecordRef, RecordView};
///
/// #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
/// struct Visit { user: String, millis: u64 }
///
/// trait VisitView: RecordView<Visit> {
///     fn user(&self) -> &str;
///     fn millis(&self) -> u64;
/// }
/// impl VisitView for Visit {
///     fn user(&self) -> &str { &self.user }
///     fn millis(&self) -> u64 { self.millis }
/// }
/// impl VisitView for ArchivedVisit {
///     fn user(&self) -> &str { &self.user }
///     fn millis(&self) -> u64 { self.millis.to_native() }
/// }
/// shardflow_engine::rkyv_view!(Visit as dyn VisitView);
///
/// # use shardflow_engine::{Dataflow, Engine};
/// let df = Dataflow::new("time-per-user");
/// let visits = vec![Visit { user: "ann".into(), millis: 5 }, Visit { user: "bob".into(), millis: 7 }];
/// let totals = df
///     .from_iter("visits", visits)
///     .key_by_ref::<String, _>(|v: &dyn VisitView| v.user())
///     // after the exchange: `v` is the archive in the buffer
///     .reduce_final(|acc: &Visit, v: &dyn VisitView| Visit { millis: acc.millis + v.millis(), ..acc.clone() })
///     .map(|v: &dyn VisitView| (v.user().to_string(), v.millis()))
///     .collect();
/// # let engine = Engine::builder().shards(1).build()?;
/// # engine.run(df.build()?)?;
/// # let mut got = totals.take(); got.sort();
/// # assert_eq!(got, vec![("ann".to_string(), 5), ("bob".to_string(), 7)]);
/// # Ok::<(), shardflow_engine::EngineError>(())
/// ```
#[macro_export]
macro_rules! rkyv_view {
    ($t:ty as dyn $view:path) => {
        impl $crate::data::RecordView<$t> for $t {
            #[inline(always)]
            fn record(&self) -> $crate::data::RecordRef<'_, $t> {
                $crate::data::RecordRef::Owned(self)
            }
        }
        impl $crate::data::RecordView<$t> for <$t as $crate::data::rkyv::Archive>::Archived {
            #[inline(always)]
            fn record(&self) -> $crate::data::RecordRef<'_, $t> {
                $crate::data::RecordRef::Archived(self)
            }
        }
        impl ::std::borrow::Borrow<dyn $view + 'static> for $t {
            #[inline(always)]
            fn borrow(&self) -> &(dyn $view + 'static) {
                self
            }
        }
        impl $crate::Data for $t {
            type Borrowed = dyn $view + 'static;
            const POD: bool = false;
            const EACH_IN_PLACE: ::std::option::Option<$crate::data::EachInPlace<Self>> =
                ::std::option::Option::Some(|buffer, cursor, f| {
                    $crate::data::each_checked_in_place(
                        buffer,
                        $crate::data::RKYV_ALIGN,
                        cursor,
                        $crate::rkyv_access!($t),
                        &mut |a, at| f(a, at),
                    )
                });
            fn format() -> $crate::RecordFormat {
                $crate::data::rkyv_format::<$t>($crate::data::RKYV_ALIGN)
            }
            fn to_owned_record(b: &(dyn $view + 'static)) -> $t {
                $crate::data::RecordView::<$t>::record(b).to_owned_record()
            }
            fn write(
                record: &(dyn $view + 'static),
                out: &mut $crate::data::ResultPartition,
                sp: usize,
            ) -> ::std::result::Result<(), $crate::data::NetError> {
                // An archive forwarded unchanged to another exchange is
                // deserialized and archived again.
                $crate::data::RecordView::<$t>::record(record)
                    .with_owned(|t| $crate::data::write_rkyv(t, $crate::data::RKYV_ALIGN, out, sp))
            }
            fn each(
                buffer: &$crate::data::Buffer,
                cursor: &mut usize,
                f: &mut dyn FnMut(&(dyn $view + 'static)) -> bool,
            ) -> ::std::result::Result<(), $crate::data::NetError> {
                $crate::data::each_checked(
                    buffer,
                    $crate::data::RKYV_ALIGN,
                    cursor,
                    $crate::rkyv_access!($t),
                    &mut |a| f(a),
                )
            }
            fn to_bytes(
                record: &(dyn $view + 'static),
            ) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::data::NetError> {
                $crate::data::RecordView::<$t>::record(record).with_owned($crate::data::rkyv_to_bytes)
            }
            fn from_bytes(bytes: &[u8]) -> ::std::result::Result<$t, $crate::data::NetError> {
                $crate::data::rkyv_from_bytes::<$t>(bytes)
            }
            fn heap_bytes(record: &(dyn $view + 'static)) -> usize {
                let inline = ::std::mem::size_of::<<$t as $crate::data::rkyv::Archive>::Archived>();
                $crate::data::RecordView::<$t>::record(record).with_owned(|t| $crate::data::rkyv_heap_bytes(t, inline))
            }
        }
    };
}
