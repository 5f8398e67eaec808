//! Deterministic data generators shared by the criterion benches and the tests, so
//! both exercise the same shapes of data.

#![forbid(unsafe_code)]

use shardflow_engine::jobs::{KeyValue, GOLDEN};

/// A tiny deterministic generator (splitmix64): same seed, same sequence, on every
/// machine.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// P1's records: (r·GOLDEN, r) for r in `0..n`.
pub fn exchange_records(n: u64) -> Vec<KeyValue> {
    (0..n).map(|r| KeyValue { key: r.wrapping_mul(GOLDEN), value: r }).collect()
}

/// P2's records: ((r·2654435761) mod 100 000, 1) for r in `0..n`.
pub fn keyed_records(n: u64) -> Vec<KeyValue> {
    (0..n).map(|r| KeyValue { key: r.wrapping_mul(2_654_435_761) % 100_000, value: 1 }).collect()
}
