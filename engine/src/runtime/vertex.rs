//! A vertex's body as the task runs it: a source driving its chain, or one input
//! entry per incoming edge turning buffers into records of that edge's type and
//! calling the chain it feeds. The task is type-erased (buffers and events); each
//! body is typed, composed when the job is built.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use shardflow_netstack::{Buffer, NetError};
use smallvec::SmallVec;

use crate::data::Data;
use crate::error::EngineError;
use crate::runtime::build::{build_port, BuildContext, Port};
use crate::runtime::collector::Collector;
use crate::runtime::keyed::TwoInputFactory;
use crate::runtime::output::{any_overdrawn, Partition};
use crate::runtime::sources::SourceDriver;

/// Plain-data records handed down a chain per call (and per step of the task):
/// enough to amortize the call and the step, few enough that the task looks at
/// its outputs and timers often (the same as a source's batch).
const POD_CHUNK: usize = crate::runtime::sources::SOURCE_BATCH;
/// Variable-size records read per step.
const VAR_CHUNK: usize = 64;

/// Reads the records of one input edge's buffers into its chain.
pub(crate) trait InputEntry {
    /// Feeds one chunk of `buffer`'s records from `*cursor` on; `true` once the
    /// buffer is done.
    fn feed(&mut self, buffer: &Buffer, cursor: &mut usize) -> Result<bool, NetError>;
}

struct PodEntry<T: Data>(Box<dyn Collector<T>>);

impl<T: Data> InputEntry for PodEntry<T> {
    #[inline]
    fn feed(&mut self, buffer: &Buffer, cursor: &mut usize) -> Result<bool, NetError> {
        let records = T::slice(buffer)?.unwrap_or(&[]);
        let start = (*cursor).min(records.len());
        let end = (start + POD_CHUNK).min(records.len());
        self.0.collect_batch(&records[start..end]);
        *cursor = end;
        Ok(end == records.len())
    }
}

/// Variable-size records, read one by one: a chunk also ends once one of the
/// task's partitions waits for credits (large records do not pile up past
/// back-pressure).
struct VarEntry<T: Data> {
    next: Box<dyn Collector<T>>,
    partitions: Vec<Partition>,
}

impl<T: Data> InputEntry for VarEntry<T> {
    #[inline]
    fn feed(&mut self, buffer: &Buffer, cursor: &mut usize) -> Result<bool, NetError> {
        let VarEntry { next, partitions } = self;
        if let Some(each_in_place) = T::EACH_IN_PLACE.filter(|_| next.prefetches()) {
            // The chunk is read once and held: its records are announced (a
            // keyed table loads their slots meanwhile), then handed over.
            let mut chunk = SmallVec::<[(&T::Borrowed, usize, u64); VAR_CHUNK]>::new();
            let mut ahead = *cursor;
            each_in_place(buffer, &mut ahead, &mut |r, end| {
                let hint = next.prefetch(r);
                chunk.push((r, end, hint));
                chunk.len() < VAR_CHUNK
            })?;
            for (r, end, hint) in chunk {
                next.collect_prefetched(r, hint);
                *cursor = end;
                if any_overdrawn(partitions) {
                    break;
                }
            }
            return Ok(*cursor >= buffer.bytes());
        }
        let mut n = 0;
        T::each(buffer, cursor, &mut |r| {
            next.collect(r);
            n += 1;
            n < VAR_CHUNK && !any_overdrawn(partitions)
        })?;
        Ok(*cursor >= buffer.bytes())
    }
}

/// The entry reading records of type `T` into `next`, in a task writing to
/// `ctx`'s partitions.
pub(crate) fn entry<T: Data>(next: Box<dyn Collector<T>>, ctx: &BuildContext<'_>) -> Box<dyn InputEntry> {
    if T::POD {
        Box::new(PodEntry(next))
    } else {
        Box::new(VarEntry { next, partitions: ctx.all_partitions() })
    }
}

/// A chain several input edges feed (a union): built once per subtask, shared.
struct SharedRoot<T: Data>(Rc<RefCell<Box<dyn Collector<T>>>>);

impl<T: Data> Collector<T> for SharedRoot<T> {
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        self.0.borrow_mut().collect(record);
    }
    fn prefetches(&self) -> bool {
        self.0.borrow().prefetches()
    }
    #[inline]
    fn prefetch(&mut self, record: &T::Borrowed) -> u64 {
        self.0.borrow_mut().prefetch(record)
    }
    #[inline]
    fn collect_prefetched(&mut self, record: &T::Borrowed, hint: u64) {
        self.0.borrow_mut().collect_prefetched(record, hint);
    }
    #[inline]
    fn collect_batch(&mut self, records: &[T]) {
        self.0.borrow_mut().collect_batch(records);
    }
}

/// What a subtask's entries have built, by the plan's node key, so entries that
/// share a chain (a union, both sides of a two-input operator) share it.
#[derive(Default)]
pub(crate) struct Roots(HashMap<usize, Box<dyn Any>>);

/// Builds the entry of one input edge.
pub(crate) trait EntryFactory: Send + Sync {
    fn build(&self, ctx: &mut BuildContext<'_>, roots: &mut Roots) -> Result<Box<dyn InputEntry>, EngineError>;
}

/// An edge feeding the consumers of `port` (shared by every edge with `key`).
pub(crate) struct PortEntry<T: Data> {
    pub(crate) port: Port<T>,
    pub(crate) key: usize,
}

impl<T: Data> EntryFactory for PortEntry<T> {
    fn build(&self, ctx: &mut BuildContext<'_>, roots: &mut Roots) -> Result<Box<dyn InputEntry>, EngineError> {
        let root = match roots.0.get(&self.key).and_then(|r| r.downcast_ref::<Rc<RefCell<Box<dyn Collector<T>>>>>()) {
            Some(r) => r.clone(),
            None => {
                let r = Rc::new(RefCell::new(build_port(&self.port, ctx)?));
                roots.0.insert(self.key, Box::new(r.clone()));
                r
            }
        };
        Ok(entry::<T>(Box::new(SharedRoot(root)), ctx))
    }
}

/// One side of a two-input operator.
pub(crate) struct SideEntry<A: Data, B: Data> {
    pub(crate) op: Arc<dyn TwoInputFactory<A, B>>,
    pub(crate) key: usize,
    pub(crate) first: bool,
}

type Sides<A, B> = (Option<Box<dyn Collector<A>>>, Option<Box<dyn Collector<B>>>);

impl<A: Data, B: Data> EntryFactory for SideEntry<A, B> {
    fn build(&self, ctx: &mut BuildContext<'_>, roots: &mut Roots) -> Result<Box<dyn InputEntry>, EngineError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = roots.0.entry(self.key) {
            let (a, b) = self.op.build(ctx)?;
            let sides: Sides<A, B> = (Some(a), Some(b));
            slot.insert(Box::new(sides));
        }
        let sides = roots.0.get_mut(&self.key).and_then(|s| s.downcast_mut::<Sides<A, B>>());
        let taken = sides.and_then(|(a, b)| {
            if self.first {
                a.take().map(|a| entry::<A>(a, ctx))
            } else {
                b.take().map(|b| entry::<B>(b, ctx))
            }
        });
        taken.ok_or_else(|| EngineError::InvalidDeployment {
            reason: "one side of a two-input operator is fed by two edges".into(),
        })
    }
}

/// Builds a source vertex's driver (its chain first).
pub(crate) trait SourceFactory: Send + Sync {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn SourceDriver>, EngineError>;
}

/// A vertex's body as the job builder planned it.
#[derive(Clone)]
pub(crate) enum VertexPlan {
    /// A source and its chain.
    Source(Arc<dyn SourceFactory>),
    /// One entry per incoming edge (graph edge index).
    Inputs(Vec<(usize, Arc<dyn EntryFactory>)>),
}

/// A vertex's body, built on its task's shard.
pub(crate) enum VertexBody {
    Source(Box<dyn SourceDriver>),
    /// Entries by input edge, in the deployment's gate order.
    Inputs(Vec<Box<dyn InputEntry>>),
}

impl VertexPlan {
    pub(crate) fn is_source(&self) -> bool {
        matches!(self, VertexPlan::Source(_))
    }

    /// Builds the body for a task whose gates read `edges`, in that order.
    pub(crate) fn build(&self, ctx: &mut BuildContext<'_>, edges: &[usize]) -> Result<VertexBody, EngineError> {
        match self {
            VertexPlan::Source(s) => {
                if !edges.is_empty() {
                    return Err(EngineError::InvalidDeployment { reason: "a source vertex has no inputs".into() });
                }
                Ok(VertexBody::Source(s.build(ctx)?))
            }
            VertexPlan::Inputs(entries) => {
                let mut roots = Roots::default();
                let mut built = Vec::with_capacity(edges.len());
                for edge in edges {
                    let Some((_, f)) = entries.iter().find(|(e, _)| e == edge) else {
                        return Err(EngineError::InvalidDeployment {
                            reason: format!("the vertex has no input on edge {edge}"),
                        });
                    };
                    built.push(f.build(ctx, &mut roots)?);
                }
                if built.len() != entries.len() {
                    return Err(EngineError::InvalidDeployment {
                        reason: format!("{} input edges deployed, the vertex has {}", built.len(), entries.len()),
                    });
                }
                Ok(VertexBody::Inputs(built))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::task::{Context, Waker};

    use shardflow_memory::SegmentPoolBuilder;
    use shardflow_netstack::{channel, ResultPartition};

    use super::*;
    use crate::data::testing::buffer_of;

    /// Announces every word and hands it over; at the word `overdraw_at` it
    /// fills the partition past its overdraft, as a consumer out of credits
    /// would leave it.
    struct Words {
        announced: HashSet<String>,
        handed: Rc<RefCell<Vec<String>>>,
        partition: Partition,
        overdraw_at: &'static str,
    }

    impl Collector<String> for Words {
        fn collect(&mut self, word: &str) {
            assert!(self.announced.contains(word), "{word} was announced before it was handed over");
            self.handed.borrow_mut().push(word.to_owned());
            if word == self.overdraw_at {
                let mut p = self.partition.borrow_mut();
                for i in 0..2u64 {
                    p.write_pod(0, &i).expect("written");
                    p.flush();
                }
                assert!(p.overdrawn(), "two buffers wait, one may");
            }
        }
        fn prefetches(&self) -> bool {
            true
        }
        fn prefetch(&mut self, word: &str) -> u64 {
            self.announced.insert(word.to_owned());
            word.len() as u64
        }
        fn collect_prefetched(&mut self, word: &str, hint: u64) {
            assert_eq!(hint, word.len() as u64, "{word} comes with its own announcement's hint");
            self.collect(word);
        }
    }

    /// A chunk is read once and held: its records are announced, then handed
    /// over one by one, and a partition that runs out of credits part-way
    /// ends the step right after the record that filled it; the next step
    /// goes on from the record after it, so each is handed over once, in order.
    #[test]
    fn a_held_chunk_stops_where_an_output_runs_out_of_credits_and_goes_on_from_there() {
        let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        let archived: Vec<Vec<u8>> =
            words.iter().map(|w| rkyv::to_bytes::<rkyv::rancor::Error>(w).expect("archived").to_vec()).collect();
        let buffer = buffer_of(&archived, 4);
        let pool = Rc::new(SegmentPoolBuilder::new(0, 4).segment_bytes(4096).populate(false).build().expect("pool"));
        let (tx, rx) = channel(0, 4, 1);
        let partition: Partition = Rc::new(RefCell::new(ResultPartition::new(pool, vec![tx], 1)));
        let handed = Rc::new(RefCell::new(Vec::new()));
        let next = Words {
            announced: HashSet::new(),
            handed: handed.clone(),
            partition: partition.clone(),
            overdraw_at: "w100",
        };
        let mut entry = VarEntry::<String> { next: Box::new(next), partitions: vec![partition.clone()] };

        let mut cursor = 0;
        let mut steps = Vec::new();
        loop {
            let done = entry.feed(&buffer, &mut cursor).expect("well-formed records");
            steps.push(handed.borrow().len());
            if done {
                break;
            }
            if partition.borrow().overdrawn() {
                // The consumer grants credits: what waits leaves.
                rx.grant(4);
                let ready = partition.borrow_mut().poll_ready(&mut Context::from_waker(Waker::noop()));
                assert!(ready.is_ready() && !partition.borrow().overdrawn());
            }
        }
        assert_eq!(steps, [64, 101, 165, 200], "records handed over after each step");
        assert_eq!(*handed.borrow(), words, "each once, in order");
    }
}
