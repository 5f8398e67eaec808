//! Keyed state in key groups, charged to the slot's managed memory.
//!
//! A key belongs to key group `hash(key) mod max_parallelism`; subtask `i` of `p`
//! owns the contiguous key groups `⌈i·max/p⌉ ..= ⌊((i+1)·max − 1)/p⌋`, and key group
//! `g` is routed to subtask `g·p/max` (Flink's `KeyGroupRangeAssignment`). State is
//! snapshotted per key group ([`snapshot`]), so a snapshot taken at one
//! parallelism restores into another: each new subtask reads the key groups of
//! its range.

mod snapshot;

pub(crate) use snapshot::{undecodable, GroupWriter, SnapshotReader};
pub use snapshot::{JobSnapshot, OperatorSnapshot, OperatorSummary};

use std::ops::Range;

use shardflow_memory::{Budget, Reservation};
use strength_reduce::StrengthReducedU64;

use crate::data::Data;
use crate::error::OperatorError;

/// The key groups subtask `subtask` of `parallelism` owns.
pub fn key_group_range(subtask: u32, parallelism: u32, max_parallelism: u32) -> Range<u32> {
    let (i, p, m) = (u64::from(subtask), u64::from(parallelism.max(1)), u64::from(max_parallelism));
    let start = (i * m).div_ceil(p);
    let end = ((i + 1) * m - 1) / p + 1;
    start as u32..end as u32
}

/// The subtask of `parallelism` that owns key group `group`.
pub fn subtask_of_key_group(group: u32, parallelism: u32, max_parallelism: u32) -> u32 {
    (u64::from(group) * u64::from(parallelism) / u64::from(max_parallelism.max(1))) as u32
}

/// Maps key hashes to key groups and key groups to subtasks, without a division
/// per record.
#[derive(Debug, Clone)]
pub(crate) struct KeyGroupRouter {
    mask: Option<u64>,
    reduced: StrengthReducedU64,
    /// Key group → subtask.
    table: Vec<u32>,
}

impl KeyGroupRouter {
    pub(crate) fn new(parallelism: u32, max_parallelism: u32) -> Self {
        let max = max_parallelism.max(1);
        let table = (0..max).map(|g| subtask_of_key_group(g, parallelism, max)).collect();
        let mask = u64::from(max).is_power_of_two().then(|| u64::from(max) - 1);
        KeyGroupRouter { mask, reduced: StrengthReducedU64::new(u64::from(max)), table }
    }

    /// The key group of a key with routing hash `hash`.
    #[inline(always)]
    pub(crate) fn key_group(&self, hash: u64) -> u32 {
        match self.mask {
            Some(m) => (hash & m) as u32,
            None => (hash % self.reduced) as u32,
        }
    }

    /// The subtask a key with routing hash `hash` goes to.
    #[inline(always)]
    pub(crate) fn subtask(&self, hash: u64) -> usize {
        self.table[self.key_group(hash) as usize] as usize
    }
}

/// What an operator's state holds of its slot's managed memory: reserved in
/// steps as the state grows, so growth costs no atomic per record; beyond the
/// budget a typed error with the numbers.
pub(crate) struct StateMemory {
    budget: Option<Budget>,
    held: Vec<Reservation>,
    held_bytes: u64,
    used_bytes: u64,
}

/// The smallest step a state's reservation grows by.
const MEMORY_STEP: u64 = 64 << 10;

impl StateMemory {
    pub(crate) fn new() -> Self {
        StateMemory { budget: None, held: Vec::new(), held_bytes: 0, used_bytes: 0 }
    }

    /// Charges this state to `budget` from now on (what it holds already too).
    pub(crate) fn account_to(&mut self, budget: Budget) -> Result<(), OperatorError> {
        self.budget = Some(budget);
        let used = std::mem::take(&mut self.used_bytes);
        self.grow(used)
    }

    /// The state grew by `bytes`.
    #[inline]
    pub(crate) fn grow(&mut self, bytes: u64) -> Result<(), OperatorError> {
        self.used_bytes += bytes;
        if self.used_bytes <= self.held_bytes {
            return Ok(());
        }
        let Some(budget) = &self.budget else { return Ok(()) };
        let step = (self.used_bytes - self.held_bytes).max(MEMORY_STEP).max(self.held_bytes / 2);
        let r = budget.reserve(step)?;
        self.held_bytes += r.bytes();
        self.held.push(r);
        Ok(())
    }

    /// Something the state holds went from `before` to `after` bytes.
    #[inline]
    pub(crate) fn resize(&mut self, before: u64, after: u64) -> Result<(), OperatorError> {
        if after > before {
            self.grow(after - before)
        } else {
            self.shrink(before - after);
            Ok(())
        }
    }

    /// The state shrank by `bytes` (reservations are kept for regrowth).
    pub(crate) fn shrink(&mut self, bytes: u64) {
        self.used_bytes = self.used_bytes.saturating_sub(bytes);
    }

    /// Bytes the state uses now (estimated).
    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes
    }
}

/// What an owned `value` holds on the heap ([`Data::heap_bytes`]).
#[inline(always)]
pub(crate) fn heap_of<V: Data>(value: &V) -> u64 {
    V::heap_bytes(value.borrow()) as u64
}

/// What a list of `V` holds: its items and their heaps.
pub(crate) fn list_bytes<V: Data>(list: &[V]) -> u64 {
    list.iter().map(|v| std::mem::size_of::<V>() as u64 + heap_of(v)).sum()
}

/// An estimate of what one entry of a hash table of `K → V` costs, with `key`'s
/// own bytes (a value's heap is [`heap_of`] it).
#[inline]
pub(crate) fn entry_bytes<K: Data, V>(key: &K::Borrowed) -> u64 {
    (std::mem::size_of::<K>() + std::mem::size_of::<V>() + 16 + std::mem::size_of_val(key)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_group_ranges_cover_every_group_once_and_match_the_routing() {
        for max in [1u32, 7, 128, 1000] {
            for p in 1..=max.min(9) {
                let mut next = 0;
                for i in 0..p {
                    let r = key_group_range(i, p, max);
                    assert_eq!(r.start, next, "contiguous: max {max} p {p} subtask {i}");
                    for g in r.clone() {
                        assert_eq!(subtask_of_key_group(g, p, max), i, "max {max} p {p} group {g}");
                    }
                    next = r.end;
                }
                assert_eq!(next, max, "every group owned: max {max} p {p}");
            }
        }
        // Flink's figures: 128 groups over 3 subtasks.
        assert_eq!(key_group_range(0, 3, 128), 0..43);
        assert_eq!(key_group_range(1, 3, 128), 43..86);
        assert_eq!(key_group_range(2, 3, 128), 86..128);
    }

    #[test]
    fn the_router_agrees_with_the_definition() {
        for max in [128u32, 100] {
            let r = KeyGroupRouter::new(3, max);
            for h in [0u64, 1, 127, 128, 12345, u64::MAX, 0x9E37_79B9_7F4A_7C15] {
                let g = (h % u64::from(max)) as u32;
                assert_eq!(r.key_group(h), g);
                assert_eq!(r.subtask(h) as u32, subtask_of_key_group(g, 3, max));
            }
        }
    }

    #[test]
    fn state_memory_reserves_in_steps_and_refuses_past_the_budget() {
        let budget = Budget::new(shardflow_memory::BudgetKind::ManagedMemory, 200 << 10);
        let mut m = StateMemory::new();
        m.grow(100).unwrap();
        m.account_to(budget.clone()).unwrap();
        assert_eq!(budget.used_bytes(), 64 << 10, "one step");
        for _ in 0..1000 {
            m.grow(100).unwrap();
        }
        assert_eq!(budget.used_bytes(), 128 << 10, "a second step, not an atomic per entry");
        let err = m.grow(200 << 10).unwrap_err();
        assert!(err.to_string().contains("managed memory budget exceeded"), "{err}");
        drop(m);
        assert_eq!(budget.used_bytes(), 0);
    }
}
