//! Sinks: the end of a chain; each hands back a [`SinkOutput`] when it closes.

use std::time::Instant;

use crossbeam_channel::Sender;
use hdrhistogram::Histogram;

use crate::error::{EngineError, OperatorError};
use crate::operator::{Operator, SinkOutput, TaskInfo};
use crate::record::Record;
use crate::registry::OperatorRegistry;

struct Discard;
impl Operator for Discard {
    fn process_batch(&mut self, _input: &[Record], _out: &mut Vec<Record>) -> Result<(), OperatorError> {
        Ok(())
    }
}

#[derive(Default)]
struct Count {
    records: u64,
    sum: u64,
}
impl Operator for Count {
    #[inline]
    fn process_batch(&mut self, input: &[Record], _out: &mut Vec<Record>) -> Result<(), OperatorError> {
        self.records += input.len() as u64;
        self.sum = input.iter().fold(self.sum, |s, r| s.wrapping_add(r.value));
        Ok(())
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        Ok(SinkOutput::Count { records: self.records, value_sum: self.sum })
    }
}

struct Collect {
    name: String,
    tx: Sender<Vec<Record>>,
}
impl Operator for Collect {
    fn process_batch(&mut self, input: &[Record], _out: &mut Vec<Record>) -> Result<(), OperatorError> {
        if input.is_empty() {
            return Ok(());
        }
        self.tx
            .send(input.to_vec())
            .map_err(|_| OperatorError::User(format!("collector '{}' was dropped by its reader", self.name)))
    }
}

struct Latency {
    hist: Histogram<u64>,
    job_start: Option<Instant>,
}
impl Operator for Latency {
    fn open(&mut self, info: &TaskInfo) -> Result<(), OperatorError> {
        self.job_start = Some(info.job_start);
        Ok(())
    }
    fn process_batch(&mut self, input: &[Record], _out: &mut Vec<Record>) -> Result<(), OperatorError> {
        let Some(start) = self.job_start else {
            return Err(OperatorError::User("latency sink used before open".into()));
        };
        let now_ns = start.elapsed().as_nanos() as u64;
        for r in input {
            self.hist.saturating_record(now_ns.saturating_sub(r.time).max(1));
        }
        Ok(())
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        Ok(SinkOutput::Latency(self.hist.clone()))
    }
}

struct Slow {
    work: u64,
    count: Count,
}
impl Operator for Slow {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        for r in input {
            let mut x = r.value;
            for _ in 0..self.work {
                x = std::hint::black_box(shardflow_netstack::fmix64(x));
            }
            std::hint::black_box(x);
        }
        self.count.process_batch(input, out)
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        self.count.close()
    }
}

pub(super) fn register(r: &mut OperatorRegistry) {
    r.register_operator("sink.discard", |_, _| Ok(Box::new(Discard)));
    r.register_operator("sink.count", |_, _| Ok(Box::new(Count::default())));
    r.register_operator("sink.collect", |c, res| {
        let key = c.get("collector").unwrap_or_default();
        // `label`: the name the job gave it, where the engine registered it under another.
        let name = c.get("label").unwrap_or(key).to_string();
        let tx = res.collector(key).cloned().ok_or_else(|| EngineError::InvalidOperatorConfig {
            operator: "sink.collect".into(),
            reason: format!("the job has no collector named '{name}'"),
        })?;
        Ok(Box::new(Collect { name, tx }))
    });
    r.register_operator("sink.latency", |_, _| {
        let hist = Histogram::new_with_bounds(1, 3_600_000_000_000, 3).map_err(|e| {
            EngineError::InvalidOperatorConfig { operator: "sink.latency".into(), reason: e.to_string() }
        })?;
        Ok(Box::new(Latency { hist, job_start: None }))
    });
    r.register_operator("sink.slow", |c, _| {
        Ok(Box::new(Slow { work: c.u64_or("sink.slow", "work", 1000)?, count: Count::default() }))
    });
}
