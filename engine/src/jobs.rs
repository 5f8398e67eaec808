//! Named jobs: the benchmark pipelines and a few more, written with the typed
//! API and built from parameters, so that `shardflow bench` runs them embedded
//! and `shardflow submit <name>` runs the same plans on a cluster.

use std::task::Context;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};

use crate::api::Dataflow;
use crate::api::Job;
use crate::error::{EngineError, OperatorError};
use crate::registry::{JobCatalog, JobParams};
use crate::runtime::collector::{Emitter, TaskInfo};
use crate::runtime::sources::{Source, SourceOutput, SourceStatus};

/// The golden-ratio multiplier of the benchmark pipelines.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// P2's key space.
pub const P2_KEYS: u64 = 100_000;
/// P2's and P8's key multiplier.
pub const P2_MUL: u64 = 2_654_435_761;
/// P8's vocabulary.
pub const P8_WORDS: u64 = 100_000;
/// Words per line in P8.
pub const P8_WORDS_PER_LINE: u64 = 8;

/// The record of P1, P2 and P4: a key and a value (16 bytes of plain data).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct KeyValue {
    /// The key.
    pub key: u64,
    /// The value.
    pub value: u64,
}
crate::pod_data!(KeyValue);

/// P4's record: a key, a value and its scheduled time (ns since the job's start).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct Timed {
    /// The key.
    pub key: u64,
    /// The value.
    pub value: u64,
    /// When the record was due, in ns since the job's start instant.
    pub time: u64,
}
crate::pod_data!(Timed);

/// Every named job with its parameters.
pub const NAMED_JOBS: &[(&str, &str)] = &[
    ("exchange", "P1: generator -> hash exchange -> count sink; records=N (default 100000000)"),
    ("keyed-sum", "P2: generator -> hash exchange -> keyed count -> count sink; records=N (default 100000000)"),
    ("latency", "P4: paced generator -> map +1 -> hash exchange -> latency sink; rate=R duration_ms=D"),
    ("wordcount", "P8: lines -> split -> key by word -> count -> count sink; lines=N (default 10000000)"),
    (
        "local-count",
        "generator -> map +1 -> count sink in one vertex (no exchange); records=N, or rate=R with duration_ms=D",
    ),
    (
        "forward-count",
        "generator -> forward -> map +1 -> count sink, data stays with each subtask; records=N, or rate=R with duration_ms=D",
    ),
];

/// P1: (r·GOLDEN, r) exchanged by hash of the key, counted and summed.
pub fn exchange(n: u64, p: u32) -> Result<Job, EngineError> {
    let df = Dataflow::new("exchange").parallelism(p);
    df.generate("source", n, |r| KeyValue { key: r.wrapping_mul(GOLDEN), value: r })
        .key_by(|r: &KeyValue| r.key)
        .as_stream()
        .count_and_sum(|r: &KeyValue| r.value)
        .name("sink");
    df.build()
}

/// P2: keys (r·2654435761) mod 100 000 counted per key; each key's count once at
/// the end.
pub fn keyed_sum(n: u64, p: u32) -> Result<Job, EngineError> {
    let df = Dataflow::new("keyed-sum").parallelism(p);
    df.generate("source", n, |r| KeyValue { key: r.wrapping_mul(P2_MUL) % P2_KEYS, value: 1 })
        .key_by(|r: &KeyValue| r.key)
        .count_final()
        .name("keyed-count")
        .count_and_sum(|(_, n): &(u64, u64)| *n);
    df.build()
}

/// P4: a source paced to `rate` records/s for `duration_ms`, map +1, exchange by
/// key, latency sink.
pub fn latency(rate: u64, duration_ms: u64, p: u32) -> Result<Job, EngineError> {
    let df = Dataflow::new("latency").parallelism(p);
    df.source("source", move |_: &TaskInfo| Paced::new(rate, duration_ms))
        .map(|r: &Timed| Timed { value: r.value.wrapping_add(1), ..*r })
        .key_by(|r: &Timed| r.key)
        .as_stream()
        .latency(|r: &Timed| r.time)
        .name("sink");
    df.build()
}

/// P8: lines of 8 words; split, keyed by the word itself, counted; each word's
/// count once at the end. Words are read in place; a word's `String` is made
/// only at its first occurrence.
pub fn wordcount(lines: u64, p: u32) -> Result<Job, EngineError> {
    let df = Dataflow::new("wordcount").parallelism(p);
    df.source("lines", move |_: &TaskInfo| Lines::new(lines))
        .flat_map(|line: &str, out: &mut Emitter<'_, String>| {
            for word in line.split(' ') {
                out.emit_ref(word);
            }
        })
        .name("split")
        .key_by_ref::<String, _>(|w: &str| w)
        .count_final()
        .name("count")
        .count_and_sum(|(_, n): &(String, u64)| *n);
    df.build()
}

/// Source → forward → map +1 → count sink: each source subtask feeds the count
/// subtask of the same index (`forward`: true), or the whole chain runs in the
/// source's vertex.
pub fn forward_count(source: Stream2, p: u32, forward: bool) -> Result<Job, EngineError> {
    let df = Dataflow::new(if forward { "forward-count" } else { "local-count" }).parallelism(p);
    let mut s = match source {
        Stream2::Records(n) => df.generate("source", n, |r| Timed { key: r.wrapping_mul(GOLDEN), value: r, time: 0 }),
        Stream2::Paced { rate, duration_ms } => df.source("source", move |_: &TaskInfo| Paced::new(rate, duration_ms)),
    };
    if forward {
        s = s.forward();
    }
    s.map(|r: &Timed| Timed { value: r.value.wrapping_add(1), ..*r }).name("count").count_and_sum(|r: &Timed| r.value);
    df.build()
}

/// The source of [`forward_count`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream2 {
    /// Records `0..n` as fast as possible.
    Records(u64),
    /// Paced to `rate` records/s for `duration_ms`.
    Paced {
        /// Records per second, all subtasks together.
        rate: u64,
        /// How long.
        duration_ms: u64,
    },
}

/// Paced generator: subtask i owns records r ≡ i (mod parallelism); record r is
/// due at `start + r · 1e9 / rate` ns and carries that due time, so generator lag
/// counts as latency (no coordinated omission).
struct Paced {
    rate: u64,
    total: u64,
    start: Option<Instant>,
    next: u64,
    step: u64,
}

impl Paced {
    fn new(rate: u64, duration_ms: u64) -> Self {
        let total = (u128::from(rate) * u128::from(duration_ms) / 1000) as u64;
        Paced { rate: rate.max(1), total, start: None, next: 0, step: 1 }
    }

    fn due_ns(&self, r: u64) -> u64 {
        (u128::from(r) * 1_000_000_000 / u128::from(self.rate)) as u64
    }
}

impl Source<Timed> for Paced {
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        self.start = Some(task.job_start);
        self.next = u64::from(task.subtask);
        self.step = u64::from(task.parallelism.max(1));
        Ok(())
    }

    fn poll_next(
        &mut self,
        _: &mut Context<'_>,
        out: &mut SourceOutput<'_, Timed>,
    ) -> Result<SourceStatus, OperatorError> {
        let Some(start) = self.start else {
            return Err(OperatorError::User("paced source polled before open".into()));
        };
        let now_ns = start.elapsed().as_nanos() as u64;
        while self.next < self.total && !out.is_full() {
            let due = self.due_ns(self.next);
            if due > now_ns {
                break;
            }
            let r = self.next;
            out.push(Timed { key: r.wrapping_mul(GOLDEN), value: r, time: due });
            self.next += self.step;
        }
        if !out.is_empty() {
            Ok(SourceStatus::Emitted)
        } else if self.next >= self.total {
            Ok(SourceStatus::Finished)
        } else {
            Ok(SourceStatus::IdleUntil(start + Duration::from_nanos(self.due_ns(self.next))))
        }
    }
}

/// P8's word `w`: `w` followed by w in decimal.
pub fn p8_word(w: u64) -> String {
    format!("w{w}")
}

/// P8's lines: subtask i of p emits lines r = i, i+p, … < n, each of 8 words
/// joined by single spaces, word j of line r being word ((8r + j)·2654435761)
/// mod 100 000. Built into one reused buffer: no allocation per line.
struct Lines {
    n: u64,
    next: u64,
    step: u64,
    vocabulary: Vec<String>,
    line: String,
}

impl Lines {
    fn new(n: u64) -> Self {
        Lines { n, next: 0, step: 1, vocabulary: Vec::new(), line: String::new() }
    }
}

impl Source<String> for Lines {
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        self.next = u64::from(task.subtask);
        self.step = u64::from(task.parallelism.max(1));
        self.vocabulary = (0..P8_WORDS).map(p8_word).collect();
        Ok(())
    }

    fn poll_next(
        &mut self,
        _: &mut Context<'_>,
        out: &mut SourceOutput<'_, String>,
    ) -> Result<SourceStatus, OperatorError> {
        if self.next >= self.n {
            return Ok(SourceStatus::Finished);
        }
        while self.next < self.n && out.len() < 256 && !out.is_full() {
            self.line.clear();
            for j in 0..P8_WORDS_PER_LINE {
                let w = ((P8_WORDS_PER_LINE * self.next + j).wrapping_mul(P2_MUL) % P8_WORDS) as usize;
                if j > 0 {
                    self.line.push(' ');
                }
                self.line.push_str(&self.vocabulary[w]);
            }
            out.push_ref(&self.line);
            self.next += self.step;
        }
        Ok(SourceStatus::Emitted)
    }
}

/// The catalog of the named jobs.
pub fn catalog() -> JobCatalog {
    let mut c = JobCatalog::new();
    for (name, help) in NAMED_JOBS {
        c.register(name, help, move |p| build_named(name, p));
    }
    c
}

fn build_named(name: &str, p: &JobParams) -> Result<Job, EngineError> {
    let parallelism = p.parallelism();
    match name {
        "exchange" => {
            p.only(&["records"])?;
            exchange(p.u64_or("records", 100_000_000)?, parallelism)
        }
        "keyed-sum" => {
            p.only(&["records"])?;
            keyed_sum(p.u64_or("records", 100_000_000)?, parallelism)
        }
        "latency" => {
            p.only(&["rate", "duration_ms"])?;
            latency(p.u64_or("rate", 200_000)?, p.u64_or("duration_ms", 10_000)?, parallelism)
        }
        "wordcount" => {
            p.only(&["lines"])?;
            wordcount(p.u64_or("lines", 10_000_000)?, parallelism)
        }
        _ => {
            p.only(&["records", "rate", "duration_ms"])?;
            let source = match (p.has("records"), p.has("rate"), p.has("duration_ms")) {
                (_, false, false) => Stream2::Records(p.u64_or("records", 1_000_000)?),
                (false, true, true) => {
                    Stream2::Paced { rate: p.u64_or("rate", 0)?, duration_ms: p.u64_or("duration_ms", 0)? }
                }
                (true, _, _) => return Err(p.error("give records=N, or rate=R with duration_ms=D, not both".into())),
                (false, true, false) => {
                    return Err(p.error("rate=R paces the source for duration_ms=D: give both".into()))
                }
                (false, false, true) => {
                    return Err(p.error("duration_ms=D needs the rate=R to pace at: give both".into()))
                }
            };
            forward_count(source, parallelism, name == "forward-count")
        }
    }
}

/// The named job `name` with `params`, every vertex at `parallelism`.
pub fn named_job(
    name: &str,
    params: &std::collections::BTreeMap<String, String>,
    parallelism: u32,
) -> Result<Job, EngineError> {
    catalog().build(name, params, parallelism)
}
