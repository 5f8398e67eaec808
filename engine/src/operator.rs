//! The operator model: sources produce records, operators transform batches of
//! records by direct calls along a chain, sinks end a chain and yield a result.
//!
//! Lifecycle of a chained operator in a running task:
//! `open → process_batch* / process_watermark* → finish (end of input) → close`.
//! Cancellation drops the task at its next await point (cooperative and prompt);
//! `close` is not called then.

use std::time::Instant;

use hdrhistogram::Histogram;
use shardflow_memory::Budget;

use crate::error::OperatorError;
use crate::record::Record;

/// What a task knows about itself, handed to operators at `open`.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// Vertex name.
    pub vertex: String,
    /// This subtask's index.
    pub subtask: u32,
    /// The vertex's parallelism.
    pub parallelism: u32,
    /// The job's start instant; record times count from here.
    pub job_start: Instant,
    /// Core this subtask's shard runs on.
    pub core: usize,
    /// The managed memory of this subtask's slot: operators reserve what they keep
    /// (keyed state, buffers) and fail with the numbers when it is exhausted.
    pub managed_memory: Budget,
}

/// A result a sink hands back when its task finishes.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkOutput {
    /// Nothing to report.
    None,
    /// Records counted and the wrapping sum of their values.
    Count {
        /// Records seen.
        records: u64,
        /// Wrapping sum of their values.
        value_sum: u64,
    },
    /// A latency histogram in nanoseconds (`now − record.time`).
    Latency(Histogram<u64>),
    /// Every record, in arrival order (for tests and small results).
    Records(Vec<Record>),
}

/// A transforming operator (map, filter, keyed process, sink, …) in a chain.
pub trait Operator {
    /// Called once before the first record.
    fn open(&mut self, _info: &TaskInfo) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Processes a batch: reads `input`, appends results to `out`.
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError>;
    /// Event time advanced to `watermark`.
    fn process_watermark(&mut self, _watermark: u64, _out: &mut Vec<Record>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// End of input: emit whatever is held (keyed results, …).
    fn finish(&mut self, _out: &mut Vec<Record>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Called once after `finish`; a sink returns its result here.
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        Ok(SinkOutput::None)
    }
}

/// What a source did on one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Records were appended; poll again.
    Emitted,
    /// Nothing is due before this instant; the task flushes and waits.
    IdleUntil(Instant),
    /// The source is exhausted.
    Finished,
}

/// A source: the head of a chain in a vertex without inputs.
pub trait SourceOperator {
    /// Called once before the first poll.
    fn open(&mut self, _info: &TaskInfo) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Appends up to about `out.capacity()` records to `out`.
    fn poll_next(&mut self, out: &mut Vec<Record>) -> Result<SourceStatus, OperatorError>;
}

/// The head of a chain: a source, or an operator fed by the task's input gate.
pub enum ChainHead {
    /// A source vertex.
    Source(Box<dyn SourceOperator>),
    /// An operator consuming the input gate.
    Operator(Box<dyn Operator>),
}

/// A record-to-record function as an operator (inlined per batch).
pub(crate) struct MapFn<F>(pub(crate) F);
impl<F: Fn(Record) -> Record> Operator for MapFn<F> {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        out.extend(input.iter().map(|r| (self.0)(*r)));
        Ok(())
    }
}

/// A predicate as an operator.
pub(crate) struct FilterFn<F>(pub(crate) F);
impl<F: Fn(&Record) -> bool> Operator for FilterFn<F> {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        out.extend(input.iter().filter(|r| (self.0)(r)));
        Ok(())
    }
}

/// A one-to-many function as an operator.
pub(crate) struct FlatMapFn<F>(pub(crate) F);
impl<F: Fn(&Record, &mut Vec<Record>)> Operator for FlatMapFn<F> {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        for r in input {
            (self.0)(r, out);
        }
        Ok(())
    }
}
