//! Sinks: count, discard, latency, a callback, collect for tests, and the
//! bounded, back-pressured egress handle a service reads results from.

mod egress;
mod select;

pub(crate) use egress::egress;
pub use egress::EgressHandle;
pub use select::EgressSelect;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::data::Data;
use crate::error::{EngineError, OperatorError};
use crate::runtime::build::{BuildContext, Name, NodeFactory};
use crate::runtime::collector::{Collector, Lifecycle, SharedCollector, SinkOutput, TaskInfo};

/// Counts records and sums a value of each (wrapping).
pub(crate) struct CountSink<T: Data, F> {
    name: String,
    value: Option<Arc<F>>,
    records: u64,
    sum: u64,
    _t: PhantomData<fn(&T)>,
}

impl<T: Data, F: Fn(&T::Borrowed) -> u64> Collector<T> for SharedCollector<CountSink<T, F>> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        let mut s = self.0.borrow_mut();
        s.records += 1;
        if let Some(f) = &s.value {
            s.sum = s.sum.wrapping_add(f(record));
        }
    }

    #[inline]
    fn collect_batch(&mut self, records: &[T]) {
        let mut guard = self.0.borrow_mut();
        let CountSink { value, records: count, sum, .. } = &mut *guard;
        *count += records.len() as u64;
        if let Some(f) = value {
            *sum = records.iter().fold(*sum, |acc, r| acc.wrapping_add(f(r.borrow())));
        }
    }
}

impl<T: Data, F: Fn(&T::Borrowed) -> u64> Lifecycle for CountSink<T, F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        Ok(SinkOutput::Count { records: self.records, value_sum: self.sum })
    }
}

pub(crate) struct CountFactory<F> {
    pub(crate) name: Name,
    pub(crate) value: Option<Arc<F>>,
}

impl<T: Data, F: Fn(&T::Borrowed) -> u64 + Send + Sync + 'static> NodeFactory<T> for CountFactory<F> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let name = self.name.get();
        let sink = CountSink { name: name.clone(), value: self.value.clone(), records: 0, sum: 0, _t: PhantomData };
        Ok(ctx.stateful(&name, sink))
    }
}

/// Drops every record.
pub(crate) struct Discard;

impl<T: Data> Collector<T> for Discard {
    #[inline(always)]
    fn collect(&mut self, _: &T::Borrowed) {}
    #[inline(always)]
    fn collect_batch(&mut self, _: &[T]) {}
}

impl<T: Data> NodeFactory<T> for Discard {
    fn build(&self, _: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        Ok(Box::new(Discard))
    }
}

/// Records `now − time(record)` (ns since the attempt's start instant) in an HDR
/// histogram; one clock read per batch.
pub(crate) struct LatencySink<T: Data, F> {
    name: String,
    time_ns: Arc<F>,
    start: Option<Instant>,
    hist: Histogram<u64>,
    _t: PhantomData<fn(&T)>,
}

impl<T: Data, F: Fn(&T::Borrowed) -> u64> LatencySink<T, F> {
    fn now_ns(&self) -> u64 {
        self.start.map_or(0, |s| s.elapsed().as_nanos() as u64)
    }
}

impl<T: Data, F: Fn(&T::Borrowed) -> u64> Collector<T> for SharedCollector<LatencySink<T, F>> {
    fn collect(&mut self, record: &T::Borrowed) {
        let mut s = self.0.borrow_mut();
        let now = s.now_ns();
        let t = (s.time_ns)(record);
        s.hist.saturating_record(now.saturating_sub(t).max(1));
    }

    fn collect_batch(&mut self, records: &[T]) {
        let mut s = self.0.borrow_mut();
        let now = s.now_ns();
        for r in records {
            let t = (s.time_ns)(r.borrow());
            s.hist.saturating_record(now.saturating_sub(t).max(1));
        }
    }
}

impl<T: Data, F: Fn(&T::Borrowed) -> u64> Lifecycle for LatencySink<T, F> {
    fn name(&self) -> &str {
        &self.name
    }
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        self.start = Some(task.job_start);
        Ok(())
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        Ok(SinkOutput::Latency(std::mem::replace(&mut self.hist, latency_histogram())))
    }
}

/// 1 ns to 1 h at 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant histogram bounds are valid")
}

pub(crate) struct LatencyFactory<F> {
    pub(crate) name: Name,
    pub(crate) time_ns: Arc<F>,
}

impl<T: Data, F: Fn(&T::Borrowed) -> u64 + Send + Sync + 'static> NodeFactory<T> for LatencyFactory<F> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let name = self.name.get();
        let sink = LatencySink {
            name: name.clone(),
            time_ns: self.time_ns.clone(),
            start: None,
            hist: latency_histogram(),
            _t: PhantomData,
        };
        Ok(ctx.stateful(&name, sink))
    }
}

/// Calls a function with each record.
pub(crate) struct ForEach<F>(Arc<F>);

impl<T: Data, F: Fn(&T::Borrowed)> Collector<T> for ForEach<F> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        (self.0)(record);
    }
}

pub(crate) struct ForEachFactory<F>(pub(crate) Arc<F>);

impl<T: Data, F: Fn(&T::Borrowed) + Send + Sync + 'static> NodeFactory<T> for ForEachFactory<F> {
    fn build(&self, _: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        Ok(Box::new(ForEach(self.0.clone())))
    }
}

// ------------------------------------------------------------------ collect

/// The records a collect sink gathered, readable once the job has finished.
/// Meant for tests and small results: everything is kept in memory.
#[derive(Debug)]
pub struct CollectHandle<T> {
    records: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for CollectHandle<T> {
    fn clone(&self) -> Self {
        CollectHandle { records: self.records.clone() }
    }
}

impl<T> CollectHandle<T> {
    pub(crate) fn new() -> Self {
        CollectHandle { records: Arc::default() }
    }

    /// Takes every record gathered so far: each sink subtask's records, in its
    /// arrival order, once that subtask has finished.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

pub(crate) struct CollectSink<T> {
    name: String,
    local: Vec<T>,
    out: Arc<Mutex<Vec<T>>>,
}

impl<T: Data> Collector<T> for SharedCollector<CollectSink<T>> {
    fn collect(&mut self, record: &T::Borrowed) {
        self.0.borrow_mut().local.push(T::to_owned_record(record));
    }
    fn collect_batch(&mut self, records: &[T]) {
        self.0.borrow_mut().local.extend_from_slice(records);
    }
}

impl<T: Data> Lifecycle for CollectSink<T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.append(&mut self.local);
        Ok(SinkOutput::None)
    }
}

pub(crate) struct CollectFactory<T> {
    pub(crate) name: Name,
    pub(crate) handle: CollectHandle<T>,
}

impl<T: Data> NodeFactory<T> for CollectFactory<T> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let name = self.name.get();
        let sink = CollectSink { name: name.clone(), local: Vec::new(), out: self.handle.records.clone() };
        Ok(ctx.stateful(&name, sink))
    }
}
