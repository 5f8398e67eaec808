//! Byte budgets with RAII reservations: taking more than is left is a typed error
//! carrying the numbers, returned at deployment time, never an abort at run time.

use std::fmt;

use crate::error::{BudgetKind, MemoryError};
use crate::sync::{Arc, AtomicU64, Ordering};

/// A byte budget (network buffers of a shard, managed memory of a slot). Cheap to
/// clone; clones share the same account. `Send + Sync`: deployments reserve on
/// the control thread, tasks release on their shard.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    kind: BudgetKind,
    capacity_bytes: u64,
    used_bytes: AtomicU64,
}

impl Budget {
    /// A budget of `capacity_bytes` for `kind`.
    pub fn new(kind: BudgetKind, capacity_bytes: u64) -> Self {
        Budget { inner: Arc::new(Inner { kind, capacity_bytes, used_bytes: AtomicU64::new(0) }) }
    }

    /// Reserves `bytes`, or fails with [`MemoryError::BudgetExceeded`]; on failure
    /// nothing is taken.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, MemoryError> {
        let inner = &self.inner;
        let mut used = inner.used_bytes.load(Ordering::Relaxed);
        loop {
            let available = inner.capacity_bytes - used;
            if bytes > available {
                return Err(MemoryError::BudgetExceeded {
                    kind: inner.kind,
                    requested_bytes: bytes,
                    available_bytes: available,
                    capacity_bytes: inner.capacity_bytes,
                });
            }
            match inner.used_bytes.compare_exchange_weak(used, used + bytes, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(Reservation { budget: self.clone(), bytes }),
                Err(actual) => used = actual,
            }
        }
    }

    /// What the budget is for.
    pub fn kind(&self) -> BudgetKind {
        self.inner.kind
    }
    /// Size of the budget.
    pub fn capacity_bytes(&self) -> u64 {
        self.inner.capacity_bytes
    }
    /// Bytes reserved now.
    pub fn used_bytes(&self) -> u64 {
        self.inner.used_bytes.load(Ordering::Acquire)
    }
    /// Bytes still free.
    pub fn available_bytes(&self) -> u64 {
        self.capacity_bytes() - self.used_bytes()
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("kind", &self.kind())
            .field("capacity_bytes", &self.capacity_bytes())
            .field("used_bytes", &self.used_bytes())
            .finish()
    }
}

/// Bytes taken from a [`Budget`]; given back when dropped.
#[must_use = "a reservation is released as soon as it is dropped"]
pub struct Reservation {
    budget: Budget,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// The budget it was taken from.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.inner.used_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").field("kind", &self.budget.kind()).field("bytes", &self.bytes).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_returned_on_drop() {
        let b = Budget::new(BudgetKind::ManagedMemory, 100);
        let r1 = b.reserve(60).unwrap();
        assert_eq!(b.available_bytes(), 40);
        let err = b.reserve(50).unwrap_err();
        assert_eq!(
            err,
            MemoryError::BudgetExceeded {
                kind: BudgetKind::ManagedMemory,
                requested_bytes: 50,
                available_bytes: 40,
                capacity_bytes: 100
            }
        );
        assert_eq!(b.used_bytes(), 60, "a failed reservation takes nothing");
        drop(r1);
        assert_eq!(b.available_bytes(), 100);
        let _all = b.reserve(100).unwrap();
        assert!(b.reserve(1).is_err());
    }

    #[test]
    fn error_message_names_the_numbers() {
        let b = Budget::new(BudgetKind::NetworkBuffers, 10);
        let msg = b.reserve(11).unwrap_err().to_string();
        assert_eq!(msg, "network buffers budget exceeded: requested 11 bytes, 10 of 10 bytes available");
    }
}
