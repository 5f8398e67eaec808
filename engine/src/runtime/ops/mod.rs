//! Stateless operators (map, filter, flat map, co-flat-map) and the non-keyed
//! process functions, one- and two-input, with operator state (a list per
//! subtask: [`process`]).

mod process;

pub(crate) use process::{list_items, restored_list, CoProcessFactory, ProcessFactory};
pub use process::{CoProcessFunction, ListRef, ListStateHandle, OperatorContext, ProcessFunction};

use std::marker::PhantomData;
use std::sync::Arc;

use crate::data::Data;
use crate::error::{EngineError, OperatorError};
use crate::runtime::build::{build_port, BuildContext, Name, NodeFactory, Port};
use crate::runtime::collector::{named, Collector, Emitter, Failure};
use crate::runtime::keyed::TwoInputFactory;
use crate::runtime::side::{OutPorts, Outputs};

/// A record-to-record function.
pub(crate) struct MapOp<T: Data, U: Data, F> {
    f: Arc<F>,
    next: Box<dyn Collector<U>>,
    buf: Vec<U>,
    _t: PhantomData<fn(&T)>,
}

impl<T: Data, U: Data, F: Fn(&T::Borrowed) -> U> Collector<T> for MapOp<T, U, F> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        let u = (self.f)(record);
        self.next.collect(u.borrow());
    }

    fn collect_batch(&mut self, records: &[T]) {
        if U::POD {
            self.buf.clear();
            self.buf.extend(records.iter().map(|r| (self.f)(r.borrow())));
            self.next.collect_batch(&self.buf);
        } else {
            for r in records {
                self.collect(r.borrow());
            }
        }
    }
}

pub(crate) struct MapFactory<T, U: Data, F> {
    pub(crate) f: Arc<F>,
    pub(crate) next: Port<U>,
    pub(crate) _t: PhantomData<fn(&T)>,
}

impl<T: Data, U: Data, F: Fn(&T::Borrowed) -> U + Send + Sync + 'static> NodeFactory<T> for MapFactory<T, U, F> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let next = build_port(&self.next, ctx)?;
        Ok(Box::new(MapOp { f: self.f.clone(), next, buf: Vec::new(), _t: PhantomData }))
    }
}

/// A predicate: records for which it is false are dropped.
pub(crate) struct FilterOp<T: Data, F> {
    f: Arc<F>,
    next: Box<dyn Collector<T>>,
    buf: Vec<T>,
}

impl<T: Data, F: Fn(&T::Borrowed) -> bool> Collector<T> for FilterOp<T, F> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        if (self.f)(record) {
            self.next.collect(record);
        }
    }

    fn collect_batch(&mut self, records: &[T]) {
        if T::POD {
            self.buf.clear();
            self.buf.extend(records.iter().filter(|r| (self.f)((*r).borrow())).cloned());
            self.next.collect_batch(&self.buf);
        } else {
            for r in records {
                self.collect(r.borrow());
            }
        }
    }
}

pub(crate) struct FilterFactory<T: Data, F> {
    pub(crate) f: Arc<F>,
    pub(crate) next: Port<T>,
}

impl<T: Data, F: Fn(&T::Borrowed) -> bool + Send + Sync + 'static> NodeFactory<T> for FilterFactory<T, F> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let next = build_port(&self.next, ctx)?;
        Ok(Box::new(FilterOp { f: self.f.clone(), next, buf: Vec::new() }))
    }
}

/// A record-to-record function that may fail: as [`MapOp`], an error kept as
/// the task's failure (with the operator's name) instead of a record.
pub(crate) struct TryMapOp<T: Data, U: Data, F> {
    f: Arc<F>,
    name: String,
    failure: Failure,
    next: Box<dyn Collector<U>>,
    buf: Vec<U>,
    _t: PhantomData<fn(&T)>,
}

impl<T: Data, U: Data, F: Fn(&T::Borrowed) -> Result<U, OperatorError>> TryMapOp<T, U, F> {
    /// Hands `record`'s result on, or keeps its failure: `false` then.
    #[inline]
    fn try_collect(&mut self, record: &T::Borrowed) -> bool {
        match (self.f)(record) {
            Ok(u) => {
                self.next.collect(u.borrow());
                true
            }
            Err(e) => {
                self.failure.set(named(&self.name, e));
                false
            }
        }
    }
}

impl<T: Data, U: Data, F: Fn(&T::Borrowed) -> Result<U, OperatorError>> Collector<T> for TryMapOp<T, U, F> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        self.try_collect(record);
    }

    fn collect_batch(&mut self, records: &[T]) {
        if U::POD {
            // The records before a failure go on; the rest of the batch does
            // not (the task fails once the batch is through), on either path.
            self.buf.clear();
            for r in records {
                match (self.f)(r.borrow()) {
                    Ok(u) => self.buf.push(u),
                    Err(e) => {
                        self.failure.set(named(&self.name, e));
                        break;
                    }
                }
            }
            self.next.collect_batch(&self.buf);
        } else {
            records.iter().all(|r| self.try_collect(r.borrow()));
        }
    }
}

pub(crate) struct TryMapFactory<T, U: Data, F> {
    pub(crate) name: Name,
    pub(crate) f: Arc<F>,
    pub(crate) next: Port<U>,
    pub(crate) _t: PhantomData<fn(&T)>,
}

impl<T: Data, U: Data, F> NodeFactory<T> for TryMapFactory<T, U, F>
where
    F: Fn(&T::Borrowed) -> Result<U, OperatorError> + Send + Sync + 'static,
{
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let next = build_port(&self.next, ctx)?;
        let (name, failure) = (self.name.get(), ctx.failure.clone());
        Ok(Box::new(TryMapOp { f: self.f.clone(), name, failure, next, buf: Vec::new(), _t: PhantomData }))
    }
}

/// A one-to-many function, emitting through an [`Emitter`] (side outputs
/// too), that may fail: an error is kept as the task's failure (with the
/// operator's name). `flat_map`'s function is one that never fails
/// ([`infallible`]: the error path compiles away).
pub(crate) struct FlatMapOp<T: Data, U: Data, F> {
    f: Arc<F>,
    name: String,
    failure: Failure,
    out: Outputs<U>,
    _t: PhantomData<fn(&T)>,
}

impl<T: Data, U: Data, F> FlatMapOp<T, U, F>
where
    F: Fn(&T::Borrowed, &mut Emitter<'_, U>) -> Result<(), OperatorError>,
{
    /// Runs the function on `record`, or keeps its failure: `false` then.
    #[inline]
    fn try_collect(&mut self, record: &T::Borrowed) -> bool {
        let Err(e) = (self.f)(record, &mut self.out.emitter()) else { return true };
        self.failure.set(named(&self.name, e));
        false
    }
}

impl<T: Data, U: Data, F> Collector<T> for FlatMapOp<T, U, F>
where
    F: Fn(&T::Borrowed, &mut Emitter<'_, U>) -> Result<(), OperatorError>,
{
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        self.try_collect(record);
    }

    fn collect_batch(&mut self, records: &[T]) {
        if U::POD {
            // What was emitted before a failure goes on; the rest of the
            // batch does not (the task fails once the batch is through), on
            // either path.
            let FlatMapOp { f, out, .. } = self;
            out.gather();
            let mut emitter = out.emitter();
            let failed = records.iter().find_map(|r| f(r.borrow(), &mut emitter).err());
            out.hand_on();
            if let Some(e) = failed {
                self.failure.set(named(&self.name, e));
            }
        } else {
            records.iter().all(|r| self.try_collect(r.borrow()));
        }
    }
}

pub(crate) struct FlatMapFactory<T, U: Data, F> {
    pub(crate) name: Name,
    pub(crate) f: Arc<F>,
    pub(crate) out: OutPorts<U>,
    pub(crate) _t: PhantomData<fn(&T)>,
}

impl<T: Data, U: Data, F> NodeFactory<T> for FlatMapFactory<T, U, F>
where
    F: Fn(&T::Borrowed, &mut Emitter<'_, U>) -> Result<(), OperatorError> + Send + Sync + 'static,
{
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let out = self.out.build(ctx)?;
        let (name, failure) = (self.name.get(), ctx.failure.clone());
        Ok(Box::new(FlatMapOp { f: self.f.clone(), name, failure, out, _t: PhantomData }))
    }
}

/// `f` as a function that never fails, for a [`FlatMapOp`].
pub(crate) fn infallible<T: Data, U: Data>(
    f: impl Fn(&T::Borrowed, &mut Emitter<'_, U>),
) -> impl Fn(&T::Borrowed, &mut Emitter<'_, U>) -> Result<(), OperatorError> {
    move |record, out| {
        f(record, out);
        Ok(())
    }
}

// -------------------------------------------------------- two plain inputs

/// One side of a co-flat-map: its function and the chain both sides feed.
struct CoSide<T, O: Data, F> {
    f: Arc<F>,
    out: std::rc::Rc<std::cell::RefCell<Outputs<O>>>,
    _t: PhantomData<fn(&T)>,
}

impl<T: Data, O: Data, F: Fn(&T::Borrowed, &mut Emitter<'_, O>)> Collector<T> for CoSide<T, O, F> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        (self.f)(record, &mut self.out.borrow_mut().emitter());
    }

    fn collect_batch(&mut self, records: &[T]) {
        let mut out = self.out.borrow_mut();
        out.gather();
        let mut emitter = out.emitter();
        records.iter().for_each(|r| (self.f)(r.borrow(), &mut emitter));
        out.hand_on();
    }
}

/// Two inputs of different types into one stream (co-map, co-flat-map).
pub(crate) struct CoFlatMapFactory<A, B, O: Data, FA, FB> {
    pub(crate) first: Arc<FA>,
    pub(crate) second: Arc<FB>,
    pub(crate) out: OutPorts<O>,
    pub(crate) _t: PhantomData<fn(&A, &B)>,
}

impl<A, B, O, FA, FB> TwoInputFactory<A, B> for CoFlatMapFactory<A, B, O, FA, FB>
where
    A: Data,
    B: Data,
    O: Data,
    FA: Fn(&A::Borrowed, &mut Emitter<'_, O>) + Send + Sync + 'static,
    FB: Fn(&B::Borrowed, &mut Emitter<'_, O>) + Send + Sync + 'static,
{
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<(Box<dyn Collector<A>>, Box<dyn Collector<B>>), EngineError> {
        let out = std::rc::Rc::new(std::cell::RefCell::new(self.out.build(ctx)?));
        let a = CoSide { f: self.first.clone(), out: out.clone(), _t: PhantomData };
        let b = CoSide { f: self.second.clone(), out, _t: PhantomData };
        Ok((Box::new(a), Box::new(b)))
    }
}
