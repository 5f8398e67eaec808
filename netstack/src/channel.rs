//! One channel: subpartition (producer) → input channel (consumer), on the same shard
//! or across shards. A bounded ring of buffer handles plus the credit protocol.
//!
//! ```text
//!   ChannelSender ──push(Data | Event)──► ring ──pop──► ChannelReceiver (in a gate)
//!        ▲  takes a credit per data buffer          │ grants credits back
//!        └──────────── credits, backlog (atomics) ◄──┘
//! ```
//!
//! The ring holds `max data in flight + event room` slots: data is bounded by
//! credits, events by their own room, so a barrier always finds a slot. Wake-ups
//! happen once per buffer at most, and only when the other side has parked
//! (registered a waker); a busy consumer costs the producer one atomic swap.

use std::future::poll_fn;
use std::task::{Context, Poll};

use crossbeam_utils::CachePadded;

use crate::buffer::Buffer;
use crate::error::{NetError, ProducerEnd};
use crate::event::Event;
use crate::sync::{Arc, ArrayQueue, AtomicBool, AtomicU32, AtomicWaker, Ordering};

/// What travels on a channel.
#[derive(Debug)]
pub enum Envelope {
    /// A buffer of records.
    Data(Buffer),
    /// An in-band event.
    Event(Event),
}

struct Shared {
    ring: ArrayQueue<Envelope>,
    /// Credits granted by the receiver and not yet used by the sender.
    credits: CachePadded<AtomicU32>,
    /// Buffers the sender holds and cannot send for lack of credit.
    backlog: CachePadded<AtomicU32>,
    events_in_flight: AtomicU32,
    event_room: u32,
    consumer: AtomicWaker,
    producer: AtomicWaker,
    sender_closed: AtomicBool,
    receiver_closed: AtomicBool,
    /// Why the producer stopped, when it says so before it goes
    /// ([`ChannelSender::end`]).
    end: std::sync::OnceLock<ProducerEnd>,
}

/// Creates a channel whose receiver starts by granting `initial_credits`, able to hold
/// `max_data_in_flight` data buffers and `event_room` events at once.
pub fn channel(initial_credits: u32, max_data_in_flight: u32, event_room: u32) -> (ChannelSender, ChannelReceiver) {
    let event_room = event_room.max(1);
    let shared = Arc::new(Shared {
        ring: ArrayQueue::new((max_data_in_flight.max(initial_credits) + event_room) as usize),
        credits: CachePadded::new(AtomicU32::new(initial_credits)),
        backlog: CachePadded::new(AtomicU32::new(0)),
        events_in_flight: AtomicU32::new(0),
        event_room,
        consumer: AtomicWaker::new(),
        producer: AtomicWaker::new(),
        sender_closed: AtomicBool::new(false),
        receiver_closed: AtomicBool::new(false),
        end: std::sync::OnceLock::new(),
    });
    (ChannelSender { shared: shared.clone(), subpartition: 0 }, ChannelReceiver { shared })
}

/// The producing end. `Send`: created at deployment, moved to the producer's shard.
/// Dropping it without sending [`Event::EndOfPartition`] tells the consumer that the
/// producer was lost.
pub struct ChannelSender {
    shared: Arc<Shared>,
    subpartition: usize,
}

impl ChannelSender {
    /// Names the subpartition this sender serves, for error messages.
    pub fn set_subpartition(&mut self, index: usize) {
        self.subpartition = index;
    }

    fn closed_error(&self) -> NetError {
        NetError::ConsumerGone { subpartition: self.subpartition }
    }

    /// Puts `envelope` on the ring: a data buffer after [`Self::poll_credit`] took
    /// a credit for it, an event after [`Self::poll_event_room`] reserved room.
    /// After end of partition the sender side is closed.
    pub fn push(&self, envelope: Envelope) -> Result<(), NetError> {
        let end = matches!(envelope, Envelope::Event(Event::EndOfPartition));
        self.shared
            .ring
            .push(envelope)
            .map_err(|_| NetError::RingOverflow { capacity: self.shared.ring.capacity() })?;
        if end {
            self.shared.sender_closed.store(true, Ordering::Release);
        }
        self.shared.consumer.wake();
        Ok(())
    }

    /// Sends `buffer` now if a credit is free; hands it back if not (or if the
    /// receiver is gone). Announces no backlog: [`Self::poll_credit`] does.
    #[inline]
    pub fn try_send_data(&self, buffer: Buffer) -> Result<(), Buffer> {
        let s = &*self.shared;
        if s.receiver_closed.load(Ordering::Acquire) || s.credits.load(Ordering::Acquire) == 0 {
            return Err(buffer);
        }
        match s.ring.push(Envelope::Data(buffer)) {
            Ok(()) => {
                // Only this side decrements, so a positive load stays positive.
                s.credits.fetch_sub(1, Ordering::AcqRel);
                if s.backlog.load(Ordering::Relaxed) != 0 {
                    s.backlog.store(0, Ordering::Release);
                }
                s.consumer.wake();
                Ok(())
            }
            // A full ring despite a credit is a flow-control bug: the buffer waits,
            // and the next `push` reports it as a typed error.
            Err(Envelope::Data(buffer)) => Err(buffer),
            Err(Envelope::Event(_)) => Ok(()),
        }
    }

    /// Sends a data buffer as soon as a credit allows. On error the buffer is dropped
    /// (its segment goes home).
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before completion the buffer is dropped
    /// unsent and no credit is taken.
    pub async fn send_data(&self, buffer: Buffer) -> Result<(), NetError> {
        poll_fn(|cx| self.poll_credit(cx)).await?;
        self.push(Envelope::Data(buffer))
    }

    /// Waits for one data credit and takes it; the data buffer it is for must then
    /// be [`Self::push`]ed. While waiting, the sender announces a backlog.
    pub fn poll_credit(&self, cx: &mut Context<'_>) -> Poll<Result<(), NetError>> {
        let s = &*self.shared;
        for attempt in 0..2 {
            if s.receiver_closed.load(Ordering::Acquire) {
                return Poll::Ready(Err(self.closed_error()));
            }
            // Only this side decrements, so a positive load stays positive.
            if s.credits.load(Ordering::Acquire) > 0 {
                s.credits.fetch_sub(1, Ordering::AcqRel);
                if s.backlog.load(Ordering::Relaxed) != 0 {
                    s.backlog.store(0, Ordering::Release);
                }
                return Poll::Ready(Ok(()));
            }
            if attempt == 0 {
                // Announce the backlog, park, and re-check to close the race with
                // a grant that landed in between.
                s.producer.register(cx.waker());
                s.backlog.store(1, Ordering::Release);
                s.consumer.wake();
            }
        }
        Poll::Pending
    }

    /// Sends an event; needs no data credit, only a slot of the event room.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is sent unless the future completes.
    pub async fn send_event(&self, event: Event) -> Result<(), NetError> {
        poll_fn(|cx| self.poll_event_room(cx)).await?;
        self.push(Envelope::Event(event))
    }

    /// Waits for a slot of the event room and reserves it; the event must then be
    /// [`Self::push`]ed.
    pub fn poll_event_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), NetError>> {
        let s = &*self.shared;
        for attempt in 0..2 {
            if s.receiver_closed.load(Ordering::Acquire) {
                return Poll::Ready(Err(self.closed_error()));
            }
            if s.events_in_flight.load(Ordering::Acquire) < s.event_room {
                s.events_in_flight.fetch_add(1, Ordering::AcqRel);
                return Poll::Ready(Ok(()));
            }
            if attempt == 0 {
                s.producer.register(cx.waker());
            }
        }
        Poll::Pending
    }

    /// Unused credits right now.
    pub fn credits(&self) -> u32 {
        self.shared.credits.load(Ordering::Acquire)
    }

    /// Whether the receiver has gone away.
    pub fn is_closed(&self) -> bool {
        self.shared.receiver_closed.load(Ordering::Acquire)
    }

    /// Records why the producer stops (it failed, or was cancelled), before
    /// it drops this sender: the consumer's [`NetError::ProducerLost`] then
    /// names it (the first end recorded stands).
    pub fn end(&self, end: ProducerEnd) {
        let _ = self.shared.end.set(end);
    }
}

impl Drop for ChannelSender {
    fn drop(&mut self) {
        self.shared.sender_closed.store(true, Ordering::Release);
        self.shared.consumer.wake();
    }
}

/// The consuming end, owned by an input gate. `Send`: moved to the consumer's shard.
pub struct ChannelReceiver {
    shared: Arc<Shared>,
}

impl ChannelReceiver {
    /// Takes the next envelope, if any.
    pub fn try_recv(&self) -> Option<Envelope> {
        let e = self.shared.ring.pop()?;
        if matches!(e, Envelope::Event(_)) {
            self.shared.events_in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shared.producer.wake();
        }
        Some(e)
    }

    /// Grants `n` data credits to the sender.
    pub fn grant(&self, n: u32) {
        if n == 0 {
            return;
        }
        self.shared.credits.fetch_add(n, Ordering::AcqRel);
        self.shared.producer.wake();
    }

    /// The backlog the sender announces.
    pub fn backlog(&self) -> u32 {
        self.shared.backlog.load(Ordering::Acquire)
    }

    /// Unused credits the sender holds.
    pub fn credits(&self) -> u32 {
        self.shared.credits.load(Ordering::Acquire)
    }

    /// Whether the sender is gone (after end of partition, or lost).
    pub fn is_sender_closed(&self) -> bool {
        self.shared.sender_closed.load(Ordering::Acquire)
    }

    /// Why the producer stopped, if it said so.
    pub fn producer_end(&self) -> Option<ProducerEnd> {
        self.shared.end.get().cloned()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.shared.ring.is_empty()
    }

    /// Registers the waker to be woken by the next send or close.
    pub fn register(&self, waker: &std::task::Waker) {
        self.shared.consumer.register(waker);
    }
}

impl Drop for ChannelReceiver {
    fn drop(&mut self) {
        self.shared.receiver_closed.store(true, Ordering::Release);
        self.shared.producer.wake();
        // Buffers still in the ring are dropped with the last `Arc`, returning home.
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};
    use shardflow_memory::SegmentPoolBuilder;

    fn buffer(pool: &shardflow_memory::SegmentPool) -> Buffer {
        Buffer::new(pool.allocate().unwrap(), 0, 0).unwrap()
    }

    #[test]
    fn data_waits_for_credit_but_events_do_not() {
        let pool = SegmentPoolBuilder::new(0, 4).segment_bytes(4096).build().unwrap();
        let (tx, rx) = channel(1, 1, 1);
        block_on(tx.send_data(buffer(&pool))).unwrap();
        assert_eq!(tx.credits(), 0);
        // out of credit: the second buffer parks and announces a backlog
        let mut pending = Box::pin(tx.send_data(buffer(&pool)));
        assert!(block_on(poll_once(pending.as_mut())).is_none());
        assert_eq!(rx.backlog(), 1);
        // an event still gets through
        block_on(tx.send_event(Event::Watermark(5))).unwrap();
        assert!(matches!(rx.try_recv(), Some(Envelope::Data(_))));
        assert!(matches!(rx.try_recv(), Some(Envelope::Event(Event::Watermark(5)))));
        rx.grant(1);
        assert!(block_on(poll_once(pending.as_mut())).is_some());
        assert_eq!(rx.backlog(), 0);
    }

    #[test]
    fn sender_sees_a_closed_receiver_and_segments_go_home() {
        let pool = SegmentPoolBuilder::new(0, 2).segment_bytes(4096).build().unwrap();
        let (tx, rx) = channel(2, 2, 1);
        block_on(tx.send_data(buffer(&pool))).unwrap();
        drop(rx);
        assert_eq!(block_on(tx.send_data(buffer(&pool))), Err(NetError::ConsumerGone { subpartition: 0 }));
        drop(tx);
        assert_eq!(pool.monitor().free_segments(), 2);
    }

    #[test]
    fn end_of_partition_closes_the_sender_side() {
        let (tx, rx) = channel(1, 1, 1);
        block_on(tx.send_event(Event::EndOfPartition)).unwrap();
        assert!(rx.is_sender_closed());
        assert!(matches!(rx.try_recv(), Some(Envelope::Event(Event::EndOfPartition))));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::future::block_on;

    /// A sender without credit parks (announcing its backlog) while the
    /// receiver grants one: whatever the interleaving, the sender wakes and takes
    /// it (a lost wake-up would leave `block_on` waiting for ever, which loom
    /// reports), and the backlog is withdrawn once the credit is taken.
    #[test]
    fn a_grant_always_wakes_a_sender_parked_for_credit() {
        loom::model(|| {
            let (tx, rx) = channel(0, 1, 1);
            let receiver = loom::thread::spawn(move || {
                rx.grant(1);
                rx
            });
            block_on(poll_fn(|cx| tx.poll_credit(cx))).unwrap();
            let rx = receiver.join().unwrap();
            assert_eq!(tx.credits(), 0, "the one credit was taken");
            assert_eq!(rx.backlog(), 0, "no backlog is left announced");
        });
    }

    /// A receiver that goes away wakes a sender parked for credit, which then
    /// fails typed instead of waiting for ever.
    #[test]
    fn a_closing_receiver_wakes_a_parked_sender() {
        loom::model(|| {
            let (tx, rx) = channel(0, 1, 1);
            let receiver = loom::thread::spawn(move || drop(rx));
            let got = block_on(poll_fn(|cx| tx.poll_credit(cx)));
            assert_eq!(got, Err(NetError::ConsumerGone { subpartition: 0 }));
            receiver.join().unwrap();
        });
    }
}
