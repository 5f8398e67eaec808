//! Keyed processing with per-key value state, kept in a shard-local hash table.

use shardflow_memory::{Budget, MemoryError, Reservation};

use crate::error::OperatorError;
use crate::operator::{Operator, TaskInfo};
use crate::record::Record;
use crate::registry::OperatorRegistry;

/// The user side of a keyed process: called per record with that key's value state.
pub trait KeyedProcessFunction: 'static {
    /// Handles `record`; `state` is the key's value (0 for a new key).
    fn process(&mut self, record: &Record, state: &mut u64, out: &mut Vec<Record>);
    /// At end of input, once per key with its final state.
    fn on_end(&mut self, _key: u64, _state: u64, _out: &mut Vec<Record>) {}
}

/// Per-key `u64` value state: open addressing with linear probing, key and value
/// side by side so a hit touches one cache line. The slot hash is Fibonacci hashing,
/// independent of the routing hash (fmix64), whose top bits are the same for every
/// key that reaches one subtask.
pub(crate) struct ValueTable {
    /// `(key, value)`; a slot is free when its key is [`FREE`].
    slots: Vec<(u64, u64)>,
    /// The slot's managed memory, once the operator is open.
    budget: Option<Budget>,
    /// What the table holds of it.
    reserved: Option<Reservation>,
    shift: u32,
    len: usize,
    /// The value of key [`FREE`] itself, which cannot live in a slot.
    free_key_value: Option<u64>,
}

const FREE: u64 = u64::MAX;
const MIN_BITS: u32 = 10;

impl ValueTable {
    pub(crate) fn new() -> Self {
        ValueTable {
            slots: vec![(FREE, 0); 1 << MIN_BITS],
            budget: None,
            reserved: None,
            shift: 64 - MIN_BITS,
            len: 0,
            free_key_value: None,
        }
    }

    /// Charges the table's memory to `budget` from now on.
    pub(crate) fn account_to(&mut self, budget: Budget) -> Result<(), MemoryError> {
        self.reserved = Some(budget.reserve(Self::bytes(self.slots.len()))?);
        self.budget = Some(budget);
        Ok(())
    }

    fn bytes(slots: usize) -> u64 {
        (slots * std::mem::size_of::<(u64, u64)>()) as u64
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Hints the CPU to fetch `key`'s home slot.
    #[inline(always)]
    pub(crate) fn prefetch(&self, key: u64) {
        shardflow_memory::prefetch(&self.slots[self.home(key)]);
    }

    /// The value of `key`, inserted as 0 if absent; an error if growing the table
    /// would exceed the managed memory budget (the table is left as it was).
    #[inline(always)]
    pub(crate) fn value_mut(&mut self, key: u64) -> Result<&mut u64, MemoryError> {
        if key == FREE {
            return Ok(self.free_key_value.get_or_insert(0));
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow()?;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].0;
            if k == key {
                return Ok(&mut self.slots[i].1);
            }
            if k == FREE {
                self.len += 1;
                self.slots[i] = (key, 0);
                return Ok(&mut self.slots[i].1);
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) -> Result<(), MemoryError> {
        if let Some(budget) = &self.budget {
            // Reserve the larger table before giving back the smaller one.
            let bigger = budget.reserve(Self::bytes(self.slots.len() * 2))?;
            self.reserved = Some(bigger);
        }
        let old = std::mem::replace(&mut self.slots, vec![(FREE, 0); 0]);
        self.slots = vec![(FREE, 0); old.len() * 2];
        self.shift -= 1;
        let mask = self.slots.len() - 1;
        for (k, v) in old.into_iter().filter(|s| s.0 != FREE) {
            let mut i = self.home(k);
            while self.slots[i].0 != FREE {
                i = (i + 1) & mask;
            }
            self.slots[i] = (k, v);
        }
        Ok(())
    }

    /// Every `(key, value)`, leaving the table empty.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.len = 0;
        let free = self.free_key_value.take().map(|v| (FREE, v));
        self.slots.iter_mut().filter(|s| s.0 != FREE).map(|s| std::mem::replace(s, (FREE, 0))).chain(free)
    }
}

/// Runs a [`KeyedProcessFunction`] over records of the keys routed to this subtask.
pub struct KeyedProcess<F> {
    f: F,
    state: ValueTable,
}

impl<F: KeyedProcessFunction> KeyedProcess<F> {
    /// Wraps `f` with empty state.
    pub fn new(f: F) -> Self {
        KeyedProcess { f, state: ValueTable::new() }
    }
}

impl<F: KeyedProcessFunction> Operator for KeyedProcess<F> {
    fn open(&mut self, info: &TaskInfo) -> Result<(), OperatorError> {
        self.state.account_to(info.managed_memory.clone())?;
        Ok(())
    }

    fn process_batch(&mut self, input: &[Record], out: &mut Vec<Record>) -> Result<(), OperatorError> {
        // Prefetch the slot of the record `AHEAD` positions on, so table misses
        // overlap instead of stalling one by one.
        const AHEAD: usize = 8;
        for (i, r) in input.iter().enumerate() {
            if let Some(next) = input.get(i + AHEAD) {
                self.state.prefetch(next.key);
            }
            let s = self.state.value_mut(r.key)?;
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

/// A per-key fold of the values seen, emitted once per key at end of input.
struct Fold<F>(F);
impl<F: Fn(u64, &Record) -> u64 + 'static> KeyedProcessFunction for Fold<F> {
    #[inline(always)]
    fn process(&mut self, record: &Record, state: &mut u64, _out: &mut Vec<Record>) {
        *state = (self.0)(*state, record);
    }
    fn on_end(&mut self, key: u64, state: u64, out: &mut Vec<Record>) {
        out.push(Record::new(key, state));
    }
}

pub(super) fn register(r: &mut OperatorRegistry) {
    r.register_operator("keyed.count", |_, _| Ok(Box::new(KeyedProcess::new(Fold(|n, _: &Record| n + 1)))));
    r.register_operator("keyed.sum", |_, _| {
        Ok(Box::new(KeyedProcess::new(Fold(|sum: u64, r: &Record| sum.wrapping_add(r.value)))))
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn value_table_agrees_with_a_hash_map_through_growth() {
        let mut t = ValueTable::new();
        let mut oracle: HashMap<u64, u64> = HashMap::new();
        let mut x = 7u64;
        for i in 0..50_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = match i % 5 {
                0 => u64::MAX,
                1 => 0,
                _ => x % 20_000,
            };
            *t.value_mut(key).unwrap() += i;
            *oracle.entry(key).or_insert(0) += i;
        }
        let mut got: Vec<(u64, u64)> = t.drain().collect();
        got.sort_unstable();
        let mut want: Vec<(u64, u64)> = oracle.into_iter().collect();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(t.drain().count(), 0, "drained");
    }

    #[test]
    fn growth_past_the_budget_is_a_typed_error_and_leaves_the_table_intact() {
        use shardflow_memory::BudgetKind;
        let budget = Budget::new(BudgetKind::ManagedMemory, 64 << 10);
        let mut t = ValueTable::new();
        t.account_to(budget.clone()).unwrap();
        assert_eq!(budget.used_bytes(), 16 << 10, "1024 slots of 16 bytes");
        let mut inserted = 0u64;
        let err = loop {
            match t.value_mut(inserted) {
                Ok(v) => *v = inserted,
                Err(e) => break e,
            }
            inserted += 1;
        };
        assert!(matches!(err, MemoryError::BudgetExceeded { kind: BudgetKind::ManagedMemory, .. }), "{err}");
        // A rehash holds the old and the new table at once: growing from 2048 slots
        // (32 KiB) to 4096 needs 32 + 64 KiB, more than the 64 KiB budget.
        assert_eq!(inserted, 1536, "grew to 2048 slots, refused the next doubling");
        assert_eq!(budget.used_bytes(), 32 << 10, "a refused growth takes nothing");
        assert_eq!(t.drain().count() as u64, inserted, "nothing lost");
        drop(t);
        assert_eq!(budget.used_bytes(), 0, "released with the table");
    }
}
