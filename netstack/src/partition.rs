//! The producer side: a result partition writer routes records to subpartitions,
//! copies each once into the subpartition's current segment and sends full buffers
//! against credits.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use shardflow_memory::{SegmentPool, SegmentWriter};

use crate::buffer::Buffer;
use crate::channel::ChannelSender;
use crate::error::NetError;
use crate::event::Event;

/// A record that carries its partitioning key (read on every routed record, so it
/// is a trait to be inlined, not a function pointer).
pub trait Keyed {
    /// The key hash partitioning routes on.
    fn key(&self) -> u64;
}

/// Arrays of `u64` are keyed by their first element.
impl<const N: usize> Keyed for [u64; N] {
    #[inline(always)]
    fn key(&self) -> u64 {
        self[0]
    }
}

/// How a record picks its subpartition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partitioner {
    /// Subtask i → subtask i (one subpartition).
    Forward,
    /// By [`fmix64`] of the record's key.
    Hash,
    /// Round robin, record by record.
    Rebalance,
    /// Every record to every subpartition.
    Broadcast,
}

/// murmur3's 64-bit finalizer: the routing hash (never route on raw key bits).
#[inline(always)]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Subpartition of `key` among `n`: the hash scaled to `0..n` (no division).
#[inline(always)]
pub fn hash_route(key: u64, n: usize) -> usize {
    ((u128::from(fmix64(key)) * n as u128) >> 64) as usize
}

struct Subpartition<T: Pod> {
    sender: ChannelSender,
    writer: Option<SegmentWriter<T>>,
}

/// Writes records of type `T` into the subpartitions of one result partition.
/// `!Send`: it lives on the producer's shard, next to the pool it draws from.
pub struct PartitionWriter<T: Pod + Keyed> {
    pool: Rc<SegmentPool>,
    subs: Vec<Subpartition<T>>,
    partitioner: Partitioner,
    next_rr: usize,
    flush_timeout: Option<Duration>,
    oldest_unflushed: Option<Instant>,
    records_out: u64,
    buffers_out: u64,
}

impl<T: Pod + Keyed> PartitionWriter<T> {
    /// A writer over `senders` (one per subpartition, in subpartition order).
    pub fn new(pool: Rc<SegmentPool>, senders: Vec<ChannelSender>, partitioner: Partitioner) -> Result<Self, NetError> {
        let seg_bytes = pool.segment_bytes();
        if std::mem::size_of::<T>() > seg_bytes {
            return Err(NetError::RecordTooLarge { record_bytes: std::mem::size_of::<T>(), segment_bytes: seg_bytes });
        }
        let mut subs = Vec::with_capacity(senders.len());
        for (i, mut sender) in senders.into_iter().enumerate() {
            sender.set_subpartition(i);
            subs.push(Subpartition { sender, writer: Some(SegmentWriter::new(pool.allocate()?)) });
        }
        Ok(PartitionWriter {
            pool,
            subs,
            partitioner,
            next_rr: 0,
            flush_timeout: None,
            oldest_unflushed: None,
            records_out: 0,
            buffers_out: 0,
        })
    }

    /// A partial buffer older than `timeout` is sent by [`PartitionWriter::flush_if_due`].
    /// Default: none (buffers leave when full, on flush or on an event).
    pub fn set_flush_timeout(&mut self, timeout: Option<Duration>) {
        self.flush_timeout = timeout;
    }

    /// Busy-poll instead of parking while waiting for credit (see
    /// [`crate::ChannelSender::set_busy_poll`]).
    pub fn set_busy_poll(&mut self, on: bool) {
        for sub in &mut self.subs {
            sub.sender.set_busy_poll(on);
        }
    }

    /// Number of subpartitions.
    pub fn num_subpartitions(&self) -> usize {
        self.subs.len()
    }

    /// Records written so far (a broadcast record counts once per subpartition).
    pub fn records_out(&self) -> u64 {
        self.records_out
    }

    /// Buffers sent so far.
    pub fn buffers_out(&self) -> u64 {
        self.buffers_out
    }

    /// Routes and copies `records` into subpartition buffers, sending every buffer
    /// that fills up (waiting for credit when there is none: back-pressure).
    pub async fn emit(&mut self, records: &[T]) -> Result<(), NetError> {
        if records.is_empty() {
            return Ok(());
        }
        // Every subpartition holds a writer from `new` until `finish`; one is
        // missing after `finish` or a send that failed or was cancelled.
        if self.subs.iter().any(|s| s.writer.is_none()) {
            return Err(NetError::PartitionClosed);
        }
        if self.flush_timeout.is_some() && self.oldest_unflushed.is_none() {
            self.oldest_unflushed = Some(Instant::now());
        }
        let mut i = 0;
        while i < records.len() {
            let rest = &records[i..];
            let (consumed, any_full) = match self.partitioner {
                Partitioner::Forward => self.fill_forward(rest),
                Partitioner::Hash => self.fill_hash(rest),
                Partitioner::Rebalance => self.fill_rebalance(rest),
                Partitioner::Broadcast => self.fill_broadcast(rest),
            };
            i += consumed;
            if any_full {
                self.send_full().await?;
            }
        }
        Ok(())
    }

    #[inline]
    fn fill_forward(&mut self, recs: &[T]) -> (usize, bool) {
        let w = writer(&mut self.subs[0]);
        let room = w.capacity() - w.len();
        let n = room.min(recs.len());
        for r in &recs[..n] {
            w.push(*r);
        }
        self.records_out += n as u64;
        (n, w.is_full())
    }

    #[inline]
    fn fill_hash(&mut self, recs: &[T]) -> (usize, bool) {
        let n = self.subs.len();
        for (j, r) in recs.iter().enumerate() {
            let w = writer(&mut self.subs[hash_route(r.key(), n)]);
            w.push(*r);
            if w.is_full() {
                self.records_out += j as u64 + 1;
                return (j + 1, true);
            }
        }
        self.records_out += recs.len() as u64;
        (recs.len(), false)
    }

    #[inline]
    fn fill_rebalance(&mut self, recs: &[T]) -> (usize, bool) {
        let n = self.subs.len();
        for (j, r) in recs.iter().enumerate() {
            let w = writer(&mut self.subs[self.next_rr]);
            self.next_rr = if self.next_rr + 1 == n { 0 } else { self.next_rr + 1 };
            w.push(*r);
            if w.is_full() {
                self.records_out += j as u64 + 1;
                return (j + 1, true);
            }
        }
        self.records_out += recs.len() as u64;
        (recs.len(), false)
    }

    #[inline]
    fn fill_broadcast(&mut self, recs: &[T]) -> (usize, bool) {
        for (j, r) in recs.iter().enumerate() {
            let mut full = false;
            for sub in &mut self.subs {
                let w = writer(sub);
                w.push(*r);
                full |= w.is_full();
            }
            self.records_out += self.subs.len() as u64;
            if full {
                return (j + 1, true);
            }
        }
        (recs.len(), false)
    }

    async fn send_full(&mut self) -> Result<(), NetError> {
        for sp in 0..self.subs.len() {
            if writer(&mut self.subs[sp]).is_full() {
                self.send_sub(sp).await?;
            }
        }
        Ok(())
    }

    /// Sends subpartition `sp`'s current buffer (if it holds anything) and starts a
    /// fresh one.
    async fn send_sub(&mut self, sp: usize) -> Result<(), NetError> {
        let sub = &mut self.subs[sp];
        let Some(w) = sub.writer.take() else {
            return Ok(());
        };
        if w.is_empty() {
            sub.writer = Some(w);
            return Ok(());
        }
        let (segment, records) = w.finish();
        let buffer = Buffer::of_pod::<T>(segment, records)?;
        sub.sender.send_data(buffer).await?;
        self.buffers_out += 1;
        sub.writer = Some(SegmentWriter::new(self.pool.allocate()?));
        Ok(())
    }

    /// Sends every partial buffer now (the task drained its input, or an event follows).
    pub async fn flush(&mut self) -> Result<(), NetError> {
        for sp in 0..self.subs.len() {
            self.send_sub(sp).await?;
        }
        self.oldest_unflushed = None;
        Ok(())
    }

    /// Flushes if the oldest unsent record has waited longer than the flush timeout.
    pub async fn flush_if_due(&mut self, now: Instant) -> Result<(), NetError> {
        if let (Some(t), Some(since)) = (self.flush_timeout, self.oldest_unflushed) {
            if now.saturating_duration_since(since) >= t {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Flushes, then sends `event` on every subpartition, in band.
    pub async fn broadcast_event(&mut self, event: Event) -> Result<(), NetError> {
        self.flush().await?;
        for sub in &self.subs {
            sub.sender.send_event(event).await?;
        }
        Ok(())
    }

    /// Flushes, sends end of partition everywhere and returns the current segments.
    pub async fn finish(&mut self) -> Result<(), NetError> {
        self.broadcast_event(Event::EndOfPartition).await?;
        for sub in &mut self.subs {
            sub.writer = None;
        }
        Ok(())
    }
}

/// The current segment writer of an open subpartition.
#[inline(always)]
fn writer<T: Pod>(sub: &mut Subpartition<T>) -> &mut SegmentWriter<T> {
    match sub.writer.as_mut() {
        Some(w) => w,
        // `emit` checks that every writer is present before filling.
        None => unreachable!("emit checked that every subpartition has a writer"),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn emit_after_finish_is_a_typed_error() {
        use futures_lite::future::block_on;
        let pool = Rc::new(shardflow_memory::SegmentPoolBuilder::new(0, 4).segment_bytes(4096).build().unwrap());
        let (tx, _rx) = crate::channel(2, 2, 2);
        let mut w = PartitionWriter::<[u64; 2]>::new(pool, vec![tx], Partitioner::Forward).unwrap();
        block_on(w.finish()).unwrap();
        assert_eq!(block_on(w.emit(&[[1, 1]])), Err(NetError::PartitionClosed));
    }

    #[test]
    fn hash_route_spreads_and_stays_in_range() {
        let mut counts = [0usize; 3];
        for k in 0..30_000u64 {
            counts[hash_route(k, 3)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(hash_route(u64::MAX, 1), 0);
    }
}
