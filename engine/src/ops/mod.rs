//! Built-in operators and the specs that name them.
//!
//! | name | kind | config |
//! |---|---|---|
//! | `generator` | source | `records`, `keys` (`golden` \| `index` \| `mul_mod`, with `mul`, `modulus`), `values` (`index` \| `one`), `batch` |
//! | `paced-generator` | source | `rate` (records/s, all subtasks), `duration_ms`, `start_offset_ms` |
//! | `map.add` | map | `add`: value += add (wrapping) |
//! | `filter.value_mod` | filter | keeps records with `value % modulus != drop` |
//! | `flat_map.repeat` | flat_map | `times` (≤ 1 024): emits (key, value + i) for i in 0..times |
//! | `key_by.value_mod` | key_by | key = value % `modulus` |
//! | `keyed.count` | keyed process | per-key count in value state; at end emits (key, count) |
//! | `keyed.sum` | keyed process | per-key wrapping sum of values; at end emits (key, sum) |
//! | `sink.discard` | sink | — |
//! | `sink.count` | sink | result: record count and wrapping value sum |
//! | `sink.collect` | sink | `collector`: streams batches to a [`crate::CollectHandle`] |
//! | `sink.latency` | sink | result: HDR histogram of `now − record.time` (ns) |
//! | `sink.slow` | sink | `work`: busy iterations per record (back-pressure tests) |

mod keyed;
mod sink;
mod source;
mod transform;

use shardflow_control::OperatorSpec;

use crate::record::OpConfig;
use crate::registry::OperatorRegistry;

pub use keyed::{KeyedProcess, KeyedProcessFunction};
pub use source::{KeyGen, ValueGen, GOLDEN};

impl OperatorRegistry {
    /// A registry holding the built-in operators (the table above).
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        source::register(&mut r);
        transform::register(&mut r);
        keyed::register(&mut r);
        sink::register(&mut r);
        r
    }
}

fn spec(name: &str, cfg: OpConfig) -> OperatorSpec {
    OperatorSpec::new(name, cfg.to_bytes())
}

/// A source emitting records `0..records` (split evenly among subtasks).
pub fn generator(records: u64, keys: KeyGen, values: ValueGen) -> OperatorSpec {
    let cfg = keys.to_config(OpConfig::new().with("records", records));
    spec("generator", values.to_config(cfg))
}

/// A source paced to `rate` records/s in total for `duration_ms`; record r is due at
/// `start + r / rate` and carries that time, so generator lag counts as latency.
pub fn paced_generator(rate: u64, duration_ms: u64) -> OperatorSpec {
    spec("paced-generator", OpConfig::new().with("rate", rate).with("duration_ms", duration_ms))
}

/// value += `add`.
pub fn map_add(add: u64) -> OperatorSpec {
    spec("map.add", OpConfig::new().with("add", add))
}

/// Drops records with `value % modulus == drop`.
pub fn filter_value_mod(modulus: u64, drop: u64) -> OperatorSpec {
    spec("filter.value_mod", OpConfig::new().with("modulus", modulus).with("drop", drop))
}

/// Emits `times` records per input: (key, value + i).
pub fn flat_map_repeat(times: u64) -> OperatorSpec {
    spec("flat_map.repeat", OpConfig::new().with("times", times))
}

/// key = value % `modulus`.
pub fn key_by_value_mod(modulus: u64) -> OperatorSpec {
    spec("key_by.value_mod", OpConfig::new().with("modulus", modulus))
}

/// Per-key count, emitted at end of input.
pub fn keyed_count() -> OperatorSpec {
    spec("keyed.count", OpConfig::new())
}

/// Per-key sum of values, emitted at end of input.
pub fn keyed_sum() -> OperatorSpec {
    spec("keyed.sum", OpConfig::new())
}

/// Drops every record.
pub fn discard_sink() -> OperatorSpec {
    spec("sink.discard", OpConfig::new())
}

/// Counts records and sums values.
pub fn count_sink() -> OperatorSpec {
    spec("sink.count", OpConfig::new())
}

/// Streams records to the collector `name` of the job.
pub fn collect_sink(name: &str) -> OperatorSpec {
    spec("sink.collect", OpConfig::new().with("collector", name))
}

/// A collect sink feeding the collector registered as `key`, called `label` in
/// messages (the embedded engine registers a job's collectors under names unique
/// to the submission).
pub(crate) fn collect_sink_as(key: &str, label: &str) -> OperatorSpec {
    spec("sink.collect", OpConfig::new().with("collector", key).with("label", label))
}

/// Records `now − time` of each record into a histogram.
pub fn latency_sink() -> OperatorSpec {
    spec("sink.latency", OpConfig::new())
}

/// Counts records after `work` busy iterations each.
pub fn slow_sink(work: u64) -> OperatorSpec {
    spec("sink.slow", OpConfig::new().with("work", work))
}
