//! Generator sources.

use std::time::{Duration, Instant};

use strength_reduce::StrengthReducedU64;

use crate::error::{EngineError, OperatorError};
use crate::operator::{SourceOperator, SourceStatus, TaskInfo};
use crate::record::{OpConfig, Record};
use crate::registry::OperatorRegistry;

/// The golden-ratio multiplier of the benchmark pipelines.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Records a generator appends per poll (24 KiB: stays in L1).
const DEFAULT_BATCH: u64 = 1024;

/// How a generator derives record r's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyGen {
    /// r · GOLDEN (wrapping): P1.
    Golden,
    /// r.
    Index,
    /// (r · mul) mod modulus: P2 uses mul 2654435761, modulus 100 000.
    MulMod {
        /// Multiplier (wrapping).
        mul: u64,
        /// Modulus, ≥ 1.
        modulus: u64,
    },
}

impl KeyGen {
    pub(crate) fn to_config(self, c: OpConfig) -> OpConfig {
        match self {
            KeyGen::Golden => c.with("keys", "golden"),
            KeyGen::Index => c.with("keys", "index"),
            KeyGen::MulMod { mul, modulus } => c.with("keys", "mul_mod").with("mul", mul).with("modulus", modulus),
        }
    }

    fn from_config(c: &OpConfig) -> Result<Self, EngineError> {
        match c.get("keys").unwrap_or("index") {
            "golden" => Ok(KeyGen::Golden),
            "index" => Ok(KeyGen::Index),
            "mul_mod" => {
                let modulus = c.u64("generator", "modulus")?;
                if modulus == 0 {
                    return Err(EngineError::InvalidOperatorConfig {
                        operator: "generator".into(),
                        reason: "modulus must be at least 1".into(),
                    });
                }
                Ok(KeyGen::MulMod { mul: c.u64("generator", "mul")?, modulus })
            }
            other => Err(EngineError::InvalidOperatorConfig {
                operator: "generator".into(),
                reason: format!("keys={other}: expected golden, index or mul_mod"),
            }),
        }
    }
}

/// How a generator derives record r's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueGen {
    /// r.
    Index,
    /// 1.
    One,
}

impl ValueGen {
    pub(crate) fn to_config(self, c: OpConfig) -> OpConfig {
        c.with("values", if self == ValueGen::One { "one" } else { "index" })
    }
    fn from_config(c: &OpConfig) -> Result<Self, EngineError> {
        match c.get("values").unwrap_or("index") {
            "index" => Ok(ValueGen::Index),
            "one" => Ok(ValueGen::One),
            other => Err(EngineError::InvalidOperatorConfig {
                operator: "generator".into(),
                reason: format!("values={other}: expected index or one"),
            }),
        }
    }
}

/// Emits records `lo..hi`, this subtask's even share of `0..records`.
struct Generator {
    records: u64,
    keys: KeyGen,
    /// `modulus` of [`KeyGen::MulMod`], reduced to multiplications once.
    reduced: Option<StrengthReducedU64>,
    values: ValueGen,
    batch: u64,
    next: u64,
    hi: u64,
}

/// This subtask's contiguous share of `0..n`.
pub(crate) fn share(n: u64, index: u32, parallelism: u32) -> (u64, u64) {
    let (i, p) = (u128::from(index), u128::from(parallelism));
    let n = u128::from(n);
    ((n * i / p) as u64, (n * (i + 1) / p) as u64)
}

impl SourceOperator for Generator {
    fn open(&mut self, info: &TaskInfo) -> Result<(), OperatorError> {
        let (lo, hi) = share(self.records, info.subtask, info.parallelism);
        self.next = lo;
        self.hi = hi;
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Vec<Record>) -> Result<SourceStatus, OperatorError> {
        if self.next >= self.hi {
            return Ok(SourceStatus::Finished);
        }
        let end = (self.next + self.batch).min(self.hi);
        let range = self.next..end;
        let one = self.values == ValueGen::One;
        let value = move |r: u64| if one { 1 } else { r };
        match self.keys {
            KeyGen::Golden => out.extend(range.map(|r| Record::new(r.wrapping_mul(GOLDEN), value(r)))),
            KeyGen::Index => out.extend(range.map(|r| Record::new(r, value(r)))),
            KeyGen::MulMod { mul, modulus } => match self.reduced {
                Some(m) => out.extend(range.map(|r| Record::new(r.wrapping_mul(mul) % m, value(r)))),
                None => out.extend(range.map(|r| Record::new(r.wrapping_mul(mul) % modulus, value(r)))),
            },
        }
        self.next = end;
        Ok(SourceStatus::Emitted)
    }
}

/// Paced generator: subtask i owns records r ≡ i (mod parallelism); record r is due
/// at `start + r · 1e9 / rate` ns and carries that due time.
struct PacedGenerator {
    rate: u64,
    total: u64,
    start_offset: Duration,
    start: Option<Instant>,
    job_start_ns: u64,
    next: u64,
    step: u64,
}

impl PacedGenerator {
    fn due_ns(&self, r: u64) -> u64 {
        (u128::from(r) * 1_000_000_000 / u128::from(self.rate)) as u64
    }
}

impl SourceOperator for PacedGenerator {
    fn open(&mut self, info: &TaskInfo) -> Result<(), OperatorError> {
        self.start = Some(info.job_start + self.start_offset);
        self.job_start_ns = self.start_offset.as_nanos() as u64;
        self.next = u64::from(info.subtask);
        self.step = u64::from(info.parallelism);
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Vec<Record>) -> Result<SourceStatus, OperatorError> {
        let Some(start) = self.start else {
            return Err(OperatorError::User("paced generator polled before open".into()));
        };
        if self.next >= self.total {
            return Ok(SourceStatus::Finished);
        }
        let now = Instant::now();
        let now_ns = now.saturating_duration_since(start).as_nanos() as u64;
        let room = out.capacity().max(1);
        while self.next < self.total && out.len() < room {
            let due = self.due_ns(self.next);
            if due > now_ns {
                break;
            }
            let r = self.next;
            out.push(Record { key: r.wrapping_mul(super::GOLDEN), value: r, time: self.job_start_ns + due });
            self.next += self.step;
        }
        if !out.is_empty() {
            return Ok(SourceStatus::Emitted);
        }
        if self.next >= self.total {
            return Ok(SourceStatus::Finished);
        }
        Ok(SourceStatus::IdleUntil(start + Duration::from_nanos(self.due_ns(self.next))))
    }
}

pub(super) fn register(r: &mut OperatorRegistry) {
    r.register_source("generator", |c, _| {
        let batch = c.u64_or("generator", "batch", DEFAULT_BATCH)?.max(1);
        let keys = KeyGen::from_config(c)?;
        let reduced = match keys {
            KeyGen::MulMod { modulus, .. } => Some(StrengthReducedU64::new(modulus)),
            _ => None,
        };
        Ok(Box::new(Generator {
            records: c.u64("generator", "records")?,
            keys,
            reduced,
            values: ValueGen::from_config(c)?,
            batch,
            next: 0,
            hi: 0,
        }))
    });
    r.register_source("paced-generator", |c, _| {
        let op = "paced-generator";
        let rate = c.u64(op, "rate")?;
        if rate == 0 {
            return Err(EngineError::InvalidOperatorConfig {
                operator: op.into(),
                reason: "rate must be at least 1".into(),
            });
        }
        let duration_ms = c.u64(op, "duration_ms")?;
        let total = (u128::from(rate) * u128::from(duration_ms) / 1000) as u64;
        Ok(Box::new(PacedGenerator {
            rate,
            total,
            start_offset: Duration::from_millis(c.u64_or(op, "start_offset_ms", 20)?),
            start: None,
            job_start_ns: 0,
            next: 0,
            step: 1,
        }))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_range_exactly() {
        for p in 1..5u32 {
            let mut covered = 0;
            let mut prev_hi = 0;
            for i in 0..p {
                let (lo, hi) = share(1003, i, p);
                assert_eq!(lo, prev_hi);
                covered += hi - lo;
                prev_hi = hi;
            }
            assert_eq!(covered, 1003);
        }
    }
}
