//! Keyed processing with per-key value state, kept in a shard-local hash map.

use rustc_hash::FxHashMap;

use crate::error::OperatorError;
use crate::operator::Operator;
use crate::record::Record;
use crate::registry::OperatorRegistry;

/// The user side of a keyed process: called per record with that key's value state.
pub trait KeyedProcessFunction: 'static {
    /// Handles `record`; `state` is the key's value (0 for a new key).
    fn process(&mut self, record: &Record, state: &mut u64, out: &mut Vec<Record>);
    /// At end of input, once per key with its final state.
    fn on_end(&mut self, _key: u64, _state: u64, _out: &mut Vec<Record>) {}
}

/// Runs a [`KeyedProcessFunction`] over records of the keys routed to this subtask.
pub struct KeyedProcess<F> {
    f: F,
    state: FxHashMap<u64, u64>,
}

impl<F: KeyedProcessFunction> KeyedProcess<F> {
    /// Wraps `f` with empty state.
    pub fn new(f: F) -> Self {
        KeyedProcess { f, state: FxHashMap::default() }
    }
}

impl<F: KeyedProcessFunction> Operator for KeyedProcess<F> {
    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        for r in input {
            let s = self.state.entry(r.key).or_insert(0);
            self.f.process(r, s, out);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Record>) -> Result<(), OperatorError> {
        for (k, v) in self.state.drain() {
            self.f.on_end(k, v, out);
        }
        Ok(())
    }
}

struct Count;
impl KeyedProcessFunction for Count {
    #[inline(always)]
    fn process(&mut self, _record: &Record, state: &mut u64, _out: &mut Vec<Record>) {
        *state += 1;
    }
    fn on_end(&mut self, key: u64, state: u64, out: &mut Vec<Record>) {
        out.push(Record::new(key, state));
    }
}

struct Sum;
impl KeyedProcessFunction for Sum {
    #[inline(always)]
    fn process(&mut self, record: &Record, state: &mut u64, _out: &mut Vec<Record>) {
        *state = state.wrapping_add(record.value);
    }
    fn on_end(&mut self, key: u64, state: u64, out: &mut Vec<Record>) {
        out.push(Record::new(key, state));
    }
}

pub(super) fn register(r: &mut OperatorRegistry) {
    r.register_operator("keyed.count", |_, _| Ok(Box::new(KeyedProcess::new(Count))));
    r.register_operator("keyed.sum", |_, _| Ok(Box::new(KeyedProcess::new(Sum))));
}
