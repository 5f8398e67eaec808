//! Named jobs: the benchmark pipelines and a few more, built from parameters, so
//! that `shardflow bench` runs them embedded and `shardflow submit <name>` runs the
//! same graphs on a cluster.

use std::collections::BTreeMap;

use shardflow_control::{OperatorSpec, PartitionerKind};

use crate::error::EngineError;
use crate::job::{Job, JobBuilder};
use crate::ops;

/// P2's key space.
pub const P2_KEYS: u64 = 100_000;
/// P2's key multiplier.
pub const P2_MUL: u64 = 2_654_435_761;

/// Every named job with its parameters.
pub const NAMED_JOBS: &[(&str, &str)] = &[
    ("exchange", "P1: generator -> hash exchange -> count sink; records=N (default 100000000)"),
    ("keyed-sum", "P2: generator -> hash exchange -> keyed count -> count sink; records=N (default 100000000)"),
    ("latency", "P4: paced generator -> map +1 -> hash exchange -> latency sink; rate=R duration_ms=D"),
    (
        "forward-count",
        "generator -> forward -> map +1 -> count sink, data stays with each subtask; records=N, or rate=R with duration_ms=D",
    ),
];

/// P1.
pub fn exchange(n: u64, p: u32) -> Job {
    JobBuilder::new("exchange")
        .source("source", ops::generator(n, ops::KeyGen::Golden, ops::ValueGen::Index), p)
        .connect(PartitionerKind::Hash, "sink", p)
        .then(ops::count_sink())
        .build()
}

/// P2.
pub fn keyed_sum(n: u64, p: u32) -> Job {
    JobBuilder::new("keyed-sum")
        .source(
            "source",
            ops::generator(n, ops::KeyGen::MulMod { mul: P2_MUL, modulus: P2_KEYS }, ops::ValueGen::One),
            p,
        )
        .connect(PartitionerKind::Hash, "keyed-count", p)
        .then(ops::keyed_count())
        .then(ops::count_sink())
        .build()
}

/// P4.
pub fn latency(rate: u64, duration_ms: u64, p: u32) -> Job {
    JobBuilder::new("latency")
        .source("source", ops::paced_generator(rate, duration_ms), p)
        .then(ops::map_add(1))
        .connect(PartitionerKind::Hash, "sink", p)
        .then(ops::latency_sink())
        .build()
}

/// Source → forward → map +1 → count sink: each source subtask feeds the sink
/// subtask of the same index, so with slot sharing its data never leaves the slot.
pub fn forward_count(source: OperatorSpec, p: u32) -> Job {
    JobBuilder::new("forward-count")
        .source("source", source, p)
        .connect(PartitionerKind::Forward, "count", p)
        .then(ops::map_add(1))
        .then(ops::count_sink())
        .build()
}

/// The named job `name` with `params`, every vertex at `parallelism`.
pub fn named_job(name: &str, params: &BTreeMap<String, String>, parallelism: u32) -> Result<Job, EngineError> {
    let bad = |reason: String| EngineError::NamedJob { job: name.to_string(), reason };
    let known: &[&str] = match name {
        "exchange" | "keyed-sum" => &["records"],
        "latency" => &["rate", "duration_ms"],
        "forward-count" => &["records", "rate", "duration_ms"],
        _ => {
            let names: Vec<&str> = NAMED_JOBS.iter().map(|(n, _)| *n).collect();
            return Err(bad(format!("no such job (known: {})", names.join(", "))));
        }
    };
    if let Some(k) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad(format!("unknown parameter '{k}' (known: {})", known.join(", "))));
    }
    let num = |k: &str, default: u64| -> Result<u64, EngineError> {
        params.get(k).map_or(Ok(default), |v| {
            v.replace('_', "").parse::<u64>().map_err(|e| bad(format!("parameter {k}='{v}': {e}")))
        })
    };
    if parallelism == 0 {
        return Err(bad("parallelism must be at least 1".into()));
    }
    Ok(match name {
        "exchange" => exchange(num("records", 100_000_000)?, parallelism),
        "keyed-sum" => keyed_sum(num("records", 100_000_000)?, parallelism),
        "latency" => latency(num("rate", 200_000)?, num("duration_ms", 10_000)?, parallelism),
        _ => {
            let has = |k: &str| params.contains_key(k);
            let source = match (has("records"), has("rate"), has("duration_ms")) {
                (_, false, false) => {
                    ops::generator(num("records", 1_000_000)?, ops::KeyGen::Golden, ops::ValueGen::Index)
                }
                (false, true, true) => ops::paced_generator(num("rate", 0)?, num("duration_ms", 0)?),
                (true, _, _) => return Err(bad("give records=N, or rate=R with duration_ms=D, not both".into())),
                (false, true, false) => return Err(bad("rate=R paces the source for duration_ms=D: give both".into())),
                (false, false, true) => return Err(bad("duration_ms=D needs the rate=R to pace at: give both".into())),
            };
            forward_count(source, parallelism)
        }
    })
}
