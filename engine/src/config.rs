//! Engine configuration: a plain struct with a builder whose setters document their
//! default and range; `build` validates and returns a structured error.

use std::time::Duration;

use shardflow_memory::{DEFAULT_SEGMENT_BYTES, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};

use crate::error::EngineError;
use crate::registry::JobCatalog;
pub use crate::runtime::IdlePolicy;

/// Which cores run shards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cores {
    /// One shard on each online core.
    #[default]
    All,
    /// The first `n` online cores.
    Count(usize),
    /// Exactly these cores, one shard each, in this order.
    List(Vec<usize>),
}

impl Cores {
    /// The cores these name on this machine, checked: every core online, none
    /// twice, no more than are online.
    pub fn resolve(&self) -> Result<Vec<usize>, EngineError> {
        let online = online_cores();
        match self {
            Cores::All => Ok(online),
            Cores::Count(n) => {
                if *n > online.len() {
                    return Err(EngineError::InvalidConfig {
                        field: "shards",
                        value: n.to_string(),
                        reason: format!("only {} cores are online ({online:?})", online.len()),
                    });
                }
                Ok(online[..*n].to_vec())
            }
            Cores::List(list) => {
                for (i, &c) in list.iter().enumerate() {
                    if !online.contains(&c) {
                        return Err(EngineError::UnknownCore { core: c, online: online.clone() });
                    }
                    if list[..i].contains(&c) {
                        return Err(EngineError::DuplicateCore { core: c });
                    }
                }
                Ok(list.clone())
            }
        }
    }
}

/// Online CPUs, sorted.
pub fn online_cores() -> Vec<usize> {
    let mut cores: Vec<usize> = match glommio::CpuSet::online() {
        Ok(set) => set.iter().map(|l| l.cpu).collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    };
    cores.sort_unstable();
    cores.dedup();
    cores
}

/// Validated engine configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Cores that run shards.
    pub cores: Cores,
    /// Task slots per shard.
    pub slots_per_shard: u32,
    /// Segment size.
    pub segment_bytes: usize,
    /// Network buffer memory per shard (its segment pool).
    pub network_memory_bytes: usize,
    /// Managed memory per task slot (keyed state and other operator memory), shared
    /// by the subtasks in the slot.
    pub managed_memory_per_slot_bytes: u64,
    /// Exclusive credits (buffers) per input channel.
    pub exclusive_credits: u32,
    /// Floating credits per input gate.
    pub floating_credits: u32,
    /// Events that may be in flight per channel besides data.
    pub event_room: u32,
    /// A partial buffer leaves after this long at the latest.
    pub flush_timeout: Option<Duration>,
    /// What idle shards do.
    pub idle: IdlePolicy,
    /// Under [`IdlePolicy::Park`], the shortest timed wait: a source with records due
    /// sooner sleeps this long and emits them together. 0 (the default) keeps timed
    /// waits exact; 10–100 µs trades latency for CPU (each timed wake-up costs
    /// kernel time, VM exits on virtual machines).
    pub min_park: Duration,
    /// Prefault pool memory at start-up (`MAP_POPULATE`).
    pub prefault: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cores: Cores::All,
            slots_per_shard: 2,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            network_memory_bytes: 64 << 20,
            managed_memory_per_slot_bytes: 1 << 30,
            exclusive_credits: 4,
            floating_credits: 8,
            event_room: 8,
            flush_timeout: Some(Duration::from_millis(100)),
            idle: IdlePolicy::Park,
            min_park: Duration::ZERO,
            prefault: true,
        }
    }
}

/// Builds an [`EngineConfig`]; see each setter for default and range.
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    config: EngineConfig,
    jobs: JobCatalog,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder { config: EngineConfig::default(), jobs: JobCatalog::new() }
    }
}

impl EngineBuilder {
    /// Defaults everywhere, no named jobs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The named jobs this process can run when a graph names them (a cluster's
    /// coordinator and workers need the jobs submitted to them; an embedded
    /// engine runs the jobs it is handed and needs none).
    #[must_use]
    pub fn jobs(mut self, catalog: &JobCatalog) -> Self {
        self.jobs.merge(catalog);
        self
    }

    /// Cores that run shards. Default: all online cores.
    #[must_use]
    pub fn cores(mut self, cores: Cores) -> Self {
        self.config.cores = cores;
        self
    }

    /// Shards on the first `n` online cores (1..=online cores).
    #[must_use]
    pub fn shards(mut self, n: usize) -> Self {
        self.config.cores = Cores::Count(n);
        self
    }

    /// Task slots per shard. Default 2; 1..=64.
    #[must_use]
    pub fn slots_per_shard(mut self, n: u32) -> Self {
        self.config.slots_per_shard = n;
        self
    }

    /// Segment size. Default 32 KiB; a power of two from 4 KiB to 64 MiB.
    #[must_use]
    pub fn segment_bytes(mut self, bytes: usize) -> Self {
        self.config.segment_bytes = bytes;
        self
    }

    /// Network buffer memory per shard. Default 64 MiB; at least 16 segments.
    #[must_use]
    pub fn network_memory_bytes(mut self, bytes: usize) -> Self {
        self.config.network_memory_bytes = bytes;
        self
    }

    /// Managed memory per task slot. Default 1 GiB; at least 64 KiB.
    #[must_use]
    pub fn managed_memory_per_slot_bytes(mut self, bytes: u64) -> Self {
        self.config.managed_memory_per_slot_bytes = bytes;
        self
    }

    /// Exclusive credits per input channel. Default 4; 1..=1024.
    #[must_use]
    pub fn exclusive_credits(mut self, n: u32) -> Self {
        self.config.exclusive_credits = n;
        self
    }

    /// Floating credits per input gate. Default 8; 0..=4096.
    #[must_use]
    pub fn floating_credits(mut self, n: u32) -> Self {
        self.config.floating_credits = n;
        self
    }

    /// Partial buffers leave after this long at the latest. Default 100 ms; `None`
    /// leaves it to full buffers, drained inputs and events.
    #[must_use]
    pub fn flush_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.flush_timeout = timeout;
        self
    }

    /// Idle policy. Default [`IdlePolicy::Park`].
    #[must_use]
    pub fn idle(mut self, idle: IdlePolicy) -> Self {
        self.config.idle = idle;
        self
    }

    /// Shortest timed wait of a parking shard. Default 0 (exact); 0..=1 s.
    #[must_use]
    pub fn min_park(mut self, d: Duration) -> Self {
        self.config.min_park = d;
        self
    }

    /// Prefault pool memory at start-up. Default true.
    #[must_use]
    pub fn prefault(mut self, prefault: bool) -> Self {
        self.config.prefault = prefault;
        self
    }

    /// The checked configuration.
    pub fn config(&self) -> Result<EngineConfig, EngineError> {
        let c = self.config.clone();
        let bad = |field: &'static str, value: String, reason: &str| EngineError::InvalidConfig {
            field,
            value,
            reason: reason.to_string(),
        };
        if !(1..=64).contains(&c.slots_per_shard) {
            return Err(bad("slots_per_shard", c.slots_per_shard.to_string(), "must be 1..=64"));
        }
        if !c.segment_bytes.is_power_of_two() || !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&c.segment_bytes) {
            return Err(bad(
                "segment_bytes",
                c.segment_bytes.to_string(),
                &format!("must be a power of two from {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES}"),
            ));
        }
        if c.network_memory_bytes / c.segment_bytes < 16 {
            return Err(bad(
                "network_memory_bytes",
                c.network_memory_bytes.to_string(),
                &format!("must hold at least 16 segments of {} bytes", c.segment_bytes),
            ));
        }
        if c.managed_memory_per_slot_bytes < 64 << 10 {
            return Err(bad(
                "managed_memory_per_slot_bytes",
                c.managed_memory_per_slot_bytes.to_string(),
                "must be at least 65536",
            ));
        }
        if !(1..=1024).contains(&c.exclusive_credits) {
            return Err(bad("exclusive_credits", c.exclusive_credits.to_string(), "must be 1..=1024"));
        }
        if c.floating_credits > 4096 {
            return Err(bad("floating_credits", c.floating_credits.to_string(), "must be 0..=4096"));
        }
        if c.min_park > Duration::from_secs(1) {
            return Err(bad("min_park", format!("{:?}", c.min_park), "must be at most 1 s"));
        }
        if let Cores::Count(0) = c.cores {
            return Err(bad("shards", "0".into(), "at least one shard"));
        }
        if let Cores::List(l) = &c.cores {
            if l.is_empty() {
                return Err(bad("cores", "[]".into(), "at least one core"));
            }
        }
        Ok(c)
    }

    /// The checked configuration and the named jobs.
    pub(crate) fn into_parts(self) -> Result<(EngineConfig, JobCatalog), EngineError> {
        Ok((self.config()?, self.jobs))
    }
}
