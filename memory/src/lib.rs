//! Memory for shardflow shards: per-shard segment pools and budgets.
//!
//! Every shard owns one [`SegmentPool`]: an anonymous `memmap2` region, prefaulted by
//! the shard's own thread, cut into fixed [`Segment`]s (32 KiB by default). Records
//! are written into segments once and then travel as segment handles; a segment
//! dropped on any shard returns to its home pool through a lock-free free list.
//! [`Budget`]s account network buffers and managed memory; a [`Reservation`] holds
//! bytes until dropped.
//!
//! ```text
//!   shard 0 thread                       shard 1 thread
//!   SegmentPool ──allocate──► Segment ──(moved, SPSC ring)──► reader
//!        ▲                                                      │ drop
//!        └──────────── lock-free free list (any thread push) ◄──┘
//! ```
//!
//! Invariants:
//! - a segment index is owned by at most one `Segment` at a time;
//! - no allocation on the data path after start-up: pools never grow;
//! - a budget is never overdrawn: `reserve` fails with the numbers instead.
//!
//! ```
//! use shardflow_memory::{Budget, BudgetKind, SegmentPoolBuilder};
//!
//! let pool = SegmentPoolBuilder::new(0, 8).segment_bytes(4096).build()?;
//! let mut seg = pool.allocate()?;
//! seg.as_bytes_mut()[0] = 42;
//! let home = pool.monitor();
//! std::thread::spawn(move || drop(seg)).join().unwrap();
//! assert_eq!(home.free_segments(), 8);
//!
//! let budget = Budget::new(BudgetKind::NetworkBuffers, 64 * 1024);
//! let held = budget.reserve(32 * 1024)?;
//! assert!(budget.reserve(64 * 1024).is_err());
//! drop(held);
//! # Ok::<(), shardflow_memory::MemoryError>(())
//! ```

mod budget;
mod error;
mod free_list;
mod pod;
mod pool;
mod sync;

pub use budget::{Budget, Reservation};
pub use error::{BudgetKind, MemoryError};
pub use pod::{pod_prefix, read_pod, PodRooms, SegmentWriter};
pub use pool::{
    PoolMonitor, Segment, SegmentPool, SegmentPoolBuilder, DEFAULT_SEGMENT_BYTES, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
};

#[cfg(all(test, not(loom)))]
mod auto_traits {
    use super::*;
    fn is_send<T: Send>() {}
    fn is_sync<T: Sync>() {}

    #[test]
    fn thread_boundaries_are_as_documented() {
        is_send::<SegmentPoolBuilder>();
        is_send::<Segment>();
        is_send::<PoolMonitor>();
        is_sync::<Budget>();
        is_send::<Reservation>();
        // `SegmentPool` is !Send: checked by the compile-fail doc test below.
    }
}

/// ```compile_fail
/// fn is_send<T: Send>() {}
/// is_send::<shardflow_memory::SegmentPool>();
/// ```
#[cfg(doctest)]
pub struct SegmentPoolIsNotSend;

/// Hints the CPU to fetch the cache line holding `byte` for writing: owned by
/// this core, other cores' copies given up, so a store a few records later
/// does not wait for the line to move. A no-op where unsupported (the CPU is
/// asked once whether it has `prefetchw`).
#[inline(always)]
pub fn prefetch_write(byte: &mut u8) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        // SAFETY: `prefetchw`, which this CPU has, is a hint that never
        // faults and changes no data; the pointer comes from a live reference.
        unsafe {
            std::arch::asm!("prefetchw [{}]", in(reg) byte as *mut u8, options(nostack, preserves_flags));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}

/// Whether the CPU has `prefetchw` (CPUID 8000_0001h, ECX bit 8).
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        // `__cpuid` is safe from Rust 1.87 on; the project builds on 1.85.
        // SAFETY: CPUID exists on every x86_64 CPU.
        #[allow(unused_unsafe)]
        let (max, ecx) = unsafe { (__cpuid(0x8000_0000).eax, __cpuid(0x8000_0001).ecx) };
        max >= 0x8000_0001 && ecx & (1 << 8) != 0
    })
}

/// Hints the CPU to bring the cache line holding `value` into L1, so a lookup a few
/// iterations later does not stall on memory. A no-op where unsupported.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is a hint that never faults and never writes; the
    // pointer comes from a live reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
