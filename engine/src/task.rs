//! The task runtime: one subtask running on its shard. It pulls buffers from its
//! input gate (or polls its source), runs records through its operator chain by
//! direct calls, and writes the chain's output into its result partitions.
//!
//! Flushing: a buffer leaves when full, when the task has drained its input (so
//! latency is low at no throughput cost), before an event, or after the flush
//! timeout.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardflow_control::{AttemptId, JobId, OperatorSpec, PartitionerKind};
use shardflow_memory::SegmentPool;
use shardflow_netstack::{
    ChannelReceiver, ChannelSender, CheckpointBarrier, CreditLedger, Event, GateItem, InputGate, NetError,
    PartitionWriter, Partitioner,
};

use crate::config::IdlePolicy;
use crate::error::{EngineError, OperatorError};
use crate::operator::{ChainHead, Operator, SinkOutput, SourceOperator, SourceStatus, TaskInfo};
use crate::record::Record;
use crate::registry::{JobResources, OperatorRegistry};

/// Records a source appends per poll at most.
const SOURCE_BATCH: usize = 1024;
/// Input buffers processed between voluntary yields.
const BUFFERS_PER_YIELD: u32 = 16;

/// The netstack partitioner of an edge's partitioner kind.
pub(crate) fn partitioner(kind: PartitionerKind) -> Partitioner {
    match kind {
        PartitionerKind::Forward => Partitioner::Forward,
        PartitionerKind::Hash => Partitioner::Hash,
        PartitionerKind::Rebalance => Partitioner::Rebalance,
        PartitionerKind::Broadcast => Partitioner::Broadcast,
    }
}

/// One output of a task: a result partition for one outgoing edge.
pub(crate) struct OutputDeployment {
    pub(crate) partitioner: Partitioner,
    pub(crate) senders: Vec<ChannelSender>,
}

/// Everything a shard needs to run one subtask (a task deployment descriptor).
/// `Send`: built by the worker, moved to the shard, turned into `!Send`
/// operators and gates there.
pub(crate) struct TaskDeployment {
    pub(crate) job: JobId,
    pub(crate) attempt: AttemptId,
    pub(crate) info: TaskInfo,
    pub(crate) chain: Vec<OperatorSpec>,
    pub(crate) inputs: Vec<ChannelReceiver>,
    pub(crate) exclusive_credits: u32,
    pub(crate) floating_credits: u32,
    pub(crate) outputs: Vec<OutputDeployment>,
    pub(crate) registry: Arc<OperatorRegistry>,
    pub(crate) resources: Arc<JobResources>,
    pub(crate) flush_timeout: Option<Duration>,
    pub(crate) idle: IdlePolicy,
    pub(crate) min_park: Duration,
    /// Records produced by the job's sources so far (shared by the job's tasks).
    pub(crate) progress: Arc<AtomicU64>,
}

/// What a finished task reports.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskOutput {
    pub(crate) sinks: Vec<SinkOutput>,
    pub(crate) records_in: u64,
    pub(crate) records_out: u64,
}

/// Why a task failed. `secondary` marks failures caused by a peer going away (the
/// root cause is reported by that peer).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskFailure {
    pub(crate) cause: String,
    pub(crate) secondary: bool,
}

impl From<OperatorError> for TaskFailure {
    fn from(e: OperatorError) -> Self {
        let secondary = matches!(e, OperatorError::Net(NetError::ConsumerGone { .. } | NetError::ProducerLost { .. }));
        TaskFailure { cause: e.to_string(), secondary }
    }
}

impl From<NetError> for TaskFailure {
    fn from(e: NetError) -> Self {
        OperatorError::Net(e).into()
    }
}

impl From<EngineError> for TaskFailure {
    fn from(e: EngineError) -> Self {
        TaskFailure { cause: e.to_string(), secondary: false }
    }
}

/// The operators after the head, with one reusable output buffer each.
struct Chain {
    ops: Vec<Box<dyn Operator>>,
    bufs: Vec<Vec<Record>>,
}

impl Chain {
    fn new(ops: Vec<Box<dyn Operator>>) -> Self {
        let bufs = ops.iter().map(|_| Vec::with_capacity(SOURCE_BATCH)).collect();
        Chain { ops, bufs }
    }

    /// Runs `input` through `ops[from..]`; the result is `self.output(from, input)`.
    fn run(&mut self, from: usize, input: &[Record]) -> Result<(), OperatorError> {
        for k in from..self.ops.len() {
            let (before, after) = self.bufs.split_at_mut(k);
            let out = &mut after[0];
            out.clear();
            let src: &[Record] = if k == from { input } else { &before[k - 1] };
            self.ops[k].process_batch(src, out)?;
        }
        Ok(())
    }

    fn output<'a>(&'a self, from: usize, input: &'a [Record]) -> &'a [Record] {
        if self.ops.len() > from {
            &self.bufs[self.ops.len() - 1]
        } else {
            input
        }
    }
}

/// Event-time and barrier progress over the channels of one input gate. A
/// watermark moves on when the slowest live channel's does; a barrier is forwarded
/// once every live channel has delivered it (alignment and snapshots come with the
/// checkpoint coordinator). A channel that has ended holds back neither.
struct ChannelProgress {
    watermarks: Vec<u64>,
    barriers: Vec<u64>,
    ended: Vec<bool>,
    emitted_watermark: u64,
    /// The newest barrier seen and not yet forwarded.
    pending: Option<CheckpointBarrier>,
    /// The newest checkpoint id forwarded.
    forwarded: u64,
}

impl ChannelProgress {
    fn new(channels: usize) -> Self {
        ChannelProgress {
            watermarks: vec![0; channels],
            barriers: vec![0; channels],
            ended: vec![false; channels],
            emitted_watermark: 0,
            pending: None,
            forwarded: 0,
        }
    }

    /// Applies `event` from `channel`; returns the watermark and the barrier to
    /// forward, if any.
    fn on_event(&mut self, channel: usize, event: Event) -> (Option<u64>, Option<CheckpointBarrier>) {
        match event {
            Event::Watermark(w) => self.watermarks[channel] = self.watermarks[channel].max(w),
            Event::Barrier(b) => {
                self.barriers[channel] = self.barriers[channel].max(b.checkpoint_id);
                let newer = self.pending.map_or(self.forwarded, |p| p.checkpoint_id);
                if b.checkpoint_id > newer {
                    self.pending = Some(b);
                }
            }
            Event::EndOfPartition => self.ended[channel] = true,
        }
        (self.advance_watermark(), self.complete_barrier())
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.ended.len()).filter(|&c| !self.ended[c])
    }

    fn advance_watermark(&mut self) -> Option<u64> {
        let min = self.live().map(|c| self.watermarks[c]).min()?;
        (min > self.emitted_watermark).then(|| {
            self.emitted_watermark = min;
            min
        })
    }

    fn complete_barrier(&mut self) -> Option<CheckpointBarrier> {
        let b = self.pending?;
        if self.live().all(|c| self.barriers[c] >= b.checkpoint_id) {
            self.pending = None;
            self.forwarded = b.checkpoint_id;
            Some(b)
        } else {
            None
        }
    }
}

/// Lets each operator of the chain emit in turn (`step`: end of input, a
/// watermark, …); what operator `k` emits flows through operators `k+1..` and on to
/// the writers.
async fn cascade(
    chain: &mut Chain,
    writers: &mut [PartitionWriter<Record>],
    mut step: impl FnMut(&mut dyn Operator, &mut Vec<Record>) -> Result<(), OperatorError>,
) -> Result<(), TaskFailure> {
    for k in 0..chain.ops.len() {
        let mut emitted = std::mem::take(&mut chain.bufs[k]);
        emitted.clear();
        step(chain.ops[k].as_mut(), &mut emitted)?;
        chain.run(k + 1, &emitted)?;
        emit(writers, chain.output(k + 1, &emitted)).await?;
        chain.bufs[k] = emitted;
    }
    Ok(())
}

/// Sends partial buffers older than the flush timeout.
async fn flush_due(writers: &mut [PartitionWriter<Record>]) -> Result<(), NetError> {
    let now = Instant::now();
    for w in writers.iter_mut() {
        w.flush_if_due(now).await?;
    }
    Ok(())
}

/// Routes a batch to every output.
async fn emit(writers: &mut [PartitionWriter<Record>], records: &[Record]) -> Result<(), NetError> {
    if records.is_empty() {
        return Ok(());
    }
    for w in writers.iter_mut() {
        w.emit(records).await?;
    }
    Ok(())
}

async fn flush(writers: &mut [PartitionWriter<Record>]) -> Result<(), NetError> {
    for w in writers.iter_mut() {
        w.flush().await?;
    }
    Ok(())
}

async fn broadcast(writers: &mut [PartitionWriter<Record>], event: Event) -> Result<(), NetError> {
    for w in writers.iter_mut() {
        w.broadcast_event(event).await?;
    }
    Ok(())
}

/// The parts of a deployed task, built on its shard.
struct Built {
    head: ChainHead,
    chain: Chain,
    writers: Vec<PartitionWriter<Record>>,
    gate: Option<InputGate>,
}

fn build(d: &mut TaskDeployment, pool: &Rc<SegmentPool>) -> Result<Built, TaskFailure> {
    let mut specs = d.chain.iter();
    let head_spec =
        specs.next().ok_or_else(|| TaskFailure { cause: "empty operator chain".into(), secondary: false })?;
    let head = d.registry.build_head(&head_spec.name, &head_spec.config, &d.resources)?;
    let ops =
        specs.map(|s| d.registry.build_operator(&s.name, &s.config, &d.resources)).collect::<Result<Vec<_>, _>>()?;
    let mut writers = Vec::with_capacity(d.outputs.len());
    for out in d.outputs.drain(..) {
        let mut w = PartitionWriter::new(pool.clone(), out.senders, out.partitioner)?;
        w.set_flush_timeout(d.flush_timeout);
        w.set_busy_poll(d.idle == IdlePolicy::Spin);
        writers.push(w);
    }
    let gate = if d.inputs.is_empty() {
        None
    } else {
        let receivers: Vec<ChannelReceiver> = d.inputs.drain(..).collect();
        let ledger = CreditLedger::new(receivers.len(), d.exclusive_credits, d.floating_credits);
        Some(InputGate::new(receivers, ledger))
    };
    Ok(Built { head, chain: Chain::new(ops), writers, gate })
}

/// Runs one subtask to completion. `on_running` is called once the operators are
/// open.
pub(crate) async fn run_task(
    mut d: TaskDeployment,
    pool: Rc<SegmentPool>,
    on_running: impl FnOnce(),
) -> Result<TaskOutput, TaskFailure> {
    let Built { head, mut chain, mut writers, gate } = build(&mut d, &pool)?;
    for op in &mut chain.ops {
        op.open(&d.info)?;
    }
    let records_in = match (head, gate) {
        (ChainHead::Source(mut source), None) => {
            source.open(&d.info)?;
            on_running();
            run_source(
                source.as_mut(),
                &mut chain,
                &mut writers,
                d.flush_timeout.is_some(),
                &d.progress,
                d.idle,
                d.min_park,
            )
            .await?
        }
        (ChainHead::Operator(mut op), Some(mut gate)) => {
            op.open(&d.info)?;
            on_running();
            // The head joins the chain: it is ops[0] from here on.
            chain.ops.insert(0, op);
            chain.bufs.insert(0, Vec::with_capacity(SOURCE_BATCH));
            run_input(&mut gate, &mut chain, &mut writers, d.flush_timeout.is_some(), d.idle).await?
        }
        (ChainHead::Source(_), Some(_)) => {
            return Err(TaskFailure { cause: "a source vertex cannot have inputs".into(), secondary: false })
        }
        (ChainHead::Operator(_), None) => {
            return Err(TaskFailure {
                cause: "a vertex without inputs must start with a source".into(),
                secondary: false,
            })
        }
    };
    // End of input: each operator emits what it holds, which flows down the chain.
    cascade(&mut chain, &mut writers, |op, out| op.finish(out)).await?;
    for w in &mut writers {
        w.finish().await?;
    }
    let records_out = writers.iter().map(|w| w.records_out()).sum();
    let sinks = chain
        .ops
        .iter_mut()
        .map(|op| op.close())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|s| *s != SinkOutput::None)
        .collect();
    Ok(TaskOutput { sinks, records_in, records_out })
}

async fn run_source(
    source: &mut dyn SourceOperator,
    chain: &mut Chain,
    writers: &mut [PartitionWriter<Record>],
    timed_flush: bool,
    progress: &AtomicU64,
    idle: IdlePolicy,
    min_park: Duration,
) -> Result<u64, TaskFailure> {
    let mut batch = Vec::with_capacity(SOURCE_BATCH);
    let mut produced = 0u64;
    loop {
        batch.clear();
        match source.poll_next(&mut batch)? {
            SourceStatus::Emitted => {
                produced += batch.len() as u64;
                progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
                chain.run(0, &batch)?;
                emit(writers, chain.output(0, &batch)).await?;
                if timed_flush {
                    flush_due(writers).await?;
                }
            }
            SourceStatus::IdleUntil(due) => {
                // Nothing due: the source has drained its input.
                flush(writers).await?;
                wait_until(due, idle, min_park).await;
            }
            SourceStatus::Finished => break,
        }
        glommio::yield_if_needed().await;
    }
    Ok(produced)
}

/// Waits for `due`: on a parking shard with a timer of at least `min_park` (the
/// kernel wakes the shard); on a spinning shard by watching the clock between turns
/// of the shard's other tasks (which poll their gates, so nothing needs waking).
async fn wait_until(due: Instant, idle: IdlePolicy, min_park: Duration) {
    match idle {
        IdlePolicy::Park => {
            let now = Instant::now();
            if due > now {
                glommio::timer::sleep((due - now).max(min_park)).await;
            }
        }
        IdlePolicy::Spin => {
            while Instant::now() < due {
                futures_lite::future::yield_now().await;
            }
        }
    }
}

async fn run_input(
    gate: &mut InputGate,
    chain: &mut Chain,
    writers: &mut [PartitionWriter<Record>],
    timed_flush: bool,
    idle: IdlePolicy,
) -> Result<u64, TaskFailure> {
    let mut progress = ChannelProgress::new(gate.num_channels());
    let mut records_in = 0u64;
    let mut since_yield = 0u32;
    'input: loop {
        let (channel, item) = match gate.try_next()? {
            Some(x) => x,
            None => {
                if gate.is_finished() {
                    break;
                }
                // Drained: send partial buffers before waiting.
                flush(writers).await?;
                match idle {
                    IdlePolicy::Park => match gate.next().await? {
                        Some(x) => x,
                        None => break,
                    },
                    // Poll the gate: no wake-up has to cross cores.
                    IdlePolicy::Spin => loop {
                        futures_lite::future::yield_now().await;
                        if let Some(x) = gate.try_next()? {
                            break x;
                        }
                        if gate.is_finished() {
                            break 'input;
                        }
                    },
                }
            }
        };
        match item {
            GateItem::Data(buffer) => {
                let records = buffer.pod::<Record>()?;
                records_in += records.len() as u64;
                chain.run(0, records)?;
                emit(writers, chain.output(0, records)).await?;
                drop(buffer);
                since_yield += 1;
                if since_yield >= BUFFERS_PER_YIELD {
                    since_yield = 0;
                    if timed_flush {
                        flush_due(writers).await?;
                    }
                    glommio::yield_if_needed().await;
                }
            }
            GateItem::Event(event) => {
                let (watermark, barrier) = progress.on_event(channel, event);
                if let Some(min) = watermark {
                    cascade(chain, writers, |op, out| op.process_watermark(min, out)).await?;
                    broadcast(writers, Event::Watermark(min)).await?;
                }
                if let Some(b) = barrier {
                    broadcast(writers, Event::Barrier(b)).await?;
                }
            }
        }
    }
    Ok(records_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(id: u64) -> CheckpointBarrier {
        CheckpointBarrier { checkpoint_id: id, timestamp_ms: 0 }
    }

    #[test]
    fn the_watermark_follows_the_slowest_live_channel() {
        let mut p = ChannelProgress::new(2);
        assert_eq!(p.on_event(0, Event::Watermark(10)), (None, None), "channel 1 is still at 0");
        assert_eq!(p.on_event(1, Event::Watermark(5)), (Some(5), None));
        assert_eq!(p.on_event(1, Event::Watermark(7)), (Some(7), None));
        // Channel 1 ends: it no longer holds channel 0's watermark back.
        assert_eq!(p.on_event(1, Event::EndOfPartition), (Some(10), None));
        assert_eq!(p.on_event(0, Event::EndOfPartition), (None, None), "nothing live: end of input");
    }

    #[test]
    fn a_barrier_is_forwarded_once_every_live_channel_delivered_it() {
        let mut p = ChannelProgress::new(3);
        assert_eq!(p.on_event(0, Event::Barrier(barrier(1))), (None, None));
        assert_eq!(p.on_event(1, Event::Barrier(barrier(1))), (None, None));
        // Channel 2 ends without the barrier: the others complete it.
        assert_eq!(p.on_event(2, Event::EndOfPartition), (None, Some(barrier(1))));
        assert_eq!(p.on_event(0, Event::Barrier(barrier(2))), (None, None));
        assert_eq!(p.on_event(1, Event::Barrier(barrier(2))), (None, Some(barrier(2))));
        assert_eq!(p.on_event(1, Event::Barrier(barrier(2))), (None, None), "forwarded once");
    }
}
