//! A lock-free stack of segment indices: the free list of one pool.
//!
//! Any thread may push (a segment released on a foreign shard goes straight back to
//! its home pool); any thread may pop, though in practice only the home shard does.
//! The head packs a 32-bit generation tag with the index so a pop that raced with a
//! pop-push of the same index fails its CAS instead of corrupting the stack (ABA).

use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// `0` in the index half of the head (or in a `next` link) means "none".
const NONE: u32 = 0;

pub(crate) struct FreeStack {
    /// `(tag << 32) | (index + 1)`.
    head: AtomicU64,
    /// `next[i]` = index + 1 of the entry below `i`, or [`NONE`].
    next: Box<[AtomicU32]>,
    len: AtomicUsize,
    /// Lowest `len` seen since creation or the last reset.
    low_water: AtomicUsize,
}

impl FreeStack {
    /// A stack holding every index in `0..capacity`, lowest on top.
    pub(crate) fn full(capacity: u32) -> Self {
        let next: Box<[AtomicU32]> =
            (0..capacity).map(|i| AtomicU32::new(if i + 1 < capacity { i + 2 } else { NONE })).collect();
        let head = if capacity == 0 { NONE } else { 1 };
        FreeStack {
            head: AtomicU64::new(u64::from(head)),
            next,
            len: AtomicUsize::new(capacity as usize),
            low_water: AtomicUsize::new(capacity as usize),
        }
    }

    pub(crate) fn push(&self, index: u32) {
        debug_assert!((index as usize) < self.next.len());
        // Counted before it is visible: a pop that takes it (after the CAS below,
        // which releases this add) subtracts after this add, so `len` never
        // underflows; it may count an entry early, never late.
        self.len.fetch_add(1, Ordering::Relaxed);
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            self.next[index as usize].store(head as u32, Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            let new = (tag << 32) | u64::from(index + 1);
            // Release: the link written above (and every access to the segment's bytes
            // before the release) happens-before the pop that takes this index.
            match self.head.compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }
    }

    pub(crate) fn pop(&self) -> Option<u32> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == NONE {
                return None;
            }
            let below = self.next[(top - 1) as usize].load(Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            let new = (tag << 32) | u64::from(below);
            match self.head.compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let now = self.len.fetch_sub(1, Ordering::Relaxed) - 1;
                    self.low_water.fetch_min(now, Ordering::Relaxed);
                    return Some(top - 1);
                }
                Err(actual) => head = actual,
            }
        }
    }

    /// Fewest entries the stack has held since creation or [`FreeStack::reset_low_water`].
    pub(crate) fn low_water(&self) -> usize {
        self.low_water.load(Ordering::Relaxed)
    }

    /// Restarts low-water tracking from the current length.
    pub(crate) fn reset_low_water(&self) {
        self.low_water.store(self.len(), Ordering::Relaxed);
    }

    /// Entries on the stack (exact when no push or pop is in flight; while a push
    /// is, it may count that entry already).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pops_every_index_once_then_none() {
        let s = FreeStack::full(5);
        let mut got: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(s.len(), 0);
        assert_eq!(s.pop(), None);
    }

    #[test]
    fn pushed_indices_come_back() {
        let s = FreeStack::full(3);
        let a = s.pop().unwrap();
        let b = s.pop().unwrap();
        s.push(a);
        s.push(b);
        assert_eq!(s.len(), 3);
        assert_eq!(s.pop(), Some(b));
        assert_eq!(s.pop(), Some(a));
    }

    #[test]
    fn concurrent_returns_lose_nothing() {
        let s = std::sync::Arc::new(FreeStack::full(64));
        let taken: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
        let (left, right) = taken.split_at(32);
        let (left, right) = (left.to_vec(), right.to_vec());
        let s1 = s.clone();
        let t = std::thread::spawn(move || left.into_iter().for_each(|i| s1.push(i)));
        right.into_iter().for_each(|i| s.push(i));
        t.join().unwrap();
        let mut all: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    /// An empty stack: one thread returns a segment while another allocates.
    /// The allocation may see it or not, but `len` never underflows (run with
    /// overflow checks on) and ends equal to what the stack holds.
    #[test]
    fn push_and_pop_on_an_empty_stack_keep_len_exact() {
        loom::model(|| {
            let s = Arc::new(FreeStack::full(2));
            let (a, b) = (s.pop().unwrap(), s.pop().unwrap());
            assert_eq!(s.len(), 0);
            let s1 = s.clone();
            let returner = loom::thread::spawn(move || s1.push(a));
            let s2 = s.clone();
            let allocator = loom::thread::spawn(move || s2.pop());
            s.push(b);
            returner.join().unwrap();
            let got = allocator.join().unwrap();
            let mut rest: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
            assert_eq!(s.len(), 0);
            rest.extend(got);
            rest.sort_unstable();
            assert_eq!(rest, vec![0, 1], "every index exactly once");
        });
    }

    /// Two foreign shards return segments while the home shard allocates: every index
    /// ends up exactly once either in the home shard's hands or on the stack.
    #[test]
    fn return_path_under_contention() {
        loom::model(|| {
            let s = Arc::new(FreeStack::full(3));
            let a = s.pop().unwrap();
            let b = s.pop().unwrap();
            let (s1, s2) = (s.clone(), s.clone());
            let t1 = loom::thread::spawn(move || s1.push(a));
            let t2 = loom::thread::spawn(move || s2.push(b));
            let home = s.pop();
            t1.join().unwrap();
            t2.join().unwrap();
            let mut seen: Vec<u32> = std::iter::from_fn(|| s.pop()).collect();
            seen.extend(home);
            seen.sort_unstable();
            assert_eq!(seen, vec![0, 1, 2]);
        });
    }
}
