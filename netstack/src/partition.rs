//! The producer side: a result partition writes records into the current segment
//! of the subpartition its caller picked, and sends full buffers against credits.
//!
//! Writing never waits. A full buffer goes out at once if its channel has a
//! credit; otherwise it joins the subpartition's queue of pending envelopes
//! (data and events, in order). The task that owns the partition asks
//! [`ResultPartition::overdrawn`] between its steps (a chunk of records each)
//! and, once the queues hold more than the partition's overdraft, stops taking
//! input and awaits [`ResultPartition::poll_ready`], which sends what credits
//! allow: a back-pressured task waits between steps, never inside one, and can
//! serve its control lane meanwhile. What one step writes beyond the task's
//! reservation is charged to the shard's network memory
//! ([`ResultPartition::charge_overdraft_to`]).
//!
//! Two encodings, both copied once into the segment and read in place:
//! fixed-size plain data ([`ResultPartition::write_pod`]: records packed back to
//! back) and variable-size records ([`ResultPartition::write_var`]: each framed as
//! [`crate::framing`] says, read with [`VarRecords`]).

use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytemuck::Pod;
use shardflow_memory::{Budget, PodRooms, Reservation, SegmentPool};

use crate::buffer::Buffer;
use crate::channel::{ChannelSender, Envelope};
use crate::error::{NetError, ProducerEnd};
use crate::event::Event;
#[cfg(doc)]
use crate::framing::VarRecords;
use crate::framing::{frame_end, put_len, record_start};
use crate::storage::Storage;

/// murmur3's 64-bit finalizer: the routing hash mix (never route on raw key bits).
#[inline(always)]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Subpartitions [`ResultPartition::write_pod_routed`] routes a batch to in
/// tight loops: up to this many with rooms of this size…
const NARROW_WAYS: usize = 8;
/// …up to this many with larger ones; beyond, record by record.
const WIDE_WAYS: usize = 64;

/// A cache line.
const LINE: usize = 64;
/// How far past its end a variable-size write fetches a segment's line for
/// writing, each time it enters a new line: four lines ahead, the line has
/// come from the core that read the segment last by the time records reach
/// it (P8: 4 % less CPU; 2 or 8 lines ahead were slower).
const WRITE_AHEAD: usize = 4 * LINE;

/// The free room of `sub`'s segment as a slice of `T` (empty without a segment,
/// or where the records written so far leave it misaligned for `T`).
#[inline]
fn pod_room<T: Pod>(sub: &mut Subpartition) -> &mut [T] {
    let Some(seg) = sub.segment.as_mut() else { return &mut [] };
    let free = seg.as_bytes_mut().get_mut(sub.pos..).unwrap_or_default();
    let whole = free.len() / std::mem::size_of::<T>() * std::mem::size_of::<T>();
    bytemuck::try_cast_slice_mut(&mut free[..whole]).unwrap_or_default()
}

/// One subpartition: its channel, the segment being filled, and what waits to go.
struct Subpartition {
    sender: ChannelSender,
    segment: Option<Storage>,
    /// Bytes written into `segment`.
    pos: usize,
    /// Records written into `segment`.
    records: usize,
    /// What `segment` is charged to beyond the task's reservation.
    charge: Option<Reservation>,
    /// Full buffers and events not sent yet, in order.
    pending: VecDeque<Envelope>,
}

/// Writes records into the subpartitions of one result partition (one per
/// consumer subtask of an edge). `!Send`: it lives on the producer's shard, next to
/// the pool it draws from.
pub struct ResultPartition {
    pool: Rc<SegmentPool>,
    subs: Vec<Subpartition>,
    segment_bytes: usize,
    /// Data buffers pending over all subpartitions.
    pending_buffers: usize,
    /// Pending buffers beyond which the partition is overdrawn.
    overdraft: usize,
    /// The shard's network memory, where segments started beyond the
    /// reservation are charged (see [`Self::charge_overdraft_to`]).
    network: Option<Budget>,
    /// Where a buffer goes on the heap when `network` has nothing to spare
    /// (see [`Self::spill_to`]).
    spill: Option<Budget>,
    /// Subpartitions with something pending (so `poll_ready` visits only those).
    waiting: Vec<usize>,
    flush_timeout: Option<Duration>,
    /// Whether a partial buffer was started since the last flush (kept only
    /// with a flush timeout), and since when [`Self::flush_if_due`] has seen it
    /// waiting: writing a record reads no clock.
    unflushed: bool,
    unflushed_since: Option<Instant>,
    records_out: u64,
    buffers_out: u64,
    finished: bool,
    /// A buffer that could not be sealed: the records in it are lost, and every
    /// later write and send reports this.
    broken: Option<NetError>,
}

impl ResultPartition {
    /// A partition over `senders` (one per subpartition, in subpartition order)
    /// that may hold up to `overdraft` buffers beyond what credits let out before
    /// it is overdrawn (at least one).
    pub fn new(pool: Rc<SegmentPool>, senders: Vec<ChannelSender>, overdraft: usize) -> Self {
        let segment_bytes = pool.segment_bytes();
        let subs = senders
            .into_iter()
            .enumerate()
            .map(|(i, mut sender)| {
                sender.set_subpartition(i);
                Subpartition { sender, segment: None, pos: 0, records: 0, charge: None, pending: VecDeque::new() }
            })
            .collect();
        ResultPartition {
            pool,
            subs,
            segment_bytes,
            pending_buffers: 0,
            overdraft: overdraft.max(1),
            network: None,
            spill: None,
            waiting: Vec::new(),
            flush_timeout: None,
            unflushed: false,
            unflushed_since: None,
            records_out: 0,
            buffers_out: 0,
            finished: false,
            broken: None,
        }
    }

    /// The most segments a partition of `subpartitions` holds while it keeps
    /// within its reservation, which is what its task reserves: per
    /// subpartition a buffer being filled, `credits` in flight (exclusive and
    /// floating) and one buffer a step may complete past the overdraft; and
    /// the overdraft.
    pub fn reserved_segments(subpartitions: usize, credits: u32, overdraft: usize) -> u64 {
        subpartitions as u64 * (2 + u64::from(credits)) + overdraft.max(1) as u64
    }

    /// Charges to `network` every segment started beyond the partition's
    /// reservation ([`Self::reserved_segments`]), for as long as that segment
    /// lives.
    ///
    /// The task looks at the partition between steps, and one step can write
    /// more than the reservation allows for (a `flat_map` fanning one record
    /// out into many buffers): those segments come out of what the shard's
    /// tasks have not reserved, never out of another task's reservation; once
    /// that is gone, buffers spill ([`Self::spill_to`]) or the write fails with
    /// [`NetError::OverdraftExhausted`].
    pub fn charge_overdraft_to(&mut self, network: Budget) {
        self.network = Some(network);
    }

    /// Once the network memory has nothing to spare, puts each buffer started
    /// beyond the reservation on the heap instead, charged to `memory` (the
    /// task's managed memory) for as long as it lives: a step that fans out
    /// completes, and the write fails with [`NetError::OverdraftExhausted`]
    /// only when `memory` is spent too. Spilled buffers travel and are read
    /// as segments are; the consumer's credits still pace them.
    pub fn spill_to(&mut self, memory: Budget) {
        self.spill = Some(memory);
    }

    /// Whether a segment started now is beyond the reservation: more buffers
    /// wait than the overdraft and a step's one per subpartition.
    fn beyond_reservation(&self) -> bool {
        self.pending_buffers > self.overdraft + self.subs.len()
    }

    /// A partial buffer that has waited `timeout` is sent by
    /// [`Self::flush_if_due`]; the wait counts from the first call that found it
    /// (a task calls it at the start of every step, so a record waits at most
    /// the rest of its own step longer). Default: none (buffers leave when
    /// full, on flush or on an event).
    pub fn set_flush_timeout(&mut self, timeout: Option<Duration>) {
        self.flush_timeout = timeout;
    }

    /// Number of subpartitions.
    #[inline]
    pub fn num_subpartitions(&self) -> usize {
        self.subs.len()
    }

    /// Records written so far.
    pub fn records_out(&self) -> u64 {
        self.records_out
    }

    /// Buffers sent so far.
    pub fn buffers_out(&self) -> u64 {
        self.buffers_out
    }

    /// Whether more buffers wait than the overdraft allows: stop writing and await
    /// [`Self::poll_ready`].
    #[inline(always)]
    pub fn overdrawn(&self) -> bool {
        self.pending_buffers > self.overdraft
    }

    /// Whether nothing waits to be sent.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty()
    }

    fn check_open(&self) -> Result<(), NetError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if self.finished {
            return Err(NetError::PartitionClosed);
        }
        Ok(())
    }

    /// Copies `record` into subpartition `sp` (one larger than a segment into
    /// a buffer of its own on the heap, charged to the managed memory of
    /// [`Self::spill_to`]).
    #[inline(always)]
    pub fn write_pod<T: Pod>(&mut self, sp: usize, record: &T) -> Result<(), NetError> {
        let size = std::mem::size_of::<T>();
        let sub = &mut self.subs[sp];
        if let Some(seg) = sub.segment.as_mut() {
            if seg.write_pod(sub.pos, record) {
                sub.pos += size;
                sub.records += 1;
                self.records_out += 1;
                return Ok(());
            }
        }
        self.write_pod_slow(sp, record)
    }

    /// Copies each of `records`, in order, into the subpartition `pick` chooses
    /// for it (`None`: into every subpartition): what [`Self::write_pod`] does
    /// record by record, in tight loops over typed views of the segments being
    /// filled, so a record costs its routing and one copy (up to 64
    /// subpartitions; beyond, record by record). `pick` is called
    /// once per record, in order. On an error the records before the failing
    /// one are written.
    #[inline]
    pub fn write_pod_routed<T: Pod>(
        &mut self,
        records: &[T],
        mut pick: impl FnMut(&T) -> Option<usize>,
    ) -> Result<(), NetError> {
        let ways = self.subs.len();
        // Zero-sized records have nothing to copy; each still counts.
        if std::mem::size_of::<T>() == 0 || ways > WIDE_WAYS {
            return records.iter().try_for_each(|r| self.write_routed_slow(r, pick(r)));
        }
        let mut rest = records;
        while !rest.is_empty() {
            let (done, stuck) = if ways <= NARROW_WAYS {
                self.copy_as_routed::<T, NARROW_WAYS>(rest, &mut pick)
            } else {
                self.copy_as_routed::<T, WIDE_WAYS>(rest, &mut pick)
            };
            rest = &rest[done..];
            // The record that found no room (or goes everywhere) goes the slow way.
            if let Some(to) = stuck {
                self.write_routed_slow(&rest[0], to)?;
                rest = &rest[1..];
            }
        }
        Ok(())
    }

    /// Copies records as they are routed, until one finds no room (or names a
    /// subpartition there is not). Returns the records written and, if it
    /// stopped, where the next one goes. Each subpartition's free room is a
    /// cursor and an end in [`PodRooms`] on the stack, which the compiler
    /// knows no copy into a room can touch: a record costs its routing, a
    /// compare and its copy. (One slice of pairs, which every copy might alias,
    /// cost P1 8 % more CPU; with a count and a slice per room P1's loop took
    /// 44 instructions a record, with a cursor 33.)
    #[inline(always)]
    fn copy_as_routed<T: Pod, const W: usize>(
        &mut self,
        records: &[T],
        pick: &mut impl FnMut(&T) -> Option<usize>,
    ) -> (usize, Option<Option<usize>>) {
        let mut stuck = None;
        let mut done = 0;
        let counts = {
            let mut rooms = PodRooms::<T, W>::new(self.subs.iter_mut().map(pod_room));
            for r in records {
                let to = pick(r);
                let placed = match to {
                    Some(sp) => rooms.push(sp, r),
                    None => rooms.push_each(r),
                };
                if !placed {
                    stuck = Some(to);
                    break;
                }
                done += 1;
            }
            rooms.written()
        };
        let size = std::mem::size_of::<T>();
        for (sub, n) in self.subs.iter_mut().zip(counts) {
            sub.pos += n * size;
            sub.records += n;
        }
        self.records_out += counts.iter().sum::<usize>() as u64;
        (done, stuck)
    }

    /// One record the fast loops left: into subpartition `to` (a fresh segment
    /// if the current one is full), or into every subpartition for `None`.
    fn write_routed_slow<T: Pod>(&mut self, record: &T, to: Option<usize>) -> Result<(), NetError> {
        match to {
            Some(sp) if sp < self.subs.len() => self.write_pod(sp, record),
            Some(sp) => Err(NetError::NoSuchSubpartition { subpartition: sp, subpartitions: self.subs.len() }),
            None => (0..self.subs.len()).try_for_each(|sp| self.write_pod(sp, record)),
        }
    }

    #[inline(never)]
    fn write_pod_slow<T: Pod>(&mut self, sp: usize, record: &T) -> Result<(), NetError> {
        self.check_open()?;
        let size = std::mem::size_of::<T>();
        if size > self.segment_bytes {
            // Alone, back to back with nothing (a buffer of one record).
            return self.send_alone(sp, size, size, |room| {
                room.copy_from_slice(bytemuck::bytes_of(record));
                Ok(size)
            });
        }
        self.seal(sp);
        self.start_segment(sp)?;
        let sub = &mut self.subs[sp];
        let written = sub.segment.as_mut().is_some_and(|seg| seg.write_pod(0, record));
        debug_assert!(written, "a fresh segment takes one record");
        sub.pos = size;
        sub.records = 1;
        self.records_out += 1;
        Ok(())
    }

    /// Writes a variable-size record into subpartition `sp`: `encode` gets the
    /// room left (starting `align`-aligned, `align` a power of two ≤ 4096) and
    /// returns the bytes it wrote, or `None` if the record does not fit there; it
    /// is then called again on a fresh segment. A record that does not fit an
    /// empty segment is measured (`measure`: its size, `None` if it cannot be
    /// encoded at all) and `encode` writes it into room of exactly that size,
    /// in a buffer of its own on the heap, charged to the managed memory of
    /// [`Self::spill_to`].
    pub fn write_var(
        &mut self,
        sp: usize,
        align: usize,
        mut encode: impl FnMut(&mut [u8]) -> Option<usize>,
        measure: impl FnOnce() -> Option<usize>,
    ) -> Result<(), NetError> {
        self.check_open()?;
        for fresh in [false, true] {
            if fresh {
                self.seal(sp);
            }
            if self.subs[sp].segment.is_none() {
                self.start_segment(sp)?;
            }
            let sub = &mut self.subs[sp];
            let Some(seg) = sub.segment.as_mut() else { continue };
            let bytes = seg.as_bytes_mut();
            let start = record_start(sub.pos, align);
            if start < bytes.len() {
                if let Some(len) = encode(&mut bytes[start..]) {
                    put_len(bytes, sub.pos, len);
                    let end = frame_end(start, len);
                    if end / LINE != sub.pos / LINE {
                        if let Some(ahead) = bytes.get_mut(end + WRITE_AHEAD) {
                            shardflow_memory::prefetch_write(ahead);
                        }
                    }
                    sub.pos = end;
                    sub.records += 1;
                    self.records_out += 1;
                    return Ok(());
                }
            }
            if sub.records == 0 {
                break;
            }
        }
        let Some(record_bytes) = measure() else {
            // It cannot be encoded at all: as large as can be told.
            return Err(NetError::RecordTooLarge {
                record_bytes: self.segment_bytes + 1,
                segment_bytes: self.segment_bytes,
            });
        };
        let start = record_start(0, align);
        self.send_alone(sp, record_bytes, frame_end(start, record_bytes), |room| {
            let Some(len) = encode(&mut room[start..start + record_bytes]).filter(|&len| len <= record_bytes) else {
                let reason = format!("its encoding did not fit the {record_bytes} bytes it was measured at");
                return Err(NetError::MalformedRecord { offset: 0, reason });
            };
            put_len(room, 0, len);
            Ok(frame_end(start, len))
        })
    }

    /// Sends one record of `record_bytes` bytes in a buffer of its own of
    /// `bytes`, on the heap, that `fill` writes (returning the bytes used):
    /// charged to the task's managed memory ([`Self::spill_to`]) for as long
    /// as it lives, so large records in flight stay within the slot's
    /// budget; after what the subpartition holds already, paced by a credit
    /// as any buffer. Without that memory, or beyond it, a typed error with
    /// the sizes.
    fn send_alone(
        &mut self,
        sp: usize,
        record_bytes: usize,
        bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, NetError>,
    ) -> Result<(), NetError> {
        self.check_open()?;
        if u32::try_from(record_bytes).is_err() {
            return Err(NetError::RecordOverLimit { record_bytes, limit_bytes: u32::MAX as usize });
        }
        let Some(memory) = &self.spill else {
            return Err(NetError::RecordTooLarge { record_bytes, segment_bytes: self.segment_bytes });
        };
        let mut storage = Storage::heap(bytes);
        let charge = memory
            .reserve(storage.capacity_bytes() as u64)
            .map_err(|source| NetError::RecordOverBudget { record_bytes, source })?;
        let used = fill(&mut storage.as_bytes_mut()[..bytes])?;
        // What the subpartition holds goes first.
        self.seal(sp);
        self.records_out += 1;
        self.send_or_queue(sp, Buffer::of(storage, 1, used)?.charged(Some(charge)));
        Ok(())
    }

    fn start_segment(&mut self, sp: usize) -> Result<(), NetError> {
        let (seg, charge) = match &self.network {
            Some(network) if self.beyond_reservation() => self.beyond(network)?,
            _ => (Storage::Pool(self.pool.allocate()?), None),
        };
        let sub = &mut self.subs[sp];
        sub.segment = Some(seg);
        sub.charge = charge;
        sub.pos = 0;
        sub.records = 0;
        self.unflushed |= self.flush_timeout.is_some();
        Ok(())
    }

    /// A buffer beyond the reservation: a segment charged to `network`, or,
    /// where it has none to spare, heap charged to the spill budget.
    #[cold]
    fn beyond(&self, network: &Budget) -> Result<(Storage, Option<Reservation>), NetError> {
        let bytes = self.segment_bytes as u64;
        let refused = match network.reserve(bytes) {
            Ok(charge) => return Ok((Storage::Pool(self.pool.allocate()?), Some(charge))),
            Err(e) => e,
        };
        let spilled = match &self.spill {
            Some(memory) => memory.reserve(bytes).map(|charge| (Storage::heap(self.segment_bytes), Some(charge))),
            None => Err(refused),
        };
        spilled.map_err(|source| NetError::OverdraftExhausted {
            pending: self.pending_buffers,
            overdraft: self.overdraft,
            source,
        })
    }

    /// Moves subpartition `sp`'s current buffer, if it holds records, to the
    /// channel (a credit permitting and nothing queued before it) or its queue.
    fn seal(&mut self, sp: usize) {
        let sub = &mut self.subs[sp];
        if sub.records == 0 {
            return;
        }
        let Some(seg) = sub.segment.take() else { return };
        let (records, bytes, charge) = (sub.records, sub.pos, sub.charge.take());
        sub.records = 0;
        sub.pos = 0;
        match Buffer::of(seg, records, bytes) {
            Ok(b) => self.send_or_queue(sp, b.charged(charge)),
            Err(e) => {
                self.broken.get_or_insert(e);
            }
        }
    }

    /// Sends `buffer` on subpartition `sp`'s channel (a credit permitting and
    /// nothing queued before it) or queues it.
    fn send_or_queue(&mut self, sp: usize, buffer: Buffer) {
        self.buffers_out += 1;
        let sub = &mut self.subs[sp];
        let buffer = if sub.pending.is_empty() {
            match sub.sender.try_send_data(buffer) {
                Ok(()) => return,
                // No credit (or the consumer is gone: `poll_ready` reports it).
                Err(buffer) => buffer,
            }
        } else {
            buffer
        };
        self.queue(sp, Envelope::Data(buffer));
    }

    /// Sends every partial buffer now (the task drained its input, or an event
    /// follows).
    pub fn flush(&mut self) {
        for sp in 0..self.subs.len() {
            self.seal(sp);
        }
        self.unflushed = false;
        self.unflushed_since = None;
    }

    /// Whether a partial buffer waits for [`Self::flush_if_due`] (never
    /// without a flush timeout): a caller with nothing waiting reads no clock.
    #[inline]
    pub fn awaits_flush(&self) -> bool {
        self.unflushed
    }

    /// Flushes once a partial buffer has waited the flush timeout, counted from
    /// the first call that found it waiting.
    pub fn flush_if_due(&mut self, now: Instant) {
        let Some(timeout) = self.flush_timeout else { return };
        if !self.unflushed {
            return;
        }
        match self.unflushed_since {
            None => self.unflushed_since = Some(now),
            Some(since) if now.saturating_duration_since(since) >= timeout => self.flush(),
            Some(_) => {}
        }
    }

    /// Flushes, then queues `event` on every subpartition, in band after the data
    /// before it. [`Self::poll_ready`] sends it.
    pub fn broadcast_event(&mut self, event: Event) -> Result<(), NetError> {
        self.check_open()?;
        self.flush();
        for sp in 0..self.subs.len() {
            self.queue(sp, Envelope::Event(event));
        }
        if event == Event::EndOfPartition {
            self.finished = true;
        }
        Ok(())
    }

    /// Flushes and queues end of partition everywhere; await [`Self::poll_ready`]
    /// to send it.
    pub fn finish(&mut self) -> Result<(), NetError> {
        self.broadcast_event(Event::EndOfPartition)
    }

    /// Tells every consumer why this partition's producer stops (it failed,
    /// or was cancelled), before it drops the partition: their gates report
    /// that instead of a producer that merely went away.
    pub fn end(&self, end: &ProducerEnd) {
        for sub in &self.subs {
            sub.sender.end(end.clone());
        }
    }

    fn queue(&mut self, sp: usize, envelope: Envelope) {
        let sub = &mut self.subs[sp];
        if matches!(envelope, Envelope::Data(_)) {
            self.pending_buffers += 1;
        }
        if sub.pending.is_empty() {
            self.waiting.push(sp);
        }
        sub.pending.push_back(envelope);
    }

    /// Sends what waits, as credits and event room allow: `Ready` once nothing
    /// waits; an error if a consumer is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is lost if the future polling this is dropped; what
    /// was not sent stays queued.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), NetError>> {
        if let Some(e) = &self.broken {
            return Poll::Ready(Err(e.clone()));
        }
        let mut k = 0;
        while k < self.waiting.len() {
            let sp = self.waiting[k];
            let sub = &mut self.subs[sp];
            while let Some(front) = sub.pending.front() {
                let is_data = matches!(front, Envelope::Data(_));
                let room = if is_data { sub.sender.poll_credit(cx) } else { sub.sender.poll_event_room(cx) };
                match room {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let Some(envelope) = sub.pending.pop_front() else { break };
                if is_data {
                    self.pending_buffers -= 1;
                }
                sub.sender.push(envelope)?;
            }
            if sub.pending.is_empty() {
                self.waiting.swap_remove(k);
            } else {
                k += 1;
            }
        }
        if self.waiting.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
